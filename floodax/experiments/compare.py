"""The family compared: every method's grid, selected on validation, over seeds.

One *cell* is one dataset × label noise × method × seed: the method's whole
grid trained by :func:`floodax.experiments.sweep_flood_levels` (one compiled
epoch for every value), the value with the best final validation accuracy
chosen, and its clean test accuracy recorded. The test split never takes
part in the choice. Cells are cached one JSON entry each, so a run stopped
half way resumes where it stopped, and a finished cell is never trained
again. ``benchmarks/family.py`` runs the full comparison, ``floodax demo
--compare`` a short one.

The protocol is SoftAD's authors' benchmark (github.com/feedbackward/bdd-flood,
``bdd-flood/run_benchmarks.py``): mini-batches of 200 (``bs_tr_dict``), SGD
with learning rate 0.1 and momentum 0.9 (``paras_mth_defaults``:
``step_size``, ``momentum``), no weight decay, 5 trials (``num_trials``), the
grids of :mod:`floodax.experiments.family`, and the setting chosen per trial
by the final validation accuracy (``bdd-flood/eval_benchmarks.ipynb``,
``get_best_idx`` with ``metric_for_validation = "acc_va"``). It departs in
the epochs (500 there; fewer here, to fit a CPU), in breaking ties of
validation accuracy by validation loss (:func:`select_flood_level`; the
authors take the first), and in the validation labels, which carry the same
label noise as training (``validation="noisy"``, what a practitioner has).

The rule of thumb (:func:`floodax.suggest_flood_level`: half the training
loss where the validation loss starts to rise) is measured beside the
sweep: from the ERM cell's curves it proposes ``b``, one flooded run trains
at it, and the second table compares its ``b`` and test accuracy with what
the flooding sweep chose. "The training loss" is read two ways, each a cell
of its own: the training split's loss evaluated at each epoch's end, and
the mean of the epoch's mini-batch losses, which is what a training log
prints and what flooding compares with ``b``. The two differ: the mean lags
the model's improvement during the epoch, and in the MLP's batch norm it
sees each batch's statistics where the evaluation uses the running ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import floodax
from floodax._names import DATASETS
from floodax._progress import Progress, progress_bar
from floodax._validation import check_int, check_real
from floodax.experiments.datasets import load_dataset
from floodax.experiments.family import (
    ASCENT_RATIO,
    GNP_RADIUS,
    GSAM_ALPHA,
    get_method,
)
from floodax.experiments.models import MODEL_KINDS, make_model
from floodax.experiments.training import (
    SweepResult,
    TrainConfig,
    _compiled,
    _resolve_vectorized,
    _Runner,
    heldout_losses,
    sweep_flood_levels,
    train,
)

RULE = "rule"
"""The cache's method name for the rule of thumb's flooded run, ``b`` taken
from the training split's loss evaluated at each epoch's end."""
RULE_LOGGED = "rule_logged"
"""The same, ``b`` taken from the mean of each epoch's mini-batch losses:
the training loss a training log prints, and the loss flooding compares."""
RULE_SOURCES = {
    RULE: ("train_loss", "training split at the epoch's end"),
    RULE_LOGGED: ("step_loss", "the epoch's mini-batch mean (the log)"),
}
"""Each rule cell's ERM curve, and how the tables name it."""
AUX_FOLDS = 5
"""AdaFlood's auxiliary models (the authors' ``aux_num: 5``)."""


