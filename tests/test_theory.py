"""Tests of the second-order equivalence and the `floodax verify` command."""

from __future__ import annotations

import functools
import runpy
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import floodax
from floodax import _verify
from floodax._cli import main
from tests.helpers import (
    assert_counts_every_unit,
    assert_trees_allclose,
    bars,
    mlp_loss,
)


def test_equivalent_penalty_values_and_inverse():
    lr, strength = floodax.equivalent_penalty(0.3, 0.1)
    assert lr == pytest.approx(0.2)
    assert strength == pytest.approx(0.3 * 0.1 / 0.4)
    # Invert: recover ε2 (then ε1) from lr = ε1 − ε2 and ε1·ε2 = 2λ·lr,
    # ε2 being the positive root of ε2² + lr·ε2 − 2λ·lr = 0.
    product = 2 * strength * lr
    e2 = (-lr + np.sqrt(lr**2 + 4 * product)) / 2
    assert e2 == pytest.approx(0.1) and e2 + lr == pytest.approx(0.3)
    assert floodax.flooding_penalty_rate(0.2) == pytest.approx(0.02)


@pytest.mark.parametrize("rates", [(0.1, 0.1), (0.1, 0.2)])
def test_equivalent_penalty_needs_descent_above_ascent(rates):
    with pytest.raises(
        ValueError, match=r"must exceed `ascent_rate`.*flooding_penalty_rate"
    ):
        floodax.equivalent_penalty(*rates)


def test_theory_bad_input():
    with pytest.raises(ValueError, match="`ascent_rate` must be non-negative"):
        floodax.equivalent_penalty(0.1, -0.1)
    with pytest.raises(ValueError, match="`descent_rate` must be non-negative"):
        floodax.flooding_penalty_rate(-0.1)
    with pytest.raises(TypeError, match="`descent_rate` must be a number here"):
        floodax.equivalent_penalty(lambda n: 0.1, 0.01)
    with pytest.raises(ValueError, match="`ratio` is ε2/ε1"):
        floodax.equivalence_order(mlp_loss, {}, ratio=1.5)
    with pytest.raises(ValueError, match="`num_rates` must be an integer >= 2"):
        floodax.equivalence_order(mlp_loss, {}, num_rates=1)
    with pytest.raises(ValueError, match="`shrink` must lie in"):
        floodax.equivalence_order(mlp_loss, {}, shrink=1.0)
    with pytest.raises(ValueError, match="`shrink` must lie in"):
        floodax.flow_order(mlp_loss, {}, shrink=0.0)
    with pytest.raises(ValueError, match="`ratio` is ε2/ε1"):
        floodax.equivalence_order(mlp_loss, {}, ratio=-0.1)
    with pytest.raises(TypeError, match="`num_rates` must be an integer >= 2"):
        floodax.flow_order(mlp_loss, {}, num_rates=True)
    # Each check names its own argument (not a later one that happens to
    # fail on the same value), and shows an integer as the integer it is.
    for order in (floodax.equivalence_order, floodax.flow_order):
        with pytest.raises(
            ValueError, match=r"`largest_rate` must be positive, got 0\.0"
        ):
            order(mlp_loss, {}, largest_rate=0.0)
    substeps_zero = r"`substeps` must be an integer >= 1, got 0\.$"
    with pytest.raises(ValueError, match=substeps_zero):
        floodax.flow_order(mlp_loss, {}, substeps=0)
    with pytest.raises(ValueError, match=substeps_zero):
        floodax.check_modified_flow(mlp_loss, {}, 0.1, substeps=0)


