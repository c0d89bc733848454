"""Pytree helpers on optree, shared by every fctc module.

Parameters, model state and optimiser state are pytrees: nested dicts, lists, tuples and
NamedTuples whose leaves are tensors. These helpers map over them, flatten them once for the
``torch._foreach_*`` hot paths, and convert between nested dicts and the flat ``"a.b.c"`` keys
that ``nn.Module.state_dict()`` uses.

``None`` is treated as an empty subtree (as in JAX), so optional entries vanish from leaves.

Eagerly, structures seen before flatten through generated code (``fctc._flatteners``). Inside
``torch.compile``, where dynamo would trace its Python model of optree at seconds per call,
``flatten`` / ``leaves`` / ``unflatten`` run ``fctc._traced_trees`` and ``map`` / ``select``
optree's ``tree_map``, which dynamo maps natively; the answers are optree's either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import optree
import torch

from . import _flatteners, _traced_trees

__all__ = [
    "map",
    "map_with_path",
    "leaves",
    "flatten",
    "unflatten",
    "structure",
    "zeros_like",
    "ones_like",
    "full_like",
    "global_norm",
    "cast",
    "device_of",
    "flatten_dict",
    "unflatten_dict",
    "paths",
    "size",
    "all_finite",
    "select",
]

PyTree = Any
_NS = "fctc"


def _is_tracing() -> bool:
    """Whether torch.compile traces or a functorch transform is active (``backend.is_tracing``)."""
    if torch.compiler.is_compiling():
        return True
    return torch._C._functorch.peek_interpreter_stack() is not None


def map(fn: Callable[..., Any], tree: PyTree, *rest: PyTree, is_leaf=None) -> PyTree:
    """Apply ``fn`` leaf-wise over one or more trees of the same structure.

    ``fn`` receives one leaf from each tree. The result has the structure of ``tree``.

    Args:
      fn: the function of one leaf per tree.
      tree: the first tree; its structure is the result's.
      *rest: more trees of the same structure.
      is_leaf: a predicate that stops the descent (optree's).

    Returns:
      The mapped tree.
    """
    if is_leaf is None and not torch.compiler.is_compiling():
        xs, spec = _flatteners.flatten(tree, False, _NS)
        if not rest:
            return spec.unflatten([fn(x) for x in xs])
        others = [spec.flatten_up_to(r) for r in rest]
        return spec.unflatten([fn(*a) for a in zip(xs, *others)])
    return optree.tree_map(fn, tree, *rest, is_leaf=is_leaf, namespace=_NS)


def map_with_path(fn: Callable[..., Any], tree: PyTree, *rest: PyTree, is_leaf=None) -> PyTree:
    """Like :func:`map`, but ``fn`` first receives the leaf's ``"a.b.c"`` key.

    Args:
      fn: ``fn(key, leaf, *other_leaves)``.
      tree: the first tree.
      *rest: more trees of the same structure.
      is_leaf: a predicate that stops the descent.

    Returns:
      The mapped tree.
    """
    keys = paths(tree, is_leaf=is_leaf)
    flat, spec = optree.tree_flatten(tree, is_leaf=is_leaf, namespace=_NS)
    others = [spec.flatten_up_to(r) for r in rest]
    out = [fn(k, x, *(o[i] for o in others)) for i, (k, x) in enumerate(zip(keys, flat))]
    return optree.tree_unflatten(spec, out)


def leaves(tree: PyTree, is_leaf=None) -> list[Any]:
    """The leaves of ``tree`` in optree's canonical order (dict keys sorted).

    Args:
      tree: a pytree.
      is_leaf: a predicate that stops the descent.

    Returns:
      The list of leaves.
    """
    if is_leaf is None:
        if not torch.compiler.is_compiling():
            return _flatteners.flatten(tree, False, _NS)[0]
        traced = _traced_trees.leaves(tree)
        if traced is not None:
            return traced
    return optree.tree_leaves(tree, is_leaf=is_leaf, namespace=_NS)


def flatten(tree: PyTree, is_leaf=None, none_is_leaf: bool = False) -> tuple[list[Any], Any]:
    """Return ``(leaves, treedef)``; :func:`unflatten` inverts it.

    Args:
      tree: a pytree.
      is_leaf: a predicate that stops the descent.
      none_is_leaf: keep ``None`` as a leaf instead of an empty subtree (optree's flag; the
        optimisers' update trees mark frozen parameters so).

    Returns:
      ``(leaves, treedef)``: optree's treedef, or inside compiled code (``torch.compile``) an
      ``fctc._traced_trees.Spec`` with the same ``unflatten`` / ``flatten_up_to`` /
      ``num_leaves``; give either back to :func:`unflatten`.
    """
    if is_leaf is None:
        if not torch.compiler.is_compiling():
            return _flatteners.flatten(tree, none_is_leaf, _NS)
        traced = _traced_trees.flatten(tree, none_is_leaf)
        if traced is not None:
            return traced
    return optree.tree_flatten(tree, is_leaf=is_leaf, none_is_leaf=none_is_leaf, namespace=_NS)


def unflatten(treedef: Any, leaves_: list[Any]) -> PyTree:
    """Rebuild a tree from a ``treedef`` (from :func:`flatten` or :func:`structure`) and leaves.

    Args:
      treedef: the structure.
      leaves_: one value per leaf, in order.

    Returns:
      The tree.
    """
    if isinstance(treedef, _traced_trees.Spec):
        return treedef.unflatten(leaves_)
    return optree.tree_unflatten(treedef, leaves_)


def structure(tree: PyTree, is_leaf=None) -> Any:
    """The tree definition of ``tree`` (its shape without the leaves).

    Args:
      tree: a pytree.
      is_leaf: a predicate that stops the descent.

    Returns:
      The treedef.
    """
    return optree.tree_structure(tree, is_leaf=is_leaf, namespace=_NS)


def zeros_like(tree: PyTree, dtype: torch.dtype | None = None) -> PyTree:
    """A tree of zero tensors shaped like ``tree`` (optionally of another dtype).

    Args:
      tree: a pytree of tensors.
      dtype: the result's dtype (default: each leaf's).

    Returns:
      The tree of zeros.
    """
    return map(lambda x: torch.zeros_like(x, dtype=dtype), tree)


def ones_like(tree: PyTree, dtype: torch.dtype | None = None) -> PyTree:
    """A tree of one-filled tensors shaped like ``tree``.

    Args:
      tree: a pytree of tensors.
      dtype: the result's dtype (default: each leaf's).

    Returns:
      The tree of ones.
    """
    return map(lambda x: torch.ones_like(x, dtype=dtype), tree)


def full_like(tree: PyTree, value: float, dtype: torch.dtype | None = None) -> PyTree:
    """A tree of tensors shaped like ``tree`` filled with ``value``.

    Args:
      tree: a pytree of tensors.
      value: the fill value.
      dtype: the result's dtype (default: each leaf's).

    Returns:
      The filled tree.
    """
    return map(lambda x: torch.full_like(x, value, dtype=dtype), tree)


def global_norm(tree: PyTree, ord: float = 2.0) -> torch.Tensor:
    """The ``ord``-norm of all leaves taken together, as one float32 scalar tensor.

    The one global norm of fctc: :func:`fctc.optim.clip_by_global_norm` clips by it and the
    train step logs it. Matches ``torch.nn.utils.clip_grad_norm_(norm_type=ord)``.

    Args:
      tree: a pytree of tensors (a list of tensors is one). Empty leaves add nothing; integer
        leaves count as their float values.
      ord: any positive number, or ``inf`` (the largest absolute value).

    Returns:
      A 0-d float32 tensor on the device of the first non-empty leaf (0 for an empty tree):
      per-leaf norms in the leaves' dtype, one fused kernel per (device, dtype), then their
      norm in float32.

    Raises:
      ValueError: ``ord`` is not positive (or is NaN).
    """
    xs = [x for x in leaves(tree) if x.numel()]  # empty leaves add nothing (and break inf)
    ord = float(ord)
    if not (ord > 0 or math.isinf(ord)):
        raise ValueError(f"global_norm: ord must be positive or inf, got {ord}")
    if not xs:
        return torch.zeros((), dtype=torch.float32)
    device, dtype = xs[0].device, xs[0].dtype
    if dtype.is_floating_point and all(x.dtype == dtype and x.device == device for x in xs):
        stacked = torch.stack(torch._foreach_norm(xs, ord))  # the common case: one kernel
        if dtype != torch.float32:
            stacked = stacked.to(torch.float32)
    else:
        norms = _per_leaf_norms(xs, ord)
        stacked = torch.stack([n.to(device=device, dtype=torch.float32) for n in norms])
    return torch.linalg.vector_norm(stacked, ord)


def _per_leaf_norms(xs: list[torch.Tensor], ord: float) -> list[torch.Tensor]:
    # One fused kernel per (device, dtype) group; _foreach_norm requires homogeneous lists.
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault((x.device, x.dtype), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(xs)
    for idx in groups.values():
        group = [xs[i] for i in idx]
        if group[0].is_floating_point() or group[0].is_complex():
            norms = torch._foreach_norm(group, ord)
        else:
            norms = [torch.linalg.vector_norm(g.float(), ord) for g in group]
        for i, n in zip(idx, norms):
            out[i] = n
    return out  # type: ignore[return-value]


def cast(tree: PyTree, dtype: torch.dtype, only_floating: bool = True) -> PyTree:
    """Cast leaves to ``dtype``; by default integer leaves (counters) are left as they are.

    Args:
      tree: a pytree of tensors.
      dtype: the target dtype.
      only_floating: cast floating leaves only (the default), or every leaf.

    Returns:
      A new tree (leaves already of ``dtype`` are returned as they are).
    """

    def _cast(x):
        if only_floating and not x.is_floating_point():
            return x
        return x.to(dtype)

    return map(_cast, tree)


def device_of(tree: PyTree) -> torch.device:
    """The device of the first tensor leaf of ``tree``: where state built for it belongs.

    Args:
      tree: a pytree (parameters, updates, a list of tensors).

    Returns:
      That leaf's device, or the CPU when the tree holds no tensor.
    """
    for x in leaves(tree):
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


def all_finite(tree: PyTree) -> torch.Tensor:
    """A boolean scalar tensor: True when every floating leaf is free of NaN and Inf.

    One ``isfinite`` reduction per leaf and no host synchronisation, on every device and
    under tracing. :func:`fctc.backend.all_finite` gives the same answer with an eager CPU
    shortcut.

    Args:
      tree: a pytree of tensors; integer and bool leaves are always finite.

    Returns:
      A 0-d bool tensor (True for a tree without floating leaves), on the first floating
      leaf's device.
    """
    xs = [x for x in leaves(tree) if x.is_floating_point()]
    if not xs:
        return torch.ones((), dtype=torch.bool)
    device = xs[0].device
    checks = [torch.isfinite(x).all().to(device) for x in xs]
    return torch.stack(checks).all()


def select(pred: torch.Tensor, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Leaf-wise ``torch.where(pred, on_true, on_false)`` for a boolean scalar ``pred``.

    Branch-free (no host synchronisation, one compiled graph for both outcomes);
    :func:`fctc.backend.select` makes the choice on the host where that costs nothing.

    Args:
      pred: a 0-d bool tensor.
      on_true: the tree chosen where ``pred`` holds.
      on_false: a tree of the same structure, chosen otherwise.

    Returns:
      A tree with ``on_false``'s dtypes and devices; its non-tensor leaves come from
      ``on_false``. NaN in the side not chosen never leaks into the result.
    """

    def pick(x, y):
        if not isinstance(y, torch.Tensor):
            return y
        x = torch.as_tensor(x, device=y.device)
        return torch.where(pred.to(y.device), x, y).to(y.dtype)

    if torch.compiler.is_compiling():
        # dynamo maps a tree natively, about ten times faster than it traces a flatten
        return optree.tree_map(pick, on_true, on_false, namespace=_NS)
    a, spec = flatten(on_true)
    return unflatten(spec, [pick(x, y) for x, y in zip(a, spec.flatten_up_to(on_false))])


