"""floodax: flooding, iFlood, alternating descent/ascent and gradient-norm
penalties for JAX and optax."""

from floodax._flooding import FloodState as FloodState
from floodax._flooding import flood as flood
from floodax._flooding import flooded as flooded
from floodax._flooding import iflooded as iflooded

__version__ = "0.1.0"

__all__ = [
    "FloodState",
    "flood",
    "flooded",
    "iflooded",
]
