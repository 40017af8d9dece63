"""The shared checks, seen through the public calls that use them."""

from __future__ import annotations

from decimal import Decimal

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
    ],
    ids=["str", "None", "Decimal"],
)
def test_type_errors_say_how_to_fix_the_value(call, hint):
    with pytest.raises(TypeError) as info:
        call()
    assert hint in str(info.value)


def test_an_object_without_a_number_gets_no_conversion_hint():
    with pytest.raises(TypeError) as info:
        floodax.flood(object())
    message = str(info.value)
    assert "`flood_level` must be a real number" in message
    assert "convert it first" not in message and "cannot be None" not in message


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
