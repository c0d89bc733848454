"""Transcribing with a trained model: ``fctc.load("runs/x").transcribe(["a.wav"], decoder="beam")``.

:func:`load` rebuilds a model from a checkpoint folder or run folder written by ``fctc train``
(its ``best/`` checkpoint) and returns a :class:`Recognizer`, which transcribes audio files or
tensors greedily or with beam search (:mod:`fctc.decode`). Its decoding defaults are what the
checkpoint carries: the ``decoding`` section of the run's configuration, and the lexicon and
LM that ``fctc train`` wrote for its training texts (``lexicon.txt`` and ``lm.arpa``, looked
for in the checkpoint folder and then in the run folder above it). Without the ``decode``
extra a default of beam search falls back to greedy decoding with a warning; asking for beam
search explicitly raises :class:`fctc.decode.DecoderUnavailable`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from . import data as _data
from .cli.checkpoints import load_checkpoint_model, resolve_checkpoint
from .cli.config import default_config
from .decode import INSTALL_HINT, DecoderUnavailable, beam_search_available, make_decoder
from .nn.core import Model
from .text import Vocabulary
from .train import predict

__all__ = ["LEXICON_FILE", "LM_FILE", "Recognizer", "load", "decoding_files", "decoder_settings"]

LEXICON_FILE = "lexicon.txt"
LM_FILE = "lm.arpa"
_BEAM_OPTIONS = ("beam_size", "beam_threshold", "lexicon", "lm", "lm_weight", "word_score", "log_add")


def decoding_files(folder: str | os.PathLike) -> dict[str, Path | None]:
    """The lexicon and LM that belong to a checkpoint folder: in it, else in its parent.

    Args:
        folder: a checkpoint folder (``runs/x/best``) or a run folder.

    Returns:
        ``{"lexicon": path or None, "lm": path or None}``.
    """
    folder = Path(folder)
    found: dict[str, Path | None] = {}
    for key, name in (("lexicon", LEXICON_FILE), ("lm", LM_FILE)):
        found[key] = next((p / name for p in (folder, folder.parent) if (p / name).is_file()), None)
    return found


def decoder_settings(
    defaults: dict[str, Any], decoder: str | None = None, **options: Any
) -> tuple[dict[str, Any], str | None]:
    """The decoder to build from defaults and a caller's choices, and a note when it falls back.

    Args:
        defaults: ``decoder`` (``"greedy"`` or ``"beam"``) and beam options; ``lexicon`` and
            ``lm`` are paths or None.
        decoder: ``"greedy"``, ``"beam"`` or None (the default's).
        **options: beam options; None keeps the default, ``False`` or ``"none"`` turns the
            lexicon or LM off.

    Returns:
        ``(settings, note)``: the keyword arguments of :func:`fctc.decode.make_decoder`, and a
        sentence saying the default beam search fell back to greedy (else None).

    Raises:
        DecoderUnavailable: beam search asked for (by name or by a beam option) without
            flashlight-text.
        ValueError: beam options together with ``decoder="greedy"``.
    """
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(_BEAM_OPTIONS))
    if unknown:
        raise ValueError(f"unknown decoding option(s) {unknown}; known: {list(_BEAM_OPTIONS)}")
    if decoder not in (None, "greedy", "beam"):
        raise ValueError(f"decoder must be 'greedy' or 'beam', got {decoder!r}")
    if decoder == "greedy" and given:
        raise ValueError(f"{sorted(given)} only apply to beam search; drop them or use decoder='beam'")
    asked = decoder == "beam" or bool(given)
    name = decoder or ("beam" if given else defaults.get("decoder", "greedy"))
    if name == "greedy":
        return {"decoder": "greedy"}, None
    if not beam_search_available():
        if asked:
            raise DecoderUnavailable(INSTALL_HINT)
        return {"decoder": "greedy"}, f"decoding greedily: the default is beam search, and {INSTALL_HINT}"
    settings = {k: defaults.get(k) for k in _BEAM_OPTIONS}
    settings.update(given)
    for key in ("lexicon", "lm"):
        if settings[key] is False or settings[key] == "none":
            settings[key] = None
    if settings["lexicon"] is None and "lm" not in given:
        settings["lm"] = None  # the default LM scores lexicon words: it goes with the lexicon
    return {"decoder": "beam", **settings}, None


class Recognizer:
    """A model ready to transcribe: its pytrees, vocabulary, sample rate and decoding defaults.

    Args:
        model: a model over raw audio (``(B, S)`` -> logits ``(B, vocab, T)``).
        params: its parameters.
        state: its buffers (running statistics).
        vocabulary: its output vocabulary.
        sample_rate: the audio rate it was trained on; files are resampled to it.
        decoding: decoding defaults (``decoder`` and beam options); None: greedy.
        device: where the model's tensors live.
    """

    def __init__(self, model: Model, params: Any, state: Any, vocabulary: Vocabulary, *,
                 sample_rate: int = 16000, decoding: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu"):
        self.model, self.params, self.state = model, params, state
        self.vocabulary = vocabulary
        self.sample_rate = int(sample_rate)
        self.decoding = dict(decoding or {"decoder": "greedy"})
        self.device = torch.device(device)

    def decoder(self, decoder: str | None = None, **options: Any):
        """Build the decoder these defaults and choices describe (see :func:`decoder_settings`).

        Args:
            decoder: ``"greedy"``, ``"beam"`` or None (the default).
            **options: beam options (``beam_size``, ``lexicon``, ``lm``, ``lm_weight``,
                ``word_score``, ``beam_threshold``, ``log_add``).

        Returns:
            A :class:`fctc.decode.GreedyDecoder` or :class:`fctc.decode.BeamSearchDecoder`.
        """
        settings, note = decoder_settings(self.decoding, decoder, **options)
        if note:
            warnings.warn(note, stacklevel=2)
        return make_decoder(self.vocabulary, **settings)

    def transcribe(self, audio: Any, lengths: torch.Tensor | None = None, *,
                   decoder: Any = None, **options: Any) -> list[str]:
        """Transcripts of audio files or signals, one per utterance.

        Args:
            audio: a file path, a list of paths, a 1-D signal, a list of signals, or a padded
                ``(B, S)`` batch (with ``lengths``), at :attr:`sample_rate`.
            lengths: the valid samples of each row of a ``(B, S)`` batch.
            decoder: ``"greedy"``, ``"beam"``, None (the default), or a decoder object.
            **options: beam options, as for :meth:`decoder`.

        Returns:
            One transcript per file or signal.
        """
        decode = decoder if callable(decoder) else self.decoder(decoder, **options)
        if isinstance(audio, torch.Tensor) and audio.dim() == 2:
            return self._predict(audio, lengths, decode)
        if isinstance(audio, (str, os.PathLike, torch.Tensor)):
            audio = [audio]
        return [self._predict(self._signal(a), None, decode)[0] for a in audio]

    def _signal(self, item: Any) -> torch.Tensor:
        if isinstance(item, torch.Tensor):
            if item.dim() != 1:
                raise ValueError(f"transcribe: a signal must be 1-D, got shape {tuple(item.shape)}")
            return item.float()
        return _data.load_audio(item, sample_rate=self.sample_rate)

    def _predict(self, audio: torch.Tensor, lengths: torch.Tensor | None, decode) -> list[str]:
        audio = audio.to(self.device, torch.float32)
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        lengths = None if lengths is None else lengths.to(self.device)
        return predict(self.model, self.params, self.state, self.vocabulary, audio, lengths,
                       decode=decode)


def load(path: str | os.PathLike, device: torch.device | str = "cpu") -> Recognizer:
    """Load a checkpoint folder (or a run folder: its ``best/``) written by ``fctc train``.

    Args:
        path: the checkpoint folder or run folder.
        device: where to put the model.

    Returns:
        A :class:`Recognizer` whose decoding defaults are the checkpoint's (module docstring).

    Raises:
        FileNotFoundError: no checkpoint there.
        fctc.checkpoint.CheckpointError: the folder was not written by ``fctc train``.
    """
    folder = resolve_checkpoint(path)
    loaded = load_checkpoint_model(folder, device)
    section = {**default_config()["decoding"], **loaded.config.get("decoding", {})}
    files = decoding_files(folder)
    decoding = {
        "decoder": section["decoder"], "beam_size": section["beam_size"],
        "beam_threshold": section["beam_threshold"], "lm_weight": section["lm_weight"],
        "word_score": section["word_score"], "log_add": section["log_add"],
        "lexicon": files["lexicon"] if section["lexicon"] else None,
        "lm": files["lm"] if section["lexicon"] and section["lm_order"] else None,
    }
    return Recognizer(loaded.model, loaded.params, loaded.state, loaded.vocabulary,
                      sample_rate=int(loaded.metadata.get("sample_rate", 16000)),
                      decoding=decoding, device=device)
