"""thunder's shared blocks: parity with thunder's formulas and torch.stft, and properties."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fctc
from fctc import testing as ft
from fctc.nn import convolution_stft, get_same_padding, lengths_to_mask, normalize_tensor

# ----------------------------------------------------------------------------- references


def thunder_lengths_to_mask(lengths, max_length):
    """thunder's formula: integer lengths compared with a broadcast arange."""
    lengths = lengths.type(torch.long)
    return torch.arange(max_length).expand(lengths.shape[0], max_length) < lengths.unsqueeze(1)


def numpy_masked_normalize(x, lengths, div_guard):
    """Per example, population statistics over the first ``L`` steps; zeros beyond."""
    x = x.double().numpy()
    out = np.zeros_like(x)
    for b, length in enumerate(lengths.tolist()):
        if length == 0:
            continue
        valid = x[b, ..., :length]
        mean = valid.mean(axis=-1, keepdims=True)
        std = valid.std(axis=-1, keepdims=True)  # ddof=0: population
        out[b, ..., :length] = (valid - mean) / (std + div_guard)
    return torch.from_numpy(out)


def thunder_masked_formula(x, mask, div_guard):
    """thunder's masked branch: zero-fill the padding, then sums over every position."""
    x = torch.masked_fill(x, ~mask.bool(), 0.0)
    n = mask.sum(dim=-1, keepdim=True)
    mean = x.sum(dim=-1, keepdim=True) / n
    std = ((x - mean).pow(2).sum(dim=-1, keepdim=True) / n).sqrt()
    return torch.masked_fill((x - mean) / (std + div_guard), ~mask.bool(), 0.0)


# ----------------------------------------------------------------------------- lengths_to_mask


@given(
    ft.lengths(batch_size=st.integers(0, 5), max_time=st.integers(0, 12)),
    st.integers(0, 4),
)
def test_lengths_to_mask_matches_thunder(lengths, extra):
    max_length = (int(lengths.max()) if lengths.numel() else 0) + extra
    mask = lengths_to_mask(lengths, max_length)
    assert mask.dtype == torch.bool and mask.shape == (lengths.shape[0], max_length)
    assert torch.equal(mask, thunder_lengths_to_mask(lengths, max_length))
    assert torch.equal(mask.sum(1), lengths.clamp_max(max_length))


def test_lengths_to_mask_truncates_float_lengths_like_thunder():
    lengths = torch.tensor([2.7, 0.2, 3.0])
    mask = lengths_to_mask(lengths, 4)
    assert torch.equal(mask, thunder_lengths_to_mask(lengths, 4))
    assert mask.sum(1).tolist() == [2, 0, 3]


def test_lengths_to_mask_shorter_max_length_cuts():
    assert lengths_to_mask(torch.tensor([5, 1]), 3).tolist() == [
        [True, True, True],
        [True, False, False],
    ]


@pytest.mark.parametrize("bad", [torch.ones(2, 2), [1, 2], torch.tensor(3)])
def test_lengths_to_mask_rejects_non_vectors(bad):
    with pytest.raises(ValueError, match="1-D tensor"):
        lengths_to_mask(bad, 4)


# ----------------------------------------------------------------------------- normalize_tensor


def test_normalize_tensor_signature_matches_thunder():
    import inspect

    params = inspect.signature(normalize_tensor).parameters
    assert list(params) == ["input_values", "mask", "div_guard", "dim"]
    assert params["mask"].default is None
    assert params["div_guard"].default == 1e-7
    assert params["dim"].default == -1


@given(ft.padded_batches(padding="none", max_time=st.integers(2, 12), dtype=torch.float64))
def test_normalize_unmasked_matches_unbiased_formula(batch):
    x, _ = batch
    ref = x.numpy()
    mean = ref.mean(axis=-1, keepdims=True)
    var = ref.var(axis=-1, ddof=1, keepdims=True)
    expected = torch.from_numpy((ref - mean) / np.sqrt(var + 1e-7))
    ft.assert_trees_allclose(normalize_tensor(x), expected, rtol=1e-10, atol=1e-12)


def test_normalize_unmasked_other_dim_and_guard():
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    out = normalize_tensor(x, div_guard=1e-3, dim=1)
    mean, var = x.mean(1, keepdim=True), x.var(1, keepdim=True)
    ft.assert_trees_allclose(out, (x - mean) / (var + 1e-3).sqrt(), rtol=1e-12, atol=0)


