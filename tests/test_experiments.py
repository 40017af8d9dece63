"""Tests of the experiments sub-package: datasets, training, sweep, demo."""

from __future__ import annotations

import json

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
    TrainConfig,
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

# ----------------------------------------------------------------- datasets


def test_sinusoid2d_label_formula_on_known_points():
    points = np.array([[1.0, 0.0], [-1.0, 0.0], [0.1, -1.0], [0.0, 1.0], [-0.5, 1.0]])
    # sign(1.5·x0 + sin(1.5·x1)): 1.5, −1.5, 0.15 − 0.997, 0.997, −0.75 + 0.997
    np.testing.assert_array_equal(sinusoid2d_label(points), [1, -1, -1, 1, 1])


@pytest.mark.parametrize("name", ["sinusoid2d", "gaussians", "spiral"])
def test_synthetic_is_deterministic(name):
    a = make_synthetic(name, seed=3, label_noise=0.2)
    b = make_synthetic(name, seed=3, label_noise=0.2)
    c = make_synthetic(name, seed=4, label_noise=0.2)
    for x, y in zip(a[:6], b[:6], strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.y_train, c.y_train)


def test_sinusoid2d_points_labels_and_noise():
    data = make_synthetic("sinusoid2d", seed=1, label_noise=0.1, n_test_per_class=500)
    for x in (data.x_train, data.x_val, data.x_test):
        assert np.all(np.linalg.norm(x, axis=1) <= 2.0 + 1e-6)
    clean = lambda x: (sinusoid2d_label(x) > 0).astype(int)  # noqa: E731
    # Test labels clean; exactly 10% of training and validation labels flipped.
    np.testing.assert_array_equal(data.y_test, clean(data.x_test))
    assert np.sum(data.y_train != clean(data.x_train)) == 20
    assert np.sum(data.y_val != clean(data.x_val)) == 20
    assert np.bincount(clean(data.x_train)).tolist() == [100, 100]
    # Uniform in the disc: the mean squared radius of a uniform disc of
    # radius 2 is 2.
    assert abs(np.mean(np.sum(data.x_test**2, axis=1)) - 2.0) < 0.1


def test_gaussians_means_and_dimension():
    data = make_synthetic("gaussians", seed=0, n_test_per_class=4000)
    assert data.x_test.shape == (8000, 10)
    positive = data.x_test[data.y_test == 1]
    negative = data.x_test[data.y_test == 0]
    np.testing.assert_allclose(positive.mean(0), np.ones(10), atol=0.06)
    np.testing.assert_allclose(negative.mean(0), np.zeros(10), atol=0.06)
    np.testing.assert_allclose(negative.std(0), np.ones(10), atol=0.06)


def test_spiral_geometry():
    x, y = spiral_points(50, 0.0, np.random.default_rng(0))
    a = np.linspace(0, 4 * np.pi, 50)
    np.testing.assert_allclose(np.linalg.norm(x[y == 1], axis=1), a, atol=1e-12)
    np.testing.assert_allclose(
        np.linalg.norm(x[y == -1], axis=1), a + np.pi, atol=1e-12
    )
    angle = np.arctan2(x[y == -1][:, 1], x[y == -1][:, 0])
    np.testing.assert_allclose(np.cos(angle), np.cos(a), atol=1e-12)


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


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="`name` must be one of"):
        make_synthetic("moons")
    with pytest.raises(ValueError, match="`n_train_per_class` must be at least 1"):
        make_synthetic("spiral", n_train_per_class=0)
    with pytest.raises(ValueError, match="`val_fraction` and `test_fraction`"):
        load_digits_dataset(val_fraction=0.6, test_fraction=0.5)


# ---------------------------------------------------------- model, training


def test_mlp_has_the_papers_structure():
    model = MLP(2, 3, rngs=nnx.Rngs(0))
    assert len(model.linears) == 4 and len(model.norms) == 4
    assert all(linear.bias is None for linear in model.linears)
    assert model.linears[1].kernel.shape == (500, 500)
    assert model.out.kernel.shape == (500, 3)


