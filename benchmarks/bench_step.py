"""Time per jit-compiled training step: each floodax form against plain optax.

Models: the paper's MLP (4 × 500, batch norm) on Sinusoid2d's 100 points;
plain ReLU MLPs 784-W×4-10 on a batch of 256 for W = 128, 512, 1024, 2048;
a small CNN on 8×8 digits. Configurations: plain Adam; flooding in its three
forms; SoftAD; alternating steps; the finite-difference penalty; SAM, ASAM and GSAM
(``floodax.sam``, ``floodax.gsam``: one extra gradient each); the exact
penalty by
each Hessian-vector-product route (``add_grad_norm_penalty(hvp=...)``:
the default ``"auto"``, timed as its own configuration; reverse-over-forward;
forward-over-reverse; reverse-over-reverse; and ``jax.linearize`` of the
gradient, measured inline); and double backpropagation through
``grad_norm_penalty``.

Every configuration's step is compiled and warmed up, then the configurations
run interleaved (the order rotated each round) for --rounds rounds of
--steps steps. Reported per configuration: the median time per step, the
median and IQR of its ratio to plain measured in the same round, for exact
routes (and the default) the ratio to the cheapest explicit exact route of
the same round, XLA's own
flop count relative to plain (``compiled.cost_analysis()``), XLA's
temporary memory for the step (MiB), and the number of transpose and copy
instructions in the optimised HLO.

Run:  python benchmarks/bench_step.py [--rounds 12] [--steps 10]
Writes benchmarks/results/bench_step_<platform>.{md,json}.
"""

from __future__ import annotations

import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _machine import command, describe, write_results
from _machine import parser as make_parser
from _models import cnn_problem, mlp_problem, wide_mlp_problem

import floodax

LR, FLOOD, RATE1, RATE2, STRENGTH = 1e-3, 0.1, 1e-3, 1e-4, 0.01
RADIUS, ALPHA = 0.05, 0.5
DEFAULT = "exact: default (hvp='auto')"
EXACT = (
    "exact: reverse-over-forward",
    "exact: forward-over-reverse",
    "exact: reverse-over-reverse",
    "exact: jax.linearize",
)
ROUTES = dict(
    zip(
        (DEFAULT, *EXACT[:3]),
        (
            "auto",
            "reverse_over_forward",
            "forward_over_reverse",
            "reverse_over_reverse",
        ),
        strict=True,
    )
)


def configurations(example_losses):
    """name -> (tx, step body) with the body returning (params, state)."""

    def mean_loss(p, x, y):
        return jnp.mean(example_losses(p, x, y))

    adam = optax.adam(LR)

    def with_grads(tx, grads_fn):
        def body(params, state, x, y):
            grads, extra = grads_fn(params, x, y)
            updates, state = tx.update(grads, state, params, **extra)
            return optax.apply_updates(params, updates), state

        return tx, body

    def plain_grads(p, x, y):
        return jax.grad(mean_loss)(p, x, y), {}

    def value_and_grads(p, x, y):
        loss, grads = jax.value_and_grad(mean_loss)(p, x, y)
        return grads, {"value": loss}

    def value_fn_grads(p, x, y):
        return jax.grad(mean_loss)(p, x, y), {"value_fn": lambda q: mean_loss(q, x, y)}

    def linearize_grads(p, x, y):
        # g + 2λ·H·g with H·g from jax.linearize of the gradient.
        g, hvp = jax.linearize(jax.grad(lambda q: mean_loss(q, x, y)), p)
        hg = hvp(g)
        return jax.tree.map(lambda a, b: a + 2 * STRENGTH * b, g, hg), {}

    configs = {
        "plain": with_grads(adam, plain_grads),
        "flooded": with_grads(
            adam,
            lambda p, x, y: (
                jax.grad(lambda q: floodax.flooded(mean_loss(q, x, y), FLOOD))(p),
                {},
            ),
        ),
        "flood": with_grads(optax.chain(floodax.flood(FLOOD), adam), value_and_grads),
        "iflooded": with_grads(
            adam,
            lambda p, x, y: (
                jax.grad(lambda q: floodax.iflooded(example_losses(q, x, y), FLOOD))(p),
                {},
            ),
        ),
        "softad": with_grads(
            adam,
            lambda p, x, y: (
                jax.grad(lambda q: floodax.softad(example_losses(q, x, y), FLOOD))(p),
                {},
            ),
        ),
        "alternate": with_grads(
            optax.chain(optax.scale_by_adam(), floodax.alternate(RATE1, RATE2)),
            plain_grads,
        ),
        "finite difference": with_grads(
            optax.chain(
                floodax.add_grad_norm_penalty(STRENGTH, method="finite_difference"),
                adam,
            ),
            value_fn_grads,
        ),
        # The SAM family: one extra gradient each, so about 2× plain.
        "sam": with_grads(optax.chain(floodax.sam(RADIUS), adam), value_fn_grads),
        "asam": with_grads(
            optax.chain(floodax.sam(RADIUS, adaptive=True), adam), value_fn_grads
        ),
        "gsam": with_grads(
            optax.chain(floodax.gsam(RADIUS, ALPHA), adam), value_fn_grads
        ),
    }
    for name, route in ROUTES.items():
        configs[name] = with_grads(
            optax.chain(floodax.add_grad_norm_penalty(STRENGTH, hvp=route), adam),
            value_fn_grads,
        )
    configs["exact: jax.linearize"] = with_grads(adam, linearize_grads)
    configs["double backprop (grad_norm_penalty)"] = with_grads(
        adam,
        lambda p, x, y: (
            jax.grad(floodax.grad_norm_penalty(mean_loss, STRENGTH))(p, x, y),
            {},
        ),
    )
    return configs


