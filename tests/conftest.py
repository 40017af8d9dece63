"""Shared fixtures, and the suite's JAX settings.

The suite compiles hundreds of small programs, each run a few times, so
XLA's optimisation passes cost more than they save: JAX's
``jax_disable_most_optimizations`` (XLA's backend optimisation level 0) cuts
the suite's CPU time by about a third. Every test compares programs built
under the same setting; ``JAX_DISABLE_MOST_OPTIMIZATIONS=0 pytest`` runs the
optimised programs users run (CI's minimum-versions job does). Set in the
environment, so the subprocesses the suite starts (8 devices, the CLI)
inherit it.
"""

from __future__ import annotations

import os

import jax
import pytest

from tests.helpers import draw_on_terminal, mlp_params, regression_data

# Importing compiles nothing, so this comes in time for every program.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
jax.config.update(
    "jax_disable_most_optimizations",
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() not in ("0", "false", ""),
)


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
