"""The error for an optional dependency that is missing."""

from __future__ import annotations


def missing_flax(module: str) -> ImportError:
    """The ``ImportError`` that ``module`` (``floodax.linen``, ``floodax.nnx``)
    raises, chained from the original, when Flax cannot be imported; it names
    the extra that installs Flax (pyproject.toml's ``demo``)."""
    return ImportError(
        f"{module} needs Flax, which could not be imported. Install floodax with "
        'its demo extra (from a checkout: `pip install -e ".[demo]"`) or Flax '
        'itself (`pip install "flax>=0.12.0"`).'
    )
