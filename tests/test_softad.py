"""Tests of SoftAD (softad) and per-class flood levels (class_levels)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax
from tests.helpers import TraceCounter, mlp_example_losses


def reference_softad(losses, theta, sigma, eta):
    """bdd-flood/setup/losses.py, Loss_SoftAD.forward, without the 1e-12,
    with rho of bdd-flood/setup/sunhuber.py: numpy, float64."""
    losses = np.asarray(losses, np.float64)
    rho = np.sqrt(1.0 + ((losses - theta) / sigma) ** 2) - 1.0
    return eta * theta + sigma**2 * rho.mean()


def reference_weight(losses, theta, sigma):
    """d/dℓᵢ of σ²ρ((ℓᵢ − θ)/σ): σ·rho_d1 of sunhuber.py, x/√(1 + x²)."""
    y = (np.asarray(losses, np.float64) - theta) / sigma
    return sigma * y / np.sqrt(1.0 + y**2)


@jax.jit
def per_example_grads(params, x, y):
    """∇ℓᵢ with respect to the parameters, one row per example."""
    return jax.jacobian(mlp_example_losses)(params, x, y)


@jax.jit
def mlp_softad(params, x, y, theta, sigma, eta):
    """SoftAD's value and gradient on the MLP; one compilation serves every
    (traced) hyperparameter."""
    return jax.value_and_grad(
        lambda p: floodax.softad(
            mlp_example_losses(p, x, y), theta, sigma=sigma, eta=eta
        )
    )(params)


def combine(coefficients, grads):
    """Σᵢ cᵢ·∇ℓᵢ for every parameter leaf."""
    c = jnp.asarray(coefficients)
    return jax.tree.map(lambda g: jnp.tensordot(c, g, axes=1), grads)


def tree_norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(a)) for a in jax.tree.leaves(tree))))


def tree_sub(a, b):
    return jax.tree.map(lambda u, v: u - v, a, b)


# ------------------------------------------------------- against the reference


@pytest.mark.parametrize(
    "theta, sigma, eta",
    [
        (0.01, 1.0, 1.0),
        (0.25, 1.0, 1.0),
        (0.75, 1.0, 1.0),
        (0.3, 0.1, 0.5),
        (0.5, 3.0, 0.0),
        (0.0, 0.5, 2.0),
    ],
)
def test_value_and_gradient_match_the_reference(mlp, theta, sigma, eta):
    # θ from the reference's benchmark grid (run_benchmarks.py) with its
    # σ = η = 1, and other σ, η that the formula must also get right.
    params, x, y = mlp
    losses = np.asarray(mlp_example_losses(params, x, y))

    value, grad = mlp_softad(params, x, y, theta, sigma, eta)
    assert value.dtype == jnp.float64
    np.testing.assert_allclose(
        value, reference_softad(losses, theta, sigma, eta), rtol=1e-14
    )
    n = len(losses)
    weights = reference_weight(losses, theta, sigma) / n
    expected = combine(weights, per_example_grads(params, x, y))
    for g, e in zip(jax.tree.leaves(grad), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-15)
    # With respect to the losses themselves: the per-example weight.
    by_loss = jax.grad(floodax.softad)(jnp.asarray(losses), theta, sigma=sigma, eta=eta)
    np.testing.assert_allclose(by_loss, weights, rtol=1e-14, atol=1e-17)
    # The batch is mixed: some examples above θ, some below.
    if theta in (0.25, 0.3):
        assert 0 < (losses < theta).sum() < n


@pytest.mark.usefixtures("x64")
def test_the_reference_offset_and_cancellation_claims():
    # The docstring: a float32 σ >= 2⁻¹⁵ plus the reference's 1e-12 rounds
    # back to σ (half its spacing, 2⁻³⁹ or more, exceeds 1e-12), so in
    # float32 the offset is lost; at 2⁻¹⁶ it is not.
    sigmas = np.geomspace(2.0**-15, 1e3, 400).astype(np.float32)
    assert all(np.float32(float(s) + 1e-12) == s for s in sigmas)
    assert np.float32(2.0**-16 + 1e-12) != np.float32(2.0**-16)
    # √(1 + y²) − 1 is 0 in float32 for |y| <= 4e-4; floodax's form keeps
    # σ²ρ(y) = y²/2 (σ = 1) to float32 rounding.
    for y in (1e-6, 1e-4, 4e-4):
        gap = np.float32(y)
        assert np.sqrt(np.float32(1) + gap * gap) - np.float32(1) == 0
        ours = floodax.softad(jnp.array([gap]), 0.0, eta=0.0)
        assert ours.dtype == jnp.float32
        np.testing.assert_allclose(float(ours), y**2 / 2, rtol=1e-6)


# ------------------------------------------------------------------ the limits


@pytest.mark.usefixtures("x64")
def test_small_sigma_gradient_over_sigma_tends_to_ifloods(mlp):
    params, x, y = mlp
    losses = np.asarray(mlp_example_losses(params, x, y))
    theta = 0.3
    gap = losses - theta
    assert np.abs(gap).min() > 1e-3  # the bound needs ℓᵢ ≠ θ
    grads = per_example_grads(params, x, y)
    norms = np.sqrt(
        sum(np.sum(g.reshape(len(gap), -1) ** 2, 1) for g in jax.tree.leaves(grads))
    )
    iflood = jax.grad(lambda p: floodax.iflooded(mlp_example_losses(p, x, y), theta))(
        params
    )
    errors = []
    for sigma in (1e-2, 1e-3, 1e-4, 1e-5):
        value, grad = mlp_softad(params, x, y, theta, sigma, 1.0)
        error = tree_norm(
            tree_sub(jax.tree.map(lambda g, s=sigma: g / s, grad), iflood)
        )
        # |ρ'(x/σ) − sign(x)| <= σ²/(2x²) per example, by the triangle inequality.
        bound = np.sum(norms * sigma**2 / (2 * gap**2)) / len(gap)
        assert error <= bound * (1 + 1e-9)
        errors.append(error)
        # The value: σ²ρ(x/σ) lies within σ² below σ·|x|.
        dispersion = float(value) - theta
        below = sigma * np.abs(gap).mean() - dispersion
        assert -1e-15 <= below <= sigma**2
    # Quadratic in σ: each step of 10 in σ cuts the error about 100-fold.
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(ratios > 50), ratios
    assert errors[-1] < 1e-6 * tree_norm(iflood)


@pytest.mark.usefixtures("x64")
def test_large_sigma_tends_to_half_the_squared_gap(mlp):
    params, x, y = mlp
    losses = np.asarray(mlp_example_losses(params, x, y))
    theta, eta = 0.3, 0.7
    gap = losses - theta
    grads = per_example_grads(params, x, y)
    norms = np.sqrt(
        sum(np.sum(g.reshape(len(gap), -1) ** 2, 1) for g in jax.tree.leaves(grads))
    )

    def half_squared(p):
        return eta * theta + 0.5 * jnp.mean((mlp_example_losses(p, x, y) - theta) ** 2)

    limit_value, limit = jax.value_and_grad(half_squared)(params)
    errors = []
    for sigma in (1e1, 1e2, 1e3, 1e4):
        value, grad = mlp_softad(params, x, y, theta, sigma, eta)
        error = tree_norm(tree_sub(grad, limit))
        assert error <= np.sum(norms * np.abs(gap) ** 3 / (2 * sigma**2)) / len(gap)
        errors.append(error)
        below = float(limit_value) - float(value)  # x²/2 − σ²ρ(x/σ) >= 0
        assert -1e-15 <= below <= np.mean(gap**4) / (8 * sigma**2) * (1 + 1e-6)
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(ratios > 50), ratios
    assert errors[-1] < 1e-6 * tree_norm(limit)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("sigma", [0.05, 1.0, 20.0])
def test_each_examples_step_is_a_softened_sign(sigma):
    losses = jnp.array([0.0, 0.1, 0.3, 0.30001, 0.8, 5.0, 40.0])
    theta = 0.3
    weight = np.asarray(jax.grad(floodax.softad)(losses, theta, sigma=sigma))
    gap = np.asarray(losses) - theta
    n = len(gap)
    np.testing.assert_array_equal(np.sign(weight), np.sign(gap))  # 0 at θ
    # |σ·ρ'(x/σ)| < min(σ, |x|): below σ, and below iFlood's |x|-scaled slope.
    assert np.all(np.abs(weight) * n < sigma)
    assert np.all(np.abs(weight) * n <= np.abs(gap))
    np.testing.assert_allclose(
        weight * n, reference_weight(losses, theta, sigma), rtol=1e-14
    )


# ------------------------------------------------ masks, weights, many devices


@pytest.mark.usefixtures("x64")
def test_where_weights_and_axis_name_are_ifloodeds():
    losses = jax.random.uniform(jax.random.key(0), (4, 5), jnp.float64, 0.0, 2.0)
    mask = jnp.arange(5)[None, :] < jnp.array([5, 1, 3, 0])[:, None]
    weights = jax.random.uniform(jax.random.key(1), (4, 5), jnp.float64, 0.5, 2.0)
    theta, sigma, eta = 0.7, 0.4, 1.5
    # A NaN in a masked entry contributes nothing, to the value or gradient.
    losses = jnp.where(mask, losses, jnp.nan)

    def per_device(example_losses, m, w):
        return floodax.softad(
            example_losses,
            theta,
            sigma=sigma,
            eta=eta,
            where=m,
            weights=w,
            axis_name="d",
        )

    @jax.jit
    def both(losses):
        synced = jax.vmap(per_device, axis_name="d")(losses, mask, weights)
        whole = jax.value_and_grad(
            lambda e: floodax.softad(
                e,
                theta,
                sigma=sigma,
                eta=eta,
                where=mask.ravel(),
                weights=weights.ravel(),
            )
        )(losses.ravel())
        return synced, whole

    synced, (whole, by_loss) = both(losses)
    np.testing.assert_allclose(synced, np.full(4, whole), rtol=1e-14)
    keep = np.asarray(mask).ravel()
    w = np.asarray(weights).ravel()[keep]
    kept = np.asarray(losses).ravel()[keep]
    rho = np.sqrt(1 + ((kept - theta) / sigma) ** 2) - 1
    np.testing.assert_allclose(
        whole, eta * theta + (w * sigma**2 * rho).sum() / w.sum(), rtol=1e-14
    )
    expected = np.zeros(keep.size)
    expected[keep] = w * reference_weight(kept, theta, sigma) / w.sum()
    np.testing.assert_allclose(by_loss, expected, rtol=1e-14, atol=1e-17)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32, jnp.float16, jnp.bfloat16])
def test_nan_stays_nan_and_infinity_stays_infinite(x64, dtype):
    w = jnp.array([0.5, 0.0], dtype)
    x = jnp.array([[1.0, 2.0], [3.0, 1.0], [0.5, 0.5]], dtype)
    nan = jnp.array([0.0, jnp.nan, 0.0], dtype)
    mask = ~jnp.isnan(nan)
    infinite = jnp.array([0.2, jnp.inf], dtype)

    @jax.jit
    def everything(w):
        def losses(w):
            # Every example depends on both weights; example 1 is NaN, with
            # a finite gradient of its own.
            return (x @ w) ** 2 + nan

        return (
            jax.value_and_grad(lambda w: floodax.softad(losses(w), 0.3))(w),
            jax.value_and_grad(lambda w: floodax.softad(losses(w), 0.3, where=mask))(w),
            jax.value_and_grad(floodax.softad)(infinite, 0.3),
        )

    (value, grad), (masked, masked_grad), (inf_value, inf_grad) = everything(w)
    assert value.dtype == grad.dtype == dtype
    assert np.isnan(float(value)) and np.all(np.isnan(np.asarray(grad, np.float32)))
    assert np.isfinite(float(masked))
    assert np.all(np.isfinite(np.asarray(masked_grad, np.float32)))
    assert float(inf_value) == np.inf and np.isnan(float(inf_grad[1]))


def test_traced_nonpositive_sigma_gives_nan():
    losses = jnp.array([0.1, 0.5, 0.9])
    fn = jax.jit(jax.value_and_grad(floodax.softad), static_argnames=())
    for sigma in (0.0, -1.0):
        value, grad = fn(losses, jnp.float32(0.3), sigma=jnp.float32(sigma))
        assert np.isnan(float(value)) and np.all(np.isnan(grad))
    value, grad = fn(losses, jnp.float32(0.3), sigma=jnp.float32(1.0))
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))


# ---------------------------------------------- traced hyperparameters, dtypes


def test_traced_hyperparameters_do_not_recompile():
    fn = TraceCounter(
        lambda losses, t, s, e: jax.value_and_grad(floodax.softad)(
            losses, t, sigma=s, eta=e
        )
    )
    jitted = jax.jit(fn)
    losses = jnp.array([0.1, 0.5, 0.9, 0.3])
    for t, s, e in [(0.3, 1.0, 1.0), (0.0, 0.2, 0.5), (0.7, 5.0, 0.0)]:
        value, grad = jitted(losses, jnp.float32(t), jnp.float32(s), jnp.float32(e))
        np.testing.assert_allclose(value, reference_softad(losses, t, s, e), rtol=1e-6)
        expected = reference_weight(losses, t, s) / 4
        np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7)
    assert fn.traces == 1


def test_vmap_over_threshold_and_sigma_equals_loop():
    losses = jnp.array([0.1, 0.5, 0.9, 0.3])
    thetas = jnp.array([0.0, 0.2, 0.5, 0.75])
    sigmas = jnp.array([0.1, 1.0, 3.0])

    def grad_at(t, s):
        return jax.grad(floodax.softad)(losses, t, sigma=s)

    grid = jax.vmap(jax.vmap(grad_at, in_axes=(None, 0)), in_axes=(0, None))(
        thetas, sigmas
    )
    assert grid.shape == (4, 3, 4)
    one = jax.jit(grad_at)
    for i, t in enumerate(thetas):
        for j, s in enumerate(sigmas):
            np.testing.assert_allclose(grid[i, j], one(t, s), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_dtype_kept_and_terms_computed_in_float32(dtype):
    losses = jnp.linspace(0.0, 2.0, 37).astype(dtype)

    @jax.jit
    def both(losses, hyper):
        value_and_grad = jax.value_and_grad(floodax.softad)(losses, hyper, sigma=0.25)
        # The terms in float32, summed in float32, rounded once at the end.
        in_float32 = floodax.softad(losses.astype(jnp.float32), 0.3, sigma=0.25)
        return value_and_grad, in_float32

    for hyper in (0.3, jnp.float32(0.3)):
        (value, grad), in_float32 = both(losses, hyper)
        assert value.dtype == grad.dtype == dtype
        assert value == in_float32.astype(dtype)


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"threshold": -0.1}, ValueError, "`threshold` must be non-negative, got -0.1"),
        ({"threshold": float("nan")}, ValueError, "`threshold` must be finite"),
        ({"threshold": float("inf")}, ValueError, "`threshold` must be finite"),
        ({"threshold": "0.1"}, TypeError, "`threshold` must be a real number"),
        (
            {"threshold": jnp.ones(2)},
            ValueError,
            r"`threshold` of shape \(2,\) does not",
        ),
        (
            {"threshold": optax.constant_schedule(0.1)},
            TypeError,
            r"`threshold=schedule\(step\)`\.$",
        ),
        ({"sigma": 0.0}, ValueError, "`sigma` must be positive, got 0.0"),
        ({"sigma": -1.0}, ValueError, "`sigma` must be positive, got -1.0"),
        ({"sigma": float("inf")}, ValueError, "`sigma` must be finite"),
        ({"sigma": jnp.ones(3)}, ValueError, r"`sigma` must be a scalar.*\(3,\)"),
        ({"sigma": None}, TypeError, "`sigma` must be a real number"),
        ({"sigma": lambda step: 1.0}, TypeError, r"`sigma=schedule\(step\)`"),
        ({"eta": -0.5}, ValueError, "`eta` must be non-negative, got -0.5"),
        ({"eta": float("nan")}, ValueError, "`eta` must be finite"),
        ({"eta": jnp.ones(3)}, ValueError, r"`eta` must be a scalar"),
        ({"eta": optax.constant_schedule(1.0)}, TypeError, r"`eta=schedule\(step\)`"),
        ({"where": jnp.array([1, 0, 1])}, TypeError, "`where` must be a boolean mask"),
        ({"weights": jnp.array([1.0, -1.0, 1.0])}, ValueError, "`weights` must be non"),
        ({"weights": jnp.ones(2)}, ValueError, r"`weights` of shape \(2,\) does not"),
        ({"axis_name": "data"}, ValueError, r"floodax.softad: `axis_name='data'`"),
    ],
)
def test_bad_input(kwargs, error, match):
    kwargs = {"threshold": 0.3, **kwargs}
    with pytest.raises(error, match=match):
        floodax.softad(jnp.ones(3), **kwargs)


def test_integer_losses_are_refused():
    with pytest.raises(TypeError, match="`losses` must have a floating-point dtype"):
        floodax.softad(jnp.array([1, 2]), 0.3)


# ----------------------------------------------------------- per-class levels


@pytest.mark.usefixtures("x64")
def test_class_levels_give_the_per_class_flooded_gradient():
    # A 3-class linear softmax model; each class floods at its own level.
    kx, kw = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (12, 4), jnp.float64)
    labels = jnp.array([0, 1, 2, 0, 0, 1, 2, 2, 0, 1, 0, 0])
    w = 0.5 * jax.random.normal(kw, (4, 3), jnp.float64)
    levels = jnp.array([0.2, 0.9, 1.4])

    def losses(w):
        return optax.softmax_cross_entropy_with_integer_labels(x @ w, labels)

    @jax.jit
    def everything(w):
        # Class levels built inside the program, as a training step would
        # (labels are concrete here, so they were checked just above).
        per_example = floodax.class_levels(levels, labels)
        return (
            losses(w),
            jax.jacobian(losses)(w),  # ∇ℓᵢ, one row per example
            jax.grad(lambda w: floodax.iflooded(losses(w), per_example))(w),
            jax.grad(lambda w: floodax.iflooded(losses(w), 0.9))(w),
            jax.grad(lambda w: floodax.softad(losses(w), per_example))(w),
        )

    floodax.class_levels(levels, labels)  # concrete labels: checked
    ell, jacobian, grad, one, soft = (np.asarray(a) for a in everything(w))
    # By hand: example i contributes sign(ℓᵢ − levels[yᵢ])·∇ℓᵢ / n.
    expected = np.zeros((4, 3))
    for i in range(len(ell)):
        level = [0.2, 0.9, 1.4][int(labels[i])]
        sign = 1.0 if ell[i] >= level else -1.0
        expected += sign * jacobian[i]
    expected /= len(ell)
    np.testing.assert_allclose(grad, expected, rtol=1e-13, atol=1e-16)
    # Every class has examples above and below its level: a real mix.
    per = np.asarray(levels)[np.asarray(labels)]
    assert 0 < (ell < per).sum() < len(ell)
    assert len({int(c) for c in np.asarray(labels)[ell < per]}) >= 2
    # One level for all is another gradient.
    assert np.abs(one - expected).max() > 1e-3
    # The same levels serve SoftAD's per-example thresholds.
    coefficients = reference_weight(ell, per, 1.0) / len(ell)
    by_hand = np.tensordot(coefficients, jacobian, axes=1)
    np.testing.assert_allclose(soft, by_hand, rtol=1e-13, atol=1e-16)


def test_class_levels_refuse_labels_plain_indexing_would_clip():
    levels = jnp.array([0.1, 0.5, 0.7])
    # The pitfall: plain indexing clamps label 3 to class 2 without a word.
    assert float(levels[jnp.array([3])][0]) == pytest.approx(0.7)
    for labels in (jnp.array([0, 3]), jnp.array([-1, 0])):
        with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\)"):
            floodax.class_levels(levels, labels)
    with pytest.raises(TypeError, match="`labels` must be an integer array"):
        floodax.class_levels(levels, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"one level per class.*\(2, 3\)"):
        floodax.class_levels(jnp.ones((2, 3)), jnp.array([0]))
    with pytest.raises(ValueError, match="`levels` must be non-negative"):
        floodax.class_levels(jnp.array([0.1, -0.1]), jnp.array([0]))
    with pytest.raises(TypeError, match="`levels` must be a real number"):
        floodax.class_levels("0.1", jnp.array([0]))


def test_traced_out_of_range_labels_give_nan_not_a_clipped_level():
    levels = jnp.array([0.1, 0.5, 0.7])
    x = jnp.array([0.3, 0.6, 0.2])

    @jax.jit
    def loss_and_grad(labels):
        # A parameter w every example's loss depends on: one NaN level makes
        # the whole gradient NaN.
        return jax.value_and_grad(
            lambda w: floodax.iflooded(
                (w * x) ** 2, floodax.class_levels(levels, labels)
            )
        )(jnp.float32(1.5))

    value, grad = loss_and_grad(jnp.array([0, 1, 2]))
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    for bad in (jnp.array([0, 1, 3]), jnp.array([0, -1, 2])):
        value, grad = loss_and_grad(bad)
        assert np.isnan(float(value)) and np.all(np.isnan(grad))
    integer = floodax.class_levels(jnp.array([0, 1]), jnp.array([1, 0]))
    assert integer.dtype == jnp.float32
    np.testing.assert_array_equal(integer, [1.0, 0.0])
    half = floodax.class_levels(jnp.array([0.1, 0.5], jnp.bfloat16), jnp.array([1]))
    assert half.dtype == jnp.bfloat16


@pytest.mark.parametrize("transform", [floodax.iflooded, floodax.softad])
def test_a_masked_nan_level_leaves_the_value_finite(transform):
    # Padding labels (-1) get a NaN class level under jit; the mask removes
    # the entry from the value as well as from the gradient.
    levels = jnp.array([0.1, 0.2])
    labels, losses = jnp.array([0, 1, -1]), jnp.array([1.0, 2.0, 0.5])
    masked = jax.jit(
        lambda ls, lab: transform(ls, floodax.class_levels(levels, lab), where=lab >= 0)
    )(losses, labels)
    assert float(masked) == float(transform(losses[:2], levels))
