"""``load_nemo``: a NeMo QuartzNet or Citrinet checkpoint as an fctc CTC model, in three steps.

1. parse (:func:`parse_model`): the encoder's block list, through the architecture's
   compatibility piece (``quartznet.py`` / ``citrinet.py``), and the front end;
2. build: the model, by the :class:`fctc.models.Architecture` builder (the same one
   ``fctc train`` uses), and the vocabulary;
3. map weights (:func:`fctc.nemo.weights.map_weights`): NeMo's keys renamed to thunder's,
   checked against the model and filled in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from .. import random as _random
from ..audio import filterbank
from ..nn.core import Model
from ..text import Vocabulary
from . import citrinet as _citrinet
from . import quartznet as _quartznet
from .archive import read_nemo_archive
from .compatibility import Compatibility
from .config import encoder_blocks, front_end_config, section
from .vocabulary import nemo_vocabulary
from .weights import map_weights

__all__ = [
    "NemoCheckpoint",
    "NemoModel",
    "COMPATIBILITY",
    "ARCHITECTURES",
    "detect_architecture",
    "parse_model",
    "load_nemo",
]

COMPATIBILITY: dict[str, Compatibility] = {
    c.architecture.name: c for c in (_quartznet.COMPATIBILITY, _citrinet.COMPATIBILITY)
}
"""The compatibility piece of every architecture fctc loads from NeMo, by name."""

ARCHITECTURES = tuple(COMPATIBILITY)
"""The names of the architectures :func:`load_nemo` reads: ``("quartznet", "citrinet")``."""


class NemoModel(NamedTuple):
    """What a NeMo config describes, as fctc builder arguments.

    Args:
        architecture: its compatibility piece (``.architecture`` builds the model).
        front_end: :func:`fctc.audio.filterbank` keyword arguments.
        encoder: the encoder builder's keyword arguments.
    """

    architecture: Compatibility
    front_end: dict[str, Any]
    encoder: dict[str, Any]


class NemoCheckpoint(NamedTuple):
    """A loaded NeMo checkpoint.

    Args:
        model: a :func:`~fctc.models.ctc_model` over raw audio.
        params: its parameters, filled with the checkpoint's weights (thunder's keys:
            ``encoder.…``, ``decoder.…``, ``audio_transform.…``).
        state: its state (buffers), likewise.
        vocabulary: the output classes (blank last).
        front_end: the :func:`fctc.audio.filterbank` keyword arguments.
        encoder: the keyword arguments of the encoder builder.
        architecture: ``"quartznet"`` or ``"citrinet"``.
        config: the parsed ``model_config.yaml``.
        tokenizer_model: the sentencepiece model bytes for sub-word vocabularies.
    """

    model: Model
    params: Any
    state: Any
    vocabulary: Vocabulary
    front_end: dict[str, Any]
    encoder: dict[str, Any]
    architecture: str
    config: dict
    tokenizer_model: bytes | None


def detect_architecture(jasper: list[Mapping]) -> str:
    """The architecture an ``encoder.jasper`` block list describes.

    Args:
        jasper: NeMo's block configs.

    Returns:
        A key of :data:`COMPATIBILITY`.

    Raises:
        ValueError: no compatibility piece recognises it.
    """
    for name, compat in COMPATIBILITY.items():
        if compat.matches(jasper):
            return name
    raise ValueError(
        "load_nemo: unknown architecture: the encoder.jasper blocks match neither QuartzNet "
        "(separable blocks, no squeeze-excite) nor Citrinet (squeeze-excite); fctc loads "
        f"{list(ARCHITECTURES)} checkpoints (pass architecture=... to force one)"
    )


def parse_model(config: dict, architecture: str | None = None, dropout: float = 0.0) -> NemoModel:
    """Read the model a NeMo ``model_config.yaml`` describes (step 1 of :func:`load_nemo`).

    Args:
        config: the parsed config.
        architecture: a key of :data:`COMPATIBILITY`; detected from the blocks when None.
        dropout: the encoder's dropout (NeMo's own value is not used, as in thunder).

    Returns:
        The architecture, front end and encoder arguments.

    Raises:
        ValueError: the config is not a QuartzNet or Citrinet that fctc's builders can hold
            (the message names the entry).
    """
    encoder_sec = section(config, "encoder")
    jasper = encoder_blocks(encoder_sec, list(ARCHITECTURES))
    if architecture is None:
        architecture = detect_architecture(jasper)
    if architecture not in COMPATIBILITY:
        raise ValueError(
            f"load_nemo: unknown architecture {architecture!r}; choose one of {list(ARCHITECTURES)}"
        )
    compat = COMPATIBILITY[architecture]
    front = front_end_config(section(config, "preprocessor"))
    feat_in = encoder_sec.get("feat_in", front["nfilt"])
    if feat_in != front["nfilt"]:
        raise ValueError(
            f"load_nemo: encoder.feat_in={feat_in} differs from preprocessor.features="
            f"{front['nfilt']}"
        )
    try:
        enc_kwargs = compat.encoder_kwargs(jasper, feat_in, dropout)
    except KeyError as e:
        raise ValueError(
            f"load_nemo: an encoder.jasper block lacks the entry {e}; every block needs "
            "'filters' and 'kernel'"
        ) from None
    return NemoModel(compat, front, enc_kwargs)


def load_nemo(
    path: str | os.PathLike,
    *,
    architecture: str | None = None,
    dropout: float = 0.0,
    tokenizer_dir: str | os.PathLike | None = None,
) -> NemoCheckpoint:
    """Load a NeMo QuartzNet or Citrinet ``.nemo`` checkpoint as an fctc CTC model.

    The weights are read with ``torch.load(..., weights_only=True)``: no code in the archive is
    ever run. Every encoder and decoder tensor must match the model built from the config by
    name and shape (a missing ``num_batches_tracked`` counter starts at 0, as torch allows).

    Args:
        path: the ``.nemo`` file.
        architecture: ``"quartznet"`` or ``"citrinet"``; detected from the config when None.
        dropout: the encoder's dropout for fine-tuning (thunder's ``augment_params``
            ``dropout``; NeMo's own value is not used, as in thunder).
        tokenizer_dir: for sub-word checkpoints, a folder to write the archive's
            ``tokenizer.model`` into, so that the vocabulary can encode text (needs the
            ``sentencepiece`` package). Without it the vocabulary decodes but cannot encode.

    Returns:
        The model, its filled trees, the vocabulary and what they were built from.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the archive, its config or its weights cannot be read as a supported
            model; for weights, the message lists the missing, unexpected and mis-shaped keys.
    """
    archive = read_nemo_archive(path)
    spec = parse_model(archive.config, architecture, dropout)
    vocabulary = nemo_vocabulary(archive.config, archive.tokenizer_model, tokenizer_dir)
    arch = spec.architecture.architecture
    model = arch.ctc_model(filterbank(**spec.front_end), len(vocabulary), spec.encoder)
    params, state = model.init(_random.key(0))
    params, state = map_weights(
        archive.weights, params, state, source=str(path), architecture=arch.name,
        num_classes=len(vocabulary),
    )
    return NemoCheckpoint(
        model=model,
        params=params,
        state=state,
        vocabulary=vocabulary,
        front_end=spec.front_end,
        encoder=spec.encoder,
        architecture=arch.name,
        config=archive.config,
        tokenizer_model=archive.tokenizer_model,
    )
