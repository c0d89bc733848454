"""Imperative ``torch.nn`` models of thunder-speech's QuartzNet and Citrinet encoders.

These are the parity references for ``fctc.models``. They are written for these tests from
thunder-speech's documented behaviour (``thunder.quartznet.blocks``, ``thunder.citrinet.blocks``,
``thunder.blocks``), not copied from it, and they reproduce thunder's module tree so that their
``state_dict`` keys are thunder's keys:

* a block holds ``mconv`` (the repeated sub-blocks), ``res`` (the 1x1 residual branch, when
  present) and ``mout`` (the closing ReLU and dropout), each a sequence over ``(x, lengths)``;
* a masked convolution keeps its ``nn.Conv1d`` under ``.conv`` and zeroes every time step at or
  beyond the example's length before convolving, then maps lengths through the convolution;
* length-agnostic layers (batch norm, ReLU, dropout, squeeze-excite) sit inside a wrapper whose
  ``.layer`` is an ``nn.Sequential``, which is why a batch norm's key reads
  ``0.mconv.2.layer.0.running_mean``.

Batch norms use ``eps=1e-3, momentum=0.1`` and see every time step (padding included), as in
thunder. Thunder's squeeze-excite averages over all time steps; ``masked_se=True`` gives the
NeMo variant that averages over the valid steps only and zeroes the padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "same_padding",
    "MaskedConv1d",
    "Masked",
    "LengthSequential",
    "SqueezeExcite",
    "MaskedSqueezeExcite",
    "ConvBlock",
    "QuartznetEncoder",
    "CitrinetEncoder",
    "load_fctc",
    "run_fctc",
    "run_reference",
    "f64",
    "perturb_running_stats",
    "init64",
    "check_parity",
    "assert_exact_in_float32",
    "assert_same_layout",
]


def same_padding(kernel_size: int, stride: int, dilation: int) -> int:
    """Padding that keeps ``ceil(T / stride)`` steps for odd kernels (thunder's rule)."""
    if stride > 1 and dilation > 1:
        raise ValueError("stride and dilation cannot both exceed 1")
    if dilation > 1:
        return (dilation * (kernel_size - 1) + 1) // 2
    return kernel_size // 2


def _valid(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


class MaskedConv1d(nn.Module):
    """``nn.Conv1d`` (kept as ``.conv``) applied to the input with its padding zeroed."""

    def __init__(self, c_in, c_out, kernel_size, stride=1, padding=0, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv1d(
            c_in, c_out, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=groups, bias=False,
        )

    def forward(self, x, lengths):
        x = torch.where(_valid(lengths, x.shape[-1])[:, None, :], x, torch.zeros_like(x))
        (k,), (s,), (p,), (d,) = (
            self.conv.kernel_size, self.conv.stride, self.conv.padding, self.conv.dilation
        )
        span = d * (k - 1) + 1
        new_lengths = torch.div(lengths + 2 * p - span, s, rounding_mode="floor") + 1
        return self.conv(x), new_lengths


class Masked(nn.Module):
    """Runs ordinary layers (held in ``.layer``) on ``x`` and passes the lengths through."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layer = nn.Sequential(*layers)

    def forward(self, x, lengths):
        return self.layer(x), lengths


class LengthSequential(nn.Sequential):
    """An ``nn.Sequential`` whose children map ``(x, lengths)`` to ``(x, lengths)``."""

    def forward(self, x, lengths):  # type: ignore[override]
        for child in self:
            x, lengths = child(x, lengths)
        return x, lengths


class SqueezeExcite(nn.Module):
    """Channel gating: sigmoid(fc(mean over time)) scales every channel of ``x``."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = channels // reduction
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, channels, bias=False),
        )

    def forward(self, x, lengths=None):
        if lengths is None:
            pooled = x.mean(dim=-1)
        else:
            keep = _valid(lengths, x.shape[-1])[:, None, :]
            x = torch.where(keep, x, torch.zeros_like(x))
            pooled = x.sum(dim=-1) / keep.sum(dim=-1).clamp_min(1).to(x.dtype)
        gate = torch.sigmoid(self.fc(pooled))
        return x * gate[:, :, None]


class MaskedSqueezeExcite(nn.Module):
    """Thunder's ``Masked(SqueezeExcite)`` (key prefix ``layer.0``); optionally length-aware."""

    def __init__(self, channels: int, masked: bool = False):
        super().__init__()
        self.layer = nn.Sequential(SqueezeExcite(channels))
        self.masked = masked

    def forward(self, x, lengths):
        return self.layer[0](x, lengths if self.masked else None), lengths


def _conv_bn(c_in, c_out, kernel_size, stride, dilation, padding, separable) -> list[nn.Module]:
    if separable:
        convs = [
            MaskedConv1d(c_in, c_in, kernel_size, stride, padding, dilation, groups=c_in),
            MaskedConv1d(c_in, c_out, 1),
        ]
    else:
        convs = [MaskedConv1d(c_in, c_out, kernel_size, stride, padding, dilation)]
    return [*convs, Masked(nn.BatchNorm1d(c_out, eps=1e-3, momentum=0.1))]


def _relu_dropout(p: float) -> list[nn.Module]:
    return [Masked(nn.ReLU()), Masked(nn.Dropout(p))]


class ConvBlock(nn.Module):
    """One QuartzNet / Citrinet block: ``repeat`` conv sub-blocks, an optional 1x1 residual
    branch added before the last activation, and (Citrinet) a squeeze-excite at the end.

    ``stride_last_only`` selects Citrinet's striding (only the last sub-block strides, and the
    residual strides once); otherwise every sub-block strides, as in thunder's QuartznetBlock.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        repeat: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        dropout: float = 0.0,
        residual: bool = True,
        separable: bool = True,
        squeeze_excite: bool = False,
        masked_se: bool = False,
        stride_last_only: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = c_in
        for i in range(repeat):
            last = i == repeat - 1
            s = stride if (last or not stride_last_only) else 1
            pad = same_padding(kernel_size, s, dilation)
            layers += _conv_bn(width, c_out, kernel_size, s, dilation, pad, separable)
            if not last:
                layers += _relu_dropout(dropout)
            width = c_out
        if squeeze_excite:
            layers.append(MaskedSqueezeExcite(c_out, masked_se))
        self.mconv = LengthSequential(*layers)
        if residual:
            res_stride = stride if (stride == 1 or stride_last_only) else stride**repeat
            self.res = LengthSequential(*_conv_bn(c_in, c_out, 1, res_stride, 1, 0, False))
        else:
            self.res = None
        self.mout = LengthSequential(*_relu_dropout(dropout))

    def forward(self, x, lengths):
        y, out_lengths = self.mconv(x, lengths)
        if self.res is not None:
            y = y + self.res(x, lengths)[0]
        return self.mout(y, out_lengths)


def QuartznetEncoder(
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
    """Thunder's QuartznetEncoder (its defaults are the keyword defaults here)."""
    blocks = [ConvBlock(feat_in, stem_filters, 1, stem_kernel, stride=2, residual=False)]
    width = stem_filters
    for f, k in zip(filters, kernel_sizes):
        for _ in range(repeat_blocks):
            blocks.append(ConvBlock(width, f, repeat, k, dropout=dropout))
            width = f
    f1, f2 = final_filters
    blocks.append(
        ConvBlock(width, f1, 1, final_kernel, dilation=2, dropout=dropout, residual=False)
    )
    blocks.append(ConvBlock(f1, f2, 1, 1, dropout=dropout, residual=False, separable=False))
    return LengthSequential(*blocks)


def CitrinetEncoder(
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
) -> LengthSequential:
    """Thunder's CitrinetEncoder; the stem is ``filters[0]`` wide unless told otherwise."""
    cit = dict(squeeze_excite=True, masked_se=masked_se, stride_last_only=True)
    width = filters[0] if stem_filters is None else stem_filters
    blocks = [ConvBlock(feat_in, width, 1, stem_kernel, residual=False, **cit)]
    for f, k, s in zip(filters, kernel_sizes, strides):
        blocks.append(ConvBlock(width, f, repeat, k, stride=s, dropout=dropout, **cit))
        width = f
    blocks.append(
        ConvBlock(width, final_filters, 1, final_kernel, dropout=dropout, residual=False, **cit)
    )
    return LengthSequential(*blocks)


def load_fctc(module: nn.Module, params, state) -> nn.Module:
    """Load fctc ``params`` and ``state`` into ``module`` (strict: the keys must match exactly).

    The tensors are cloned, so training the module never writes into the fctc trees.
    """
    from fctc.tree import flatten_dict

    flat = {k: v.detach().clone() for k, v in (flatten_dict(params) | flatten_dict(state)).items()}
    module.load_state_dict(flat, strict=True)
    return module


def run_fctc(model, params, state, x, lengths, weight, train: bool):
    """fctc side of a parity check: outputs, lengths, new state, and the gradient of
    ``sum(y * weight)`` with respect to ``params`` (via :func:`fctc.backend.value_and_grad`)."""
    from fctc.backend import value_and_grad

    def loss(p):
        (y, out_lengths), new_state = model.apply(p, state, x, lengths, train=train)
        return (y * weight).sum(), (y, out_lengths, new_state)

    (value, (y, out_lengths, new_state)), grads = value_and_grad(loss, has_aux=True)(params)
    return y, out_lengths, new_state, grads, value


def run_reference(module: nn.Module, x, lengths, weight, train: bool):
    """Reference side: outputs, lengths, buffers after the call, and ``.grad`` of every
    parameter after ``sum(y * weight).backward()``."""
    module.train(train)
    module.zero_grad(set_to_none=True)
    y, out_lengths = module(x, lengths)
    value = (y * weight).sum()
    value.backward()
    grads = {n: p.grad for n, p in module.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
    return y.detach(), out_lengths, buffers, grads, value.detach()


# ------------------------------------------------------------------------------ test support


def f64(tree):
    """Floating leaves of an fctc tree in float64 (counters stay int64)."""
    from fctc.tree import cast

    return cast(tree, torch.float64)


def perturb_running_stats(state, seed: int = 1):
    """Running statistics moved away from their initial 0 / 1 (and counters set to 3), so
    that evaluation mode really depends on them."""
    from fctc.tree import map_with_path

    g = torch.Generator().manual_seed(seed)

    def bump(path, t):
        if path.endswith("running_mean"):
            return t + 0.1 * torch.randn(t.shape, generator=g, dtype=t.dtype)
        if path.endswith("running_var"):
            return t * (0.5 + torch.rand(t.shape, generator=g, dtype=t.dtype))
        if path.endswith("num_batches_tracked"):
            return t + 3
        return t

    return map_with_path(bump, state)


def init64(model, seed: int = 0):
    """``model.init(key(seed))`` in float64, with the running statistics perturbed."""
    from fctc.random import key

    params, state = model.init(key(seed))
    return f64(params), perturb_running_stats(f64(state))


def check_parity(model, ref: nn.Module, params, state, x, lengths, train: bool):
    """Load ``params``/``state`` into ``ref`` (float64) and compare outputs, lengths, the loss,
    every parameter gradient and every buffer after the call; returns fctc's new state."""
    from fctc.tree import flatten_dict

    load_fctc(ref.double(), params, state)
    (y0, _), _ = model.apply(params, state, x, lengths)
    weight = torch.randn(y0.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    y, out_lengths, new_state, grads, value = run_fctc(
        model, params, state, x, lengths, weight, train
    )
    ry, r_lengths, r_buffers, r_grads, r_value = run_reference(ref, x, lengths, weight, train)

    torch.testing.assert_close(y, ry, rtol=1e-10, atol=1e-10)
    assert torch.equal(out_lengths, r_lengths)
    torch.testing.assert_close(value, r_value, rtol=1e-10, atol=1e-10)
    flat_grads = flatten_dict(grads)
    assert flat_grads.keys() == r_grads.keys()
    for k in r_grads:
        torch.testing.assert_close(flat_grads[k], r_grads[k], rtol=1e-9, atol=1e-10, msg=k)
    flat_state = flatten_dict(new_state)
    assert flat_state.keys() == r_buffers.keys()
    for k in r_buffers:
        torch.testing.assert_close(flat_state[k], r_buffers[k], rtol=1e-10, atol=1e-12, msg=k)
    return new_state


def assert_exact_in_float32(model, ref: nn.Module, x, lengths, seed: int = 1) -> None:
    """In float32 eval mode, fctc's outputs and lengths equal ``ref``'s bit for bit."""
    from fctc.random import key

    params, state = model.init(key(seed))
    load_fctc(ref, params, state).eval()
    (y, out_lengths), _ = model.apply(params, state, x, lengths)
    with torch.no_grad():
        ry, r_lengths = ref(x, lengths)
    assert torch.equal(y, ry) and torch.equal(out_lengths, r_lengths)


def assert_same_layout(params, state, ref: nn.Module) -> None:
    """fctc params / state hold exactly ``ref``'s parameters / buffers, in order, with the
    same shapes and dtypes."""
    from fctc.tree import flatten_dict

    ref_params = dict(ref.named_parameters())
    ref_buffers = dict(ref.named_buffers())
    flat_params, flat_state = flatten_dict(params), flatten_dict(state)
    assert list(flat_params) == list(ref_params)
    assert list(flat_state) == list(ref_buffers)
    for k, v in (flat_params | flat_state).items():
        r = ref_params.get(k, ref_buffers.get(k))
        assert v.shape == r.shape and v.dtype == r.dtype, k
