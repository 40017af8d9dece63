"""``floodax demo``: flooding against a baseline, on the authors' protocol.

One sweep trains every flood level of the grid (0, the unflooded baseline,
included) and selects the level by the final validation accuracy, as the
authors' ``run_demo_synth.py`` does; the table reports those very runs. The
figure needs the clean test accuracy along training, which the sweep does
not record for every level, so the baseline and the chosen level are
trained again with the test split evaluated along the way: with the
sequential sweep (the default on a CPU) these replays are bit for bit the
sweep's runs, and the demo checks that they are.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

import floodax
from floodax._progress import progress_bar
from floodax.experiments.datasets import Dataset, load_dataset
from floodax.experiments.models import MLP
from floodax.experiments.training import (
    PAPER_GRID,
    SweepResult,
    TrainConfig,
    TrainResult,
    sweep_flood_levels,
    train,
)

DEFAULT_MINUTES = 5.0
"""Runs estimated to take longer than this are announced before they start."""
TEST_POINTS = 40
"""The test split is evaluated at about this many epochs of a replay."""


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
    validation: str = "clean"
    tie_break: str = "val_loss"
    vectorized: bool | str = "auto"
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
        validation=config.validation,
        seed=config.seed,
    )


def _levels(config: DemoConfig) -> tuple[float, ...]:
    """The levels to train: the grid (or the one level asked for), with the
    unflooded baseline b = 0 always among them, as in the authors' grids."""
    levels = (config.flood_level,) if config.flood_level is not None else config.grid
    return tuple(sorted({0.0, *(float(b) for b in levels)}))


def estimate_seconds(
    model: MLP, data: Dataset, config: TrainConfig, levels: int, replays: int
) -> float:
    """The demo's run time, extrapolated from timing one jitted training step
    and one evaluation of this model on this machine (a second or two)."""
    graphdef, state = nnx.split(model)
    x, y = np.asarray(data.x_train), np.asarray(data.y_train)
    batch = min(config.batch_size or len(y), len(y))

    @jax.jit
    def step(state, x, y):
        def loss(state):
            import optax

            logits = nnx.merge(graphdef, state)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return jax.grad(loss)(state)

    def timed(fn, *args, repeat=3):
        jax.block_until_ready(fn(*args))
        start = time.perf_counter()
        for _ in range(repeat):
            jax.block_until_ready(fn(*args))
        return (time.perf_counter() - start) / repeat

    step_s = timed(step, state, x[:batch], y[:batch])
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    per_point = timed(forward, state, x) / len(y)
    epoch_s = len(y) // batch * step_s + per_point * (len(y) + len(data.y_val))
    test_s = per_point * len(data.y_test)
    runs = levels + replays
    return config.epochs * epoch_s * runs + test_s * (levels + replays * TEST_POINTS)


_BELOW = {
    "fontsize": 8,
    "loc": "upper center",
    "bbox_to_anchor": (0.5, -0.13),
    "ncol": 2,
}
"""Legend placement of the demo's panels: centred below the axes."""


