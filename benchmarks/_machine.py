"""The machine and library versions a benchmark ran on, for its results."""

from __future__ import annotations

import argparse
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


def parser(doc: str, *, rounds: bool = False) -> argparse.ArgumentParser:
    """The flags every benchmark shares: --width, --out (and --rounds, --steps)."""
    result = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if rounds:
        result.add_argument("--rounds", type=int, default=15)
        result.add_argument("--steps", type=int, default=20)
    result.add_argument("--width", type=int, default=500, help="MLP hidden units")
    result.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results")
    )
    return result
