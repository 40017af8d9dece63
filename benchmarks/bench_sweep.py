"""The 51-level flood sweep as one vmapped run against 51 sequential runs.

Three ways to train every level of the paper's grid {0, 0.01, …, 0.50}:

* ``vmapped``: ``floodax.experiments.sweep_flood_levels``, one compiled
  program training all levels at once;
* ``sequential, one program``: ``sweep_flood_levels(..., vectorized=False)``,
  the same compiled epoch reused for each level in turn (the flood level
  lives in the optimizer state, so it never recompiles);
* ``sequential, train()``: ``floodax.experiments.train`` called per level,
  compiling each time, as a user looping over levels would.

Wall time of each, for the paper's synthetic setting (Sinusoid2d, MLP 4×500,
full batch) and an MLP on scikit-learn's digits; the ratio sequential /
vmapped is the sweep's speed-up.

Run:  python benchmarks/bench_sweep.py [--epochs 50]
Writes benchmarks/results/bench_sweep_<platform>.json.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

import jax
from _machine import describe
from _machine import parser as make_parser
from flax import nnx

from floodax.experiments import (
    MLP,
    PAPER_GRID,
    TrainConfig,
    load_digits_dataset,
    make_synthetic,
    sweep_flood_levels,
    train,
)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    settings = {
        f"Sinusoid2d, MLP 4×{args.width}, full batch (200)": (
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
    results, lines = {}, []
    for name, (data, config) in settings.items():
        model = MLP(
            data.x_train.shape[1], data.num_classes, width=args.width, rngs=nnx.Rngs(0)
        )
        t_vmap = _timed(
            lambda: sweep_flood_levels(model, data, config, levels, progress=False)
        )
        t_one = _timed(
            lambda: sweep_flood_levels(
                model, data, config, levels, progress=False, vectorized=False
            )
        )
        t_train = _timed(
            lambda: [
                train(model, data, config, flood_level=b, progress=False)
                for b in levels
            ]
        )
        results[name] = {
            "vmapped_s": t_vmap,
            "sequential_one_program_s": t_one,
            "sequential_train_s": t_train,
            "speedup_vs_one_program": t_one / t_vmap,
            "speedup_vs_train": t_train / t_vmap,
        }
        lines.append(
            f"| {name} | {t_vmap:.1f} | {t_one:.1f} | {t_train:.1f} | "
            f"{t_one / t_vmap:.2f}× | {t_train / t_vmap:.2f}× |"
        )
        print(lines[-1], flush=True)
    command = "python benchmarks/bench_sweep.py " + shlex.join(sys.argv[1:])
    header = (
        f"Command: `{command.strip()}`  \nMachine: {describe()}  \n"
        f"{len(levels)} flood levels, {args.epochs} epochs each.\n\n"
        "| setting | vmapped (s) | sequential, one program (s) | sequential, train() (s) "
        "| speed-up vs one program | speed-up vs train() |\n|---|---|---|---|---|---|\n"
    )
    text = header + "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    platform = jax.devices()[0].platform
    with open(os.path.join(args.out, f"bench_sweep_{platform}.json"), "w") as f:
        json.dump(
            {"command": command.strip(), "machine": describe(), "results": results},
            f,
            indent=2,
        )
    with open(os.path.join(args.out, f"bench_sweep_{platform}.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
