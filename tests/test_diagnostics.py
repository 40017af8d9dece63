"""Hessian eigenvalues, gradient norm and loss landscape, against references."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import floodax
from tests.helpers import mlp_loss

pytestmark = pytest.mark.usefixtures("x64")


def _dense_spectrum(loss_fn, params):
    flat, unravel = ravel_pytree(params)
    hessian = jax.hessian(lambda v: loss_fn(unravel(v)))(flat)
    values, vectors = jnp.linalg.eigh(hessian)
    return np.asarray(values), np.asarray(vectors), unravel


def test_extreme_eigenvalues_match_the_dense_hessian(mlp):
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    values, _, _ = _dense_spectrum(loss_fn, params)
    assert values.size == 25
    # For k = 3 the default is all 25 steps: the same program as an explicit
    # num_iterations=25, so that is run once.
    top = floodax.hessian_eigenvalues(mlp_loss, params, x, y, k=3)
    np.testing.assert_allclose(top.eigenvalues, values[::-1][:3], rtol=1e-9)
    assert np.all(top.residuals < 1e-7)
    # 21 Lanczos steps (the default for k = 1) of 25 already pin the extremes.
    for num_iterations in (None, 25):
        bottom = floodax.hessian_eigenvalues(
            mlp_loss, params, x, y, k=1, which="smallest", num_iterations=num_iterations
        )
        np.testing.assert_allclose(
            bottom.eigenvalues, values[:1], rtol=1e-9, atol=1e-12
        )


def test_a_saddle_is_found_with_its_escape_direction():
    # f(u, v, w) = u² − v² + u·w + w²/2 at the origin: a saddle whose
    # Hessian [[2, 0, 1], [0, −2, 0], [1, 0, 1]] has one negative eigenvalue, −2,
    # along v.
    def loss_fn(p):
        u, v, w = p["uv"][0], p["uv"][1], p["w"]
        return u**2 - v**2 + u * w + w**2 / 2

    params = {"uv": jnp.zeros(2), "w": jnp.zeros(())}
    values, vectors, _ = _dense_spectrum(loss_fn, params)
    out = floodax.hessian_eigenvalues(
        loss_fn, params, k=1, which="smallest", return_eigenvectors=True
    )
    np.testing.assert_allclose(out.eigenvalues, [-2.0], rtol=1e-12)
    np.testing.assert_allclose(values[0], -2.0, rtol=1e-12)
    direction = jax.tree.map(lambda leaf: leaf[0], out.eigenvectors)
    flat = ravel_pytree(direction)[0]
    assert abs(float(flat @ vectors[:, 0])) == pytest.approx(1.0, abs=1e-10)
    # Moving along it lowers the loss: the escape direction.
    for t in (0.1, -0.1):
        moved = jax.tree.map(lambda p, d, t=t: p + t * d, params, direction)
        assert float(loss_fn(moved)) < float(loss_fn(params))


def test_eigenvectors_are_unit_pytrees_with_small_residuals(mlp):
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    out = floodax.hessian_eigenvalues(
        loss_fn, params, k=2, return_eigenvectors=True, num_iterations=25
    )
    assert jax.tree.structure(out.eigenvectors) == jax.tree.structure(params)
    for leaf, p in zip(
        jax.tree.leaves(out.eigenvectors), jax.tree.leaves(params), strict=True
    ):
        assert leaf.shape == (2, *p.shape)
    flat_loss_hessian = _dense_spectrum(loss_fn, params)
    flat = jax.vmap(lambda t: ravel_pytree(t)[0])(out.eigenvectors)
    hessian = (
        flat_loss_hessian[1] @ np.diag(flat_loss_hessian[0]) @ flat_loss_hessian[1].T
    )
    for v, lam in zip(flat, out.eigenvalues, strict=True):
        np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-12)
        np.testing.assert_allclose(hessian @ v, lam * v, atol=1e-9)


@pytest.mark.parametrize("block_size", [1, None])
def test_repeated_eigenvalues_survive_a_lanczos_breakdown(block_size):
    # H = diag(5, 5, 5, 1, 1, 1, 1, 1): the Krylov space of one start vector
    # has dimension 2 (of the default blocks of 4 and 5: 7), so the
    # iteration breaks down and must restart to find the multiplicity.
    scales = jnp.array([5.0, 5.0, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    loss_fn = lambda w: 0.5 * jnp.sum(scales * w**2)  # noqa: E731
    out = floodax.hessian_eigenvalues(
        loss_fn, jnp.ones(8), k=4, num_iterations=8, block_size=block_size
    )
    np.testing.assert_allclose(out.eigenvalues, [5.0, 5.0, 5.0, 1.0], rtol=1e-10)
    low = floodax.hessian_eigenvalues(
        loss_fn,
        jnp.ones(8),
        k=5,
        which="smallest",
        num_iterations=8,
        block_size=block_size,
    )
    np.testing.assert_allclose(low.eigenvalues, np.ones(5), rtol=1e-10)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_a_multiple_of_the_identity_breaks_down_at_the_first_step(which):
    # H = c·I: the start vector is already an eigenvector, so the first step
    # breaks down (for c = 0, with w = 0 and a tridiagonal of zeros, exactly
    # on the threshold); every restart must still give c, with orthonormal
    # Ritz vectors. One compiled program serves every c (an argument).
    @jax.jit
    def eigenpairs(c):
        loss_fn = lambda w: 0.5 * c * jnp.sum(w**2) + jnp.sum(w)  # noqa: E731
        return floodax.hessian_eigenvalues(
            loss_fn,
            jnp.ones(6),
            k=3,
            which=which,
            num_iterations=6,
            return_eigenvectors=True,
        )

    for c in (0.0, 2.0, -2.0):
        out = eigenpairs(jnp.float64(c))
        np.testing.assert_allclose(out.eigenvalues, np.full(3, c), atol=1e-12)
        np.testing.assert_allclose(out.residuals, 0.0, atol=1e-12)
        vectors = np.asarray(out.eigenvectors)
        np.testing.assert_allclose(vectors @ vectors.T, np.eye(3), atol=1e-10)


def _clustered_quadratic(n=60):
    # Eigenvalues evenly spaced in [1, 2]: Lanczos converges slowly, so one
    # step more or fewer changes the residuals.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(n, n)))
    a = jnp.asarray((q * np.linspace(1.0, 2.0, n)) @ q.T)
    return lambda w: 0.5 * w @ a @ w, jnp.ones(n)


def test_default_num_iterations_block_size_and_key():
    # Documented: block_size = k, num_iterations = min(n, max(2k, 20·b) + k),
    # key = key(0).
    loss_fn, w = _clustered_quadratic()
    defaults = {}
    for k, m in ((1, 21), (2, 42)):
        default = defaults[k] = floodax.hessian_eigenvalues(loss_fn, w, k=k).residuals
        explicit = floodax.hessian_eigenvalues(
            loss_fn, w, k=k, num_iterations=m, key=jax.random.key(0), block_size=k
        ).residuals
        np.testing.assert_array_equal(default, explicit)
        for other in (m - 1, m + 1):
            residuals = floodax.hessian_eigenvalues(
                loss_fn, w, k=k, num_iterations=other, block_size=k
            ).residuals
            assert not np.array_equal(default, residuals)
    # The block size is used: one start vector differs from the default two.
    single = floodax.hessian_eigenvalues(
        loss_fn, w, k=2, num_iterations=42, block_size=1
    ).residuals
    assert not np.array_equal(default, single)
    other_key = floodax.hessian_eigenvalues(loss_fn, w, key=jax.random.key(1))
    assert not np.array_equal(defaults[1], other_key.residuals)
    # The landscape's directions come from key(0) too.
    params = {"w": jnp.ones((3, 2))}
    square = lambda p: jnp.sum(p["w"] ** 2)  # noqa: E731
    default = floodax.loss_landscape(square, params, num_points=3).directions
    for key, same in ((0, True), (1, False)):
        keyed = floodax.loss_landscape(
            square, params, num_points=3, key=jax.random.key(key)
        ).directions
        assert np.array_equal(default["w"], keyed["w"]) == same


def test_jit_compatible(mlp):
    params, x, y = mlp
    eager = floodax.hessian_eigenvalues(mlp_loss, params, x, y, k=2)
    jitted = jax.jit(
        lambda p, x, y: floodax.hessian_eigenvalues(mlp_loss, p, x, y, k=2)
    )(params, x, y)
    np.testing.assert_allclose(jitted.eigenvalues, eager.eigenvalues, rtol=1e-10)


def test_bad_input():
    loss_fn = lambda w: jnp.sum(w**2)  # noqa: E731
    with pytest.raises(
        ValueError,
        match=r"`k` \(4\) must be at most the number of "
        r"parameters \(3\)",
    ):
        floodax.hessian_eigenvalues(loss_fn, jnp.ones(3), k=4)
    with pytest.raises(ValueError, match="`loss_fn` must return a scalar"):
        floodax.hessian_eigenvalues(lambda w: w**2, jnp.ones(3))
    with pytest.raises(ValueError, match="`loss_fn` must return a scalar"):
        floodax.grad_norm(lambda w: w**2, jnp.ones(3))
    with pytest.raises(ValueError, match="`loss_fn` must return a scalar"):
        floodax.loss_landscape(lambda w: w, jnp.ones(3))
    with pytest.raises(ValueError, match="`which` must be one of"):
        floodax.hessian_eigenvalues(loss_fn, jnp.ones(3), which="top")
    with pytest.raises(ValueError, match="`num_iterations` must be an integer >= 2"):
        floodax.hessian_eigenvalues(loss_fn, jnp.ones(3), k=2, num_iterations=1)
    with pytest.raises(ValueError, match=r"`num_iterations` .* at most the number"):
        floodax.hessian_eigenvalues(loss_fn, jnp.ones(3), num_iterations=4)
    with pytest.raises(ValueError, match="`directions` must be 1 or 2"):
        floodax.loss_landscape(loss_fn, jnp.ones(3), directions=3)
    with pytest.raises(ValueError, match="`radius` must lie in"):
        floodax.loss_landscape(loss_fn, jnp.ones(3), radius=0.0)
    with pytest.raises(ValueError, match="`num_points` must be an integer >= 2"):
        floodax.loss_landscape(loss_fn, jnp.ones(3), num_points=1)
    with pytest.raises(ValueError, match="`k` must be an integer >= 1"):
        floodax.hessian_eigenvalues(loss_fn, jnp.ones(3), k=0)
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        floodax.loss_landscape(loss_fn, jnp.ones(3), batch_size=0)


def test_integer_leaves_and_bad_losses_are_named():
    # An integer leaf once reached jax.grad or jax.random.normal raw.
    params = {"w": jnp.ones((2, 2)), "step": jnp.ones((2, 2), jnp.int32)}
    loss_fn = lambda p: jnp.sum(p["w"] ** 2)  # noqa: E731
    leaf = r"`params` has a leaf of dtype int32 at \['step'\].*pass it in `\*args`"
    for call in (
        lambda: floodax.hessian_eigenvalues(loss_fn, params),
        lambda: floodax.grad_norm(loss_fn, params),
        lambda: floodax.loss_landscape(loss_fn, params),
    ):
        with pytest.raises(TypeError, match=leaf):
            call()
    with pytest.raises(TypeError, match="dtype int32 at the root"):
        floodax.hessian_eigenvalues(lambda w: jnp.sum(w * 1.0), jnp.ones(3, jnp.int32))
    with pytest.raises(TypeError, match="dtype bool at"):
        floodax.loss_landscape(lambda w: jnp.sum(w * 1.0), jnp.ones((3, 2), bool))
    w = jnp.ones(3)
    with pytest.raises(ValueError, match=r"\(loss, aux\)`, pass .*\[0\]"):
        floodax.hessian_eigenvalues(lambda w: (jnp.sum(w**2), {}), w)
    with pytest.raises(ValueError, match=r"got \(\) int\d+; compute the loss in"):
        floodax.grad_norm(lambda w: jnp.sum(w > 0), w)
    with pytest.raises(ValueError, match=r"got \(3,\) float\d+; reduce the per-"):
        floodax.loss_landscape(lambda w: w**2, w)
    with pytest.raises(ValueError, match="`block_size` must be an integer >= 1"):
        floodax.hessian_eigenvalues(loss_fn, params | {"step": w}, block_size=0)
    with pytest.raises(ValueError, match=r"`block_size` \(4\) must be at most"):
        floodax.hessian_eigenvalues(lambda w: jnp.sum(w**2), w, block_size=4)
    with pytest.raises(
        ValueError,
        match=r">= 2, got 1 \(at least `k` \(1\) and `block_size` \(2\)\)",
    ):
        floodax.hessian_eigenvalues(
            lambda w: jnp.sum(w**2), w, num_iterations=1, block_size=2
        )


def test_python_number_leaves_are_arrays():
    # A leaf that is a Python float once raised AttributeError (no .ndim).
    square = lambda p: jnp.sum(jnp.asarray(p["w"]) ** 2) + 3.0 * p["b"] ** 2  # noqa: E731
    params = {"w": jnp.ones((2, 2)), "b": 1.0}
    land = floodax.loss_landscape(square, params, num_points=3)
    np.testing.assert_array_equal(land.directions["b"], 0.0)
    np.testing.assert_allclose(land.losses[1], 7.0)
    top = floodax.hessian_eigenvalues(square, params, num_iterations=5, k=2)
    np.testing.assert_allclose(top.eigenvalues, [6.0, 2.0], rtol=1e-6)


def test_documented_defaults():
    # Eigenvalues only unless asked; a landscape of 51 points.
    loss_fn = lambda w: jnp.sum(w[0] ** 2 + 3.0 * w[1] ** 2)  # noqa: E731
    w = jnp.ones(2, jnp.float32)
    assert floodax.hessian_eigenvalues(loss_fn, w).eigenvectors is None
    with_vectors = floodax.hessian_eigenvalues(loss_fn, w, return_eigenvectors=True)
    assert with_vectors.eigenvectors.shape == (1, 2)
    land = floodax.loss_landscape(loss_fn, w)
    assert land.losses.shape == (51,) and land.betas is None
    # One direction is a pytree like params, not a tuple of one.
    assert jax.tree.structure(land.directions) == jax.tree.structure(w)


def test_grad_norm_is_the_global_norm_and_finite_in_float16(mlp):
    params, x, y = mlp
    expected = jnp.linalg.norm(ravel_pytree(jax.grad(mlp_loss)(params, x, y))[0])
    np.testing.assert_allclose(
        floodax.grad_norm(mlp_loss, params, x, y), expected, rtol=1e-14
    )
    w = jnp.full(16, 30.0, jnp.float16)  # gradient 60 per entry, norm 240·... > 256
    norm = floodax.grad_norm(lambda v: jnp.sum(v.astype(jnp.float32) ** 2) * 10, w)
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(norm, 600.0 * 4.0, rtol=1e-3)


def test_filter_normalised_directions(mlp):
    params, _, _ = mlp
    d = floodax.filter_normalized_direction(jax.random.key(3), params)
    # Kernels: every output unit's column has the parameters' column norm.
    np.testing.assert_allclose(
        jnp.linalg.norm(d["w1"], axis=0),
        jnp.linalg.norm(params["w1"], axis=0),
        rtol=1e-9,
    )
    # Vectors (biases, the output weights here) get no direction.
    np.testing.assert_array_equal(d["b1"], 0.0)
    np.testing.assert_array_equal(d["w2"], 0.0)


@pytest.mark.parametrize("directions", [1, 2])
def test_landscape_is_the_loss_along_the_directions(mlp, directions):
    params, x, y = mlp
    land = floodax.loss_landscape(
        mlp_loss,
        params,
        x,
        y,
        directions=directions,
        radius=0.5,
        num_points=5,
        key=jax.random.key(1),
        batch_size=3,
    )
    np.testing.assert_allclose(land.alphas, np.linspace(-0.5, 0.5, 5))
    origin = land.losses[2] if directions == 1 else land.losses[2, 2]
    np.testing.assert_allclose(origin, mlp_loss(params, x, y), rtol=1e-14)
    dirs = (land.directions,) if directions == 1 else land.directions
    for index in ((0,), (4,)) if directions == 1 else ((0, 3), (4, 1)):
        coefficients = [land.alphas[i] for i in index]
        moved = jax.tree.map(
            lambda p, *ds, cs=coefficients: (
                p + sum(c * d for c, d in zip(cs, ds, strict=True))
            ),
            params,
            *dirs,
        )
        np.testing.assert_allclose(
            land.losses[index], mlp_loss(moved, x, y), rtol=1e-12
        )
    if directions == 2:
        assert land.losses.shape == (5, 5)
        flat = [ravel_pytree(d)[0] for d in dirs]
        assert abs(float(flat[0] @ flat[1])) < float(flat[0] @ flat[0])  # distinct


def _tanh_model(dtype):
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    params = {
        "w": jax.random.normal(k1, (3, 3), jnp.float32).astype(dtype),
        "v": jax.random.normal(k2, (3,), jnp.float32).astype(dtype),
    }
    x = jax.random.normal(k3, (10, 3), jnp.float32)

    def loss(p, scale=1.0):
        out = jnp.tanh(x.astype(p["w"].dtype) @ p["w"]) @ p["v"]
        return scale * jnp.mean(out.astype(jnp.float32) ** 2)

    return params, loss


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_eigenvalues_do_not_depend_on_the_scale_of_the_loss(which):
    # A float32 spectrum of order 1e-7 (a near-zero loss): Lanczos must not
    # take every step for a breakdown (an absolute threshold did, and
    # returned values far from the true ones).
    params, loss = _tanh_model(jnp.float32)
    values, _, _ = _dense_spectrum(
        lambda p: loss(p), jax.tree.map(lambda a: a.astype(jnp.float64), params)
    )
    expected = values[::-1][:3] if which == "largest" else values[:2]
    k = len(expected)
    # One compiled program serves both scales (a float32 argument).
    eigenvalues = jax.jit(
        lambda scale: floodax.hessian_eigenvalues(
            functools.partial(loss, scale=scale),
            params,
            k=k,
            which=which,
            num_iterations=12,
        )
    )
    for scale in (1.0, 1e-7):
        out = eigenvalues(jnp.float32(scale))
        assert out.eigenvalues.dtype == jnp.float32
        np.testing.assert_allclose(out.eigenvalues / scale, expected, rtol=2e-3)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_parameters_are_diagnosed_in_float32(dtype):
    params, loss = _tanh_model(dtype)
    wide = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    values, _, _ = _dense_spectrum(loss, wide)
    out = floodax.hessian_eigenvalues(loss, params, k=2, num_iterations=12)
    assert out.eigenvalues.dtype == jnp.float32
    # The Hessian-vector products run in the parameters' precision.
    np.testing.assert_allclose(out.eigenvalues, values[::-1][:2], rtol=0.05)
    # A tree mixing float16 and bfloat16 (optax.tree.dtype cannot compare the
    # two) has a float32 gradient norm and penalty.
    mixed = {
        "w": params["w"].astype(jnp.float16),
        "v": params["v"].astype(jnp.bfloat16),
    }
    norm = floodax.grad_norm(loss, mixed)
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(norm, floodax.grad_norm(loss, wide), rtol=0.02)
    penalised = floodax.grad_norm_penalty(loss, 0.1)(mixed)
    assert np.isfinite(float(penalised))
    tx = floodax.add_grad_norm_penalty(0.1)
    grads = jax.grad(loss)(mixed)
    updates, _ = tx.update(grads, tx.init(mixed), mixed, value_fn=loss)
    assert {k: u.dtype for k, u in updates.items()} == {
        "w": jnp.float16,
        "v": jnp.bfloat16,
    }


def test_landscape_grid_is_uniform_whatever_the_first_leaf():
    # The grid once took the first leaf's dtype: bfloat16 made it
    # non-uniform (±0.3008 for radius 0.3) and moved float32 leaves by the
    # rounded coefficients.
    params, loss = _tanh_model(jnp.float32)
    params = {"a": params["w"].astype(jnp.bfloat16), "v": params["v"]}
    land = floodax.loss_landscape(
        lambda p: loss({"w": p["a"], "v": p["v"]}), params, radius=0.3, num_points=7
    )
    assert land.alphas.dtype == jnp.float32
    np.testing.assert_allclose(land.alphas, np.linspace(-0.3, 0.3, 7), rtol=1e-7)
    # Symmetric, and the origin exactly on the grid: there the loss is L(θ).
    np.testing.assert_array_equal(land.alphas, -land.alphas[::-1])
    assert land.alphas[3] == 0 and land.losses[3] == loss(
        {"w": params["a"], "v": params["v"]}
    )


EPS = np.finfo(np.float64).eps


def _quadratic(w, a):
    return 0.5 * w @ a @ w


def _random_spectrum(rng, kind, n):
    """Spectra Lanczos finds hard: wide condition numbers, multiple and
    clustered extremes, both signs."""
    if kind == "conditioned":  # |λ| log-uniform over up to 14 decades
        decades = rng.uniform(1, 14)
        values = 10 ** rng.uniform(0, decades, n) * rng.choice([-1, 1], n)
        values[:2] = 1.0, 10**decades
        return values * 10 ** rng.uniform(-3, 3)
    values = rng.normal(size=n) * 10 ** rng.uniform(-2, 2)
    ends = (values.argmax(), values.argmin())
    size = rng.integers(2, 4)
    for end in ends:
        others = rng.choice(np.delete(np.arange(n), ends), size - 1, replace=False)
        width = 0.0 if kind == "multiple" else 1e-3 * abs(values[end])
        values[others] = values[end] - np.sign(values[end] - values.mean()) * (
            width * rng.random(size - 1)
        )
    return values


def _random_matrices(seed, n, count):
    """``count`` symmetric matrices ``Q·diag(λ)·Qᵀ``, random orthogonal ``Q``."""
    rng = np.random.default_rng(seed)
    kinds = ("conditioned", "multiple", "clustered")
    out = []
    for i in range(count):
        values = _random_spectrum(rng, kinds[i % 3], n)
        q, _ = np.linalg.qr(rng.normal(size=(n, n)))
        a = (q * values) @ q.T
        out.append((a + a.T) / 2)
    return np.stack(out)


@functools.lru_cache
def _batched_eigenvalues(n, k, which, num_iterations, block_size=None):
    """One compiled Lanczos over a batch of matrices of one size."""

    def one(a):
        return floodax.hessian_eigenvalues(
            _quadratic,
            jnp.ones(n),
            a,
            k=k,
            which=which,
            num_iterations=num_iterations,
            block_size=block_size,
            return_eigenvectors=True,
        )

    return jax.jit(jax.vmap(one))


# One size for the randomised tests below, so that each `which` compiles once:
# n = 32 parameters, the k = 3 extremes, m = 24 (8 block steps of k), a
# batch of 30 matrices.
N, K, M, COUNT = 32, 3, 24, 30


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_random_spectra_keep_every_documented_guarantee(which):
    # Against numpy.linalg.eigh over random spectra (14 decades, multiple
    # and clustered extremes, both signs) with a Krylov space of about half
    # the dimension, so that many values have not converged: what is
    # promised must hold anyway. Tolerance: rounding, n·eps·‖A‖.
    matrices = _random_matrices(0 if which == "largest" else 1, N, COUNT)
    out = _batched_eigenvalues(N, K, which, M)(jnp.asarray(matrices))
    sign = 1.0 if which == "largest" else -1.0
    for i, a in enumerate(matrices):
        spectrum = np.linalg.eigvalsh(a)
        extreme = spectrum[::-1][:K] if which == "largest" else spectrum[:K]
        tol = N * EPS * np.abs(spectrum).max()
        values = np.asarray(out.eigenvalues[i])
        vectors = np.asarray(out.eigenvectors[i])
        residuals = np.asarray(out.residuals[i])
        # The residuals are ‖A·u − λ·u‖ of orthonormal Ritz vectors.
        np.testing.assert_allclose(vectors @ vectors.T, np.eye(K), atol=1e-12)
        np.testing.assert_allclose(
            residuals,
            np.linalg.norm(vectors @ a - values[:, None] * vectors, axis=1),
            rtol=1e-6,
            atol=tol,
        )
        # Ordered, and never beyond the i-th extreme eigenvalue (interlacing).
        assert np.all(sign * np.diff(values) <= 0)
        assert np.all(sign * (values - extreme) <= tol)
        distance = np.abs(values[:, None] - spectrum[None, :])
        nearest = distance.argmin(axis=1)
        # An eigenvalue within each residual ...
        assert np.all(distance[np.arange(K), nearest] <= residuals + tol)
        # ... k distinct ones within the residuals' root sum of squares
        # (Kahan's theorem) ...
        radius = np.sqrt(np.sum(residuals**2)) + tol
        candidates = [np.flatnonzero(row <= radius) for row in distance]
        assert any(len(set(pick)) == K for pick in itertools.product(*candidates))
        # ... and within residual² / gap of the nearest (the gap theorem).
        for row, j, r in zip(distance, nearest, residuals, strict=True):
            gap = np.min(np.where(spectrum == spectrum[j], np.inf, row))
            assert row[j] <= r**2 / gap + tol


def _separated_extremes(seed, count, which):
    """Matrices whose 2 or 3 extreme eigenvalues are equal or 1e-3 apart,
    five times the spread of the rest away from it (both signs)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        values = rng.uniform(-0.2, 0.0, N)
        size = 2 + i % 2
        width = 0.0 if i % 4 < 2 else 1e-3
        values[:size] = 1.0 - width * rng.random(size)
        values *= 10 ** rng.uniform(-3, 3) * (1 if which == "largest" else -1)
        q, _ = np.linalg.qr(rng.normal(size=(N, N)))
        a = (q * values) @ q.T
        out.append((a + a.T) / 2)
    return np.stack(out)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_a_multiple_or_clustered_extreme_is_found_as_often_as_it_occurs(which):
    # One start vector sees a multiple eigenvalue once (its Krylov space
    # holds one vector of each eigenspace) and returns the next one instead,
    # with a small residual; the default block of k finds every copy, and
    # every member of a cluster, as fast as a single eigenvalue.
    matrices = _separated_extremes(2, COUNT, which)
    out = _batched_eigenvalues(N, K, which, M)(jnp.asarray(matrices))
    for i, a in enumerate(matrices):
        size = 2 + i % 2
        spectrum = np.linalg.eigvalsh(a)
        extreme = spectrum[::-1][:size] if which == "largest" else spectrum[:size]
        scale = np.abs(spectrum).max()
        values = out.eigenvalues[i, :size]
        residuals = out.residuals[i, :size]
        # Converged, and each value within its residual of the one it
        # stands for.
        assert np.all(residuals <= 1e-6 * scale)
        np.testing.assert_allclose(
            values, extreme, rtol=0, atol=np.max(residuals) + N * EPS * scale
        )


