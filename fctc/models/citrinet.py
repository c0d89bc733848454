"""Citrinet's encoder as a pure model, with thunder-speech's structure and parameter names.

Citrinet (Majumdar et al., 2021) is QuartzNet with squeeze-and-excitation and strided blocks
for sub-sampling. The encoder is thunder-speech's ``CitrinetEncoder``: a separable stem
(kernel 5), one residual block of ``repeat`` separable sub-blocks per ``(filters[i],
kernel_sizes[i], strides[i])`` (only the last sub-block strides) and a final separable block
(640 wide, kernel 41). Every block ends its ``mconv`` with a squeeze-excite (reduction 8) whose
weights are ``<block>.mconv.<n>.layer.0.fc.0.weight`` and ``...fc.2.weight``, as in thunder.

Differences from thunder, all opt-in or config-driven:

* The stem is ``filters[0]`` wide (``stem_filters`` overrides it). Thunder hard-codes 256, so
  its encoder cannot hold the 512- and 1024-wide NeMo checkpoints; for 256-wide filters the two
  agree exactly.
* ``masked_se=True`` averages the squeeze over the valid time steps only and zeroes the padding
  (NeMo's later SqueezeExcite). Thunder's default averages over every step, padding included,
  so its outputs depend on how much padding a batch carries; the masked variant makes the
  encoder padding invariant in evaluation mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import nn as _nn
from ..nn.core import Model, deterministic
from .quartznet import (
    _check_dropout,
    _check_int,
    _check_ints,
    _check_kernel,
    _encoder,
    _named_config,
    conv_block,
)

__all__ = ["squeeze_excite", "citrinet_encoder", "citrinet_config", "CITRINET_CONFIGS"]

SE_REDUCTION = 8

_CITRINET_KERNELS = (
    (11, 13, 15, 17, 19, 21) + (13, 15, 17, 19, 21, 23, 25) + (25, 27, 29, 31, 33, 35, 37, 39)
)
_CITRINET_STRIDES = (2, 1, 1, 1, 1, 1) + (2, 1, 1, 1, 1, 1, 1) + (2, 1, 1, 1, 1, 1, 1, 1)


def _nemo_citrinet(width: int) -> dict[str, Any]:
    n = len(_CITRINET_KERNELS)
    return dict(filters=(width,) * n, kernel_sizes=_CITRINET_KERNELS, strides=_CITRINET_STRIDES)


CITRINET_CONFIGS: dict[str, dict[str, Any]] = {
    "256": _nemo_citrinet(256),
    "512": _nemo_citrinet(512),
    "1024": _nemo_citrinet(1024),
    # A few thousand parameters: for tests, examples and smoke runs.
    "tiny": dict(
        filters=(16, 24),
        kernel_sizes=(5, 7),
        strides=(2, 1),
        repeat=2,
        stem_kernel=3,
        final_filters=32,
        final_kernel=5,
    ),
}
"""Keyword arguments of :func:`citrinet_encoder` for the named sizes (Citrinet-256/512/1024:
21 blocks in three stages that each open with a stride-2 block, 8x sub-sampling)."""


def citrinet_config(name: str) -> dict[str, Any]:
    """The keyword arguments of :func:`citrinet_encoder` for a named size.

    ``citrinet_encoder(feat_in=80, **citrinet_config("512"))``. The final block keeps
    thunder's width of 640; pass ``final_filters`` for a checkpoint whose last block differs.

    Args:
        name: ``"256"``, ``"512"``, ``"1024"`` or ``"tiny"``.

    Returns:
        A fresh dict.

    Raises:
        ValueError: an unknown name.
    """
    return _named_config(CITRINET_CONFIGS, name, "citrinet_config")


def squeeze_excite(channels: int, reduction: int = SE_REDUCTION, masked: bool = False) -> Model:
    """Thunder's ``Masked(SqueezeExcite(channels, reduction))`` over ``(x, lengths)``.

    Scales each channel of ``x`` by ``sigmoid(fc(mean over time of x))`` where ``fc`` is
    ``linear(channels, channels // reduction) -> relu -> linear(..., channels)``, both without
    bias. Params ``{"layer": {"0": {"fc": {"0": {"weight"}, "2": {"weight"}}}}}``. With
    ``masked=True`` the mean covers each example's valid steps only and the padding is zeroed
    (an empty example pools to zero where NeMo would give NaN).

    Args:
        channels: the channels of ``x``.
        reduction: ``channels // reduction`` hidden units.
        masked: pool over the valid steps only.

    Returns:
        The model over ``(x, lengths)``.

    Raises:
        ValueError: no hidden unit is left.
    """
    hidden = channels // reduction
    if hidden < 1:
        raise ValueError(
            f"squeeze_excite: {channels} channels leave no hidden units at reduction {reduction}; "
            f"use at least {reduction} channels"
        )
    fc = _nn.serial(
        _nn.linear(channels, hidden, bias=False),
        _nn.relu(),
        _nn.linear(hidden, channels, bias=False),
    )

    def init(key):
        params, state = fc.init(key)
        return {"layer": {"0": {"fc": params}}}, {"layer": {"0": {"fc": state}}}

    def apply(params, state, x, lengths, *, train=False, key=None):
        if masked:
            valid = _nn.lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1)
            x = x.masked_fill(~valid, 0.0)
            pooled = x.sum(dim=-1) / valid.sum(dim=-1).clamp_min(1).to(x.dtype)
        else:
            pooled = x.mean(dim=-1)
        gate, fc_state = fc.apply(
            params["layer"]["0"]["fc"], state["layer"]["0"]["fc"], pooled, train=train, key=key
        )
        y = x * torch.sigmoid(gate).unsqueeze(-1)
        return (y, lengths), {"layer": {"0": {"fc": fc_state}}}

    return deterministic(Model(init, apply))  # fc is linear, relu, linear: it draws nothing


def citrinet_encoder(
    filters: Sequence[int],
    kernel_sizes: Sequence[int],
    strides: Sequence[int],
    feat_in: int = 80,
    dropout: float = 0.0,
    *,
    repeat: int = 5,
    stem_filters: int | None = None,
    stem_kernel: int = 5,
    final_filters: int = 640,
    final_kernel: int = 41,
    masked_se: bool = False,
) -> Model:
    """Thunder-speech's ``CitrinetEncoder`` as a pure model over ``(x, lengths)``.

    ``x`` is ``(batch, feat_in, time)``; ``apply`` returns ``((y, out_lengths), state)`` with
    ``y`` of shape ``(batch, final_filters, time')``, time divided by the product of
    ``strides`` (rounding up at each stride). One residual block per
    ``(filters[i], kernel_sizes[i], strides[i])``; see the module docstring for the stem width
    and ``masked_se``. Dropout (not in the stem, as in thunder) draws from ``key`` when
    ``train=True``.

    Args:
        filters: the width of each block.
        kernel_sizes: the kernel of each block (odd).
        strides: the stride of each block.
        feat_in: input features.
        dropout: the dropout probability.
        repeat: sub-blocks per block.
        stem_filters: the stem's width; None is ``filters[0]``.
        stem_kernel: the stem's kernel (odd).
        final_filters: the final block's width.
        final_kernel: the final block's kernel (odd).
        masked_se: squeeze-excite over the valid steps only.

    Returns:
        The encoder.

    Raises:
        ValueError: an argument out of range (lists of different lengths, a width below the
            squeeze-excite reduction, an even kernel, a dropout outside ``[0, 1)``).
        TypeError: a list argument that is not a sequence of ints.
    """
    name = "citrinet_encoder"
    filters = _check_ints(filters, "filters", name)
    kernel_sizes = _check_ints(kernel_sizes, "kernel_sizes", name, _check_kernel)
    strides = _check_ints(strides, "strides", name)
    if not len(filters) == len(kernel_sizes) == len(strides):
        raise ValueError(
            f"{name}: filters, kernel_sizes and strides must have the same length (one of each "
            f"per block), got {len(filters)}, {len(kernel_sizes)} and {len(strides)} values"
        )
    if not filters and stem_filters is None:
        raise ValueError(f"{name}: filters is empty; give at least one block or stem_filters")
    feat_in = _check_int(feat_in, "feat_in", name)
    dropout = _check_dropout(dropout, name)
    repeat = _check_int(repeat, "repeat", name)
    stem_filters = filters[0] if stem_filters is None else stem_filters
    stem_filters = _check_int(stem_filters, "stem_filters", name)
    stem_kernel = _check_kernel(stem_kernel, "stem_kernel", name)
    final_filters = _check_int(final_filters, "final_filters", name)
    final_kernel = _check_kernel(final_kernel, "final_kernel", name)
    for what, width in [("stem_filters", stem_filters), ("final_filters", final_filters)] + [
        (f"filters[{i}]", f) for i, f in enumerate(filters)
    ]:
        if width < SE_REDUCTION:
            raise ValueError(
                f"{name}: {what}={width} is below {SE_REDUCTION}, the squeeze-excite reduction "
                f"ratio; use at least {SE_REDUCTION} channels"
            )

    def block(c_in, c_out, r, k, s=1, p=0.0, residual=True):
        se = squeeze_excite(c_out, masked=masked_se)
        return conv_block(
            c_in, c_out, r, k, stride=s, dropout=p, residual=residual, separable=True,
            stride_last_only=True, tail=(se,),
        )

    blocks = [block(feat_in, stem_filters, 1, stem_kernel, residual=False)]
    width = stem_filters
    for f, k, s in zip(filters, kernel_sizes, strides):
        blocks.append(block(width, f, repeat, k, s, dropout))
        width = f
    blocks.append(block(width, final_filters, 1, final_kernel, p=dropout, residual=False))
    return _encoder(blocks, feat_in, name)

