"""Tests of the experiments sub-package: datasets, training, sweep, demo."""

from __future__ import annotations

import collections
import contextlib
import functools
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import floodax

nnx = pytest.importorskip("flax.nnx")
pytest.importorskip("sklearn")
from floodax._cli import main  # noqa: E402
from floodax.experiments import (  # noqa: E402
    MLP,
    SweepResult,
    TrainConfig,
    heldout_losses,
    load_digits_dataset,
    make_synthetic,
    sweep_flood_levels,
    train,
)
from floodax.experiments.datasets import (  # noqa: E402
    flip_labels,
    sinusoid2d_label,
    spiral_points,
)
from floodax.experiments.demo import warnings_for  # noqa: E402
from floodax.experiments.models import PyTorchBatchNorm  # noqa: E402
from floodax.experiments.training import History, select_flood_level  # noqa: E402
from tests.helpers import (  # noqa: E402
    assert_counts_every_unit,
    bars,
    draw_on_terminal,
)

# ----------------------------------------------------------------- datasets

# Recorded by running the authors' generators (takashiishida/flooding,
# synthetic/sinusoid.py, gaussian.py, spiral.py) after np.random.seed(0), with
# label noise 0.1 and MLproject's sizes: the SHA-256 of x_train, y_train,
# y_train_clean, x_val, y_val, y_val_clean, x_test and clean y_test (float32
# features, int64 labels), one training point and the first flipped labels.
AUTHORS_SEED_0 = {
    "sinusoid2d": (
        "1a870b406d48db882b43f08c1cc6a636aac5d70233a9f7c50bfde22fcf241c8b",
        [-0.21890388429164886, 1.516302466392517],
        [8, 11, 25, 27, 35, 69],
    ),
    "gaussians": (
        "fc35bd09d3c9e05909959bd5fdab3cd712ef739634895db9afb562cc78ab35a2",
        [0.14404356479644775, 1.4542734622955322, 0.7610377073287964],
        [12, 14, 25, 31, 33, 35],
    ),
    "spiral": (
        "31f3877993ef070ce2ecb4578ef3aedaf6cdf417052155ea375eded63f58dc82",
        [0.12591183185577393, 0.01606876403093338],
        [3, 12, 14, 21, 28, 44],
    ),
}


@pytest.mark.parametrize("name", sorted(AUTHORS_SEED_0))
def test_synthetic_data_equal_the_authors_generators(name):
    import hashlib

    digest, point, flipped = AUTHORS_SEED_0[name]
    data = make_synthetic(name, seed=0, label_noise=0.1)
    h = hashlib.sha256()
    for a in (
        data.x_train,
        data.y_train,
        data.y_train_clean,
        data.x_val,
        data.y_val,
        data.y_val_clean,
        data.x_test,
        data.y_test,
    ):
        h.update(
            np.ascontiguousarray(
                a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int64)
            ).tobytes()
        )
    np.testing.assert_array_equal(data.x_train[1, : len(point)], np.float32(point))
    noisy = np.flatnonzero(data.y_train != data.y_train_clean)
    np.testing.assert_array_equal(noisy[: len(flipped)], flipped)
    assert h.hexdigest() == digest


def test_sinusoid2d_label_formula_on_known_points():
    points = np.array([[1.0, 0.0], [-1.0, 0.0], [0.1, -1.0], [0.0, 1.0], [-0.5, 1.0]])
    # sign(1.5·x0 + sin(1.5·x1)): 1.5, −1.5, 0.15 − 0.997, 0.997, −0.75 + 0.997
    np.testing.assert_array_equal(sinusoid2d_label(points), [1, -1, -1, 1, 1])


@pytest.mark.parametrize("name", ["sinusoid2d", "gaussians", "spiral"])
def test_synthetic_is_deterministic(name):
    a = make_synthetic(name, seed=3, label_noise=0.2)
    b = make_synthetic(name, seed=3, label_noise=0.2)
    c = make_synthetic(name, seed=4, label_noise=0.2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.y_train, c.y_train)


