"""Flax Linen: a ``TrainState`` that hands optax's extra arguments to ``tx.update``.

Linen's ``flax.training.train_state.TrainState.apply_gradients`` calls
``tx.update(grads, opt_state, params)`` with nothing else, so a chain that
starts with :func:`floodax.flood` (which needs the loss as ``value``) or
:func:`floodax.add_grad_norm_penalty` (which needs ``value_fn``) cannot get
them. :class:`TrainState` is the same dataclass with an ``apply_gradients``
that forwards ``value``, ``value_fn`` and any other extra argument. Needs
Flax (the ``demo`` extra: ``pip install -e ".[demo]"`` from a checkout).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from floodax._optional import missing_flax

try:
    from flax.training import train_state
except ImportError as error:
    raise missing_flax("floodax.linen") from error

__all__ = ["TrainState", "value_and_grad"]

_OVERWRITE_WITH_GRADIENT = "_overwrite_with_gradient"


class TrainState(train_state.TrainState):
    """``flax.training.train_state.TrainState`` that forwards extra arguments.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, floodax
      >>> from flax import linen as nn
      >>> from floodax.linen import TrainState
      >>> net = nn.Dense(1)
      >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
      >>> variables = net.init(jax.random.key(0), x)
      >>> state = TrainState.create(apply_fn=net.apply, params=variables["params"],
      ...                           tx=optax.chain(floodax.flood(0.5), optax.sgd(0.1)))
      >>> def loss_fn(params):
      ...     return jnp.mean((state.apply_fn({"params": params}, x) - y) ** 2)
      >>> loss, grads = jax.value_and_grad(loss_fn)(state.params)
      >>> state = state.apply_gradients(grads=grads, value=loss)
      >>> print(int(floodax.flood_stats(state.opt_state)["count"]))
      1
    """

    def apply_gradients(
        self,
        *,
        grads: Any,
        value: Any = None,
        value_fn: Callable[[Any], Any] | None = None,
        extra_args: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> TrainState:
        """Like Linen's, with ``value``, ``value_fn`` and ``extra_args``
        passed to ``tx.update`` (``None`` ones are left out).

        Args:
          grads: gradients with the pytree structure of ``.params``.
          value: the mini-batch loss, for :func:`floodax.flood`.
          value_fn: the loss as a function of the optimised parameters (those
            of ``.params``, or ``.params["params"]`` when an
            overwrite-with-gradient collection is present), for
            :func:`floodax.add_grad_norm_penalty` and :func:`floodax.alternate`.
          extra_args: any other keyword arguments for ``tx.update``.
          **kwargs: dataclass attributes to ``.replace()``, as in Linen.

        Returns:
          The updated state, ``step`` incremented by one.
        """
        forwarded = dict(extra_args or {})
        if value is not None:
            forwarded["value"] = value
        if value_fn is not None:
            forwarded["value_fn"] = value_fn
        overwrite = _OVERWRITE_WITH_GRADIENT in grads
        grads_with_opt = grads["params"] if overwrite else grads
        params_with_opt = self.params["params"] if overwrite else self.params
        updates, new_opt_state = self.tx.update(
            grads_with_opt, self.opt_state, params_with_opt, **forwarded
        )
        new_params_with_opt = optax.apply_updates(params_with_opt, updates)
        new_params = (
            {
                "params": new_params_with_opt,
                _OVERWRITE_WITH_GRADIENT: grads[_OVERWRITE_WITH_GRADIENT],
            }
            if overwrite
            else new_params_with_opt
        )
        return self.replace(
            step=self.step + 1, params=new_params, opt_state=new_opt_state, **kwargs
        )


def value_and_grad(
    loss_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    has_aux: bool = False,
) -> tuple[Any, Any, Callable[[Any], Any]]:
    """``jax.value_and_grad(loss_fn)(params, *args)``, and its ``value_fn``.

    With batch norm, Linen's ``loss_fn`` calls
    ``apply({"params": params, "batch_stats": batch_stats}, x, train=True,
    mutable=["batch_stats"])`` and returns the new statistics as ``aux``
    (``has_aux=True``). The clean pass here returns them, to keep with
    ``.replace(batch_stats=...)``; ``value_fn(p)`` returns ``loss_fn(p,
    *args)``'s loss alone, so the statistics the extra passes of
    :func:`floodax.add_grad_norm_penalty` or :func:`floodax.alternate`
    compute are thrown away, and every pass starts from the same
    ``batch_stats`` (and the same dropout key, if ``loss_fn`` closes over
    one).

    Args:
      loss_fn: ``loss_fn(params, *args)``, a real scalar loss, or
        ``(loss, aux)`` with ``has_aux=True``.
      params: the parameters to differentiate (``state.params``).
      *args: the batch and anything else ``loss_fn`` takes after them.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
      ``(value, grads, value_fn)``: ``loss_fn``'s output from the clean pass,
      its gradient with respect to ``params``, and ``value_fn``, the loss
      alone of the parameters it is given, for
      ``TrainState.apply_gradients(grads=grads, value_fn=value_fn)``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, floodax
      >>> from flax import linen as nn
      >>> from floodax.linen import TrainState, value_and_grad
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.BatchNorm(use_running_average=False)(nn.Dense(1)(x))[:, 0]
      >>> x, y = jnp.array([[1.0, 2.0], [0.0, -1.0]]), jnp.array([1.0, 0.0])
      >>> variables = Net().init(jax.random.key(0), x)
      >>> class BatchNormState(TrainState):
      ...     batch_stats: dict
      >>> state = BatchNormState.create(
      ...     apply_fn=Net().apply, params=variables["params"],
      ...     batch_stats=variables["batch_stats"],
      ...     tx=optax.chain(floodax.add_grad_norm_penalty(0.1), optax.sgd(0.1)))
      >>> def loss_fn(params, x, y):
      ...     prediction, updates = state.apply_fn(
      ...         {"params": params, "batch_stats": state.batch_stats}, x,
      ...         mutable=["batch_stats"])
      ...     return jnp.mean((prediction - y) ** 2), updates["batch_stats"]
      >>> (loss, batch_stats), grads, value_fn = value_and_grad(
      ...     loss_fn, state.params, x, y, has_aux=True)
      >>> state = state.apply_gradients(grads=grads, value_fn=value_fn,
      ...                               batch_stats=batch_stats)
      >>> print(int(state.step))
      1
    """
    value, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(params, *args)

    def value_fn(p: Any) -> Any:
        out = loss_fn(p, *args)
        return out[0] if has_aux else out

    return value, grads, value_fn
