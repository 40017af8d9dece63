"""Property-based tests (hypothesis) of the invariants floodax promises."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import floodax

finite = st.floats(
    -1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False
)
levels = st.floats(
    0.0, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False
)
rates = st.floats(0.0, 10.0, allow_nan=False, allow_infinity=False)
vectors = arrays(
    np.float64, st.integers(1, 6), elements=st.floats(-10, 10, allow_nan=False)
)

pytestmark = pytest.mark.usefixtures("x64")
SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(losses=arrays(np.float64, st.integers(1, 8), elements=finite), b=levels)
def test_flooded_is_at_least_the_level(losses, b):
    assert np.all(np.asarray(floodax.flooded(jnp.asarray(losses), b)) >= b)


@SETTINGS
@given(
    theta=vectors,
    scale=st.floats(0.01, 5.0),
    b=st.floats(0.0, 50.0, allow_subnormal=False),
)
def test_flooded_gradient_is_signed_gradient(theta, scale, b):
    loss_fn = lambda t: scale * jnp.sum(t**2) + jnp.sum(jnp.sin(t))  # noqa: E731
    theta = jnp.asarray(theta)
    grad = jax.grad(lambda t: floodax.flooded(loss_fn(t), b))(theta)
    sign = 1.0 if float(loss_fn(theta)) >= b else -1.0
    np.testing.assert_array_equal(grad, sign * jax.grad(loss_fn)(theta))


@SETTINGS
@given(
    losses=arrays(np.float64, st.integers(1, 16), elements=st.floats(0, 1e4)), b=levels
)
def test_iflooded_is_at_least_the_level(losses, b):
    # Every flooded example is >= b, so their mean is, up to the rounding of
    # the sum (one ulp per example at most).
    value = float(floodax.iflooded(jnp.asarray(losses), b))
    assert value >= b * (1 - 16 * np.finfo(np.float64).eps)


@SETTINGS
@given(u=vectors, e2=rates, gap=st.floats(0.0, 10.0), ascent_first=st.booleans())
def test_alternate_pair_moves_by_net_rate(u, e2, gap, ascent_first):
    e1 = e2 + gap
    tx = floodax.alternate(e1, e2, ascent_first=ascent_first)
    u = jnp.asarray(u)
    state = tx.init(u)
    first, state = tx.update(u, state)
    second, state = tx.update(u, state)
    np.testing.assert_allclose(first + second, -(e1 - e2) * u, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(e2=st.floats(1e-4, 5.0), gap=st.floats(1e-3, 5.0))
def test_equivalent_penalty_inverts(e2, gap):
    e1 = e2 + gap
    lr, strength = floodax.equivalent_penalty(e1, e2)
    # ε2 is the positive root of ε2² + lr·ε2 − 2λ·lr = 0, and ε1 = ε2 + lr.
    root = (-lr + np.sqrt(lr**2 + 8 * strength * lr)) / 2
    np.testing.assert_allclose([root, root + lr], [e2, e1], rtol=1e-9)


@jax.jit
def _every_transform(theta, zero, value, b, strength):
    # Compiled once per length of θ and reused across examples.
    theta = jnp.where(zero, 0.0, theta)
    loss_fn = lambda t: jnp.sum(t**2) / 2 + 0.1 * jnp.sum(jnp.cos(t))  # noqa: E731
    grads = jax.grad(loss_fn)(theta) * jnp.where(zero, 0.0, 1.0)
    transforms = [
        (floodax.flood(b), {"value": value}),
        (floodax.alternate(0.3, 0.1), {}),
        (floodax.alternate(0.3, 0.1, ascent_first=True), {"value_fn": loss_fn}),
        (floodax.add_grad_norm_penalty(strength), {"value_fn": loss_fn}),
        (
            floodax.add_grad_norm_penalty(strength, method="finite_difference"),
            {"value_fn": loss_fn},
        ),
    ]
    outputs = [
        tx.update(grads, tx.init(theta), theta, **extra)[0] for tx, extra in transforms
    ]
    penalised = jax.grad(floodax.grad_norm_penalty(loss_fn, strength))(theta)
    return [*outputs, penalised, floodax.iflooded(jnp.abs(theta), b)]


@SETTINGS
@given(
    theta=vectors,
    zero=st.booleans(),
    value=st.floats(0.0, 100.0),
    b=levels,
    strength=st.floats(0.0, 10.0),
)
def test_no_nan_or_inf_from_any_transform_on_finite_input(
    theta, zero, value, b, strength
):
    # The five transforms' updates, the penalised loss's gradient and iflooded.
    outputs = _every_transform(
        jnp.asarray(theta),
        jnp.asarray(zero),
        jnp.float64(value),
        jnp.float64(b),
        jnp.float64(strength),
    )
    assert len(outputs) == 7
    for out in outputs:
        assert np.all(np.isfinite(np.asarray(out)))


@SETTINGS
@given(
    b=levels, value=st.floats(0.0, 1e3, allow_subnormal=False)
)  # XLA flushes subnormals
def test_flood_transform_matches_flooded_gradient(b, value):
    # For L(θ) = value·θ at θ = 1: ∇L = value, and the transformation's
    # output is the gradient of the flooded loss.
    tx = floodax.flood(b)
    g = jnp.array([value])
    out, _ = tx.update(g, tx.init(g), value=jnp.float64(value))
    expected = jax.grad(lambda t: floodax.flooded(value * t[0], b))(jnp.array([1.0]))
    np.testing.assert_array_equal(out, expected)
    assert np.all(np.isfinite(np.asarray(optax.apply_updates(g, out))))
