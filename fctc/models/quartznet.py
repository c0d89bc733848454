"""QuartzNet's encoder as a pure model, with thunder-speech's structure and parameter names.

QuartzNet (Kriman et al., 2019) stacks 1-D time-channel separable convolution blocks. The
encoder here is thunder-speech's ``QuartznetEncoder``: a strided stem, the body of
``len(filters) * repeat_blocks`` residual blocks of ``repeat`` sub-blocks each, a dilated
separable block and a 1x1 block. Every convolution is *masked*: time steps at or beyond an
example's length are zeroed before it runs, and the lengths follow the convolution
(``floor((L + 2p - d(k-1) - 1) / s) + 1``), so padding never leaks into the valid outputs in
evaluation mode. (In training mode batch norm sees every step, padding included, as in thunder.)

Parameter paths are thunder's ``state_dict`` keys (``0.mconv.0.conv.weight``,
``0.mconv.2.layer.0.running_mean``, ``1.res.0.conv.weight``, ...), so thunder / NeMo
checkpoints load with :func:`fctc.tree.unflatten_dict` and nothing else.

The block builder, :func:`conv_block`, is shared with Citrinet (:mod:`fctc.models.citrinet`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import nn as _nn
from .. import random as _random
from ..nn.core import (
    Model,
    _marked,
    check_lengths,
    check_rank,
    deterministic,
    lengths_follow,
    padding_mask,
    uses_key,
)

__all__ = [
    "masked_conv1d",
    "conv_block",
    "quartznet_encoder",
    "quartznet_config",
    "QUARTZNET_CONFIGS",
    "STEM_STRIDE",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.1
STEM_STRIDE = 2
"""QuartzNet's only time downsampling: its stem's stride (so 50 outputs per second at a 10 ms hop)."""

QUARTZNET_CONFIGS: dict[str, dict[str, Any]] = {
    "5x5": dict(
        filters=(256, 256, 512, 512, 512), kernel_sizes=(33, 39, 51, 63, 75), repeat_blocks=1
    ),
    "15x5": dict(
        filters=(256, 256, 512, 512, 512), kernel_sizes=(33, 39, 51, 63, 75), repeat_blocks=3
    ),
    # A few thousand parameters: for tests, examples and smoke runs.
    "tiny": dict(
        filters=(16, 24),
        kernel_sizes=(5, 7),
        repeat_blocks=1,
        repeat=2,
        stem_filters=16,
        stem_kernel=7,
        final_filters=(24, 32),
        final_kernel=5,
    ),
}
"""Keyword arguments of :func:`quartznet_encoder` for the named QuartzNet sizes."""


def quartznet_config(name: str) -> dict[str, Any]:
    """The keyword arguments of :func:`quartznet_encoder` for a named size.

    ``quartznet_encoder(feat_in=64, **quartznet_config("15x5"))`` is NeMo's QuartzNet 15x5.

    Args:
        name: ``"5x5"``, ``"15x5"`` or ``"tiny"``.

    Returns:
        A fresh dict, so callers may edit it.

    Raises:
        ValueError: an unknown name.
    """
    return _named_config(QUARTZNET_CONFIGS, name, "quartznet_config")


def _named_config(configs: dict[str, dict[str, Any]], name: str, fn: str) -> dict[str, Any]:
    """A fresh copy of ``configs[name]``, or an error naming the choices."""
    if name not in configs:
        raise ValueError(f"{fn}: unknown configuration {name!r}; choose one of {sorted(configs)}")
    return dict(configs[name])


# ----------------------------------------------------------------------------- building blocks


def _split(key: torch.Tensor | None, num: int) -> list[torch.Tensor | None]:
    if key is None:
        return [None] * num
    return list(_random.split(key, num))


def masked_conv1d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
) -> Model:
    """Thunder's ``MaskedConv1d``: a bias-free ``conv1d`` whose input is zeroed beyond each length.

    Takes and returns ``(x, lengths)``; the lengths become
    ``floor((L + 2 * padding - dilation * (kernel_size - 1) - 1) / stride) + 1``.
    Params ``{"conv": {"weight": (out, in // groups, kernel_size)}}``; no state.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: the kernel's length.
        stride: the time stride.
        padding: zeros added at both ends.
        dilation: the kernel's dilation.
        groups: channel groups (``in_channels`` for a depthwise convolution).

    Returns:
        The model.
    """
    conv = _nn.conv1d(
        in_channels, out_channels, kernel_size, stride=stride, padding=padding,
        dilation=dilation, groups=groups, bias=False,
    )
    span = dilation * (kernel_size - 1) + 1

    def init(key):
        params, _ = conv.init(key)
        return {"conv": params}, {}

    same = stride == 1 and 2 * padding - span == -1  # "same" padding: lengths unchanged

    def apply(params, state, x, lengths, *, train=False, key=None):
        x = x.masked_fill(padding_mask(lengths, x.shape[-1]), 0.0)  # lengths_to_mask's checks
        y, _ = conv.apply(params["conv"], {}, x)
        if same and not lengths.is_floating_point():
            return (y, lengths), state  # the formula below gives the same integers back
        out_lengths = torch.div(lengths + (2 * padding - span), stride, rounding_mode="floor") + 1
        # The same formula on the host: later length checks need not read the values back.
        lengths_follow(out_lengths, lengths, lambda n: (n + 2 * padding - span) // stride + 1)
        return (y, out_lengths), state

    return deterministic(Model(init, apply))


def _conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    dilation: int,
    padding: int,
    separable: bool,
) -> list[Model]:
    """Thunder's ``_get_conv_bn_layer``: (depthwise + pointwise | full) conv, then batch norm."""
    if separable:
        convs = [
            masked_conv1d(
                in_channels, in_channels, kernel_size, stride, padding, dilation,
                groups=in_channels,
            ),
            masked_conv1d(in_channels, out_channels, 1),
        ]
    else:
        convs = [masked_conv1d(in_channels, out_channels, kernel_size, stride, padding, dilation)]
    norm = _nn.masked(_nn.batch_norm(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM))
    return [*convs, norm]


def _relu_dropout(p: float) -> list[Model]:
    """Thunder's ``_get_act_dropout_layer``: ReLU then dropout, each passing lengths through."""
    return [_nn.masked(_nn.relu()), _nn.masked(_nn.dropout(p))]


def conv_block(
    in_channels: int,
    out_channels: int,
    repeat: int = 5,
    kernel_size: int = 11,
    stride: int = 1,
    dilation: int = 1,
    dropout: float = 0.0,
    residual: bool = True,
    separable: bool = False,
    stride_last_only: bool = False,
    tail: Sequence[Model] = (),
) -> Model:
    """One QuartzNet / Citrinet block over ``(x, lengths)``, with thunder's parameter names.

    ``mconv`` holds ``repeat`` sub-blocks (masked conv(s), batch norm, and between sub-blocks
    ReLU and dropout) followed by the models in ``tail`` (Citrinet's squeeze-excite); ``res``
    (when ``residual``) is a 1x1 masked conv and batch norm of the block input, added before
    ``mout``, the closing ReLU and dropout. QuartzNet strides every sub-block (and the residual
    by ``stride ** repeat``); with ``stride_last_only`` (Citrinet) only the last sub-block and
    the residual stride, once.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        repeat: sub-blocks.
        kernel_size: the convolutions' kernel.
        stride: the time stride.
        dilation: the convolutions' dilation.
        dropout: the dropout probability.
        residual: add the 1x1 residual branch.
        separable: depthwise + pointwise convolutions instead of full ones.
        stride_last_only: stride only the last sub-block (Citrinet).
        tail: models appended to ``mconv`` (Citrinet's squeeze-excite).

    Returns:
        The block over ``(x, lengths)``.
    """
    layers: list[Model] = []
    width = in_channels
    for i in range(repeat):
        last = i == repeat - 1
        s = stride if (last or not stride_last_only) else 1
        pad = _nn.get_same_padding(kernel_size, s, dilation)
        layers += _conv_bn(width, out_channels, kernel_size, s, dilation, pad, separable)
        if not last:
            layers += _relu_dropout(dropout)
        width = out_channels
    layers += list(tail)
    mconv = _nn.sequential(*layers)
    res = None
    if residual:
        res_stride = stride if (stride == 1 or stride_last_only) else stride**repeat
        res = _nn.sequential(*_conv_bn(in_channels, out_channels, 1, res_stride, 1, 0, False))
    mout = _nn.sequential(*_relu_dropout(dropout))
    keyed = any(uses_key(m) for m in (mconv, res, mout) if m is not None)

    def init(key):
        k_conv, k_res, k_out = _random.split(key, 3)
        params, state = {}, {}
        params["mconv"], state["mconv"] = mconv.init(k_conv)
        if res is not None:
            params["res"], state["res"] = res.init(k_res)
        params["mout"], state["mout"] = mout.init(k_out)
        return params, state

    def apply(params, state, x, lengths, *, train=False, key=None):
        # Skip deriving keys that nothing would use (without dropout nothing draws).
        k_conv, k_res, k_out = _split(key if (train and keyed) else None, 3)
        new_state = {}
        (y, out_lengths), new_state["mconv"] = mconv.apply(
            params.get("mconv", {}), state.get("mconv", {}), x, lengths, train=train, key=k_conv
        )
        if res is not None:
            (r, _), new_state["res"] = res.apply(
                params.get("res", {}), state.get("res", {}), x, lengths, train=train, key=k_res
            )
            y = y + r
        (y, out_lengths), new_state["mout"] = mout.apply(
            params.get("mout", {}), state.get("mout", {}), y, out_lengths, train=train, key=k_out
        )
        return (y, out_lengths), new_state

    return _marked(Model(init, apply), keyed)


# ------------------------------------------------------------------------------ validation


def _check_int(value: Any, what: str, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: {what} must be an int >= {minimum}, got {value!r}")
    return value


def _check_kernel(value: Any, what: str, name: str) -> int:
    k = _check_int(value, what, name)
    if k % 2 == 0:
        raise ValueError(
            f"{name}: {what}={k} is even; thunder's same padding keeps lengths and residuals "
            f"aligned only for odd kernels (use {k - 1} or {k + 1})"
        )
    return k


def _check_ints(values: Any, what: str, name: str, check=_check_int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name}: {what} must be a sequence of ints, got {values!r}")
    return tuple(check(v, f"{what}[{i}]", name) for i, v in enumerate(values))


def _check_dropout(p: Any, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: dropout must be a probability in [0, 1), got {p!r}")
    return float(p)


def _check_input(x: Any, lengths: Any, feat_in: int, name: str) -> None:
    """Check an encoder input: ``x`` of shape ``(B, feat_in, T)``, ``lengths`` of shape ``(B,)``."""
    check_rank(x, 3, name)
    if x.shape[1] != feat_in:
        raise ValueError(
            f"{name}: x has {x.shape[1]} features (shape {tuple(x.shape)}) but the encoder was "
            f"built with feat_in={feat_in}; pass features as (batch, {feat_in}, time) or build "
            f"the encoder with feat_in={x.shape[1]}"
        )
    check_lengths(lengths, x, name)


def _encoder(blocks: Sequence[Model], feat_in: int, name: str) -> Model:
    """Chain ``blocks`` over ``(x, lengths)`` (params ``{"0": ..., "1": ...}``), checking inputs."""
    body = _nn.sequential(*blocks)

    def apply(params, state, x, lengths, *, train=False, key=None):
        _check_input(x, lengths, feat_in, name)
        return body.apply(params, state, x, lengths, train=train, key=key)

    return _marked(Model(body.init, apply), uses_key(body))


# --------------------------------------------------------------------------------- encoder


def quartznet_encoder(
    feat_in: int = 64,
    filters: Sequence[int] = (256, 256, 512, 512, 512),
    kernel_sizes: Sequence[int] = (33, 39, 51, 63, 75),
    repeat_blocks: int = 1,
    dropout: float = 0.0,
    *,
    repeat: int = 5,
    stem_filters: int = 256,
    stem_kernel: int = 33,
    final_filters: Sequence[int] = (512, 1024),
    final_kernel: int = 87,
) -> Model:
    """Thunder-speech's ``QuartznetEncoder`` as a pure model over ``(x, lengths)``.

    ``x`` is ``(batch, feat_in, time)`` and ``lengths`` ``(batch,)``; ``apply`` returns
    ``((y, out_lengths), state)`` with ``y`` of shape ``(batch, final_filters[1], time')``
    (time is halved by the stem, rounding up). Blocks: a stride-2 separable stem
    (``stem_filters`` wide, kernel ``stem_kernel``, no residual, no dropout); for each
    ``(filters[i], kernel_sizes[i])``, ``repeat_blocks`` residual blocks of ``repeat`` separable
    sub-blocks; a dilation-2 separable block (``final_filters[0]``, ``final_kernel``) and a 1x1
    block (``final_filters[1]``). The keyword-only arguments default to thunder's fixed values;
    :func:`quartznet_config` names the usual sizes (5x5: 6,683,456 parameters at
    ``feat_in=64``; 15x5: 18,894,656). Dropout (between sub-blocks and after every block but the
    stem, as in thunder) draws from ``key`` when ``train=True``.

    Args:
        feat_in: input features.
        filters: the width of each body stage.
        kernel_sizes: the kernel of each body stage (odd).
        repeat_blocks: residual blocks per stage.
        dropout: the dropout probability.
        repeat: sub-blocks per block.
        stem_filters: the stem's width.
        stem_kernel: the stem's kernel (odd).
        final_filters: the widths of the dilated block and the 1x1 block.
        final_kernel: the dilated block's kernel (odd).

    Returns:
        The encoder.

    Raises:
        ValueError: an argument out of range (a non-positive width, an even kernel, lists of
            different lengths, a dropout outside ``[0, 1)``).
        TypeError: a list argument that is not a sequence of ints.
    """
    name = "quartznet_encoder"
    feat_in = _check_int(feat_in, "feat_in", name)
    filters = _check_ints(filters, "filters", name)
    kernel_sizes = _check_ints(kernel_sizes, "kernel_sizes", name, _check_kernel)
    if len(filters) != len(kernel_sizes):
        raise ValueError(
            f"{name}: filters ({len(filters)} values) and kernel_sizes ({len(kernel_sizes)} "
            "values) must have the same length: one kernel size per block"
        )
    repeat_blocks = _check_int(repeat_blocks, "repeat_blocks", name)
    repeat = _check_int(repeat, "repeat", name)
    dropout = _check_dropout(dropout, name)
    stem_filters = _check_int(stem_filters, "stem_filters", name)
    stem_kernel = _check_kernel(stem_kernel, "stem_kernel", name)
    final_filters = _check_ints(final_filters, "final_filters", name)
    if len(final_filters) != 2:
        raise ValueError(
            f"{name}: final_filters must hold two widths (dilated block, 1x1 block), "
            f"got {final_filters!r}"
        )
    final_kernel = _check_kernel(final_kernel, "final_kernel", name)

    blocks = [
        conv_block(
            feat_in, stem_filters, 1, stem_kernel, stride=STEM_STRIDE, residual=False, separable=True
        )
    ]
    width = stem_filters
    for f, k in zip(filters, kernel_sizes):
        for _ in range(repeat_blocks):
            blocks.append(conv_block(width, f, repeat, k, dropout=dropout, separable=True))
            width = f
    f1, f2 = final_filters
    blocks.append(
        conv_block(
            width, f1, 1, final_kernel, dilation=2, dropout=dropout, residual=False,
            separable=True,
        )
    )
    blocks.append(conv_block(f1, f2, 1, 1, dropout=dropout, residual=False, separable=False))
    return _encoder(blocks, feat_in, name)
