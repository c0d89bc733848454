"""The speech dataset and its bad-data policy.

A real corpus has broken entries. Under ``on_error="skip"`` (the default) each bad utterance is
dropped, counted in ``dataset.skipped`` (reason -> count) and warned about once per reason;
``"stop"`` raises :class:`DataError` naming the manifest file and line. The reasons
(:data:`SKIP_REASONS`):

* ``missing_audio`` / ``corrupt_audio``: the file does not exist / cannot be decoded;
* ``empty_text``: the transcript is empty or only whitespace;
* ``out_of_vocabulary``: the transcript has tokens the vocabulary lacks (only possible when it
  has no unknown token);
* ``too_short``: the audio gives fewer CTC output frames than the transcript needs (its length
  plus one blank between each pair of repeated labels), so the CTC loss would be infinite.

Everything that needs only the manifest and the file headers is checked once, up front, when
the :class:`SpeechDataset` is built, so batches planned from ``dataset.durations`` contain
only good utterances. A file whose header reads but whose samples do not decode is found when
it is loaded: the utterance is dropped from its batch (and counted) under ``"skip"``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import soundfile as sf
import torch
import torch.utils.data

from ..text import Vocabulary
from .audio_io import AudioError, load_audio
from .batch import Batch, Skipped, collate
from .frames import ctc_frames_needed
from .manifest import Utterance

__all__ = ["SKIP_REASONS", "DataError", "SpeechDataset", "skip_summary"]

SKIP_REASONS: dict[str, str] = {
    "missing_audio": "the audio file does not exist",
    "corrupt_audio": "the audio file cannot be decoded",
    "empty_text": "the transcript is empty",
    "out_of_vocabulary": "the transcript has tokens that are not in the vocabulary",
    "too_short": "the audio is too short for its transcript (fewer CTC output frames than "
    "labels plus repeats)",
}
"""Every reason an utterance can be skipped for, with its explanation."""

_ON_ERROR = ("skip", "stop")


def skip_summary(counts: Mapping[str, int]) -> str:
    """Skip counts by reason, in words.

    Args:
        counts: reason -> count (``dataset.skipped``).

    Returns:
        ``"2 skipped: 1 corrupt_audio, 1 missing_audio"`` (reasons sorted), or
        ``"none skipped"``.
    """
    total = sum(counts.values())
    if not total:
        return "none skipped"
    return f"{total} skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(counts.items()) if n)


class DataError(ValueError):
    """A bad utterance under ``on_error="stop"``; the message names the manifest file and line.

    Args:
        where: the manifest line (``manifest:line``) or audio path at fault; or the whole
            message alone (as torch's DataLoader re-raises an error from a worker process:
            its last line is then the original message).
        problem: what is wrong with it.

    Attributes:
        detail: ``"<where>: <problem>"``, without the advice on ``on_error``.
    """

    HINT = ". Fix or remove it, or pass on_error='skip'."

    def __init__(self, where: str, problem: str | None = None):
        if problem is None:
            lines = [line for line in str(where).splitlines() if line.strip()] or [""]
            detail = lines[-1].split("DataError: ", 1)[-1].removesuffix(self.HINT)
        else:
            detail = f"{where}: {problem}"
        super().__init__(detail + self.HINT)
        self.detail = detail


class SpeechDataset(torch.utils.data.Dataset):
    """Utterances with encoded transcripts; ``dataset[i]`` is ``(audio, target)``.

    ``audio`` is a float32 ``(samples,)`` tensor at ``sample_rate`` and ``target`` the int64
    index tensor from ``vocabulary.encode``; an utterance that fails to load under
    ``on_error="skip"`` gives a :class:`fctc.data.Skipped` instead. The constructor applies
    the bad-data policy (see the module notes) to everything it can check without decoding
    audio.

    Attributes: ``utterances`` (the kept ones; indices refer to these), ``targets``,
    ``durations`` (seconds, for :func:`fctc.data.bucket_batches`), ``skipped`` (a ``Counter``
    reason -> count, updated by :class:`fctc.data.Loader` for failures found while loading).

    Args:
        utterances: :class:`fctc.data.Utterance` entries (from :func:`fctc.data.read_manifest`).
        vocabulary: encodes the transcripts.
        sample_rate: the rate audio is loaded at.
        on_error: ``"skip"`` or ``"stop"``.
        max_labels: audio samples -> the model's output frames (e.g.
            :func:`fctc.data.output_frames_fn`); utterances needing more CTC frames are
            ``too_short``. None checks nothing.
        check_audio: read every file's header up front (missing and unreadable files; the
            exact duration used for ``too_short`` and :attr:`durations`). The headers of
            utterances without a manifest ``duration`` are read either way.

    Raises:
        ValueError: ``on_error`` is neither ``"skip"`` nor ``"stop"``.
        TypeError: ``vocabulary`` is not a :class:`fctc.text.Vocabulary`, or an entry is not
            an :class:`fctc.data.Utterance`.
        DataError: a bad utterance under ``on_error="stop"``.
    """

    def __init__(
        self,
        utterances: Iterable[Utterance],
        vocabulary: Vocabulary,
        sample_rate: int = 16000,
        on_error: str = "skip",
        max_labels: Callable[[int], int] | None = None,
        check_audio: bool = True,
    ):
        if on_error not in _ON_ERROR:
            raise ValueError(f"SpeechDataset: on_error must be 'skip' or 'stop', got {on_error!r}")
        if not isinstance(vocabulary, Vocabulary):
            raise TypeError(
                f"SpeechDataset: vocabulary must be a fctc.text.Vocabulary, got "
                f"{type(vocabulary).__name__}"
            )
        self.vocabulary = vocabulary
        self.sample_rate = int(sample_rate)
        self.on_error = on_error
        self.max_labels = max_labels
        self.check_audio = bool(check_audio)
        self.skipped: Counter[str] = Counter()
        self._warned: set[str] = set()
        examples: dict[str, str] = {}
        self.utterances: list[Utterance] = []
        self.targets: list[torch.Tensor] = []
        self.durations: list[float] = []
        for utt in utterances:
            if not isinstance(utt, Utterance):
                raise TypeError(
                    f"SpeechDataset: expected Utterance entries (see read_manifest), got "
                    f"{type(utt).__name__}"
                )
            verdict = self._check(utt)
            if isinstance(verdict, tuple):
                target, duration = verdict
                self.utterances.append(utt)
                self.targets.append(target)
                self.durations.append(duration)
                continue
            reason, detail = verdict
            message = f"{utt.where}: {SKIP_REASONS[reason]}: {detail}"
            if on_error == "stop":
                raise DataError(utt.where, f"{SKIP_REASONS[reason]}: {detail}")
            self.skipped[reason] += 1
            examples.setdefault(reason, message)
        for reason, count in self.skipped.items():
            self._warned.add(reason)
            warnings.warn(
                f"SpeechDataset: skipped {count} utterance(s) because {SKIP_REASONS[reason]} "
                f"(first: {examples[reason]})",
                stacklevel=2,
            )

    def _check(self, utt: Utterance) -> tuple[torch.Tensor, float] | list[str]:
        """``(target, duration)`` for a good utterance, else ``[reason, detail]``."""
        if not utt.text.strip():
            return ["empty_text", repr(utt.text)]
        try:
            target = self.vocabulary.encode(utt.text)
        except ValueError as e:
            return ["out_of_vocabulary", str(e)]
        duration = utt.duration
        if self.check_audio or duration is None:
            path = utt.audio_filepath
            if not path.is_file():
                return ["missing_audio", str(path)]
            try:
                info = sf.info(str(path))
            except Exception as e:  # soundfile raises several types for bad files
                return ["corrupt_audio", f"{path}: {e}"]
            if info.frames <= 0 or info.samplerate <= 0:
                return ["corrupt_audio", f"{path} contains no samples"]
            if utt.offset == 0.0:
                duration = info.frames / info.samplerate
            elif duration is None:  # the segment runs to the end of the file
                duration = max(info.frames / info.samplerate - utt.offset, 0.0)
        if self.max_labels is not None:
            samples = int(round(duration * self.sample_rate))
            if not self._fits(target, samples):
                return ["too_short", self._too_short_detail(target, samples, duration)]
        return target, duration

    def _fits(self, target: torch.Tensor, samples: int) -> bool:
        return self.max_labels(samples) >= ctc_frames_needed(target)  # type: ignore[misc]

    def _too_short_detail(self, target: torch.Tensor, samples: int, seconds: float) -> str:
        return (
            f"{seconds:.3f} s gives {self.max_labels(samples)} output frames, "  # type: ignore
            f"the transcript needs {ctc_frames_needed(target)}"
        )

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | Skipped:
        """``(audio, target)`` of utterance ``index``; a :class:`Skipped` for one that fails to
        load under ``on_error="skip"`` (``"stop"`` raises :class:`DataError`)."""
        utt = self.utterances[index]
        target = self.targets[index]
        try:
            audio = load_audio(
                utt.audio_filepath,
                self.sample_rate,
                offset=utt.offset,
                duration=utt.duration if utt.offset else None,
            )
        except AudioError as e:
            reason = "corrupt_audio" if utt.audio_filepath.is_file() else "missing_audio"
            return self._bad(index, reason, str(e))
        if self.max_labels is not None and not self._fits(target, audio.shape[0]):
            samples = audio.shape[0]
            detail = self._too_short_detail(target, samples, samples / self.sample_rate)
            return self._bad(index, "too_short", detail)
        return audio, target

    def _bad(self, index: int, reason: str, detail: str) -> Skipped:
        utt = self.utterances[index]
        message = f"{utt.where}: {SKIP_REASONS[reason]}: {detail}"
        if self.on_error == "stop":
            raise DataError(utt.where, f"{SKIP_REASONS[reason]}: {detail}")
        return Skipped(index, reason, message)

    def record_skipped(self, skipped: Iterable[Skipped]) -> None:
        """Count utterances that failed while loading, warning once per reason.

        The :class:`fctc.data.Loader` calls this in the main process, since counts made in
        worker processes would be lost.

        Args:
            skipped: the failures, as :class:`fctc.data.Skipped` items.
        """
        for item in skipped:
            self.skipped[item.reason] += 1
            if item.reason not in self._warned:
                self._warned.add(item.reason)
                warnings.warn(
                    f"SpeechDataset: skipping {item.message}; further ones are counted in "
                    "dataset.skipped",
                    stacklevel=3,
                )

    def skipped_summary(self) -> str:
        """The skipped utterances so far, by reason, for messages (:func:`skip_summary`).

        Returns:
            ``"2 skipped: 1 corrupt_audio, 1 missing_audio"``, or ``"none skipped"``.
        """
        return skip_summary(self.skipped)

    def collate(self, items: Sequence[Any], pad_to_multiple: int | None = None) -> Batch:
        """:func:`fctc.data.collate` with this dataset's vocabulary's padding index.

        Args:
            items: ``dataset[i]`` values.
            pad_to_multiple: as for :func:`fctc.data.collate`.

        Returns:
            The padded batch.
        """
        return collate(items, pad_idx=self.vocabulary.pad_idx, pad_to_multiple=pad_to_multiple)
