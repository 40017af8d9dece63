"""The flooding paper's synthetic datasets and scikit-learn's digits.

Every dataset is generated deterministically from a seed or ships inside an
installed package; nothing is downloaded. Labels are integer classes: for
the binary datasets, class 1 is the paper's label +1 and class 0 is −1.

Reference:
  Ishida, Yamane, Sakai, Niu and Sugiyama, "Do We Need Zero Training Loss
  After Achieving Zero Training Error?", ICML 2020 (Section 4.1 and its
  public code describe Sinusoid2d, Two Gaussians and Spiral).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from floodax._names import DATASETS
from floodax._names import SYNTHETIC_DATASETS as SYNTHETIC


class Dataset(NamedTuple):
    """Train, validation and test splits of one classification task.

    Attributes:
      x_train, y_train: float32 features ``(n, d)`` and int32 labels ``(n,)``;
        labels may carry the requested symmetric noise.
      x_val, y_val: the validation split, noisy like the training split (the
        paper selects the flood level on noisy validation data).
      x_test, y_test: a clean test split.
      num_classes: number of classes.
      name: the dataset's name.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


def sinusoid2d_label(x: np.ndarray) -> np.ndarray:
    """The paper's label ``sign(1.5·x₀ + sin(1.5·x₁))`` in ``{−1, +1}``."""
    return np.where(1.5 * x[:, 0] + np.sin(1.5 * x[:, 1]) >= 0, 1, -1)


