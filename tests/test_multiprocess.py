"""floodax on JAX's multi-process runtime: several processes on 127.0.0.1.

Each test starts its processes through ``tests/multiprocess/harness.py``
(``jax.distributed.initialize``, gloo CPU collectives, M CPU devices a
process); the programs they run are in ``tests/multiprocess/programs.py``.
Every topology has 8 devices in all and the 8-device tests' batch, so the
2 × 4 run is compared with 1 × 8 and with one device on the whole batch.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.multiprocess import harness

pytest.importorskip("orbax.checkpoint")

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = "tests.multiprocess.programs"


def _gone(pid: int, within: float = 5.0) -> bool:
    """Whether process ``pid`` has ended (or is a zombie) within ``within``
    seconds: a killed orphan is reaped by init, a moment later."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_harness_fails_with_every_output_and_leaves_no_process(tmp_path):
    # Process 0 prints and waits on a child of its own; process 1 exits
    # with 3: the run fails at once, naming process 1, with both outputs,
    # and neither process 0 nor its child outlives it.
    child = tmp_path / "child.pid"
    waits = (
        "import subprocess, time; "
        "p = subprocess.Popen(['sleep', '60']); "
        f"open({str(child)!r}, 'w').write(str(p.pid)); "
        "print('zero waits', flush=True); time.sleep(60)"
    )
    fails = (
        "import time, sys; print('one fails', flush=True); time.sleep(0.5); sys.exit(3)"
    )
    commands = [[sys.executable, "-c", waits], [sys.executable, "-c", fails]]
    start = time.monotonic()
    with pytest.raises(harness.ProcessesFailed) as failed:
        with harness.Job(commands, tmp_path, dict(os.environ)) as job:
            job.wait(30)
    assert time.monotonic() - start < 10
    message = str(failed.value)
    assert "process 1 exited with 3" in message
    assert "zero waits" in message and "one fails" in message
    assert all(p.poll() is not None for p in job.processes)
    assert _gone(int(child.read_text()))
    # A run past its time limit fails the same way.
    with pytest.raises(harness.ProcessesFailed, match="still running after 1 s"):
        with harness.Job(commands[:1], tmp_path / "slow", dict(os.environ)) as job:
            job.wait(1)
    assert job.processes[0].poll() is not None


# jax.distributed.initialize(heartbeat_timeout_seconds=): 5, as in JAX's own
# multi-process tests (jax/_src/test_multiprocess.py).
HEARTBEAT = 5


def _assert_trees_close(a, b, tol=1e-6):
    import jax

    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def _assert_trees_equal(a, b):
    import jax

    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(u).dtype == np.asarray(v).dtype
        np.testing.assert_array_equal(u, v)


