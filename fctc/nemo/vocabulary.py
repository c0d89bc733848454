"""A NeMo checkpoint's vocabulary: ``labels`` (or ``decoder.vocabulary``) with the CTC blank
appended last; for sub-word models NeMo's ``"##piece"`` / ``"piece"`` spelling is turned back
into sentencepiece's ``"piece"`` / ``"▁piece"`` (:func:`fix_vocab`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..text import SentencePieceTokenizer, Vocabulary
from .config import resolve, section

__all__ = ["fix_vocab", "nemo_vocabulary"]


def fix_vocab(tokens: list[str]) -> list[str]:
    """NeMo's sub-word labels back to sentencepiece pieces (thunder's ``fix_vocab``).

    NeMo writes a word-initial piece ``"▁the"`` as ``"the"`` and a continuation piece
    ``"ing"`` as ``"##ing"``; this undoes it.

    Args:
        tokens: NeMo's labels.

    Returns:
        The pieces: ``"##ing"`` -> ``"ing"``, ``"the"`` -> ``"▁the"``.
    """
    return [t[2:] if t.startswith("##") else "\u2581" + t for t in tokens]


def _no_tokenizer(text: str) -> list[str]:
    raise ValueError(
        "this vocabulary comes from a NeMo sub-word (sentencepiece) checkpoint and cannot split "
        "text into pieces by itself: pass tokenizer_dir=... to load_nemo (needs the "
        "sentencepiece package) to encode text; decoding works without it"
    )


def _labels(config: dict) -> list[str]:
    decoder_sec = section(config, "decoder")
    labels = resolve(config["labels"], config, "labels") if "labels" in config else None
    if labels is None:
        labels = decoder_sec.get("vocabulary")
    if not isinstance(labels, list) or not labels or not all(isinstance(t, str) for t in labels):
        raise ValueError(
            "load_nemo: the config has no vocabulary (a non-empty list of strings in 'labels' or "
            f"'decoder.vocabulary'), got {labels!r}"
        )
    return labels


def nemo_vocabulary(
    config: dict, tokenizer_model: bytes | None, tokenizer_dir: str | os.PathLike | None = None
) -> Vocabulary:
    """The output classes of a NeMo CTC checkpoint, blank last.

    Args:
        config: the parsed ``model_config.yaml``.
        tokenizer_model: the archive's sentencepiece model, when it has one.
        tokenizer_dir: for sub-word checkpoints, a folder to write ``tokenizer.model`` into so
            that the vocabulary can encode text (needs the ``sentencepiece`` package); without
            it the vocabulary decodes but cannot encode.

    Returns:
        The vocabulary.

    Raises:
        ValueError: the config has no decoder section or no list of labels.
    """
    labels = _labels(config)
    if "tokenizer" not in config and tokenizer_model is None:
        return Vocabulary(labels)
    tokenizer = _no_tokenizer
    if tokenizer_dir is not None and tokenizer_model is not None:
        tok_path = Path(tokenizer_dir) / "tokenizer.model"
        tok_path.parent.mkdir(parents=True, exist_ok=True)
        tok_path.write_bytes(tokenizer_model)
        tokenizer = SentencePieceTokenizer(str(tok_path))
    return Vocabulary(fix_vocab(labels), tokenizer=tokenizer)
