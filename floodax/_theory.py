r"""The second-order link between alternating steps and the gradient penalty.

Two steps on the same loss, descent with rate ε1 then ascent with rate ε2
(or in the other order), expand to

.. math::

  \theta_2 = \theta_0 - (\varepsilon_1 - \varepsilon_2)\, g
             - \varepsilon_1 \varepsilon_2\, H g + O(\varepsilon^3)
           = \theta_0 - (\varepsilon_1 - \varepsilon_2)\, \nabla\Big[L
             + \frac{\varepsilon_1 \varepsilon_2}{2(\varepsilon_1 -
             \varepsilon_2)} \|\nabla L\|^2\Big] + O(\varepsilon^3),

since ``∇‖∇L‖² = 2Hg``. With ``ε1 = ε2 = ε`` (flooding at its level) the loss
term cancels and the pair is a step of ``ε²/2`` on ``‖∇L‖²`` alone. This
module computes both forms and measures their errors on a real model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from floodax._alternate import alternate
from floodax._penalty import grad_norm_penalty, squared_norm
from floodax._progress import Progress, progress_bar
from floodax._validation import (
    check_float_leaves,
    check_int,
    check_rate_order,
    check_real,
    check_scalar_hyperparam,
    highest_dtype,
)


class EquivalentPenalty(NamedTuple):
    """The single step a pair of alternating steps approximates.

    Attributes:
      learning_rate: ``ε1 − ε2``.
      strength: ``λ = ε1·ε2 / (2(ε1 − ε2))``, the weight of ``‖∇L‖²``.

    Examples:
      >>> import floodax
      >>> print(floodax.equivalent_penalty(0.3, 0.1).strength)
      0.075
    """

    learning_rate: chex.Numeric
    strength: chex.Numeric


def _check_rates(descent_rate: Any, ascent_rate: Any, *, strict: bool) -> None:
    for name, rate in (("descent_rate", descent_rate), ("ascent_rate", ascent_rate)):
        if callable(rate):
            raise TypeError(f"`{name}` must be a number here, not a schedule.")
        check_scalar_hyperparam(name, rate)
    check_rate_order(descent_rate, ascent_rate, strict=strict)


def equivalent_penalty(
    descent_rate: chex.Numeric, ascent_rate: chex.Numeric
) -> EquivalentPenalty:
    r"""The learning rate and penalty strength equivalent to an ε1/ε2 pair.

    A descent step of rate ``ε1`` and an ascent step of rate ``ε2 < ε1``
    equal, up to ``O(ε³)``, one step of rate ``ε1 − ε2`` on
    ``L + λ‖∇L‖²`` with ``λ = ε1·ε2 / (2(ε1 − ε2))``.

    Args:
      descent_rate: ``ε1 > ascent_rate``.
      ascent_rate: ``ε2 >= 0``.

    Returns:
      :class:`EquivalentPenalty` ``(learning_rate, strength)``.

    Raises:
      ValueError: ``ε1 <= ε2`` (for ``ε1 == ε2`` use
        :func:`flooding_penalty_rate`), or a negative or non-finite rate.

    Examples:
      >>> import floodax
      >>> lr, strength = floodax.equivalent_penalty(0.3, 0.1)
      >>> print(f"{lr:.2f} {strength:.4f}")  # 0.3·0.1 / (2·0.2)
      0.20 0.0750
    """
    _check_rates(descent_rate, ascent_rate, strict=True)
    learning_rate = descent_rate - ascent_rate
    return EquivalentPenalty(
        learning_rate=learning_rate,
        strength=descent_rate * ascent_rate / (2 * learning_rate),
    )


def flooding_penalty_rate(rate: chex.Numeric) -> Any:
    r"""Flooding's pair (``ε1 = ε2 = ε``) as a step on ``‖∇L‖²`` alone.

    At the flood level, flooding alternates descent and ascent with the same
    rate ``ε``; the loss term of :func:`equivalent_penalty` cancels and the
    pair is, up to ``O(ε³)``, the step ``θ − (ε²/2)·∇‖∇L‖²``, in either
    order.

    Args:
      rate: ``ε >= 0``.

    Returns:
      ``ε²/2``, the rate of that step.

    Examples:
      >>> import floodax
      >>> print(floodax.flooding_penalty_rate(0.1))
      0.005000000000000001
    """
    _check_rates(rate, rate, strict=False)
    return rate * rate / 2


class EquivalenceReport(NamedTuple):
    """What :func:`check_equivalence` measured.

    Attributes:
      two_steps: the parameters after the two real steps (full batch).
      predicted: after the one step the derivation predicts.
      first_order: after the first-order guess ``θ − (ε1 − ε2)·∇L``
        (``θ`` itself for equal rates).
      derivation_error: ``‖two_steps − predicted‖``, ``O(ε³)``.
      first_order_error: ``‖two_steps − first_order‖``, ``O(ε²)``.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> report = floodax.check_equivalence(lambda w: jnp.sum(w ** 4),
      ...                                    jnp.array([0.5]), 0.02, 0.01)
      >>> two, one, naive = report.two_steps, report.predicted, report.first_order
      >>> print(f"{two[0]:.5f} {one[0]:.5f} {naive[0]:.5f}")
      0.49471 0.49470 0.49500
    """

    two_steps: chex.ArrayTree
    predicted: chex.ArrayTree
    first_order: chex.ArrayTree
    derivation_error: jax.Array
    first_order_error: jax.Array


def _distance(a: chex.ArrayTree, b: chex.ArrayTree) -> jax.Array:
    return jnp.sqrt(squared_norm(jax.tree.map(jnp.subtract, a, b)))


def _apply(loss_fn: Callable[..., Any], args: tuple, params: Any) -> Any:
    return loss_fn(params, *args)


def _two_steps(
    value_fn: Callable[[Any], Any],
    params: chex.ArrayTree,
    descent_rate: Any,
    ascent_rate: Any,
    ascent_first: bool,
) -> chex.ArrayTree:
    """The pair of steps on the full batch, taken by :func:`alternate`."""
    grads = jax.grad(value_fn)(params)
    tx = alternate(descent_rate, ascent_rate, ascent_first=ascent_first)
    updates, _ = tx.update(grads, tx.init(params), params, value_fn=value_fn)
    return optax.apply_updates(params, updates)


def _equivalence_endpoints(
    value_fn: Callable[[Any], Any],
    params: chex.ArrayTree,
    descent_rate: Any,
    ascent_rate: Any,
    *,
    ascent_first: bool,
) -> tuple[Any, Any, Any]:
    """The two real steps, the one-step prediction and the first-order guess;
    the rates may be traced, so one compiled function serves every rung."""
    grads = jax.grad(value_fn)(params)
    two_steps = _two_steps(value_fn, params, descent_rate, ascent_rate, ascent_first)
    penalty_grads = jax.grad(lambda p: squared_norm(jax.grad(value_fn)(p)))(params)
    net_rate = descent_rate - ascent_rate
    # ε1·ε2 multiplies the Hessian term (½∇‖∇L‖²) in both the penalised and
    # the flooding form; only the first has a loss term.
    predicted = jax.tree.map(
        lambda p, g, gp: p - net_rate * g - descent_rate * ascent_rate / 2 * gp,
        params,
        grads,
        penalty_grads,
    )
    first_order = jax.tree.map(lambda p, g: p - net_rate * g, params, grads)
    return two_steps, predicted, first_order


PARAMS_FIX = (
    ". Pass floating-point parameters, e.g. "
    "`jax.tree.map(lambda p: jnp.asarray(p, float), params)` (float64 under "
    "`jax.enable_x64(True)`)"
)


def _check_params(who: str, params: Any) -> None:
    check_float_leaves("`params`", params, who, PARAMS_FIX)


def check_equivalence(
    loss_fn: Callable[..., Any],
    params: chex.ArrayTree,
    descent_rate: chex.Numeric,
    ascent_rate: chex.Numeric,
    *args: Any,
    ascent_first: bool = False,
) -> EquivalenceReport:
    r"""Measures how well one penalised step predicts two alternating steps.

    The two real steps are taken by :func:`alternate` on the full batch
    (``loss_fn(params, *args)``), the prediction by gradient descent on
    ``L + λ‖∇L‖²`` (:func:`equivalent_penalty`) or, for equal rates, on
    ``‖∇L‖²`` alone (:func:`flooding_penalty_rate`). Use float64: the errors
    fall as ``ε³`` and reach float32's rounding quickly.

    Args:
      loss_fn: scalar loss, ``loss_fn(params, *args)``.
      params: the starting point θ, floating point (it is differentiated).
      descent_rate: ``ε1 >= ascent_rate``.
      ascent_rate: ``ε2 >= 0``.
      *args: the batch, passed on to ``loss_fn``.
      ascent_first: take the ascent step first (backstitch order).

    Returns:
      An :class:`EquivalenceReport`.

    Raises:
      TypeError: ``params`` has an integer or boolean leaf.
      ValueError: a negative or non-finite rate, or ``ε1 < ε2``.

    Examples:
      >>> import jax, jax.numpy as jnp, floodax
      >>> loss_fn = lambda w, x: jnp.sum(jnp.sin(x * w))
      >>> w, x = jnp.array([0.3, 0.2]), jnp.array([1.0, 2.0])
      >>> small = floodax.check_equivalence(loss_fn, w, 0.02, 0.01, x)
      >>> large = floodax.check_equivalence(loss_fn, w, 0.04, 0.02, x)
      >>> print(f"{large.derivation_error / small.derivation_error:.0f}")  # 2³
      8
    """
    _check_rates(descent_rate, ascent_rate, strict=False)
    _check_params("floodax.check_equivalence", params)
    two_steps, predicted, first_order = _rung(
        _equivalence_endpoints,
        loss_fn,
        params,
        args,
        descent_rate,
        ascent_rate,
        {"ascent_first": ascent_first},
    )
    return EquivalenceReport(
        two_steps=two_steps,
        predicted=predicted,
        first_order=first_order,
        derivation_error=_distance(two_steps, predicted),
        first_order_error=_distance(two_steps, first_order),
    )


class OrderReport(NamedTuple):
    """What :func:`equivalence_order` or :func:`flow_order` measured over a
    ladder of rates.

    Attributes:
      descent_rates: the ladder's ``ε1`` values, a NumPy array.
      ascent_rates: the matching ``ε2 = ratio·ε1``.
      derivation_errors: :attr:`EquivalenceReport.derivation_error` per rung.
      first_order_errors: :attr:`EquivalenceReport.first_order_error` per rung.
      derivation_order: the fitted log-log slope of the derivation's error
        (theory: 3).
      first_order_order: the fitted slope of the first-order error
        (theory: 2).
      fitted: boolean mask of the rungs the slopes were fitted on: the first
        unbroken run of rungs whose two errors lie above the rounding floor.
        An error is above it if it exceeds the rounding level
        (:data:`ROUNDING_ULPS` ``·eps·‖θ‖`` in the parameters' dtype, plus
        ``eps·‖θ‖/2`` per Runge–Kutta substep of a flow) and every error at a
        smaller rate, and if the errors stop falling further down the
        ladder, :data:`FLOOR_MARGIN` times the largest error from there on.
        At the floor the errors measure rounding, not the derivation, and
        would bend the slope. Errors that stop falling more than
        :data:`FLOOR_CEILING` times above the rounding level are no floor
        (a wrong derivation whose terms cancel near one rate): then every
        rung above the level is fitted, so the wrong slope shows.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> report = floodax.equivalence_order(lambda w: jnp.sum(jnp.cos(w)),
      ...                                    jnp.array([0.5, 1.0]), num_rates=4)
      >>> print(report.descent_rates)
      [0.1    0.05   0.025  0.0125]
    """

    descent_rates: np.ndarray
    ascent_rates: np.ndarray
    derivation_errors: np.ndarray
    first_order_errors: np.ndarray
    derivation_order: float
    first_order_order: float
    fitted: np.ndarray


def _fitted_slope(rates: np.ndarray, errors: np.ndarray) -> float:
    return float(np.polyfit(np.log(rates), np.log(errors), 1)[0])


ROUNDING_ULPS = 8
"""Errors below ``ROUNDING_ULPS·eps·‖θ‖`` are rounding, not truncation."""


def _rounding_level(
    params: chex.ArrayTree, endpoints: list, substeps: int = 0
) -> tuple[float, Any]:
    """``(ROUNDING_ULPS + substeps/2)·eps·s`` for ``s`` the largest norm among
    the parameters and the rungs' endpoints, and the parameters' dtype.

    A step rounds θ by an ulp or so. Each substep of a flow adds to θ once
    more and rounds each coordinate by up to half an ulp (``eps·|θᵢ|/2``); at
    small rates every substep adds nearly the same increment, so these
    roundings align and add up: on the ``floodax verify`` MLP in float64, at
    ``ε1 <= 1e-9`` where the error is rounding alone, 50 substeps reach 13
    ulps of ``‖θ‖``: more than :data:`ROUNDING_ULPS`, less than this level's
    33 (``tests/test_theory.py``).
    """
    dtype = highest_dtype(params)
    scale = max(
        [float(jnp.sqrt(squared_norm(params)))]
        + [float(jnp.sqrt(squared_norm(e))) for e in endpoints]
    )
    eps = float(jnp.finfo(dtype).eps)
    return (ROUNDING_ULPS + substeps / 2) * eps * scale, dtype


FLOOR_MARGIN = 10
"""Where a ladder's errors stop falling, the largest error from there on is
the floor measured; only errors ``FLOOR_MARGIN`` times above it are fitted."""

FLOOR_CEILING = 1e3
"""A floor more than ``FLOOR_CEILING`` times the rounding level is not
rounding: errors that stop falling there do so by their own shape (a wrong
derivation's ε² term cancelling its ε³ residual near one rate), and the rungs
after it are fitted, not dropped."""


def _first_run(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every entry after its first unbroken run of True cleared."""
    start = int(np.argmax(mask))
    run = np.zeros_like(mask)
    run[start:] = np.logical_and.accumulate(mask[start:])
    return run


def _above_floor(errors: np.ndarray, level: float) -> np.ndarray:
    """The rungs of one error ladder that measure truncation, not rounding.

    They are the first unbroken run of rungs whose errors exceed ``level``
    and every error after them (at the smaller rates; where the errors stop
    falling they are rounding), less those within ``FLOOR_MARGIN`` of the
    largest error after the run, the floor as measured.
    """
    later = np.append(np.maximum.accumulate(errors[::-1])[::-1][1:], -np.inf)
    run = _first_run((errors > level) & (errors > later))
    end = len(run) - int(np.argmax(run[::-1]))
    floor = errors[end:].max(initial=0.0)
    if floor > FLOOR_CEILING * level:
        return errors > level
    return run & (errors > FLOOR_MARGIN * floor)


def _check_ladder(largest_rate: Any, ratio: Any, num_rates: Any, shrink: Any) -> None:
    check_scalar_hyperparam("largest_rate", largest_rate, positive=True)
    if not 0.0 <= check_real("ratio", ratio) <= 1.0:
        raise ValueError(
            f"`ratio` is ε2/ε1 and must lie in [0, 1], got {ratio}; "
            "ratio=1 checks flooding's pair."
        )
    check_real("shrink", shrink, low=0.0, high=1.0, low_open=True, high_open=True)
    check_int("num_rates", num_rates, minimum=2, fix=": fitting a slope needs two")


def _order_report(
    descent_rates: np.ndarray,
    ascent_rates: np.ndarray,
    predicted_errors: np.ndarray,
    baseline_errors: np.ndarray,
    level: float,
    dtype: Any,
    what: str,
    exact: str,
) -> OrderReport:
    """Fits both slopes on the rungs above the rounding floor; every order fit
    goes through here. ``what`` names the prediction, ``exact`` says which
    losses it is exact for."""
    rates = (
        f"the `num_rates={len(descent_rates)}` rates, ε1 = "
        f"{descent_rates[0]:.3g} down to {descent_rates[-1]:.3g}"
    )
    if not np.any(predicted_errors > level):
        raise ValueError(
            f"`loss_fn`: {what} is exact to rounding at every rate ({rates}: "
            f"errors at most {predicted_errors.max():.1e}, the rounding level "
            f"of {jnp.dtype(dtype).name} here being {level:.1e}), so there is "
            f"no error order to fit. {exact} Or the rates are too small for "
            "this dtype: try a larger `largest_rate`."
        )
    fitted = _first_run(
        _above_floor(predicted_errors, level) & _above_floor(baseline_errors, level)
    )
    if fitted.sum() < 2:
        raise ValueError(
            f"`loss_fn`: only {int(fitted.sum())} of {rates}, give errors "
            "above the rounding floor "
            "(the errors stop falling, or lie below the rounding level of "
            f"{jnp.dtype(dtype).name} here, {level:.1e}); fitting an order needs "
            "two. Use float64 parameters (`jax.enable_x64`), a larger "
            "`largest_rate`, or a `shrink` closer to 1, so that more rates lie "
            "above the floor."
        )
    return OrderReport(
        descent_rates=descent_rates,
        ascent_rates=ascent_rates,
        derivation_errors=predicted_errors,
        first_order_errors=baseline_errors,
        derivation_order=_fitted_slope(descent_rates[fitted], predicted_errors[fitted]),
        first_order_order=_fitted_slope(descent_rates[fitted], baseline_errors[fitted]),
        fitted=fitted,
    )


_PURE_LOSSES: set = set()
_PURE_CACHE: dict = {}


def pure_loss(loss_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Marks ``loss_fn`` as a function of its arguments alone (no closure,
    no global that changes), so its compiled rungs may be kept across calls;
    for floodax's own losses (``floodax verify``'s MLP), never a user's."""
    _PURE_LOSSES.add(loss_fn)
    return loss_fn


def _compiled(
    endpoints: Callable[..., tuple[Any, Any, Any]],
    loss_fn: Callable[..., Any],
    options: dict,
) -> Callable[..., tuple[Any, Any, Any]]:
    if loss_fn in _PURE_LOSSES:
        key = (endpoints, loss_fn, tuple(sorted(options.items())))
        if key not in _PURE_CACHE:
            _PURE_CACHE[key] = _compile(endpoints, loss_fn, options)
        return _PURE_CACHE[key]
    return _compile(endpoints, loss_fn, options)


def _compile(
    endpoints: Callable[..., tuple[Any, Any, Any]],
    loss_fn: Callable[..., Any],
    options: dict,
) -> Callable[..., tuple[Any, Any, Any]]:
    """``endpoints`` (real step(s), prediction, baseline) for ``loss_fn`` as
    a function of ``(params, args, descent_rate, ascent_rate)``, in the
    parameters' dtype, compiled once for the rungs of one call. Not cached
    across calls: the same ``loss_fn`` object may close over a variable
    that has been rebound since (a new batch, a new scale), and a program
    compiled for the old value would silently answer for it."""

    def run(params: Any, args: tuple, descent_rate: Any, ascent_rate: Any) -> Any:
        value_fn = functools.partial(_apply, loss_fn, args)
        return endpoints(value_fn, params, descent_rate, ascent_rate, **options)

    compiled = jax.jit(run)

    def rung(params: Any, args: tuple, descent_rate: Any, ascent_rate: Any) -> Any:
        dtype = highest_dtype(params)
        return compiled(
            params,
            args,
            jnp.asarray(descent_rate, dtype),
            jnp.asarray(ascent_rate, dtype),
        )

    return rung


def _rung(
    endpoints: Callable[..., tuple[Any, Any, Any]],
    loss_fn: Callable[..., Any],
    params: chex.ArrayTree,
    args: tuple,
    descent_rate: Any,
    ascent_rate: Any,
    options: dict,
) -> tuple[Any, Any, Any]:
    """``endpoints`` at one pair of rates (a single check)."""
    return _compiled(endpoints, loss_fn, options)(
        params, args, descent_rate, ascent_rate
    )


def _ladder_order(
    endpoints: Callable[..., tuple[Any, Any, Any]],
    loss_fn: Callable[..., Any],
    params: chex.ArrayTree,
    args: tuple,
    *,
    largest_rate: Any,
    ratio: Any,
    num_rates: int,
    shrink: Any,
    options: dict,
    substeps: int,
    what: str,
    exact: str,
    progress: bool | Progress = False,
) -> OrderReport:
    """Runs ``endpoints`` over the ladder and fits the orders of both errors."""
    descent_rates = largest_rate * shrink ** np.arange(num_rates)
    ascent_rates = ratio * descent_rates
    rung = _compiled(endpoints, loss_fn, options)
    rungs = []
    with progress_bar(progress, num_rates, "rungs") as bar:
        for e1, e2 in zip(descent_rates, ascent_rates, strict=True):
            # Waited for, so the bar counts rungs computed, not dispatched.
            rungs.append(jax.block_until_ready(rung(params, args, e1, e2)))
            bar.update()
    level, dtype = _rounding_level(params, [steps for steps, _, _ in rungs], substeps)
    return _order_report(
        descent_rates,
        ascent_rates,
        np.array([float(_distance(steps, pred)) for steps, pred, _ in rungs]),
        np.array([float(_distance(steps, base)) for steps, _, base in rungs]),
        level,
        dtype,
        what,
        exact,
    )


def equivalence_order(
    loss_fn: Callable[..., Any],
    params: chex.ArrayTree,
    *args: Any,
    largest_rate: float = 0.1,
    ratio: float = 0.5,
    num_rates: int = 6,
    shrink: float = 0.5,
    ascent_first: bool = False,
    progress: bool | Progress = False,
) -> OrderReport:
    r"""Fits the order of the derivation's error over a geometric ladder.

    Measures what :func:`check_equivalence` measures at
    ``ε1 = largest_rate·shrinkᵏ`` for ``k = 0 … num_rates − 1`` with
    ``ε2 = ratio·ε1``, every rung with one ``jax.jit``-compiled function, and
    fits the slopes of ``log error`` against ``log ε1`` on the rungs above the
    rounding floor (:attr:`OrderReport.fitted`). Theory: 3 for the
    derivation, 2 for the first-order guess. ``ratio=1`` checks flooding's
    pair.

    Args:
      loss_fn: scalar loss, ``loss_fn(params, *args)``, traceable.
      params: the starting point θ, floating point (float64 recommended).
      *args: the batch.
      largest_rate: the first rung's ``ε1``.
      ratio: ``ε2/ε1`` in ``[0, 1]``.
      num_rates: how many rungs, an integer of at least 2.
      shrink: the factor between rungs, in ``(0, 1)``.
      ascent_first: backstitch order.
      progress: ``True`` draws a bar of the rungs computed, with the time
        left, on standard error when it is a terminal; a ``Progress`` bar of
        an outer loop is advanced one unit per rung instead.

    Returns:
      An :class:`OrderReport`.

    Raises:
      TypeError: ``params`` has an integer or boolean leaf; ``num_rates`` is
        not an integer.
      ValueError: bad ``ratio``, ``shrink``, ``num_rates`` or
        ``largest_rate``; the prediction is exact to rounding at every rate
        (a quadratic loss); fewer than two rates give errors above the
        rounding floor.

    Examples:
      >>> import jax, jax.numpy as jnp, floodax
      >>> loss_fn = lambda w, x: jnp.sum(jnp.sin(x * w))
      >>> report = floodax.equivalence_order(loss_fn, jnp.array([0.3, 0.2]),
      ...                                    jnp.array([1.0, 2.0]), ratio=1.0)
      >>> print(round(report.derivation_order), round(report.first_order_order))
      3 2
    """
    _check_ladder(largest_rate, ratio, num_rates, shrink)
    _check_params("floodax.equivalence_order", params)
    return _ladder_order(
        _equivalence_endpoints,
        loss_fn,
        params,
        args,
        largest_rate=largest_rate,
        ratio=ratio,
        num_rates=num_rates,
        shrink=shrink,
        options={"ascent_first": ascent_first},
        substeps=0,
        progress=progress,
        what="the one-step prediction",
        exact="A loss that is quadratic around `params` makes the prediction "
        "exact, and so does `ratio=0` (the pair is then a single step).",
    )


def implicit_penalty(learning_rate: chex.Numeric) -> Any:
    r"""The implicit gradient penalty of one gradient-descent step: ``h/4``.

    Barrett and Dherin show that a step ``θ − h·∇L`` follows, to second
    order in ``h``, the gradient flow of the modified loss

    .. math::

      \tilde L = L + \frac{h}{4}\, \|\nabla L\|^2

    for a time ``h``: the flow of ``L`` alone is off by ``O(h²)``, the flow of
    ``L̃`` by ``O(h³)`` (:func:`flow_order` measures both).

    Args:
      learning_rate: ``h >= 0``.

    Returns:
      ``h/4``.

    Examples:
      >>> import floodax
      >>> print(floodax.implicit_penalty(0.2))
      0.05

    References:
      Barrett and Dherin, "Implicit Gradient Regularization", ICLR 2021.
    """
    check_scalar_hyperparam("learning_rate", learning_rate)
    return learning_rate / 4


def flow_penalty(
    descent_rate: chex.Numeric, ascent_rate: chex.Numeric = 0.0
) -> EquivalentPenalty:
    r"""The gradient flow an alternating pair follows: its time and penalty.

    Against one step (:func:`equivalent_penalty`) a pair of steps, descent
    ``ε1`` and ascent ``ε2 < ε1``, carries the explicit penalty
    ``ε1·ε2/(2(ε1 − ε2))``; against the *gradient flow*, that one step of
    rate ``ε1 − ε2`` carries the implicit ``(ε1 − ε2)/4`` too
    (:func:`implicit_penalty`). So the pair follows, to second order, the
    flow of

    .. math::

      L + \Big(\frac{\varepsilon_1 \varepsilon_2}{2(\varepsilon_1 -
      \varepsilon_2)} + \frac{\varepsilon_1 - \varepsilon_2}{4}\Big)
      \|\nabla L\|^2

    for a time ``ε1 − ε2``. With ``ε2 = 0`` it is one step of gradient descent
    and the penalty is the implicit ``ε1/4`` alone.

    Args:
      descent_rate: ``ε1 > ascent_rate``.
      ascent_rate: ``ε2 >= 0``.

    Returns:
      :class:`EquivalentPenalty` ``(learning_rate, strength)``: the flow's
      time ``ε1 − ε2`` and the total strength.

    Examples:
      >>> import floodax
      >>> time, strength = floodax.flow_penalty(0.3, 0.1)
      >>> print(f"{time:.2f} {strength:.3f}")  # 0.075 explicit + 0.05 implicit
      0.20 0.125
    """
    _check_rates(descent_rate, ascent_rate, strict=True)
    time = descent_rate - ascent_rate
    return EquivalentPenalty(
        learning_rate=time,
        strength=descent_rate * ascent_rate / (2 * time) + time / 4,
    )


class FlowReport(NamedTuple):
    """What :func:`check_modified_flow` measured.

    Attributes:
      steps: the parameters after the real step(s).
      modified_flow: after the gradient flow of ``L + λ‖∇L‖²`` for the time
        of :func:`flow_penalty`.
      plain_flow: after the flow of ``L`` alone for the same time.
      modified_error: ``‖steps − modified_flow‖``, ``O(ε³)``.
      plain_error: ``‖steps − plain_flow‖``, ``O(ε²)``.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> r = floodax.check_modified_flow(lambda w: jnp.sum(jnp.cos(w)),
      ...                                 jnp.array([0.5, 1.0]), 0.1)
      >>> print(bool(r.modified_error < r.plain_error / 10))
      True
    """

    steps: chex.ArrayTree
    modified_flow: chex.ArrayTree
    plain_flow: chex.ArrayTree
    modified_error: jax.Array
    plain_error: jax.Array


def _flow(
    gradient: Callable[[Any], Any], params: chex.ArrayTree, time: Any, substeps: int
) -> chex.ArrayTree:
    """``θ' = −gradient(θ)`` for ``time``, by ``substeps`` steps of classical
    Runge–Kutta (global error ``O(dt⁴)``)."""
    dt = time / substeps

    def axpy(a: Any, x: Any, y: Any) -> Any:
        return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)

    def rk4(_: Any, p: Any) -> Any:
        k1 = gradient(p)
        k2 = gradient(axpy(-dt / 2, k1, p))
        k3 = gradient(axpy(-dt / 2, k2, p))
        k4 = gradient(axpy(-dt, k3, p))
        total = jax.tree.map(lambda a, b, c, d: a + 2 * b + 2 * c + d, k1, k2, k3, k4)
        return axpy(-dt / 6, total, p)

    return jax.lax.fori_loop(0, substeps, rk4, params)


