"""The flooding paper's synthetic datasets and scikit-learn's digits.

Every dataset is generated deterministically from a seed or ships inside an
installed package; nothing is downloaded. Labels are integer classes.

The synthetic generators follow the authors' public code
(takashiishida/flooding, ``synthetic/sinusoid.py``, ``synthetic/gaussian.py``,
``synthetic/spiral.py``, called from ``synthetic/demo_synth.py`` with the
defaults of ``MLproject``) draw for draw: with the same seed they produce the
same points, labels and flipped labels, bit for bit, as the authors' classes
after ``np.random.seed(seed)`` (``tests/test_experiments.py`` checks values
recorded from the authors' code).

Reference:
  Ishida, Yamane, Sakai, Niu and Sugiyama, "Do We Need Zero Training Loss
  After Achieving Zero Training Error?", ICML 2020.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from floodax._names import DATASETS
from floodax._names import SYNTHETIC_DATASETS as SYNTHETIC
from floodax._validation import check_int, check_real


class Dataset(NamedTuple):
    """Train, validation and test splits of one classification task.

    Attributes:
      x_train, y_train: float32 features ``(n, d)`` and int32 labels ``(n,)``;
        the labels carry the requested label noise.
      x_val, y_val: the validation split, with label noise like training.
      x_test, y_test: the test split, with clean labels.
      num_classes: number of classes.
      name: the dataset's name.
      y_train_clean, y_val_clean: the training and validation labels before
        the noise was added (the authors' code keeps both, and its demo
        selects the flood level on the clean validation accuracy).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    y_train_clean: np.ndarray
    y_val_clean: np.ndarray


# The authors' split sizes (MLproject: training_samples = validation_samples
# = 100). Sinusoid2d takes them as totals with classes as they fall, and
# tests on 20,000 points; Two Gaussians and Spiral take them per class, and
# test on 10,000 per class.
DEFAULT_SIZES = {
    "sinusoid2d": (100, 100, 20_000),
    "gaussians": (200, 200, 20_000),
    "spiral": (200, 200, 20_000),
}


def sinusoid2d_label(x: np.ndarray) -> np.ndarray:
    """The paper's label ``sign(1.5·x₀ + sin(1.5·x₁))`` in ``{−1, 0, +1}``
    (0 only on the boundary, a set of measure zero)."""
    return np.sign(1.5 * x[:, 0] + np.sin(1.5 * x[:, 1])).astype(np.int32)


def _flip(y_pm: np.ndarray, label_noise: float, rng: np.random.RandomState):
    """The authors' symmetric noise: ``int(n·noise)`` labels chosen by a
    permutation are negated (no draw at all when the noise is 0)."""
    y = y_pm.copy()
    if label_noise > 0:
        n = len(y)
        y[rng.permutation(n)[: int(n * label_noise)]] *= -1
    return y


def _sinusoid2d(rng: np.random.RandomState, n: int):
    # Uniform in the disc of radius 2: for a standard normal vector in four
    # dimensions, the normalised last two coordinates are uniform in the
    # unit disc (sinusoid.py, Sinusoid2dimDataNumpy.sub_makeData).
    s, t, u, v = (rng.randn(n) for _ in range(4))
    norm = (s**2 + t**2 + u**2 + v**2) ** 0.5
    x = 2 * np.c_[u / norm, v / norm]
    return x, sinusoid2d_label(x)


def _gaussians(
    rng: np.random.RandomState, n: int, mean_distance: float, dimension: int
):
    # gaussian.py, GaussianDataNumpy.sub_makeData with mu_pos = 0 and
    # mu_neg = mean_distance·1 (demo_synth.py): the first half, around 0,
    # is labelled −1; the second, around mean_distance·1, +1.
    half = n // 2
    cov = np.identity(dimension)
    x_first = rng.multivariate_normal(np.zeros(dimension), cov, half)
    x_second = rng.multivariate_normal(np.ones(dimension) * mean_distance, cov, half)
    return np.r_[x_first, x_second], np.r_[-np.ones(half), np.ones(half)]


def _spiral(rng: np.random.RandomState, n: int, noise: float):
    # spiral.py, SpiralDataNumpy.sub_makeData: +1 on a·(cos a, sin a), −1 on
    # (a + π)·(cos a, sin a), a evenly spaced on [0, 4π], plus Gaussian
    # input noise (drawn even when its scale is 0, as the authors do).
    half = n // 2
    a = np.linspace(0, 4 * np.pi, half)
    y = np.r_[np.ones(half), -np.ones(half)]
    x = np.zeros((n, 2))
    x[y == 1, 0] = a * np.cos(a) + noise * rng.randn(half)
    x[y == 1, 1] = a * np.sin(a) + noise * rng.randn(half)
    x[y == -1, 0] = (a + np.pi) * np.cos(a) + noise * rng.randn(half)
    x[y == -1, 1] = (a + np.pi) * np.sin(a) + noise * rng.randn(half)
    return x, y


def spiral_points(n_per_class: int, noise: float, rng: np.random.RandomState):
    """Two interleaved spirals, ``n_per_class`` points each: ``a·(cos a, sin a)``
    labelled +1 and ``(a + π)·(cos a, sin a)`` labelled −1."""
    return _spiral(rng, 2 * n_per_class, noise)


