"""Every floodax state round-trips through orbax; a resumed run is identical."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax

ocp = pytest.importorskip("orbax.checkpoint")


def _loss(params, x, y):
    return jnp.mean((jnp.tanh(x @ params["w"]) @ params["v"] - y) ** 2)


def _problem():
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    params = {
        "w": jax.random.normal(k1, (3, 5)) / 2,
        "v": jax.random.normal(k2, (5,)) / 2,
    }
    x = jax.random.normal(k3, (32, 3))
    y = jnp.sin(x[:, 0]) + 0.3 * jax.random.normal(k4, (32,))
    return params, x, y


TRANSFORMS = {
    "flood": lambda: optax.chain(floodax.flood(0.05), optax.adam(0.03)),
    "flood_schedule": lambda: optax.chain(
        floodax.flood(optax.linear_schedule(0.0, 0.1, 20)), optax.sgd(0.1, momentum=0.9)
    ),
    "inject_flood": lambda: optax.chain(
        optax.inject_hyperparams(floodax.flood)(flood_level=0.05), optax.adam(0.03)
    ),
    "alternate": lambda: optax.chain(
        optax.scale_by_adam(), floodax.alternate(0.03, 0.01)
    ),
    "backstitch": lambda: floodax.alternate(0.2, 0.05, ascent_first=True, interval=3),
    "penalty": lambda: optax.chain(
        floodax.add_grad_norm_penalty(0.1), optax.adam(0.03)
    ),
    "penalty_fd": lambda: optax.chain(
        floodax.add_grad_norm_penalty(0.1, method="finite_difference"), optax.sgd(0.1)
    ),
}


def _step_fn(tx, x, y):
    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        updates, state = tx.update(
            grads, state, params, value=loss, value_fn=lambda p: _loss(p, x, y)
        )
        return optax.apply_updates(params, updates), state

    return step


@functools.cache
def _uninterrupted(name):
    """The problem, ``name``'s transformation, its compiled step and the
    30 steps run without a stop: computed once, shared by every split."""
    params, x, y = _problem()
    tx = TRANSFORMS[name]()
    step = _step_fn(tx, x, y)
    p, s = params, tx.init(params)
    for _ in range(30):
        p, s = step(p, s)
    return params, tx, step, p


def _save_restore(path, tree):
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, tree)
    checkpointer.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    return checkpointer.restore(path, abstract)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
# 12 steps end a cycle of every transform; 13 stops an across-calls
# `alternate` between its descent and ascent step, and 14 stops the
# backstitch cycle (a pair, then two plain steps) in its middle.
@pytest.mark.parametrize("split", [12, 13, 14])
def test_stop_save_restore_resume_is_bitwise_identical(tmp_path, name, split):
    params, tx, step, uninterrupted = _uninterrupted(name)
    p, s = params, tx.init(params)
    for _ in range(split):
        p, s = step(p, s)
    restored = _save_restore(tmp_path / "ckpt", {"params": p, "opt_state": s})
    # Same structure and types: NamedTuple states come back as NamedTuples.
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(s)
    for a, b in zip(
        jax.tree.leaves(restored["opt_state"]), jax.tree.leaves(s), strict=True
    ):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    p, s = restored["params"], restored["opt_state"]
    for _ in range(30 - split):
        p, s = step(p, s)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)


def test_flood_counters_survive_a_checkpoint(tmp_path):
    tx = floodax.flood(0.5)
    grads = jnp.ones(2)
    state = tx.init(grads)
    for value in (0.9, 0.1, 0.2):
        _, state = tx.update(grads, state, value=jnp.float32(value))
    restored = _save_restore(tmp_path / "flood", state)
    assert isinstance(restored, floodax.FloodState)
    assert int(restored.count) == 3 and int(restored.ascent_count) == 2
