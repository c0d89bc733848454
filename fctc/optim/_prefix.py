"""The one resolver of static per-parameter values given as a prefix tree (masks and labels).

``masked``, ``multi_transform``, ``selective_transform``, ``adamw(mask=)`` and the train step's
multi-loss ``param_labels`` all take a tree of Python values (bools, group names) shaped like
the parameters, or a prefix of them (one value for a whole subtree), or a function of the
parameters returning one. :class:`PrefixTree` turns any of these into one value per leaf.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

import optree

from .. import backend as _backend
from ._leaves import NS

_MISSING = object()


class PrefixTree:
    """A static mask / label tree (or a function returning one), resolved leaf by leaf.

    Each leaf takes the value of the longest path of the prefix tree that starts its own path.
    The prefix tree is flattened eagerly; a traced (compiled) update only looks paths up in a
    dict, because dynamo cannot flatten trees of Python constants. A function is evaluated on
    every eager call (as optax does) and, while tracing, replaced by its value at the last
    eager call (``init`` is always eager).

    Args:
      tree_or_fn: the prefix tree, or a function of the tree being resolved that returns one.
      where: the name in error messages (``"masked"``, ``"routing: param_labels"``).
      convert: ``convert(value, where) -> value``, checking each value of the prefix tree.
    """

    def __init__(self, tree_or_fn: Any, where: str, convert: Callable[[Any, str], Any]):
        self.where, self.convert = where, convert
        self.fn = tree_or_fn if callable(tree_or_fn) else None
        self.cached = None if self.fn is not None else self._path_map(tree_or_fn)

    def _path_map(self, prefix: Any) -> dict[tuple, Any]:
        paths, values, _ = optree.tree_flatten_with_path(prefix, namespace=NS)
        return {tuple(p): self.convert(v, self.where) for p, v in zip(paths, values)}

    def per_leaf(self, tree: Any) -> list[Any]:
        """One value per leaf of ``tree``, in :func:`fctc.tree.leaves` order.

        Args:
          tree: the parameters (or updates) to resolve the prefix tree against.

        Returns:
          The list of values.

        Raises:
          ValueError: a leaf of ``tree`` is not covered by the prefix tree.
        """
        if self.fn is not None and (self.cached is None or not _backend.is_tracing()):
            self.cached = self._path_map(self.fn(tree))
        pmap = self.cached
        out = []
        for path in optree.tree_paths(tree, namespace=NS):
            path = tuple(path)
            for n in range(len(path), -1, -1):
                v = pmap.get(path[:n], _MISSING)
                if v is not _MISSING:
                    out.append(v)
                    break
            else:
                raise ValueError(
                    f"{self.where}: no mask/label covers the parameter {'.'.join(map(str, path))!r}; "
                    "the mask/labels tree must have the structure of the parameters (or a prefix "
                    f"of it), but it has entries for {sorted('.'.join(map(str, k)) for k in pmap)}"
                )
        return out


def hashable_label(label: Any, where: str) -> Hashable:
    """A ``convert`` for label trees: the label when it is hashable, else a TypeError."""
    if not isinstance(label, Hashable):
        raise TypeError(f"{where}: labels must be hashable (strings), got {type(label).__name__}")
    return label


def check_groups(labels: Iterable[Hashable], groups: Iterable[Hashable], where: str) -> None:
    """Raise a ValueError naming the labels that are not among ``groups``."""
    groups = set(groups)
    unknown = sorted({repr(lab) if not isinstance(lab, str) else lab for lab in labels if lab not in groups})
    if unknown:
        raise ValueError(
            f"{where}: names groups {unknown} that have no transformation; the transformations "
            f"are {sorted(map(str, groups))}"
        )
