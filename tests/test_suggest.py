"""Tests of suggest_flood_level, the rule of thumb for a first flood level."""

from __future__ import annotations

import numpy as np
import pytest

import floodax


def test_suggest_flood_level_finds_the_rise():
    epochs = np.arange(40)
    train_losses = np.exp(-epochs / 8)
    val = 0.7 * np.exp(-epochs / 8) + 0.02 * np.maximum(epochs - 15, 0)
    val[10] += 0.05  # a one-epoch uptick, ignored with patience 3
    s = floodax.suggest_flood_level(train_losses, val)
    rise = int(np.argmin(val))
    assert s.epoch == rise and s.validation_loss_rises
    assert s.flood_level == pytest.approx(0.5 * train_losses[rise])
    assert floodax.suggest_flood_level(train_losses, val, patience=1).epoch == 9
    lower = floodax.suggest_flood_level(train_losses, val, fraction=0.25)
    assert lower.flood_level == pytest.approx(0.25 * train_losses[rise])


def test_suggest_flood_level_without_a_rise():
    losses = np.linspace(1.0, 0.1, 10)
    s = floodax.suggest_flood_level(losses, losses + 0.1)
    assert not s.validation_loss_rises and s.epoch == 9
    assert s.flood_level == pytest.approx(0.05)


def test_suggest_flood_level_window_and_ties():
    train = np.linspace(1.0, 0.5, 6)
    # patience 2: epoch 1 is beaten two epochs later, epoch 3 is not.
    val = np.array([3.0, 2.0, 2.5, 1.9, 2.6, 2.7])
    s = floodax.suggest_flood_level(train, val, patience=2)
    assert s.epoch == 3 and s.validation_loss_rises
    assert s.flood_level == pytest.approx(0.5 * train[3])
    # A plateau is "not beaten": it is where the rise starts.
    flat = floodax.suggest_flood_level(train[:5], [1.0, 0.5, 0.5, 0.5, 0.5])
    assert flat.epoch == 1 and flat.validation_loss_rises
    # A rise that `patience` later epochs cannot confirm yet does not count.
    late = floodax.suggest_flood_level(train[:5], [1.0, 0.9, 0.8, 0.7, 0.8], patience=2)
    assert late.epoch == 4 and not late.validation_loss_rises
    assert late.flood_level == pytest.approx(0.5 * train[4])


def test_suggest_flood_level_bad_input():
    with pytest.raises(ValueError, match="same non-zero length"):
        floodax.suggest_flood_level([1.0, 0.5], [1.0])
    with pytest.raises(ValueError, match="must be finite"):
        floodax.suggest_flood_level([1.0, np.nan], [1.0, 0.5])
    with pytest.raises(ValueError, match="must be finite"):
        floodax.suggest_flood_level([1.0, 0.5], [np.inf, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        floodax.suggest_flood_level([1.0, -0.5], [1.0, 0.5])
    # The boundary: a training loss of exactly 0 (a fitted model) is valid.
    fitted = floodax.suggest_flood_level([1.0, 0.5, 0.0], [1.0, 0.9, 0.8])
    assert fitted.epoch == 2 and fitted.flood_level == 0.0
    with pytest.raises(ValueError, match="`fraction` must lie in"):
        floodax.suggest_flood_level([1.0], [1.0], fraction=0.0)
    with pytest.raises(ValueError, match="`patience` must be an int"):
        floodax.suggest_flood_level([1.0], [1.0], patience=0)


@pytest.mark.parametrize(
    "curve, match",
    [
        (
            ["0.9", "0.5"],
            r"got the string '0.9'\. Convert the strings first, e\.g\. "
            r"`train_losses=\[float\(v\) for v in train_losses\]`",
        ),
        (["a", "b"], "got the string 'a'"),
        ("0.9", "got the string '0.9'"),
        ([0.9, None], "got NoneType None"),
        (None, "got NoneType None"),
        ([0.9, True], "got bool True"),
        ([0.9, 1 + 2j], r"got complex \(1\+2j\)"),
        (np.array([True, False]), "got an array of dtype bool"),
        (np.array([0.9, 0.5], np.complex64), "got an array of dtype complex64"),
        (np.array(["0.9", "0.5"]), "got the string '0.9'"),
        (np.array([0.9, None]), "got NoneType None"),
    ],
)
@pytest.mark.parametrize("name", ["train_losses", "val_losses"])
def test_suggest_flood_level_names_curves_that_are_not_numbers(curve, match, name):
    curves = {"train_losses": [1.0, 0.9], "val_losses": [1.0, 0.9], name: curve}
    prefix = f"`{name}` must hold one real number per epoch, "
    with pytest.raises(TypeError, match=prefix + match.replace("train_losses", name)):
        floodax.suggest_flood_level(**curves)


def test_suggest_flood_level_takes_numbers_of_any_real_kind():
    import jax.numpy as jnp

    val = [1.0, 0.5, 0.6, 0.7, 0.8]
    expected = floodax.suggest_flood_level([1.0, 0.5, 0.25, 0.125, 0.0625], val)
    assert expected == (0.25, 1, True)
    halves = [1.0, 0.5, 0.25, 0.125, 0.0625]  # exact in bfloat16
    for train in (
        [jnp.asarray(v, jnp.bfloat16) for v in halves],  # np.asarray alone fails
        jnp.asarray(halves, jnp.bfloat16),
        [np.float32(v) for v in halves],
        (1, 0.5, 0.25, 0.125, 0.0625),
    ):
        assert floodax.suggest_flood_level(train, val) == expected
    assert floodax.suggest_flood_level([4, 2, 1, 1, 1], [3, 2, 2, 2, 2]) == (
        1.0,
        1,
        True,
    )
