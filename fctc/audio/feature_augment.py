"""Feature augmentation, pure and keyed: SpecAugment masks and random time / mel-axis warps.

Each function takes an explicit PRNG ``key`` and a padded batch of features ``(B, F, T)`` with
per-example frame counts, and leaves the padding at zero. :func:`augment_features` is the
training-time chain the recipe applies after the front end (:func:`random_warp`, then
:func:`spec_augment`).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import random as _random
from ..nn.blocks import lengths_to_mask
from ..nn.core import check_lengths, check_rank

__all__ = ["spec_augment", "random_warp", "augment_features"]


def _interval_mask(starts: torch.Tensor, widths: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, size)``: True where any of the ``(B, M)`` intervals ``[start, start+width)`` lies."""
    pos = torch.arange(size, device=starts.device).view(1, 1, size)
    inside = (pos >= starts.unsqueeze(-1)) & (pos < (starts + widths).unsqueeze(-1))
    return inside.any(dim=1)


def _check_spec_args(freq_masks, freq_width, time_masks, time_width) -> None:
    for name, value in (("freq_masks", freq_masks), ("time_masks", time_masks),
                        ("freq_width", freq_width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"spec_augment: {name} must be a non-negative int, got {value!r}")
    if isinstance(time_width, bool) or not isinstance(time_width, (int, float)) or time_width < 0:
        raise ValueError(
            f"spec_augment: time_width must be a non-negative int (frames) or float (fraction), "
            f"got {time_width!r}"
        )
    if isinstance(time_width, float) and time_width > 1:
        raise ValueError(
            f"spec_augment: a float time_width is a fraction of each length, so it must be at "
            f"most 1, got {time_width}; pass an int for a width in frames"
        )


def spec_augment(
    key: torch.Tensor,
    features: torch.Tensor,
    lengths: torch.Tensor,
    freq_masks: int = 2,
    freq_width: int = 27,
    time_masks: int = 2,
    time_width: float | int = 0.05,
    mask_value: float = 0.0,
) -> torch.Tensor:
    """SpecAugment: set random bands of features and spans of frames to ``mask_value``.

    For each example, independently: ``freq_masks`` bands of ``U{0..freq_width}`` features
    each, and ``time_masks`` spans of ``U{0..W}`` frames each, where ``W`` is ``time_width``
    frames (an int) or ``max(1, floor(time_width * length))`` (a float fraction), clamped to
    the example's length. Spans lie inside ``[0, length)`` and bands touch only those frames,
    so nothing beyond ``lengths`` changes. The draws are vectorised over the batch.

    Args:
        key: the PRNG key the masks are drawn from.
        features: ``(B, F, T)``.
        lengths: valid frames per example.
        freq_masks: bands per example.
        freq_width: the widest band, in features.
        time_masks: spans per example.
        time_width: the widest span: frames (an int) or a fraction of each length (a float).
        mask_value: what masked entries become.

    Returns:
        The masked features, same shape.

    Raises:
        ValueError: a count or width is negative or of the wrong type, or a float
            ``time_width`` exceeds 1 (and the shape checks of :mod:`fctc.nn.core`).
    """
    check_rank(features, 3, "spec_augment", "features (batch, features, time)")
    check_lengths(lengths, features, "spec_augment")
    _check_spec_args(freq_masks, freq_width, time_masks, time_width)
    batch, n_feat, n_time = features.shape
    device = features.device
    k_fw, k_fs, k_tw, k_ts = _random.split(key, 4)
    # The draws happen on the key's device; the masks are built on the features' device.
    lk = lengths.to(device=key.device, dtype=torch.int64).unsqueeze(1)  # (B, 1)

    fmax = min(freq_width, n_feat)
    f_w = _random.randint(k_fw, (batch, freq_masks), 0, fmax + 1)
    f_s = _random.randint(k_fs, (batch, freq_masks), 0, n_feat - f_w + 1)
    fmask = _interval_mask(f_s.to(device), f_w.to(device), n_feat)  # (B, F)

    if isinstance(time_width, int):
        t_max = torch.full_like(lk, time_width)
    else:
        t_max = torch.floor(lk.to(torch.float64) * time_width).to(torch.int64).clamp_min(1)
    t_max = torch.minimum(t_max, lk)
    t_w = _random.randint(k_tw, (batch, time_masks), 0, t_max + 1)
    t_s = _random.randint(k_ts, (batch, time_masks), 0, lk - t_w + 1)
    tmask = _interval_mask(t_s.to(device), t_w.to(device), n_time)  # (B, T)

    valid = lengths_to_mask(lengths.to(device), n_time)
    mask = (fmask.unsqueeze(2) | tmask.unsqueeze(1)) & valid.unsqueeze(1)
    return features.masked_fill(mask, mask_value)


def _lerp_gather(x: torch.Tensor, src: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``x`` read at fractional positions ``src`` along ``dim`` (linear interpolation)."""
    i0 = src.floor().long().clamp(0, size - 1)
    i1 = (i0 + 1).clamp(max=size - 1)
    w = (src - i0.to(src.dtype)).to(x.dtype)
    return x.gather(dim, i0) * (1 - w) + x.gather(dim, i1) * w


def random_warp(
    key: torch.Tensor,
    features: torch.Tensor,
    lengths: torch.Tensor,
    time_stretch: float = 0.0,
    freq_warp: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stretch each example in time and warp its feature axis, by random factors.

    Example ``b`` is resampled (linear interpolation) to ``round(lengths[b] * r)`` frames with
    ``r ~ U[1 - time_stretch, 1 + time_stretch]`` (speaking-rate perturbation), and its feature
    ``f`` reads feature ``f / a`` with ``a ~ U[1 - freq_warp, 1 + freq_warp]`` (a vocal-tract-
    length-like warp of the mel axis). Frames beyond the new lengths are 0. The output's time
    size is the longest new length, read on the host once per call (on an accelerator, a wait
    for the device).

    Args:
        key: the PRNG key the factors are drawn from.
        features: ``(B, F, T)``.
        lengths: valid frames per example.
        time_stretch: the largest relative change of length, in ``[0, 1)``.
        freq_warp: the largest relative warp of the feature axis, in ``[0, 1)``.

    Returns:
        ``(features (B, F, T'), new lengths)``, ``T'`` the longest new length.

    Raises:
        ValueError: ``time_stretch`` or ``freq_warp`` lies outside ``[0, 1)``.
    """
    batch, n_feat, _ = features.shape
    k_t, k_f = _random.split(key)
    device, dtype = features.device, features.dtype
    if not (0.0 <= time_stretch < 1.0 and 0.0 <= freq_warp < 1.0):
        raise ValueError(
            f"random_warp: time_stretch and freq_warp must lie in [0, 1), got {time_stretch} "
            f"and {freq_warp}"
        )
    r = 1.0 + (2.0 * _random.uniform(k_t, (batch,)) - 1.0) * time_stretch
    a = 1.0 + (2.0 * _random.uniform(k_f, (batch,)) - 1.0) * freq_warp
    r, a = r.to(device=device, dtype=torch.float32), a.to(device=device, dtype=torch.float32)
    lengths = lengths.to(device)
    new_lengths = torch.round(lengths.to(torch.float32) * r).long().clamp_min(1)
    n_out = int(new_lengths.max())
    t = torch.arange(n_out, device=device, dtype=torch.float32)
    scale = (lengths - 1).clamp_min(0).to(torch.float32) / (new_lengths - 1).clamp_min(1).to(torch.float32)
    src_t = torch.minimum(t[None, :] * scale[:, None], (lengths - 1).clamp_min(0)[:, None].float())
    x = _lerp_gather(features, src_t[:, None, :].expand(batch, n_feat, n_out), 2, features.shape[2])
    f = torch.arange(n_feat, device=device, dtype=torch.float32)
    src_f = (f[None, :] / a[:, None]).clamp(0, n_feat - 1)
    x = _lerp_gather(x, src_f[:, :, None].expand(batch, n_feat, n_out), 1, n_feat)
    valid = torch.arange(n_out, device=device)[None, :] < new_lengths[:, None]
    return x.masked_fill(~valid[:, None, :], 0.0).to(dtype), new_lengths


def augment_features(
    key: torch.Tensor,
    features: torch.Tensor,
    lengths: torch.Tensor,
    warp: dict[str, Any] | None,
    spec: dict[str, Any] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training-time feature augmentation: :func:`random_warp`, then :func:`spec_augment`.

    Args:
        key: the PRNG key, split between the two.
        features: ``(B, F, T)``.
        lengths: valid frames per example.
        warp: keyword arguments of :func:`random_warp`; None skips it.
        spec: keyword arguments of :func:`spec_augment`; None skips it.

    Returns:
        ``(features, lengths)`` after both.
    """
    k_warp, k_spec = _random.split(key)
    if warp is not None:
        features, lengths = random_warp(k_warp, features, lengths, **warp)
    if spec is not None:
        features = spec_augment(k_spec, features, lengths, **spec)
    return features, lengths