@pytest.mark.parametrize(
    "name, sizes, balanced",
    [
        ("sinusoid2d", (100, 100, 20_000), False),
        ("gaussians", (200, 200, 20_000), True),
        ("spiral", (200, 200, 20_000), True),
    ],
)
def test_split_sizes_class_counts_and_noise_follow_the_authors(name, sizes, balanced):
    data = make_synthetic(name, seed=1, label_noise=0.1)
    splits = (
        (data.y_train, data.y_train_clean),
        (data.y_val, data.y_val_clean),
        (data.y_test, data.y_test),
    )
    for (noisy, clean), n in zip(splits, sizes, strict=True):
        assert len(noisy) == n
        counts = np.bincount(clean, minlength=2)
        if balanced:
            assert counts.tolist() == [n // 2, n // 2]
        else:  # sinusoid2d: classes as they fall, not forced equal
            assert counts.sum() == n
    # Exactly int(n·noise) flipped in training and validation; test is clean.
    assert np.sum(data.y_train != data.y_train_clean) == int(sizes[0] * 0.1)
    assert np.sum(data.y_val != data.y_val_clean) == int(sizes[1] * 0.1)
    if name == "sinusoid2d":
        clean = (sinusoid2d_label(data.x_test) > 0).astype(int)
        np.testing.assert_array_equal(data.y_test, clean)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32


def test_sinusoid2d_points_are_uniform_in_the_disc():
    data = make_synthetic("sinusoid2d", seed=1)
    for x in (data.x_train, data.x_val, data.x_test):
        assert np.all(np.linalg.norm(x, axis=1) <= 2.0 + 1e-6)
    # The mean squared radius of a uniform disc of radius 2 is 2.
    assert abs(np.mean(np.sum(data.x_test**2, axis=1)) - 2.0) < 0.05
    # Classes as they fall: the boundary splits the disc nearly in half.
    assert 0.45 < data.y_test.mean() < 0.55


@pytest.mark.parametrize("distance", [1.0, 2.5])
def test_gaussians_means_dimension_and_distance(distance):
    data = make_synthetic("gaussians", seed=0, mean_distance=distance)
    assert data.x_test.shape == (20_000, 10)
    first, second = data.x_test[data.y_test == 0], data.x_test[data.y_test == 1]
    np.testing.assert_allclose(first.mean(0), np.zeros(10), atol=0.04)
    np.testing.assert_allclose(second.mean(0), np.full(10, distance), atol=0.04)
    np.testing.assert_allclose(first.std(0), np.ones(10), atol=0.03)
    assert make_synthetic("gaussians", dimension=3).x_train.shape == (200, 3)


def test_spiral_geometry():
    x, y = spiral_points(50, 0.0, np.random.RandomState(0))
    a = np.linspace(0, 4 * np.pi, 50)
    np.testing.assert_allclose(np.linalg.norm(x[y == 1], axis=1), a, atol=1e-12)
    np.testing.assert_allclose(
        np.linalg.norm(x[y == -1], axis=1), a + np.pi, atol=1e-12
    )
    angle = np.arctan2(x[y == -1][:, 1], x[y == -1][:, 0])
    np.testing.assert_allclose(np.cos(angle), np.cos(a), atol=1e-12)
    noisy, _ = spiral_points(2000, 0.5, np.random.RandomState(0))
    clean, _ = spiral_points(2000, 0.0, np.random.RandomState(0))
    np.testing.assert_allclose(np.std(noisy - clean), 0.5, rtol=0.05)


def test_flip_labels_multiclass_changes_exactly_the_fraction():
    labels = np.arange(100) % 10
    noisy = flip_labels(labels, 0.3, 10, np.random.default_rng(0))
    assert np.sum(noisy != labels) == 30
    assert noisy.min() >= 0 and noisy.max() <= 9
    with pytest.raises(ValueError, match="`label_noise` must lie in"):
        flip_labels(labels, 1.5, 10, np.random.default_rng(0))


def test_digits_split_is_stratified_and_deterministic():
    data = load_digits_dataset(seed=0, label_noise=0.1)
    again = load_digits_dataset(seed=0, label_noise=0.1)
    np.testing.assert_array_equal(data.x_train, again.x_train)
    sizes = len(data.y_train) + len(data.y_val) + len(data.y_test)
    assert sizes == 1797 and data.x_train.shape[1] == 64
    assert set(np.unique(data.y_test)) == set(range(10))
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert np.sum(data.y_train != data.y_train_clean) == int(0.1 * len(data.y_train))


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="`name` must be one of"):
        make_synthetic("moons")
    with pytest.raises(ValueError, match="`n_train` must be an integer >= 2"):
        make_synthetic("spiral", n_train=0)
    with pytest.raises(ValueError, match="`n_val` must be even for 'gaussians'"):
        make_synthetic("gaussians", n_val=101)
    with pytest.raises(TypeError, match="`n_test` must be an integer"):
        make_synthetic("sinusoid2d", n_test=100.0)
    with pytest.raises(ValueError, match="`label_noise` must lie in"):
        make_synthetic("sinusoid2d", label_noise=1.5)
    with pytest.raises(ValueError, match="`val_fraction` and `test_fraction`"):
        load_digits_dataset(val_fraction=0.6, test_fraction=0.5)


# ---------------------------------------------------------- model, training


@functools.cache
def _paper_mlp():
    """The paper's MLP (4 x 500), built once for the tests that only read it."""
    return MLP(2, 3, rngs=nnx.Rngs(0))


def test_mlp_has_the_papers_structure():
    model = _paper_mlp()
    assert len(model.linears) == 4 and len(model.norms) == 4
    assert all(linear.bias is None for linear in model.linears)
    assert model.linears[1].kernel.shape == (500, 500)
    assert model.out.kernel.shape == (500, 3)
    assert all(isinstance(n, PyTorchBatchNorm) for n in model.norms)


