"""Normalisation layers: ``torch.nn.BatchNorm1d`` and ``torch.nn.LayerNorm`` as pure models.

Batch norm keeps its running statistics in ``state`` (``running_mean``, ``running_var``,
``num_batches_tracked``, exactly the buffers of ``BatchNorm1d``); a training step returns the
updated statistics as new tensors instead of writing into buffers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .core import Model, check_params, check_rank, deterministic

__all__ = ["batch_norm", "layer_norm"]


def _check_eps(eps: object, layer: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"{layer}: eps must be a non-negative number, got {eps!r}")
    return float(eps)


def _check_momentum(momentum: object, layer: str) -> float | None:
    if momentum is not None and (
        isinstance(momentum, bool)
        or not isinstance(momentum, (int, float))
        or not 0.0 <= momentum <= 1.0
    ):
        raise ValueError(f"{layer}: momentum must be a number in [0, 1] or None, got {momentum!r}")
    return momentum


def _train_statistics(x, state, weight, bias, momentum, eps):
    """Normalise ``x`` with its batch statistics; returns ``(y, updated running state)``."""
    count = state["num_batches_tracked"] + 1
    if momentum is not None:
        # F.batch_norm updates the running statistics in place: hand it fresh copies.
        mean = state["running_mean"].clone()
        var = state["running_var"].clone()
        y = F.batch_norm(x, mean, var, weight, bias, True, momentum, eps)
    else:
        # momentum=1 turns the "running" copies into the batch mean and unbiased variance.
        batch_mean = torch.zeros_like(state["running_mean"])
        batch_var = torch.zeros_like(state["running_var"])
        y = F.batch_norm(x, batch_mean, batch_var, weight, bias, True, 1.0, eps)
        factor = 1.0 / count.to(batch_mean.dtype)
        mean = (1.0 - factor) * state["running_mean"] + factor * batch_mean
        var = (1.0 - factor) * state["running_var"] + factor * batch_var
    return y, {"running_mean": mean, "running_var": var, "num_batches_tracked": count}


def batch_norm(
    num_features: int,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
    affine: bool = True,
    track_running_stats: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """Batch normalisation over ``(B, C)`` or ``(B, C, T)`` with ``torch.nn.BatchNorm1d``'s
    semantics.

    Params (``affine=True``): ``weight`` (ones) and ``bias`` (zeros), shape ``(C,)``. State
    (``track_running_stats=True``): ``running_mean`` (zeros), ``running_var`` (ones) and
    ``num_batches_tracked`` (an int64 scalar). With ``train=True`` the batch statistics
    normalise ``x`` and the new state holds the running statistics updated with the unbiased
    batch variance (``momentum=None`` gives the cumulative average over
    ``num_batches_tracked`` batches); with ``train=False`` the running statistics are used and
    the state comes back unchanged. Without tracked statistics the batch statistics are always
    used and the state is ``{}``.

    Args:
        num_features: the channels ``C``.
        eps: added to the variance before the square root.
        momentum: the running statistics' update weight, or ``None`` for a cumulative
            average.
        affine: whether the layer has a learnt ``weight`` and ``bias``.
        track_running_stats: whether it keeps running statistics in its state.
        dtype: the dtype of the params and the floating state.

    Returns:
        The layer as a :class:`Model`; its ``apply`` raises ``ValueError`` for params or state
        of the wrong shapes, or for ``x`` without ``C`` channels in dimension 1.

    Raises:
        ValueError: ``num_features`` is not a positive int, ``eps`` is negative, or
            ``momentum`` is outside ``[0, 1]``.
    """
    name = "batch_norm"
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
        raise ValueError(f"{name}: num_features must be a positive int, got {num_features!r}")
    eps = _check_eps(eps, name)
    momentum = _check_momentum(momentum, name)
    shape = (num_features,)
    expected_params = {"weight": shape, "bias": shape} if affine else {}
    expected_state = (
        {"running_mean": shape, "running_var": shape, "num_batches_tracked": ()}
        if track_running_stats
        else {}
    )

    def init(key=None):
        device = key.device if isinstance(key, torch.Tensor) else None
        params = {}
        if affine:
            params = {
                "weight": torch.ones(shape, dtype=dtype, device=device),
                "bias": torch.zeros(shape, dtype=dtype, device=device),
            }
        state = {}
        if track_running_stats:
            state = {
                "running_mean": torch.zeros(shape, dtype=dtype, device=device),
                "running_var": torch.ones(shape, dtype=dtype, device=device),
                "num_batches_tracked": torch.tensor(0, dtype=torch.int64, device=device),
            }
        return params, state

    def apply(params, state, x, *, train=False, key=None):
        check_params(params, expected_params, name)
        check_params(state, expected_state, f"{name} (state)")
        check_rank(x, (2, 3), name)
        if x.shape[1] != num_features:
            raise ValueError(
                f"{name}: expected {num_features} channels in x of shape (B, {num_features}) or "
                f"(B, {num_features}, T), got shape {tuple(x.shape)}"
            )
        weight, bias = params.get("weight"), params.get("bias")
        if not track_running_stats:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps), state
        if not train:
            y = F.batch_norm(
                x, state["running_mean"], state["running_var"], weight, bias, False, 0.0, eps
            )
            return y, state
        return _train_statistics(x, state, weight, bias, momentum, eps)

    return deterministic(Model(init, apply))


def layer_norm(
    normalized_shape: int | Sequence[int],
    eps: float = 1e-5,
    elementwise_affine: bool = True,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Model:
    """Layer normalisation over the trailing ``normalized_shape`` axes (``torch.nn.LayerNorm``).

    Params (``elementwise_affine=True``): ``weight`` (ones) and, with ``bias=True``, ``bias``
    (zeros), both of shape ``normalized_shape``; no state.

    Args:
        normalized_shape: the trailing axes' sizes (an int for the last axis alone).
        eps: added to the variance before the square root.
        elementwise_affine: whether the layer has a learnt ``weight`` (and ``bias``).
        bias: whether, with ``elementwise_affine``, it has a ``bias``.
        dtype: the params' dtype.

    Returns:
        The layer as a :class:`Model`; its ``apply`` raises ``ValueError`` when ``x`` does not
        end in ``normalized_shape``.

    Raises:
        ValueError: ``normalized_shape`` is not positive ints, or ``eps`` is negative.
    """
    name = "layer_norm"
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in shape):
        raise ValueError(
            f"{name}: normalized_shape must be a positive int or a non-empty tuple of them, "
            f"got {normalized_shape!r}"
        )
    eps = _check_eps(eps, name)
    expected = {}
    if elementwise_affine:
        expected["weight"] = shape
        if bias:
            expected["bias"] = shape

    def init(key=None):
        device = key.device if isinstance(key, torch.Tensor) else None
        params = {}
        if elementwise_affine:
            params["weight"] = torch.ones(shape, dtype=dtype, device=device)
            if bias:
                params["bias"] = torch.zeros(shape, dtype=dtype, device=device)
        return params, {}

    def apply(params, state, x, *, train=False, key=None):
        check_params(params, expected, name)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: x must be a tensor, got {type(x).__name__}")
        if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape) :]) != shape:
            raise ValueError(
                f"{name}: x must end in the normalized shape {shape}, got shape {tuple(x.shape)}"
            )
        y = F.layer_norm(x, shape, params.get("weight"), params.get("bias"), eps)
        return y, state

    return deterministic(Model(init, apply))
