"""The family as one registry: each method from one traced hyperparameter.

Every entry of :data:`FAMILY` says how its method trains from one number ``h``
and which values of ``h`` to try: either a training objective of the
per-example losses (ERM, iFlood, AdaFlood, SoftAD) or an optax transformation
injected with ``optax.inject_hyperparams`` (flooding, SAM, ASAM, GSAM, GNP,
the explicit penalty, the alternating scheme and its control, ERM with the
learning rate swept over the same grid). ``h`` is array state in both
cases, never static, so one compiled epoch trains every value of a grid, one
after another or all at once under ``jax.vmap``
(:func:`floodax.experiments.sweep_flood_levels`, which takes a method's name
as ``TrainConfig(method=...)``). Adding a method is adding an entry.

The grids of SoftAD, iFlood, flooding and SAM are those of SoftAD's authors
(github.com/feedbackward/bdd-flood, ``bdd-flood/run_benchmarks.py``:
``thetas`` for SoftAD and iFlood, ``flood_levels = np.linspace(0.01, 1.0, 10)``,
``radius_values``); the others are floodax's choices, written beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import floodax

SOFTAD_GRID = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75)
"""SoftAD's (and iFlood's) θ: bdd-flood ``run_benchmarks.py``, ``thetas``."""
FLOOD_GRID = tuple(round(float(b), 2) for b in np.linspace(0.01, 1.0, 10))
"""Flooding's b: bdd-flood ``run_benchmarks.py``, ``np.linspace(0.01, 1.0, 10)``."""
SAM_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""SAM's ρ: bdd-flood ``run_benchmarks.py``, ``radius_values``."""
GNP_RADIUS = 0.05
"""GNP's finite-difference radius ``r``: SAM's default radius in bdd-flood
``run_benchmarks.py`` (``paras_mth_defaults["radius"]``)."""
GSAM_ALPHA = 0.1
"""GSAM's ``α``, held fixed while ``ρ`` is swept (floodax's choice)."""
ASCENT_RATIO = 10.0
"""The alternating scheme's ``ε1 = 10·ε2``, the ratio of the BERT runs'
descent rate 1e-5 and ascent rate 1e-6."""
RATE_GRID = (0.02, 0.05, 0.1, 0.2, 0.3)
"""The alternating scheme's ε1 (floodax's, around the protocol's SGD rate
0.1), and the rate of its control, ERM with the rate swept."""


def _mean(losses: jax.Array, level: jax.Array, aux: jax.Array | None) -> jax.Array:
    del level, aux
    return losses.mean()


def _no_ascent(losses, value, level, aux) -> jax.Array:
    del losses, value, level, aux
    return jnp.float32(0.0)


def _batch_ascent(losses, value, level, aux) -> jax.Array:
    # The comparison flood() makes: value < b, in the loss's dtype.
    del losses, aux
    return (value < level.astype(value.dtype)).astype(jnp.float32)


def _example_ascent(losses, value, level, aux) -> jax.Array:
    del value, aux
    return jnp.mean(losses < level).astype(jnp.float32)


def _adaflood_levels(level: jax.Array, aux: jax.Array) -> jax.Array:
    return floodax.adaflood_levels(aux, gamma=level)


def _iflood(losses, level, aux) -> jax.Array:
    del aux
    return floodax.iflooded(losses, level)


def _adaflood(losses, level, aux) -> jax.Array:
    return floodax.iflooded(losses, _adaflood_levels(level, aux))


def _adaflood_ascent(losses, value, level, aux) -> jax.Array:
    del value
    return jnp.mean(losses < _adaflood_levels(level, aux)).astype(jnp.float32)


def _softad(losses, level, aux) -> jax.Array:
    del aux
    return floodax.softad(losses, level)


def _asam(radius) -> optax.GradientTransformationExtraArgs:
    # eps=1e-16: SamsungLabs/ASAM asam.py adds it to the norm.
    return floodax.sam(radius, adaptive=True, eps=1e-16)


def _gsam(radius) -> optax.GradientTransformationExtraArgs:
    return floodax.gsam(radius, GSAM_ALPHA)


def _gnp(alpha) -> optax.GradientTransformationExtraArgs:
    # Zhao et al.'s (1 − α)·g + α·∇L(θ + r·ĝ): λ = α·r with power 1.
    return floodax.add_grad_norm_penalty(
        alpha * GNP_RADIUS, power=1, method="finite_difference", radius=GNP_RADIUS
    )


def _alternating(descent_rate) -> optax.GradientTransformationExtraArgs:
    return floodax.alternate(descent_rate, descent_rate / ASCENT_RATIO)


def _rate(learning_rate) -> optax.GradientTransformation:
    # After optax.trace(momentum): optax.sgd(learning_rate, momentum).
    return optax.scale(-learning_rate)


