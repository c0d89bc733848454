"""Cached front-end features: each training utterance's log-mel features, computed once.

On a CPU the filterbank front end costs about a quarter of a small model's train step, and it
is the same computation every epoch (only dither, a ``1e-5`` noise, differs). A
:class:`FeatureCache` runs every utterance through the front end once, in evaluation mode (no
dither), and serves batches of those features; the model trained on them takes features in
place of audio (:func:`fctc.models.cached_front_end`), with the same parameter trees, so
checkpoints, validation and ``fctc eval`` run on raw audio as usual.

Waveform augmentation (speed, noise, reverberation, ...) happens before the front end, so a
cache of clean features cannot hold it. With ``copies = K > 1`` the cache also holds ``K - 1``
augmented copies of every utterance, computed once by an augmenting front end in training
mode, in batches of ``group`` utterances drawn at random (babble needs batch-mates; with a
batch-independent front end the padding changes nothing else). Epoch ``e`` serves copy
``(e + i) % K`` of utterance ``i`` (copy 0 is the clean one), so every batch mixes copies and
every utterance cycles through all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .. import random as _random
from .batch import Batch, Skipped, collate
from .dataset import SpeechDataset

__all__ = ["FeatureCache"]


class FeatureCache:
    """The features of every utterance of a :class:`fctc.data.SpeechDataset`, and batches of them.

    Each utterance is run through ``front_end`` alone (evaluation mode, no padding). Batches
    are :func:`fctc.data.collate` d: their ``audio`` holds features ``(B, nfilt, T)``,
    zero-padded, and ``audio_lengths`` frame counts. Utterances that fail to load are counted
    in ``dataset.skipped`` and left out of every batch. With ``copies > 1``, ``augmented``
    adds that many minus one augmented copies (module notes).

    Args:
        dataset: the utterances.
        front_end: a front-end :class:`fctc.nn.core.Model` (audio, lengths) -> (features,
            frames), e.g. :func:`fctc.audio.filterbank`; it must have no parameters.
        front_state: its state (the filterbank's window and mel buffers).
        copies: copies per utterance, the clean one included.
        augmented: the front end that computes the augmented copies (run with
            ``train=True``), e.g. :func:`fctc.models.augmented_front_end` with waveform
            augmentation; needed when ``copies > 1``.
        key: the PRNG key of the augmented copies (batches and augmentation).
        group: utterances per batch when computing the augmented copies.

    Raises:
        ValueError: ``copies`` is not a positive int, or ``copies > 1`` without ``augmented``
            and ``key``.
    """

    def __init__(self, dataset: SpeechDataset, front_end: Any, front_state: Any,
                 copies: int = 1, augmented: Any = None, key: torch.Tensor | None = None,
                 group: int = 16):
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise ValueError(f"FeatureCache: copies must be a positive int, got {copies!r}")
        if copies > 1 and (augmented is None or key is None):
            raise ValueError("FeatureCache: copies > 1 needs the augmenting front end and a key")
        self.dataset = dataset
        self.copies = copies
        self.features: list[torch.Tensor | None] = []
        audio: list[torch.Tensor | None] = []
        skipped = []
        with torch.no_grad():
            for i in range(len(dataset)):
                item = dataset[i]
                if isinstance(item, Skipped):
                    skipped.append(item)
                    self.features.append(None)
                    audio.append(None)
                    continue
                audio.append(item[0] if copies > 1 else None)
                n = torch.tensor([item[0].shape[0]])
                (x, lengths), _ = front_end.apply({}, front_state, item[0].unsqueeze(0), n)
                self.features.append(x[0, :, : int(lengths[0])].clone())
            self.augmented = [self._augment(augmented, front_state, audio, _random.fold_in(key, c), group)
                              for c in range(1, copies)]
        if skipped:
            dataset.record_skipped(skipped)
        self.pad_idx = dataset.vocabulary.pad_idx

    @staticmethod
    def _augment(model, front_state, audio, key, group) -> list[torch.Tensor | None]:
        """One augmented copy of every loaded utterance, ``group`` random ones at a time."""
        good = [i for i, a in enumerate(audio) if a is not None]
        order = [good[int(j)] for j in _random.permutation(key, len(good)).tolist()]
        out: list[torch.Tensor | None] = [None] * len(audio)
        for j in range(0, len(order), group):
            rows = order[j : j + group]
            lengths = torch.tensor([audio[i].shape[0] for i in rows])
            batch = torch.zeros(len(rows), int(lengths.max()))
            for b, i in enumerate(rows):
                batch[b, : audio[i].shape[0]] = audio[i]
            (x, frames), _ = model.apply({}, front_state, batch, lengths, train=True,
                                         key=_random.fold_in(key, j))
            for b, i in enumerate(rows):
                out[i] = x[b, :, : int(frames[b])].clone()
        return out

    def copy_of(self, index: int, epoch: int) -> torch.Tensor | None:
        """The features utterance ``index`` gets in ``epoch``: copy ``(epoch + index) % copies``.

        Args:
            index: a dataset index.
            epoch: the epoch.

        Returns:
            ``(nfilt, frames)`` features, or None for an utterance that failed to load.
        """
        c = (epoch + index) % self.copies
        return self.features[index] if c == 0 else self.augmented[c - 1][index]

    def batch(self, indices: Sequence[int], epoch: int = 0) -> Batch | None:
        """The padded batch of some utterances.

        Args:
            indices: dataset indices.
            epoch: the epoch, which picks each utterance's copy (:meth:`copy_of`).

        Returns:
            Their :class:`fctc.data.Batch` of features, or None when all of them failed to load.
        """
        good = [i for i in indices if self.features[i] is not None]
        if not good:
            return None
        items = [(self.copy_of(i, epoch), self.dataset.targets[i]) for i in good]
        return collate(items, self.pad_idx)

    def iterate(self, plan: Sequence[Sequence[int]], start: int = 0,
                epoch: int = 0) -> Iterator[tuple[Batch, int]]:
        """The batches of a plan, as the loader of ``fctc train`` yields them.

        Args:
            plan: batches of dataset indices (from :func:`fctc.data.bucket_batches`).
            start: the first batch of the plan to serve.
            epoch: the plan's epoch (which copy each utterance serves).

        Yields:
            ``(batch, position)``, where ``position`` is the index of the next batch (the
            ``start`` that resumes right after this one); batches with no loadable utterance
            are passed over.
        """
        for j in range(start, len(plan)):
            batch = self.batch(plan[j], epoch)
            if batch is not None:
                yield batch, j + 1