def _flow_endpoints(
    value_fn: Callable[[Any], Any],
    params: chex.ArrayTree,
    descent_rate: Any,
    ascent_rate: Any,
    *,
    ascent_first: bool,
    substeps: int,
) -> tuple[Any, Any, Any]:
    """The real step(s) and both flows; the rates may be traced, so one
    compiled function serves every rung."""
    time = descent_rate - ascent_rate
    strength = descent_rate * ascent_rate / (2 * time) + time / 4
    steps = _two_steps(value_fn, params, descent_rate, ascent_rate, ascent_first)
    modified = jax.grad(grad_norm_penalty(value_fn, strength))
    return (
        steps,
        _flow(modified, params, time, substeps),
        _flow(jax.grad(value_fn), params, time, substeps),
    )


def _flow_report(steps: Any, modified_flow: Any, plain_flow: Any) -> FlowReport:
    return FlowReport(
        steps=steps,
        modified_flow=modified_flow,
        plain_flow=plain_flow,
        modified_error=_distance(steps, modified_flow),
        plain_error=_distance(steps, plain_flow),
    )


def check_modified_flow(
    loss_fn: Callable[..., Any],
    params: chex.ArrayTree,
    descent_rate: chex.Numeric,
    ascent_rate: chex.Numeric = 0.0,
    *args: Any,
    ascent_first: bool = False,
    substeps: int = 200,
) -> FlowReport:
    r"""Measures how well a gradient flow predicts one step, or a pair.

    The real step(s) are taken by :func:`alternate` on the full batch (with
    ``ascent_rate=0``, one step of gradient descent); the prediction
    integrates the gradient flow of ``L + λ‖∇L‖²`` (:func:`flow_penalty`) for
    a time ``ε1 − ε2`` with ``substeps`` Runge–Kutta steps, and the baseline
    the flow of ``L`` alone. Use float64: the errors fall as ``ε³``.

    Args:
      loss_fn: scalar loss, ``loss_fn(params, *args)``, traceable.
      params: the starting point θ, floating point.
      descent_rate: ``ε1 > ascent_rate``.
      ascent_rate: ``ε2 >= 0`` (0 for plain gradient descent).
      *args: the batch.
      ascent_first: backstitch order.
      substeps: Runge–Kutta steps for the flows (error ``O((ε/substeps)⁴)``),
        an integer of at least 1.

    Returns:
      A :class:`FlowReport`.

    Raises:
      TypeError: ``params`` has an integer or boolean leaf; ``substeps`` is
        not an integer.
      ValueError: a negative or non-finite rate, ``ε1 <= ε2``, or
        ``substeps < 1``.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> loss_fn = lambda w: jnp.sum(jnp.cos(w))
      >>> small = floodax.check_modified_flow(loss_fn, jnp.array([0.5, 1.0]), 0.05)
      >>> large = floodax.check_modified_flow(loss_fn, jnp.array([0.5, 1.0]), 0.1)
      >>> print(f"{large.modified_error / small.modified_error:.0f}")  # 2³
      8
    """
    flow_penalty(descent_rate, ascent_rate)  # checks the rates
    check_int("substeps", substeps, minimum=1)
    _check_params("floodax.check_modified_flow", params)
    endpoints = _rung(
        _flow_endpoints,
        loss_fn,
        params,
        args,
        descent_rate,
        ascent_rate,
        {"ascent_first": ascent_first, "substeps": substeps},
    )
    return _flow_report(*endpoints)


