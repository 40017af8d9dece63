"""floodax: flooding, iFlood, alternating descent/ascent and gradient-norm
penalties for JAX and optax."""

from floodax._accumulation import MultiStepsState as MultiStepsState
from floodax._accumulation import multi_steps as multi_steps
from floodax._adaflood import adaflood_levels as adaflood_levels
from floodax._alternate import AlternateState as AlternateState
from floodax._alternate import alternate as alternate
from floodax._flooding import FloodState as FloodState
from floodax._flooding import flood as flood
from floodax._flooding import flooded as flooded
from floodax._flooding import iflooded as iflooded
from floodax._penalty import add_grad_norm_penalty as add_grad_norm_penalty
from floodax._penalty import grad_norm_penalty as grad_norm_penalty
from floodax._suggest import FloodLevelSuggestion as FloodLevelSuggestion
from floodax._suggest import suggest_flood_level as suggest_flood_level
from floodax._theory import EquivalenceReport as EquivalenceReport
from floodax._theory import EquivalentPenalty as EquivalentPenalty
from floodax._theory import OrderReport as OrderReport
from floodax._theory import check_equivalence as check_equivalence
from floodax._theory import equivalence_order as equivalence_order
from floodax._theory import equivalent_penalty as equivalent_penalty
from floodax._theory import flooding_penalty_rate as flooding_penalty_rate

__version__ = "0.1.0"

__all__ = [
    "AlternateState",
    "EquivalenceReport",
    "EquivalentPenalty",
    "FloodLevelSuggestion",
    "FloodState",
    "MultiStepsState",
    "OrderReport",
    "adaflood_levels",
    "add_grad_norm_penalty",
    "alternate",
    "check_equivalence",
    "equivalence_order",
    "equivalent_penalty",
    "flood",
    "flooded",
    "flooding_penalty_rate",
    "grad_norm_penalty",
    "iflooded",
    "multi_steps",
    "suggest_flood_level",
]
