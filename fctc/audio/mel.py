"""Slaney's mel scale and the slaney-normalised triangular filterbank (librosa's defaults)."""

from __future__ import annotations

import math

import torch

__all__ = ["hz_to_mel", "mel_to_hz", "mel_filterbank"]

# Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(freqs: torch.Tensor) -> torch.Tensor:
    """Frequencies in Hz to mels on Slaney's scale (librosa's default, ``htk=False``).

    Args:
        freqs: frequencies in Hz (a tensor or anything ``torch.as_tensor`` takes).

    Returns:
        The mels, float64.
    """
    freqs = torch.as_tensor(freqs, dtype=torch.float64)
    linear = freqs / _F_SP
    logpart = _MIN_LOG_MEL + torch.log(freqs.clamp_min(_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(freqs >= _MIN_LOG_HZ, logpart, linear)


def mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    """Mels on Slaney's scale back to Hz (the inverse of :func:`hz_to_mel`).

    Args:
        mels: mels (a tensor or anything ``torch.as_tensor`` takes).

    Returns:
        The frequencies in Hz, float64.
    """
    mels = torch.as_tensor(mels, dtype=torch.float64)
    linear = mels * _F_SP
    logpart = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mels.clamp_min(_MIN_LOG_MEL) - _MIN_LOG_MEL))
    return torch.where(mels >= _MIN_LOG_MEL, logpart, linear)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Triangular mel filters: slaney scale, slaney (area) norm.

    The same matrix as ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels,
    norm="slaney")`` and torchaudio's ``melscale_fbanks(..., norm="slaney",
    mel_scale="slaney")`` (transposed), which is what thunder registers. Computed in float64.

    Args:
        sample_rate: the audio's sample rate in Hz.
        n_fft: the FFT size.
        n_mels: the number of filters.
        f_min: the lowest frequency (Hz).
        f_max: the highest frequency (Hz); None is ``sample_rate / 2``.
        dtype: the returned matrix's dtype.

    Returns:
        The filters ``(n_mels, n_fft // 2 + 1)``.

    Raises:
        ValueError: a size is not positive, or ``0 <= f_min < f_max`` does not hold.
    """
    if sample_rate <= 0 or n_fft <= 0 or n_mels <= 0:
        raise ValueError(
            "mel_filterbank: sample_rate, n_fft and n_mels must be positive, got "
            f"{sample_rate}, {n_fft}, {n_mels}"
        )
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max:
        raise ValueError(f"mel_filterbank: need 0 <= f_min < f_max, got {f_min}, {f_max}")
    n_freqs = n_fft // 2 + 1
    fft_freqs = torch.linspace(0.0, sample_rate / 2.0, n_freqs, dtype=torch.float64)
    mel_edges = torch.linspace(
        float(hz_to_mel(torch.tensor(f_min))), float(hz_to_mel(torch.tensor(f_max))),
        n_mels + 2, dtype=torch.float64,
    )
    hz_edges = mel_to_hz(mel_edges)
    widths = hz_edges[1:] - hz_edges[:-1]  # (n_mels + 1,)
    ramps = hz_edges.unsqueeze(1) - fft_freqs.unsqueeze(0)  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / widths[:-1].unsqueeze(1)
    upper = ramps[2:] / widths[1:].unsqueeze(1)
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    weights = weights * (2.0 / (hz_edges[2:] - hz_edges[:-2])).unsqueeze(1)
    return weights.to(dtype)
