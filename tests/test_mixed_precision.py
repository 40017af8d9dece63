"""Mixed precision: bfloat16/float16 parameters, float32 losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax


def _problem(dtype):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {
        "w": (jax.random.normal(k1, (4, 8)) / 2).astype(dtype),
        "v": (jax.random.normal(k2, (8,)) / 3).astype(dtype),
    }
    x = jax.random.normal(k3, (32, 4)).astype(dtype)
    y = jnp.sin(x[:, 0].astype(jnp.float32))
    return params, x, y


def _loss(params, x, y):
    # Compute in the parameters' dtype, reduce the loss in float32.
    pred = jnp.tanh(x @ params["w"]) @ params["v"]
    return jnp.mean((pred.astype(jnp.float32) - y) ** 2)


def test_flood_decides_in_the_loss_precision_not_the_params():
    # 0.09999 < 0.1 in float32; in bfloat16 both round to 0.10009765625.
    tx = floodax.flood(0.1)
    grads = {"w": jnp.ones(3, jnp.bfloat16)}
    up, state = tx.update(grads, tx.init(grads), value=jnp.float32(0.09999))
    np.testing.assert_array_equal(np.asarray(up["w"], np.float32), -1.0)
    assert up["w"].dtype == jnp.bfloat16 and int(state.ascent_count) == 1


# optax's Adam with its default eps=1e-8 divides by zero in float16 (eps
# underflows there), whatever comes before it; eps=1e-4 is representable.
TRANSFORMS = {
    "flood": lambda: optax.chain(floodax.flood(0.05), optax.adam(0.02, eps=1e-4)),
    "alternate": lambda: optax.chain(
        optax.scale_by_adam(eps=1e-4), floodax.alternate(0.02, 0.005)
    ),
    "backstitch": lambda: floodax.alternate(0.1, 0.03, ascent_first=True),
    "penalty_exact": lambda: optax.chain(
        floodax.add_grad_norm_penalty(0.1), optax.sgd(0.1)
    ),
    "penalty_fd": lambda: optax.chain(
        floodax.add_grad_norm_penalty(0.1, method="finite_difference"), optax.sgd(0.1)
    ),
    # Injected hyperparameters and schedules are float32 arrays, not weakly
    # typed Python numbers: multiplying a bfloat16 update by one would
    # promote it to float32 unless the transform casts.
    "flood_injected": lambda: optax.chain(
        optax.inject_hyperparams(floodax.flood)(flood_level=0.05),
        optax.adam(0.02, eps=1e-4),
    ),
    "alternate_schedule": lambda: optax.chain(
        optax.scale_by_adam(eps=1e-4),
        floodax.alternate(optax.linear_schedule(0.02, 0.01, 40), 0.005),
    ),
    # Rates given as float32 arrays (not weakly typed): the pair's second
    # gradient, taken at bfloat16 parameters, would be promoted to float32.
    "backstitch_float32_rates": lambda: floodax.alternate(
        jnp.float32(0.1), jnp.float32(0.03), ascent_first=True, interval=2
    ),
    "backstitch_injected": lambda: optax.inject_hyperparams(
        floodax.alternate, static_args=("ascent_first",)
    )(descent_rate=0.1, ascent_rate=0.03, ascent_first=True),
    "penalty_exact_injected": lambda: optax.chain(
        optax.inject_hyperparams(floodax.add_grad_norm_penalty)(strength=0.1),
        optax.sgd(0.1),
    ),
    "penalty_fd_injected": lambda: optax.chain(
        optax.inject_hyperparams(
            floodax.add_grad_norm_penalty, static_args=("method",)
        )(strength=0.1, radius=1e-2, method="finite_difference"),
        optax.sgd(0.1),
    ),
    "asam": lambda: optax.chain(
        floodax.sam(0.05, adaptive=True), optax.adam(0.02, eps=1e-4)
    ),
    "gsam_injected": lambda: optax.chain(
        optax.inject_hyperparams(floodax.gsam)(radius=0.05, alpha=0.5),
        optax.sgd(0.1),
    ),
    "penalty_gnp_injected": lambda: optax.chain(
        optax.inject_hyperparams(
            floodax.add_grad_norm_penalty, static_args=("method",)
        )(strength=0.1, radius=1e-2, power=1, method="finite_difference"),
        optax.sgd(0.1),
    ),
}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_low_precision_training_keeps_dtypes_and_stays_finite(dtype, name):
    params, x, y = _problem(dtype)
    tx = TRANSFORMS[name]()

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(_loss)(p, x, y)
        updates, s = tx.update(
            grads, s, p, value=loss, value_fn=lambda q: _loss(q, x, y)
        )
        return optax.apply_updates(p, updates), s, loss, updates

    state = tx.init(params)
    first = float(_loss(params, x, y))
    for _ in range(40):
        params, state, loss, updates = step(params, state)
        for leaf in jax.tree.leaves((params, updates)):
            assert leaf.dtype == dtype
            assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
        assert loss.dtype == jnp.float32
    # Training in low precision still makes progress.
    assert float(_loss(params, x, y)) < first


def test_finite_difference_radius_follows_the_dtype():
    # The default radius is sqrt(eps) of the least precise parameter: for
    # bfloat16 a perturbation that survives rounding (a float32-sized step
    # of 3.5e-4 would vanish below bfloat16's resolution near 1).
    loss = lambda p: jnp.sum(p["w"].astype(jnp.float32) ** 4)  # noqa: E731
    params = {"w": jnp.array([1.0, 0.5], jnp.bfloat16)}
    g = jax.grad(loss)(params)
    tx = floodax.add_grad_norm_penalty(0.1, method="finite_difference")
    out, _ = tx.update(g, tx.init(params), params, value_fn=loss)
    exact, _ = floodax.add_grad_norm_penalty(0.1).update(g, None, params, value_fn=loss)
    np.testing.assert_allclose(
        np.asarray(out["w"], np.float32), np.asarray(exact["w"], np.float32), rtol=0.2
    )
    tiny = floodax.add_grad_norm_penalty(0.1, method="finite_difference", radius=3.5e-4)
    bad, _ = tiny.update(g, None, params, value_fn=loss)
    # With the float32 radius the bfloat16 difference is all rounding.
    assert not np.allclose(
        np.asarray(bad["w"], np.float32), np.asarray(exact["w"], np.float32), rtol=0.2
    )


def _large_gradient_problem(dtype):
    """16 weights whose loss has a gradient norm of about 2,100: its square,
    4.4e6, overflows float16 (largest finite value 65,504)."""
    params = {"w": jnp.linspace(0.5, 1.5, 16).astype(dtype)}

    def loss(p):
        w = p["w"].astype(jnp.float32)
        return 250 * jnp.sum(w**2) + jnp.sum(w**3)

    return params, loss


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("method", ["exact", "finite_difference"])
@pytest.mark.parametrize("power", [2, 1])
def test_penalty_with_large_gradients_in_low_precision(dtype, method, power):
    params, loss = _large_gradient_problem(dtype)
    grads = jax.grad(loss)(params)
    params32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    grads32 = jax.grad(loss)(params32)
    assert float(jnp.linalg.norm(grads32["w"])) > 1e3
    strength = 1e-4 if power == 2 else 0.5
    tx = floodax.add_grad_norm_penalty(strength, power=power, method=method)
    out, _ = tx.update(grads, tx.init(params), params, value_fn=loss)
    reference, _ = floodax.add_grad_norm_penalty(strength, power=power).update(
        grads32, None, params32, value_fn=loss
    )
    assert out["w"].dtype == dtype
    out, ref, g = (np.asarray(t["w"], np.float64) for t in (out, reference, grads32))
    assert np.all(np.isfinite(out))
    # The penalty is a real part of the update, not lost in rounding.
    assert np.linalg.norm(ref - g) > 0.1 * np.linalg.norm(g)
    # As in test_penalty_keeps_dtypes_without_nan: a few rounding errors of
    # the dtype for the exact product, about sqrt(eps) for the difference.
    eps = float(jnp.finfo(dtype).eps)
    rtol = 2 * np.sqrt(eps) if method == "finite_difference" else 4 * eps
    np.testing.assert_allclose(out, ref, rtol=rtol)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_grad_norm_penalty_with_large_gradients_in_low_precision(dtype):
    params, loss = _large_gradient_problem(dtype)
    params32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    penalised = floodax.grad_norm_penalty(loss, 1e-4)
    value, grads = jax.value_and_grad(penalised)(params)
    ref_value, ref_grads = jax.value_and_grad(penalised)(params32)
    assert value.dtype == jnp.float32  # the loss's dtype
    assert grads["w"].dtype == dtype
    # ‖∇L‖² ≈ 4.4e6 is accumulated in float32: λ‖∇L‖² ≈ 440 of 4,842.
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(value, ref_value, rtol=4 * eps)
    np.testing.assert_allclose(
        np.asarray(grads["w"], np.float64), ref_grads["w"], rtol=4 * eps
    )


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_grad_norm_penalty_of_a_low_precision_loss_keeps_its_dtype(dtype):
    # The loss itself in float16/bfloat16: the penalty is accumulated in
    # float32 (‖∇L‖² ≈ 4.4e6 would overflow float16) and the sum is rounded
    # once, back to the loss's dtype.
    params, loss = _large_gradient_problem(dtype)
    low = lambda p: loss(p).astype(dtype)  # noqa: E731
    value = floodax.grad_norm_penalty(low, 1e-4)(params)
    assert value.dtype == dtype
    grads = jax.grad(low)(params)
    squared = jnp.sum(jnp.square(grads["w"].astype(jnp.float32)))
    expected = (low(params).astype(jnp.float32) + 1e-4 * squared).astype(dtype)
    assert np.isfinite(float(value))
    assert float(value) == float(expected)


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
@pytest.mark.parametrize("power", [2, 1])
def test_zero_strength_returns_the_gradient_even_when_the_hvp_overflows(method, power):
    # The Hessian 1.2e5·w² is beyond float16's range: H·v̂ is inf there.
    params = {"w": jnp.array([1.0, 0.9, 1.1], jnp.float16)}

    def loss(p):
        return jnp.sum(1e4 * p["w"].astype(jnp.float32) ** 4)

    grads = jax.grad(loss)(params)
    assert np.all(np.isfinite(np.asarray(grads["w"], np.float32)))
    strength = jnp.float32(0.0)
    tx = floodax.add_grad_norm_penalty(strength, power=power, method=method)
    out, _ = jax.jit(lambda g, p: tx.update(g, None, p, value_fn=loss))(grads, params)
    np.testing.assert_array_equal(out["w"], grads["w"])
    injected = optax.inject_hyperparams(floodax.add_grad_norm_penalty)(
        strength=0.0, power=power, method=method
    )
    out, _ = injected.update(grads, injected.init(params), params, value_fn=loss)
    np.testing.assert_array_equal(out["w"], grads["w"])


def test_finite_difference_default_radius_on_a_mixed_precision_tree():
    # One bfloat16 and one float32 leaf: the radius is sqrt(eps) of the
    # least precise perturbed leaf, bfloat16's 0.088, and the result is
    # within that of the exact product on both leaves.
    params = {
        "a": jnp.array([1.0, 0.5], jnp.bfloat16),
        "b": jnp.array([0.25, -0.5], jnp.float32),
    }

    def loss(p):
        a, b = p["a"].astype(jnp.float32), p["b"]
        return jnp.sum(a**4) + jnp.sum(b**4) + jnp.sum(a * b) ** 2

    grads = jax.grad(loss)(params)
    fd = floodax.add_grad_norm_penalty(0.1, method="finite_difference")
    out, _ = fd.update(grads, None, params, value_fn=loss)
    exact, _ = floodax.add_grad_norm_penalty(0.1).update(
        grads, None, params, value_fn=loss
    )
    assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float32
    r = np.sqrt(float(jnp.finfo(jnp.bfloat16).eps))
    for leaf in ("a", "b"):
        np.testing.assert_allclose(
            np.asarray(out[leaf], np.float64),
            np.asarray(exact[leaf], np.float64),
            rtol=2 * r,
        )
    # A float32-sized radius on the same tree loses the bfloat16 leaf's
    # perturbation to rounding: the result is far from the exact one.
    tiny = floodax.add_grad_norm_penalty(0.1, method="finite_difference", radius=3.5e-4)
    bad, _ = tiny.update(grads, None, params, value_fn=loss)
    assert not np.allclose(
        np.asarray(bad["a"], np.float64), np.asarray(exact["a"], np.float64), rtol=2 * r
    )


def test_grad_norm_penalty_keeps_a_float64_loss_digits(x64):
    # float32 parameters, a loss accumulated in float64: the sum must not be
    # rounded through float32 (1 + 1e-9 is 1 there).
    params = jnp.array([0.3, -0.4], jnp.float32)

    def loss(p):
        return 1 + 1e-9 + jnp.sum(p.astype(jnp.float64) ** 2) / 2

    value = floodax.grad_norm_penalty(loss, 1e-6)(params)
    assert value.dtype == jnp.float64
    squared = np.sum(np.asarray(params, np.float64) ** 2)  # ∇L = p
    expected = 1 + 1e-9 + squared / 2 + 1e-6 * squared
    assert abs(float(value) - expected) < 1e-12
