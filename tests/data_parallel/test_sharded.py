"""Data parallelism on 8 devices: every floodax piece matches one device.

These tests need 8 devices. `tests/test_data_parallel.py` runs this file in
a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(JAX reads the flag once, at start-up); in the main test process they skip.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import shard_map
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import floodax

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 devices; run via tests/test_data_parallel.py",
)

N_DEVICES, PER_DEVICE, DIM = 8, 8, 4
FLOOD_LEVEL = 0.95  # between the noise floors of the two halves (0.0025, 1.69)


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((N_DEVICES,), ("data",))


def _data():
    """Half the devices hold nearly noiseless examples, half very noisy ones,
    so per-device losses straddle the flood level while the mean is near it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_DEVICES * PER_DEVICE, DIM)).astype(np.float32)
    w_true = np.array([1.0, -2.0, 0.5, 1.5], np.float32)
    noise_scale = np.repeat([0.05] * 4 + [1.3] * 4, PER_DEVICE).astype(np.float32)
    y = x @ w_true + noise_scale * rng.standard_normal(len(x)).astype(np.float32)
    return x, y


def _params():
    return {"w": np.zeros(DIM, np.float32), "b": np.zeros((), np.float32)}


def _example_losses(params, x, y):
    return (x @ params["w"] + params["b"] - y) ** 2


def _loss(params, x, y):
    return jnp.mean(_example_losses(params, x, y))


def _shard(mesh, tree, spec):
    return jax.device_put(tree, NamedSharding(mesh, spec))


