"""m-sharpness against an explicit loop over groups, in float64."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax
from tests.helpers import TraceCounter, assert_trees_allclose, mlp_loss

RHO = 0.05


def _loss(params, batch):
    return mlp_loss(params, batch["x"], batch["y"])


def _penalty_sam(radius=RHO):
    """SAM's update from the finite-difference penalty: λ = r = ρ."""
    return floodax.add_grad_norm_penalty(
        radius, power=1, method="finite_difference", radius=radius
    )


class HandSamState(NamedTuple):
    count: jax.Array  # int32, the number of updates
    norm: jax.Array  # float, ‖g‖ of the last perturbing gradient


def _hand_sam(radius):
    """SAM written out, ``radius`` a schedule of the count; keeps ‖g‖."""

    def init(params):
        dtype = jax.tree.leaves(params)[0].dtype
        return HandSamState(jnp.zeros([], jnp.int32), jnp.zeros([], dtype))

    def update(updates, state, params, *, value_fn, **extra_args):
        del extra_args
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(updates)))
        r = radius(state.count)
        shifted = jax.tree.map(lambda p, g: p + r * g / norm, params, updates)
        return jax.grad(value_fn)(shifted), HandSamState(state.count + 1, norm)

    return optax.GradientTransformationExtraArgs(init, update)


_GRAD = jax.jit(jax.grad(_loss))


def _groups(batch, m):
    n = len(batch["y"])
    return [jax.tree.map(lambda a, i=i: a[i : i + m], batch) for i in range(0, n, m)]


def _sam_loop(params, batch, m, radius):
    """The reference: each group perturbed by its own gradient, the
    perturbed gradients averaged, one group at a time."""
    perturbed = []
    for group in _groups(batch, m):
        g = _GRAD(params, group)
        norm = np.sqrt(sum(np.sum(np.asarray(v) ** 2) for v in jax.tree.leaves(g)))
        shifted = jax.tree.map(lambda p, v, n=norm: p + radius * v / n, params, g)
        perturbed.append(_GRAD(shifted, group))
    return jax.tree.map(lambda *us: sum(us) / len(us), *perturbed)


def _update(tx, params, batch, state=None, **extra_args):
    state = tx.init(params) if state is None else state
    grads = jax.grad(_loss)(params, batch)
    return tx.update(grads, state, params, loss_fn=_loss, batch=batch, **extra_args)


@pytest.fixture
def batch(mlp):
    _, x, y = mlp
    return {"x": x, "y": y}


INNER = {
    "penalty": _penalty_sam,
    "hand": lambda: _hand_sam(lambda _: RHO),
    "sam": lambda: floodax.sam(RHO),
}


@pytest.mark.parametrize(("inner", "m"), [("penalty", 1), ("hand", 4), ("sam", 16)])
def test_matches_a_loop_over_groups(mlp, batch, m, inner):
    params = mlp[0]
    sam = INNER[inner]()
    out, _ = jax.jit(lambda p, b: _update(floodax.m_sharpness(sam, m), p, b))(
        params, batch
    )
    expected = _sam_loop(params, batch, m, RHO)
    assert_trees_allclose(out, expected, rtol=1e-11, atol=1e-14)
    if m == 16:  # one group: SAM on the whole batch
        plain, _ = jax.jit(
            lambda p, b: sam.update(
                jax.grad(_loss)(p, b), sam.init(p), p, value_fn=lambda q: _loss(q, b)
            )
        )(params, batch)
        assert_trees_allclose(out, plain, rtol=1e-11, atol=1e-14)


def test_the_state_advances_once_and_float_leaves_are_averaged(mlp, batch):
    params, m = mlp[0], 4
    tx = floodax.m_sharpness(_hand_sam(lambda count: RHO * (count + 1)), m)
    step = jax.jit(lambda p, b, s: _update(tx, p, b, s))
    _, state = step(params, batch, tx.init(params))
    out, state = step(params, batch, state)
    assert state.count == 2  # not 2·G
    # The second update used the schedule at count 1.
    assert_trees_allclose(out, _sam_loop(params, batch, m, 2 * RHO), rtol=1e-11)
    norms = [
        np.sqrt(sum(np.sum(np.asarray(v) ** 2) for v in jax.tree.leaves(g)))
        for g in (_GRAD(params, group) for group in _groups(batch, m))
    ]
    np.testing.assert_allclose(state.norm, np.mean(norms), rtol=1e-13)


