"""Runs tests/data_parallel on 8 simulated CPU devices in a subprocess.

JAX fixes its device count when it starts, so the 8-device tests cannot run
in this process; they run in a fresh one with the XLA flag set.
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
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
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
