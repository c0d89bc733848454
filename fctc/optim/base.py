"""Gradient transformations: optax's core contract on torch tensors.

A :class:`GradientTransformation` is a pair of pure functions:

* ``init(params) -> state`` builds the optimiser state (NamedTuples of tensors and trees);
* ``update(updates, state, params=None, **extra) -> (new_updates, new_state)`` transforms a
  gradient tree. Extra keyword arguments (``value=`` for :func:`reduce_on_plateau`, say) are
  passed through :func:`chain` to every member; members ignore what they do not use.

Nothing is mutated: every update returns new tensors. Step counters are int32 tensors and
hyperparameters tensors, so a compiled step never specialises on them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from .. import backend as _backend
from .. import tree as _tree

__all__ = [
    "GradientTransformation",
    "EmptyState",
    "chain",
    "named_chain",
    "identity",
    "set_to_zero",
    "stateless",
    "stateless_with_tree_map",
    "apply_updates",
    "update_and_apply",
    "with_extra_args_support",
]

Params = Any
Updates = Any
OptState = Any


class GradientTransformation(NamedTuple):
    """``init(params) -> state`` and ``update(updates, state, params=None, **extra)``."""

    init: Callable[[Params], OptState]
    update: Callable[..., tuple[Updates, OptState]]


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


def _accepts_extra(fn: Callable) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def with_extra_args_support(tx: GradientTransformation) -> GradientTransformation:
    """Wrap a transformation whose ``update`` takes no ``**extra`` so that it ignores them."""
    if _accepts_extra(tx.update):
        return tx

    def update(updates, state, params=None, **extra):
        del extra
        return tx.update(updates, state, params)

    return GradientTransformation(tx.init, update)


def _check_tx(tx: Any, where: str) -> GradientTransformation:
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        raise TypeError(f"{where}: expected a GradientTransformation, got {type(tx).__name__}")
    return with_extra_args_support(GradientTransformation(tx.init, tx.update))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations in sequence; the state is the tuple of their states."""
    txs = tuple(_check_tx(t, "chain") for t in transforms)

    def init(params):
        return tuple(t.init(params) for t in txs)

    def run(updates, state, params, extra, donate):
        """The chain's update, or with ``donate`` not None its :func:`update_and_apply`."""
        if len(state) != len(txs):
            raise ValueError(
                f"chain: the state holds {len(state)} entries for {len(txs)} transformations; "
                "was it built by this chain's init?"
            )
        new_state = []
        i = 0
        while i < len(txs):
            fused = _fuse_factor(txs, i, updates)
            j = i if fused is None else i + 1  # the member that produces this step's output
            if donate is not None and j == len(txs) - 1:
                # The last member adds its output to the parameters itself.
                kw = {} if fused is None else {"input_scale": fused[0], "input_norm": fused[1]}
                updates, s = txs[j].update.fctc_apply(
                    updates, state[j], params, donate=donate, **kw, **extra
                )
            elif fused is not None:
                # txs[i] only multiplies by a factor and keeps no state that changes: txs[i+1]
                # applies the factor inside its own kernel, sparing a pass over the gradients.
                updates, s = txs[j].update.fctc_scaled_update(
                    updates, state[j], params, fused[0], **extra
                )
            else:
                updates, s = txs[i].update(updates, state[i], params, **extra)
            if fused is not None:
                new_state.append(state[i])
            new_state.append(s)
            i = j + 1
        return updates, tuple(new_state)

    def update(updates, state, params=None, **extra):
        return run(updates, state, params, extra, None)

    if txs and getattr(txs[-1].update, "fctc_apply", None) is not None:

        def apply(updates, state, params, *, donate=False, **extra):
            return run(updates, state, params, extra, donate)

        update.fctc_apply = apply
    return GradientTransformation(init, update)