@dataclasses.dataclass(frozen=True)
class FamilyConfig:
    """What to compare, and the protocol.

    Attributes:
      datasets: names for :func:`floodax.experiments.load_dataset`.
      label_noises: fractions of training and validation labels flipped.
      methods: names of :data:`floodax.experiments.family.FAMILY`.
      seeds: one trial each: the split, the label noise, the model's
        initialisation and the mini-batch order.
      epochs: passes over the training split.
      batch_size, learning_rate, momentum: the optimizer (SGD).
      model: ``"mlp"`` or ``"cnn"`` (:func:`floodax.experiments.make_model`;
        the CNN needs datasets with an ``image_shape``: mnist, mnist1d,
        digits).
      width, depth: the MLP's hidden units and layers, or the CNN's channels
        and convolutions.
      validation: ``"noisy"`` or ``"clean"`` validation labels for the
        choice.
      grids: ``((method, values), ...)`` replacing registry grids.
      rule: also measure the rule of thumb (needs ``"erm"`` and ``"flood"``).
      vectorized: as :func:`sweep_flood_levels`.

    Examples:
      >>> from floodax.experiments import FamilyConfig
      >>> config = FamilyConfig(methods=("erm", "flood", "sam"),
      ...                       grids=(("sam", (0.05, 0.1)),))
      >>> print(config.grid("flood"), config.grid("sam"), config.batch_size)
      (0.01, 0.12, 0.23, 0.34, 0.45, 0.56, 0.67, 0.78, 0.89, 1.0) (0.05, 0.1) 200
    """

    datasets: tuple[str, ...] = ("digits",)
    label_noises: tuple[float, ...] = (0.0, 0.2)
    methods: tuple[str, ...] = (
        "erm",
        "flood",
        "iflood",
        "adaflood",
        "softad",
        "sam",
        "asam",
        "gsam",
        "gnp",
        "penalty",
        "alternate",
        "erm_rate",
    )
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 60
    batch_size: int = 200
    learning_rate: float = 0.1
    momentum: float = 0.9
    model: str = "mlp"
    width: int = 256
    depth: int = 2
    validation: str = "noisy"
    grids: tuple[tuple[str, tuple[float, ...]], ...] = ()
    rule: bool = True
    vectorized: bool | str = "auto"

    def __post_init__(self):
        for name in self.datasets:
            if name not in DATASETS:
                raise ValueError(
                    f"`datasets` must name datasets of {DATASETS}, got {name!r}."
                )
        for noise in self.label_noises:
            check_real("label_noises", noise, low=0.0, high=1.0)
        for name in self.methods:
            get_method(name)
        for name, _ in self.grids:
            get_method(name)
        if not (self.datasets and self.label_noises and self.methods and self.seeds):
            raise ValueError(
                "`datasets`, `label_noises`, `methods` and `seeds` must each name "
                "at least one."
            )
        for seed in self.seeds:
            check_int("seeds", seed, minimum=0)
        # A cell's key writes its noise level to 6 significant digits: a
        # level with more would be confused with its rounding, across
        # sittings too.
        for noise in self.label_noises:
            if float(f"{noise:g}") != noise:
                raise ValueError(
                    "`label_noises` must have at most 6 significant digits (the "
                    f"cache keys write them so), got {noise!r}; round it."
                )
        # A repeat would count one seed twice in the means and the paired
        # tests.
        for name, keys in (
            ("datasets", self.datasets),
            ("label_noises", self.label_noises),
            ("methods", self.methods),
            ("seeds", self.seeds),
        ):
            if len(set(keys)) != len(keys):
                raise ValueError(
                    f"`{name}` must not repeat a value, got {getattr(self, name)}."
                )
        if self.model not in MODEL_KINDS:
            raise ValueError(
                f"`model` must be one of {MODEL_KINDS}, got {self.model!r}."
            )
        check_int("width", self.width, minimum=1)
        check_int("depth", self.depth, minimum=1)
        # The optimizer and the validation labels, checked as training will.
        _train_config(self, "erm", 0)
        if self.rule and not {"erm", "flood"} <= set(self.methods):
            raise ValueError(
                "`rule=True` compares the rule of thumb with the flooding sweep "
                "from an ERM run: `methods` must include 'erm' and 'flood', or "
                "pass rule=False."
            )

    def grid(self, method: str) -> tuple[float, ...]:
        """The values of ``method``'s hyperparameter to sweep."""
        return dict(self.grids).get(method, get_method(method).grid)

    def protocol(self) -> dict[str, Any]:
        """The settings every cached cell depends on (not which cells to
        run): the configuration's, the sweep strategy ``"auto"`` resolves to
        on this backend (a cache begun on a CPU, where the grid runs one
        value after another, is refused on an accelerator, where it runs
        under ``vmap`` and rounds differently), and the registry's fixed
        constants. A method's grid is checked cell by cell instead (each
        record holds its own), so adding a method keeps a cache."""
        skip = ("datasets", "label_noises", "methods", "seeds", "rule", "grids")
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        out["vectorized"] = _resolve_vectorized(self.vectorized)
        out["backend"] = jax.default_backend()
        out["constants"] = {
            "aux_folds": AUX_FOLDS,
            "gsam_alpha": GSAM_ALPHA,
            "gnp_radius": GNP_RADIUS,
            "ascent_ratio": ASCENT_RATIO,
        }
        return json.loads(json.dumps(out))


