"""Loading a batch plan: a torch ``DataLoader`` over :class:`fctc.data.SpeechDataset` that yields
padded :class:`fctc.data.Batch` es in plan order, resumable at any batch of the plan."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.utils.data

from .batch import Batch, Skipped, collate
from .dataset import SpeechDataset

__all__ = ["Loader", "make_loader"]


class _LoaderCollate:
    """The loader's collate: ``(batch or None, skipped items)``; picklable for workers."""

    def __init__(self, pad_idx: int, pad_to_multiple: int | None):
        self.pad_idx, self.pad_to_multiple = pad_idx, pad_to_multiple

    def __call__(self, items: Sequence[Any]) -> tuple[Batch | None, list[Skipped]]:
        skipped = [it for it in items if isinstance(it, Skipped)]
        if len(skipped) == len(items):
            return None, skipped
        return collate(items, self.pad_idx, self.pad_to_multiple), skipped


class _PlanSampler(torch.utils.data.Sampler):
    """A batch sampler over a fixed plan, starting at batch ``start``."""

    def __init__(self, batches: Sequence[Sequence[int]], start: int):
        batches = [list(map(int, b)) for b in batches]
        if isinstance(start, bool) or not 0 <= int(start) <= len(batches):
            raise ValueError(
                f"make_loader: start_batch must lie in [0, {len(batches)}], got {start!r}"
            )
        if any(len(b) == 0 for b in batches):
            raise ValueError("make_loader: every batch must hold at least one index")
        self.batches, self.start = batches, int(start)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches[self.start :])

    def __len__(self) -> int:
        return len(self.batches) - self.start


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _shutdown(it: Any) -> None:
    """Stop a DataLoader iterator's worker processes, if it has any."""
    stop = getattr(it, "_shutdown_workers", None)
    if stop is not None:
        stop()


class Loader:
    """Iterate a batch plan (from :func:`fctc.data.bucket_batches`) as :class:`fctc.data.Batch` es.

    A torch ``DataLoader`` with the plan as its batch sampler loads and pads the batches, in
    ``num_workers`` background processes when > 0 (each limited to one torch thread); batches
    come in plan order either way. Utterances that fail to load are dropped from their batch
    and counted in ``dataset.skipped`` (under ``on_error="skip"``). ``position`` is the index
    in the plan of the next batch: after a batch has been yielded (and trained on) it is the
    ``start_batch`` that resumes right after it, even when a batch whose utterances all failed
    to load was passed over. :func:`make_loader` is this class.

    Args:
        dataset: the utterances.
        batches: the plan: lists of dataset indices.
        num_workers: background loading processes (0: load in this one).
        start_batch: skip the first batches of the plan without loading them, so a run
            interrupted after ``k`` batches of an epoch resumes exactly at batch ``k`` of the
            same plan (rebuild the plan from the same seed and epoch).
        pin_memory: the ``DataLoader``'s.
        persistent_workers: keep the worker processes between iterations (:meth:`close`
            stops them).
        pad_to_multiple: passed to :func:`fctc.data.collate`.
        prefetch_factor: the ``DataLoader``'s (with workers only).

    Raises:
        TypeError: ``dataset`` is not a :class:`fctc.data.SpeechDataset`.
        ValueError: ``num_workers`` is negative, ``start_batch`` lies outside the plan, or a
            batch is empty.
    """

    def __init__(
        self,
        dataset: SpeechDataset,
        batches: Sequence[Sequence[int]],
        num_workers: int = 0,
        start_batch: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        pad_to_multiple: int | None = None,
        prefetch_factor: int | None = None,
    ):
        if not isinstance(dataset, SpeechDataset):
            raise TypeError(
                f"make_loader: dataset must be a SpeechDataset, got {type(dataset).__name__}"
            )
        if isinstance(num_workers, bool) or int(num_workers) < 0:
            raise ValueError(f"make_loader: num_workers must be >= 0, got {num_workers!r}")
        self.dataset = dataset
        self._sampler = _PlanSampler(batches, start_batch)
        self.position = self._sampler.start
        kwargs: dict[str, Any] = {}
        if num_workers > 0:
            kwargs["worker_init_fn"] = _worker_init
            kwargs["persistent_workers"] = bool(persistent_workers)
            if prefetch_factor is not None:
                kwargs["prefetch_factor"] = int(prefetch_factor)
        self._loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self._sampler,
            num_workers=int(num_workers),
            collate_fn=_LoaderCollate(dataset.vocabulary.pad_idx, pad_to_multiple),
            pin_memory=pin_memory,
            **kwargs,
        )

    def __len__(self) -> int:
        """The number of batches left in the plan from ``start_batch``."""
        return len(self._sampler)

    def __iter__(self) -> Iterator[Batch]:
        start = self._sampler.start
        it = iter(self._loader)
        finished = False
        try:
            for i, (batch, skipped) in enumerate(it):
                self.position = start + i + 1
                if skipped:
                    self.dataset.record_skipped(skipped)
                if batch is not None:
                    yield batch
            finished = True
        finally:
            # An error or an early ``break`` would leave worker processes running until the
            # iterator is garbage collected (and then joined with a timeout): stop them now.
            if not finished or not self._loader.persistent_workers:
                _shutdown(it)
                if getattr(self._loader, "_iterator", None) is it:
                    self._loader._iterator = None

    def close(self) -> None:
        """Stop persistent worker processes now (they otherwise live as long as the loader)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None:
            _shutdown(it)
            self._loader._iterator = None


make_loader = Loader
"""The name the examples and ``fctc train`` use for :class:`Loader` (one constructor, not two)."""
