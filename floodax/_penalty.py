"""The explicit gradient-norm penalty ``L + λ‖∇L‖²`` and GNP's ``L + λ‖∇L‖``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from floodax._validation import (
    check_float_leaves,
    check_matching_trees,
    check_scalar_hyperparam,
    check_value_fn_depends,
    check_value_fn_params,
    highest_dtype,
    is_traced,
    require_params,
)

_STRENGTH_FIX = (
    "; to schedule it, use `optax.inject_hyperparams(floodax.add_grad_norm_penalty)`"
)
POWERS = (1, 2)
HVP_ROUTES = (
    "auto",
    "reverse_over_forward",
    "forward_over_reverse",
    "reverse_over_reverse",
)


def resolve_hvp_route(route: str, params: Any) -> str:
    """The route ``"auto"`` stands for: forward-over-reverse when a leaf has
    three or more axes (a convolution kernel), reverse-over-forward
    otherwise; any other route is returned as is. Decided from static shapes,
    so it costs nothing under ``jit``."""
    if route != "auto":
        return route
    if any(jnp.ndim(leaf) >= 3 for leaf in jax.tree.leaves(params)):
        return "forward_over_reverse"
    return "reverse_over_forward"


def accumulation_dtype(tree: chex.ArrayTree) -> Any:
    """The dtype norms of ``tree`` are accumulated in: at least float32.

    A float16 sum of squares overflows once the norm passes 256; float64
    trees keep float64.
    """
    return jnp.promote_types(highest_dtype(tree), jnp.float32)


def squared_norm(tree: chex.ArrayTree) -> jax.Array:
    """``‖tree‖²``, the squared global L2 norm over every leaf, accumulated
    in at least float32 (see :func:`accumulation_dtype`)."""
    dtype = accumulation_dtype(tree)
    return sum(
        (
            jnp.sum(jnp.square(jnp.asarray(leaf, dtype)))
            for leaf in jax.tree.leaves(tree)
        ),
        start=jnp.zeros([], dtype),
    )


def safe_norm(squared: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(‖v‖, 1/‖v‖)`` from ``‖v‖²``, both 0 where ``‖v‖ = 0``.

    The double ``where`` keeps every derivative finite at 0 (the derivative
    of ``sqrt`` at 0 is infinite, and ``0·inf`` is NaN), so a meta-gradient
    through a transformation at a zero gradient is finite, as its value is.
    """
    positive = squared > 0
    safe = jnp.where(positive, squared, jnp.ones_like(squared))
    zero = jnp.zeros_like(squared)
    return (
        jnp.where(positive, jnp.sqrt(safe), zero),
        jnp.where(positive, jax.lax.rsqrt(safe), zero),
    )


def _check_strength(strength: Any) -> None:
    if callable(strength):
        raise TypeError(
            f"`strength` must be a number or a scalar array{_STRENGTH_FIX}."
        )
    check_scalar_hyperparam("strength", strength)


def _check_power(power: Any) -> None:
    """``power`` is 1 or 2; a traced integer (``optax.inject_hyperparams``
    makes every numeric argument an array) is checked where it is used."""
    message = (
        f"`power` must be 1 (GNP's λ‖∇L‖) or 2 (λ‖∇L‖², the default), got {power!r}."
    )
    if is_traced(power):
        if np.shape(power) != () or not jnp.issubdtype(power.dtype, jnp.integer):
            raise ValueError(message)
        return
    # An integer scalar, as an array too; bool, float, str and object arrays
    # are refused here (int() of 2.7 would silently be 2).
    array = np.asarray(power)
    if array.shape != () or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(message)
    if int(array) not in POWERS:
        raise ValueError(message)


def _norm_term(power: Any, squared: jax.Array, norm: jax.Array) -> jax.Array:
    """``‖v‖²`` for power 2, ``‖v‖`` for power 1, NaN for a traced power that
    is neither (a broken value is never silently one of the two)."""
    return jnp.where(power == 2, squared, jnp.where(power == 1, norm, jnp.nan))


