"""Runs tests/data_parallel on 8 simulated CPU devices in a subprocess.

JAX fixes its device count when it starts, so the 8-device tests cannot run
in this process; they run in a fresh one with the XLA flag set.

``PJRT_NPROC`` sizes XLA:CPU's thread pools, ``max(PJRT_NPROC, devices)``
threads, by default one per core. That pool runs both each device's part of
a program and the tasks that launch them, and a launch task blocks while its
device has 32 computations in flight. With 8 threads (any machine of up to 8
cores) a blocked launch task leaves 7 threads for the 8 devices of an
all-reduce, whose rendezvous then waits for the 8th until XLA aborts the
process ("Expected 8 threads to join the rendezvous, but only 7 of them
arrived on time"). 16 threads hold the 8 launch tasks and the 8 devices at
once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_data_parallel_suite_on_8_devices():
    env = {
        **os.environ,
        # After this process's flags (tests/conftest.py's loop emitters).
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
        "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PJRT_NPROC": str(max(16, os.cpu_count() or 1)),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",  # the 8 devices are this process's; no xdist workers
            "tests/data_parallel",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    report = result.stdout[-8000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "skipped" not in result.stdout.splitlines()[-1], report