def _assert_close(a, b, tol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


# The forms under test: each builds (tx, grad_and_extras) for one step on a
# batch, where the loss is the global mean over whatever batch it is given.
def _form(name):
    sgd = optax.sgd(0.05)
    if name == "flooded":
        return sgd, lambda p, x, y: (
            jax.grad(lambda q: floodax.flooded(_loss(q, x, y), FLOOD_LEVEL))(p),
            {},
        )
    if name == "iflooded":
        return sgd, lambda p, x, y: (
            jax.grad(lambda q: floodax.iflooded(_example_losses(q, x, y), FLOOD_LEVEL))(
                p
            ),
            {},
        )
    if name == "flood":
        tx = optax.chain(floodax.flood(FLOOD_LEVEL), sgd)
        return tx, lambda p, x, y: (jax.grad(_loss)(p, x, y), {"value": _loss(p, x, y)})
    if name == "alternate":
        return floodax.alternate(0.06, 0.02), lambda p, x, y: (
            jax.grad(_loss)(p, x, y),
            {},
        )
    if name == "backstitch":
        tx = floodax.alternate(0.06, 0.02, ascent_first=True)
        return tx, lambda p, x, y: (
            jax.grad(_loss)(p, x, y),
            {"value_fn": functools.partial(_loss, x=x, y=y)},
        )
    method = "exact" if name == "penalty_exact" else "finite_difference"
    radius = None if method == "exact" else 1e-2
    tx = optax.chain(
        floodax.add_grad_norm_penalty(0.1, method=method, radius=radius), sgd
    )
    return tx, lambda p, x, y: (
        jax.grad(_loss)(p, x, y),
        {"value_fn": functools.partial(_loss, x=x, y=y)},
    )


FORMS = [
    "flooded",
    "iflooded",
    "flood",
    "alternate",
    "backstitch",
    "penalty_exact",
    "penalty_fd",
]


def _step_body(tx, grads_fn):
    """One training step: gradients (and extra arguments), update, apply."""

    def body(params, state, x, y):
        grads, extra = grads_fn(params, x, y)
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    return body


def _lockstep(mesh, step, tx, ref_step, ref_tx, steps):
    """Runs the sharded step and the one-device step side by side, asserting
    equal parameters after every step; returns both final optimizer states."""
    x, y = _data()
    params = _params()
    p_ref, ref_state = params, ref_tx.init(params)
    with jax.set_mesh(mesh):
        p = _shard(mesh, params, P())
        state = _shard(mesh, tx.init(params), P())
        xs, ys = _shard(mesh, x, P("data")), _shard(mesh, y, P("data"))
        for _ in range(steps):
            p, state = step(p, state, xs, ys)
            p_ref, ref_state = ref_step(p_ref, ref_state, x, y)
            _assert_close(p, p_ref)
    return state, ref_state, p_ref


def _run(step, params, state, x, y, steps):
    history = []
    for _ in range(steps):
        params, state = step(params, state, x, y)
        history.append(params)
    return history


def test_collectives_in_flight_do_not_exhaust_the_thread_pool(mesh):
    # 100 all-reduces dispatched without waiting: each device soon has 32
    # computations in flight, and its launch task blocks a pool thread.
    # With a pool of 8 threads the all-reduce then lacks one device and XLA
    # aborts the process after 40 s (see tests/test_data_parallel.py).
    threads = int(os.environ.get("PJRT_NPROC", os.cpu_count() or 1))
    assert max(threads, N_DEVICES) >= 2 * N_DEVICES, (
        f"XLA:CPU's thread pool has {max(threads, N_DEVICES)} threads; 8-device "
        "collectives can deadlock with fewer than 16: run these tests through "
        "tests/test_data_parallel.py, or set PJRT_NPROC=16"
    )
    total = jax.jit(
        shard_map(
            lambda a: jax.lax.psum(jnp.tanh(a), "data"),
            mesh=mesh,
            in_specs=P("data"),
            out_specs=P(),
        )
    )
    a = np.linspace(-1.0, 1.0, N_DEVICES * 64, dtype=np.float32).reshape(-1, 64)
    with jax.set_mesh(mesh):
        sharded = _shard(mesh, a, P("data"))
        results = [total(sharded) for _ in range(100)]
    expected = np.tanh(a).reshape(N_DEVICES, -1, 64).sum(0)
    for result in results:
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FORMS)
def test_jit_with_sharded_batch_matches_one_device(mesh, name):
    tx, grads_fn = _form(name)
    step = jax.jit(_step_body(tx, grads_fn))
    x, y = _data()
    params = _params()
    single = _run(step, params, tx.init(params), x, y, 25)
    with jax.set_mesh(mesh):
        xs, ys = _shard(mesh, x, P("data")), _shard(mesh, y, P("data"))
        ps = _shard(mesh, params, P())
        sharded = _run(step, ps, tx.init(ps), xs, ys, 25)
    assert xs.sharding.spec == P("data")
    for a, b in zip(sharded, single, strict=True):
        _assert_close(a, b)


def _device_losses(mesh, params, x, y):
    fn = shard_map(
        lambda p, xb, yb: _loss(p, xb, yb)[None],
        mesh=mesh,
        in_specs=(P(), P("data"), P("data")),
        out_specs=P("data"),
    )
    with jax.set_mesh(mesh):
        return np.asarray(
            fn(
                _shard(mesh, params, P()),
                _shard(mesh, x, P("data")),
                _shard(mesh, y, P("data")),
            )
        )


def test_flood_with_axis_name_under_shard_map_matches_one_device(mesh):
    tx = optax.chain(floodax.flood(FLOOD_LEVEL, axis_name="data"), optax.sgd(0.05))

    def device_step(params, state, xb, yb):
        local = _loss(params, xb, yb)
        # The gradient of the mean over devices: with replicated parameters,
        # jax.grad through pmean gives the global gradient on every device.
        grads = jax.grad(lambda p: jax.lax.pmean(_loss(p, xb, yb), "data"))(params)
        updates, state = tx.update(grads, state, params, value=local)
        return optax.apply_updates(params, updates), state

    step = jax.jit(
        shard_map(
            device_step,
            mesh=mesh,
            in_specs=(P(), P(), P("data"), P("data")),
            out_specs=(P(), P()),
        )
    )

    ref_tx, ref_grads = _form("flood")  # flood(b) then SGD on the whole batch
    ref_step = jax.jit(_step_body(ref_tx, ref_grads))
    state, ref_state, p_ref = _lockstep(mesh, step, tx, ref_step, ref_tx, 60)
    # The run flooded: it both ascended and descended ...
    ascents = int(ref_state[0].ascent_count)
    assert 0 < ascents < 60 and int(state[0].ascent_count) == ascents
    # ... while the devices' own losses straddled the level.
    losses = _device_losses(mesh, p_ref, *_data())
    assert losses.min() < FLOOD_LEVEL < losses.max()


