"""floodax inside Equinox and Flax Linen training steps; logging its state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax
from tests.helpers import assert_trees_allclose


def _blobs(n=64):
    key_x, key_y = jax.random.split(jax.random.key(3))
    labels = jax.random.bernoulli(key_y, 0.5, (n,)).astype(jnp.int32)
    centres = jnp.where(labels[:, None] == 1, 1.0, -1.0)
    return centres + jax.random.normal(key_x, (n, 2)), labels


def test_equinox_step_with_flood_and_penalty_equals_the_flooded_penalised_loss():
    eqx = pytest.importorskip("equinox")
    x, y = _blobs()
    model = eqx.nn.MLP(2, 2, width_size=16, depth=1, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_array)
    b, strength, lr = 0.3, 0.05, 0.2

    def loss(params):
        logits = jax.vmap(eqx.combine(params, static))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # The penalty turns ∇L into ∇(L + λ‖∇L‖²); flood then flips it while the
    # penalised loss is below b: the gradient of flooded(L + λ‖∇L‖², b).
    tx = optax.chain(
        floodax.add_grad_norm_penalty(strength), floodax.flood(b), optax.sgd(lr)
    )
    penalised = floodax.grad_norm_penalty(loss, strength)

    @eqx.filter_jit
    def step(model, state):
        params = eqx.filter(model, eqx.is_array)
        value, grads = eqx.filter_value_and_grad(
            lambda m: loss(eqx.filter(m, eqx.is_array))
        )(model)
        updates, state = tx.update(
            grads, state, params, value=penalised(params), value_fn=loss
        )
        return eqx.apply_updates(model, updates), state, value

    @jax.jit
    def reference_step(reference):
        # Plain SGD on flooded(L + λ‖∇L‖², b), and the penalised loss before it.
        grads = jax.grad(lambda p: floodax.flooded(penalised(p), b))(reference)
        return jax.tree.map(lambda p, g: p - lr * g, reference, grads), penalised(
            reference
        )

    state = tx.init(params)
    reference = params
    ascents = 0
    for _ in range(40):
        reference, value = reference_step(reference)
        ascents += int(value < b)
        model, state, _ = step(model, state)
        assert_trees_allclose(
            eqx.filter(model, eqx.is_array), reference, rtol=1e-4, atol=1e-6
        )
    assert 0 < ascents < 40
    assert int(floodax.flood_stats(state)["ascent_count"]) == ascents


def test_linen_train_state_forwards_value_and_value_fn():
    linen = pytest.importorskip("flax.linen")
    from flax.training import train_state

    from floodax.linen import TrainState

    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(2)(jnp.tanh(linen.Dense(8)(x)))

    x, y = _blobs()
    net = Net()
    variables = net.init(jax.random.key(0), x)

    def loss_fn(params):
        logits = net.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    b = 0.45
    flooding = TrainState.create(
        apply_fn=net.apply,
        params=variables["params"],
        tx=optax.chain(floodax.flood(b), optax.adam(0.05)),
    )
    reference = train_state.TrainState.create(
        apply_fn=net.apply, params=variables["params"], tx=optax.adam(0.05)
    )
    penalty = TrainState.create(
        apply_fn=net.apply,
        params=variables["params"],
        tx=optax.chain(floodax.add_grad_norm_penalty(0.1), optax.sgd(0.1)),
    )
    penalty_reference = train_state.TrainState.create(
        apply_fn=net.apply, params=variables["params"], tx=optax.sgd(0.1)
    )

    # One compiled step of the four states (a pytree each), traced once.
    @jax.jit
    def step(flooding, reference, penalty, penalty_reference):
        loss, grads = jax.value_and_grad(loss_fn)(flooding.params)
        flooding = flooding.apply_gradients(grads=grads, value=loss)
        reference = reference.apply_gradients(
            grads=jax.grad(lambda p: floodax.flooded(loss_fn(p), b))(reference.params)
        )
        penalty = penalty.apply_gradients(
            grads=jax.grad(loss_fn)(penalty.params), value_fn=loss_fn
        )
        penalty_reference = penalty_reference.apply_gradients(
            grads=jax.grad(floodax.grad_norm_penalty(loss_fn, 0.1))(
                penalty_reference.params
            )
        )
        return (flooding, reference, penalty, penalty_reference), (loss, grads)

    ascended = 0
    for _ in range(30):
        states, (loss, grads) = step(flooding, reference, penalty, penalty_reference)
        flooding, reference, penalty, penalty_reference = states
        ascended += int(loss < b)
        assert_trees_allclose(flooding.params, reference.params, rtol=1e-5, atol=1e-6)
        assert_trees_allclose(
            penalty.params, penalty_reference.params, rtol=1e-4, atol=1e-6
        )
    assert 0 < ascended < 30
    assert int(flooding.step) == 30
    # Other keyword arguments replace attributes, as in Linen.
    other = flooding.apply_gradients(grads=grads, value=loss, apply_fn=jnp.tanh)
    assert other.apply_fn is jnp.tanh and int(other.step) == 31


def test_flood_stats_finds_the_state_anywhere():
    g = jnp.ones(2)
    layouts = {
        "chain": optax.chain(floodax.flood(0.5), optax.sgd(0.1)),
        "injected": optax.chain(
            optax.inject_hyperparams(floodax.flood)(flood_level=0.5), optax.sgd(0.1)
        ),
        "multi_steps": floodax.multi_steps(
            optax.chain(floodax.flood(0.5), optax.sgd(0.1)), 1
        ),
        "optax MultiSteps": optax.MultiSteps(
            optax.chain(floodax.flood(0.5), optax.sgd(0.1)), 1
        ),
        "masked": optax.masked(floodax.flood(0.5), {"a": True, "b": False}),
    }
    for name, tx in layouts.items():
        params = {"a": g, "b": g} if name == "masked" else g
        state = tx.init(params)
        for loss in (0.9, 0.4, 0.3):
            _, state = tx.update(params, state, params, value=jnp.float32(loss))
        stats = jax.jit(floodax.flood_stats)(state)
        assert int(stats["count"]) == 3, name
        assert int(stats["ascent_count"]) == 2, name
        np.testing.assert_allclose(stats["ascent_share"], 2 / 3, rtol=1e-6)
        assert ("flood_level" in stats) == (name == "injected")
        # A fresh state has no steps: a share of 0, not 0/0. A state read
        # back to the host (a checkpoint) gives JAX arrays all the same.
        fresh = floodax.flood_stats(tx.init(params))
        assert float(fresh["ascent_share"]) == 0.0, name
        host = floodax.flood_stats(jax.device_get(state))
        assert all(isinstance(v, jax.Array) for v in host.values()), name
        assert int(host["ascent_count"]) == 2, name
    with pytest.raises(ValueError, match=r"holds no floodax\.flood state"):
        floodax.flood_stats(optax.sgd(0.1).init(g))
    two = optax.chain(floodax.flood(0.5), floodax.flood(0.1))
    with pytest.raises(ValueError, match=r"holds 2 floodax\.flood states"):
        floodax.flood_stats(two.init(g))


def test_nnx_training_result_carries_the_optimizer_state():
    pytest.importorskip("flax.nnx")
    from flax import nnx

    from floodax.experiments import MLP, TrainConfig, make_synthetic, train

    data = make_synthetic("gaussians", n_train=40, n_val=40, n_test=40)
    result = train(
        MLP(10, 2, width=8, depth=1, rngs=nnx.Rngs(0)),
        data,
        TrainConfig(epochs=5),
        flood_level=0.6,
        progress=False,
    )
    stats = floodax.flood_stats(result.optimizer_state)
    assert int(stats["count"]) == result.steps == 5
    assert float(stats["ascent_share"]) == pytest.approx(result.ascent_share)
    assert float(stats["flood_level"]) == pytest.approx(0.6)