def grad_norm_penalty(
    loss_fn: Callable[..., Any],
    strength: chex.Numeric,
    *,
    power: int = 2,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
) -> Callable[..., Any]:
    r"""Adds the gradient norm to a loss function: ``L + λ‖∇L‖²`` (or ``‖∇L‖``).

    .. math::

      \tilde L(\theta) &= L(\theta) + \lambda \|\nabla_\theta L(\theta)\|_2^p

      \nabla \tilde L &= \nabla L + 2 \lambda\, H \nabla L \quad (p = 2)

      \nabla \tilde L &= \nabla L + \lambda\, H \frac{\nabla L}{\|\nabla L\|}
      \quad (p = 1)

    where the norm is global over the whole pytree at ``argnums``. The
    returned function has the signature of ``loss_fn``; ``jax.grad`` of it is
    double backpropagation, under ``jit`` and ``vmap`` alike. For the same
    gradient without differentiating through a gradient, use the optax form
    :func:`add_grad_norm_penalty`.

    The norm is accumulated in at least float32, so a float16 model with a
    gradient norm in the thousands gets a finite penalty; the result has the
    loss's dtype. With ``power=1`` the gradient at ``∇L = 0`` is taken as
    ``∇L`` (the norm's subgradient 0), finite like every higher derivative.

    Args:
      loss_fn: a scalar loss function, ``loss_fn(params, *args, **kwargs)``.
      strength: ``λ >= 0``, a number or a (possibly traced) scalar array.
      power: 2 (the default) penalises ``‖∇L‖²``; 1 penalises ``‖∇L‖``, the
        form of Zhao et al.'s gradient-norm penalty (GNP).
      argnums: which positional argument(s) the gradient is taken with
        respect to, as in ``jax.grad``.
      has_aux: ``loss_fn`` returns ``(loss, aux)``; the penalised function
        then returns ``(loss + λ‖∇L‖^p, aux)``.

    Returns:
      The penalised loss function.

    Raises:
      ValueError: ``strength`` is not a scalar or is concretely negative,
        NaN or infinite; ``power`` is not 1 or 2 (a traced ``power`` is
        refused unless it is an integer scalar; one that is neither 1 nor 2
        gives a NaN loss).
      TypeError: ``strength`` is a callable or not a real number.

    Examples:
      >>> import jax, jax.numpy as jnp, floodax
      >>> loss_fn = lambda w: jnp.sum(w ** 3)        # ∇L = 3w², ‖∇L‖² = 9·Σw⁴
      >>> penalised = floodax.grad_norm_penalty(loss_fn, strength=0.1)
      >>> print(penalised(jnp.array([1.0, 2.0])))    # 9 + 0.1·9·17
      24.3
      >>> print(jax.grad(penalised)(jnp.array([1.0, 2.0])).round(4))  # 3w² + 0.1·36·w³
      [ 6.6 40.8]
      >>> gnp = floodax.grad_norm_penalty(loss_fn, strength=0.1, power=1)
      >>> print(gnp(jnp.array([0.0, 1.0])))          # 1 + 0.1·‖(0, 3)‖
      1.3

    References:
      Drucker and Le Cun, "Improving Generalization Performance Using Double
      Backpropagation", IEEE Transactions on Neural Networks, 1992.
      Barrett and Dherin, "Implicit Gradient Regularization", ICLR 2021.
      Zhao, Zhang and Hu, "Penalizing Gradient Norm for Efficiently Improving
      Generalization in Deep Learning", ICML 2022.
    """
    _check_strength(strength)
    _check_power(power)
    value_and_grad = jax.value_and_grad(loss_fn, argnums=argnums, has_aux=has_aux)

    positions = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def penalised(*args: Any, **kwargs: Any) -> Any:
        for position in positions:
            if -len(args) <= position < len(args):
                check_float_leaves(
                    f"the argument at argnums={position}",
                    args[position],
                    "floodax.grad_norm_penalty",
                    ". Keep integer state out of the differentiated argument "
                    "(pass it in another one), or convert a weight with "
                    "`.astype(jnp.float32)`",
                )
        value, grads = value_and_grad(*args, **kwargs)
        loss, aux = value if has_aux else (value, None)
        squared = squared_norm(grads)
        norm_term = _norm_term(power, squared, safe_norm(squared)[0])
        # The sum is formed in the wider of the loss's dtype and the norm's
        # (at least float32), then rounded once to the loss's dtype: a
        # float16 loss gains a float32 sum, a float64 loss keeps its digits.
        # Strength 0 gives the loss itself, also where the norm overflowed
        # (0·inf is NaN).
        lam = jnp.asarray(strength, squared.dtype)
        total = jnp.where(lam == 0, loss, loss + lam * norm_term)
        total = total.astype(jnp.result_type(loss))
        return (total, aux) if has_aux else total

    return penalised


