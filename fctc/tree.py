"""Pytree helpers on optree, shared by every fctc module.

Parameters, model state and optimiser state are pytrees: nested dicts, lists, tuples and
NamedTuples whose leaves are tensors. These helpers map over them, flatten them once for the
``torch._foreach_*`` hot paths, and convert between nested dicts and the flat ``"a.b.c"`` keys
that ``nn.Module.state_dict()`` uses.

``None`` is treated as an empty subtree (as in JAX), so optional entries vanish from leaves.

Flattening a nested dict costs about a microsecond per node, and a train step flattens the
same few trees (parameters, gradients, optimiser state) several times. So eagerly these helpers
remember the structure of the trees they build or flatten, by object identity and weak
references to the leaves: flattening such a tree again is a check of its leaves against that
structure (``flatten_up_to`` and an identity test per leaf), an order of magnitude faster,
with the same result. A tree whose leaves or structure changed since (or an object that merely
reuses the identity of a dead one) fails the check and is flattened afresh. Under tracing
nothing is remembered.
"""

from __future__ import annotations

import builtins
import math
import operator
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import optree
import torch

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


# --- the structure memo -----------------------------------------------------------------------
# (id(tree), none_is_leaf) -> (treedef, one weak reference per leaf; None for a None leaf).
_MEMO: dict[tuple[int, bool], tuple[Any, list]] = {}
_MEMO_MAX = 64


_bmap = builtins.map  # (this module defines its own map)
_call = operator.methodcaller("__call__")
_NoneType = type(None)  # calling it gives None: the "reference" kept for a None leaf


def _recalled(tree: PyTree, none_is_leaf: bool) -> tuple[list[Any], Any] | None:
    """``(leaves, treedef)`` of ``tree`` from the memo, when it still holds them exactly."""
    entry = _MEMO.get((id(tree), none_is_leaf))
    if entry is None:
        return None
    spec, refs = entry
    try:
        xs = spec.flatten_up_to(tree)
    except (ValueError, TypeError):
        return None
    # Every leaf is the very object remembered (C-level loops: this runs on every flatten).
    if len(xs) != len(refs) or not all(_bmap(operator.is_, _bmap(_call, refs), xs)):
        return None
    return xs, spec


def _remember(tree: PyTree, spec: Any, xs: list[Any], none_is_leaf: bool) -> None:
    """Note ``tree``'s structure (trees whose leaves can be weakly referenced, or are None
    leaves of a ``none_is_leaf`` tree)."""
    try:
        refs = list(_bmap(weakref.ref, xs))
    except TypeError:
        if not none_is_leaf:
            return
        try:
            refs = [_NoneType if x is None else weakref.ref(x) for x in xs]
        except TypeError:
            return
    if len(_MEMO) >= _MEMO_MAX:
        for k in list(_MEMO)[: _MEMO_MAX // 2]:
            del _MEMO[k]
    _MEMO[(id(tree), none_is_leaf)] = (spec, refs)


_COMPOSE_MAX = 16  # children of a tuple / list / NamedTuple composed from their own structures


def _flatten(tree: PyTree, is_leaf, none_is_leaf: bool) -> tuple[list[Any], Any]:
    """optree's flatten, through the memo when it applies."""
    if is_leaf is not None or not isinstance(tree, (dict, list, tuple)) or _is_tracing():
        return optree.tree_flatten(tree, is_leaf=is_leaf, none_is_leaf=none_is_leaf, namespace=_NS)
    hit = _recalled(tree, none_is_leaf)
    if hit is not None:
        return hit
    composed = _composed(tree, none_is_leaf)
    xs, spec = composed or optree.tree_flatten(tree, none_is_leaf=none_is_leaf, namespace=_NS)
    _remember(tree, spec, xs, none_is_leaf)
    return xs, spec


def _composed(tree: PyTree, none_is_leaf: bool) -> tuple[list[Any], Any] | None:
    """A small tuple, list or NamedTuple flattened child by child, each child through the memo.

    Optimiser states are such containers around remembered trees (Adam's moments): composing
    their structure from the children's costs a few microseconds where flattening the whole
    again costs one per node. The result equals optree's (a test compares them).
    """
    t = type(tree)
    if not (t is tuple or t is list or (issubclass(t, tuple) and hasattr(t, "_fields"))):
        return None
    if len(tree) > _COMPOSE_MAX:
        return None
    xs: list[Any] = []
    specs = []
    for child in tree:
        if isinstance(child, torch.Tensor) or (child is None and none_is_leaf):
            xs.append(child)
            specs.append(optree.treespec_leaf(none_is_leaf=none_is_leaf, namespace=_NS))
        elif child is None:
            specs.append(optree.treespec_none(none_is_leaf=none_is_leaf, namespace=_NS))
        else:
            cx, cs = _flatten(child, None, none_is_leaf)
            xs.extend(cx)
            specs.append(cs)
    children = t(*specs) if t is not tuple and t is not list else t(specs)
    return xs, optree.treespec_from_collection(children, none_is_leaf=none_is_leaf, namespace=_NS)


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
    if is_leaf is not None:
        return optree.tree_map(fn, tree, *rest, is_leaf=is_leaf, namespace=_NS)
    xs, spec = _flatten(tree, None, False)
    others = [spec.flatten_up_to(r) for r in rest]
    return unflatten(spec, [fn(*args) for args in zip(xs, *others)])


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
    return _flatten(tree, is_leaf, False)[0]


def flatten(tree: PyTree, is_leaf=None, none_is_leaf: bool = False) -> tuple[list[Any], Any]:
    """Return ``(leaves, treedef)``; :func:`unflatten` inverts it.

    Args:
      tree: a pytree.
      is_leaf: a predicate that stops the descent.
      none_is_leaf: keep ``None`` as a leaf instead of an empty subtree (optree's flag; the
        optimisers' update trees mark frozen parameters so).

    Returns:
      ``(leaves, treedef)``.
    """
    return _flatten(tree, is_leaf, none_is_leaf)


def unflatten(treedef: Any, leaves_: list[Any]) -> PyTree:
    """Rebuild a tree from a ``treedef`` (from :func:`flatten` or :func:`structure`) and leaves.

    Args:
      treedef: the structure.
      leaves_: one value per leaf, in order.

    Returns:
      The tree.
    """
    tree = optree.tree_unflatten(treedef, leaves_)
    if isinstance(tree, (dict, list, tuple)) and not _is_tracing():
        _remember(tree, treedef, leaves_ if isinstance(leaves_, list) else list(leaves_), treedef.none_is_leaf)
    return tree


def structure(tree: PyTree, is_leaf=None) -> Any:
    """The tree definition of ``tree`` (its shape without the leaves).

    Args:
      tree: a pytree.
      is_leaf: a predicate that stops the descent.

    Returns:
      The treedef.
    """
    return _flatten(tree, is_leaf, False)[1]


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
    a, spec = flatten(on_true)
    b = spec.flatten_up_to(on_false)
    out = []
    for x, y in zip(a, b):
        if not isinstance(y, torch.Tensor):
            out.append(y)
            continue
        x = torch.as_tensor(x, device=y.device)
        out.append(torch.where(pred.to(y.device), x, y).to(y.dtype))
    return unflatten(spec, out)


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
