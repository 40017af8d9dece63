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
