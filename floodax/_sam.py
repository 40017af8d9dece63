"""SAM, ASAM and GSAM: the gradient at the worst nearby point, as optax
transformations that take the loss function as ``value_fn``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from floodax import _schedules as schedules
from floodax._penalty import (
    accumulation_dtype,
    check_value_fn_call,
    perturbed_gradient,
    resolve_mask,
    safe_norm,
    squared_norm,
)
from floodax._validation import check_scalar_hyperparam, check_value_fn_depends


class SAMState(NamedTuple):
    """State of :func:`floodax.sam` and :func:`floodax.gsam`.

    Attributes:
      count: int32 scalar, the number of ``update`` calls so far; a
        ``radius`` schedule is evaluated at it.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> tx = floodax.sam(0.05)
      >>> print(tx.init(jnp.zeros(2)).count)
      0
    """

    count: jax.Array


def _check_hyperparams(**values: Any) -> None:
    for name, value in values.items():
        check_scalar_hyperparam(name, value)


def _check_adaptive(adaptive: Any) -> None:
    """``adaptive`` is a bool, or a pytree of Python booleans (checked against
    the parameters at ``update``) or a callable returning one."""
    if isinstance(adaptive, np.ndarray | jax.Array):
        raise TypeError(
            "`adaptive` must be True, False, a pytree of Python booleans with "
            "the parameters' structure, or a callable returning one; got an "
            f"array of shape {np.shape(adaptive)}. It selects leaves "
            "statically, as a mask in `optax.masked` does."
        )


def _adaptive_flags(adaptive: Any, params: optax.Params) -> list[bool]:
    """One Python bool per parameter leaf: does it get ASAM's ``T``?"""
    if isinstance(adaptive, bool | np.bool_):
        return [bool(adaptive)] * len(jax.tree.leaves(params))
    return jax.tree.leaves(resolve_mask(adaptive, params, "adaptive"))


def _start(
    value_fn: Any,
    params: Any,
    updates: Any,
    name: str,
    radius: Any,
    state: SAMState,
) -> tuple[jax.Array, Any]:
    """What every SAM-form ``update`` does first: check the call, and return
    the radius at ``state.count`` and the dtype the step is formed in."""
    check_value_fn_call(
        value_fn,
        params,
        updates,
        name,
        f"Leave {name} outside the masked transformation; it must come first "
        "in the chain, where the updates are the gradient of `value_fn`.",
    )
    check_value_fn_depends(value_fn, params, name)
    # A traced radius below 0 (a schedule that undershoots) would step
    # downhill: NaN instead, as a concrete one is refused.
    rho = jnp.asarray(schedules.evaluate("radius", radius, state.count))
    return jnp.where(rho >= 0, rho, jnp.nan), accumulation_dtype(updates)


def _inverse(norm: jax.Array, eps: Any) -> jax.Array:
    """``1/(‖v‖ + eps)``, and 0 where that is 0 (``v = 0``, ``eps = 0``)."""
    denominator = norm + jnp.asarray(eps, norm.dtype)
    positive = denominator > 0
    return jnp.where(positive, 1 / jnp.where(positive, denominator, 1), 0)


def _nan_unless_finite(squared: jax.Array, tree: optax.Updates) -> optax.Updates:
    """``tree``, or NaN everywhere when the gradient's norm is not finite:
    a NaN gradient must not become the direction of a fresh gradient."""
    finite = jnp.isfinite(squared)
    return jax.tree.map(lambda x: jnp.where(finite, x, jnp.nan), tree)


def _cast_like(tree: optax.Updates, like: optax.Updates) -> optax.Updates:
    return jax.tree.map(lambda x, u: x.astype(u.dtype), tree, like)