@given(ft.padded_batches(dtype=torch.float64), st.sampled_from([1e-7, 1e-5, 0.5]))
def test_normalize_masked_matches_per_example_statistics(batch, div_guard):
    x, lengths = batch
    mask = lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1)
    out = normalize_tensor(x, mask, div_guard=div_guard)
    expected = numpy_masked_normalize(x, lengths, div_guard)
    ft.assert_trees_allclose(out, expected, rtol=1e-9, atol=1e-9)


@given(ft.padded_batches(padding="none", dtype=torch.float64))
def test_normalize_full_mask_equals_thunder_formula(batch):
    x, _ = batch
    mask = torch.ones(x.shape[0], 1, x.shape[-1], dtype=torch.bool)
    ft.assert_trees_allclose(
        normalize_tensor(x, mask, div_guard=1e-5),
        thunder_masked_formula(x, mask, 1e-5),
        rtol=1e-10,
        atol=1e-12,
    )


@given(ft.padded_batches(), st.sampled_from([-1, 1]))
def test_normalize_masked_is_padding_invariant(batch, time_dim):
    x, lengths = batch
    if time_dim == 1:  # (B, T, C): time in the middle, statistics along it
        x = x.transpose(1, 2).contiguous()

    def time_mask(lengths, x):
        mask = lengths_to_mask(lengths, x.shape[time_dim])
        return mask.unsqueeze(1) if time_dim == -1 else mask.unsqueeze(2)

    def run(x, lengths):
        return normalize_tensor(x, time_mask(lengths, x), dim=time_dim)

    y = ft.assert_pure(run, x, lengths)
    kw = dict(time_dim=time_dim, out_time_dim=time_dim)
    ft.assert_padding_invariant(run, x, lengths, fills=("zeros", "garbage", "nan"), **kw)
    ft.assert_batch_independent(run, x, lengths, **kw)
    assert torch.isfinite(y).all()
    assert (y.masked_select(~time_mask(lengths, x).expand_as(y)) == 0).all()


@given(
    ft.padded_batches(dtype=torch.float64, min_length=2),
    st.floats(0.01, 100.0),
    st.floats(-50.0, 50.0),
)
def test_normalize_masked_is_invariant_to_affine_rescaling(batch, scale, shift):
    x, lengths = batch
    mask = lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1)
    a = normalize_tensor(x, mask, div_guard=0.0)
    b = normalize_tensor(x * scale + shift, mask, div_guard=0.0)
    ft.assert_trees_allclose(b, a, rtol=1e-6, atol=1e-6)


@given(ft.padded_batches(dtype=torch.float64, min_length=2))
def test_normalize_masked_output_is_standardised(batch):
    x, lengths = batch
    mask = lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1)
    y = normalize_tensor(x, mask, div_guard=0.0)
    for b, length in enumerate(lengths.tolist()):
        valid = y[b, :, :length]
        ft.assert_trees_allclose(valid.mean(-1), torch.zeros(y.shape[1], dtype=y.dtype), atol=1e-9)
        std = valid.std(-1, unbiased=False)
        ft.assert_trees_allclose(std, torch.ones_like(std), rtol=1e-9, atol=0)


def test_normalize_masked_empty_row_is_zero_and_finite():
    x = torch.randn(2, 3, 5)
    out = normalize_tensor(x, lengths_to_mask(torch.tensor([0, 5]), 5).unsqueeze(1))
    assert torch.equal(out[0], torch.zeros(3, 5))
    assert torch.isfinite(out).all()


def test_normalize_float_and_broadcast_masks_agree_with_bool_full_mask():
    x = torch.randn(2, 3, 6)
    lengths = torch.tensor([6, 3])
    mask = lengths_to_mask(lengths, 6)
    a = normalize_tensor(x, mask.unsqueeze(1))
    b = normalize_tensor(x, mask.unsqueeze(1).float())
    c = normalize_tensor(x, mask.unsqueeze(1).expand(2, 3, 6))
    ft.assert_trees_equal(a, b)
    ft.assert_trees_equal(a, c)


