"""Starts N JAX processes on this machine and runs one function in all of them.

The processes meet through ``jax.distributed.initialize`` on 127.0.0.1 at a
free port, each with ``M`` CPU devices (``JAX_NUM_CPU_DEVICES``), and JAX's
CPU collectives between them: gloo, the default of
``jax_cpu_collectives_implementation`` in JAX 0.8 and 0.10. The timeouts are
those of JAX's own multi-process tests (``jax/_src/test_multiprocess.py`` in
jax-ml/jax, which run one device a process).

**Several devices a process need ``PJRT_NPROC >= 2·M``.** XLA:CPU runs each
device's part of a program, and the task that launches it, on one thread
pool of ``max(PJRT_NPROC, M)`` threads (``PJRT_NPROC`` defaults to the
number of cores). Once a device has 32 programs in flight its launch task
holds a thread, and a cross-process all-reduce holds one for each local
device that has joined it; with 2 cores and ``M >= 2`` the last local
device then never gets a thread, and the others wait for it forever, every
thread asleep (gloo gave no error in 60 s; the in-process all-reduce of one
process aborts after 40 s, ``tests/test_data_parallel.py``). Measured with
50 to 100 all-reduces dispatched without waiting: ``M = 4`` hangs with 4 to
7 threads and runs with 8, ``M = 2`` hangs with 2 or 3 and runs with 4.
:func:`environment` sets it; see README's "Many hosts".

The parent never imports JAX: starting the processes costs it nothing. Each
process writes its output to ``process_<i>.log`` and its result to
``result_<i>.pkl`` in the run's folder; a process that dies, or a run past
its time limit, fails with every process's output, and no process outlives
the call (each runs in its own session, killed as a group in a ``finally``).
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class ProcessesFailed(AssertionError):
    """A process exited with an error or the run passed its time limit; the
    message holds every process's return code and output."""

    def __init__(self, reason: str, returncodes: list[int | None], logs: list[str]):
        self.reason, self.returncodes, self.logs = reason, returncodes, logs
        parts = [reason]
        for i, (code, log) in enumerate(zip(returncodes, logs, strict=True)):
            parts.append(f"===== process {i}: return code {code} =====\n{log[-6000:]}")
        super().__init__("\n".join(parts))


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick; JAX's tests use
    portpicker for the same)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(local_devices: int) -> dict[str, str]:
    """The environment of one of the processes: JAX on CPU with
    ``local_devices`` devices, a thread pool of at least two threads a
    device (see the module's docstring), and this process's ``XLA_FLAGS``
    (tests/conftest.py adds XLA:CPU's faster-compiling loop emitters)."""
    threads = max(2 * local_devices, int(os.environ.get("PJRT_NPROC", "0") or 0))
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": str(local_devices),
        "PJRT_NPROC": str(threads),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }


class Job:
    """Processes started together: ``wait`` for them, read their
    ``logs``. Use as a context manager: leaving it kills every
    process still running, with its children."""

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        folder: Path,
        env: dict[str, str] | Sequence[dict[str, str]],
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        envs = [env] * len(commands) if isinstance(env, dict) else list(env)
        self.log_paths = [
            self.folder / f"process_{i}.log" for i in range(len(commands))
        ]
        self.processes: list[subprocess.Popen] = []
        for command, path, process_env in zip(
            commands, self.log_paths, envs, strict=True
        ):
            with open(path, "wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        list(command),
                        cwd=ROOT,
                        env=process_env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.kill_all()

    def logs(self) -> list[str]:
        return [
            p.read_text(errors="replace") if p.exists() else "" for p in self.log_paths
        ]

    def returncodes(self) -> list[int | None]:
        return [p.poll() for p in self.processes]

    def kill_all(self) -> None:
        """Kills every process still running, with its children."""
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()

    def failure(self, reason: str) -> ProcessesFailed:
        """The error that reports ``reason`` with every process's return
        code and output."""
        return ProcessesFailed(reason, self.returncodes(), self.logs())

    def wait_until(self, condition: Callable[[], bool], timeout: float, reason: str):
        """Waits until ``condition()``; raises :class:`ProcessesFailed` with
        ``reason`` after ``timeout`` seconds. Exits do not stop it."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise self.failure(reason)
            time.sleep(0.05)

    def wait(self, timeout: float) -> None:
        """Waits until every process has exited; raises
        :class:`ProcessesFailed` at once when one exits with an error, or
        when ``timeout`` seconds pass."""

        def finished() -> bool:
            codes = self.returncodes()
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                raise self.failure(
                    f"process {failed[0]} exited with {codes[failed[0]]}"
                )
            return all(c == 0 for c in codes)

        self.wait_until(finished, timeout, f"still running after {timeout:.0f} s")


def start(
    function: str,
    num_processes: int,
    local_devices: int,
    folder: Path,
    *,
    heartbeat_timeout: int = 10,
    **kwargs: Any,
) -> Job:
    """Starts ``num_processes`` processes of ``local_devices`` CPU devices
    each that run ``function`` ("module:name", importable from the
    repository root) as ``function(folder, **kwargs)`` after
    ``jax.distributed.initialize``; returns the :class:`Job`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "kwargs.pkl", "wb") as f:
        pickle.dump(kwargs, f)
    address = f"127.0.0.1:{free_port()}"
    commands = [
        [
            sys.executable,
            "-m",
            "tests.multiprocess.worker",
            function,
            str(folder),
            address,
            str(num_processes),
            str(i),
            str(heartbeat_timeout),
        ]
        for i in range(num_processes)
    ]
    return Job(commands, folder, environment(local_devices))


def run(
    function: str,
    num_processes: int,
    local_devices: int,
    folder: Path,
    *,
    timeout: float = 120,
    **kwargs: Any,
) -> list[Any]:
    """Runs ``function`` in ``num_processes`` processes (see :func:`start`)
    and returns their results, process 0's first. Fails with every
    process's output if one dies or ``timeout`` seconds pass."""
    with start(function, num_processes, local_devices, folder, **kwargs) as job:
        job.wait(timeout)
    return [results(folder, i) for i in range(num_processes)]


def results(folder: Path, index: int) -> Any:
    with open(Path(folder) / f"result_{index}.pkl", "rb") as f:
        return pickle.load(f)
