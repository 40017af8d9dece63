"""Soft ascent-descent (SoftAD): flooding's per-example step, softened.

References:
  Holland and Nakatani, "Soft ascent-descent as a stable and flexible
  alternative to flooding", NeurIPS 2024.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from floodax._flooding import mean_over_examples, reject_schedule
from floodax._validation import check_scalar_hyperparam


def softad(
    losses: chex.Array,
    threshold: chex.Numeric,
    *,
    sigma: chex.Numeric = 1.0,
    eta: chex.Numeric = 1.0,
    where: chex.Array | None = None,
    weights: chex.Array | None = None,
    axis_name: str | None = None,
) -> jax.Array:
    r"""SoftAD: ``η·θ + σ²·mean ρ((ℓᵢ − θ)/σ)`` with ``ρ(x) = √(1 + x²) − 1``.

    .. math::

      \tilde L = \eta\theta + \frac{\sum_i w_i\,\sigma^2
      \rho\big((\ell_i - \theta)/\sigma\big)}{\sum_i w_i},
      \qquad
      \frac{\partial \tilde L}{\partial \ell_i} = \frac{w_i}{\sum_j w_j}\,
      \sigma\rho'\Big(\frac{\ell_i - \theta}{\sigma}\Big),
      \quad \rho'(x) = \frac{x}{\sqrt{1 + x^2}} \in (-1, 1)

    Each example's gradient ``∇ℓᵢ`` is scaled by ``σ·ρ'((ℓᵢ − θ)/σ)``:
    positive above the threshold ``θ`` (descent), negative below it (ascent),
    zero at it, and in size below ``σ`` and at most ``|ℓᵢ − θ|``. It is
    iFlood's per-example step ``sign(ℓᵢ − b)·∇ℓᵢ`` (:func:`iflooded`)
    softened: examples near the threshold count little, and no example more
    than ``σ``.

    **Limits** (``x = ℓᵢ − θ``; both tested numerically):

    * ``σ → 0``: ``σ²ρ(x/σ) = σ√(σ² + x²) − σ²`` lies within ``σ²`` below
      ``σ·|x|``, and the gradient *divided by σ* tends to iFlood's gradient
      with ``b = θ``: per example ``ρ'(x/σ)·w_i/Σw·∇ℓᵢ → sign(x)·w_i/Σw·∇ℓᵢ``,
      with ``|ρ'(x/σ) − sign(x)| ≤ σ²/(2x²)``. At ``ℓᵢ = θ`` exactly the
      limit is 0 where iFlood descends.
    * ``σ → ∞``: ``σ²ρ(x/σ) → x²/2`` (from below, within ``x⁴/(8σ²)``), so
      SoftAD tends to ``η·θ + ½·mean (ℓᵢ − θ)²`` and its gradient to
      ``mean (ℓᵢ − θ)·∇ℓᵢ``, per example within ``|x|³/(2σ²)``.

    **The reference.** The value matches ``Loss_SoftAD`` of the authors'
    code (github.com/feedbackward/bdd-flood, ``bdd-flood/setup/losses.py``,
    with ``rho_torch`` of ``bdd-flood/setup/sunhuber.py``), which trains on
    ``eta*theta + sigma**2 * rho((loss - theta)/sigma).mean()``; its
    experiments use ``σ = η = 1`` and sweep ``θ`` (``run_benchmarks.py``:
    0.01 to 0.75). That code adds ``1e-12`` to ``σ`` ("to be safe", against
    ``σ = 0``); floodax does not: it requires ``σ > 0`` instead, so its
    ``σ`` is the reference's minus ``1e-12``. That is a relative difference
    of ``1e-12/σ`` in float64, and lost in rounding in float32, where the
    reference computes (PyTorch casts the Python number to the loss's
    dtype): a float32 ``σ ≥ 2⁻¹⁵``, such as the reference's 1.0, plus
    ``1e-12`` rounds back to ``σ``. ``θ`` is a fixed hyperparameter, so
    ``η·θ`` shifts the value only: ``η`` does not change the gradient with
    respect to the model. floodax evaluates ``σ²ρ(x/σ)`` as
    ``x²/(√(1 + (x/σ)²) + 1)``, the same number without the cancellation of
    ``√(1 + y²) − 1`` for small ``y`` (which is 0 in float32 for
    ``|y| ≤ 4e-4``).

    Masks, weights and the global mean over ``axis_name`` are those of
    :func:`iflooded` (the same code): ``where`` leaves masked entries out of
    sum and count (a masked NaN contributes nothing), ``weights`` give a
    weighted mean, and with ``axis_name`` the weighted sums and weight totals
    are ``psum``-ed separately. The terms are computed and summed in at
    least float32; the result has the dtype of ``losses``. A NaN loss of an
    unmasked example makes the result and its gradient NaN; an infinite one
    makes the result infinite and its gradient NaN.

    Args:
      losses: floating-point array of per-example losses.
      threshold: the threshold ``θ >= 0``, a number or a (possibly traced)
        scalar, or per-example thresholds that broadcast to ``losses`` (e.g.
        :func:`class_levels`).
      sigma: the scale ``σ > 0``, a number or a (possibly traced) scalar. A
        traced ``σ <= 0`` gives NaN (value and gradient). Default 1.0, the
        reference's.
      eta: the coefficient ``η >= 0`` of ``θ`` in the value, a number or a
        (possibly traced) scalar. Default 1.0, the reference's.
      where: optional boolean mask broadcastable to ``losses``.
      weights: optional non-negative weights broadcastable to ``losses``.
      axis_name: optional name of a mapped axis to take the mean over.

    Returns:
      A scalar of the dtype of ``losses``.

    Raises:
      TypeError: ``losses`` is not floating point, ``where`` is not boolean,
        a hyperparameter is a callable (a schedule) or not a real number.
      ValueError: ``sigma`` or ``eta`` is not a scalar, or concretely
        ``sigma <= 0``, ``eta < 0`` or either is NaN or infinite; bad
        ``threshold``, ``where``, ``weights`` or ``axis_name`` as in
        :func:`iflooded`.

    Examples:
      >>> import jax, jax.numpy as jnp, floodax
      >>> losses = jnp.array([0.9, 0.1, 0.3, 0.7])
      >>> print(f"{floodax.softad(losses, threshold=0.3):.4f}")
      0.3658
      >>> grad = jax.grad(floodax.softad)(losses, 0.3)  # σ·ρ'((ℓ − θ)/σ)/n
      >>> print(grad.round(4))  # descent above θ, ascent below, 0 at θ
      [ 0.1286 -0.0490  0.      0.0928]
      >>> small = jax.grad(floodax.softad)(losses, 0.3, sigma=1e-3) / 1e-3
      >>> print(small.round(4))  # σ → 0: iFlood's sign(ℓ − θ)/n
      [ 0.25 -0.25  0.    0.25]

    References:
      Holland and Nakatani, "Soft ascent-descent as a stable and flexible
      alternative to flooding", NeurIPS 2024.
    """
    for name, value in (("sigma", sigma), ("eta", eta)):
        reject_schedule(name, value)
    check_scalar_hyperparam("sigma", sigma, positive=True)
    check_scalar_hyperparam("eta", eta)

    def term(valid: jax.Array) -> jax.Array:
        dtype = jnp.promote_types(valid.dtype, jnp.float32)
        theta = jnp.asarray(threshold, dtype)
        scale = jnp.asarray(sigma, dtype)
        # A traced σ <= 0 would give |σ|'s value (ρ is even) or 0/0: make it
        # NaN, so neither the value nor the gradient is silently a number.
        scale = jnp.where(scale > 0, scale, jnp.nan)
        gap = valid - theta  # in θ's dtype, at least float32, by promotion
        # σ²ρ(x/σ) = x·x/(√(1 + (x/σ)²) + 1); x/(…) is bounded by σ, so the
        # product overflows no sooner than the loss itself.
        soft = gap * (gap / (jnp.hypot(1.0, gap / scale) + 1.0))
        soft = jnp.where(jnp.isinf(gap), jnp.inf, soft)  # ∞·(∞/∞) is NaN
        return jnp.asarray(eta, dtype) * theta + soft

    return mean_over_examples(
        "floodax.softad",
        losses,
        ("threshold", threshold),
        term,
        where=where,
        weights=weights,
        axis_name=axis_name,
    )
