"""One test per row of README's bad-input table."""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax

README = Path(__file__).resolve().parents[1] / "README.md"
G = jnp.ones(2)
LOSS_FN = lambda p: jnp.sum(p**2)  # noqa: E731


def _update(tx, *args, **kwargs):
    return tx.update(G, tx.init(G), *args, **kwargs)


def _train_config(**kwargs):
    from floodax.experiments import TrainConfig

    return TrainConfig(**kwargs)


def _scheduled_pairs():
    # ε1 falls from 0.3 to 0 over 4 steps while ε2 stays 0.1: at step 3
    # ε1 = 0.075 < ε2. Outside jit the scheduled values are concrete.
    tx = floodax.alternate(optax.linear_schedule(0.3, 0.0, 4), 0.1)
    state = tx.init(G)
    for _ in range(8):
        _, state = tx.update(G, state)


def _m_sharpness_update(group_size=4, inner=None, examples=None, **extra_args):
    sam = floodax.add_grad_norm_penalty(
        0.05, power=1, method="finite_difference", radius=0.05
    )
    tx = floodax.m_sharpness(sam, group_size) if inner is None else inner(sam)
    x = jnp.ones((64, 2)) if examples is None else examples
    loss_fn = lambda p, b: jnp.mean((b @ p) ** 2)  # noqa: E731
    return tx.update(G, tx.init(G), G, **{"loss_fn": loss_fn, "batch": x, **extra_args})


def _per_device_multi_steps():
    # A one-device mesh: shard_map's check_vma types the loss of a sharded
    # batch as varying along 'data' all the same (8 devices: data_parallel/).
    from jax import shard_map
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((1,), ("data",))
    tx = floodax.multi_steps(optax.chain(floodax.flood(0.5), optax.sgd(1.0)), 2)
    step = shard_map(
        lambda g, state, losses: tx.update(g, state, value=jnp.mean(losses))[1],
        mesh=mesh,
        in_specs=(P(), P(), P("data")),
        out_specs=P(),
    )
    with jax.set_mesh(mesh):
        losses = jax.device_put(jnp.array([0.9, 0.7]), NamedSharding(mesh, P("data")))
        step(G, tx.init(G), losses)


def _masked_update(inner):
    params = {"a": G, "b": G}
    tx = optax.masked(inner, {"a": True, "b": False})
    return tx.update(
        params, tx.init(params), params, value_fn=lambda p: jnp.sum(p["a"] ** 2)
    )


