"""The shared checks, seen through the public calls that use them."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import floodax
from floodax.experiments.datasets import flip_labels


@pytest.mark.parametrize(
    "call, hint",
    [
        (
            lambda: floodax.flood("0.1"),
            "; pass the number itself, e.g. `flood_level=float('0.1')`",
        ),
        (lambda: floodax.flooded(jnp.ones(2), None), "; it cannot be None"),
        (
            lambda: floodax.flood(Decimal("0.1")),
            "; convert it first: `flood_level=float(value)`",
        ),
        (
            lambda: floodax.flood(Fraction(1, 10)),
            "; convert it first: `flood_level=float(value)`",
        ),
    ],
    ids=["str", "None", "Decimal", "Fraction"],
)
def test_type_errors_say_how_to_fix_the_value(call, hint):
    with pytest.raises(TypeError) as info:
        call()
    assert hint in str(info.value)


@pytest.mark.parametrize("value", [object(), 1 + 2j], ids=["object", "complex"])
def test_a_value_float_cannot_convert_gets_no_conversion_hint(value):
    # float() of a complex number fails: suggesting it would mislead.
    with pytest.raises(TypeError) as info:
        floodax.flood(value)
    message = str(info.value)
    assert "`flood_level` must be a real number" in message
    assert "convert it first" not in message and "cannot be None" not in message


@pytest.mark.parametrize(
    "level", [jnp.array(True), np.array([1 + 0j, 2 + 0j])], ids=["bool", "complex"]
)
def test_arrays_of_bool_or_complex_dtype_are_not_real(level):
    with pytest.raises(
        TypeError, match=r"`flood_level` must be a real number, got dtype"
    ):
        floodax.iflooded(jnp.ones(2), level)


@pytest.mark.parametrize(
    "call",
    [
        lambda: floodax.iflooded(
            jnp.ones(3), 0.1, weights=jnp.array([1.0, np.nan, 2.0])
        ),
        lambda: floodax.iflooded(jnp.ones(3), jnp.array([0.1, 0.2, np.inf])),
    ],
    ids=["weights", "levels"],
)
def test_one_non_finite_element_among_finite_ones_is_refused(call):
    with pytest.raises(ValueError, match=r"must be finite, got (nan|inf) \(an element"):
        call()


def test_integer_arrays_are_checked_without_conversion():
    # Integer weights and levels: negative ones are refused, others pass.
    assert float(floodax.iflooded(jnp.ones(2), 0, weights=np.array([1, 3]))) == 1.0
    with pytest.raises(ValueError, match=r"`weights` must be non-negative, got -1"):
        floodax.iflooded(jnp.ones(2), 0.1, weights=np.array([1, -1]))


def test_real_intervals_are_closed_unless_said_open():
    # label_noise lies in [0, 1], suggest_flood_level's fraction in (0, 1].
    labels = np.arange(10) % 2
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(flip_labels(labels, 0.0, 2, rng), labels)
    np.testing.assert_array_equal(flip_labels(labels, 1.0, 2, rng), 1 - labels)
    for bad in (-0.1, 1.1):
        with pytest.raises(ValueError, match=r"`label_noise` must lie in \[0, 1\]"):
            flip_labels(labels, bad, 2, rng)
    whole = floodax.suggest_flood_level([1.0, 0.5], [1.0, 0.9], fraction=1.0)
    assert whole.flood_level == 0.5
    with pytest.raises(ValueError, match=r"`fraction` must lie in \(0, 1\]"):
        floodax.suggest_flood_level([1.0, 0.5], [1.0, 0.9], fraction=0.0)


@pytest.mark.parametrize(
    "fraction, match",
    [
        (np.array([0.5]), "must be a single number"),
        (float("inf"), "must be finite, got inf"),
    ],
)
def test_a_real_setting_is_one_finite_number(fraction, match):
    with pytest.raises(ValueError, match=f"`fraction` {match}"):
        floodax.suggest_flood_level([1.0, 0.5], [1.0, 0.9], fraction=fraction)


def test_rate_order_is_trusted_when_either_rate_is_traced():
    # Inside jit one rate traced and the other a number: nothing to compare,
    # and the pair is the one made with concrete rates.
    g = jnp.ones(2)
    tx = floodax.alternate(0.3, 0.1)
    expected, _ = tx.update(g, tx.init(g))
    for make in (
        lambda r: floodax.alternate(r, 0.1),
        lambda r: floodax.alternate(0.3, r / 3),
    ):
        out = jax.jit(lambda r, make=make: make(r).update(g, tx.init(g))[0])(0.3)
        np.testing.assert_allclose(out, expected, rtol=1e-6)
