"""Reading flooding's bookkeeping out of any optax state, for logging."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from floodax._flooding import FloodState


def _is_flood(x: Any) -> bool:
    return isinstance(x, FloodState)


def _is_injected_flood(x: Any) -> bool:
    inner = getattr(x, "inner_state", None)
    return isinstance(getattr(x, "hyperparams", None), dict) and _is_flood(inner)


def _unwrap(x: Any) -> Any:
    """Flax NNX keeps optimizer state in variables; take their values."""
    return x[...] if hasattr(x, "get_value") else x


def flood_stats(opt_state: Any) -> dict[str, jax.Array]:
    """The step count, ascents, their share and the flood level, from a state.

    Finds the state of the :func:`flood` transformation anywhere inside an
    optax state (a chain, ``optax.inject_hyperparams``, ``optax.MultiSteps``
    or :func:`multi_steps`, ``optax.masked``, a Flax NNX optimizer's
    ``opt_state``), as ``optax.tree.get`` finds a named state. Pure and
    jit-compatible: the values are arrays, ready for a metrics logger.

    Args:
      opt_state: an optimizer state containing exactly one
        :class:`FloodState`.

    Returns:
      ``{"count", "ascent_count", "ascent_share"}`` and, when the level is
      injected with ``optax.inject_hyperparams(floodax.flood)``, its current
      ``"flood_level"``.

    Raises:
      ValueError: no flood state, or more than one (pass the part you mean).

    Examples:
      >>> import jax.numpy as jnp, optax, floodax
      >>> tx = optax.chain(
      ...     optax.inject_hyperparams(floodax.flood)(flood_level=0.5), optax.sgd(0.1))
      >>> state = tx.init(jnp.zeros(2))
      >>> for loss in (0.9, 0.4, 0.3, 0.6):
      ...   _, state = tx.update(jnp.ones(2), state, value=jnp.float32(loss))
      >>> stats = floodax.flood_stats(state)
      >>> print({k: round(float(v), 2) for k, v in stats.items()})
      {'count': 4.0, 'ascent_count': 2.0, 'ascent_share': 0.5, 'flood_level': 0.5}
    """
    is_node = lambda x: _is_flood(x) or _is_injected_flood(x)  # noqa: E731
    found = [
        leaf for leaf in jax.tree.leaves(opt_state, is_leaf=is_node) if is_node(leaf)
    ]
    if not found:
        raise ValueError(
            "`opt_state` holds no floodax.flood state: pass the state of an "
            "optimizer built with floodax.flood (or optax.inject_hyperparams("
            "floodax.flood))."
        )
    if len(found) > 1:
        raise ValueError(
            f"`opt_state` holds {len(found)} floodax.flood states; pass the part "
            "of the state that holds the one to report."
        )
    node = found[0]
    flood = node.inner_state if _is_injected_flood(node) else node
    count = jnp.asarray(_unwrap(flood.count))
    ascents = jnp.asarray(_unwrap(flood.ascent_count))
    stats = {
        "count": count,
        "ascent_count": ascents,
        "ascent_share": ascents / jnp.maximum(count, 1),
    }
    if _is_injected_flood(node):
        stats["flood_level"] = jnp.asarray(_unwrap(node.hyperparams["flood_level"]))
    return stats