def sam(
    radius: chex.Numeric | Callable[[jax.Array], chex.Numeric],
    *,
    adaptive: bool | Any = False,
    eta: chex.Numeric = 0.01,
    eps: chex.Numeric = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""SAM's gradient ``∇L(θ + ε)`` at the worst point of a ball; ASAM's with
    ``adaptive=True``.

    Turns the incoming gradient ``g = ∇L(θ)`` into the gradient at the
    perturbed point, given the loss function of the parameters as
    ``value_fn`` (as :func:`floodax.add_grad_norm_penalty` does). It must
    come first in a chain, where the updates are still the raw gradient of
    ``value_fn``; any optimizer follows it. Nothing checks this: the
    incoming updates only set the direction of ``ε``, so a clip, a weight
    decay or an optimizer before it is silently dropped, and inside
    ``optax.MultiSteps`` it would see the mean gradient but the last
    micro-batch's ``value_fn``. Accumulate with :func:`floodax.multi_steps`
    (``value_fn_is_large_batch=True``), or put ``sam`` before the
    accumulation. A traced ``radius`` below 0 gives NaN (a concrete one is
    refused). The perturbed point is rounded to the parameters' dtype: in
    bfloat16, components of ``ε`` below half a unit in the last place of
    ``θ`` (about ``|θ|·2⁻⁹``) vanish, so a small ``ρ`` over many parameters
    can leave ``θ + ε = θ`` and the update is then ``g`` itself.

    .. math::

      \text{SAM:}\quad \varepsilon = \rho\,\frac{g}{\|g\| + \text{eps}},
      \qquad
      \text{ASAM:}\quad \varepsilon = \rho\,\frac{T^2 g}{\|T g\| + \text{eps}},
      \quad T = |\theta| + \eta \ \text{(elementwise)}

    and the output is ``∇L(θ + ε)``: one extra gradient. The norm is global
    over the whole pytree. ``sam(ρ)`` gives the same update as
    ``add_grad_norm_penalty(ρ, power=1, method="finite_difference",
    radius=ρ)`` (GNP with ``α = 1``) to rounding; both call one function
    for the perturbed gradient.

    **Where it follows its references, and where it departs.** SAM matches
    google-research/sam (``sam_jax/training_utils/flax_training.py``,
    ``dual_vector``: no ``eps``) and the perturbed gradient of
    ``optax.contrib.sam`` (``normalize()``: no ``eps``) with the default
    ``eps=0``. ASAM matches SamsungLabs/ASAM (``asam.py``, ``ASAM.ascent_step``)
    with ``eps=1e-16``, where the reference adds ``1e-16`` to the norm; and
    that reference applies ``T`` only to parameters whose name contains
    ``"weight"`` (biases keep ``T = 1``): pass ``adaptive`` as a pytree of
    booleans (or a callable of the parameters returning one) to choose the
    leaves that get ``T``, e.g. every leaf but the biases. ``eta`` is added
    to ``|θ|`` on every selected leaf, as in the reference.

    A zero gradient gives ``ε = 0`` and returns ``g`` (no NaN, whatever
    ``eps``); a gradient with a NaN or infinite entry gives an update that
    is NaN everywhere (never a fresh gradient at an unmoved point). The
    norms and ``ε`` are formed in at least float32 (float64 stays float64);
    the updates keep their dtypes. ``radius``, ``eta`` and ``eps`` may be
    traced: changing them, or injecting them with
    ``optax.inject_hyperparams``, does not recompile.

    Args:
      radius: ``ρ >= 0``, a number, scalar array or schedule of the update
        count (:class:`SAMState`).
      adaptive: ``False`` (SAM), ``True`` (ASAM on every parameter), or a
        pytree of Python booleans with the parameters' structure, or a
        callable of the parameters returning one (ASAM's ``T`` on the
        selected leaves, ``T = 1`` on the others).
      eta: ASAM's ``η >= 0`` in ``T = |θ| + η``; 0.01 as in the reference.
      eps: ``>= 0``, added to the norm in the denominator: 0 (the default)
        is the paper's formula, ``1e-16`` the ASAM reference's.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`SAMState`, whose ``update`` takes ``params`` and ``value_fn``
      and ignores other extra keyword arguments.

    Raises:
      ValueError: ``radius``, ``eta`` or ``eps`` is not a scalar, or is
        concretely negative, NaN or infinite; ``adaptive`` does not match the
        parameters; an empty parameter tree.
      TypeError: ``update`` is called without ``value_fn`` or ``params``;
        integer parameters; inside ``optax.masked``/``multi_transform``;
        ``adaptive`` is neither a bool nor a tree of them.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, floodax
      >>> loss_fn = lambda w: jnp.sum(w ** 2)   # g = 2w, ∇L(θ + ε) = 2(θ + ε)
      >>> params = jnp.array([3.0, 4.0])
      >>> tx = floodax.sam(0.5)                 # ε = 0.5·(0.6, 0.8)
      >>> g, _ = tx.update(jax.grad(loss_fn)(params), tx.init(params), params,
      ...                  value_fn=loss_fn)
      >>> print(g)
      [6.6 8.8]

      Before any optimizer; ASAM on the kernels only (biases keep ``T = 1``):

      >>> params = {"bias": jnp.zeros(2), "kernel": jnp.ones(2)}
      >>> asam = floodax.sam(
      ...     0.5, adaptive={"bias": False, "kernel": True}, eta=0.01)
      >>> tx = optax.chain(asam, optax.sgd(0.1))
      >>> loss_fn = lambda p: jnp.sum((p["kernel"] - 2.0) ** 2 + p["bias"] ** 2)
      >>> updates, _ = tx.update(jax.grad(loss_fn)(params), tx.init(params),
      ...                        params, value_fn=loss_fn)
      >>> print(updates["kernel"].round(4))  # −0.1·∇L at kernel + ε, ε = −0.357
      [0.2714 0.2714]

    References:
      Foret, Kleiner, Mobahi and Neyshabur, "Sharpness-Aware Minimization for
      Efficiently Improving Generalization", ICLR 2021.
      Kwon, Kim, Park and Choi, "ASAM: Adaptive Sharpness-Aware Minimization
      for Scale-Invariant Learning of Deep Neural Networks", ICML 2021.
    """
    check_scalar_hyperparam("radius", radius)
    _check_hyperparams(eta=eta, eps=eps)
    _check_adaptive(adaptive)
    name = "floodax.sam"

    def update_fn(
        updates: optax.Updates,
        state: SAMState,
        params: optax.Params | None = None,
        *,
        value_fn: Callable[[optax.Params], Any] | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, SAMState]:
        del extra_args
        rho, dtype = _start(value_fn, params, updates, name, radius, state)
        grads = [g.astype(dtype) for g in jax.tree.leaves(updates)]
        # T per leaf, or None for T = 1 (no multiply).
        scales = [
            jnp.abs(p.astype(dtype)) + jnp.asarray(eta, dtype) if flag else None
            for flag, p in zip(
                _adaptive_flags(adaptive, params), jax.tree.leaves(params), strict=True
            )
        ]
        scaled = [g if t is None else t * g for t, g in zip(scales, grads, strict=True)]
        squared = squared_norm(scaled)
        factor = jnp.asarray(rho, dtype) * _inverse(safe_norm(squared)[0], eps)
        step = jax.tree.unflatten(
            jax.tree.structure(updates),
            [
                factor * (tg if t is None else t * tg)
                for t, tg in zip(scales, scaled, strict=True)
            ],
        )
        out = perturbed_gradient(value_fn, params, step, dtype)
        out = _nan_unless_finite(squared, out)
        return _cast_like(out, updates), SAMState(
            count=optax.safe_increment(state.count)
        )

    return optax.GradientTransformationExtraArgs(
        lambda params: SAMState(count=jnp.zeros([], jnp.int32)), update_fn
    )


def gsam(
    radius: chex.Numeric | Callable[[jax.Array], chex.Numeric],
    alpha: chex.Numeric,
    *,
    adaptive_perturbation: bool = False,
    minimize_fp: bool = True,
    eps: chex.Numeric = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""GSAM's gradient: SAM's ``∇L(θ + ε)`` minus ``α`` times the part of
    ``∇L(θ)`` orthogonal to it.

    Turns ``g = ∇L(θ)`` into the surrogate-gap-guided gradient of Zhuang et
    al., given the loss function of the parameters as ``value_fn``; like
    :func:`floodax.sam` it comes first in a chain. With ``g_p = ∇L(θ + ε)``,
    ``ε = ρ·g/(‖g‖ + eps)``:

    .. math::

      \text{minimize\_fp=True:}\quad
      g_p - \alpha\,\Big(g - \langle g, \hat g_p\rangle\,\hat g_p\Big),
      \qquad
      \text{minimize\_fp=False:}\quad
      g + \alpha\,\Big(g_p - \langle g_p, \hat g\rangle\,\hat g\Big)

    with ``ĝ = g/‖g‖``. This matches ``gsam_gradient`` of
    google-research/big_vision (``big_vision/trainers/proj/gsam/gsam.py``)
    to rounding, with its ``eps=1e-12`` passed as ``eps`` (added to ``‖g‖``
    in ``ε`` only, as there), and its ``adaptive_perturbation`` (``ε =
    ρ·|θ|·g/(‖g‖ + eps)``, not ASAM's ``T²g/‖Tg‖``) and ``minimize_fp``
    flags. Where the reference divides by a zero norm (``g_p = 0``, or
    ``g = 0`` with ``minimize_fp=False``) and returns NaN, floodax takes the
    projection to be 0; ``g = 0`` gives ``ε = 0`` and the update 0 (with
    ``minimize_fp=True``, ``g_p = g``). ``α = 0`` is :func:`floodax.sam`.

    **ρ tied to the learning rate.** big_vision sets ``ρ_t = ρ_min + (ρ_max
    − ρ_min)·(lr_t − lr_min)/(lr_max − lr_min)`` from the learning rate
    ``lr_t`` at step ``t``. Here ``radius`` is a schedule of the update count
    (:class:`SAMState`), so pass that line composed with the learning-rate
    schedule: ``radius=lambda t: rho_min + (rho_max − rho_min) *
    (lr(t) − lr_min) / (lr_max − lr_min)`` (``rho_max`` when ``lr_max =
    lr_min``). Like the reference it is not clipped: during a warm-up below
    ``lr_min`` the radius falls below ``rho_min``, and below 0 it gives NaN
    updates; wrap the line in ``jnp.maximum(0.0, ...)`` if the warm-up starts
    there.

    The norms and products are formed in at least float32; the updates keep
    their dtypes; a NaN or infinite gradient gives a NaN update everywhere.
    ``radius``, ``alpha`` and ``eps`` may be traced: changing them, or
    injecting them with ``optax.inject_hyperparams``, does not recompile.

    Args:
      radius: ``ρ >= 0``, a number, scalar array or schedule of the update
        count.
      alpha: ``α >= 0``, the weight of the surrogate-gap correction.
      adaptive_perturbation: big_vision's flag: scale the perturbation by
        ``|θ|`` elementwise.
      minimize_fp: big_vision's flag (default ``True``, the original GSAM):
        descend on the perturbed loss and the surrogate gap; ``False``
        descends on the clean loss and the gap instead.
      eps: ``>= 0``, added to ``‖g‖`` in the perturbation: 0 (the default)
        is the paper's formula, ``1e-12`` big_vision's.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`SAMState`.

    Raises:
      ValueError: ``radius``, ``alpha`` or ``eps`` is not a scalar or is
        concretely negative, NaN or infinite; an empty parameter tree.
      TypeError: ``update`` is called without ``value_fn`` or ``params``;
        integer parameters; ``adaptive_perturbation`` or ``minimize_fp`` is
        not a bool.

    Examples:
      >>> import jax, jax.numpy as jnp, floodax
      >>> loss_fn = lambda w: jnp.sum(w ** 2 * jnp.array([1.0, 4.0]))
      >>> params = jnp.array([1.0, 1.0])
      >>> tx = floodax.gsam(0.1, alpha=0.5)
      >>> g, _ = tx.update(jax.grad(loss_fn)(params), tx.init(params), params,
      ...                  value_fn=loss_fn)
      >>> sam_g, _ = floodax.sam(0.1).update(
      ...     jax.grad(loss_fn)(params), tx.init(params), params, value_fn=loss_fn)
      >>> print(g.round(4), sam_g.round(4))    # g_p − α·(part of g ⟂ g_p)
      [1.9856 8.7908] [2.0485 8.7761]

    References:
      Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan and Liu,
      "Surrogate Gap Minimization Improves Sharpness-Aware Training",
      ICLR 2022.
    """
    check_scalar_hyperparam("radius", radius)
    _check_hyperparams(alpha=alpha, eps=eps)
    for flag_name, flag in (
        ("adaptive_perturbation", adaptive_perturbation),
        ("minimize_fp", minimize_fp),
    ):
        if not isinstance(flag, bool | np.bool_):
            raise TypeError(f"`{flag_name}` must be True or False, got {flag!r}.")
    name = "floodax.gsam"

    def update_fn(
        updates: optax.Updates,
        state: SAMState,
        params: optax.Params | None = None,
        *,
        value_fn: Callable[[optax.Params], Any] | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, SAMState]:
        del extra_args
        rho, dtype = _start(value_fn, params, updates, name, radius, state)
        grads = jax.tree.map(lambda g: g.astype(dtype), updates)
        squared = squared_norm(grads)
        factor = jnp.asarray(rho, dtype) * _inverse(safe_norm(squared)[0], eps)
        step = jax.tree.map(
            lambda g, p: (
                factor * g * jnp.abs(p.astype(dtype))
                if adaptive_perturbation
                else factor * g
            ),
            grads,
            params,
        )
        robust = jax.tree.map(
            lambda x: x.astype(dtype), perturbed_gradient(value_fn, params, step, dtype)
        )
        a = jnp.asarray(alpha, dtype)
        if minimize_fp:
            base, other = robust, grads
            sign = -1
        else:
            base, other = grads, robust
            sign = 1
        # The part of `other` orthogonal to `base`'s direction.
        base_inverse = safe_norm(squared_norm(base))[1]
        along = optax.tree.vdot(other, base) * base_inverse * base_inverse
        out = jax.tree.map(lambda b, o: b + sign * a * (o - along * b), base, other)
        out = _nan_unless_finite(squared, out)
        return _cast_like(out, updates), SAMState(
            count=optax.safe_increment(state.count)
        )

    return optax.GradientTransformationExtraArgs(
        lambda params: SAMState(count=jnp.zeros([], jnp.int32)), update_fn
    )