def test_a_common_float_state_stays_bit_for_bit(mlp, batch):
    # 3 groups: (0.1 + 0.1 + 0.1) / 3 is 0.10000000000000002 in float64,
    # so a plain mean would drift an injected hyperparameter every step.
    params = mlp[0]
    batch = jax.tree.map(lambda a: a[:12], batch)
    inner = optax.inject_hyperparams(floodax.add_grad_norm_penalty)(
        strength=0.1, power=1, method="finite_difference", radius=0.1
    )
    tx = floodax.m_sharpness(inner, 4)
    state = tx.init(params)
    out, new = jax.jit(lambda p, b, s: _update(tx, p, b, s))(params, batch, state)
    assert new.hyperparams["strength"].item() == 0.1
    assert new.hyperparams["radius"].item() == 0.1
    assert_trees_allclose(out, _sam_loop(params, batch, 4, 0.1), rtol=1e-11)


def test_inner_sees_each_group_as_its_whole_batch(mlp, batch):
    # flood inside decides on each group's own loss (`value` is the group's),
    # and unknown extra arguments pass through.
    params, m = mlp[0], 4
    group_losses = [float(_loss(params, group)) for group in _groups(batch, m)]
    level = float(np.median(group_losses))
    assert min(group_losses) < level < max(group_losses)
    inner = optax.chain(_hand_sam(lambda _: RHO), floodax.flood(level))
    out, _ = jax.jit(
        lambda p, b: _update(floodax.m_sharpness(inner, m), p, b, unused=1.0)
    )(params, batch)
    per_group = []
    for group, loss in zip(_groups(batch, m), group_losses, strict=True):
        sign = np.sign(loss - level)
        u = _sam_loop(params, group, m, RHO)
        per_group.append(jax.tree.map(lambda v, s=sign: s * v, u))
    expected = jax.tree.map(lambda *us: sum(us) / len(us), *per_group)
    assert_trees_allclose(out, expected, rtol=1e-11, atol=1e-14)


def test_no_recompile_when_the_inner_radius_changes(mlp, batch):
    params = mlp[0]
    inner = optax.inject_hyperparams(floodax.add_grad_norm_penalty)(
        strength=RHO, power=1, method="finite_difference", radius=RHO
    )
    tx = optax.chain(floodax.m_sharpness(inner, 4), optax.sgd(1.0))
    fn = TraceCounter(lambda s, b: _update(tx, params, b, s))
    step = jax.jit(fn)
    state = tx.init(params)
    first, _ = step(state, batch)
    for key in ("strength", "radius"):
        old = state[0].hyperparams[key]
        state[0].hyperparams[key] = jnp.full_like(old, 2 * RHO)
    second, _ = step(state, batch)
    assert fn.traces == 1
    assert_trees_allclose(
        second,
        jax.tree.map(jnp.negative, _sam_loop(params, batch, 4, 2 * RHO)),
        rtol=1e-11,
    )
    assert not np.allclose(first["w2"], second["w2"])


def test_keeps_bfloat16():
    dtype = jnp.bfloat16
    params = {"w": jnp.array([0.5, -0.25, 1.0], dtype)}
    x = jnp.arange(12.0).reshape(4, 3) / 10

    def loss_fn(p, b):
        return jnp.mean((b @ p["w"].astype(jnp.float32)) ** 2)

    tx = optax.chain(floodax.m_sharpness(_penalty_sam(0.05), 2), optax.sgd(0.1))
    out, _ = jax.jit(
        lambda p: tx.update(
            jax.grad(loss_fn)(p, x), tx.init(p), p, loss_fn=loss_fn, batch=x
        )
    )(params)
    assert out["w"].dtype == dtype
    with jax.enable_x64(True):
        w64 = {"w": params["w"].astype(jnp.float64)}
        ref = _sam_loop_fn(loss_fn, w64, x.astype(jnp.float64), 2, 0.05)
    # The perturbed point and the output are rounded to the dtype.
    rtol = 8 * float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(
        np.asarray(out["w"], np.float64), -0.1 * np.asarray(ref["w"]), rtol=rtol
    )
    # A bfloat16 float state leaf (‖g‖ here) stays bfloat16 too.
    hand = floodax.m_sharpness(_hand_sam(lambda _: 0.05), 2)
    _, state = jax.jit(
        lambda p: hand.update(
            jax.grad(loss_fn)(p, x), hand.init(p), p, loss_fn=loss_fn, batch=x
        )
    )(params)
    assert state.norm.dtype == dtype and state.count.dtype == jnp.int32


def _sam_loop_fn(loss_fn, params, x, m, radius):
    results = []
    for i in range(0, len(x), m):
        g = jax.grad(loss_fn)(params, x[i : i + m])["w"]
        shifted = {"w": params["w"] + radius * g / jnp.linalg.norm(g)}
        results.append(jax.grad(loss_fn)(shifted, x[i : i + m])["w"])
    return {"w": sum(results) / len(results)}


