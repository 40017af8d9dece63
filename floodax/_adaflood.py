"""AdaFlood's per-example flood levels from held-out auxiliary losses."""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from floodax._validation import (
    as_real_array,
    check_float_array,
    check_scalar_hyperparam,
    is_traced,
)


@jax.custom_jvp
def _levels(z: jax.Array, gamma: jax.Array) -> jax.Array:
    """``−log((1 − γ)·e^{−z} + γ)``, kept inside its exact bounds ``[0, z]``."""
    levels = -jnp.logaddexp(jnp.log1p(-gamma) - z, jnp.log(gamma))
    # The exact level lies in [0, z] (the mixture's probability is between
    # e^{−z} and 1); rounding can step outside by an ulp, e.g. −7e-18 at
    # z = 0, which iflooded would reject as a negative level.
    return jnp.clip(levels, 0, jnp.maximum(z, 0))


@_levels.defjvp
def _levels_jvp(primals: tuple, tangents: tuple) -> tuple:
    # With D = (1 − γ)·e^{−z} + γ = e^{−b}: ∂b/∂γ = −(1 − e^{−z})/D and
    # ∂b/∂z = (1 − γ)·e^{−z}/D. Written with e^{b} = 1/D they stay finite at
    # γ = 0, where autodiff of log γ gives 0·∞ = NaN.
    z, gamma = primals
    dz, dgamma = tangents
    b = _levels(z, gamma)
    return b, jnp.expm1(-z) * jnp.exp(b) * dgamma + (1 - gamma) * jnp.exp(b - z) * dz


def adaflood_levels(
    aux_losses: chex.Array,
    *,
    gamma: chex.Numeric = 0.5,
    scale: chex.Numeric = 1.0,
    shift: chex.Numeric = 0.0,
) -> jax.Array:
    r"""AdaFlood's flood level for every example from its held-out loss.

    .. math::

      b_i = -\log\big((1 - \gamma)\, e^{-(\alpha \ell^{aux}_i + \beta)}
            + \gamma\big)

    where ``ℓᵃᵘˣᵢ`` is example ``i``'s loss under an auxiliary model that was
    *not* trained on it (``floodax.experiments.heldout_losses`` computes
    them by K-fold), ``α`` the ``scale`` and ``β`` the ``shift``. For a
    cross-entropy, ``e^{−ℓ}`` is the auxiliary model's probability ``p`` of
    the label, and ``bᵢ = −log((1 − γ)·p + γ)`` is the loss of a prediction
    mixed with certainty: ``γ = 0`` floods each example at its held-out loss,
    ``γ → 1`` at 0 (no flooding). Examples the auxiliary models find hard
    (possibly mislabelled) get high levels and are not driven to zero loss;
    easy ones get low levels. Feed the levels to :func:`iflooded`:
    ``iflooded(losses, adaflood_levels(aux_losses[idx], gamma=γ))``.

    Computed as ``−logaddexp(log(1 − γ) − z, log γ)`` with
    ``z = α·ℓ + β``, which is exact at ``γ = 0`` and stable for large ``z``,
    and kept inside its exact bounds ``[0, z]`` against rounding; its
    derivatives in ``γ``, ``α``, ``β`` and the losses are written out, finite
    at ``γ = 0`` too (``∂b/∂γ = −(e^{z} − 1)`` there). Pure and traceable:
    ``γ``, ``α`` and ``β`` may be traced (swept with ``jax.vmap``, learned
    with ``jax.grad``); concrete values are checked.

    This is ``AdaFloodCLSLoss`` of the authors' code (BorealisAI/adaflood,
    ``src/models/components/criterion.py``), whose defaults are
    ``gamma=0.5``, ``alpha_init=1.0``, ``beta_init=0.0``.

    Args:
      aux_losses: non-negative, finite held-out losses, any shape.
      gamma: ``γ ∈ [0, 1)``.
      scale: ``α``, the affine map's slope.
      shift: ``β``, its offset; with ``α·ℓ + β ≥ 0`` every level is
        non-negative.

    Returns:
      Levels of the shape and (floating) dtype of ``aux_losses``, each in
      ``[0, α·ℓ + β]``.

    Raises:
      ValueError: concrete ``γ`` outside ``[0, 1)``; non-finite or negative
        concrete losses; a concrete ``α·ℓ + β < 0``.
      TypeError: non-floating losses, hyperparameters that are not real
        numbers.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> aux = jnp.array([0.05, 0.7, 3.0])   # easy, middling, likely mislabelled
      >>> print(floodax.adaflood_levels(aux, gamma=0.5).round(4))
      [0.0247 0.29   0.6446]
      >>> print(floodax.adaflood_levels(aux, gamma=0.0))  # the held-out loss itself
      [0.05 0.7  3.  ]

    References:
      Bae, Choi, Jeong, Jang, Lee and Hwang, "AdaFlood: Adaptive Flood
      Regularization", Transactions on Machine Learning Research, 2024.
    """
    aux_losses = check_float_array("aux_losses", aux_losses)
    for name, value in (("gamma", gamma), ("scale", scale)):
        check_scalar_hyperparam(name, value)
    _check_shift(shift)
    if not is_traced(gamma) and not float(gamma) < 1.0:
        raise ValueError(
            f"`gamma` must lie in [0, 1), got {float(gamma)}: at γ = 1 "
            "every level is 0 (no flooding); use flooding without levels instead."
        )
    if not is_traced(aux_losses):
        values = np.asarray(aux_losses, np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(
                "`aux_losses` must be finite: a held-out loss of inf or NaN gives no "
                "flood level; check the auxiliary models."
            )
        if np.any(values < 0):
            raise ValueError(
                f"`aux_losses` must be non-negative, got {values.min():g}: they are "
                "held-out losses such as a cross-entropy."
            )
        concrete = not (is_traced(scale) or is_traced(shift))
        if concrete and np.any(float(scale) * values + float(shift) < 0):
            raise ValueError(
                "`scale`·aux_losses + `shift` must be non-negative, or some levels "
                f"would be negative (scale {float(scale)}, shift {float(shift)})."
            )
    dtype = aux_losses.dtype
    z = jnp.asarray(scale, dtype) * aux_losses + jnp.asarray(shift, dtype)
    return _levels(z, jnp.broadcast_to(jnp.asarray(gamma, dtype), z.shape))


def _check_shift(shift: Any) -> None:
    """``β`` may be negative; it must be a finite real scalar."""
    as_real_array("shift", shift)  # names `shift` for callables and strings too
    if np.shape(shift) != ():
        raise ValueError(f"`shift` must be a scalar, got shape {np.shape(shift)}.")
    if not is_traced(shift) and not np.isfinite(float(shift)):
        raise ValueError(f"`shift` must be finite, got {float(shift)}.")
