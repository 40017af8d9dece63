"""floodax inside Flax NNX training steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax

nnx = pytest.importorskip("flax.nnx")


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(2, 16, rngs=rngs)
        self.out = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def _blobs(n=128):
    key_x, key_y = jax.random.split(jax.random.key(3))
    labels = jax.random.bernoulli(key_y, 0.5, (n,)).astype(jnp.int32)
    centres = jnp.where(labels[:, None] == 1, 2.5, -2.5)
    return centres + jax.random.normal(key_x, (n, 2)), labels


def test_nnx_train_step_with_flood_learns_and_floats_at_level():
    x, labels = _blobs()
    flood_level = 0.08
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(
        model, optax.chain(floodax.flood(flood_level), optax.adam(0.05)), wrt=nnx.Param
    )

    def loss_fn(model):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, value=loss)
        return loss

    initial = float(loss_fn(model))
    losses = np.array([float(train_step(model, optimizer)) for _ in range(300)])
    accuracy = float(jnp.mean(jnp.argmax(model(x), -1) == labels))
    assert accuracy > 0.95
    assert losses[-50:].mean() < initial / 3
    # Flooding stops the loss from going to zero: it hovers at the level.
    assert losses[-50:].min() > flood_level / 2
    assert abs(losses[-50:].mean() - flood_level) < flood_level / 2
    flood_state = optimizer.opt_state[0]
    assert int(flood_state.count[...]) == 300
    assert int(flood_state.ascent_count[...]) > 30
