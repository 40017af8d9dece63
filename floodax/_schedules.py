"""Evaluating a hyperparameter that may be a number or an optax schedule."""

from __future__ import annotations

from typing import Any

import jax

from floodax._validation import SCHEDULE_FIX, check_scalar_hyperparam


def evaluate(name: str, value: Any, step: jax.Array) -> Any:
    """Returns ``value(step)`` for a schedule, ``value`` itself otherwise.

    A schedule's output is checked as the hyperparameter ``name`` would be.
    """
    if not callable(value):
        return value
    out = value(step)
    check_scalar_hyperparam(name, out, fix=SCHEDULE_FIX)
    return out