def size(tree: PyTree) -> int:
    """The total number of elements over all leaves (a parameter count).

    Args:
      tree: a pytree of tensors.

    Returns:
      The number of elements.
    """
    return sum(x.numel() for x in leaves(tree))


def paths(tree: PyTree, sep: str = ".", is_leaf=None) -> list[str]:
    """The ``sep``-joined key of every leaf, in the order of :func:`leaves`.

    Args:
      tree: a pytree.
      sep: the separator.
      is_leaf: a predicate that stops the descent.

    Returns:
      One key per leaf.
    """
    ps = optree.tree_paths(tree, is_leaf=is_leaf, namespace=_NS)
    return [sep.join(str(p) for p in path) for path in ps]


def flatten_dict(tree: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """Nested dicts to one flat dict with ``"a.b.c"`` keys, keeping insertion order.

    Empty sub-dicts vanish (a layer without parameters has no ``state_dict`` entries).
    This is how a params pytree becomes a ``state_dict``.

    Args:
      tree: nested dicts with string keys.
      sep: the separator.

    Returns:
      The flat dict.

    Raises:
      ValueError: an empty key, a key holding ``sep``, or no mapping at the top.
    """
    out: dict[str, Any] = {}

    def _walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                k = str(k)
                if not k:
                    raise ValueError("flatten_dict: empty keys cannot form a 'a.b.c' path")
                if sep in k:
                    raise ValueError(f"flatten_dict: key {k!r} contains the separator {sep!r}")
                _walk(f"{prefix}{sep}{k}" if prefix else k, v)
        else:
            if not prefix:
                raise ValueError("flatten_dict: expected a mapping at the top level")
            out[prefix] = node

    _walk("", tree)
    return out


def unflatten_dict(flat: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """Flat ``"a.b.c"`` keys back to nested dicts (the inverse of :func:`flatten_dict`).

    Args:
      flat: ``{"a.b.c": value}``.
      sep: the separator.

    Returns:
      The nested dicts.

    Raises:
      ValueError: a key that is both a leaf and a subtree.
    """
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(sep)
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ValueError(
                    f"unflatten_dict: key {key!r} needs {sep.join(parts[: i + 1])!r} to be a "
                    "subtree, but it is already a leaf"
                )
            node = nxt
        if parts[-1] in node:
            raise ValueError(f"unflatten_dict: key {key!r} is both a leaf and a subtree")
        node[parts[-1]] = value
    return out
