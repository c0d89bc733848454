"""Masks and parameter groups: transformations that act on some leaves only (optax's layouts).

``masked`` / ``MaskedState``, ``multi_transform`` / ``MultiTransformState``, ``freeze`` and
``selective_transform``, so optax recipes carry over. Masks and labels are static Python values
(bools, strings) decided when the step is traced, resolved by one prefix-tree rule
(:class:`fctc.optim._prefix.PrefixTree`). These wrappers return plain
:class:`~fctc.optim.GradientTransformation` s: the inner transformation sees a subtree, so its
fused paths (:class:`~fctc.optim.FusedTransformation`) are not used through them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import optree
import torch

from .. import tree as _tree
from ._prefix import PrefixTree, check_groups, hashable_label
from .base import GradientTransformation, set_to_zero, with_extra_args_support

__all__ = [
    "MaskedNode",
    "MaskedState",
    "masked",
    "MultiTransformState",
    "multi_transform",
    "freeze",
    "selective_transform",
]


class MaskedNode(NamedTuple):
    """Stands in for a masked-out leaf: a pytree node with no leaves, so inner transforms skip it."""


class MaskedState(NamedTuple):
    """The state of :func:`masked`: the inner state, built on the selected leaves only."""

    inner_state: Any


class MultiTransformState(NamedTuple):
    """The state of :func:`multi_transform`: ``{label: MaskedState(inner_state)}``."""

    inner_states: Mapping[Hashable, Any]


def _static_bool(m: Any, where: str) -> bool:
    """A mask value as a Python bool (a one-element tensor is read once), else a TypeError."""
    if isinstance(m, torch.Tensor):
        if m.numel() != 1:
            raise TypeError(f"{where}: mask leaves must be single booleans, got a tensor of shape {tuple(m.shape)}")
        return bool(m)
    if isinstance(m, (bool, int)) or type(m).__name__ == "bool_":
        return bool(m)
    raise TypeError(
        f"{where}: mask leaves must be Python bools (True = selected), got {type(m).__name__}; "
        "build the mask with fctc.tree.map(lambda p: <condition>, params)"
    )


def _mask_leaves(leaves: list[Any], keep: list[bool]) -> list[Any]:
    return [x if k else MaskedNode() for x, k in zip(leaves, keep)]


def _masked_extra(extra: dict, updates: Any, spec: Any, keep: list[bool], enabled: bool) -> dict:
    """Mask the extra arguments that are trees shaped like the updates (optax's option)."""
    if not enabled:
        return extra
    paths = optree.tree_paths(updates, namespace="fctc")
    out = {}
    for k, v in extra.items():
        same = isinstance(v, (dict, list, tuple)) and optree.tree_paths(v, namespace="fctc") == paths
        out[k] = _tree.unflatten(spec, _mask_leaves(_tree.leaves(v), keep)) if same else v
    return out


def _run_on_subset(tx, updates, updates_leaves, params_leaves, spec, keep, inner_state, extra, mask_extra):
    """Apply ``tx`` to the leaves where ``keep`` is True; return (their new leaves, new state)."""
    sub_u = _tree.unflatten(spec, _mask_leaves(updates_leaves, keep))
    sub_p = None if params_leaves is None else _tree.unflatten(spec, _mask_leaves(params_leaves, keep))
    sub_extra = _masked_extra(extra, updates, spec, keep, mask_extra)
    new_sub, new_state = tx.update(sub_u, inner_state, sub_p, **sub_extra)
    new_leaves = _tree.leaves(new_sub)
    if len(new_leaves) != sum(keep):
        raise ValueError(
            f"masked: the inner transformation returned {len(new_leaves)} updates for "
            f"{sum(keep)} selected parameters"
        )
    return new_leaves, new_state


def masked(
    inner: GradientTransformation,
    mask: Any | Callable[[Any], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """Apply ``inner`` only to the leaves where ``mask`` is True; pass the others through unchanged.

    ``inner`` sees the selected leaves only (masked-out leaves are :class:`MaskedNode`), so its
    state holds nothing for the others. Typical use: weight decay on matrices only,
    ``masked(add_decayed_weights(1e-2), lambda p: fctc.tree.map(lambda x: x.ndim > 1, p))``.

    Args:
      inner: the transformation to apply to the selected leaves.
      mask: a tree of bools with the structure of the parameters (or a prefix of it: one bool
        for a whole subtree), or a function ``params -> mask``.
      mask_compatible_extra_args: also mask extra arguments shaped like the updates.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` with :class:`MaskedState`.
    """
    inner = with_extra_args_support(inner)
    resolved = PrefixTree(mask, "masked", _static_bool)

    def init(params):
        leaves, spec = _tree.flatten(params)
        keep = resolved.per_leaf(params)
        return MaskedState(inner.init(_tree.unflatten(spec, _mask_leaves(leaves, keep))))

    def update(updates, state, params=None, **extra):
        leaves, spec = _tree.flatten(updates)
        keep = resolved.per_leaf(updates)
        p_leaves = None if params is None else spec.flatten_up_to(params)
        new_leaves, inner_state = _run_on_subset(
            inner, updates, leaves, p_leaves, spec, keep, state.inner_state, extra, mask_compatible_extra_args
        )
        it = iter(new_leaves)
        out = [next(it) if k else u for u, k in zip(leaves, keep)]
        return _tree.unflatten(spec, out), MaskedState(inner_state)

    return GradientTransformation(init, update)


def multi_transform(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Any], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """Named parameter groups, each with its own transformation (optax's ``multi_transform``).

    Each transformation sees only the leaves carrying its label and keeps state for those only,
    e.g. ``multi_transform({"encoder": adamw(1e-4), "decoder": adamw(1e-3)}, {"encoder":
    "encoder", "decoder": "decoder"})`` (ESPnet's named optimisers). Updates and labels are
    flattened once per call.

    Args:
      transforms: one transformation per label.
      param_labels: a tree of labels with the structure of the parameters (or a prefix of it),
        or a function ``params -> labels``; every label must be a key of ``transforms``.
      mask_compatible_extra_args: also mask extra arguments shaped like the updates.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` with :class:`MultiTransformState`.
    """
    txs = {k: with_extra_args_support(v) for k, v in transforms.items()}
    resolved = PrefixTree(param_labels, "multi_transform", hashable_label)

    def labels_of(tree):
        per_leaf = resolved.per_leaf(tree)
        check_groups(per_leaf, txs, "multi_transform: param_labels")
        return per_leaf

    def init(params):
        leaves, spec = _tree.flatten(params)
        labels = labels_of(params)
        states = {}
        for group, tx in txs.items():
            keep = [lab == group for lab in labels]
            states[group] = MaskedState(tx.init(_tree.unflatten(spec, _mask_leaves(leaves, keep))))
        return MultiTransformState(states)

    def update(updates, state, params=None, **extra):
        leaves, spec = _tree.flatten(updates)
        labels = labels_of(updates)
        p_leaves = None if params is None else spec.flatten_up_to(params)
        out = list(leaves)
        new_states = {}
        for group, tx in txs.items():
            keep = [lab == group for lab in labels]
            new_leaves, inner = _run_on_subset(
                tx, updates, leaves, p_leaves, spec, keep, state.inner_states[group].inner_state, extra,
                mask_compatible_extra_args,
            )
            for i, x in zip([i for i, k in enumerate(keep) if k], new_leaves):
                out[i] = x
            new_states[group] = MaskedState(inner)
        return _tree.unflatten(spec, out), MultiTransformState(new_states)

    return GradientTransformation(init, update)


def freeze(mask: Any) -> GradientTransformation:
    """Zero the updates of the leaves where ``mask`` is True (frozen); pass the others through.

    Frozen parameters stay exactly as they are after :func:`~fctc.optim.apply_updates`. Put it
    last in a chain.

    Args:
      mask: a bool, a tree of bools (or a prefix of the parameter tree), or a function of the
        parameters returning one.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` (``masked(set_to_zero(), mask)``).
    """
    return masked(set_to_zero(), mask)


def selective_transform(optimizer: GradientTransformation, *, freeze_mask: Any) -> GradientTransformation:
    """Run ``optimizer`` on the unfrozen leaves only and zero the frozen ones.

    Unlike ``chain(optimizer, freeze(mask))`` the optimiser keeps no state (moments) for frozen
    parameters. speechain's ``updated_modules`` is :func:`fctc.optim.only_modules`, built on it.

    Args:
      optimizer: the transformation for the trained leaves.
      freeze_mask: True for frozen leaves: a tree of bools shaped like the parameters (or a
        prefix of it), or a function ``params -> such a tree``.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` with :class:`MultiTransformState` of the
      groups ``"train"`` and ``"freeze"``.
    """

    def label(m):
        return "freeze" if _static_bool(m, "selective_transform") else "train"

    if callable(freeze_mask):
        labels = lambda params: _tree.map(label, freeze_mask(params))  # noqa: E731
    else:
        labels = _tree.map(label, freeze_mask)
    return multi_transform({"train": optimizer, "freeze": set_to_zero()}, labels)
