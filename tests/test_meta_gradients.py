"""Meta-gradients: ``jax.grad`` through every floodax transform.

Meta-learning a hyperparameter or a learned optimiser differentiates the
update itself. Wherever a transform's value is finite, its derivatives must
be finite, and where it is differentiable they must match central
differences (float64).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax

pytestmark = pytest.mark.usefixtures("x64")


def _loss(params):
    w, v = params["w"], params["v"]
    return jnp.sum(jnp.sin(w[:2]) * v) + 0.5 * jnp.sum(w**2) * jnp.sum(v**2) ** 0.5


def _point(zero_gradient: bool):
    params = {"w": jnp.array([0.3, -0.7, 1.1]), "v": jnp.array([0.5, 1.5])}
    grads = jax.grad(_loss)(params)
    if zero_gradient:
        grads = jax.tree.map(jnp.zeros_like, grads)
    return params, grads


def _project(tree, seed=0):
    """A fixed random linear functional: the scalar whose gradient we take."""
    leaves = jax.tree.leaves(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return sum(
        jnp.sum(leaf * jax.random.normal(k, leaf.shape, leaf.dtype))
        for leaf, k in zip(leaves, keys, strict=True)
    )


def _central_difference(fn, x, h=1e-6):
    """Gradient of the scalar ``fn`` at the pytree ``x`` by central differences."""
    flat, unravel = jax.flatten_util.ravel_pytree(x)
    grads = []
    for i in range(flat.size):
        step = jnp.zeros_like(flat).at[i].set(h)
        grads.append((fn(unravel(flat + step)) - fn(unravel(flat - step))) / (2 * h))
    return unravel(jnp.stack(grads))


def _assert_meta_gradient(fn, x, *, differentiable=True):
    grad = jax.grad(fn)(x)
    for leaf in jax.tree.leaves(grad):
        assert np.all(np.isfinite(np.asarray(leaf))), grad
    if differentiable:
        expected = _central_difference(fn, x)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


PENALTIES = [
    ("exact", 2),
    ("exact", 1),
    ("finite_difference", 2),
    ("finite_difference", 1),
]


@pytest.mark.parametrize("zero_gradient", [False, True])
@pytest.mark.parametrize("method, power", PENALTIES)
def test_penalty_meta_gradients(method, power, zero_gradient):
    params, grads = _point(zero_gradient)
    radius = 1e-2 if method == "finite_difference" else None

    def update(strength, params, grads, radius=radius):
        tx = floodax.add_grad_norm_penalty(
            strength, power=power, method=method, radius=radius
        )
        return _project(tx.update(grads, None, params, value_fn=_loss)[0])

    _assert_meta_gradient(lambda s: update(s, params, grads), jnp.float64(0.3))
    _assert_meta_gradient(lambda p: update(0.3, p, grads), params)
    # Through the incoming gradient: the squared form's exact update is
    # linear in g; the norm forms have a kink at g = 0 (like |x| at 0).
    _assert_meta_gradient(
        lambda g: update(0.3, params, g),
        grads,
        differentiable=not zero_gradient or (method, power) == ("exact", 2),
    )
    if method == "finite_difference":
        _assert_meta_gradient(
            lambda r: update(0.3, params, grads, radius=r), jnp.float64(1e-2)
        )


@pytest.mark.parametrize("zero_gradient", [False, True])
@pytest.mark.parametrize("power", [2, 1])
def test_grad_norm_penalty_meta_gradients(power, zero_gradient):
    # At a minimum of L (zero gradient), the penalised loss's Hessian and
    # its derivative in λ are finite; the norm form has its kink there.
    minimum = {"w": jnp.zeros(3), "v": jnp.zeros(2)}
    quadratic = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum((p["v"] - p["w"][:2]) ** 2)  # noqa: E731
    loss, params = (quadratic, minimum) if zero_gradient else (_loss, _point(False)[0])

    def penalised_grad(strength, params):
        fn = floodax.grad_norm_penalty(loss, strength, power=power)
        return _project(jax.grad(fn)(params))

    _assert_meta_gradient(lambda s: penalised_grad(s, params), jnp.float64(0.4))
    _assert_meta_gradient(
        lambda p: penalised_grad(0.4, p),
        params,
        differentiable=not (zero_gradient and power == 1),
    )


def _quartic_bowl(params):
    """A minimum at 0 with a non-diagonal Hessian and non-zero higher
    derivatives nearby, so a wrong derivative of the penalty shows."""
    w, v = params["w"], params["v"]
    return (
        jnp.sum(w**2)
        + jnp.sum((v - w[:2]) ** 2)
        + jnp.sum(w**4)
        + jnp.sum(w[:2] * v) ** 2
    )


@pytest.mark.parametrize("power", [2, 1])
def test_penalty_meta_gradient_at_exact_zero_matches_exact_method(power):
    # The user's path: g = ∇L(θ) inside the step, θ at a minimum (g exactly
    # 0). The finite difference's meta-gradient must match the exact
    # method's, as it does a hair away from the minimum.
    minimum = {"w": jnp.zeros(3), "v": jnp.zeros(2)}

    def meta(method, params):
        tx = floodax.add_grad_norm_penalty(0.1, power=power, method=method)
        grads = jax.grad(_quartic_bowl)(params)
        return tx.update(grads, None, params, value_fn=_quartic_bowl)[0]

    for method in ("exact", "finite_difference"):
        value = meta(method, minimum)
        for leaf in jax.tree.leaves(value):
            np.testing.assert_array_equal(leaf, 0.0)  # g back unchanged
    exact = jax.jacobian(functools.partial(meta, "exact"))(minimum)
    difference = jax.jacobian(functools.partial(meta, "finite_difference"))(minimum)
    for a, b in zip(jax.tree.leaves(difference), jax.tree.leaves(exact), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    if power == 2:
        # (I + 2λH)·H, the exact Jacobian of g + 2λHg, not H alone.
        flat, unravel = jax.flatten_util.ravel_pytree(minimum)
        hessian = jax.hessian(lambda x: _quartic_bowl(unravel(x)))(flat)
        expected = hessian + 0.2 * hessian @ hessian
        got = jax.jacobian(
            lambda x: jax.flatten_util.ravel_pytree(
                meta("finite_difference", unravel(x))
            )[0]
        )(flat)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("zero_gradient", [False, True])
@pytest.mark.parametrize("ascent_first", [False, True])
def test_alternate_meta_gradients(ascent_first, zero_gradient):
    params, grads = _point(zero_gradient)

    def within(rates, params, grads):
        tx = floodax.alternate(rates[0], rates[1], ascent_first=ascent_first)
        return _project(tx.update(grads, tx.init(params), params, value_fn=_loss)[0])

    def across(rates, grads):
        tx = floodax.alternate(rates[0], rates[1], ascent_first=ascent_first)
        first, state = tx.update(grads, tx.init(grads))
        second, _ = tx.update(grads, state)
        return _project(first) + 2 * _project(second)

    rates = jnp.array([0.3, 0.1])
    _assert_meta_gradient(lambda r: within(r, params, grads), rates)
    _assert_meta_gradient(lambda p: within(rates, p, grads), params)
    _assert_meta_gradient(lambda g: within(rates, params, g), grads)
    _assert_meta_gradient(lambda r: across(r, grads), rates)
    _assert_meta_gradient(lambda g: across(rates, g), grads)


@pytest.mark.parametrize("zero_gradient", [False, True])
def test_flood_meta_gradients(zero_gradient):
    params, grads = _point(zero_gradient)
    value = _loss(params)

    def update(level, grads):
        tx = floodax.flood(level)
        return _project(tx.update(grads, tx.init(grads), value=value)[0])

    # Away from the switching point the update is ±g: constant in b.
    for level in (value - 0.5, value + 0.5):
        _assert_meta_gradient(lambda b: update(b, grads), jnp.float64(level))
        _assert_meta_gradient(functools.partial(update, level), grads)
    assert float(jax.grad(update)(value + 0.5, grads)) == 0.0


def test_loss_transform_meta_gradients():
    params, _ = _point(False)
    x = jnp.array([[1.0, 0.5, -1.0], [0.2, 2.0, 0.3], [1.5, -0.5, 0.5]])

    def losses(w):
        return (x @ w) ** 2

    # Levels chosen so the examples straddle them: losses ≈ 1.96, 1.43, 0.11.
    levels = jnp.array([0.5, 2.0, 0.3])
    weights = jnp.array([1.0, 2.0, 0.5])
    w = params["w"]

    def iflood(w, levels, weights):
        return floodax.iflooded(losses(w), levels, weights=weights)

    _assert_meta_gradient(lambda w: iflood(w, levels, weights), w)
    _assert_meta_gradient(lambda b: iflood(w, b, weights), levels)
    _assert_meta_gradient(lambda v: iflood(w, levels, v), weights)
    # d/db of |L − b| + b is 0 above the level and 2 below it.
    grad_levels = jax.grad(lambda b: iflood(w, b, weights))(levels)
    below = np.asarray(losses(w)) < np.asarray(levels)
    np.testing.assert_allclose(
        grad_levels, np.where(below, 2.0, 0.0) * weights / weights.sum(), rtol=1e-12
    )
    _assert_meta_gradient(
        lambda b: floodax.flooded(jnp.sum(losses(w)), b), jnp.float64(1.0)
    )


def test_inject_hyperparams_meta_gradient_through_a_chain():
    # A learned flood level/strength through a whole optax chain.
    params, grads = _point(False)

    def step(hyper):
        tx = optax.chain(
            floodax.add_grad_norm_penalty(hyper[0]),
            floodax.flood(hyper[1]),
            optax.sgd(0.1),
        )
        updates, _ = tx.update(
            grads, tx.init(params), params, value=_loss(params), value_fn=_loss
        )
        return _loss(optax.apply_updates(params, updates))

    _assert_meta_gradient(step, jnp.array([0.2, 0.05]))
