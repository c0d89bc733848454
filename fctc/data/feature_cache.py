"""Cached front-end features: each training utterance's log-mel features, computed once.

On a CPU the filterbank front end costs about a quarter of a small model's train step, and it
is the same computation every epoch (only dither, a ``1e-5`` noise, differs). A
:class:`FeatureCache` runs every utterance through the front end once, in evaluation mode (no
dither), and serves batches of those features; the model trained on them takes features in
place of audio (:func:`fctc.models.cached_front_end`), with the same parameter trees, so
checkpoints, validation and ``fctc eval`` run on raw audio as usual.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .batch import Batch, Skipped, collate
from .dataset import SpeechDataset

__all__ = ["FeatureCache"]


class FeatureCache:
    """The features of every utterance of a :class:`fctc.data.SpeechDataset`, and batches of them.

    Each utterance is run through ``front_end`` alone (evaluation mode, no padding). Batches
    are :func:`fctc.data.collate` d: their ``audio`` holds features ``(B, nfilt, T)``,
    zero-padded, and ``audio_lengths`` frame counts. Utterances that fail to load are counted
    in ``dataset.skipped`` and left out of every batch.

    Args:
        dataset: the utterances.
        front_end: a front-end :class:`fctc.nn.core.Model` (audio, lengths) -> (features,
            frames), e.g. :func:`fctc.audio.filterbank`; it must have no parameters.
        front_state: its state (the filterbank's window and mel buffers).
    """

    def __init__(self, dataset: SpeechDataset, front_end: Any, front_state: Any):
        self.dataset = dataset
        self.features: list[torch.Tensor | None] = []
        skipped = []
        with torch.no_grad():
            for i in range(len(dataset)):
                item = dataset[i]
                if isinstance(item, Skipped):
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
        """The padded batch of some utterances.

        Args:
            indices: dataset indices.

        Returns:
            Their :class:`fctc.data.Batch` of features, or None when all of them failed to load.
        """
        good = [i for i in indices if self.features[i] is not None]
        if not good:
            return None
        return collate([(self.features[i], self.dataset.targets[i]) for i in good], self.pad_idx)

    def iterate(self, plan: Sequence[Sequence[int]], start: int = 0) -> Iterator[tuple[Batch, int]]:
        """The batches of a plan, as the loader of ``fctc train`` yields them.

        Args:
            plan: batches of dataset indices (from :func:`fctc.data.bucket_batches`).
            start: the first batch of the plan to serve.

        Yields:
            ``(batch, position)``, where ``position`` is the index of the next batch (the
            ``start`` that resumes right after this one); batches with no loadable utterance
            are passed over.
        """
        for j in range(start, len(plan)):
            batch = self.batch(plan[j])
            if batch is not None:
                yield batch, j + 1
