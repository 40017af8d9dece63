"""Shared fixtures."""

from __future__ import annotations

import jax
import pytest

from tests.helpers import draw_on_terminal, mlp_params, regression_data


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
