"""Studies of flooding's mechanism on the authors' protocol.

Four questions the papers raise, each a function that trains, measures,
writes a PNG and returns its numbers (``floodax demo --study NAME`` runs a
short version; ``benchmarks/study_*.py`` the full one over five seeds):

* :func:`flatness`: do flooded models sit where the Hessian's top eigenvalue
  and the gradient are smaller and the loss landscape is flatter (Ishida et
  al., Section 5)?
* :func:`noise_levels`: does the best flood level rise with the label noise,
  and how does it compare with the Bayes risk of the noisy labels?
* :func:`derivation_runs`: over whole runs, how long do alternating ε1/ε2
  steps stay close to one step on the equivalent penalty, and do they
  generalise like it?
* :func:`second_descent`: when does a flooded model's test loss descend a
  second time?
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import floodax
from floodax._progress import LONG_RUN_SECONDS, Progress, progress_bar
from floodax.experiments.datasets import Dataset, load_dataset
from floodax.experiments.models import MLP
from floodax.experiments.training import (
    TrainConfig,
    sweep_flood_levels,
    train,
)

STUDIES = ("flatness", "noise", "derivation", "second_descent")


def _training_loss(model: nnx.Module, data: Dataset):
    """The full-batch training loss as a pure function of the parameters:
    batch norm in training mode (batch statistics), as the optimizer sees it,
    on fresh copies of the running statistics, which are discarded."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    return functools.partial(_loss_of, graphdef, rest, x, y), params


