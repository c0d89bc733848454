"""Dynamic loss scaling for float16 training: ``torch.amp.GradScaler``'s rule as pure functions.

A :class:`DynamicLossScale` holds the (static) configuration and a :class:`LossScaleState` the
two tensors that change: the current ``scale`` (float32) and ``growth_tracker`` (int32, the
number of consecutive finite steps since the last change). A training step reads::

    ls = fctc.optim.dynamic_loss_scale()
    ls_state = ls.init()                                    # once, next to the optimiser state

    def loss_fn(params, batch):
        return ls.scale(compute_loss(params, batch), ls_state)   # scaled loss

    grads = ls.unscale(fctc.backend.grad(loss_fn)(params, batch), ls_state)
    finite = ls.all_finite(grads)
    ls_state = ls.adjust(ls_state, finite)
    # apply the update only where finite, e.g. with fctc.optim.apply_if_finite

``adjust`` is GradScaler's ``_amp_update_scale_``: on a non-finite step the scale is multiplied
by ``backoff_factor`` and the tracker reset; after ``growth_interval`` consecutive finite steps
it is multiplied by ``growth_factor`` (only if the result is finite) and the tracker reset.
``min_scale`` is a floor on back-offs (GradScaler has none; ``min_scale=0`` reproduces it
exactly) so that a long run of overflows cannot drive the scale to zero, from which it could
never grow back. Every function is branch-free: no host synchronisation, one compiled graph.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import backend as _backend
from .. import tree as _tree

__all__ = ["LossScaleState", "DynamicLossScale", "dynamic_loss_scale"]


class LossScaleState(NamedTuple):
    """The changing part of dynamic loss scaling: 0-d ``scale`` (float32) and ``growth_tracker``
    (int32)."""

    scale: torch.Tensor
    growth_tracker: torch.Tensor


class DynamicLossScale(NamedTuple):
    """GradScaler's configuration plus the pure functions that use a :class:`LossScaleState`.

    Build it with :func:`dynamic_loss_scale`; it holds no tensors, so it can be closed over by a
    compiled step.
    """

    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    min_scale: float = 1.0

    def init(self, device: torch.device | str | None = None) -> LossScaleState:
        """The initial state: ``init_scale`` and a zero tracker, on ``device``.

        Args:
          device: where the state lives.

        Returns:
          The :class:`LossScaleState`.
        """
        return LossScaleState(
            scale=torch.full((), self.init_scale, dtype=torch.float32, device=device),
            growth_tracker=torch.zeros((), dtype=torch.int32, device=device),
        )

    def scale(self, tree: Any, state: LossScaleState) -> Any:
        """Multiply a loss (or every leaf of a tree) by the current scale.

        Type promotion is GradScaler.scale's (``x * scale``): a 0-d float16 loss becomes float32,
        a float16 tensor with dimensions stays float16.

        Args:
          tree: a loss tensor or a tree of them.
          state: the current :class:`LossScaleState`.

        Returns:
          The scaled loss (or tree).
        """
        if isinstance(tree, torch.Tensor):
            return tree * state.scale.to(tree.device)
        return _tree.map(lambda x: x * state.scale.to(x.device), tree)

    def unscale(self, grads: Any, state: LossScaleState) -> Any:
        """Divide gradients by the scale: multiply by ``1 / scale`` computed in float64 and
        rounded to float32, exactly as ``GradScaler.unscale_`` does. Dtypes are kept.

        Args:
          grads: the gradients of the scaled loss.
          state: the :class:`LossScaleState` they were scaled with.

        Returns:
          The unscaled gradients.
        """
        xs, spec = _tree.flatten(grads)
        if not xs:
            return grads
        inv = torch.reciprocal(state.scale.double()).float()
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(xs):
            groups.setdefault((x.device, x.dtype), []).append(i)
        out: list[Any] = [None] * len(xs)
        for (device, _), idx in groups.items():
            scaled = torch._foreach_mul([xs[i] for i in idx], inv.to(device))
            for i, y in zip(idx, scaled):
                out[i] = y
        return _tree.unflatten(spec, out)

    @staticmethod
    def all_finite(grads: Any) -> torch.Tensor:
        """A 0-d bool tensor: True when no gradient holds NaN or Inf (no host sync).

        Args:
          grads: the (unscaled) gradients.

        Returns:
          A 0-d bool tensor (:func:`fctc.tree.all_finite`).
        """
        return _tree.all_finite(grads)

    def adjust(self, state: LossScaleState, grads_finite: Any) -> LossScaleState:
        """The next state after a step whose gradients were ``grads_finite`` (GradScaler.update).

        Args:
          state: the current :class:`LossScaleState`.
          grads_finite: whether this step's gradients were finite (a bool tensor).

        Returns:
          The next :class:`LossScaleState`.
        """
        scale, tracker = state.scale, state.growth_tracker
        finite = _backend.as_tensor(grads_finite, device=scale.device).to(torch.bool)
        successful = tracker + 1
        grow = finite & (successful >= self.growth_interval)
        grown = scale * self.growth_factor
        backed_off = torch.clamp(scale * self.backoff_factor, min=self.min_scale)
        new_scale = torch.where(
            finite, torch.where(grow & torch.isfinite(grown), grown, scale), backed_off
        )
        new_tracker = torch.where(finite & ~grow, successful, torch.zeros_like(tracker))
        return LossScaleState(new_scale.to(scale.dtype), new_tracker.to(tracker.dtype))


def dynamic_loss_scale(
    init_scale: float = 2.0**16,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    growth_interval: int = 2000,
    min_scale: float = 1.0,
) -> DynamicLossScale:
    """Dynamic loss scaling with ``torch.amp.GradScaler``'s defaults and update rule.

    ``min_scale`` (default 1.0, as in DeepMind's jmp) bounds back-offs from below; pass 0.0 for
    GradScaler's unbounded rule.

    Args:
      init_scale: the first scale.
      growth_factor: the factor after ``growth_interval`` finite steps (> 1).
      backoff_factor: the factor after a non-finite step (in (0, 1)).
      growth_interval: finite steps before a growth.
      min_scale: the floor of back-offs.

    Returns:
      The :class:`DynamicLossScale`.

    Raises:
      ValueError: a value out of its range.
    """
    if not init_scale > 0:
        raise ValueError(f"dynamic_loss_scale: init_scale must be positive, got {init_scale}")
    if not growth_factor > 1.0:
        raise ValueError(f"dynamic_loss_scale: growth_factor must be > 1, got {growth_factor}")
    if not 0.0 < backoff_factor < 1.0:
        raise ValueError(f"dynamic_loss_scale: backoff_factor must be in (0, 1), got {backoff_factor}")
    if not (isinstance(growth_interval, int) and growth_interval > 0):
        raise ValueError(f"dynamic_loss_scale: growth_interval must be a positive int, got {growth_interval!r}")
    if not min_scale >= 0.0:
        raise ValueError(f"dynamic_loss_scale: min_scale must be >= 0, got {min_scale}")
    return DynamicLossScale(
        float(init_scale), float(growth_factor), float(backoff_factor), growth_interval, float(min_scale)
    )
