"""A ``value_fn`` must be a loss of the parameters it is given.

The transformations that take ``value_fn`` differentiate it at moved points.
One that never reads its argument (the obvious Flax NNX call,
``value_fn=lambda p: loss(model)``) has a zero gradient everywhere: the
penalty would silently be zero and the within-call ascent step a no-op. These
tests write the training steps the way users do (NNX, Linen, plain pytrees)
and check both that the mistake raises and that the documented pattern gives
the penalty a reference computes independently.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax
from tests.helpers import assert_trees_allclose

nnx = pytest.importorskip("flax.nnx")
linen = pytest.importorskip("flax.linen")

X = jax.random.normal(jax.random.key(0), (16, 3))
Y = jnp.sin(X @ jnp.array([1.0, -2.0, 0.5]))

TRANSFORMS = {
    "penalty exact": lambda: floodax.add_grad_norm_penalty(0.1),
    "penalty finite difference": lambda: floodax.add_grad_norm_penalty(
        0.1, method="finite_difference", radius=1e-3
    ),
    "GNP": lambda: floodax.add_grad_norm_penalty(
        0.04, power=1, method="finite_difference", radius=0.05
    ),
    "alternate within call": lambda: floodax.alternate(0.3, 0.1),
    "backstitch": lambda: floodax.alternate(0.3, 0.1, ascent_first=True),
}


def _params():
    return {"w": jnp.array([0.3, -0.2, 0.1]), "b": jnp.array(0.05)}


def _loss(params, x=X, y=Y):
    return jnp.mean((jnp.tanh(x @ params["w"] + params["b"]) - y) ** 2)


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize(
    "value_fn",
    [
        pytest.param(lambda p: _loss(_params()), id="closes over other params"),
        pytest.param(
            lambda p: _loss(jax.lax.stop_gradient(p)), id="through stop_gradient"
        ),
        pytest.param(
            lambda p: jnp.mean((p["w"] > 0).astype(jnp.float32)), id="integer path"
        ),
    ],
)
def test_value_fn_ignoring_its_params_is_an_error(name, value_fn):
    tx = TRANSFORMS[name]()
    params = _params()
    grads = jax.grad(_loss)(params)
    with pytest.raises(
        ValueError, match=r"(?s)does not depend on the parameters.*nnx.split"
    ):
        tx.update(grads, tx.init(params), params, value_fn=value_fn)
    # At trace time under jit too: the traced program shows the independence.
    with pytest.raises(ValueError, match="does not depend on the parameters"):
        jax.jit(lambda g: tx.update(g, tx.init(params), params, value_fn=value_fn))(
            grads
        )


@pytest.mark.parametrize("name", TRANSFORMS)
def test_value_fn_of_part_of_the_params_is_accepted(name):
    # Reading one leaf is a dependence; only a gradient that is zero by
    # construction is refused.
    tx = TRANSFORMS[name]()
    params = _params()

    def value_fn(p):
        return _loss({"w": p["w"], "b": jnp.array(0.05)})

    updates, _ = tx.update(
        jax.grad(_loss)(params), tx.init(params), params, value_fn=value_fn
    )
    assert np.all(np.isfinite(jax.tree.leaves(updates)[0]))


def test_non_scalar_value_fn_is_named():
    tx = floodax.add_grad_norm_penalty(0.1)
    params = _params()
    with pytest.raises(TypeError, match=r"scalar \(the loss\), got float32\[16\]"):
        tx.update(
            params,
            tx.init(params),
            params,
            value_fn=lambda p: jnp.tanh(X @ p["w"] + p["b"]) - Y,
        )


@pytest.mark.parametrize(
    "value_fn, got",
    [
        (
            lambda p: (_loss(p), 0.0),
            r"got tuple; for a loss that returns "
            r"`\(loss, aux\)`, pass `value_fn=lambda p: loss_fn\(p\)\[0\]`",
        ),
        (lambda p: {"loss": _loss(p)}, r"got dict\."),
        (
            lambda p: jnp.sum(p["w"] > 0),
            r"got int32\[\]; compute the loss in "
            r"floating point",
        ),
    ],
)
def test_value_fn_of_the_wrong_kind_is_named(value_fn, got):
    # A (loss, aux) value_fn reached a raw TracerArrayConversionError, a dict
    # "Cannot determine dtype"; the check the diagnostics use names both.
    tx = floodax.add_grad_norm_penalty(0.1)
    params = _params()
    with pytest.raises(
        TypeError,
        match=r"must return a real floating-point "
        r"scalar \(the loss\), " + got,
    ):
        tx.update(params, tx.init(params), params, value_fn=value_fn)


def test_value_fn_in_multi_steps_large_batch_is_checked():
    tx = floodax.multi_steps(
        optax.chain(floodax.add_grad_norm_penalty(0.1), optax.sgd(0.1)),
        2,
        value_fn_is_large_batch=True,
    )
    params = _params()
    with pytest.raises(ValueError, match="does not depend on the parameters"):
        tx.update(params, tx.init(params), params, value_fn=lambda p: _loss(_params()))


class _Net(nnx.Module):
    def __init__(self, rngs, batch_norm=False):
        self.hidden = nnx.Linear(3, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs) if batch_norm else None
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        h = self.hidden(x)
        if self.norm is not None:
            h = self.norm(h)
        return self.out(jnp.tanh(h))[:, 0]


def _nnx_loss(model):
    return jnp.mean((model(X) - Y) ** 2)


@pytest.mark.parametrize("name", ["penalty exact", "alternate within call"])
def test_nnx_closure_over_the_model_is_an_error(name):
    model = _Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, TRANSFORMS[name](), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(_nnx_loss)(model)
        optimizer.update(model, grads, value_fn=lambda p: _nnx_loss(model))

    with pytest.raises(ValueError, match=r"floodax\.nnx\.value_and_grad\(\n"):
        step(model, optimizer)


def test_nnx_split_merge_pattern_applies_the_penalty():
    strength, lr = 0.1, 0.05
    model = _Net(nnx.Rngs(0))
    graphdef, start = nnx.split(model, nnx.Param)
    start = nnx.to_pure_dict(start)  # a copy of the values before the step

    # Reference: double backpropagation of L + λ‖∇L‖² on the pure parameters.
    def pure_loss(p):
        state = nnx.state(nnx.merge(graphdef, nnx.split(model, nnx.Param)[1]))
        nnx.replace_by_pure_dict(state, p)
        return _nnx_loss(nnx.merge(graphdef, state))

    penalised = floodax.grad_norm_penalty(pure_loss, strength)
    expected = jax.tree.map(lambda p, g: p - lr * g, start, jax.grad(penalised)(start))
    plain = jax.tree.map(lambda p, g: p - lr * g, start, jax.grad(pure_loss)(start))

    tx = optax.chain(floodax.add_grad_norm_penalty(strength), optax.sgd(lr))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(_nnx_loss)(model)
        graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        optimizer.update(
            model,
            grads,
            value_fn=lambda p: _nnx_loss(nnx.merge(graphdef, p, rest, copy=True)),
        )

    step(model, optimizer)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert_trees_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The penalty is not negligible here, so a zero penalty would fail above.
    gap = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(plain), strict=True)
    )
    assert gap > 1e-3


def test_nnx_pattern_leaves_batch_statistics_to_the_loss_pass():
    def run(tx, with_value_fn):
        model = _Net(nnx.Rngs(0), batch_norm=True)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer):
            grads = nnx.grad(_nnx_loss)(model)  # updates the statistics once
            graphdef, _, rest = nnx.split(model, nnx.Param, ...)
            kwargs = (
                {
                    "value_fn": lambda p: _nnx_loss(
                        nnx.merge(graphdef, p, rest, copy=True)
                    )
                }
                if with_value_fn
                else {}
            )
            optimizer.update(model, grads, **kwargs)

        step(model, optimizer)
        return nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    penalised = run(
        optax.chain(floodax.add_grad_norm_penalty(0.1), optax.sgd(0.05)), True
    )
    plain = run(optax.sgd(0.05), False)
    assert_trees_allclose(penalised, plain, rtol=0, atol=0)


def test_linen_closure_over_variables_is_an_error_and_params_work():
    dense = linen.Dense(1)
    variables = dense.init(jax.random.key(2), X)
    params = variables["params"]

    def loss_of(p):
        return jnp.mean((dense.apply({"params": p}, X)[:, 0] - Y) ** 2)

    tx = floodax.add_grad_norm_penalty(0.1)
    grads = jax.grad(loss_of)(params)
    with pytest.raises(ValueError, match="does not depend on the parameters"):
        tx.update(grads, tx.init(params), params, value_fn=lambda p: loss_of(params))
    updates, _ = tx.update(grads, tx.init(params), params, value_fn=loss_of)
    assert_trees_allclose(
        updates, jax.grad(floodax.grad_norm_penalty(loss_of, 0.1))(params), rtol=1e-5
    )