def test_without_axis_name_devices_decide_alone(mesh):
    # At a point where the global loss is above b but half the devices are
    # below it: with axis_name every device descends like one device would;
    # without it the low-loss devices ascend.
    x, y = _data()
    params = {
        "w": np.array([1.0, -2.0, 0.5, 1.5], np.float32),
        "b": np.zeros((), np.float32),
    }
    device_losses = _device_losses(mesh, params, x, y)
    global_loss = float(_loss(params, x, y))
    b = 0.3
    assert device_losses.min() < b < global_loss

    def per_device_updates(axis_name):
        tx = floodax.flood(b, axis_name=axis_name)

        def fn(params, xb, yb):
            grads = jax.grad(lambda p: jax.lax.pmean(_loss(p, xb, yb), "data"))(params)
            updates, _ = tx.update(grads, tx.init(params), value=_loss(params, xb, yb))
            return jax.tree.map(lambda u: u[None], updates)

        mapped = shard_map(
            fn, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P("data")
        )
        with jax.set_mesh(mesh):
            out = jax.jit(mapped)(
                _shard(mesh, params, P()),
                _shard(mesh, x, P("data")),
                _shard(mesh, y, P("data")),
            )
        return np.asarray(out["w"])

    single = np.asarray(jax.grad(_loss)(params, x, y)["w"])  # above b: descent
    synced = per_device_updates("data")
    np.testing.assert_allclose(
        synced, np.tile(single, (N_DEVICES, 1)), rtol=1e-5, atol=1e-6
    )
    alone = per_device_updates(None)
    flipped = device_losses < b
    np.testing.assert_allclose(
        alone[flipped], -np.tile(single, (flipped.sum(), 1)), rtol=1e-5
    )
    assert not np.allclose(alone, np.tile(single, (N_DEVICES, 1)))


@pytest.mark.parametrize("name", ["flooded", "iflooded", "backstitch", "penalty_exact"])
def test_shard_map_forms_match_one_device(mesh, name):
    # Inside shard_map each device holds its shard; the loss the forms see is
    # the mean over devices (pmean), as on one device.
    def global_loss(p, xb, yb):
        return jax.lax.pmean(_loss(p, xb, yb), "data")

    if name == "flooded":
        tx = optax.sgd(0.05)
        grads_fn = lambda p, xb, yb: (  # noqa: E731
            jax.grad(lambda q: floodax.flooded(global_loss(q, xb, yb), FLOOD_LEVEL))(p),
            {},
        )
    elif name == "iflooded":
        tx = optax.sgd(0.05)
        grads_fn = lambda p, xb, yb: (  # noqa: E731
            jax.grad(
                lambda q: jax.lax.pmean(
                    floodax.iflooded(_example_losses(q, xb, yb), FLOOD_LEVEL), "data"
                )
            )(p),
            {},
        )
    else:
        tx = (
            floodax.alternate(0.06, 0.02, ascent_first=True)
            if name == "backstitch"
            else optax.chain(floodax.add_grad_norm_penalty(0.1), optax.sgd(0.05))
        )
        grads_fn = lambda p, xb, yb: (  # noqa: E731
            jax.grad(global_loss)(p, xb, yb),
            {"value_fn": functools.partial(global_loss, xb=xb, yb=yb)},
        )

    step = jax.jit(
        shard_map(
            _step_body(tx, grads_fn),
            mesh=mesh,
            in_specs=(P(), P(), P("data"), P("data")),
            out_specs=(P(), P()),
        )
    )
    ref_tx, ref_grads = _form(name)
    ref_step = jax.jit(_step_body(ref_tx, ref_grads))
    _lockstep(mesh, step, tx, ref_step, ref_tx, 25)


