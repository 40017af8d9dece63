"""The alternating ε1/ε2 scheme and Kaldi's backstitch, as optax transforms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from floodax import _schedules as schedules
from floodax._validation import (
    SCHEDULE_FIX,
    check_interval,
    check_matching_trees,
    check_rate_order,
    check_scalar_hyperparam,
    check_value_fn_depends,
    check_value_fn_params,
    is_traced,
    require_params,
)


class AlternateState(NamedTuple):
    """State of :func:`alternate`.

    Attributes:
      count: int32 scalar, the number of ``update`` calls so far.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> tx = floodax.alternate(0.2, 0.1)
      >>> _, state = tx.update(jnp.ones(1), tx.init(jnp.ones(1)))
      >>> print(state.count)  # the next call is the pair's ascent step
      1
    """

    count: jax.Array


def _scale(tree: optax.Updates, factor: chex.Numeric) -> optax.Updates:
    return jax.tree.map(lambda u: u * jnp.asarray(factor, u.dtype), tree)


def alternate(
    descent_rate: optax.ScalarOrSchedule,
    ascent_rate: optax.ScalarOrSchedule,
    *,
    ascent_first: bool = False,
    interval: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Alternating descent and ascent: ``-ε1·u`` and ``+ε2·u`` in turn.

    The final scaling of a chain, where ``optax.scale(-lr)`` would go. A pair
    of steps, descent with rate ``ε1`` then ascent with rate ``ε2 < ε1``,
    moves the parameters to second order like one step of rate ``ε1 − ε2``
    on ``L + ε1·ε2/(2(ε1 − ε2))·‖∇L‖²`` (see :func:`equivalent_penalty`):
    an implicit gradient-norm penalty at the cost of plain SGD.

    **Across calls** (the default), each call is one mini-batch: the first
    call of a pair returns ``-ε1·u`` and the second ``+ε2·u``.

    **Within one call**, when the loss function of the parameters is passed
    as ``value_fn``, the call takes both steps on the same mini-batch: the
    first with the incoming ``u``, the second with the gradient of
    ``value_fn`` recomputed at the intermediate point, and returns their
    combined update. With ``ascent_first=True`` this is Kaldi's backstitch
    (ascent ``+ε2·g(θ)``, then descent ``-ε1·g(θ + ε2·g(θ))``; Kaldi writes
    ``ε2 = α·lr`` and ``ε1 = (1 + α)·lr``). The recomputed gradient is the
    raw gradient of ``value_fn``: use this form with ``alternate`` alone or
    after transforms that leave the gradient as it is, since the chain's
    earlier transforms cannot be rerun at the intermediate point. An optax
    chain hands every extra argument to every member, so in a chain with
    another transform that takes ``value_fn`` (such as
    :func:`add_grad_norm_penalty`) ``alternate`` takes both steps too.

    **Order in a chain.** ``alternate`` scales whatever reaches it, so it
    goes where ``optax.scale(-lr)`` would: last, after a preconditioner that
    has no learning rate (``optax.chain(optax.scale_by_adam(),
    floodax.alternate(ε1, ε2))``), never after a complete optimizer such as
    ``optax.adam(lr)`` or ``optax.sgd(lr)``, which already ends in
    ``scale(-lr)``. After one, every step is multiplied by ``-lr·ε`` instead
    of ``-ε``: it shrinks by the factor ``lr`` and changes sign, so the
    descent step ascends (the example below shows both chains). A
    transformation in a chain sees only the updates, not what made them, so
    ``alternate`` cannot detect this order; check it where the chain is
    written.

    With ``interval=n``, a pair is followed by ``n - 1`` plain descent steps
    of rate ``ε1 − ε2`` (the pair's net rate, Kaldi's ``lr``), as in Kaldi's
    ``backstitch_training_interval``. Do not mix calls with and without
    ``value_fn`` on one state: the two forms count cycles differently
    (``n + 1`` calls a cycle across calls, ``n`` within).

    **Schedules** are evaluated at the update count ``AlternateState.count``,
    as every optax transformation and ``optax.inject_hyperparams`` evaluate
    them, so ``alternate(ε1, s)`` and
    ``optax.inject_hyperparams(alternate)(ε1, s)`` give the same updates.
    Across calls the two steps of a pair therefore see ``s(2c)`` and
    ``s(2c + 1)``. With a decaying schedule and ``ascent_first=True`` the
    ascent step then outweighs the descent step after it whenever
    ``ε1 ≈ ε2`` (``alternate(s, s, ascent_first=True)`` with
    ``s = linear_schedule(0.4, 0, 8)`` nets ``+0.05·g`` a pair: ascent),
    although ``ε1 >= ε2`` at every step. To hold the rates fixed over each
    pair, index the schedule by the pair yourself:
    ``lambda count: s(count // 2)`` (with ``interval=n``,
    ``count // (n + 1)`` for the cycle). Within one call both steps of a
    pair use the rates at that call's count.

    Args:
      descent_rate: ``ε1 >= 0``, a number, scalar array or schedule of the
        update count.
      ascent_rate: ``ε2 >= 0``, likewise; concrete rates must satisfy
        ``ε1 >= ε2`` (``ε1 == ε2`` is flooding's pair at its level).
      ascent_first: take the ascent step first (Kaldi's backstitch order).
      interval: an integer ``n >= 1`` (a Python int or an integer array,
        so ``optax.inject_hyperparams`` may change it): one pair, then
        ``n - 1`` plain descent steps.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` accepts
      ``value_fn`` (optional) and ignores other extra keyword arguments.

    Raises:
      ValueError: a concrete rate is negative, NaN or infinite; concrete
        ``ε1 < ε2``, also where schedules produce it at a concrete step
        (outside ``jit``; under ``jit`` the step is traced and scheduled
        values are trusted); ``interval`` is not a positive integer.
      TypeError: ``value_fn`` is given without ``params``, or inside
        ``optax.masked``/``optax.multi_transform`` (the within-call form
        needs the full parameters).

    Examples:
      Alternating SGD on ``L(θ) = θ²``, whose gradient is ``2θ``:

      >>> import jax.numpy as jnp, optax, floodax
      >>> tx = floodax.alternate(descent_rate=0.25, ascent_rate=0.05)
      >>> params = jnp.array([1.0])
      >>> state = tx.init(params)
      >>> for _ in range(4):
      ...   updates, state = tx.update(2 * params, state)
      ...   params = optax.apply_updates(params, updates)
      ...   print(params)
      [0.5]
      [0.55]
      [0.275]
      [0.3025]

      After a preconditioner, not after a complete optimizer, whose
      ``scale(-lr)`` turns the first (descent) step of ``-1e-3`` into an
      ascent of ``1e-3 · 1e-3``:

      >>> adam_like = optax.chain(optax.scale_by_adam(), floodax.alternate(1e-3, 1e-4))
      >>> wrong = optax.chain(optax.adam(1e-3), floodax.alternate(1e-3, 1e-4))
      >>> for tx in (adam_like, wrong):
      ...   updates, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      ...   print(f"{float(updates[0]):.1e}")
      -1.0e-03
      1.0e-06

      Kaldi's backstitch within one call:

      >>> backstitch = floodax.alternate(0.3, 0.1, ascent_first=True)
      >>> loss_fn = lambda p: jnp.sum(p ** 2)
      >>> params = jnp.array([1.0])
      >>> updates, _ = backstitch.update(
      ...     2 * params, backstitch.init(params), params, value_fn=loss_fn)
      >>> print(params + updates)  # 1 + 0.1·2 = 1.2, then 1.2 − 0.3·2.4
      [0.48]

    References:
      Wang, Peddinti, Povey and Khudanpur, "Backstitch: Counteracting
      Finite-sample Bias via Negative Steps", Interspeech 2017.
      Ishida, Yamane, Sakai, Niu and Sugiyama, "Do We Need Zero Training Loss
      After Achieving Zero Training Error?", ICML 2020.
    """
    check_scalar_hyperparam("descent_rate", descent_rate)
    check_scalar_hyperparam("ascent_rate", ascent_rate)
    check_rate_order(descent_rate, ascent_rate, strict=False)
    check_interval(interval)

    def rates(count: jax.Array) -> tuple[Any, Any]:
        eps1 = schedules.evaluate("descent_rate", descent_rate, count)
        eps2 = schedules.evaluate("ascent_rate", ascent_rate, count)
        if callable(descent_rate) or callable(ascent_rate):
            # Checked wherever the scheduled values are concrete (outside
            # jit); under jit the step count is traced and they are trusted.
            at = "" if is_traced(count) else f" at step {int(count)}"
            check_rate_order(eps1, eps2, strict=False, fix=f"{SCHEDULE_FIX}{at}")
        return eps1, eps2

    def first_and_second(eps1: Any, eps2: Any) -> tuple[Any, Any]:
        """Signed rates of the pair's first and second step."""
        if ascent_first:
            return eps2, -eps1
        return -eps1, eps2

    def init_fn(params: optax.Params) -> AlternateState:
        del params
        return AlternateState(count=jnp.zeros([], jnp.int32))

    def across_calls(updates: optax.Updates, count: jax.Array) -> optax.Updates:
        position = count % (interval + 1)
        eps1, eps2 = rates(count)
        first, second = first_and_second(eps1, eps2)
        factor = jnp.where(
            position == 0,
            first,
            jnp.where(position == 1, second, eps2 - eps1),
        )
        return _scale(updates, factor)

    def within_call(
        updates: optax.Updates,
        count: jax.Array,
        params: optax.Params,
        value_fn: Callable[[optax.Params], chex.Numeric],
    ) -> optax.Updates:
        eps1, eps2 = rates(count)
        first, second = first_and_second(eps1, eps2)

        def pair(updates: optax.Updates) -> optax.Updates:
            step = _scale(updates, first)
            middle = optax.apply_updates(params, step)
            grads = jax.grad(value_fn)(middle)
            return jax.tree.map(
                lambda s, g: (s + second * g).astype(s.dtype),
                step,
                grads,
            )

        def plain(updates: optax.Updates) -> optax.Updates:
            return _scale(updates, eps2 - eps1)

        return jax.lax.cond(count % interval == 0, pair, plain, updates)

    def update_fn(
        updates: optax.Updates,
        state: AlternateState,
        params: optax.Params | None = None,
        *,
        value_fn: Callable[[optax.Params], chex.Numeric] | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, AlternateState]:
        del extra_args
        if value_fn is None:
            new_updates = across_calls(updates, state.count)
        else:
            require_params(params, "floodax.alternate with `value_fn`")
            check_value_fn_params(
                params,
                "floodax.alternate with `value_fn`",
                "Put `floodax.alternate` outside the masked transformation (it "
                "scales every update), or call it without `value_fn` to "
                "alternate across calls.",
            )
            check_matching_trees(updates, params, "floodax.alternate")
            check_value_fn_depends(
                value_fn, params, "floodax.alternate with `value_fn`"
            )
            new_updates = within_call(updates, state.count, params, value_fn)
        return new_updates, AlternateState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
