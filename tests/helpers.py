"""Small helpers shared by the tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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
