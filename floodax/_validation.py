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
        raise TypeError(
            f"`{name}` must be a real number, got dtype {dtype}{fix}."
        )
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
