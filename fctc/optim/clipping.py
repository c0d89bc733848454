"""Gradient clipping with optax's names and formulas: element-wise, global-norm and adaptive.

``clip_by_global_norm`` also takes speechain's ``grad_norm_type`` (any p > 0, or inf), so the
clipping torch users know from ``torch.nn.utils.clip_grad_norm_(max_norm, norm_type)`` is one
transformation in a chain. Its norm is :func:`fctc.tree.global_norm`, the one the train step
logs (handed over instead of computed twice). It is a
:class:`~fctc.optim.ScalingTransformation`: in ``chain(clip_by_global_norm(...), adamw(...))``
its factor is applied inside AdamW's kernel. The factor stays a tensor: no host
synchronisation, and a compiled step does not specialise on whether clipping fired.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import tree as _tree
from ._leaves import Leaves, on, sc
from .base import EmptyState, GlobalScale, GradientTransformation, ScalingTransformation

__all__ = [
    "ClipState",
    "ClipByGlobalNormState",
    "AdaptiveGradClipState",
    "clip",
    "clip_by_global_norm",
    "adaptive_grad_clip",
    "unitwise_norm",
]

ClipState = EmptyState
ClipByGlobalNormState = EmptyState
AdaptiveGradClipState = EmptyState

Scalar = Any


def clip(max_delta: Scalar) -> GradientTransformation:
    """Clip every update element to ``[-max_delta, max_delta]``.

    Args:
      max_delta: the bound (a number or a 0-d tensor).

    Returns:
      A stateless :class:`~fctc.optim.GradientTransformation`.
    """

    def init(params):
        del params
        return ClipState()

    def update(updates, state, params=None, **extra):
        del params, extra
        lv = Leaves(updates)
        if not lv.xs:
            return updates, state
        d = on(max_delta, lv.device)
        out = torch._foreach_clamp_max(lv.xs, sc(lv.xs, d))
        torch._foreach_clamp_min_(out, sc(out, -d))
        return lv.build(out), state

    return GradientTransformation(init, update)


def _check_norm_type(norm_type: Any, where: str) -> float:
    if isinstance(norm_type, torch.Tensor) or isinstance(norm_type, bool):
        raise TypeError(
            f"{where}: norm_type must be a Python number (it selects the kernel), "
            f"got {type(norm_type).__name__}"
        )
    p = float(norm_type)
    if not (p > 0 or math.isinf(p)) or p != p or p == -math.inf:
        raise ValueError(f"{where}: norm_type must be positive or inf, got {norm_type!r}")
    return p


def clip_by_global_norm(max_norm: Scalar, norm_type: float = 2.0) -> ScalingTransformation:
    """Rescale updates so that their global ``norm_type``-norm is at most ``max_norm``.

    With ``norm = ||updates||``, updates are returned unchanged when ``norm < max_norm`` and
    multiplied by ``max_norm / norm`` otherwise (optax's rule; ``norm_type=2`` is optax's
    ``clip_by_global_norm``). ``torch.nn.utils.clip_grad_norm_`` differs only in the factor,
    ``min(1, max_norm / (norm + 1e-6))``, a relative difference of about ``1e-6 / norm``.

    Args:
      max_norm: the bound (a number or a 0-d tensor).
      norm_type: any p > 0, or ``float('inf')`` (largest absolute value); a Python number.

    Returns:
      A :class:`~fctc.optim.ScalingTransformation` (empty state); its ``factor(updates,
      norm=None)`` takes the global 2-norm of ``updates`` when the caller has it (then the
      updates are not read at all, and an empty tree, of norm 0, gets a factor of 1; without
      a norm it gets None).

    Raises:
      TypeError: ``norm_type`` is a tensor or a bool.
      ValueError: ``norm_type`` is not positive.
    """
    p = _check_norm_type(norm_type, "clip_by_global_norm")

    def init(params):
        del params
        return ClipByGlobalNormState()

    def factor_of(xs, norm):
        if norm is None or p != 2.0:
            norm = _tree.global_norm(xs, p)
        m = on(max_norm, norm.device)
        return GlobalScale(torch.where(norm < m, torch.ones_like(norm), m / norm), norm)

    def factor(updates, norm=None):
        if norm is not None and p == 2.0:
            return factor_of(None, norm)  # the caller's norm: no need to flatten the updates
        lv = Leaves(updates)
        return factor_of(lv.xs, norm) if lv.xs else None

    def update(updates, state, params=None, **extra):
        del params, extra
        lv = Leaves(updates)
        if not lv.xs:
            return updates, state
        return lv.build(torch._foreach_mul(lv.xs, factor_of(lv.xs, None).factor)), state

    return ScalingTransformation(init, update, factor)


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each output unit of ``x``, broadcast to ``x``'s shape (optax's rule).

    Scalars and vectors (after dropping size-1 dimensions) get one norm; 2-d and 3-d tensors are
    reduced over axis 0 and 4-d tensors over axes 0, 1 and 2. These are JAX layouts (``IO``,
    ``HWIO``): for torch's ``(out, in, k)`` weights this is optax's behaviour, not a per-output
    norm.

    Args:
      x: a tensor with 0 to 4 dimensions.

    Returns:
      A tensor of ``x``'s shape.

    Raises:
      ValueError: ``x`` has more than 4 dimensions.
    """
    return _reduced_unitwise_norm(x, _unit_dims(x, "unitwise_norm")).expand(x.shape)