def cell_key(dataset: str, noise: float, method: str, seed: int) -> str:
    """The cache key of one cell."""
    return f"{dataset}|{noise:g}|{method}|{seed}"


def _train_config(config: FamilyConfig, method: str, seed: int) -> TrainConfig:
    return TrainConfig(
        epochs=config.epochs,
        optimizer="sgd",
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        batch_size=config.batch_size,
        validation=config.validation,
        method=method,
        seed=seed,
    )


def record_from_sweep(sweep: SweepResult, seconds: float) -> dict[str, Any]:
    """A cell's JSON record: per value the final validation accuracy and loss
    (on the labels that chose) and the test accuracy; the chosen value is
    the sweep's, picked on validation alone."""
    loss, accuracy = sweep.history.validation(sweep.validation)
    i = sweep.best_index
    return {
        "grid": sweep.flood_levels.tolist(),
        "val_accuracy": np.asarray(accuracy)[:, -1].tolist(),
        "val_loss": np.asarray(loss)[:, -1].tolist(),
        "test_accuracy": sweep.test_accuracy.tolist(),
        "chosen_index": int(i),
        "chosen": float(sweep.flood_levels[i]),
        "chosen_test_accuracy": float(sweep.test_accuracy[i]),
        "chosen_val_accuracy": float(np.asarray(accuracy)[i, -1]),
        "seconds": float(seconds),
    }


def run_cell(
    config: FamilyConfig,
    dataset: str,
    noise: float,
    method: str,
    seed: int,
    *,
    cells: dict[str, dict] | None = None,
    progress: bool | Progress = False,
) -> dict[str, Any]:
    """Trains one cell and returns its record. The rule of thumb's cells
    (``method="rule"`` and ``"rule_logged"``, :data:`RULE_SOURCES`) read the
    ERM cell of the same dataset, noise and seed from ``cells``."""
    data = load_dataset(dataset, seed=seed, label_noise=noise)
    model = make_model(
        data, config.model, width=config.width, depth=config.depth, seed=seed
    )
    start = time.perf_counter()
    if method in RULE_SOURCES:
        erm = cells[cell_key(dataset, noise, "erm", seed)]
        suggestion = floodax.suggest_flood_level(
            erm[RULE_SOURCES[method][0]], erm["curve_val_loss"]
        )
        result = train(
            model,
            data,
            _train_config(config, "flood", seed),
            flood_level=suggestion.flood_level,
            test_every=config.epochs,
            progress=progress,
        )
        return {
            "flood_level": suggestion.flood_level,
            "epoch": suggestion.epoch,
            "validation_loss_rises": suggestion.validation_loss_rises,
            "test_accuracy": result.test_accuracy,
            "seconds": time.perf_counter() - start,
        }
    train_config = _train_config(config, method, seed)
    aux = None
    if get_method(method).needs_aux:
        aux = heldout_losses(
            model,
            data,
            _train_config(config, "erm", seed),
            num_folds=AUX_FOLDS,
            seed=seed,
            progress=progress,
        ).losses
    sweep = sweep_flood_levels(
        model,
        data,
        train_config,
        config.grid(method),
        aux_losses=aux,
        vectorized=config.vectorized,
        progress=progress,
    )
    record = record_from_sweep(sweep, time.perf_counter() - start)
    if method == "erm":
        loss, _ = sweep.history.validation(config.validation)
        record["train_loss"] = sweep.history.train_loss[0].tolist()
        record["step_loss"] = sweep.history.step_loss[0].tolist()
        record["curve_val_loss"] = np.asarray(loss)[0].tolist()
    return record


def _cells(config: FamilyConfig) -> list[tuple[str, float, str, int]]:
    methods = list(config.methods) + (list(RULE_SOURCES) if config.rule else [])
    return [
        (d, float(n), m, s)
        for d in config.datasets
        for n in config.label_noises
        for s in config.seeds
        for m in methods
    ]


