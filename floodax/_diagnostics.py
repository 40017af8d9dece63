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
from floodax._validation import (
    check_float_leaves,
    check_int,
    check_real,
    loss_output_fix,
)

WHICH = ("largest", "smallest")


def _check_params(params: Any, who: str) -> Any:
    """``params`` with every leaf an array, checked to be floating point.

    The diagnostics move or differentiate every leaf, so an integer or
    boolean leaf (a step counter, a mask) cannot be one of them.
    """
    params = jax.tree.map(jnp.asarray, params)
    check_float_leaves(
        "`params`",
        params,
        who,
        ". Keep integer state out of the parameters: pass it in `*args` (the "
        "batch) or close over it in `loss_fn`",
    )
    return params


def _scalar_loss(loss_fn: Callable[..., Any], params: Any, args: tuple) -> Callable:
    """``loss_fn`` of the parameters alone, checked to return a float scalar."""
    out = jax.eval_shape(loss_fn, params, *args)
    fix = loss_output_fix(out, "pass `lambda p, *a: loss_fn(p, *a)[0]`")
    if fix is not None:
        raise ValueError(
            "`loss_fn` must return a scalar floating-point loss, got "
            f"{getattr(out, 'shape', type(out).__name__)} "
            f"{getattr(out, 'dtype', '')}{fix}."
        )
    return lambda p: loss_fn(p, *args)


