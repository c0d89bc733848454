"""Waveform augmentation against references: soxr resampling, measured SNRs, noise spectra,
Schroeder RT60s, scipy's FIR design and numpy's convolution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import soxr
import torch

import fctc
from fctc import audio as A

SR = 16000


def _sine(freq, n=SR, sr=SR):
    t = torch.arange(n, dtype=torch.float64) / sr
    return torch.sin(2 * math.pi * freq * t).to(torch.float32)


def _peak_hz(x: np.ndarray, sr=SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
    return float(np.argmax(spec)) * sr / (8 * len(x))


def _level_db(x: torch.Tensor) -> float:
    return 10 * math.log10(float(x.double().pow(2).mean()))


@pytest.mark.parametrize("factor", [0.9, 0.95, 1.1, 1.07])
def test_speed_matches_soxr_and_moves_frequencies_by_the_factor(factor):
    g = torch.Generator().manual_seed(0)
    # a sine and band-limited noise (below 5 kHz, where both resamplers are transparent)
    noise = torch.from_numpy(scipy.signal.lfilter(*scipy.signal.butter(8, 5000, fs=SR),
                                                  torch.randn(SR, generator=g).numpy()))
    x = torch.stack([_sine(1000.0), 0.3 * noise.float()])
    lengths = torch.tensor([SR, SR])
    y, n = A.change_speed(x, lengths, torch.tensor([factor, factor]))
    assert n.tolist() == [math.ceil(SR / factor - 1e-9)] * 2
    for row in range(2):
        ref = soxr.resample(x[row].numpy(), SR, SR / factor, quality="VHQ")
        m = min(len(ref), int(n[row])) - 400
        diff = y[row, 400:m].numpy() - ref[400:m]
        assert np.sqrt(np.mean(diff**2) / np.mean(ref[400:m] ** 2)) < 1e-3  # relative RMS
    assert abs(_peak_hz(y[0].numpy()) - 1000.0 * factor) < 1.0


def test_speeding_up_is_anti_aliased():
    """Played 1.1x faster, input above 8 kHz / 1.1 = 7.27 kHz would alias: the resampler's
    low-pass (cut off at 0.99 of that, 16 zero crossings) removes it and keeps what is below."""
    x = torch.stack([_sine(7900.0), _sine(7800.0), _sine(6500.0)])
    y, _ = A.change_speed(x, torch.full((3,), SR), torch.full((3,), 1.1))
    drop = [_level_db(x[i]) - _level_db(y[i, 500:-500]) for i in range(3)]
    assert drop[0] > 40 and drop[1] > 25 and abs(drop[2]) < 0.1


def test_measured_snr_is_the_drawn_snr():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 8000, generator=g) * 0.2
    lengths = torch.tensor([8000, 6000, 5000, 3000, 800])
    x = A.zero_padding(x, lengths)
    noise = torch.randn(5, 8000, generator=g) * 3.0
    snr = torch.tensor([-5.0, 0.0, 7.5, 20.0, 40.0])
    y = A.mix_at_snr(x, lengths, noise, snr)
    for b, n in enumerate(lengths.tolist()):
        added = (y[b, :n] - x[b, :n]).double()
        measured = 10 * math.log10(float(x[b, :n].double().pow(2).sum() / added.pow(2).sum()))
        assert measured == pytest.approx(float(snr[b]), abs=1e-3)
    # add_noise with a one-value range: every kind, including babble, lands on it
    for kind in A.NOISE_KINDS:
        y = A.add_noise(fctc.random.key(2), x, lengths, (12.0, 12.0), (kind,))
        for b, n in enumerate(lengths.tolist()):
            added = (y[b, :n] - x[b, :n]).double()
            measured = 10 * math.log10(float(x[b, :n].double().pow(2).sum() / added.pow(2).sum()))
            assert measured == pytest.approx(12.0, abs=1e-2), kind


@pytest.mark.parametrize("color,slope", [("white", 0.0), ("pink", -3.01), ("brown", -6.02)])
def test_noise_spectra_fall_by_3_or_6_db_per_octave(color, slope):
    noise = A.colored_noise(fctc.random.key(4), (64, 1 << 14), A.NOISE_COLORS[color])
    assert noise.pow(2).mean(-1).sub(1.0).abs().max() < 1e-4  # unit power per row
    freqs, psd = scipy.signal.welch(noise.double().numpy(), fs=SR, nperseg=4096, axis=-1)
    psd = psd.mean(0)
    band = (freqs >= 62.5) & (freqs <= 4000.0)  # six octaves
    fit = np.polyfit(np.log2(freqs[band]), 10 * np.log10(psd[band]), 1)[0]
    assert fit == pytest.approx(slope, abs=0.3)


def test_schroeder_rt60_of_an_exact_exponential():
    rt60 = 0.5
    t = torch.arange(2 * SR, dtype=torch.float64) / SR
    h = torch.pow(10.0, -3.0 * t / rt60)  # energy down 60 dB at rt60
    assert float(A.schroeder_rt60(h, SR)) == pytest.approx(rt60, rel=1e-3)


def test_synthetic_rir_has_the_drawn_rt60_direct_path_first_and_its_drr():
    rt60 = torch.tensor([0.15, 0.3, 0.6, 0.9])
    drr = torch.tensor([0.0, 5.0, -3.0, 10.0])
    h = A.synthetic_rir(fctc.random.key(5), rt60, drr, SR)
    assert h.shape == (4, math.ceil(0.9 * SR))
    assert torch.equal(h[:, 0], torch.ones(4)) and (h[:, 1:].abs() < 1).all()
    measured = A.schroeder_rt60(h[:, 1:], SR)  # the diffuse tail's decay
    torch.testing.assert_close(measured, rt60.double(), rtol=0.1, atol=0)
    got_drr = -10 * torch.log10(h[:, 1:].double().pow(2).sum(-1))
    torch.testing.assert_close(got_drr, drr.double(), rtol=0, atol=1e-4)


def test_reverberation_is_the_convolution_cut_to_the_length():
    x = torch.randn(2, 3000, generator=torch.Generator().manual_seed(6)) * 0.1
    lengths = torch.tensor([3000, 1700])
    key = fctc.random.key(8)
    y = A.reverberate(key, x, lengths, rt60=(0.1, 0.1), drr_db=(3.0, 3.0))
    h = A.synthetic_rir(fctc.random.split(key, 4)[3], torch.full((2,), 0.1),
                        torch.full((2,), 3.0), SR, 1600)
    for b, n in enumerate(lengths.tolist()):
        want = np.convolve(x[b, :n].double().numpy(), h[b].double().numpy())[:n]
        np.testing.assert_allclose(y[b, :n].numpy(), want, rtol=0, atol=2e-5)
        assert not y[b, n:].any()


def test_fft_convolve_matches_numpy():
    g = torch.Generator().manual_seed(9)
    x, k = torch.randn(3, 500, generator=g, dtype=torch.float64), torch.randn(3, 31, generator=g, dtype=torch.float64)
    for shift in (0, 15):
        y = A.fft_convolve(x, k, shift)
        for b in range(3):
            np.testing.assert_allclose(y[b].numpy(), np.convolve(x[b], k[b])[shift : shift + 500],
                                       rtol=0, atol=1e-10)


def test_lowpass_taps_are_scipys_blackman_firwin():
    for cutoff in (300.0, 3400.0, 7000.0):
        ours = A.lowpass_taps(torch.tensor([cutoff]), SR, 255)[0].numpy()
        ref = scipy.signal.firwin(255, cutoff, window="blackman", fs=SR)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_band_limit_attenuates_beyond_the_cutoffs():
    tones = [100.0, 600.0, 2400.0, 3600.0, 6000.0]
    x = torch.stack([_sine(f) for f in tones])
    lengths = torch.full((len(tones),), SR)
    y = A.band_filter(x, lengths, torch.full((5,), 3000.0), torch.full((5,), 300.0), SR)
    inner = slice(300, -300)
    drop = [_level_db(x[i, inner]) - _level_db(y[i, inner]) for i in range(len(tones))]
    assert abs(drop[1]) < 0.05 and abs(drop[2]) < 0.05  # the pass band: 300-3000 Hz
    assert drop[0] > 60 and drop[3] > 60 and drop[4] > 60
    low_only = A.band_filter(x, lengths, torch.full((5,), 3000.0), None, SR)
    assert _level_db(x[0, inner]) - _level_db(low_only[0, inner]) < 0.05


def test_random_gain_scales_by_the_decibels():
    x = torch.randn(3, 100)
    lengths = torch.tensor([100, 100, 60])
    y = A.random_gain(fctc.random.key(0), x, lengths, (6.0, 6.0))
    torch.testing.assert_close(y, A.zero_padding(x, lengths) * 10 ** 0.3)
