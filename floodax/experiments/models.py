"""The flooding paper's MLP in Flax NNX."""

from __future__ import annotations

import itertools

import jax
from flax import nnx


class MLP(nnx.Module):
    """Hidden layers of ``linear (no bias) → batch norm → ReLU``, then a
    linear output: the paper's synthetic-data model (4 × 500 units).

    Args:
      in_features: input dimension.
      num_classes: number of output logits.
      width: units per hidden layer (paper: 500).
      depth: number of hidden layers (paper: 4).
      rngs: ``nnx.Rngs`` for the initialisation.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from floodax.experiments import MLP
      >>> model = MLP(2, 2, width=16, rngs=nnx.Rngs(0))
      >>> print(model(jnp.ones((3, 2))).shape)
      (3, 2)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        width: int = 500,
        depth: int = 4,
        rngs: nnx.Rngs,
    ):
        if width < 1 or depth < 1:
            raise ValueError(f"`width` and `depth` must be >= 1, got {width}, {depth}.")
        sizes = [in_features] + [width] * depth
        self.linears = nnx.List(
            [
                nnx.Linear(a, b, use_bias=False, rngs=rngs)
                for a, b in itertools.pairwise(sizes)
            ]
        )
        self.norms = nnx.List([nnx.BatchNorm(width, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for linear, norm in zip(self.linears, self.norms, strict=True):
            x = jax.nn.relu(norm(linear(x)))
        return self.out(x)