def _fuse_factor(txs, i, updates):
    """The factor to hand from ``txs[i]`` to ``txs[i + 1]``, when both take part in fusion.

    A transformation whose ``update`` has an ``fctc_output_factor(updates) -> (factor, norm)``
    attribute returns ``updates`` times that factor and has a state that never changes
    (``clip_by_global_norm``; ``norm`` is finite only when every input element is);
    one whose ``update`` has ``fctc_scaled_update(updates, state, params, factor, **extra)``
    computes ``update(updates * factor, ...)`` (the fused ``adam`` / ``adamw``). The results
    equal the unfused chain's up to rounding.
    """
    if i + 1 >= len(txs):
        return None
    factor_fn = getattr(txs[i].update, "fctc_output_factor", None)
    if factor_fn is None or getattr(txs[i + 1].update, "fctc_scaled_update", None) is None:
        return None
    return factor_fn(updates)


def named_chain(*transforms: tuple[str, GradientTransformation]) -> GradientTransformation:
    """Like :func:`chain`, with a dict state keyed by the given names (for logging)."""
    names = [n for n, _ in transforms]
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain: names must be unique, got {names}")
    txs = [(n, _check_tx(t, "named_chain")) for n, t in transforms]

    def init(params):
        return {n: t.init(params) for n, t in txs}

    def update(updates, state, params=None, **extra):
        new_state = {}
        for n, t in txs:
            updates, new_state[n] = t.update(updates, state[n], params, **extra)
        return updates, new_state

    return GradientTransformation(init, update)


def identity() -> GradientTransformation:
    """Leave updates unchanged."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        return updates, state

    return GradientTransformation(init, update)


def set_to_zero() -> GradientTransformation:
    """Replace every update with zeros (frozen parameters)."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        # zeros_like, not a multiplication by 0: NaN and Inf gradients must become 0 too.
        return _tree.map(torch.zeros_like, updates), state

    return GradientTransformation(init, update)


def stateless(f: Callable[[Updates, Params], Updates]) -> GradientTransformation:
    """A transformation from ``f(updates, params) -> updates`` with no state."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        return f(updates, params), state

    return GradientTransformation(init, update)


def stateless_with_tree_map(f: Callable[[torch.Tensor, Any], torch.Tensor]) -> GradientTransformation:
    """A stateless transformation applying ``f(g, p)`` leaf by leaf (``p`` is None without params)."""

    def g(updates, params):
        if params is None:
            return _tree.map(lambda u: f(u, None), updates)
        return _tree.map(f, updates, params)

    return stateless(g)


def apply_updates(params: Params, updates: Updates) -> Params:
    """``params + updates`` leaf by leaf, keeping each parameter's dtype (optax semantics).

    One fused ``torch._foreach_add`` over all leaves; neither input is mutated.
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
    if donate and (checked or (_can_donate(ps) and bool(_tree.all_finite(us)))):
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
    tx: GradientTransformation,
    updates: Updates,
    state: OptState,
    params: Params,
    *,
    donate: bool = False,
    **extra: Any,
) -> tuple[Params, OptState]:
    """``tx.update`` followed by :func:`apply_updates`, in one call: ``(new_params, new_state)``.

    The result equals ``apply_updates(params, tx.update(updates, state, params, **extra)[0])``
    with that update's new state, up to floating-point rounding. Transformations that know
    how (``adam``, ``adamw``, and a :func:`chain` ending in one, ``clip_by_global_norm``
    included) add their output to the parameters inside their own kernel instead of
    materialising an update tree, which reads and writes every parameter once less; others
    run the two steps in turn.

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
    """
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        raise TypeError(f"update_and_apply: expected a GradientTransformation, got {type(tx).__name__}")
    if params is None:
        raise ValueError("update_and_apply: the parameters are needed; got params=None")
    fused = getattr(tx.update, "fctc_apply", None)
    if fused is not None:
        return fused(updates, state, params, donate=donate, **extra)
    new_updates, new_state = with_extra_args_support(tx).update(updates, state, params, **extra)
    ps, spec = _tree.flatten(params)
    if not ps:
        return params, new_state
    return _tree.unflatten(spec, _added(ps, spec.flatten_up_to(new_updates), donate)), new_state
