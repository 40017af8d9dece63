"""Argument checks shared by every floodax transform.

Checks run on what is known when a function is called: types, shapes and
dtypes always (they are static under ``jit``), values only when they are
concrete. A traced hyperparameter (under ``jit``, ``vmap`` or
``optax.inject_hyperparams``) cannot be inspected without a host round trip,
so its value is trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend.core import Var


def highest_dtype(tree: Any) -> Any:
    """The dtype every leaf of ``tree`` promotes to (float16 with bfloat16 is
    float32; ``optax.tree.dtype(tree, "highest")`` cannot compare those two);
    float32 for a tree without leaves."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.dtype(jnp.float32)
    return jnp.result_type(*(jnp.asarray(leaf).dtype for leaf in leaves))


def is_traced(x: Any) -> bool:
    """Whether ``x`` is an abstract value inside a JAX transformation."""
    return isinstance(x, jax.core.Tracer)


def _type_error(name: str, value: Any, fix: str) -> TypeError:
    kind = type(value).__name__
    if value is None:
        hint = "; it cannot be None"
    elif isinstance(value, str):
        hint = f"; pass the number itself, e.g. `{name}=float({value!r})`"
    elif hasattr(value, "__float__"):  # Decimal, Fraction; not complex
        hint = f"; convert it first: `{name}=float(value)`"
    else:
        hint = ""
    return TypeError(
        f"`{name}` must be a real number (a Python int or float, or a real "
        f"JAX/NumPy scalar array), got {kind} {value!r}{hint}{fix}."
    )


def as_real_array(name: str, value: Any, *, fix: str = "") -> Any:
    """Checks that ``value`` is a real number or real array; returns its shape
    and dtype carrier (the value itself, or ``np.asarray`` of a NumPy scalar).

    Accepted: Python ``int`` and ``float`` (not ``bool``), NumPy real scalars,
    and NumPy or JAX arrays (traced ones included) of integer or floating
    dtype. Rejected with a ``TypeError`` that names ``name``: strings,
    ``None``, ``bool``, complex numbers, ``decimal.Decimal``,
    ``fractions.Fraction`` and any other object.
    """
    if isinstance(value, bool | np.bool_):
        raise _type_error(name, value, fix)
    if isinstance(value, int | float | np.integer | np.floating):
        return value
    if isinstance(value, np.ndarray | jax.Array):
        dtype = value.dtype
        if jnp.issubdtype(dtype, jnp.bool_) or not (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
        ):
            raise TypeError(f"`{name}` must be a real number, got dtype {dtype}{fix}.")
        return value
    raise _type_error(name, value, fix)


def check_scalar_hyperparam(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    fix: str = "",
) -> None:
    """Raises if ``value`` cannot serve as the non-negative scalar ``name``.

    Callables (optax schedules) are checked where they are evaluated, with
    ``fix=SCHEDULE_FIX``.
    """
    if callable(value):
        return
    as_real_array(name, value, fix=fix)
    shape = np.shape(value)
    if shape != ():
        raise ValueError(
            f"`{name}` must be a scalar, got an array of shape {shape}. "
            f"Pass one number per transformation (use `jax.vmap` to sweep "
            f"several values){fix}."
        )
    if is_traced(value):
        return
    check_values(name, value, positive=positive, fix=fix)


def check_values(
    name: str, value: Any, *, positive: bool = False, fix: str = ""
) -> None:
    """Raises unless every element of the concrete ``value`` is finite and
    non-negative (positive with ``positive=True``)."""
    array = np.asarray(value)  # isfinite and < 0 work on integers too

    def describe(bad: np.ndarray) -> str:
        # The element in its own dtype: float32(0.1) prints as 0.1, int 0 as 0.
        text = str(array[bad].flat[0])
        return text if array.ndim == 0 else f"{text} (an element of the array)"

    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"`{name}` must be finite, got {describe(bad)}{fix}.")
    bad = array <= 0 if positive else array < 0
    if bad.any():
        word = "positive" if positive else "non-negative"
        raise ValueError(f"`{name}` must be {word}, got {describe(bad)}{fix}.")