def test_mlp_initialisation_is_pytorchs_linear_default():
    # nn.Linear: weights and biases uniform on ±1/√fan_in (variance 1/(3·fan_in)).
    model = _paper_mlp()
    for layer, fan_in in ((model.linears[1], 500), (model.out, 500)):
        w = np.asarray(layer.kernel[...])
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
        np.testing.assert_allclose(
            w.var(), 1 / (3 * fan_in), rtol=0.05 if w.size > 1e4 else 0.3
        )
    bias = np.asarray(model.out.bias[...])
    assert np.abs(bias).max() <= 1 / np.sqrt(500) and np.any(bias != 0)
    # Flax's initialisation leaves the biases at zero, at any width.
    flax_model = MLP(2, 3, width=8, depth=1, init="flax", rngs=nnx.Rngs(0))
    assert np.all(np.asarray(flax_model.out.bias[...]) == 0)


def test_batch_norm_statistics_follow_pytorch_by_hand():
    # k training-mode calls on a fixed batch: running mean (1 − 0.9ᵏ)·μ and
    # running variance 0.9ᵏ·1 + (1 − 0.9ᵏ)·n/(n − 1)·σ² (PyTorch's momentum
    # 0.1 and unbiased variance); the output uses the biased σ², and eval
    # mode uses the running statistics.
    x = jax.random.normal(jax.random.key(0), (7, 3)) * 2.0 + 1.0
    bn = PyTorchBatchNorm(3)
    mean, var = np.asarray(x).mean(0), np.asarray(x).var(0)
    for k in range(1, 6):
        y = bn(x)
        decay = 0.9**k
        np.testing.assert_allclose(bn.mean[...], (1 - decay) * mean, rtol=1e-5)
        np.testing.assert_allclose(
            bn.var[...], decay + (1 - decay) * var * 7 / 6, rtol=1e-5
        )
        np.testing.assert_allclose(
            y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5
        )
    bn.eval()
    running_mean, running_var = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    np.testing.assert_allclose(
        bn(x), (x - running_mean) / np.sqrt(running_var + 1e-5), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="more than one example"):
        PyTorchBatchNorm(3)(x[:1])


def test_full_batch_statistics_converge_with_pytorch_semantics_not_flaxs():
    # Full-batch training updates the running statistics once an epoch. With
    # the first layer's input fixed, 200 updates leave 0.9²⁰⁰ ≈ 7e-10 of the
    # initial statistics under PyTorch's momentum, but 0.99²⁰⁰ ≈ 13 % under
    # Flax's default, the gap that inflated floodax's old baseline.
    x = jnp.asarray(make_synthetic("sinusoid2d", seed=0).x_train)
    for batch_norm, left in (("pytorch", 0.9**200), ("flax", 0.99**200)):
        model = MLP(2, 2, width=16, depth=1, batch_norm=batch_norm, rngs=nnx.Rngs(0))
        h = np.asarray(model.linears[0](x))
        n = len(h)
        unbiased = 1.0 if batch_norm == "flax" else n / (n - 1)
        for _ in range(200):
            model(x)
        norm = model.norms[0]
        np.testing.assert_allclose(
            norm.mean[...], (1 - left) * h.mean(0), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            norm.var[...], left + (1 - left) * unbiased * h.var(0), rtol=1e-4
        )
    assert 0.99**200 > 0.13 and 0.9**200 < 1e-9


