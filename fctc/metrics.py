"""Character and word error rates, computed over a whole corpus.

A corpus-level rate is the sum of edit distances divided by the total length of the
references, not the mean of per-utterance rates: long utterances weigh more, and the rate of
a corpus equals the rate computed from any split of it into batches. :class:`ErrorCounts`
holds the two sums, so an evaluation loop adds the counts of each batch and reads the rates
at the end.

The edit distances come from ``jiwer`` with its default text transforms: for words the text
is stripped, repeated spaces are collapsed and it is split on spaces; for characters it is
stripped and every character, spaces included, counts.

Empty text: an empty prediction costs one deletion per reference unit; an empty reference
costs one insertion per predicted unit. When the references hold no units at all the rate is
``edits / 0``, defined here as ``0.0`` when there are no edits either and ``inf`` otherwise,
so an evaluation loop never crashes on a degenerate batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jiwer

__all__ = ["ErrorCounts", "error_counts", "cer", "wer", "error_rate"]


def error_rate(edits: int, total: int) -> float:
    """``edits / total``, with ``0 / 0 = 0.0`` and ``n / 0 = inf`` (see the module notes).

    Args:
        edits: summed edit distances.
        total: summed reference lengths.

    Returns:
        The rate, a float.
    """
    if total == 0:
        return 0.0 if edits == 0 else math.inf
    return edits / total


class ErrorCounts(NamedTuple):
    """Summed edit distances and reference lengths; add two with ``+`` (or ``sum``)."""

    char_edits: int = 0
    chars: int = 0
    word_edits: int = 0
    words: int = 0

    def __add__(self, other: object) -> ErrorCounts:  # type: ignore[override]
        if isinstance(other, int) and other == 0:  # lets sum() start from 0
            return self
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        return ErrorCounts(*(a + b for a, b in zip(self, other)))

    __radd__ = __add__

    @property
    def cer(self) -> float:
        """Character error rate: character edits over reference characters.

        Returns:
            The rate (see :func:`error_rate` for empty references).
        """
        return error_rate(self.char_edits, self.chars)

    @property
    def wer(self) -> float:
        """Word error rate: word edits over reference words.

        Returns:
            The rate (see :func:`error_rate` for empty references).
        """
        return error_rate(self.word_edits, self.words)


def _check(predictions: Sequence[str], references: Sequence[str], fn: str) -> tuple[list, list]:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError(f"{fn}: predictions and references must be sequences of str, not a str")
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(
            f"{fn}: got {len(predictions)} predictions for {len(references)} references; "
            "they must pair up one to one"
        )
    for name, items in (("predictions", predictions), ("references", references)):
        bad = [type(x).__name__ for x in items if not isinstance(x, str)]
        if bad:
            raise TypeError(f"{fn}: {name} must all be str, found {sorted(set(bad))}")
    return predictions, references


def _edits(out) -> tuple[int, int]:
    edits = out.substitutions + out.deletions + out.insertions
    total = out.substitutions + out.deletions + out.hits
    return edits, total


def error_counts(predictions: Sequence[str], references: Sequence[str]) -> ErrorCounts:
    """Character and word edit counts of a batch of predictions against their references.

    Args:
        predictions: the hypotheses, one str per utterance.
        references: the transcripts, paired one to one with ``predictions``.

    Returns:
        The counts, to add across batches (``sum`` works).

    Raises:
        TypeError: either is a str or holds a non-str.
        ValueError: they differ in length.
    """
    predictions, references = _check(predictions, references, "error_counts")
    if not predictions:
        return ErrorCounts()
    char_edits, chars = _edits(jiwer.process_characters(references, predictions))
    word_edits, words = _edits(jiwer.process_words(references, predictions))
    return ErrorCounts(char_edits, chars, word_edits, words)


def cer(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus-level character error rate of ``predictions`` against ``references``.

    Args:
        predictions: the hypotheses, one str per utterance.
        references: the transcripts, paired one to one.

    Returns:
        Character edits over reference characters (0.0 for no utterances).

    Raises:
        TypeError: either is a str or holds a non-str.
        ValueError: they differ in length.
    """
    return _corpus_rate(predictions, references, "cer", jiwer.process_characters)


def _corpus_rate(predictions, references, fn: str, process) -> float:
    predictions, references = _check(predictions, references, fn)
    if not predictions:
        return 0.0
    return error_rate(*_edits(process(references, predictions)))


def wer(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus-level word error rate of ``predictions`` against ``references``.

    Args:
        predictions, references: as for :func:`cer`.

    Returns:
        Word edits over reference words (0.0 for no utterances); raises as :func:`cer`.
    """
    return _corpus_rate(predictions, references, "wer", jiwer.process_words)
