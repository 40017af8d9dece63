"""Names the command line needs without importing the experiments extra."""

SYNTHETIC_DATASETS = ("sinusoid2d", "gaussians", "spiral")
DATASETS = (*SYNTHETIC_DATASETS, "digits")
