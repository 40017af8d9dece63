"""Flooding and the gradient-norm penalty, data-parallel across processes.

Launch it once per host; every process runs the same program on its own
rows of the batch, and JAX's multi-controller runtime joins them (floodax
adds nothing: under ``jax.jit`` the loss of a batch sharded over every
process's devices is already the global mean). At the end process 0 trains
the same model on one device on the whole batch and prints the largest
difference between the two runs' parameters.

One machine, N processes of M CPU devices each (the launcher starts them)::

    python examples/multihost.py --local-processes 2 --devices-per-process 4

One process per host, by hand (process 0's host runs the coordinator)::

    python examples/multihost.py --coordinator 10.0.0.1:1234 \\
        --num-processes 2 --process-id 0        # on host 0; 1 on host 1

On a Cloud TPU pod or under SLURM, with no flags: ``jax.distributed``
detects the coordinator, the process count and this process's id.

Several CPU devices a process need ``PJRT_NPROC`` of at least twice their
number, or collectives across processes can wait for each other forever
(README, "Many hosts"); the local launcher sets it.

``--checkpoint-dir`` saves parameters and optimizer state with orbax every
``--checkpoint-every`` steps and resumes from the latest one. If a process
dies, JAX ends the others once the coordination service (in process 0) has
missed its heartbeats for ``--heartbeat-timeout`` seconds, or at once if
process 0 died; the local launcher stops the rest when one fails. Run the
same command again to resume from the last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STRENGTH, LEARNING_RATE = 0.01, 0.1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--local-processes",
        type=int,
        default=0,
        metavar="N",
        help="start N processes on this machine, on CPU",
    )
    parser.add_argument(
        "--devices-per-process",
        type=int,
        default=1,
        metavar="M",
        help="CPU devices of each local process (with --local-processes)",
    )
    parser.add_argument("--coordinator", help="host:port of process 0 (else detected)")
    parser.add_argument("--num-processes", type=int, help="number of processes")
    parser.add_argument("--process-id", type=int, help="this process's id")
    parser.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=30,
        metavar="SECONDS",
        help="how long a process may miss heartbeats before the "
        "others stop (jax.distributed's default is 100)",
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--flood-level", type=float, default=0.5)
    parser.add_argument("--examples-per-device", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--checkpoint-dir", type=Path)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    args = parser.parse_args(argv)
    for name in (
        "local_processes",
        "devices_per_process",
        "steps",
        "examples_per_device",
        "hidden",
        "checkpoint_every",
    ):
        if getattr(args, name) < (0 if name == "local_processes" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def launch_locally(args: argparse.Namespace, argv: list[str]) -> int:
    """Starts ``--local-processes`` copies of this script (with ``argv``,
    the other options) on 127.0.0.1 and waits; stops the others when one
    fails, and returns its exit code."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    devices = args.devices_per_process
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": str(devices),
        # XLA:CPU runs a device's work and the task that launches it on one
        # pool; a cross-process all-reduce needs every local device running
        # at once, so the pool needs two threads a device (README, "Many
        # hosts"). Its default is one thread a core.
        "PJRT_NPROC": str(max(2 * devices, int(os.environ.get("PJRT_NPROC", 0) or 0))),
    }
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                *argv,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                str(args.local_processes),
                "--process-id",
                str(i),
            ],
            env=env,
        )
        for i in range(args.local_processes)
    ]
    try:
        while True:
            codes = [p.poll() for p in processes]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                print(
                    f"a process exited with {failed[0]}; stopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.1)
    finally:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _without_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the options ``names`` and their values."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not a.startswith(tuple(n + "=" for n in names)):
            out.append(a)
    return out


def train(args: argparse.Namespace) -> None:
    import inspect

    import jax

    options = {"heartbeat_timeout_seconds": args.heartbeat_timeout}
    if (
        "shutdown_timeout_seconds"
        in inspect.signature(jax.distributed.initialize).parameters
    ):
        options["shutdown_timeout_seconds"] = 2 * args.heartbeat_timeout
    jax.distributed.initialize(
        args.coordinator, args.num_processes, args.process_id, **options
    )

    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import floodax

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    batch_size = args.examples_per_device * jax.device_count()
    # Every process draws the same batch and keeps its own rows: a real data
    # loader reads only them (jax.make_array_from_process_local_data).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 3)).astype(np.float32)
    y = (np.sin(2 * x[:, 0]) * x[:, 1] + 0.3 * rng.standard_normal(batch_size)).astype(
        np.float32
    )
    rows = slice(
        jax.process_index() * batch_size // jax.process_count(),
        (jax.process_index() + 1) * batch_size // jax.process_count(),
    )
    sharded = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    xs, ys = (jax.make_array_from_process_local_data(sharded, a[rows]) for a in (x, y))

    init = jax.random.split(jax.random.key(1))
    params = {
        "w": np.asarray(jax.random.normal(init[0], (3, args.hidden))) / 2,
        "v": np.asarray(jax.random.normal(init[1], (args.hidden,))) / 4,
    }

    def loss_fn(p, x, y):
        return jnp.mean((jnp.tanh(x @ p["w"]) @ p["v"] - y) ** 2)

    tx = optax.chain(
        floodax.add_grad_norm_penalty(STRENGTH),
        floodax.flood(args.flood_level),
        optax.sgd(LEARNING_RATE),
    )

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(
            grads, opt_state, params, value=loss, value_fn=lambda p: loss_fn(p, x, y)
        )
        return optax.apply_updates(params, updates), opt_state, loss

    def run(state, x, y, start, stop, manager=None):
        for t in range(start, stop):
            *state, loss = step(*state, x, y)
            if manager is not None and (t + 1) % args.checkpoint_every == 0:
                manager.save(t + 1, args=ocp.args.StandardSave(tuple(state)))
        return tuple(state), loss

    initial = (params, jax.device_get(tx.init(params)))
    start, manager = 0, None
    state = jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(replicated, np.asarray(a)),
        initial,
    )
    if args.checkpoint_dir is not None:
        import orbax.checkpoint as ocp

        manager = ocp.CheckpointManager(args.checkpoint_dir.absolute())
        if manager.latest_step() is not None:
            start = manager.latest_step()
            target = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                state,
            )
            state = manager.restore(start, args=ocp.args.StandardRestore(target))
    state, loss = run(state, xs, ys, start, args.steps, manager)
    if manager is not None:
        manager.wait_until_finished()
    ascents = int(optax.tree.get(state[1], "FloodState").ascent_count)

    if jax.process_index() == 0:
        one, _ = run(initial, x, y, 0, args.steps)  # one device, the whole batch
        difference = max(
            float(np.max(np.abs(np.asarray(a.addressable_data(0)) - np.asarray(b))))
            for a, b in zip(
                jax.tree.leaves(state[0]), jax.tree.leaves(one[0]), strict=True
            )
        )
        print(
            f"{jax.process_count()} processes, {jax.device_count()} devices, "
            f"{args.steps} steps (from {start}): loss {float(loss):.4f}, "
            f"{ascents} ascents"
        )
        print(
            f"largest difference to one device on the whole batch: {difference:.3g}",
            flush=True,
        )
    jax.distributed.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.local_processes:
        names = ("--local-processes", "--devices-per-process")
        return launch_locally(args, _without_values(argv, names))
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
