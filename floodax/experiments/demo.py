"""``floodax demo``: flooding against a baseline, with the one-run sweep.

Trains an unflooded baseline, sweeps the flood level over a grid in one
vmapped run, selects it on (noisy) validation accuracy, retrains at the
chosen level with every split recorded, prints a results table and writes a
two-panel PNG.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx

from floodax.experiments.datasets import load_dataset
from floodax.experiments.models import MLP
from floodax.experiments.training import (
    PAPER_GRID,
    SweepResult,
    TrainConfig,
    TrainResult,
    sweep_flood_levels,
    train,
)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The demo's settings (the command's flags)."""

    dataset: str = "sinusoid2d"
    label_noise: float = 0.1
    epochs: int = 200
    optimizer: str = "sgd"
    learning_rate: float | None = None
    batch_size: int | None = None
    width: int = 500
    depth: int = 4
    flood_level: float | None = None
    grid: Sequence[float] = PAPER_GRID
    seed: int = 0
    out: str = "floodax-demo"
    progress: bool = True


def _train_config(config: DemoConfig) -> TrainConfig:
    lr = config.learning_rate
    if lr is None:
        lr = 0.01 if config.optimizer == "sgd" else 1e-3
    return TrainConfig(
        epochs=config.epochs,
        optimizer=config.optimizer,
        learning_rate=lr,
        batch_size=config.batch_size,
        seed=config.seed,
    )


def _plot(path: str, baseline: TrainResult, flooded: TrainResult, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    epochs = np.arange(1, len(baseline.history.train_loss) + 1)
    b = flooded.flood_level
    for result, label, colour in (
        (baseline, "no flooding", "tab:blue"),
        (flooded, f"flooding b={b:g}", "tab:red"),
    ):
        h = result.history
        ax_loss.plot(
            epochs,
            h.step_loss,
            color=colour,
            linestyle="--",
            label=f"train (mini-batch), {label}",
        )
        ax_loss.plot(epochs, h.test_loss, color=colour, label=f"test, {label}")
    ax_loss.axhline(b, color="grey", linewidth=0.8, linestyle=":", label="flood level")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_title("Train and clean-test loss")
    ax_loss.legend(fontsize=8)

    ax_acc = ax_val.twinx()
    for result, label, colour in (
        (baseline, "no flooding", "tab:blue"),
        (flooded, f"b={b:g}", "tab:red"),
    ):
        h = result.history
        ax_val.plot(epochs, h.val_loss, color=colour, label=f"val loss, {label}")
        ax_acc.plot(
            epochs,
            h.val_accuracy,
            color=colour,
            linestyle="--",
            label=f"val accuracy, {label}",
        )
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("validation loss (solid)")
    ax_acc.set_ylabel("validation accuracy (dashed)")
    ax_val.set_title("Validation loss next to validation accuracy")
    lines = ax_val.get_legend_handles_labels()
    more = ax_acc.get_legend_handles_labels()
    ax_val.legend(
        lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center right"
    )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _row(name: str, result: TrainResult) -> list[str]:
    h = result.history
    share = result.ascent_steps / max(result.steps, 1)
    return [
        name,
        f"{result.flood_level:g}",
        f"{h.test_accuracy[-1]:.4f}",
        f"{h.test_loss[-1]:.4f}",
        f"{h.step_loss[-1]:.4f}",
        f"{h.train_loss[-1]:.4f}",
        f"{h.val_accuracy[-1]:.4f}",
        f"{share:.1%}",
    ]


def format_table(rows: list[list[str]]) -> str:
    """The results table. ``batch loss`` is the last epoch's mean mini-batch
    loss in training mode, the loss flooding compares with ``b``; ``train
    loss`` is the training split evaluated afterwards in inference mode."""
    header = [
        "run",
        "flood level",
        "test acc",
        "test loss",
        "batch loss",
        "train loss",
        "val acc",
        "ascended",
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Runs the demo; returns its numbers (also written as JSON)."""
    start = time.perf_counter()
    data = load_dataset(
        config.dataset, seed=config.seed, label_noise=config.label_noise
    )
    train_config = _train_config(config)
    model = MLP(
        data.x_train.shape[1],
        data.num_classes,
        width=config.width,
        depth=config.depth,
        rngs=nnx.Rngs(config.seed),
    )
    print(
        f"floodax demo: {config.dataset} ({len(data.y_train)} train, {len(data.y_val)} "
        f"validation, {len(data.y_test)} clean test; "
        f"label noise {config.label_noise:g}), "
        f"MLP {config.depth}×{config.width}, {config.optimizer} lr "
        f"{train_config.learning_rate:g}, {config.epochs} epochs"
    )
    baseline = train(
        model, data, train_config, flood_level=0.0, progress=config.progress
    )
    sweep: SweepResult | None = None
    if config.flood_level is None:
        sweep = sweep_flood_levels(
            model, data, train_config, config.grid, progress=config.progress
        )
        chosen = sweep.best_flood_level
        print(
            f"swept {len(sweep.flood_levels)} flood levels in one vmapped run; "
            f"best on validation accuracy: b = {chosen:g}"
        )
    else:
        chosen = config.flood_level
    flooded = train(
        model, data, train_config, flood_level=chosen, progress=config.progress
    )
    print()
    print(format_table([_row("baseline", baseline), _row("flooding", flooded)]))
    os.makedirs(config.out, exist_ok=True)
    png = os.path.join(config.out, "floodax_demo.png")
    _plot(
        png,
        baseline,
        flooded,
        f"floodax demo: {config.dataset}, label noise {config.label_noise:g}",
    )
    results: dict[str, Any] = {
        "config": {**dataclasses.asdict(config), "grid": list(config.grid)},
        "baseline": {
            "test_accuracy": float(baseline.history.test_accuracy[-1]),
            "test_loss": float(baseline.history.test_loss[-1]),
        },
        "flooding": {
            "flood_level": chosen,
            "test_accuracy": float(flooded.history.test_accuracy[-1]),
            "test_loss": float(flooded.history.test_loss[-1]),
            "ascent_share": flooded.ascent_steps / max(flooded.steps, 1),
        },
        "png": png,
        "seconds": time.perf_counter() - start,
    }
    if sweep is not None:
        results["sweep"] = {
            "flood_levels": sweep.flood_levels.tolist(),
            "final_val_accuracy": sweep.history.val_accuracy[:, -1].tolist(),
            "test_accuracy": sweep.test_accuracy.tolist(),
        }
    with open(os.path.join(config.out, "floodax_demo.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {png} and floodax_demo.json in {results['seconds']:.0f} s")
    return results
