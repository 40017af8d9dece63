"""One test per row of README's bad-input table."""

from __future__ import annotations

import re
from pathlib import Path

import jax.numpy as jnp
import optax
import pytest

import floodax

README = Path(__file__).resolve().parents[1] / "README.md"
G = jnp.ones(2)
LOSS_FN = lambda p: jnp.sum(p**2)  # noqa: E731


def _update(tx, *args, **kwargs):
    return tx.update(G, tx.init(G), *args, **kwargs)


# README row -> (calls that must fail, exception, message pattern)
CASES = {
    "negative flood level": (
        [lambda: floodax.flood(-0.1), lambda: floodax.flooded(G, -0.1)],
        ValueError,
        r"`flood_level` must be non-negative, got -0\.1",
    ),
    "NaN flood level": (
        [lambda: floodax.flood(float("nan"))],
        ValueError,
        "`flood_level` must be finite, got nan",
    ),
    "infinite flood level": (
        [lambda: floodax.iflooded(G, float("inf"))],
        ValueError,
        "`flood_level` must be finite, got inf",
    ),
    "non-scalar flood level": (
        [lambda: floodax.flood(jnp.array([0.1, 0.2]))],
        ValueError,
        r"`flood_level` must be a scalar, got an array of shape \(2,\)",
    ),
    "schedule given to a loss transform": (
        [lambda: floodax.flooded(G, optax.constant_schedule(0.1))],
        TypeError,
        r"flood_level=schedule\(step\)",
    ),
    "missing `value`": (
        [lambda: _update(floodax.flood(0.1), G)],
        TypeError,
        r"needs the mini-batch loss: call "
        r"`tx.update\(grads, state, params, value=loss\)`",
    ),
    "non-scalar `value`": (
        [lambda: _update(floodax.flood(0.1), G, value=jnp.ones(4))],
        ValueError,
        r"`value` must be the scalar mini-batch loss, got an array of shape \(4,\)",
    ),
    "integer-dtype loss": (
        [
            lambda: floodax.flooded(jnp.array([1, 2]), 0.1),
            lambda: _update(floodax.flood(0.1), G, value=jnp.int32(1)),
        ],
        TypeError,
        "must have a floating-point dtype, got int32",
    ),
    "missing `value_fn`": (
        [lambda: _update(floodax.add_grad_norm_penalty(0.1), G)],
        TypeError,
        r"value_fn=lambda p: loss_fn\(p, batch\)",
    ),
    "missing `params`": (
        [
            lambda: _update(floodax.add_grad_norm_penalty(0.1), value_fn=LOSS_FN),
            lambda: _update(floodax.alternate(0.2, 0.1), value_fn=LOSS_FN),
        ],
        TypeError,
        "needs the current parameters",
    ),
    "ε1 ≤ ε2 for the equivalence": (
        [
            lambda: floodax.equivalent_penalty(0.1, 0.1),
            lambda: floodax.equivalent_penalty(0.1, 0.2),
        ],
        ValueError,
        r"must exceed `ascent_rate`.*floodax\.flooding_penalty_rate\(rate\)",
    ),
    "ε1 < ε2 for alternating steps": (
        [lambda: floodax.alternate(0.1, 0.2)],
        ValueError,
        r"`descent_rate` \(0\.1\) must be at least `ascent_rate` \(0\.2\)",
    ),
    "negative rate": (
        [
            lambda: floodax.alternate(-0.1, 0.0),
            lambda: floodax.flooding_penalty_rate(-0.1),
        ],
        ValueError,
        r"`descent_rate` must be non-negative, got -0\.1",
    ),
    "negative strength": (
        [
            lambda: floodax.add_grad_norm_penalty(-1.0),
            lambda: floodax.grad_norm_penalty(LOSS_FN, -1.0),
        ],
        ValueError,
        r"`strength` must be non-negative, got -1\.0",
    ),
    "bad interval": (
        [lambda: floodax.alternate(0.2, 0.1, interval=0)],
        ValueError,
        "`interval` must be an integer >= 1",
    ),
    "unknown penalty method": (
        [lambda: floodax.add_grad_norm_penalty(0.1, method="fd")],
        ValueError,
        "`method` must be 'exact' or 'finite_difference'",
    ),
    "non-positive radius": (
        [
            lambda: floodax.add_grad_norm_penalty(
                0.1, method="finite_difference", radius=0
            )
        ],
        ValueError,
        r"`radius` must be positive, got 0\.0",
    ),
    "mismatched pytrees": (
        [
            lambda: floodax.add_grad_norm_penalty(0.1).update(
                {"a": G}, None, {"b": G}, value_fn=LOSS_FN
            ),
            lambda: floodax.alternate(0.2, 0.1).update(
                {"a": G},
                floodax.alternate(0.2, 0.1).init(G),
                {"a": jnp.ones(3)},
                value_fn=LOSS_FN,
            ),
        ],
        ValueError,
        "must be pytrees of the same structure|does not match its parameter",
    ),
    "non-boolean or mis-shaped `where`": (
        [
            lambda: floodax.iflooded(G, 0.1, where=jnp.array([1, 0])),
            lambda: floodax.iflooded(G, 0.1, where=jnp.array([True, False, True])),
        ],
        (TypeError, ValueError),
        "`where` must be a boolean mask|`where` of shape",
    ),
}


def _readme_rows():
    text = README.read_text()
    table = text.split("## Bad input", 1)[1]
    return [
        m.group(1).strip()
        for m in re.finditer(r"^\| ([^|]+?) \| `", table, flags=re.MULTILINE)
    ]


def test_every_readme_row_has_a_test():
    rows = _readme_rows()
    assert len(rows) == len(set(rows)) >= 15
    assert set(rows) == set(CASES)


@pytest.mark.parametrize("row", sorted(CASES))
def test_bad_input_row(row):
    calls, error, pattern = CASES[row]
    for call in calls:
        with pytest.raises(error, match=pattern):
            call()
