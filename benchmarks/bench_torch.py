"""floodax (jit-compiled JAX) against eager PyTorch and torch.compile.

The paper's MLP (4 × 500, batch norm) on the full batch of Sinusoid2d (the
authors' 100 training points) with Adam (lr 1e-3): plain training, flooding
(PyTorch: the paper's one line, ``loss = (loss - b).abs() + b``) and the
gradient-norm penalty (PyTorch: double backprop with
``torch.autograd.grad(..., create_graph=True)``; torch.compile does not
support double backward, so that row has no compiled column).

Each framework runs in **its own process**, with the same number of threads
(PyTorch: ``torch.set_num_threads(cores)``; XLA's CPU client uses every
core), the processes alternating over ``--processes`` repetitions; within a
process the steps run interleaved for ``--rounds`` rounds of ``--steps``
steps. A ratio compares the medians of the two processes of the same
repetition; reported are the median and IQR over repetitions. The old
benchmark ran both frameworks in one process: ``--same-process`` measures
that arrangement too, to show what it did to the ratio.

Needs PyTorch (``pip install torch==2.13.0``, a CPU build; never unpinned):
without it the script says so and exits 0.

Run:  python benchmarks/bench_torch.py [--processes 5] [--rounds 10] [--steps 20]
Writes benchmarks/results/bench_torch.{md,json}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from _machine import command, describe, write_results
from _machine import parser as make_parser

FLOOD, STRENGTH, LR = 0.1, 0.01, 1e-3
KINDS = ("plain", "flooding", "penalty")
WORKERS = ("floodax", "torch eager", "torch.compile")


def _data():
    from floodax.experiments import make_synthetic

    data = make_synthetic("sinusoid2d", seed=0, label_noise=0.1)
    return np.asarray(data.x_train), np.asarray(data.y_train)


def torch_steps(width: int, compiled: bool) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    x_np, y_np = _data()
    layers, d = [], x_np.shape[1]
    for _ in range(4):
        layers += [
            torch.nn.Linear(d, width, bias=False),
            torch.nn.BatchNorm1d(width),
            torch.nn.ReLU(),
        ]
        d = width
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 2))
    forward = torch.compile(model) if compiled else model
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = torch.nn.CrossEntropyLoss()

    def plain():
        opt.zero_grad()
        criterion(forward(x), y).backward()
        opt.step()

    def flooding():
        opt.zero_grad()
        loss = criterion(forward(x), y)
        loss = (loss - FLOOD).abs() + FLOOD  # the paper's one line
        loss.backward()
        opt.step()

    def penalty():
        opt.zero_grad()
        loss = criterion(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        (loss + STRENGTH * sum((g**2).sum() for g in grads)).backward()
        opt.step()

    steps = {"plain": (plain, lambda: None), "flooding": (flooding, lambda: None)}
    if not compiled:
        steps["penalty"] = (penalty, lambda: None)
    return steps


def jax_steps(width: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from _models import mlp_problem

    import floodax

    problem = mlp_problem(width)
    x, y = (jnp.asarray(a) for a in _data())

    def mean_loss(p):
        return problem.example_losses(p, x, y).mean()

    def make(tx, grads_fn):
        state = [problem.params, tx.init(problem.params)]

        @jax.jit
        def step(params, opt_state):
            grads, extra = grads_fn(params)
            updates, opt_state = tx.update(grads, opt_state, params, **extra)
            return optax.apply_updates(params, updates), opt_state

        def run():
            state[:] = step(*state)

        return run, lambda: jax.block_until_ready(state)

    def value_and_grads(p):
        loss, grads = jax.value_and_grad(mean_loss)(p)
        return grads, {"value": loss}

    adam = optax.adam(LR)
    return {
        "plain": make(adam, lambda p: (jax.grad(mean_loss)(p), {})),
        "flooding": make(optax.chain(floodax.flood(FLOOD), adam), value_and_grads),
        # Double backprop, as PyTorch does it.
        "penalty": make(
            adam,
            lambda p: (jax.grad(floodax.grad_norm_penalty(mean_loss, STRENGTH))(p), {}),
        ),
    }


def time_steps(steps: dict, rounds: int, n: int) -> dict:
    """Interleaved rounds (rotated), after compiling and warming up."""
    for run, sync in steps.values():
        for _ in range(5):
            run()
        sync()
    names = list(steps)
    times = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run, sync = steps[name]
            start = time.perf_counter()
            for _ in range(n):
                run()
            sync()
            times[name].append((time.perf_counter() - start) / n)
    return times


def worker(kind: str, args) -> dict:
    if kind == "floodax":
        return time_steps(jax_steps(args.width), args.rounds, args.steps)
    if kind == "same process":
        both = {f"floodax {k}": v for k, v in jax_steps(args.width).items()}
        both.update(
            {f"torch {k}": v for k, v in torch_steps(args.width, False).items()}
        )
        return time_steps(both, args.rounds, args.steps)
    return time_steps(
        torch_steps(args.width, kind == "torch.compile"), args.rounds, args.steps
    )


def spawn(kind: str, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--rounds",
        str(args.rounds),
        "--steps",
        str(args.steps),
        "--width",
        str(args.width),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(ratios: list[float]) -> str:
    r = np.asarray(ratios)
    return (
        f"{np.median(r):.3f} [{np.percentile(r, 25):.3f}, {np.percentile(r, 75):.3f}]"
    )


def main() -> None:
    parser = make_parser(__doc__, rounds=True)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--worker", help=__import__("argparse").SUPPRESS)
    parser.set_defaults(rounds=10)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed; skipping (pip install torch==2.13.0).")
        return
    medians = {w: [] for w in WORKERS}
    for repetition in range(args.processes):
        order = WORKERS[repetition % 3 :] + WORKERS[: repetition % 3]
        for kind in order:
            times = spawn(kind, args)
            medians[kind].append({k: float(np.median(v)) for k, v in times.items()})
        print(f"repetition {repetition + 1} of {args.processes} done", flush=True)
    same = [spawn("same process", args) for _ in range(2)]
    lines = [
        "| step | floodax (ms) | eager PyTorch (ms) | torch.compile (ms) | floodax / "
        "eager (median [IQR]) | floodax / compile | floodax / eager, both in one "
        "process (the old method) |",
        "|---|---|---|---|---|---|---|",
    ]
    results = {}
    for kind in KINDS:
        f = [m[kind] for m in medians["floodax"]]
        e = [m[kind] for m in medians["torch eager"]]
        c = [m[kind] for m in medians["torch.compile"] if kind in m]
        old = [
            np.median(s[f"floodax {kind}"]) / np.median(s[f"torch {kind}"])
            for s in same
        ]
        row = {
            "floodax_ms": 1e3 * float(np.median(f)),
            "eager_ms": 1e3 * float(np.median(e)),
            "compile_ms": 1e3 * float(np.median(c)) if c else None,
            "vs_eager": [a / b for a, b in zip(f, e, strict=True)],
            "vs_compile": [a / b for a, b in zip(f, c, strict=True)] if c else None,
            "same_process_vs_eager": [float(v) for v in old],
        }
        results[kind] = row
        compile_ms = f"{row['compile_ms']:.2f}" if c else "not supported"
        vs_compile = _summary(row["vs_compile"]) if c else "—"
        lines.append(
            f"| {kind} | {row['floodax_ms']:.2f} | {row['eager_ms']:.2f} | "
            f"{compile_ms} | {_summary(row['vs_eager'])} | {vs_compile} | "
            f"{np.mean(old):.3f} |"
        )
    command_line = command(__file__)
    machine = f"{describe()}; torch {torch.__version__} ({os.cpu_count()} threads)"
    text = (
        f"Command: `{command_line}`  \nMachine: {machine}  \n"
        f"{args.processes} repetitions of one process per framework, "
        f"{args.rounds} rounds × {args.steps} steps each.\n\n" + "\n".join(lines) + "\n"
    )
    write_results(
        args.out,
        "bench_torch",
        text,
        {"command": command_line, "machine": machine, "results": results},
    )


if __name__ == "__main__":
    main()
