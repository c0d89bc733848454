"""The data pipeline: NeMo manifests, audio loading, a bad-data policy, bucketing, collation.

A corpus is one or more NeMo-style JSONL manifests, one utterance per line::

    {"audio_filepath": "clips/0001.flac", "duration": 1.52, "text": "turn on the lights"}

``audio_filepath`` is absolute or relative to the manifest's directory; ``duration`` is in
seconds; an optional ``offset`` (seconds) selects a segment of a longer file, which is then
``duration`` long. Other fields are ignored.

The pieces, from manifest to training batch::

    utts = read_manifest("train.jsonl")                   # list[Utterance]
    ds = SpeechDataset(utts, vocabulary, max_labels=output_frames_fn(160, 2))
    plan = bucket_batches(ds.durations, max_batch_seconds=60, seed=0, epoch=epoch)
    for batch in make_loader(ds, plan, num_workers=2):    # fctc.train.Batch
        state, metrics = train_step(state, batch)

Bad data policy (``on_error``). A real corpus has broken entries; ``"skip"`` (the default)
drops each bad utterance, counts it in ``dataset.skipped`` (reason -> count) and warns once
per reason; ``"stop"`` raises :class:`DataError` naming the manifest file and line. The
reasons (:data:`SKIP_REASONS`):

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

import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
import torch
import torch.utils.data

from .corpus import bundled_manifests
from .text import Vocabulary
from .train.state import Batch

__all__ = [
    "SKIP_REASONS",
    "ManifestError",
    "AudioError",
    "DataError",
    "Utterance",
    "read_manifest",
    "load_audio",
    "ctc_frames_needed",
    "output_frames_fn",
    "Skipped",
    "SpeechDataset",
    "bucket_batches",
    "collate",
    "Loader",
    "make_loader",
    "bundled_manifests",
]

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


class ManifestError(ValueError):
    """A manifest line that cannot be read; the message names the file and line."""


class AudioError(OSError):
    """An audio file that is missing or cannot be decoded; the message names the file."""


class DataError(ValueError):
    """A bad utterance under ``on_error="stop"``; the message names the manifest file and line."""


# -- manifests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    """One manifest entry: an absolute ``audio_filepath``, its ``duration`` (seconds), the
    ``text``, and where it came from (``manifest`` path and 1-based ``line``) for error
    messages. ``offset`` (seconds) selects a segment of a longer file."""

    audio_filepath: Path
    duration: float
    text: str
    line: int = 0
    manifest: Path | None = None
    offset: float = 0.0

    @property
    def where(self) -> str:
        """``manifest:line`` when known, else the audio path: the place a user should fix."""
        if self.manifest is not None:
            return f"{self.manifest}:{self.line}"
        return str(self.audio_filepath)


def _seconds(value: Any, field: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ManifestError(f"{where}: {field!r} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ManifestError(
            f"{where}: {field!r} must be a number of seconds, got {value!r}"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ManifestError(f"{where}: {field!r} must be finite and >= 0, got {value!r}")
    return seconds


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a NeMo-style JSONL manifest into :class:`Utterance` entries, in file order.

    Each non-blank line must be a JSON object with ``audio_filepath`` (absolute, or relative
    to the manifest's directory), ``duration`` (seconds; a number or a numeric string) and
    ``text`` (a string); ``offset`` is optional. A malformed line raises
    :class:`ManifestError` naming the file and line: a broken manifest is fixed once, not
    skipped every run. (Bad *utterances* in a well-formed manifest are the concern of
    :class:`SpeechDataset`'s ``on_error`` policy.)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_manifest: manifest {str(path)!r} does not exist")
    base = path.absolute().parent
    out: list[Utterance] = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            where = f"{path}:{number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(
                    f"{where}: not valid JSON ({e.msg} at column {e.colno}): {line[:80]!r}"
                ) from None
            if not isinstance(entry, dict):
                raise ManifestError(
                    f"{where}: expected a JSON object, got {type(entry).__name__}: {line[:80]!r}"
                )
            missing = [k for k in ("audio_filepath", "duration", "text") if k not in entry]
            if missing:
                raise ManifestError(
                    f"{where}: missing field(s) {missing}; every line needs "
                    "'audio_filepath', 'duration' and 'text'"
                )
            audio = entry["audio_filepath"]
            if not isinstance(audio, str) or not audio:
                raise ManifestError(
                    f"{where}: 'audio_filepath' must be a non-empty string, got {audio!r}"
                )
            text = entry["text"]
            if not isinstance(text, str):
                raise ManifestError(f"{where}: 'text' must be a string, got {text!r}")
            duration = _seconds(entry["duration"], "duration", where)
            offset = _seconds(entry.get("offset", 0.0) or 0.0, "offset", where)
            audio_path = Path(audio).expanduser()
            if not audio_path.is_absolute():
                audio_path = base / audio_path
            out.append(Utterance(audio_path, duration, text, number, path, offset))
    return out


# -- audio --------------------------------------------------------------------------------


def load_audio(
    path: str | Path,
    sample_rate: int = 16000,
    *,
    offset: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """Decode an audio file into a float32 ``(samples,)`` tensor at ``sample_rate``.

    Any format soundfile reads (FLAC, WAV, OGG, ...); several channels are mixed down to
    their mean; other sample rates are resampled with soxr (high quality). ``offset`` and
    ``duration`` (seconds) read a segment only. A missing file, an undecodable one, one with no
    samples, or one with NaN/Inf samples raises :class:`AudioError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {str(path)!r} does not exist")
    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            start = int(round(offset * rate))
            if start:
                f.seek(start)
            frames = -1 if duration is None else int(round(duration * rate))
            data = f.read(frames, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for bad files
        raise AudioError(f"cannot decode audio file {str(path)!r}: {e}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {str(path)!r} contains no samples")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise AudioError(f"audio file {str(path)!r} contains NaN or infinite samples")
    if rate != sample_rate:
        import soxr

        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))


# -- CTC feasibility ----------------------------------------------------------------------


def ctc_frames_needed(target: Sequence[int] | torch.Tensor) -> int:
    """The fewest output frames CTC needs to emit ``target``: its length plus one blank
    between every pair of equal neighbours (``"hello"`` needs 6)."""
    t = target.tolist() if isinstance(target, torch.Tensor) else list(target)
    return len(t) + sum(a == b for a, b in zip(t, t[1:]))


def output_frames_fn(hop_length: int = 160, stride: int = 1) -> Callable[[int], int]:
    """A ``max_labels`` function for :class:`SpeechDataset`: audio samples -> output frames of
    a model whose centred STFT has hop ``hop_length`` (``samples // hop + 1`` frames, as
    :func:`fctc.audio.feature_lengths`) and whose encoder downsamples time by ``stride``
    (``ceil(frames / stride)``, as QuartzNet's and Citrinet's "same"-padded strided convs)."""
    if int(hop_length) < 1 or int(stride) < 1:
        raise ValueError(
            f"output_frames_fn: hop_length and stride must be >= 1, got {hop_length}, {stride}"
        )
    return _OutputFrames(int(hop_length), int(stride))


class _OutputFrames:
    """Picklable samples -> frames function (DataLoader workers may need to pickle it)."""

    def __init__(self, hop: int, stride: int):
        self.hop, self.stride = hop, stride

    def __call__(self, samples: int) -> int:
        return -(-(int(samples) // self.hop + 1) // self.stride)

    def __repr__(self) -> str:
        return f"output_frames_fn(hop_length={self.hop}, stride={self.stride})"


# -- the dataset --------------------------------------------------------------------------


class Skipped(NamedTuple):
    """What :class:`SpeechDataset` returns for an utterance that fails when loaded under
    ``on_error="skip"``; :func:`collate` drops these, :class:`Loader` counts them."""

    index: int
    reason: str
    message: str


class SpeechDataset(torch.utils.data.Dataset):
    """Utterances with encoded transcripts; ``dataset[i]`` is ``(audio, target)``.

    ``audio`` is a float32 ``(samples,)`` tensor at ``sample_rate`` and ``target`` the int64
    index tensor from ``vocabulary.encode``. The constructor applies the bad-data policy to
    everything it can check without decoding audio (see the module notes): empty and
    out-of-vocabulary transcripts, and, with ``check_audio`` (default), missing files and
    unreadable headers, whose frame count and rate also give the exact duration used for
    ``too_short`` and for :attr:`durations`. ``max_labels`` maps a number of audio samples to
    the model's output frames (e.g. :func:`output_frames_fn`); utterances needing more CTC
    frames than that are ``too_short``.

    Attributes: ``utterances`` (the kept ones; indices refer to these), ``targets``,
    ``durations`` (seconds, for :func:`bucket_batches`), ``skipped`` (a ``Counter`` reason ->
    count, updated by :class:`Loader` for failures found while loading).
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
                raise DataError(f"{message}. Fix or remove it, or pass on_error='skip'.")
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
        if self.check_audio:
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
            raise DataError(f"{message}. Fix or remove it, or pass on_error='skip'.")
        return Skipped(index, reason, message)

    def record_skipped(self, skipped: Iterable[Skipped]) -> None:
        """Count utterances that failed while loading (the :class:`Loader` calls this in the
        main process, since counts made in worker processes would be lost), warning once per
        reason."""
        for item in skipped:
            self.skipped[item.reason] += 1
            if item.reason not in self._warned:
                self._warned.add(item.reason)
                warnings.warn(
                    f"SpeechDataset: skipping {item.message}; further ones are counted in "
                    "dataset.skipped",
                    stacklevel=3,
                )

    def collate(self, items: Sequence[Any], pad_to_multiple: int | None = None) -> Batch:
        """:func:`collate` with this dataset's vocabulary's padding index."""
        return collate(items, pad_idx=self.vocabulary.pad_idx, pad_to_multiple=pad_to_multiple)


# -- batching -----------------------------------------------------------------------------


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
    random order within each bucket, and cut into consecutive batches of at most
    ``batch_size`` utterances and at most ``max_batch_seconds`` of *padded* audio
    (``len(batch) * longest``, what memory sees; an utterance longer than that gets a batch
    of its own). Give either limit or both. The order of the batches is then shuffled.

    The randomness comes from a numpy generator seeded with ``(seed, epoch)`` and nothing
    else, so a plan is reproducible (an interrupted run rebuilds the same plan and resumes
    within it) and differs from epoch to epoch. ``shuffle=False`` sorts by exact duration and
    keeps the batches in ascending length order. Every index appears in exactly one batch.
    """
    d = np.asarray(durations, dtype=np.float64)
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


def collate(
    items: Sequence[Any], pad_idx: int, pad_to_multiple: int | None = None
) -> Batch:
    """Pad ``(audio, target)`` items into a :class:`fctc.train.Batch`.

    ``audio`` becomes ``(B, S)`` float32, zero-padded, with int64 ``audio_lengths``;
    ``targets`` ``(B, L)`` int64 padded with ``pad_idx`` (the vocabulary's ``pad_idx``; CTC
    ignores positions past ``target_lengths`` whatever they hold). ``pad_to_multiple`` rounds
    ``S`` up to a multiple of that many samples, so that a compiled model sees fewer distinct
    shapes. :class:`Skipped` items are dropped; a batch with no item left is an error.
    """
    good = [it for it in items if not isinstance(it, Skipped)]
    if not good:
        raise ValueError("collate: no items to batch (all were skipped or the list is empty)")
    if pad_to_multiple is not None and (isinstance(pad_to_multiple, bool) or pad_to_multiple < 1):
        raise ValueError(f"collate: pad_to_multiple must be >= 1, got {pad_to_multiple!r}")
    audio_lengths = torch.tensor([int(a.shape[0]) for a, _ in good], dtype=torch.int64)
    target_lengths = torch.tensor([int(t.shape[0]) for _, t in good], dtype=torch.int64)
    width = int(audio_lengths.max())
    if pad_to_multiple:
        width = -(-width // pad_to_multiple) * pad_to_multiple
    audio = torch.zeros(len(good), width, dtype=torch.float32)
    targets = torch.full((len(good), int(target_lengths.max())), int(pad_idx), dtype=torch.int64)
    for b, (a, t) in enumerate(good):
        audio[b, : a.shape[0]] = a
        targets[b, : t.shape[0]] = t
    return Batch(audio, audio_lengths, targets, target_lengths)


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
        self.set(batches, start)

    def set(self, batches: Sequence[Sequence[int]], start: int) -> None:
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
    """An iterable of :class:`fctc.train.Batch` over a batch plan (see :func:`make_loader`).

    ``position`` is the index in the plan of the next batch: after a batch has been yielded
    (and trained on) it is the ``start_batch`` that resumes right after it, even when a batch
    whose utterances all failed to load was passed over. :meth:`set_batches` installs the next
    epoch's plan, reusing persistent workers.
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

    def set_batches(self, batches: Sequence[Sequence[int]], start_batch: int = 0) -> None:
        """Use a new plan (e.g. the next epoch's ``bucket_batches``) from ``start_batch`` on."""
        self._sampler.set(batches, start_batch)
        self.position = self._sampler.start

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


def make_loader(
    dataset: SpeechDataset,
    batches: Sequence[Sequence[int]],
    num_workers: int = 0,
    start_batch: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    pad_to_multiple: int | None = None,
    prefetch_factor: int | None = None,
) -> Loader:
    """Iterate a batch plan (from :func:`bucket_batches`) as :class:`fctc.train.Batch` es.

    A torch ``DataLoader`` with the plan as its batch sampler loads and pads the batches,
    in ``num_workers`` background processes when > 0 (each limited to one torch thread);
    batches come in plan order either way. ``start_batch`` skips the first batches of the
    plan without loading them, so a run interrupted after ``k`` batches of an epoch resumes
    exactly at batch ``k`` of the same plan (rebuild the plan from the same seed and epoch).
    ``pad_to_multiple`` is passed to :func:`collate`. Utterances that fail to load are dropped
    from their batch and counted in ``dataset.skipped`` (under ``on_error="skip"``).
    """
    return Loader(
        dataset,
        batches,
        num_workers=num_workers,
        start_batch=start_batch,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
        pad_to_multiple=pad_to_multiple,
        prefetch_factor=prefetch_factor,
    )
