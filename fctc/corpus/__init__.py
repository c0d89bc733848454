"""fctc's bundled spoken corpus: English digit strings and short commands, spoken by espeak-ng.

1000 short utterances (about 12 minutes of 16 kHz mono 16-bit FLAC) such as "three one four",
"turn on the lights" or "dial five oh two", each spoken by one of 192 synthetic voices (8
espeak-ng English accents times 24 voice variants) at a random rate and pitch. The splits share
no voice: ``train`` (700 utterances, 144 voices), ``validation`` (150, 24) and ``test`` (150,
24), so the test score measures generalisation to unseen speakers. Texts use only
:data:`CHARACTERS` (lower-case a-z and the space).

The manifests are NeMo-style JSONL (``audio_filepath`` relative to the manifest, ``duration``,
``text``, plus the ``voice``, ``rate`` and ``pitch`` used); ``scripts/make_corpus.py``
regenerates everything from a seed.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CHARACTERS", "SPLITS", "bundled_manifests"]

CHARACTERS = " abcdefghijklmnopqrstuvwxyz"
"""Every character a bundled transcript may contain: the space and lower-case a-z."""

SPLITS = ("train", "validation", "test")


def bundled_manifests() -> dict[str, Path]:
    """The bundled corpus's manifest per split: ``{"train": Path, "validation": ..., "test": ...}``.

    Raises ``FileNotFoundError`` when the package was installed without its data files.
    """
    root = Path(__file__).resolve().parent
    paths = {split: root / f"{split}.jsonl" for split in SPLITS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the bundled corpus is missing {missing}: reinstall fctc with its package data, "
            "or regenerate it with scripts/make_corpus.py"
        )
    return paths
