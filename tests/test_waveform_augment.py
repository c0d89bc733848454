"""Waveform augmentation: shape, lengths, zero padding, same key same output, purity.

Every augmentation of :mod:`fctc.audio` is a pure function of an explicit key over a padded
``(B, T)`` batch with lengths; these properties hold for each, on batches with garbage in the
padding. The parity checks against references (soxr, spectra, Schroeder integration) are in
``test_waveform_parity.py``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fctc
from fctc import audio as A
from fctc import testing as ft

SR = 16000


def _pair(fn):
    """An augmentation that keeps lengths, as ``(key, x, lengths) -> (y, lengths)``."""
    return lambda key, x, lengths: (fn(key, x, lengths), lengths)


AUGMENTATIONS = {
    "speed_discrete": lambda k, x, n: A.speed_perturb(k, x, n),
    "speed_continuous": lambda k, x, n: A.speed_perturb(k, x, n, (0.85, 1.15), continuous=True),
    "noise": _pair(lambda k, x, n: A.add_noise(k, x, n, (0.0, 20.0))),
    "noise_half": _pair(lambda k, x, n: A.add_noise(k, x, n, (5.0, 5.0), ("pink",), p=0.5)),
    "babble": _pair(lambda k, x, n: A.add_noise(k, x, n, (0.0, 10.0), ("babble",))),
    "reverb": _pair(lambda k, x, n: A.reverberate(k, x, n, (0.05, 0.2), sample_rate=SR)),
    "band_limit": _pair(lambda k, x, n: A.band_limit(k, x, n, p=1.0, sample_rate=SR)),
    "lowpass_only": _pair(lambda k, x, n: A.band_limit(k, x, n, (1000.0, 2000.0), None, p=1.0)),
    "gain": _pair(lambda k, x, n: A.random_gain(k, x, n)),
    "chain": lambda k, x, n: A.augment_waveform(
        k, x, n, SR, speed={}, reverb={"rt60": (0.05, 0.2), "p": 0.5}, noise={"p": 0.5},
        band_limit={"p": 0.5}, gain={}),
}


def _valid(lengths, size):
    return torch.arange(size)[None, :] < lengths[:, None]


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
@settings(max_examples=8, deadline=None)
@given(key=ft.keys(), batch=ft.padded_batches(batch_sizes=st.integers(1, 4), channels=None,
                                              max_time=st.integers(1, 2000), scale=0.1))
def test_augmentation_properties(name, key, batch):
    x, lengths = batch  # garbage (1e3-scale) beyond each length
    fn = AUGMENTATIONS[name]
    y, y_lengths = ft.assert_pure(fn, key, x, lengths)  # inputs untouched, same key same output
    assert y.dtype == x.dtype and y.shape[0] == x.shape[0] and y_lengths.shape == lengths.shape
    if name.startswith(("speed", "chain")):
        assert y.shape[1] == max(1, int(y_lengths.max()))
        n = lengths.double()  # ceil(n / f) for f in [0.85, 1.15]
        assert ((y_lengths >= torch.ceil(n / 1.15)) & (y_lengths <= torch.ceil(n / 0.85))).all()
    else:
        assert y.shape == x.shape and torch.equal(y_lengths, lengths)
    assert torch.isfinite(y).all()
    assert not y[~_valid(y_lengths, y.shape[1])].any(), "the padding must stay zero"
    # what the padding held never matters
    ft.assert_padding_invariant(lambda x, n: fn(key, x, n), x, lengths,
                                fills=("zeros", "garbage", "nan"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_augmentations_draw_from_the_key(name):
    x = torch.randn(4, 4000, generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([4000, 3000, 2500, 1000])
    fn = AUGMENTATIONS[name]
    a, _ = fn(fctc.random.key(1), x, lengths)
    b, _ = fn(fctc.random.key(2), x, lengths)
    assert not torch.equal(a, b)


def test_probability_zero_leaves_the_audio_and_one_touches_every_row():
    x = torch.randn(8, 3000) * 0.1
    lengths = torch.full((8,), 3000)
    key = fctc.random.key(3)
    for fn in (lambda p: A.add_noise(key, x, lengths, p=p),
               lambda p: A.reverberate(key, x, lengths, p=p),
               lambda p: A.band_limit(key, x, lengths, p=p),
               lambda p: A.random_gain(key, x, lengths, p=p)):
        assert torch.equal(fn(0.0), x)
        changed = (fn(1.0) != x).any(dim=1)
        assert changed.all()
    with pytest.raises(ValueError, match="p must be a probability"):
        A.add_noise(key, x, lengths, p=1.5)


def test_speed_factors_are_kaldis_three_or_a_range():
    x = torch.randn(64, 1000) * 0.1
    lengths = torch.full((64,), 1000)
    _, n = A.speed_perturb(fctc.random.key(0), x, lengths)
    assert set(n.tolist()) == {1000, 1112, 910}  # ceil(1000 / f), f in 0.9, 1.0, 1.1
    _, n = A.speed_perturb(fctc.random.key(0), x, lengths, (0.9, 1.1), continuous=True)
    assert len(set(n.tolist())) > 5 and all(910 <= v <= 1112 for v in n.tolist())
    assert torch.equal(A.speed_lengths(torch.tensor([0, 1, 9, 900]), torch.tensor([0.9] * 4)),
                       torch.tensor([0, 2, 10, 1000]))
    same, same_n = A.change_speed(x, lengths, torch.ones(64))
    assert torch.equal(same, x) and torch.equal(same_n, lengths)
    with pytest.raises(ValueError, match=r"\(0, 4\]"):
        A.change_speed(x, lengths, torch.full((64,), 5.0))
    with pytest.raises(ValueError, match="one factor per row"):
        A.change_speed(x, lengths, [1.0])


def test_babble_is_other_rows_and_silent_alone():
    x = torch.randn(3, 100)
    lengths = torch.tensor([100, 40, 70])
    b = A.babble(x, lengths, speakers=1)
    unit = x[1, :40] / x[1, :40].pow(2).mean().sqrt()
    torch.testing.assert_close(b[0], unit.repeat(3)[:100])  # row 0 hears row 1, cyclically
    assert not A.babble(x[:1], lengths[:1]).any()
    assert torch.equal(A.add_noise(fctc.random.key(0), x[:1], lengths[:1], kinds=("babble",)),
                       A.zero_padding(x[:1], lengths[:1]))
    with pytest.raises(ValueError, match="speakers"):
        A.babble(x, lengths, speakers=0)


def test_argument_errors_name_the_value():
    x, lengths, key = torch.zeros(2, 100), torch.tensor([100, 50]), fctc.random.key(0)
    with pytest.raises(ValueError, match="kinds must be"):
        A.add_noise(key, x, lengths, kinds=("pinkish",))
    with pytest.raises(ValueError, match="snr_db must be a pair"):
        A.add_noise(key, x, lengths, snr_db=(30.0, 10.0))
    with pytest.raises(ValueError, match="rt60 must be a pair"):
        A.reverberate(key, x, lengths, rt60=(0.0, 0.5))
    with pytest.raises(ValueError, match="lowpass_hz must be a pair"):
        A.band_limit(key, x, lengths, lowpass_hz=(3000.0, 9000.0))
    with pytest.raises(ValueError, match="below its row's low-pass"):
        A.band_filter(x, lengths, torch.tensor([300.0, 300.0]), torch.tensor([400.0, 100.0]))
    with pytest.raises(ValueError, match="taps must be a positive odd int"):
        A.lowpass_taps(torch.tensor([1000.0]), taps=256)
    with pytest.raises(ValueError, match="factors must be values"):
        A.speed_perturb(key, x, lengths, factors=())
    with pytest.raises(ValueError, match="audio is empty"):
        A.random_gain(key, torch.zeros(2, 0), torch.tensor([0, 0]))


def test_chain_steps_draw_independently():
    """Switching a step off leaves the other steps' draws as they were."""
    x = torch.randn(3, 3000) * 0.1
    lengths = torch.tensor([3000, 2000, 1000])
    key = fctc.random.key(7)
    k_speed, k_reverb, k_noise, k_band, k_gain = fctc.random.split(key, 5)
    y, n = A.augment_waveform(key, x, lengths, SR, noise={"snr_db": (10.0, 10.0)}, gain={})
    want = A.random_gain(k_gain, A.add_noise(k_noise, x, lengths, (10.0, 10.0)), lengths)
    assert torch.equal(y, want) and torch.equal(n, lengths)
    y, n = A.augment_waveform(key, x, lengths, SR)
    assert torch.equal(y, A.zero_padding(x, lengths))
