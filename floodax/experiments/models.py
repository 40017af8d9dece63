"""The flooding paper's MLP in Flax NNX, as the authors build it in PyTorch,
a small CNN for image and signal data, and :func:`make_model` to build either
for a :class:`~floodax.experiments.Dataset`.

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
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from floodax.experiments.datasets import Dataset

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
    within the same bound. ``nn.Conv1d`` and ``nn.Conv2d`` do the same with
    ``fan_in = in_channels·prod(kernel_size)``.
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


class CNN(nnx.Module):
    """Convolutions, each ``conv → ReLU → 2× max pooling``, then a linear
    output: a small convolutional network for images and signals.

    The number of spatial axes follows ``image_shape``: ``(28, 28, 1)``
    (MNIST) gives 3×3 convolutions over two axes, ``(40, 1)`` (MNIST-1D)
    size-3 convolutions over one. The convolutions pad to keep their input's
    size (``"SAME"``) and have ``width`` output channels; each pooling halves
    every spatial axis, rounding down, so every spatial size must be at
    least ``2**depth``. The network takes the flat features of a
    :class:`~floodax.experiments.Dataset`, ``(n, prod(image_shape))``, and
    folds them into ``(n, *image_shape)`` (an input already of that shape is
    taken as is). No normalisation layers: ``.train()`` and ``.eval()``
    change nothing.

    Args:
      image_shape: one example's shape, spatial axes first, channels last
        (a dataset's ``image_shape``).
      num_classes: number of output logits.
      width: output channels of every convolution (32).
      depth: number of convolutions (2).
      kernel_size: the kernel's size along every spatial axis (3).
      init: ``"pytorch"`` (the default, as :class:`MLP`'s): kernels and
        biases uniform on ``±1/√fan_in``, PyTorch's ``nn.Conv2d`` and
        ``nn.Linear`` default; ``"flax"``: Flax's LeCun-normal kernels and
        zero biases.
      rngs: ``nnx.Rngs`` for the initialisation.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from floodax.experiments import CNN
      >>> model = CNN((28, 28, 1), 10, width=8, rngs=nnx.Rngs(0))
      >>> print(model(jnp.ones((3, 784))).shape)
      (3, 10)
      >>> print(model.out.kernel.shape)  # 8 channels of 7×7 after two poolings
      (392, 10)
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        num_classes: int,
        *,
        width: int = 32,
        depth: int = 2,
        kernel_size: int = 3,
        init: str = "pytorch",
        rngs: nnx.Rngs,
    ):
        if len(image_shape) < 2 or not all(
            isinstance(s, numbers.Integral) and s >= 1 for s in image_shape
        ):
            raise ValueError(
                "`image_shape` must be one example's shape, one or more spatial "
                f"sizes then the channels, all positive integers; got {image_shape}."
            )
        image_shape = tuple(int(s) for s in image_shape)
        if width < 1 or depth < 1 or kernel_size < 1:
            raise ValueError(
                "`width`, `depth` and `kernel_size` must be >= 1, got "
                f"{width}, {depth}, {kernel_size}."
            )
        if init not in INITS:
            raise ValueError(f"`init` must be one of {INITS}, got {init!r}.")
        *spatial, channels = image_shape
        if min(spatial) < 2**depth:
            raise ValueError(
                f"`depth` {depth} halves every spatial axis {depth} times, but "
                f"`image_shape` {image_shape} has a spatial size below "
                f"2**{depth} = {2**depth}; lower `depth`."
            )
        self.image_shape = image_shape
        kernel = (kernel_size,) * len(spatial)

        def options(fan_in: int) -> dict[str, Any]:
            if init == "flax":
                return {}
            uniform = pytorch_linear_init(fan_in)
            return {"kernel_init": uniform, "bias_init": uniform}

        convs = []
        for c in [channels] + [width] * (depth - 1):
            fan_in = c * math.prod(kernel)
            convs.append(
                nnx.Conv(c, width, kernel, padding="SAME", rngs=rngs, **options(fan_in))
            )
        self.convs = nnx.List(convs)
        features = width * math.prod(s // 2**depth for s in spatial)
        self.out = nnx.Linear(features, num_classes, rngs=rngs, **options(features))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[1:] != self.image_shape:
            if x.ndim != 2 or x.shape[1] != math.prod(self.image_shape):
                raise ValueError(
                    f"CNN for examples of shape {self.image_shape} got input of "
                    f"shape {x.shape}; give (batch, {math.prod(self.image_shape)}) "
                    f"flat features or (batch, *{self.image_shape})."
                )
            x = x.reshape(x.shape[0], *self.image_shape)
        window = (2,) * (len(self.image_shape) - 1)
        for conv in self.convs:
            x = nnx.max_pool(jax.nn.relu(conv(x)), window, strides=window)
        return self.out(x.reshape(x.shape[0], -1))


MODEL_KINDS = ("mlp", "cnn")


def make_model(
    data: Dataset,
    kind: str = "mlp",
    *,
    width: int | None = None,
    depth: int | None = None,
    seed: int = 0,
    **options: Any,
) -> MLP | CNN:
    """The model for ``data``: an :class:`MLP` on its flat features or a
    :class:`CNN` on its ``image_shape``, with ``num_classes`` outputs.

    Args:
      data: the dataset (only its shapes and ``num_classes`` are read).
      kind: ``"mlp"`` or ``"cnn"`` (which needs ``data.image_shape``: mnist,
        mnist1d, digits).
      width: the MLP's hidden units or the CNN's channels; ``None`` means the
        model's default (500 and 32).
      depth: the MLP's hidden layers or the CNN's convolutions; ``None``
        means the model's default (4 and 2).
      seed: seeds ``nnx.Rngs`` for the initialisation.
      **options: passed on to the model (``init``, ``batch_norm``,
        ``activation`` for the MLP; ``init``, ``kernel_size`` for the CNN).

    Examples:
      >>> from floodax.experiments import load_digits_dataset, make_model
      >>> data = load_digits_dataset(seed=0)
      >>> cnn = make_model(data, "cnn", width=4, depth=2, seed=0)
      >>> print(cnn(data.x_test[:5]).shape, cnn.out.kernel.shape)  # 4·2·2 inputs
      (5, 10) (16, 10)
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"`kind` must be one of {MODEL_KINDS}, got {kind!r}.")
    sizes = {k: v for k, v in (("width", width), ("depth", depth)) if v is not None}
    rngs = nnx.Rngs(seed)
    if kind == "mlp":
        return MLP(
            data.x_train.shape[1], data.num_classes, **sizes, **options, rngs=rngs
        )
    if data.image_shape is None:
        raise ValueError(
            f"`kind` 'cnn' needs a dataset with an image_shape; {data.name!r} has "
            "none (its features have no spatial layout): use kind='mlp'."
        )
    return CNN(data.image_shape, data.num_classes, **sizes, **options, rngs=rngs)
