"""floodax (jit-compiled JAX) against the same step in eager PyTorch.

The paper's MLP (4 × 500, batch norm) on a full batch of Sinusoid2d with
Adam (lr 1e-3): plain training, flooding (PyTorch: the paper's one line,
``loss = (loss - b).abs() + b``) and the gradient-norm penalty (PyTorch:
double backprop with ``torch.autograd.grad(..., create_graph=True)``).
The steps run interleaved, rotated each round; reported is each step's
median time and floodax's time over PyTorch's, per round (median and IQR).

Needs PyTorch (``pip install torch==2.13.0``, a CPU build; never unpinned):
without it the script says so and exits 0.

Run:  python benchmarks/bench_torch.py [--rounds 15] [--steps 20]
Writes benchmarks/results/bench_torch.json.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

import numpy as np
from _machine import describe
from _machine import parser as make_parser

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

FLOOD, STRENGTH, LR = 0.1, 0.01, 1e-3


def torch_steps(x_np, y_np, width: int):
    torch.manual_seed(0)
    layers = []
    d = x_np.shape[1]
    for _ in range(4):
        layers += [
            torch.nn.Linear(d, width, bias=False),
            torch.nn.BatchNorm1d(width),
            torch.nn.ReLU(),
        ]
        d = width
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 2))
    x, y = torch.from_numpy(np.array(x_np)), torch.from_numpy(y_np.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = torch.nn.CrossEntropyLoss()

    def plain():
        opt.zero_grad()
        criterion(model(x), y).backward()
        opt.step()

    def flooding():
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss = (loss - FLOOD).abs() + FLOOD  # the paper's one line
        loss.backward()
        opt.step()

    def penalty():
        opt.zero_grad()
        loss = criterion(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        (loss + STRENGTH * sum((g**2).sum() for g in grads)).backward()
        opt.step()

    return {"plain": plain, "flooding": flooding, "penalty": penalty}


def jax_steps(width: int):
    import jax
    import optax
    from _models import mlp_problem

    import floodax

    problem = mlp_problem(width)
    (x, y) = problem.batches[0]

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

        def sync():
            jax.block_until_ready(state)

        return run, sync

    adam = optax.adam(LR)
    steps = {
        "plain": make(adam, lambda p: (jax.grad(mean_loss)(p), {})),
        "flooding": make(
            optax.chain(floodax.flood(FLOOD), adam),
            lambda p: (lambda lg: (lg[1], {"value": lg[0]}))(
                jax.value_and_grad(mean_loss)(p)
            ),
        ),
        "penalty": make(
            optax.chain(floodax.add_grad_norm_penalty(STRENGTH), adam),
            lambda p: (jax.grad(mean_loss)(p), {"value_fn": mean_loss}),
        ),
        "penalty (double backprop)": make(
            adam,
            lambda p: (jax.grad(floodax.grad_norm_penalty(mean_loss, STRENGTH))(p), {}),
        ),
    }
    return steps, np.asarray(x), np.asarray(y)


def main() -> None:
    parser = make_parser(__doc__, rounds=True)
    args = parser.parse_args()
    if torch is None:
        print("PyTorch is not installed; skipping (pip install torch==2.13.0).")
        return

    jsteps, x, y = jax_steps(args.width)
    tsteps = torch_steps(x, y, args.width)
    runs = {f"floodax {k}": v for k, v in jsteps.items()}
    runs.update({f"torch {k}": (v, lambda: None) for k, v in tsteps.items()})
    for run, sync in runs.values():  # compile and warm up
        for _ in range(3):
            run()
        sync()
    names = list(runs)
    times = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run, sync = runs[name]
            start = time.perf_counter()
            for _ in range(args.steps):
                run()
            sync()
            times[name].append((time.perf_counter() - start) / args.steps)
    pairs = {
        "plain": ("floodax plain", "torch plain"),
        "flooding": ("floodax flooding", "torch flooding"),
        "penalty (exact HVP vs double backprop)": ("floodax penalty", "torch penalty"),
        "penalty (double backprop both)": (
            "floodax penalty (double backprop)",
            "torch penalty",
        ),
    }
    lines = [
        "| step | floodax median (ms) | PyTorch median (ms) | floodax / PyTorch (median [IQR]) |",
        "|---|---|---|---|",
    ]
    result = {}
    for label, (jn, tn) in pairs.items():
        ratio = np.array(times[jn]) / np.array(times[tn])
        result[label] = {
            "floodax_ms": 1e3 * float(np.median(times[jn])),
            "torch_ms": 1e3 * float(np.median(times[tn])),
            "ratio_median": float(np.median(ratio)),
            "ratio_q25": float(np.percentile(ratio, 25)),
            "ratio_q75": float(np.percentile(ratio, 75)),
        }
        r = result[label]
        lines.append(
            f"| {label} | {r['floodax_ms']:.2f} | {r['torch_ms']:.2f} | {r['ratio_median']:.3f} "
            f"[{r['ratio_q25']:.3f}, {r['ratio_q75']:.3f}] |"
        )
    command = "python benchmarks/bench_torch.py " + shlex.join(sys.argv[1:])
    machine = (
        f"{describe()}; torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    text = (
        f"Command: `{command.strip()}`  \nMachine: {machine}\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_torch.json"), "w") as f:
        json.dump(
            {"command": command.strip(), "machine": machine, "results": result},
            f,
            indent=2,
        )
    with open(os.path.join(args.out, "bench_torch.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
