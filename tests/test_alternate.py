"""Tests of the alternating ε1/ε2 scheme and backstitch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax
from tests.helpers import TraceCounter, assert_trees_allclose, mlp_loss


def _run_across(tx, grads_seq):
    state = tx.init(grads_seq[0])
    out = []
    for g in grads_seq:
        u, state = tx.update(g, state)
        out.append(u)
    return out, state


def _grads_seq(n, dtype=jnp.float64):
    return [jnp.array([1.0 + k, -2.0 * k + 0.5], dtype) for k in range(n)]


def test_across_calls_descent_then_ascent(x64):
    grads = _grads_seq(6)
    out, state = _run_across(floodax.alternate(0.3, 0.1), grads)
    for k, (u, g) in enumerate(zip(out, grads, strict=True)):
        factor = -0.3 if k % 2 == 0 else 0.1
        np.testing.assert_allclose(u, factor * g, rtol=1e-15)
    assert int(state.count) == 6


def test_across_calls_ascent_first(x64):
    grads = _grads_seq(4)
    out, _ = _run_across(floodax.alternate(0.3, 0.1, ascent_first=True), grads)
    for k, (u, g) in enumerate(zip(out, grads, strict=True)):
        factor = 0.1 if k % 2 == 0 else -0.3
        np.testing.assert_allclose(u, factor * g, rtol=1e-15)


def test_across_calls_schedules_of_update_count(x64):
    descent = optax.exponential_decay(0.4, transition_steps=1, decay_rate=0.5)
    ascent = optax.linear_schedule(0.1, 0.0, transition_steps=4)
    grads = _grads_seq(8)
    out, _ = _run_across(floodax.alternate(descent, ascent), grads)
    for k, (u, g) in enumerate(zip(out, grads, strict=True)):
        count = jnp.int32(k)  # the schedule sees the int32 count, as in optax
        factor = -descent(count) if k % 2 == 0 else ascent(count)
        np.testing.assert_allclose(u, factor * g, rtol=1e-12)


@pytest.mark.parametrize("interval", [1, 3])
def test_pair_indexed_schedule_recipe_holds_rates_over_a_cycle(x64, interval):
    # The docstring's recipe: index the schedule by the cycle yourself.
    ascent = optax.piecewise_constant_schedule(0.1, {1: 0.5, 3: 0.5})
    descent = 0.5
    tx = floodax.alternate(
        descent, lambda count: ascent(count // (interval + 1)), interval=interval
    )
    grads = _grads_seq(4 * (interval + 1))
    out, _ = _run_across(tx, grads)
    for k, (u, g) in enumerate(zip(out, grads, strict=True)):
        cycle, position = divmod(k, interval + 1)
        eps2 = float(ascent(cycle))
        factor = [-descent, eps2][position] if position < 2 else eps2 - descent
        np.testing.assert_allclose(u, factor * g, rtol=1e-12)


@pytest.mark.parametrize("ascent_first", [False, True])
def test_across_calls_interval(x64, ascent_first):
    # interval=3: a pair, then two plain steps of rate ε1 − ε2, repeated.
    e1, e2 = 0.5, 0.2
    grads = _grads_seq(10)
    out, _ = _run_across(
        floodax.alternate(e1, e2, ascent_first=ascent_first, interval=3), grads
    )
    pair = [e2, -e1] if ascent_first else [-e1, e2]
    expected = ((pair + [-(e1 - e2)] * 2) * 3)[: len(grads)]
    for u, g, factor in zip(out, grads, expected, strict=True):
        np.testing.assert_allclose(u, factor * g, rtol=1e-15)


def test_alternate_after_adam_scales_the_direction(x64):
    grads = _grads_seq(4)
    adam = optax.scale_by_adam()
    tx = optax.chain(optax.scale_by_adam(), floodax.alternate(1e-2, 1e-3))
    out, _ = _run_across(tx, grads)
    adam_out, _ = _run_across(adam, grads)
    for k, (u, a) in enumerate(zip(out, adam_out, strict=True)):
        np.testing.assert_allclose(u, (-1e-2 if k % 2 == 0 else 1e-3) * a, rtol=1e-14)


def _explicit_pair(loss_fn, params, e1, e2, ascent_first):
    """The two steps written out by hand."""
    first, second = (e2, -e1) if ascent_first else (-e1, e2)
    middle = jax.tree.map(lambda p, g: p + first * g, params, jax.grad(loss_fn)(params))
    return jax.tree.map(lambda p, g: p + second * g, middle, jax.grad(loss_fn)(middle))


@pytest.mark.parametrize("ascent_first", [False, True])
def test_within_call_equals_two_explicit_steps(mlp, ascent_first):
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    tx = floodax.alternate(0.4, 0.15, ascent_first=ascent_first)
    state = tx.init(params)
    p = params
    for _ in range(3):
        updates, state = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=loss_fn))(
            jax.grad(loss_fn)(p), state, p
        )
        expected = _explicit_pair(loss_fn, p, 0.4, 0.15, ascent_first)
        p = optax.apply_updates(p, updates)
        assert_trees_allclose(p, expected, rtol=1e-13)
    assert int(state.count) == 3


def test_within_call_interval_alternates_pair_and_plain(mlp):
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    e1, e2 = 0.4, 0.15
    tx = floodax.alternate(e1, e2, ascent_first=True, interval=2)
    state, p = tx.init(params), params
    for k in range(4):
        g = jax.grad(loss_fn)(p)
        updates, state = tx.update(g, state, p, value_fn=loss_fn)
        if k % 2 == 0:
            expected = _explicit_pair(loss_fn, p, e1, e2, True)
        else:
            expected = jax.tree.map(lambda q, gi: q - (e1 - e2) * gi, p, g)
        p = optax.apply_updates(p, updates)
        assert_trees_allclose(p, expected, rtol=1e-13)


def test_decaying_equal_rates_in_backstitch_order_net_ascent_unless_pair_indexed(
    x64,
):
    # The docstring's warning, measured: per-step rates give each pair
    # s(2c) - s(2c + 1) = +0.05 of ascent; the pair-indexed recipe gives 0.
    s = optax.linear_schedule(0.4, 0.0, transition_steps=8)
    grads = [jnp.ones(1)] * 8
    for schedule, net in ((s, 0.05), (lambda count: s(count // 2), 0.0)):
        out, _ = _run_across(
            floodax.alternate(schedule, schedule, ascent_first=True), grads
        )
        pairs = np.add.reduceat(np.concatenate(out), np.arange(0, 8, 2))
        np.testing.assert_allclose(pairs, net, atol=1e-7)  # float32 schedules


@pytest.mark.parametrize("interval", [1, 2])
def test_within_call_schedules_use_call_index(mlp, interval):
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    descent = lambda i: 0.4 / (1 + i)  # noqa: E731
    tx = floodax.alternate(descent, 0.05, interval=interval)
    state, p = tx.init(params), params
    for k in range(4):
        g = jax.grad(loss_fn)(p)
        updates, state = tx.update(g, state, p, value_fn=loss_fn)
        e1 = 0.4 / (1 + k)
        if k % interval == 0:
            expected = _explicit_pair(loss_fn, p, e1, 0.05, False)
        else:
            rate = e1 - 0.05
            expected = jax.tree.map(lambda q, gi, r=rate: q - r * gi, p, g)
        p = optax.apply_updates(p, updates)
        assert_trees_allclose(p, expected, rtol=1e-13)


def test_alternate_does_not_recompile_and_injects():
    params = jnp.array([1.0, -1.0])
    injected = optax.inject_hyperparams(floodax.alternate)(
        descent_rate=0.3, ascent_rate=0.1
    )
    plain = floodax.alternate(0.3, 0.1)
    fn = TraceCounter(lambda g, s: injected.update(g, s, params))
    step = jax.jit(fn)
    s_inj, s_plain = injected.init(params), plain.init(params)
    for k in range(5):
        g = jnp.array([1.0, 2.0]) * (k + 1)
        u_inj, s_inj = step(g, s_inj)
        u_plain, s_plain = plain.update(g, s_plain)
        np.testing.assert_array_equal(u_inj, u_plain)
    s_inj.hyperparams["ascent_rate"] = jnp.float32(0.2)
    u, _ = step(jnp.array([1.0, 2.0]), s_inj)  # call 6: ascent
    np.testing.assert_allclose(u, [0.2, 0.4], rtol=1e-6)
    assert fn.traces == 1


def test_within_call_does_not_recompile():
    params = jnp.array([1.0, -1.0])
    tx = floodax.alternate(0.3, 0.1, interval=2)
    fn = TraceCounter(
        lambda p, s, x: tx.update(2 * x * p, s, p, value_fn=lambda q: jnp.sum(x * q**2))
    )
    step = jax.jit(fn)
    state = tx.init(params)
    for x in (1.0, 2.0, 0.5):
        _, state = step(params, state, jnp.float32(x))
    assert fn.traces == 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("with_value_fn", [False, True])
def test_alternate_keeps_dtypes(dtype, with_value_fn):
    tx = floodax.alternate(0.3, 0.1, interval=2)
    params = {"w": jnp.ones(3, dtype), "b": jnp.ones((), dtype)}
    extra = (
        {
            "value_fn": lambda p: sum(
                jnp.sum(v.astype(jnp.float32) ** 2) for v in jax.tree.leaves(p)
            )
        }
        if with_value_fn
        else {}
    )
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(params, state, params, **extra)
        for leaf in jax.tree.leaves(updates):
            assert leaf.dtype == dtype
            assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"descent_rate": -0.1, "ascent_rate": 0.0},
            "`descent_rate` must be non-negative",
        ),
        (
            {"descent_rate": 0.1, "ascent_rate": -0.1},
            "`ascent_rate` must be non-negative",
        ),
        (
            {"descent_rate": float("nan"), "ascent_rate": 0.0},
            "`descent_rate` must be finite",
        ),
        (
            {"descent_rate": 0.1, "ascent_rate": 0.2},
            r"`descent_rate` \(0.1\) must be at least `ascent_rate` \(0.2\)",
        ),
        (
            {"descent_rate": 0.2, "ascent_rate": 0.1, "interval": 0},
            "`interval` must be an integer >= 1",
        ),
        (
            {"descent_rate": 0.2, "ascent_rate": 0.1, "interval": 2.0},
            "`interval` must be an integer >= 1",
        ),
        (
            {"descent_rate": 0.2, "ascent_rate": 0.1, "interval": True},
            "`interval` must be an integer >= 1",
        ),
    ],
)
def test_alternate_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        floodax.alternate(**kwargs)


def test_alternate_equal_rates_allowed_and_value_fn_needs_params():
    tx = floodax.alternate(0.1, 0.1)
    g = jnp.ones(2)
    with pytest.raises(
        TypeError,
        match=r"needs the current parameters.*tx.update\(grads, state, params",
    ):
        tx.update(g, tx.init(g), value_fn=lambda p: jnp.sum(p**2))


def test_alternate_accepts_unknown_extra_args():
    tx = floodax.alternate(0.3, 0.1)
    g = jnp.ones(2)
    u, _ = tx.update(g, tx.init(g), value=jnp.float32(1.0), foo="bar")
    np.testing.assert_allclose(u, -0.3 * np.ones(2), rtol=1e-6)


def test_alternate_in_scan_reaches_the_minimum(x64):
    # Alternating SGD with ε1 > ε2 converges on a convex quadratic.
    target = jnp.array([1.0, -2.0])
    loss_fn = lambda p: jnp.sum((p - target) ** 2)  # noqa: E731
    tx = floodax.alternate(0.3, 0.1)

    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(loss_fn)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (jnp.zeros(2), tx.init(jnp.zeros(2))), length=200)
    np.testing.assert_allclose(p, target, atol=1e-10)


def test_interval_is_a_hyperparameter_not_a_static_arg(x64):
    # inject_hyperparams turns the int into an array; changing it must take
    # effect without a retrace.
    tx = optax.inject_hyperparams(floodax.alternate)(
        descent_rate=0.5, ascent_rate=0.2, interval=1
    )
    fn = TraceCounter(lambda g, s: tx.update(g, s))
    step = jax.jit(fn)
    g = jnp.ones(1)
    state = tx.init(g)
    state.hyperparams["interval"] = jnp.asarray(3)
    factors = []
    for _ in range(5):
        u, state = step(g, state)
        factors.append(float(u[0]))
    np.testing.assert_allclose(factors, [-0.5, 0.2, -0.3, -0.3, -0.5], rtol=1e-12)
    assert fn.traces == 1


def test_alternate_inside_masked_scales_only_masked_leaves_but_refuses_value_fn():
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    tx = optax.masked(floodax.alternate(0.3, 0.1), {"a": True, "b": False})
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    np.testing.assert_allclose(updates["a"], -0.3 * np.ones(2), rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], np.ones(2))
    with pytest.raises(TypeError, match=r"optax.masked.*outside the masked"):
        tx.update(params, state, params, value_fn=lambda p: jnp.sum(p["a"] ** 2))