def test_mlp_matches_pytorch_modules():
    # The same weights in torch.nn (Linear without bias, BatchNorm1d, ReLU)
    # give the same outputs and running statistics, in training and eval.
    torch = pytest.importorskip("torch")
    model = MLP(2, 2, width=8, depth=2, rngs=nnx.Rngs(0))
    layers = []
    for linear in model.linears:
        lin = torch.nn.Linear(*linear.kernel.shape, bias=False)
        lin.weight.data = torch.tensor(np.asarray(linear.kernel[...]).T.copy())
        layers += [lin, torch.nn.BatchNorm1d(linear.kernel.shape[1]), torch.nn.ReLU()]
    out = torch.nn.Linear(8, 2)
    out.weight.data = torch.tensor(np.asarray(model.out.kernel[...]).T.copy())
    out.bias.data = torch.tensor(np.asarray(model.out.bias[...]).copy())
    reference = torch.nn.Sequential(*layers, out)
    x = np.asarray(make_synthetic("sinusoid2d", seed=0).x_train)
    for _ in range(3):
        ours, theirs = model(jnp.asarray(x)), reference(torch.tensor(x))
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-4, atol=1e-5)
    for norm, bn in zip(model.norms, reference[1::3], strict=True):
        np.testing.assert_allclose(
            norm.mean[...], bn.running_mean.numpy(), rtol=1e-5, atol=1e-7
        )
        np.testing.assert_allclose(norm.var[...], bn.running_var.numpy(), rtol=1e-5)
    model.eval()
    reference.eval()
    np.testing.assert_allclose(
        model(jnp.asarray(x)),
        reference(torch.tensor(x)).detach().numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


def _small():
    data = make_synthetic(
        "gaussians",
        seed=0,
        n_train=64,
        n_val=64,
        n_test=128,
        label_noise=0.2,
    )
    model = MLP(10, 2, width=16, depth=2, rngs=nnx.Rngs(1))
    return data, model


TRAIN_FIELDS = (
    "step_loss",
    "train_loss",
    "train_accuracy",
    "train_clean_accuracy",
    "val_loss",
    "val_accuracy",
    "val_clean_loss",
    "val_clean_accuracy",
    "ascent_share",
    "active",
)


_COUNTERS: list = []
_LISTENING: list = []


def _count_compiles(event, duration, **kwargs):
    del duration
    if _COUNTERS and event == "/jax/core/compile/backend_compile_duration":
        _COUNTERS[-1][kwargs.get("fun_name")] += 1


@contextlib.contextmanager
def _compile_counts():
    """Counts XLA compilations per jitted function name inside the block."""
    from jax import monitoring

    if not _LISTENING:
        # One listener for the session: jax before 0.8.1 cannot unregister
        # one; it counts only while a block is open.
        monitoring.register_event_duration_secs_listener(_count_compiles)
        _LISTENING.append(_count_compiles)
    counts = collections.Counter()
    _COUNTERS.append(counts)
    try:
        yield counts
    finally:
        _COUNTERS.pop()


LEVELS = (0.0, 0.3, 0.5)


class _Compared(NamedTuple):
    sweeps: dict  # "vmapped" and "sequential": their SweepResult
    singles: list  # train() at each level
    drawn: dict  # what each sweep's bar drew on a terminal
    compiles: dict  # "vmapped", "sequential", "train": compilations per call


@functools.cache
def _compared_runs(patience) -> _Compared:
    """The three levels trained by a sequential sweep, a vmapped sweep and
    :func:`train` one level at a time, with early stopping after
    ``patience`` epochs or none: run once, for the tests that compare them."""
    data, model = _small()
    config = TrainConfig(
        epochs=15,
        optimizer="adam",
        learning_rate=0.05,
        batch_size=16,
        early_stopping_patience=patience,
    )
    sweeps, drawn, compiles = {}, {}, {"train": []}
    for strategy in ("vmapped", "sequential"):
        with pytest.MonkeyPatch.context() as monkeypatch, _compile_counts() as counts:
            terminal = draw_on_terminal(monkeypatch)
            sweeps[strategy] = sweep_flood_levels(
                model, data, config, LEVELS, vectorized=strategy == "vmapped"
            )
        drawn[strategy], compiles[strategy] = terminal.getvalue(), [counts]
    singles = []
    for b in LEVELS:
        with _compile_counts() as counts:
            singles.append(
                train(model, data, config, flood_level=b, test_every=3, progress=False)
            )
        compiles["train"].append(counts)
    return _Compared(sweeps, singles, drawn, compiles)


@pytest.mark.parametrize("patience", [None, 2])
def test_sequential_sweep_is_bit_for_bit_train(patience):
    # The demo's replays rest on this: train() at a level runs the very
    # computation the sequential sweep ran for it, so a result reported from
    # a replay is the run that chose the level.
    sweeps, singles, _, _ = _compared_runs(patience)
    sweep = sweeps["sequential"]
    assert not sweep.vectorized
    for i, single in enumerate(singles):
        assert single.flood_level == LEVELS[i]
        run = len(single.history.step_loss)
        for field in TRAIN_FIELDS:
            np.testing.assert_array_equal(
                getattr(sweep.history, field)[i, :run], getattr(single.history, field)
            )
        assert sweep.test_accuracy[i] == single.test_accuracy
        assert sweep.test_loss[i] == single.test_loss
    # The levels do different things: b = 0 never ascends, b = 0.5 does.
    assert sweep.ascent_share[0] == 0 and sweep.ascent_share[2] > 0.2


@pytest.mark.parametrize("patience", [None, 2])
def test_vmapped_sweep_agrees_with_individual_runs_over_a_short_run(patience):
    # Batched matrix products round differently, so a vmapped run agrees with
    # the same level trained alone to rounding (over a long run they can
    # drift apart: benchmarks/sweep_drift.md).
    sweeps, singles, _, _ = _compared_runs(patience)
    sweep = sweeps["vmapped"]
    assert sweep.vectorized
    if patience is None:  # every run trained every epoch
        assert sweep.history.train_loss.shape == (3, 15)
    for i, single in enumerate(singles):
        run = len(single.history.step_loss)
        for field in ("train_loss", "val_loss", "val_accuracy", "ascent_share"):
            np.testing.assert_allclose(
                getattr(sweep.history, field)[i, :run],
                getattr(single.history, field),
                atol=1e-5,
            )
        np.testing.assert_allclose(
            sweep.test_accuracy[i], single.test_accuracy, atol=1e-6
        )
        assert sweep.ascent_share[i] == pytest.approx(single.ascent_share)


@pytest.mark.parametrize("patience", [None, 2])
def test_sequential_sweep_equals_vmapped_sweep(patience):
    sweeps, _, drawn, _ = _compared_runs(patience)
    vmapped, sequential = sweeps["vmapped"], sweeps["sequential"]
    # One bar for the sweep, a unit per epoch of a level, 3 x 15 in all; the
    # epochs early stopping skips count as done, so the bar reaches its total.
    for strategy, step in (("vmapped", 3), ("sequential", 1)):
        steps = assert_counts_every_unit(
            bars(drawn[strategy])["3 flood levels"], 3 * 15
        )
        assert steps == {step} if patience is None else step in steps
        assert all(s % step == 0 for s in steps)
    assert "level 3 of 3, b=0.5" in drawn["sequential"]
    for a, b in zip(vmapped.history, sequential.history, strict=True):
        if a is None:  # a sweep evaluates the test split only at the end
            assert b is None
            continue
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(
        vmapped.test_accuracy, sequential.test_accuracy, atol=1e-6
    )
    np.testing.assert_allclose(vmapped.ascent_share, sequential.ascent_share)
    assert vmapped.best_index == sequential.best_index
    if patience is not None:  # some level stopped before the others
        assert not np.all(vmapped.history.active)


def test_auto_strategy_is_sequential_on_a_cpu():
    data, model = _small()
    sweep = sweep_flood_levels(
        model, data, TrainConfig(epochs=1), [0.0, 0.1], progress=False
    )
    assert jax.default_backend() == "cpu" and not sweep.vectorized
    with pytest.raises(ValueError, match="`vectorized` must be True, False or"):
        sweep_flood_levels(
            model, data, TrainConfig(epochs=1), [0.0], vectorized="yes", progress=False
        )


@pytest.mark.parametrize("validation", ["clean", "noisy"])
def test_the_sweep_selects_on_the_configured_validation_labels(validation):
    data, model = _small()
    config = TrainConfig(
        epochs=10, optimizer="adam", learning_rate=0.05, validation=validation
    )
    levels = [0.0, 0.2, 0.4, 0.6]
    sweep = sweep_flood_levels(
        model, data, config, levels, vectorized=False, progress=False
    )
    loss, accuracy = sweep.history.validation(validation)
    assert sweep.validation == validation
    final = accuracy[:, -1]
    assert final[sweep.best_index] == final.max()
    tied = np.flatnonzero(final == final.max())
    assert loss[sweep.best_index, -1] == loss[tied, -1].min()
    # The two label sets differ on this noisy data.
    assert not np.array_equal(
        sweep.history.val_accuracy, sweep.history.val_clean_accuracy
    )


def test_tie_breaks_on_real_ties():
    acc = np.array([[0.7, 0.9], [0.6, 0.9], [0.8, 0.9], [0.9, 0.8]])
    loss = np.array([[0.5, 0.40], [0.5, 0.30], [0.5, 0.35], [0.5, 0.1]])
    history = History(*[None] * 12)._replace(
        val_clean_accuracy=acc,
        val_clean_loss=loss,
        val_accuracy=acc[::-1],
        val_loss=loss[::-1],
    )
    levels = [0.0, 0.1, 0.2, 0.3]
    # Levels 0, 1, 2 tie at 0.9: the lowest loss wins, or the largest level.
    assert select_flood_level(history, levels) == 1
    assert select_flood_level(history, levels, tie_break="largest_level") == 2
    # Noisy labels (reversed here): levels 1, 2, 3 tie; lowest loss is 2.
    assert select_flood_level(history, levels, validation="noisy") == 2
    assert (
        select_flood_level(
            history, levels, validation="noisy", tie_break="largest_level"
        )
        == 3
    )
    # A complete tie goes to the lowest level; a NaN loss loses a tie.
    full = history._replace(val_clean_loss=np.full((4, 2), 0.5))
    assert select_flood_level(full, levels) == 0
    nan = history._replace(
        val_clean_loss=np.array([[0.5, np.nan], [0.5, np.nan], [0.5, 0.9], [0.5, 0.1]])
    )
    assert select_flood_level(nan, levels) == 2
    # A diverged run (non-finite final loss) ranks after every finite run
    # even when its broken logits score the best accuracy; with every run
    # diverged, accuracy chooses among them.
    broken = history._replace(
        val_clean_accuracy=np.array([[0, 0.3], [0, 0.99], [0, 0.5], [0, 0.95]]),
        val_clean_loss=np.array([[0, 0.2], [0, np.nan], [0, 0.9], [0, np.inf]]),
    )
    assert select_flood_level(broken, levels) == 2
    assert select_flood_level(broken, levels, tie_break="largest_level") == 2
    gone = broken._replace(val_clean_loss=np.full((4, 2), np.nan))
    assert select_flood_level(gone, levels) == 1
    with pytest.raises(ValueError, match="`tie_break` must be one of"):
        select_flood_level(history, levels, tie_break="first")


def test_train_does_not_modify_the_model_and_records_every_epoch():
    data, model = _small()
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    result = train(
        model,
        data,
        TrainConfig(epochs=5, optimizer="adam", learning_rate=0.01),
        test_every=2,
        progress=False,
    )
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    # The test split is evaluated at epochs 2, 4 and the last.
    tested = ~np.isnan(result.history.test_accuracy)
    assert tested.tolist() == [False, True, False, True, True]
    assert result.test_accuracy == result.history.test_accuracy[-1]
    assert result.steps == 5 and result.ascent_share == 0
    # Training helps: the loss falls.
    assert result.history.train_loss[-1] < result.history.train_loss[0]


def test_early_stopping_freezes_the_run():
    data, model = _small()
    config = TrainConfig(
        epochs=40, optimizer="adam", learning_rate=0.05, early_stopping_patience=2
    )
    result = train(model, data, config, progress=False)
    h = result.history
    assert len(h.val_clean_accuracy) < 40  # stopped before the last epoch
    stop = len(h.val_clean_accuracy)
    # The last two epochs failed to beat the best clean validation accuracy.
    assert np.all(h.val_clean_accuracy[-2:] <= h.val_clean_accuracy[:-2].max())
    assert result.steps == stop
    assert not np.isnan(h.test_accuracy[-1])  # tested where it stopped
    # Stopped runs of a sweep keep their metrics frozen; some level of these
    # sweeps (patience 2) stopped before the others.
    for sweep in _compared_runs(2).sweeps.values():
        active = sweep.history.active
        assert not np.all(active)
        for i in range(len(LEVELS)):
            idle = np.flatnonzero(~active[i])
            if len(idle):
                assert np.all(
                    sweep.history.val_loss[i, idle]
                    == sweep.history.val_loss[i, idle[0] - 1]
                )


def test_heldout_losses_never_see_their_own_example(terminal):
    # Flip one training label: the auxiliary model of that example's fold
    # never trained on it, so every logit it gives its fold is unchanged,
    # while the models of the other folds, which trained on it, change.
    data, model = _small()
    config = TrainConfig(epochs=6, optimizer="adam", learning_rate=0.05)
    before = heldout_losses(model, data, config, num_folds=4)
    # The four models train together: 4 units an epoch, 24 in all.
    drawn = bars(terminal.getvalue())["4 auxiliary models"]
    assert assert_counts_every_unit(drawn, 24) == {4}
    i = 5
    flipped = data._replace(y_train=data.y_train.copy())
    flipped.y_train[i] = 1 - flipped.y_train[i]
    after = heldout_losses(model, flipped, config, num_folds=4, progress=False)
    np.testing.assert_array_equal(before.fold, after.fold)
    own = before.fold == before.fold[i]
    np.testing.assert_allclose(
        after.logits[own], before.logits[own], rtol=1e-6, atol=1e-6
    )
    assert np.abs(after.logits[~own] - before.logits[~own]).max() > 1e-3
    # Folds of equal size (64 examples, 4 folds); the loss is the held-out
    # model's cross-entropy with the training label.
    assert np.bincount(before.fold).tolist() == [16, 16, 16, 16]
    expected = optax.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(before.logits), jnp.asarray(data.y_train)
    )
    np.testing.assert_allclose(before.losses, expected, rtol=1e-6)


