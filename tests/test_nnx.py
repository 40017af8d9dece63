"""floodax.nnx and floodax.linen.value_and_grad: extra passes leave the model alone.

A model with batch norm and dropout, trained with the transformations that
evaluate ``value_fn`` again (the penalty, ``floodax.sam``, ``alternate``
within one call): after one step the batch statistics and random streams
must equal those of a plain step exactly (the extra passes change nothing),
and the update must equal the one computed independently, in float64, from
``jax.hessian`` and ``jax.grad`` of the model's loss with the clean pass's
dropout mask (each evaluation on a fresh clone of the model before the step).
"""

from __future__ import annotations

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import floodax
from tests.helpers import assert_trees_allclose

nnx = pytest.importorskip("flax.nnx")
linen = pytest.importorskip("flax.linen")
import floodax.linen  # noqa: E402
import floodax.nnx  # noqa: E402

STRENGTH, RHO, EPS1, EPS2 = 0.05, 0.05, 0.3, 0.1
TRANSFORMS = {
    "penalty": lambda: floodax.add_grad_norm_penalty(STRENGTH),
    # floodax.sam; test_sam.py shows it is the penalty's power-1 form too.
    "SAM": lambda: floodax.sam(RHO),
    "alternate": lambda: floodax.alternate(EPS1, EPS2),
}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _expected_update(name, loss_of_params, params):
    """The update each transformation should return, and the plain gradient,
    both flat: penalty ``g + 2λHg``, SAM ``∇L(θ + ρĝ)``, alternate's pair
    ``-ε1·g + ε2·∇L(θ - ε1·g)``."""
    theta, unravel = ravel_pytree(params)

    def loss(flat):
        return loss_of_params(unravel(flat))

    g = jax.grad(loss)(theta)
    if name == "penalty":
        expected = g + 2 * STRENGTH * jax.hessian(loss)(theta) @ g
    elif name == "SAM":
        expected = jax.grad(loss)(theta + RHO * g / jnp.linalg.norm(g))
    else:
        expected = -EPS1 * g + EPS2 * jax.grad(loss)(theta - EPS1 * g)
    return expected, g


def _flat(tree):
    """The leaves of ``tree`` in ravel_pytree's order, as one NumPy vector."""
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])


def _data():
    # NumPy: no eager JAX operation (each compiles once) outside the jitted steps.
    x = np.random.default_rng(0).normal(size=(16, 3))
    return x, np.sin(x @ np.array([1.0, -2.0, 0.5]))


class _Net(nnx.Module):
    def __init__(self, rngs):
        f64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
        self.hidden = nnx.Linear(3, 6, rngs=rngs, **f64)
        self.norm = nnx.BatchNorm(6, rngs=rngs, **f64)
        # NNX keeps running statistics in float32 whatever the dtype.
        self.norm.mean = nnx.BatchStat(jnp.zeros(6, jnp.float64))
        self.norm.var = nnx.BatchStat(jnp.ones(6, jnp.float64))
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(6, 1, rngs=rngs, **f64)

    def __call__(self, x):
        return self.out(self.drop(jnp.tanh(self.norm(self.hidden(x)))))[:, 0]


@nnx.jit
def _new_net():
    return _Net(nnx.Rngs(0, dropout=1))


def _nnx_loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def _non_params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.BatchStat, nnx.RngCount)))


def _nnx_step(tx, with_value_fn):
    """One jitted NNX step from the same initial model: the model, the
    updates and a clone of the model before the step."""
    model = _new_net()
    before = nnx.clone(model)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        if with_value_fn:
            _, grads, value_fn = floodax.nnx.value_and_grad(_nnx_loss, model, x, y)
            optimizer.update(model, grads, value_fn=value_fn)
        else:
            _, grads = nnx.value_and_grad(_nnx_loss)(model, x, y)
            optimizer.update(model, grads)

    step(model, optimizer, *_data())
    # The transformation is the whole optimizer: parameters + updates. (Flax
    # 0.12.0's `optimizer.update` returns nothing; later ones the updates.)
    updates = jax.tree.map(
        lambda new, old: new - old,
        nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        nnx.to_pure_dict(nnx.state(before, nnx.Param)),
    )
    return model, updates, before


