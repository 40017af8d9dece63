"""Flax Linen: a ``TrainState`` that hands optax's extra arguments to ``tx.update``.

Linen's ``flax.training.train_state.TrainState.apply_gradients`` calls
``tx.update(grads, opt_state, params)`` with nothing else, so a chain that
starts with :func:`floodax.flood` (which needs the loss as ``value``) or
:func:`floodax.add_grad_norm_penalty` (which needs ``value_fn``) cannot get
them. :class:`TrainState` is the same dataclass with an ``apply_gradients``
that forwards ``value``, ``value_fn`` and any other extra argument. Needs
Flax (``pip install 'floodax[demo]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optax
from flax.training import train_state

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
