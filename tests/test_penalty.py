"""Tests of the explicit gradient-norm penalty."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import floodax
from tests.helpers import TraceCounter, assert_trees_allclose, mlp_loss


def _explicit_penalised_grad(loss_fn, params, strength):
    """g + 2λ·H·g with the Hessian materialised by ``jax.hessian``."""
    flat, unravel = ravel_pytree(params)
    flat_loss = lambda v: loss_fn(unravel(v))  # noqa: E731
    g = jax.grad(flat_loss)(flat)
    hessian = jax.hessian(flat_loss)(flat)
    return unravel(g + 2 * strength * hessian @ g)


@pytest.mark.parametrize("strength", [0.0, 0.05, 1.3])
def test_grad_of_grad_norm_penalty_matches_explicit_hessian(mlp, strength):
    params, x, y = mlp
    penalised = floodax.grad_norm_penalty(mlp_loss, strength)
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    g = jax.grad(loss_fn)(params)
    value = penalised(params, x, y)
    expected_value = loss_fn(params) + strength * sum(
        jnp.sum(v**2) for v in jax.tree.leaves(g)
    )
    np.testing.assert_allclose(value, expected_value, rtol=1e-14)
    assert_trees_allclose(
        jax.jit(jax.grad(penalised))(params, x, y),
        _explicit_penalised_grad(loss_fn, params, strength),
        rtol=1e-11,
        atol=1e-14,
    )


@pytest.mark.parametrize("strength", [0.05, 1.3])
def test_exact_penalty_transform_matches_explicit_hessian(mlp, strength):
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    tx = floodax.add_grad_norm_penalty(strength)
    out, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p, value_fn=loss_fn))(
        jax.grad(loss_fn)(params), params
    )
    assert_trees_allclose(
        out, _explicit_penalised_grad(loss_fn, params, strength), rtol=1e-11, atol=1e-14
    )


def test_finite_difference_within_stated_tolerance(mlp):
    # Forward difference: error O(r); with the float64 default radius
    # (sqrt(eps) = 1.5e-8) the penalised gradient is within 1e-6 relative.
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    strength = 0.5
    expected = _explicit_penalised_grad(loss_fn, params, strength)
    g = jax.grad(loss_fn)(params)
    exp_flat = ravel_pytree(expected)[0]
    errors = {}
    for radius in (None, 1e-3, 1e-4):
        tx = floodax.add_grad_norm_penalty(
            strength, method="finite_difference", radius=radius
        )
        out, _ = tx.update(g, tx.init(params), params, value_fn=loss_fn)
        errors[radius] = float(
            jnp.linalg.norm(ravel_pytree(out)[0] - exp_flat) / jnp.linalg.norm(exp_flat)
        )
    assert errors[None] < 1e-6
    # The truncation error is first order in r: ten times smaller radius,
    # about ten times smaller error.
    assert 5 < errors[1e-3] / errors[1e-4] < 20


def test_penalty_forms_agree(mlp):
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    tx = floodax.add_grad_norm_penalty(0.2)
    out, _ = tx.update(
        jax.grad(loss_fn)(params), tx.init(params), params, value_fn=loss_fn
    )
    assert_trees_allclose(
        out,
        jax.grad(floodax.grad_norm_penalty(loss_fn, 0.2))(params),
        rtol=1e-12,
        atol=1e-15,
    )


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_zero_gradient_gives_finite_results(method):
    loss_fn = lambda p: jnp.sum((p["w"] - 1.0) ** 2)  # noqa: E731
    params = {"w": jnp.ones(3)}  # the minimum: g = 0
    tx = floodax.add_grad_norm_penalty(0.7, method=method)
    out, _ = tx.update(
        jax.grad(loss_fn)(params), tx.init(params), params, value_fn=loss_fn
    )
    np.testing.assert_array_equal(out["w"], np.zeros(3))
    grad = jax.grad(floodax.grad_norm_penalty(loss_fn, 0.7))(params)
    np.testing.assert_array_equal(grad["w"], np.zeros(3))


def test_grad_norm_penalty_argnums_and_has_aux(x64):
    def loss_fn(a, b, scale):
        return scale * jnp.sum(a**2 * b), {"a": a}

    a, b = jnp.array([1.0, 2.0]), jnp.array([3.0, -1.0])
    penalised = floodax.grad_norm_penalty(loss_fn, 0.1, argnums=(0, 1), has_aux=True)
    value, aux = penalised(a, b, 2.0)
    ga, gb = 2 * 2.0 * a * b, 2.0 * a**2
    np.testing.assert_allclose(
        value,
        2.0 * jnp.sum(a**2 * b) + 0.1 * (jnp.sum(ga**2) + jnp.sum(gb**2)),
        rtol=1e-14,
    )
    np.testing.assert_array_equal(aux["a"], a)
    only_b = floodax.grad_norm_penalty(loss_fn, 0.1, argnums=1, has_aux=True)
    np.testing.assert_allclose(
        only_b(a, b, 2.0)[0], 2.0 * jnp.sum(a**2 * b) + 0.1 * jnp.sum(gb**2), rtol=1e-14
    )


def test_grad_norm_penalty_under_vmap_over_strength_and_batch(mlp):
    params, x, y = mlp
    strengths = jnp.array([0.0, 0.1, 1.0])
    grads = jax.vmap(
        lambda s: jax.grad(floodax.grad_norm_penalty(mlp_loss, s))(params, x, y)
    )(strengths)
    for i, s in enumerate(strengths):
        single = jax.grad(floodax.grad_norm_penalty(mlp_loss, s))(params, x, y)
        assert_trees_allclose(
            jax.tree.map(lambda v, i=i: v[i], grads), single, rtol=1e-12
        )
    per_example = jax.vmap(
        lambda xi, yi: floodax.grad_norm_penalty(mlp_loss, 0.3)(
            params, xi[None], yi[None]
        )
    )(x, y)
    np.testing.assert_allclose(
        per_example[3],
        floodax.grad_norm_penalty(mlp_loss, 0.3)(params, x[3:4], y[3:4]),
        rtol=1e-13,
    )


def test_penalty_transform_no_recompile_and_inject():
    params = jnp.array([0.5, -1.0])
    loss_fn = lambda p, x: jnp.sum(x * p**4)  # noqa: E731
    injected = optax.inject_hyperparams(floodax.add_grad_norm_penalty)(strength=0.1)
    plain = floodax.add_grad_norm_penalty(0.1)
    fn = TraceCounter(
        lambda s, x: injected.update(
            jax.grad(loss_fn)(params, x), s, params, value_fn=lambda p: loss_fn(p, x)
        )
    )
    step = jax.jit(fn)
    state = injected.init(params)
    for x in (1.0, 2.0):
        out, state = step(state, jnp.float32(x))
        ref, _ = plain.update(
            jax.grad(loss_fn)(params, x),
            plain.init(params),
            params,
            value_fn=lambda p, x=x: loss_fn(p, x),
        )
        np.testing.assert_allclose(out, ref, rtol=1e-6)
    state.hyperparams["strength"] = jnp.float32(0.0)
    out, _ = step(state, jnp.float32(1.0))
    np.testing.assert_allclose(out, jax.grad(loss_fn)(params, 1.0), rtol=1e-6)
    assert fn.traces == 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_penalty_keeps_dtypes_without_nan(dtype, method):
    params = {"w": jnp.array([0.5, -0.25, 1.0], dtype)}
    loss_fn = lambda p: jnp.sum(p["w"].astype(jnp.float32) ** 4)  # noqa: E731
    tx = optax.chain(floodax.add_grad_norm_penalty(0.1, method=method), optax.sgd(0.1))
    grads = jax.grad(loss_fn)(params)
    out, _ = tx.update(grads, tx.init(params), params, value_fn=loss_fn)
    assert out["w"].dtype == dtype
    w = np.array([0.5, -0.25, 1.0])
    expected = -0.1 * (4 * w**3 + 0.2 * 12 * w**2 * 4 * w**3)
    # The exact product is good to a few rounding errors of the dtype; the
    # forward difference at its default radius sqrt(eps) balances truncation
    # against rounding, so it is good to about sqrt(eps).
    eps = float(jnp.finfo(dtype).eps)
    rtol = 2 * np.sqrt(eps) if method == "finite_difference" else 4 * eps
    np.testing.assert_allclose(np.asarray(out["w"], np.float64), expected, rtol=rtol)


def test_penalty_bad_input():
    with pytest.raises(ValueError, match="`strength` must be non-negative"):
        floodax.add_grad_norm_penalty(-1.0)
    with pytest.raises(ValueError, match="`strength` must be non-negative"):
        floodax.grad_norm_penalty(jnp.sum, -1.0)
    with pytest.raises(TypeError, match="inject_hyperparams"):
        floodax.add_grad_norm_penalty(optax.constant_schedule(0.1))
    with pytest.raises(
        ValueError, match="`method` must be 'exact' or 'finite_difference'"
    ):
        floodax.add_grad_norm_penalty(0.1, method="fd")
    with pytest.raises(ValueError, match="`radius` must be positive"):
        floodax.add_grad_norm_penalty(0.1, method="finite_difference", radius=0.0)
    with pytest.raises(ValueError, match="`radius` is the finite difference's step"):
        floodax.add_grad_norm_penalty(0.1, radius=1e-3)
    tx = floodax.add_grad_norm_penalty(0.1)
    g = jnp.ones(2)
    with pytest.raises(TypeError, match=r"value_fn=lambda p: loss_fn\(p, batch\)"):
        tx.update(g, tx.init(g), g)
    with pytest.raises(TypeError, match="needs the current parameters"):
        tx.update(g, tx.init(g), value_fn=jnp.sum)


def test_penalty_accepts_unknown_extra_args():
    tx = floodax.add_grad_norm_penalty(0.5)
    loss_fn = lambda p: jnp.sum(p**2)  # noqa: E731  H = 2I, g + 2λHg = 3g
    g = jnp.array([1.0, 2.0])
    out, _ = tx.update(g, tx.init(g), g / 2, value_fn=loss_fn, value=1.0, foo=None)
    np.testing.assert_allclose(out, 3 * g, rtol=1e-6)


def _masked_reference(loss_fn, params, strength, power, selected):
    """The gradient of L + λ‖(∇L)_S‖^p over the leaves in ``selected``."""

    def penalised(p):
        g = jax.grad(loss_fn)(p)
        squared = sum(jnp.sum(g[k] ** 2) for k in selected)
        return loss_fn(p) + strength * (squared if power == 2 else jnp.sqrt(squared))

    return jax.grad(penalised)(params)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("method", ["exact", "finite_difference"])
@pytest.mark.parametrize("power", [2, 1])
@pytest.mark.parametrize("as_callable", [False, True])
def test_mask_penalises_only_the_selected_layers(method, power, as_callable):
    from tests.helpers import mlp_params, regression_data

    params = mlp_params(jax.random.key(0))
    x, y = regression_data(jax.random.key(1))
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    flags = {"w1": True, "b1": False, "w2": True}
    mask = (lambda p: flags) if as_callable else flags
    tx = floodax.add_grad_norm_penalty(0.3, power=power, method=method, mask=mask)
    out, _ = tx.update(jax.grad(loss_fn)(params), None, params, value_fn=loss_fn)
    expected = _masked_reference(loss_fn, params, 0.3, power, ("w1", "w2"))
    # The whole gradient changes (b1 too, through the cross terms H[b1, S]),
    # and differs from penalising every layer.
    # The forward difference at sqrt(eps) errs by ~1e-8 on gradients of
    # order 1 (absolute, not relative to each element).
    atol = 1e-7 if method == "finite_difference" else 1e-12
    assert_trees_allclose(out, expected, rtol=1e-12, atol=atol)
    full = _masked_reference(loss_fn, params, 0.3, power, ("w1", "b1", "w2"))
    assert not np.allclose(out["b1"], full["b1"], rtol=1e-3)


def test_masked_and_multi_transform_name_the_supported_pattern():
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    loss_fn = lambda p: jnp.sum(p["a"] ** 2 * p["b"])  # noqa: E731
    grads = jax.grad(loss_fn)(params)
    wrapped = [
        optax.masked(floodax.add_grad_norm_penalty(0.1), {"a": True, "b": False}),
        optax.multi_transform(
            {"pen": floodax.add_grad_norm_penalty(0.1), "id": optax.identity()},
            {"a": "pen", "b": "id"},
        ),
    ]
    for tx in wrapped:
        with pytest.raises(TypeError, match=r"optax.masked.*pass `mask=`"):
            tx.update(grads, tx.init(params), params, value_fn=loss_fn)
    # The supported pattern gives what a masked penalty means.
    tx = floodax.add_grad_norm_penalty(0.1, mask={"a": True, "b": False})
    out, _ = tx.update(grads, None, params, value_fn=loss_fn)
    assert_trees_allclose(
        out, _masked_reference(loss_fn, params, 0.1, 2, ("a",)), rtol=1e-5
    )


def test_bad_mask():
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    g = params
    with pytest.raises(TypeError, match="`mask` must hold Python booleans"):
        floodax.add_grad_norm_penalty(0.1, mask={"a": 1, "b": 0}).update(
            g, None, params, value_fn=jnp.sum
        )
    with pytest.raises(ValueError, match="`mask` must be a pytree of booleans"):
        floodax.add_grad_norm_penalty(0.1, mask={"a": True}).update(
            g, None, params, value_fn=jnp.sum
        )
    with pytest.raises(ValueError, match="`mask` selects no parameter"):
        floodax.add_grad_norm_penalty(0.1, mask={"a": False, "b": False}).update(
            g, None, params, value_fn=jnp.sum
        )


# ------------------------------------------------------- GNP's and SAM's forms


def _gnp_update(loss_fn, params, alpha, r):
    """GNP's update as the paper writes it (zhaoyang-0204/gnp README and
    training/training_core.py with norm_perturbations=False):
    (1 − α)·g + α·∇L(θ + r·g/‖g‖)."""
    g = jax.grad(loss_fn)(params)
    norm = jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(g)))
    perturbed = jax.tree.map(lambda p, v: p + r * v / norm, params, g)
    g_perturbed = jax.grad(loss_fn)(perturbed)
    return jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, g, g_perturbed)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("strength", [0.05, 0.7])
def test_norm_form_exact_matches_explicit_hessian(mlp, strength):
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    flat, unravel = ravel_pytree(params)
    flat_loss = lambda v: loss_fn(unravel(v))  # noqa: E731
    g = jax.grad(flat_loss)(flat)
    expected = unravel(
        g + strength * jax.hessian(flat_loss)(flat) @ g / jnp.linalg.norm(g)
    )
    tx = floodax.add_grad_norm_penalty(strength, power=1)
    out, _ = tx.update(jax.grad(loss_fn)(params), None, params, value_fn=loss_fn)
    assert_trees_allclose(out, expected, rtol=1e-11, atol=1e-14)
    # ... and the gradient of the loss transform's L + λ‖∇L‖.
    grads = jax.grad(floodax.grad_norm_penalty(loss_fn, strength, power=1))(params)
    assert_trees_allclose(grads, expected, rtol=1e-11, atol=1e-14)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("alpha, r", [(0.8, 0.1), (0.5, 0.05), (1.0, 0.02)])
def test_finite_difference_norm_form_is_gnps_update(mlp, alpha, r):
    # GNP's (α, r) ↦ floodax's strength λ = α·r, radius r, power 1.
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    tx = floodax.add_grad_norm_penalty(
        alpha * r, power=1, method="finite_difference", radius=r
    )
    out, _ = tx.update(jax.grad(loss_fn)(params), None, params, value_fn=loss_fn)
    assert_trees_allclose(
        out, _gnp_update(loss_fn, params, alpha, r), rtol=1e-12, atol=1e-14
    )


@pytest.mark.usefixtures("x64")
def test_sam_is_the_norm_form_with_alpha_one_and_equals_optax_contrib_sam(mlp):
    # SAM's gradient ∇L(θ + ρ·ĝ) is GNP with α = 1: strength = radius = ρ.
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    rho, lr = 0.05, 0.1
    ours = optax.chain(
        floodax.add_grad_norm_penalty(
            rho, power=1, method="finite_difference", radius=rho
        ),
        optax.sgd(lr, momentum=0.9),
    )
    theirs = optax.contrib.sam(
        optax.sgd(lr, momentum=0.9),
        optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
        sync_period=2,
        opaque_mode=True,
    )
    grad_fn = jax.grad(lambda p, _: loss_fn(p))
    p, q = params, params
    s, t = ours.init(params), theirs.init(params)
    for _ in range(15):
        g = jax.grad(loss_fn)(p)
        u, s = ours.update(g, s, p, value_fn=loss_fn)
        p = optax.apply_updates(p, u)
        u, t = theirs.update(jax.grad(loss_fn)(q), t, q, grad_fn=grad_fn)
        q = optax.apply_updates(q, u)
        assert_trees_allclose(p, q, rtol=1e-12, atol=1e-14)
    assert_trees_allclose(
        floodax.add_grad_norm_penalty(
            rho, power=1, method="finite_difference", radius=rho
        ).update(jax.grad(loss_fn)(params), None, params, value_fn=loss_fn)[0],
        _gnp_update(loss_fn, params, 1.0, rho),
        rtol=1e-12,
        atol=1e-14,
    )


@pytest.mark.usefixtures("x64")
def test_norm_form_finite_difference_converges_to_exact_on_a_smooth_loss(mlp):
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    g = jax.grad(loss_fn)(params)
    exact, _ = floodax.add_grad_norm_penalty(0.5, power=1).update(
        g, None, params, value_fn=loss_fn
    )
    exact = ravel_pytree(exact)[0]
    errors = []
    for r in (1e-2, 1e-3, 1e-4):
        tx = floodax.add_grad_norm_penalty(
            0.5, power=1, method="finite_difference", radius=r
        )
        out = ravel_pytree(tx.update(g, None, params, value_fn=loss_fn)[0])[0]
        errors.append(float(jnp.linalg.norm(out - exact) / jnp.linalg.norm(exact)))
    # First order in r: ten times smaller radius, about ten times smaller error.
    assert 5 < errors[0] / errors[1] < 20 and 5 < errors[1] / errors[2] < 20


@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize(
    "hvp",
    ["auto", "reverse_over_forward", "forward_over_reverse", "reverse_over_reverse"],
)
def test_hvp_routes_agree(mlp, power, hvp):
    params, x, y = mlp
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    g = jax.grad(loss_fn)(params)
    reference, _ = floodax.add_grad_norm_penalty(0.3, power=power).update(
        g, None, params, value_fn=loss_fn
    )
    out, _ = floodax.add_grad_norm_penalty(0.3, power=power, hvp=hvp).update(
        g, None, params, value_fn=loss_fn
    )
    assert_trees_allclose(out, reference, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("shapes", "expected"),
    [
        ({"w": (3, 4), "b": (4,)}, "reverse_over_forward"),  # dense
        ({"w": (3, 3, 2, 4), "b": (4,)}, "forward_over_reverse"),  # a conv kernel
        ({"w": (2, 3, 4)}, "forward_over_reverse"),  # 3-D: a 1-D convolution
    ],
)
def test_auto_hvp_route_is_chosen_by_the_shapes(shapes, expected):
    # The default traces exactly the program of the route it stands for,
    # and not the other one.
    params = {k: jnp.full(s, 0.5) for k, s in shapes.items()}
    loss_fn = lambda p: sum(jnp.sum(jnp.tanh(v) ** 3) for v in p.values())  # noqa: E731
    g = jax.grad(loss_fn)(params)

    def program(**kwargs):
        tx = floodax.add_grad_norm_penalty(0.1, **kwargs)
        return str(
            jax.make_jaxpr(lambda p: tx.update(g, None, p, value_fn=loss_fn)[0])(params)
        )

    other = {
        "reverse_over_forward": "forward_over_reverse",
        "forward_over_reverse": "reverse_over_forward",
    }[expected]
    assert program() == program(hvp=expected)
    assert program() != program(hvp=other)


def test_norm_form_under_the_optax_matrix():
    # No recompile when strength and radius are injected and changed; dtypes kept.
    params = jnp.array([0.5, -1.0])
    loss_fn = lambda p, x: jnp.sum(x * p**4)  # noqa: E731
    injected = optax.inject_hyperparams(floodax.add_grad_norm_penalty)(
        strength=0.1, power=1, method="finite_difference", radius=0.01
    )
    fn = TraceCounter(
        lambda s, x: injected.update(
            jax.grad(loss_fn)(params, x), s, params, value_fn=lambda p: loss_fn(p, x)
        )
    )
    step = jax.jit(fn)
    state = injected.init(params)
    first, state = step(state, jnp.float32(1.0))
    state.hyperparams["radius"] = jnp.float32(0.02)
    state.hyperparams["strength"] = jnp.float32(0.2)
    second, _ = step(state, jnp.float32(1.0))
    ref, _ = floodax.add_grad_norm_penalty(
        0.2, power=1, method="finite_difference", radius=0.02
    ).update(
        jax.grad(loss_fn)(params, 1.0), None, params, value_fn=lambda p: loss_fn(p, 1.0)
    )
    np.testing.assert_allclose(second, ref, rtol=1e-5)
    assert not np.allclose(first, second)
    assert fn.traces == 1
    for dtype in (jnp.bfloat16, jnp.float16):
        p = params.astype(dtype)
        f = lambda q: jnp.sum(q.astype(jnp.float32) ** 4)  # noqa: E731
        out, _ = floodax.add_grad_norm_penalty(0.1, power=1).update(
            jax.grad(f)(p), None, p, value_fn=f
        )
        assert out.dtype == dtype


def test_traced_power_selects_the_form_without_recompiling():
    # inject_hyperparams turns `power` into a traced integer: it must pick
    # the same form as the Python integer (no Python `if` on it), compile
    # once, and give NaN, never silently one of the two forms, for power 3.
    params = jnp.array([0.5, -1.0])
    loss_fn = lambda p: jnp.sum(p**4) + p[0] * p[1]  # noqa: E731
    g = jax.grad(loss_fn)(params)
    penalised = TraceCounter(
        lambda q: floodax.grad_norm_penalty(loss_fn, 0.1, power=q)(params)
    )
    injected = optax.inject_hyperparams(floodax.add_grad_norm_penalty)(
        strength=0.1, power=2
    )
    update = TraceCounter(lambda s: injected.update(g, s, params, value_fn=loss_fn)[0])
    value, step = jax.jit(penalised), jax.jit(update)
    state = injected.init(params)
    for power in (2, 1):
        expected = floodax.grad_norm_penalty(loss_fn, 0.1, power=power)(params)
        np.testing.assert_allclose(value(jnp.int32(power)), expected, rtol=1e-6)
        state.hyperparams["power"] = jnp.int32(power)
        reference, _ = floodax.add_grad_norm_penalty(0.1, power=power).update(
            g, None, params, value_fn=loss_fn
        )
        np.testing.assert_allclose(step(state), reference, rtol=1e-6)
    assert not np.allclose(
        floodax.grad_norm_penalty(loss_fn, 0.1, power=1)(params),
        floodax.grad_norm_penalty(loss_fn, 0.1, power=2)(params),
    )
    assert np.isnan(value(jnp.int32(3)))
    state.hyperparams["power"] = jnp.int32(3)
    assert np.all(np.isnan(step(state)))
    assert penalised.traces == 1 and update.traces == 1


def test_each_named_hvp_route_traces_the_composition_it_names():
    # All routes agree in value (test_hvp_routes_agree), so only the traced
    # program tells whether `hvp="forward_over_reverse"` is what it says.
    from floodax._penalty import hessian_vector_product

    params = {"w": jnp.full((3, 2), 0.5), "b": jnp.full((2,), -0.3)}
    vector = jax.tree.map(jnp.ones_like, params)
    loss_fn = lambda p: jnp.sum(jnp.tanh(p["w"] @ p["b"]) ** 3)  # noqa: E731
    by_hand = {
        "forward_over_reverse": lambda p, v: jax.jvp(jax.grad(loss_fn), (p,), (v,))[1],
        "reverse_over_forward": lambda p, v: jax.grad(
            lambda q: jax.jvp(loss_fn, (q,), (v,))[1]
        )(p),
        "reverse_over_reverse": lambda p, v: jax.grad(
            lambda q: optax.tree.vdot(jax.grad(loss_fn)(q), v)
        )(p),
    }
    # The tangent is first cast to the parameters' dtypes, as documented.
    programs = {
        route: str(
            jax.make_jaxpr(lambda p, v, fn=fn: fn(p, optax.tree.cast_like(v, p)))(
                params, vector
            )
        )
        for route, fn in by_hand.items()
    }
    assert len(set(programs.values())) == 3
    for route, program in programs.items():
        ours = jax.make_jaxpr(
            lambda p, v, route=route: hessian_vector_product(loss_fn, p, v, route)
        )(params, vector)
        assert str(ours) == program, route


@pytest.mark.parametrize("power", [2, 1])
def test_grad_norm_penalty_at_strength_zero_is_the_loss_where_the_norm_overflows(
    power,
):
    # ‖∇L‖² = 8e60 overflows float32: λ·inf is NaN for λ = 0, yet a zero
    # strength means no penalty at all, in value and in gradient.
    def loss_fn(w):
        return jnp.sum(1e30 * w**2)

    w = jnp.ones(2, jnp.float32)
    penalised = floodax.grad_norm_penalty(loss_fn, 0.0, power=power)
    assert float(penalised(w)) == float(loss_fn(w))
    np.testing.assert_array_equal(jax.grad(penalised)(w), jax.grad(loss_fn)(w))
    traced = jax.jit(lambda s, w: floodax.grad_norm_penalty(loss_fn, s, power=power)(w))
    assert float(traced(jnp.float32(0.0), w)) == float(loss_fn(w))
    # A positive strength still sees the overflow: no silent clipping.
    assert not np.isfinite(float(floodax.grad_norm_penalty(loss_fn, 0.1)(w)))
