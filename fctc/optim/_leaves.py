"""Update trees as leaf lists, and the elementwise helpers the transformations share.

Each transformation flattens its ``updates`` once into a :class:`Leaves` (the tree definition of
``updates`` drives the other trees through ``flatten_up_to``) and runs ``torch._foreach_*``
kernels over the leaf lists. The helpers here are device-neutral; the CPU-specific kernels live
in :mod:`fctc.optim._kernels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import backend as _backend
from .. import tree as _tree

Scalar = Any  # a Python number or a 0-d tensor

NS = "fctc"


class Leaves:
    """``updates`` flattened once; other trees are flattened up to its structure.

    ``None`` leaves of ``updates`` are kept aside: ``xs`` holds the present leaves only and
    :meth:`build` puts ``None`` back at their places.
    """

    __slots__ = ("treedef", "xs", "idx", "n")

    def __init__(self, updates: Any):
        # None leaves are kept as leaves (none_is_leaf: optree's own test, no Python callback).
        leaves, self.treedef = _tree.flatten(updates, none_is_leaf=True)
        self.n = len(leaves)
        if any(x is None for x in leaves):
            self.idx = [i for i, x in enumerate(leaves) if x is not None]
            self.xs = [leaves[i] for i in self.idx]
        else:
            self.idx = None
            self.xs = leaves

    @property
    def device(self) -> torch.device:
        """The device of the first present leaf (the CPU for an empty tree)."""
        return self.xs[0].device if self.xs else torch.device("cpu")

    def take(self, tree: Any, what: str = "tree") -> list:
        """The leaves of ``tree`` matching the present leaves of ``updates``."""
        try:
            leaves = self.treedef.flatten_up_to(tree)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"the {what} does not have the structure of the updates ({self.treedef}); "
                f"was the state built by this transformation's init on the same parameters? ({e})"
            ) from None
        return leaves if self.idx is None else [leaves[i] for i in self.idx]

    def build(self, xs: Sequence[Any], fill: Sequence[Any] | None = None) -> Any:
        """A tree with the structure of ``updates`` from values for the present leaves; the
        absent ones are ``None``, or taken from ``fill`` (a full leaf list) when given."""
        if self.idx is not None:
            full: list[Any] = [None] * self.n if fill is None else list(fill)
            for i, x in zip(self.idx, xs):
                full[i] = x
            xs = full
        return _tree.unflatten(self.treedef, list(xs))


def on(x: Scalar, device: torch.device) -> Scalar:
    """A tensor hyperparameter moved to ``device`` (Python numbers are returned unchanged)."""
    if isinstance(x, torch.Tensor) and x.device != device:
        return x.to(device)
    return x


def sc(xs: list, s: Scalar) -> Any:
    """A scalar operand for a foreach lerp or clamp over ``xs`` (for an add, :func:`add_scalar`).

    torch's argument parser takes a 0-d tensor given to these ops for a Python number and reads
    its value: a device synchronisation on CUDA, a graph break under tracing. Where that read is
    not free (:func:`fctc.backend.host_is_free`), a tensor scalar is passed as a list of 0-d
    tensors, one per leaf, which the list overloads broadcast on the device; on the CPU the
    scalar overload reads it at no cost and keeps its kernel.
    """
    if isinstance(s, torch.Tensor) and not _backend.host_is_free([s]):
        return [s] * len(xs)
    return s


def add_scalar(xs: list, s: Scalar, inplace: bool = False) -> list | None:
    """``x + s`` for every leaf, one foreach kernel with no host read of a tensor ``s``.

    A Python number, or a 0-d tensor on the CPU, takes the scalar overload (as :func:`sc`);
    eagerly on an accelerator the tensor overload (``alpha=1`` selects it: CUDA's fused kernel
    reads ``s`` on the device); under tracing the list form, which dynamo traces whole.

    Args:
      xs: the tensors.
      s: the scalar.
      inplace: add into ``xs`` (returns None) instead of into new tensors.

    Returns:
      The sums, or None in place.
    """
    op = torch._foreach_add_ if inplace else torch._foreach_add
    if isinstance(s, torch.Tensor) and not (_backend.host_is_free([s]) or _backend.is_tracing()):
        return op(xs, s, alpha=1)
    return op(xs, sc(xs, s))


def scaled(updates: Any, factor: Scalar) -> Any:
    """Every present leaf of ``updates`` times ``factor`` (one foreach kernel)."""
    lv = Leaves(updates)
    if not lv.xs:
        return updates
    return lv.build(torch._foreach_mul(lv.xs, on(factor, lv.device)))


def fpow(base: Scalar, count: torch.Tensor) -> torch.Tensor:
    """``base ** count`` in float32 for a Python or tensor ``base`` and an integer tensor count."""
    c = count.to(torch.float32)
    if isinstance(base, torch.Tensor):
        return torch.pow(base.to(torch.float32), c)
    return torch.pow(float(base), c)


def bias_correction(decay: Scalar, count: torch.Tensor) -> torch.Tensor:
    """``1 - decay ** count`` (Adam's and RMSProp's bias correction)."""
    return 1 - fpow(decay, count)


def cast_list(xs: list, dtypes: Sequence[torch.dtype]) -> list:
    """``xs`` cast leaf by leaf to ``dtypes`` (no copy where they agree)."""
    return [x if x.dtype == d else x.to(d) for x, d in zip(xs, dtypes)]


def like_dtypes(xs: list, refs: list) -> list:
    """``xs`` cast leaf by leaf to the dtypes of ``refs``."""
    return cast_list(xs, [r.dtype for r in refs])


def promoted(*lists: list) -> tuple[list, ...]:
    """The aligned lists cast leaf by leaf to their common dtype (no copy when they agree)."""
    dts = [x.dtype for x in lists[0]]
    if all([x.dtype for x in other] == dts for other in lists[1:]):
        return lists
    dtypes = []
    for xs in zip(*lists):
        d = xs[0].dtype
        for x in xs[1:]:
            d = torch.promote_types(d, x.dtype)
        dtypes.append(d)
    return tuple(cast_list(lst, dtypes) for lst in lists)


def ema_sq(gs: list, nus: list, decay: Scalar) -> list:
    """``(1 - decay) * g**2 + decay * nu`` as new tensors (computed as a lerp from ``g**2``)."""
    out = torch._foreach_mul(gs, gs)
    torch._foreach_lerp_(out, like_dtypes(nus, gs), sc(out, decay))
    return list(out)


def ema(gs: list, mus: list, decay: Scalar) -> list:
    """``(1 - decay) * g + decay * mu`` as new tensors."""
    return list(torch._foreach_lerp(like_dtypes(mus, gs), gs, sc(gs, 1 - decay)))


def full_like(p: torch.Tensor, value: Scalar) -> torch.Tensor:
    """A tensor like ``p`` filled with ``value`` (a number or a 0-d tensor)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=p.device, dtype=p.dtype).expand(p.shape).clone()
    return torch.full_like(p, value)


def tree_zeros(params: Any, dtype: torch.dtype | None = None) -> Any:
    """Zeros shaped like every leaf of ``params`` (optimiser moments)."""
    return _tree.map(lambda p: torch.zeros_like(p, dtype=dtype), params)


def float_dtype(tree: Any, highest: bool) -> torch.dtype:
    """The widest (or narrowest) floating dtype among the leaves; float32 when there is none."""
    dtypes = [x.dtype for x in _tree.leaves(tree) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    if not dtypes:
        return torch.float32
    key = lambda d: torch.finfo(d).bits  # noqa: E731
    return max(dtypes, key=key) if highest else min(dtypes, key=key)
