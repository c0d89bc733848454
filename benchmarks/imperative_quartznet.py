"""QuartzNet written the way PyTorch users write it today: an ``nn.Module`` trained in place.

This is the baseline of ``benchmarks/train_step.py``. It is written for the benchmark from
thunder-speech's published design (``thunder.quartznet.blocks``), independently of fctc and of
the test references, and it keeps thunder's module tree so that its ``state_dict`` keys are
thunder's, and therefore fctc's parameter paths:

* ``MaskedConv1d`` keeps its ``nn.Conv1d`` as ``.conv``; it zeroes time steps at or beyond each
  length before convolving and returns the lengths after the convolution;
* ``Masked`` runs ordinary layers (kept in ``.layer``, an ``nn.Sequential``) on ``x`` and
  passes the lengths through, hence keys such as ``0.mconv.2.layer.0.running_mean``;
* a block is ``mconv`` (the repeated sub-blocks), ``res`` (the 1x1 residual branch) and
  ``mout`` (the closing ReLU and dropout); ReLU is in place, as in thunder.

:class:`CTCModel` puts the encoder and thunder's 1x1 convolution decoder under ``encoder`` and
``decoder``, so ``fctc.tree.flatten_dict`` of an fctc ``ctc_model``'s params and state loads
into it with ``load_state_dict`` (and back).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "MaskedConv1d",
    "Masked",
    "LengthSequential",
    "QuartznetBlock",
    "quartznet_encoder",
    "CTCModel",
    "quartznet_ctc",
    "CONFIGS",
]

CONFIGS = {
    "5x5": dict(
        filters=(256, 256, 512, 512, 512), kernel_sizes=(33, 39, 51, 63, 75), repeat_blocks=1
    ),
    "15x5": dict(
        filters=(256, 256, 512, 512, 512), kernel_sizes=(33, 39, 51, 63, 75), repeat_blocks=3
    ),
    "tiny": dict(
        filters=(16, 24), kernel_sizes=(5, 7), repeat_blocks=1, repeat=2, stem_filters=16,
        stem_kernel=7, final_filters=(24, 32), final_kernel=5,
    ),
}
"""Keyword arguments of :func:`quartznet_encoder`, named as fctc's ``quartznet_config`` names them."""


