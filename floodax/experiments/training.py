"""A jit-compiled NNX training loop with flooding, and the one-run sweep.

Flooding enters through ``optax.inject_hyperparams(floodax.flood)``, so the
flood level is an array in the optimizer state: the same compiled epoch
trains any level, and ``jax.vmap`` over the state trains many at once. The
sweep over the paper's grid {0, 0.01, …, 0.50} is therefore one compiled
program, and each of its levels gives what training that level alone gives.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import floodax
from floodax._validation import check_int, check_real, check_scalar_hyperparam
from floodax.experiments.datasets import Dataset

PAPER_GRID = tuple(round(0.01 * i, 2) for i in range(51))
"""The paper's flood levels: 0, 0.01, …, 0.50."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
      epochs: passes over the training split.
      optimizer: ``"sgd"`` (with momentum) or ``"adam"``.
      learning_rate: the optimizer's step size.
      momentum: SGD's momentum (ignored by Adam).
      batch_size: mini-batch size; ``None`` trains full-batch. The last
        incomplete mini-batch of an epoch is dropped.
      early_stopping_patience: stop a run after this many epochs without a
        better validation accuracy; ``None`` never stops.
      seed: seeds the shuffling of mini-batches.
    """

    epochs: int = 200
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    batch_size: int | None = None
    early_stopping_patience: int | None = None
    seed: int = 0

    def __post_init__(self):
        check_int("epochs", self.epochs, minimum=1)
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(
                f"`optimizer` must be 'sgd' or 'adam', got {self.optimizer!r}."
            )
        check_real("learning_rate", self.learning_rate, low=0.0, low_open=True)
        check_real("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, minimum=1, fix=" or None")
        if self.early_stopping_patience is not None:
            check_int(
                "early_stopping_patience",
                self.early_stopping_patience,
                minimum=1,
                fix=" or None",
            )
        check_int("seed", self.seed, minimum=0)


class History(NamedTuple):
    """Per-epoch records of a run (leading axis: runs, for a sweep).

    Attributes:
      step_loss: the mean of the epoch's mini-batch losses as the optimizer
        saw them (training mode: batch norm uses batch statistics), the loss
        that flooding compares with the flood level; NaN once stopped.
      train_loss, train_accuracy: on the (noisy) training split, evaluated
        after each epoch with batch norm in inference mode.
      val_loss, val_accuracy: on the (noisy) validation split.
      test_loss, test_accuracy: on the clean test split (``train`` only; a
        sweep evaluates the test split once, at the end).
      ascent_share: the share of the epoch's steps that ascended.
      active: whether the epoch trained (``False`` after early stopping).
    """

    step_loss: np.ndarray
    train_loss: np.ndarray
    train_accuracy: np.ndarray
    val_loss: np.ndarray
    val_accuracy: np.ndarray
    test_loss: np.ndarray | None
    test_accuracy: np.ndarray | None
    ascent_share: np.ndarray
    active: np.ndarray


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
      model: the trained model.
      history: its :class:`History`.
      flood_level: the flood level it was trained with.
      steps: steps taken; ``ascent_steps`` of them ascended.
      ascent_steps: see ``steps``.
    """

    model: nnx.Module
    history: History
    flood_level: float
    steps: int
    ascent_steps: int


class SweepResult(NamedTuple):
    """What :func:`sweep_flood_levels` returns.

    Attributes:
      flood_levels: the levels, shape ``(k,)``.
      history: a :class:`History` with a leading axis of length ``k``.
      test_loss, test_accuracy: final clean-test metrics per level.
      ascent_share: share of all steps that ascended, per level.
      best_index: the level with the highest final validation accuracy
        (ties go to the lower final validation loss).
      best_flood_level: ``flood_levels[best_index]``.
    """

    flood_levels: np.ndarray
    history: History
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    ascent_share: np.ndarray
    best_index: int
    best_flood_level: float


