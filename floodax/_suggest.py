"""A starting flood level from the learning curves of an unflooded run."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from floodax._validation import check_int, check_real


class FloodLevelSuggestion(NamedTuple):
    """What :func:`suggest_flood_level` found.

    Attributes:
      flood_level: ``fraction`` × the training loss at ``epoch``.
      epoch: the epoch where the validation loss stops improving: the first
        epoch not beaten during the next ``patience`` epochs (it rises or
        stays flat after it); the last epoch if there is none.
      validation_loss_rises: whether such an epoch was found before the end;
        if not, the run shows no overfitting and flooding may not be needed.
        A curve that is flat from the start counts as stopping at epoch 0.

    Examples:
      >>> import floodax
      >>> s = floodax.suggest_flood_level([0.9, 0.5, 0.3, 0.2, 0.1],
      ...                                 [0.8, 0.6, 0.65, 0.7, 0.8])
      >>> print(s.epoch, s.flood_level, s.validation_loss_rises)
      1 0.25 True
    """

    flood_level: float
    epoch: int
    validation_loss_rises: bool


def _is_real(value) -> bool:
    """Whether ``value`` is a real number or an array of them (not bool)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    )


def _curve(name: str, values) -> np.ndarray:
    """``values`` as a float64 array, or a ``TypeError`` naming ``name`` when
    they are not real numbers (strings read from a log, ``None``, booleans,
    complex numbers)."""
    if isinstance(values, np.ndarray | jax.Array) and values.dtype.kind not in "USO":
        bad = None if _is_real(values) else f"an array of dtype {values.dtype}"
    else:  # each element's type, to name the first that is not a number
        wrong = [v for v in np.asarray(values, dtype=object).ravel() if not _is_real(v)]
        if wrong and isinstance(wrong[0], str):
            raise TypeError(
                f"`{name}` must hold one real number per epoch, got the string "
                f"{wrong[0]!r}. Convert the strings first, e.g. "
                f"`{name}=[float(v) for v in {name}]`."
            )
        bad = f"{type(wrong[0]).__name__} {wrong[0]!r}" if wrong else None
    if bad is not None:
        raise TypeError(
            f"`{name}` must hold one real number per epoch, got {bad}. Pass each "
            "epoch's loss as an int or float (or a real NumPy/JAX array)."
        )
    return np.asarray(values, np.float64)


def suggest_flood_level(
    train_losses,
    val_losses,
    *,
    fraction: float = 0.5,
    patience: int = 3,
) -> FloodLevelSuggestion:
    """The practitioners' rule of thumb for a first flood level.

    Train without flooding, find the epoch where the validation loss starts
    to rise, and take about half the training loss at that epoch (or lower)
    as the flood level: a starting point for a sweep such as
    ``floodax.experiments.sweep_flood_levels``, not a replacement for it.

    The rise is the first epoch whose validation loss is not beaten during
    the next ``patience`` epochs, so that a single noisy uptick does not
    count.

    Args:
      train_losses: per-epoch training losses of an unflooded run.
      val_losses: per-epoch validation losses of the same run.
      fraction: the share of that training loss to use, in ``(0, 1]``.
      patience: how many later epochs must fail to beat the minimum.

    Returns:
      A :class:`FloodLevelSuggestion`.

    Raises:
      ValueError: the curves differ in length, are empty, not 1-D, not
        finite or (training) negative, or ``fraction``/``patience`` are out
        of range.
      TypeError: the curves hold something other than real numbers (e.g.
        strings), ``fraction`` is not a real number or ``patience`` not an
        integer.

    Examples:
      >>> import numpy as np, floodax
      >>> epochs = np.arange(50)
      >>> train = 1.0 * np.exp(-epochs / 10)
      >>> val = 0.8 * np.exp(-epochs / 10) + 0.01 * np.maximum(epochs - 20, 0)
      >>> s = floodax.suggest_flood_level(train, val)
      >>> print(s.epoch, round(s.flood_level, 4), s.validation_loss_rises)
      21 0.0612 True
    """
    train = _curve("train_losses", train_losses)
    val = _curve("val_losses", val_losses)
    if train.ndim != 1 or val.ndim != 1 or train.shape != val.shape or len(train) == 0:
        raise ValueError(
            "`train_losses` and `val_losses` must be 1-D per-epoch curves of the "
            f"same non-zero length, got shapes {train.shape} and {val.shape}."
        )
    if not (np.all(np.isfinite(train)) and np.all(np.isfinite(val))):
        raise ValueError("`train_losses` and `val_losses` must be finite.")
    if np.any(train < 0):
        raise ValueError(
            "`train_losses` must be non-negative, got a minimum of "
            f"{train.min():g}: a flood level is a non-negative loss value. "
            "Shift a loss that can go negative (e.g. a log-density) so that its "
            "minimum is 0 before flooding it."
        )
    fraction = check_real("fraction", fraction, low=0.0, low_open=True, high=1.0)
    check_int("patience", patience, minimum=1)
    for epoch in range(len(val) - patience):
        if np.all(val[epoch + 1 : epoch + 1 + patience] >= val[epoch]):
            return FloodLevelSuggestion(float(fraction * train[epoch]), epoch, True)
    last = len(val) - 1
    return FloodLevelSuggestion(float(fraction * train[last]), last, False)
