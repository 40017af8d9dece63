"""Shared fixtures, and the suite's JAX settings.

The suite compiles hundreds of small programs, each run a few times, so
XLA's optimisation passes cost more than they save: JAX's
``jax_disable_most_optimizations`` (XLA's backend optimisation level 0) cuts
the suite's CPU time by about a third. Every test compares programs built
under the same setting; ``JAX_DISABLE_MOST_OPTIMIZATIONS=0 pytest`` runs the
optimised programs users run (CI's minimum-versions job does). Set in the
environment, so the subprocesses the suite starts (8 devices, several
processes, the CLI) inherit it.

With it, XLA:CPU's older loop emitters replace its fusion emitters
(``--xla_cpu_use_fusion_emitters=false`` in ``XLA_FLAGS``): they compile the
suite's tiny programs in well under half the time (test_sam and
test_diagnostics: 60 against 102 s of CPU). A JAX whose XLA no longer knows
the flag would abort on it, so it is added only after a fresh process has
compiled a program with it (about a second, once: the flag then travels in
``XLA_FLAGS`` to the workers and subprocesses).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest

from tests.helpers import draw_on_terminal, mlp_params, regression_data

LOOP_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flag: str) -> bool:
    """Whether a fresh process compiles and runs a program with ``flag``."""
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}"}
    probe = "import jax; jax.jit(lambda x: x + 1)(1.0).block_until_ready()"
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, check=False
    )
    return result.returncode == 0


# Importing compiles nothing, so this comes in time for every program.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
FAST = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() not in ("0", "false", "")
jax.config.update("jax_disable_most_optimizations", FAST)
if (
    FAST
    and LOOP_EMITTERS not in os.environ.get("XLA_FLAGS", "")
    and _xla_accepts(LOOP_EMITTERS)
):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {LOOP_EMITTERS}"


@pytest.fixture
def x64():
    """Runs a test with float64 enabled, where exactness is the point."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def mlp(x64):
    """A small float64 MLP regression problem: ``(params, x, y)``."""
    params = mlp_params(jax.random.key(0))
    x, y = regression_data(jax.random.key(1))
    return params, x, y


@pytest.fixture
def terminal(monkeypatch):
    """The progress bars' standard error as a terminal of 500 columns
    (:class:`tests.helpers.Terminal`), with every update drawn; returns it to
    read what was drawn (:func:`tests.helpers.draw_on_terminal`)."""
    return draw_on_terminal(monkeypatch)