def test_iflooded_axis_name_with_unequal_masks_matches_one_device(mesh):
    # Device k keeps k of its 8 examples (device 0 none, device 7 seven):
    # iflooded(..., axis_name) forms the global masked mean, so training
    # under shard_map matches one device on the whole masked batch, while a
    # pmean of per-device means (devices weighted equally) does not.
    x, y = _data()
    keep = np.arange(PER_DEVICE)[None, :] < np.arange(N_DEVICES)[:, None]
    mask = keep.reshape(-1)
    level = 0.5

    def global_loss(p, xb, yb, mb):
        return floodax.iflooded(
            _example_losses(p, xb, yb), level, where=mb, axis_name="data"
        )

    def device_step(params, state, xb, yb, mb):
        grads = jax.grad(global_loss)(params, xb, yb, mb)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    tx = optax.sgd(0.05)
    step = jax.jit(
        shard_map(
            device_step,
            mesh=mesh,
            in_specs=(P(), P(), P("data"), P("data"), P("data")),
            out_specs=(P(), P()),
        )
    )

    def one_device_loss(p):
        return floodax.iflooded(_example_losses(p, x, y), level, where=mask)

    @jax.jit
    def ref_step(params, state):
        grads = jax.grad(one_device_loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = _params()
    p_ref, ref_state = params, tx.init(params)
    with jax.set_mesh(mesh):
        p, state = _shard(mesh, params, P()), _shard(mesh, tx.init(params), P())
        xs, ys, ms = (_shard(mesh, a, P("data")) for a in (x, y, mask))
        for _ in range(25):
            p, state = step(p, state, xs, ys, ms)
            p_ref, ref_state = ref_step(p_ref, ref_state)
            _assert_close(p, p_ref)
        # The same value, and not the equally weighted mean of device means.
        value = shard_map(
            lambda q, xb, yb, mb: global_loss(q, xb, yb, mb)[None],
            mesh=mesh,
            in_specs=(P(), P("data"), P("data"), P("data")),
            out_specs=P("data"),
        )(p, xs, ys, ms)
    np.testing.assert_allclose(value, float(one_device_loss(p_ref)), rtol=1e-5)
    per_device = [
        float(floodax.iflooded(_example_losses(p_ref, xb, yb), level, where=mb))
        for xb, yb, mb in zip(
            x.reshape(N_DEVICES, PER_DEVICE, DIM)[1:],
            y.reshape(N_DEVICES, PER_DEVICE)[1:],
            keep[1:],
            strict=True,
        )
    ]
    assert abs(np.mean(per_device) - float(one_device_loss(p_ref))) > 1e-2


ACCUMULATED = 2  # micro-batches per update in the multi_steps tests


def _micro_batches():
    """Micro-batch j holds examples j·4 … j·4 + 3 of every device's shard:
    each device's shard of micro-batch j is 4 of its own 8 examples, and the
    two micro-batches together are the whole batch."""
    x, y = _data()
    size = PER_DEVICE // ACCUMULATED

    def split(a):
        a = a.reshape(N_DEVICES, ACCUMULATED, size, *a.shape[1:])
        return [a[:, j].reshape(N_DEVICES * size, *a.shape[3:]) for j in range(2)]

    return list(zip(split(x), split(y), strict=True))


def _multi_steps_step(mesh, tx, check_vma):
    def device_step(params, state, xb, yb):
        # The global gradient: under check_vma, the gradient of the pmean of
        # the local loss; without it, the pmean of the local gradients (there
        # the gradient through a pmean is device 0's local gradient / 8).
        if check_vma:
            grads = jax.grad(lambda q: jax.lax.pmean(_loss(q, xb, yb), "data"))(params)
        else:
            grads = jax.lax.pmean(jax.grad(_loss)(params, xb, yb), "data")
        updates, state = tx.update(grads, state, params, value=_loss(params, xb, yb))
        return optax.apply_updates(params, updates), state

    return jax.jit(
        shard_map(
            device_step,
            mesh=mesh,
            in_specs=(P(), P(), P("data"), P("data")),
            out_specs=(P(), P()),
            check_vma=check_vma,
        )
    )


@pytest.mark.parametrize("check_vma, inner_axis_name", [(True, None), (False, "data")])
def test_multi_steps_round_trips_through_the_host_mid_accumulation(
    mesh, check_vma, inner_axis_name
):
    # Each device passes its own micro-batch loss; multi_steps(axis_name=)
    # accumulates their mean over devices, so the state is replicated: read
    # on the host in the middle of every accumulation (as a checkpoint reads
    # it) and put back, it resumes as one device on the whole batch floods.
    # Before, each device kept its own running loss, the host read device
    # 0's, and a resumed run decided on it: here the decisions differ on 13
    # of the 30 updates, and with check_vma the step did not trace at all.
    b, lr, updates = 0.9, 0.1, 30
    tx = floodax.multi_steps(
        optax.chain(floodax.flood(b, axis_name=inner_axis_name), optax.sgd(lr)),
        ACCUMULATED,
        axis_name="data",
    )
    step = _multi_steps_step(mesh, tx, check_vma)
    ref_tx = optax.chain(floodax.flood(b), optax.sgd(lr))
    ref_step = jax.jit(_step_body(ref_tx, _form("flood")[1]))
    x, y = _data()
    micro = _micro_batches()
    replicated = NamedSharding(mesh, P())
    p_ref, ref_state = _params(), ref_tx.init(_params())
    ascents, device_0_decides_otherwise = 0, 0
    with jax.set_mesh(mesh):
        p = jax.device_put(_params(), replicated)
        state = jax.device_put(tx.init(_params()), replicated)
        shards = [
            (_shard(mesh, xb, P("data")), _shard(mesh, yb, P("data")))
            for xb, yb in micro
        ]
        for _ in range(updates):
            losses = [float(_loss(p_ref, xb, yb)) for xb, yb in micro]
            own = float(_loss(p_ref, micro[0][0][:4], micro[0][1][:4]))  # device 0
            p, state = step(p, state, *shards[0])
            host = jax.device_get(state)
            np.testing.assert_allclose(host.value_mean, losses[0], rtol=1e-5)
            p, state = jax.device_put((jax.device_get(p), host), replicated)
            p, state = step(p, state, *shards[1])
            p_ref, ref_state = ref_step(p_ref, ref_state, x, y)
            _assert_close(p, p_ref)
            ascents += np.mean(losses) < b
            device_0_decides_otherwise += (np.mean(losses) < b) != (
                (own + losses[1]) / 2 < b
            )
    assert 0 < ascents < updates
    assert int(state.inner.inner_opt_state[0].ascent_count) == ascents
    assert device_0_decides_otherwise > 0


@pytest.mark.parametrize(
    "shape, axis_name, along, fix",
    [
        ((8,), None, "axis 'data'", "'data'"),
        # A 4 × 2 mesh with the batch split over both axes: naming one is
        # not enough.
        ((4, 2), "data", "axis 'model'", r"\('data', 'model'\)"),
        ((4, 2), None, "axes 'data', 'model'", r"\('data', 'model'\)"),
    ],
    ids=["one-axis", "one-of-two-named", "two-axes"],
)
def test_multi_steps_without_axis_name_under_shard_map_names_the_fix(
    shape, axis_name, along, fix
):
    # With the default check_vma, a per-device loss accumulated into a
    # replicated state is refused while tracing, by floodax, with the fix
    # (shard_map's own error names neither).
    axes = ("data", "model")[: len(shape)]
    mesh = jax.make_mesh(shape, axes)
    tx = floodax.multi_steps(
        optax.chain(floodax.flood(0.9), optax.sgd(0.1)), 2, axis_name=axis_name
    )

    def device_step(params, state, xb, yb):
        return tx.update(params, state, params, value=_loss(params, xb, yb))[1]

    step = shard_map(
        device_step,
        mesh=mesh,
        in_specs=(P(), P(), P(axes), P(axes)),
        out_specs=P(),
    )
    x, y = _data()
    message = (
        rf"floodax\.multi_steps: `value` differs between devices along mesh "
        rf"{along}, .*`floodax\.multi_steps\(\.\.\., axis_name={fix}\)`"
    )
    with jax.set_mesh(mesh), pytest.raises(ValueError, match=message):
        jax.eval_shape(
            step,
            _params(),
            tx.init(_params()),
            _shard(mesh, x, P(axes)),
            _shard(mesh, y, P(axes)),
        )


def test_multi_steps_state_kept_per_device_when_the_layout_says_so(mesh):
    # A state sharded over the devices (one copy each, in_specs/out_specs
    # P("data")) is a per-device layout the caller chose: no axis_name is
    # needed, and each device's running loss is its own.
    tx = floodax.multi_steps(optax.chain(floodax.flood(0.9), optax.sgd(0.1)), 2)

    def device_step(params, state, xb, yb):
        state = jax.tree.map(lambda a: a[0], state)
        _, state = tx.update(params, state, params, value=_loss(params, xb, yb))
        return jax.tree.map(lambda a: a[None], state)

    step = jax.jit(
        shard_map(
            device_step,
            mesh=mesh,
            in_specs=(P(), P("data"), P("data"), P("data")),
            out_specs=P("data"),
        )
    )
    (xb, yb), _ = _micro_batches()
    stacked = jax.tree.map(lambda a: np.stack([a] * N_DEVICES), tx.init(_params()))
    with jax.set_mesh(mesh):
        state = step(
            _shard(mesh, _params(), P()),
            _shard(mesh, stacked, P("data")),
            _shard(mesh, xb, P("data")),
            _shard(mesh, yb, P("data")),
        )
    own = [
        float(_loss(_params(), a, b))
        for a, b in zip(np.split(xb, N_DEVICES), np.split(yb, N_DEVICES), strict=True)
    ]
    np.testing.assert_allclose(state.value_mean, own, rtol=1e-6)


class _NormState(NamedTuple):
    norm: jax.Array  # float32, ‖g‖ of the gradient that perturbed


def _sam_keeping_norm(radius):
    """SAM written out, keeping ‖g‖ in its state: a float leaf that differs
    between devices, so out_specs=P() needs it averaged over 'data'."""

    def update(updates, state, params, *, value_fn, **extra_args):
        del state, extra_args
        norm = optax.tree.norm(updates)
        shifted = jax.tree.map(lambda p, g: p + radius * g / norm, params, updates)
        return jax.grad(value_fn)(shifted), _NormState(norm)

    return optax.GradientTransformationExtraArgs(
        lambda params: _NormState(jnp.zeros([], jnp.float32)), update
    )


def test_m_sharpness_per_device_is_google_research_sams(mesh):
    # m = the per-device batch: each device's own gradient perturbs its copy
    # (not pmean'd) and the perturbed gradients are pmean'd, as in
    # google-research/sam's train_step (sam_jax/training_utils/flax_training.py).
    x, y = _data()
    params = _params()
    batch = {"x": x, "y": y}
    radius = 0.05

    def loss_fn(p, b):
        return _loss(p, b["x"], b["y"])

    def per_device_reference():
        perturbed, norms = [], []
        for d in range(N_DEVICES):
            xb, yb = (
                x[d * PER_DEVICE : (d + 1) * PER_DEVICE],
                y[d * PER_DEVICE :][:PER_DEVICE],
            )
            g = jax.grad(_loss)(params, xb, yb)
            norm = np.sqrt(
                sum(np.sum(np.asarray(v, np.float64) ** 2) for v in g.values())
            )
            noised = jax.tree.map(lambda a, v, n=norm: a + radius * v / n, params, g)
            perturbed.append(jax.grad(_loss)(noised, xb, yb))
            norms.append(norm)
        return jax.tree.map(lambda *us: sum(us) / N_DEVICES, *perturbed), np.mean(norms)

    expected, expected_norm = per_device_reference()
    zeros = jax.tree.map(jnp.zeros_like, params)
    sam_penalty = floodax.add_grad_norm_penalty(
        radius, power=1, method="finite_difference", radius=radius
    )
    for inner in (sam_penalty, _sam_keeping_norm(radius)):
        tx = floodax.m_sharpness(inner, PER_DEVICE, axis_name="data")
        step = jax.jit(
            shard_map(
                lambda p, s, b, tx=tx: tx.update(zeros, s, p, loss_fn=loss_fn, batch=b),
                mesh=mesh,
                in_specs=(P(), P(), P("data")),
                out_specs=(P(), P()),
            )
        )
        one = floodax.m_sharpness(inner, PER_DEVICE)
        with jax.set_mesh(mesh):
            updates, state = step(
                _shard(mesh, params, P()),
                _shard(mesh, tx.init(params), P()),
                _shard(mesh, batch, P("data")),
            )
        ref, ref_state = jax.jit(
            lambda p, s, b, one=one: one.update(zeros, s, p, loss_fn=loss_fn, batch=b)
        )(params, one.init(params), batch)
        _assert_close(updates, ref)
        _assert_close(state, ref_state)
        _assert_close(updates, expected, tol=1e-4)
    np.testing.assert_allclose(state.norm, expected_norm, rtol=1e-5)


def test_tpu_colab_notebook_runs_on_all_devices():
    # The notebook's code cells, in order, as Colab would run them; the
    # install cell is tagged skip-execution (myst-nb skips it too).
    import nbformat

    path = Path(__file__).resolve().parents[2] / "examples" / "tpu_colab.ipynb"
    notebook = nbformat.read(path, as_version=4)
    namespace: dict = {}
    for cell in notebook.cells:
        if cell.cell_type == "code" and "skip-execution" not in cell.metadata.get(
            "tags", []
        ):
            exec(compile(cell.source, str(path), "exec"), namespace)
    losses, share, sharding = (namespace[k] for k in ("losses", "share", "sharding"))
    assert len(sharding.device_set) == N_DEVICES
    # It learns, and flooding holds the loss near the level instead of 0.
    assert np.mean(losses[-20:]) < 0.5 * losses[0]
    assert np.mean(losses[-20:]) > 0.6 * 0.8
    assert 0.0 < share < 1.0


def _readme_sections(*titles):
    """The text of README's sections of those titles, in README's order."""
    from tests.readme_blocks import README

    sections = re.split(r"^(?=## )", README.read_text(), flags=re.M)
    return "".join(s for s in sections if s.splitlines()[0][3:] in titles)


def test_readme_runs_on_8_devices(tmp_path, monkeypatch):
    # The Scaling-out blocks shard the batch over every device: here, 8.
    # They build on the first section's model, batch and train_step; the
    # rest of README runs on one device in tests/test_readme.py.
    from tests.readme_blocks import python_blocks, run_blocks

    text = _readme_sections("Flooding in two forms", "Scaling out")
    blocks = python_blocks(text)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = run_blocks(blocks)
    assert len(namespace["sharded"]["x"].sharding.device_set) == N_DEVICES
    state = namespace["big_state"]
    assert state.inner.gradient_step == 1 and state.inner.mini_step == 0
    assert len(state.value_mean.sharding.device_set) == N_DEVICES
