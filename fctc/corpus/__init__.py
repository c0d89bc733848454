"""fctc's bundled spoken corpus: English digit strings and short commands, spoken by two speech
synthesisers, espeak-ng and flite.

1810 short utterances (about 33 minutes of 16 kHz mono 16-bit FLAC, 35 MB) such as "five five
five one two oh seven", "turn on the lights" or "dial nine one one": digit strings of 1 to 7
digits (zero said "oh" or "zero"), commands, and commands with digits, each spoken at a random
rate and pitch by one voice of one engine (:data:`ENGINES`):

- espeak-ng: 192 voices (8 English accents times 24 voice variants, e.g. ``en-us+f3``);
- flite: 4 speakers, ``kal16`` (US male, diphone), ``slt`` (US female), ``rms`` (US male) and
  ``awb`` (Scottish male), the last three statistical parametric voices.

The splits share no voice, so every validation and test voice is one that training never hears:

::

    split        espeak-ng                              flite
    train        580 utterances, 144 voices, 10.0 min   840 utterances, kal16 + slt, 15.8 min
    validation    80 utterances,  24 voices,  1.2 min    60 utterances, rms, 1.2 min
    test         150 utterances,  24 voices,  2.5 min   100 utterances, awb, 1.8 min

The test split's two parts measure different things: its espeak-ng part, new combinations of
accents and variants that training hears; its flite part, generalisation to a new speaker of
the other synthesiser (``awb``, with an accent no flite training voice has). Score them apart
with :func:`voice_group`.

The manifests are NeMo-style JSONL (``audio_filepath`` relative to the manifest, ``duration``,
``text``) with the ``engine`` and ``voice`` that spoke each utterance and the ``rate`` and
``pitch`` they were given, in the engine's own units (espeak-ng: words per minute and its 0-99
pitch; flite: the duration stretch, above 1 slower, and the F0 factor). Texts use only
:data:`CHARACTERS` (lower-case a-z and the space), and every word of the validation and test
transcripts occurs in training's, so a lexicon of the training texts covers them.
``scripts/make_corpus.py`` regenerates everything byte for byte from a seed;
``provenance.json`` records the seed, the counts and the tool versions the bytes depend on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CHARACTERS", "ENGINES", "SPLITS", "bundled_manifests", "voice_group"]

CHARACTERS = " abcdefghijklmnopqrstuvwxyz"
"""Every character a bundled transcript may contain: the space and lower-case a-z."""

SPLITS = ("train", "validation", "test")

ENGINES = ("espeak-ng", "flite")
"""The synthesisers that speak the bundled corpus: the values of its manifests' ``engine``."""


def bundled_manifests() -> dict[str, Path]:
    """The bundled corpus's manifest per split.

    Returns:
        ``{"train": Path, "validation": Path, "test": Path}``.

    Raises:
        FileNotFoundError: the package was installed without its data files.
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


def voice_group(entry: Mapping[str, Any]) -> str | None:
    """The voice group of a manifest entry, for scores per group: the engine that spoke it.

    In the bundled corpus every validation and test voice is unseen in training, so the groups
    are "unseen espeak-ng voices" (``"espeak-ng"``) and "unseen flite speakers" (``"flite"``).

    Args:
        entry: one manifest line as a dict (``json.loads(line)``).

    Returns:
        The entry's ``engine`` (one of :data:`ENGINES` in the bundled corpus), or None when it
        names none, as in a manifest of recordings.

    Raises:
        TypeError: ``engine`` is present but not a string.
    """
    engine = entry.get("engine")
    if engine is not None and not isinstance(engine, str):
        raise TypeError(f"voice_group: a manifest entry's engine must be a string, got {engine!r}")
    return engine