def _default_radius(params: optax.Params) -> float:
    """``sqrt(eps)`` of the least precise parameter dtype: the forward
    difference's step that balances truncation and rounding error."""
    eps = max(float(jnp.finfo(leaf.dtype).eps) for leaf in jax.tree.leaves(params))
    return float(np.sqrt(eps))


def hessian_vector_product(
    value_fn: Callable[[optax.Params], Any],
    params: optax.Params,
    vector: optax.Updates,
    route: str = "auto",
) -> optax.Updates:
    """``H·v`` for the Hessian ``H`` of ``value_fn`` at ``params``, without
    materialising ``H``; ``route`` picks how JAX composes the two derivatives.

    * ``"reverse_over_forward"``: ``jax.grad`` of ``jax.jvp(value_fn)``
      along ``v``;
    * ``"forward_over_reverse"``: ``jax.jvp`` of ``jax.grad(value_fn)``;
    * ``"reverse_over_reverse"``: ``jax.grad`` of ``⟨∇value_fn, v⟩``
      (double backpropagation);
    * ``"auto"`` (the default): ``"forward_over_reverse"`` when a leaf of
      ``params`` has three or more axes (a convolution kernel),
      ``"reverse_over_forward"`` otherwise; the rule follows what
      ``benchmarks/bench_step.py`` measured (the fastest route or close to it
      on each of its MLPs and its CNN).

    All are exact and agree to rounding; they differ in speed and memory by
    model (``benchmarks/bench_step.py``).
    """
    route = resolve_hvp_route(route, params)
    vector = optax.tree.cast_like(vector, params)
    if route == "forward_over_reverse":
        return jax.jvp(jax.grad(value_fn), (params,), (vector,))[1]
    if route == "reverse_over_forward":
        return jax.grad(lambda p: jax.jvp(value_fn, (p,), (vector,))[1])(params)
    return jax.grad(lambda p: optax.tree.vdot(jax.grad(value_fn)(p), vector))(params)


def perturbed_gradient(
    value_fn: Callable[[optax.Params], Any],
    params: optax.Params,
    step: optax.Updates,
    dtype: Any,
) -> optax.Updates:
    """``∇value_fn(θ + ε)`` for ``θ = params`` and ``ε = step``: the one
    extra gradient of SAM, ASAM, GSAM and the finite-difference penalty.

    ``θ + ε`` is formed in ``dtype`` (at least float32, see
    :func:`accumulation_dtype`) and rounded once to each parameter's dtype,
    so a bfloat16 model is evaluated at bfloat16 parameters.
    """
    shifted = jax.tree.map(
        lambda p, e: (p.astype(dtype) + e).astype(p.dtype), params, step
    )
    return jax.grad(value_fn)(shifted)


def resolve_mask(mask: Any, params: optax.Params, name: str = "mask") -> Any:
    """The tree of Python booleans ``mask`` (the argument ``name``) stands
    for, checked against params."""
    tree = mask(params) if callable(mask) else mask
    try:
        flags = jax.tree.structure(params).flatten_up_to(tree)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be a pytree of booleans with the structure of the "
            f"parameters (or a callable returning one): {error}"
        ) from None
    for flag in flags:
        if not isinstance(flag, bool | np.bool_):
            raise TypeError(
                f"`{name}` must hold Python booleans, one per parameter leaf, got "
                f"{type(flag).__name__}; it selects leaves statically, as in "
                "`optax.masked`."
            )
    return jax.tree.unflatten(jax.tree.structure(params), [bool(f) for f in flags])


def check_value_fn_call(
    value_fn: Any, params: Any, updates: Any, name: str, masked_fix: str
) -> None:
    """The checks of an ``update`` that evaluates ``value_fn`` at moved
    parameters: ``value_fn`` and ``params`` given, not inside
    ``optax.masked`` (``masked_fix`` says what to do instead), and updates
    shaped like the parameters."""
    if value_fn is None:
        raise TypeError(
            f"{name} needs the loss function of the parameters: call "
            "`tx.update(grads, state, params, "
            "value_fn=lambda p: loss_fn(p, batch))`."
        )
    require_params(params, name)
    check_value_fn_params(params, name, masked_fix)
    check_matching_trees(updates, params, name)


