"""What every benchmark script shares: the machine it ran on, its flags, its
results files and, for the long experiments, a cache of finished runs."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence

from tqdm import tqdm


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


def command(script: str) -> str:
    """The command line that made the results, as a reader would retype it."""
    name = os.path.basename(script)
    return f"python benchmarks/{name} {shlex.join(sys.argv[1:])}".strip()


def write_results(out: str, name: str, text: str, payload: dict) -> None:
    """Write ``name.md`` (``text``) and ``name.json`` (``payload``) under
    ``out``, and print the text."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=2)
    print(text)


def mean_std(values) -> str:
    """Accuracies (fractions) as ``mean ± std`` in percent."""
    import numpy as np

    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


class RunCache:
    """Finished runs of a long experiment, one JSON line each, so that an
    interrupted experiment resumes where it stopped.

    A run is named by the values of ``fields`` (which its row repeats); a run
    already in the file is never run again.
    """

    def __init__(self, path: str, fields: Sequence[str]):
        self.path, self.fields, self.rows = path, tuple(fields), {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    row = json.loads(line)
                    self.rows[tuple(row[k] for k in self.fields)] = row

    def missing(self, jobs: Sequence[dict]) -> int:
        return sum(tuple(job[k] for k in self.fields) not in self.rows for job in jobs)

    def run(self, jobs: Sequence[dict], run: Callable[..., dict], desc: str) -> list:
        """``run(**job)`` for each job not cached yet; every job's row, in order."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        rows = []
        for job in tqdm(jobs, desc=desc):
            key = tuple(job[k] for k in self.fields)
            if key not in self.rows:
                self.rows[key] = run(**job)
                with open(self.path, "a") as f:
                    f.write(json.dumps(self.rows[key]) + "\n")
            rows.append(self.rows[key])
        return rows