def _units(config: FamilyConfig, method: str) -> int:
    """Epoch units of a cell on the progress bar."""
    if method in RULE_SOURCES:
        return config.epochs
    runs = len(config.grid(method))
    if get_method(method).needs_aux:
        runs += AUX_FOLDS
    return runs * config.epochs


def load_cache(path: str, config: FamilyConfig) -> dict[str, dict]:
    """The cached cells at ``path`` (none if it does not exist); refuses a
    cache written under another protocol."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        cache = json.load(f)
    if cache.get("protocol") != config.protocol():
        theirs, ours = cache.get("protocol", {}), config.protocol()
        differ = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k))
        raise ValueError(
            f"the cache {path!r} was written under another protocol (differs in "
            f"{differ}); give another output folder or delete the cache."
        )
    cells = cache["cells"]
    for key, cell in cells.items():
        method = key.split("|")[2]
        if method in config.methods and cell["grid"] != list(config.grid(method)):
            raise ValueError(
                f"the cache {path!r} holds {key!r} trained on the grid "
                f"{cell['grid']}, not {list(config.grid(method))}; give another "
                "output folder, or delete that method's cells from the cache."
            )
    return cells


def _save_cache(path: str, config: FamilyConfig, cells: dict[str, dict]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"protocol": config.protocol(), "cells": cells}, f, indent=1)
    os.replace(tmp, path)


def cell_timing(config: FamilyConfig, dataset: str) -> tuple[float, float]:
    """``(setup_s, epoch_s)``: the seconds one ERM run of ``dataset`` takes
    to load, build and compile its programs and evaluate the test split
    once, and per epoch once compiled (the median of three), timed on the
    jitted epoch a cell runs. Timed twice, the second time counting: the
    first also pays what a process pays once. A few seconds."""
    for _ in range(2):
        start = time.perf_counter()
        data = load_dataset(dataset, seed=0)
        model = make_model(data, config.model, width=config.width, depth=config.depth)
        runner = _Runner(model, data, _train_config(config, "erm", 0))
        epoch_fn, initial, evaluate = _compiled(runner, batched=False)
        carry = initial(runner.init_state, jnp.float32(0.0))
        seconds = []
        for epoch in range(4):
            state, run, metrics = epoch_fn(*carry, jnp.asarray(epoch), runner.data)
            jax.block_until_ready(metrics)
            seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            carry = (state, run)
        jax.block_until_ready(evaluate(carry[0], *runner.test))
        epoch_s = float(np.median(seconds[1:]))
        setup_s = seconds[0] - epoch_s + time.perf_counter() - start
    return max(0.0, setup_s), epoch_s


def estimate(config: FamilyConfig, pending: Sequence[tuple]) -> float:
    """Seconds the ``pending`` cells should take on this machine: per
    dataset one timed ERM run (:func:`cell_timing`); per cell one setup
    (loading, compiling) and, for each run of its grid and of AdaFlood's
    folds, its epochs times its method's gradients per step. It counts the
    runs as trained one after another, as a CPU does; under ``vmap``
    (``vectorized=True``, an accelerator's default, and AdaFlood's folds
    always) they train together, and it overestimates."""
    timing = {d: cell_timing(config, d) for d in sorted({c[0] for c in pending})}
    total = 0.0
    for dataset, _, method, _ in pending:
        setup_s, epoch_s = timing[dataset]
        cost = 1.0 if method in RULE_SOURCES else get_method(method).cost
        total += setup_s + epoch_s * cost * _units(config, method)
    return total


def run_family(
    config: FamilyConfig,
    out: str,
    *,
    command: str = "",
    progress: bool = True,
    name: str = "family",
    train_cell: Callable[..., dict] = run_cell,
    estimator: Callable[[FamilyConfig, Sequence[tuple]], float] = estimate,
) -> dict[str, Any]:
    """Runs every cell not yet in ``out/cache.json``, then writes the tables
    (``out/family.md``) and the figure (``out/family.png``; ``name`` in
    place of ``family``: a report of part of a cache another configuration
    shares, such as fewer seeds).

    Prints an estimate of the time the missing cells take (``estimator``,
    :func:`estimate` by default) and draws a progress bar of their epochs.
    ``train_cell`` (:func:`run_cell` by default) trains one cell.

    Returns ``{"cells", "rows", "rule_rows", "table", "rule_table",
    "markdown", "png", "estimated_seconds", "seconds_all", "trained"}``:
    ``trained`` lists the cells trained by this call (the others came from
    the cache); ``seconds_all`` sums every cell's training time, whichever
    sitting trained it.

    Examples:
      >>> import tempfile
      >>> from floodax.experiments import FamilyConfig, run_family
      >>> config = FamilyConfig(methods=("erm",), label_noises=(0.2,),
      ...                       seeds=(0,), epochs=1, width=4, depth=1, rule=False)
      >>> out = tempfile.mkdtemp()
      >>> first = run_family(config, out, progress=False)  # doctest: +ELLIPSIS
      family: 1 of 1 cells to train ...
      >>> again = run_family(config, out, progress=False)  # doctest: +ELLIPSIS
      family: 0 of 1 cells to train ...
      >>> print(again["trained"], again["rows"] == first["rows"])
      [] True
    """
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "cache.json")
    cells = load_cache(path, config)
    pending = [c for c in _cells(config) if cell_key(*c) not in cells]
    seconds = estimator(config, pending) if pending else 0.0
    when = _duration(seconds)
    print(
        f"family: {len(pending)} of {len(_cells(config))} cells to train "
        f"(the rest cached in {path}); estimated {when} on this machine"
    )
    trained = []
    total = max(1, sum(_units(config, c[2]) for c in pending))
    with progress_bar(progress, total, "family") as bar:
        for dataset, noise, method, seed in pending:
            bar.status = f"{dataset}, noise {noise:g}, {method}, seed {seed}"
            record = train_cell(
                config, dataset, noise, method, seed, cells=cells, progress=bar
            )
            key = cell_key(dataset, noise, method, seed)
            cells[key] = record
            trained.append(key)
            _save_cache(path, config, cells)
    rows = summarise(config, cells)
    rule_rows = summarise_rule(config, cells) if config.rule else []
    seconds_all = sum(cells[cell_key(*c)]["seconds"] for c in _cells(config))
    table = format_table(rows)
    rule_table = format_rule_table(rule_rows) if config.rule else ""
    png = os.path.join(out, f"{name}.png")
    plot(png, rows, config)
    markdown = os.path.join(out, f"{name}.md")
    with open(markdown, "w") as f:
        f.write(
            _markdown(config, command, table, rule_table, rows, rule_rows, seconds_all)
        )
    return {
        "cells": cells,
        "rows": rows,
        "rule_rows": rule_rows,
        "table": table,
        "rule_table": rule_table,
        "markdown": markdown,
        "png": png,
        "estimated_seconds": seconds,
        "seconds_all": seconds_all,
        "trained": trained,
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return float(values.mean()), std


def _verdict(differences: np.ndarray) -> str:
    """``helps``/``hurts`` where the paired 95% interval excludes 0."""
    n = len(differences)
    if n < 2:
        return "one seed"
    from scipy.stats import t

    mean = differences.mean()
    half = t.ppf(0.975, n - 1) * differences.std(ddof=1) / math.sqrt(n)
    if mean - half > 0:
        return "helps"
    if mean + half < 0:
        return "hurts"
    return "no clear difference"


def _divergence(records: Sequence[dict]) -> dict[str, int]:
    """How many of the records' runs ended with a non-finite validation
    loss (diverged), out of how many, and on how many seeds the chosen run
    was one of them (every value of the grid diverged)."""
    ended = [np.isfinite(np.asarray(r["val_loss"], np.float64)) for r in records]
    return {
        "diverged": int(sum((~e).sum() for e in ended)),
        "runs": int(sum(e.size for e in ended)),
        "chosen_diverged": int(
            sum(not e[r["chosen_index"]] for e, r in zip(ended, records, strict=True))
        ),
    }


def summarise(config: FamilyConfig, cells: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per dataset × noise × method, over the seeds: the chosen
    value's test accuracy (mean, std), paired per-seed differences against
    ERM, flooding and the method's control (:class:`Method`'s ``control``,
    where it was run), the chosen values, wall time, and the runs that
    diverged (``diverged`` of ``runs``; ``chosen_diverged`` seeds on which
    every run did, so the chosen one too)."""
    rows = []
    for dataset in config.datasets:
        for noise in config.label_noises:

            def records(method, dataset=dataset, noise=noise):
                return [
                    cells[cell_key(dataset, noise, method, s)] for s in config.seeds
                ]

            def accuracies(method):
                return np.asarray([r["chosen_test_accuracy"] for r in records(method)])

            for method in config.methods:
                seeds = records(method)
                acc = accuracies(method)
                mean, std = _mean_std(acc)
                row = {
                    "dataset": dataset,
                    "noise": float(noise),
                    "method": method,
                    "label": get_method(method).label,
                    "symbol": get_method(method).symbol,
                    "test_accuracy": acc.tolist(),
                    "mean": mean,
                    "std": std,
                    "chosen": [r["chosen"] for r in seeds],
                    "seconds": sum(r["seconds"] for r in seeds),
                    **_divergence(seeds),
                }
                control = get_method(method).control
                for key, other in (
                    ("erm", "erm"),
                    ("flood", "flood"),
                    ("control", control),
                ):
                    if other in config.methods and other != method:
                        diff = acc - accuracies(other)
                        row[f"vs_{key}"] = _mean_std(diff)
                        row[f"verdict_{key}"] = _verdict(diff)
                if "vs_control" in row:
                    row["control"] = get_method(control).label
                rows.append(row)
    return rows


