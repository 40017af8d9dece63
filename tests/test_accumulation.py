"""multi_steps: gradient accumulation that floods the large batch."""

from __future__ import annotations

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax
from tests.helpers import TraceCounter, assert_trees_allclose, mlp_loss


def _feed(tx, state, grads_and_values):
    for g, v in grads_and_values:
        updates, state = tx.update(g, state, value=jnp.float32(v))
    return updates, state


def test_the_large_batch_decides_not_the_last_micro_batch():
    # Micro-batch losses 0.9 then 0.2, mean 0.55 above b = 0.5: descend.
    inner = optax.chain(floodax.flood(0.5), optax.sgd(1.0))
    g = jnp.array([1.0, -2.0])
    tx = floodax.multi_steps(inner, every_k_schedule=2)
    updates, state = _feed(tx, tx.init(g), [(g, 0.9), (g, 0.2)])
    np.testing.assert_array_equal(updates, -g)
    assert int(state.inner.inner_opt_state[0].ascent_count) == 0
    # optax.MultiSteps hands the inner transformation the last value: ascent.
    ms = optax.MultiSteps(inner, every_k_schedule=2)
    updates, _ = _feed(ms, ms.init(g), [(g, 0.9), (g, 0.2)])
    np.testing.assert_array_equal(updates, g)
    # Mean 0.45 below b: ascend, although the last micro-batch is above.
    updates, state = _feed(tx, state, [(g, 0.2), (g, 0.7)])
    np.testing.assert_array_equal(updates, g)
    assert int(state.inner.inner_opt_state[0].ascent_count) == 1


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize(
    "make_opt", [lambda: optax.adam(0.05), lambda: optax.sgd(0.2, momentum=0.9)]
)
def test_accumulated_flooding_equals_flooding_the_large_batch(mlp, k, make_opt):
    params, x, y = mlp
    b = 0.3
    tx = floodax.multi_steps(
        optax.chain(floodax.flood(b), make_opt()), k, accumulator_dtype=jnp.float64
    )
    full = optax.chain(floodax.flood(b), make_opt())
    state, full_state, p, p_full = tx.init(params), full.init(params), params, params
    size = len(y) // k
    micro = [
        (x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]) for i in range(k)
    ]

    @jax.jit
    def micro_step(p, state, xb, yb):
        loss, grads = jax.value_and_grad(mlp_loss)(p, xb, yb)
        updates, state = tx.update(grads, state, p, value=loss)
        return optax.apply_updates(p, updates), state

    @jax.jit
    def full_step(p, state):
        loss, grads = jax.value_and_grad(mlp_loss)(p, x, y)
        updates, state = full.update(grads, state, p, value=loss)
        return optax.apply_updates(p, updates), state, loss

    ascents = 0
    for _ in range(40):
        for xb, yb in micro:
            p, state = micro_step(p, state, xb, yb)
        p_full, full_state, loss = full_step(p_full, full_state)
        ascents += int(loss < b)
        assert_trees_allclose(p, p_full, rtol=1e-11, atol=1e-14)
    assert 0 < ascents < 40  # the run crossed the level
    assert int(state.inner.inner_opt_state[0].ascent_count) == ascents