def make_optimizer(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
    """Flooding (level in the state, set by :func:`train`) first, then SGD or Adam."""
    if config.optimizer == "sgd":
        inner = optax.sgd(config.learning_rate, momentum=config.momentum)
    else:
        inner = optax.adam(config.learning_rate)
    return optax.chain(optax.inject_hyperparams(floodax.flood)(flood_level=0.0), inner)


def cross_entropy(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``model(x)`` against integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _metrics(
    model: nnx.Module, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, jax.Array]:
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def _flood_state(optimizer: nnx.Optimizer) -> Any:
    return optimizer.opt_state[0]


class _EarlyStop(NamedTuple):
    best_val_accuracy: jax.Array
    bad_epochs: jax.Array
    active: jax.Array


class _Runner:
    """Pure, jit-compiled pieces of a training run for one model and config."""

    def __init__(self, model: nnx.Module, dataset: Dataset, config: TrainConfig):
        self.config = config
        optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
        model.train()
        self.graphdef, self.init_state = nnx.split((model, optimizer))
        n = len(dataset.y_train)
        self.batch = min(config.batch_size or n, n)
        self.n_batches = n // self.batch
        self.data = {
            k: jnp.asarray(getattr(dataset, k))
            for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        }

    def with_flood_level(self, state: Any, flood_level: jax.Array) -> Any:
        model, optimizer = nnx.merge(self.graphdef, state)
        _flood_state(optimizer).hyperparams["flood_level"][...] = flood_level
        return nnx.state((model, optimizer))

    def initial(self, state: Any, flood_level: jax.Array) -> tuple[Any, _EarlyStop]:
        """The initial state with ``flood_level`` set; call it under ``jit``,
        which gives it fresh variables to write into."""
        state = self.with_flood_level(state, flood_level)
        # Strongly typed, as the epoch returns them: a weakly typed initial
        # state would make the second epoch compile the function again.
        stop = _EarlyStop(jnp.float32(-1.0), jnp.int32(0), jnp.bool_(True))
        return state, stop

    def _train_epoch(self, state: Any, epoch: jax.Array, data: dict) -> Any:
        key = jax.random.fold_in(jax.random.key(self.config.seed), epoch)
        n = data["y_train"].shape[0]
        order = jax.random.permutation(key, n) if self.batch < n else jnp.arange(n)

        def step(state, i):
            model, optimizer = nnx.merge(self.graphdef, state)
            idx = jax.lax.dynamic_slice(order, (i * self.batch,), (self.batch,))
            loss, grads = nnx.value_and_grad(cross_entropy)(
                model, data["x_train"][idx], data["y_train"][idx]
            )
            optimizer.update(model, grads, value=loss)
            return nnx.state((model, optimizer)), loss

        state, losses = jax.lax.scan(step, state, jnp.arange(self.n_batches))
        return state, losses.mean()

    def epoch(
        self,
        state: Any,
        stop: _EarlyStop,
        epoch: jax.Array,
        data: dict,
        splits: Sequence[str],
    ) -> tuple[Any, _EarlyStop, dict]:
        """One epoch (skipped once stopped), then metrics on ``splits``."""
        before = _flood_state(
            nnx.merge(self.graphdef, state)[1]
        ).inner_state.ascent_count
        state, step_loss = jax.lax.cond(
            stop.active,
            lambda s: self._train_epoch(s, epoch, data),
            lambda s: (s, jnp.asarray(jnp.nan, jnp.float32)),
            state,
        )
        model, optimizer = nnx.merge(self.graphdef, state)
        after = _flood_state(optimizer).inner_state.ascent_count
        model.eval()
        metrics = {}
        for split in splits:
            loss, acc = _metrics(model, data[f"x_{split}"], data[f"y_{split}"])
            metrics[f"{split}_loss"], metrics[f"{split}_accuracy"] = loss, acc
        metrics["step_loss"] = step_loss
        metrics["ascent_share"] = (after - before) / self.n_batches
        metrics["active"] = stop.active
        patience = self.config.early_stopping_patience
        if patience is not None:
            improved = metrics["val_accuracy"] > stop.best_val_accuracy
            bad = jnp.where(improved, 0, stop.bad_epochs + 1)
            stop = _EarlyStop(
                jnp.maximum(stop.best_val_accuracy, metrics["val_accuracy"]),
                bad,
                stop.active & (bad < patience),
            )
        return state, stop, metrics

    def counts(self, state: Any) -> tuple[jax.Array, jax.Array]:
        flood = _flood_state(nnx.merge(self.graphdef, state)[1])
        return flood.inner_state.count, flood.inner_state.ascent_count

    def final_test(self, state: Any, data: dict) -> tuple[jax.Array, jax.Array]:
        model, _ = nnx.merge(self.graphdef, state)
        model.eval()
        return _metrics(model, data["x_test"], data["y_test"])


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(range(total), desc=desc, disable=not enabled, leave=False)


def _history(records: list[dict], axis: int) -> History:
    stacked = {
        k: np.stack([np.asarray(r[k]) for r in records], axis=axis) for k in records[0]
    }
    return History(
        step_loss=stacked["step_loss"],
        train_loss=stacked["train_loss"],
        train_accuracy=stacked["train_accuracy"],
        val_loss=stacked["val_loss"],
        val_accuracy=stacked["val_accuracy"],
        test_loss=stacked.get("test_loss"),
        test_accuracy=stacked.get("test_accuracy"),
        ascent_share=stacked["ascent_share"],
        active=stacked["active"],
    )


def _compiled(
    runner: _Runner, splits: Sequence[str], *, batched: bool
) -> tuple[Callable, Callable, Callable]:
    """Jitted ``(epoch, initial, final_test)``; vmapped over runs if ``batched``."""
    epoch = functools.partial(runner.epoch, splits=splits)
    initial, final_test = runner.initial, runner.final_test
    if batched:
        epoch = jax.vmap(epoch, in_axes=(0, 0, None, None))
        initial = jax.vmap(initial, in_axes=(None, 0))
        final_test = jax.vmap(final_test, in_axes=(0, None))
    return jax.jit(epoch), jax.jit(initial), jax.jit(final_test)


def _run_epochs(
    runner: _Runner, epoch_fn: Callable, carry: tuple, desc: str, progress: bool
) -> tuple[tuple, list[dict]]:
    """Runs the epochs until the last one or until every run has stopped."""
    records = []
    for epoch in _progress(runner.config.epochs, desc, progress):
        state, stop, metrics = epoch_fn(*carry, jnp.asarray(epoch), runner.data)
        carry = (state, stop)
        records.append(metrics)
        if not np.any(stop.active):
            break
    return carry, records


def train(
    model: nnx.Module,
    dataset: Dataset,
    config: TrainConfig,
    *,
    flood_level: float = 0.0,
    progress: bool = True,
) -> TrainResult:
    """Trains ``model`` on ``dataset`` with flooding at ``flood_level``.

    ``flood_level=0`` is the unflooded baseline (a cross-entropy is never
    below 0). The train step is jit-compiled and calls
    ``optimizer.update(model, grads, value=loss)``. Metrics are recorded on
    every split after every epoch; with early stopping the run ends once
    validation accuracy has not improved for ``early_stopping_patience``
    epochs.

    Args:
      model: a Flax NNX classifier mapping a feature batch to logits; it is
        not modified (the trained copy is returned).
      dataset: the splits.
      config: a :class:`TrainConfig`.
      flood_level: the flood level ``b``.
      progress: show a progress bar.

    Returns:
      A :class:`TrainResult`.
    """
    check_scalar_hyperparam("flood_level", flood_level)
    runner = _Runner(nnx.clone(model), dataset, config)
    epoch_fn, initial, _ = _compiled(runner, ("train", "val", "test"), batched=False)
    carry = initial(runner.init_state, jnp.asarray(flood_level, jnp.float32))
    (state, _), records = _run_epochs(
        runner, epoch_fn, carry, f"b={flood_level:g}", progress
    )
    steps, ascents = runner.counts(state)
    trained, _ = nnx.merge(runner.graphdef, state)
    trained.eval()
    return TrainResult(
        trained, _history(records, 0), float(flood_level), int(steps), int(ascents)
    )


def _sweep_vmapped(runner: _Runner, levels: np.ndarray, desc: str, progress: bool):
    epoch_fn, initial, final_test = _compiled(runner, ("train", "val"), batched=True)
    carry = initial(runner.init_state, jnp.asarray(levels, jnp.float32))
    (state, _), records = _run_epochs(runner, epoch_fn, carry, desc, progress)
    test_loss, test_acc = final_test(state, runner.data)
    steps, ascents = jax.vmap(runner.counts)(state)
    return records, test_loss, test_acc, steps, ascents


def _sweep_sequential(runner: _Runner, levels: np.ndarray, desc: str, progress: bool):
    epoch_fn, initial, final_test = _compiled(runner, ("train", "val"), batched=False)
    per_level, finals = [], []
    for i, b in enumerate(levels):
        carry = initial(runner.init_state, jnp.float32(b))
        (state, _), records = _run_epochs(
            runner, epoch_fn, carry, f"{desc}: {i + 1} (b={b:g})", progress
        )
        per_level.append(records)
        finals.append((*final_test(state, runner.data), *runner.counts(state)))
    # A level that stopped early keeps its last metrics, as in the vmapped run.
    length = max(len(r) for r in per_level)
    for records in per_level:
        frozen = {
            **records[-1],
            "step_loss": np.nan,
            "ascent_share": 0.0,
            "active": False,
        }
        records.extend([frozen] * (length - len(records)))
    stacked = [
        {k: np.stack([np.asarray(r[e][k]) for r in per_level]) for k in per_level[0][e]}
        for e in range(length)
    ]
    test_loss, test_acc, steps, ascents = (
        np.stack(v) for v in zip(*finals, strict=True)
    )
    return stacked, test_loss, test_acc, steps, ascents


def sweep_flood_levels(
    model: nnx.Module,
    dataset: Dataset,
    config: TrainConfig,
    flood_levels: Sequence[float] = PAPER_GRID,
    *,
    progress: bool = True,
    vectorized: bool = True,
) -> SweepResult:
    """Trains one copy of ``model`` per flood level, all in one vmapped run.

    Every level starts from the same initial model and sees the same
    mini-batches, so each equals :func:`train` at that level alone (to float
    tolerance: batched matrix products may round differently, and a flood
    decision on a loss within rounding of ``b`` can then go the other way,
    after which the two runs part). The best level
    is the one with the highest final validation accuracy, ties going to the
    lower validation loss, as in the paper's selection on (noisy) validation
    data.

    Args:
      model: a Flax NNX classifier (not modified).
      dataset: the splits.
      config: a :class:`TrainConfig`.
      flood_levels: the levels to try; the paper's grid by default.
      progress: show a progress bar.
      vectorized: ``True`` trains all levels at once with ``jax.vmap`` (what
        fills an accelerator); ``False`` trains them one after another with
        the same compiled epoch (the flood level is state, so nothing
        recompiles), which was faster on a 2-core CPU, where XLA's batched
        matrix products ran at about half the speed of separate ones (see
        benchmarks/README.md). Both give the same results.

    Returns:
      A :class:`SweepResult`.

    Examples:
      >>> from flax import nnx
      >>> from floodax.experiments import (MLP, TrainConfig, make_synthetic,
      ...                                  sweep_flood_levels)
      >>> data = make_synthetic("gaussians", n_train_per_class=20,
      ...                       n_val_per_class=20, n_test_per_class=50)
      >>> model = MLP(10, 2, width=8, depth=1, rngs=nnx.Rngs(0))
      >>> result = sweep_flood_levels(model, data, TrainConfig(epochs=3),
      ...                             [0.0, 0.1, 0.2], progress=False)
      >>> print(result.history.val_accuracy.shape, result.test_accuracy.shape)
      (3, 3) (3,)
    """
    levels = np.asarray(flood_levels, np.float64)
    if levels.ndim != 1 or len(levels) == 0:
        raise ValueError(
            f"`flood_levels` must be a non-empty list, got shape {levels.shape}."
        )
    for b in levels:
        check_scalar_hyperparam("flood_level", float(b))
    runner = _Runner(nnx.clone(model), dataset, config)
    desc = f"{len(levels)} flood levels"
    sweep = _sweep_vmapped if vectorized else _sweep_sequential
    records, test_loss, test_acc, steps, ascents = sweep(runner, levels, desc, progress)
    history = _history(records, 1)
    final_acc, final_loss = history.val_accuracy[:, -1], history.val_loss[:, -1]
    best = int(np.lexsort((final_loss, -final_acc))[0])
    return SweepResult(
        flood_levels=levels,
        history=history,
        test_loss=np.asarray(test_loss),
        test_accuracy=np.asarray(test_acc),
        ascent_share=np.asarray(ascents) / np.maximum(np.asarray(steps), 1),
        best_index=best,
        best_flood_level=float(levels[best]),
    )