def _analysis(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    memory = compiled.memory_analysis()
    hlo = compiled.as_text()
    return {
        "flops": float(cost.get("flops", float("nan"))) if cost else float("nan"),
        "temp_bytes": None if memory is None else float(memory.temp_size_in_bytes),
        "transposes": len(re.findall(r"= \S+ transpose\(", hlo)),
        "copies": len(re.findall(r"= \S+ copy\(", hlo)),
        "hlo": hlo,
    }


def bench_problem(problem, rounds: int, steps: int) -> dict:
    configs = configurations(problem.example_losses)
    names = list(configs)
    compiled, states, info = {}, {}, {}
    x0, y0 = problem.batches[0]
    for name, (tx, body) in configs.items():
        state = tx.init(problem.params)
        exe = jax.jit(body).lower(problem.params, state, x0, y0).compile()
        info[name] = _analysis(exe)
        compiled[name] = exe
        params = problem.params
        for x, y in problem.batches[:3]:  # warm-up
            params, state = exe(params, state, x, y)
        jax.block_until_ready(params)
        states[name] = (params, state)

    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            params, state = states[name]
            exe = compiled[name]
            start = time.perf_counter()
            for i in range(steps):
                x, y = problem.batches[i % len(problem.batches)]
                params, state = exe(params, state, x, y)
            jax.block_until_ready(params)
            times[name].append((time.perf_counter() - start) / steps)
            states[name] = (params, state)

    plain = np.array(times["plain"])
    cheapest = np.min([times[n] for n in EXACT], axis=0)
    result = {}
    for name in names:
        t = np.array(times[name])
        ratios = t / plain
        exact = name in EXACT or name == DEFAULT
        result[name] = {
            "median_step_ms": 1e3 * float(np.median(t)),
            "ratio_median": float(np.median(ratios)),
            "ratio_q25": float(np.percentile(ratios, 25)),
            "ratio_q75": float(np.percentile(ratios, 75)),
            "to_cheapest_exact": float(np.median(t / cheapest)) if exact else None,
            "flop_ratio": info[name]["flops"] / info["plain"]["flops"],
            # XLA's temporary buffers for one step, in bytes. A ratio to
            # plain means nothing where plain needs almost none (the wide
            # MLPs update in place), so the table prints MiB.
            "temp_bytes": info[name]["temp_bytes"],
            "transposes": info[name]["transposes"],
            "copies": info[name]["copies"],
        }

    # Which route the default compiled to: the explicit route whose optimised
    # HLO is the same program (module names aside).
    def program(name):
        return re.sub(r"HloModule \S+", "", info[name]["hlo"])

    same = [n for n in EXACT[:3] if program(n) == program(DEFAULT)]
    result[DEFAULT]["route"] = same[0].removeprefix("exact: ") if same else "?"
    return result


def format_results(problem_name: str, result: dict) -> str:
    lines = [
        f"### {problem_name}",
        "",
        "| configuration | median step (ms) | ratio to plain (median [IQR]) | to the "
        "cheapest exact route | XLA flops vs plain | XLA temp memory (MiB) | HLO "
        "transposes / copies |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result.items():
        cheapest = (
            "" if r["to_cheapest_exact"] is None else f"{r['to_cheapest_exact']:.3f}"
        )
        mem = "n/a" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:.2f}"
        lines.append(
            f"| {name} | {r['median_step_ms']:.3f} | {r['ratio_median']:.3f} "
            f"[{r['ratio_q25']:.3f}, {r['ratio_q75']:.3f}] | {cheapest} | "
            f"{r['flop_ratio']:.2f}× | {mem} | {r['transposes']} / {r['copies']} |"
        )
    default = result[DEFAULT]
    lines.append("")
    lines.append(
        f"The default (`hvp='auto'`, here `{default['route']}`) is "
        f"{default['to_cheapest_exact']:.3f}× the cheapest exact "
        f"route here, and its time ratio ({default['ratio_median']:.2f}) is "
        f"{default['ratio_median'] / default['flop_ratio']:.2f}× XLA's flop ratio "
        f"({default['flop_ratio']:.2f})."
    )
    return "\n".join(lines)


def main() -> None:
    parser = make_parser(__doc__, rounds=True)
    parser.add_argument(
        "--widths",
        type=int,
        nargs="+",
        default=[128, 512, 1024, 2048],
        help="hidden widths of the 784-W×4-10 MLPs",
    )
    parser.set_defaults(rounds=12, steps=10)
    args = parser.parse_args()
    problems = [mlp_problem(args.width)]
    problems += [wide_mlp_problem(w) for w in args.widths]
    problems.append(cnn_problem())
    output = {"command": command(__file__), "machine": describe(), "problems": {}}
    texts = []
    for problem in problems:
        result = bench_problem(problem, args.rounds, args.steps)
        output["problems"][problem.name] = result
        texts.append(format_results(problem.name, result))
        print(texts[-1], "\n", flush=True)
    header = f"Command: `{output['command']}`  \nMachine: {output['machine']}\n\n"
    write_results(
        args.out,
        f"bench_step_{jax.devices()[0].platform}",
        header + "\n\n".join(texts) + "\n",
        output,
    )


if __name__ == "__main__":
    main()