def sinusoid2d_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` points uniform in the disc of radius 2: ``2·(u, v)/‖(s, t, u, v)‖``.

    For a standard normal vector in 4 dimensions, the normalised last two
    coordinates are uniform in the unit disc.
    """
    z = rng.standard_normal((n, 4))
    return 2.0 * z[:, 2:] / np.linalg.norm(z, axis=1, keepdims=True)


def spiral_points(n_per_class: int, noise: float, rng: np.random.Generator):
    """Two interleaved spirals: ``a·(cos a, sin a)`` for +1 and
    ``(a + π)·(cos a, sin a)`` for −1, ``a`` evenly spaced on ``[0, 4π]``."""
    a = np.linspace(0.0, 4 * np.pi, n_per_class)
    direction = np.stack([np.cos(a), np.sin(a)], axis=1)
    x = np.concatenate([a[:, None] * direction, (a + np.pi)[:, None] * direction])
    y = np.concatenate([np.ones(n_per_class, int), -np.ones(n_per_class, int)])
    return x + noise * rng.standard_normal(x.shape), y


def _balanced_sinusoid(rng: np.random.Generator, n_per_class: int):
    """Samples the disc until each class has ``n_per_class`` points."""
    xs, ys = [], []
    counts = {1: 0, -1: 0}
    while min(counts.values()) < n_per_class:
        x = sinusoid2d_points(rng, 4 * n_per_class)
        y = sinusoid2d_label(x)
        for label in (1, -1):
            take = x[y == label][: n_per_class - counts[label]]
            counts[label] += len(take)
            xs.append(take)
            ys.append(np.full(len(take), label))
    return np.concatenate(xs), np.concatenate(ys)


def _gaussians(rng: np.random.Generator, n_per_class: int, dim: int = 10):
    """Class +1 around the all-ones vector, −1 around 0; identity covariance."""
    pos = rng.standard_normal((n_per_class, dim)) + 1.0
    neg = rng.standard_normal((n_per_class, dim))
    y = np.concatenate([np.ones(n_per_class, int), -np.ones(n_per_class, int)])
    return np.concatenate([pos, neg]), y


def flip_labels(
    labels: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Symmetric label noise: exactly ``round(fraction·n)`` labels changed,
    each to a uniformly drawn *other* class."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`label_noise` must lie in [0, 1], got {fraction}.")
    labels = labels.copy()
    n_flip = round(fraction * len(labels))
    idx = rng.choice(len(labels), size=n_flip, replace=False)
    shift = rng.integers(1, num_classes, size=n_flip)
    labels[idx] = (labels[idx] + shift) % num_classes
    return labels


def _to_classes(y_pm: np.ndarray) -> np.ndarray:
    return (y_pm > 0).astype(np.int32)


def _shuffled(rng, x, y):
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order].astype(np.int32)


def make_synthetic(
    name: str,
    *,
    seed: int = 0,
    n_train_per_class: int = 100,
    n_val_per_class: int = 100,
    n_test_per_class: int = 1000,
    label_noise: float = 0.0,
    spiral_noise: float = 0.0,
) -> Dataset:
    """One of the paper's synthetic datasets, with symmetric label noise.

    Args:
      name: ``"sinusoid2d"``, ``"gaussians"`` (dimension 10) or ``"spiral"``.
      seed: everything (points, noise, shuffling) follows from it.
      n_train_per_class, n_val_per_class, n_test_per_class: split sizes
        (paper: 100, 100 and a large clean test set).
      label_noise: fraction of training and validation labels flipped.
      spiral_noise: standard deviation of Gaussian input noise (spiral only).

    Returns:
      A :class:`Dataset` with two classes.

    Examples:
      >>> from floodax.experiments import make_synthetic
      >>> data = make_synthetic("sinusoid2d", seed=0, label_noise=0.1)
      >>> print(data.x_train.shape, data.y_train.mean(), data.x_test.shape)
      (200, 2) 0.5 (2000, 2)
    """
    if name not in SYNTHETIC:
        raise ValueError(f"`name` must be one of {SYNTHETIC}, got {name!r}.")
    for arg, value in (
        ("n_train_per_class", n_train_per_class),
        ("n_val_per_class", n_val_per_class),
        ("n_test_per_class", n_test_per_class),
    ):
        if value < 1:
            raise ValueError(f"`{arg}` must be at least 1, got {value}.")
    rng = np.random.default_rng(seed)
    sizes = (n_train_per_class, n_val_per_class, n_test_per_class)
    splits = []
    for n in sizes:
        if name == "sinusoid2d":
            x, y = _balanced_sinusoid(rng, n)
        elif name == "gaussians":
            x, y = _gaussians(rng, n)
        else:
            x, y = spiral_points(n, spiral_noise, rng)
        splits.append(_shuffled(rng, x, _to_classes(y)))
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = splits
    y_tr = flip_labels(y_tr, label_noise, 2, rng)
    y_va = flip_labels(y_va, label_noise, 2, rng)
    return Dataset(x_tr, y_tr, x_va, y_va, x_te, y_te, 2, name)


def load_digits_dataset(
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.3,
    label_noise: float = 0.0,
) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes).

    The data ships inside scikit-learn, so nothing is downloaded. Pixels are
    scaled to ``[0, 1]``; the split is stratified and seeded.

    Examples:
      >>> from floodax.experiments import load_digits_dataset
      >>> data = load_digits_dataset(seed=0)
      >>> print(data.x_train.shape[1], data.num_classes, data.x_train.max())
      64 10 1.0
    """
    from sklearn.datasets import load_digits

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1) or (
        val_fraction + test_fraction >= 1
    ):
        raise ValueError(
            "`val_fraction` and `test_fraction` must be in (0, 1) and sum to "
            f"less than 1, got {val_fraction} and {test_fraction}."
        )
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = round(test_fraction * len(idx))
        n_val = round(val_fraction * len(idx))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
    return Dataset(
        x[train],
        flip_labels(y[train], label_noise, 10, rng),
        x[val],
        flip_labels(y[val], label_noise, 10, rng),
        x[test],
        y[test],
        10,
        "digits",
    )


def load_dataset(
    name: str, *, seed: int = 0, label_noise: float = 0.0, **kwargs
) -> Dataset:
    """Any dataset by name: one of :data:`DATASETS`."""
    loaders: dict[str, Callable[..., Dataset]] = {
        "digits": load_digits_dataset,
        **{n: (lambda n=n, **kw: make_synthetic(n, **kw)) for n in SYNTHETIC},
    }
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}.")
    return loaders[name](seed=seed, label_noise=label_noise, **kwargs)