def _loss_of(graphdef: Any, rest: Any, x: jax.Array, y: jax.Array, p: Any):
    logits = nnx.merge(graphdef, p, jax.tree.map(jnp.copy, rest))(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.partial(jax.jit, static_argnames=("graphdef", "iterations"))
def _measure(
    graphdef: Any, params: Any, rest: Any, x: jax.Array, y: jax.Array, iterations: int
):
    """Sharpness, gradient norm and loss at ``params``, compiled once per
    model structure (every probe of every run and seed reuses it)."""
    loss = functools.partial(_loss_of, graphdef, rest, x, y)
    top = floodax.hessian_eigenvalues(loss, params, num_iterations=iterations)
    return top.eigenvalues[0], floodax.grad_norm(loss, params), loss(params)


def _sharpness_probe(data: Dataset, iterations: int):
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

    def probe(model: nnx.Module) -> dict:
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        top, norm, value = _measure(graphdef, params, rest, x, y, iterations)
        return {
            "top_eigenvalue": float(top),
            "grad_norm": float(norm),
            "train_loss": float(value),
        }

    return probe


def _model(data: Dataset, width: int, seed: int) -> MLP:
    return MLP(
        data.x_train.shape[1], data.num_classes, width=width, rngs=nnx.Rngs(seed)
    )


def _finish(
    fig: Any,
    axes: Any,
    title: str,
    path: str | None,
    *,
    fontsize: int = 8,
    which: str = "major",
) -> None:
    """Grid and legend on every axis, the title, then save (if ``path``) and
    close the figure."""
    import matplotlib.pyplot as plt

    for ax in np.ravel(axes):
        ax.grid(alpha=0.3, which=which)
        ax.legend(fontsize=fontsize)
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_std(values: Sequence[float]) -> str:
    return f"{np.mean(values):.3g} ± {np.std(values):.2g}"


# ---------------------------------------------------------------- flatness


@dataclasses.dataclass(frozen=True)
class FlatnessConfig:
    """Settings of :func:`flatness` (the defaults are the full study). The
    flood level 0.28 is the median chosen on Sinusoid2d with SGD over five
    seeds (benchmarks/results/paper_synthetic.md), and one of the levels the
    authors' demo tries."""

    seeds: int = 5
    epochs: int = 200
    dataset: str = "sinusoid2d"
    label_noise: float = 0.1
    flood_level: float = 0.28
    width: int = 500
    probe_every: int = 10
    lanczos_iterations: int = 20
    landscape_points: int = 41
    landscape_radius: float = 1.0


def flatness(
    config: FlatnessConfig = FlatnessConfig(),
    *,
    png: str | None = None,
    progress: bool | Progress = True,
) -> dict:
    """Sharpness, gradient norm and 1-D landscape, with and without flooding.

    For each seed, the paper's MLP trains full-batch with SGD (lr 0.01,
    momentum 0.9) at ``b = 0`` and at ``config.flood_level``; every
    ``probe_every`` epochs :func:`floodax.hessian_eigenvalues` (Lanczos)
    and :func:`floodax.grad_norm` measure the training loss (batch norm in
    training mode, as the optimizer sees it) at the current parameters. At
    the end :func:`floodax.loss_landscape` draws the loss along one
    filter-normalised direction, the same for both models of a seed.

    Returns:
      ``{"runs": [...], "summary": {...}}``: per seed and run, the probes
      along training, the final landscape and the clean test accuracy.
    """
    runs = []
    total = config.seeds * 2 * config.epochs
    with progress_bar(
        progress, total, "flatness: epochs", announce=LONG_RUN_SECONDS
    ) as bar:
        for seed in range(config.seeds):
            data = load_dataset(
                config.dataset, seed=seed, label_noise=config.label_noise
            )
            model = _model(data, config.width, seed)
            for b in (0.0, config.flood_level):
                result = train(
                    model,
                    data,
                    TrainConfig(epochs=config.epochs, seed=seed),
                    flood_level=b,
                    test_every=config.epochs,
                    probe=_sharpness_probe(data, config.lanczos_iterations),
                    probe_every=config.probe_every,
                    progress=bar,
                )
                trained = nnx.clone(result.model)
                trained.train()
                loss, params = _training_loss(trained, data)
                land = floodax.loss_landscape(
                    loss,
                    params,
                    num_points=config.landscape_points,
                    radius=config.landscape_radius,
                    key=jax.random.key(seed),
                )
                runs.append(
                    {
                        "seed": seed,
                        "flood_level": b,
                        "epochs": [e for e, _ in result.probes],
                        "probes": [p for _, p in result.probes],
                        "landscape": np.asarray(land.losses).tolist(),
                        "alphas": np.asarray(land.alphas).tolist(),
                        "test_accuracy": result.test_accuracy,
                    }
                )
    summary = {}
    for b in (0.0, config.flood_level):
        sel = [r for r in runs if r["flood_level"] == b]
        summary[f"b={b:g}"] = {
            key: [r["probes"][-1][key] for r in sel]
            for key in ("top_eigenvalue", "grad_norm", "train_loss")
        } | {"test_accuracy": [r["test_accuracy"] for r in sel]}
    out = {"config": dataclasses.asdict(config), "runs": runs, "summary": summary}
    _plot_flatness(out, png)
    return out


def _plot_flatness(out: dict, png: str | None) -> None:
    plt = _pyplot()
    config = out["config"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for b, colour in ((0.0, "tab:blue"), (config["flood_level"], "tab:red")):
        sel = [r for r in out["runs"] if r["flood_level"] == b]
        label = "no flooding" if b == 0 else f"flooding, b = {b:g}"
        epochs = np.asarray(sel[0]["epochs"])
        for ax, key in zip(axes[:2], ("top_eigenvalue", "grad_norm"), strict=True):
            values = np.array([[p[key] for p in r["probes"]] for r in sel])
            mean = values.mean(0)
            ax.plot(epochs, mean, color=colour, label=f"{label} (mean of {len(sel)})")
            ax.fill_between(
                epochs, values.min(0), values.max(0), color=colour, alpha=0.15
            )
        landscapes = np.array([r["landscape"] for r in sel])
        axes[2].plot(sel[0]["alphas"], landscapes.mean(0), color=colour, label=label)
    axes[0].set_title("Top Hessian eigenvalue of the training loss")
    axes[1].set_title("Gradient norm of the training loss")
    axes[2].set_title("Training loss along a filter-normalised direction")
    for ax in axes[:2]:
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
    axes[2].set_xlabel("α (θ + α·d)")
    axes[2].set_ylabel("cross-entropy")
    _finish(
        fig,
        axes,
        f"Flatness: {config['dataset']}, label noise {config['label_noise']:g}, "
        f"SGD, {config['epochs']} epochs (band: min to max over seeds)",
        png,
    )


def flatness_table(out: dict) -> str:
    """Markdown: final sharpness, gradient norm and accuracy, mean ± std."""
    rows = [
        "| run | top Hessian eigenvalue | gradient norm | training loss | clean "
        "test accuracy |",
        "|---|---|---|---|---|",
    ]
    for name, values in out["summary"].items():
        rows.append(
            f"| {name} | {_mean_std(values['top_eigenvalue'])} | "
            f"{_mean_std(values['grad_norm'])} | {_mean_std(values['train_loss'])} | "
            f"{_mean_std(values['test_accuracy'])} |"
        )
    return "\n".join(rows)


# ------------------------------------------------------------ label noise


def noisy_bayes_risk(
    dataset: Dataset, label_noise: float, mean_distance: float = 1.0
) -> float:
    """The cross-entropy of the Bayes-optimal predictor of the *noisy* labels.

    Symmetric noise ``η`` turns a clean posterior ``p`` into
    ``η + (1 − 2η)·p`` (two classes); the Bayes risk is the mean entropy of
    that posterior over the test inputs. For Sinusoid2d and Spiral the clean
    labels are a deterministic function of ``x`` (``p ∈ {0, 1}``), so it is
    the binary entropy ``H(η)``; for Two Gaussians ``p`` is the logistic
    posterior of the two unit-covariance classes around 0 and
    ``mean_distance·(1, …, 1)`` (the dataset's default distance is 1).
    """
    eta = float(label_noise)
    if dataset.name == "gaussians":
        x = dataset.x_test.astype(np.float64)
        logit = mean_distance * x.sum(1) - mean_distance**2 * x.shape[1] / 2
        p = 1 / (1 + np.exp(-logit))
    else:
        p = (dataset.y_test == 1).astype(np.float64)
    q = eta + (1 - 2 * eta) * p
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(
            np.where(q > 0, q * np.log(q), 0)
            + np.where(q < 1, (1 - q) * np.log(1 - q), 0)
        )
    return float(entropy.mean())


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """Settings of :func:`noise_levels`."""

    seeds: int = 5
    epochs: int = 200
    datasets: Sequence[str] = ("sinusoid2d", "gaussians")
    noises: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4)
    grid: Sequence[float] = tuple(round(0.04 * i, 2) for i in range(21))
    width: int = 500


def noise_levels(
    config: NoiseConfig = NoiseConfig(),
    *,
    png: str | None = None,
    progress: bool | Progress = True,
) -> dict:
    """The chosen flood level and its gain at each label-noise rate.

    For each dataset, noise rate and seed, a sweep over ``config.grid``
    (``b = 0`` is the baseline) on the authors' protocol, ``b`` chosen on
    the clean validation accuracy; beside it, the Bayes risk of the noisy
    labels (:func:`noisy_bayes_risk`), the loss a perfect model of the noisy
    labels would have.
    """
    rows = []
    jobs = [
        (d, n, s)
        for d in config.datasets
        for n in config.noises
        for s in range(config.seeds)
    ]
    total = len(jobs) * len(config.grid) * config.epochs
    with progress_bar(
        progress, total, "noise: epochs", announce=LONG_RUN_SECONDS
    ) as bar:
        for dataset, noise, seed in jobs:
            data = load_dataset(dataset, seed=seed, label_noise=noise)
            sweep = sweep_flood_levels(
                _model(data, config.width, seed),
                data,
                TrainConfig(epochs=config.epochs, seed=seed),
                config.grid,
                progress=bar,
            )
            rows.append(
                {
                    "dataset": dataset,
                    "noise": noise,
                    "seed": seed,
                    "chosen": sweep.best_flood_level,
                    "baseline_test_accuracy": float(sweep.test_accuracy[0]),
                    "flooding_test_accuracy": float(
                        sweep.test_accuracy[sweep.best_index]
                    ),
                    "bayes_risk": noisy_bayes_risk(data, noise),
                }
            )
    out = {"config": dataclasses.asdict(config), "rows": rows}
    _plot_noise(out, png)
    return out


def _noise_groups(out: dict):
    for dataset in out["config"]["datasets"]:
        for noise in out["config"]["noises"]:
            sel = [
                r
                for r in out["rows"]
                if r["dataset"] == dataset and r["noise"] == noise
            ]
            if sel:
                yield dataset, noise, sel


def _plot_noise(out: dict, png: str | None) -> None:
    plt = _pyplot()
    fig, (ax_b, ax_gain) = plt.subplots(1, 2, figsize=(11, 4.3))
    colours = dict(
        zip(
            out["config"]["datasets"],
            ("tab:blue", "tab:orange", "tab:green"),
            strict=False,
        )
    )
    for dataset in out["config"]["datasets"]:
        groups = [(n, sel) for d, n, sel in _noise_groups(out) if d == dataset]
        noises = np.array([n for n, _ in groups])
        chosen = [np.array([r["chosen"] for r in sel]) for _, sel in groups]
        gains = [
            100
            * np.array(
                [r["flooding_test_accuracy"] - r["baseline_test_accuracy"] for r in sel]
            )
            for _, sel in groups
        ]
        risk = [np.mean([r["bayes_risk"] for r in sel]) for _, sel in groups]
        c = colours[dataset]
        ax_b.errorbar(
            noises,
            [v.mean() for v in chosen],
            yerr=[v.std() for v in chosen],
            color=c,
            marker="o",
            capsize=3,
            label=f"chosen b, {dataset}",
        )
        ax_b.plot(
            noises,
            risk,
            color=c,
            linestyle="--",
            label=f"Bayes risk of the noisy labels, {dataset}",
        )
        ax_gain.errorbar(
            noises,
            [v.mean() for v in gains],
            yerr=[v.std() for v in gains],
            color=c,
            marker="o",
            capsize=3,
            label=dataset,
        )
    ax_b.set_xlabel("label noise")
    ax_b.set_ylabel("flood level / cross-entropy")
    ax_b.set_title("Chosen flood level against the noisy Bayes risk")
    ax_gain.axhline(0, color="grey", linewidth=0.8)
    ax_gain.set_xlabel("label noise")
    ax_gain.set_ylabel("flooding − baseline, clean test accuracy (points)")
    ax_gain.set_title("Gain from flooding")
    _finish(
        fig,
        (ax_b, ax_gain),
        f"Flood level vs label noise (mean ± std over "
        f"{out['config']['seeds']} seeds; b chosen on clean validation)",
        png,
    )


def noise_table(out: dict) -> str:
    rows = [
        "| dataset | label noise | chosen b (per seed) | chosen b, mean | Bayes risk "
        "of the noisy labels | baseline | flooding | gain (points) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, noise, sel in _noise_groups(out):
        base = [100 * r["baseline_test_accuracy"] for r in sel]
        flood = [100 * r["flooding_test_accuracy"] for r in sel]
        gain = np.subtract(flood, base)
        chosen = ", ".join(format(r["chosen"], "g") for r in sel)
        rows.append(
            f"| {dataset} | {noise:g} | {chosen} | "
            f"{np.mean([r['chosen'] for r in sel]):.2f} | "
            f"{np.mean([r['bayes_risk'] for r in sel]):.3f} | {_mean_std(base)} | "
            f"{_mean_std(flood)} | {gain.mean():+.2f} ± {gain.std():.2f} |"
        )
    return "\n".join(rows)


# ------------------------------------------------------- the derivation


@dataclasses.dataclass(frozen=True)
class DerivationConfig:
    """Settings of :func:`derivation_runs`."""

    seeds: int = 5
    pairs: int = 2000
    rates: Sequence[tuple[float, float]] = ((0.01, 0.005), (0.05, 0.025), (0.2, 0.1))
    models: Sequence[str] = ("paper", "smooth")
    dataset: str = "sinusoid2d"
    label_noise: float = 0.1
    width: int = 500
    record_every: int = 20


def _flat_params(model: nnx.Module) -> jax.Array:
    return jax.flatten_util.ravel_pytree(nnx.state(model, nnx.Param))[0]


def _full_batch_step(x: jax.Array, y: jax.Array):
    """A jitted step on the full batch; with ``value_fn=True`` the optimizer
    also gets the loss of the parameters (for the penalty's Hessian-vector
    products; batch statistics on copies, which are discarded)."""

    @nnx.jit(static_argnums=2)
    def step(model: nnx.Module, optimizer: nnx.Optimizer, value_fn: bool) -> None:
        def loss(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        extra = {}
        if value_fn:
            graphdef, _, rest = nnx.split(model, nnx.Param, ...)

            def of_params(p):
                m = nnx.merge(graphdef, p, jax.tree.map(jnp.copy, rest))
                return loss(m)

            extra = {"value_fn": of_params}
        optimizer.update(model, nnx.grad(loss)(model), **extra)

    return step


def _derivation_run(
    config: DerivationConfig, kind: str, seed: int, rates: tuple, bar: Progress
) -> dict:
    """One run of :func:`derivation_runs`, a unit on ``bar`` per pair."""
    e1, e2 = rates
    data = load_dataset(config.dataset, seed=seed, label_noise=config.label_noise)
    start = MLP(
        data.x_train.shape[1],
        data.num_classes,
        width=config.width,
        batch_norm="pytorch" if kind == "paper" else "none",
        activation="relu" if kind == "paper" else "tanh",
        rngs=nnx.Rngs(seed),
    )
    lr, strength = floodax.equivalent_penalty(e1, e2)
    txs = {
        "alternating": floodax.alternate(e1, e2),
        "penalty": optax.chain(floodax.add_grad_norm_penalty(strength), optax.sgd(lr)),
        "gradient descent": optax.sgd(lr),
    }
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    step = _full_batch_step(x, y)
    models, optimizers = {}, {}
    for name, tx in txs.items():
        models[name] = nnx.clone(start)
        models[name].train()
        optimizers[name] = nnx.Optimizer(models[name], tx, wrt=nnx.Param)
    origin = _flat_params(start)
    record = {"pair": [], "to_penalty": [], "to_gradient_descent": [], "moved": []}
    for pair in range(1, config.pairs + 1):
        for _ in range(2):  # descent, then ascent, across calls
            step(models["alternating"], optimizers["alternating"], False)
        step(models["penalty"], optimizers["penalty"], True)
        step(models["gradient descent"], optimizers["gradient descent"], False)
        if pair % config.record_every == 0 or pair == 1:
            a = _flat_params(models["alternating"])
            record["pair"].append(pair)
            record["moved"].append(float(jnp.linalg.norm(a - origin)))
            record["to_penalty"].append(
                float(jnp.linalg.norm(a - _flat_params(models["penalty"])))
            )
            record["to_gradient_descent"].append(
                float(jnp.linalg.norm(a - _flat_params(models["gradient descent"])))
            )
        bar.update()
    accuracy = {}
    for name, model in models.items():
        model.eval()
        logits = model(jnp.asarray(data.x_test))
        accuracy[name] = float(jnp.mean(jnp.argmax(logits, -1) == data.y_test))
    return {
        "model": kind,
        "seed": seed,
        "rates": [e1, e2],
        "strength": strength,
        "record": record,
        "test_accuracy": accuracy,
    }


def derivation_runs(
    config: DerivationConfig = DerivationConfig(),
    *,
    png: str | None = None,
    progress: bool | Progress = True,
) -> dict:
    """Alternating steps against the equivalent penalty over whole runs.

    From the same start on the same full batch, three runs in lockstep: pairs
    of alternating steps (descent ``ε1``, then ascent ``ε2``, with
    :func:`floodax.alternate`), single steps of rate ``ε1 − ε2`` on
    ``L + λ‖∇L‖²`` with ``λ`` from :func:`floodax.equivalent_penalty` (exact
    Hessian-vector products), and plain gradient descent at ``ε1 − ε2``.
    After every ``record_every`` pairs, the parameter distance of the
    alternating run to each of the others, relative to how far it has moved
    from the start; at the end, each run's clean test accuracy.

    Two networks: ``"paper"``, the authors' ReLU MLP with batch norm, and
    ``"smooth"``, the same widths with tanh and no batch norm, on which the
    Taylor expansion behind the derivation holds (a ReLU network's steps
    cross kinks of the loss).
    """
    jobs = [
        (m, s, r)
        for m in config.models
        for s in range(config.seeds)
        for r in config.rates
    ]
    total = len(jobs) * config.pairs
    with progress_bar(
        progress, total, "derivation: pairs of steps", announce=LONG_RUN_SECONDS
    ) as bar:
        runs = [_derivation_run(config, *job, bar) for job in jobs]
    out = {"config": dataclasses.asdict(config), "runs": runs}
    _plot_derivation(out, png)
    return out


_MODEL_NAMES = {
    "paper": "the paper's ReLU MLP with batch norm",
    "smooth": "the same widths, tanh, no batch norm",
}


def _plot_derivation(out: dict, png: str | None) -> None:
    plt = _pyplot()
    models = out["config"]["models"]
    fig, axes = plt.subplots(
        1, len(models), figsize=(7.5 * len(models), 4.6), squeeze=False, sharey=True
    )
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for ax, kind in zip(axes[0], models, strict=True):
        for (e1, e2), c in zip(out["config"]["rates"], colours, strict=False):
            sel = [
                r for r in out["runs"] if r["rates"] == [e1, e2] and r["model"] == kind
            ]
            pairs = np.asarray(sel[0]["record"]["pair"])
            moved = np.array([r["record"]["moved"] for r in sel])
            pen = np.array([r["record"]["to_penalty"] for r in sel]) / moved
            gd = np.array([r["record"]["to_gradient_descent"] for r in sel]) / moved
            ax.loglog(
                pairs,
                pen.mean(0),
                color=c,
                label=f"ε1 = {e1:g}, ε2 = {e2:g}: to the penalised run",
            )
            ax.loglog(
                pairs,
                gd.mean(0),
                color=c,
                linestyle="--",
                label="  … to gradient descent at ε1 − ε2",
            )
        ax.set_xlabel("pairs of steps")
        ax.set_title(_MODEL_NAMES.get(kind, kind))
    axes[0][0].set_ylabel("‖θ_alternating − θ_other‖ / ‖θ_alternating − θ₀‖")
    _finish(
        fig,
        axes,
        "Alternating steps vs the equivalent penalty over whole runs "
        f"(mean of {out['config']['seeds']} seeds)",
        png,
        fontsize=7,
        which="both",
    )


def derivation_table(out: dict) -> str:
    rows = [
        "| network | ε1, ε2 | λ | relative distance to the penalised run: after 1 "
        "pair / at the end | to gradient descent: after 1 pair / at the end | test "
        "accuracy: alternating | penalty | gradient descent |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, (e1, e2) in [
        (m, r) for m in out["config"]["models"] for r in out["config"]["rates"]
    ]:
        sel = [r for r in out["runs"] if r["rates"] == [e1, e2] and r["model"] == kind]

        def ratio(key, index, sel=sel):
            return [r["record"][key][index] / r["record"]["moved"][index] for r in sel]

        acc = {
            k: [100 * r["test_accuracy"][k] for r in sel]
            for k in ("alternating", "penalty", "gradient descent")
        }
        rows.append(
            f"| {kind} | {e1:g}, {e2:g} | {sel[0]['strength']:.3g} | "
            f"{_mean_std(ratio('to_penalty', 0))} / "
            f"{_mean_std(ratio('to_penalty', -1))} | "
            f"{_mean_std(ratio('to_gradient_descent', 0))} / "
            f"{_mean_std(ratio('to_gradient_descent', -1))} | "
            f"{_mean_std(acc['alternating'])} | {_mean_std(acc['penalty'])} | "
            f"{_mean_std(acc['gradient descent'])} |"
        )
    return "\n".join(rows)


# --------------------------------------------------------- second descent


@dataclasses.dataclass(frozen=True)
class SecondDescentConfig:
    """Settings of :func:`second_descent`. The flood levels pair with the
    noise rates: 0.28 is the median level chosen at 10 % noise on this
    protocol (benchmarks/results/paper_synthetic.md), 0.86 of the noisy
    labels' Bayes risk H(0.1); 0.52 is the same share of H(0.3)."""

    seeds: int = 5
    epochs: int = 1000
    dataset: str = "sinusoid2d"
    noises: Sequence[float] = (0.1, 0.3)
    flood_levels: Sequence[float] = (0.28, 0.52)
    batch_sizes: Sequence[int | None] = (None, 20)
    width: int = 500
    test_every: int = 10
    drop: float = 0.1


def _second_descent_epoch(
    epochs: np.ndarray, loss: np.ndarray, drop: float
) -> int | None:
    """The epoch where the smoothed test loss, having risen from its first
    minimum to a peak at least ``drop`` (relative) above it, has fallen
    ``drop`` below the peak; ``None`` if it never does. The loss is smoothed
    by a centred moving average over 5 % of the evaluations (at least 3).
    That does not remove mini-batch noise: in the five-seed study with
    batches of 20 (benchmarks/results/study_second_descent.md) it fires on
    every run although the curves fluctuate around a flat level, so read
    its hits beside the plotted curves."""
    window = max(3, len(loss) // 20)
    if len(loss) < 2 * window:
        return None
    kernel = np.ones(window) / window
    smooth = np.convolve(loss, kernel, mode="valid")
    at = epochs[window // 2 : window // 2 + len(smooth)]
    first_min = int(np.argmin(smooth[: max(len(smooth) // 2, 1)]))
    peak = first_min + int(np.argmax(smooth[first_min:]))
    if smooth[peak] < smooth[first_min] * (1 + drop):
        return None
    after = np.flatnonzero(smooth[peak:] <= smooth[peak] * (1 - drop))
    return None if len(after) == 0 else int(at[peak + after[0]])


def second_descent(
    config: SecondDescentConfig = SecondDescentConfig(),
    *,
    png: str | None = None,
    progress: bool | Progress = True,
) -> dict:
    """The clean test loss over long runs, flooded and not, looking for a
    second descent (a rise and a fall of at least ``drop`` below the peak).

    Settings: each noise rate with its flood level (``flood_levels`` pair
    with ``noises``), full batch and mini-batches, SGD (lr 0.01, momentum 0.9).
    """
    runs = []
    jobs = [
        (n, b, bs, s)
        for n, b in zip(config.noises, config.flood_levels, strict=True)
        for bs in config.batch_sizes
        for s in range(config.seeds)
    ]
    total = len(jobs) * 2 * config.epochs
    with progress_bar(
        progress, total, "second descent: epochs", announce=LONG_RUN_SECONDS
    ) as bar:
        for noise, b, batch, seed in jobs:
            data = load_dataset(config.dataset, seed=seed, label_noise=noise)
            for level in (0.0, b):
                result = train(
                    _model(data, config.width, seed),
                    data,
                    TrainConfig(epochs=config.epochs, batch_size=batch, seed=seed),
                    flood_level=level,
                    test_every=config.test_every,
                    progress=bar,
                )
                tested = ~np.isnan(result.history.test_loss)
                epochs = np.arange(1, config.epochs + 1)[tested]
                loss = result.history.test_loss[tested]
                runs.append(
                    {
                        "noise": noise,
                        "flood_level": level,
                        "batch_size": batch,
                        "seed": seed,
                        "epochs": epochs.tolist(),
                        "test_loss": loss.tolist(),
                        "test_accuracy": result.history.test_accuracy[tested].tolist(),
                        "second_descent_epoch": _second_descent_epoch(
                            epochs, loss, config.drop
                        ),
                    }
                )
    out = {"config": dataclasses.asdict(config), "runs": runs}
    _plot_second_descent(out, png)
    return out


def _plot_second_descent(out: dict, png: str | None) -> None:
    plt = _pyplot()
    config = out["config"]
    settings = [(n, bs) for n in config["noises"] for bs in config["batch_sizes"]]
    fig, axes = plt.subplots(
        1, len(settings), figsize=(max(7.0, 4.2 * len(settings)), 4.2), squeeze=False
    )
    for ax, (noise, batch) in zip(axes[0], settings, strict=True):
        for level_kind, colour in (
            ("no flooding", "tab:blue"),
            ("flooding", "tab:red"),
        ):
            sel = [
                r
                for r in out["runs"]
                if r["noise"] == noise
                and r["batch_size"] == batch
                and (r["flood_level"] == 0) == (level_kind == "no flooding")
            ]
            if not sel:
                continue
            loss = np.array([r["test_loss"] for r in sel])
            label = (
                level_kind
                if level_kind == "no flooding"
                else f"flooding, b = {sel[0]['flood_level']:g}"
            )
            ax.plot(sel[0]["epochs"], loss.mean(0), color=colour, label=label)
            ax.fill_between(
                sel[0]["epochs"], loss.min(0), loss.max(0), color=colour, alpha=0.15
            )
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(
            f"noise {noise:g}, {'full batch' if batch is None else f'batch {batch}'}"
        )
    axes[0][0].set_ylabel("clean test loss (log)")
    _finish(
        fig,
        axes,
        f"Test loss over {config['epochs']} epochs (mean, band min–max over "
        f"{config['seeds']} seeds)",
        png,
    )


def second_descent_table(out: dict) -> str:
    config = out["config"]
    rows = [
        "| noise | batch | run | runs with a second descent | its epoch (median) | "
        "final test loss | final test accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for noise in config["noises"]:
        for batch in config["batch_sizes"]:
            for flooded in (False, True):
                sel = [
                    r
                    for r in out["runs"]
                    if r["noise"] == noise
                    and r["batch_size"] == batch
                    and (r["flood_level"] > 0) == flooded
                ]
                if not sel:
                    continue
                found = [
                    r["second_descent_epoch"]
                    for r in sel
                    if r["second_descent_epoch"] is not None
                ]
                name = (
                    f"flooding b = {sel[0]['flood_level']:g}"
                    if flooded
                    else "no flooding"
                )
                rows.append(
                    f"| {noise:g} | {'full' if batch is None else batch} | {name} | "
                    f"{len(found)} of {len(sel)} | "
                    f"{int(np.median(found)) if found else '—'} | "
                    f"{_mean_std([r['test_loss'][-1] for r in sel])} | "
                    f"{_mean_std([100 * r['test_accuracy'][-1] for r in sel])} |"
                )
    return "\n".join(rows)


# ------------------------------------------------------------------ short


def short_config(name: str) -> Any:
    """A few-minute version of a study for ``floodax demo --study NAME``:
    fewer seeds and epochs and a narrower network, the same code."""
    if name == "flatness":
        return FlatnessConfig(
            seeds=2, epochs=100, width=200, probe_every=10, landscape_points=21
        )
    if name == "noise":
        return NoiseConfig(
            seeds=1,
            epochs=100,
            datasets=("sinusoid2d",),
            noises=(0.0, 0.2, 0.4),
            width=200,
            grid=tuple(round(0.08 * i, 2) for i in range(11)),
        )
    if name == "derivation":
        return DerivationConfig(
            seeds=1,
            pairs=300,
            width=200,
            record_every=10,
            rates=((0.01, 0.005), (0.2, 0.1)),
        )
    if name == "second_descent":
        return SecondDescentConfig(
            seeds=1,
            epochs=400,
            noises=(0.3,),
            flood_levels=(0.52,),
            batch_sizes=(20,),
            width=200,
        )
    raise ValueError(f"`study` must be one of {STUDIES}, got {name!r}.")


RUNNERS = {
    "flatness": (flatness, flatness_table),
    "noise": (noise_levels, noise_table),
    "derivation": (derivation_runs, derivation_table),
    "second_descent": (second_descent, second_descent_table),
}


def run_study(
    name: str, config: Any = None, *, out: str = "floodax-demo", progress: bool = True
) -> tuple[dict, str, str]:
    """Runs study ``name`` (its short version without ``config``); writes
    ``<out>/study_<name>.png``; returns the numbers, a markdown table and the
    PNG's path."""
    if name not in RUNNERS:
        raise ValueError(f"`study` must be one of {STUDIES}, got {name!r}.")
    run, table = RUNNERS[name]
    config = short_config(name) if config is None else config
    png = os.path.join(out, f"study_{name}.png")
    result = run(config, png=png, progress=progress)
    return result, table(result), png
