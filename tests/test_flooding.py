"""Tests of flooding and iFlood: loss transforms and the optax transformation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax
from tests.helpers import (
    TraceCounter,
    assert_trees_allclose,
    mlp_example_losses,
    mlp_loss,
)

# ---------------------------------------------------------------- loss forms


@pytest.mark.parametrize("flood_level", [0.0, 0.3, 0.7, 5.0])
def test_flooded_gradient_is_signed_gradient(mlp, flood_level):
    params, x, y = mlp
    loss = mlp_loss(params, x, y)
    grad = jax.grad(lambda p: floodax.flooded(mlp_loss(p, x, y), flood_level))(params)
    sign = 1.0 if loss >= flood_level else -1.0
    expected = jax.tree.map(lambda g: sign * g, jax.grad(mlp_loss)(params, x, y))
    assert_trees_allclose(grad, expected)


@pytest.mark.parametrize("flood_level", [0.0, 0.2, 0.6, 5.0])
def test_iflooded_gradient_is_per_example_signed_gradient(mlp, flood_level):
    params, x, y = mlp
    losses = mlp_example_losses(params, x, y)
    grad = jax.grad(
        lambda p: floodax.iflooded(mlp_example_losses(p, x, y), flood_level)
    )(params)
    per_example = jax.vmap(
        jax.grad(lambda p, xi, yi: mlp_example_losses(p, xi[None], yi[None])[0]),
        in_axes=(None, 0, 0),
    )(params, x, y)
    signs = np.where(np.asarray(losses) >= flood_level, 1.0, -1.0)
    expected = jax.tree.map(
        lambda g: jnp.tensordot(signs, g, axes=1) / len(signs), per_example
    )
    assert_trees_allclose(grad, expected)
    if 0.0 < flood_level < 5.0:  # the level splits the batch: a real mix
        assert 0 < (signs < 0).sum() < len(signs)


def test_flooded_values_elementwise(x64):
    loss = jnp.array([[0.0, 0.1], [0.3, 2.0]])
    np.testing.assert_allclose(
        floodax.flooded(loss, 0.3), np.array([[0.6, 0.5], [0.3, 2.0]]), rtol=1e-15
    )
    assert floodax.flooded(loss, 0.3).shape == (2, 2)


def test_iflooded_where_equals_subset(x64):
    losses = jnp.array([0.05, 0.5, 0.1, 0.9, 0.2])
    mask = jnp.array([True, False, True, True, False])
    np.testing.assert_allclose(
        floodax.iflooded(losses, 0.15, where=mask),
        floodax.iflooded(losses[mask], 0.15),
        rtol=1e-15,
    )
    # Hand-computed: |0.05-0.15|+0.15, 0.15 + 0.05... on the kept entries.
    np.testing.assert_allclose(
        floodax.iflooded(losses, 0.15, where=mask), (0.25 + 0.2 + 0.9) / 3, rtol=1e-15
    )
    # A mask given as a Python list (or NumPy array) means the same.
    listed = [True, False, True, True, False]
    assert floodax.iflooded(losses, 0.15, where=listed) == floodax.iflooded(
        losses, 0.15, where=mask
    )


def test_iflooded_differs_from_flooded_mean():
    # Mean 0.5 is above b = 0.3, so flooding leaves it; iFlood lifts 0.1.
    losses = jnp.array([0.1, 0.9])
    assert float(floodax.flooded(losses.mean(), 0.3)) == pytest.approx(0.5)
    assert float(floodax.iflooded(losses, 0.3)) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "weights",
    [
        # 1,000 weights of 100: their total, 1e5, overflows float16 (65,504).
        jnp.full(1000, 100, jnp.float16),
        # 257 ones: bfloat16 holds 256 and 258 but not 257.
        jnp.ones(257, jnp.bfloat16),
    ],
    ids=["float16_total_overflows", "bfloat16_total_rounds"],
)
def test_iflooded_sums_low_precision_weights_in_float32(weights):
    # Equal weights give the plain mean, whatever their dtype; summed in the
    # weights' own dtype the total would be inf (a mean of 0) or 258.
    losses = jnp.linspace(0.0, 1.0, weights.size, dtype=jnp.float32)
    plain = float(floodax.iflooded(losses, 0.3))
    weighted = float(floodax.iflooded(losses, 0.3, weights=weights))
    assert weighted == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("level", [0.2, "array32", "traced"])
def test_loss_transforms_keep_dtype(dtype, level):
    losses = jnp.array([0.1, 0.5], dtype)
    if level == "array32":
        level = jnp.float32(0.2)
    if level == "traced":
        out = jax.jit(floodax.flooded)(losses, jnp.float32(0.2))
        mean = jax.jit(floodax.iflooded)(losses, jnp.float32(0.2))
    else:
        out = floodax.flooded(losses, level)
        mean = floodax.iflooded(losses, level)
    assert out.dtype == dtype
    assert mean.dtype == dtype


def test_flooded_traced_level_does_not_recompile():
    fn = TraceCounter(lambda loss, b: floodax.flooded(loss, b))
    jitted = jax.jit(fn)
    results = [float(jitted(jnp.float32(0.1), jnp.float32(b))) for b in (0.0, 0.2, 0.3)]
    assert fn.traces == 1
    np.testing.assert_allclose(results, [0.1, 0.3, 0.5], rtol=1e-6)


def test_vmap_over_flood_levels_equals_loop(mlp):
    params, x, y = mlp
    levels = jnp.array([0.0, 0.1, 0.3, 0.6, 1.0])

    def grads_at(b):
        return jax.grad(lambda p: floodax.iflooded(mlp_example_losses(p, x, y), b))(
            params
        )

    batched = jax.vmap(grads_at)(levels)
    for i, b in enumerate(levels):
        assert_trees_allclose(jax.tree.map(lambda g, i=i: g[i], batched), grads_at(b))


DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("level", [0.0, 0.3, 100.0])
def test_nan_loss_gives_nan_value_and_gradient_never_a_direction(dtype, level):
    # The loss is NaN but its gradient is finite (a NaN constant added): the
    # flooded gradient must be NaN, not -∇L (ascent) or ∇L (descent), as the
    # flood transformation's updates are.
    w = jnp.array([1.0, -2.0], dtype)

    def loss(w):
        return jnp.sum(w * w) + jnp.asarray(jnp.nan, dtype)

    assert np.all(np.isfinite(np.asarray(jax.grad(loss)(w), np.float32)))
    value = floodax.flooded(loss(w), level)
    grad = jax.grad(lambda w: floodax.flooded(loss(w), level))(w)
    assert value.dtype == grad.dtype == dtype
    assert np.isnan(np.asarray(value, np.float32))
    assert np.all(np.isnan(np.asarray(grad, np.float32)))
    tx = floodax.flood(level)
    updates, state = tx.update(jax.grad(loss)(w), tx.init(w), value=loss(w))
    assert updates.dtype == dtype
    assert np.all(np.isnan(np.asarray(updates, np.float32)))
    assert int(state.ascent_count) == 0


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("dtype", DTYPES)
def test_iflooded_nan_example_poisons_unless_masked(dtype):
    w = jnp.array([0.5, 0.0], dtype)
    x = jnp.array([[1.0, 2.0], [3.0, 1.0]], dtype)

    def losses(w):
        # Both examples depend on both weights; example 1 is NaN, with a
        # finite gradient of its own.
        return (x @ w) ** 2 + jnp.array([0.0, jnp.nan], dtype)

    grad = jax.grad(lambda w: floodax.iflooded(losses(w), 0.3))(w)
    assert grad.dtype == dtype
    assert np.all(np.isnan(np.asarray(grad, np.float32)))
    assert np.isnan(np.asarray(floodax.iflooded(losses(w), 0.3), np.float32))
    # Masked out, the NaN example contributes nothing, not even to the
    # gradient: the result is example 0 flooded alone: its loss 0.25 is
    # below 0.3, so the value is 0.35 and the gradient -2·(x₀·w)·x₀.
    mask = jnp.array([True, False])
    value, grad = jax.value_and_grad(
        lambda w: floodax.iflooded(losses(w), 0.3, where=mask)
    )(w)
    np.testing.assert_allclose(np.asarray(value, np.float64), 0.35, rtol=1e-2)
    np.testing.assert_allclose(np.asarray(grad, np.float64), [-1.0, -2.0], rtol=1e-2)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (-0.1, ValueError, "`flood_level` must be non-negative, got -0.1"),
        (float("nan"), ValueError, "`flood_level` must be finite, got nan"),
        (float("inf"), ValueError, "`flood_level` must be finite, got inf"),
        (jnp.array(-1.0), ValueError, "`flood_level` must be non-negative"),
        (True, TypeError, "`flood_level` must be a real number"),
        (1j, TypeError, "`flood_level` must be a real number"),
    ],
)
def test_bad_flood_level(bad, error, match):
    for call in (
        lambda: floodax.flooded(jnp.float32(1.0), bad),
        lambda: floodax.iflooded(jnp.ones(3), bad),
        lambda: floodax.flood(bad),
    ):
        with pytest.raises(error, match=match):
            call()


def test_array_flood_level_must_broadcast_to_the_losses():
    # The loss transforms take one level per element; the transformation
    # floods one scalar loss and needs one level.
    with pytest.raises(ValueError, match=r"`flood_level` of shape \(2,\) does not"):
        floodax.flooded(jnp.float32(1.0), jnp.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"`flood_level` of shape \(2,\) does not"):
        floodax.iflooded(jnp.ones(3), jnp.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"`flood_level` must be a scalar.*\(2,\)"):
        floodax.flood(jnp.array([0.1, 0.2]))
    with pytest.raises(
        ValueError,
        match=r"`flood_level` must be non-negative, got "
        r"-0.1 \(an element",
    ):
        floodax.iflooded(jnp.ones(2), jnp.array([0.1, -0.1]))


def test_loss_transforms_reject_schedules():
    with pytest.raises(TypeError, match=r"flood_level=schedule\(step\)"):
        floodax.flooded(jnp.float32(1.0), optax.constant_schedule(0.1))


def test_loss_transforms_reject_integer_losses():
    with pytest.raises(TypeError, match="`loss` must have a floating-point dtype"):
        floodax.flooded(jnp.array([1, 2]), 0.1)
    with pytest.raises(TypeError, match="`losses` must have a floating-point dtype"):
        floodax.iflooded(jnp.array([1, 2]), 0.1)


def test_iflooded_rejects_bad_where():
    with pytest.raises(TypeError, match="`where` must be a boolean mask"):
        floodax.iflooded(jnp.ones(3), 0.1, where=jnp.array([1, 0, 1]))
    with pytest.raises(ValueError, match=r"`where` of shape \(2,\) does not broadcast"):
        floodax.iflooded(jnp.ones(3), 0.1, where=jnp.array([True, False]))
    with pytest.raises(ValueError, match=r"`where` of shape \(3, 4\)"):
        floodax.iflooded(jnp.ones(3), 0.1, where=jnp.ones((3, 4), bool))


def test_flood_update_without_value_shows_the_call():
    tx = floodax.flood(0.1)
    params = jnp.ones(2)
    with pytest.raises(TypeError, match=r"value=loss"):
        tx.update(params, tx.init(params), params)


def test_flood_update_rejects_non_scalar_and_integer_value():
    tx = floodax.flood(0.1)
    params = jnp.ones(2)
    with pytest.raises(ValueError, match=r"`value` must be the scalar .* shape \(4,\)"):
        tx.update(params, tx.init(params), params, value=jnp.ones(4))
    with pytest.raises(TypeError, match="`value` must have a floating-point dtype"):
        tx.update(params, tx.init(params), params, value=jnp.int32(1))


def test_flood_schedule_with_bad_output_shape():
    tx = floodax.flood(lambda count: jnp.full((2,), 0.1))
    params = jnp.ones(2)
    with pytest.raises(ValueError, match=r"`flood_level` must be a scalar.*schedule"):
        tx.update(params, tx.init(params), params, value=jnp.float32(1.0))


# ---------------------------------------------------------- the transformation


def _flood_update(tx, grads, state, value):
    return tx.update(grads, state, grads, value=value)


def test_flood_negates_below_level_and_counts():
    tx = floodax.flood(0.5)
    grads = {"a": jnp.array([1.0, -2.0]), "b": jnp.float32(3.0)}
    state = tx.init(grads)
    up, state = tx.update(grads, state, value=jnp.float32(0.7))
    assert_trees_allclose(up, grads, rtol=0)
    up, state = tx.update(grads, state, value=jnp.float32(0.5))  # at b: descent
    assert_trees_allclose(up, grads, rtol=0)
    up, state = tx.update(grads, state, value=jnp.float32(0.2))
    assert_trees_allclose(up, jax.tree.map(jnp.negative, grads), rtol=0)
    assert int(state.count) == 3
    assert int(state.ascent_count) == 1
    assert state.count.dtype == state.ascent_count.dtype == jnp.int32


def test_nan_value_poisons_updates_and_does_not_count_as_ascent():
    tx = floodax.flood(0.5)
    grads = jnp.array([1.0, -2.0])
    state = tx.init(grads)
    up, state = tx.update(grads, state, value=jnp.float32(jnp.nan))
    assert np.all(np.isnan(up))
    assert int(state.ascent_count) == 0 and int(state.count) == 1
    # apply_if_finite after flood then skips the step instead of taking it
    # in either sign, and the optimizer state is left as it was.
    safe = optax.chain(floodax.flood(0.5), optax.apply_if_finite(optax.adam(1.0), 3))
    safe_state = safe.init(grads)
    up, new_state = safe.update(grads, safe_state, grads, value=jnp.float32(jnp.nan))
    np.testing.assert_array_equal(up, np.zeros(2))
    assert int(new_state[1].total_notfinite) == 1
    assert_trees_allclose(new_state[1].inner_state, safe_state[1].inner_state, rtol=0)


def test_flood_nan_in_branch_not_taken_does_not_leak():
    # An infinite gradient component negated stays infinite, not NaN.
    tx = floodax.flood(0.5)
    grads = jnp.array([jnp.inf, 1.0])
    up, _ = tx.update(grads, tx.init(grads), value=jnp.float32(0.1))
    np.testing.assert_array_equal(up, np.array([-np.inf, -1.0]))


def _train(tx, params, x, y, steps, *, grad_loss):
    """Runs ``steps`` of ``tx``; returns params and losses after each step."""
    state = tx.init(params)
    history, losses = [], []
    for _ in range(steps):
        loss = mlp_loss(params, x, y)
        grads = jax.grad(grad_loss)(params)
        updates, state = tx.update(grads, state, params, value=loss)
        params = optax.apply_updates(params, updates)
        history.append(params)
        losses.append(float(loss))
    return history, np.array(losses), state


@pytest.mark.parametrize(
    "make_opt", [lambda: optax.adam(0.05), lambda: optax.sgd(0.2, momentum=0.9)]
)
def test_flood_chain_trains_like_flooded_loss(mlp, make_opt):
    params, x, y = mlp
    b = 0.15
    loss_fn = functools.partial(mlp_loss, x=x, y=y)

    def flooded_loss(p):
        return floodax.flooded(loss_fn(p), b)

    ref_hist, _ref_losses, _ = _train(
        make_opt(), params, x, y, 80, grad_loss=flooded_loss
    )
    tx = optax.chain(floodax.flood(b), make_opt())
    hist, losses, state = _train(tx, params, x, y, 80, grad_loss=loss_fn)
    for p, q in zip(hist, ref_hist, strict=True):
        assert_trees_allclose(p, q)
    below = losses < b
    # The run crosses the level downwards and back up again.
    assert (
        below.any()
        and (~below[1:] & below[:-1]).any()
        and (below[1:] & ~below[:-1]).any()
    )
    assert int(state[0].ascent_count) == int(below.sum())
    assert int(state[0].count) == 80


def test_flood_schedule_matches_flooded_with_evaluated_schedule(mlp):
    params, x, y = mlp
    schedule = optax.linear_schedule(0.0, 0.4, transition_steps=40)
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    tx = optax.chain(floodax.flood(schedule), optax.sgd(0.3))
    ref = optax.sgd(0.3)
    state, ref_state, ref_params = tx.init(params), ref.init(params), params
    ascents = 0
    for step in range(50):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=loss)
        params = optax.apply_updates(params, updates)
        ref_grads = jax.grad(
            lambda p, s=step: floodax.flooded(loss_fn(p), schedule(s))
        )(ref_params)
        ascents += int(loss_fn(ref_params) < schedule(step))
        ref_updates, ref_state = ref.update(ref_grads, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, ref_updates)
        assert_trees_allclose(params, ref_params)
    assert ascents > 0
    assert int(state[0].ascent_count) == ascents


def test_flood_accepts_unknown_extra_args():
    tx = floodax.flood(0.5)
    grads = jnp.ones(3)
    up, _ = tx.update(
        grads, tx.init(grads), value=jnp.float32(0.1), value_fn=None, foo=1
    )
    np.testing.assert_array_equal(up, -np.ones(3))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("value_dtype", [jnp.bfloat16, jnp.float32])
def test_flood_keeps_update_dtypes(dtype, value_dtype):
    tx = optax.chain(floodax.flood(0.5), optax.sgd(0.1))
    params = {"w": jnp.ones(3, dtype), "s": jnp.ones((), dtype)}
    state = tx.init(params)
    step = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))
    for value in (0.9, 0.1):
        updates, state = step(params, state, params, jnp.asarray(value, value_dtype))
        for leaf in jax.tree.leaves(updates):
            assert leaf.dtype == dtype
    # The last value (0.1) is below b: ascent, +lr * grad, in the params' dtype.
    np.testing.assert_allclose(
        np.asarray(updates["w"], np.float32), 0.1, rtol=float(jnp.finfo(dtype).eps)
    )


def test_flood_decision_is_made_in_the_loss_dtype():
    # 0.1 rounds up in bfloat16 (0.10009765625): a bfloat16 loss of 0.1
    # equals a bfloat16 level of 0.1 and must not ascend.
    tx = floodax.flood(0.1)
    grads = jnp.ones(2)
    up, _ = tx.update(grads, tx.init(grads), value=jnp.asarray(0.1, jnp.bfloat16))
    np.testing.assert_array_equal(up, np.ones(2))
    # A float32 level (a schedule's or inject_hyperparams' output) is cast to
    # the loss's dtype too, as `flooded` casts it, so the two forms decide
    # alike: 0.0997 rounds to the bfloat16 loss 0.099609375 (descent), though
    # in float32 the loss lies below it.
    loss, level = jnp.asarray(0.0996, jnp.bfloat16), jnp.float32(0.0997)
    assert float(loss) < float(level)
    injected = optax.inject_hyperparams(floodax.flood)(flood_level=level)
    up, _ = injected.update(grads, injected.init(grads), value=loss)
    sign = jax.grad(lambda v: floodax.flooded(v, level))(loss)
    assert float(sign) == 1.0
    np.testing.assert_array_equal(up, np.ones(2))


def test_flood_does_not_recompile():
    tx = optax.chain(floodax.flood(0.5), optax.adam(0.1))
    params = jnp.ones(3)
    fn = TraceCounter(lambda g, s, v: tx.update(g, s, params, value=v))
    step = jax.jit(fn)
    state = tx.init(params)
    for value in (0.9, 0.1, 0.7):
        _, state = step(params, state, jnp.float32(value))
    assert fn.traces == 1


def test_inject_hyperparams_with_low_precision_params_keeps_a_float32_level():
    # optax casts injected numbers to the parameters' dtype: in bfloat16,
    # b = 0.28 is 0.279296875 and a float32 loss of 0.2795 descends, where
    # flood(0.28) ascends. hyperparam_dtype=jnp.float32 (README, flood's
    # docstring) keeps the two alike.
    params = jnp.ones(2, jnp.bfloat16)
    loss = jnp.float32(0.2795)

    def first_update(tx):
        return tx.update(params, tx.init(params), params, value=loss)[0]

    plain = first_update(floodax.flood(0.28))
    np.testing.assert_array_equal(np.asarray(plain, np.float32), -1.0)  # ascent
    rounded = first_update(optax.inject_hyperparams(floodax.flood)(flood_level=0.28))
    np.testing.assert_array_equal(np.asarray(rounded, np.float32), 1.0)
    kept = first_update(
        optax.inject_hyperparams(floodax.flood, hyperparam_dtype=jnp.float32)(
            flood_level=0.28
        )
    )
    np.testing.assert_array_equal(kept, plain)
    assert kept.dtype == jnp.bfloat16


def test_inject_hyperparams_identical_and_no_recompile():
    params = jnp.array([0.5, -1.0, 2.0])
    loss_fn = lambda p: jnp.sum(p**2)  # noqa: E731
    injected = optax.chain(
        optax.inject_hyperparams(floodax.flood)(flood_level=1.0), optax.sgd(0.1)
    )
    plain = optax.chain(floodax.flood(1.0), optax.sgd(0.1))
    fn = TraceCounter(
        lambda p, s: injected.update(jax.grad(loss_fn)(p), s, p, value=loss_fn(p))
    )
    step = jax.jit(fn)
    s_inj, s_plain, p_inj, p_plain = (
        injected.init(params),
        plain.init(params),
        params,
        params,
    )
    for _ in range(12):
        u, s_inj = step(p_inj, s_inj)
        p_inj = optax.apply_updates(p_inj, u)
        u, s_plain = plain.update(
            jax.grad(loss_fn)(p_plain), s_plain, p_plain, value=loss_fn(p_plain)
        )
        p_plain = optax.apply_updates(p_plain, u)
        np.testing.assert_array_equal(p_inj, p_plain)
    assert int(s_inj[0].inner_state.ascent_count) > 0
    # Lowering the level turns the next ascent into descent, without a retrace.
    loss = loss_fn(p_inj)
    s_inj[0].hyperparams["flood_level"] = jnp.asarray(float(loss) * 1.5, jnp.float32)
    up_high, _ = step(p_inj, s_inj)
    s_inj[0].hyperparams["flood_level"] = jnp.asarray(float(loss) * 0.5, jnp.float32)
    up_low, _ = step(p_inj, s_inj)
    np.testing.assert_allclose(up_high, -np.asarray(up_low), rtol=1e-6)
    assert fn.traces == 1


def test_flood_works_inside_multisteps(mlp):
    # Two micro-batches accumulated equal one step on the whole batch, when
    # the value passed is the mean of the micro-batch losses.
    params, x, y = mlp
    b = 0.3
    ms = optax.MultiSteps(
        optax.chain(floodax.flood(b), optax.adam(0.05)),
        every_k_schedule=2,
        accumulator_dtype=jnp.float64,  # optax accumulates in float32 by default
    )
    full = optax.adam(0.05)
    ms_state, full_state, p_ms, p_full = (
        ms.init(params),
        full.init(params),
        params,
        params,
    )
    halves = [(x[:8], y[:8]), (x[8:], y[8:])]

    @jax.jit
    def micro_step(p, state, xh, yh, earlier):
        # earlier: the losses of the accumulation's earlier micro-batches.
        value, grads = jax.value_and_grad(mlp_loss)(p, xh, yh)
        mean = (jnp.sum(earlier) + value) / (earlier.size + 1)
        updates, state = ms.update(grads, state, p, value=mean)
        return optax.apply_updates(p, updates), state, value

    @jax.jit
    def full_step(p, state):
        grads = jax.grad(lambda p: floodax.flooded(mlp_loss(p, x, y), b))(p)
        updates, state = full.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    flipped = 0
    for _ in range(30):
        values = jnp.zeros((0,), x.dtype)
        for xh, yh in halves:
            p_ms, ms_state, value = micro_step(p_ms, ms_state, xh, yh, values)
            values = jnp.append(values, value)
        flipped += int(mlp_loss(p_full, x, y) < b)
        p_full, full_state = full_step(p_full, full_state)
        assert_trees_allclose(p_ms, p_full, rtol=1e-10)
    assert flipped > 0


def test_vmap_over_flood_level_in_training_equals_loop(mlp):
    params, x, y = mlp
    levels = jnp.array([0.0, 0.1, 0.2, 0.4])

    def run(b):
        tx = optax.chain(floodax.flood(b), optax.adam(0.05))

        def body(carry, _):
            p, s = carry
            loss, grads = jax.value_and_grad(mlp_loss)(p, x, y)
            u, s = tx.update(grads, s, p, value=loss)
            return (optax.apply_updates(p, u), s), loss

        (p, s), losses = jax.lax.scan(body, (params, tx.init(params)), length=60)
        return p, s[0].ascent_count, losses

    batched = jax.jit(jax.vmap(run))(levels)
    for i, b in enumerate(levels):
        single = run(b)
        assert_trees_allclose(
            jax.tree.map(lambda v, i=i: v[i], batched), single, rtol=1e-10
        )
    ascents = np.asarray(batched[1])
    assert ascents[0] == 0 and ascents[-1] > 0


def test_flood_in_scan_floats_around_the_level(x64):
    # Optax's convergence check, adapted: flooding does not converge to the
    # minimum but hovers at the flood level.
    target = jnp.array([1.0, -2.0, 3.0])
    b = 0.5
    loss_fn = lambda p: jnp.sum((p - target) ** 2)  # noqa: E731
    tx = optax.chain(floodax.flood(b), optax.sgd(0.05))

    def body(carry, _):
        p, s = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(grads, s, p, value=loss)
        return (optax.apply_updates(p, u), s), loss

    (_, state), losses = jax.lax.scan(
        body, (jnp.zeros(3), tx.init(jnp.zeros(3))), length=400
    )
    tail = np.asarray(losses[-100:])
    assert tail.min() > 0.3 and tail.max() < 0.75
    share = int(state[0].ascent_count) / int(state[0].count)
    assert 0.3 < share < 0.6


@pytest.mark.parametrize(
    "values, ascend",
    [
        # Mean 0.3 above b = 0.25 although one device is below: all descend
        # (a min would ascend).
        ([0.1, 0.5], False),
        # Mean 0.2 below b although one device is above: all ascend (a max
        # or a sum, 0.8, would descend).
        ([0.1, 0.1, 0.1, 0.5], True),
    ],
)
def test_axis_name_takes_the_decision_on_the_mean_loss(values, ascend):
    values = jnp.array(values)
    grads = jnp.arange(1.0, 2 * len(values) + 1).reshape(len(values), 2)

    def per_device(tx, g, v):
        return tx.update(g, tx.init(g), value=v)[0]

    synced = jax.vmap(
        functools.partial(per_device, floodax.flood(0.25, axis_name="d")), axis_name="d"
    )
    np.testing.assert_array_equal(synced(grads, values), -grads if ascend else grads)
    unsynced = jax.vmap(functools.partial(per_device, floodax.flood(0.25)))
    alone = np.where((values < 0.25)[:, None], -grads, grads)
    np.testing.assert_array_equal(unsynced(grads, values), alone)


@pytest.mark.usefixtures("x64")
def test_iflooded_axis_name_is_the_global_masked_weighted_mean():
    # Four "devices" (a named vmap) keep 5, 1, 3 and 0 of their 5 examples:
    # the exact global mean sums and counts over all of them, which the mean
    # of per-device means (pmean) is not.
    losses = jax.random.uniform(jax.random.key(0), (4, 5), jnp.float64, 0.0, 2.0)
    mask = jnp.arange(5)[None, :] < jnp.array([5, 1, 3, 0])[:, None]
    weights = jax.random.uniform(jax.random.key(1), (4, 5), jnp.float64, 0.5, 2.0)
    b = 0.7

    def per_device(example_losses, m, w):
        return floodax.iflooded(example_losses, b, where=m, weights=w, axis_name="d")

    synced = jax.vmap(per_device, axis_name="d")(losses, mask, weights)
    whole = floodax.iflooded(
        losses.ravel(), b, where=mask.ravel(), weights=weights.ravel()
    )
    np.testing.assert_allclose(synced, np.full(4, whole), rtol=1e-14)
    flooded = np.abs(np.asarray(losses) - b) + b
    w = np.asarray(weights) * np.asarray(mask)
    np.testing.assert_allclose(whole, (w * flooded).sum() / w.sum(), rtol=1e-14)
    # Per-device means averaged, as README once advised, give another number
    # (device 3 has no example and contributes NaN).
    means = [
        floodax.iflooded(losses[k], b, where=mask[k], weights=weights[k])
        for k in range(3)
    ]
    assert abs(float(np.mean(means)) - float(whole)) > 0.01
    unweighted = jax.vmap(
        lambda e, m: floodax.iflooded(e, b, where=m, axis_name="d"), axis_name="d"
    )(losses, mask)
    np.testing.assert_allclose(
        unweighted, floodax.iflooded(losses.ravel(), b, where=mask.ravel()), rtol=1e-14
    )


def test_axis_name_outside_a_mapped_context_is_a_clear_error():
    with pytest.raises(ValueError, match=r"`axis_name='data'` names no mapped axis"):
        floodax.iflooded(jnp.ones(3), 0.1, axis_name="data")
    tx = floodax.flood(0.1, axis_name="data")
    with pytest.raises(ValueError, match=r"floodax.flood: `axis_name='data'`"):
        jax.jit(lambda v: tx.update(jnp.ones(2), tx.init(jnp.ones(2)), value=v))(
            jnp.float32(1.0)
        )


def test_traced_flood_level_inside_jit():
    @jax.jit
    def step(b, grads, value):
        tx = floodax.flood(b)
        return tx.update(grads, tx.init(grads), value=value)[0]

    grads = jnp.ones(2)
    np.testing.assert_array_equal(
        step(jnp.float32(0.5), grads, jnp.float32(0.3)), -grads
    )
    np.testing.assert_array_equal(
        step(jnp.float32(0.2), grads, jnp.float32(0.3)), grads
    )