def test_mean_resets_after_each_update_and_counts_schedules():
    # every_k_schedule as a schedule of the update count: 1, then 3.
    tx = floodax.multi_steps(
        optax.chain(floodax.flood(0.5), optax.sgd(1.0)),
        lambda step: jnp.where(step < 1, 1, 3),
    )
    g = jnp.ones(1)
    state = tx.init(g)
    updates, state = tx.update(g, state, value=jnp.float32(0.1))  # k = 1: ascend
    np.testing.assert_array_equal(updates, g)
    assert float(state.value_mean) == 0.0
    for v in (0.9, 0.2):
        updates, state = tx.update(g, state, value=jnp.float32(v))
        np.testing.assert_array_equal(updates, 0 * g)
    np.testing.assert_allclose(state.value_mean, 0.55, rtol=1e-6)
    updates, state = tx.update(g, state, value=jnp.float32(0.6))  # mean 0.5667
    np.testing.assert_array_equal(updates, -g)
    assert float(state.value_mean) == 0.0


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "value_dtype, accumulator_dtype",
    [
        (jnp.float16, jnp.float32),
        (jnp.float64, jnp.float32),
        (jnp.float32, jnp.float64),
    ],
)
def test_the_inner_sees_the_value_dtype_and_the_mean_keeps_its_own(
    value_dtype, accumulator_dtype
):
    # The running mean lives in the accumulator's dtype whatever the losses'
    # dtype (a state that changed dtype would break a lax.scan carry or a
    # checkpoint), and the inner transformation gets the mean back in the
    # dtype the caller's losses have.
    seen = []

    def inner_update(updates, state, params=None, *, value=None, **extra):
        seen.append(value.dtype)
        return updates, state

    inner = optax.GradientTransformationExtraArgs(
        lambda p: optax.EmptyState(), inner_update
    )
    tx = floodax.multi_steps(inner, 2, accumulator_dtype=accumulator_dtype)
    g = jnp.ones(2, jnp.float32)
    state = tx.init(g)
    mean_dtype = state.value_mean.dtype
    for v in (0.9, 0.2):
        _, state = tx.update(g, state, value=jnp.asarray(v, value_dtype))
        assert state.value_mean.dtype == mean_dtype
    assert seen and all(d == value_dtype for d in seen)


def test_a_skipped_micro_batch_counts_towards_neither_gradient_nor_loss():
    tx = floodax.multi_steps(
        optax.chain(floodax.flood(0.5), optax.sgd(1.0)),
        2,
        should_skip_update_fn=optax.skip_not_finite,
    )
    g = jnp.ones(1)
    state = tx.init(g)
    _, state = tx.update(g, state, value=jnp.float32(0.9))
    _, state = tx.update(jnp.full(1, jnp.nan), state, value=jnp.float32(0.0))
    np.testing.assert_allclose(state.value_mean, 0.9, rtol=1e-6)
    updates, _ = tx.update(g, state, value=jnp.float32(0.2))  # mean 0.55
    np.testing.assert_array_equal(updates, -g)


def test_optax_matrix_jit_no_recompile_dtypes_extra_args():
    tx = floodax.multi_steps(optax.chain(floodax.flood(0.5), optax.adam(0.1)), 2)
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
        params = {"w": jnp.ones(3, dtype)}
        fn = TraceCounter(
            lambda g, s, v, p=params: tx.update(g, s, p, value=v, value_fn=None, foo=1)
        )
        step = jax.jit(fn)
        state = tx.init(params)
        for v in (0.9, 0.2, 0.1, 0.3):
            updates, state = step(params, state, jnp.float32(v))
            assert updates["w"].dtype == dtype
        assert fn.traces == 1
    # Without a value, an inner transformation that needs none works.
    plain = floodax.multi_steps(optax.sgd(1.0), 2)
    state = plain.init(jnp.ones(1))
    _, state = plain.update(jnp.ones(1), state)
    updates, _ = plain.update(jnp.ones(1), state)
    np.testing.assert_array_equal(updates, -np.ones(1))


def test_inject_hyperparams_inside_and_around():
    g = jnp.ones(2)
    inner = optax.chain(
        optax.inject_hyperparams(floodax.flood)(flood_level=0.5), optax.sgd(1.0)
    )
    tx = floodax.multi_steps(inner, 2)
    updates, state = _feed(tx, tx.init(g), [(g, 0.9), (g, 0.2)])
    np.testing.assert_array_equal(updates, -g)
    # k itself as an injected hyperparameter, changed without a retrace.
    injected = optax.inject_hyperparams(floodax.multi_steps)(
        inner=optax.chain(floodax.flood(0.5), optax.sgd(1.0)), every_k_schedule=2
    )
    fn = TraceCounter(lambda s, v: injected.update(g, s, value=v))
    step = jax.jit(fn)
    state = injected.init(g)
    _, state = step(state, jnp.float32(0.9))
    updates, state = step(state, jnp.float32(0.2))
    np.testing.assert_array_equal(updates, -g)
    state.hyperparams["every_k_schedule"] = jnp.asarray(1)
    updates, state = step(state, jnp.float32(0.2))  # now every call: ascent
    np.testing.assert_array_equal(updates, g)
    assert fn.traces == 1


