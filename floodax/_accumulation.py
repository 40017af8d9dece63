"""Gradient accumulation that floods the large batch: ``multi_steps``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from floodax._validation import axis_reduce, check_count, check_scalar_value


def _micro_batch_value_fn(params: Any) -> Any:
    """Stands in for a micro-batch's ``value_fn`` inside ``multi_steps``."""
    del params
    raise TypeError(
        "floodax.multi_steps: a transformation inside `inner` called `value_fn`, "
        "the loss of one micro-batch, while its updates are the mean gradient of "
        "all the accumulated micro-batches; a penalty or backstitch step would "
        "mix the two. To penalise each micro-batch, put the penalty before the "
        "accumulation: optax.chain(floodax.add_grad_norm_penalty(strength), "
        "floodax.multi_steps(inner, k)). If the value_fn you pass evaluates the "
        "whole large batch, say so: floodax.multi_steps(..., "
        "value_fn_is_large_batch=True)."
    )


class MicroBatch:
    """Stands in for the ``batch`` extra argument inside ``multi_steps``: one
    micro-batch, while the updates there are the mean of all of them;
    :func:`floodax.m_sharpness` refuses it."""


def _varying_axes(x: Any) -> frozenset:
    """The mesh axes along which ``x`` differs between devices, as
    ``shard_map``'s ``check_vma`` types it (empty outside ``shard_map`` and
    under ``check_vma=False``)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def _axis_names(axis_name: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if axis_name is None:
        return ()
    return axis_name if isinstance(axis_name, tuple) else (axis_name,)


class MultiStepsState(NamedTuple):
    """State of :func:`multi_steps`.

    Attributes:
      inner: the wrapped ``optax.MultiStepsState`` (micro-step counter,
        accumulated gradients, the inner transformation's state).
      value_mean: scalar of the accumulator dtype, the running mean of the
        ``value`` s passed since the last update was emitted (0 before any);
        with ``axis_name``, of their means over devices, the same on every
        device.

    Examples:
      >>> import jax.numpy as jnp, optax, floodax
      >>> tx = floodax.multi_steps(optax.chain(floodax.flood(0.5), optax.sgd(1.0)), 3)
      >>> state = tx.init(jnp.ones(1))
      >>> for loss in (0.9, 0.3):
      ...   _, state = tx.update(jnp.ones(1), state, value=jnp.float32(loss))
      >>> print(state.value_mean, state.inner.mini_step)  # two of three so far
      0.6 2
    """

    inner: optax.MultiStepsState
    value_mean: jax.Array


def multi_steps(
    inner: optax.GradientTransformation,
    every_k_schedule: int | Callable[[jax.Array], jax.Array],
    *,
    use_grad_mean: bool = True,
    should_skip_update_fn: Callable[..., Any] | None = None,
    accumulator_dtype: Any = "float32",
    value_fn_is_large_batch: bool = False,
    axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient accumulation whose inner transformation sees the mean loss.

    ``optax.MultiSteps`` accumulates ``k`` micro-batch gradients and applies
    ``inner`` to their mean, but hands ``inner`` only the ``value`` of the
    call that applies the update. With :func:`flood` inside, the flood
    decision is then taken on the *last* micro-batch's loss: micro-batch
    losses 0.9 and 0.2 with ``b = 0.5`` ascend, although the large batch's
    loss, 0.55, is above ``b``.

    ``multi_steps`` keeps a running mean of the ``value`` s (the micro-batch
    losses) alongside the gradients and hands it to ``inner`` as ``value``.
    With equal micro-batches the mean loss is the large batch's loss and the
    mean gradient its gradient, so accumulated flooding takes exactly the
    step of flooding the large batch:

    .. math::

      \bar L = \frac1k \sum_{j=1}^k L_j, \qquad
      \text{update} = \text{inner}\Big(\frac1k \sum_j \nabla L_j,
      \ \text{value} = \bar L\Big)

    Flooding each micro-batch instead (``flooded`` on every micro-batch
    loss, then accumulating) is another objective, ``Σ|L_j − b| + b``: it
    flips the micro-batches below ``b`` even while the large batch is above.
    Everything else is ``optax.MultiSteps``: extra arguments pass through,
    ``every_k_schedule`` may be a schedule of the update count, and
    ``inner``'s state advances only when an update is emitted.

    A ``value_fn`` is the exception. It is the loss of the micro-batch it was
    passed with, while ``inner`` sees the mean gradient of all ``k``: a
    penalty or backstitch step inside would mix the last micro-batch's
    curvature with the large batch's gradient (with the finite difference,
    wrong by orders of magnitude). So a transformation inside ``inner`` that
    calls ``value_fn`` raises, unless ``value_fn_is_large_batch=True`` says
    that the ``value_fn`` you pass evaluates the whole large batch (then the
    penalty is the large batch's, exactly). To penalise each micro-batch
    instead, put the penalty before the accumulation:
    ``optax.chain(floodax.add_grad_norm_penalty(λ), floodax.multi_steps(inner,
    k))`` averages ``∇(L_j + λ‖∇L_j‖²)`` over the micro-batches. A ``batch``
    extra argument, :func:`m_sharpness`'s, is the micro-batch's as well, and
    ``m_sharpness`` inside ``inner`` raises the same way. Calls without
    ``value`` are fine for an ``inner`` that does not need one.

    Under ``shard_map`` (or a named ``vmap``), where each device passes its
    own loss with the global gradient, give ``multi_steps`` the
    ``axis_name``: it accumulates the mean of ``value`` over devices, so the
    state is the same on every device (it passes ``shard_map``'s
    ``out_specs=P()`` check, and a checkpoint, which reads one device's copy,
    holds the large batch's running loss), and ``inner`` sees the global
    mean (:func:`flood` inside needs no ``axis_name`` of its own then).
    Without it, a ``value`` that differs between devices while the state is
    replicated raises (``shard_map``'s ``check_vma`` types tell; under
    ``check_vma=False`` they cannot, and each device would silently keep its
    own running loss).

    Args:
      inner: the transformation to apply to the accumulated gradient, e.g.
        ``optax.chain(floodax.flood(b), optax.adam(lr))``.
      every_k_schedule: ``k``, the number of micro-batches per update (an
        int, an integer array, or a schedule of the number of updates
        emitted so far, as in ``optax.MultiSteps``). A schedule under
        ``optax.inject_hyperparams`` goes in ``static_args``:
        ``inject_hyperparams(floodax.multi_steps, static_args=
        ("every_k_schedule",))(inner, schedule)``; injected, it would be
        evaluated at the micro-batch count instead, which ``multi_steps``
        cannot see. An int may be injected (and changed in the state).
      use_grad_mean: average the gradients (``True``) or sum them, as in
        ``optax.MultiSteps``.
      should_skip_update_fn: as in ``optax.MultiSteps`` (e.g.
        ``optax.skip_not_finite``): a skipped micro-batch counts towards
        neither the gradient nor the loss.
      accumulator_dtype: dtype of the accumulated gradients and loss; float32
        by default, as optax accumulates (pass float64 under ``jax_enable_x64``
        for bit-level comparisons; ``None``, optax's "default float dtype",
        is refused: it breaks optax's update for any other parameter dtype).
        Give it as a string under
        ``optax.inject_hyperparams``, which takes any callable, ``jnp.float32``
        included, for a schedule.
      value_fn_is_large_batch: let transformations inside ``inner`` call the
        ``value_fn`` (or read the ``batch``) passed to ``update`` (see
        above); only for a ``value_fn`` (``batch``) of the whole large batch.
      axis_name: the name (or a tuple of names) of the mapped axes over which
        each device holds a shard of the micro-batch: ``value`` is averaged
        over them before it is accumulated (see above).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its ``update`` returns
      zeros except on every ``k``-th call.

    Raises:
      ValueError: under ``shard_map``, ``value`` differs between devices
        along a mesh axis that ``axis_name`` does not name, while the state
        is the same on every device; ``axis_name`` names no mapped axis.

    Examples:
      >>> import jax.numpy as jnp, optax, floodax
      >>> tx = floodax.multi_steps(
      ...     optax.chain(floodax.flood(0.5), optax.sgd(1.0)), every_k_schedule=2)
      >>> g = jnp.ones(1)
      >>> state = tx.init(g)
      >>> _, state = tx.update(g, state, value=jnp.float32(0.9))
      >>> updates, state = tx.update(g, state, value=jnp.float32(0.2))
      >>> print(updates)  # mean loss 0.55 > 0.5: descent, -1·g
      [-1.]
      >>> ms = optax.MultiSteps(optax.chain(floodax.flood(0.5), optax.sgd(1.0)), 2)
      >>> s = ms.init(g)
      >>> _, s = ms.update(g, s, value=jnp.float32(0.9))
      >>> print(ms.update(g, s, value=jnp.float32(0.2))[0])  # last loss 0.2: ascent
      [1.]
    """
    if not callable(every_k_schedule):
        check_count(
            "every_k_schedule",
            every_k_schedule,
            ": the number of micro-batches per update (or a schedule of the "
            "update count)",
        )
    if accumulator_dtype is None:
        # optax.MultiSteps casts the accumulator with jnp.astype(·, None),
        # the default float dtype, so None fails inside its lax.cond for
        # bfloat16 parameters, or float32 ones under jax_enable_x64.
        raise ValueError(
            "`accumulator_dtype` must be a floating-point dtype, got None: "
            "optax.MultiSteps would cast the accumulator to the default float "
            "dtype, which fails for parameters of any other dtype. Pass the "
            "dtype (e.g. 'float32', or the parameters' own)."
        )
    if not jnp.issubdtype(jnp.dtype(accumulator_dtype), jnp.floating):
        raise ValueError(
            f"`accumulator_dtype` must be a floating-point dtype, got "
            f"{accumulator_dtype!r}: an integer accumulator would truncate the "
            "gradients and the losses."
        )
    schedule = (
        every_k_schedule if callable(every_k_schedule) else (lambda _: every_k_schedule)
    )
    accumulate = optax.MultiSteps(
        inner,
        schedule,
        use_grad_mean=use_grad_mean,
        should_skip_update_fn=should_skip_update_fn,
        accumulator_dtype=accumulator_dtype,
    )

    def init_fn(params: optax.Params) -> MultiStepsState:
        return MultiStepsState(
            inner=accumulate.init(params),
            value_mean=jnp.zeros([], accumulator_dtype),
        )

    def update_fn(
        updates: optax.Updates,
        state: MultiStepsState,
        params: optax.Params | None = None,
        *,
        value: chex.Array | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, MultiStepsState]:
        if not value_fn_is_large_batch:
            if extra_args.get("value_fn") is not None:
                extra_args = {**extra_args, "value_fn": _micro_batch_value_fn}
            if extra_args.get("batch") is not None:
                extra_args = {**extra_args, "batch": MicroBatch()}
        before = state.inner
        if value is None:
            new_updates, after = accumulate.update(
                updates, before, params, **extra_args
            )
            return new_updates, MultiStepsState(after, state.value_mean)
        value = check_scalar_value("value", value)
        if axis_name is not None:
            value = axis_reduce(jax.lax.pmean, value, axis_name, "floodax.multi_steps")
        _check_replicated(value, state.value_mean, axis_name)
        # A running mean in the accumulator's dtype (an integer count does
        # not promote it).
        mean = state.value_mean + (
            value.astype(accumulator_dtype) - state.value_mean
        ) / (before.mini_step + 1)
        new_updates, after = accumulate.update(
            updates, before, params, value=mean.astype(value.dtype), **extra_args
        )
        # optax.MultiSteps leaves both counters as they were on a skipped
        # update (should_skip_update_fn): the mean must not count that value.
        skipped = (after.mini_step == before.mini_step) & (
            after.gradient_step == before.gradient_step
        )
        emitted = ~skipped & (after.mini_step == 0)
        value_mean = jnp.where(skipped, state.value_mean, jnp.where(emitted, 0.0, mean))
        return new_updates, MultiStepsState(after, value_mean)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_replicated(
    value: jax.Array, value_mean: jax.Array, axis_name: str | tuple[str, ...] | None
) -> None:
    """Refuses a per-device ``value`` accumulated into a replicated state."""
    axes = _varying_axes(value) - _varying_axes(value_mean)
    if not axes:
        return
    names = tuple(sorted(axes | set(_axis_names(axis_name))))
    fix = repr(names[0]) if len(names) == 1 else repr(names)
    along = ("axis " if len(axes) == 1 else "axes ") + ", ".join(
        map(repr, sorted(axes))
    )
    raise ValueError(
        f"floodax.multi_steps: `value` differs between devices along mesh "
        f"{along}, while the accumulator "
        "state is the same on every device: each device would keep its own "
        "running loss in a state that reads as replicated (a checkpoint "
        "would hold one device's). Pass "
        f"`floodax.multi_steps(..., axis_name={fix})` to accumulate the mean "
        "loss over devices."
    )
