"""The machine and library versions a benchmark ran on, for its results."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """CPU model, core count, JAX device and library versions in one line."""
    import jax
    import optax

    device = jax.devices()[0]
    return (
        f"{cpu_model()}, {os.cpu_count()} cores; device {device.platform} "
        f"({device.device_kind}); jax {jax.__version__}, optax {optax.__version__}"
    )
