"""Evaluation and inference: loss, greedy transcripts and error counts; raw audio to strings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import backend
from ..losses import ctc_loss
from ..metrics import ErrorCounts, error_counts
from ..nn.core import Model
from ..text import Vocabulary
from .loss_output import as_loss_output, stats_tensors, weight_of

__all__ = ["EvalOutput", "make_eval_step", "predict"]


class EvalOutput(NamedTuple):
    """What :func:`make_eval_step` returns for one batch.

    ``stats`` and ``weight``: the statistics the loss function reported (the same as in
    training, :class:`~fctc.train.LossOutput`) and their weight in averages over batches
    (:class:`~fctc.train.WeightedMean`); ``{}`` and None without them.
    """

    loss: torch.Tensor
    transcripts: list[str]
    references: list[str]
    counts: ErrorCounts
    stats: dict[str, torch.Tensor] | None = None
    weight: torch.Tensor | None = None


def _forward(model: Model, precision: str):
    from .step import autocast

    def run(params, model_state, audio, lengths):
        with torch.no_grad(), autocast(precision, audio.device):
            (logits, out_lengths), _ = model.apply(params, model_state, audio, lengths, train=False)
        return logits.float(), out_lengths

    return run


def _stats_of(loss_fn: Callable, precision: str):
    """``(params, model_state, batch) -> (stats, weight)`` of an evaluation-mode loss
    function: no gradients, autocast; ``({}, None)`` when it reports no statistics."""
    from .step import autocast

    def run(params, model_state, batch):
        device = batch.audio.device
        with torch.no_grad(), autocast(precision, device):
            out, _ = loss_fn(params, model_state, batch, None)
        out = as_loss_output(out)
        if not out.stats:
            return {}, None
        stats = stats_tensors(out.stats, device)
        return stats, weight_of(out.weight, batch, device)

    return run


def make_eval_step(
    model: Model,
    vocabulary: Vocabulary,
    *,
    reduction: str = "thunder",
    precision: str = "fp32",
    jit: bool = False,
    decode: Callable[[torch.Tensor, torch.Tensor], list[str]] | None = None,
    loss_fn: Callable | None = None,
):
    """Build ``eval_step(params, model_state, batch) -> EvalOutput``.

    The model runs in eval mode (running statistics, no dropout or dither); the loss is the CTC
    loss with ``vocabulary.blank_idx``; transcripts are greedy CTC decodes; ``counts`` holds the
    character and word edit counts against the batch's targets, which add up across batches
    (``sum(outputs, ErrorCounts())``) into corpus-level CER/WER. With ``jit=True`` the forward
    pass is compiled; decoding and scoring run on the host. ``decode(logits, lengths)``
    replaces greedy decoding (e.g. a :class:`fctc.decode.BeamSearchDecoder`).

    ``loss_fn`` (the training loss function's evaluation-mode twin, called with ``key=None``)
    supplies the statistics: those it reports come back as ``stats`` with their ``weight``,
    so validation reports the same statistics as training (``val_<key>`` in ``fctc train``).
    ``loss`` stays the CTC loss with ``reduction`` (per-utterance scoring needs it); put the
    loss function's own loss in its statistics to see it. It costs a second forward pass.

    Args:
      model: the model.
      vocabulary: its vocabulary (blank and decoding).
      reduction: the CTC loss's reduction (:func:`fctc.losses.ctc_loss`).
      precision: "fp32", "bf16" or "fp16" (autocast).
      jit: compile the forward pass.
      decode: ``decode(logits, lengths) -> list[str]`` (None: greedy CTC decoding).
      loss_fn: an evaluation-mode loss function whose statistics to report (see above).

    Returns:
      ``eval_step(params, model_state, batch) -> EvalOutput``.
    """
    decode = decode or vocabulary.decode_prediction
    forward = backend.jit(_forward(model, precision), enabled=jit)
    stats_of = None if loss_fn is None else backend.jit(_stats_of(loss_fn, precision), enabled=jit)

    def eval_step(params: Any, model_state: Any, batch: Any) -> EvalOutput:
        logits, lengths = forward(params, model_state, batch.audio, batch.audio_lengths)
        loss = ctc_loss(
            logits, lengths, batch.targets, batch.target_lengths, vocabulary.blank_idx, reduction,
            check_feasible=False,
        )
        stats, weight = ({}, None) if stats_of is None else stats_of(params, model_state, batch)
        hyps = decode(logits, lengths)
        refs = vocabulary.decode_targets(batch.targets, batch.target_lengths)
        return EvalOutput(loss, hyps, refs, error_counts(hyps, refs), stats, weight)

    return eval_step


def predict(
    model: Model,
    params: Any,
    model_state: Any,
    vocabulary: Vocabulary,
    audio: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    precision: str = "fp32",
    decode: Callable[[torch.Tensor, torch.Tensor], list[str]] | None = None,
) -> list[str]:
    """Transcribe a batch with greedy CTC decoding (or ``decode(logits, lengths)``), in eval mode.

    ``audio`` is what the model takes, batch first: raw audio ``(B, S)`` for a
    :func:`fctc.models.ctc_model` (one ``(S,)`` signal is accepted too). Without ``lengths``
    every utterance spans the whole last dimension.

    Args:
      model: the model.
      params, model_state: its trees.
      vocabulary: its vocabulary.
      audio: ``(B, S)`` (or one ``(S,)`` signal).
      lengths: the valid length of each row (None: all of ``S``).
      precision: "fp32", "bf16" or "fp16".

    Returns:
      One transcript per row.

    Raises:
      ValueError: ``audio`` is not a tensor with a batch dimension.
    """
    if not isinstance(audio, torch.Tensor) or audio.dim() == 0:
        raise ValueError("predict: audio must be a tensor with a batch dimension (or one 1-D signal)")
    if audio.dim() == 1:
        audio = audio.unsqueeze(0)
    if lengths is None:
        lengths = torch.full((audio.shape[0],), audio.shape[-1], dtype=torch.long, device=audio.device)
    logits, out_lengths = _forward(model, precision)(params, model_state, audio, lengths)
    return (decode or vocabulary.decode_prediction)(logits, out_lengths)
