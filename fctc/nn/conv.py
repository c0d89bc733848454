"""A 1-D convolution, ``torch.nn.Conv1d`` as a pure :class:`~fctc.nn.core.Model`.

The parameters, their initialisation and the arithmetic are torch's (``F.conv1d``), so a
``Conv1d``'s ``state_dict`` loads as the params; the checks name the bad argument or input.
On the CPU two kinds of convolution take another route to the same sums:

- depthwise convolutions run :mod:`fctc.nn.depthwise`'s kernel (the same products, several
  times faster than ``F.conv1d`` there);
- pointwise convolutions (kernel size 1, stride 1: QuartzNet's and Citrinet's channel
  mixers and the CTC decoder) are a matrix product per utterance, ``weight[:, :, 0] @ x[b]``,
  and run as one ``bmm`` where ``F.conv1d`` would send them to oneDNN (more than one thread,
  or batches of 16 or more), whose primitives the default recipe's run kept building and
  reordering for its bucketed lengths: 400 training steps of it took about 1.2x as long that
  way with two threads (a layer timed alone, on repeated shapes, is about as fast either
  way). With one thread and smaller batches ``F.conv1d``'s own per-utterance product is
  faster on small layers and gives the same bits.

Both agree with ``F.conv1d`` to rounding, not bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import random as _random
from . import depthwise
from .core import Model, check_params, check_rank, deterministic
from .init import Initializer, bias_uniform, kaiming_uniform

__all__ = ["conv1d"]


def _single(value: object, what: str, minimum: int) -> int:
    """An int (or a 1-tuple of one, as thunder passes ``kernel_size=(11,)``) ``>= minimum``."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"conv1d: {what} must be an int >= {minimum}, got {value!r}")
    return value


def _padding(padding: object, stride: int) -> int | str:
    """An int ``>= 0``, ``"valid"``, or ``"same"`` (which torch allows with stride 1 only)."""
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"conv1d: padding must be an int, 'same' or 'valid', got {padding!r}")
        if padding == "same" and stride != 1:
            raise ValueError("conv1d: padding='same' needs stride=1 (as in torch); pad explicitly")
        return padding
    return _single(padding, "padding", 0)


def _pointwise(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: object, groups: int) -> bool:
    """Whether the convolution is a matrix product that :func:`conv1d` runs as one: kernel
    size 1, stride 1, no padding, one group, on ``(B, C, T)`` inputs, where
    :func:`fctc.nn.depthwise.eager_cpu_float32` allows, and where ``F.conv1d`` would hand it
    to oneDNN (torch's rule for 1x1 kernels: more than one thread, or a batch of 16 or more),
    which builds a primitive for every new shape. Otherwise ``F.conv1d`` runs its own matrix
    product per utterance, faster on small layers, with the same bits."""
    return (
        weight.shape[-1] == 1
        and stride == 1
        and padding in (0, "valid", "same")
        and groups == 1
        and x.dim() == 3
        and depthwise.eager_cpu_float32(x, weight)  # first: never traced past here
        and (x.shape[0] >= 16 or torch.get_num_threads() > 1)
    )


def _check_input(x: object, in_channels: int, padding: int | str, span: int) -> None:
    """``x`` is ``(B, C, T)`` or ``(C, T)`` with ``in_channels`` channels and, padded, at least
    the kernel's ``span`` time steps."""
    check_rank(x, (2, 3), "conv1d")
    if x.shape[-2] != in_channels:
        raise ValueError(
            f"conv1d: expected {in_channels} input channels (x of shape (B, {in_channels}, T)),"
            f" got shape {tuple(x.shape)}"
        )
    padded = x.shape[-1] + (2 * padding if isinstance(padding, int) else 0)
    if padding == "valid" or isinstance(padding, int):
        if padded < span:
            raise ValueError(
                f"conv1d: {x.shape[-1]} time steps (padded to {padded}) are fewer than the "
                f"kernel's span of {span}; give a longer input or more padding"
            )


def conv1d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | str = 0,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
    weight_init: Initializer | None = None,
    bias_init: Initializer | None = None,
) -> Model:
    """A 1-D convolution over ``(B, C, T)`` (or unbatched ``(C, T)``), like ``torch.nn.Conv1d``.

    Params: ``{"weight": (out_channels, in_channels // groups, kernel_size),
    "bias": (out_channels,)}``; no state. ``groups`` covers grouped and depthwise
    (``groups == in_channels``) convolutions. Initialisation is torch's default: weight
    ``kaiming_uniform(a=sqrt(5))``, bias ``U(+-1/sqrt(fan_in))`` with
    ``fan_in = in_channels // groups * kernel_size``.

    Args:
        in_channels: input channels ``C``.
        out_channels: output channels.
        kernel_size: the kernel's width (an int, or a 1-tuple as thunder passes it).
        stride: the step between output frames.
        padding: zeros added on each side (an int), or ``"same"`` / ``"valid"``.
        dilation: the spacing of the kernel's taps.
        groups: the number of channel groups (``in_channels`` for depthwise).
        bias: whether the layer has a bias.
        dtype: the parameters' dtype.
        weight_init: an initialiser for the weight (see :mod:`fctc.nn.init`).
        bias_init: an initialiser for the bias.

    Returns:
        The layer as a :class:`Model`; ``apply(params, state, x)`` returns ``(y, state)`` and
        raises ``ValueError`` for params of the wrong shapes, the wrong number of input
        channels, or an input shorter than the kernel's span.

    Raises:
        ValueError: a size that is not a positive int, an unknown ``padding``,
            ``padding="same"`` with a stride, or channels not divisible by ``groups``.
    """
    in_channels = _single(in_channels, "in_channels", 1)
    out_channels = _single(out_channels, "out_channels", 1)
    kernel_size = _single(kernel_size, "kernel_size", 1)
    stride = _single(stride, "stride", 1)
    dilation = _single(dilation, "dilation", 1)
    groups = _single(groups, "groups", 1)
    padding = _padding(padding, stride)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"conv1d: in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
            f"divisible by groups ({groups})"
        )
    weight_shape = (out_channels, in_channels // groups, kernel_size)
    fan_in = in_channels // groups * kernel_size
    w_init = weight_init or kaiming_uniform(a=math.sqrt(5))
    b_init = bias_init or bias_uniform(fan_in)
    expected = {"weight": weight_shape}
    if bias:
        expected["bias"] = (out_channels,)
    span = dilation * (kernel_size - 1) + 1

    def init(key):
        k_w, k_b = _random.split(key, 2)
        params = {"weight": w_init(k_w, weight_shape, dtype)}
        if bias:
            params["bias"] = b_init(k_b, (out_channels,), dtype)
        return params, {}

    def apply(params, state, x, *, train=False, key=None):
        check_params(params, expected, "conv1d")
        _check_input(x, in_channels, padding, span)
        weight, b = params["weight"], params.get("bias")
        if depthwise.fits(x, weight, stride, padding, groups):
            return depthwise.depthwise_conv1d(x, weight, b, padding, dilation), state
        if _pointwise(x, weight, stride, padding, groups):
            # bmm, one product per utterance: torch.matmul would fold the batch into one
            # product or not depending on requires_grad, and so round differently. (squeeze,
            # a view, differentiates without the copy that indexing's backward makes.)
            y = torch.bmm(weight.squeeze(-1).expand(x.shape[0], -1, -1), x)
            return (y if b is None else y + b.unsqueeze(-1)), state
        return F.conv1d(x, weight, b, stride, padding, dilation, groups), state

    return deterministic(Model(init, apply))
