"""The benchmark models as pure functions of their parameters.

The paper's MLP (4 × 500, batch norm in training mode) on a full batch of
Sinusoid2d, and a small CNN on scikit-learn's 8×8 digits in mini-batches.
Batch-norm statistics are computed from the batch and not carried between
steps: every configuration computes exactly the same forward pass.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from floodax.experiments import MLP, load_digits_dataset, make_synthetic


class CNN(nnx.Module):
    """Two 3×3 convolutions (16, 32 channels) and a linear layer, for 8×8 digits."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
        self.out = nnx.Linear(32 * 8 * 8, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], 8, 8, 1)
        x = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        return self.out(x.reshape(x.shape[0], -1))


class Problem(NamedTuple):
    name: str
    params: dict
    example_losses: object  # (params, x, y) -> per-example losses
    batches: list  # list of (x, y); one for full batch


def _pure(model: nnx.Module):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def example_losses(params, x, y):
        # Fresh copies of the batch statistics: batch norm writes to them.
        logits = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, rest))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    return params, example_losses


def mlp_problem(width: int = 500) -> Problem:
    data = make_synthetic("sinusoid2d", seed=0, label_noise=0.1)
    params, losses = _pure(MLP(2, 2, width=width, rngs=nnx.Rngs(0)))
    batch = (jnp.asarray(data.x_train), jnp.asarray(data.y_train))
    return Problem(
        f"MLP 4×{width}, full batch of {len(data.y_train)}", params, losses, [batch]
    )


def cnn_problem(batch_size: int = 128) -> Problem:
    data = load_digits_dataset(seed=0)
    params, losses = _pure(CNN(nnx.Rngs(0)))
    n = len(data.y_train) // batch_size * batch_size
    x, y = np.asarray(data.x_train[:n]), np.asarray(data.y_train[:n])
    batches = [
        (jnp.asarray(x[i : i + batch_size]), jnp.asarray(y[i : i + batch_size]))
        for i in range(0, n, batch_size)
    ]
    return Problem(
        f"CNN on 8×8 digits, mini-batches of {batch_size}", params, losses, batches
    )


def wide_mlp_problem(width: int, batch: int = 256, depth: int = 4) -> Problem:
    """A plain ReLU MLP 784-W×depth-10 (no batch norm) on a random
    MNIST-shaped batch: where the cost of the exact penalty's routes grows
    with the width."""
    key = jax.random.key(0)
    keys = jax.random.split(key, depth + 3)
    sizes = [784] + [width] * depth + [10]
    params = {
        f"w{i}": jax.random.normal(keys[i], (a, b)) * (2.0 / a) ** 0.5
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    }
    params.update({f"b{i}": jnp.zeros(b) for i, b in enumerate(sizes[1:])})
    x = jax.random.normal(keys[-2], (batch, 784))
    y = jax.random.randint(keys[-1], (batch,), 0, 10)

    def example_losses(params, x, y):
        h = x
        for i in range(depth):
            h = jax.nn.relu(h @ params[f"w{i}"] + params[f"b{i}"])
        logits = h @ params[f"w{depth}"] + params[f"b{depth}"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    return Problem(
        f"MLP 784-{width}×{depth}-10, batch {batch}", params, example_losses, [(x, y)]
    )
