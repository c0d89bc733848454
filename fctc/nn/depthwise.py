"""A depthwise 1-D convolution for the CPU, as a sum of shifted products.

On the CPU, ``F.conv1d`` with ``groups == in_channels`` (QuartzNet's and Citrinet's separable
convolutions) goes through a general oneDNN path that is several times slower than the
arithmetic needs: a depthwise kernel of ``K`` taps is ``K`` multiply-adds of the input shifted
by one tap at a time. :func:`depthwise_conv1d` computes exactly that: one vectorised
``addcmul_`` per tap forward, and the same for the input's gradient backward
(``benchmarks/depthwise_conv.py`` times it against ``F.conv1d``).

It computes what ``F.conv1d`` computes, to rounding: the bias, then the products summed tap
by tap in order (which on this CPU often gives ``F.conv1d``'s output bit for bit), and
gradients whose sums over batch and time run in their own order. Nothing depends on the
number of threads, nor an utterance's output on the others padded into its batch. A second
derivative (``create_graph=True``) is ATen's own ``convolution_backward``.

:func:`fits` says when it applies: on float32 CPU inputs of at least :data:`MIN_ELEMENTS`
elements, outside autocast, with stride 1 and zero padding on both sides, eagerly or in code
that fctc compiles (:func:`fctc.backend.jit_trees`, so ``make_train_step(jit=True)``), where
the kernel's forward and backward are opaque custom ops (``fctc::depthwise_conv1d`` and its
``_backward``) that inductor calls as they are; :func:`fctc.nn.conv1d` uses it then and
``F.conv1d`` otherwise: under ``torch.func`` transforms (fctc's own included, which cannot
differentiate the custom ops inside compiled code) and under a plain ``torch.compile``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._tree_jit import opaque_kernels
from ..backend import is_tracing

__all__ = ["depthwise_conv1d", "eager_cpu_float32", "fits"]

_PLAIN = (torch.Tensor, torch.nn.Parameter)  # not a subclass with its own dispatch

#: The smallest input (elements) the kernel takes: below it, its one operation per tap costs more
#: than oneDNN's single call (measured on 2 cores: 8 x 24 x 100 with 5 taps is 10% slower
#: forward and backward, 8 x 128 x 200 with 11 to 15 taps 2-3x faster).
MIN_ELEMENTS = 2**15


def fits(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: object, groups: int) -> bool:
    """Whether :func:`depthwise_conv1d` computes this ``F.conv1d`` call (see the module).

    Args:
        x: the input, ``(B, C, T)``.
        weight: the kernel, ``(C, 1, K)`` for a depthwise convolution.
        stride: the convolution's stride.
        padding: its padding (an int applies; ``"same"`` and ``"valid"`` go to ``F.conv1d``).
        groups: its groups (``C``, at least 2).

    Returns:
        True when the shifted-product kernel applies.
    """
    return (
        stride == 1
        and isinstance(padding, int)
        and x.dim() == 3
        and x.numel() >= MIN_ELEMENTS
        and 1 < groups == x.shape[1] == weight.shape[0]  # one channel: a plain convolution
        and weight.shape[1] == 1
        and _cpu_float32(x, weight)
        and (not is_tracing() or opaque_kernels())  # compiled by fctc: an opaque op
    )


def eager_cpu_float32(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a convolution of ``x`` by ``weight`` may leave ``F.conv1d`` for a CPU route of
    fctc's: both plain float32 CPU tensors, outside autocast and ``torch.func`` /
    ``torch.compile`` (which keep ``F.conv1d``).

    Args:
        x: the input.
        weight: the kernel.

    Returns:
        True when both conditions hold.
    """
    return not is_tracing() and _cpu_float32(x, weight)


def _cpu_float32(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Both float32 CPU tensors outside autocast (eagerly, not tensor subclasses either)."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (torch.compiler.is_compiling() or (type(x) in _PLAIN and type(weight) in _PLAIN))
        and not torch.is_autocast_enabled("cpu")
    )


def depthwise_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, dilation: int
) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, 1, padding, dilation, groups=C)`` as shifted products.

    Args:
        x: ``(B, C, T)`` float32 CPU input.
        weight: ``(C, 1, K)`` kernel.
        bias: ``(C,)`` or None.
        padding: zeros added on each side.
        dilation: the spacing of the taps.

    Returns:
        ``(B, C, T + 2 * padding - dilation * (K - 1))``, differentiable in ``x``, ``weight``
        and ``bias``.
    """
    return _Depthwise.apply(x, weight, bias, padding, dilation)


def _taps(xp: torch.Tensor, k: int, dilation: int, frames: int) -> torch.Tensor:
    """Tap ``k``'s view of the padded input: the frames it multiplies."""
    start = k * dilation
    return xp[:, :, start : start + frames]