def summarise_rule(config: FamilyConfig, cells: dict[str, dict]) -> list[dict]:
    """One row per dataset × noise × reading of "the training loss"
    (:data:`RULE_SOURCES`): the rule of thumb's ``b`` and test accuracy
    against the flooding sweep's, their paired per-seed difference, and
    their cost."""
    rows = []
    for dataset in config.datasets:
        for noise in config.label_noises:

            def get(method, field, dataset=dataset, noise=noise):
                return np.asarray(
                    [
                        cells[cell_key(dataset, noise, method, s)][field]
                        for s in config.seeds
                    ]
                )

            sweep_acc = get("flood", "chosen_test_accuracy")
            sweep_mean, sweep_std = _mean_std(sweep_acc)
            sweep_b = _mean_std(get("flood", "chosen"))
            sweep_seconds = float(get("flood", "seconds").sum())
            erm_seconds = float(get("erm", "seconds").sum())
            for rule, (_, source) in RULE_SOURCES.items():
                rule_acc = get(rule, "test_accuracy")
                rule_mean, rule_std = _mean_std(rule_acc)
                rule_seconds = erm_seconds + float(get(rule, "seconds").sum())
                within = np.abs(rule_acc - sweep_acc) <= sweep_std
                rows.append(
                    {
                        "dataset": dataset,
                        "noise": float(noise),
                        "rule": rule,
                        "source": source,
                        "rule_b": _mean_std(get(rule, "flood_level")),
                        "sweep_b": sweep_b,
                        "rule_accuracy": (rule_mean, rule_std),
                        "sweep_accuracy": (sweep_mean, sweep_std),
                        "vs_sweep": _mean_std(rule_acc - sweep_acc),
                        "verdict_sweep": _verdict(rule_acc - sweep_acc),
                        "within_one_std": bool(
                            abs(rule_mean - sweep_mean) <= sweep_std
                        ),
                        "seeds_within": int(within.sum()),
                        "rises": int(get(rule, "validation_loss_rises").sum()),
                        "rule_seconds": rule_seconds,
                        "sweep_seconds": sweep_seconds,
                        "rule_runs": 2,
                        "sweep_runs": len(config.grid("flood")),
                    }
                )
    return rows