def check_broadcast_array(
    name: str, value: Any, target_shape: tuple[int, ...], what: str
) -> None:
    """Raises unless ``value`` (a number or a real array) broadcasts to
    ``target_shape`` without changing it; ``what`` names the target."""
    as_real_array(name, value)
    shape = np.shape(value)
    try:
        result = jnp.broadcast_shapes(shape, target_shape)
    except ValueError:
        result = None
    if result != tuple(target_shape):
        raise ValueError(
            f"`{name}` of shape {shape} does not broadcast to `{what}` of shape "
            f"{tuple(target_shape)}; pass a scalar or one value per element of "
            f"`{what}`."
        )


SCHEDULE_FIX = " (the value came from the schedule passed as this argument)"


def check_float_array(name: str, value: Any) -> jax.Array:
    """Returns ``value`` as a floating-point array, or raises a ``TypeError``."""
    array = jnp.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must have a floating-point dtype, got {array.dtype}. "
            f"Compute the loss in floating point, e.g. "
            f"`{name}.astype(jnp.float32)`."
        )
    return array


def check_scalar_value(name: str, value: Any) -> jax.Array:
    """Returns the loss ``value`` as a scalar float array, or raises."""
    array = check_float_array(name, value)
    if array.shape != ():
        raise ValueError(
            f"`{name}` must be the scalar mini-batch loss, got an array of "
            f"shape {array.shape}. Reduce the per-example losses first, e.g. "
            f"`{name}=losses.mean()`."
        )
    return array


def check_int(name: str, value: Any, *, minimum: int, fix: str = "") -> None:
    """Raises unless ``value`` is a Python or NumPy integer ``>= minimum``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"`{name}` must be an integer >= {minimum}, got "
            f"{type(value).__name__} {value!r}{fix}."
        )
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value}{fix}.")


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Returns the concrete real number ``value`` as a float, checked to be
    finite and inside the interval given by ``low``/``high``."""
    as_real_array(name, value)
    if np.shape(value) != ():
        raise ValueError(
            f"`{name}` must be a single number, got shape {np.shape(value)}."
        )
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"`{name}` must be finite, got {number}.")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = (
            f"{left}{'-inf' if low is None else f'{low:g}'}, "
            f"{'inf' if high is None else f'{high:g}'}{right}"
        )
        raise ValueError(f"`{name}` must lie in {interval}, got {number}.")
    return number


def require_params(params: Any, transform: str) -> None:
    """Raises a ``TypeError`` when ``update`` was called without ``params``."""
    if params is None:
        raise TypeError(
            f"{transform} needs the current parameters: call "
            "`tx.update(grads, state, params, ...)`."
        )


def check_rate_order(
    descent_rate: Any, ascent_rate: Any, *, strict: bool, fix: str = ""
) -> None:
    """Raises when concrete rates break ``descent_rate > ascent_rate``.

    With ``strict=False`` equal rates (flooding's pair) are allowed.
    """
    if callable(descent_rate) or callable(ascent_rate):
        return
    if is_traced(descent_rate) or is_traced(ascent_rate):
        return
    descent, ascent = np.asarray(descent_rate)[()], np.asarray(ascent_rate)[()]
    if descent > ascent or (not strict and descent == ascent):
        return
    if strict:
        raise ValueError(
            f"`descent_rate` ({descent!s}) must exceed `ascent_rate` ({ascent!s}): "
            "the equivalent penalty ε1·ε2/(2(ε1 − ε2)) is defined only for "
            "ε1 > ε2. For equal rates (flooding at its level) the loss term "
            "vanishes and the pair is a step of ε²/2 on ‖∇L‖² alone: use "
            f"`floodax.flooding_penalty_rate(rate)`{fix}."
        )
    raise ValueError(
        f"`descent_rate` ({descent!s}) must be at least `ascent_rate` ({ascent!s}): "
        "otherwise every pair of steps ascends on net and training diverges. "
        "Swap the two rates, or use `ascent_first=True` for Kaldi's backstitch "
        f"order{fix}."
    )


def check_count(name: str, value: Any, fix: str = "") -> None:
    """Raises unless ``value`` is a (possibly traced) scalar integer ``>= 1``;
    a traced value is checked for its type only."""
    is_integer = (
        not isinstance(value, bool | np.bool_)
        and isinstance(value, int | np.integer | np.ndarray | jax.Array)
        and jnp.issubdtype(jnp.result_type(value), jnp.integer)
        and np.shape(value) == ()
    )
    if not is_integer or (not is_traced(value) and int(value) < 1):
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}{fix}.")