def flow_order(
    loss_fn: Callable[..., Any],
    params: chex.ArrayTree,
    *args: Any,
    largest_rate: float = 0.1,
    ratio: float = 0.0,
    num_rates: int = 6,
    shrink: float = 0.5,
    ascent_first: bool = False,
    substeps: int = 200,
    progress: bool | Progress = False,
) -> OrderReport:
    r"""Fits the order of the modified flow's error over a geometric ladder.

    Measures what :func:`check_modified_flow` measures at
    ``ε1 = largest_rate·shrinkᵏ`` with ``ε2 = ratio·ε1`` (``ratio=0``: one
    step of gradient descent, Barrett and Dherin's setting), every rung with
    one ``jax.jit``-compiled function, and fits the slopes on the rungs above
    the rounding floor (:attr:`OrderReport.fitted`). In the returned
    :class:`OrderReport`, ``derivation_*`` is the error against the flow of
    the modified loss (theory: order 3) and ``first_order_*`` against the
    flow of ``L`` alone (theory: 2).

    Args:
      loss_fn: scalar loss, ``loss_fn(params, *args)``, traceable.
      params: the starting point θ, floating point (float64 recommended).
      *args: the batch.
      largest_rate: the first rung's ``ε1``.
      ratio: ``ε2/ε1`` in ``[0, 1)``.
      num_rates: how many rungs, an integer of at least 2.
      shrink: the factor between rungs, in ``(0, 1)``.
      ascent_first: backstitch order.
      substeps: Runge–Kutta steps per flow, an integer of at least 1. Each
        adds up to half an ulp of ``‖θ‖`` to the rounding floor.
      progress: ``True`` draws a bar of the rungs computed, with the time
        left, on standard error when it is a terminal; a ``Progress`` bar of
        an outer loop is advanced one unit per rung instead.

    Returns:
      An :class:`OrderReport`.

    Raises:
      TypeError: ``params`` has an integer or boolean leaf; ``num_rates`` or
        ``substeps`` is not an integer.
      ValueError: bad ladder arguments (``ratio=1`` has no flow time: use
        :func:`equivalence_order` for flooding's pair); the modified flow is
        exact to rounding at every rate; fewer than two rates give errors
        above the rounding floor.

    Examples:
      >>> import jax.numpy as jnp, floodax
      >>> report = floodax.flow_order(lambda w: jnp.sum(jnp.cos(w)),  # float32
      ...                             jnp.array([0.5, 1.0]), largest_rate=0.3,
      ...                             num_rates=3)
      >>> print(round(report.derivation_order), round(report.first_order_order))
      3 2

    References:
      Barrett and Dherin, "Implicit Gradient Regularization", ICLR 2021.
    """
    _check_ladder(largest_rate, ratio, num_rates, shrink)
    if ratio >= 1:
        raise ValueError(
            "`ratio` must be below 1 here: with ε1 = ε2 the pair has no flow time "
            "(ε1 − ε2 = 0); check flooding's pair with floodax.equivalence_order."
        )
    check_int("substeps", substeps, minimum=1)
    _check_params("floodax.flow_order", params)
    return _ladder_order(
        _flow_endpoints,
        loss_fn,
        params,
        args,
        largest_rate=largest_rate,
        ratio=ratio,
        num_rates=num_rates,
        shrink=shrink,
        options={"ascent_first": ascent_first, "substeps": substeps},
        substeps=substeps,
        progress=progress,
        what="the modified flow",
        exact="A loss that is linear around `params` makes the flow exact.",
    )
