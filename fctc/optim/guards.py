"""Guards: skip updates whose gradients hold NaN or Inf (optax's ``apply_if_finite``).

The decision is taken with ``torch.where`` over the state tensors (on the host where that is
free, :func:`fctc.backend.select`): no ``.item()`` on accelerators, one compiled graph.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import backend as _backend
from .. import tree as _tree
from .base import GradientTransformation, safe_int32_increment, with_extra_args_support

__all__ = ["ApplyIfFiniteState", "apply_if_finite"]


class ApplyIfFiniteState(NamedTuple):
    """The state of :func:`apply_if_finite` (optax's layout): consecutive and total non-finite
    steps, whether the last one was finite, and the inner state."""

    notfinite_count: torch.Tensor
    last_finite: torch.Tensor
    total_notfinite: torch.Tensor
    inner_state: Any


def apply_if_finite(inner: GradientTransformation, max_consecutive_errors: int) -> GradientTransformation:
    """Skip updates whose gradients hold NaN/Inf: return zeros and keep ``inner``'s state.

    ``notfinite_count`` counts consecutive bad steps and ``total_notfinite`` all of them. After
    more than ``max_consecutive_errors`` bad steps in a row the update is applied anyway (as
    optax does), so a run that only produces NaN does not silently stall.

    Args:
      inner: the guarded transformation.
      max_consecutive_errors: how many bad steps in a row are skipped.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` with :class:`ApplyIfFiniteState` (plain:
      the fused paths of ``inner`` are not used through it).
    """
    inner = with_extra_args_support(inner)

    def init(params):
        device = _tree.device_of(params)
        return ApplyIfFiniteState(
            notfinite_count=torch.zeros((), dtype=torch.int32, device=device),
            last_finite=torch.ones((), dtype=torch.bool, device=device),
            total_notfinite=torch.zeros((), dtype=torch.int32, device=device),
            inner_state=inner.init(params),
        )

    def update(updates, state, params=None, **extra):
        device = state.notfinite_count.device
        isfinite = _backend.all_finite(updates).to(device)
        notfinite_count = torch.where(
            isfinite, torch.zeros_like(state.notfinite_count), safe_int32_increment(state.notfinite_count)
        )
        apply = isfinite | (notfinite_count > max_consecutive_errors)
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
        out = _backend.select(apply, new_updates, _tree.map(torch.zeros_like, new_updates))
        return out, ApplyIfFiniteState(
            notfinite_count=notfinite_count,
            last_finite=isfinite,
            total_notfinite=torch.where(isfinite, state.total_notfinite, safe_int32_increment(state.total_notfinite)),
            inner_state=_backend.select(apply, new_inner, state.inner_state),
        )

    return GradientTransformation(init, update)
