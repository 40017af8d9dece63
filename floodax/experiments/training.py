"""A jit-compiled NNX training loop with flooding, and the one-run sweep.

Flooding enters through ``optax.inject_hyperparams(floodax.flood)``, so the
flood level is an array in the optimizer state: the same compiled epoch
trains any level. Every other method of the family
(:mod:`floodax.experiments.family`) enters the same way, its one
hyperparameter an array in the optimizer state or the run's carry. The
sweep over the paper's grid {0, 0.01, …, 0.50} either runs that one
compiled epoch level after level (``vectorized=False``: each level's run
is then *bit for bit* what :func:`train` gives at that level), or trains
all levels at once under ``jax.vmap`` (``vectorized=True``: the batched
matrix products round differently, so each run agrees with :func:`train`
to rounding at first and drifts from it over a long run;
``benchmarks/sweep_drift.md`` measures how far).

The protocol follows the authors' code (takashiishida/flooding,
``synthetic/demo_synth.py`` and ``run_demo_synth.py``): full-batch training
(``batch_size_tr`` 200 ≥ the training set), SGD with momentum 0.9 and
learning rate 0.01 or Adam with learning rate 1e-3, no weight decay, 200
epochs, flooding ``|L − b| + b`` of the mean mini-batch loss, metrics after
every epoch with batch norm in inference mode, and the flood level chosen by
the *clean* validation accuracy after the last epoch
(``get_results_synth.get_data``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import floodax
import floodax.nnx
from floodax._progress import Progress, progress_bar
from floodax._validation import check_int, check_real, check_scalar_hyperparam
from floodax.experiments.datasets import Dataset
from floodax.experiments.family import (
    Method,
    build_optimizer,
    get_method,
    set_hyperparameter,
)

PAPER_GRID = tuple(round(0.01 * i, 2) for i in range(51))
"""The paper's flood levels: 0, 0.01, …, 0.50."""

VALIDATIONS = ("clean", "noisy")
TIE_BREAKS = ("val_loss", "largest_level")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
      epochs: passes over the training split.
      optimizer: ``"sgd"`` (with momentum) or ``"adam"``.
      learning_rate: the optimizer's step size.
      momentum: SGD's momentum (ignored by Adam).
      batch_size: mini-batch size; ``None`` trains full-batch (the paper's
        protocol). The last incomplete mini-batch of an epoch is dropped.
      early_stopping_patience: stop a run after this many epochs without a
        better validation accuracy; ``None`` never stops.
      validation: which validation labels select the flood level and drive
        early stopping: ``"clean"`` (the authors' demo selects on the clean
        validation accuracy) or ``"noisy"`` (what a practitioner without
        clean labels has).
      method: a name of :data:`floodax.experiments.family.FAMILY` or a
        :class:`~floodax.experiments.family.Method`: ``"flood"`` floods the
        mean mini-batch loss with the optax transformation
        :func:`floodax.flood` (Ishida et al.); ``"iflood"`` floods each
        example (:func:`floodax.iflooded`, Xie et al.); ``"adaflood"`` floods
        each example at its own level from held-out auxiliary losses
        (:func:`floodax.adaflood_levels`, Bae et al.); ``"softad"``, ``"sam"``
        and the other entries train as the registry says. The swept value
        (``flood_level``) is the entry's one hyperparameter: the flood level
        ``b`` for the first two, AdaFlood's ``γ``, SoftAD's ``θ``, SAM's
        ``ρ``, and so on.
      seed: seeds the shuffling of mini-batches.
    """

    epochs: int = 200
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    batch_size: int | None = None
    early_stopping_patience: int | None = None
    validation: str = "clean"
    method: str | Method = "flood"
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
        if self.validation not in VALIDATIONS:
            raise ValueError(
                f"`validation` must be one of {VALIDATIONS}, got {self.validation!r}."
            )
        get_method(self.method)
        check_int("seed", self.seed, minimum=0)


class History(NamedTuple):
    """Per-epoch records of a run (leading axis: runs, for a sweep).

    Attributes:
      step_loss: the mean of the epoch's mini-batch losses as the optimizer
        saw them (training mode: batch norm uses batch statistics), the loss
        that flooding compares with the flood level; NaN once stopped.
      train_loss, train_accuracy: on the training split with its (noisy)
        labels, evaluated after each epoch with batch norm in inference mode.
      train_clean_accuracy: the same predictions against the clean labels.
      val_loss, val_accuracy: on the validation split's noisy labels.
      val_clean_loss, val_clean_accuracy: against its clean labels.
      test_loss, test_accuracy: on the clean test split, at the epochs where
        :func:`train` evaluated it (NaN elsewhere); ``None`` for a sweep,
        which evaluates the test split once, at the end.
      ascent_share: with ``method="flood"``, the share of the epoch's steps
        that ascended; with iFlood and AdaFlood, the mean share of examples
        whose loss was below their level.
      active: whether the epoch trained (``False`` after early stopping).
    """

    step_loss: np.ndarray
    train_loss: np.ndarray
    train_accuracy: np.ndarray
    train_clean_accuracy: np.ndarray
    val_loss: np.ndarray
    val_accuracy: np.ndarray
    val_clean_loss: np.ndarray
    val_clean_accuracy: np.ndarray
    test_loss: np.ndarray | None
    test_accuracy: np.ndarray | None
    ascent_share: np.ndarray
    active: np.ndarray

    def validation(self, labels: str) -> tuple[np.ndarray, np.ndarray]:
        """``(loss, accuracy)`` on the ``"clean"`` or ``"noisy"`` validation labels."""
        if labels == "clean":
            return self.val_clean_loss, self.val_clean_accuracy
        return self.val_loss, self.val_accuracy


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
      model: the trained model.
      history: its :class:`History`.
      flood_level: the flood level (AdaFlood: ``γ``; another entry: its
        hyperparameter) it was trained with.
      steps: optimizer steps taken.
      ascent_share: the share of steps that ascended (iFlood, AdaFlood: the
        mean share of examples flooded below their level).
      test_loss, test_accuracy: on the clean test split after the last
        epoch.
      probes: ``(epoch, values)`` for every call of :func:`train`'s ``probe``
        (epochs counted from 1), empty without one.
      optimizer_state: the final optax state (arrays), e.g. for
        :func:`floodax.flood_stats`.
    """

    model: nnx.Module
    history: History
    flood_level: float
    steps: int
    ascent_share: float
    test_loss: float
    test_accuracy: float
    probes: list
    optimizer_state: optax.OptState