class HessianEigenvalues(NamedTuple):
    """What :func:`hessian_eigenvalues` returns.

    Attributes:
      eigenvalues: ``(k,)``, the ``k`` extreme Ritz values, the most extreme
        first (descending for ``"largest"``, ascending for ``"smallest"``).
      eigenvectors: a pytree like ``params`` whose leaves have a leading axis
        ``k`` (orthonormal Ritz vectors), or ``None`` unless requested.
      residuals: ``(k,)``, ``r_i = ‖H·u_i − λ_i·u_i‖`` for each pair,
        computed with one more Hessian-vector product each. The interval
        ``[λ_i − r_i, λ_i + r_i]`` contains an eigenvalue of ``H``, but not
        necessarily the ``i``-th: see :func:`hessian_eigenvalues` for what
        is guaranteed.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> loss_fn = lambda w: 2.0 * w[0] ** 2 - 0.5 * w[1] ** 2
      >>> top = floodax.hessian_eigenvalues(loss_fn, jnp.ones(2))
      >>> print(top.eigenvalues, top.residuals < 1e-5)
      [4.] [ True]
    """

    eigenvalues: jax.Array
    eigenvectors: chex.ArrayTree | None
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
    block_size: int | None = None,
) -> HessianEigenvalues:
    r"""The ``k`` extreme eigenvalues of the Hessian, by block Lanczos iteration.

    Builds an orthonormal basis ``V`` (``m = num_iterations`` vectors) of the
    block Krylov space ``span{V₀, HV₀, H²V₀, …}`` of ``b = block_size``
    random start vectors ``V₀``, one Hessian-vector product per vector
    (never forming ``H``), with full reorthogonalisation (classical
    Gram-Schmidt, twice) against every earlier vector, and returns the
    extreme eigenvalues ``λ_i`` of ``T = VᵀHV`` (the Ritz values), every
    entry of ``T`` taken from the products as computed. The largest is the
    usual sharpness; ``which="smallest"`` finds negative curvature, a saddle
    point's escape direction. When a product ``H·v`` lies in the span of the
    basis (an invariant subspace: Gram-Schmidt against the ``m`` vectors
    leaves no more than its own rounding, ``m·eps·‖H·v‖``, a test that does
    not grow with the number of parameters, so neither a model of millions
    of parameters nor a spectrum on an offset, such as weight decay's, is
    taken for one), the space is continued from a fresh random
    vector orthogonal to ``V``. The iteration runs in at least float32 (the
    Hessian-vector products in the parameters' own dtypes).

    What is guaranteed, up to rounding (Parlett, 1998):

    * each interval ``[λ_i − r_i, λ_i + r_i]``, with ``r_i`` the returned
      ``residuals``, contains an eigenvalue of ``H`` (not necessarily the
      ``i``-th: it can be one further in), and ``k`` distinct eigenvalues
      (counted with multiplicity) lie within ``(Σ_j r_j²)^½`` of the ``k``
      Ritz values (Kahan's theorem);
    * the Ritz values never overshoot: the ``i``-th largest Ritz value is at
      most the ``i``-th largest eigenvalue (``"smallest"``: at least the
      ``i``-th smallest), by Cauchy's interlacing theorem;
    * where ``δ``, the distance from ``λ_i`` to every eigenvalue but the
      nearest one ``λ``, is known, ``|λ_i − λ| ≤ r_i²/δ`` (the gap theorem);
    * with ``num_iterations`` equal to the number of parameters ``n``, ``V``
      spans the whole space and the values are those of ``H`` to within
      about ``n·eps·‖H‖``.

    Not guaranteed: that no eigenvalue beyond ``λ_1`` was missed (nor, for
    ``i > 1``, that the ``i``-th one was found rather than a smaller one).
    That depends on the random start having a component along its
    eigenvector, true with probability one, but the component can be small
    and make convergence slow. A single start vector (``block_size=1``)
    sees a multiple eigenvalue once: its Krylov space holds one vector of
    each eigenspace (only rounding, or a restart after a breakdown, brings
    in another, late or never), so ``[10, 10, 9, …]`` gives ``10, 9`` with
    small residuals. A block of ``b`` start vectors resolves multiplicities
    up to ``b``, and a cluster of up to ``b`` eigenvalues converges at a
    rate set by its gap to the rest of the spectrum, not by the gaps inside
    it (Golub and Underwood, 1977); the default ``b = k`` finds, once
    converged, the ``k`` extreme eigenvalues counted with multiplicity.
    When the residuals are not small against the gaps you care about,
    increase ``num_iterations``.

    Pure and jit-compatible (``k``, ``which``, ``num_iterations``,
    ``block_size`` and ``return_eigenvectors`` are static). Costs
    ``num_iterations + k`` Hessian-vector products and ``num_iterations``
    vectors of the parameters' size.

    Args:
      loss_fn: scalar loss, ``loss_fn(params, *args)``.
      params: the point θ, a pytree of floating arrays.
      *args: the batch, passed on to ``loss_fn``.
      k: how many eigenvalues, ``1 <= k <= n`` for ``n`` parameters.
      which: ``"largest"`` or ``"smallest"`` (algebraically).
      num_iterations: the dimension ``m`` of the Krylov space, one
        Hessian-vector product each, ``max(k, b) <= m <= n``; by default
        ``min(n, max(2k, 20·b) + k)`` (about 20 block steps).
      return_eigenvectors: also return the Ritz vectors as pytrees.
      key: PRNG key of the start vectors (default ``jax.random.key(0)``).
      block_size: ``b``, the number of start vectors, ``1 <= b <= n``; by
        default ``k``.

    Returns:
      A :class:`HessianEigenvalues`.

    Raises:
      ValueError: ``k`` or ``block_size`` larger than the number of
        parameters, a bad ``which`` or ``num_iterations``, a loss that is
        not a float scalar.
      TypeError: a leaf of ``params`` that is not floating point.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> loss_fn = lambda w: w[0] ** 2 + 3 * w[0] * w[1] - w[1] ** 2  # a saddle
      >>> out = floodax.hessian_eigenvalues(loss_fn, jnp.zeros(2), k=2,
      ...                                   which="smallest")
      >>> print(out.eigenvalues.round(4))  # ±√13: the Hessian [[2, 3], [3, -2]]
      [-3.6056  3.6056]

      A double top eigenvalue: one start vector spans an invariant subspace
      of three vectors that holds one of its eigenvectors, with zero
      residuals; the default block of ``k = 2`` finds both:

      >>> scales = jnp.array([10.0, 10.0, 9.0, 1.0, 1.0, 1.0])
      >>> loss_fn = lambda w: 0.5 * jnp.sum(scales * w**2)
      >>> one = floodax.hessian_eigenvalues(loss_fn, jnp.ones(6), k=2,
      ...                                   num_iterations=3, block_size=1)
      >>> print(one.eigenvalues.round(4), one.residuals < 1e-4)
      [10.  9.] [ True  True]
      >>> two = floodax.hessian_eigenvalues(loss_fn, jnp.ones(6), k=2,
      ...                                   num_iterations=5)
      >>> print(two.eigenvalues.round(4), two.residuals < 1e-4)
      [10. 10.] [ True  True]

    References:
      Lanczos, "An Iteration Method for the Solution of the Eigenvalue Problem
      of Linear Differential and Integral Operators", J. Res. Nat. Bur.
      Standards, 1950.
      Golub and Underwood, "The Block Lanczos Method for Computing
      Eigenvalues", Mathematical Software III, 1977.
      Parlett, "The Symmetric Eigenvalue Problem", SIAM, 1998 (Chapters 10
      and 11: interlacing, residual and gap bounds, Kahan's theorem).
      Ghorbani, Krishnan and Xiao, "An Investigation into Neural Net
      Optimization via Hessian Eigenvalue Density", ICML 2019.
    """
    params = _check_params(params, "floodax.hessian_eigenvalues")
    value_fn = _scalar_loss(loss_fn, params, args)
    flat, unravel = ravel_pytree(params)
    n = flat.size
    check_int("k", k, minimum=1)
    if k > n:
        raise ValueError(
            f"`k` ({k}) must be at most the number of parameters ({n}): the "
            f"Hessian has only {n} eigenvalues."
        )
    if which not in WHICH:
        raise ValueError(f"`which` must be one of {WHICH}, got {which!r}.")
    b = k if block_size is None else block_size
    check_int("block_size", b, minimum=1)
    if b > n:
        raise ValueError(
            f"`block_size` ({b}) must be at most the number of parameters ({n})."
        )
    if num_iterations is None:
        m = min(n, max(2 * k, 20 * b) + k)
    else:
        m = num_iterations
        check_int(
            "num_iterations",
            m,
            minimum=max(k, b),
            fix=f" (at least `k` ({k}) and `block_size` ({b}))",
        )
    if m > n:
        raise ValueError(
            f"`num_iterations` ({m}) must be at most the number of parameters ({n})."
        )
    key = jax.random.key(0) if key is None else key
    dtype = accumulation_dtype(params)
    eps = jnp.finfo(dtype).eps

    def matvec(v: jax.Array) -> jax.Array:
        tangent = unravel(v.astype(flat.dtype))
        product = hessian_vector_product(value_fn, params, tangent)
        return ravel_pytree(product)[0].astype(dtype)

    def orthogonalise(w: jax.Array, basis: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Classical Gram-Schmidt twice ("twice is enough", Kahan/Parlett);
        # the coefficients are those of w on each basis vector.
        coefficients = jnp.zeros(basis.shape[0], dtype)
        for _ in range(2):
            c = basis @ w
            w = w - basis.T @ c
            coefficients = coefficients + c
        return w, coefficients

    def fresh(w: jax.Array, basis: jax.Array) -> jax.Array:
        w, _ = orthogonalise(w, basis)
        return w / jnp.linalg.norm(w)

    start_key, restart_key = jax.random.split(key)
    basis = jnp.zeros((m, n), dtype)
    for i, w in enumerate(jax.random.normal(start_key, (b, n), dtype)):
        basis = basis.at[i].set(fresh(w, basis))

    def body(j, carry):
        basis, projected = carry
        w = matvec(basis[j])
        # Rows j+b.. are still zero: w is orthogonalised against v_0 … v_{j+b-1},
        # and coefficients[i] = v_iᵀ·H·v_j for every i <= j.
        w_norm = jnp.linalg.norm(w)
        w, coefficients = orthogonalise(w, basis)
        norm = jnp.linalg.norm(w)
        # H·v_j lies in the span of the basis (an invariant subspace) when
        # Gram-Schmidt against m vectors leaves no more than its own rounding
        # error, about m·eps·‖H·v_j‖; then a fresh random direction continues
        # the space. (n·eps would grow with the model: from n = 1/eps every
        # step would count as a breakdown, and an offset spectrum, whose
        # residuals are small next to ‖H·v‖, would too.)
        broke = norm <= m * eps * w_norm
        nxt = jnp.where(
            broke,
            fresh(
                jax.random.normal(jax.random.fold_in(restart_key, j), (n,), dtype),
                basis,
            ),
            w / jnp.where(broke, 1.0, norm),
        )
        # The vectors past the m-th are not needed: drop them.
        basis = basis.at[j + b].set(nxt, mode="drop")
        return basis, projected.at[:, j].set(coefficients)

    basis, projected = jax.lax.fori_loop(0, m, body, (basis, jnp.zeros((m, m), dtype)))
    # T = VᵀHV from its upper triangle, each entry v_iᵀ(H·v_j) as computed.
    ritz, vectors = jnp.linalg.eigh(jnp.triu(projected) + jnp.triu(projected, 1).T)
    order = jnp.arange(m - 1, m - 1 - k, -1) if which == "largest" else jnp.arange(k)
    values = ritz[order]
    ritz_vectors = (basis.T @ vectors[:, order]).T  # (k, n)
    residuals = jnp.linalg.norm(
        jax.lax.map(matvec, ritz_vectors) - values[:, None] * ritz_vectors, axis=1
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

    Raises:
      ValueError: a loss that is not a float scalar.
      TypeError: a leaf of ``params`` that is not floating point.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> print(floodax.grad_norm(lambda w, x: jnp.sum(w * x), jnp.ones(2),
      ...                         jnp.array([3.0, 4.0])))
      5.0
    """
    params = _check_params(params, "floodax.grad_norm")
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
    directions: chex.ArrayTree


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
      TypeError: a leaf of ``params`` that is not floating point.

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
    params = _check_params(params, "floodax.loss_landscape")
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
