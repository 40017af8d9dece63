"""Time per jit-compiled training step: each floodax form against plain optax.

For each model, every configuration's step is compiled and warmed up, then
the configurations run interleaved (A B C … A B C …, the order rotated each
round) for --rounds rounds of --steps steps each. Reported: the median time
per step and, per configuration, the median and interquartile range of its
ratio to plain optax measured in the same round. Memory: XLA's compiled
temporary-buffer size per step (deterministic; on a GPU, the step's device
memory beyond parameters and inputs) relative to plain, and the peak RSS of
a fresh process running only plain, exact or finite-difference steps.

Run:  python benchmarks/bench_step.py [--rounds 15] [--steps 20]
Writes benchmarks/results/bench_step_<platform>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _machine import describe
from _machine import parser as make_parser
from _models import cnn_problem, mlp_problem

import floodax

LR, FLOOD, RATE1, RATE2, STRENGTH = 1e-3, 0.1, 1e-3, 1e-4, 0.01
TARGETS = {
    "flooded": 1.02,
    "flood": 1.02,
    "iflooded": 1.02,
    "alternate": 1.02,
    "penalty_finite_difference": 2.1,
    "penalty_exact": 3.0,
    "grad_of_grad_norm_penalty": None,
}


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

    return {
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
        "alternate": with_grads(
            optax.chain(optax.scale_by_adam(), floodax.alternate(RATE1, RATE2)),
            plain_grads,
        ),
        "penalty_exact": with_grads(
            optax.chain(floodax.add_grad_norm_penalty(STRENGTH), adam), value_fn_grads
        ),
        "penalty_finite_difference": with_grads(
            optax.chain(
                floodax.add_grad_norm_penalty(STRENGTH, method="finite_difference"),
                adam,
            ),
            value_fn_grads,
        ),
        "grad_of_grad_norm_penalty": with_grads(
            adam,
            lambda p, x, y: (
                jax.grad(floodax.grad_norm_penalty(mean_loss, STRENGTH))(p, x, y),
                {},
            ),
        ),
    }


def _temp_bytes(compiled) -> float | None:
    analysis = compiled.memory_analysis()
    return None if analysis is None else float(analysis.temp_size_in_bytes)


def bench_problem(problem, rounds: int, steps: int) -> dict:
    configs = configurations(problem.example_losses)
    names = list(configs)
    compiled, states, temp = {}, {}, {}
    x0, y0 = problem.batches[0]
    for name, (tx, body) in configs.items():
        state = tx.init(problem.params)
        fn = jax.jit(body)
        exe = fn.lower(problem.params, state, x0, y0).compile()
        temp[name] = _temp_bytes(exe)
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
    result = {}
    for name in names:
        t = np.array(times[name])
        ratios = t / plain
        result[name] = {
            "median_step_ms": 1e3 * float(np.median(t)),
            "ratio_median": float(np.median(ratios)),
            "ratio_q25": float(np.percentile(ratios, 25)),
            "ratio_q75": float(np.percentile(ratios, 75)),
            "temp_memory_ratio": (
                None
                if temp[name] is None or not temp["plain"]
                else temp[name] / temp["plain"]
            ),
            "temp_memory_mib": None if temp[name] is None else temp[name] / 2**20,
            "target": TARGETS.get(name),
        }
    return result


def format_results(problem_name: str, result: dict) -> str:
    lines = [
        f"### {problem_name}",
        "",
        "| configuration | median step (ms) | ratio to plain (median [IQR]) | target "
        "| compiled temp memory vs plain |",
        "|---|---|---|---|---|",
    ]
    for name, r in result.items():
        target = r["target"]
        verdict = ""
        if target is not None:
            verdict = f"≤ {target}× " + (
                "met" if r["ratio_median"] <= target else "**missed**"
            )
        mem = (
            "n/a"
            if r["temp_memory_ratio"] is None
            else f"{r['temp_memory_ratio']:.2f}×"
        )
        lines.append(
            f"| {name} | {r['median_step_ms']:.3f} | {r['ratio_median']:.3f} "
            f"[{r['ratio_q25']:.3f}, {r['ratio_q75']:.3f}] | {verdict} | {mem} |"
        )
    return "\n".join(lines)


RSS_CONFIGS = ("plain", "penalty_exact", "penalty_finite_difference")


def _rss_child(problem_index: int, name: str, width: int) -> None:
    """Runs one configuration alone and prints this process's peak RSS (KiB)."""
    problem = mlp_problem(width) if problem_index == 0 else cnn_problem()
    tx, body = configurations(problem.example_losses)[name]
    step = jax.jit(body)
    params, state = problem.params, tx.init(problem.params)
    for i in range(20):
        x, y = problem.batches[i % len(problem.batches)]
        params, state = step(params, state, x, y)
    jax.block_until_ready(params)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss(problem_index: int, width: int) -> dict:
    """Peak RSS of a fresh process per configuration, relative to plain."""
    rss = {}
    for name in RSS_CONFIGS:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--rss-child",
                f"{problem_index}:{name}",
                "--width",
                str(width),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rss[name] = int(out.stdout.strip().splitlines()[-1])
    return {
        n: {"peak_rss_mib": v / 1024, "ratio": v / rss["plain"]} for n, v in rss.items()
    }


def main() -> None:
    parser = make_parser(__doc__, rounds=True)
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        index, name = args.rss_child.split(":")
        _rss_child(int(index), name, args.width)
        return
    problems = [mlp_problem(args.width), cnn_problem()]
    command = "python benchmarks/bench_step.py " + shlex.join(sys.argv[1:])
    output = {"command": command.strip(), "machine": describe(), "problems": {}}
    texts = []
    for index, problem in enumerate(problems):
        result = bench_problem(problem, args.rounds, args.steps)
        rss = peak_rss(index, args.width)
        output["problems"][problem.name] = {"steps": result, "peak_rss": rss}
        texts.append(
            format_results(problem.name, result)
            + "\n\nPeak RSS of a process running only that step: "
            + ", ".join(
                f"{n} {v['peak_rss_mib']:.0f} MiB ({v['ratio']:.2f}×)"
                for n, v in rss.items()
            )
        )
        print(texts[-1], "\n", flush=True)
    os.makedirs(args.out, exist_ok=True)
    platform = jax.devices()[0].platform
    with open(os.path.join(args.out, f"bench_step_{platform}.json"), "w") as f:
        json.dump(output, f, indent=2)
    with open(os.path.join(args.out, f"bench_step_{platform}.md"), "w") as f:
        f.write(f"Command: `{output['command']}`  \nMachine: {output['machine']}\n\n")
        f.write("\n\n".join(texts) + "\n")


if __name__ == "__main__":
    main()