def test_normalize_statistics_are_detached_like_thunder():
    """Gradients flow through x only: d/dx of sum(w * y) is w / (std + guard) on valid steps."""
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    w = torch.randn(2, 3, 6, dtype=torch.float64)
    mask = lengths_to_mask(torch.tensor([6, 4]), 6).unsqueeze(1)

    def loss(x):
        return (normalize_tensor(x, mask, div_guard=1e-3) * w).sum()

    g = fctc.backend.grad(loss)(x)
    valid = mask.expand_as(x)
    count = valid.sum(-1, keepdim=True)
    mean = torch.where(valid, x, 0).sum(-1, keepdim=True) / count
    std = (torch.where(valid, x - mean, 0).square().sum(-1, keepdim=True) / count).sqrt()
    ft.assert_trees_allclose(g, torch.where(valid, w / (std + 1e-3), 0), rtol=1e-12, atol=0)
    g_unmasked = fctc.backend.grad(lambda x: (normalize_tensor(x) * w).sum())(x)
    ft.assert_trees_allclose(g_unmasked, w / (x.var(-1, keepdim=True) + 1e-7).sqrt(), rtol=1e-12)


def test_normalize_rejects_bad_inputs():
    x = torch.randn(2, 3, 4)
    with pytest.raises(TypeError, match="floating point"):
        normalize_tensor(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="must be a tensor"):
        normalize_tensor([[1.0, 2.0]])
    with pytest.raises(TypeError, match="mask must be a tensor"):
        normalize_tensor(x, [True])
    with pytest.raises(ValueError, match=r"does not broadcast.*unsqueeze\(1\)"):
        normalize_tensor(x, torch.ones(2, 4, dtype=torch.bool))  # forgot the channel dim
    with pytest.raises(ValueError, match="does not broadcast"):
        normalize_tensor(x, torch.ones(5, 2, 3, 4, dtype=torch.bool))  # would grow x
    with pytest.raises(ValueError, match="at least 2 elements"):
        normalize_tensor(torch.randn(2, 3, 1))


# ----------------------------------------------------------------------------- get_same_padding


@pytest.mark.parametrize(
    "kernel, stride, dilation, expected",
    [(1, 1, 1, 0), (3, 1, 1, 1), (11, 1, 1, 5), (33, 2, 1, 16), (3, 1, 2, 2), (5, 1, 3, 6),
     (4, 1, 1, 2), (4, 1, 2, 3)],
)
def test_get_same_padding_matches_thunder_formula(kernel, stride, dilation, expected):
    assert get_same_padding(kernel, stride, dilation) == expected


@given(
    st.integers(0, 10).map(lambda k: 2 * k + 1),
    st.integers(1, 4),
    st.integers(1, 4),
    st.booleans(),
    st.integers(1, 40),
)
def test_get_same_padding_keeps_time_over_stride(kernel, stride, dilation, strided, time):
    stride, dilation = (stride, 1) if strided else (1, dilation)
    pad = get_same_padding(kernel, stride, dilation)
    x = torch.zeros(1, 1, time)
    w = torch.zeros(1, 1, kernel)
    out = torch.nn.functional.conv1d(x, w, stride=stride, padding=pad, dilation=dilation)
    assert out.shape[-1] == math.ceil(time / stride)


def test_get_same_padding_rejects_stride_and_dilation_together():
    with pytest.raises(ValueError, match="only stride OR dilation"):
        get_same_padding(3, 2, 2)
    for bad in [(0, 1, 1), (3, 0, 1), (3, 1, -1), (3.0, 1, 1)]:
        with pytest.raises(ValueError, match="positive int"):
            get_same_padding(*bad)


# ----------------------------------------------------------------------------- convolution_stft


def reference_stft(x, n_fft, hop, win, window, center):
    return torch.stft(
        x, n_fft, hop, win, window, center=center, pad_mode="reflect", return_complex=True
    )


