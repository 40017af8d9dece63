"""What tests/test_multiprocess.py runs in every process of a run.

Every topology here has 8 devices in all (2 processes × 4, 1 × 8, 4 × 2),
and device ``d`` holds examples ``8d … 8d + 7`` of the 8-device tests' batch
(``tests/data_parallel/test_sharded.py``, whose data, model and loss these
reuse): process ``i`` passes only its own rows, through
``jax.make_array_from_process_local_data``.

All the forms train side by side in one compiled step (one compilation a
process, not one a form): starting a process and compiling cost seconds of
CPU each, and these tests run in the suite's 6 minutes.
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
from pathlib import Path

import jax
import numpy as np
import optax
from jax import shard_map
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import floodax
from tests.data_parallel import test_sharded as eight

STEPS = 8  # updates of every form
SAVED_STEP = 3  # multi_steps is then mid-accumulation
FAULT_STEP = 2  # process 1 dies with this step in flight
LEVEL = eight.FLOOD_LEVEL
MASK_LEVEL = 0.5
# Near the least-squares fit, so that flooding's decisions flip within a few
# steps: the global loss starts just above the level.
START = {"w": np.array([0.9, -1.8, 0.45, 1.35], np.float32), "b": np.float32(0.0)}
NAMES = ("flood", "iflooded_where", "multi_steps", "penalty", "sam", "alternate")
MODES = ("jit", "shard_map", "one_device")


def mask() -> np.ndarray:
    """Device ``d`` keeps ``d`` of its 8 examples: of 2 processes, process 0
    keeps 6 and process 1 keeps 22."""
    keep = np.arange(eight.PER_DEVICE)[None, :] < np.arange(eight.N_DEVICES)[:, None]
    return keep.reshape(-1)


def batches() -> tuple[tuple[np.ndarray, ...], list[tuple[np.ndarray, ...]]]:
    """The whole batch ``(x, y, mask)`` and its two micro-batches (each
    device's shard split in two), for ``multi_steps``: step ``t`` passes
    micro-batch ``t mod 2``."""
    x, y = eight._data()
    m = mask().reshape(eight.N_DEVICES, eight.ACCUMULATED, -1)
    micro = [(*xy, m[:, j].reshape(-1)) for j, xy in enumerate(eight._micro_batches())]
    return (x, y, mask()), micro


def mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((jax.device_count(),), ("data",))


def _rows(a: np.ndarray) -> np.ndarray:
    """This process's rows of a global batch."""
    n = len(a) // jax.process_count()
    return a[jax.process_index() * n :][:n]


def shard_batch(m: jax.sharding.Mesh, tree):
    sharding = NamedSharding(m, P("data"))
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, _rows(a)), tree
    )


def replicate(m: jax.sharding.Mesh, tree):
    sharding = NamedSharding(m, P())
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree
    )


def to_host(tree):
    """The value of a replicated tree, from this process's first copy."""
    return jax.tree.map(
        lambda a: np.asarray(a.addressable_data(0) if isinstance(a, jax.Array) else a),
        tree,
    )


def _forms(mode: str) -> dict:
    """``name -> (tx, grads_fn)``; ``grads_fn(params, x, y, mask)`` gives
    the gradient and the extra arguments of ``tx.update``. On one device
    and under ``jax.jit`` the loss of a batch is already the global mean;
    inside ``shard_map`` each device holds its shard, so floodax gets the
    axis name, or a ``value_fn`` of the ``pmean``."""
    mapped = mode == "shard_map"
    axis = "data" if mapped else None
    sgd = optax.sgd(0.05)

    def loss(p, x, y):
        local = eight._loss(p, x, y)
        return jax.lax.pmean(local, "data") if mapped else local

    def with_value(p, x, y, m):
        del m  # the device's own loss: flood and multi_steps average it
        return jax.grad(loss)(p, x, y), {"value": eight._loss(p, x, y)}

    def with_value_fn(p, x, y, m):
        del m
        return jax.grad(loss)(p, x, y), {"value_fn": functools.partial(loss, x=x, y=y)}

    def masked(p, x, y, m):
        def masked_loss(q):
            losses = eight._example_losses(q, x, y)
            return floodax.iflooded(losses, MASK_LEVEL, where=m, axis_name=axis)

        return jax.grad(masked_loss)(p), {}

    return {
        "flood": (optax.chain(floodax.flood(LEVEL, axis_name=axis), sgd), with_value),
        "iflooded_where": (sgd, masked),
        "multi_steps": (
            floodax.multi_steps(
                optax.chain(floodax.flood(LEVEL), sgd), 2, axis_name=axis
            ),
            with_value,
        ),
        "penalty": (
            optax.chain(floodax.add_grad_norm_penalty(0.1), sgd),
            with_value_fn,
        ),
        "sam": (optax.chain(floodax.sam(0.05), sgd), with_value_fn),
        "alternate": (floodax.alternate(0.06, 0.02, ascent_first=True), with_value_fn),
    }


def initial(mode: str) -> dict:
    """Every form's parameters and optimizer state before training."""
    return {name: (START, tx.init(START)) for name, (tx, _) in _forms(mode).items()}


