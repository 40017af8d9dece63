"""The flood-level sweep: vmapped against sequential, with and without
donating the epoch's input buffers; time and minor page faults.

Strategies, each over every level of the grid:

* ``vmapped``: all levels at once under ``jax.vmap`` (what an accelerator
  wants; ``vectorized=True``);
* ``sequential``: one level after another through one compiled epoch
  (``vectorized=False``, the default on a CPU);

each with the epoch donating its input state (floodax's default since 0.2:
the next state reuses the buffers) and without (0.1's code). Reported: wall
time (compilation included) and time and minor page faults per level-epoch
(the process's ``ru_minflt`` over the run, divided by levels × epochs),
medians of ``--repeats`` interleaved repetitions.

Run:  python benchmarks/bench_sweep.py [--epochs 50] [--repeats 3]
Writes benchmarks/results/bench_sweep_<platform>.{md,json}.
"""

from __future__ import annotations

import functools
import resource
import time
from unittest import mock

import jax
import numpy as np
from _machine import command, describe, write_results
from _machine import parser as make_parser
from flax import nnx

from floodax.experiments import (
    MLP,
    PAPER_GRID,
    TrainConfig,
    load_digits_dataset,
    make_synthetic,
    sweep_flood_levels,
    training,
)

STRATEGIES = {
    "vmapped, donated": (True, True),
    "vmapped, not donated (0.1)": (True, False),
    "sequential, donated (default on CPU)": (False, True),
    "sequential, not donated (0.1's sequential)": (False, False),
}


def measure(model, data, config, levels, vectorized: bool, donate: bool) -> dict:
    compiled = functools.partial(training._compiled, donate=donate)
    with mock.patch.object(training, "_compiled", compiled):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        sweep_flood_levels(
            model, data, config, levels, vectorized=vectorized, progress=False
        )
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    level_epochs = len(levels) * config.epochs
    return {
        "seconds": seconds,
        "ms_per_level_epoch": 1e3 * seconds / level_epochs,
        "faults_per_level_epoch": faults / level_epochs,
    }


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = {
        f"Sinusoid2d (the authors' 100 points), MLP 4×{args.width}, full batch": (
            make_synthetic("sinusoid2d", seed=0, label_noise=0.1),
            TrainConfig(epochs=args.epochs),
        ),
        f"digits, MLP 4×{args.width}, mini-batches of 128": (
            load_digits_dataset(seed=0, label_noise=0.1),
            TrainConfig(
                epochs=args.epochs, optimizer="adam", learning_rate=1e-3, batch_size=128
            ),
        ),
    }
    levels = list(PAPER_GRID)
    results, blocks = {}, []
    for name, (data, config) in settings.items():
        model = MLP(
            data.x_train.shape[1], data.num_classes, width=args.width, rngs=nnx.Rngs(0)
        )
        runs = {s: [] for s in STRATEGIES}
        for r in range(args.repeats):
            order = list(STRATEGIES)[r % 4 :] + list(STRATEGIES)[: r % 4]
            for strategy in order:
                runs[strategy].append(
                    measure(model, data, config, levels, *STRATEGIES[strategy])
                )
        summary = {
            s: {k: float(np.median([m[k] for m in v])) for k in v[0]}
            for s, v in runs.items()
        }
        base = summary["sequential, not donated (0.1's sequential)"]["seconds"]
        lines = [
            f"**{name}** ({len(levels)} levels × {args.epochs} epochs)",
            "",
            "| strategy | wall time (s) | ms per level-epoch | minor page faults per "
            "level-epoch | speed vs 0.1's sequential |",
            "|---|---|---|---|---|",
        ]
        for s, m in summary.items():
            lines.append(
                f"| {s} | {m['seconds']:.1f} | {m['ms_per_level_epoch']:.2f} | "
                f"{m['faults_per_level_epoch']:.0f} | {base / m['seconds']:.2f}× |"
            )
        results[name] = {"summary": summary, "runs": runs}
        blocks.append("\n".join(lines))
        print(blocks[-1], "\n", flush=True)
    command_line, machine = command(__file__), describe()
    text = (
        f"Command: `{command_line}`  \nMachine: {machine}  \n"
        f"Medians of {args.repeats} interleaved repetitions; compilation included.\n\n"
        + "\n\n".join(blocks)
        + "\n"
    )
    write_results(
        args.out,
        f"bench_sweep_{jax.devices()[0].platform}",
        text,
        {"command": command_line, "machine": machine, "results": results},
    )


if __name__ == "__main__":
    main()