def add_grad_norm_penalty(
    strength: chex.Numeric,
    *,
    power: int = 2,
    method: str = "exact",
    radius: chex.Numeric | None = None,
    mask: Any = None,
    hvp: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    r"""The gradient of ``L + λ‖∇L‖²`` (or GNP's ``L + λ‖∇L‖``) from ``g = ∇L``.

    Turns the incoming gradient ``g = ∇L(θ)`` into the gradient of the
    penalised loss, given the loss function of the parameters as
    ``value_fn`` (optax's name for it). It must come first in a chain, where
    the updates are still the raw gradient of ``value_fn``.

    .. math::

      p = 2:\ g + 2\lambda\, H g, \qquad
      p = 1:\ g + \lambda\, H \frac{g}{\|g\|}

    * ``method="exact"``: ``H·g`` from a Hessian-vector product (route
      ``hvp``, see :func:`hessian_vector_product`); no Hessian is
      materialised. Costs about two more gradients.
    * ``method="finite_difference"``: one extra gradient at the perturbed
      point ``θ + r·ĝ``, ``ĝ = g/‖g‖``, using
      ``H·ĝ ≈ (∇L(θ + r·ĝ) − g)/r``. For ``power=1`` this is exactly the
      update of Zhao et al.'s GNP, ``(1 − α)·g + α·∇L(θ + r·ĝ)``, with
      ``α = λ/r``; with ``λ = r = ρ`` (``α = 1``) it is SAM's
      ``∇L(θ + ρ·ĝ)``, the update of ``floodax.sam(ρ)`` to rounding
      (both evaluate the perturbed gradient through one function). For
      ``power=2`` the difference is scaled by ``2λ‖g‖``.

    **What the finite difference computes.** On a smooth loss it estimates
    the exact ``H·ĝ`` with an error ``O(r)`` plus rounding ``O(eps/r)``,
    smallest near the default radius ``sqrt(eps)`` (measured on a 4 × 500
    tanh MLP: 3e-4 relative in float32 at ``r = 1e-4``). A ReLU network's loss
    is piecewise quadratic: every unit whose pre-activation changes sign
    between ``θ`` and ``θ + r·ĝ`` adds a jump of the gradient, and the
    difference then measures the average curvature over the segment, not
    the Hessian at ``θ``. On the paper's 4 × 500 ReLU MLP (batch 100, float32)
    no unit changes sign up to ``r = 1e-5`` (error 5e-3), but at ``1e-4``
    eleven do and the error is 1,600 %; in float64 at its default
    ``1.5e-8`` the error is 1e-7 (benchmarks/fd_radius.md). Sign changes
    grow with width, batch and ``r``, so no radius is safe on ReLU networks
    in general: use ``method="exact"`` there for the penalty's gradient. The
    average over a neighbourhood of radius ``r`` is what GNP and SAM intend,
    with ``r`` around 0.01–0.1: pass ``radius`` explicitly for that reading.
    The default stays ``sqrt(eps)``, the optimum on smooth losses.

    A zero gradient gives ``g`` back unchanged, and ``strength=0`` gives
    exactly the incoming gradient even where the Hessian-vector product
    overflows. Norms are accumulated in at least float32 and the
    difference is formed there too, so float16 and bfloat16 models with
    large gradients stay finite; the updates keep their dtypes.

    Args:
      strength: ``λ >= 0``, a number or a (possibly traced) scalar array;
        schedule it with ``optax.inject_hyperparams``.
      power: 2 (the default) for ``λ‖∇L‖²``, 1 for GNP's ``λ‖∇L‖``.
      method: ``"exact"`` or ``"finite_difference"``.
      radius: the finite difference's ``r > 0``. By default ``sqrt(eps)``
        of the least precise perturbed parameter dtype (``3.5e-4`` for
        float32, ``0.088`` for bfloat16, ``1.5e-8`` for float64), the step
        that balances truncation and rounding error on a smooth loss. Only
        for ``"finite_difference"``.
      mask: penalise only some parameters: a pytree of Python booleans with
        the parameters' structure, or a callable of the parameters returning
        one (as in ``optax.masked``). The penalty is then
        ``λ‖(∇L)_S‖^p`` over the selected leaves ``S``, and the output is its
        exact gradient with respect to *all* parameters. ``optax.masked`` and
        ``optax.multi_transform`` cannot wrap this transformation (a masked
        transformation never sees the full parameters that ``value_fn``
        needs); use ``mask`` instead.
      hvp: the Hessian-vector-product route for ``method="exact"``:
        ``"auto"`` (the default), ``"reverse_over_forward"``,
        ``"forward_over_reverse"`` or ``"reverse_over_reverse"``
        (:func:`hessian_vector_product`). ``"auto"`` takes
        forward-over-reverse when a parameter has three or more axes (a
        convolution kernel) and reverse-over-forward otherwise: on a 2-core
        CPU (benchmarks/bench_step.py) reverse-over-forward was within 6 %
        of the cheapest route on MLPs of width 128 to 2048, where
        forward-over-reverse ran up to 1.44× slower, and on a small CNN
        forward-over-reverse was the cheapest while reverse-over-forward
        was 20 % behind; the default was within 7 % of the cheapest on
        every one of them.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
      ``params`` and ``value_fn`` and ignores other extra keyword arguments.

    Raises:
      ValueError: bad ``strength``, ``power``, ``method``, ``radius``,
        ``hvp`` or ``mask``; an empty parameter tree.
      TypeError: ``update`` is called without ``value_fn`` or ``params``;
        integer parameters; inside ``optax.masked``/``multi_transform``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, floodax
      >>> loss_fn = lambda w: jnp.sum(w ** 3)   # g = 3w², H·g = 6w·3w²
      >>> params = jnp.array([1.0, 2.0])
      >>> penalty = floodax.add_grad_norm_penalty(0.1)
      >>> g, _ = penalty.update(jax.grad(loss_fn)(params), penalty.init(params),
      ...                       params, value_fn=loss_fn)
      >>> print(g.round(4))                     # 3w² + 0.2·18w³
      [ 6.6 40.8]

      First in a chain, with a loss function that closes over the batch:

      >>> tx = optax.chain(floodax.add_grad_norm_penalty(0.1), optax.sgd(0.01))
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jax.grad(loss_fn)(params), state, params,
      ...                            value_fn=loss_fn)
      >>> print((params + updates).tolist())    # θ − 0.01·(g + 2λHg)
      [0.934, 1.592]

      GNP with its ``α = 0.8``, ``r = 0.05``, and SAM with ``ρ = 0.05``:

      >>> gnp = floodax.add_grad_norm_penalty(
      ...     0.8 * 0.05, power=1, method="finite_difference", radius=0.05)
      >>> sam = floodax.add_grad_norm_penalty(
      ...     0.05, power=1, method="finite_difference", radius=0.05)

    References:
      Zhao, Zhang and Hu, "Penalizing Gradient Norm for Efficiently Improving
      Generalization in Deep Learning", ICML 2022.
      Foret, Kleiner, Mobahi and Neyshabur, "Sharpness-Aware Minimization for
      Efficiently Improving Generalization", ICLR 2021.
      Drucker and Le Cun, "Improving Generalization Performance Using Double
      Backpropagation", IEEE Transactions on Neural Networks, 1992.
    """
    _check_strength(strength)
    _check_power(power)
    if method not in ("exact", "finite_difference"):
        raise ValueError(
            f"`method` must be 'exact' or 'finite_difference', got {method!r}."
        )
    if hvp not in HVP_ROUTES:
        raise ValueError(f"`hvp` must be one of {HVP_ROUTES}, got {hvp!r}.")
    if radius is not None:
        if method != "finite_difference":
            raise ValueError(
                "`radius` is the finite difference's step; it has no effect with "
                "method='exact'. Drop it, or pass method='finite_difference'."
            )
        check_scalar_hyperparam("radius", radius, positive=True)
    name = "floodax.add_grad_norm_penalty"

    def penalty_term(
        value_fn: Callable[[optax.Params], Any],
        params: optax.Params,
        grads: optax.Updates,
        flags: Any,
        dtype: Any,
    ) -> optax.Updates:
        """``2λ‖v‖·H·v̂`` (power 2) or ``λ·H·v̂`` (power 1), in ``dtype``, for
        ``v`` the selected part of ``g``.

        Both methods work on the unit direction ``v̂``: a float16 product
        ``H·g`` overflows long before ``H·v̂`` does when ``‖g‖`` is large,
        and the scale ``‖v‖`` is applied in ``dtype`` (at least float32).
        """
        tangent = jax.tree.map(
            lambda keep, g: g.astype(dtype) if keep else jnp.zeros(g.shape, dtype),
            flags,
            grads,
        )
        norm, inverse = safe_norm(squared_norm(tangent))
        lam = jnp.asarray(strength, dtype)
        positive_norm = norm > 0
        positive = positive_norm.astype(dtype)
        if method == "exact":
            # The squared form 2λ·H·v is linear in v. Normalising by a
            # constant c (no derivative; 1 at v = 0) keeps H·(c·v) in range
            # and 2λ/c·H·(c·v) = 2λ·H·v with the right derivative, also at
            # v = 0; the norm form λ·H·v̂ has a kink there, like |x|.
            constant = jax.lax.stop_gradient(jnp.where(positive_norm, inverse, 1))
            normaliser = jnp.where(power == 2, constant, inverse)
            scale = lam * _norm_term(power, 2 / constant, positive)
            direction = jax.tree.map(lambda v: v * normaliser, tangent)
            h_direction = hessian_vector_product(value_fn, params, direction, hvp)
            return jax.tree.map(lambda h: h.astype(dtype) * scale, h_direction)
        # The scale on H·v̂ is the derivative of λ‖v‖^p along v̂.

        def at_zero_frozen(x: Any) -> Any:
            """``x``, with no derivative where ``v = 0``."""
            return jnp.where(positive_norm, x, jax.lax.stop_gradient(x))

        # At v = 0 the squared form steps along v itself (normaliser 1,
        # scale 2λ) with θ, λ, r and g frozen: the term is 0 in value (g comes
        # back unchanged) and its derivative is 2λ·H·dv, the exact method's.
        # The norm form keeps its kink there (scale 0), like |x| at 0.
        lam = at_zero_frozen(lam)
        scale = lam * _norm_term(power, jnp.where(positive_norm, 2 * norm, 2), positive)
        normaliser = jnp.where(
            power == 2, jnp.where(positive_norm, inverse, 1), inverse
        )
        direction = jax.tree.map(lambda v: v * normaliser, tangent)
        perturbed = [
            p
            for p, keep in zip(
                jax.tree.leaves(params), jax.tree.leaves(flags), strict=True
            )
            if keep
        ]
        r = jnp.asarray(_default_radius(perturbed) if radius is None else radius, dtype)
        r = at_zero_frozen(r)
        # GNP's α = λ/r = 1 makes this floodax.sam's update (the same call).
        at_shifted = perturbed_gradient(
            value_fn,
            jax.tree.map(at_zero_frozen, params),
            jax.tree.map(lambda d: r * d, direction),
            dtype,
        )
        difference = jax.tree.map(
            lambda gs, g: (
                (gs.astype(dtype) - at_zero_frozen(g).astype(dtype)) * (scale / r)
            ),
            at_shifted,
            grads,
        )
        return jax.tree.map(
            lambda d: jnp.where(positive_norm, d, d - jax.lax.stop_gradient(d)),
            difference,
        )

    def update_fn(
        updates: optax.Updates,
        state: optax.EmptyState,
        params: optax.Params | None = None,
        *,
        value_fn: Callable[[optax.Params], Any] | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del extra_args
        check_value_fn_call(
            value_fn,
            params,
            updates,
            name,
            "To penalise only some parameters, pass `mask=` to "
            "`floodax.add_grad_norm_penalty` itself and leave it outside the "
            "masked transformation.",
        )
        flags = (
            jax.tree.map(lambda _: True, params)
            if mask is None
            else resolve_mask(mask, params)
        )
        if not any(jax.tree.leaves(flags)):
            raise ValueError(
                f"{name}: `mask` selects no parameter, so there is no penalty; "
                "select at least one leaf, or drop the transformation."
            )
        check_value_fn_depends(value_fn, params, name)
        dtype = accumulation_dtype(updates)
        term = penalty_term(value_fn, params, updates, flags, dtype)
        off = jnp.asarray(strength) == 0
        new_updates = jax.tree.map(
            # strength 0 returns g itself, even where H·v overflowed.
            lambda g, t: jnp.where(off, g, (g.astype(dtype) + t).astype(g.dtype)),
            updates,
            term,
        )
        return new_updates, state

    return optax.GradientTransformationExtraArgs(
        lambda params: optax.EmptyState(), update_fn
    )
