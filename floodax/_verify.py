"""``floodax verify``: the second-order derivations, checked on a small MLP.

Two families of checks: one penalised step against two alternating steps
(:func:`floodax.equivalence_order`), and the gradient flow of a modified loss
against real steps (:func:`floodax.flow_order`): the implicit penalty ``h/4``
of one gradient-descent step, and explicit plus implicit for the pair.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from floodax._progress import Progress, progress_bar
from floodax._theory import OrderReport, equivalence_order, flow_order, pure_loss

TOLERANCE = 0.2
DERIVATION_ORDER = 3.0
FIRST_ORDER_ORDER = 2.0


class Scheme(NamedTuple):
    name: str
    ratio: float
    ascent_first: bool
    flow: bool = False


SCHEMES = (
    Scheme("alternating ε2 = ε1/2, descent first", 0.5, False),
    Scheme("alternating ε2 = ε1/2, ascent first (backstitch)", 0.5, True),
    Scheme("flooding ε1 = ε2, descent first", 1.0, False),
    Scheme("flooding ε1 = ε2, ascent first", 1.0, True),
    Scheme(
        "gradient descent vs the flow of L + (h/4)‖∇L‖² (implicit)", 0.0, False, True
    ),
    Scheme(
        "alternating ε2 = ε1/2 vs the flow with explicit + implicit penalty",
        0.5,
        False,
        True,
    ),
    Scheme(
        "backstitch ε2 = ε1/2 vs the flow with explicit + implicit penalty",
        0.5,
        True,
        True,
    ),
)


@pure_loss
def _mlp_loss(params, x, y):
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    return jnp.mean(jnp.logaddexp(0.0, -y * logits))


def _problem(seed: int):
    """A float64 two-layer tanh MLP on a logistic task made from ``seed``."""
    keys = jax.random.split(jax.random.key(seed), 5)
    n_in, n_hidden, n = 4, 8, 32
    x = jax.random.normal(keys[0], (n, n_in), jnp.float64)
    y = jnp.sign(jnp.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1)
    params = {
        "w1": jax.random.normal(keys[1], (n_in, n_hidden), jnp.float64) / 2,
        "b1": 0.1 * jax.random.normal(keys[2], (n_hidden,), jnp.float64),
        "w2": jax.random.normal(keys[3], (n_hidden,), jnp.float64) / 3,
        "b2": 0.1 * jax.random.normal(keys[4], (), jnp.float64),
    }
    return params, x, y


def _order_line(label: str, measured: float, theory: float) -> tuple[str, bool]:
    ok = abs(measured - theory) <= TOLERANCE
    verdict = "ok" if ok else f"FAIL (more than {TOLERANCE} from theory)"
    return f"  fitted order, {label}: {measured:.3f} (theory {theory:g}) {verdict}", ok


NOT_FITTED = "  rounding floor, not fitted"


def run_verify(
    *,
    seed: int = 0,
    largest_rate: float = 0.2,
    num_rates: int = 6,
    progress: bool | Progress = True,
) -> tuple[list[str], bool]:
    """Returns the report's lines and whether every order is within tolerance.

    Rungs below the rounding floor (:attr:`floodax.OrderReport.fitted`) are
    printed, marked, and left out of the fits; a scheme whose ladder leaves
    fewer than two rungs above the floor fails with the fit's reason. With
    ``progress``, a bar on standard error (when it is a terminal) counts the
    rungs computed, ``num_rates`` for each scheme (the first rung of each
    also compiles it), and names the scheme running.
    """
    total = len(SCHEMES) * num_rates
    with progress_bar(progress, total, "floodax verify: rungs") as bar:
        return _checks(seed, largest_rate, num_rates, bar)


def _checks(
    seed: int, largest_rate: float, num_rates: int, bar: Progress
) -> tuple[list[str], bool]:
    lines, all_ok = [], True
    with jax.enable_x64(True):
        params, x, y = _problem(seed)
        for scheme in SCHEMES:
            bar.status = scheme.name
            # 50 Runge–Kutta steps: the integration error, O((T/50)⁴), is
            # far below the smallest measured error at every rung.
            extra = {"substeps": 50} if scheme.flow else {}
            fit = flow_order if scheme.flow else equivalence_order
            lines.append(f"{scheme.name}")
            done = bar.n + num_rates
            try:
                report: OrderReport = fit(
                    _mlp_loss,
                    params,
                    x,
                    y,
                    largest_rate=largest_rate,
                    ratio=scheme.ratio,
                    num_rates=num_rates,
                    ascent_first=scheme.ascent_first,
                    progress=bar,
                    **extra,
                )
            except ValueError as error:
                lines.extend([f"  FAIL, no order fitted: {error}", ""])
                all_ok = False
                continue
            finally:
                if bar.n < done:  # refused before its rungs ran: count them
                    bar.update(done - bar.n)
            predicted, baseline = (
                ("modified-flow error", "flow-of-L error")
                if scheme.flow
                else ("derivation error", "first-order error")
            )
            lines.append(f"  {'ε1':>10} {'ε2':>10} {predicted:>19} {baseline:>19}")
            for e1, e2, d, f, fitted in zip(
                report.descent_rates,
                report.ascent_rates,
                report.derivation_errors,
                report.first_order_errors,
                report.fitted,
                strict=True,
            ):
                mark = "" if fitted else NOT_FITTED
                lines.append(f"  {e1:10.3e} {e2:10.3e} {d:19.3e} {f:19.3e}{mark}")
            labels = (
                ("modified flow", "flow of L")
                if scheme.flow
                else ("derivation", "first order")
            )
            for label, measured, theory in (
                (labels[0], report.derivation_order, DERIVATION_ORDER),
                (labels[1], report.first_order_order, FIRST_ORDER_ORDER),
            ):
                line, ok = _order_line(label, measured, theory)
                lines.append(line)
                all_ok &= ok
            lines.append("")
    lines.append("all orders within tolerance" if all_ok else "some orders FAILED")
    return lines, all_ok