def test_before_multi_steps_is_m_sharpness_on_the_large_batch(mlp, batch):
    params = mlp[0]
    sgd = optax.sgd(1.0)
    tx = optax.chain(
        floodax.m_sharpness(_penalty_sam(), 4),
        floodax.multi_steps(sgd, 2, accumulator_dtype="float64"),
    )
    state = tx.init(params)
    step = jax.jit(lambda s, b: _update(tx, params, b, s))
    _, state = step(state, jax.tree.map(lambda a: a[:8], batch))
    out, _ = step(state, jax.tree.map(lambda a: a[8:], batch))
    expected = jax.tree.map(jnp.negative, _sam_loop(params, batch, 4, RHO))
    assert_trees_allclose(out, expected, rtol=1e-11, atol=1e-14)
    inside = floodax.multi_steps(
        optax.chain(floodax.m_sharpness(_penalty_sam(), 4), sgd), 2
    )
    with pytest.raises(TypeError, match=r"inside floodax.multi_steps.*before"):
        jax.eval_shape(lambda p, b: _update(inside, p, b), params, batch)
    # Unless the batch passed is the large batch, as it says.
    large = floodax.multi_steps(
        optax.chain(floodax.m_sharpness(_penalty_sam(), 4), sgd),
        1,
        value_fn_is_large_batch=True,
        accumulator_dtype="float64",
    )
    out, _ = jax.jit(lambda p, b: _update(large, p, b))(params, batch)
    assert_trees_allclose(out, expected, rtol=1e-11, atol=1e-14)


def test_bad_batches_and_losses(mlp, batch):
    params = mlp[0]
    tx = floodax.m_sharpness(_penalty_sam(), 4)
    g, s = jax.grad(_loss)(params, batch), tx.init(params)
    cases = [
        (
            {"x": batch["x"], "y": batch["y"][:12]},
            _loss,
            ValueError,
            r"disagree on the batch size \(16 at \['x'\], 12 at \['y'\]\)",
        ),
        ({"x": batch["x"], "y": 1.0}, _loss, ValueError, r"\['y'\] is a scalar"),
        ({}, _loss, ValueError, "`batch` has no array leaves"),
        (
            batch,
            lambda p, b: (_loss(p, b), None),
            TypeError,
            r"`loss_fn\(params, batch\)` must return .* `\(loss, aux\)`",
        ),
        (
            batch,
            lambda p, b: jnp.zeros(3) + _loss(p, b),
            TypeError,
            "reduce the per-example losses",
        ),
    ]
    for b, loss_fn, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            tx.update(g, s, params, loss_fn=loss_fn, batch=b)
    with pytest.raises(TypeError, match="needs `loss_fn`: call"):
        tx.update(g, s, params, batch=batch, value_fn=lambda p: _loss(p, batch))
    with pytest.raises(TypeError, match="needs `batch`: call"):
        tx.update(g, s, params, loss_fn=_loss)
    with pytest.raises(TypeError, match="needs the current parameters"):
        tx.update(g, s, loss_fn=_loss, batch=batch)
    with pytest.raises(TypeError, match="`inner` must be an optax transformation"):
        floodax.m_sharpness(lambda g: g, 4)
    with pytest.raises(ValueError, match="names no mapped axis"):
        floodax.m_sharpness(_penalty_sam(), 4, axis_name="data").update(
            g, s, params, loss_fn=_loss, batch=batch
        )


def test_under_shard_map_on_one_device_matches_the_vmap_form(mlp, batch):
    # A one-device mesh types the shard's loss and ‖g‖ as varying along
    # 'data' all the same, so the value_fn check and the state's average
    # over devices run here (8 devices: tests/data_parallel/).
    from jax import shard_map
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    params = mlp[0]
    mesh = jax.make_mesh((1,), ("data",))
    for inner in (_penalty_sam(), _hand_sam(lambda _: RHO)):
        tx = floodax.m_sharpness(inner, 4, axis_name="data")
        step = shard_map(
            lambda p, s, b, tx=tx: _update(tx, p, b, s),
            mesh=mesh,
            in_specs=(P(), P(), P("data")),
            out_specs=(P(), P()),
        )
        with jax.set_mesh(mesh):
            shards = jax.device_put(batch, NamedSharding(mesh, P("data")))
            out, state = jax.jit(step)(params, tx.init(params), shards)
        one = floodax.m_sharpness(inner, 4)
        ref, ref_state = jax.jit(lambda p, b, one=one: _update(one, p, b))(
            params, batch
        )
        assert_trees_allclose(out, ref, rtol=1e-13)
        assert_trees_allclose(state, ref_state, rtol=1e-13)


def test_a_common_infinite_state_value_stays_infinite():
    # reduce_on_plateau starts its best value at inf: x₀ + mean(x − x₀)
    # would make it NaN (∞ − ∞) and silently cut the learning rate.
    from floodax._m_sharpness import _state_mean

    assert float(_state_mean(jnp.array([jnp.inf, jnp.inf]))) == np.inf
    assert float(_state_mean(jnp.array([1.0, 3.0]))) == 2.0
