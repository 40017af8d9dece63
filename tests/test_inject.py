"""Schedules give the same updates with and without ``optax.inject_hyperparams``.

``inject_hyperparams`` evaluates a schedule at its own update count and hands
the value to the transformation; a transformation that evaluated the same
schedule at another count (the pair index, say) would silently train with
other rates once injected. Every floodax transformation that takes a schedule
is run both ways here, in a jitted loop that carries the state, as users
write it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax

STEPS = 12
PARAMS = jnp.array([0.7, -1.3])


def _loss(p, k):
    # A different mini-batch each step: the loss and gradient vary with k.
    return jnp.sum((p - 0.1 * k) ** 2 * jnp.array([1.0, 3.0])) + 0.2 * jnp.sum(p**4)


def _run(tx, *, value=False, value_fn=False, tail=None):
    """The updates of ``STEPS`` jitted steps of ``tx`` (then ``tail``, an
    optimizer for a transformation that does not scale), state carried."""
    if tail is not None:
        tx = optax.chain(tx, tail)

    @jax.jit
    def step(p, state, k):
        loss_fn = functools.partial(_loss, k=k)
        loss, grads = jax.value_and_grad(loss_fn)(p)
        extra = {}
        if value:
            extra["value"] = loss
        if value_fn:
            extra["value_fn"] = loss_fn
        updates, state = tx.update(grads, state, p, **extra)
        return optax.apply_updates(p, updates), state, updates

    p, state, out = PARAMS, tx.init(PARAMS), []
    for k in range(STEPS):
        p, state, updates = step(p, state, jnp.float32(k))
        out.append(updates)
    return np.stack(out)


ASCENT = optax.piecewise_constant_schedule(0.1, {1: 0.5})
DESCENT = optax.exponential_decay(0.4, transition_steps=3, decay_rate=0.5)
LEVEL = optax.linear_schedule(2.0, 0.5, transition_steps=8)

CASES = {
    # The case: ascent 0.05 at the first pair's ascent step either way.
    "alternate, ascent scheduled": (
        floodax.alternate,
        {"descent_rate": 0.4, "ascent_rate": ASCENT},
        {},
    ),
    "alternate, both scheduled, backstitch order, interval 3": (
        floodax.alternate,
        {
            "descent_rate": DESCENT,
            "ascent_rate": ASCENT,
            "ascent_first": True,
            "interval": 3,
        },
        {},
    ),
    "alternate within one call, interval 2": (
        floodax.alternate,
        {"descent_rate": DESCENT, "ascent_rate": ASCENT, "interval": 2},
        {"value_fn": True},
    ),
    # The radius is evaluated at SAMState.count, inject_hyperparams' count.
    "sam, radius scheduled": (
        floodax.sam,
        {"radius": DESCENT},
        {"value_fn": True, "tail": optax.sgd(0.05)},
    ),
    "gsam, radius scheduled, minimize_fp=False": (
        floodax.gsam,
        {"radius": LEVEL, "alpha": 0.5, "minimize_fp": False},
        {"value_fn": True, "tail": optax.sgd(0.05)},
    ),
    "flood, level scheduled": (
        floodax.flood,
        {"flood_level": LEVEL},
        {"value": True, "tail": optax.sgd(0.05)},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_schedule_agrees_under_inject_hyperparams(case):
    factory, kwargs, extra = CASES[case]
    static = tuple(k for k, v in kwargs.items() if isinstance(v, bool))
    plain = _run(factory(**kwargs), **extra)
    injected = _run(
        optax.inject_hyperparams(factory, static_args=static)(**kwargs), **extra
    )
    np.testing.assert_allclose(injected, plain, rtol=1e-6, atol=0)
    # The schedules matter here: constant values would give other updates.
    constants = {k: (v(0) if callable(v) else v) for k, v in kwargs.items()}
    assert not np.allclose(_run(factory(**constants), **extra), plain)


def test_alternate_first_pair_uses_the_step_count():
    # piecewise_constant_schedule(0.1, {1: 0.5}) is 0.05 from step 1 on: the
    # pair's ascent (step 1) is 0.05·g, with or without inject_hyperparams.
    g = jnp.ones(1)
    for tx in (
        floodax.alternate(0.4, ASCENT),
        optax.inject_hyperparams(floodax.alternate)(0.4, ASCENT),
    ):
        state = tx.init(g)
        first, state = tx.update(g, state)
        second, state = tx.update(g, state)
        np.testing.assert_allclose([first[0], second[0]], [-0.4, 0.05], rtol=1e-6)


def test_injected_penalty_strength_schedule_is_evaluated_per_step():
    # add_grad_norm_penalty takes a schedule only through inject_hyperparams:
    # step k must equal the penalty with the constant strength s(k).
    strength = optax.linear_schedule(0.0, 0.3, transition_steps=6)
    penalty = optax.inject_hyperparams(floodax.add_grad_norm_penalty)(strength)
    injected = _run(optax.chain(penalty, optax.scale(-0.05)), value_fn=True)
    p = PARAMS
    for k in range(STEPS):
        loss_fn = functools.partial(_loss, k=jnp.float32(k))
        expected = -0.05 * jax.grad(floodax.grad_norm_penalty(loss_fn, strength(k)))(p)
        np.testing.assert_allclose(injected[k], expected, rtol=1e-5)
        p = p + injected[k]


@pytest.mark.parametrize("every_k", [3, "schedule"])
def test_multi_steps_schedule_agrees_under_inject_hyperparams(every_k):
    # every_k_schedule is a schedule of the updates emitted (optax.MultiSteps'
    # gradient_step). inject_hyperparams would evaluate it at the micro-batch
    # count, so a schedule goes in static_args, as multi_steps documents; an
    # int is injected as an array hyperparameter.
    if every_k == "schedule":
        every_k = lambda step: jnp.where(step < 2, 2, 3)  # noqa: E731
        static = ("every_k_schedule",)
    else:
        static = ()
    inner = optax.chain(floodax.flood(1.0), optax.sgd(0.05))
    plain = _run(floodax.multi_steps(inner, every_k), value=True)
    injected = _run(
        optax.inject_hyperparams(floodax.multi_steps, static_args=static)(
            inner, every_k
        ),
        value=True,
    )
    np.testing.assert_allclose(injected, plain, rtol=1e-6, atol=0)
    emitted = np.flatnonzero(np.any(plain != 0, axis=1))
    # k = 2, 2, then 3 for the schedule of updates emitted; 3 throughout.
    np.testing.assert_array_equal(emitted, [1, 3, 6, 9] if static else [2, 5, 8, 11])