A_MATRIX = jnp.array([[3.0, 1.0], [1.0, 2.0]])


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
        r"`radius` must be positive, got 0\.$",
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
    "level array of the wrong shape": (
        [
            lambda: floodax.iflooded(jnp.ones(3), jnp.array([0.1, 0.2])),
            lambda: floodax.flooded(jnp.float32(1.0), jnp.array([0.1, 0.2])),
        ],
        ValueError,
        r"`flood_level` of shape \(2,\) does not broadcast to `losses`",
    ),
    "flood level of the wrong type": (
        [
            lambda: floodax.flood("0.1"),
            lambda: floodax.flooded(G, None),
            lambda: floodax.iflooded(G, Decimal("0.1")),
            lambda: floodax.flood(Fraction(1, 10)),
        ],
        TypeError,
        r"`flood_level` must be a real number \(a Python int or float, or a real "
        r"JAX/NumPy scalar array\), got (str|NoneType|Decimal|Fraction)",
    ),
    "integer, complex or empty parameters for `value_fn`": (
        [
            lambda: floodax.add_grad_norm_penalty(0.1).update(
                {"n": jnp.int32(1)}, None, {"n": jnp.int32(1)}, value_fn=LOSS_FN
            ),
            lambda: floodax.add_grad_norm_penalty(
                0.1, method="finite_difference"
            ).update({}, None, {}, value_fn=LOSS_FN),
            lambda: floodax.add_grad_norm_penalty(0.1).update(
                {"z": jnp.ones(2, jnp.complex64)},
                None,
                {"z": jnp.ones(2, jnp.complex64)},
                value_fn=lambda p: jnp.sum(jnp.abs(p["z"]) ** 2),
            ),
        ],
        (TypeError, ValueError),
        r"has a leaf of dtype int32 at \['n'\]; it is differentiated.*"
        r"integer and boolean leaves have no gradient|`params` has no array leaves|"
        r"dtype complex64 at \['z'\].*complex leaves are not supported.*two real",
    ),
    "integer parameters for the penalty, theory checks and diagnostics": (
        [
            lambda: floodax.grad_norm_penalty(
                lambda p: jnp.sum(p.astype(jnp.float32) ** 2), 0.1
            )(jnp.array([1, 2])),
            lambda: floodax.grad_norm_penalty(
                lambda x, p: jnp.sum(p["w"] * x), 0.1, argnums=1
            )(G, {"w": jnp.array([True, False])}),
            lambda: floodax.check_equivalence(
                lambda p: jnp.sum(p**2.0), jnp.array([1, 2]), 0.1, 0.05
            ),
            lambda: floodax.hessian_eigenvalues(
                lambda p: jnp.sum(p["w"] ** 2), {"w": G, "n": jnp.int32(3)}
            ),
        ],
        TypeError,
        r"floodax\.(grad_norm_penalty|check_equivalence|hessian_eigenvalues): "
        r"(the argument at argnums=(0|1)|`params`) has a leaf of dtype (int32|bool) "
        r"at (the root|\['w'\]|\['n'\]); it is differentiated with respect to "
        r"every leaf, and integer and boolean leaves have no gradient\. "
        r"(Keep integer state|Pass floating-point parameters)",
    ),
    "a `value_fn` that ignores its parameters": (
        [
            lambda: floodax.add_grad_norm_penalty(0.1).update(
                G, None, G, value_fn=lambda p: LOSS_FN(G)
            ),
            lambda: floodax.alternate(0.2, 0.1).update(
                G, floodax.alternate(0.2, 0.1).init(G), G, value_fn=lambda p: 1.0
            ),
            lambda: _update(floodax.sam(0.1), G, value_fn=lambda p: LOSS_FN(G)),
            lambda: _update(floodax.gsam(0.1, 0.5), G, value_fn=lambda p: LOSS_FN(G)),
        ],
        ValueError,
        r"(?s)`value_fn` does not depend on the parameters it is given.*"
        r"floodax\.nnx\.value_and_grad\(",
    ),
    "a non-scalar `value_fn`": (
        [
            lambda: floodax.add_grad_norm_penalty(0.1).update(
                G, None, G, value_fn=lambda p: p**2
            ),
        ],
        TypeError,
        r"`value_fn` must return a real floating-point scalar \(the loss\), got "
        r"float32\[2\]",
    ),
    "`value_fn` transforms inside `optax.masked`": (
        [
            lambda: _masked_update(floodax.add_grad_norm_penalty(0.1)),
            lambda: _masked_update(floodax.alternate(0.2, 0.1)),
        ],
        TypeError,
        r"received parameters masked by `optax.masked` or `optax.multi_transform`",
    ),
    "`axis_name` outside a mapped axis": (
        [
            lambda: floodax.iflooded(G, 0.1, axis_name="data"),
            lambda: _update(floodax.flood(0.1, axis_name="data"), value=1.0),
        ],
        ValueError,
        r"`axis_name='data'` names no mapped axis here",
    ),
    "scheduled ε1 < ε2": (
        [_scheduled_pairs],
        ValueError,
        r"`descent_rate` \(0.075\) must be at least `ascent_rate` \(0.1\).*"
        r"schedule.*at step 3",
    ),
    "bad `multi_steps` argument": (
        [
            lambda: floodax.multi_steps(optax.sgd(0.1), 0),
            lambda: floodax.multi_steps(optax.sgd(0.1), 2.0),
            lambda: floodax.multi_steps(optax.sgd(0.1), 2, accumulator_dtype="int32"),
            # None is optax's "default float dtype", which breaks its lax.cond
            # for bfloat16 parameters: an error here, not at the first update.
            lambda: floodax.multi_steps(optax.sgd(0.1), 2, accumulator_dtype=None),
        ],
        ValueError,
        r"`every_k_schedule` must be an integer >= 1|"
        r"`accumulator_dtype` must be a floating-point dtype",
    ),
    "a per-device loss in `multi_steps` under `shard_map`": (
        [_per_device_multi_steps],
        ValueError,
        r"floodax\.multi_steps: `value` differs between devices along mesh axis "
        r"'data'.*Pass `floodax\.multi_steps\(\.\.\., axis_name='data'\)`",
    ),
    "a micro-batch's `value_fn` inside `multi_steps`": (
        [
            lambda: _update(
                floodax.multi_steps(
                    optax.chain(floodax.add_grad_norm_penalty(0.1), optax.sgd(0.1)), 2
                ),
                G,
                value_fn=LOSS_FN,
            ),
        ],
        TypeError,
        r"floodax.multi_steps: a transformation inside `inner` called `value_fn`, "
        r"the loss of one micro-batch.*before the accumulation",
    ),
    "bad `group_size`": (
        [
            lambda: floodax.m_sharpness(optax.identity(), 0),
            lambda: floodax.m_sharpness(optax.identity(), 2.0),
        ],
        (TypeError, ValueError),
        r"`group_size` must be an integer >= 1, got (0|float 2.0); it is the number",
    ),
    "batch size not a multiple of `group_size`": (
        [lambda: _m_sharpness_update(3)],
        ValueError,
        r"`batch` has 64 examples, not a multiple of `group_size`=3, so 1 of them",
    ),
    "a `batch` without one batch axis": (
        [
            lambda: _m_sharpness_update(examples={"x": jnp.ones((16, 2)), "y": G}),
            lambda: _m_sharpness_update(examples={"x": jnp.ones((16, 2)), "s": 1.0}),
            lambda: _m_sharpness_update(examples={}),
        ],
        ValueError,
        r"disagree on the batch size \(16 at \['x'\], 2 at \['y'\]\)|"
        r"\['s'\] is a scalar; every leaf needs a leading batch axis|"
        r"`batch` has no array leaves",
    ),
    "missing `loss_fn` or `batch`": (
        [
            lambda: _m_sharpness_update(loss_fn=None, value_fn=LOSS_FN),
            lambda: _m_sharpness_update(batch=None),
        ],
        TypeError,
        r"floodax.m_sharpness needs `(loss_fn|batch)`: call `tx.update\(grads, "
        r"state, params, loss_fn=loss_fn, batch=batch\)`",
    ),
    "`m_sharpness` inside `multi_steps`": (
        [
            lambda: _m_sharpness_update(
                inner=lambda sam: floodax.multi_steps(
                    optax.chain(floodax.m_sharpness(sam, 4), optax.sgd(0.1)), 2
                )
            )
        ],
        TypeError,
        r"inside floodax.multi_steps would perturb with the last micro-batch's "
        r"groups.*Put it before the accumulation",
    ),
    "bad AdaFlood input": (
        [
            lambda: floodax.adaflood_levels(G, gamma=1.0),
            lambda: floodax.adaflood_levels(jnp.array([0.1, jnp.inf])),
        ],
        ValueError,
        r"`gamma` must lie in \[0, 1\)|`aux_losses` must be finite",
    ),
    "bad diagnostics input": (
        [
            lambda: floodax.hessian_eigenvalues(LOSS_FN, jnp.ones(3), k=4),
            lambda: floodax.hessian_eigenvalues(lambda w: w**2, jnp.ones(3)),
            lambda: floodax.loss_landscape(LOSS_FN, jnp.ones(3), directions=3),
        ],
        ValueError,
        r"`k` \(4\) must be at most the number of parameters \(3\)|"
        r"`loss_fn` must return a scalar floating-point loss|"
        r"`directions` must be 1 or 2",
    ),
    "bad `power` or `hvp`": (
        [
            lambda: floodax.add_grad_norm_penalty(0.1, power=3),
            lambda: floodax.grad_norm_penalty(LOSS_FN, 0.1, power=0.5),
            # int() of a float array would truncate 2.7 to 2.
            lambda: floodax.grad_norm_penalty(LOSS_FN, 0.1, power=np.array(2.7)),
            lambda: floodax.add_grad_norm_penalty(0.1, power=jnp.array(1.5)),
            lambda: floodax.add_grad_norm_penalty(0.1, power=True),
            lambda: floodax.add_grad_norm_penalty(0.1, power=np.bool_(True)),
            lambda: floodax.add_grad_norm_penalty(0.1, power="2"),
            lambda: floodax.add_grad_norm_penalty(0.1, power=None),
            lambda: floodax.add_grad_norm_penalty(0.1, power=Fraction(2)),
            lambda: floodax.add_grad_norm_penalty(0.1, power=[2]),
            # Traced (jit, inject_hyperparams): the dtype and shape are known.
            lambda: jax.jit(
                lambda q: floodax.grad_norm_penalty(LOSS_FN, 0.1, power=q)(G)
            )(jnp.float32(2.0)),
            lambda: jax.jit(
                lambda q: floodax.grad_norm_penalty(LOSS_FN, 0.1, power=q)(G)
            )(jnp.array([2, 2])),
            lambda: floodax.add_grad_norm_penalty(0.1, hvp="fast"),
        ],
        ValueError,
        r"`power` must be 1 \(GNP's λ‖∇L‖\) or 2|`hvp` must be one of",
    ),
    "bad SAM argument": (
        [
            lambda: floodax.sam(-0.1),
            lambda: floodax.sam(0.1, eta=float("nan")),
            lambda: floodax.sam(0.1, eps=-1e-16),
            lambda: floodax.sam(jnp.ones(2)),
            lambda: floodax.gsam(0.1, alpha=-1.0),
            lambda: floodax.gsam(0.1, alpha=float("inf")),
            lambda: floodax.sam(0.1, adaptive=jnp.ones(2)),
            lambda: floodax.sam(0.1, adaptive={"w": 1}).update(
                {"w": G},
                floodax.sam(0.1).init(G),
                {"w": G},
                value_fn=lambda p: LOSS_FN(p["w"]),
            ),
            lambda: floodax.gsam(0.1, 0.5, minimize_fp=1),
            lambda: floodax.gsam(0.1, 0.5, adaptive_perturbation=None),
        ],
        (TypeError, ValueError),
        r"`radius` must be non-negative, got -0.1|`eta` must be finite|"
        r"`eps` must be non-negative|`radius` must be a scalar|"
        r"`alpha` must be non-negative|`alpha` must be finite|"
        r"`adaptive` must be True, False|`adaptive` must hold Python booleans|"
        r"`minimize_fp` must be True or False|"
        r"`adaptive_perturbation` must be True or False",
    ),
    "missing `value_fn` for SAM": (
        [
            lambda: _update(floodax.sam(0.1), G),
            lambda: _update(floodax.gsam(0.1, 0.5), G),
            lambda: _update(floodax.gsam(0.1, 0.5), value_fn=LOSS_FN),
        ],
        TypeError,
        r"floodax.g?sam needs the loss function of the parameters: call "
        r"`tx.update\(grads, state, params, value_fn=lambda p: loss_fn\(p, batch\)\)`|"
        r"floodax.gsam needs the current parameters",
    ),
    "bad `weights`": (
        [
            lambda: floodax.iflooded(G, 0.1, weights=jnp.array([1.0, -1.0])),
            lambda: floodax.iflooded(G, 0.1, weights=jnp.ones(3)),
        ],
        ValueError,
        r"`weights` must be non-negative|`weights` of shape \(3,\) does not",
    ),
    "prediction exact to rounding": (
        [
            lambda: floodax.equivalence_order(
                lambda w: 0.5 * w @ A_MATRIX @ w, jnp.array([0.5, -1.0])
            )
        ],
        ValueError,
        r"exact to rounding at every rate.*quadratic",
    ),
    "bad `TrainConfig`": (
        [
            lambda: _train_config(learning_rate=float("inf")),
            lambda: _train_config(momentum=float("nan")),
            lambda: _train_config(momentum=1.0),  # [0, 1): 1 never forgets
            lambda: _train_config(epochs=2.5),
            lambda: _train_config(batch_size=32.0),
        ],
        (TypeError, ValueError),
        r"`learning_rate` must be finite|`momentum` must be finite|"
        r"`momentum` must lie in \[0, 1\), got 1.0|"
        r"`epochs` must be an integer >= 1, got float 2.5|"
        r"`batch_size` must be an integer >= 1, got float 32.0",
    ),
    "bad `suggest_flood_level` input": (
        [
            lambda: floodax.suggest_flood_level([0.5, -0.1], [0.4, 0.5]),
            lambda: floodax.suggest_flood_level([0.5], [0.4], fraction="0.5"),
        ],
        (TypeError, ValueError),
        r"`train_losses` must be non-negative|`fraction` must be a real number",
    ),
    "bad SoftAD hyperparameter": (
        [
            lambda: floodax.softad(G, 0.1, sigma=0),
            lambda: floodax.softad(G, 0.1, sigma=-1.0),
            lambda: floodax.softad(G, 0.1, eta=-0.5),
            lambda: floodax.softad(G, -0.1),
        ],
        ValueError,
        r"`sigma` must be positive, got 0|`sigma` must be positive, got -1.0|"
        r"`eta` must be non-negative, got -0.5|`threshold` must be non-negative",
    ),
    "label outside the classes": (
        [lambda: floodax.class_levels(jnp.array([0.1, 0.5]), jnp.array([0, 2]))],
        ValueError,
        r"`labels` must lie in \[0, 2\) for 2 classes, got 2 \(plain",
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
    assert len(rows) == len(set(rows)) >= 28
    assert set(rows) == set(CASES)


@pytest.mark.parametrize("row", sorted(CASES))
def test_bad_input_row(row):
    calls, error, pattern = CASES[row]
    for call in calls:
        with pytest.raises(error, match=pattern):
            call()
