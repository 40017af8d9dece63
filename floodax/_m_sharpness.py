"""m-sharpness: SAM's perturbation taken per group of ``m`` examples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from floodax._accumulation import MicroBatch, _axis_names, _varying_axes
from floodax._penalty import accumulation_dtype
from floodax._validation import (
    axis_reduce,
    check_int,
    check_matching_trees,
    loss_output_fix,
    require_params,
)

_NAME = "floodax.m_sharpness"


def _split_batch(batch: Any, group_size: int) -> Any:
    """``batch`` with every leaf's leading axis ``B`` reshaped to
    ``(B // group_size, group_size)``; raises unless every leaf has the
    same ``B`` and ``group_size`` divides it."""
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    if not leaves:
        raise ValueError(
            f"{_NAME}: `batch` has no array leaves; pass the mini-batch the "
            "loss function takes, a pytree of arrays with a leading batch axis."
        )
    sizes = {}
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path) or "the root"
        if np.ndim(leaf) == 0:
            raise ValueError(
                f"{_NAME}: the leaf of `batch` at {where} is a scalar; every "
                "leaf needs a leading batch axis to split into groups. Close "
                "over constants in `loss_fn` instead of passing them in `batch`."
            )
        sizes.setdefault(np.shape(leaf)[0], where)
    if len(sizes) > 1:
        described = ", ".join(f"{n} at {where}" for n, where in sizes.items())
        raise ValueError(
            f"{_NAME}: the leaves of `batch` disagree on the batch size "
            f"({described}); every leaf needs the same leading axis."
        )
    (size,) = sizes
    if size % group_size:
        raise ValueError(
            f"{_NAME}: `batch` has {size} examples, not a multiple of "
            f"`group_size`={group_size}, so {size % group_size} of them would "
            "be in no group. Pass a `group_size` that divides the batch size, "
            "or drop or pad the remainder yourself."
        )
    return jax.tree.map(
        lambda x: jnp.reshape(x, (size // group_size, group_size, *np.shape(x)[1:])),
        batch,
    )


def _group_mean(tree: Any, dtypes: Any) -> Any:
    """The mean over the leading (group) axis of every leaf, accumulated in
    at least float32 and cast to the matching leaf of ``dtypes``."""
    acc = accumulation_dtype(tree)
    return jax.tree.map(
        lambda x, like: jnp.mean(x.astype(acc), axis=0).astype(like.dtype),
        tree,
        dtypes,
    )


def _state_mean(leaf: jax.Array) -> jax.Array:
    """One state leaf from the groups' new states (leading axis): a float
    leaf is averaged as ``x₀ + mean(x − x₀)``, exactly ``x₀`` where every
    group has the same value (a hyperparameter, a schedule's output); other
    leaves (a step count) are the first group's."""
    first = leaf[0]
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
        return first
    acc = jnp.promote_types(leaf.dtype, jnp.float32)
    same = leaf == first  # an infinite common value: ∞ − ∞ would be NaN
    shift = jnp.mean(jnp.where(same, 0, leaf.astype(acc) - first.astype(acc)), axis=0)
    return jnp.where(
        jnp.all(same, axis=0), first, (first.astype(acc) + shift).astype(leaf.dtype)
    )


def _per_device(params: Any, names: tuple[str, ...]) -> Any:
    """``params`` typed as differing between devices along ``names``.

    Under ``shard_map`` the gradient with respect to a replicated input is
    summed over the devices (the transpose of its implicit broadcast); each
    device's perturbation needs its own gradient, so the parameters are cast
    to per-device values first (a no-op on the values)."""

    def cast(leaf: Any) -> Any:
        axes = tuple(n for n in names if n not in _varying_axes(leaf))
        if not axes:
            return leaf
        if hasattr(jax.lax, "pcast"):  # jax >= 0.9
            return jax.lax.pcast(leaf, axes, to="varying")
        return jax.lax.pvary(leaf, axes)  # the floor, jax 0.8

    return jax.tree.map(cast, params)


def m_sharpness(
    inner: optax.GradientTransformation,
    group_size: int,
    *,
    axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""m-sharpness: ``inner`` on each group of ``m`` examples, averaged.

    Foret et al. (Section 4.1, Appendix C.3) split the batch into groups of
    ``m`` examples; each group is perturbed along its *own* gradient and the
    gradients at the perturbed points are averaged. With ``inner`` SAM's
    update ``g ↦ ∇L(θ + ρ·g/‖g‖)``,

    .. math::

      \text{update} = \frac1G \sum_{k=1}^{G}
      \nabla L_k\Big(\theta + \rho\,\frac{\nabla L_k(\theta)}
      {\|\nabla L_k(\theta)\|}\Big)

    where ``L_k`` is the loss on group ``k`` and ``G = B / m``. Smaller ``m``
    generalised better in the paper; ``m = B`` is SAM itself.

    ``inner`` is any transformation that takes a gradient and the loss
    function of the parameters, ``inner.update(grads, state, params,
    value_fn=...)``: :func:`floodax.sam`, :func:`floodax.gsam`,
    ``floodax.add_grad_norm_penalty(ρ, power=1, method="finite_difference",
    radius=ρ)`` (SAM's update), or a chain starting with one whose other
    members are linear (a scale): an optimizer inside would be applied per
    group and averaged (Adam's moments of per-group gradients), a different
    optimizer; keep it after ``m_sharpness``. It runs on each
    group as if the group were the whole batch: its updates are the group's
    gradient, ``value_fn`` and ``value`` the group's loss (other extra
    arguments pass through), all groups at once under ``jax.vmap``. Each
    group's forward and backward passes see only its own ``m`` examples, so
    XLA counts about the flops of SAM on the whole batch, two gradients'
    worth (1.0–1.1× for ``m`` from 128 down to 8 on a batch of 128, 2× at
    ``m = 1``); but each group carries its own perturbed copy of the
    parameters, and the step time grows with the ``G`` copies (on a 2-core
    CPU, 2× SAM's at ``G = 4``, 7–11× at 16, 70–115× at 128:
    ``benchmarks/m_sharpness.py``).

    ``update`` takes the loss function of the parameters *and a batch*,
    ``loss_fn(params, batch)`` (the mean loss over ``batch``), and the batch,
    a pytree of arrays with a leading batch axis, as the extra arguments
    ``loss_fn=`` and ``batch=``; ``value_fn`` cannot be split into groups.
    The incoming updates are not used: each group's gradient is computed
    here, so the whole batch's gradient is not needed (under ``jit``, a
    gradient computed only to be passed in is dead code, and XLA drops it).
    They fix the structure and dtypes of the output, which is why
    ``m_sharpness`` goes first in a chain:
    ``optax.chain(floodax.m_sharpness(sam, m), optax.sgd(lr))``.

    **State.** The state is ``inner``'s. Every group starts from the same
    state and the new state is taken once: an integer leaf (a step count
    for a schedule) is the first group's, the same in every group; a float
    leaf is the mean over the groups (exactly the common value where the
    groups agree).

    **Data parallel.** Under ``shard_map`` with ``axis_name``, each device
    splits its own shard into groups, and the groups' updates are averaged
    over ``axis_name`` as well (with equal shards, the mean over all groups
    of the global batch). Each device perturbs along its own gradient:
    ``shard_map`` sums a gradient with respect to replicated parameters
    over the devices, so ``m_sharpness`` first casts them to per-device
    values (``jax.lax.pcast(..., to="varying")``; nothing moves).
    ``group_size`` equal to the per-device batch is
    the per-device perturbation of Foret et al.'s code
    (google-research/sam, ``sam_jax/training_utils/flax_training.py``,
    ``train_step``: under ``pmap`` each replica's gradient perturbs its own
    copy, unsynchronised by default, ``sync_perturbations=False``, and the
    gradients at the perturbed points are ``pmean``'d over ``'batch'``). A
    float state leaf that differs between devices (``shard_map``'s
    ``check_vma`` types tell) is averaged over ``axis_name`` too.

    **Inside** :func:`floodax.multi_steps` ``m_sharpness`` raises, since its
    updates there are the mean of all micro-batches while ``batch`` is the
    last one; put it before the accumulation instead,
    ``optax.chain(floodax.m_sharpness(sam, m), floodax.multi_steps(tx, k))``,
    which is m-sharpness on the large batch, exactly.

    Args:
      inner: the transformation applied to each group, given the group's
        gradient and ``value_fn``.
      group_size: ``m``, the number of examples per group (a Python int; it
        is a shape). It must divide the batch size, per device with
        ``axis_name``.
      axis_name: under ``shard_map``, the name (or names) of the mesh axes
        the batch is sharded over; ``None`` on one device or under plain
        ``jit``, where the batch is global.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
      ``params``, ``loss_fn`` and ``batch``.

    Raises:
      TypeError: ``inner`` is not an optax transformation; ``group_size`` is
        not an int; ``update`` is called without ``params``, ``loss_fn`` or
        ``batch``, inside :func:`floodax.multi_steps`, or with a ``loss_fn``
        that does not return a real scalar.
      ValueError: ``group_size < 1``; the batch size is not a multiple of
        ``group_size``; ``batch`` has no leaves, a scalar leaf or leaves of
        different batch sizes; ``axis_name`` names no mapped axis.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, floodax
      >>> loss_fn = lambda w, b: jnp.mean((b["x"] @ w - b["y"]) ** 2)
      >>> batch = {"x": jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]),
      ...          "y": jnp.array([1.0, -1.0, 0.5, 2.0])}
      >>> w = jnp.array([0.3, -0.2])
      >>> sam = floodax.add_grad_norm_penalty(       # SAM's update, ρ = 0.05
      ...     0.05, power=1, method="finite_difference", radius=0.05)
      >>> tx = floodax.m_sharpness(sam, group_size=2)
      >>> g, _ = tx.update(jax.grad(loss_fn)(w, batch), tx.init(w), w,
      ...                  loss_fn=loss_fn, batch=batch)

      The same as SAM on each half of the batch, averaged:

      >>> halves = [jax.tree.map(lambda a: a[:2], batch),
      ...           jax.tree.map(lambda a: a[2:], batch)]
      >>> per_group = [sam.update(jax.grad(loss_fn)(w, h), None, w,
      ...                         value_fn=lambda p, h=h: loss_fn(p, h))[0]
      ...              for h in halves]
      >>> print(jnp.allclose(g, (per_group[0] + per_group[1]) / 2, atol=1e-6))
      True

      First in a chain:

      >>> tx = optax.chain(floodax.m_sharpness(sam, 2), optax.sgd(0.1))
      >>> updates, _ = tx.update(jax.grad(loss_fn)(w, batch), tx.init(w), w,
      ...                        loss_fn=loss_fn, batch=batch)

    References:
      Foret, Kleiner, Mobahi and Neyshabur, "Sharpness-Aware Minimization for
      Efficiently Improving Generalization", ICLR 2021.
      Andriushchenko and Flammarion, "Towards Understanding Sharpness-Aware
      Minimization", ICML 2022.
    """
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            f"`inner` must be an optax transformation (e.g. floodax.sam(radius)), "
            f"got {type(inner).__name__}."
        )
    check_int(
        "group_size",
        group_size,
        minimum=1,
        fix="; it is the number of examples per group, a shape",
    )
    inner = optax.with_extra_args_support(inner)
    names = () if axis_name is None else _axis_names(axis_name)

    def update_fn(
        updates: optax.Updates,
        state: Any,
        params: optax.Params | None = None,
        *,
        loss_fn: Callable[[optax.Params, Any], Any] | None = None,
        batch: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, Any]:
        if isinstance(batch, MicroBatch):
            raise TypeError(
                f"{_NAME} inside floodax.multi_steps would perturb with the last "
                "micro-batch's groups while its updates are the mean of all the "
                "micro-batches. Put it before the accumulation: optax.chain("
                "floodax.m_sharpness(inner, group_size), "
                "floodax.multi_steps(tx, k)), which is m-sharpness on the large "
                "batch."
            )
        if loss_fn is None or batch is None:
            missing = "`loss_fn`" if loss_fn is None else "`batch`"
            raise TypeError(
                f"{_NAME} needs {missing}: call `tx.update(grads, state, params, "
                "loss_fn=loss_fn, batch=batch)` with `loss_fn(params, batch)` "
                "the mean loss over `batch`, a pytree of arrays with a leading "
                "batch axis (a `value_fn` of the parameters alone cannot be "
                "split into groups)."
            )
        require_params(params, _NAME)
        check_matching_trees(updates, params, _NAME)
        groups = _split_batch(batch, group_size)
        if names:
            # psum of a constant is the axis size (no communication): it
            # names the fix when no such axis is bound, before any cast.
            axis_reduce(jax.lax.psum, 1, axis_name, _NAME)
            params = _per_device(params, names)
        first = jax.tree.map(lambda x: x[0], groups)
        fix = loss_output_fix(
            jax.eval_shape(loss_fn, params, first),
            "pass `loss_fn=lambda p, b: f(p, b)[0]`",
        )
        if fix is not None:
            raise TypeError(
                f"{_NAME}: `loss_fn(params, batch)` must return a real "
                f"floating-point scalar (the mean loss over `batch`){fix}."
            )

        def one_group(group: Any) -> tuple[optax.Updates, Any]:
            value, grads = jax.value_and_grad(loss_fn)(params, group)
            return inner.update(
                grads,
                state,
                params,
                **{
                    **extra_args,
                    "value": value,
                    "value_fn": lambda p: loss_fn(p, group),
                },
            )

        group_updates, group_states = jax.vmap(one_group)(groups)
        new_updates = _group_mean(group_updates, updates)
        new_state = jax.tree.map(_state_mean, group_states)
        if axis_name is not None:
            new_updates = axis_reduce(jax.lax.pmean, new_updates, axis_name, _NAME)
            new_state = jax.tree.map(_device_mean, new_state)
        return new_updates, new_state

    def _device_mean(leaf: Any) -> Any:
        """A float state leaf that differs between devices, averaged over them."""
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            return leaf
        if not set(names) & _varying_axes(leaf):
            return leaf
        return axis_reduce(jax.lax.pmean, leaf, axis_name, _NAME)

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)