def check_interval(interval: Any) -> None:
    """Raises unless ``interval`` is a (possibly traced) integer ``>= 1``."""
    check_count(
        "interval",
        interval,
        ": `interval=1` alternates on every step, `interval=n` takes one pair "
        "then n - 1 plain descent steps",
    )


def check_matching_trees(updates: Any, params: Any, transform: str) -> None:
    """Raises when ``updates`` and ``params`` differ in structure or shapes.

    The transforms that evaluate ``value_fn`` at a point moved along the
    updates need one update per parameter, of the parameter's shape.
    """
    updates_tree, params_tree = jax.tree.structure(updates), jax.tree.structure(params)
    if updates_tree != params_tree:
        raise ValueError(
            f"{transform}: `updates` and `params` must be pytrees of the same "
            f"structure, got {updates_tree} and {params_tree}. Pass the gradient "
            "of `value_fn` with respect to `params` as the updates."
        )
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
        if np.shape(u) != np.shape(p):
            raise ValueError(
                f"{transform}: an update of shape {np.shape(u)} does not match "
                f"its parameter of shape {np.shape(p)}."
            )


def _is_masked_node(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def check_value_fn_params(params: Any, transform: str, supported: str) -> None:
    """Raises when ``params`` cannot be handed to ``value_fn``.

    ``value_fn`` is the user's loss of the *whole* parameter tree. Inside
    ``optax.masked`` or ``optax.multi_transform`` a transformation sees only
    the selected leaves (the others are ``optax.MaskedNode``), so it cannot
    evaluate the loss at a moved point; ``supported`` says what to do instead.
    Integer leaves cannot be differentiated, and an empty tree has nothing to
    differentiate.
    """
    leaves = jax.tree.leaves(params, is_leaf=_is_masked_node)
    if any(_is_masked_node(leaf) for leaf in leaves):
        raise TypeError(
            f"{transform} received parameters masked by `optax.masked` or "
            "`optax.multi_transform`: it evaluates `value_fn` at the full "
            f"parameters, which a masked transformation never sees. {supported}"
        )
    if not leaves:
        raise ValueError(
            f"{transform}: `params` has no array leaves, so there is nothing to "
            "differentiate `value_fn` with respect to; pass the model's "
            "parameters."
        )
    check_float_leaves(
        "`params`",
        params,
        transform,
        ". Keep integer state out of the parameters (e.g. in a separate "
        "argument closed over by `value_fn`)",
    )


def check_float_leaves(name: str, tree: Any, who: str, fix: str) -> None:
    """Raises a ``TypeError`` naming the first leaf of ``tree`` (the argument
    ``name`` of ``who``) that is not a real floating-point array: it is
    differentiated with respect to every leaf. ``fix`` says what to do."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.floating):
            continue
        if jnp.issubdtype(dtype, jnp.complexfloating):
            reason = (
                "complex leaves are not supported: gradients, their norms and "
                "Hessian-vector products are taken here for real parameters. "
                "Store a complex weight as two real leaves (its real and "
                "imaginary parts) and combine them inside the loss"
            )
        else:
            reason = f"integer and boolean leaves have no gradient{fix}"
        raise TypeError(
            f"{who}: {name} has a leaf of dtype {dtype} at "
            f"{jax.tree_util.keystr(path) or 'the root'}; it is differentiated "
            f"with respect to every leaf, and {reason}."
        )


def loss_output_fix(out: Any, aux_fix: str) -> str | None:
    """``None`` when ``out``, the output of a loss function (a value or a
    ``jax.ShapeDtypeStruct``), is a real floating-point scalar; otherwise
    the fix to append to the caller's error ("; …", or "" for an object that
    is no array at all). ``aux_fix`` is the fix for a ``(loss, aux)`` tuple,
    which depends on how the caller takes the loss."""
    if isinstance(out, tuple | list):
        return f"; for a loss that returns `(loss, aux)`, {aux_fix}"
    if isinstance(out, int | float | complex | np.generic):
        out = jax.ShapeDtypeStruct((), jnp.result_type(out))
    if not (hasattr(out, "shape") and hasattr(out, "dtype")):
        return ""
    if out.shape != ():
        return "; reduce the per-example losses (e.g. with .mean())"
    if not jnp.issubdtype(out.dtype, jnp.floating):
        return "; compute the loss in floating point (e.g. `.astype(jnp.float32)`)"
    return None


VALUE_FN_PATTERN = """\
Build `value_fn` so that the loss is computed from the parameters it is given:
  plain pytrees:  value_fn=lambda p: loss_fn(p, batch)
  Flax Linen:     value_fn=lambda p: loss_fn(model.apply({"params": p}, x), y)
                  (with batch norm: floodax.linen.value_and_grad)
  Flax NNX:       loss, grads, value_fn = floodax.nnx.value_and_grad(
                      loss_fn, model, batch)
                  optimizer.update(model, grads, value_fn=value_fn)
                  (by hand: graphdef, _, rest = nnx.split(model, nnx.Param, ...)
                  before the loss pass, then value_fn=lambda p: loss_fn(
                  nnx.merge(graphdef, p, nnx.as_pure(rest), copy=True), batch))
                  (nnx.pure in Flax 0.12.0)
