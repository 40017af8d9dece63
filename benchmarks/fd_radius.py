"""What the finite-difference penalty computes: its error against the exact
Hessian-vector product over a range of radii, on a smooth network and on the
paper's ReLU network, in float32 and float64.

``add_grad_norm_penalty(method="finite_difference")`` uses
``H·ĝ ≈ (∇L(θ + r·ĝ) − ∇L(θ))/r`` with ``ĝ = g/‖g‖``. On a smooth loss the
error is ``O(r)`` plus rounding ``O(eps/r)``, smallest near ``r = sqrt(eps)``.
A ReLU network's loss is piecewise quadratic: every unit whose
pre-activation changes sign between ``θ`` and ``θ + r·ĝ`` adds a jump of the
gradient, and the difference measures the average curvature over the
segment, not the Hessian at ``θ``. This script measures the relative error
``‖FD − H·ĝ‖/‖H·ĝ‖`` and counts those sign changes.

Run:  python benchmarks/fd_radius.py
Writes benchmarks/results/fd_radius.{md,json}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _machine import command, describe, write_results
from _machine import parser as make_parser
from flax import nnx

from floodax._penalty import hessian_vector_product
from floodax.experiments import MLP, make_synthetic

RADII = [10.0**e for e in range(-9, 0)]


def _relu_problem(width: int, dtype):
    """The paper's 4 × width ReLU MLP with batch norm (training mode), on
    Sinusoid2d's 100 training points, as a pure loss of its parameters."""
    data = make_synthetic("sinusoid2d", seed=0, label_noise=0.1)
    model = MLP(2, 2, width=width, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    rest = jax.tree.map(lambda a: jnp.asarray(a, dtype), rest)
    x, y = jnp.asarray(data.x_train, dtype), jnp.asarray(data.y_train)

    def loss(p):
        logits = nnx.merge(graphdef, p, jax.tree.map(jnp.copy, rest))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def preactivations(p):
        m = nnx.merge(graphdef, p, jax.tree.map(jnp.copy, rest))
        h, out = x, []
        for linear, norm in zip(m.linears, m.norms, strict=True):
            h = norm(linear(h))
            out.append(h)
            h = jax.nn.relu(h)
        return out

    return params, loss, preactivations


def _smooth_problem(width: int, dtype):
    """A 4 × width tanh MLP without batch norm on the same data: smooth."""
    data = make_synthetic("sinusoid2d", seed=0, label_noise=0.1)
    keys = jax.random.split(jax.random.key(0), 5)
    sizes = [2, width, width, width, width, 2]
    params = [
        jax.random.normal(k, (a, b), dtype) / np.sqrt(a)
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]
    x, y = jnp.asarray(data.x_train, dtype), jnp.asarray(data.y_train)

    def loss(p):
        h = x
        for w in p[:-1]:
            h = jnp.tanh(h @ w)
        return optax.softmax_cross_entropy_with_integer_labels(h @ p[-1], y).mean()

    return params, loss, None


def measure(problem, width: int, dtype) -> dict:
    params, loss, preactivations = problem(width, dtype)
    g = jax.grad(loss)(params)
    norm = jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(g)))
    direction = jax.tree.map(lambda v: v / norm, g)
    exact = hessian_vector_product(loss, params, direction)
    exact_norm = float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(exact))))
    out = {"errors": [], "sign_changes": []}
    grad = jax.jit(jax.grad(loss))
    for r in RADII:
        shifted = jax.tree.map(
            lambda p, d, r=r: p + jnp.asarray(r, dtype) * d, params, direction
        )
        fd = jax.tree.map(
            lambda a, b, r=r: (a - b) / jnp.asarray(r, dtype), grad(shifted), g
        )
        diff = sum(
            jnp.sum((a - b) ** 2)
            for a, b in zip(jax.tree.leaves(fd), jax.tree.leaves(exact), strict=True)
        )
        out["errors"].append(float(jnp.sqrt(diff)) / exact_norm)
        if preactivations is not None:
            before = preactivations(params)
            after = preactivations(shifted)
            out["sign_changes"].append(
                int(
                    sum(
                        jnp.sum((a > 0) != (b > 0))
                        for a, b in zip(before, after, strict=True)
                    )
                )
            )
    return out


def main() -> None:
    parser = make_parser(__doc__)
    args = parser.parse_args()
    results = {}
    for name, problem in (
        ("smooth (tanh)", _smooth_problem),
        ("ReLU + BN", _relu_problem),
    ):
        for dtype_name, x64 in (("float32", False), ("float64", True)):
            with jax.enable_x64(x64):
                dtype = jnp.float64 if x64 else jnp.float32
                results[f"{name}, {dtype_name}"] = measure(problem, args.width, dtype)
    units = 100 * 4 * args.width
    columns = list(results)
    lines = [
        "| radius r | "
        + " | ".join(f"{c}: relative error" for c in columns)
        + " | ReLU units changing sign (float64, of "
        + f"{units:,}) |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for i, r in enumerate(RADII):
        errors = " | ".join(f"{results[c]['errors'][i]:.1e}" for c in columns)
        changes = results["ReLU + BN, float64"]["sign_changes"][i]
        lines.append(f"| {r:.0e} | {errors} | {changes} |")
    command_line = command(__file__)
    machine = describe()
    md = "\n".join(
        [
            "# The finite difference against the exact Hessian-vector product",
            "",
            f"Command: `{command_line}`  ",
            f"Machine: {machine}.  ",
            f"Models: 4×{args.width} MLPs on Sinusoid2d's 100 training points (label "
            "noise 0.1), full batch: tanh without batch norm (smooth), and the paper's "
            "ReLU network with batch norm in training mode. Relative error "
            "‖(∇L(θ + r·ĝ) − ∇L(θ))/r − H·ĝ‖ / ‖H·ĝ‖ with ĝ = g/‖g‖; the last column "
            "counts pre-activations (units × examples) whose sign differs between θ "
            "and θ + r·ĝ.",
            "",
            *lines,
            "",
        ]
    )
    write_results(
        args.out,
        "fd_radius",
        md,
        {
            "command": command_line,
            "machine": machine,
            "radii": RADII,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