def _small():
    data = make_synthetic(
        "gaussians",
        seed=0,
        n_train_per_class=32,
        n_val_per_class=32,
        n_test_per_class=64,
        label_noise=0.2,
    )
    model = MLP(10, 2, width=16, depth=2, rngs=nnx.Rngs(1))
    return data, model


def test_sweep_equals_individual_runs():
    data, model = _small()
    config = TrainConfig(epochs=12, optimizer="adam", learning_rate=0.01, batch_size=16)
    levels = [0.0, 0.3, 0.5]
    sweep = sweep_flood_levels(model, data, config, levels, progress=False)
    for i, b in enumerate(levels):
        single = train(model, data, config, flood_level=b, progress=False)
        for field in ("train_loss", "val_loss", "val_accuracy", "ascent_share"):
            np.testing.assert_allclose(
                getattr(sweep.history, field)[i],
                getattr(single.history, field),
                atol=1e-5,
            )
        np.testing.assert_allclose(
            sweep.test_accuracy[i], single.history.test_accuracy[-1], atol=1e-6
        )
        np.testing.assert_allclose(
            sweep.test_loss[i], single.history.test_loss[-1], atol=1e-5
        )
        assert sweep.ascent_share[i] == pytest.approx(
            single.ascent_steps / single.steps
        )
    # The levels do different things: b = 0 never ascends, b = 0.5 does.
    assert sweep.ascent_share[0] == 0 and sweep.ascent_share[2] > 0.2
    acc, loss = sweep.history.val_accuracy[:, -1], sweep.history.val_loss[:, -1]
    best = sweep.best_index
    assert acc[best] == acc.max() and loss[best] == loss[acc == acc.max()].min()
    assert sweep.best_flood_level == levels[best]


@pytest.mark.parametrize("patience", [None, 2])
def test_sequential_sweep_equals_vmapped_sweep(patience):
    data, model = _small()
    config = TrainConfig(
        epochs=15,
        optimizer="adam",
        learning_rate=0.05,
        batch_size=16,
        early_stopping_patience=patience,
    )
    levels = [0.0, 0.3, 0.5]
    vmapped = sweep_flood_levels(model, data, config, levels, progress=False)
    sequential = sweep_flood_levels(
        model, data, config, levels, progress=False, vectorized=False
    )
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


def test_train_does_not_modify_the_model_and_records_every_epoch():
    data, model = _small()
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    result = train(
        model,
        data,
        TrainConfig(epochs=5, optimizer="adam", learning_rate=0.01),
        progress=False,
    )
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    assert result.history.test_accuracy.shape == (5,)
    assert result.steps == 5 and result.ascent_steps == 0
    # Training helps: the loss falls.
    assert result.history.train_loss[-1] < result.history.train_loss[0]


def test_early_stopping_freezes_the_run():
    data, model = _small()
    config = TrainConfig(
        epochs=40, optimizer="adam", learning_rate=0.05, early_stopping_patience=2
    )
    result = train(model, data, config, progress=False)
    h = result.history
    assert len(h.val_accuracy) < 40  # stopped before the last epoch
    stop = len(h.val_accuracy)
    # The last two epochs failed to beat the best, and the run ends there.
    assert np.all(h.val_accuracy[-2:] <= h.val_accuracy[:-2].max())
    assert result.steps == stop
    sweep = sweep_flood_levels(model, data, config, [0.0, 0.2], progress=False)
    active = sweep.history.active
    # Stopped runs keep their metrics frozen.
    for i in range(2):
        idle = np.flatnonzero(~active[i])
        if len(idle):
            assert np.all(
                sweep.history.val_loss[i, idle]
                == sweep.history.val_loss[i, idle[0] - 1]
            )


@pytest.fixture
def compile_counts():
    """Counts XLA compilations per jitted function name while a test runs."""
    import collections

    from jax import monitoring

    counts = collections.Counter()

    def listener(event, duration, **kwargs):
        del duration
        if event == "/jax/core/compile/backend_compile_duration":
            counts[kwargs.get("fun_name")] += 1

    monitoring.register_event_duration_secs_listener(listener)
    yield counts
    monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("run", ["train", "vmapped", "sequential"])
