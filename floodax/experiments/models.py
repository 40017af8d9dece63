"""The flooding paper's MLP in Flax NNX, as the authors build it in PyTorch.

The authors' model (takashiishida/flooding, ``utils/models.py``,
``mlp_model``) is four ``nn.Linear(bias=False) → nn.BatchNorm1d → ReLU``
blocks of width 500 and a linear output, with PyTorch's defaults. Two of
those defaults differ from Flax's and change the result:

* **Batch norm.** PyTorch's running statistics move by ``momentum=0.1`` per
  training step (Flax's ``nnx.BatchNorm`` by ``1 − 0.99``) and track the
  *unbiased* batch variance. Trained full-batch, a model takes one step per
  epoch, so after the paper's 200 epochs Flax's statistics would still hold
  ``0.99²⁰⁰ ≈ 13 %`` of their initial values, and inference-mode
  evaluation would use statistics the model never trained with.
* **Initialisation.** ``nn.Linear`` draws weights and biases uniformly from
  ``±1/√fan_in``; Flax's ``Linear`` draws LeCun-normal weights and zero
  biases.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

INITS = ("pytorch", "flax")
BATCH_NORMS = ("pytorch", "flax", "none")
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


class PyTorchBatchNorm(nnx.Module):
    """Batch normalisation with ``torch.nn.BatchNorm1d``'s semantics.

    In training mode it normalises with the batch mean and the biased batch
    variance, and updates the running statistics as PyTorch does:
    ``running ← (1 − momentum)·running + momentum·batch`` with the
    *unbiased* variance ``n/(n − 1)·var``. In inference mode (``.eval()``)
    it normalises with the running statistics. ``epsilon`` is added to the
    variance, as in PyTorch.

    Args:
      num_features: features of the (batch, features) input.
      momentum: PyTorch's momentum, the weight of the new batch (0.1).
      epsilon: PyTorch's ``eps`` (1e-5).
      use_running_average: inference mode; set by ``model.eval()`` and
        ``model.train()``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from floodax.experiments.models import PyTorchBatchNorm
      >>> bn = PyTorchBatchNorm(1)
      >>> y = bn(jnp.array([[1.0], [2.0], [3.0]]))  # mean 2, unbiased var 1
      >>> print(bn.mean[...], bn.var[...])           # 0.1·2, 0.9·1 + 0.1·1
      [0.2] [1.]
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.1,
        epsilon: float = 1e-5,
        use_running_average: bool = False,
    ):
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            n = x.shape[0]
            if n < 2:
                raise ValueError(
                    "PyTorchBatchNorm needs more than one example per batch in "
                    "training mode (the unbiased variance divides by n − 1), as "
                    "PyTorch's BatchNorm1d does; use a larger batch or .eval()."
                )
            mean = jnp.mean(x, axis=0)
            var = jnp.mean(jnp.square(x - mean), axis=0)
            m = self.momentum
            self.mean[...] = jax.lax.stop_gradient((1 - m) * self.mean[...] + m * mean)
            self.var[...] = jax.lax.stop_gradient(
                (1 - m) * self.var[...] + m * var * (n / (n - 1))
            )
        normalised = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        return normalised * self.scale[...] + self.bias[...]


def pytorch_linear_init(fan_in: int) -> Any:
    """``nn.Linear``'s default: uniform on ``±1/√fan_in`` (weights and biases).

    PyTorch initialises the weight with ``kaiming_uniform_(a=√5)``, whose
    bound is ``√(6/((1 + 5)·fan_in)) = 1/√fan_in``, and the bias uniformly
    within the same bound.
    """
    bound = 1.0 / fan_in**0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class MLP(nnx.Module):
    """Hidden layers of ``linear (no bias) → batch norm → ReLU``, then a
    linear output: the paper's synthetic-data model (4 × 500 units).

    Built as the authors build it in PyTorch (``utils/models.py``) unless
    told otherwise; the alternatives are named options, for comparison with
    plain Flax models.

    Args:
      in_features: input dimension.
      num_classes: number of output logits.
      width: units per hidden layer (paper: 500).
      depth: number of hidden layers (paper: 4).
      init: ``"pytorch"`` (the default, the authors'): weights and biases
        uniform on ``±1/√fan_in``; ``"flax"``: Flax's LeCun-normal weights and
        zero biases.
      batch_norm: ``"pytorch"`` (the default, the authors'):
        :class:`PyTorchBatchNorm`, momentum 0.1 and unbiased running
        variance; ``"flax"``: ``nnx.BatchNorm`` with its defaults (momentum
        0.99, biased running variance), whose running statistics lag far
        behind on full-batch training; ``"none"``: no normalisation (the
        hidden linear layers then have biases).
      activation: ``"relu"`` (the paper's) or ``"tanh"``: with
        ``batch_norm="none"`` a smooth network, on which second-order
        expansions of the loss hold (a ReLU network's loss is only piecewise
        quadratic).
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
        init: str = "pytorch",
        batch_norm: str = "pytorch",
        activation: str = "relu",
        rngs: nnx.Rngs,
    ):
        if width < 1 or depth < 1:
            raise ValueError(f"`width` and `depth` must be >= 1, got {width}, {depth}.")
        if init not in INITS:
            raise ValueError(f"`init` must be one of {INITS}, got {init!r}.")
        if batch_norm not in BATCH_NORMS:
            raise ValueError(
                f"`batch_norm` must be one of {BATCH_NORMS}, got {batch_norm!r}."
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"`activation` must be one of {tuple(ACTIVATIONS)}, got {activation!r}."
            )
        self.activation = activation
        sizes = [in_features] + [width] * depth

        def linear(a: int, b: int, use_bias: bool) -> nnx.Linear:
            if init == "flax":
                return nnx.Linear(a, b, use_bias=use_bias, rngs=rngs)
            uniform = pytorch_linear_init(a)
            return nnx.Linear(
                a,
                b,
                use_bias=use_bias,
                kernel_init=uniform,
                bias_init=uniform,
                rngs=rngs,
            )

        def norm() -> Any:
            if batch_norm == "flax":
                return nnx.BatchNorm(width, rngs=rngs)
            if batch_norm == "none":
                return None
            return PyTorchBatchNorm(width)

        # Without normalisation the hidden layers need their biases back.
        bias = batch_norm == "none"
        self.linears = nnx.List(
            [linear(a, b, use_bias=bias) for a, b in itertools.pairwise(sizes)]
        )
        self.norms = nnx.List([norm() for _ in range(depth)])
        self.out = linear(width, num_classes, use_bias=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        activation = ACTIVATIONS[self.activation]
        for linear, norm in zip(self.linears, self.norms, strict=True):
            h = linear(x)
            x = activation(h if norm is None else norm(h))
        return self.out(x)
