"""Simulated reverberation: synthetic room impulse responses, convolved through the FFT.

A synthetic room impulse response (:func:`synthetic_rir`) is the direct path (a unit impulse
at sample 0) followed by a diffuse tail of Gaussian noise whose amplitude decays
exponentially, by 60 dB over the reverberation time RT60, scaled to a given
direct-to-reverberant energy ratio (DRR). :func:`reverberate` draws RT60 and DRR per row from
a key and convolves each utterance with its response (:func:`fctc.audio.fft_convolve`).

Length policy: an utterance keeps its length. The output's sample ``n`` is the room's
response at time ``n`` (the direct path is not delayed), and the tail that would ring past
the utterance's last sample is cut; the padding stays zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .. import random as _random
from .waveform import apply_to, check_audio, draw_uniform, fft_convolve, on_rows, zero_padding

__all__ = ["synthetic_rir", "reverberate", "schroeder_rt60"]


def synthetic_rir(
    key: torch.Tensor,
    rt60: torch.Tensor,
    drr_db: torch.Tensor,
    sample_rate: int = 16000,
    length: int | None = None,
) -> torch.Tensor:
    """Room impulse responses: a direct path, then exponentially decaying noise.

    ``h[0] = 1`` and, for ``n >= 1``, ``h[n] = g * w[n] * 10**(-3 n / (rt60 * sample_rate))``
    with ``w`` standard normal noise from ``key``: the energy envelope falls by 60 dB in
    ``rt60`` seconds. ``g`` makes the tail's energy ``10**(-drr_db / 10)`` times the direct
    path's.

    Args:
        key: the PRNG key of the tails.
        rt60: ``(B,)`` reverberation times in seconds (positive).
        drr_db: ``(B,)`` direct-to-reverberant ratios in dB.
        sample_rate: samples per second.
        length: taps per response; None: ``ceil(max(rt60) * sample_rate)`` (down 60 dB).

    Returns:
        ``(B, length)`` float32 responses on the key's device.

    Raises:
        ValueError: a non-positive RT60 or sample rate, or a length below 2.
    """
    rt60 = torch.as_tensor(rt60, dtype=torch.float64, device=key.device).reshape(-1)
    drr = torch.as_tensor(drr_db, dtype=torch.float64, device=key.device).reshape(-1)
    if not bool((rt60 > 0).all()) or sample_rate <= 0:
        raise ValueError(
            f"synthetic_rir: rt60 and sample_rate must be positive, got {rt60.tolist()} and "
            f"{sample_rate}"
        )
    if length is None:
        length = max(2, math.ceil(float(rt60.max()) * sample_rate))
    if length < 2:
        raise ValueError(f"synthetic_rir: length must be at least 2 taps, got {length}")
    n = torch.arange(1, length, dtype=torch.float32, device=key.device)
    decay = (-3.0 * math.log(10.0) / sample_rate) / rt60.to(torch.float32).unsqueeze(1)
    tail = _random.normal(key, (rt60.shape[0], length - 1)) * torch.exp(n * decay)
    energy = tail.double().pow(2).sum(-1, keepdim=True).clamp_min(1e-30)
    scale = (torch.pow(10.0, -drr.unsqueeze(1) / 10.0) / energy).sqrt()
    direct = torch.ones(rt60.shape[0], 1, device=key.device)
    return torch.cat((direct, tail * scale.to(torch.float32)), dim=1)


def schroeder_rt60(rir: torch.Tensor, sample_rate: int = 16000, fit_db=(-5.0, -25.0)) -> torch.Tensor:
    """The RT60 of impulse responses measured by Schroeder's backward integration.

    The energy decay curve ``EDC(n) = sum_{m >= n} h[m]^2`` (in dB, 0 at the start) is fitted
    with a line between ``fit_db`` (T20 by default) and extrapolated to -60 dB.

    Args:
        rir: ``(B, K)`` or ``(K,)`` responses.
        sample_rate: samples per second.
        fit_db: the ``(start, stop)`` levels of the fit, in dB.

    Returns:
        ``(B,)`` (or a scalar) RT60s in seconds.
    """
    h = rir.to(torch.float64)
    edc = h.pow(2).flip(-1).cumsum(-1).flip(-1)
    db = 10.0 * torch.log10(edc / edc[..., :1] + 1e-300)
    t = torch.arange(h.shape[-1], dtype=torch.float64) / sample_rate
    inside = (db <= fit_db[0]) & (db >= fit_db[1])
    w = inside.to(torch.float64)
    count = w.sum(-1)
    tm = (w * t).sum(-1) / count
    dm = (w * db).sum(-1) / count
    slope = (w * (t - tm.unsqueeze(-1)) * (db - dm.unsqueeze(-1))).sum(-1) / (
        w * (t - tm.unsqueeze(-1)).pow(2)
    ).sum(-1)
    return -60.0 / slope


def reverberate(
    key: torch.Tensor,
    audio: torch.Tensor,
    lengths: torch.Tensor,
    rt60: Sequence[float] = (0.1, 0.6),
    drr_db: Sequence[float] = (0.0, 10.0),
    p: float = 1.0,
    sample_rate: int = 16000,
) -> torch.Tensor:
    """Reverberate rows chosen with probability ``p``, each in its own synthetic room.

    Args:
        key: the PRNG key of every draw (rows, RT60s, DRRs, the responses' noise).
        audio: ``(B, T)`` samples (the padding is ignored).
        lengths: ``(B,)`` valid samples per row.
        rt60: the range ``[low, high]`` of the reverberation time, seconds, drawn uniformly.
        drr_db: the range of the direct-to-reverberant ratio, dB, drawn uniformly.
        p: the probability that a row is reverberated.
        sample_rate: samples per second.

    Returns:
        ``(B, T)``, zero in the padding; lengths are unchanged (module notes).

    Raises:
        ValueError: a bad range or probability.
    """
    name = "reverberate"
    check_audio(audio, lengths, name)
    batch = audio.shape[0]
    k_rows, k_rt, k_drr, k_rir = _random.split(key, 4)
    rows = apply_to(k_rows, batch, p, name).to(audio.device)
    t60 = draw_uniform(k_rt, batch, rt60, name, "rt60", lower=1e-3)
    drr = draw_uniform(k_drr, batch, drr_db, name, "drr_db")
    x = zero_padding(audio, lengths)
    length = min(max(2, math.ceil(float(max(rt60)) * sample_rate)), audio.shape[-1] + 1)

    def wet(idx):
        sel = idx.to(t60.device)
        rir = synthetic_rir(k_rir, t60[sel], drr[sel], sample_rate, length).to(x.device)
        sub_lengths = lengths.to(x.device).index_select(0, idx)
        return zero_padding(fft_convolve(x.index_select(0, idx), rir), sub_lengths)

    return on_rows(rows, x, wet)
