"""Channel simulation: random gain and random band-limiting (telephone-like low / high-pass).

:func:`band_filter` applies per-row linear-phase FIR filters, Blackman-windowed sincs with
their delay compensated (zero phase), through :func:`fctc.audio.fft_convolve`: a low-pass at
``lowpass_hz`` and/or a high-pass at ``highpass_hz`` (a telephone channel passes about
300-3400 Hz). :func:`band_limit` draws the cutoffs and the rows from a key;
:func:`random_gain` scales rows by a random number of decibels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import random as _random
from .waveform import apply_to, check_audio, draw_uniform, fft_convolve, on_rows, zero_padding

__all__ = ["lowpass_taps", "band_filter", "band_limit", "random_gain"]


def lowpass_taps(cutoff_hz: torch.Tensor, sample_rate: int = 16000, taps: int = 255) -> torch.Tensor:
    """Blackman-windowed sinc low-pass filters, one per cutoff, with unit gain at 0 Hz.

    The transition band is about ``5.5 * sample_rate / taps`` wide (345 Hz for 255 taps at
    16 kHz) and the stop band lies more than 70 dB down.

    Args:
        cutoff_hz: ``(B,)`` cutoffs in Hz, in ``(0, sample_rate / 2]``.
        sample_rate: samples per second.
        taps: the filter length, odd (symmetric around tap ``taps // 2``).

    Returns:
        ``(B, taps)`` float64 taps.

    Raises:
        ValueError: an even or non-positive ``taps``, or a cutoff outside the band.
    """
    if isinstance(taps, bool) or not isinstance(taps, int) or taps < 1 or taps % 2 == 0:
        raise ValueError(f"lowpass_taps: taps must be a positive odd int, got {taps!r}")
    fc = torch.as_tensor(cutoff_hz, dtype=torch.float64).reshape(-1, 1) / sample_rate
    if not bool(((fc > 0) & (fc <= 0.5)).all()):
        raise ValueError(
            f"lowpass_taps: cutoffs must lie in (0, {sample_rate / 2}] Hz, got "
            f"{(fc.reshape(-1) * sample_rate).tolist()}"
        )
    n = torch.arange(taps, dtype=torch.float64, device=fc.device) - taps // 2
    window = torch.blackman_window(taps, periodic=False, dtype=torch.float64, device=fc.device)
    h = 2.0 * fc * torch.sinc(2.0 * fc * n) * window
    return h / h.sum(-1, keepdim=True)


def band_filter(
    audio: torch.Tensor,
    lengths: torch.Tensor,
    lowpass_hz: torch.Tensor | None = None,
    highpass_hz: torch.Tensor | None = None,
    sample_rate: int = 16000,
    taps: int = 255,
) -> torch.Tensor:
    """Filter each row with a low-pass and/or high-pass at its own cutoffs (zero phase).

    The high-pass is the spectral inversion ``delta - lowpass(highpass_hz)``; with both, the
    band-pass is ``lowpass(lowpass_hz) - lowpass(highpass_hz)``. Only valid samples are read;
    the output's padding is zero.

    Args:
        audio: ``(B, T)`` samples.
        lengths: ``(B,)`` valid samples per row.
        lowpass_hz: ``(B,)`` low-pass cutoffs in Hz, or None for none.
        highpass_hz: ``(B,)`` high-pass cutoffs in Hz, or None for none.
        sample_rate: samples per second.
        taps: each filter's length (odd).

    Returns:
        ``(B, T)`` filtered samples.

    Raises:
        ValueError: a cutoff outside ``(0, sample_rate / 2]``, a high-pass cutoff at or above
            its row's low-pass cutoff, or a bad ``taps``.
    """
    check_audio(audio, lengths, "band_filter")
    x = zero_padding(audio, lengths)
    if lowpass_hz is None and highpass_hz is None:
        return x
    if lowpass_hz is None:
        kernel = torch.zeros(taps, dtype=torch.float64)
        kernel[taps // 2] = 1.0  # an all-pass
    else:
        kernel = lowpass_taps(lowpass_hz, sample_rate, taps)
    if highpass_hz is not None:
        if lowpass_hz is not None and not bool(
            (torch.as_tensor(highpass_hz) < torch.as_tensor(lowpass_hz)).all()
        ):
            raise ValueError(
                "band_filter: each high-pass cutoff must lie below its row's low-pass cutoff, "
                f"got {torch.as_tensor(highpass_hz).tolist()} and "
                f"{torch.as_tensor(lowpass_hz).tolist()}"
            )
        kernel = kernel - lowpass_taps(highpass_hz, sample_rate, taps)
    kernel = kernel.expand(audio.shape[0], taps)
    return zero_padding(fft_convolve(x, kernel.to(x.device), taps // 2), lengths)


def band_limit(
    key: torch.Tensor,
    audio: torch.Tensor,
    lengths: torch.Tensor,
    lowpass_hz: Sequence[float] | None = (3000.0, 4000.0),
    highpass_hz: Sequence[float] | None = (100.0, 400.0),
    p: float = 0.5,
    sample_rate: int = 16000,
    taps: int = 255,
) -> torch.Tensor:
    """Band-limit rows chosen with probability ``p``, with cutoffs drawn per row.

    Args:
        key: the PRNG key of the draws.
        audio: ``(B, T)`` samples (the padding is ignored).
        lengths: ``(B,)`` valid samples per row.
        lowpass_hz: the range ``[low, high]`` of the low-pass cutoff in Hz; None: no low-pass.
        highpass_hz: the range of the high-pass cutoff in Hz; None: no high-pass.
        p: the probability that a row is filtered.
        sample_rate: samples per second.
        taps: each filter's length (odd).

    Returns:
        ``(B, T)``, zero in the padding; lengths are unchanged.

    Raises:
        ValueError: a range outside ``(0, sample_rate / 2]``, or a bad probability.
    """
    name = "band_limit"
    check_audio(audio, lengths, name)
    batch, nyquist = audio.shape[0], sample_rate / 2
    k_rows, k_low, k_high = _random.split(key, 3)
    rows = apply_to(k_rows, batch, p, name).to(audio.device)
    low = None if lowpass_hz is None else draw_uniform(
        k_low, batch, lowpass_hz, name, "lowpass_hz", 1e-3, nyquist)
    high = None if highpass_hz is None else draw_uniform(
        k_high, batch, highpass_hz, name, "highpass_hz", 1e-3, nyquist)
    x = zero_padding(audio, lengths)

    def filtered(idx):
        sel = idx.to(key.device)
        return band_filter(x.index_select(0, idx), lengths.to(x.device).index_select(0, idx),
                           None if low is None else low[sel], None if high is None else high[sel],
                           sample_rate, taps)

    return on_rows(rows, x, filtered)


def random_gain(
    key: torch.Tensor,
    audio: torch.Tensor,
    lengths: torch.Tensor,
    gain_db: Sequence[float] = (-10.0, 10.0),
    p: float = 1.0,
) -> torch.Tensor:
    """Scale rows chosen with probability ``p`` by ``10**(g / 20)``, ``g`` drawn in ``gain_db``.

    Args:
        key: the PRNG key of the draws.
        audio: ``(B, T)`` samples (the padding is ignored).
        lengths: ``(B,)`` valid samples per row.
        gain_db: the range ``[low, high]`` of the gain in dB.
        p: the probability that a row is scaled.

    Returns:
        ``(B, T)``, zero in the padding.

    Raises:
        ValueError: a bad range or probability.
    """
    name = "random_gain"
    check_audio(audio, lengths, name)
    k_rows, k_gain = _random.split(key)
    rows = apply_to(k_rows, audio.shape[0], p, name)
    g = draw_uniform(k_gain, audio.shape[0], gain_db, name, "gain_db")
    scale = torch.where(rows, torch.pow(10.0, g / 20.0), torch.ones_like(g))
    return zero_padding(audio, lengths) * scale.to(device=audio.device, dtype=audio.dtype).unsqueeze(1)
