"""The ``floodax`` command line: ``floodax demo`` and ``floodax verify``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="floodax",
        description="floodax: flooding, alternating steps and gradient-norm penalties.",
    )
    from floodax import __version__

    parser.add_argument("--version", action="version", version=f"floodax {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    verify = commands.add_parser(
        "verify",
        help="check numerically that two alternating steps equal one penalised "
        "step, and steps the flow of a modified loss, up to O(ε³)",
        description="Fits the order of the second-order derivations' errors on a "
        "small float64 MLP: one penalised step against two alternating steps, and "
        "the gradient flow of L + (h/4)‖∇L‖² (implicit) or of the pair's explicit "
        "plus implicit penalty against real steps (theory: 3, against 2 for the "
        "first-order guesses) and exits non-zero if an order is more than 0.2 "
        "from theory.",
    )
    verify.add_argument("--seed", type=int, default=0, help="seed of the MLP and data")
    verify.add_argument(
        "--largest-rate",
        type=float,
        default=0.2,
        help="ε1 of the first rung of the rate ladder (default 0.2)",
    )
    verify.add_argument(
        "--num-rates", type=int, default=6, help="rungs of the ladder, halving ε1"
    )
    return parser


def _grid(text: str) -> tuple[float, ...]:
    """``START:STOP:STEP`` (STOP included) or a comma-separated list."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = round((stop - start) / step) + 1
            return tuple(round(start + i * step, 10) for i in range(count))
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a grid: give START:STOP:STEP (e.g. 0:0.5:0.01) or "
            "a list (e.g. 0,0.05,0.1)"
        ) from None


def _add_demo(commands) -> None:
    from floodax._names import DATASETS

    demo = commands.add_parser(
        "demo",
        help="train with and without flooding on built-in data; table and PNG",
        description="Trains every flood level of a grid, 0 (the unflooded "
        "baseline) included, on data generated as the authors' code does (or "
        "scikit-learn's digits), picks the level by the final validation "
        "accuracy, prints test accuracy and loss of the baseline and the chosen "
        "level, and writes a PNG of clean test accuracy, training loss and "
        "validation curves. About 3 minutes on 2 CPU cores with the defaults; "
        "longer runs are announced before they start. Needs the demo extra: "
        "pip install 'floodax[demo]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument(
        "--dataset", choices=DATASETS, default="sinusoid2d", help="the data"
    )
    demo.add_argument(
        "--label-noise",
        type=float,
        default=0.1,
        help="fraction of training/validation labels flipped",
    )
    demo.add_argument("--epochs", type=int, default=200, help="training epochs")
    demo.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        default="sgd",
        help="SGD with momentum 0.9, or Adam",
    )
    demo.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="None means 0.01 for SGD, 1e-3 for Adam (the paper's)",
    )
    demo.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="mini-batch size; None trains full batch (the paper's)",
    )
    demo.add_argument(
        "--width",
        type=int,
        default=500,
        help="hidden units per layer (paper: 500)",
    )
    demo.add_argument("--depth", type=int, default=4, help="hidden layers (paper: 4)")
    group = demo.add_mutually_exclusive_group()
    group.add_argument(
        "--flood-level",
        type=float,
        default=None,
        help="use this flood level instead of sweeping (the baseline b = 0 is "
        "trained too)",
    )
    group.add_argument(
        "--grid",
        type=_grid,
        default=None,
        help="flood levels to sweep: START:STOP:STEP or a,b,c; None means "
        "the paper's 0:0.5:0.01 (0 is always added: it is the baseline)",
    )
    demo.add_argument(
        "--validation",
        choices=("clean", "noisy"),
        default="clean",
        help="validation labels that select b: clean (the authors' demo) or noisy",
    )
    demo.add_argument(
        "--tie-break",
        choices=("val_loss", "largest_level"),
        default="val_loss",
        help="among levels of equal validation accuracy: the lowest validation "
        "loss, or the largest level (the authors' MLflow run order)",
    )
    demo.add_argument(
        "--sweep",
        choices=("auto", "vmap", "sequential"),
        default="auto",
        help="train the levels together under jax.vmap or one after another; "
        "auto: vmap on a GPU/TPU, sequential on a CPU",
    )
    demo.add_argument(
        "--study",
        choices=("flatness", "noise", "derivation", "second_descent"),
        default=None,
        help="instead of the demo, a short version (a few minutes) of one study of "
        "flooding's mechanism; benchmarks/study.py runs the full ones",
    )
    demo.add_argument("--seed", type=int, default=0, help="data, model and shuffling")
    demo.add_argument("--out", default="floodax-demo", help="output folder")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    checks = [
        (args.epochs >= 1, "--epochs must be at least 1"),
        (0.0 <= args.label_noise <= 1.0, "--label-noise must lie in [0, 1]"),
        (
            args.learning_rate is None or args.learning_rate > 0,
            "--learning-rate must be positive",
        ),
        (
            args.batch_size is None or args.batch_size >= 1,
            "--batch-size must be at least 1",
        ),
        (args.width >= 1 and args.depth >= 1, "--width and --depth must be at least 1"),
        (
            args.flood_level is None or args.flood_level >= 0,
            "--flood-level must be non-negative",
        ),
        (
            args.grid is None or min(args.grid) >= 0,
            "--grid levels must be non-negative",
        ),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    try:
        from floodax.experiments.demo import DemoConfig, run_demo
        from floodax.experiments.studies import run_study
    except ImportError as error:
        parser.exit(
            2,
            f"floodax demo needs the demo extra ({error.name} is missing): "
            "pip install 'floodax[demo]'\n",
        )
    if args.study is not None:
        print(
            f"floodax demo --study {args.study}: a short version of the study "
            "(benchmarks/study.py runs the full one over five seeds)"
        )
        _, table, png = run_study(
            args.study, out=args.out, progress=not args.no_progress
        )
        print(f"\n{table}\n\nwrote {png}")
        return 0
    config = DemoConfig(
        dataset=args.dataset,
        label_noise=args.label_noise,
        epochs=args.epochs,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        width=args.width,
        depth=args.depth,
        flood_level=args.flood_level,
        validation=args.validation,
        tie_break=args.tie_break,
        vectorized={"auto": "auto", "vmap": True, "sequential": False}[args.sweep],
        seed=args.seed,
        out=args.out,
        progress=not args.no_progress,
        **({"grid": args.grid} if args.grid is not None else {}),
    )
    run_demo(config)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _run_demo(parser, args)
    if args.command == "verify":
        from floodax._verify import run_verify

        if not args.largest_rate > 0:
            parser.error("--largest-rate must be positive")
        if args.num_rates < 2:
            parser.error("--num-rates must be at least 2 to fit a slope")
        lines, ok = run_verify(
            seed=args.seed, largest_rate=args.largest_rate, num_rates=args.num_rates
        )
        print("\n".join(lines))
        return 0 if ok else 1
    raise AssertionError(args.command)  # argparse rejects unknown commands
