"""Argument checks shared by every floodax transform.

Checks run on what is known when a function is called: shapes and dtypes
always (they are static under ``jit``), values only when they are concrete.
A traced hyperparameter (under ``jit``, ``vmap`` or ``optax.inject_hyperparams``)
cannot be inspected without a host round trip, so its value is trusted.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_scalar_hyperparam(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    fix: str = "",
) -> None:
    """Raises if ``value`` cannot serve as the non-negative scalar ``name``.

    Callables (optax schedules) are checked where they are evaluated, with
    ``fix=SCHEDULE_FIX``.
    """
    if callable(value):
        return
    shape = np.shape(value)
    if shape != ():
        raise ValueError(
            f"`{name}` must be a scalar, got an array of shape {shape}. "
            f"Pass one number per transformation (use `jax.vmap` to sweep "
            f"several values){fix}."
        )
    dtype = jnp.result_type(value)
    if not (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    ) or jnp.issubdtype(dtype, jnp.bool_):
        raise TypeError(f"`{name}` must be a real number, got dtype {dtype}{fix}.")
    if _is_traced(value):
        return
    number = float(np.asarray(value))
    if not np.isfinite(number):
        raise ValueError(f"`{name}` must be finite, got {number}{fix}.")
    if positive and number <= 0:
        raise ValueError(f"`{name}` must be positive, got {number}{fix}.")
    if number < 0:
        raise ValueError(f"`{name}` must be non-negative, got {number}{fix}.")


SCHEDULE_FIX = " (the value came from the schedule passed as this argument)"


def check_float_array(name: str, value: Any) -> jax.Array:
    """Returns ``value`` as a floating-point array, or raises a ``TypeError``."""
    array = jnp.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must have a floating-point dtype, got {array.dtype}. "
            f"Compute the loss in floating point, e.g. "
            f"`{name}.astype(jnp.float32)`."
        )
    return array


def check_scalar_value(name: str, value: Any) -> jax.Array:
    """Returns the loss ``value`` as a scalar float array, or raises."""
    array = check_float_array(name, value)
    if array.shape != ():
        raise ValueError(
            f"`{name}` must be the scalar mini-batch loss, got an array of "
            f"shape {array.shape}. Reduce the per-example losses first, e.g. "
            f"`{name}=losses.mean()`."
        )
    return array


def require_params(params: Any, transform: str) -> None:
    """Raises a ``TypeError`` when ``update`` was called without ``params``."""
    if params is None:
        raise TypeError(
            f"{transform} needs the current parameters: call "
            "`tx.update(grads, state, params, ...)`."
        )


def check_rate_order(descent_rate: Any, ascent_rate: Any, *, strict: bool) -> None:
    """Raises when concrete rates break ``descent_rate > ascent_rate``.

    With ``strict=False`` equal rates (flooding's pair) are allowed.
    """
    if callable(descent_rate) or callable(ascent_rate):
        return
    if _is_traced(descent_rate) or _is_traced(ascent_rate):
        return
    descent, ascent = float(np.asarray(descent_rate)), float(np.asarray(ascent_rate))
    if descent > ascent or (not strict and descent == ascent):
        return
    if strict:
        raise ValueError(
            f"`descent_rate` ({descent}) must exceed `ascent_rate` ({ascent}): "
            "the equivalent penalty ε1·ε2/(2(ε1 − ε2)) is defined only for "
            "ε1 > ε2. For equal rates (flooding at its level) the loss term "
            "vanishes and the pair is a step of ε²/2 on ‖∇L‖² alone: use "
            "`floodax.flooding_penalty_rate(rate)`."
        )
    raise ValueError(
        f"`descent_rate` ({descent}) must be at least `ascent_rate` ({ascent}): "
        "otherwise every pair of steps ascends on net and training diverges. "
        "Swap the two rates, or use `ascent_first=True` for Kaldi's backstitch "
        "order."
    )


def check_interval(interval: Any) -> None:
    """Raises unless ``interval`` is a (possibly traced) integer ``>= 1``."""
    fix = (
        ": `interval=1` alternates on every step, `interval=n` takes one pair "
        "then n - 1 plain descent steps"
    )
    is_integer = (
        not isinstance(interval, bool)
        and not callable(interval)
        and jnp.issubdtype(jnp.result_type(interval), jnp.integer)
        and np.shape(interval) == ()
    )
    if not is_integer or (not _is_traced(interval) and int(np.asarray(interval)) < 1):
        raise ValueError(f"`interval` must be an integer >= 1, got {interval!r}{fix}.")


def check_matching_trees(updates: Any, params: Any, transform: str) -> None:
    """Raises when ``updates`` and ``params`` differ in structure or shapes.

    The transforms that evaluate ``value_fn`` at a point moved along the
    updates need one update per parameter, of the parameter's shape.
    """
    updates_tree, params_tree = jax.tree.structure(updates), jax.tree.structure(params)
    if updates_tree != params_tree:
        raise ValueError(
            f"{transform}: `updates` and `params` must be pytrees of the same "
            f"structure, got {updates_tree} and {params_tree}. Pass the gradient "
            "of `value_fn` with respect to `params` as the updates."
        )
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
        if np.shape(u) != np.shape(p):
            raise ValueError(
                f"{transform}: an update of shape {np.shape(u)} does not match "
                f"its parameter of shape {np.shape(p)}."
            )
