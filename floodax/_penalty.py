"""The explicit gradient-norm penalty ``L + λ‖∇L‖²``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from floodax._validation import (
    check_matching_trees,
    check_scalar_hyperparam,
    require_params,
)

_STRENGTH_FIX = (
    "; to schedule it, use `optax.inject_hyperparams(floodax.add_grad_norm_penalty)`"
)


def squared_norm(tree: chex.ArrayTree) -> jax.Array:
    """``‖tree‖²``, the squared global L2 norm over every leaf."""
    return sum(
        (jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)),
        start=jnp.zeros([], optax.tree.dtype(tree, "highest")),
    )


def _check_strength(strength: Any) -> None:
    if callable(strength):
        raise TypeError(
            f"`strength` must be a number or a scalar array{_STRENGTH_FIX}."
        )
    check_scalar_hyperparam("strength", strength)


def grad_norm_penalty(
    loss_fn: Callable[..., Any],
    strength: chex.Numeric,
    *,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
) -> Callable[..., Any]:
    r"""Adds the squared gradient norm to a loss function: ``L + λ‖∇L‖²``.

    .. math::

      \tilde L(\theta) = L(\theta) + \lambda \|\nabla_\theta L(\theta)\|_2^2,
      \qquad
      \nabla \tilde L = \nabla L + 2 \lambda\, H \nabla L

    where the norm is global over the whole pytree at ``argnums``. The
    returned function has the signature of ``loss_fn``; ``jax.grad`` of it is
    double backpropagation, under ``jit`` and ``vmap`` alike. For the same
    gradient without differentiating through a gradient, use the optax form
    :func:`add_grad_norm_penalty`.

    Args:
      loss_fn: a scalar loss function, ``loss_fn(params, *args, **kwargs)``.
      strength: ``λ >= 0``, a number or a (possibly traced) scalar array.
      argnums: which positional argument(s) the gradient is taken with
        respect to, as in ``jax.grad``.
      has_aux: ``loss_fn`` returns ``(loss, aux)``; the penalised function
        then returns ``(loss + λ‖∇L‖², aux)``.

    Returns:
      The penalised loss function.

    Raises:
      ValueError: ``strength`` is not a scalar or is concretely negative,
        NaN or infinite.
      TypeError: ``strength`` is a callable.

    Examples:
      >>> import jax, jax.numpy as jnp, floodax
      >>> loss_fn = lambda w: jnp.sum(w ** 3)        # ∇L = 3w², ‖∇L‖² = 9·Σw⁴
      >>> penalised = floodax.grad_norm_penalty(loss_fn, strength=0.1)
      >>> print(penalised(jnp.array([1.0, 2.0])))    # 9 + 0.1·9·17
      24.3
      >>> print(jax.grad(penalised)(jnp.array([1.0, 2.0])).round(4))  # 3w² + 0.1·36·w³
      [ 6.6 40.8]

    References:
      Drucker and Le Cun, "Improving Generalization Performance Using Double
      Backpropagation", IEEE Transactions on Neural Networks, 1992.
      Barrett and Dherin, "Implicit Gradient Regularization", ICLR 2021.
    """
    _check_strength(strength)
    value_and_grad = jax.value_and_grad(loss_fn, argnums=argnums, has_aux=has_aux)

    def penalised(*args: Any, **kwargs: Any) -> Any:
        value, grads = value_and_grad(*args, **kwargs)
        loss, aux = value if has_aux else (value, None)
        loss = loss + jnp.asarray(strength, jnp.result_type(loss)) * squared_norm(
            grads
        ).astype(jnp.result_type(loss))
        return (loss, aux) if has_aux else loss

    return penalised


def _default_radius(params: optax.Params) -> float:
    """``sqrt(eps)`` of the least precise parameter dtype: the forward
    difference's step that balances truncation and rounding error."""
    eps = max(float(jnp.finfo(leaf.dtype).eps) for leaf in jax.tree.leaves(params))
    return float(np.sqrt(eps))


