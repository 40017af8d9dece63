"""The ``floodax`` command line: ``floodax demo`` and ``floodax verify``.

Every flag is checked before anything trains: a bad value ends the command
with the subcommand's usage and a message that names the flag.
"""

from __future__ import annotations

import argparse
import decimal
import importlib.util
import math
import os
import tempfile
from collections.abc import Sequence

MAX_GRID_LEVELS = 1_000_000
"""``--grid`` refuses a range of this many levels or more: each level is a
training run, and the sweep keeps every level's learning curves."""


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
    verify.set_defaults(subparser=verify)
    verify.add_argument("--seed", type=int, default=0, help="seed of the MLP and data")
    verify.add_argument(
        "--largest-rate",
        type=float,
        default=0.2,
        help="ε1 of the first rung of the rate ladder, positive (default 0.2)",
    )
    verify.add_argument(
        "--num-rates",
        type=int,
        default=6,
        help="rungs of the ladder, halving ε1, at least 2 (default 6)",
    )
    verify.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (drawn on stderr only when it is a terminal)",
    )
    return parser


def _grid(text: str) -> tuple[float, ...]:
    """``START:STOP:STEP`` or a comma-separated list of flood levels.

    A range holds the numbers START + i·STEP up to STOP, computed in decimal
    arithmetic on the digits given, so STOP is included exactly when it lies
    on the grid (``0:1:0.1`` ends at 1.0, ``0:0.5:0.3`` at 0.3) and each level
    is the float nearest its decimal value (0.3, not 0.30000000000000004).
    Its size is computed before a single level is made.
    """

    def refuse(why: str, what: str = "is not a grid") -> argparse.ArgumentTypeError:
        return argparse.ArgumentTypeError(f"{text!r} {what}: {why}")

    usage = "give START:STOP:STEP (e.g. 0:0.5:0.01) or a list (e.g. 0,0.05,0.1)"
    if ":" in text:
        try:
            start, stop, step = (decimal.Decimal(v) for v in text.split(":"))
        except (ValueError, decimal.InvalidOperation):
            raise refuse(usage) from None
        if not (start.is_finite() and stop.is_finite() and step.is_finite()):
            raise refuse("START, STOP and STEP must be finite numbers")
        if step <= 0:
            raise refuse("STEP must be positive")
        if stop < start:
            raise refuse("STOP must be at least START")
        with decimal.localcontext() as context:
            context.traps[decimal.Overflow] = False  # a huge size is Infinity
            steps = (stop - start) / step
        if steps >= MAX_GRID_LEVELS - 1:
            size = f"{int(steps) + 1:,}" if steps < 10**15 else "more than 10^15"
            raise refuse(
                f"it has {size} levels, each a training run; give fewer than "
                f"{MAX_GRID_LEVELS:,} (a larger STEP)",
                "is too large a grid",
            )
        count = int((stop - start) // step) + 1
        exact = [start + i * step for i in range(count)]
    else:
        try:
            exact = [decimal.Decimal(v) for v in text.split(",")]
        except (ValueError, decimal.InvalidOperation):
            raise refuse(usage) from None
    if not all(v.is_finite() for v in exact):
        raise refuse("flood levels must be finite numbers")
    levels = tuple(float(v) for v in exact)
    # Checked on the floats that will train: 1e309 is finite in decimal but
    # inf as a float, and 1e-400 a positive level that would train as 0.
    if not all(math.isfinite(b) for b in levels):
        raise refuse("flood levels must be finite numbers (below 1.8e308)")
    if any(b == 0 and v != 0 for b, v in zip(levels, exact, strict=True)):
        raise refuse("a positive level rounds to 0 as a float (below 5e-324)")
    if min(levels) < 0:
        raise refuse("flood levels must be non-negative")
    if max(levels) == 0:
        raise refuse("it has no positive level, and 0 (the baseline) is trained anyway")
    return levels


def _add_demo(commands) -> None:
    from floodax._names import DATASETS

    demo = commands.add_parser(
        "demo",
        help="train with and without flooding on built-in data; table and PNG",
        description="Trains every flood level of a grid, 0 (the unflooded "
        "baseline) included, on data generated as the authors' code does (or "
        "a small real dataset: scikit-learn's digits, breast_cancer and wine; "
        "mnist and mnist1d, which need the family extra), picks the level by "
        "the final validation accuracy (or trains the one --flood-level given), "
        "prints test accuracy "
        "and loss of the baseline and the chosen level, and writes a PNG of "
        "clean test accuracy, training loss and validation curves. About 3 "
        "minutes on 2 CPU cores with the defaults; longer runs are announced "
        "before they start. Needs the demo extra: "
        "pip install -e '.[demo]' from a checkout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.set_defaults(subparser=demo)
    demo.add_argument(
        "--dataset", choices=DATASETS, default="sinusoid2d", help="the data"
    )
    demo.add_argument(
        "--label-noise",
        type=float,
        default=0.1,
        help="fraction of training/validation labels flipped, from 0 to 1",
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
        help="train only this positive flood level and the unflooded baseline, "
        "and compare them, instead of sweeping",
    )
    group.add_argument(
        "--grid",
        type=_grid,
        default=None,
        help="flood levels to sweep: START:STOP:STEP (STOP included when it lies "
        "on the grid) or a,b,c; None means the paper's 0:0.5:0.01 (0 is always "
        "added: it is the baseline)",
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
        help="instead of the demo, a short version (under 30 s on 2 cores) of "
        "one study of flooding's mechanism; benchmarks/study.py runs the full ones",
    )
    demo.add_argument(
        "--compare",
        action="store_true",
        help="instead of the demo, compare ERM, flooding, SoftAD and SAM on the "
        "digits (three seeds from --seed, each grid chosen on validation; about "
        "2 minutes on 2 cores); benchmarks/family.py runs the whole family. "
        "Takes --seed, "
        "--out and --no-progress only",
    )
    demo.add_argument("--seed", type=int, default=0, help="data, model and shuffling")
    demo.add_argument(
        "--out",
        default="floodax-demo",
        help="output folder, created and checked writable before training",
    )
    demo.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bars (drawn on stderr only when it is a terminal)",
    )


def _check_number(
    parser: argparse.ArgumentParser,
    flag: str,
    value: float | None,
    *,
    positive: bool = False,
    high: float | None = None,
) -> None:
    """Ends the command unless ``value`` (None: not given) is finite and
    non-negative (positive), and at most ``high``."""
    if value is None:
        return
    if not math.isfinite(value):
        parser.error(f"{flag} must be a finite number, got {value}")
    if high is not None and not 0 <= value <= high:
        parser.error(f"{flag} must lie in [0, {high:g}], got {value:g}")
    if positive and value <= 0:
        parser.error(f"{flag} must be positive, got {value:g}")
    if value < 0:
        parser.error(f"{flag} must be non-negative, got {value:g}")


def _check_count(
    parser: argparse.ArgumentParser,
    flag: str,
    value: int | None,
    minimum: int,
    why: str = "",
) -> None:
    if value is not None and value < minimum:
        parser.error(f"{flag} must be at least {minimum}{why}, got {value}")


def _check_out(parser: argparse.ArgumentParser, out: str) -> None:
    """Creates ``--out`` and writes a scratch file there, so that a folder
    the results cannot go to ends the command before it trains."""
    if not out:
        parser.error("--out must name a folder, got ''")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        parser.error(
            f"--out {out!r} is not a folder the results can be written to "
            f"({error.strerror}); give another --out"
        )


def _check_dataset_package(parser: argparse.ArgumentParser, dataset: str) -> None:
    """Ends the command when ``dataset`` needs a package of the family extra
    that is not installed (looked up, not imported)."""
    from floodax._names import DATASET_PACKAGES

    if dataset not in DATASET_PACKAGES:
        return
    package, floor = DATASET_PACKAGES[dataset]
    if importlib.util.find_spec(package) is None:
        parser.error(
            f"--dataset {dataset} needs {package}, which is not installed: from "
            f"a checkout, pip install -e '.[family]' (or pip install "
            f"'{package}>={floor}')"
        )


def _run_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _check_count(parser, "--epochs", args.epochs, 1)
    _check_number(parser, "--label-noise", args.label_noise, high=1.0)
    _check_number(parser, "--learning-rate", args.learning_rate, positive=True)
    _check_count(parser, "--batch-size", args.batch_size, 1)
    _check_count(parser, "--width", args.width, 1)
    _check_count(parser, "--depth", args.depth, 1)
    _check_count(parser, "--seed", args.seed, 0)
    if args.flood_level == 0:
        parser.error(
            "--flood-level 0 is the baseline, which the demo trains anyway: give "
            "a positive level to compare with it"
        )
    _check_number(parser, "--flood-level", args.flood_level, positive=True)
    try:
        from floodax.experiments.demo import DemoConfig, run_demo
        from floodax.experiments.studies import run_study
    except ImportError as error:
        parser.exit(
            2,
            f"floodax demo needs the demo extra ({error.name} is missing): "
            "from a checkout, pip install -e '.[demo]'\n",
        )
    if args.study is None:
        _check_dataset_package(parser, args.dataset)
    _check_out(parser, args.out)
    if args.compare:
        if args.study is not None:
            parser.error("--compare and --study are two different runs: give one")
        taken = ("compare", "seed", "out", "no_progress", "subparser", "command")
        given = [
            k
            for k, v in vars(args).items()
            if k not in taken and v != parser.get_default(k)
        ]
        if given:
            flag = "--" + given[0].replace("_", "-")
            parser.error(
                f"--compare runs a fixed comparison and takes --seed, --out and "
                f"--no-progress only: drop {flag} (benchmarks/family.py takes more)"
            )
        from floodax.experiments.compare import run_compare

        print(
            "floodax demo --compare: a short version of benchmarks/family.py "
            "(which compares the whole family on every dataset over five seeds)"
        )
        run_compare(args.out, seed=args.seed, progress=not args.no_progress)
        return 0
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


def _run_verify(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _check_number(parser, "--largest-rate", args.largest_rate, positive=True)
    _check_count(parser, "--num-rates", args.num_rates, 2, " to fit a slope")
    from floodax._verify import run_verify

    lines, ok = run_verify(
        seed=args.seed,
        largest_rate=args.largest_rate,
        num_rates=args.num_rates,
        progress=not args.no_progress,
    )
    print("\n".join(lines))
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    run = {"demo": _run_demo, "verify": _run_verify}[args.command]
    return run(args.subparser, args)
