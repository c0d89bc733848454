"""Generated flatten functions for the tree structures an eager loop flattens again and again.

``optree.tree_flatten`` sorts every dict's keys and looks every node's type up in the registry,
on each call: about 100 microseconds for a small QuartzNet's parameter tree (155 nodes), and
the eager train step flattens its parameter, gradient and optimiser-state trees a dozen times
per step. A structure seen twice gets a flattener of its own here: straight-line Python,
generated from the tree definition, that checks every node of the input (exact container
type, a dict's keys in their insertion order, a sequence's length, ``None`` where the
structure has ``None``, a tensor at every leaf) and returns the leaves in optree's order, or
``None`` at the first node that differs. Only then is the structure's own treedef returned, so
the answer is always optree's: the same leaves and a treedef that rebuilds the same tree (a
dict's key order included; optree keeps it for ``unflatten``).

Structures with other node types (OrderedDict, deque, registered classes), non-string dict
keys or non-tensor leaves are left to optree.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import optree
import torch

_counter = itertools.count()

#: Flatteners per top-level signature (see :func:`_signature`), flag and namespace, newest first.
_BY_SIGNATURE: dict[tuple, list[tuple[Callable[[Any], list | None], Any]]] = {}
#: How often each treedef came out of a full flatten; the second time generates a flattener.
_SEEN: dict[tuple, int] = {}
_MAX_PER_SIGNATURE = 4
_MAX_SIGNATURES = 256
_MAX_SEEN = 512


class _Unsupported(Exception):
    """A structure the generator does not handle: it stays with optree."""


class _Slot:
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def _signature(tree: Any) -> tuple | None:
    """What the cache is keyed by: the top-level container's type and length (None for others)."""
    t = type(tree)
    return (t, len(tree)) if t is dict or t is list or issubclass(t, tuple) else None


def _emit(node: Any, var: str, lines: list[str], leaf_vars: dict[int, str], names: dict[str, Any],
          none_is_leaf: bool, fresh: Callable[[], str]) -> None:
    """Append the checks and unpacking of ``node`` (a slot tree) held in variable ``var``."""
    if isinstance(node, _Slot):
        leaf_vars[node.index] = var  # checked all at once at the end
        return
    t = type(node)
    if node is None:
        lines.append(f"if {var} is not None: return None")
        return
    if t is dict:
        keys = tuple(node)
        if not all(type(k) is str for k in keys):
            raise _Unsupported("dict keys other than str")
        lines.append(f"if type({var}) is not dict or tuple({var}) != {keys!r}: return None")
        children = [fresh() for _ in keys]
        if children:  # the values in the keys' order, just checked
            lines.append(f"{', '.join(children)}, = {var}.values()")
        for c, child in zip(children, node.values()):
            _emit(child, c, lines, leaf_vars, names, none_is_leaf, fresh)
        return
    if t is list or t is tuple or (issubclass(t, tuple) and hasattr(t, "_fields")):
        if t is list or t is tuple:
            type_name = t.__name__
        else:
            type_name = f"T{len(names)}"
            names[type_name] = t
        lines.append(f"if type({var}) is not {type_name} or len({var}) != {len(node)}: return None")
        children = [fresh() for _ in node]
        if children:
            lines.append(f"{', '.join(children)}, = {var}")
        for c, child in zip(children, node):
            _emit(child, c, lines, leaf_vars, names, none_is_leaf, fresh)
        return
    raise _Unsupported(f"a {t.__name__} node")


_KINDS = frozenset({
    optree.PyTreeKind.LEAF, optree.PyTreeKind.NONE, optree.PyTreeKind.TUPLE,
    optree.PyTreeKind.LIST, optree.PyTreeKind.DICT, optree.PyTreeKind.NAMEDTUPLE,
})


def _plain(spec: Any) -> bool:
    """Whether every node of ``spec`` is of a kind the generator writes (no registered classes:
    their flatten functions are their own)."""
    return spec.kind in _KINDS and all(_plain(c) for c in spec.children())


def _generate(spec: Any, none_is_leaf: bool) -> Callable[[Any], list | None] | None:
    """The flatten function of structure ``spec``, or None where the generator cannot write one."""
    if not _plain(spec):
        return None
    try:
        node = optree.tree_unflatten(spec, [_Slot(i) for i in range(spec.num_leaves)])
    except (TypeError, ValueError):
        return None
    lines: list[str] = []
    leaf_vars: dict[int, str] = {}
    names: dict[str, Any] = {
        "repeat": itertools.repeat, "_TENSOR": torch.Tensor, "_TENSOR_OR_NONE": (torch.Tensor, type(None)),
    }
    count = itertools.count()
    try:
        _emit(node, "t", lines, leaf_vars, names, none_is_leaf, lambda: f"v{next(count)}")
    except _Unsupported:
        return None
    out = ", ".join(leaf_vars[i] for i in range(spec.num_leaves))
    lines.append(f"xs = [{out}]")
    # Every leaf a tensor (or None, where None is a leaf): a C-level loop over the list.
    leaf_types = "_TENSOR_OR_NONE" if none_is_leaf else "_TENSOR"
    lines.append(f"return xs if all(map(isinstance, xs, repeat({leaf_types}))) else None")
    body = "\n".join("    " + line for line in lines)
    code = f"def flatten(t):\n{body}\n"
    scope = dict(names)
    exec(compile(code, f"<fctc.tree flattener {next(_counter)}>", "exec"), scope)  # noqa: S102
    return scope["flatten"]


def flatten(tree: Any, none_is_leaf: bool, namespace: str) -> tuple[list[Any], Any]:
    """``optree.tree_flatten(tree, none_is_leaf=..., namespace=...)``, through a generated
    flattener when ``tree``'s structure has one."""
    sig = _signature(tree)
    if sig is not None:
        key = (sig, none_is_leaf, namespace)
        for fn, spec in _BY_SIGNATURE.get(key, ()):
            xs = fn(tree)
            if xs is not None:
                return xs, spec
    xs, spec = optree.tree_flatten(tree, none_is_leaf=none_is_leaf, namespace=namespace)
    if sig is not None:
        _remember(key, spec, none_is_leaf)
    return xs, spec


def _remember(key: tuple, spec: Any, none_is_leaf: bool) -> None:
    """Count ``spec``; on its second full flatten, generate its flattener."""
    seen_key = (key, spec)
    n = _SEEN.get(seen_key, 0) + 1
    if len(_SEEN) >= _MAX_SEEN:
        _SEEN.clear()
    _SEEN[seen_key] = n
    if n != 2:
        return
    fn = _generate(spec, none_is_leaf)
    if fn is None:
        return
    if len(_BY_SIGNATURE) >= _MAX_SIGNATURES and key not in _BY_SIGNATURE:
        _BY_SIGNATURE.clear()  # many structures (lists of every length, say): start afresh
    entries = [(fn, spec), *_BY_SIGNATURE.get(key, ())]
    _BY_SIGNATURE[key] = entries[:_MAX_PER_SIGNATURE]