class Method(NamedTuple):
    """One member of the family, trained from one hyperparameter ``h``.

    Attributes:
      name: the registry key (``TrainConfig(method=name)``).
      label: the name in tables.
      symbol: ``h``'s symbol in tables (``"b"``, ``"θ"``, ``"ρ"``).
      argument: ``h``'s argument name, in error messages and, for a
        transformation, the keyword ``optax.inject_hyperparams`` injects.
      grid: the values of ``h`` a benchmark sweeps.
      objective: ``objective(losses, h, aux) -> loss``, what is
        differentiated, from the per-example losses (``aux``: AdaFlood's
        held-out losses of the batch, else ``None``); the mean by default.
      transform: ``transform(h) -> GradientTransformationExtraArgs``, or
        ``None``; injected with ``optax.inject_hyperparams`` and updated with
        ``value=`` the objective and ``value_fn=`` it as a function of the
        parameters (:func:`floodax.nnx.value_and_grad`).
      final: whether ``transform`` is the chain's final scaling, after the
        optimizer's preconditioner in place of ``-lr`` (the alternating
        scheme), rather than a gradient transform before the optimizer.
      needs_aux: whether it needs AdaFlood's held-out losses.
      upper: ``h`` must lie below it (AdaFlood's ``γ < 1``), or ``None``.
      ascent: ``ascent(losses, value, h, aux)``, the step's share of ascent
        (flooding: 1 or 0; per-example methods: the share of examples below
        their level), for the records; 0 by default.
      value_fn: whether the transformation takes ``value_fn`` (SAM, ASAM,
        GSAM, GNP, the penalty): the step then builds it with
        :func:`floodax.nnx.value_and_grad`. The alternating scheme is not
        given one: with one, ``floodax.alternate`` takes both steps of a pair
        within one call; without, the descent and the ascent step fall on
        consecutive mini-batches, as in the scheme.
      cost: gradients per step (SAM's two, the exact penalty's three),
        for run-time estimates.
      reference: where its form and grid come from.
      control: the entry that tells what this one adds from what comes with
        it, or ``None``: the alternating scheme's is ERM with its ε1 grid as
        the learning rate, since its choice of ε1 is also a choice of step
        size. Tables give the paired difference against it.

    Examples:
      A new member is one entry; here flooding of the summed loss:

      >>> import jax.numpy as jnp
      >>> from floodax.experiments import FAMILY, Method, TrainConfig
      >>> def flooded_sum(losses, b, aux):
      ...     return jnp.abs(losses.sum() - b) + b
      >>> summed = Method("summed", "flooded sum", "b", "flood_level", (1.0, 2.0),
      ...                 objective=flooded_sum)
      >>> print(TrainConfig(method=summed).method.label, "flood" in FAMILY)
      flooded sum True
    """

    name: str
    label: str
    symbol: str
    argument: str
    grid: tuple[float, ...]
    objective: Callable[..., jax.Array] = _mean
    transform: Callable[..., optax.GradientTransformationExtraArgs] | None = None
    final: bool = False
    needs_aux: bool = False
    upper: float | None = None
    ascent: Callable[..., jax.Array] = _no_ascent
    value_fn: bool = False
    cost: float = 1.0
    reference: str = ""
    control: str | None = None