def make_synthetic(
    name: str,
    *,
    seed: int = 0,
    label_noise: float = 0.0,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    mean_distance: float = 1.0,
    dimension: int = 10,
    spiral_noise: float = 0.0,
) -> Dataset:
    """One of the paper's synthetic datasets, as the authors' code makes it.

    * ``sinusoid2d``: 100 training, 100 validation and 20,000 test points,
      the classes as they fall;
    * ``gaussians`` (dimension 10) and ``spiral``: 200, 200 and 20,000 points,
      half of each class (the authors give the sizes per class).

    Sinusoid2d draws points uniformly in the disc of radius 2 and labels them
    ``sign(1.5·x₀ + sin(1.5·x₁))``; Two Gaussians places class 0 around the
    origin and class 1 around ``mean_distance·(1, …, 1)`` with identity
    covariance; Spiral interleaves two spirals. Label noise flips exactly
    ``int(n·label_noise)`` labels of the training and of the validation split
    (the authors also draw noisy test labels, but report clean test
    accuracy; the test split here is clean).

    With the same ``seed``, the arrays equal the authors' generators' after
    ``np.random.seed(seed)`` bit for bit (float32 features, as their
    ``makeData`` returns): the draws come from NumPy's legacy
    ``RandomState`` in the authors' order.

    Args:
      name: ``"sinusoid2d"``, ``"gaussians"`` or ``"spiral"``.
      seed: everything (points, label noise) follows from it.
      label_noise: fraction of training and validation labels flipped.
      n_train, n_val, n_test: split sizes, in points (even for the two-class
        datasets with equal halves); the authors' by default (listed above).
      mean_distance: Two Gaussians: the second class's mean is
        ``mean_distance·(1, …, 1)`` (the authors' ``negative_gaussian_mean``).
      dimension: Two Gaussians' dimension (the authors': 10).
      spiral_noise: Spiral's input noise scale (the authors' ``noise_level``,
        0 in ``MLproject``).

    Returns:
      A :class:`Dataset` with two classes; class 1 is the paper's label +1.

    Examples:
      >>> from floodax.experiments import make_synthetic
      >>> data = make_synthetic("sinusoid2d", seed=0, label_noise=0.1)
      >>> print(data.x_train.shape, data.x_test.shape)
      (100, 2) (20000, 2)
      >>> print((data.y_train != data.y_train_clean).sum())  # int(100·0.1)
      10
    """
    if name not in SYNTHETIC:
        raise ValueError(f"`name` must be one of {SYNTHETIC}, got {name!r}.")
    check_int("seed", seed, minimum=0)
    check_real("label_noise", label_noise, low=0.0, high=1.0)
    defaults = DEFAULT_SIZES[name]
    sizes = []
    for arg, value, default in zip(
        ("n_train", "n_val", "n_test"), (n_train, n_val, n_test), defaults, strict=True
    ):
        value = default if value is None else value
        check_int(arg, value, minimum=2)
        if name != "sinusoid2d" and value % 2:
            raise ValueError(
                f"`{arg}` must be even for {name!r}: its two classes have half "
                f"the points each; got {value}."
            )
        sizes.append(value)
    check_real("mean_distance", mean_distance)
    check_int("dimension", dimension, minimum=1)
    check_real("spiral_noise", spiral_noise, low=0.0)
    rng = np.random.RandomState(seed)
    splits = []
    for n in sizes:
        if name == "sinusoid2d":
            x, y = _sinusoid2d(rng, n)
        elif name == "gaussians":
            x, y = _gaussians(rng, n, mean_distance, dimension)
        else:
            x, y = _spiral(rng, n, spiral_noise)
        splits.append((x, y, _flip(y, label_noise, rng)))

    def classes(y_pm: np.ndarray) -> np.ndarray:
        return ((y_pm + 1) // 2).astype(np.int32)

    (x_tr, y_tr, y_tr_noisy), (x_va, y_va, y_va_noisy), (x_te, y_te, _) = splits
    return Dataset(
        x_train=x_tr.astype(np.float32),
        y_train=classes(y_tr_noisy),
        x_val=x_va.astype(np.float32),
        y_val=classes(y_va_noisy),
        x_test=x_te.astype(np.float32),
        y_test=classes(y_te),
        num_classes=2,
        name=name,
        y_train_clean=classes(y_tr),
        y_val_clean=classes(y_va),
    )


def flip_labels(
    labels: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Symmetric noise for ``num_classes`` classes: ``int(fraction·n)``
    labels changed, each to a uniformly drawn *other* class."""
    check_real("label_noise", fraction, low=0.0, high=1.0)
    labels = labels.copy()
    n_flip = int(fraction * len(labels))
    idx = rng.choice(len(labels), size=n_flip, replace=False)
    shift = rng.integers(1, num_classes, size=n_flip)
    labels[idx] = (labels[idx] + shift) % num_classes
    return labels


def load_digits_dataset(
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.3,
    label_noise: float = 0.0,
) -> Dataset:
    """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes).

    Not in the flooding paper: a small real dataset that ships inside
    scikit-learn, so nothing is downloaded. Pixels are scaled to ``[0, 1]``;
    the split is stratified and seeded; label noise moves ``int(n·noise)``
    training and validation labels each to another class, drawn uniformly.

    Examples:
      >>> from floodax.experiments import load_digits_dataset
      >>> data = load_digits_dataset(seed=0)
      >>> print(data.x_train.shape[1], data.num_classes, data.x_train.max())
      64 10 1.0
    """
    from sklearn.datasets import load_digits

    check_int("seed", seed, minimum=0)
    check_real("label_noise", label_noise, low=0.0, high=1.0)
    check_real("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True)
    check_real("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True)
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            "`val_fraction` and `test_fraction` must sum to less than 1, got "
            f"{val_fraction} and {test_fraction}."
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
        x_train=x[train],
        y_train=flip_labels(y[train], label_noise, 10, rng),
        x_val=x[val],
        y_val=flip_labels(y[val], label_noise, 10, rng),
        x_test=x[test],
        y_test=y[test],
        num_classes=10,
        name="digits",
        y_train_clean=y[train],
        y_val_clean=y[val],
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