def test_checkpoint_mid_accumulation_resumes_bitwise(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    tx = floodax.multi_steps(optax.chain(floodax.flood(0.5), optax.adam(0.1)), 3)
    g = jnp.array([1.0, -0.5])
    values = [0.9, 0.2, 0.4, 0.7, 0.1, 0.3, 0.8]

    update = jax.jit(tx.update)  # compiled once, for every call of run()

    def run(state, vs):
        out = []
        for v in vs:
            updates, state = update(g * v, state, value=jnp.float32(v))
            out.append(updates)
        return out, state

    uninterrupted, _ = run(tx.init(g), values)
    first, state = run(tx.init(g), values[:4])  # one update and one micro-batch in
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(
        tmp_path / "ckpt", jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    )
    assert isinstance(restored, floodax.MultiStepsState)
    rest, _ = run(restored, values[4:])
    for a, b in zip(first + rest, uninterrupted, strict=True):
        np.testing.assert_array_equal(a, b)


def _micro_batches():
    kx, kw = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (8, 3))
    y = jnp.sin(x[:, 0])
    params = {"w": jax.random.normal(kw, (3,)) / 2, "b": jnp.asarray(0.1)}

    def loss(p, xb, yb):
        return jnp.mean((jnp.tanh(xb @ p["w"] + p["b"]) - yb) ** 2)

    return params, loss, [(x[:4], y[:4]), (x[4:], y[4:])]


def _flat_hessian(f, params):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return flat, unravel, jax.hessian(lambda v: f(unravel(v)))(flat)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_a_micro_batch_value_fn_never_reaches_a_penalty_inside(method):
    # Inside multi_steps the penalty would see the mean gradient of both
    # micro-batches and the last one's loss: refused, at the first call.
    params, loss, batches = _micro_batches()
    strength = 0.05
    inner = optax.chain(
        floodax.add_grad_norm_penalty(strength, method=method), optax.sgd(1.0)
    )
    tx = floodax.multi_steps(inner, 2, accumulator_dtype="float64")
    (xb, yb) = batches[0]
    grads = jax.grad(loss)(params, xb, yb)
    with pytest.raises(TypeError, match="the loss of one micro-batch"):
        tx.update(grads, tx.init(params), params, value_fn=lambda p: loss(p, xb, yb))

    # With the large batch's value_fn, declared, the step is the large
    # batch's penalised gradient g + 2λ·H·g exactly (the finite difference to
    # its O(r) accuracy).
    full_x = jnp.concatenate([b[0] for b in batches])
    full_y = jnp.concatenate([b[1] for b in batches])
    full = lambda p: loss(p, full_x, full_y)  # noqa: E731
    declared = floodax.multi_steps(
        inner, 2, accumulator_dtype="float64", value_fn_is_large_batch=True
    )
    state = declared.init(params)
    for xb, yb in batches:
        updates, state = declared.update(
            jax.grad(loss)(params, xb, yb), state, params, value_fn=full
        )
    _, unravel, hessian = _flat_hessian(full, params)
    g = jax.flatten_util.ravel_pytree(jax.grad(full)(params))[0]
    expected = unravel(-(g + 2 * strength * hessian @ g))
    assert_trees_allclose(updates, expected, rtol=1e-12 if method == "exact" else 1e-6)


@pytest.mark.usefixtures("x64")
def test_penalty_before_the_accumulation_penalises_each_micro_batch():
    params, loss, batches = _micro_batches()
    strength = 0.05
    tx = optax.chain(
        floodax.add_grad_norm_penalty(strength),
        floodax.multi_steps(optax.sgd(1.0), 2, accumulator_dtype="float64"),
    )
    state = tx.init(params)
    expected = 0.0
    for xb, yb in batches:
        f = lambda p, xb=xb, yb=yb: loss(p, xb, yb)  # noqa: E731
        updates, state = tx.update(jax.grad(f)(params), state, params, value_fn=f)
        _, _, hessian = _flat_hessian(f, params)
        g = jax.flatten_util.ravel_pytree(jax.grad(f)(params))[0]
        expected = expected + (g + 2 * strength * hessian @ g) / len(batches)
    unravel = jax.flatten_util.ravel_pytree(params)[1]
    assert_trees_allclose(updates, unravel(-expected), rtol=1e-12)