@pytest.mark.parametrize(("num_iterations", "k"), [(16, 1), (31, 3)])
def test_a_wide_spectrum_keeps_its_small_off_diagonals(num_iterations, k):
    # {1e8} ∪ linspace(1e-6, 1e-5, 30): past the first step the Lanczos
    # coefficients are of order 1e-6, below a breakdown threshold of
    # 100·eps·max|T| ≈ 2e-6, which discarded them and returned 1.64e-6 for
    # the smallest (an error of 29·eps·‖A‖) at any num_iterations. Judged
    # against the product's own rounding (Hessian-vector products of norm up
    # to ‖A‖, n entries each), √n·eps·‖A‖ ≈ 1.2e-7, the smallest values are
    # found at half the dimension (the smallest) as well as at all of it.
    n = 31
    values = np.concatenate([[1e8], np.linspace(1e-6, 1e-5, n - 1)])
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(n, n)))
    a = (q * values) @ q.T
    a = (a + a.T) / 2
    out = floodax.hessian_eigenvalues(
        _quadratic,
        jnp.ones(n),
        jnp.asarray(a),
        k=k,
        which="smallest",
        num_iterations=num_iterations,
    )
    np.testing.assert_allclose(
        out.eigenvalues,
        np.linalg.eigvalsh(a)[:k],
        rtol=0,
        atol=np.sqrt(n) * EPS * 1e8,
    )


def test_an_offset_spectrum_in_a_large_model_is_not_a_breakdown():
    # Weight decay's curvature puts the whole spectrum on an offset: the
    # residuals after Gram-Schmidt are then small next to ‖H·v‖ (here about
    # 0.004 of it) without H·v lying in the basis. A breakdown test of
    # n·eps·‖H·v‖ grows with the model (0.012 at n = 1e5 in float32) and
    # took every step for one, restarting the space: [1.002, 1.002] with
    # residuals that still "certified" an eigenvalue.
    n = 100_000
    spread = np.random.default_rng(0).random(n)
    curvature = jnp.asarray(1 + 0.004 * spread, jnp.float32)
    curvature = curvature.at[:2].set(jnp.array([1.01, 1.009], jnp.float32))

    def loss_fn(w):
        return 0.5 * jnp.sum(curvature * w**2)

    result = floodax.hessian_eigenvalues(loss_fn, jnp.zeros(n, jnp.float32), k=2)
    np.testing.assert_allclose(result.eigenvalues, [1.01, 1.009], atol=2e-6)
    assert np.all(result.residuals < 1e-4)