def _unit_dims(x: torch.Tensor, where: str) -> tuple[int, ...]:
    """The dimensions :func:`unitwise_norm` reduces over."""
    if x.squeeze().ndim <= 1:
        return tuple(range(x.ndim))
    if x.ndim in (2, 3):
        return (0,)
    if x.ndim == 4:
        return (0, 1, 2)
    raise ValueError(f"{where}: expected a parameter with 1 to 4 dimensions, got shape {tuple(x.shape)}")


def _reduced_unitwise_norm(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``sqrt(sum(x * x))`` over ``dims``, keeping them as size-1 dimensions."""
    if not dims:  # a 0-d tensor
        return x.abs()
    return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=True))


def adaptive_grad_clip(clipping: Scalar, eps: Scalar = 1e-3) -> GradientTransformation:
    """Clip each unit's update to at most ``clipping * max(||param unit||, eps)`` (AGC).

    Brock et al. (2021). Norms are taken unit-wise by :func:`unitwise_norm`; a unit whose update
    norm is below the bound passes unchanged, otherwise it is scaled by
    ``bound / max(norm, 1e-6)``. Needs ``params``.

    Args:
      clipping: the bound as a fraction of the parameter unit's norm.
      eps: the smallest parameter norm used.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` (empty state); its update raises ``ValueError`` without ``params``.
    """

    def init(params):
        del params
        return AdaptiveGradClipState()

    def update(updates, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError(
                "adaptive_grad_clip needs the parameters: call update(updates, state, params)"
            )
        lv = Leaves(updates)
        if not lv.xs:
            return updates, state
        ps = lv.take(params, "params")
        c, e = on(clipping, lv.device), on(eps, lv.device)
        # Unit-wise reductions differ by rank, so the small norm tensors are built leaf by leaf;
        # the full-size multiply is one foreach kernel.
        factors = []
        for g, p in zip(lv.xs, ps):
            dims = _unit_dims(g, "adaptive_grad_clip")
            g_norm = _reduced_unitwise_norm(g, dims)
            bound = c * torch.clamp_min(_reduced_unitwise_norm(p, dims), e).to(g_norm.dtype)
            factors.append(
                torch.where(g_norm < bound, torch.ones_like(g_norm), bound / torch.clamp_min(g_norm, 1e-6))
            )
        return lv.build(torch._foreach_mul(lv.xs, factors)), state

    return GradientTransformation(init, update)