@pytest.mark.usefixtures("x64")
def test_axis_name_accumulates_the_mean_over_devices(mlp):
    # 4 devices (a named vmap) × 2 micro-batches of 2 examples each: with
    # axis_name every device holds the same running loss, the global one, so
    # any device's copy of the state (what a checkpoint reads) resumes the
    # run, and training equals flooding the whole batch on one device.
    params, x, y = mlp
    b, devices, k, updates = 0.3, 4, 2, 12
    inner = optax.chain(floodax.flood(b), optax.sgd(0.2))
    tx = floodax.multi_steps(inner, k, accumulator_dtype="float64", axis_name="d")
    # micro[j][0] has shape (devices, 2, 3): device i's part of micro-batch j.
    micro = [
        tuple(a.reshape(devices, k, 2, *a.shape[1:])[:, j] for a in (x, y))
        for j in range(k)
    ]

    @jax.jit
    @functools.partial(jax.vmap, in_axes=(None, None, 0, 0), axis_name="d")
    def micro_step(p, state, xb, yb):
        loss, grads = jax.value_and_grad(mlp_loss)(p, xb, yb)
        grads = jax.lax.pmean(grads, "d")
        updates, state = tx.update(grads, state, p, value=loss)
        return optax.apply_updates(p, updates), state

    @jax.jit
    def full_step(p, state):
        micro_losses = jnp.stack([mlp_loss(p, *m) for m in micro])
        loss, grads = jax.value_and_grad(mlp_loss)(p, x, y)
        updates, state = inner.update(grads, state, p, value=loss)
        return optax.apply_updates(p, updates), state, loss, micro_losses

    p, state, p_full, full_state = params, tx.init(params), params, inner.init(params)
    ascents = 0
    for _ in range(updates):
        p_full, full_state, loss, micro_losses = full_step(p_full, full_state)
        for j, (xb, yb) in enumerate(micro):
            p, state = jax.device_get(micro_step(p, state, xb, yb))
            # The same state on every device, with the global running loss:
            for leaf in jax.tree.leaves(state):
                np.testing.assert_array_equal(
                    leaf, np.broadcast_to(leaf[0], leaf.shape)
                )
            running = np.mean(micro_losses[: j + 1]) if j < k - 1 else 0.0
            np.testing.assert_allclose(state.value_mean[0], running, rtol=1e-12)
            p, state = jax.tree.map(lambda a: a[0], (p, state))  # device 0's copy
        ascents += int(loss < b)
        assert_trees_allclose(p, p_full, rtol=1e-11, atol=1e-14)
    assert 0 < ascents < updates


def test_axis_name_outside_a_mapped_axis_is_refused():
    tx = floodax.multi_steps(
        optax.chain(floodax.flood(0.5), optax.sgd(1.0)), 2, axis_name="data"
    )
    g = jnp.ones(1)
    with pytest.raises(
        ValueError, match=r"floodax\.multi_steps: `axis_name='data'` names no mapped"
    ):
        tx.update(g, tx.init(g), value=jnp.float32(0.5))


@pytest.mark.parametrize("axis_name", [None, "data"])
def test_a_per_device_value_into_a_replicated_state_is_refused(axis_name):
    # shard_map's check_vma types say which values differ between devices,
    # even on a mesh of one device: without axis_name the local loss would
    # be accumulated into a state returned as replicated (out_specs=P()).
    # tests/data_parallel runs this on 8 devices.
    from jax import shard_map
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((1,), ("data",))
    tx = floodax.multi_steps(
        optax.chain(floodax.flood(0.5), optax.sgd(1.0)), 2, axis_name=axis_name
    )

    def device_step(g, state, losses):
        return tx.update(g, state, value=jnp.mean(losses))[1]

    step = shard_map(
        device_step, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=P()
    )
    g = jnp.ones(2)
    with jax.set_mesh(mesh):
        losses = jax.device_put(jnp.array([0.9, 0.7]), NamedSharding(mesh, P("data")))
        if axis_name is None:
            with pytest.raises(
                ValueError,
                match=r"floodax\.multi_steps: `value` differs between devices along "
                r"mesh axis 'data'.*axis_name='data'",
            ):
                step(g, tx.init(g), losses)
        else:
            state = step(g, tx.init(g), losses)
            np.testing.assert_allclose(state.value_mean, 0.8, rtol=1e-6)
