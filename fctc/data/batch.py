"""The padded training batch and the one collation that builds it.

:class:`Batch` is the type the train step consumes (``fctc.train`` re-exports it);
:func:`collate` pads ``(audio, target)`` items into one, whether ``audio`` is a waveform
``(samples,)`` or precomputed features ``(features, frames)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

__all__ = ["Batch", "Skipped", "collate"]


class Batch(NamedTuple):
    """A padded batch for CTC training.

    Args:
        audio: ``(B, S)`` waveforms (or ``(B, F, T)`` features), zero-padded.
        audio_lengths: ``(B,)`` int64 valid samples (or frames) per example.
        targets: ``(B, L)`` int64 label indices, padded.
        target_lengths: ``(B,)`` int64 labels per example.
    """

    audio: torch.Tensor
    audio_lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor


class Skipped(NamedTuple):
    """An utterance that failed to load under ``on_error="skip"``.

    :class:`fctc.data.SpeechDataset` returns one in place of ``(audio, target)``;
    :func:`collate` drops these and :class:`fctc.data.Loader` counts them.

    Args:
        index: the utterance's index in the dataset.
        reason: one of :data:`fctc.data.SKIP_REASONS`.
        message: what went wrong, naming the manifest line.
    """

    index: int
    reason: str
    message: str


def collate(
    items: Sequence[Any], pad_idx: int, pad_to_multiple: int | None = None
) -> Batch:
    """Pad ``(audio, target)`` items into a :class:`Batch`.

    ``audio`` is padded with zeros along its last axis into float32 ``(B, ..., S)`` with
    int64 ``audio_lengths`` (a waveform ``(samples,)`` gives ``(B, S)``; features
    ``(F, frames)`` give ``(B, F, T)``). CTC ignores target positions past
    ``target_lengths`` whatever they hold.

    Args:
        items: ``(audio, target)`` pairs; :class:`Skipped` items are dropped.
        pad_idx: the padding of ``targets`` (the vocabulary's ``pad_idx``).
        pad_to_multiple: round the padded length up to a multiple of this, so that a
            compiled model sees fewer distinct shapes; None pads to the longest item.

    Returns:
        The batch, ``targets`` ``(B, L)`` int64.

    Raises:
        ValueError: no item is left, ``pad_to_multiple`` is below 1, or the items' audio
            differs in its leading (non-time) shape.
    """
    good = [it for it in items if not isinstance(it, Skipped)]
    if not good:
        raise ValueError("collate: no items to batch (all were skipped or the list is empty)")
    if pad_to_multiple is not None and (isinstance(pad_to_multiple, bool) or pad_to_multiple < 1):
        raise ValueError(f"collate: pad_to_multiple must be >= 1, got {pad_to_multiple!r}")
    lead = tuple(good[0][0].shape[:-1])
    if any(tuple(a.shape[:-1]) != lead for a, _ in good):
        shapes = sorted({tuple(a.shape) for a, _ in good})
        raise ValueError(
            f"collate: every item's audio must have the same shape but for its last (time) "
            f"axis, got {shapes}"
        )
    audio_lengths = torch.tensor([int(a.shape[-1]) for a, _ in good], dtype=torch.int64)
    target_lengths = torch.tensor([int(t.shape[0]) for _, t in good], dtype=torch.int64)
    width = int(audio_lengths.max())
    if pad_to_multiple:
        width = -(-width // pad_to_multiple) * pad_to_multiple
    audio = torch.zeros(len(good), *lead, width, dtype=torch.float32)
    targets = torch.full((len(good), int(target_lengths.max())), int(pad_idx), dtype=torch.int64)
    for b, (a, t) in enumerate(good):
        audio[b, ..., : a.shape[-1]] = a
        targets[b, : t.shape[0]] = t
    return Batch(audio, audio_lengths, targets, target_lengths)
