"""``floodax verify``: the second-order derivation, checked on a small MLP."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from floodax._theory import OrderReport, equivalence_order

TOLERANCE = 0.2
DERIVATION_ORDER = 3.0
FIRST_ORDER_ORDER = 2.0


class Scheme(NamedTuple):
    name: str
    ratio: float
    ascent_first: bool


SCHEMES = (
    Scheme("alternating ε2 = ε1/2, descent first", 0.5, False),
    Scheme("alternating ε2 = ε1/2, ascent first (backstitch)", 0.5, True),
    Scheme("flooding ε1 = ε2, descent first", 1.0, False),
    Scheme("flooding ε1 = ε2, ascent first", 1.0, True),
)


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


def run_verify(
    *, seed: int = 0, largest_rate: float = 0.2, num_rates: int = 6
) -> tuple[list[str], bool]:
    """Returns the report's lines and whether every order is within tolerance."""
    lines, all_ok = [], True
    with jax.enable_x64(True):
        params, x, y = _problem(seed)
        for scheme in SCHEMES:
            report: OrderReport = equivalence_order(
                _mlp_loss,
                params,
                x,
                y,
                largest_rate=largest_rate,
                ratio=scheme.ratio,
                num_rates=num_rates,
                ascent_first=scheme.ascent_first,
            )
            lines.append(f"{scheme.name}")
            lines.append(
                f"  {'ε1':>10} {'ε2':>10} {'derivation error':>18} "
                f"{'first-order error':>18}"
            )
            for e1, e2, d, f in zip(
                report.descent_rates,
                report.ascent_rates,
                report.derivation_errors,
                report.first_order_errors,
                strict=True,
            ):
                lines.append(f"  {e1:10.3e} {e2:10.3e} {d:18.3e} {f:18.3e}")
            for label, measured, theory in (
                ("derivation", report.derivation_order, DERIVATION_ORDER),
                ("first order", report.first_order_order, FIRST_ORDER_ORDER),
            ):
                line, ok = _order_line(label, measured, theory)
                lines.append(line)
                all_ok &= ok
            lines.append("")
    lines.append("all orders within tolerance" if all_ok else "some orders FAILED")
    return lines, all_ok
