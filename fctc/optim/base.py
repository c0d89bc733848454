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

    def update(updates, state, params=None, **extra):
        if len(state) != len(txs):
            raise ValueError(
                f"chain: the state holds {len(state)} entries for {len(txs)} transformations; "
                "was it built by this chain's init?"
            )
        new_state = []
        i = 0
        while i < len(txs):
            fused = _fuse_factor(txs, i, updates)
            if fused is not None:
                # txs[i] only multiplies by a factor and keeps no state that changes: txs[i+1]
                # applies the factor inside its own kernel, sparing a pass over the gradients.
                updates, s = txs[i + 1].update.fctc_scaled_update(
                    updates, state[i + 1], params, fused, **extra
                )
                new_state += [state[i], s]
                i += 2
                continue
            updates, s = txs[i].update(updates, state[i], params, **extra)
            new_state.append(s)
            i += 1
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def _fuse_factor(txs, i, updates):
    """The factor to hand from ``txs[i]`` to ``txs[i + 1]``, when both take part in fusion.

    A transformation whose ``update`` has an ``fctc_output_factor(updates)`` attribute returns
    ``updates`` times that factor and has a state that never changes (``clip_by_global_norm``);
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
    us = [u.to(p.dtype) if u.dtype != p.dtype else u for p, u in zip(ps, us)]
    return _tree.unflatten(spec, torch._foreach_add(ps, us))

