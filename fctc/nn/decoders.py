"""thunder-speech's CTC decoder heads, with thunder's module structure and initialisation.

* :func:`conv1d_decoder` is thunder's single ``nn.Conv1d(kernel_size=1)`` (keys ``weight``,
  ``bias``) with an xavier-uniform weight and torch's default bias.
* :func:`linear_decoder` is thunder's ``nn.Sequential(SwapLastDimension(), nn.Dropout(p),
  nn.Linear(C, classes), SwapLastDimension())`` (keys ``2.weight``, ``2.bias``) with torch's
  default ``nn.Linear`` initialisation.

Both map encoder features ``(B, C, T)`` to logits ``(B, num_classes, T)``.
"""

from __future__ import annotations

import torch

from .combinators import serial
from .conv import conv1d
from .core import Model, deterministic
from .dropout import dropout
from .init import xavier_uniform
from .linear import linear

__all__ = ["swap_last_dimension", "linear_decoder", "conv1d_decoder"]


def swap_last_dimension() -> Model:
    """Swap the last two axes, ``x.transpose(-1, -2)`` (thunder's ``SwapLastDimension``).

    Returns:
        The layer as a :class:`Model` without params or state; its ``apply`` raises
        ``ValueError`` for an input of rank below 2.
    """

    def init(key=None):
        return {}, {}

    def apply(params, state, x, *, train=False, key=None):
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"swap_last_dimension: x must have rank >= 2, got {got}")
        return x.transpose(-1, -2), state

    return deterministic(Model(init, apply))


def linear_decoder(decoder_input_channels: int, num_classes: int, decoder_dropout: float) -> Model:
    """Dropout then a linear layer over the channels of ``(B, C, T)`` features (thunder's
    ``linear_decoder``). The linear layer has torch's default initialisation, as in thunder.

    Args:
        decoder_input_channels: the encoder's output channels ``C``.
        num_classes: the vocabulary size, blank included.
        decoder_dropout: the dropout probability before the linear layer.

    Returns:
        A :class:`Model` from ``(B, C, T)`` to logits ``(B, num_classes, T)``.
    """
    return serial(
        swap_last_dimension(),
        dropout(decoder_dropout),
        linear(decoder_input_channels, num_classes),
        swap_last_dimension(),
    )


def conv1d_decoder(decoder_input_channels: int, num_classes: int) -> Model:
    """A kernel-size-1 convolution from encoder channels to class logits (thunder's
    ``conv1d_decoder``): xavier-uniform weight (gain 1), torch's default bias.

    Args:
        decoder_input_channels: the encoder's output channels ``C``.
        num_classes: the vocabulary size, blank included.

    Returns:
        A :class:`Model` from ``(B, C, T)`` to logits ``(B, num_classes, T)``.
    """
    return conv1d(
        decoder_input_channels,
        num_classes,
        kernel_size=1,
        bias=True,
        weight_init=xavier_uniform(gain=1.0),
    )
