"""Flattening trees inside compiled code, in plain Python that dynamo traces quickly.

Under ``torch.compile`` dynamo cannot call optree's C functions; it traces its own Python
model of optree instead (``torch._dynamo.polyfills.pytree``), which looks every node up in the
registry and builds a Python object per node of the tree definition. Tracing that costs
seconds per call on an optimiser state (a flatten and an unflatten of AdamW's state of a
35-leaf model: about 10 s), and a compiled train step flattens its trees a few dozen times.
The structures fctc builds are dicts, lists, tuples, NamedTuples and ``None``: this module
walks those in loops over an explicit stack, and :class:`Spec`, its tree definition, has the
methods of optree's that fctc uses (``unflatten``, ``flatten_up_to``, ``num_leaves``). Those
two map a tree of leaf positions, built once per structure, with ``optree.tree_map``, which
dynamo runs natively. The leaves come in optree's order (a dict's keys sorted) and
``unflatten`` rebuilds a dict in its original key order, as optree does. Any other node (an
OrderedDict, a deque, a registered class, a dict whose keys do not compare) makes
:func:`flatten` and :func:`leaves` return None, and the caller uses optree.
"""

from __future__ import annotations

import collections
from typing import Any

import optree
import torch

# A structure is the tuple of its nodes in pre-order (a node, then its children's subtrees in
# leaf order): (_LEAF,), (_NONE,), (_DICT, keys in their order, per key its position among the
# sorted keys, which are the children's order) or (_SEQ, type, length). The code
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
            position = []
            for k in order:
                position.append(keys.index(k))
            nodes.append((_DICT, order, tuple(position)))
            for k in keys[::-1]:
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
            for k, j in zip(node[1], node[2]):
                d[k] = kids[j]
            values.append(d)
        elif node[1] is list:
            values.append(kids)
        elif node[1] is tuple:
            values.append(tuple(kids))
        else:
            values.append(node[1](*kids))  # a NamedTuple
    return values[0]


class Spec:
    """The structure of a tree flattened by :func:`flatten` (optree's ``PyTreeSpec``'s role).

    Attributes:
      num_leaves: how many leaves the structure holds.
    """

    __slots__ = ("nodes", "num_leaves", "_index")

    def __init__(self, nodes: tuple, num_leaves: int):
        self.nodes = nodes
        self.num_leaves = num_leaves
        self._index = None

    def _indices(self) -> Any:
        """The structure holding each leaf's position: built once, then mapped by
        ``optree.tree_map``, which dynamo runs natively (a rebuild is the costliest walk)."""
        if self._index is None:
            self._index = _build(self.nodes, list(range(self.num_leaves)))
        return self._index

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
        return optree.tree_map(leaves.__getitem__, self._indices())

    def flatten_up_to(self, tree: Any) -> list[Any]:
        """The subtrees of ``tree`` at this structure's leaves, in leaf order.

        Args:
          tree: a tree whose structure starts with this one's.

        Returns:
          One subtree per leaf.

        Raises:
          ValueError: ``tree`` differs from the structure above its leaves.
        """
        out: list[Any] = [None] * self.num_leaves
        optree.tree_map(out.__setitem__, self._indices(), tree)  # raises ValueError as optree does
        return out

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
