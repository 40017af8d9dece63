"""What m-sharpness costs: step time of ``floodax.m_sharpness`` around SAM,
against SAM on the whole batch and against a plain gradient step, on a small
MLP for a few group sizes ``m``.

Every configuration is one jitted training step (gradient, transformation,
SGD). The step passes the whole batch's gradient in as optax expects, although
``m_sharpness`` recomputes each group's: under ``jit`` that gradient is dead
code, and XLA's flop count (``flops``) shows whether it was dropped. Rounds
are interleaved (each round times every configuration once, in turn), and
the table gives medians over rounds and the ratio of medians.

Run:  python benchmarks/m_sharpness.py
Writes benchmarks/results/m_sharpness.{md,json}.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _machine import command, describe, write_results
from _machine import parser as make_parser

import floodax

RHO = 0.05


def _problem(width: int, batch: int, n_in: int = 32):
    keys = jax.random.split(jax.random.key(0), 5)
    sizes = [n_in, width, width, 1]
    params = [
        {
            "w": jax.random.normal(k, (a, b)) / np.sqrt(a),
            "b": jnp.zeros(b),
        }
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=False)
    ]
    x = jax.random.normal(keys[3], (batch, n_in))
    y = jnp.sin(x[:, 0]) + 0.1 * jax.random.normal(keys[4], (batch,))
    return params, {"x": x, "y": y}


def _loss(params, batch):
    h = batch["x"]
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    out = (h @ params[-1]["w"] + params[-1]["b"])[:, 0]
    return jnp.mean((out - batch["y"]) ** 2)


def _configurations(group_sizes):
    sam = floodax.add_grad_norm_penalty(
        RHO, power=1, method="finite_difference", radius=RHO
    )
    sgd = optax.sgd(0.01)

    def step(tx, extra):
        def body(params, state, batch):
            grads = jax.grad(_loss)(params, batch)
            updates, state = tx.update(grads, state, params, **extra(batch))
            return optax.apply_updates(params, updates), state

        return tx, body

    configs = {"gradient": step(sgd, lambda b: {})}
    configs["SAM"] = step(
        optax.chain(sam, sgd), lambda b: {"value_fn": lambda p: _loss(p, b)}
    )
    for m in group_sizes:
        configs[f"m-sharpness m={m}"] = step(
            optax.chain(floodax.m_sharpness(sam, m), sgd),
            lambda b: {"loss_fn": _loss, "batch": b},
        )
    return configs


def main() -> None:
    args = make_parser(__doc__, rounds=True)
    args.add_argument("--batch", type=int, default=128)
    args.add_argument("--groups", type=int, nargs="+", default=[128, 32, 8, 1])
    args = args.parse_args()
    params, batch = _problem(args.width, args.batch)
    configs = _configurations(args.groups)
    compiled, states, flops = {}, {}, {}
    for name, (tx, body) in configs.items():
        state = tx.init(params)
        exe = jax.jit(body).lower(params, state, batch).compile()
        cost = exe.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        flops[name] = float(cost.get("flops", float("nan")))
        p, s = params, state
        for _ in range(3):  # warm-up
            p, s = exe(p, s, batch)
        jax.block_until_ready(p)
        compiled[name], states[name] = exe, (p, s)
    load_before = os.getloadavg()[0]
    times = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, exe in compiled.items():
            p, s = states[name]
            start = time.perf_counter()
            for _ in range(args.steps):
                p, s = exe(p, s, batch)
            jax.block_until_ready(p)
            times[name].append((time.perf_counter() - start) / args.steps)
            states[name] = (p, s)
    load = (load_before, os.getloadavg()[0])
    median = {name: float(np.median(t)) for name, t in times.items()}
    rows = [
        "| configuration | step (ms) | × gradient | × SAM | XLA flops × SAM |",
        "|---|---|---|---|---|",
    ]
    for name in configs:
        rows.append(
            f"| {name} | {1e3 * median[name]:.3f} | "
            f"{median[name] / median['gradient']:.2f} | "
            f"{median[name] / median['SAM']:.2f} | "
            f"{flops[name] / flops['SAM']:.2f} |"
        )
    text = "\n".join(
        [
            "# m-sharpness: step time against SAM and a plain gradient",
            "",
            f"Command: `{command(__file__)}`",
            f"Machine: {describe()}",
            f"MLP 32 → {args.width} → {args.width} → 1 (tanh), batch {args.batch}, "
            f"float32; medians of {args.rounds} interleaved rounds of "
            f"{args.steps} steps. Load average {load[0]:.1f} before the timed "
            f"rounds, {load[1]:.1f} after, on {os.cpu_count()} cores: shared with "
            "other jobs, so ratios are rough.",
            "",
            *rows,
            "",
        ]
    )
    write_results(
        args.out,
        "m_sharpness",
        text,
        {
            "command": command(__file__),
            "machine": describe(),
            "width": args.width,
            "batch": args.batch,
            "median_seconds": median,
            "times": times,
            "flops": flops,
            "load_average": load,
        },
    )


if __name__ == "__main__":
    main()