class MaskedConv1d(nn.Module):
    """A bias-free ``nn.Conv1d`` over an input whose steps beyond ``lengths`` are zeroed."""

    def __init__(self, c_in, c_out, kernel_size, stride=1, padding=0, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv1d(
            c_in, c_out, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=False,
        )
        self.shrink = 2 * padding - dilation * (kernel_size - 1) - 1
        self.stride = stride

    def forward(self, x, lengths):
        """Zero the steps beyond ``lengths``, convolve.

        Args:
            x: ``(B, C, T)``.
            lengths: valid steps per example.

        Returns:
            ``(y, lengths after the convolution)``.
        """
        steps = torch.arange(x.shape[-1], device=x.device)
        pad = steps.unsqueeze(0) >= lengths.unsqueeze(1)
        x = x.masked_fill(pad.unsqueeze(1), 0.0)
        return self.conv(x), (lengths + self.shrink) // self.stride + 1


class Masked(nn.Module):
    """Length-agnostic layers inside a ``(x, lengths)`` chain."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layer = nn.Sequential(*layers)

    def forward(self, x, lengths):
        """Run the layers on ``x``.

        Args:
            x: the input.
            lengths: passed through.

        Returns:
            ``(layers(x), lengths)``.
        """
        return self.layer(x), lengths


class LengthSequential(nn.Sequential):
    """``nn.Sequential`` over modules that take and return ``(x, lengths)``."""

    def forward(self, x, lengths):  # type: ignore[override]
        """Thread ``(x, lengths)`` through every module.

        Args:
            x: the input.
            lengths: valid steps per example.

        Returns:
            The last module's ``(x, lengths)``.
        """
        for module in self:
            x, lengths = module(x, lengths)
        return x, lengths


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (dilation * (kernel_size - 1) + 1) // 2 if dilation > 1 else kernel_size // 2


def _conv_bn(c_in, c_out, kernel_size, stride=1, dilation=1, padding=0, separable=False):
    if separable:
        layers = [
            MaskedConv1d(c_in, c_in, kernel_size, stride, padding, dilation, groups=c_in),
            MaskedConv1d(c_in, c_out, 1),
        ]
    else:
        layers = [MaskedConv1d(c_in, c_out, kernel_size, stride, padding, dilation)]
    return layers + [Masked(nn.BatchNorm1d(c_out, eps=1e-3, momentum=0.1))]


def _relu_dropout(p: float):
    return [Masked(nn.ReLU(inplace=True)), Masked(nn.Dropout(p))]


class QuartznetBlock(nn.Module):
    """``repeat`` (separable) conv + batch-norm sub-blocks, a 1x1 residual, ReLU and dropout."""

    def __init__(
        self, c_in, c_out, repeat=5, kernel_size=11, stride=1, dilation=1, dropout=0.0,
        residual=True, separable=False,
    ):
        super().__init__()
        padding = _same_padding(kernel_size, dilation)
        layers: list[nn.Module] = []
        width = c_in
        for i in range(repeat):
            layers += _conv_bn(width, c_out, kernel_size, stride, dilation, padding, separable)
            if i < repeat - 1:
                layers += _relu_dropout(dropout)
            width = c_out
        self.mconv = LengthSequential(*layers)
        self.res = (
            LengthSequential(*_conv_bn(c_in, c_out, 1, stride**repeat)) if residual else None
        )
        self.mout = LengthSequential(*_relu_dropout(dropout))

    def forward(self, x, lengths):
        """The block: sub-blocks, plus the residual, then ReLU and dropout.

        Args:
            x: ``(B, c_in, T)``.
            lengths: valid steps per example.

        Returns:
            ``(y (B, c_out, T'), lengths')``.
        """
        out, out_lengths = self.mconv(x, lengths)
        if self.res is not None:
            out = out + self.res(x, lengths)[0]
        return self.mout(out, out_lengths)


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
) -> LengthSequential:
    """Thunder's QuartzNet encoder: stride-2 stem, the body, a dilated block and a 1x1 block.

    Args:
        feat_in: input features.
        filters: the width of each body stage.
        kernel_sizes: the kernel of each body stage.
        repeat_blocks: blocks per stage.
        dropout: the dropout probability.
        repeat: sub-blocks per block.
        stem_filters: the stem's width.
        stem_kernel: the stem's kernel.
        final_filters: the widths of the dilated and the 1x1 block.
        final_kernel: the dilated block's kernel.

    Returns:
        The encoder over ``(x, lengths)``.
    """
    blocks = [QuartznetBlock(feat_in, stem_filters, 1, stem_kernel, stride=2, residual=False,
                             separable=True)]
    width = stem_filters
    for f, k in zip(filters, kernel_sizes):
        for _ in range(repeat_blocks):
            blocks.append(QuartznetBlock(width, f, repeat, k, dropout=dropout, separable=True))
            width = f
    f1, f2 = final_filters
    blocks.append(QuartznetBlock(width, f1, 1, final_kernel, dilation=2, dropout=dropout,
                                 residual=False, separable=True))
    blocks.append(QuartznetBlock(f1, f2, 1, 1, dropout=dropout, residual=False))
    return LengthSequential(*blocks)


class CTCModel(nn.Module):
    """Encoder plus thunder's ``Conv1d(kernel_size=1)`` decoder over precomputed features.

    ``forward(features (B, feat_in, T), lengths)`` returns ``(logits (B, classes, T'), lengths')``.
    """

    def __init__(self, encoder: nn.Module, width: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = nn.Conv1d(width, num_classes, kernel_size=1, bias=True)

    def forward(self, features, lengths):
        """Logits of precomputed features.

        Args:
            features: ``(B, feat_in, T)``.
            lengths: valid frames per example.

        Returns:
            ``(logits (B, classes, T'), lengths')``.
        """
        encoded, lengths = self.encoder(features, lengths)
        return self.decoder(encoded), lengths


def quartznet_ctc(config: str, num_classes: int, feat_in: int = 64) -> CTCModel:
    """The benchmark model for a named configuration.

    Written independently of fctc's builders on purpose: it is the reference they are
    compared with.

    Args:
        config: ``"5x5"``, ``"15x5"`` or ``"tiny"``.
        num_classes: output classes, blank included.
        feat_in: input features.

    Returns:
        The ``nn.Module``.
    """
    kwargs = dict(CONFIGS[config])
    width = tuple(kwargs.get("final_filters", (512, 1024)))[-1]
    return CTCModel(quartznet_encoder(feat_in, **kwargs), width, num_classes)
