"""Flattening trees inside compiled code, in plain Python that dynamo traces quickly.

Under ``torch.compile`` dynamo cannot call optree's C functions; it traces its own Python
model of optree instead (``torch._dynamo.polyfills.pytree``), which looks every node up in the
registry and builds a Python object per node of the tree definition. Tracing that costs
seconds per call on an optimiser state (a ``tree.select`` over AdamW's state of a 35-leaf
model: about 4.5 s), and a compiled train step flattens its trees a few dozen times. The
structures fctc builds are dicts with string keys, lists, tuples, NamedTuples and ``None``:
this module flattens those with a short recursion that creates no objects but lists and
tuples (new objects are what dynamo tracks at length), and :class:`Spec` wraps the nested
tuples that describe the structure, with the methods of optree's tree definition that fctc
uses (``unflatten``, ``flatten_up_to``, ``num_leaves``). The leaves come in optree's order (a
dict's keys sorted) and ``unflatten`` rebuilds a dict in its original key order, as optree
does. Any other node (an OrderedDict, a deque, a registered class, a dict with keys other than
strings) makes :func:`flatten` and :func:`leaves` return None, and the caller uses optree.
"""

from __future__ import annotations

import collections
from typing import Any

import torch

# A structure is the tuple of its nodes in pre-order (a node, then its children's subtrees in
# leaf order): (_LEAF,), (_NONE,), (_DICT, keys sorted, the same reversed, keys in their order,
# per key in that order its position among the sorted ones) or (_SEQ, type, length). The code
# is written for dynamo's tracer, which inlines every Python call at a cost (a helper, a
# comprehension, ``reversed``, a set comparison): loops over an explicit stack, slices, and
# nothing else.
_LEAF, _NONE, _DICT, _SEQ = 0, 1, 2, 3
_LEAF_NODE, _NONE_NODE = (_LEAF,), (_NONE,)
_CONTAINERS = (dict, list, tuple, collections.deque)


class _Unsupported(Exception):
    """A node this module leaves to optree."""


def _describe(tree: Any, leaves: list, none_is_leaf: bool) -> tuple:
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, torch.Tensor):  # the usual leaf, first: the fewest steps to trace
            leaves.append(node)
            nodes.append(_LEAF_NODE)
            continue
        t = type(node)
        if t is dict:
            order = tuple(node)
            keys = tuple(sorted(order))  # optree's order where the keys compare
            rev = keys[::-1]
            position = []
            for k in order:
                position.append(keys.index(k))
            nodes.append((_DICT, keys, rev, order, tuple(position)))
            for k in rev:
                stack.append(node[k])
        elif t is list or t is tuple or (issubclass(t, tuple) and hasattr(t, "_fields")):
            nodes.append((_SEQ, t, len(node)))
            stack.extend(node[::-1])
        elif node is None and not none_is_leaf:
            nodes.append(_NONE_NODE)
        elif isinstance(node, _CONTAINERS):
            raise _Unsupported  # OrderedDict, defaultdict, deque, structseq: optree's own rules
        else:
            leaves.append(node)
            nodes.append(_LEAF_NODE)
    return tuple(nodes)


def _collect(tree: Any, leaves: list) -> None:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, torch.Tensor):
            leaves.append(node)
            continue
        t = type(node)
        if t is dict:
            for k in sorted(node, reverse=True):
                stack.append(node[k])
        elif t is list or t is tuple or (issubclass(t, tuple) and hasattr(t, "_fields")):
            stack.extend(node[::-1])
        elif node is not None:
            if isinstance(node, _CONTAINERS):
                raise _Unsupported
            leaves.append(node)


