"""Sharpness, gradient norm and loss landscape: flooding's mechanism, measured.

Flooding is said to drift into flat regions with small gradients (Ishida et
al., 2020, Section 5). These diagnostics let a user check that on their own
model, from Hessian-vector products alone: no Hessian is materialised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from floodax._penalty import accumulation_dtype, hessian_vector_product, squared_norm
from floodax._validation import check_int, check_real

WHICH = ("largest", "smallest")


def _scalar_loss(loss_fn: Callable[..., Any], params: Any, args: tuple) -> Callable:
    """``loss_fn`` of the parameters alone, checked to return a float scalar."""
    out = jax.eval_shape(loss_fn, params, *args)
    if (
        not hasattr(out, "shape")
        or out.shape != ()
        or not jnp.issubdtype(out.dtype, jnp.floating)
    ):
        raise ValueError(
            "`loss_fn` must return a scalar floating-point loss, got "
            f"{getattr(out, 'shape', type(out).__name__)} "
            f"{getattr(out, 'dtype', '')}; reduce the per-example losses "
            "(e.g. with .mean())."
        )
    return lambda p: loss_fn(p, *args)


class HessianEigenvalues(NamedTuple):
    """What :func:`hessian_eigenvalues` returns.

    Attributes:
      eigenvalues: ``(k,)``, the ``k`` extreme eigenvalues, the most extreme
        first (descending for ``"largest"``, ascending for ``"smallest"``).
      eigenvectors: a pytree like ``params`` whose leaves have a leading axis
        ``k`` (unit vectors), or ``None`` unless requested.
      residuals: ``(k,)``, ``‖H·v − λ·v‖`` for each pair: how well the Ritz
        pair has converged (0 for an exact eigenpair).

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> loss_fn = lambda w: 2.0 * w[0] ** 2 - 0.5 * w[1] ** 2
      >>> top = floodax.hessian_eigenvalues(loss_fn, jnp.ones(2))
      >>> print(top.eigenvalues, top.residuals < 1e-5)
      [4.] [ True]
    """

    eigenvalues: jax.Array
    eigenvectors: Any
    residuals: jax.Array


def hessian_eigenvalues(
    loss_fn: Callable[..., Any],
    params: chex.ArrayTree,
    *args: Any,
    k: int = 1,
    which: str = "largest",
    num_iterations: int | None = None,
    return_eigenvectors: bool = False,
    key: jax.Array | None = None,
) -> HessianEigenvalues:
    r"""The ``k`` extreme eigenvalues of the Hessian, by Lanczos iteration.

    Builds an orthonormal basis ``V`` of the Krylov space
    ``span{v, Hv, H²v, …}`` from Hessian-vector products (never forming
    ``H``), with full reorthogonalisation against every earlier vector, and
    returns the extreme eigenvalues of the tridiagonal ``T = VᵀHV`` (the Ritz
    values): the largest is the usual sharpness, ``which="smallest"`` finds
    negative curvature, a saddle point's escape direction. Extreme
    eigenvalues converge first; with ``num_iterations`` equal to the number
    of parameters the result is exact up to rounding. An invariant subspace
    found early (a breakdown: a residual below ``100·eps`` relative to the
    largest Ritz value or off-diagonal so far, so that a spectrum at any
    scale is treated alike) is continued from a fresh random vector
    orthogonal to ``V``. The iteration runs in at least float32 (the
    Hessian-vector products in the parameters' own dtypes). With the default
    ``num_iterations`` the ``k``-th value of a dense spectrum can still be
    off: the returned ``residuals`` ``‖H·u − λ·u‖`` say how far, and more
    iterations bring them down.

    Pure and jit-compatible (``k``, ``which``, ``num_iterations`` and
    ``return_eigenvectors`` are static). Costs ``num_iterations``
    Hessian-vector products and ``num_iterations + 1`` vectors of the
    parameters' size.

    Args:
      loss_fn: scalar loss, ``loss_fn(params, *args)``.
      params: the point θ, a pytree of floating arrays.
      *args: the batch, passed on to ``loss_fn``.
      k: how many eigenvalues, ``1 <= k <= n`` for ``n`` parameters.
      which: ``"largest"`` or ``"smallest"`` (algebraically).
      num_iterations: Lanczos steps ``m``, ``k <= m <= n``; by default
        ``min(n, max(2k, 20) + k)``.
      return_eigenvectors: also return the Ritz vectors as pytrees.
      key: PRNG key of the starting vector (default ``jax.random.key(0)``).

    Returns:
      A :class:`HessianEigenvalues`.

    Raises:
      ValueError: ``k`` larger than the number of parameters, a bad
        ``which`` or ``num_iterations``, a loss that is not a float scalar.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> loss_fn = lambda w: w[0] ** 2 + 3 * w[0] * w[1] - w[1] ** 2  # a saddle
      >>> out = floodax.hessian_eigenvalues(loss_fn, jnp.zeros(2), k=2,
      ...                                   which="smallest")
      >>> print(out.eigenvalues.round(4))  # ±√13: the Hessian [[2, 3], [3, -2]]
      [-3.6056  3.6056]

    References:
      Lanczos, "An Iteration Method for the Solution of the Eigenvalue Problem
      of Linear Differential and Integral Operators", J. Res. Nat. Bur.
      Standards, 1950.
      Ghorbani, Krishnan and Xiao, "An Investigation into Neural Net
      Optimization via Hessian Eigenvalue Density", ICML 2019.
    """
    value_fn = _scalar_loss(loss_fn, params, args)
    flat, unravel = ravel_pytree(params)
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise ValueError(f"`params` must be floating point, got {flat.dtype}.")
    n = flat.size
    check_int("k", k, minimum=1)
    if k > n:
        raise ValueError(
            f"`k` ({k}) must be at most the number of parameters ({n}): the "
            f"Hessian has only {n} eigenvalues."
        )
    if which not in WHICH:
        raise ValueError(f"`which` must be one of {WHICH}, got {which!r}.")
    m = min(n, max(2 * k, 20) + k) if num_iterations is None else num_iterations
    check_int("num_iterations", m, minimum=k)
    if m > n:
        raise ValueError(
            f"`num_iterations` ({m}) must be at most the number of parameters ({n})."
        )
    key = jax.random.key(0) if key is None else key
    dtype = accumulation_dtype(params)

    def matvec(v: jax.Array) -> jax.Array:
        tangent = unravel(v.astype(flat.dtype))
        product = hessian_vector_product(value_fn, params, tangent)
        return ravel_pytree(product)[0].astype(dtype)

    def orthogonalise(w: jax.Array, basis: jax.Array) -> jax.Array:
        # Twice, as Kahan's "twice is enough" for classical Gram-Schmidt.
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        return w

    def fresh(key: jax.Array, basis: jax.Array) -> jax.Array:
        w = orthogonalise(jax.random.normal(key, (n,), dtype), basis)
        return w / jnp.linalg.norm(w)

    keys = jax.random.split(key, m + 1)
    basis = jnp.zeros((m + 1, n), dtype)
    basis = basis.at[0].set(fresh(keys[0], basis))

    def body(j, carry):
        basis, alphas, betas = carry
        v = basis[j]
        w = matvec(v)
        alpha = v @ w
        # Rows j+1.. are still zero, so this subtracts the projections on
        # v_0 … v_j only.
        w = orthogonalise(w, basis)
        beta = jnp.linalg.norm(w)
        # ‖T‖ estimated from the tridiagonal so far: relative, so that a
        # Hessian scaled by 1e-7 breaks down exactly where the unscaled does.
        scale = jnp.max(jnp.abs(jnp.concatenate([alphas, betas, alpha[None]])))
        broke = beta <= 100 * jnp.finfo(dtype).eps * scale
        nxt = jnp.where(
            broke, fresh(keys[j + 1], basis), w / jnp.where(broke, 1.0, beta)
        )
        beta = jnp.where(broke, 0.0, beta)
        return basis.at[j + 1].set(nxt), alphas.at[j].set(alpha), betas.at[j].set(beta)

    basis, alphas, betas = jax.lax.fori_loop(
        0, m, body, (basis, jnp.zeros(m, dtype), jnp.zeros(m, dtype))
    )
    tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    ritz, vectors = jnp.linalg.eigh(tridiagonal)
    order = jnp.arange(m - 1, m - 1 - k, -1) if which == "largest" else jnp.arange(k)
    values = ritz[order]
    ritz_vectors = (basis[:m].T @ vectors[:, order]).T  # (k, n)
    residuals = jnp.stack(
        [
            jnp.linalg.norm(matvec(u) - lam * u)
            for u, lam in zip(ritz_vectors, values, strict=True)
        ]
    )
    eigenvectors = jax.vmap(unravel)(ritz_vectors) if return_eigenvectors else None
    return HessianEigenvalues(values, eigenvectors, residuals)


def grad_norm(
    loss_fn: Callable[..., Any], params: chex.ArrayTree, *args: Any
) -> jax.Array:
    r"""``‖∇L(θ)‖``, the global L2 norm of the gradient over the whole pytree.

    Accumulated in at least float32 (a float16 sum of squares overflows past
    a norm of 256); jit-compatible.

    Args:
      loss_fn: scalar loss, ``loss_fn(params, *args)``.
      params: the point θ.
      *args: the batch.

    Returns:
      A scalar of at least float32.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> print(floodax.grad_norm(lambda w, x: jnp.sum(w * x), jnp.ones(2),
      ...                         jnp.array([3.0, 4.0])))
      5.0
    """
    value_fn = _scalar_loss(loss_fn, params, args)
    return jnp.sqrt(squared_norm(jax.grad(value_fn)(params)))


class LossLandscape(NamedTuple):
    """What :func:`loss_landscape` returns.

    Attributes:
      alphas: ``(num_points,)`` coordinates along the first direction.
      betas: the same along the second, or ``None`` for one direction.
      losses: ``(num_points,)``, or ``(num_points, num_points)`` indexed
        ``[i, j]`` for ``(alphas[i], betas[j])``.
      directions: the filter-normalised direction(s), pytrees like
        ``params`` (a tuple of two for a 2-D landscape).

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> land = floodax.loss_landscape(lambda p: jnp.sum(p["w"] ** 2),
      ...                               {"w": jnp.ones((2, 3))}, num_points=3)
      >>> print(land.alphas, land.losses[1])  # the origin is the loss at θ
      [-1.  0.  1.] 6.0
    """

    alphas: jax.Array
    betas: jax.Array | None
    losses: jax.Array
    directions: Any


def filter_normalized_direction(key: jax.Array, params: chex.ArrayTree) -> Any:
    """A Gaussian direction rescaled filter by filter to the parameters' norms.

    For every leaf with two or more axes, each filter (a slice along the last
    axis: an output unit of a Flax ``Dense`` kernel ``(in, out)`` or a channel
    of a ``Conv`` kernel ``(…, in, out)``) of the random direction is scaled
    to the norm of the same filter of ``params``: ``d_f ← d_f·‖θ_f‖/(‖d_f‖ +
    1e-10)``. Leaves with fewer axes (biases, batch-norm scales) get a zero
    direction. This is ``create_random_direction(..., ignore='biasbn',
    norm='filter')`` of tomgoldstein/loss-landscape (``net_plotter.py``), with
    PyTorch's filter axis (the first) moved to Flax's (the last).

    Examples:
      >>> import jax, jax.numpy as jnp, floodax
      >>> params = {"kernel": jnp.array([[3.0, 0.0], [4.0, 1.0]]), "bias": jnp.ones(2)}
      >>> d = floodax.filter_normalized_direction(jax.random.key(0), params)
      >>> print(jnp.linalg.norm(d["kernel"], axis=0).round(4), d["bias"])
      [5. 1.] [0. 0.]
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, leaf in zip(keys, leaves, strict=True):
        if leaf.ndim < 2:
            out.append(jnp.zeros_like(leaf))
            continue
        d = jax.random.normal(k, leaf.shape, leaf.dtype)
        axes = tuple(range(leaf.ndim - 1))
        d_norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
        w_norm = jnp.sqrt(jnp.sum(jnp.square(leaf), axis=axes, keepdims=True))
        out.append(d * w_norm / (d_norm + 1e-10))
    return jax.tree.unflatten(treedef, out)


def loss_landscape(
    loss_fn: Callable[..., Any],
    params: chex.ArrayTree,
    *args: Any,
    directions: int = 1,
    radius: float = 1.0,
    num_points: int = 51,
    key: jax.Array | None = None,
    batch_size: int = 64,
) -> LossLandscape:
    r"""The loss along one or two random filter-normalised directions.

    .. math::

      f(\alpha) = L(\theta + \alpha d_1), \qquad
      f(\alpha, \beta) = L(\theta + \alpha d_1 + \beta d_2)

    on a grid of ``num_points`` per direction over ``[−radius, radius]``
    (Li et al.'s default: ``[−1, 1]``, 51 points). The directions are
    Gaussian, rescaled filter by filter to the norms of the parameters
    (:func:`filter_normalized_direction`), so landscapes of networks of
    different scales are comparable: a flatter curve is a flatter minimum in
    the sense of Li et al. The grid is evaluated with ``jax.vmap`` in chunks
    of ``batch_size`` points (each point holds one copy of the parameters).

    Args:
      loss_fn: scalar loss, ``loss_fn(params, *args)``; it must not update
        state (evaluate batch norm in inference mode).
      params: the point θ (the grid's origin).
      *args: the batch.
      directions: 1 or 2.
      radius: half-width of the grid, ``> 0``.
      num_points: points per direction, ``>= 2``; an odd number puts the
        origin on the grid.
      key: PRNG key of the directions (default ``jax.random.key(0)``).
      batch_size: grid points evaluated at once.

    Returns:
      A :class:`LossLandscape`.

    Raises:
      ValueError: ``directions`` not 1 or 2, a non-positive ``radius``, too
        few points, a loss that is not a float scalar.

    Examples:
      >>> import jax, jax.numpy as jnp, floodax
      >>> loss_fn = lambda p, x: jnp.mean((x @ p["w"]) ** 2)
      >>> params = {"w": jnp.ones((3, 2))}
      >>> land = floodax.loss_landscape(loss_fn, params, jnp.eye(3),
      ...                               directions=2, num_points=5)
      >>> at_origin = float(loss_fn(params, jnp.eye(3)))
      >>> print(land.losses.shape, bool(jnp.isclose(land.losses[2, 2], at_origin)))
      (5, 5) True

    References:
      Li, Xu, Taylor, Studer and Goldstein, "Visualizing the Loss Landscape
      of Neural Nets", NeurIPS 2018.
    """
    value_fn = _scalar_loss(loss_fn, params, args)
    if directions not in (1, 2) or isinstance(directions, bool):
        raise ValueError(f"`directions` must be 1 or 2, got {directions!r}.")
    check_real("radius", radius, low=0.0, low_open=True)
    check_int("num_points", num_points, minimum=2)
    check_int("batch_size", batch_size, minimum=1)
    key = jax.random.key(0) if key is None else key
    keys = jax.random.split(key, directions)
    dirs = tuple(filter_normalized_direction(k, params) for k in keys)
    # The grid in at least float32 whatever the leaves (a bfloat16 grid is
    # not even uniform), symmetric, with the origin exactly on it for an odd
    # num_points; each leaf is moved in its own dtype.
    dtype = accumulation_dtype(params)
    steps = 2 * jnp.arange(num_points, dtype=dtype) - (num_points - 1)
    grid = radius * (steps / (num_points - 1))
    if directions == 1:
        coefficients = grid[:, None]
    else:
        a, b = jnp.meshgrid(grid, grid, indexing="ij")
        coefficients = jnp.stack([a.ravel(), b.ravel()], axis=1)

    def loss_at(c: jax.Array) -> jax.Array:
        moved = jax.tree.map(
            lambda p, *ds: (
                p + sum(ci.astype(p.dtype) * d for ci, d in zip(c, ds, strict=True))
            ),
            params,
            *dirs,
        )
        return value_fn(moved)

    losses = jax.lax.map(loss_at, coefficients, batch_size=batch_size)
    if directions == 2:
        losses = losses.reshape(num_points, num_points)
    return LossLandscape(
        alphas=grid,
        betas=None if directions == 1 else grid,
        losses=losses,
        directions=dirs[0] if directions == 1 else dirs,
    )
