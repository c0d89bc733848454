"""Multi-loss routing (ESPnet3's OptimizationStep): each parameter group learns from its own loss.

A label tree, shaped like ``params``, names one group per parameter. The optimiser is a dict of
gradient transformations, one per group; group ``g`` sees only its own parameters, receives the
gradient of loss ``g`` only, and runs its own chain (own clipping, accumulation and cadence). A
group whose loss is absent from a batch is left exactly as it was, optimiser state included.

A group's parameters are the params tree with every other leaf replaced by ``None``, which the
pytree helpers treat as an empty subtree; so any transformation works on a group unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import tree as _tree

__all__ = ["resolve_labels", "group_params", "merge_groups"]


def resolve_labels(param_labels: Any, params: Any, tx: dict) -> Any:
    """The label tree for ``params`` (calling ``param_labels`` when it is a function), checked
    against the groups of ``tx``.

    ``param_labels`` may be shaped like ``params`` or be a prefix of it: a label placed at
    ``"encoder"`` (a nested dict key) covers every parameter below it. Layers without
    parameters need no entry.
    """
    if param_labels is None:
        raise ValueError(
            "routing: a dict of transformations needs param_labels (a tree of group names shaped "
            "like params, or a function params -> such a tree)"
        )
    labels = param_labels(params) if isinstance(param_labels, Callable) else param_labels
    if isinstance(labels, dict):
        given = _tree.flatten_dict(labels)
    elif isinstance(labels, str):
        given = {"": labels}
    else:
        raise TypeError(f"routing: param_labels must be a dict tree of group names, got {type(labels).__name__}")

    def label_of(path: str, _leaf: Any) -> Any:
        parts = path.split(".")
        for i in range(len(parts), -1, -1):
            prefix = ".".join(parts[:i])
            if prefix in given:
                return given[prefix]
        missing.append(path)
        return None

    missing: list[str] = []
    resolved = _tree.map_with_path(label_of, params)
    if missing:
        raise ValueError(f"routing: param_labels gives no group to the parameters {missing[:8]}")
    unknown = sorted({str(lab) for lab in _tree.leaves(resolved) if lab not in tx})
    if unknown:
        raise ValueError(
            f"routing: param_labels names groups {unknown} that have no transformation; "
            f"the transformations are {sorted(tx)}"
        )
    return resolved


def group_params(tree: Any, labels: Any, name: str) -> Any:
    """``tree`` with the leaves of every group but ``name`` replaced by ``None``."""
    spec = _tree.structure(tree)
    leaves = spec.flatten_up_to(tree)
    labs = spec.flatten_up_to(labels)
    return _tree.unflatten(spec, [x if lab == name else None for x, lab in zip(leaves, labs)])


def merge_groups(template: Any, labels: Any, groups: dict[str, Any]) -> Any:
    """Reassemble a full tree from per-group trees; leaves of groups missing from ``groups``
    are taken from ``template``."""
    spec = _tree.structure(template)
    out = spec.flatten_up_to(template)
    labs = spec.flatten_up_to(labels)
    for name, tree in groups.items():
        vals = spec.flatten_up_to(tree)
        out = [v if lab == name else o for o, v, lab in zip(out, vals, labs)]
    return _tree.unflatten(spec, out)