def _build(nodes: tuple, leaves: list) -> Any:
    # The nodes from the last: each finds its children's values on top of the stack, the
    # first child topmost.
    values, i = [], len(leaves)
    for node in nodes[::-1]:
        kind = node[0]
        if kind == _LEAF:
            i -= 1
            values.append(leaves[i])
            continue
        if kind == _NONE:
            values.append(None)
            continue
        n = len(node[1]) if kind == _DICT else node[2]
        kids = values[len(values) - n:][::-1]  # the children, in order
        values = values[: len(values) - n]
        if kind == _DICT:
            d = {}
            for k, j in zip(node[3], node[4]):
                d[k] = kids[j]
            values.append(d)
        elif node[1] is list:
            values.append(kids)
        elif node[1] is tuple:
            values.append(tuple(kids))
        else:
            values.append(node[1](*kids))  # a NamedTuple
    return values[0]


def _up_to(nodes: tuple, tree: Any) -> list:
    out, stack = [], [tree]
    for node in nodes:
        sub = stack.pop()
        kind = node[0]
        if kind == _LEAF:
            out.append(sub)
        elif kind == _NONE:
            if sub is not None:
                raise ValueError(f"flatten_up_to: expected None, got a {type(sub).__name__}")
        elif kind == _DICT:
            keys = node[1]
            same = type(sub) is dict and len(sub) == len(keys)
            if same:
                for k in keys:
                    if k not in sub:
                        same = False
            if not same:
                got = list(sub) if isinstance(sub, dict) else type(sub).__name__
                raise ValueError(f"flatten_up_to: expected a dict with keys {list(keys)}, got {got}")
            for k in node[2]:
                stack.append(sub[k])
        else:
            t, n = node[1], node[2]
            if type(sub) is not t or len(sub) != n:
                raise ValueError(
                    f"flatten_up_to: expected a {t.__name__} of {n} entries, got {sub!r:.80}"
                )
            stack.extend(sub[::-1])
    return out


class Spec:
    """The structure of a tree flattened by :func:`flatten` (optree's ``PyTreeSpec``'s role).

    Attributes:
      num_leaves: how many leaves the structure holds.
    """

    __slots__ = ("nodes", "num_leaves")

    def __init__(self, nodes: tuple, num_leaves: int):
        self.nodes = nodes
        self.num_leaves = num_leaves

    def unflatten(self, leaves: Any) -> Any:
        """The tree of this structure holding ``leaves`` in order.

        Args:
          leaves: one value per leaf.

        Returns:
          The tree.

        Raises:
          ValueError: the number of leaves is not :attr:`num_leaves`.
        """
        leaves = list(leaves)
        if len(leaves) != self.num_leaves:
            raise ValueError(f"unflatten: expected {self.num_leaves} leaves, got {len(leaves)}")
        return _build(self.nodes, leaves)

    def flatten_up_to(self, tree: Any) -> list[Any]:
        """The subtrees of ``tree`` at this structure's leaves, in leaf order.

        Args:
          tree: a tree whose structure starts with this one's.

        Returns:
          One subtree per leaf.

        Raises:
          ValueError: ``tree`` differs from the structure above its leaves.
        """
        return _up_to(self.nodes, tree)

    def __repr__(self) -> str:
        return f"Spec(num_leaves={self.num_leaves})"


def flatten(tree: Any, none_is_leaf: bool) -> tuple[list[Any], Spec] | None:
    """``(leaves, spec)`` of ``tree`` in optree's order, or None for a structure left to optree.

    Args:
      tree: a pytree.
      none_is_leaf: keep ``None`` as a leaf.

    Returns:
      The leaves and their :class:`Spec`, or None.
    """
    out: list[Any] = []
    try:
        nodes = _describe(tree, out, none_is_leaf)
    except (_Unsupported, TypeError):  # TypeError: dict keys that do not compare
        return None
    return out, Spec(nodes, len(out))


def leaves(tree: Any) -> list[Any] | None:
    """The leaves of ``tree`` in optree's order (``None`` an empty subtree), or None for a
    structure left to optree.

    Args:
      tree: a pytree.

    Returns:
      The leaves, or None.
    """
    out: list[Any] = []
    try:
        _collect(tree, out)
    except (_Unsupported, TypeError):
        return None
    return out