def _forward(x, weight, bias, padding: int, dilation: int) -> torch.Tensor:
    """The output: the bias, then one ``addcmul_`` per tap (F.conv1d's own order of the sum)."""
    xp = F.pad(x, (padding, padding)) if padding else x
    taps = weight.shape[-1]
    frames = xp.shape[-1] - dilation * (taps - 1)
    w = weight[:, 0, :].unsqueeze(-1)  # (C, K, 1): tap k broadcasts over time as w[:, k]
    first = _taps(xp, 0, dilation, frames)
    y = first * w[:, 0] if bias is None else torch.addcmul(bias.unsqueeze(-1), first, w[:, 0])
    for k in range(1, taps):
        y.addcmul_(_taps(xp, k, dilation, frames), w[:, k])
    return y.contiguous()


def _backward(grad, x, weight, padding: int, dilation: int, need_x: bool, need_w: bool, need_b: bool):
    """The gradients of ``x``, ``weight`` and the bias, each None where not needed."""
    grad = grad.contiguous()
    frames, taps, length = grad.shape[-1], weight.shape[-1], x.shape[-1]
    gx = gw = gb = None
    if need_x:  # tap k's products added onto the input frames it read (the padding's dropped)
        gx = x.new_zeros(x.shape)
        w = weight[:, 0, :].unsqueeze(-1)
        for k in range(taps):
            shift = k * dilation - padding  # output frame t read input frame t + shift
            lo, hi = max(0, -shift), min(frames, length - shift)
            if lo < hi:
                gx[:, :, lo + shift : hi + shift].addcmul_(grad[:, :, lo:hi], w[:, k])
    if need_w:  # tap k's products summed over batch and time
        xp = F.pad(x, (padding, padding)) if padding else x
        gw = weight.new_empty(weight.shape)
        product = torch.empty_like(grad)
        for k in range(taps):
            torch.mul(grad, _taps(xp, k, dilation, frames), out=product)
            gw[:, 0, k] = product.sum(dim=(0, 2))
    if need_b:
        gb = grad.sum(dim=(0, 2))
    return gx, gw, gb


# -- the same kernels as opaque custom ops, for torch.compile ----------------------------------
# Traced, _Depthwise calls these: inductor runs them as they are around the operations it fuses,
# where tracing into the loops above would hand it one small kernel per tap. (The derivative
# stays _Depthwise's, which torch.func transforms accept and custom ops' own would not.)


@torch.library.custom_op("fctc::depthwise_conv1d", mutates_args=())
def _forward_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, dilation: int
) -> torch.Tensor:
    return _forward(x, weight, bias, padding, dilation)


@_forward_op.register_fake
def _(x, weight, bias, padding, dilation):
    frames = x.shape[-1] + 2 * padding - dilation * (weight.shape[-1] - 1)
    return x.new_empty((x.shape[0], x.shape[1], frames))


@torch.library.custom_op("fctc::depthwise_conv1d_backward", mutates_args=())
def _backward_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    padding: int,
    dilation: int,
    need_x: bool,
    need_w: bool,
    need_b: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = _backward(grad, x, weight, padding, dilation, need_x, need_w, need_b)
    # Outputs are tensors, distinct from one another: an empty one stands for None.
    return tuple(x.new_empty(0) if g is None else g for g in grads)


@_backward_op.register_fake
def _(grad, x, weight, padding, dilation, need_x, need_w, need_b):
    return (
        x.new_empty(x.shape if need_x else 0),
        weight.new_empty(weight.shape if need_w else 0),
        x.new_empty(x.shape[1:2] if need_b else 0),
    )


class _Depthwise(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, padding, dilation):
        if opaque_kernels():
            return _forward_op(x, weight, bias, padding, dilation)
        return _forward(x, weight, bias, padding, dilation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, padding, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        padding, dilation = ctx.padding, ctx.dilation
        need = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph: ATen's backward, differentiable itself
            grads = torch.ops.aten.convolution_backward(
                grad, x, weight, [x.shape[1]] if ctx.has_bias else None, [1], [padding],
                [dilation], False, [0], x.shape[1], list(need),
            )
        elif opaque_kernels():
            grads = _backward_op(grad, x, weight, padding, dilation, *need)
        else:
            return (*_backward(grad, x, weight, padding, dilation, *need), None, None)
        return (*(g if n else None for g, n in zip(grads, need)), None, None)
