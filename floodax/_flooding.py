"""Flooding and individual flooding (iFlood), as loss transforms and in optax.

Flooding trains on ``|L - b| + b`` instead of ``L``: above the flood level
``b`` this is the ordinary loss, below it the gradient flips sign, so the
training loss floats around ``b`` instead of being driven to zero.

References:
  Ishida, Yamane, Sakai, Niu and Sugiyama, "Do We Need Zero Training Loss
  After Achieving Zero Training Error?", ICML 2020.
  Xie, Wang, Liu, Zhang, Shi and Wang, "iFlood: A Stable and Effective
  Regularizer", ICLR 2022.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from floodax import _schedules as schedules
from floodax._validation import (
    as_real_array,
    axis_reduce,
    check_broadcast_array,
    check_float_array,
    check_scalar_hyperparam,
    check_scalar_value,
    check_values,
    is_traced,
)


def reject_schedule(name: str, value: Any) -> None:
    """A loss transform has no step count: a callable hyperparameter is an error."""
    if callable(value):
        hint = (
            ", or use the optax transformation `floodax.flood(schedule)`"
            if name == "flood_level"
            else ""
        )
        raise TypeError(
            f"`{name}` must be a number or an array here, got a callable; a "
            "loss transform has no step count, so evaluate a schedule "
            f"yourself: `{name}=schedule(step)`{hint}."
        )


def check_fixed_level(
    flood_level: Any, target_shape: tuple[int, ...], name: str = "flood_level"
) -> None:
    """A number, or an array of levels that broadcasts to the losses."""
    reject_schedule(name, flood_level)
    if np.shape(flood_level) == ():
        check_scalar_hyperparam(name, flood_level)
        return
    check_broadcast_array(name, flood_level, target_shape, "losses")
    if not is_traced(flood_level):
        check_values(name, flood_level)


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return jnp.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _flood_elementwise(losses: jax.Array, flood_level: Any) -> jax.Array:
    """``|L − b| + b`` whose gradient is ``sign(L − b)·∇L``, NaN for a NaN loss.

    ``sign(L − b)`` is +1 at ``L == b`` (descent, as in :func:`flood`) and NaN
    when ``L`` is NaN, so a NaN loss gives a NaN gradient instead of a silent
    step in either direction (``jnp.abs`` would give ``-∇L``: an ascent). The
    sign is constant almost everywhere and carries no gradient; ``sign·(L − b)``
    equals ``|L − b|`` exactly, since multiplying by ±1 is exact.
    """
    level = jnp.asarray(flood_level, losses.dtype)
    gap = losses - level
    sign = jnp.where(jnp.isnan(gap), jnp.nan, jnp.where(gap >= 0, 1.0, -1.0))
    return jax.lax.stop_gradient(sign.astype(losses.dtype)) * gap + level


def flooded(loss: chex.Array, flood_level: chex.Numeric) -> jax.Array:
    r"""Floods a loss: ``|loss - b| + b``, elementwise.

    .. math::

      \tilde L = |L - b| + b, \qquad
      \nabla \tilde L = \operatorname{sign}(L - b)\, \nabla L

    Above the flood level ``b`` the flooded loss equals the loss and its
    gradient is the ordinary one; below ``b`` the gradient is negated, so a
    step of gradient descent becomes a step of ascent. At ``L == b`` the
    gradient is that of descent, as in :func:`flood`.

    **NaN.** A NaN loss gives a NaN flooded loss *and a NaN gradient*, as
    :func:`flood` gives NaN updates: a broken step is never silently taken
    as descent or ascent (``jnp.abs`` alone would differentiate to ``-∇L``,
    an ascent). Chain ``optax.apply_if_finite`` to skip such steps.

    The flood level is cast to the loss's dtype, so a ``bfloat16`` loss stays
    ``bfloat16``. The gradient with respect to ``b`` (for meta-learning the
    level) is ``1 - sign(L - b)``: 0 above the level, 2 below it.

    Args:
      loss: floating-point array of loss values, usually the scalar mean
        mini-batch loss (flooding applies to the mean; see :func:`iflooded`
        for the per-example form).
      flood_level: the flood level ``b >= 0``: a Python number or a scalar
        array, or an array of levels that broadcasts to ``loss``'s shape. It
        may be traced, so it can be swept with ``jax.vmap`` or changed
        between calls of a jitted function without recompiling.

    Returns:
      ``|loss - b| + b`` with the shape and dtype of ``loss``.

    Raises:
      TypeError: ``loss`` is not floating point, or ``flood_level`` is a
        callable or not a real number.
      ValueError: ``flood_level`` does not broadcast to ``loss``, or is
        concretely negative, NaN or infinite.

    Examples:
      >>> import jax, jax.numpy as jnp, floodax
      >>> print(floodax.flooded(jnp.array([0.5, 0.1, 0.0]), flood_level=0.2))
      [0.5 0.3 0.4]
      >>> loss_fn = lambda w: floodax.flooded(jnp.sum(w ** 2), 0.2)
      >>> print(jax.grad(loss_fn)(jnp.array([1.0])))  # loss 1.0 above b
      [2.]
      >>> print(jax.grad(loss_fn)(jnp.array([0.1])))  # loss 0.01 below b
      [-0.2]
      >>> nan_loss = lambda w: floodax.flooded(jnp.sum(w) + jnp.nan, 0.2)
      >>> print(jax.grad(nan_loss)(jnp.array([1.0])))  # no silent direction
      [nan]

    References:
      Ishida, Yamane, Sakai, Niu and Sugiyama, "Do We Need Zero Training Loss
      After Achieving Zero Training Error?", ICML 2020.
    """
    loss = check_float_array("loss", loss)
    check_fixed_level(flood_level, loss.shape)
    return _flood_elementwise(loss, flood_level)


def _check_where(where: Any, shape: tuple[int, ...]) -> jax.Array | None:
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(
            f"`where` must be a boolean mask, got dtype {where.dtype}. "
            "Pass e.g. `where=mask > 0`."
        )
    if not _broadcasts_to(where.shape, shape):
        raise ValueError(
            f"`where` of shape {where.shape} does not broadcast to "
            f"`losses` of shape {shape}; pass one flag per example."
        )
    return where


def _check_weights(weights: Any, shape: tuple[int, ...]) -> Any:
    if weights is None:
        return None
    check_broadcast_array("weights", weights, shape, "losses")
    if not is_traced(weights):
        check_values("weights", weights)
    return weights


def iflooded(
    losses: chex.Array,
    flood_level: chex.Numeric,
    *,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    axis_name: str | None = None,
) -> jax.Array:
    r"""Individual flooding (iFlood): the mean of per-example flooded losses.

    .. math::

      \tilde L = \frac{\sum_i w_i\,\big(|\ell_i - b_i| + b_i\big)}{\sum_i w_i},
      \qquad
      \nabla \tilde L = \frac{\sum_i w_i \operatorname{sign}(\ell_i - b_i)\,
      \nabla \ell_i}{\sum_i w_i}

    with ``w_i = 1`` and one level ``b`` for all examples by default: the
    plain mean. Unlike :func:`flooded`, which flips the whole mini-batch
    gradient when the mean loss falls below ``b``, iFlood flips only the
    examples that are already fitted below their level, and keeps descending
    on the others.

    * **Per-example levels** ``b_i`` (an array that broadcasts to ``losses``)
      give AdaFlood (see :func:`adaflood_levels`), or one level per class:
      ``iflooded(losses, class_levels(levels, labels))`` floods each example
      against its class's level (see :func:`class_levels`, which checks the
      labels that plain ``levels[labels]`` would silently clip).
    * **Weights** ``w_i`` give a weighted mean, e.g. a sequence model that
      floods each sequence's mean token loss weighted by its length, as
      AdaFlood's event-sequence form does.
    * **where** leaves masked entries (padding) out of sum and count; a
      masked entry contributes nothing, not even a NaN.
    * **axis_name** forms the *global* mean over a mapped axis
      (``shard_map``, ``pmap``, named ``vmap``): the weighted sums and the
      weight totals are ``psum``-ed separately, so the result is exact even
      when each device masks a different number of examples (a ``pmean`` of
      per-device means is not).

    A NaN loss of an unmasked example makes the result and its gradient NaN
    (see :func:`flooded`). With every entry masked, or all weights zero,
    there is no mean and the result is NaN, as ``jnp.mean`` gives. Sums are
    accumulated in at least float32; the result has the dtype of ``losses``.

    Args:
      losses: floating-point array of per-example losses; every element is
        one example (for token-level losses of shape ``(batch, length)``,
        every token).
      flood_level: the flood level ``b >= 0``: a number or a (possibly
        traced) scalar array, or an array of per-example levels that
        broadcasts to ``losses``.
      where: optional boolean mask broadcastable to ``losses``; ``False``
        entries are left out.
      weights: optional non-negative weights broadcastable to ``losses``.
      axis_name: optional name of a mapped axis to take the mean over.

    Returns:
      A scalar of the dtype of ``losses``.

    Raises:
      TypeError: ``losses`` is not floating point, ``where`` is not boolean,
        or ``flood_level``/``weights`` are not real numbers.
      ValueError: ``where``, ``weights`` or an array ``flood_level`` does
        not broadcast to ``losses``; a concrete level or weight is negative,
        NaN or infinite; ``axis_name`` names no mapped axis.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> losses = jnp.array([0.9, 0.1, 0.3, 0.7])
      >>> print(floodax.iflooded(losses, flood_level=0.2))
      0.55
      >>> print(floodax.iflooded(losses, 0.2, where=jnp.array([1, 1, 1, 0]) > 0))
      0.5
      >>> levels = jnp.array([0.2, 0.2, 0.5, 0.5])  # one level per example
      >>> print(floodax.iflooded(losses, levels))
      0.65
      >>> print(floodax.iflooded(losses, 0.2, weights=jnp.array([3, 1, 0, 0])))
      0.75

    References:
      Xie, Wang, Liu, Zhang, Shi and Wang, "iFlood: A Stable and Effective
      Regularizer", ICLR 2022.
      Bae, Choi, Jeong, Jang, Lee and Hwang, "AdaFlood: Adaptive Flood
      Regularization", TMLR 2024.
    """
    return mean_over_examples(
        "floodax.iflooded",
        losses,
        ("flood_level", flood_level),
        lambda valid: _flood_elementwise(valid, flood_level),
        where=where,
        weights=weights,
        axis_name=axis_name,
    )


def mean_over_examples(
    who: str,
    losses: chex.Array,
    level: tuple[str, Any],
    term: Callable[[jax.Array], jax.Array],
    *,
    where: chex.Array | None,
    weights: chex.Array | None,
    axis_name: str | None,
) -> jax.Array:
    """The masked, weighted, global mean of ``term(losses)``, for ``who``.

    One piece of code for every per-example loss transform (:func:`iflooded`,
    :func:`floodax.softad`): it checks ``losses``, the ``(name, value)`` of
    the level (a number or per-example levels), ``where`` and ``weights``;
    replaces masked losses by 0 *before* ``term`` sees them (a NaN there
    must not reach the sum or its gradient); sums ``weight · term`` and the
    weights in at least float32, ``psum``-ing each over ``axis_name``; and
    returns their ratio in the dtype of ``losses``. ``term`` maps the
    (masked) losses elementwise to the terms of the mean.
    """
    losses = check_float_array("losses", losses)
    check_fixed_level(level[1], losses.shape, level[0])
    mask = _check_where(where, losses.shape)
    weights = _check_weights(weights, losses.shape)
    accumulate = jnp.promote_types(losses.dtype, jnp.float32)
    if mask is not None:
        losses = jnp.where(mask, losses, jnp.zeros((), losses.dtype))
    terms = term(losses).astype(accumulate)
    weight = jnp.ones(losses.shape, accumulate)
    if weights is not None:
        weight = jnp.broadcast_to(jnp.asarray(weights, accumulate), losses.shape)
    if mask is not None:
        weight = jnp.where(mask, weight, jnp.zeros((), accumulate))
        # A masked entry's level may be NaN (`class_levels` of a padding
        # label under `jit`): its term must not reach the sum, even times 0.
        terms = jnp.where(mask, terms, jnp.zeros((), accumulate))
    total, count = jnp.sum(weight * terms), jnp.sum(weight)
    if axis_name is not None:
        # One psum each: jax 0.8.0 fails an internal assertion when it
        # differentiates a tuple psum whose second entry (the count) has no
        # tangent.
        total, count = (
            axis_reduce(jax.lax.psum, x, axis_name, who) for x in (total, count)
        )
    return (total / count).astype(losses.dtype)


def class_levels(levels: chex.Array, labels: chex.Array) -> jax.Array:
    r"""Per-example flood levels from one level per class: ``levels[labels]``.

    .. math::

      b_i = \text{levels}[y_i]

    for :func:`iflooded` (or the ``threshold`` of :func:`softad`):
    ``iflooded(losses, class_levels(levels, labels))`` floods example ``i``
    against the level of its class ``y_i``, so its gradient is
    ``mean_i sign(ℓ_i − levels[y_i])·∇ℓ_i``. Class-wise flooding (Aizawa,
    Naito and Fukuda, 2025) sets one flood level per class from the class
    frequencies; this is how such levels reach floodax's per-example form.

    **Why not plain indexing.** JAX clamps an out-of-range index and wraps a
    negative one, so ``levels[labels]`` with a label of ``K`` (for ``K``
    classes) silently returns the last class's level. Here concrete labels
    are checked and a bad one is an error; labels that are traced (under
    ``jit``) cannot be checked, and an out-of-range one gets the level NaN,
    so the flooded loss and its gradient are NaN instead of silently wrong.

    Args:
      levels: one non-negative, finite level per class, shape ``(K,)``.
        Integer levels are converted to float32; floating ones keep their
        dtype.
      labels: integer array of class indices in ``[0, K)``, of any shape
        (usually ``(batch,)``, one per example).

    Returns:
      The per-example levels, of the shape of ``labels`` and the (floating)
      dtype of ``levels``.

    Raises:
      TypeError: ``labels`` is not an integer array, or ``levels`` not real.
      ValueError: ``levels`` is not one-dimensional or empty, a concrete
        level is negative, NaN or infinite, or a concrete label lies outside
        ``[0, K)``.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> levels = jnp.array([0.1, 0.5])  # class 0 floods at 0.1, class 1 at 0.5
      >>> labels = jnp.array([0, 1, 1, 0])
      >>> print(floodax.class_levels(levels, labels))
      [0.1 0.5 0.5 0.1]
      >>> losses = jnp.array([0.3, 0.3, 0.9, 0.05])
      >>> print(floodax.iflooded(losses, floodax.class_levels(levels, labels)))
      0.5125
      >>> floodax.class_levels(levels, jnp.array([0, 2]))
      Traceback (most recent call last):
      ...
      ValueError: `labels` must lie in [0, 2) for 2 classes, got 2 (plain
      `levels[labels]` would silently clip it); fix the labels or pass one
      level per class.

    References:
      Aizawa, Naito and Fukuda, "Class-wise Flooding Regularization for
      Imbalanced Image Classification", ACPR 2025 (arXiv:2508.18723).
    """
    as_real_array("levels", levels)
    levels = jnp.asarray(levels)
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(
            f"`levels` must hold one level per class, shape (num_classes,), got "
            f"shape {levels.shape}."
        )
    if not is_traced(levels):
        check_values("levels", levels)
    if not jnp.issubdtype(levels.dtype, jnp.floating):
        levels = levels.astype(jnp.float32)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"`labels` must be an integer array of class indices, got dtype "
            f"{labels.dtype}; pass e.g. `labels.astype(jnp.int32)`."
        )
    num_classes = levels.shape[0]
    if not is_traced(labels):
        bad = (np.asarray(labels) < 0) | (np.asarray(labels) >= num_classes)
        if bad.any():
            raise ValueError(
                f"`labels` must lie in [0, {num_classes}) for {num_classes} "
                f"classes, got {np.asarray(labels)[bad].flat[0]} (plain "
                "`levels[labels]` would silently clip it); fix the labels or "
                "pass one level per class."
            )
    return levels.at[labels].get(
        mode="fill", fill_value=jnp.nan, wrap_negative_indices=False
    )


class FloodState(NamedTuple):
    """State of :func:`flood`.

    Attributes:
      count: int32 scalar, the number of ``update`` calls so far (the step
        count a ``flood_level`` schedule is evaluated at).
      ascent_count: int32 scalar, how many of those calls ascended (loss
        below the flood level). ``ascent_count / count`` is the share of
        steps spent below the flood level.

    Examples:
      >>> import jax.numpy as jnp, optax, floodax
      >>> tx = optax.chain(floodax.flood(0.5), optax.sgd(0.1))
      >>> state = tx.init(jnp.zeros(2))
      >>> for loss in (0.9, 0.4, 0.3, 0.6):
      ...   _, state = tx.update(jnp.ones(2), state, value=jnp.float32(loss))
      >>> flood_state = optax.tree.get(state, "FloodState")
      >>> print(f"{flood_state.ascent_count / flood_state.count:.0%} of steps ascended")
      50% of steps ascended
    """

    count: jax.Array
    ascent_count: jax.Array


def flood(
    flood_level: optax.ScalarOrSchedule,
    *,
    axis_name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Flooding as an optax transformation: negates the updates below ``b``.

    The gradient of the flooded loss ``|L - b| + b`` is
    ``sign(L - b)·∇L``. Given the raw gradient ``∇L`` and the mini-batch loss
    ``L`` as ``value``, this transformation returns the updates unchanged
    while ``value >= b`` and negated while ``value < b``, so

    ``optax.chain(floodax.flood(b), optax.adam(lr))`` fed ``∇L``

    takes exactly the steps of ``optax.adam(lr)`` fed the gradient of
    :func:`flooded` ``(L, b)``.

    **It must come first in a chain**, where the updates are still the raw
    gradient: the sign is only meaningful before an optimizer's moments or
    scaling have been applied.

    The comparison is made in the dtype of ``value`` (the flood level is cast
    to it). A NaN ``value`` gives NaN updates: the step is neither silently
    descent nor ascent, it is visibly broken; it does not count as an ascent.
    To skip such steps, put ``optax.apply_if_finite`` after ``flood``:
    ``optax.chain(floodax.flood(b), optax.apply_if_finite(optax.adam(lr), 5))``.

    With ``axis_name``, the decision uses the mean of ``value`` over that
    mapped axis (``shard_map``, ``pmap`` or a named ``vmap``), so every device
    flips together, as one device would on the whole batch. Under plain
    ``jax.jit`` with a sharded batch the loss is already global: leave
    ``axis_name`` unset.

    Inside ``optax.MultiSteps`` the decision is made on the ``value`` passed
    with the call that applies the accumulated gradient, the last
    micro-batch's loss; :func:`multi_steps` passes the mean loss of the
    accumulated micro-batches instead, which floods the large batch.

    ``optax.inject_hyperparams`` casts injected numbers to the parameters'
    dtype unless told otherwise: with bfloat16 parameters ``b = 0.28`` becomes
    0.279296875, and a loss of 0.2795 then descends where ``flood(0.28)``
    ascends. Keep the level in float32 with
    ``optax.inject_hyperparams(floodax.flood, hyperparam_dtype=jnp.float32)``.

    Args:
      flood_level: the flood level ``b >= 0``: a number, a (possibly traced)
        scalar array, or an optax schedule, a callable of the step count
        ``FloodState.count``. Works under ``optax.inject_hyperparams``.
      axis_name: optional name of a mapped axis over which to average
        ``value`` before comparing it with ``b``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes the
      mini-batch loss as the keyword argument ``value`` and ignores other
      extra keyword arguments.

    Raises:
      ValueError: ``flood_level`` is not a scalar or is concretely negative,
        NaN or infinite (at construction); ``value`` is not a scalar (at
        ``update``).
      TypeError: ``update`` is called without ``value``, or with a ``value``
        that is not floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, floodax
      >>> loss_fn = lambda p: jnp.sum(p ** 2)
      >>> tx = optax.chain(floodax.flood(flood_level=1.0), optax.sgd(0.1))
      >>> params = jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(6):
      ...   loss, grads = jax.value_and_grad(loss_fn)(params)
      ...   updates, state = tx.update(grads, state, params, value=loss)
      ...   params = optax.apply_updates(params, updates)
      ...   print(f"{loss:.3f}", end=" ")
      5.000 3.200 2.048 1.311 0.839 1.208
      >>> flood_state = state[0]
      >>> print(flood_state.ascent_count, "of", flood_state.count, "steps ascended")
      1 of 6 steps ascended

    References:
      Ishida, Yamane, Sakai, Niu and Sugiyama, "Do We Need Zero Training Loss
      After Achieving Zero Training Error?", ICML 2020.
    """
    check_scalar_hyperparam("flood_level", flood_level)

    def init_fn(params: optax.Params) -> FloodState:
        del params
        zero = jnp.zeros([], jnp.int32)
        return FloodState(count=zero, ascent_count=zero)

    def update_fn(
        updates: optax.Updates,
        state: FloodState,
        params: optax.Params | None = None,
        *,
        value: chex.Array | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, FloodState]:
        del params, extra_args
        if value is None:
            raise TypeError(
                "floodax.flood needs the mini-batch loss: call "
                "`tx.update(grads, state, params, value=loss)` (with Flax NNX, "
                "`optimizer.update(model, grads, value=loss)`)."
            )
        value = check_scalar_value("value", value)
        if axis_name is not None:
            value = axis_reduce(jax.lax.pmean, value, axis_name, "floodax.flood")
        level = schedules.evaluate("flood_level", flood_level, state.count)
        ascend = value < jnp.asarray(level, value.dtype)
        is_nan = jnp.isnan(value)

        def flip(u: jax.Array) -> jax.Array:
            return jnp.where(is_nan, jnp.nan, jnp.where(ascend, -u, u))

        new_state = FloodState(
            count=optax.safe_increment(state.count),
            ascent_count=jnp.where(
                ascend, optax.safe_increment(state.ascent_count), state.ascent_count
            ),
        )
        return jax.tree.map(flip, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