@functools.cache
def train_step(mode: str, m: jax.sharding.Mesh | None = None):
    """One compiled step of every form: ``step(runs, batch, micro)``
    (cached: each process compiles it once)."""
    forms = _forms(mode)

    def step(runs, batch, micro):
        out = {}
        for name, (tx, grads_fn) in forms.items():
            params, state = runs[name]
            grads, extra = grads_fn(
                params, *(micro if name == "multi_steps" else batch)
            )
            updates, state = tx.update(grads, state, params, **extra)
            out[name] = (optax.apply_updates(params, updates), state)
        return out

    if mode == "shard_map":
        step = shard_map(
            step, mesh=m, in_specs=(P(), P("data"), P("data")), out_specs=P()
        )
    return jax.jit(step)


def train(mode: str, m, start: int, stop: int, runs=None, on_step=None) -> list:
    """Steps ``start … stop - 1`` from ``runs`` (the initial ones by
    default); returns the runs after each step, on the host."""
    step = train_step(mode, m)
    batch, micro = batches()
    if mode != "one_device":
        batch, micro = shard_batch(m, batch), [shard_batch(m, b) for b in micro]
        runs = replicate(m, initial(mode)) if runs is None else runs
    elif runs is None:
        runs = initial(mode)
    history = []
    for t in range(start, stop):
        runs = step(runs, batch, micro[t % 2])
        if on_step is not None:
            on_step(t, runs)
        history.append(to_host(runs))
    return history


IN_FLIGHT = 50


def collectives_in_flight(m: jax.sharding.Mesh) -> list[np.ndarray]:
    """``IN_FLIGHT`` all-reduces across the processes, dispatched without
    waiting: each device soon has 32 in flight, and XLA:CPU's thread pool
    must hold a launch task and a running device for each local device,
    or they wait for each other forever (the harness's ``PJRT_NPROC``)."""
    total = jax.jit(
        shard_map(
            lambda a: jax.lax.psum(jax.numpy.tanh(a), "data"),
            mesh=m,
            in_specs=P("data"),
            out_specs=P(),
        )
    )
    a = shard_batch(m, in_flight_data())
    return [to_host(r) for r in [total(a) for _ in range(IN_FLIGHT)]]


def in_flight_data() -> np.ndarray:
    return np.linspace(-1.0, 1.0, eight.N_DEVICES * 16, dtype=np.float32).reshape(
        eight.N_DEVICES, 16
    )


def _target(m):
    """Where a checkpoint of the ``jit`` runs is restored: replicated on
    this topology's mesh."""
    replicated = NamedSharding(m, P())
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(
            np.shape(a), np.asarray(a).dtype, sharding=replicated
        ),
        initial("jit"),
    )


def write_result(folder: Path, result) -> None:
    with open(Path(folder) / f"result_{jax.process_index()}.pkl", "wb") as f:
        pickle.dump(result, f)


def two_processes(
    folder: Path, *, checkpoint: str, checkpoints: str, dying: int = 1
) -> None:
    """The 2 × 4 run. Trains every form under ``jax.jit`` and under
    ``shard_map``, saving the ``jit`` runs at ``SAVED_STEP`` to
    ``checkpoint``; writes the histories. Then trains again, saving every
    step with a ``CheckpointManager`` to ``checkpoints``, and process
    ``dying`` kills itself with step ``FAULT_STEP`` in flight: this never
    returns."""
    import orbax.checkpoint as ocp

    m = mesh()
    checkpointer = ocp.StandardCheckpointer()

    def save_once(t, runs):
        if t + 1 == SAVED_STEP:
            checkpointer.save(Path(checkpoint).absolute(), runs)
            checkpointer.wait_until_finished()

    result = {"in_flight": collectives_in_flight(m)}
    result["shard_map"] = train("shard_map", m, 0, STEPS)
    result["jit"] = train("jit", m, 0, STEPS, on_step=save_once)
    write_result(folder, result)

    manager = ocp.CheckpointManager(Path(checkpoints).absolute())

    def save_or_die(t, runs):
        if t == FAULT_STEP and jax.process_index() == dying:
            os.kill(os.getpid(), signal.SIGKILL)  # the step is dispatched
        manager.save(t + 1, args=ocp.args.StandardSave(runs))
        manager.wait_until_finished()

    train("jit", m, 0, STEPS, on_step=save_or_die)
    raise AssertionError(f"process {dying} was to die at step {FAULT_STEP}")


def restore(folder: Path, *, checkpoint: str, checkpoints: str | None = None) -> dict:
    """Restores the ``jit`` runs saved at ``SAVED_STEP`` onto this topology
    and trains the remaining steps; with ``checkpoints``, also restores the
    latest step there. On one process, also trains every form from the
    start under ``jax.jit``, ``shard_map`` and on one device."""
    import orbax.checkpoint as ocp

    del folder
    m = mesh()
    result = {"devices": jax.device_count()}
    runs = ocp.StandardCheckpointer().restore(Path(checkpoint).absolute(), _target(m))
    result["restored"] = to_host(runs)
    result["resumed"] = train("jit", m, SAVED_STEP, STEPS, runs)
    if checkpoints is not None:
        manager = ocp.CheckpointManager(Path(checkpoints).absolute())
        latest = manager.latest_step()
        result["latest"] = (
            latest,
            to_host(manager.restore(latest, args=ocp.args.StandardRestore(_target(m)))),
        )
    if jax.process_count() == 1:
        result.update({mode: train(mode, m, 0, STEPS) for mode in MODES})
    return result