class SweepResult(NamedTuple):
    """What :func:`sweep_flood_levels` returns.

    Attributes:
      flood_levels: the levels, shape ``(k,)``.
      history: a :class:`History` with a leading axis of length ``k``.
      test_loss, test_accuracy: final clean-test metrics per level.
      ascent_share: share of all steps that ascended (iFlood, AdaFlood: of
        examples flooded), per level.
      best_index: the level with the highest final validation accuracy on
        the ``validation`` labels, ties broken by ``tie_break``.
      best_flood_level: ``flood_levels[best_index]``.
      validation: the validation labels that selected it.
      vectorized: whether the levels trained together under ``jax.vmap``
        (``False``: one after another, each bit for bit :func:`train`).
    """

    flood_levels: np.ndarray
    history: History
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    ascent_share: np.ndarray
    best_index: int
    best_flood_level: float
    validation: str
    vectorized: bool


def make_optimizer(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
    """SGD or Adam around the method's transformation
    (:func:`floodax.experiments.family.build_optimizer`): after
    ``floodax.flood`` for ``method="flood"``, after SAM for ``"sam"`` (the
    hyperparameter lives in the optimizer state, set by :func:`train`);
    with the alternating scheme in place of the learning rate for
    ``"alternate"``. Methods that change the loss instead (iFlood, AdaFlood,
    SoftAD) and ERM train with SGD or Adam alone."""
    if config.optimizer == "sgd":
        inner = optax.sgd(config.learning_rate, momentum=config.momentum)
        preconditioner = optax.trace(decay=config.momentum)
    else:
        inner = optax.adam(config.learning_rate)
        preconditioner = optax.scale_by_adam()
    return build_optimizer(config.method, inner, preconditioner)


def cross_entropy(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``model(x)`` against integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _loss_and_accuracy(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


class _Run(NamedTuple):
    """Per-run carry beside the model and optimizer state (vmapped in a sweep)."""

    level: jax.Array  # b, or AdaFlood's γ
    best_val_accuracy: jax.Array
    bad_epochs: jax.Array
    active: jax.Array
    steps: jax.Array
    ascents: jax.Array  # steps that ascended, or flooded shares of examples


class _Runner:
    """Pure, jit-compiled pieces of a training run for one model and config."""

    SPLITS = ("x_train", "y_train", "y_train_clean", "x_val", "y_val", "y_val_clean")

    def __init__(
        self,
        model: nnx.Module,
        dataset: Dataset,
        config: TrainConfig,
        aux_losses: np.ndarray | None = None,
    ):
        self.config = config
        self.method = get_method(config.method)
        optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
        model.train()
        self.graphdef, self.init_state = nnx.split((model, optimizer))
        n = len(dataset.y_train)
        self.batch = min(config.batch_size or n, n)
        self.n_batches = n // self.batch
        self.data = {k: jnp.asarray(getattr(dataset, k)) for k in self.SPLITS}
        if self.method.needs_aux:
            self.data["aux_losses"] = jnp.asarray(aux_losses, jnp.float32)
        self.test = (jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test))

    def initial(self, state: Any, level: jax.Array) -> tuple[Any, _Run]:
        """The initial state and carry for ``level``; call it under ``jit``,
        which gives it fresh buffers to write into."""
        model, optimizer = nnx.merge(self.graphdef, state)
        set_hyperparameter(self.method, optimizer.opt_state, level)
        # Strongly typed, as the epoch returns them: a weakly typed initial
        # carry would make the second epoch compile the function again.
        run = _Run(
            level=jnp.asarray(level, jnp.float32),
            best_val_accuracy=jnp.float32(-1.0),
            bad_epochs=jnp.int32(0),
            active=jnp.bool_(True),
            steps=jnp.int32(0),
            ascents=jnp.float32(0.0),
        )
        return nnx.state((model, optimizer)), run

    def _step(self, state: Any, level: jax.Array, x, y, aux) -> tuple[Any, ...]:
        """One optimizer step of the method's objective, with ``value`` and,
        where the entry's transformation takes it, ``value_fn``; returns the
        state, the plain mean loss and the step's ascent share (the entry's
        ``ascent``)."""
        model, optimizer = nnx.merge(self.graphdef, state)
        method = self.method

        def objective(model):
            losses = optax.softmax_cross_entropy_with_integer_labels(model(x), y)
            return method.objective(losses, level, aux), losses

        if method.value_fn:
            (value, losses), grads, value_fn = floodax.nnx.value_and_grad(
                objective, model, has_aux=True
            )
            optimizer.update(model, grads, value=value, value_fn=value_fn)
        else:
            (value, losses), grads = nnx.value_and_grad(objective, has_aux=True)(model)
            optimizer.update(model, grads, value=value)
        ascent = method.ascent(losses, value, level, aux)
        return nnx.state((model, optimizer)), losses.mean(), ascent

    def _train_epoch(self, state: Any, run: _Run, epoch: jax.Array, data: dict):
        key = jax.random.fold_in(jax.random.key(self.config.seed), epoch)
        n = data["y_train"].shape[0]
        order = jax.random.permutation(key, n) if self.batch < n else jnp.arange(n)
        aux = data.get("aux_losses")

        def step(state, i):
            idx = jax.lax.dynamic_slice(order, (i * self.batch,), (self.batch,))
            state, loss, ascent = self._step(
                state,
                run.level,
                data["x_train"][idx],
                data["y_train"][idx],
                None if aux is None else aux[idx],
            )
            return state, (loss, ascent)

        state, (losses, ascents) = jax.lax.scan(step, state, jnp.arange(self.n_batches))
        return state, losses.mean(), ascents.sum()

    def epoch(
        self, state: Any, run: _Run, epoch: jax.Array, data: dict
    ) -> tuple[Any, _Run, dict]:
        """One epoch (skipped once stopped), then metrics on the training and
        validation splits, noisy and clean labels."""
        state, step_loss, ascents = jax.lax.cond(
            run.active,
            lambda s: self._train_epoch(s, run, epoch, data),
            lambda s: (s, jnp.asarray(jnp.nan, jnp.float32), jnp.float32(0.0)),
            state,
        )
        model, _ = nnx.merge(self.graphdef, state)
        model.eval()
        metrics = {}
        for split in ("train", "val"):
            logits = model(data[f"x_{split}"])
            loss, acc = _loss_and_accuracy(logits, data[f"y_{split}"])
            clean_loss, clean_acc = _loss_and_accuracy(logits, data[f"y_{split}_clean"])
            metrics[f"{split}_loss"], metrics[f"{split}_accuracy"] = loss, acc
            metrics[f"{split}_clean_accuracy"] = clean_acc
            if split == "val":
                metrics["val_clean_loss"] = clean_loss
        metrics["step_loss"] = step_loss
        metrics["ascent_share"] = ascents / self.n_batches
        metrics["active"] = run.active
        trained = run.active.astype(jnp.int32) * self.n_batches
        run = run._replace(steps=run.steps + trained, ascents=run.ascents + ascents)
        patience = self.config.early_stopping_patience
        if patience is not None:
            accuracy = metrics[
                "val_clean_accuracy"
                if self.config.validation == "clean"
                else "val_accuracy"
            ]
            improved = accuracy > run.best_val_accuracy
            bad = jnp.where(improved, 0, run.bad_epochs + 1)
            run = run._replace(
                best_val_accuracy=jnp.maximum(run.best_val_accuracy, accuracy),
                bad_epochs=bad,
                active=run.active & (bad < patience),
            )
        return state, run, metrics

    def evaluate(
        self, state: Any, x: jax.Array, y: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Loss and accuracy on ``(x, y)`` in inference mode; a function of
        its own, so evaluating the test split never changes a run."""
        model, _ = nnx.merge(self.graphdef, state)
        model.eval()
        return _loss_and_accuracy(model(x), y)

    def logits(self, state: Any, x: jax.Array) -> jax.Array:
        """The model's logits on ``x`` in inference mode."""
        model, _ = nnx.merge(self.graphdef, state)
        model.eval()
        return model(x)


def _history(records: list[dict], axis: int) -> History:
    stacked = {
        k: np.stack([np.asarray(r[k]) for r in records], axis=axis) for k in records[0]
    }
    return History(
        **{
            field: stacked.get(field)
            for field in History._fields
            if field not in ("test_loss", "test_accuracy")
        },
        test_loss=stacked.get("test_loss"),
        test_accuracy=stacked.get("test_accuracy"),
    )


def _compiled(
    runner: _Runner,
    *,
    batched: bool,
    data_axis: int | None = None,
    donate: bool = True,
) -> tuple[Callable, ...]:
    """Jitted ``(epoch, initial, evaluate)``; vmapped over runs if ``batched``
    (over their data too with ``data_axis=0``: the K-fold auxiliary models).

    The epoch donates its input state: its buffers are reused for the next
    state instead of allocating fresh ones every epoch (on a 2-core CPU,
    benchmarks/bench_sweep.py measured fewer page faults and the same time).
    """
    epoch, initial, evaluate = runner.epoch, runner.initial, runner.evaluate
    if batched:
        epoch = jax.vmap(epoch, in_axes=(0, 0, None, data_axis))
        initial = jax.vmap(initial, in_axes=(None, 0))
        evaluate = jax.vmap(evaluate, in_axes=(0, None, None))
    return (
        jax.jit(epoch, donate_argnums=0 if donate else ()),
        jax.jit(initial),
        jax.jit(evaluate),
    )


def _run_epochs(
    runner: _Runner,
    epoch_fn: Callable,
    carry: tuple,
    bar: Progress,
    after_epoch: Callable[[int, Any, bool], dict] | None = None,
    data: dict | None = None,
    runs: int = 1,
) -> tuple[tuple, list[dict]]:
    """Runs the epochs until the last one or until every run has stopped;
    ``after_epoch(epoch, state, last)`` may add records (test metrics).
    Each epoch of the ``runs`` runs it trains together counts ``runs`` units
    on ``bar``; the epochs an early stop skips count as done."""
    data = runner.data if data is None else data
    records = []
    epochs = runner.config.epochs
    for epoch in range(epochs):
        state, run, metrics = epoch_fn(*carry, jnp.asarray(epoch), data)
        carry = (state, run)
        last = epoch == epochs - 1 or not np.any(run.active)
        if after_epoch is not None:
            metrics = {**metrics, **after_epoch(epoch, state, last)}
        records.append(metrics)
        bar.update(runs * (epochs - epoch if last else 1))
        if not np.any(run.active):
            break
    return carry, records


def _check_levels(levels: np.ndarray, config: TrainConfig, aux_losses: Any) -> None:
    """The swept values, and AdaFlood's held-out losses when it needs them."""
    method = get_method(config.method)
    for value in levels:
        check_scalar_hyperparam(method.argument, float(value))
    if method.upper is not None and np.any(levels >= method.upper):
        raise ValueError(
            f"with method={method.name!r} the levels are {method.symbol} values in "
            f"[0, {method.upper:g}), got {float(levels.max())}."
        )
    if not method.needs_aux:
        if aux_losses is not None:
            raise ValueError(
                "`aux_losses` are AdaFlood's; pass them with "
                "TrainConfig(method='adaflood'), or drop them."
            )
        return
    if aux_losses is None:
        raise ValueError(
            f"method={method.name!r} needs the held-out losses of the training "
            "examples: aux_losses=heldout_losses(model, dataset, config).losses."
        )
    # Checks finiteness and sign, as the levels will use them.
    floodax.adaflood_levels(np.asarray(aux_losses, np.float32), gamma=0.0)


def train(
    model: nnx.Module,
    dataset: Dataset,
    config: TrainConfig,
    *,
    flood_level: float = 0.0,
    aux_losses: np.ndarray | None = None,
    test_every: int = 1,
    probe: Callable[[nnx.Module], dict] | None = None,
    probe_every: int = 10,
    progress: bool | Progress = True,
) -> TrainResult:
    """Trains ``model`` on ``dataset`` with flooding at ``flood_level``.

    ``flood_level=0`` is the unflooded baseline (a cross-entropy is never
    below 0). With ``method="flood"`` the train step calls
    ``optimizer.update(model, grads, value=loss)`` on a chain that starts with
    ``floodax.flood``; with ``"iflood"`` and ``"adaflood"`` it differentiates
    ``floodax.iflooded`` of the per-example losses; any other entry of
    :data:`floodax.experiments.family.FAMILY` trains as its entry says, its
    one hyperparameter passed as ``flood_level`` (every step passes
    ``value=`` the objective and, where the entry's transformation takes
    it, ``value_fn=`` it as a function of the parameters, from
    :func:`floodax.nnx.value_and_grad`). Training and validation
    metrics are recorded after every epoch; the clean test split, which can
    be large (20,000 points in the paper's protocol), every ``test_every``
    epochs and after the last. With early stopping the run ends once the
    validation accuracy has not improved for ``early_stopping_patience``
    epochs.

    The training trajectory is the one :func:`sweep_flood_levels` computes
    for the same level with ``vectorized=False``, bit for bit: both run the
    same compiled epoch, and the test split is evaluated by a separate
    function that does not touch the run.

    Args:
      model: a Flax NNX classifier mapping a feature batch to logits; it is
        not modified (the trained copy is returned).
      dataset: the splits.
      config: a :class:`TrainConfig`.
      flood_level: the flood level ``b`` (AdaFlood: ``γ ∈ [0, 1)``; another
        entry of the family: its one hyperparameter, e.g. SAM's ``ρ``).
      aux_losses: AdaFlood's held-out losses of the training examples
        (:func:`heldout_losses`); only with ``method="adaflood"``.
      test_every: evaluate the test split every this many epochs.
      probe: optional ``probe(model) -> dict`` of numbers, called on a copy of
        the model (training mode) before the first epoch and every
        ``probe_every`` epochs and after the last, outside the compiled
        epoch, so it never changes the run: a hook for diagnostics such as
        :func:`floodax.hessian_eigenvalues` along training.
      probe_every: epochs between probes.
      progress: ``True`` draws a bar of the epochs, with the time left, on
        standard error when it is a terminal; ``False`` draws none; the bar
        of an outer loop (the demo's, a study's) is advanced instead.

    Returns:
      A :class:`TrainResult`.
    """
    _check_levels(np.asarray([flood_level], np.float64), config, aux_losses)
    check_int("test_every", test_every, minimum=1)
    check_int("probe_every", probe_every, minimum=1)
    runner = _Runner(nnx.clone(model), dataset, config, aux_losses)
    epoch_fn, initial, evaluate = _compiled(runner, batched=False)
    carry = initial(runner.init_state, jnp.asarray(flood_level, jnp.float32))
    nan = np.float32(np.nan)
    probes = []

    def probed(epoch: int, state: Any) -> None:
        model, _ = nnx.merge(runner.graphdef, jax.tree.map(jnp.copy, state))
        probes.append((epoch, probe(model)))

    if probe is not None:
        probed(0, carry[0])

    def test_metrics(epoch: int, state: Any, last: bool) -> dict:
        if probe is not None and (last or (epoch + 1) % probe_every == 0):
            probed(epoch + 1, state)
        if last or (epoch + 1) % test_every == 0:
            loss, acc = evaluate(state, *runner.test)
            return {"test_loss": loss, "test_accuracy": acc}
        return {"test_loss": nan, "test_accuracy": nan}

    with progress_bar(progress, config.epochs, f"b={flood_level:g}") as bar:
        (state, run), records = _run_epochs(runner, epoch_fn, carry, bar, test_metrics)
    trained, optimizer = nnx.merge(runner.graphdef, state)
    trained.eval()
    history = _history(records, 0)
    optimizer_state = jax.tree.map(
        lambda v: v[...],
        optimizer.opt_state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return TrainResult(
        trained,
        history,
        float(flood_level),
        int(run.steps),
        float(run.ascents) / max(int(run.steps), 1),
        float(history.test_loss[-1]),
        float(history.test_accuracy[-1]),
        probes,
        optimizer_state,
    )


def _sweep_vmapped(runner: _Runner, levels: np.ndarray, bar: Progress):
    epoch_fn, initial, evaluate = _compiled(runner, batched=True)
    carry = initial(runner.init_state, jnp.asarray(levels, jnp.float32))
    (state, run), records = _run_epochs(runner, epoch_fn, carry, bar, runs=len(levels))
    test_loss, test_acc = evaluate(state, *runner.test)
    return records, test_loss, test_acc, run.steps, run.ascents


def _sweep_sequential(runner: _Runner, levels: np.ndarray, bar: Progress):
    epoch_fn, initial, evaluate = _compiled(runner, batched=False)
    per_level, finals = [], []
    for i, b in enumerate(levels):
        carry = initial(runner.init_state, jnp.float32(b))
        bar.status = f"level {i + 1} of {len(levels)}, b={b:g}"
        (state, run), records = _run_epochs(runner, epoch_fn, carry, bar)
        per_level.append(records)
        finals.append((*evaluate(state, *runner.test), run.steps, run.ascents))
    # A level that stopped early keeps its last metrics, as in the vmapped run.
    length = max(len(r) for r in per_level)
    for records in per_level:
        frozen = {
            **records[-1],
            "step_loss": np.float32(np.nan),
            "ascent_share": np.float32(0.0),
            "active": np.False_,
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


class HeldOutLosses(NamedTuple):
    """What :func:`heldout_losses` returns.

    Attributes:
      losses: ``(n,)`` the cross-entropy of each training example (with its
        training label, noisy or not) under the auxiliary model that did not
        train on it.
      fold: ``(n,)`` int, which fold (and auxiliary model) held the example
        out.
      logits: ``(n, num_classes)`` that model's logits for the example.
    """

    losses: np.ndarray
    fold: np.ndarray
    logits: np.ndarray


def heldout_losses(
    model: nnx.Module,
    dataset: Dataset,
    config: TrainConfig,
    *,
    num_folds: int = 5,
    seed: int = 0,
    progress: bool | Progress = True,
) -> HeldOutLosses:
    """AdaFlood's held-out losses: K auxiliary models, each trained on the
    other folds, evaluated on their own fold.

    The training examples are split into ``num_folds`` folds, contiguous
    blocks ``[int(n·k/K), int(n·(k+1)/K))`` of a seeded permutation (the
    authors' boundaries, BorealisAI/adaflood ``src/data/cls_dataset.py``,
    taken over a permutation because the synthetic datasets list one class
    after the other). Auxiliary model ``k`` trains, without flooding and with
    ``config``'s optimizer and epochs, on every fold but ``k``; all ``K`` train
    together under ``jax.vmap``. To give them one shape, each trains on the
    first ``m`` examples of its other folds, ``m`` the smallest such count (at
    most ``K − 1`` examples fewer than all of them). An example's loss comes
    from the model of its own fold, which never saw it. The authors' default
    is ``aux_num: 5`` (``configs/data/cls_dataset.yaml``).

    Args:
      model: the NNX classifier to copy for the auxiliary models (not
        modified).
      dataset: the splits; only the training split is held out.
      config: how to train the auxiliary models (its ``method`` is ignored).
      num_folds: ``K >= 2``.
      seed: seeds the permutation behind the folds.
      progress: ``True`` draws a bar of the epochs, with the time left, on
        standard error when it is a terminal; ``False`` draws none; the bar
        of an outer loop (the demo's, a study's) is advanced instead.

    Returns:
      :class:`HeldOutLosses`, aligned with ``dataset``'s training examples:
      ``losses[i]`` is example ``i``'s, to look up by index in each step.
    """
    n = len(dataset.y_train)
    check_int("num_folds", num_folds, minimum=2)
    if num_folds > n // 2:
        raise ValueError(
            f"`num_folds` must leave at least two examples per fold: got "
            f"{num_folds} folds of {n} training examples."
        )
    check_int("seed", seed, minimum=0)
    order = np.random.default_rng(seed).permutation(n)
    bounds = [int(n * k / num_folds) for k in range(num_folds + 1)]
    fold = np.empty(n, np.int32)
    for k in range(num_folds):
        fold[order[bounds[k] : bounds[k + 1]]] = k
    kept = [order[np.r_[0 : bounds[k], bounds[k + 1] : n]] for k in range(num_folds)]
    m = min(len(idx) for idx in kept)
    kept = [idx[:m] for idx in kept]
    aux_config = dataclasses.replace(config, method="flood")
    first = dataset._replace(
        x_train=dataset.x_train[kept[0]],
        y_train=dataset.y_train[kept[0]],
        y_train_clean=dataset.y_train_clean[kept[0]],
    )
    runner = _Runner(nnx.clone(model), first, aux_config)
    data = {}
    for key in _Runner.SPLITS:
        full = np.asarray(getattr(dataset, key))
        data[key] = jnp.asarray(
            np.stack([full[idx] for idx in kept])
            if key.endswith(("train", "train_clean"))
            else np.broadcast_to(full, (num_folds, *full.shape))
        )
    epoch_fn, initial, _ = _compiled(runner, batched=True, data_axis=0)
    carry = initial(runner.init_state, jnp.zeros(num_folds, jnp.float32))
    desc = f"{num_folds} auxiliary models"
    with progress_bar(progress, num_folds * config.epochs, desc) as bar:
        (state, _), _ = _run_epochs(
            runner, epoch_fn, carry, bar, data=data, runs=num_folds
        )
    logits = jax.jit(jax.vmap(runner.logits, in_axes=(0, None)))(
        state, jnp.asarray(dataset.x_train)
    )
    held = np.asarray(logits)[fold, np.arange(n)]
    losses = optax.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(held), jnp.asarray(dataset.y_train)
    )
    return HeldOutLosses(np.asarray(losses), fold, held)


def select_flood_level(
    history: History,
    flood_levels: Sequence[float],
    *,
    validation: str = "clean",
    tie_break: str = "val_loss",
) -> int:
    """The index of the level with the best final validation accuracy.

    Args:
      history: a sweep's :class:`History` (leading axis: levels).
      flood_levels: the levels, in the order of the history's runs.
      validation: ``"clean"`` or ``"noisy"`` validation labels.
      tie_break: among levels of equal accuracy, ``"val_loss"`` takes the
        lowest final validation loss on the same labels (then the lowest
        level); ``"largest_level"`` takes the largest level, which is what
        the authors' ``run_demo_synth.py`` ends up doing: it takes the first
        maximum in MLflow's run order, most recent run first, and its runs
        go through the grid in ascending order. floodax's default is
        order-independent and prefers the more confident of equally
        accurate models; with 100 validation points and 51 levels, ties are
        common.

    A run whose final validation loss is NaN or infinite (it diverged)
    ranks after every other, whatever accuracy its broken logits score.

    Returns:
      An index into ``flood_levels``.

    Examples:
      >>> import numpy as np
      >>> from floodax.experiments.training import History, select_flood_level
      >>> acc = np.array([[0.8], [0.9], [0.9]])
      >>> loss = np.array([[0.5], [0.4], [0.3]])
      >>> h = History(*[None] * 12)._replace(val_clean_accuracy=acc,
      ...                                     val_clean_loss=loss)
      >>> print(select_flood_level(h, [0.0, 0.1, 0.2]))
      2
    """
    if validation not in VALIDATIONS:
        raise ValueError(
            f"`validation` must be one of {VALIDATIONS}, got {validation!r}."
        )
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"`tie_break` must be one of {TIE_BREAKS}, got {tie_break!r}.")
    loss, accuracy = history.validation(validation)
    final_loss, final_acc = np.asarray(loss)[:, -1], np.asarray(accuracy)[:, -1]
    levels = np.asarray(flood_levels, np.float64)
    second = final_loss if tie_break == "val_loss" else -levels
    # A run whose final validation loss is not finite has diverged: its
    # logits are NaN or infinite, and its accuracy (NaN logits score as
    # class 0) means nothing. It ranks after every finite run, whatever its
    # accuracy, and is chosen only when every run diverged.
    diverged = ~np.isfinite(final_loss)
    # lexsort: the last key sorts first.
    return int(np.lexsort((levels, second, -final_acc, diverged))[0])


def _resolve_vectorized(vectorized: bool | str) -> bool:
    if vectorized == "auto":
        # Measured in benchmarks/bench_sweep.py: on a CPU the levels run
        # faster one after another; an accelerator is filled by the batch.
        return jax.default_backend() != "cpu"
    if not isinstance(vectorized, bool):
        raise ValueError(
            f"`vectorized` must be True, False or 'auto', got {vectorized!r}."
        )
    return vectorized


def sweep_flood_levels(
    model: nnx.Module,
    dataset: Dataset,
    config: TrainConfig,
    flood_levels: Sequence[float] = PAPER_GRID,
    *,
    aux_losses: np.ndarray | None = None,
    tie_break: str = "val_loss",
    vectorized: bool | str = "auto",
    progress: bool | Progress = True,
) -> SweepResult:
    """Trains one copy of ``model`` per flood level and picks the best level.

    Every level starts from the same initial model and sees the same
    mini-batches. The best level has the highest validation accuracy after
    the last epoch, on the clean or the noisy validation labels
    (``config.validation``; the authors' demo uses the clean ones), ties
    broken by ``tie_break`` (see :func:`select_flood_level`).

    Args:
      model: a Flax NNX classifier (not modified).
      dataset: the splits.
      config: a :class:`TrainConfig`.
      flood_levels: the levels to try; the paper's grid by default. With
        ``config.method="adaflood"``, the ``γ`` values to try; with another
        entry of the family, its hyperparameter's values.
      aux_losses: AdaFlood's held-out losses (:func:`heldout_losses`); only
        with ``method="adaflood"``.
      tie_break: ``"val_loss"`` or ``"largest_level"``.
      vectorized: ``True`` trains all levels at once under ``jax.vmap``,
        which fills an accelerator; ``False`` trains them one after another
        through the same compiled epoch (the flood level is optimizer state,
        so nothing recompiles), each run then equal bit for bit to
        :func:`train` at that level; ``"auto"`` (the default) picks
        ``True`` on a GPU or TPU and ``False`` on a CPU, where the
        sequential runs were faster (benchmarks/bench_sweep.md). Vectorized
        runs agree with individual ones to rounding at first and can drift
        apart over long runs (benchmarks/sweep_drift.md).
      progress: ``True`` draws a bar of the epochs, with the time left, on
        standard error when it is a terminal; ``False`` draws none; the bar
        of an outer loop (the demo's, a study's) is advanced instead.

    Returns:
      A :class:`SweepResult`.

    Examples:
      >>> from flax import nnx
      >>> from floodax.experiments import (MLP, TrainConfig, make_synthetic,
      ...                                  sweep_flood_levels)
      >>> data = make_synthetic("gaussians", n_train=40, n_val=40, n_test=100)
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
    _check_levels(levels, config, aux_losses)
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"`tie_break` must be one of {TIE_BREAKS}, got {tie_break!r}.")
    batched = _resolve_vectorized(vectorized)
    runner = _Runner(nnx.clone(model), dataset, config, aux_losses)
    sweep = _sweep_vmapped if batched else _sweep_sequential
    total = len(levels) * config.epochs
    with progress_bar(progress, total, f"{len(levels)} flood levels") as bar:
        records, test_loss, test_acc, steps, ascents = sweep(runner, levels, bar)
    history = _history(records, 1)
    best = select_flood_level(
        history, levels, validation=config.validation, tie_break=tie_break
    )
    return SweepResult(
        flood_levels=levels,
        history=history,
        test_loss=np.asarray(test_loss),
        test_accuracy=np.asarray(test_acc),
        ascent_share=np.asarray(ascents, np.float64) / np.maximum(np.asarray(steps), 1),
        best_index=best,
        best_flood_level=float(levels[best]),
        validation=config.validation,
        vectorized=batched,
    )