def _same(a, b):
    return all(
        np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_checks_use_their_documented_defaults(mlp):
    # The docstrings promise the ladders ε1 = 0.1·0.5ᵏ, k < 6, with ε2 = 0.5·ε1
    # (derivation) and ε2 = 0 (flow), descent first, 200 substeps; the
    # smallest ladder, two rates, fits too.
    params, x, y = mlp
    ladder = 0.1 * 0.5 ** np.arange(6)
    report = floodax.equivalence_order(mlp_loss, params, x, y)
    np.testing.assert_allclose(report.descent_rates, ladder, rtol=1e-15)
    np.testing.assert_allclose(report.ascent_rates, 0.5 * ladder, rtol=1e-15)
    explicit = floodax.equivalence_order(mlp_loss, params, x, y, ascent_first=False)
    assert _same(report, explicit)
    other = floodax.equivalence_order(mlp_loss, params, x, y, ascent_first=True)
    assert not np.array_equal(report.derivation_errors, other.derivation_errors)
    two = floodax.equivalence_order(
        mlp_loss, params, x, y, largest_rate=0.2, num_rates=2
    )
    assert len(two.descent_rates) == 2 and abs(two.derivation_order - 3.0) < 0.3

    flow = floodax.flow_order(mlp_loss, params, x, y)
    np.testing.assert_allclose(flow.descent_rates, ladder, rtol=1e-15)
    np.testing.assert_array_equal(flow.ascent_rates, 0.0)
    assert _same(flow, floodax.flow_order(mlp_loss, params, x, y, substeps=200))
    # With ε2 = 0 the order of the steps cannot matter; with ε2 > 0 it does,
    # and the default is descent first.
    pair = functools.partial(
        floodax.flow_order, mlp_loss, params, x, y, ratio=0.5, num_rates=2, substeps=20
    )
    default = pair()
    assert _same(default, pair(ascent_first=False))
    assert not np.array_equal(
        default.derivation_errors, pair(ascent_first=True).derivation_errors
    )

    single = floodax.check_modified_flow(mlp_loss, params, 0.1, 0.05, x, y)
    assert _same(
        single,
        floodax.check_modified_flow(
            mlp_loss, params, 0.1, 0.05, x, y, ascent_first=False, substeps=200
        ),
    )
    for changed in ({"ascent_first": True}, {"substeps": 100}):
        assert not _same(
            single,
            floodax.check_modified_flow(mlp_loss, params, 0.1, 0.05, x, y, **changed),
        )
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    gd = floodax.check_modified_flow(loss_fn, params, 0.1)  # ε2 = 0: one GD step
    assert _same(gd, floodax.check_modified_flow(loss_fn, params, 0.1, 0.0))
    assert _same(
        floodax.check_equivalence(mlp_loss, params, 0.1, 0.05, x, y),
        floodax.check_equivalence(
            mlp_loss, params, 0.1, 0.05, x, y, ascent_first=False
        ),
    )


@pytest.mark.parametrize("rates", [(0.02, 0.005), (0.02, 0.02)])
@pytest.mark.parametrize("ascent_first", [False, True])
def test_check_equivalence_against_explicit_steps(mlp, rates, ascent_first):
    params, x, y = mlp
    e1, e2 = rates
    loss_fn = functools.partial(mlp_loss, x=x, y=y)
    report = floodax.check_equivalence(
        mlp_loss, params, e1, e2, x, y, ascent_first=ascent_first
    )
    # The two real steps, written out by hand.
    first, second = (e2, -e1) if ascent_first else (-e1, e2)
    mid = jax.tree.map(lambda p, g: p + first * g, params, jax.grad(loss_fn)(params))
    two = jax.tree.map(lambda p, g: p + second * g, mid, jax.grad(loss_fn)(mid))
    assert_trees_allclose(report.two_steps, two, rtol=1e-13)
    # The prediction, through the loss-function transform: one step of
    # ε1 − ε2 on L + λ‖∇L‖², or ε²/2 on ‖∇L‖² alone for equal rates.
    if e1 > e2:
        lr, strength = floodax.equivalent_penalty(e1, e2)
        grad = jax.grad(floodax.grad_norm_penalty(loss_fn, strength))(params)
        predicted = jax.tree.map(lambda p, g: p - lr * g, params, grad)
        first_order = jax.tree.map(
            lambda p, g: p - lr * g, params, jax.grad(loss_fn)(params)
        )
    else:
        rate = floodax.flooding_penalty_rate(e1)
        # ∇‖∇L‖² = ∇(L + ‖∇L‖²) − ∇L.
        penalised = jax.grad(floodax.grad_norm_penalty(loss_fn, 1.0))(params)
        predicted = jax.tree.map(
            lambda p, gp, g: p - rate * (gp - g),
            params,
            penalised,
            jax.grad(loss_fn)(params),
        )
        first_order = params
    assert_trees_allclose(report.predicted, predicted, rtol=1e-12, atol=1e-15)
    assert_trees_allclose(report.first_order, first_order, rtol=1e-12, atol=1e-15)
    assert float(report.derivation_error) < 0.1 * float(report.first_order_error)


@pytest.mark.parametrize("ratio", [0.5, 0.2, 1.0])
@pytest.mark.parametrize("ascent_first", [False, True])
def test_fitted_orders_match_theory(mlp, ratio, ascent_first):
    params, x, y = mlp
    report = floodax.equivalence_order(
        mlp_loss, params, x, y, largest_rate=0.2, ratio=ratio, ascent_first=ascent_first
    )
    assert abs(report.derivation_order - 3.0) < 0.2
    assert abs(report.first_order_order - 2.0) < 0.2
    np.testing.assert_allclose(report.ascent_rates, ratio * report.descent_rates)
    assert np.all(np.diff(report.derivation_errors) < 0)


def test_verify_command_prints_table_and_succeeds(capsys):
    assert main(["verify"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # captured, not a terminal: no progress bar
    for scheme in _verify.SCHEMES:
        assert scheme.name in out
    assert out.count("fitted order, derivation:") == 4
    assert out.count("fitted order, modified flow:") == 3
    assert "all orders within tolerance" in out


def test_verify_draws_a_bar_of_its_rungs(monkeypatch, terminal, capsys):
    # Fits stubbed: the first three schemes compute two of their four rungs
    # and then fail their fit, the rest are refused before any rung runs;
    # the bar, not the fits, is under test: it counts every rung of every
    # scheme, names the scheme running, and counts a refused scheme's rungs.
    def stub(*args, progress, num_rates, **kwargs):
        if stub.calls < 3:
            progress.update()
            progress.update()
        stub.calls += 1
        raise ValueError("stubbed")

    stub.calls = 0
    monkeypatch.setattr(_verify, "equivalence_order", stub)
    monkeypatch.setattr(_verify, "flow_order", stub)
    monkeypatch.setattr(_verify, "_problem", lambda seed: (None, None, None))
    assert main(["verify", "--no-progress", "--num-rates", "4"]) == 1
    assert terminal.getvalue() == ""
    stub.calls = 0
    assert main(["verify", "--num-rates", "4"]) == 1
    assert capsys.readouterr().out.count("FAIL, no order fitted: stubbed") == 14
    drawings = terminal.getvalue().split("\r")
    total = 4 * len(_verify.SCHEMES)
    drawn = bars(terminal.getvalue())["floodax verify: rungs"]
    assert assert_counts_every_unit(drawn, total) == {1, 2, 4}
    for i, scheme in enumerate(_verify.SCHEMES):
        running = f"| {4 * i}/{total} ["
        assert any(running in d and d.rstrip().endswith(scheme.name) for d in drawings)


def test_order_fits_count_their_rungs_on_a_bar(terminal):
    floodax.equivalence_order(
        lambda w, x: jnp.sum(jnp.sin(x * w)),
        jnp.array([0.3, 0.2]),
        jnp.array([1.0, 2.0]),
        num_rates=3,
        progress=True,
    )
    assert assert_counts_every_unit(bars(terminal.getvalue())["rungs"], 3) == {1}
    terminal.truncate(0)
    terminal.seek(0)
    floodax.flow_order(
        lambda w: jnp.sum(jnp.cos(w)),
        jnp.array([0.5, 1.0]),
        largest_rate=0.3,
        num_rates=4,
        progress=True,
    )
    assert assert_counts_every_unit(bars(terminal.getvalue())["rungs"], 4) == {1}


@pytest.mark.parametrize("num_rates", ["3", "40"])
@pytest.mark.parametrize("wrong", ["DERIVATION_ORDER", "FIRST_ORDER_ORDER"])
def test_verify_command_fails_when_an_order_is_off(
    capsys, monkeypatch, num_rates, wrong
):
    # If theory gave the derivation's error order 2, or the first-order
    # guess's order 3, the measured slopes (3 and 2) are more than 0.2 away
    # and the command must fail, on a short ladder and on one that reaches
    # the rounding floor (the rungs it drops cannot make a slope pass).
    monkeypatch.setattr(_verify, wrong, 5.0 - getattr(_verify, wrong))
    assert main(["verify", "--num-rates", num_rates]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL (more than 0.2 from theory)") == 7
    assert "some orders FAILED" in out


VERIFY_NUM_RATES = (6, 12, 20, 24, 40)


def _fitted_orders(lines):
    return [
        float(line.split(":")[1].split()[0]) for line in lines if "fitted order" in line
    ]


def test_verify_passes_at_every_num_rates():
    # The flow's error reaches float64's rounding floor near the 13th rung
    # (ε1 ≈ 5e-5): fitted on every rung, 20 rungs gave order 2.10 and 24
    # gave 1.46 (theory 3), so longer ladders failed a correct derivation.
    # Every ladder is the same compiled rung, so five ladders cost one
    # compilation per scheme.
    theory = [_verify.DERIVATION_ORDER, _verify.FIRST_ORDER_ORDER] * 7
    for num_rates in VERIFY_NUM_RATES:
        lines, ok = _verify.run_verify(num_rates=num_rates)
        assert ok, (num_rates, "\n".join(lines))
        orders = _fitted_orders(lines)
        assert len(orders) == 14
        np.testing.assert_allclose(orders, theory, atol=_verify.TOLERANCE)
        # 7 tables of num_rates rows; the rows left out are marked, and from
        # 24 rungs on every scheme has reached the floor.
        rows = [line for line in lines if line.startswith("   ") and "e-" in line]
        assert len(rows) == 7 * num_rates
        marked = sum(_verify.NOT_FITTED in row for row in rows)
        assert (marked == 0) == (num_rates <= 6)
        if num_rates >= 24:
            tables = "\n".join(lines).split("\n\n")[:7]
            assert all(_verify.NOT_FITTED in table for table in tables)


def test_verify_reports_a_ladder_below_the_floor():
    # At ε1 <= 1e-7 the derivation's error (ε³) is below float64's rounding
    # floor: nothing to fit, and the command says why instead of fitting.
    lines, ok = _verify.run_verify(largest_rate=1e-7, num_rates=3)
    assert not ok
    text = "\n".join(lines)
    assert text.count("FAIL, no order fitted") == 7
    assert "`num_rates=3` rates, ε1 = 1e-07 down to 2.5e-08" in text
    assert "try a larger `largest_rate`" in text


def test_verify_command_bad_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", "--num-rates", "1"])
    assert exit_info.value.code == 2
    assert "--num-rates must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["verify", "--largest-rate", "-1"])
    assert "--largest-rate must be positive" in capsys.readouterr().err


@pytest.mark.parametrize(("theory", "code"), [(3.0, 0), (2.0, 1)])
def test_python_dash_m_floodax_verify(monkeypatch, capsys, theory, code):
    # `python -m floodax` runs the same command and exits with its code (1
    # when an order is off). One scheme is enough for the entry point; the
    # checks themselves are tested above.
    monkeypatch.setattr(_verify, "SCHEMES", _verify.SCHEMES[:1])
    monkeypatch.setattr(_verify, "DERIVATION_ORDER", theory)
    monkeypatch.setattr(sys, "argv", ["floodax", "verify", "--num-rates", "3"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("floodax", run_name="__main__")
    assert exited.value.code == code
    out = capsys.readouterr().out
    assert _verify.SCHEMES[0].name in out
    assert ("all orders within tolerance" in out) == (code == 0)


def test_implicit_and_flow_penalties():
    assert floodax.implicit_penalty(0.2) == pytest.approx(0.05)
    time, strength = floodax.flow_penalty(0.3, 0.1)
    assert time == pytest.approx(0.2)
    assert strength == pytest.approx(0.3 * 0.1 / 0.4 + 0.2 / 4)
    # ε2 = 0 is plain gradient descent: the implicit term alone.
    assert floodax.flow_penalty(0.3).strength == pytest.approx(0.3 / 4)
    with pytest.raises(ValueError, match="`learning_rate` must be non-negative"):
        floodax.implicit_penalty(-0.1)
    with pytest.raises(ValueError, match="must exceed `ascent_rate`"):
        floodax.flow_penalty(0.1, 0.1)
    with pytest.raises(ValueError, match="`ratio` must be below 1 here"):
        floodax.flow_order(mlp_loss, {}, ratio=1.0)


@pytest.mark.usefixtures("x64")
def test_flow_integration_matches_the_exact_solution():
    # θ' = −Aθ for L = ½θᵀAθ: θ(t) = exp(−At)θ0, and the modified loss adds
    # λ‖Aθ‖², so its flow is exp(−(A + 2λA²)t)θ0.
    from floodax._theory import _flow

    def expm(m):  # symmetric: V·exp(Λ)·Vᵀ
        values, vectors = np.linalg.eigh(m)
        return vectors @ np.diag(np.exp(values)) @ vectors.T

    a = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    theta = jnp.array([1.0, -2.0])
    loss = lambda w: 0.5 * w @ a @ w  # noqa: E731
    np.testing.assert_allclose(
        _flow(jax.grad(loss), theta, 0.3, 100),
        expm(-0.3 * np.asarray(a)) @ theta,
        rtol=1e-10,
    )
    report = floodax.check_modified_flow(loss, theta, 0.3, 0.1)
    time, strength = floodax.flow_penalty(0.3, 0.1)
    modified = np.asarray(a) + 2 * strength * np.asarray(a) @ np.asarray(a)
    np.testing.assert_allclose(
        report.modified_flow, expm(-time * modified) @ theta, rtol=1e-10
    )
    np.testing.assert_allclose(
        report.plain_flow, expm(-time * np.asarray(a)) @ theta, rtol=1e-10
    )


@pytest.mark.parametrize("ratio", [0.0, 0.5])
@pytest.mark.parametrize("ascent_first", [False, True])
def test_flow_orders_match_theory(mlp, ratio, ascent_first):
    params, x, y = mlp
    report = floodax.flow_order(
        mlp_loss,
        params,
        x,
        y,
        largest_rate=0.2,
        ratio=ratio,
        ascent_first=ascent_first,
        num_rates=5,
        substeps=50,
    )
    assert abs(report.derivation_order - 3.0) < 0.2
    assert abs(report.first_order_order - 2.0) < 0.2


def _explicit_only_endpoints(value_fn, params, e1, e2, *, ascent_first, substeps):
    """The pair against the flow of L plus the explicit penalty alone."""
    from floodax._theory import _flow, _two_steps

    time = e1 - e2
    steps = _two_steps(value_fn, params, e1, e2, ascent_first)
    explicit = jax.grad(floodax.grad_norm_penalty(value_fn, e1 * e2 / (2 * time)))
    plain = jax.grad(value_fn)
    return (
        steps,
        _flow(explicit, params, time, substeps),
        _flow(plain, params, time, substeps),
    )


def test_the_implicit_term_is_needed():
    # Against the flow of L plus the explicit penalty alone, the pair's error
    # is second order, not third: the implicit (ε1 − ε2)/4 carries it. Fitted
    # by the same code as every order, on a ladder reaching the rounding
    # floor: the rungs it drops do not turn the wrong derivation into a pass.
    from floodax._theory import _ladder_order

    with jax.enable_x64(True):
        params, x, y = _verify._problem(0)
        report = _ladder_order(
            _explicit_only_endpoints,
            _verify._mlp_loss,
            params,
            (x, y),
            largest_rate=0.2,
            ratio=0.5,
            num_rates=40,
            shrink=0.5,
            options={"ascent_first": False, "substeps": 50},
            substeps=50,
            what="the explicit-only flow",
            exact="",
        )
    assert 5 < report.fitted.sum() < 40
    assert abs(report.derivation_order - 2.0) < 0.2
    assert abs(report.first_order_order - 2.0) < 0.2
    _, ok = _verify._order_line("explicit only", report.derivation_order, 3.0)
    assert not ok


@pytest.mark.parametrize("largest", ["params", "endpoint"])
def test_rounding_level_scales_with_the_largest_iterate(largest):
    # ROUNDING_ULPS·eps·s for s the largest norm among the parameters and
    # the runs' endpoints; one of them has norm 5 (a squared norm would be
    # 25), another 0 (the smallest): the level is 8·eps·5, not 8·eps/5.
    from floodax._theory import ROUNDING_ULPS, _rounding_level

    five = {"w": jnp.array([0.0, 3.0, 4.0], jnp.float32)}
    zero = {"w": jnp.zeros(3, jnp.float32)}
    one = {"w": jnp.array([1.0, 0.0, 0.0], jnp.float32)}
    if largest == "params":
        level, dtype = _rounding_level(five, [zero, one])
    else:
        level, dtype = _rounding_level(zero, [five, one])
    assert dtype == jnp.float32
    assert level == pytest.approx(ROUNDING_ULPS * float(jnp.finfo(jnp.float32).eps) * 5)


def test_order_fit_leaves_out_the_rungs_at_rounding_level():
    # In float32 the third rung's error (1.2e-7, one ulp of a loss near 1)
    # is rounding, not truncation: it is left out of the fit, which then
    # finds the theory's 3. With a shrink of 0.01 only one rung is above
    # rounding, and one point fits no slope.
    loss = lambda w: jnp.sum(jnp.cos(w)) + jnp.sum(w**4)  # noqa: E731
    w = jnp.array([0.5, -1.0, 0.3], jnp.float32)
    report = floodax.equivalence_order(
        loss, w, largest_rate=0.1, num_rates=3, shrink=0.1
    )
    assert report.fitted.tolist() == [True, True, False]
    assert report.derivation_order == pytest.approx(3, abs=0.1)
    with pytest.raises(
        ValueError,
        match=r"only 1 of the `num_rates=3` rates, ε1 = 0.1 down to 1e-05, give "
        r"errors above the rounding floor.*a `shrink` closer to 1",
    ):
        floodax.equivalence_order(loss, w, largest_rate=0.1, num_rates=3, shrink=0.01)


@pytest.mark.parametrize("fit", [floodax.equivalence_order, floodax.flow_order])
def test_order_fits_of_float32_params_do_not_change_under_x64(fit):
    # With float64 enabled globally (as for the derivation's checks) a
    # float32 model is still stepped in float32: the ladder's rates take the
    # parameters' dtype, and the report is the one made without x64.
    loss = lambda w: jnp.sum(jnp.cos(w)) + jnp.sum(w**4)  # noqa: E731
    w = jnp.array([0.5, -1.0, 0.3], jnp.float32)
    plain = fit(loss, w, largest_rate=0.1, num_rates=3)
    with jax.enable_x64(True):
        wide = fit(loss, w, largest_rate=0.1, num_rates=3)
    np.testing.assert_array_equal(wide.derivation_errors, plain.derivation_errors)
    np.testing.assert_array_equal(wide.first_order_errors, plain.first_order_errors)


@pytest.mark.parametrize("fit", [floodax.equivalence_order, floodax.flow_order])
def test_order_fits_take_a_python_number_as_params(fit):
    # check_equivalence takes a Python float as its parameter; the fits did
    # not (an AttributeError from inside the norm). Same report as float32.
    loss = lambda w: jnp.cos(w) + w**4  # noqa: E731
    number = fit(loss, 0.5, largest_rate=0.5, num_rates=3)
    array = fit(loss, jnp.float32(0.5), largest_rate=0.5, num_rates=3)
    np.testing.assert_array_equal(number.derivation_errors, array.derivation_errors)
    np.testing.assert_array_equal(number.fitted, array.fitted)


def _synthetic_fit(predicted, baseline, level):
    from floodax._theory import _order_report

    rates = 0.2 * 0.5 ** np.arange(len(predicted))
    return _order_report(
        rates, 0.5 * rates, predicted, baseline, level, jnp.float64, "it", "Exact."
    )


def test_order_fit_drops_a_floor_above_the_rounding_level():
    # Errors c·εᵖ plus a rounding floor of 1e-14 that wanders by ±50 %, with
    # the rounding level at its typical size: the values above the level are
    # rounding too. The fit finds 3 and 2 on the rungs well above the floor,
    # however long the ladder, and drops the rest.
    rates = 0.2 * 0.5 ** np.arange(40)
    floor = 1e-14 * (1 + 0.5 * np.sin(np.arange(40)))
    for num_rates in (6, 12, 20, 24, 40):
        cubic = (1e-3 * rates**3 + floor)[:num_rates]
        square = (1e-1 * rates**2 + floor)[:num_rates]
        report = _synthetic_fit(cubic, square, level=1e-14)
        assert report.fitted[: min(num_rates, 8)].all()
        assert not report.fitted[10:].any()
        np.testing.assert_allclose(report.derivation_order, 3.0, atol=0.02)
        np.testing.assert_allclose(report.first_order_order, 2.0, atol=1e-3)
    # A wrong, second-order derivation stays second order.
    report = _synthetic_fit(1e-3 * rates**2 + floor, 1e-1 * rates**2 + floor, 1e-14)
    np.testing.assert_allclose(report.derivation_order, 2.0, atol=0.02)


def test_order_fit_keeps_the_first_unbroken_run():
    # A first rung whose error is below the next one (non-monotone at large
    # rates) is left out, the rest fitted; a rung at the floor that happens
    # to exceed every later error is left out too, because a rung before it
    # already fell to the floor.
    rates = 0.2 * 0.5 ** np.arange(10)
    cubic = rates**3
    cubic[0] = 0.5 * cubic[1]
    cubic[6:] = [1e-9, 3e-9, 2e-9, 1e-9]
    square = rates**2
    report = _synthetic_fit(cubic, square, level=1e-9)
    assert report.fitted.tolist() == [False] + [True] * 5 + [False] * 4
    np.testing.assert_allclose(report.derivation_order, 3.0, atol=1e-12)


def test_a_wrong_derivation_whose_error_dips_is_not_passed_as_a_floor():
    # A derivation missing an ε² term a·ε² that cancels its ε³ residual near
    # one rate: the errors dip there, then fall as ε² at the small rates,
    # where the error shows. That tail lies 10⁵ times above the rounding
    # level, so it is no floor: every rung is fitted and the order is off
    # (dropping the tail gave 3.16, a pass; found by an adversarial review).
    rates = 0.2 * 0.5 ** np.arange(12)
    for dip in (6, 7):
        wrong = np.abs(1.1 * rates[dip] * rates**2 - rates**3)
        report = _synthetic_fit(wrong, 0.5 * rates**2, level=1e-15)
        assert report.fitted.all()
        assert abs(report.derivation_order - 3.0) > 0.2


def test_order_fit_names_num_rates_and_the_range_when_too_few_remain():
    rates = 0.2 * 0.5 ** np.arange(5)
    flat = np.full(5, 1e-10) + rates**3 * [1, 0, 0, 0, 0]
    with pytest.raises(
        ValueError,
        match=r"only 1 of the `num_rates=5` rates, ε1 = 0\.2 down to 0\.0125, "
        r"give errors above the rounding floor.*a larger `largest_rate`, or a "
        r"`shrink` closer to 1",
    ):
        _synthetic_fit(flat, 10 * flat, level=1e-11)


def test_flow_rounding_floor_lies_below_the_level():
    # At ε1 ≤ 1e-9 the flows' errors are rounding alone. With 50 substeps
    # they reach more than ROUNDING_ULPS ulps of ‖θ‖ (each substep rounds θ
    # once more), and stay below the level that counts half an ulp per
    # substep.
    from floodax._theory import (
        ROUNDING_ULPS,
        _compiled,
        _distance,
        _flow_endpoints,
        _rounding_level,
    )

    with jax.enable_x64(True):
        params, x, y = _verify._problem(0)
        options = {"ascent_first": False, "substeps": 50}
        rung = _compiled(_flow_endpoints, _verify._mlp_loss, options)
        rungs = [rung(params, (x, y), e1, 0.0) for e1 in 1e-9 * 0.7 ** np.arange(8)]
        errors = np.array([float(_distance(s, m)) for s, m, _ in rungs])
        level, _ = _rounding_level(params, [s for s, _, _ in rungs], 50)
        single, _ = _rounding_level(params, [s for s, _, _ in rungs])
    assert level == pytest.approx(single * (ROUNDING_ULPS + 25) / ROUNDING_ULPS)
    assert errors.max() < level
    assert errors.max() > single


def test_a_loss_whose_closure_changed_is_checked_again(x64):
    # The same function object, its closed-over scale rebound between calls:
    # the second check must see the new loss (a program compiled for the
    # first and cached by the function's identity would not).
    scale = 1.0

    def loss(w):
        return scale * jnp.sum(w**4)

    w = jnp.array([1.0, 0.5])
    first = floodax.check_equivalence(loss, w, 0.01, 0.005).derivation_error
    scale = 3.0
    again = floodax.check_equivalence(loss, w, 0.01, 0.005).derivation_error
    fresh = floodax.check_equivalence(
        lambda v: 3.0 * jnp.sum(v**4), w, 0.01, 0.005
    ).derivation_error
    assert again == fresh != first


def _sum_of_leaves(params, *args):
    return sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(params))


THEORY_CALLS = {
    "check_equivalence": lambda p: floodax.check_equivalence(
        _sum_of_leaves, p, 0.1, 0.05
    ),
    "check_modified_flow": lambda p: floodax.check_modified_flow(
        _sum_of_leaves, p, 0.1
    ),
    "equivalence_order": lambda p: floodax.equivalence_order(_sum_of_leaves, p),
    "flow_order": lambda p: floodax.flow_order(_sum_of_leaves, p),
}


@pytest.mark.parametrize("who", sorted(THEORY_CALLS))
@pytest.mark.parametrize(
    ("params", "dtype", "where"),
    [
        (jnp.array([1, 2]), "int32", "the root"),
        (1, "int32", "the root"),
        ({"w": jnp.array([0.5]), "n": jnp.int32(3)}, "int32", r"\['n'\]"),
        ({"mask": jnp.array([True])}, "bool", r"\['mask'\]"),
    ],
)
def test_integer_params_are_named(who, params, dtype, where):
    # jax.grad's own error named neither the argument nor the fix.
    with pytest.raises(
        TypeError,
        match=rf"floodax\.{who}: `params` has a leaf of dtype {dtype} at {where}; "
        r"it is differentiated with respect to every leaf, .*"
        r"`jax\.tree\.map\(lambda p: jnp\.asarray\(p, float\), params\)`",
    ):
        THEORY_CALLS[who](params)


def test_numpy_integers_count_as_integers():
    # num_rates and substeps take NumPy integers, as Python ints; the same
    # reports. Bools, floats and strings are refused by name.
    loss = lambda w: jnp.sum(jnp.cos(w)) + jnp.sum(w**4)  # noqa: E731
    w = jnp.array([0.5, -1.0, 0.3], jnp.float32)
    for fit in (floodax.equivalence_order, floodax.flow_order):
        plain = fit(loss, w, largest_rate=0.1, num_rates=3)
        assert _same(plain, fit(loss, w, largest_rate=0.1, num_rates=np.int64(3)))
    flow = functools.partial(floodax.flow_order, loss, w, largest_rate=0.1)
    assert _same(
        flow(num_rates=2, substeps=20), flow(num_rates=2, substeps=np.int32(20))
    )
    single = functools.partial(floodax.check_modified_flow, loss, w, 0.1)
    assert _same(single(substeps=20), single(substeps=np.int64(20)))
    for bad in (True, np.bool_(True), 3.0, "3"):
        with pytest.raises(TypeError, match=r"`num_rates` must be an integer >= 2"):
            floodax.equivalence_order(loss, w, num_rates=bad)
        with pytest.raises(TypeError, match=r"`substeps` must be an integer >= 1"):
            floodax.flow_order(loss, w, substeps=bad)
        with pytest.raises(TypeError, match=r"`substeps` must be an integer >= 1"):
            floodax.check_modified_flow(loss, w, 0.1, substeps=bad)
    with pytest.raises(ValueError, match=r"`num_rates` must be an integer >= 2, got 1"):
        floodax.flow_order(loss, w, num_rates=np.int64(1))


@pytest.mark.parametrize("fit", [floodax.equivalence_order, floodax.flow_order])
@pytest.mark.parametrize("name", ["ratio", "shrink"])
@pytest.mark.parametrize("bad", ["0.5", None])
def test_ladder_numbers_are_type_checked(fit, name, bad):
    # A string or None met a bare comparison (`'<=' not supported ...`).
    with pytest.raises(TypeError, match=rf"`{name}` must be a real number"):
        fit(mlp_loss, {}, **{name: bad})
