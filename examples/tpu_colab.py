"""Flooding on every local device: a Flax NNX model, a sharded batch, floodax.

Runs unchanged on a Colab or Cloud TPU (8 cores), on a multi-GPU host, and on
CPU; the test suite runs it on 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``). On Colab:

    !pip install floodax flax
    !python tpu_colab.py

The batch is sharded over a 1-D device mesh and the parameters replicated;
``jax.jit`` compiles one SPMD program, in which the mean loss is already the
global loss, so ``floodax.flood`` needs no ``axis_name`` here (it needs one
under ``shard_map``, where each device sees only its own loss).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import floodax


class Classifier(nnx.Module):
    def __init__(self, in_features: int, num_classes: int, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(in_features, 128, rngs=rngs)
        self.out = nnx.Linear(128, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def make_data(
    key, n: int, num_classes: int = 4, dim: int = 16, label_noise: float = 0.2
):
    """Gaussian clusters with symmetric label noise, made on the spot."""
    k_centres, k_x, k_y, k_noise, k_flip = jax.random.split(key, 5)
    centres = 2.0 * jax.random.normal(k_centres, (num_classes, dim))
    labels = jax.random.randint(k_y, (n,), 0, num_classes)
    x = centres[labels] + jax.random.normal(k_x, (n, dim))
    flip = jax.random.bernoulli(k_noise, label_noise, (n,))
    noisy = jnp.where(flip, jax.random.randint(k_flip, (n,), 0, num_classes), labels)
    return x, noisy


def main(
    steps: int = 300,
    flood_level: float = 0.6,
    batch_per_device: int = 32,
    seed: int = 0,
):
    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("data",))
    batch_size = batch_per_device * len(devices)
    x, y = make_data(jax.random.key(seed), 16 * batch_size)

    with jax.set_mesh(mesh):
        model = Classifier(x.shape[1], 4, nnx.Rngs(seed))
        optimizer = nnx.Optimizer(
            model,
            optax.chain(floodax.flood(flood_level), optax.adam(1e-2)),
            wrt=nnx.Param,
        )
        replicated = NamedSharding(mesh, P())
        nnx.update(optimizer, jax.device_put(nnx.state(optimizer), replicated))
        nnx.update(model, jax.device_put(nnx.state(model), replicated))
        batch_sharding = NamedSharding(mesh, P("data"))

        @nnx.jit
        def train_step(model, optimizer, xb, yb):
            def loss_fn(model):
                logits = model(xb)
                return optax.softmax_cross_entropy_with_integer_labels(
                    logits, yb
                ).mean()

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads, value=loss)
            return loss

        losses = []
        for step in range(steps):
            start = (step * batch_size) % x.shape[0]
            xb = jax.device_put(x[start : start + batch_size], batch_sharding)
            yb = jax.device_put(y[start : start + batch_size], batch_sharding)
            losses.append(float(train_step(model, optimizer, xb, yb)))

    flood_state = optimizer.opt_state[0]
    share = int(flood_state.ascent_count[...]) / int(flood_state.count[...])
    print(
        f"{len(devices)} {devices[0].platform} device(s), global batch {batch_size}: "
        f"loss {losses[0]:.3f} -> {sum(losses[-20:]) / 20:.3f} (flood level "
        f"{flood_level}), {share:.0%} of steps ascended"
    )
    return losses, share, xb.sharding


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--flood-level", type=float, default=0.6)
    args = parser.parse_args()
    main(args.steps, args.flood_level)