def _plot(
    path: str, baseline: TrainResult, flooded: TrainResult, validation: str, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Constrained layout makes room for the legends below the axes, where no
    # curve can run over them (on the third panel the twin axis's curves
    # were drawn over a legend inside it).
    fig, (ax_test, ax_loss, ax_val) = plt.subplots(
        1, 3, figsize=(16, 5.8), layout="constrained"
    )
    b = flooded.flood_level
    twin = ax_val.twinx()
    runs = (
        (baseline, "no flooding", "tab:blue"),
        (flooded, f"flooding, b = {b:g}", "tab:red"),
    )
    for result, label, colour in runs[: 1 if flooded is baseline else 2]:
        h = result.history
        epochs = np.arange(1, len(h.step_loss) + 1)
        tested = ~np.isnan(h.test_accuracy)
        ax_test.plot(
            epochs[tested],
            100 * h.test_accuracy[tested],
            color=colour,
            marker=".",
            label=f"{label}: {100 * result.test_accuracy:.2f}% at the end",
        )
        ax_loss.plot(epochs, h.step_loss, color=colour, label=f"training loss, {label}")
        ax_loss.plot(
            epochs[tested],
            h.test_loss[tested],
            color=colour,
            linestyle="--",
            label=f"clean test loss, {label}",
        )
        val_loss, val_acc = h.validation(validation)
        ax_val.plot(epochs, val_loss, color=colour, label=f"loss, {label}")
        twin.plot(
            epochs,
            100 * val_acc,
            color=colour,
            linestyle=":",
            label=f"accuracy, {label}",
        )
    ax_test.set_title("Clean test accuracy")
    ax_test.set_xlabel("epoch")
    ax_test.set_ylabel("accuracy (%)")
    ax_test.legend(**_BELOW)
    ax_test.grid(alpha=0.3)
    ax_loss.axhline(b, color="grey", linewidth=1, linestyle=":", label=f"b = {b:g}")
    ax_loss.set_yscale("log")
    ax_loss.set_title("Training loss held at b (training mode), test loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy (log scale)")
    ax_loss.legend(**_BELOW)
    ax_loss.grid(alpha=0.3)
    ax_val.set_title(f"Validation ({validation} labels): loss vs accuracy")
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("cross-entropy (solid)")
    twin.set_ylabel("accuracy, % (dotted)")
    lines = ax_val.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax_val.legend(lines[0] + more[0], lines[1] + more[1], **_BELOW)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _row(name: str, sweep: SweepResult, index: int) -> list[str]:
    h = sweep.history
    _, val_acc = h.validation(sweep.validation)
    return [
        name,
        f"{sweep.flood_levels[index]:g}",
        f"{sweep.test_accuracy[index]:.4f}",
        f"{sweep.test_loss[index]:.4f}",
        f"{h.step_loss[index, -1]:.4f}",
        f"{h.train_loss[index, -1]:.4f}",
        f"{h.train_accuracy[index, -1]:.4f}",
        f"{val_acc[index, -1]:.4f}",
        f"{sweep.ascent_share[index]:.1%}",
    ]


def format_table(rows: list[list[str]], validation: str = "clean") -> str:
    """The results table. ``batch loss`` is the last epoch's mean mini-batch
    loss in training mode, the loss flooding compares with ``b``; ``train
    loss`` and ``train acc`` are the (noisy) training split evaluated
    afterwards in inference mode."""
    header = [
        "run",
        "flood level",
        "test acc",
        "test loss",
        "batch loss",
        "train loss",
        "train acc",
        f"val acc ({validation})",
        "ascended",
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


_COMPARED = ("step_loss", "train_loss", "val_loss", "val_clean_loss", "val_accuracy")


def replay_difference(sweep: SweepResult, index: int, replay: TrainResult) -> float:
    """The largest absolute difference between a replay's records and the
    sweep's run at ``index`` (0.0 when they are bit for bit the same)."""
    diffs = [
        np.nanmax(
            np.abs(
                np.asarray(getattr(replay.history, f), np.float64)
                - np.asarray(getattr(sweep.history, f)[index], np.float64)
            ),
            initial=0.0,
        )
        for f in _COMPARED
    ]
    diffs.append(abs(replay.test_accuracy - float(sweep.test_accuracy[index])))
    return float(max(diffs))


def warnings_for(
    sweep: SweepResult,
    num_classes: int,
    grid_size: int,
    *,
    chosen: int | None = None,
) -> list[str]:
    """Plain-language flags for results that should not be read at face value.

    ``chosen`` is the index of the level reported as flooding (None: the
    sweep's choice, ``sweep.best_index``). A test accuracy within a tenth of
    the way from chance to 1 counts as near chance.
    """
    notes = []
    chance = 1.0 / num_classes

    def near_chance(index: int) -> bool:
        return float(sweep.test_accuracy[index]) < chance + 0.1 * (1 - chance)

    if near_chance(0):
        notes.append(
            f"the baseline's test accuracy ({float(sweep.test_accuracy[0]):.1%}) is "
            f"near chance ({chance:.0%}): it has not learned the task, so a gain "
            "from flooding here is not a gain against memorisation; train longer "
            "or raise the learning rate."
        )
    chosen = sweep.best_index if chosen is None else chosen
    if chosen != 0 and near_chance(chosen):
        b = float(sweep.flood_levels[chosen])
        guess = math.log(num_classes)
        why = (
            f"; b is at or above ln {num_classes} = {guess:.3f}, the loss of a "
            "uniform guess, and flooding holds the training loss near b: give a "
            "lower level"
            if b >= guess
            else ": train longer, raise the learning rate or lower the level"
        )
        notes.append(
            f"the flooded run (b = {b:g}) is no better than chance: "
            f"{float(sweep.test_accuracy[chosen]):.1%} test accuracy against "
            f"{chance:.0%} for guessing{why}."
        )
    levels = sweep.flood_levels
    if grid_size > 2 and sweep.best_index == len(levels) - 1:
        notes.append(
            f"the chosen level {levels[-1]:g} is the largest of the grid: the best "
            "level may lie above it; extend the grid (--grid)."
        )
    if sweep.best_index == 0:
        notes.append(
            "the baseline (b = 0) had the best validation accuracy: flooding did "
            "not help on this run."
        )
    return notes


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Runs the demo; returns its numbers (also written as JSON).

    The flooding row is the level chosen on validation accuracy or, with
    ``config.flood_level``, that level even where the baseline validates
    better. The record's ``config["grid"]`` lists the levels trained, the
    baseline b = 0 included.
    """
    start = time.perf_counter()
    data = load_dataset(
        config.dataset, seed=config.seed, label_noise=config.label_noise
    )
    train_config = _train_config(config)
    levels = _levels(config)
    model = MLP(
        data.x_train.shape[1],
        data.num_classes,
        width=config.width,
        depth=config.depth,
        rngs=nnx.Rngs(config.seed),
    )
    batches = (
        "full batch" if config.batch_size is None else f"batches of {config.batch_size}"
    )
    print(
        f"floodax demo: {config.dataset} ({len(data.y_train)} train, {len(data.y_val)} "
        f"validation, {len(data.y_test)} clean test; label noise "
        f"{config.label_noise:g}), MLP {config.depth}×{config.width} (PyTorch "
        f"initialisation and batch norm, as the authors'), {config.optimizer} lr "
        f"{train_config.learning_rate:g}, {config.epochs} epochs, "
        f"{batches}"
    )
    estimate = estimate_seconds(model, data, train_config, len(levels), 2)
    if estimate > 60 * DEFAULT_MINUTES:
        print(
            f"note: this run will take about {estimate / 60:.0f} minutes on this "
            f"machine (the default run takes about 3); Ctrl-C stops it."
        )
    sweep = sweep_flood_levels(
        model,
        data,
        train_config,
        levels,
        tie_break=config.tie_break,
        vectorized=config.vectorized,
        progress=config.progress,
    )
    chosen = (
        sweep.best_index
        if config.flood_level is None
        else levels.index(float(config.flood_level))
    )
    how = "together under jax.vmap" if sweep.vectorized else "one after another"
    print(
        f"trained {len(levels)} flood levels {how}; best on the final "
        f"{config.validation} validation accuracy: b = {sweep.best_flood_level:g}"
    )
    print()
    print(
        format_table(
            [_row("baseline", sweep, 0), _row("flooding", sweep, chosen)],
            config.validation,
        )
    )
    test_every = max(1, config.epochs // TEST_POINTS)
    replayed = (0,) if chosen == 0 else (0, chosen)
    total = len(replayed) * config.epochs
    with progress_bar(config.progress, total, "replays for the figure") as bar:
        replays = [
            train(
                model,
                data,
                train_config,
                flood_level=float(levels[index]),
                test_every=test_every,
                progress=bar,
            )
            for index in replayed
        ]
    baseline, flooded = replays[0], replays[-1]
    differences = [
        replay_difference(sweep, 0, baseline),
        replay_difference(sweep, chosen, flooded),
    ]
    if sweep.vectorized:
        replay_note = (
            "the curves come from the two levels trained alone; the vmapped "
            f"sweep's runs differ from them by at most {max(differences):.2g} "
            "(rounding of batched matrix products, see benchmarks/sweep_drift.md)"
        )
    elif max(differences) == 0.0:
        replay_note = (
            "the curves come from replays of the two runs, checked bit for bit "
            "equal to the sweep's"
        )
    else:
        replay_note = (
            f"WARNING: the replays differ from the sweep's runs by up to "
            f"{max(differences):.2g}, though they should be bit for bit equal"
        )
    print(f"\n{replay_note}")
    if chosen != 0:
        stats = floodax.flood_stats(flooded.optimizer_state)
        print(
            "floodax.flood_stats(optimizer state) of the flooded run: "
            f"{int(stats['ascent_count'])} of {int(stats['count'])} steps ascended "
            f"({float(stats['ascent_share']):.1%}) at flood level "
            f"{float(stats['flood_level']):g}"
        )
    notes = warnings_for(sweep, data.num_classes, len(levels), chosen=chosen)
    for note in notes:
        print(f"note: {note}")
    os.makedirs(config.out, exist_ok=True)
    png = os.path.join(config.out, "floodax_demo.png")
    _plot(
        png,
        baseline,
        flooded,
        config.validation,
        f"floodax demo: {config.dataset}, label noise {config.label_noise:g}, "
        f"{config.optimizer}, b chosen on {config.validation} validation accuracy",
    )

    def summary(index: int) -> dict[str, float]:
        return {
            "flood_level": float(levels[index]),
            "test_accuracy": float(sweep.test_accuracy[index]),
            "test_loss": float(sweep.test_loss[index]),
            "train_accuracy": float(sweep.history.train_accuracy[index, -1]),
            "ascent_share": float(sweep.ascent_share[index]),
        }

    results: dict[str, Any] = {
        "config": {**dataclasses.asdict(config), "grid": list(levels)},
        "baseline": summary(0),
        "flooding": summary(chosen),
        "sweep": {
            "flood_levels": sweep.flood_levels.tolist(),
            "final_val_accuracy": sweep.history.validation(config.validation)[1][
                :, -1
            ].tolist(),
            "test_accuracy": sweep.test_accuracy.tolist(),
            "vectorized": sweep.vectorized,
        },
        "replay_max_difference": max(differences),
        "notes": notes,
        "png": png,
        "estimated_seconds": estimate,
        "seconds": time.perf_counter() - start,
    }
    with open(os.path.join(config.out, "floodax_demo.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {png} and floodax_demo.json in {results['seconds']:.0f} s")
    return results
