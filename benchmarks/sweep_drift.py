"""How far a vmapped sweep's runs drift from the same levels trained alone.

``sweep_flood_levels(..., vectorized=False)`` runs each level through the
compiled epoch that ``train`` uses, so its runs *are* ``train``'s, bit for
bit (tested). ``vectorized=True`` trains all levels at once under
``jax.vmap``: the batched matrix products sum in another order, so the runs
start to differ in the last bits, and training can amplify that. This script
trains the paper's sweep both ways from the same start on the same data and
reports, per epoch and per level, how far apart the two runs are.

Run:  python benchmarks/sweep_drift.py [--epochs 200] [--dataset sinusoid2d]
Writes benchmarks/results/sweep_drift.{md,json,png}.
"""

from __future__ import annotations

import os
import time

import numpy as np
from _machine import command, describe, write_results
from _machine import parser as make_parser
from flax import nnx

from floodax.experiments import MLP, PAPER_GRID, TrainConfig, load_dataset
from floodax.experiments import sweep_flood_levels as sweep


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--dataset", default="sinusoid2d")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_dataset(args.dataset, seed=args.seed, label_noise=0.1)
    model = MLP(
        data.x_train.shape[1],
        data.num_classes,
        width=args.width,
        rngs=nnx.Rngs(args.seed),
    )
    lr = 0.01 if args.optimizer == "sgd" else 1e-3
    config = TrainConfig(epochs=args.epochs, optimizer=args.optimizer, learning_rate=lr)
    start = time.perf_counter()
    alone = sweep(model, data, config, PAPER_GRID, vectorized=False, progress=False)
    batched = sweep(model, data, config, PAPER_GRID, vectorized=True, progress=False)
    seconds = time.perf_counter() - start

    def gap(field):
        a = np.asarray(getattr(batched.history, field), np.float64)
        b = np.asarray(getattr(alone.history, field), np.float64)
        return np.abs(a - b)  # (levels, epochs)

    loss_gap = gap("train_loss")
    step_gap = gap("step_loss")
    decisions = gap("ascent_share") > 0
    levels = np.asarray(PAPER_GRID)
    differ = step_gap > 0
    first = np.where(differ.any(1), differ.argmax(1) + 1, -1)
    first_flip = np.where(decisions.any(1), decisions.argmax(1) + 1, -1)
    test_gap = np.abs(batched.test_accuracy - alone.test_accuracy)
    val_gap = gap("val_clean_accuracy")[:, -1]
    epochs = np.arange(1, args.epochs + 1)
    checkpoints = [e for e in (1, 2, 5, 10, 20, 50, 100, 150, 200) if e <= args.epochs]
    rows = [
        f"| {e} | {np.median(loss_gap[:, e - 1]):.1e} | {loss_gap[:, e - 1].max():.1e} "
        f"| {int(decisions[:, :e].any(1).sum())} of {len(levels)} |"
        for e in checkpoints
    ]
    flooded = levels > 0
    summary = {
        "median_first_differing_epoch": float(np.median(first[first > 0]))
        if np.any(first > 0)
        else None,
        "levels_with_a_flipped_flood_decision": int((first_flip > 0).sum()),
        "final_test_accuracy_gap_max": float(test_gap.max()),
        "final_test_accuracy_gap_median": float(np.median(test_gap)),
        "final_test_accuracy_gap_max_flooded": float(test_gap[flooded].max()),
        "final_test_accuracy_gap_baseline": float(test_gap[0]),
        "final_val_accuracy_gap_max": float(val_gap.max()),
        "chosen_level_alone": alone.best_flood_level,
        "chosen_level_vmapped": batched.best_flood_level,
    }
    command_line = command(__file__)
    machine = describe()
    md = "\n".join(
        [
            "# Vmapped sweep vs the same levels trained alone",
            "",
            f"Command: `{command_line}`  ",
            f"Machine: {machine}; both sweeps {seconds / 60:.1f} minutes.  ",
            f"Setting: {args.dataset}, label noise 0.1, {args.optimizer}, MLP "
            f"4×{args.width}, {args.epochs} full-batch epochs, the 51 levels of "
            "the paper's grid; `vectorized=False` (each run bit for bit "
            "`train`'s) against `vectorized=True`.",
            "",
            "| epoch | median \\|Δ train loss\\| over levels | largest | levels whose "
            "flood decisions have differed |",
            "|---|---|---|---|",
            *rows,
            "",
            f"* Median first epoch whose mini-batch loss differs at all: "
            f"{summary['median_first_differing_epoch']}.",
            f"* Levels with at least one flood decision taken the other way: "
            f"{summary['levels_with_a_flipped_flood_decision']} of {len(levels)}.",
            f"* Final clean test accuracy, |vmapped − alone|: median "
            f"{100 * summary['final_test_accuracy_gap_median']:.2f} points, largest "
            f"{100 * summary['final_test_accuracy_gap_max']:.2f} (baseline b = 0: "
            f"{100 * summary['final_test_accuracy_gap_baseline']:.2f}).",
            f"* Chosen level: {summary['chosen_level_alone']:g} alone, "
            f"{summary['chosen_level_vmapped']:g} vmapped.",
            "",
        ]
    )
    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    floor = 1e-9
    for i, colour in (
        (0, "tab:blue"),
        (10, "tab:orange"),
        (25, "tab:green"),
        (50, "tab:red"),
    ):
        ax.semilogy(
            epochs,
            np.maximum(loss_gap[i], floor),
            color=colour,
            label=f"b = {levels[i]:g}",
        )
    ax.semilogy(
        epochs,
        np.maximum(np.median(loss_gap, 0), floor),
        color="black",
        linewidth=2,
        label="median over 51 levels",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"|Δ train loss| (floored at {floor:g})")
    ax.set_title("Vmapped sweep vs each level trained alone")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "sweep_drift.png"), dpi=110)
    plt.close(fig)
    write_results(
        args.out,
        "sweep_drift",
        md,
        {
            "command": command_line,
            "machine": machine,
            "summary": summary,
            "first_differing_epoch": first.tolist(),
            "first_flipped_decision": first_flip.tolist(),
            "test_accuracy_gap": test_gap.tolist(),
            "median_train_loss_gap": np.median(loss_gap, 0).tolist(),
        },
    )


if __name__ == "__main__":
    main()