def add_grad_norm_penalty(
    strength: chex.Numeric,
    *,
    method: str = "exact",
    radius: chex.Numeric | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The gradient of ``L + λ‖∇L‖²`` from the gradient of ``L``: ``g + 2λ·H·g``.

    Turns the incoming gradient ``g = ∇L(θ)`` into the gradient of the
    penalised loss, given the loss function of the parameters as
    ``value_fn`` (optax's name for it). It must come first in a chain, where
    the updates are still the raw gradient of ``value_fn``.

    * ``method="exact"``: ``H·g`` as a forward-over-reverse Hessian-vector
      product, ``jax.jvp`` of ``jax.grad(value_fn)`` along ``g``; no Hessian
      is materialised. Costs about one more gradient plus its tangent.
    * ``method="finite_difference"``: one extra gradient at the perturbed
      point ``θ + r·g/‖g‖`` (Zhao et al., 2022):
      ``H·g ≈ ‖g‖·(∇L(θ + r·g/‖g‖) − g)/r``, with error ``O(r)``.
      A zero gradient gives ``g`` back unchanged, without NaN.

    Args:
      strength: ``λ >= 0``, a number or a (possibly traced) scalar array;
        schedule it with ``optax.inject_hyperparams``.
      method: ``"exact"`` or ``"finite_difference"``.
      radius: the finite difference's ``r > 0``. By default ``sqrt(eps)`` of
        the least precise parameter dtype (``3.5e-4`` for float32, ``0.088``
        for bfloat16, ``1.5e-8`` for float64), the step that balances
        truncation and rounding error. Only for ``"finite_difference"``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
      ``params`` and ``value_fn`` and ignores other extra keyword arguments.

    Raises:
      ValueError: bad ``strength``, ``method`` or ``radius``.
      TypeError: ``update`` is called without ``value_fn`` or ``params``.

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

    References:
      Zhao, Zhang and Hu, "Penalizing Gradient Norm for Efficiently Improving
      Generalization in Deep Learning", ICML 2022.
      Drucker and Le Cun, "Improving Generalization Performance Using Double
      Backpropagation", IEEE Transactions on Neural Networks, 1992.
    """
    _check_strength(strength)
    if method not in ("exact", "finite_difference"):
        raise ValueError(
            f"`method` must be 'exact' or 'finite_difference', got {method!r}."
        )
    if radius is not None:
        if method != "finite_difference":
            raise ValueError(
                "`radius` is the finite difference's step; it has no effect with "
                "method='exact'. Drop it, or pass method='finite_difference'."
            )
        check_scalar_hyperparam("radius", radius, positive=True)

    def hessian_vector_product(
        value_fn: Callable[[optax.Params], Any],
        params: optax.Params,
        grads: optax.Updates,
    ) -> optax.Updates:
        if method == "exact":
            tangent = optax.tree.cast_like(grads, params)
            return jax.jvp(jax.grad(value_fn), (params,), (tangent,))[1]
        r = _default_radius(params) if radius is None else radius
        norm = jnp.sqrt(squared_norm(grads))
        safe_norm = jnp.where(norm > 0, norm, jnp.ones_like(norm))
        direction = jax.tree.map(lambda g: g / safe_norm.astype(g.dtype), grads)
        shifted = jax.tree.map(
            lambda p, d: p + (jnp.asarray(r, p.dtype) * d).astype(p.dtype),
            params,
            direction,
        )
        scale = norm / jnp.asarray(r, norm.dtype)
        return jax.tree.map(
            lambda gs, g: (gs - g) * scale.astype(g.dtype),
            jax.grad(value_fn)(shifted),
            grads,
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
        if value_fn is None:
            raise TypeError(
                "floodax.add_grad_norm_penalty needs the loss function of the "
                "parameters: call `tx.update(grads, state, params, "
                "value_fn=lambda p: loss_fn(p, batch))`."
            )
        require_params(params, "floodax.add_grad_norm_penalty")
        check_matching_trees(updates, params, "floodax.add_grad_norm_penalty")
        hvp = hessian_vector_product(value_fn, params, updates)
        new_updates = jax.tree.map(
            lambda g, hg: g + 2 * jnp.asarray(strength, g.dtype) * hg.astype(g.dtype),
            updates,
            hvp,
        )
        return new_updates, state

    return optax.GradientTransformationExtraArgs(
        lambda params: optax.EmptyState(), update_fn
    )
