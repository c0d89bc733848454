"""NeMo-style JSONL manifests: one :class:`Utterance` per line, read with errors that name the line.

A line is ``{"audio_filepath": "clips/0001.flac", "duration": 1.52, "text": "turn on the
lights"}``: ``audio_filepath`` absolute or relative to the manifest's directory, ``duration``
in seconds (optional: without it, :class:`fctc.data.SpeechDataset` reads it from the file's
header), an optional ``offset`` (seconds) selecting a segment of a longer file. Any other
field (a corpus's ``engine``, ``voice``, ``speaker``, ...) is kept, unread, in the utterance's
read-only :attr:`Utterance.fields`, e.g. to score a test set per voice group.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["ManifestError", "Utterance", "read_manifest"]


class ManifestError(ValueError):
    """A manifest line that cannot be read; the message names the file and line."""


_READ_FIELDS = ("audio_filepath", "duration", "text", "offset")  # the rest: Utterance.fields

_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Utterance:
    """One manifest entry.

    Args:
        audio_filepath: the absolute path of the audio file.
        duration: seconds of audio (of the segment, when ``offset`` is set); None when the
            manifest does not say (the file's header does).
        text: the transcript.
        line: the 1-based manifest line it came from (0 when unknown), for error messages.
        manifest: the manifest's path, for error messages.
        offset: seconds into the file where the segment starts.
        fields: the manifest line's other fields (all but ``audio_filepath``, ``duration``,
            ``text`` and ``offset``, e.g. ``engine`` and ``voice``), in the line's order, as a
            read-only mapping: a copy of the one given (its nested values are the JSON's
            lists and dicts). They take part in ``==`` but not in the hash.

    Raises:
        TypeError: ``fields`` is not a mapping.
    """

    audio_filepath: Path
    duration: float | None
    text: str
    line: int = 0
    manifest: Path | None = None
    offset: float = 0.0
    fields: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.fields, Mapping):
            raise TypeError(
                f"Utterance: fields must be a mapping of the manifest line's other fields, "
                f"got {type(self.fields).__name__}"
            )
        fields = dict(self.fields)
        object.__setattr__(self, "fields", MappingProxyType(fields) if fields else _NO_FIELDS)

    def __reduce__(self) -> tuple:
        """Pickle (for loader processes) with ``fields`` as a plain dict, read-only again on
        loading: a ``MappingProxyType`` itself cannot be pickled."""
        return (type(self), (self.audio_filepath, self.duration, self.text, self.line,
                             self.manifest, self.offset, dict(self.fields)))

    @property
    def where(self) -> str:
        """The place a user should fix.

        Returns:
            ``manifest:line`` when the manifest is known, else the audio path.
        """
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


def _entry(line: str, where: str) -> dict:
    """The JSON object on one manifest line, with its required fields checked."""
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
    missing = [k for k in ("audio_filepath", "text") if k not in entry]
    if missing:
        raise ManifestError(
            f"{where}: missing field(s) {missing}; every line needs 'audio_filepath' and "
            "'text' ('duration' is optional)"
        )
    audio = entry["audio_filepath"]
    if not isinstance(audio, str) or not audio:
        raise ManifestError(
            f"{where}: 'audio_filepath' must be a non-empty string, got {audio!r}"
        )
    if not isinstance(entry["text"], str):
        raise ManifestError(f"{where}: 'text' must be a string, got {entry['text']!r}")
    return entry


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a NeMo-style JSONL manifest into :class:`Utterance` entries, in file order.

    A broken manifest is fixed once, not skipped every run, so a malformed line is an error;
    bad *utterances* in a well-formed manifest are the concern of
    :class:`fctc.data.SpeechDataset`'s ``on_error`` policy.

    Args:
        path: the manifest. Each non-blank line must be a JSON object with ``audio_filepath``
            (absolute, or relative to the manifest's directory) and ``text`` (a string);
            ``duration`` (seconds; a number or a numeric string; missing or null: read from
            the file's header) and ``offset`` are optional; any other field is kept in
            ``Utterance.fields``.

    Returns:
        The utterances, with absolute audio paths, their manifest line and other fields.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ManifestError: a line is malformed (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"manifest {path} {what}")
    base = path.absolute().parent
    out: list[Utterance] = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            where = f"{path}:{number}"
            entry = _entry(line, where)
            duration = entry.get("duration")
            duration = None if duration is None else _seconds(duration, "duration", where)
            offset = _seconds(entry.get("offset", 0.0) or 0.0, "offset", where)
            audio_path = Path(entry["audio_filepath"]).expanduser()
            if not audio_path.is_absolute():
                audio_path = base / audio_path
            fields = {k: v for k, v in entry.items() if k not in _READ_FIELDS}
            out.append(Utterance(audio_path, duration, entry["text"], number, path, offset,
                                 fields))
    return out