def test_early_stopping_compiles_the_epoch_once(compile_counts, run):
    data, model = _small()
    config = TrainConfig(
        epochs=6, optimizer="adam", learning_rate=0.05, early_stopping_patience=4
    )
    if run == "train":
        train(model, data, config, progress=False)
    else:
        sweep_flood_levels(
            model,
            data,
            config,
            [0.0, 0.2],
            progress=False,
            vectorized=run == "vmapped",
        )
    assert compile_counts["jit(epoch)"] == 1, dict(compile_counts)


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


# ------------------------------------------------------ suggest_flood_level


def test_suggest_flood_level_finds_the_rise():
    epochs = np.arange(40)
    train_losses = np.exp(-epochs / 8)
    val = 0.7 * np.exp(-epochs / 8) + 0.02 * np.maximum(epochs - 15, 0)
    val[10] += 0.05  # a one-epoch uptick, ignored with patience 3
    s = floodax.suggest_flood_level(train_losses, val)
    rise = int(np.argmin(val))
    assert s.epoch == rise and s.validation_loss_rises
    assert s.flood_level == pytest.approx(0.5 * train_losses[rise])
    assert floodax.suggest_flood_level(train_losses, val, patience=1).epoch == 9
    lower = floodax.suggest_flood_level(train_losses, val, fraction=0.25)
    assert lower.flood_level == pytest.approx(0.25 * train_losses[rise])


def test_suggest_flood_level_without_a_rise():
    losses = np.linspace(1.0, 0.1, 10)
    s = floodax.suggest_flood_level(losses, losses + 0.1)
    assert not s.validation_loss_rises and s.epoch == 9
    assert s.flood_level == pytest.approx(0.05)


def test_suggest_flood_level_bad_input():
    with pytest.raises(ValueError, match="same non-zero length"):
        floodax.suggest_flood_level([1.0, 0.5], [1.0])
    with pytest.raises(ValueError, match="must be finite"):
        floodax.suggest_flood_level([1.0, np.nan], [1.0, 0.5])
    with pytest.raises(ValueError, match="`fraction` must lie in"):
        floodax.suggest_flood_level([1.0], [1.0], fraction=0.0)
    with pytest.raises(ValueError, match="`patience` must be an int"):
        floodax.suggest_flood_level([1.0], [1.0], patience=0)


# ---------------------------------------------------------------- the demo


def test_demo_runs_end_to_end_and_writes_png(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--dataset",
            "gaussians",
            "--epochs",
            "3",
            "--width",
            "8",
            "--depth",
            "1",
            "--grid",
            "0:0.2:0.1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "flooding" in printed and "test acc" in printed
    png = (out / "floodax_demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    results = json.loads((out / "floodax_demo.json").read_text())
    assert results["sweep"]["flood_levels"] == [0.0, 0.1, 0.2]
    assert results["flooding"]["flood_level"] in (0.0, 0.1, 0.2)
    assert 0.0 <= results["baseline"]["test_accuracy"] <= 1.0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--grid", "abc"], "is not a grid"),
        (["--grid", "0:0.5:-1"], "is not a grid"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--label-noise", "2"], "--label-noise must lie in"),
        (["--flood-level", "-0.1"], "--flood-level must be non-negative"),
        (["--dataset", "mnist"], "invalid choice: 'mnist'"),
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
    ascended = 0
    for _ in range(40):
        grads = jax.grad(lambda q: floodax.flooded(loss_fn(q), b))(state.params)
        state = state.apply_gradients(grads=grads)
        loss, raw = jax.value_and_grad(loss_fn)(p)
        ascended += int(loss < b)
        updates, opt_state = tx.update(raw, opt_state, p, value=loss)
        p = optax.apply_updates(p, updates)
        jax.tree.map(
            lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6),
            state.params,
            p,
        )
    assert ascended > 0
