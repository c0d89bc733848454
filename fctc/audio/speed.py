"""Speed perturbation: each utterance played faster or slower by resampling (Kaldi/ESPnet's).

Playing an utterance at speed ``f`` reads the signal at times ``n * f``: its duration becomes
``1/f`` of the original and every frequency moves by the factor ``f`` (tempo and pitch
change together, like ``sox speed f``). :func:`change_speed` does it for given factors with a
band-limited (Hann-windowed sinc) resampler, anti-aliased when speeding up;
:func:`speed_perturb` draws the factors from a key: among a few values (Kaldi and ESPnet's
recipes use 0.9, 1.0 and 1.1) or uniformly in a range.

Factors are rational, ``q / resolution`` (0.01 steps by default), so rows that share a
factor are resampled together by one strided convolution with a polyphase kernel (the
kernel spans about ``q`` input samples per ``resolution`` outputs; a finer grid costs more).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import random as _random
from .waveform import check_audio, zero_padding

__all__ = ["change_speed", "speed_perturb", "speed_lengths"]


@functools.lru_cache(maxsize=128)
def _sinc_kernel(orig: int, new: int, zeros: int, rolloff: float) -> tuple[torch.Tensor, int]:
    """``(new, 1, K)`` polyphase taps reading ``orig`` input samples per ``new`` outputs.

    Output ``j`` of a stride-``orig`` step reads the input at time ``j * orig / new`` through
    ``sinc(cutoff * t) * hann(t)``, with the cutoff ``rolloff * min(orig, new) / orig`` of the
    input's Nyquist band and ``zeros`` zero crossings each side.
    """
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64) / orig
    t = (idx[None, :] - torch.arange(new, dtype=torch.float64)[:, None] / new) * base
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * (math.pi / zeros / 2)).pow(2)
    t = t * math.pi
    taps = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    return taps.unsqueeze(1), width


def _resample(x: torch.Tensor, orig: int, new: int, zeros: int, rolloff: float) -> torch.Tensor:
    """Rows ``(G, T)`` at ``new / orig`` times the rate: ``(G, (T // orig + 1) * new)``."""
    taps, width = _sinc_kernel(orig, new, zeros, rolloff)
    padded = F.pad(x.unsqueeze(1), (width, width + orig))
    y = F.conv1d(padded, taps.to(device=x.device, dtype=x.dtype), stride=orig)
    return y.transpose(1, 2).reshape(x.shape[0], -1)


def _grid(factors: torch.Tensor, resolution: int, name: str) -> torch.Tensor:
    """The factors as integers ``q`` of ``q / resolution`` (CPU int64), checked."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"{name}: resolution must be a positive int, got {resolution!r}")
    f = torch.as_tensor(factors, dtype=torch.float64).cpu().reshape(-1)
    if not bool(((f > 0.0) & (f <= 4.0)).all()):
        raise ValueError(f"{name}: speed factors must lie in (0, 4], got {f.tolist()}")
    q = torch.round(f * resolution).to(torch.int64)
    if bool((q < 1).any()):
        raise ValueError(f"{name}: a speed factor rounds to 0 at resolution {resolution}")
    return q


def speed_lengths(lengths: torch.Tensor, factors: torch.Tensor, resolution: int = 100) -> torch.Tensor:
    """Valid samples after :func:`change_speed`: ``ceil(length / f)``, ``f`` on the grid.

    Args:
        lengths: ``(B,)`` valid samples per row.
        factors: ``(B,)`` speed factors.
        resolution: the grid of the factors (``f = round(f * resolution) / resolution``).

    Returns:
        ``(B,)`` int64 lengths, exact (integer arithmetic), on ``lengths``' device.
    """
    q = _grid(factors, resolution, "speed_lengths")
    n = lengths.detach().cpu().to(torch.int64)
    return ((n * resolution + q - 1) // q).to(lengths.device)


def change_speed(
    audio: torch.Tensor,
    lengths: torch.Tensor,
    factors: torch.Tensor | Sequence[float],
    resolution: int = 100,
    zeros: int = 16,
    rolloff: float = 0.99,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Play each row at its own speed: ``y[n] = x(n * f)``, band-limited.

    Row ``b`` gets ``ceil(lengths[b] / f_b)`` samples (:func:`speed_lengths`); the output's
    time size is the longest of them and its padding is zero. A factor of 1 leaves a row
    exactly as it was. Rows sharing a factor are resampled in one strided convolution.

    Args:
        audio: ``(B, T)`` samples (the padding is ignored).
        lengths: ``(B,)`` valid samples per row.
        factors: ``(B,)`` speed factors in ``(0, 4]`` (> 1: faster and higher), rounded to
            multiples of ``1 / resolution``.
        resolution: the grid of the factors.
        zeros: zero crossings of the windowed sinc on each side (its length and sharpness).
        rolloff: the cutoff as a share of the lower of the two Nyquist frequencies.

    Returns:
        ``(audio (B, T'), lengths (B,))``.

    Raises:
        ValueError: a factor outside ``(0, 4]``, a bad resolution, or a bad batch.
    """
    name = "change_speed"
    check_audio(audio, lengths, name)
    q = _grid(factors, resolution, name)
    if q.numel() != audio.shape[0]:
        raise ValueError(f"{name}: need one factor per row ({audio.shape[0]}), got {q.numel()}")
    new_lengths = speed_lengths(lengths, q.to(torch.float64) / resolution, resolution)
    x = zero_padding(audio, lengths)
    n_out = max(1, int(new_lengths.max()))
    out = x.new_zeros(x.shape[0], n_out)
    for value in torch.unique(q).tolist():
        rows = torch.nonzero(q == value).squeeze(1).to(x.device)
        if value == resolution:
            y = x.index_select(0, rows)
        else:
            g = math.gcd(value, resolution)
            y = _resample(x.index_select(0, rows), value // g, resolution // g, zeros, rolloff)
        m = min(n_out, y.shape[-1])
        out[rows, :m] = y[:, :m]
    return zero_padding(out, new_lengths), new_lengths


def speed_perturb(
    key: torch.Tensor,
    audio: torch.Tensor,
    lengths: torch.Tensor,
    factors: Sequence[float] = (0.9, 1.0, 1.1),
    continuous: bool = False,
    resolution: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speed perturbation with factors drawn from ``key``, one per row (:func:`change_speed`).

    Args:
        key: the PRNG key of the draw.
        audio: ``(B, T)`` samples.
        lengths: ``(B,)`` valid samples per row.
        factors: the values to choose from, uniformly (Kaldi/ESPnet's 0.9, 1.0, 1.1); with
            ``continuous``, the range ``[min(factors), max(factors)]``.
        continuous: draw uniformly in the range (on the grid of ``1 / resolution``) instead of
            among the values.
        resolution: the grid of the factors.

    Returns:
        ``(audio (B, T'), lengths (B,))``: the new lengths are ``ceil(length / f)``.

    Raises:
        ValueError: ``factors`` is empty or holds a value outside ``(0, 4]``.
    """
    values = [float(f) for f in factors]
    if not values or not all(0.0 < f <= 4.0 for f in values):
        raise ValueError(f"speed_perturb: factors must be values in (0, 4], got {list(factors)!r}")
    batch = audio.shape[0]
    if continuous:
        lo, hi = min(values), max(values)
        drawn = lo + (hi - lo) * _random.uniform(key, (batch,), torch.float64)
    else:
        drawn = torch.tensor(values, dtype=torch.float64)[
            _random.randint(key, (batch,), 0, len(values)).cpu()
        ]
    return change_speed(audio, lengths, drawn, resolution)
