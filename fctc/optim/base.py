"""Gradient transformations: optax's core contract on torch tensors, and fctc's fused kind.

A :class:`GradientTransformation` is a pair of pure functions:

* ``init(params) -> state`` builds the optimiser state (NamedTuples of tensors and trees);
* ``update(updates, state, params=None, **extra) -> (new_updates, new_state)`` transforms a
  gradient tree. Extra keyword arguments (``value=`` for :func:`reduce_on_plateau`, say) are
  passed through :func:`chain` to every member; members ignore what they do not use.

Two more types name what a transformation can do beyond that, so that :func:`chain` and
:func:`update_and_apply` follow them by type, never by looking for hidden attributes:

* a :class:`ScalingTransformation` (``clip_by_global_norm``) multiplies its input by one
  factor, which its ``factor`` function returns as a :class:`GlobalScale`;
* a :class:`FusedTransformation` (``adam``, ``adamw``, :func:`chain` ending in one,
  ``inject_hyperparams`` of one) takes such a scale into its own kernel (``update(...,
  scale=)``) and can add its output to the parameters itself (``apply``), in place when the
  caller donates its buffers.

Nothing is mutated unless donated: every update returns new tensors. Step counters are int32
tensors and hyperparameters tensors, so a compiled step never specialises on them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import backend as _backend
from .. import tree as _tree
from ._leaves import scaled

__all__ = [
    "GradientTransformation",
    "GlobalScale",
    "ScalingTransformation",
    "FusedTransformation",
    "EmptyState",
    "chain",
    "named_chain",
    "identity",
    "set_to_zero",
    "stateless",
    "apply_updates",
    "update_and_apply",
    "with_extra_args_support",
    "safe_int32_increment",
]

Params = Any
Updates = Any
OptState = Any

_INT32_MAX = 2**31 - 1


class GradientTransformation(NamedTuple):
    """optax's transformation: ``init(params) -> state`` and ``update(updates, state,
    params=None, **extra) -> (updates, state)``."""

    init: Callable[[Params], OptState]
    update: Callable[..., tuple[Updates, OptState]]


class GlobalScale(NamedTuple):
    """What is known about an update tree handed to a fused kernel.

    ``factor``: a 0-d tensor the updates are to be multiplied by first (a preceding clip's
    factor), or None for 1. ``norm``: a global norm of the updates before that factor, when
    known (None otherwise); it is finite only when every element is, which lets a donated
    update prove its input finite without another pass.
    """

    factor: torch.Tensor | None
    norm: torch.Tensor | None


class ScalingTransformation(NamedTuple):
    """A transformation whose output is its input times one factor, with a state that never
    changes (``clip_by_global_norm``).

    ``factor(updates, norm=None) -> GlobalScale | None`` is that factor (None for an empty
    tree); ``norm``, the global 2-norm of ``updates`` when the caller has it, spares computing
    it again (and may spare reading ``updates`` at all: then an empty tree, whose norm is 0,
    may get a factor instead of None). ``update`` equals multiplying by
    ``factor(updates).factor``.
    """

    init: Callable[[Params], OptState]
    update: Callable[..., tuple[Updates, OptState]]
    factor: Callable[..., GlobalScale | None]


class FusedTransformation(NamedTuple):
    """A transformation that takes a preceding scale into its kernel and can apply itself.

    * ``update(updates, state, params=None, *, scale=None, **extra)``: optax's update of
      ``updates * scale.factor`` (``scale`` a :class:`GlobalScale` or None).
    * ``apply(updates, state, params, *, scale=None, donate=False, **extra) -> (new_params,
      new_state)``: ``params + update(...)`` in one pass; with ``donate`` the result may be
      written into the buffers of ``updates``, ``state`` and ``params`` (see
      :func:`update_and_apply`).

    Both equal the unfused computation up to floating-point rounding.
    """

    init: Callable[[Params], OptState]
    update: Callable[..., tuple[Updates, OptState]]
    apply: Callable[..., tuple[Params, OptState]]


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


def safe_int32_increment(count: torch.Tensor) -> torch.Tensor:
    """``count + 1``, saturating at the largest int32 instead of wrapping (optax's counters).

    Args:
      count: an int32 tensor.

    Returns:
      The incremented count (a new tensor).
    """
    return torch.where(count < _INT32_MAX, count + 1, count)


def _accepts_extra(fn: Callable) -> bool:
    """Whether ``fn`` takes ``**kwargs`` (unknown signatures count as yes)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def with_extra_args_support(tx: Any) -> Any:
    """Make a transformation whose ``update`` takes no ``**extra`` ignore them.

    Args:
      tx: a transformation (anything with ``init`` and ``update``).

    Returns:
      ``tx`` itself when its update takes ``**extra`` (fctc's own always do), else a
      :class:`GradientTransformation` whose update drops them.
    """
    if isinstance(tx, (ScalingTransformation, FusedTransformation)) or _accepts_extra(tx.update):
        return tx  # fctc's fused kinds take **extra by contract

    def update(updates, state, params=None, **extra):
        del extra
        return tx.update(updates, state, params)

    return GradientTransformation(tx.init, update)


def _checked(tx: Any, where: str) -> Any:
    """``tx`` as one of the three transformation types, taking ``**extra``."""
    if isinstance(tx, (GradientTransformation, ScalingTransformation, FusedTransformation)):
        return with_extra_args_support(tx)
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        raise TypeError(f"{where}: expected a GradientTransformation, got {type(tx).__name__}")
    return with_extra_args_support(GradientTransformation(tx.init, tx.update))


# --- the forwarding rules: how a scale and an apply reach any transformation -----------------


def _scaled_update(tx: Any, updates: Updates, state: OptState, params: Params, scale: GlobalScale | None,
                  extra: dict) -> tuple[Updates, OptState]:
    """``tx.update(updates * scale.factor, ...)``: inside ``tx``'s kernel when it is fused,
    else by multiplying first."""
    if isinstance(tx, FusedTransformation):
        return tx.update(updates, state, params, scale=scale, **extra)
    if scale is not None and scale.factor is not None:
        updates = scaled(updates, scale.factor)
    return tx.update(updates, state, params, **extra)


def _scaled_apply(tx: Any, updates: Updates, state: OptState, params: Params, scale: GlobalScale | None,
                 donate: bool, extra: dict) -> tuple[Params, OptState]:
    """``params + tx.update(updates * scale.factor, ...)``: ``tx.apply`` when it is fused,
    else the update followed by the sum (in place on donated parameters)."""
    if isinstance(tx, FusedTransformation):
        return tx.apply(updates, state, params, scale=scale, donate=donate, **extra)
    new_updates, new_state = _scaled_update(tx, updates, state, params, scale, extra)
    ps, spec = _tree.flatten(params)
    if not ps:
        return params, new_state
    return _tree.unflatten(spec, _added(ps, spec.flatten_up_to(new_updates), donate)), new_state


# --- chain ------------------------------------------------------------------------------------


def _hands_factor(txs: tuple, i: int) -> bool:
    """The fusion step's condition: ``txs[i]`` only multiplies by a factor and ``txs[i + 1]``
    can apply that factor inside its own kernel (one pass over the gradients fewer)."""
    return (
        i + 1 < len(txs)
        and isinstance(txs[i], ScalingTransformation)
        and isinstance(txs[i + 1], FusedTransformation)
    )


def _arriving(txs: tuple, updates: Updates, scale: GlobalScale | None):
    """``(updates, scale)`` as the chain's first member can take them: a fused member takes the
    scale whole, a leading clip that hands its factor on can use a known norm; otherwise a
    factor is applied here and a norm (of updates about to change) is dropped."""
    if scale is None or not txs or isinstance(txs[0], FusedTransformation):
        return updates, scale
    if scale.factor is not None:
        return scaled(updates, scale.factor), None
    return updates, (scale if _hands_factor(txs, 0) else None)


def _run_chain(txs, updates, state, params, extra, scale, apply, donate):
    """A chain's update (``apply=False``) or apply: optax's loop plus the fusion step."""
    if len(state) != len(txs):
        raise ValueError(
            f"chain: the state holds {len(state)} entries for {len(txs)} transformations; "
            "was it built by this chain's init?"
        )
    updates, scale = _arriving(txs, updates, scale)
    new_state = list(state)
    i = 0
    while i < len(txs):
        if _hands_factor(txs, i):
            # The fusion step: txs[i] only multiplies by a factor and its state never changes;
            # txs[i + 1] applies the factor (from the caller's norm, if any) in its own kernel.
            scale = txs[i].factor(updates, None if scale is None else scale.norm)
            i += 1
        if apply and i == len(txs) - 1:
            updates, new_state[i] = txs[i].apply(updates, state[i], params, scale=scale, donate=donate, **extra)
        else:
            updates, new_state[i] = _scaled_update(txs[i], updates, state[i], params, scale, extra)
        scale, i = None, i + 1
    return updates, tuple(new_state)


def chain(*transforms: Any) -> GradientTransformation | FusedTransformation:
    """Apply transformations in sequence; the state is the tuple of their states (optax's chain).

    A :class:`ScalingTransformation` followed by a :class:`FusedTransformation` (``chain(
    clip_by_global_norm(1.0), adamw(...))``) hands its factor to the latter's kernel instead
    of multiplying the gradients itself; the results equal the unfused chain's up to rounding.

    Args:
      *transforms: the members, applied first to last.

    Returns:
      A :class:`FusedTransformation` when the last member is one (so that
      :func:`update_and_apply` adds the update to the parameters inside its kernel), else a
      :class:`GradientTransformation`.

    Raises:
      TypeError: a member is not a transformation.
    """
    txs = tuple(_checked(t, "chain") for t in transforms)

    def init(params):
        return tuple(t.init(params) for t in txs)

    if not (txs and isinstance(txs[-1], FusedTransformation)):

        def update(updates, state, params=None, **extra):
            return _run_chain(txs, updates, state, params, extra, None, False, False)

        return GradientTransformation(init, update)

    def fused_update(updates, state, params=None, *, scale=None, **extra):
        return _run_chain(txs, updates, state, params, extra, scale, False, False)

    def apply(updates, state, params, *, scale=None, donate=False, **extra):
        return _run_chain(txs, updates, state, params, extra, scale, True, donate)

    return FusedTransformation(init, fused_update, apply)


def named_chain(*transforms: tuple[str, Any]) -> GradientTransformation:
    """Like :func:`chain`, with a dict state keyed by the given names (for logging).

    Args:
      *transforms: ``(name, transformation)`` pairs, applied first to last.

    Returns:
      A :class:`GradientTransformation` (no fusion).

    Raises:
      ValueError: two members have the same name.
    """
    names = [n for n, _ in transforms]
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain: names must be unique, got {names}")
    txs = [(n, _checked(t, "named_chain")) for n, t in transforms]

    def init(params):
        return {n: t.init(params) for n, t in txs}

    def update(updates, state, params=None, **extra):
        new_state = {}
        for n, t in txs:
            updates, new_state[n] = t.update(updates, state[n], params, **extra)
        return updates, new_state

    return GradientTransformation(init, update)


def stateless(f: Callable[[Updates, Params], Updates]) -> GradientTransformation:
    """A transformation from ``f(updates, params) -> updates`` with no state.

    Args:
      f: the function (``params`` is None when the caller gives none).

    Returns:
      A :class:`GradientTransformation` with :class:`EmptyState`.
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        return f(updates, params), state

    return GradientTransformation(init, update)


def identity() -> GradientTransformation:
    """Leave updates unchanged.

    Returns:
      A stateless :class:`GradientTransformation`.
    """
    return stateless(lambda updates, params: updates)


def set_to_zero() -> GradientTransformation:
    """Replace every update with zeros (frozen parameters); NaN and Inf become 0 too.

    Returns:
      A stateless :class:`GradientTransformation`.
    """
    return stateless(lambda updates, params: _tree.map(torch.zeros_like, updates))


# --- applying updates -------------------------------------------------------------------------


def apply_updates(params: Params, updates: Updates) -> Params:
    """``params + updates`` leaf by leaf, keeping each parameter's dtype (optax semantics).

    Args:
      params: the parameter tree.
      updates: a tree of the same structure (the output of a transformation).

    Returns:
      New parameters (one fused ``torch._foreach_add`` over all leaves; nothing is mutated).
    """
    ps, spec = _tree.flatten(params)
    us = spec.flatten_up_to(updates)
    if not ps:
        return params
    return _tree.unflatten(spec, _added(ps, us, donate=False))


def _added(ps: list, us: list, donate: bool, checked: bool = False) -> list:
    """``p + u`` in each parameter's dtype; in place on ``ps`` when ``donate`` allows it
    (:func:`_can_donate`) and the updates are finite. ``checked``: the caller has made sure
    of both."""
    us = [u.to(p.dtype) if u.dtype != p.dtype else u for p, u in zip(ps, us)]
    if donate and (checked or (_can_donate(ps) and bool(_backend.all_finite(us)))):
        torch._foreach_add_(ps, us)
        return list(ps)
    return list(torch._foreach_add(ps, us))


def _can_donate(*lists: list) -> bool:
    """Whether tensors given up by their caller may be overwritten in place.

    Not under tracing (a compiled function stays pure; the compiler plans its own buffers),
    not for tensors that autograd records, and not when one buffer appears twice in the lists
    (a tied parameter would be updated twice).
    """
    if _backend.is_tracing():
        return False
    xs = [x for lst in lists for x in lst if x is not None]
    if torch.is_grad_enabled() and any(x.requires_grad for x in xs):
        return False
    ptrs = [x.data_ptr() for x in xs if x.numel()]
    return len(set(ptrs)) == len(ptrs)


def update_and_apply(
    tx: Any,
    updates: Updates,
    state: OptState,
    params: Params,
    *,
    donate: bool = False,
    norm: torch.Tensor | None = None,
    **extra: Any,
) -> tuple[Params, OptState]:
    """``tx.update`` followed by :func:`apply_updates`, in one call.

    The result equals ``apply_updates(params, tx.update(updates, state, params, **extra)[0])``
    with that update's new state, up to floating-point rounding. A
    :class:`FusedTransformation` (``adam``, ``adamw``, a :func:`chain` ending in one,
    ``clip_by_global_norm`` included) adds its output to the parameters inside its own kernel
    instead of materialising an update tree, which reads and writes every parameter once less;
    others run the two steps in turn.

    ``donate=True`` is the analogue of JAX's ``donate_argnums``: the caller gives up
    ``updates``, ``params`` and ``state``, and the new values may be written into their
    buffers, so an eager CPU AdamW step reads and writes each tensor once, as ``torch.optim``
    does in place. After such a call use only the returned trees: the donated ones may hold
    new values, old ones, or (the gradients) intermediate ones. Donation is a permission, not
    a promise: under :func:`fctc.backend.jit`, for tensors that require grad, and for trees
    holding one buffer twice, the call stays pure. The results are identical either way.
    Non-finite values never reach donated buffers: when the incoming updates (or, for a
    transformation without a fused path, its outputs) hold a NaN or Inf, the call computes
    its result in fresh tensors, so the donated parameters and state still hold the old
    values and a caller that skips non-finite steps can keep them. Deciding this reads one
    flag on the host (a synchronisation on accelerators).

    >>> import torch, fctc.optim as optim
    >>> params = {"w": torch.ones(3)}
    >>> tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(0.1, weight_decay=0.0))
    >>> state = tx.init(params)
    >>> params, state = optim.update_and_apply(tx, {"w": torch.ones(3)}, state, params)
    >>> params["w"]
    tensor([0.9000, 0.9000, 0.9000])

    Args:
      tx: the transformation.
      updates: the gradients (or incoming updates).
      state: ``tx``'s state.
      params: the parameters (required).
      donate: give up ``updates``, ``state`` and ``params`` (see above).
      norm: the global 2-norm of ``updates`` (:func:`fctc.tree.global_norm`) when the caller
        has computed it, as the train step does for its metrics: a leading
        ``clip_by_global_norm`` uses it instead of computing it again.
      **extra: passed to ``tx.update``.

    Returns:
      ``(new_params, new_state)``.

    Raises:
      TypeError: ``tx`` is not a transformation.
      ValueError: ``params`` is None.
    """
    if params is None:
        raise ValueError("update_and_apply: the parameters are needed; got params=None")
    if isinstance(tx, FusedTransformation):
        scale = None if norm is None else GlobalScale(None, norm)
        return tx.apply(updates, state, params, scale=scale, donate=donate, **extra)
    return _scaled_apply(_checked(tx, "update_and_apply"), updates, state, params, None, donate, extra)
