"""AdaFlood's levels and loss, against the authors' formula written by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import floodax
from tests.helpers import TraceCounter, mlp_example_losses, mlp_params, regression_data

pytestmark = pytest.mark.usefixtures("x64")


def _reference_levels(aux, gamma, alpha=1.0, beta=0.0):
    """AdaFloodCLSLoss.forward (BorealisAI/adaflood, criterion.py), by hand:
    trans = α·aux + β, then −log((1 − γ)·exp(−trans) + γ)."""
    trans = alpha * np.asarray(aux, np.float64) + beta
    return -np.log((1 - gamma) * np.exp(-trans) + gamma)


@pytest.mark.parametrize("gamma", [0.0, 0.05, 0.5, 0.95])
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (0.7, 0.2)])
def test_levels_match_the_formula(gamma, alpha, beta):
    aux = jnp.array([0.0, 1e-3, 0.05, 0.7, 2.3, 9.0, 40.0])
    levels = floodax.adaflood_levels(aux, gamma=gamma, scale=alpha, shift=beta)
    np.testing.assert_allclose(
        levels, _reference_levels(aux, gamma, alpha, beta), rtol=1e-13, atol=1e-15
    )
    # Between 0 and the held-out loss itself (affine-mapped).
    assert np.all(levels >= 0) and np.all(levels <= alpha * aux + beta + 1e-15)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.9])
def test_levels_are_differentiable_in_every_argument(gamma):
    # Learning or sweeping γ, α, β with jax.grad: derivatives against central
    # differences of the formula, finite at γ = 0 (autodiff of log γ would
    # give NaN there), where ∂b/∂γ = −(e^z − 1) in closed form.
    aux = jnp.array([0.0, 0.2, 1.0, 3.0, 30.0])

    def total(g, a, b, losses):
        return jnp.sum(floodax.adaflood_levels(losses, gamma=g, scale=a, shift=b))

    def reference(g, a, b, losses):
        return float(np.sum(_reference_levels(losses, g, a, b)))

    point = (gamma, 0.8, 0.1, aux)
    grads = jax.grad(total, argnums=(0, 1, 2, 3))(*point)
    h = 1e-6
    # (At γ = 0 the level bends within γ ~ e^{−z}, far below any difference
    # step: there the closed form below is the reference.)
    for i in range(1 if gamma == 0.0 else 0, 3):
        up, down = list(point), list(point)
        up[i] += h
        down[i] -= h
        expected = (reference(*up) - reference(*down)) / (2 * h)
        np.testing.assert_allclose(grads[i], expected, rtol=1e-5)
    for j in range(len(aux)):
        e = np.zeros(len(aux))
        e[j] = h
        if aux[j] == 0.0:  # one-sided at the boundary of the losses
            expected = (reference(*point[:3], aux + e) - reference(*point)) / h
        else:
            expected = (
                reference(*point[:3], aux + e) - reference(*point[:3], aux - e)
            ) / (2 * h)
        np.testing.assert_allclose(grads[3][j], expected, rtol=1e-5, atol=1e-9)
    if gamma == 0.0:
        z = 0.8 * aux + 0.1
        np.testing.assert_allclose(grads[0], -np.sum(np.expm1(z)), rtol=1e-12)
    # Second derivatives are finite too.
    assert np.isfinite(float(jax.hessian(total)(*point)))


def test_levels_at_known_points():
    # γ = 0: the held-out loss; a zero loss: level 0 for every γ; a huge
    # loss: −log γ, the level of a prediction that is certain and wrong.
    aux = jnp.array([0.0, 0.3, 1e4])
    np.testing.assert_allclose(floodax.adaflood_levels(aux, gamma=0.0), aux)
    levels = floodax.adaflood_levels(aux, gamma=0.25)
    np.testing.assert_allclose(levels[0], 0.0, atol=1e-15)
    np.testing.assert_allclose(levels[2], -np.log(0.25), rtol=1e-12)
    # log2: p = e^{-ln 2} = 1/2 mixed half and half with certainty: −log 3/4.
    np.testing.assert_allclose(
        floodax.adaflood_levels(jnp.array([np.log(2.0)]), gamma=0.5),
        [-np.log(0.75)],
        rtol=1e-14,
    )


@pytest.mark.parametrize("gamma", [0.1, 0.5])
def test_adaflood_loss_and_per_example_gradients_equal_the_authors(gamma):
    # AdaFloodCLSLoss: mean over the batch of |ℓᵢ − bᵢ| + bᵢ with bᵢ from the
    # held-out losses (constants). Its per-example gradients: sign(ℓᵢ − bᵢ)·∇ℓᵢ.
    params = mlp_params(jax.random.key(0))
    x, y = regression_data(jax.random.key(1))
    losses = mlp_example_losses(params, x, y)
    aux = jnp.abs(jax.random.normal(jax.random.key(2), losses.shape)) * 0.5
    levels = floodax.adaflood_levels(aux, gamma=gamma)
    reference_levels = _reference_levels(aux, gamma)

    def adaflood_loss(p):
        return floodax.iflooded(mlp_example_losses(p, x, y), levels)

    value = adaflood_loss(params)
    expected = np.mean(np.abs(np.asarray(losses) - reference_levels) + reference_levels)
    np.testing.assert_allclose(value, expected, rtol=1e-13)
    per_example = jax.vmap(
        jax.grad(
            lambda p, xi, yi, bi: floodax.iflooded(
                mlp_example_losses(p, xi[None], yi[None]), bi
            )
        ),
        in_axes=(None, 0, 0, 0),
    )(params, x, y, levels)
    plain = jax.vmap(
        jax.grad(lambda p, xi, yi: mlp_example_losses(p, xi[None], yi[None])[0]),
        in_axes=(None, 0, 0),
    )(params, x, y)
    signs = np.where(np.asarray(losses) >= reference_levels, 1.0, -1.0)
    assert 0 < (signs < 0).sum() < len(signs)  # the levels split the batch
    for leaf, ref in zip(
        jax.tree.leaves(per_example), jax.tree.leaves(plain), strict=True
    ):
        np.testing.assert_allclose(
            leaf, signs.reshape((-1,) + (1,) * (ref.ndim - 1)) * ref, rtol=1e-12
        )
    total = jax.grad(adaflood_loss)(params)
    for leaf, ref in zip(
        jax.tree.leaves(total), jax.tree.leaves(per_example), strict=True
    ):
        np.testing.assert_allclose(leaf, ref.mean(0), rtol=1e-12, atol=1e-15)


def test_levels_are_traceable_and_sweepable_without_recompiling():
    aux = jnp.array([0.05, 0.7, 3.0])
    fn = TraceCounter(lambda g: floodax.adaflood_levels(aux, gamma=g))
    jitted = jax.jit(fn)
    for gamma in (0.1, 0.5, 0.9):
        np.testing.assert_allclose(
            jitted(jnp.float64(gamma)), _reference_levels(aux, gamma), rtol=1e-13
        )
    assert fn.traces == 1
    swept = jax.vmap(lambda g: floodax.adaflood_levels(aux, gamma=g))(
        jnp.array([0.0, 0.5])
    )
    np.testing.assert_allclose(swept[0], aux)
    np.testing.assert_allclose(swept[1], _reference_levels(aux, 0.5), rtol=1e-13)
    assert (
        floodax.adaflood_levels(aux.astype(jnp.float32), gamma=0.5).dtype == jnp.float32
    )
    # Hyperparameters given as float64 arrays do not promote float32 levels.
    wide = {
        "gamma": jnp.float64(0.5),
        "scale": jnp.float64(2.0),
        "shift": jnp.float64(0.1),
    }
    assert floodax.adaflood_levels(aux.astype(jnp.float32), **wide).dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"gamma": 1.0}, ValueError, r"`gamma` must lie in \[0, 1\)"),
        ({"gamma": -0.1}, ValueError, "`gamma` must be non-negative"),
        ({"gamma": "0.5"}, TypeError, "`gamma` must be a real number"),
        ({"scale": float("nan")}, ValueError, "`scale` must be finite"),
        ({"shift": -5.0}, ValueError, r"`scale`·aux_losses \+ `shift` must be"),
        # One negative level is enough to refuse.
        ({"shift": -0.5}, ValueError, r"`scale`·aux_losses \+ `shift` must be"),
        ({"shift": float("inf")}, ValueError, "`shift` must be finite"),
        (
            {"shift": jnp.array([0.1, 0.2])},
            ValueError,
            r"`shift` must be a scalar, got shape \(2,\)",
        ),
        ({"shift": lambda n: 0.1}, TypeError, "`shift` must be a real number"),
    ],
)
def test_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        floodax.adaflood_levels(jnp.array([0.1, 1.0]), **kwargs)


def test_levels_stay_within_their_exact_bounds_in_float32():
    # 0 <= b <= z exactly; unclipped, float32 rounding puts thousands of
    # these levels an ulp above z (iflooded would then flood above the
    # held-out loss itself).
    z = jnp.asarray(np.logspace(-9, 0, 20001, endpoint=False), jnp.float32)
    for gamma in (1e-3, 0.05, 0.3, 0.9):
        levels = floodax.adaflood_levels(z, gamma=jnp.float32(gamma))
        assert levels.dtype == jnp.float32
        assert bool(jnp.all(levels <= z)) and bool(jnp.all(levels >= 0)), gamma


def test_scale_and_shift_traced_one_at_a_time():
    # Only the concrete one can be checked for negative levels; the traced
    # one must not be turned into a Python float.
    aux = jnp.array([0.1, 1.0])
    by_scale = jax.jit(lambda a: floodax.adaflood_levels(aux, scale=a, shift=0.5))
    by_shift = jax.jit(lambda b: floodax.adaflood_levels(aux, scale=2.0, shift=b))
    expected = floodax.adaflood_levels(aux, scale=2.0, shift=0.5)
    np.testing.assert_allclose(by_scale(2.0), expected, rtol=1e-12)
    np.testing.assert_allclose(by_shift(0.5), expected, rtol=1e-12)


def test_bad_aux_losses():
    with pytest.raises(ValueError, match="`aux_losses` must be finite"):
        floodax.adaflood_levels(jnp.array([0.1, jnp.inf]))
    with pytest.raises(ValueError, match="`aux_losses` must be non-negative"):
        floodax.adaflood_levels(jnp.array([0.1, -0.2]))
    with pytest.raises(TypeError, match="`aux_losses` must have a floating-point"):
        floodax.adaflood_levels(jnp.array([1, 2]))


def test_weighted_iflood_is_adafloods_event_sequence_form():
    # AdaFlood's IFloodTPPLoss (criterion.py) floods each sequence's summed
    # loss Lᵢ = nᵢ·ℓ̄ᵢ at level nᵢ·b: Σᵢ |Lᵢ − nᵢ·b| + nᵢ·b = Σᵢ nᵢ(|ℓ̄ᵢ − b| + b).
    # iflooded with weights nᵢ gives that divided by Σnᵢ, and with per-sequence
    # levels nᵢ·b on the sums, divided by the number of sequences.
    token_losses = jax.random.uniform(jax.random.key(0), (4, 6), jnp.float64, 0, 1)
    lengths = jnp.array([6, 2, 4, 1])
    mask = jnp.arange(6)[None, :] < lengths[:, None]
    sums = jnp.sum(jnp.where(mask, token_losses, 0), axis=1)
    means = sums / lengths
    b = 0.4
    authors = np.sum(
        np.abs(np.asarray(sums) - np.asarray(lengths) * b) + np.asarray(lengths) * b
    )
    np.testing.assert_allclose(
        floodax.iflooded(means, b, weights=lengths) * lengths.sum(), authors, rtol=1e-13
    )
    np.testing.assert_allclose(
        floodax.iflooded(sums, lengths * b) * len(lengths), authors, rtol=1e-13
    )
    # Token-level flooding with padding is exact with `where`.
    flooded_tokens = np.abs(np.asarray(token_losses) - b) + b
    np.testing.assert_allclose(
        floodax.iflooded(token_losses, b, where=mask),
        flooded_tokens[np.asarray(mask)].mean(),
        rtol=1e-13,
    )


def test_weights_where_and_levels_together_against_the_hand_written_mean():
    losses = jnp.array([0.9, 0.1, 0.3, 0.7, 0.05])
    levels = jnp.array([0.2, 0.2, 0.5, 0.5, 0.1])
    weights = jnp.array([1.0, 3.0, 0.5, 2.0, 7.0])
    mask = jnp.array([True, True, True, False, True])
    w = np.asarray(weights) * np.asarray(mask)
    flooded = np.abs(np.asarray(losses) - np.asarray(levels)) + np.asarray(levels)
    np.testing.assert_allclose(
        floodax.iflooded(losses, levels, where=mask, weights=weights),
        (w * flooded).sum() / w.sum(),
        rtol=1e-14,
    )
    # All weight on masked entries: no mean, NaN as jnp.mean gives.
    assert np.isnan(floodax.iflooded(losses, 0.1, weights=jnp.zeros(5)))