def test_two_processes_match_one_and_checkpoints_survive_topologies_and_a_fault(
    tmp_path,
):
    from tests.multiprocess import programs

    paths = {
        "checkpoint": str(tmp_path / "saved"),
        "checkpoints": str(tmp_path / "every"),
    }
    folder = tmp_path / "2x4"
    # 2 processes × 4 devices train every form; then process 1 kills itself
    # with a step in flight, and nothing but JAX stops process 0.
    with harness.start(
        f"{PROGRAMS}:two_processes", 2, 4, folder, heartbeat_timeout=HEARTBEAT, **paths
    ) as job:
        job.wait_until(
            lambda: job.returncodes()[1] is not None,
            120,
            "process 1 did not reach its fault",
        )
        died = time.monotonic()
        job.wait_until(
            lambda: job.returncodes()[0] is not None,
            2 * HEARTBEAT,
            f"process 0 still running {2 * HEARTBEAT} s after process 1 died",
        )
        stopped_after = time.monotonic() - died
        codes, logs = job.returncodes(), job.logs()
    # JAX ends process 0 itself: SIGABRT in JAX 0.10, exit code 1 in 0.8.
    assert codes[1] == -signal.SIGKILL, job.failure("exit codes")
    assert codes[0] in (-signal.SIGABRT, 1), job.failure("exit codes")
    assert "Terminating process because the JAX distributed service detected" in logs[0]
    assert "stopped sending heartbeats" in logs[0]
    assert stopped_after < 2 * HEARTBEAT
    two = [harness.results(folder, i) for i in range(2)]
    # 50 all-reduces in flight at once did not wait for each other forever
    # (they do with XLA:CPU's default thread pool: harness.environment).
    expected = np.tanh(programs.in_flight_data()).sum(0, keepdims=True)
    for result in two[0]["in_flight"]:
        np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)

    # The checkpoints restored onto 1 process × 8 devices (which also trains
    # every form on 8 devices and on one) and onto 4 processes × 2, together.
    with harness.start(
        f"{PROGRAMS}:restore", 4, 2, tmp_path / "4x2", **paths
    ) as four_job:
        (one,) = harness.run(f"{PROGRAMS}:restore", 1, 8, tmp_path / "1x8", **paths)
        four_job.wait(120)
    four = [harness.results(tmp_path / "4x2", i) for i in range(4)]

    # Exactness: after every step, every form on 2 × 4 equals it on 1 × 8
    # and on one device on the whole batch, under jit and under shard_map;
    # and both processes hold the same values.
    for mode in ("jit", "shard_map"):
        _assert_trees_equal(two[1][mode], two[0][mode])
        for other in (one[mode], one["one_device"]):
            _assert_trees_close(two[0][mode], other)
        # It flooded: every flood run both ascended and descended.
        final = two[0][mode][-1]
        for name in ("flood", "multi_steps"):
            ascents = [s.ascent_count for s in jax_tree_flood_states(final[name][1])]
            assert len(ascents) == 1 and 0 < int(ascents[0]) < programs.STEPS

    # Checkpoints: written by 2 processes, restored onto 1 × 8 and 4 × 2,
    # the trees are the ones saved, and every resumed step is the
    # uninterrupted run's, bit for bit.
    history = two[0]["jit"]
    for restored in [one, *four]:
        assert restored["devices"] == 8
        _assert_trees_equal(restored["restored"], history[programs.SAVED_STEP - 1])
        _assert_trees_equal(restored["resumed"], history[programs.SAVED_STEP :])
        # The fault left the last step saved before it intact.
        step, latest = restored["latest"]
        assert step == programs.FAULT_STEP
        _assert_trees_equal(latest, history[step - 1])


def jax_tree_flood_states(state):
    import jax

    import floodax

    return [
        s
        for s in jax.tree.leaves(
            state, is_leaf=lambda x: isinstance(x, floodax.FloodState)
        )
        if isinstance(s, floodax.FloodState)
    ]


def test_multihost_example_on_two_local_processes(tmp_path):
    # README's one-machine command at a tiny size: 2 processes of 2 devices
    # train with flooding (ascending on some steps, descending on others)
    # and the penalty, checkpoint, and print their difference to one device
    # on the whole batch, which must be float32 rounding.
    command = [
        sys.executable,
        str(ROOT / "examples" / "multihost.py"),
        *("--local-processes", "2", "--devices-per-process", "2", "--steps", "6"),
        *("--examples-per-device", "4", "--hidden", "4", "--flood-level", "0.25"),
        *("--checkpoint-dir", str(tmp_path / "checkpoints"), "--checkpoint-every", "3"),
    ]
    with harness.Job([command], tmp_path, dict(os.environ)) as job:
        job.wait(120)
    out = job.logs()[0]
    ran = re.search(
        r"2 processes, 4 devices, 6 steps \(from 0\): .*, (\d+) ascents", out
    )
    assert ran and 0 < int(ran.group(1)) < 6, out
    difference = float(re.search(r"difference to one device .*: (\S+)", out).group(1))
    assert difference <= 1e-6, out
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]