FAMILY: dict[str, Method] = {
    m.name: m
    for m in (
        Method("erm", "ERM", "–", "level", (0.0,), reference="plain training"),
        Method(
            "flood",
            "flooding",
            "b",
            "flood_level",
            FLOOD_GRID,
            transform=floodax.flood,
            ascent=_batch_ascent,
            reference="Ishida et al. 2020; grid: bdd-flood run_benchmarks.py",
        ),
        Method(
            "iflood",
            "iFlood",
            "b",
            "flood_level",
            SOFTAD_GRID,
            objective=_iflood,
            ascent=_example_ascent,
            reference="Xie et al. 2022; grid: bdd-flood run_benchmarks.py (thetas)",
        ),
        Method(
            "adaflood",
            "AdaFlood",
            "γ",
            "gamma",
            (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
            objective=_adaflood,
            needs_aux=True,
            upper=1.0,
            ascent=_adaflood_ascent,
            reference="Bae et al. 2024; γ grid: floodax's, within [0, 1)",
        ),
        Method(
            "softad",
            "SoftAD",
            "θ",
            "threshold",
            SOFTAD_GRID,
            objective=_softad,
            ascent=_example_ascent,
            reference="Holland and Nakatani 2024; grid: bdd-flood run_benchmarks.py",
        ),
        Method(
            "sam",
            "SAM",
            "ρ",
            "radius",
            SAM_GRID,
            transform=floodax.sam,
            value_fn=True,
            cost=2.0,
            reference="Foret et al. 2021; grid: bdd-flood run_benchmarks.py",
        ),
        Method(
            "asam",
            "ASAM",
            "ρ",
            "radius",
            (0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            transform=_asam,
            value_fn=True,
            cost=2.0,
            reference="Kwon et al. 2021; ρ grid: floodax's (ASAM's ρ is ~10× SAM's)",
        ),
        Method(
            "gsam",
            "GSAM",
            "ρ",
            "radius",
            SAM_GRID,
            transform=_gsam,
            value_fn=True,
            cost=2.0,
            reference="Zhuang et al. 2022, α = 0.1; ρ grid: SAM's",
        ),
        Method(
            "gnp",
            "GNP",
            "α",
            "alpha",
            (0.1, 0.2, 0.4, 0.6, 0.8, 1.0),
            transform=_gnp,
            value_fn=True,
            cost=2.0,
            reference="Zhao et al. 2022, r = 0.05; α grid: floodax's (α = 1 is SAM)",
        ),
        Method(
            "penalty",
            "penalty λ‖∇L‖²",
            "λ",
            "strength",
            (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
            transform=floodax.add_grad_norm_penalty,
            value_fn=True,
            cost=3.0,
            reference="explicit penalty, exact Hessian-vector product; grid: floodax's",
        ),
        Method(
            "alternate",
            "alternating ε1/ε2",
            "ε1",
            "descent_rate",
            RATE_GRID,
            transform=_alternating,
            final=True,
            reference="descent ε1 then ascent ε2 = ε1/10 (the BERT runs' ratio); "
            "ε1 grid: floodax's, around the SGD rate",
            control="erm_rate",
        ),
        Method(
            "erm_rate",
            "ERM, rate swept",
            "η",
            "learning_rate",
            RATE_GRID,
            transform=_rate,
            final=True,
            reference="the alternating scheme's control: SGD with momentum at "
            "its ε1 grid",
        ),
    )
}
"""The family, by name. Adding a method is adding an entry."""


def get_method(method: str | Method) -> Method:
    """The entry of :data:`FAMILY` named ``method`` (an entry is returned as is).

    Examples:
      >>> from floodax.experiments import get_method
      >>> softad = get_method("softad")
      >>> print(softad.label, softad.symbol, softad.grid[:3])
      SoftAD θ (0.01, 0.02, 0.05)
    """
    if isinstance(method, Method):
        return method
    if method not in FAMILY:
        raise ValueError(
            f"`method` must be one of {tuple(FAMILY)} or a Method, got {method!r}."
        )
    return FAMILY[method]


def build_optimizer(
    method: str | Method,
    base: optax.GradientTransformation,
    preconditioner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """``method``'s optimizer around ``base`` (e.g. ``optax.sgd(lr, momentum)``).

    A loss method trains with ``base`` alone. A transformation ``t`` is
    injected, ``optax.inject_hyperparams(t)(**{argument: grid[0]})``, and
    goes first, ``chain(t, base)``; a ``final`` one replaces the learning
    rate: ``chain(preconditioner, t)``, with ``preconditioner`` ``base``
    without its ``-lr`` (``optax.trace(momentum)`` for SGD). Its ``h`` is
    then the injected hyperparameter, set by :func:`set_hyperparameter`.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from floodax.experiments.family import build_optimizer, set_hyperparameter
      >>> tx = build_optimizer("sam", optax.sgd(0.1), optax.identity())
      >>> state = set_hyperparameter("sam", tx.init(jnp.zeros(2)), 0.2)
      >>> print(float(state[0].hyperparams["radius"]))
      0.2
    """
    method = get_method(method)
    if method.transform is None:
        return optax.with_extra_args_support(base)
    injected = optax.inject_hyperparams(method.transform)(
        **{method.argument: method.grid[0]}
    )
    if method.final:
        return optax.chain(preconditioner, injected)
    return optax.chain(injected, base)


def _injected_state(method: Method, opt_state):
    return opt_state[-1 if method.final else 0]


def set_hyperparameter(method: str | Method, opt_state, value):
    """Sets ``h`` in a state of :func:`build_optimizer`, in place (an NNX
    optimizer's variable, or a plain optax state's hyperparameter dict);
    returns the state. A loss method's optimizer holds no ``h``: its state
    is returned unchanged."""
    method = get_method(method)
    if method.transform is None:
        return opt_state
    injected = _injected_state(method, opt_state)
    current = injected.hyperparams[method.argument]
    if isinstance(current, nnx.Variable):  # an NNX optimizer's state
        # Flax 0.12.0's variables have `.value` only; later ones `[...]`.
        if hasattr(current, "set_value"):
            current[...] = jnp.asarray(value, current[...].dtype)
        else:
            current.value = jnp.asarray(value, current.value.dtype)
        return opt_state
    injected.hyperparams[method.argument] = jnp.asarray(value, current.dtype)
    return opt_state