@pytest.mark.parametrize(
    "n_fft, hop, win, center",
    [(16, 4, 16, True), (16, 4, 16, False), (15, 3, 9, True), (32, 7, 20, False),
     (64, 16, 64, True), (512, 160, 400, True), (8, 8, 8, False)],
)
def test_convolution_stft_matches_torch_stft_float64(n_fft, hop, win, center):
    x = torch.randn(3, 1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    window = torch.hann_window(win, dtype=torch.float64)
    expected = reference_stft(x, n_fft, hop, win, window, center)
    out = convolution_stft(x, n_fft, hop, win, window, center, return_complex=True)
    assert out.dtype == torch.complex128 and out.shape == expected.shape
    ft.assert_trees_allclose(out, expected, rtol=1e-10, atol=1e-11)


@given(
    st.integers(2, 48),
    st.data(),
    st.booleans(),
    st.integers(1, 3),
    st.sampled_from(["hann", "hamming", "ones", "random"]),
)
def test_convolution_stft_matches_torch_stft_float32(n_fft, data, center, batch, kind):
    win = data.draw(st.integers(1, n_fft))
    hop = data.draw(st.integers(1, n_fft))
    length = data.draw(st.integers(n_fft // 2 + 1 if center else n_fft, 120))
    seed = data.draw(st.integers(0, 2**16))
    x = fctc.random.normal(fctc.random.key(seed), (batch, length))
    window = {
        "hann": lambda: torch.hann_window(win),
        "hamming": lambda: torch.hamming_window(win),
        "ones": lambda: torch.ones(win),
        "random": lambda: fctc.random.uniform(fctc.random.key(seed + 1), (win,)),
    }[kind]()
    expected = torch.view_as_real(reference_stft(x, n_fft, hop, win, window, center))
    out = convolution_stft(x, n_fft, hop, win, window, center)
    assert out.shape == expected.shape and out.dtype == torch.float32
    ft.assert_trees_allclose(out, expected, rtol=1e-4, atol=2e-5 * math.sqrt(n_fft))


def test_convolution_stft_thunder_defaults_and_layout():
    x = torch.randn(2, 4000)
    out = convolution_stft(x)  # thunder's defaults: 1024 / 512 / 1024, symmetric hann
    window = torch.hann_window(1024, periodic=False)
    expected = reference_stft(x, 1024, 512, 1024, window, True)
    assert out.shape == (2, 513, 8, 2)  # thunder's layout: (real, imag) last
    ft.assert_trees_allclose(out, torch.view_as_real(expected), rtol=1e-4, atol=1e-4)
    complex_out = convolution_stft(x, return_complex=True)
    ft.assert_trees_equal(torch.view_as_real(complex_out), out)


def test_convolution_stft_default_window_follows_win_length():
    x = torch.randn(1, 800, dtype=torch.float64)
    out = convolution_stft(x, 512, 160, 400, return_complex=True)
    window = torch.hann_window(400, periodic=False, dtype=torch.float64)
    expected = reference_stft(x, 512, 160, 400, window, True)
    ft.assert_trees_allclose(out, expected, rtol=1e-10, atol=1e-10)


def test_convolution_stft_unbatched_signal():
    x = torch.randn(300, dtype=torch.float64)
    window = torch.hann_window(32, dtype=torch.float64)
    out = convolution_stft(x, 32, 8, 32, window, True, return_complex=True)
    expected = reference_stft(x, 32, 8, 32, window, True)
    ft.assert_trees_allclose(out, expected, rtol=1e-10, atol=1e-11)
    ft.assert_trees_equal(out, convolution_stft(x[None], 32, 8, 32, window, True, True)[0])


def test_convolution_stft_gradient_matches_torch_stft():
    x = torch.randn(2, 200, dtype=torch.float64)
    window = torch.hann_window(32, dtype=torch.float64)

    def power(stft):
        return lambda x: stft(x).abs().square().sum()

    ours = fctc.backend.grad(power(lambda x: convolution_stft(x, 32, 8, 32, window, True, True)))
    ref = fctc.backend.grad(power(lambda x: reference_stft(x, 32, 8, 32, window, True)))
    ft.assert_trees_allclose(ours(x), ref(x), rtol=1e-9, atol=1e-9)


def test_convolution_stft_is_pure():
    x, window = torch.randn(2, 100), torch.hann_window(16)
    ft.assert_pure(convolution_stft, x, 16, 4, 16, window, True)
    assert torch.equal(window, torch.hann_window(16))


def test_convolution_stft_rejects_bad_inputs():
    x = torch.randn(2, 100)
    with pytest.raises(ValueError, match=r"\(T,\) or \(B, T\)"):
        convolution_stft(torch.randn(2, 1, 100), 16, 4, 16)
    with pytest.raises(TypeError, match="floating point"):
        convolution_stft(torch.ones(2, 100, dtype=torch.int64), 16, 4, 16)
    with pytest.raises(ValueError, match="win_length=32 must not exceed n_fft=16"):
        convolution_stft(x, 16, 4, 32)
    with pytest.raises(ValueError, match="length win_length=16"):
        convolution_stft(x, 16, 4, 16, torch.hann_window(12))
    with pytest.raises(ValueError, match="hop_length must be a positive int"):
        convolution_stft(x, 16, 0, 16)
    with pytest.raises(ValueError, match="reflect-pads 64"):
        convolution_stft(x[:, :64], 128, 4, 128)
    with pytest.raises(ValueError, match="at least n_fft=128"):
        convolution_stft(x, 128, 4, 128, center=False)
