"""Flax NNX: the loss, its gradient and ``value_fn`` from one training step.

:func:`floodax.add_grad_norm_penalty`, :func:`floodax.alternate` and the
other transformations that take ``value_fn`` evaluate the loss again at
moved parameters. In Flax NNX those extra forward passes must not touch the
model: a batch-norm layer would update its running statistics once per pass
and a dropout layer would advance its random stream, and each extra pass
must see the same dropout mask as the gradient it corrects.
:func:`value_and_grad` takes the clean gradient on the model itself (the one
pass that updates its state) and returns a ``value_fn`` that runs each extra
pass on a copy of the model as it was before that pass. Needs Flax (the
``demo`` extra: ``pip install -e ".[demo]"`` from a checkout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from floodax._optional import missing_flax

try:
    from flax import nnx
except ImportError as error:
    raise missing_flax("floodax.nnx") from error

__all__ = ["value_and_grad"]

# The values of a State's Variables: `nnx.as_pure` since Flax 0.12.1 (or so),
# `nnx.pure` in Flax 0.12.0, the minimum floodax supports.
_as_pure = getattr(nnx, "as_pure", None) or nnx.pure


def value_and_grad(
    loss_fn: Callable[..., Any],
    model: Any,
    *args: Any,
    wrt: Any = nnx.Param,
    has_aux: bool = False,
) -> tuple[Any, Any, Callable[[Any], Any]]:
    """``nnx.value_and_grad(loss_fn)(model, *args)``, and its ``value_fn``.

    Takes ``nnx.split(model, wrt, ...)`` first and keeps the values of
    everything but the ``wrt`` parameters (batch statistics, random-stream
    counters) as they are now. Then runs ``loss_fn(model, *args)`` once on the
    model itself, differentiated with respect to ``wrt``: this clean pass is
    the only one that updates the model's batch statistics and advances its
    random streams. The returned ``value_fn(params)`` is
    ``loss_fn(nnx.merge(graphdef, params, rest, copy=True), *args)`` with the
    ``rest`` kept before the clean pass: every call runs on a fresh copy of
    the model as the clean pass found it, so it sees the clean pass's dropout
    masks (random streams kept in the model; an ``nnx.Rngs`` passed in
    ``*args`` is not copied, so its masks differ), computes the same loss
    function, and whatever it changes is
    thrown away. Pass it to ``optimizer.update(model, grads, value_fn=...)``
    (NNX forwards it to ``tx.update``) within the same step.

    Args:
      loss_fn: ``loss_fn(model, *args)``, a real scalar loss, or
        ``(loss, aux)`` with ``has_aux=True``.
      model: the ``nnx.Module`` to train.
      *args: the batch and anything else ``loss_fn`` takes after the model.
      wrt: the filter of the parameters to differentiate, the ``wrt`` of the
        ``nnx.Optimizer``; ``nnx.Param`` by default.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``; ``value_fn``
        returns the loss alone.

    Returns:
      ``(value, grads, value_fn)``: ``loss_fn``'s output from the clean pass
      (``(loss, aux)`` with ``has_aux``), the gradient as an ``nnx.State`` of
      the ``wrt`` parameters, and ``value_fn``, the loss of the parameters it
      is given (an ``nnx.State`` of the ``wrt`` parameters, as
      ``optimizer.update`` passes them).

    Examples:
      >>> import jax.numpy as jnp, optax, floodax, floodax.nnx
      >>> from flax import nnx
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.dense = nnx.Linear(2, 1, rngs=rngs)
      ...         self.norm = nnx.BatchNorm(1, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.norm(self.dense(x))[:, 0]
      >>> def loss_fn(model, x, y):
      ...     return jnp.mean((model(x) - y) ** 2)
      >>> model = Net(nnx.Rngs(0))
      >>> tx = optax.chain(floodax.add_grad_norm_penalty(0.1), optax.sgd(0.1))
      >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
      >>> @nnx.jit
      ... def train_step(model, optimizer, x, y):
      ...     loss, grads, value_fn = floodax.nnx.value_and_grad(loss_fn, model, x, y)
      ...     optimizer.update(model, grads, value_fn=value_fn)
      ...     return loss
      >>> x, y = jnp.array([[1.0, 2.0], [0.0, -1.0]]), jnp.array([1.0, 0.0])
      >>> clean_mean = jnp.mean(model.dense(x))  # what the clean pass normalises
      >>> loss = train_step(model, optimizer, x, y)
      >>> # One update of the running mean (momentum 0.99), from the clean pass:
      >>> print(bool(jnp.allclose(model.norm.mean[...], 0.01 * clean_mean)))
      True
    """
    if isinstance(loss_fn, nnx.Module) or not callable(loss_fn):
        raise TypeError(
            "floodax.nnx.value_and_grad: `loss_fn` must be a function "
            f"`loss_fn(model, *args)`, got {type(loss_fn).__name__}; the model "
            "comes second: `value_and_grad(loss_fn, model, batch)`."
        )
    if not isinstance(model, nnx.Module):
        raise TypeError(
            "floodax.nnx.value_and_grad: `model` must be an `nnx.Module`, got "
            f"{type(model).__name__}; for a pytree of parameters use "
            "`jax.value_and_grad(loss_fn)(params, batch)` and "
            "`value_fn=lambda p: loss_fn(p, batch)`."
        )
    graphdef, _, rest = nnx.split(model, wrt, ...)
    # nnx.split's State holds the model's own Variables, which the clean pass
    # updates in place; the pure arrays are the values before it. copy=True
    # below also keeps a `params` of Variables (the model's own nnx.State,
    # rather than optimizer.update's arrays) out of the copies.
    rest = _as_pure(rest)

    def value_fn(params: Any) -> Any:
        out = loss_fn(nnx.merge(graphdef, params, rest, copy=True), *args)
        return out[0] if has_aux else out

    value, grads = nnx.value_and_grad(
        loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=has_aux
    )(model, *args)
    return value, grads, value_fn
