"""The family compared on real data: every method, every dataset, 5 seeds.

    python benchmarks/family.py                       # the full comparison
    python benchmarks/family.py --tiny --out /tmp/f   # a check, end to end

Every method of floodax.experiments.FAMILY on every dataset, with and without
label noise; each method's grid chosen per seed on the final validation
accuracy (never the test split); test accuracy mean ± std over the seeds,
paired per-seed differences against ERM and against flooding, the value
chosen per seed, wall time; and the rule of thumb (half the training loss
where the validation loss starts to rise) against the flooding sweep. The
protocol is SoftAD's authors' (bdd-flood run_benchmarks.py, see
floodax/experiments/compare.py). Writes results/family/family.{md,png} with
the command that made them; finished cells are cached in
results/family/cache.json, so the run resumes across sittings.
"""

from __future__ import annotations

import argparse
import os

from _machine import command, describe

from floodax.experiments import DATASETS, FamilyConfig, run_family

REAL = ("digits", "mnist", "mnist1d", "breast_cancer", "wine")
"""The real datasets, those that ``load_dataset`` knows."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = FamilyConfig()
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(REAL),
        choices=DATASETS,
    )
    parser.add_argument("--methods", nargs="+", default=list(default.methods))
    parser.add_argument(
        "--noises", nargs="+", type=float, default=list(default.label_noises)
    )
    parser.add_argument("--seeds", type=int, default=len(default.seeds))
    parser.add_argument("--epochs", type=int, default=default.epochs)
    parser.add_argument(
        "--model",
        choices=("mlp", "cnn"),
        default=default.model,
        help="the CNN (for mnist, mnist1d, digits) takes --width channels and "
        "--depth convolutions: try --model cnn --width 32 --depth 2 --out "
        "results/family_cnn (a cache of its own)",
    )
    parser.add_argument("--width", type=int, default=default.width)
    parser.add_argument("--depth", type=int, default=default.depth)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="2 epochs, 2 values per grid, 2 seeds, one noise: checks the "
        "pipeline end to end in a minute or two",
    )
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "family")
    )
    parser.add_argument(
        "--name",
        default="family",
        help="write --out/NAME.md and NAME.png: a report of part of the cache "
        "(fewer seeds or datasets) beside the full one",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    config = FamilyConfig(
        datasets=tuple(args.datasets),
        label_noises=tuple(args.noises),
        methods=tuple(args.methods),
        seeds=tuple(range(args.seeds)),
        epochs=args.epochs,
        model=args.model,
        width=args.width,
        depth=args.depth,
    )
    if args.tiny:
        from floodax.experiments import get_method

        config = FamilyConfig(
            datasets=config.datasets,
            label_noises=config.label_noises[-1:],
            methods=config.methods,
            seeds=(0, 1),
            epochs=2,
            model=config.model,
            width=4 if config.model == "cnn" else 32,
            depth=1,
            grids=tuple((m, get_method(m).grid[:2]) for m in config.methods),
        )
    print(f"machine: {describe()}")
    results = run_family(
        config,
        args.out,
        command=command(__file__),
        progress=not args.no_progress,
        name=args.name,
    )
    print(f"\n{results['table']}\n\n{results['rule_table']}")
    print(f"\nwrote {results['markdown']} and {results['png']}")


if __name__ == "__main__":
    main()