@pytest.fixture(scope="module")
def nnx_plain():
    with jax.enable_x64(True):
        model, _, _ = _nnx_step(optax.identity(), with_value_fn=False)
        return _non_params(model)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_nnx_extra_passes_leave_the_model_and_match_the_reference(name, nnx_plain, x64):
    model, updates, before = _nnx_step(TRANSFORMS[name](), with_value_fn=True)
    # Batch statistics and dropout counters: advanced once, by the clean pass.
    assert_trees_allclose(_non_params(model), nnx_plain, rtol=0, atol=0)
    # The statistics did move (a test of equality between two frozen models
    # would pass trivially).
    start = _non_params(before)["norm"]["mean"]
    assert np.max(np.abs(nnx_plain["norm"]["mean"] - start)) > 1e-3

    def loss(params):  # the model as it was before the step: the clean pass's mask
        fresh = nnx.clone(before)
        state = nnx.state(fresh, nnx.Param)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(fresh, state)
        return _nnx_loss(fresh, *_data())

    got = _flat(updates)
    expected, plain = _expected_update(
        name, loss, nnx.to_pure_dict(nnx.state(before, nnx.Param))
    )
    # atol: the bias before batch norm has a zero gradient, up to rounding.
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)
    # The transformation is not a no-op here: the plain gradient is far off.
    assert np.max(np.abs(got - plain)) > 1e-3


def test_nnx_value_fn_with_aux_returns_the_loss(x64):
    model = _new_net()

    def loss_with_aux(model, x, y):
        prediction = model(x)
        return jnp.mean((prediction - y) ** 2), prediction

    @nnx.jit
    def run(model, x, y):
        (loss, prediction), grads, value_fn = floodax.nnx.value_and_grad(
            loss_with_aux, model, x, y, has_aux=True
        )
        params = floodax.nnx._as_pure(nnx.state(model, nnx.Param))
        value, grads_of_value_fn = jax.value_and_grad(value_fn)(params)
        return loss, prediction, grads, value, grads_of_value_fn

    loss, prediction, grads, value, grads_of_value_fn = run(model, *_data())
    assert prediction.shape == (16,)
    # value_fn runs the model as the clean pass found it: the same loss.
    assert float(value) == float(loss)
    assert_trees_allclose(
        nnx.to_pure_dict(grads_of_value_fn), nnx.to_pure_dict(grads), atol=1e-15
    )


def test_nnx_arguments_in_the_wrong_order_are_named():
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"`loss_fn` must be a function.*comes second"):
        floodax.nnx.value_and_grad(model, _nnx_loss)
    with pytest.raises(TypeError, match=r"`model` must be an `nnx.Module`, got dict"):
        floodax.nnx.value_and_grad(_nnx_loss, {"w": jnp.ones(2)})


class _LinenNet(linen.Module):
    @linen.compact
    def __call__(self, x):
        f64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
        h = linen.BatchNorm(use_running_average=False, **f64)(linen.Dense(6, **f64)(x))
        h = linen.Dropout(0.5, deterministic=False)(jnp.tanh(h))
        return linen.Dense(1, **f64)(h)[:, 0]


@pytest.mark.parametrize("name", ["penalty"])
def test_linen_extra_passes_keep_the_clean_batch_stats(name, x64):
    x, y = _data()
    net = _LinenNet()
    variables = jax.jit(net.init)(jax.random.key(0), x)
    dropout_key = jax.random.key(1)

    def loss_fn(params, batch_stats, x, y):
        prediction, mutated = net.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
        )
        return jnp.mean((prediction - y) ** 2), mutated["batch_stats"]

    class BatchNormState(floodax.linen.TrainState):
        batch_stats: dict

    state = BatchNormState.create(
        apply_fn=net.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=optax.chain(TRANSFORMS[name](), optax.sgd(1.0)),
    )

    @jax.jit
    def step(state, x, y):
        (_, batch_stats), grads, value_fn = floodax.linen.value_and_grad(
            loss_fn, state.params, state.batch_stats, x, y, has_aux=True
        )
        return state.apply_gradients(
            grads=grads, value_fn=value_fn, batch_stats=batch_stats
        )

    new = step(state, x, y)
    _, clean_stats = jax.jit(loss_fn)(state.params, state.batch_stats, x, y)
    assert_trees_allclose(new.batch_stats, clean_stats, rtol=0, atol=0)

    def loss(params):
        return loss_fn(params, state.batch_stats, x, y)[0]

    got = _flat(state.params) - _flat(new.params)  # sgd(1): the update, negated
    expected, _ = _expected_update(name, loss, state.params)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)


def test_import_without_flax_names_the_extra():
    # One interpreter for both modules (each start imports JAX).
    code = (
        "import sys; sys.modules['flax'] = None\n"
        "for module in ('floodax.linen', 'floodax.nnx'):\n"
        "    try:\n"
        "        __import__(module)\n"
        "    except ImportError as error:\n"
        "        print(type(error).__name__, type(error.__cause__).__name__)\n"
        "        print(str(error).replace('\\n', ' '))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    for module, kind, message in zip(
        ("floodax.linen", "floodax.nnx"), lines[::2], lines[1::2], strict=True
    ):
        assert kind == "ImportError ModuleNotFoundError"
        assert message.startswith(f"{module} needs Flax")
        assert 'pip install -e ".[demo]"' in message
