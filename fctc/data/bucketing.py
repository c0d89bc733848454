"""Batch plans: utterance indices grouped by length, reproducible from ``(seed, epoch)``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bucket_batches"]


def _check_plan_args(d, batch_size, max_batch_seconds, bucket_width, seed, epoch) -> None:
    if d.ndim != 1:
        raise ValueError(f"bucket_batches: durations must be 1-D, got shape {d.shape}")
    if d.size and (not np.isfinite(d).all() or (d < 0).any()):
        raise ValueError("bucket_batches: durations must be finite and >= 0")
    if batch_size is None and max_batch_seconds is None:
        raise ValueError("bucket_batches: give batch_size, max_batch_seconds, or both")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"bucket_batches: batch_size must be >= 1, got {batch_size!r}")
    if max_batch_seconds is not None and not max_batch_seconds > 0:
        raise ValueError(
            f"bucket_batches: max_batch_seconds must be > 0, got {max_batch_seconds!r}"
        )
    if not bucket_width > 0:
        raise ValueError(f"bucket_batches: bucket_width must be > 0, got {bucket_width!r}")
    if int(seed) < 0 or int(epoch) < 0:
        raise ValueError(f"bucket_batches: seed and epoch must be >= 0, got {seed}, {epoch}")


def bucket_batches(
    durations: Sequence[float],
    batch_size: int | None = None,
    max_batch_seconds: float | None = None,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    bucket_width: float = 0.25,
) -> list[list[int]]:
    """Group utterance indices into batches of similar lengths, to keep padding low.

    Utterances are ordered by duration bucket (``floor(duration / bucket_width)``), in a
    random order within each bucket, and cut into consecutive batches; the order of the
    batches is then shuffled. The randomness comes from a numpy generator seeded with
    ``(seed, epoch)`` and nothing else, so a plan is reproducible (an interrupted run rebuilds
    the same plan and resumes within it) and differs from epoch to epoch. Every index appears
    in exactly one batch.

    Args:
        durations: seconds per utterance (e.g. ``dataset.durations``).
        batch_size: at most this many utterances per batch.
        max_batch_seconds: at most this much *padded* audio per batch (``len(batch) *
            longest``, what memory sees; an utterance longer than that gets a batch of its
            own). Give either limit or both.
        shuffle: False sorts by exact duration and keeps the batches in ascending length order.
        seed: the run's seed.
        epoch: the epoch, so that each epoch has its own plan.
        bucket_width: seconds per duration bucket.

    Returns:
        The batches, as lists of indices into ``durations``.

    Raises:
        ValueError: a duration is negative or not finite, neither limit is given, or a limit,
            ``bucket_width``, ``seed`` or ``epoch`` is out of range.
    """
    d = np.asarray(durations, dtype=np.float64)
    _check_plan_args(d, batch_size, max_batch_seconds, bucket_width, seed, epoch)
    if d.size == 0:
        return []
    if shuffle:
        rng = np.random.default_rng([int(seed), int(epoch)])
        order = np.lexsort((rng.permutation(d.size), np.floor(d / bucket_width)))
    else:
        order = np.argsort(d, kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for i in order.tolist():
        new_longest = max(longest, d[i])
        full = current and (
            (batch_size is not None and len(current) >= batch_size)
            or (
                max_batch_seconds is not None
                and new_longest * (len(current) + 1) > max_batch_seconds
            )
        )
        if full:
            batches.append(current)
            current, new_longest = [], d[i]
        current.append(i)
        longest = new_longest
    batches.append(current)
    if shuffle:
        batches = [batches[j] for j in rng.permutation(len(batches)).tolist()]
    return batches
