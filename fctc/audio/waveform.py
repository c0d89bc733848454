"""Padded waveform batches: the checks and the few operations every waveform augmentation shares.

A batch is ``audio (B, T)`` with ``lengths (B,)`` valid samples per row; samples at or beyond
a row's length are padding. The augmentations of :mod:`fctc.audio` read only the valid
samples (:func:`zero_padding` first) and return zeros in the padding, so what the padding
holds never matters. :func:`fft_convolve` is the one linear convolution behind reverberation
and band-limiting.
"""

from __future__ import annotations

import math

import torch

from .. import random as _random
from ..nn.blocks import lengths_to_mask
from ..nn.core import check_lengths, check_rank

__all__ = [
    "check_audio", "zero_padding", "valid_power", "fft_convolve", "apply_to", "draw_uniform",
    "on_rows",
]


def check_audio(audio: torch.Tensor, lengths: torch.Tensor, name: str) -> None:
    """Check a padded waveform batch.

    Args:
        audio: ``(B, T)`` floating samples, ``T >= 1``.
        lengths: ``(B,)`` valid samples per row, in ``[0, T]``.
        name: the caller, for messages.

    Raises:
        ValueError: a wrong rank, an empty time axis, or lengths that do not fit.
        TypeError: integer samples, or lengths that are not a tensor.
    """
    check_rank(audio, 2, name, "audio (batch, samples)")
    if not audio.is_floating_point():
        raise TypeError(f"{name}: audio must be floating point, got {audio.dtype}")
    if audio.shape[-1] == 0:
        raise ValueError(
            f"{name}: audio is empty (shape {tuple(audio.shape)}); a batch needs at least one "
            "sample per row: drop empty utterances first (fctc.data skips them)"
        )
    check_lengths(lengths, audio, name)


def zero_padding(audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``audio`` with every sample at or beyond its row's length set to 0 (NaN included).

    Args:
        audio: ``(B, T)`` samples.
        lengths: ``(B,)`` valid samples per row.

    Returns:
        A new ``(B, T)`` tensor.
    """
    mask = lengths_to_mask(lengths.to(audio.device), audio.shape[-1])
    return audio.masked_fill(~mask, 0.0)


def valid_power(audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean square of each row's valid samples (0 for an empty row).

    Args:
        audio: ``(B, T)`` samples whose padding is zero.
        lengths: ``(B,)`` valid samples per row.

    Returns:
        ``(B,)`` powers, in ``audio``'s dtype.
    """
    count = lengths.to(device=audio.device, dtype=audio.dtype).clamp_min(1)
    return audio.pow(2).sum(-1) / count


def fft_convolve(audio: torch.Tensor, kernels: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """Linear convolution of each row with its own kernel, through the FFT.

    ``y[b, n] = sum_k audio[b, n + shift - k] * kernels[b, k]`` for ``n < T``, with zeros
    outside ``audio``: no wrap-around (the FFT size covers ``T + K - 1``). ``shift=0`` keeps
    a causal kernel's alignment (a room response: the direct path at ``k = 0``);
    ``shift = (K - 1) // 2`` centres a symmetric one (a zero-phase filter).

    Args:
        audio: ``(B, T)`` samples.
        kernels: ``(B, K)`` or ``(K,)`` taps.
        shift: output samples dropped from the start of the full convolution.

    Returns:
        ``(B, T)``.
    """
    n_time, taps = audio.shape[-1], kernels.shape[-1]
    size = _fast_size(n_time + taps - 1)
    work = torch.float64 if audio.dtype == torch.float64 else torch.float32
    spec = torch.fft.rfft(audio.to(work), n=size) * torch.fft.rfft(kernels.to(work), n=size)
    full = torch.fft.irfft(spec, n=size)
    return full[..., shift : shift + n_time].to(audio.dtype)


def _fast_size(n: int) -> int:
    """The smallest ``2**a * 3**b * 5**c`` at least ``n`` (sizes pocketfft handles fastest)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def apply_to(key: torch.Tensor, batch: int, p: float, name: str) -> torch.Tensor:
    """Which rows an augmentation applied with probability ``p`` touches.

    Args:
        key: the PRNG key of the draw.
        batch: the number of rows.
        p: the probability per row, in ``[0, 1]``.
        name: the augmentation, for messages.

    Returns:
        A ``(B,)`` bool tensor on the key's device.

    Raises:
        ValueError: ``p`` outside ``[0, 1]``.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: p must be a probability in [0, 1], got {p!r}")
    return _random.bernoulli(key, float(p), (batch,))


def draw_uniform(
    key: torch.Tensor,
    batch: int,
    bounds: tuple[float, float] | list[float],
    name: str,
    what: str,
    lower: float = -math.inf,
    upper: float = math.inf,
) -> torch.Tensor:
    """One value per row, uniform in ``[low, high]`` (``low == high`` gives that value).

    Args:
        key: the PRNG key of the draw.
        batch: the number of rows.
        bounds: ``(low, high)``.
        name: the augmentation, for messages.
        what: the argument's name, for messages.
        lower: the smallest ``low`` allowed.
        upper: the largest ``high`` allowed.

    Returns:
        ``(B,)`` float64 values on the key's device.

    Raises:
        ValueError: ``bounds`` is not a pair ``lower <= low <= high <= upper``.
    """
    ok = isinstance(bounds, (tuple, list)) and len(bounds) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds
    )
    if not ok or not lower <= bounds[0] <= bounds[1] <= upper:
        raise ValueError(
            f"{name}: {what} must be a pair [low, high] with {lower} <= low <= high <= {upper}, "
            f"got {bounds!r}"
        )
    low, high = float(bounds[0]), float(bounds[1])
    return low + (high - low) * _random.uniform(key, (batch,), torch.float64)


def on_rows(rows: torch.Tensor, x: torch.Tensor, fn) -> torch.Tensor:
    """``x`` with the rows where ``rows`` is True replaced by ``fn(indices)``.

    An augmentation applied with probability ``p`` computes on its chosen rows only, so its
    cost falls with ``p``.

    Args:
        rows: ``(B,)`` bools.
        x: ``(B, T)``.
        fn: the chosen rows' indices (int64, on ``x``'s device) -> their new ``(n, T)`` values.

    Returns:
        A new ``(B, T)`` tensor (``x`` itself when no row is chosen).
    """
    idx = torch.nonzero(rows.to(x.device)).squeeze(1)
    if idx.numel() == 0:
        return x
    return x.index_copy(0, idx, fn(idx).to(x.dtype))
