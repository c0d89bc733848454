"""Cached front-end features: compute each training utterance's log-mel features once.

On a CPU the filterbank front end costs about a quarter of a small model's train step, and it
is the same computation every epoch (only dither, a ``1e-5`` noise, differs). With
``data.cache_features: true`` a run computes the features of every training utterance once,
in evaluation mode (no dither), and trains on those; SpecAugment still draws fresh masks at
every step. The trained parameters are the full model's, front end included, so checkpoints,
validation and ``fctc eval`` run on raw audio as usual.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .. import data as _data
from .. import random as _random
from ..audio import spec_augment
from ..nn.core import Model
from ..train import Batch

__all__ = ["FeatureCache", "cached_front_end", "random_warp", "augment_features"]


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
    length-like warp of the mel axis). Frames beyond the new lengths are 0. The draws come from
    ``key``. Returns ``(features (B, F, T'), new lengths)``.
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
    """The training-time feature augmentation: :func:`random_warp` (with the keyword arguments
    ``warp``) then :func:`fctc.audio.spec_augment` (``spec``); None skips either."""
    k_warp, k_spec = _random.split(key)
    if warp is not None:
        features, lengths = random_warp(k_warp, features, lengths, **warp)
    if spec is not None:
        features = spec_augment(k_spec, features, lengths, **spec)
    return features, lengths


def cached_front_end(
    front_end: Model, augment: dict[str, Any] | None, warp: dict[str, Any] | None = None
) -> Model:
    """A stand-in for ``front_end`` whose inputs are already its features ``(B, nfilt, T)``
    with frame counts: it passes them through (augmented by :func:`augment_features` when
    training). Same params and state as ``front_end``, so the model's trees are unchanged."""

    def apply(params, state, features, lengths, *, train=False, key=None):
        if train and (augment is not None or warp is not None):
            if key is None:
                raise ValueError("cached front end: training with augmentation needs a key")
            _, k_aug = _random.split(key)
            features, lengths = augment_features(k_aug, features, lengths, warp, augment)
        return (features, lengths), state

    return Model(front_end.init, apply)


class FeatureCache:
    """The features of every utterance of a :class:`fctc.data.SpeechDataset`, and batches of them.

    Each utterance is run through ``front_end`` alone (evaluation mode, no padding); batches
    are zero-padded :class:`fctc.train.Batch` es whose ``audio`` holds features
    ``(B, nfilt, T)`` and ``audio_lengths`` frame counts.
    """

    def __init__(self, dataset: _data.SpeechDataset, front_end: Model, front_state: Any):
        self.dataset = dataset
        self.features: list[torch.Tensor | None] = []
        skipped = []
        with torch.no_grad():
            for i in range(len(dataset)):
                item = dataset[i]
                if isinstance(item, _data.Skipped):
                    skipped.append(item)
                    self.features.append(None)
                    continue
                audio, _ = item
                n = torch.tensor([audio.shape[0]])
                (x, lengths), _ = front_end.apply({}, front_state, audio.unsqueeze(0), n)
                self.features.append(x[0, :, : int(lengths[0])].clone())
        if skipped:
            dataset.record_skipped(skipped)
        self.pad_idx = dataset.vocabulary.pad_idx

    def batch(self, indices: Sequence[int]) -> Batch | None:
        """The padded batch of ``indices`` (None when all of them failed to load)."""
        good = [i for i in indices if self.features[i] is not None]
        if not good:
            return None
        feats = [self.features[i] for i in good]
        targets = [self.dataset.targets[i] for i in good]
        lengths = torch.tensor([f.shape[1] for f in feats], dtype=torch.int64)
        target_lengths = torch.tensor([t.shape[0] for t in targets], dtype=torch.int64)
        x = torch.zeros(len(good), feats[0].shape[0], int(lengths.max()))
        y = torch.full((len(good), int(target_lengths.max())), self.pad_idx, dtype=torch.int64)
        for b, (f, t) in enumerate(zip(feats, targets)):
            x[b, :, : f.shape[1]] = f
            y[b, : t.shape[0]] = t
        return Batch(x, lengths, y, target_lengths)

    def iterate(self, plan: Sequence[Sequence[int]], start: int = 0) -> Iterator[tuple[Batch, int]]:
        """``(batch, position)`` for each batch of ``plan`` from ``start``; ``position`` is the
        index of the next batch (the ``start`` that resumes right after this one)."""
        for j in range(start, len(plan)):
            batch = self.batch(plan[j])
            if batch is not None:
                yield batch, j + 1
