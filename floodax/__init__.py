"""floodax: flooding, iFlood, alternating descent/ascent and gradient-norm
penalties for JAX and optax."""

from floodax._accumulation import MultiStepsState as MultiStepsState
from floodax._accumulation import multi_steps as multi_steps
from floodax._adaflood import adaflood_levels as adaflood_levels
from floodax._alternate import AlternateState as AlternateState
from floodax._alternate import alternate as alternate
from floodax._diagnostics import HessianEigenvalues as HessianEigenvalues
from floodax._diagnostics import LossLandscape as LossLandscape
from floodax._diagnostics import (
    filter_normalized_direction as filter_normalized_direction,
)
from floodax._diagnostics import grad_norm as grad_norm
from floodax._diagnostics import hessian_eigenvalues as hessian_eigenvalues
from floodax._diagnostics import loss_landscape as loss_landscape
from floodax._flooding import FloodState as FloodState
from floodax._flooding import class_levels as class_levels
from floodax._flooding import flood as flood
from floodax._flooding import flooded as flooded
from floodax._flooding import iflooded as iflooded
from floodax._m_sharpness import m_sharpness as m_sharpness
from floodax._penalty import add_grad_norm_penalty as add_grad_norm_penalty
from floodax._penalty import grad_norm_penalty as grad_norm_penalty
from floodax._sam import SAMState as SAMState
from floodax._sam import gsam as gsam
from floodax._sam import sam as sam
from floodax._softad import softad as softad
from floodax._stats import flood_stats as flood_stats
from floodax._suggest import FloodLevelSuggestion as FloodLevelSuggestion
from floodax._suggest import suggest_flood_level as suggest_flood_level
from floodax._theory import EquivalenceReport as EquivalenceReport
from floodax._theory import EquivalentPenalty as EquivalentPenalty
from floodax._theory import FlowReport as FlowReport
from floodax._theory import OrderReport as OrderReport
from floodax._theory import check_equivalence as check_equivalence
from floodax._theory import check_modified_flow as check_modified_flow
from floodax._theory import equivalence_order as equivalence_order
from floodax._theory import equivalent_penalty as equivalent_penalty
from floodax._theory import flooding_penalty_rate as flooding_penalty_rate
from floodax._theory import flow_order as flow_order
from floodax._theory import flow_penalty as flow_penalty
from floodax._theory import implicit_penalty as implicit_penalty

__version__ = "0.2.0"

__all__ = [
    "AlternateState",
    "EquivalenceReport",
    "EquivalentPenalty",
    "FloodLevelSuggestion",
    "FloodState",
    "FlowReport",
    "HessianEigenvalues",
    "LossLandscape",
    "MultiStepsState",
    "OrderReport",
    "SAMState",
    "adaflood_levels",
    "add_grad_norm_penalty",
    "alternate",
    "check_equivalence",
    "check_modified_flow",
    "class_levels",
    "equivalence_order",
    "equivalent_penalty",
    "filter_normalized_direction",
    "flood",
    "flood_stats",
    "flooded",
    "flooding_penalty_rate",
    "flow_order",
    "flow_penalty",
    "grad_norm",
    "grad_norm_penalty",
    "gsam",
    "hessian_eigenvalues",
    "iflooded",
    "implicit_penalty",
    "loss_landscape",
    "m_sharpness",
    "multi_steps",
    "sam",
    "softad",
    "suggest_flood_level",
]
