"""Small helpers shared by the tests."""

from __future__ import annotations

import io
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np

from floodax._theory import pure_loss


def assert_trees_allclose(actual, desired, *, rtol=1e-12, atol=0.0):
    """Asserts two pytrees have the same structure, dtypes and close leaves."""
    assert jax.tree.structure(actual) == jax.tree.structure(desired)
    for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True):
        assert jnp.asarray(a).dtype == jnp.asarray(d).dtype
        np.testing.assert_allclose(
            np.asarray(a, np.float64), np.asarray(d, np.float64), rtol=rtol, atol=atol
        )


def mlp_params(key, n_in=3, n_hidden=5, dtype=jnp.float64):
    """Parameters of a one-hidden-layer tanh MLP with a scalar output."""
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w1": jax.random.normal(k1, (n_in, n_hidden), dtype) / np.sqrt(n_in),
        "b1": 0.1 * jax.random.normal(k2, (n_hidden,), dtype),
        "w2": jax.random.normal(k3, (n_hidden,), dtype) / np.sqrt(n_hidden),
    }


def mlp_example_losses(params, x, y):
    """Per-example squared errors of :func:`mlp_params`' model."""
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    return (hidden @ params["w2"] - y) ** 2


# A function of its arguments alone: the theory checks may keep its compiled
# rungs across calls, as they do for `floodax verify`'s loss.
@pure_loss
def mlp_loss(params, x, y):
    """Mean squared error of :func:`mlp_params`' model."""
    return jnp.mean(mlp_example_losses(params, x, y))


def regression_data(key, n=16, n_in=3, dtype=jnp.float64):
    """A smooth regression target the MLP can fit."""
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (n, n_in), dtype)
    y = (
        jnp.sin(x[:, 0])
        + 0.5 * x[:, 1] * x[:, 2]
        + 0.1 * jax.random.normal(kn, (n,), dtype)
    )
    return x, y


class TraceCounter:
    """Counts how often a function is traced (each trace is a compilation)."""

    def __init__(self, fn):
        self.fn = fn
        self.traces = 0

    def __call__(self, *args, **kwargs):
        self.traces += 1
        return self.fn(*args, **kwargs)


class Terminal(io.StringIO):
    """A standard error that says it is a terminal, so progress bars draw."""

    def isatty(self) -> bool:
        return True


def draw_on_terminal(monkeypatch) -> Terminal:
    """Makes the progress bars' standard error a :class:`Terminal` of 500
    columns, with every update drawn, through ``monkeypatch`` (a
    ``pytest.MonkeyPatch``); returns it to read what was drawn. (pytest's
    capture sets ``sys.stderr`` again when a test starts, so the bars'
    module gets a ``sys`` of its own.)"""
    import types

    from floodax import _progress

    stream = Terminal()
    monkeypatch.setattr(_progress, "sys", types.SimpleNamespace(stderr=stream))
    monkeypatch.setattr(_progress, "REDRAW_SECONDS", 0.0)
    monkeypatch.setenv("COLUMNS", "500")
    return stream


_BAR = re.compile(r"^(.*?): +\d+% \|[#.]*\| (\d+)/(\d+) \[")


def bars(text: str) -> dict[str, list[tuple[int, int]]]:
    """The progress bars drawn in ``text``: for each description, the
    ``(done, total)`` of every drawing, in order."""
    drawn: dict[str, list[tuple[int, int]]] = {}
    for piece in text.split("\r"):
        match = _BAR.match(piece)
        if match:
            desc, done, total = match.groups()
            drawn.setdefault(desc, []).append((int(done), int(total)))
    return drawn


def assert_counts_every_unit(drawings: list[tuple[int, int]], total: int) -> set:
    """Drawn from 0 to ``total`` (redraws unthrottled), never back, never
    past it; returns the steps between the counts drawn (1: one unit at a
    time; a whole epoch of runs trained together at a time)."""
    assert {t for _, t in drawings} == {total}
    done = [d for d, _ in drawings]
    assert done[0] == 0 and done[-1] == total
    assert all(b >= a for a, b in itertools.pairwise(done))
    return {b - a for a, b in itertools.pairwise(sorted(set(done)))}
