"""Multi-loss routing (ESPnet3's OptimizationStep): each parameter group learns from its own loss.

A label tree, shaped like ``params`` (or a prefix of it), names one group per parameter. The
optimiser is a dict of gradient transformations, one per group; group ``g`` sees only its own
parameters, receives the gradient of loss ``g`` only, and runs its own chain (own clipping,
accumulation and cadence). A group whose loss is absent from a batch is left exactly as it was,
optimiser state included.

A group's parameters are the params tree with every other leaf replaced by ``None``, which the
pytree helpers treat as an empty subtree; so any transformation works on a group unchanged.
Labels are resolved by the same prefix-tree rule as ``fctc.optim.multi_transform``'s.
"""

from __future__ import annotations

from typing import Any

from .. import tree as _tree
from ..optim._prefix import PrefixTree, check_groups, hashable_label

__all__ = ["Labels", "resolve_labels", "group_params", "merge_groups"]

_WHERE = "routing: param_labels"


class Labels:
    """``param_labels`` (a label tree, a prefix of one, or a function of the parameters)
    checked against the groups of ``tx`` and resolved to a label tree shaped like the parameters.

    Build it once per train step: a function is then evaluated eagerly (at ``init_state``) and
    reused under tracing.

    Args:
      param_labels: the labels.
      tx: the dict of transformations, one per group.

    Raises:
      ValueError: ``param_labels`` is None.
    """

    def __init__(self, param_labels: Any, tx: dict):
        if param_labels is None:
            raise ValueError(
                "routing: a dict of transformations needs param_labels (a tree of group names shaped "
                "like params, or a function params -> such a tree)"
            )
        self.groups = tuple(tx)
        self.prefix = PrefixTree(param_labels, _WHERE, hashable_label)

    def of(self, params: Any) -> Any:
        """The label of every parameter, as a tree shaped like ``params``.

        Args:
          params: the parameters.

        Returns:
          The label tree.

        Raises:
          ValueError: a parameter has no label, or a label names no group.
        """
        labels = self.prefix.per_leaf(params)
        check_groups(labels, self.groups, _WHERE)
        return _tree.unflatten(_tree.structure(params), labels)


def resolve_labels(param_labels: Any, params: Any, tx: dict) -> Any:
    """The label tree for ``params``, checked against the groups of ``tx``.

    ``param_labels`` may be shaped like ``params`` or be a prefix of it: a label placed at
    ``"encoder"`` (a nested dict key) covers every parameter below it. Layers without
    parameters need no entry.

    Args:
      param_labels: a tree of group names (or a prefix of one), or a function of ``params``.
      params: the parameters.
      tx: the dict of transformations, one per group.

    Returns:
      A label tree shaped like ``params``.

    Raises:
      ValueError: no labels, a parameter without a label, or a label naming no group.
    """
    return Labels(param_labels, tx).of(params)


def group_params(tree: Any, labels: Any, name: str) -> Any:
    """``tree`` with the leaves of every group but ``name`` replaced by ``None``.

    Args:
      tree: a tree shaped like the parameters (parameters, gradients).
      labels: the label tree (:func:`resolve_labels`).
      name: the group to keep.

    Returns:
      The group's tree.
    """
    spec = _tree.structure(tree)
    leaves = spec.flatten_up_to(tree)
    labs = spec.flatten_up_to(labels)
    return _tree.unflatten(spec, [x if lab == name else None for x, lab in zip(leaves, labs)])


def merge_groups(template: Any, labels: Any, groups: dict[str, Any]) -> Any:
    """Reassemble a full tree from per-group trees.

    Args:
      template: a full tree; leaves of groups missing from ``groups`` are taken from it.
      labels: the label tree.
      groups: ``{name: group tree}`` (as :func:`group_params` makes them).

    Returns:
      The merged tree.
    """
    spec = _tree.structure(template)
    out = spec.flatten_up_to(template)
    labs = spec.flatten_up_to(labels)
    for name, tree in groups.items():
        vals = spec.flatten_up_to(tree)
        out = [v if lab == name else o for o, v, lab in zip(out, vals, labs)]
    return _tree.unflatten(spec, out)