def _pm(pair: tuple[float, float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = pair
    if math.isnan(std):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def _diverged_cell(row: dict) -> str:
    cell = f"{row['diverged']} of {row['runs']}"
    if row["chosen_diverged"]:
        cell += f" (all, on {row['chosen_diverged']} seeds: accuracy meaningless)"
    return cell


def format_table(rows: Sequence[dict]) -> str:
    """The main table in markdown: test accuracy in %, mean ± std over seeds."""
    header = [
        "dataset",
        "noise",
        "method",
        "test acc. %",
        "vs ERM (paired)",
        "vs flooding (paired)",
        "vs its control (paired)",
        "chosen per seed",
        "runs diverged",
        "wall s",
    ]
    lines = []
    for r in rows:
        versus = [
            f"{_pm(r[f'vs_{o}'])} ({r[f'verdict_{o}']})" if f"vs_{o}" in r else "–"
            for o in ("erm", "flood", "control")
        ]
        if "control" in r:
            versus[2] = f"{versus[2]} against {r['control']}"
        chosen = ", ".join(f"{c:g}" for c in r["chosen"])
        lines.append(
            [
                r["dataset"],
                f"{r['noise']:g}",
                r["label"],
                _pm((r["mean"], r["std"])),
                *versus,
                "–" if r["method"] == "erm" else f"{r['symbol']} = {chosen}",
                _diverged_cell(r),
                f"{r['seconds']:.0f}",
            ]
        )
    return _markdown_table(header, lines)


def format_rule_table(rows: Sequence[dict]) -> str:
    """The rule of thumb against the flooding sweep, in markdown."""
    header = [
        "dataset",
        "noise",
        "training loss read from",
        "b (rule)",
        "b (sweep)",
        "test acc. % (rule)",
        "test acc. % (sweep)",
        "rule − sweep (paired)",
        "rule within 1 std",
        "seeds within",
        "val. loss rose",
        "wall s rule / sweep",
    ]
    lines = [
        [
            r["dataset"],
            f"{r['noise']:g}",
            r["source"],
            _pm(r["rule_b"], 1.0, 3),
            _pm(r["sweep_b"], 1.0, 3),
            _pm(r["rule_accuracy"]),
            _pm(r["sweep_accuracy"]),
            f"{_pm(r['vs_sweep'])} ({r['verdict_sweep']})",
            "yes" if r["within_one_std"] else "no",
            str(r["seeds_within"]),
            str(r["rises"]),
            f"{r['rule_seconds']:.0f} / {r['sweep_seconds']:.0f}",
        ]
        for r in rows
    ]
    return _markdown_table(header, lines)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _markdown(config, command, table, rule_table, rows, rule_rows, seconds) -> str:
    worse = [
        f"{r['label']} ({r['dataset']}, noise {r['noise']:g})"
        for r in rows
        if r.get("verdict_erm") in ("hurts", "no clear difference")
    ]
    parts = [
        "# The family compared",
        "",
        f"Made by `{command}`." if command else "",
        "",
        f"Protocol: {json.dumps(config.protocol())}; seeds {list(config.seeds)}.",
        "Each method's value is chosen per seed on the final "
        f"{config.validation} validation accuracy; the test split is not used "
        "to choose. Paired differences are per seed, in points of accuracy; "
        "'helps'/'hurts' where the paired 95% t interval excludes 0.",
        "",
        f"The {len(_cells(config))} cells took {_duration(seconds)} of "
        "training in all (each cell's own time, summed over the sittings that "
        "trained them; 'wall s' sums a row's seeds).",
        "",
        table,
        "",
        "Where a method does not help against ERM (no clear difference, or "
        "worse): " + ("; ".join(worse) if worse else "none") + ".",
    ]
    if rule_rows:
        hits = [
            f"{sum(r['within_one_std'] for r in rule_rows if r['rule'] == rule)} "
            f"of {sum(r['rule'] == rule for r in rule_rows)} settings with the "
            f"training loss read from {source}"
            for rule, (_, source) in RULE_SOURCES.items()
        ]
        parts += [
            "",
            "## The rule of thumb",
            "",
            "b = half the training loss where the validation loss starts to "
            "rise, from the ERM run (`floodax.suggest_flood_level`), then one "
            "flooded run at it; against the flooding sweep chosen on validation. "
            "The training loss is read two ways: the training split's loss "
            "evaluated at each epoch's end, and the mean of the epoch's "
            "mini-batch losses (what a training log prints, and what flooding "
            "compares with b). 'within 1 std': the rule's mean test accuracy "
            "is within one standard deviation (over seeds) of the sweep's.",
            "",
            rule_table,
            "",
            f"The rule came within one standard deviation in {' and '.join(hits)}, "
            f"with 2 runs against the sweep's {rule_rows[0]['sweep_runs']}.",
        ]
    return "\n".join(parts) + "\n"


_VERDICT_COLOURS = {
    "erm": "#8C8C8C",
    "helps": "#55A868",
    "no clear difference": "#4C72B0",
    "hurts": "#C44E52",
    "one seed": "#CCB974",
    "no ERM run": "#4C72B0",
}
"""A bar's colour: ERM's, or the method's paired verdict against it."""
_LEGEND = {"erm": "ERM", "no ERM run": "ERM not run: no verdict"}


def _bar_colours(rows: Sequence[dict]) -> list[str]:
    return [
        _VERDICT_COLOURS[
            "erm" if r["method"] == "erm" else r.get("verdict_erm", "no ERM run")
        ]
        for r in rows
    ]


def plot(path: str, rows: Sequence[dict], config: FamilyConfig) -> None:
    """Test accuracy per method (mean, std over seeds), one panel per
    dataset × noise: a row per dataset, a column per noise level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_, cols = len(config.datasets), len(config.label_noises)
    fig, axes = plt.subplots(
        rows_, cols, figsize=(1.5 + 4.5 * cols, 0.6 + 3.4 * rows_), squeeze=False
    )
    panels = [(d, float(n)) for d in config.datasets for n in config.label_noises]
    for ax, (dataset, noise) in zip(axes.ravel(), panels, strict=True):
        sel = [r for r in rows if r["dataset"] == dataset and r["noise"] == noise]
        means = [100 * r["mean"] for r in sel]
        stds = [0.0 if math.isnan(r["std"]) else 100 * r["std"] for r in sel]
        colours = _bar_colours(sel)
        ax.bar(range(len(sel)), means, yerr=stds, capsize=3, color=colours)
        for r, m in zip(sel, means, strict=True):
            if r["method"] == "erm":
                ax.axhline(m, color=_VERDICT_COLOURS["erm"], ls="--", lw=1)
        ax.set_xticks(
            range(len(sel)),
            [r["label"] for r in sel],
            rotation=60,
            ha="right",
            fontsize=8,
        )
        low = min(m - s for m, s in zip(means, stds, strict=True))
        ax.set_ylim(max(0.0, low - 2), min(100.0, max(means) + max(stds) + 2))
        ax.set_title(f"{dataset}, label noise {noise:g}", fontsize=9)
        ax.set_ylabel("clean test accuracy, %")
        ax.grid(axis="y", alpha=0.3)
    versus = "; against ERM (dashed), paired 95% t interval"
    has_erm = "erm" in config.methods
    fig.suptitle(
        f"chosen on {config.validation} validation accuracy; "
        f"mean ± std over {len(config.seeds)} seeds" + (versus if has_erm else ""),
        fontsize=9,
    )
    from matplotlib.patches import Patch

    shown = (
        tuple(v for v in _VERDICT_COLOURS if v != "no ERM run")
        if has_erm
        else ("no ERM run",)
    )
    fig.legend(
        handles=[
            Patch(color=_VERDICT_COLOURS[v], label=_LEGEND.get(v, f"{v} (vs ERM)"))
            for v in shown
        ],
        loc="lower center",
        ncol=len(shown),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.985))
    fig.savefig(path, dpi=120)
    plt.close(fig)


COMPARE_METHODS = ("erm", "flood", "softad", "sam")
"""The methods of ``floodax demo --compare``."""


def compare_config(seed: int = 0) -> FamilyConfig:
    """``floodax demo --compare``'s configuration: ERM, flooding, SoftAD and
    SAM on the digits with 20% label noise, three seeds from ``seed``, the
    full grids, the benchmark's protocol (60 epochs)."""
    return FamilyConfig(
        datasets=("digits",),
        label_noises=(0.2,),
        methods=COMPARE_METHODS,
        seeds=(seed, seed + 1, seed + 2),
    )


def run_compare(
    out: str,
    *,
    seed: int = 0,
    progress: bool = True,
    config: FamilyConfig | None = None,
) -> dict[str, Any]:
    """Runs :func:`compare_config` (or ``config``) into ``out``, prints both
    tables and returns :func:`run_family`'s results."""
    config = compare_config(seed) if config is None else config
    command = f"floodax demo --compare --seed {seed} --out {out}"
    results = run_family(config, out, command=command, progress=progress)
    print(f"\n{results['table']}\n")
    if results["rule_table"]:
        print(f"{results['rule_table']}\n")
    print(f"wrote {results['markdown']} and {results['png']}")
    return results