(NNX's `optimizer.update(model, grads, value_fn=...)` passes the model's
`nnx.Param` state as `p`; a lambda that calls the model itself never reads
it. The extra passes run on a copy of the model, so they leave its batch
statistics and random streams alone.)"""


def _depends_on(jaxpr: Any, inputs: Any) -> bool:
    """Whether any output of ``jaxpr`` is computed from any of ``inputs``.

    A forward walk over the equations; an equation with a dependent input
    makes all its outputs dependent (so sub-jaxprs of ``cond``, ``scan`` or
    ``jit`` count conservatively: this only ever errs towards "depends")."""
    dependent = set(inputs)
    for eqn in jaxpr.eqns:
        if any(isinstance(v, Var) and v in dependent for v in eqn.invars):
            dependent.update(eqn.outvars)
    return any(isinstance(v, Var) and v in dependent for v in jaxpr.outvars)


def check_value_fn_depends(
    value_fn: Callable[..., Any], params: Any, transform: str
) -> None:
    """Raises when ``value_fn`` is not a scalar loss of the ``params`` it is given.

    Traces the reverse-mode derivative of ``value_fn`` at ``params`` once
    (at trace time; nothing runs on the device) with the output cotangent as
    an input of the traced program. The gradient depends on that cotangent
    unless JAX proved it zero: ``value_fn`` never reads its argument (the
    closure-over-the-model mistake in Flax NNX), reads it only through
    ``stop_gradient``, or only through integer or boolean values. Then every
    transformation that differentiates ``value_fn`` would silently compute
    nothing (no penalty, no second step), so it raises instead.
    """

    def pullback(primals: Any, cotangent: jax.Array) -> Any:
        out, vjp = jax.vjp(value_fn, primals)
        fix = loss_output_fix(out, "pass `value_fn=lambda p: loss_fn(p)[0]`")
        if fix is not None:
            kind = (
                jax.typeof(out).str_short()
                if hasattr(out, "shape")
                else type(out).__name__
            )
            raise TypeError(
                f"{transform}: `value_fn` must return a real floating-point "
                f"scalar (the loss), got {kind}{fix}."
            )
        # ones_like carries the output's shard_map type: a per-device loss
        # varies along the mesh axis, and so must its cotangent.
        return vjp(cotangent.astype(jnp.result_type(out)) * jnp.ones_like(out))

    closed = jax.make_jaxpr(pullback)(params, jnp.ones([], jnp.float32))
    if not _depends_on(closed.jaxpr, closed.jaxpr.invars[-1:]):
        raise ValueError(
            f"{transform}: `value_fn` does not depend on the parameters it is "
            "given, as JAX differentiates it (it never reads them, reads them "
            "only through `stop_gradient` or integer values, or a `custom_vjp` "
            "rule ignores the output cotangent), so its gradient is zero by "
            "construction and the transformation would silently change "
            "nothing. " + VALUE_FN_PATTERN
        )


def axis_reduce(
    reduce: Callable[[Any, str], Any], x: Any, axis_name: str, who: str
) -> Any:
    """``reduce(x, axis_name)`` (``jax.lax.psum``/``pmean``), with a clear
    error when no mapped axis of that name is bound here."""
    try:
        return reduce(x, axis_name)
    except NameError as error:
        raise ValueError(
            f"{who}: `axis_name={axis_name!r}` names no mapped axis here. Call "
            f"it inside `jax.shard_map`, `jax.pmap` or `jax.vmap(..., "
            f"axis_name={axis_name!r})` over that axis; under plain `jax.jit` "
            "with a sharded batch the loss is already global, so leave "
            "`axis_name=None`."
        ) from error
