"""The filterbank's pad modes: "constant" gives features that do not depend on batch-mates."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fctc
from fctc import testing as ft
from fctc.audio import PAD_MODES, filterbank, power_spectrum

# (n_window_size, n_window_stride, n_fft, nfilt): thunder's default and a small odd one.
SHAPES = [(320, 160, 512, 64), (25, 7, 32, 8)]


def alone_matches_batch(model, state, x, lengths, atol):
    """Each utterance alone and unpadded gives the batch's valid features and frame count."""
    (y, y_lengths), _ = model.apply({}, state, x, lengths)
    for b, n in enumerate(lengths.tolist()):
        (one, one_lengths), _ = model.apply({}, state, x[b : b + 1, :n], lengths[b : b + 1])
        frames = int(one_lengths[0])
        assert frames == int(y_lengths[b]) == one.shape[-1], "frame counts differ alone"
        ft.assert_trees_allclose(one[0], y[b, :, :frames], rtol=0, atol=atol,
                                 msg=f"utterance {b} alone")
        assert not y[b, :, frames:].any()
    return y, y_lengths


def test_the_issue_snippet_is_within_float_rounding_in_constant_mode():
    x = torch.randn(3, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([16000, 9000, 4000])
    x[1, 9000:] = 0
    x[2, 4000:] = 0
    diffs = {}
    for mode in PAD_MODES:
        m = fctc.audio.filterbank(pad_mode=mode)
        p, s = m.init(fctc.random.key(0))
        (yb, lb), _ = m.apply(p, s, x, lengths)
        (y3, l3), _ = m.apply(p, s, x[2:3, :4000], lengths[2:3])
        assert int(lb[2]) == int(l3[0]) == y3.shape[-1] == 26
        diffs[mode] = (yb[2, :, :26] - y3[0]).abs().amax(0)
    assert float(diffs["constant"].max()) <= 1e-4
    # thunder's reflection: every frame moves, the last one most (the issue's figures)
    assert float(diffs["reflect"].min()) > 0.1 and float(diffs["reflect"][-1]) > 2.0


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from(SHAPES),
    ft.padded_batches(batch_sizes=st.integers(1, 4), channels=None,
                      max_time=st.integers(1, 2400), min_length=1, scale=0.1),
)
def test_constant_mode_is_batch_independent(shape, batch):
    win, hop, n_fft, nfilt = shape
    x, lengths = batch  # garbage (1e3-scale noise) beyond each length
    model = filterbank(n_window_size=win, n_window_stride=hop, n_fft=n_fft, nfilt=nfilt,
                       pad_mode="constant")
    _, state = model.init()

    def run(x, lengths):
        return model.apply({}, state, x, lengths)[0]

    ft.assert_pure(run, x, lengths)
    ft.assert_padding_invariant(run, x, lengths, fills=("zeros", "garbage", "nan"), atol=1e-5)
    ft.assert_batch_independent(run, x, lengths, atol=1e-5)
    _, y_lengths = alone_matches_batch(model, state, x, lengths, atol=1e-4)
    assert torch.equal(y_lengths, fctc.audio.feature_lengths(lengths, hop))


def test_reflect_mode_depends_on_the_padding_and_stays_thunders():
    """The default is thunder's reflection: garbage padding leaks into the last frames."""
    x = torch.randn(2, 6000, generator=torch.Generator().manual_seed(3)) * 0.1
    lengths = torch.tensor([6000, 3000])
    _, reflect = filterbank().init()
    with pytest.raises(AssertionError):
        ft.assert_padding_invariant(lambda x, l: filterbank().apply({}, reflect, x, l)[0],
                                    ft.fill_padding(x, lengths, "zeros"), lengths)
    # on unpadded rows the two modes differ only in the frames that reach past the ends
    ps_r = power_spectrum(x, 512, 160, 320, pad_mode="reflect")
    ps_c = power_spectrum(x, 512, 160, 320, pad_mode="constant")
    inner = slice(2, 6000 // 160 - 1)  # frames t with t*160 - 256 >= 0 and t*160 + 256 <= 6000
    assert torch.equal(ps_r[..., inner], ps_c[..., inner])
    assert not torch.allclose(ps_r[..., 0], ps_c[..., 0])


def test_constant_mode_takes_utterances_shorter_than_half_a_window():
    model = filterbank(pad_mode="constant")
    _, state = model.init()
    x = torch.randn(1, 100) * 0.1
    (y, n), _ = model.apply({}, state, x, torch.tensor([100]))
    assert y.shape == (1, 64, 1) and int(n[0]) == 1 and torch.isfinite(y).all()
    with pytest.raises(RuntimeError):
        filterbank(pad_mode="reflect").apply({}, state, x, torch.tensor([100]))


def test_training_mode_masks_the_dithered_padding_too():
    """Dither noise lands in the padding; constant mode zeroes it before the STFT."""
    model = filterbank(pad_mode="constant", dither=1e-2)
    _, state = model.init()
    x = torch.randn(2, 4000) * 0.1
    lengths = torch.tensor([4000, 1500])
    key = fctc.random.key(5)
    (a, _), _ = model.apply({}, state, x, lengths, train=True, key=key)
    (b, _), _ = model.apply({}, state, ft.fill_padding(x, lengths, "garbage"), lengths,
                            train=True, key=key)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_pad_mode_errors_name_the_value():
    with pytest.raises(ValueError, match="pad_mode must be one of .*'zeros'"):
        filterbank(pad_mode="zeros")
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        power_spectrum(torch.zeros(1, 1000), pad_mode="edge")