def _one_step_by_hand(model, data, config, per_example_levels):
    """One full-batch SGD step on iflooded(CE, levels), written out."""
    model = nnx.clone(model)
    model.train()
    optimizer = nnx.Optimizer(
        model, optax.sgd(config.learning_rate, momentum=config.momentum), wrt=nnx.Param
    )
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

    def loss_fn(model):
        losses = optax.softmax_cross_entropy_with_integer_labels(model(x), y)
        return floodax.iflooded(losses, per_example_levels)

    optimizer.update(model, nnx.grad(loss_fn)(model))
    return model


@pytest.mark.parametrize("method", ["iflood", "adaflood"])
def test_per_example_methods_take_the_hand_written_step(method):
    data, model = _small()
    config = TrainConfig(epochs=1, method=method)
    aux = np.linspace(0.05, 2.0, len(data.y_train)).astype(np.float32)
    level = 0.4 if method == "iflood" else 0.5
    levels = (
        jnp.float32(level)
        if method == "iflood"
        else floodax.adaflood_levels(jnp.asarray(aux), gamma=level)
    )
    result = train(
        model,
        data,
        config,
        flood_level=level,
        aux_losses=aux if method == "adaflood" else None,
        progress=False,
    )
    expected = _one_step_by_hand(model, data, config, levels)
    for a, b in zip(
        jax.tree.leaves(nnx.state(result.model, nnx.Param)),
        jax.tree.leaves(nnx.state(expected, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The recorded share is the share of examples below their level.
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    model.train()
    losses = optax.softmax_cross_entropy_with_integer_labels(nnx.clone(model)(x), y)
    assert result.ascent_share == pytest.approx(
        float(jnp.mean(losses < levels)), abs=1e-6
    )
    assert 0 < result.ascent_share < 1


def test_adaflood_arguments_are_checked():
    data, model = _small()
    aux = np.full(len(data.y_train), 0.5, np.float32)
    with pytest.raises(ValueError, match="needs the held-out losses"):
        train(model, data, TrainConfig(epochs=1, method="adaflood"), flood_level=0.5)
    with pytest.raises(ValueError, match=r"γ values in \[0, 1\)"):
        train(
            model,
            data,
            TrainConfig(epochs=1, method="adaflood"),
            flood_level=1.0,
            aux_losses=aux,
        )
    with pytest.raises(ValueError, match="`aux_losses` are AdaFlood's"):
        train(model, data, TrainConfig(epochs=1), aux_losses=aux)
    with pytest.raises(ValueError, match="`aux_losses` must be finite"):
        train(
            model,
            data,
            TrainConfig(epochs=1, method="adaflood"),
            flood_level=0.5,
            aux_losses=np.full(len(aux), np.nan, np.float32),
        )
    with pytest.raises(ValueError, match="`method` must be one of"):
        TrainConfig(method="flooding")
    with pytest.raises(ValueError, match="`num_folds` must leave at least two"):
        heldout_losses(model, data, TrainConfig(epochs=1), num_folds=40)


@pytest.mark.parametrize("run", ["train", "vmapped", "sequential"])
def test_early_stopping_compiles_the_epoch_once(run):
    # Counted while _compared_runs(2) trained, with early stopping: each of
    # its sweeps and each train() call compiled its epoch function once.
    for counts in _compared_runs(2).compiles[run]:
        assert counts["jit(epoch)"] == 1, dict(counts)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"optimizer": "rmsprop"}, ValueError, "`optimizer` must be 'sgd' or 'adam'"),
        ({"epochs": 0}, ValueError, r"`epochs` must be an integer >= 1, got 0"),
        ({"epochs": 2.5}, TypeError, r"`epochs` must be an integer >= 1, got float"),
        ({"epochs": True}, TypeError, r"`epochs` must be an integer >= 1, got bool"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be an integer >= 1"),
        ({"batch_size": 32.0}, TypeError, r"`batch_size` must be an integer >= 1"),
        ({"learning_rate": 0.0}, ValueError, r"`learning_rate` must lie in \(0, inf\]"),
        ({"learning_rate": float("inf")}, ValueError, "`learning_rate` must be finite"),
        ({"learning_rate": "0.1"}, TypeError, "`learning_rate` must be a real number"),
        ({"momentum": float("nan")}, ValueError, "`momentum` must be finite"),
        ({"momentum": 1.0}, ValueError, r"`momentum` must lie in \[0, 1\)"),
        ({"early_stopping_patience": 0}, ValueError, "`early_stopping_patience`"),
        ({"seed": -1}, ValueError, "`seed` must be an integer >= 0"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**kwargs)


def test_sweep_rejects_bad_levels():
    data, model = _small()
    with pytest.raises(ValueError, match="`flood_level` must be non-negative"):
        sweep_flood_levels(
            model, data, TrainConfig(epochs=1), [0.1, -0.1], progress=False
        )


# ---------------------------------------------------------------- the demo


def test_demo_reports_the_run_that_chose_the_level(
    tmp_path, capsys, terminal, monkeypatch
):
    from matplotlib.figure import Figure

    boxes, savefig = [], Figure.savefig

    def saved(figure, *args, **kwargs):
        savefig(figure, *args, **kwargs)
        boxes.extend(
            (ax.get_window_extent(), ax.get_legend().get_window_extent())
            for ax in figure.axes
            if ax.get_legend() is not None
        )

    monkeypatch.setattr(Figure, "savefig", saved)
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--dataset",
            "gaussians",
            "--epochs",
            "4",
            "--width",
            "8",
            "--depth",
            "1",
            "--grid",
            "0.1:0.3:0.1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    # Two bars on stderr, none in the printed report: the sweep's, one for
    # all 4 levels x 4 epochs, an epoch at a time, and the replays'.
    assert bars(printed) == {}
    drawn = bars(terminal.getvalue())
    assert set(drawn) == {"4 flood levels", "replays for the figure"}
    assert assert_counts_every_unit(drawn["4 flood levels"], 16) == {1}
    assert "baseline" in printed and "flooding" in printed and "test acc" in printed
    assert "checked bit for bit equal to the sweep's" in printed
    png = (out / "floodax_demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # Each panel's legend lies outside its axes, where no curve runs over it.
    assert len(boxes) == 3
    for axes, legend in boxes:
        assert not legend.overlaps(axes) and legend.y1 < axes.y0  # below it
    results = json.loads((out / "floodax_demo.json").read_text())
    # 0 is always trained: it is the baseline.
    assert results["sweep"]["flood_levels"] == [0.0, 0.1, 0.2, 0.3]
    assert results["replay_max_difference"] == 0.0
    sweep = results["sweep"]
    chosen = sweep["flood_levels"].index(results["flooding"]["flood_level"])
    final = np.array(sweep["final_val_accuracy"])
    assert final[chosen] == final.max()
    assert results["flooding"]["test_accuracy"] == sweep["test_accuracy"][chosen]
    assert results["baseline"]["test_accuracy"] == sweep["test_accuracy"][0]
    replays = 1 if chosen == 0 else 2
    assert_counts_every_unit(drawn["replays for the figure"], replays * 4)


def _fake_sweep(test_accuracy, best_index, levels):
    return SweepResult(
        flood_levels=np.asarray(levels),
        history=None,
        test_loss=np.zeros(len(levels)),
        test_accuracy=np.asarray(test_accuracy),
        ascent_share=np.zeros(len(levels)),
        best_index=best_index,
        best_flood_level=levels[best_index],
        validation="clean",
        vectorized=False,
    )


def test_demo_flags_a_near_chance_baseline_and_an_edge_level():
    levels = [0.0, 0.1, 0.2, 0.3]
    notes = warnings_for(_fake_sweep([0.52, 0.6, 0.7, 0.8], 3, levels), 2, 4)
    assert any("near chance" in n for n in notes)
    assert any("largest of the grid" in n for n in notes)
    assert warnings_for(_fake_sweep([0.9, 0.6, 0.95, 0.8], 2, levels), 2, 4) == []
    notes = warnings_for(_fake_sweep([0.9, 0.6, 0.7, 0.8], 0, levels), 2, 4)
    assert len(notes) == 1 and "did not help" in notes[0]
    # Ten classes: chance is 10 %, and 25 % is not near it.
    assert warnings_for(_fake_sweep([0.25, 0.3, 0.7, 0.8], 2, levels), 10, 4) == []


def test_demo_flags_a_flooded_run_at_chance():
    levels = [0.0, 0.1, 0.8]
    # The level reported as flooding (--flood-level 0.8), not the sweep's pick.
    sweep = _fake_sweep([0.9, 0.95, 0.52], 1, levels)
    assert warnings_for(sweep, 2, 3) == []
    (note,) = warnings_for(sweep, 2, 3, chosen=2)
    assert note.startswith("the flooded run (b = 0.8) is no better than chance")
    assert "52.0% test accuracy against 50% for guessing" in note
    # 0.8 >= ln 2: the level itself keeps the loss at that of a uniform guess.
    assert f"ln 2 = {np.log(2):.3f}" in note and "give a lower level" in note
    # Three classes: 0.35 is near chance (1/3), and 0.8 < ln 3 = 1.099 is
    # not the reason.
    (note,) = warnings_for(_fake_sweep([0.9, 0.95, 0.35], 1, levels), 3, 3, chosen=2)
    assert "ln 3" not in note and "train longer" in note
    # Near chance means below chance + 10 % of the way to 1: 0.55 for two classes.
    assert warnings_for(_fake_sweep([0.9, 0.95, 0.55], 1, levels), 2, 3, chosen=2) == []
    # The baseline as the flooding row is flagged as not helping, not twice.
    notes = warnings_for(_fake_sweep([0.5, 0.5, 0.5], 0, levels), 2, 3)
    assert not any("the flooded run" in n for n in notes)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--grid", "abc"], "is not a grid"),
        (["--grid", "0:0.5:-1"], "is not a grid"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--label-noise", "2"], "--label-noise must lie in"),
        (["--flood-level", "-0.1"], "--flood-level must be positive"),
        (["--dataset", "cifar10"], "invalid choice: 'cifar10'"),
        (["--flood-level", "0.1", "--grid", "0,0.1"], "not allowed with argument"),
    ],
)
def test_demo_bad_flags(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------ the Linen path


def test_linen_train_state_with_flooded_loss_equals_flood_transformation():
    linen = pytest.importorskip("flax.linen")
    from flax.training import train_state

    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(2)(jnp.tanh(linen.Dense(8)(x)))

    data, _ = _small()
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    net = Net()
    params = net.init(jax.random.key(0), x)
    b = 0.45

    def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(
            net.apply(p, x), y
        ).mean()

    # Linen's TrainState forwards no `value`: flood the loss instead.
    state = train_state.TrainState.create(
        apply_fn=net.apply, params=params, tx=optax.adam(0.05)
    )
    # The same run through the transformation, calling tx.update directly.
    tx = optax.chain(floodax.flood(b), optax.adam(0.05))
    opt_state, p = tx.init(params), params

    @jax.jit
    def step(state, opt_state, p):
        grads = jax.grad(lambda q: floodax.flooded(loss_fn(q), b))(state.params)
        state = state.apply_gradients(grads=grads)
        loss, raw = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = tx.update(raw, opt_state, p, value=loss)
        return state, opt_state, optax.apply_updates(p, updates), loss

    ascended = 0
    for _ in range(40):
        state, opt_state, p, loss = step(state, opt_state, p)
        ascended += int(loss < b)
        jax.tree.map(
            lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6),
            state.params,
            p,
        )
    assert ascended > 0
