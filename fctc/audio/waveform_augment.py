"""The training-time waveform augmentation chain, before the filterbank.

:func:`augment_waveform` runs, on a padded batch ``(B, T)`` with lengths, in the order a
signal meets them on its way to a recogniser: speed perturbation (the talker,
:func:`fctc.audio.speed_perturb`), reverberation (the room, :func:`fctc.audio.reverberate`),
additive noise (:func:`fctc.audio.add_noise`), band-limiting (the channel,
:func:`fctc.audio.band_limit`) and gain (:func:`fctc.audio.random_gain`). Each step takes
its keyword arguments from a dict, or is skipped when it is None, and draws from its own
share of the key, so switching one off leaves the others' draws unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import random as _random
from .filters import band_limit, random_gain
from .noise import add_noise
from .reverb import reverberate
from .speed import speed_perturb
from .waveform import check_audio, zero_padding

__all__ = ["WAVEFORM_AUGMENTATIONS", "augment_waveform"]

WAVEFORM_AUGMENTATIONS = ("speed", "reverb", "noise", "band_limit", "gain")
"""The steps of :func:`augment_waveform`, in their order (also its keyword arguments)."""


def augment_waveform(
    key: torch.Tensor,
    audio: torch.Tensor,
    lengths: torch.Tensor,
    sample_rate: int = 16000,
    speed: dict[str, Any] | None = None,
    reverb: dict[str, Any] | None = None,
    noise: dict[str, Any] | None = None,
    band_limit: dict[str, Any] | None = None,  # noqa: F811 - the step's name
    gain: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speed, reverberation, noise, band-limiting and gain, each optional, in that order.

    Args:
        key: the PRNG key, split five ways (one share per step, used or not).
        audio: ``(B, T)`` samples (the padding is ignored).
        lengths: ``(B,)`` valid samples per row.
        sample_rate: samples per second (for RT60s and cutoffs).
        speed: keyword arguments of :func:`fctc.audio.speed_perturb`; None skips it.
        reverb: keyword arguments of :func:`fctc.audio.reverberate` (but ``sample_rate``).
        noise: keyword arguments of :func:`fctc.audio.add_noise`.
        band_limit: keyword arguments of :func:`fctc.audio.band_limit` (but ``sample_rate``).
        gain: keyword arguments of :func:`fctc.audio.random_gain`.

    Returns:
        ``(audio (B, T'), lengths)``: the time size and lengths change with speed only; the
        padding is zero.
    """
    check_audio(audio, lengths, "augment_waveform")
    k_speed, k_reverb, k_noise, k_band, k_gain = _random.split(key, 5)
    x = zero_padding(audio, lengths)
    if speed is not None:
        x, lengths = speed_perturb(k_speed, x, lengths, **speed)
    if reverb is not None:
        x = reverberate(k_reverb, x, lengths, sample_rate=sample_rate, **reverb)
    if noise is not None:
        x = add_noise(k_noise, x, lengths, **noise)
    if band_limit is not None:
        x = _band_limit(k_band, x, lengths, sample_rate=sample_rate, **band_limit)
    if gain is not None:
        x = random_gain(k_gain, x, lengths, **gain)
    return x, lengths


_band_limit = band_limit  # augment_waveform's `band_limit` argument shadows the function
