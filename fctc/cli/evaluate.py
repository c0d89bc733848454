"""``fctc eval`` and ``fctc transcribe``, and the corpus evaluation shared with ``fctc train``.

The loss of an evaluation is the mean per-utterance CTC loss (each divided by its transcript's
length, as training's) over the utterances whose transcript fits their output frames: an
utterance with more labels (plus repeats) than frames has an infinite loss, which CTC's
``zero_infinity`` would count as 0 and pull the mean down, so it is left out of the loss and
counted in ``loss_excluded``; it stays in CER and WER, which score its transcript like any
other. Nothing usable (every file missing, undecodable or empty) gives ``null`` scores, never
a perfect score on nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import data as _data
from .. import tree as _tree
from ..data import ctc_frames_needed
from ..inference import Recognizer, load
from ..metrics import ErrorCounts, error_counts
from ..nn.core import Model
from ..text import Vocabulary
from ..train import make_eval_step

__all__ = ["Scorer", "evaluate_dataset", "evaluate_manifest", "transcribe_files"]


class _FrameCounts:
    """A decoder that keeps the output frame counts of the batch it decodes."""

    def __init__(self, decode: Callable[[torch.Tensor, torch.Tensor], list[str]]):
        self.decode, self.lengths = decode, None

    def __call__(self, logits: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        self.lengths = lengths.detach().cpu()
        return self.decode(logits, lengths)


class Scorer:
    """Per-utterance CTC losses, feasibility and transcripts of a model's batches.

    Args:
        model: the model (over whatever the batches hold).
        vocabulary: its vocabulary.
        decode: the decoder (``decode(logits, lengths) -> transcripts``); None: greedy.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        jit: compile the forward pass.
    """

    def __init__(self, model: Model, vocabulary: Vocabulary, *, decode: Any = None,
                 precision: str = "fp32", jit: bool = False):
        self._frames = _FrameCounts(decode or vocabulary.decode_prediction)
        self._step = make_eval_step(model, vocabulary, reduction="none", precision=precision,
                                    jit=jit, decode=self._frames)

    def __call__(self, params: Any, model_state: Any, batch: _data.Batch) -> dict[str, Any]:
        """Score one batch.

        Args:
            params: the model's parameters.
            model_state: its buffers.
            batch: a padded batch.

        Returns:
            ``losses`` (per utterance, each divided by its transcript's length), ``feasible``
            (whether the transcript fits the output frames), ``transcripts``, ``references``.
        """
        out = self._step(params, model_state, batch)
        target_lengths = batch.target_lengths.detach().cpu()
        losses = out.loss.detach().float().cpu() / target_lengths.clamp_min(1)
        targets = batch.targets.detach().cpu()
        needed = torch.tensor([ctc_frames_needed(t[:n]) for t, n in zip(targets, target_lengths)])
        return {"losses": losses, "feasible": needed <= self._frames.lengths,
                "transcripts": out.transcripts, "references": out.references}


def _batch_rows(dataset: Any, plan: list[int], scored: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-utterance rows of one scored batch (``index`` is the dataset index)."""
    rows = []
    for i, hyp, ref, loss, ok in zip(plan, scored["transcripts"], scored["references"],
                                     scored["losses"].tolist(), scored["feasible"].tolist()):
        c = error_counts([hyp], [ref])
        rows.append({"index": i, "counts": c,
                     "audio_filepath": str(dataset.utterances[i].audio_filepath),
                     "reference": ref, "prediction": hyp, "cer": c.cer, "wer": c.wer,
                     "loss": loss if ok and math.isfinite(loss) else None})
    return rows


def _summary(rows: list[dict[str, Any]], dataset: Any) -> dict[str, Any]:
    """Corpus-level scores of the per-utterance rows (null when there are none)."""
    counts = sum((r["counts"] for r in rows), ErrorCounts())
    losses = [r["loss"] for r in rows if r["loss"] is not None]
    skipped = dict(getattr(dataset, "skipped", {}) or {})
    n = len(rows)
    return {
        "cer": counts.cer if n else None,
        "wer": counts.wer if n else None,
        "loss": sum(losses) / len(losses) if losses else None,
        "n": n,
        "loss_excluded": n - len(losses),
        "skipped": sum(skipped.values()),
        "skipped_reasons": {k: v for k, v in sorted(skipped.items()) if v},
        **counts._asdict(),
    }


def evaluate_dataset(
    scorer: Scorer,
    params: Any,
    model_state: Any,
    dataset: Any,
    device: torch.device,
    *,
    batch_size: int | None = None,
    max_batch_seconds: float | None = None,
    output: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Corpus-level loss, CER and WER of a model over a :class:`fctc.data.SpeechDataset`.

    Args:
        scorer: the model's :class:`Scorer` (its decoder decodes).
        params: the model's parameters.
        model_state: the model's buffers.
        dataset: the utterances.
        device: where the model runs.
        batch_size: utterances per batch, or
        max_batch_seconds: audio seconds per batch (batches of similar durations).
        output: write one JSON line per scored utterance here, in manifest order (file,
            reference, prediction, its own CER, WER and loss, null when left out).

    Returns:
        ``{"cer", "wer", "loss", "n", "loss_excluded", "skipped", "skipped_reasons",
        "char_edits", "chars", "word_edits", "words"}``: ``loss`` is the mean over the
        utterances whose transcript fits their frames (``loss_excluded`` counts the others,
        and any whose loss is not finite, as a diverged model gives); ``cer``, ``wer`` and
        ``loss`` are None when nothing was scored, so the result is valid JSON.
    """
    plans = _data.bucket_batches(dataset.durations, batch_size=batch_size,
                                 max_batch_seconds=max_batch_seconds, shuffle=False)
    rows: list[dict[str, Any]] = []
    for plan in plans:
        items = [dataset[i] for i in plan]
        bad = [it for it in items if isinstance(it, _data.Skipped)]
        if bad:
            dataset.record_skipped(bad)
        kept = [i for i, it in zip(plan, items) if not isinstance(it, _data.Skipped)]
        if not kept:
            continue
        batch = dataset.collate([it for it in items if not isinstance(it, _data.Skipped)])
        if device.type != "cpu":
            batch = _tree.map(lambda x: x.to(device), batch)
        rows.extend(_batch_rows(dataset, kept, scorer(params, model_state, batch)))
    rows.sort(key=lambda r: r["index"])
    if output is not None:
        with open(output, "w", encoding="utf-8") as f:
            for row in rows:
                public = {k: v for k, v in row.items() if k not in ("index", "counts")}
                f.write(json.dumps(public, ensure_ascii=False) + "\n")
    return _summary(rows, dataset)


def evaluate_manifest(
    recognizer: Recognizer | str | os.PathLike,
    manifest: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    max_batch_seconds: float | None = 64.0,
    batch_size: int | None = None,
    decoder: Any = None,
) -> dict[str, Any]:
    """Evaluate a model on a NeMo manifest: CER, WER, loss and counts, and how it decoded.

    Args:
        recognizer: a loaded checkpoint (:func:`fctc.inference.load`), or a checkpoint or run
            folder to load on the CPU.
        manifest: the NeMo JSONL manifest.
        output: write one JSON line per utterance here.
        max_batch_seconds: audio seconds per batch (unless ``batch_size``).
        batch_size: utterances per batch.
        decoder: a decoder (:mod:`fctc.decode`); None: the checkpoint's default.

    Returns:
        ``{"manifest", "decoding", "cer", "wer", "loss", "n", ...}`` (see :func:`evaluate_dataset`).
    """
    if not isinstance(recognizer, Recognizer):
        recognizer = load(recognizer)
    decoder = decoder if decoder is not None else recognizer.decoder()
    dataset = _data.SpeechDataset(
        _data.read_manifest(manifest), recognizer.vocabulary,
        sample_rate=recognizer.sample_rate, on_error="skip",
    )
    scorer = Scorer(recognizer.model, recognizer.vocabulary, decode=decoder)
    result = evaluate_dataset(
        scorer, recognizer.params, recognizer.state, dataset, recognizer.device,
        batch_size=batch_size, max_batch_seconds=None if batch_size else max_batch_seconds,
        output=output,
    )
    return {"manifest": str(manifest), "decoding": decoder.options(), **result}


def transcribe_files(
    recognizer: Recognizer, files: Sequence[str | os.PathLike], decoder: Any = None
) -> list[tuple[str, str | None, str | None]]:
    """Transcripts of audio files, one per file; a file that cannot be read does not stop the rest.

    Args:
        recognizer: a loaded checkpoint (:func:`fctc.inference.load`).
        files: the audio files.
        decoder: a decoder (:mod:`fctc.decode`); None: the checkpoint's default.

    Returns:
        ``(file, transcript, error)`` per file, in order: ``error`` is None, or (with
        ``transcript`` None) why the file could not be read (missing, undecodable, empty).
    """
    decoder = decoder if decoder is not None else recognizer.decoder()
    out: list[tuple[str, str | None, str | None]] = []
    for f in files:
        if not Path(f).is_file():
            out.append((str(f), None, f"audio file {str(f)!r} does not exist"))
            continue
        try:
            out.append((str(f), recognizer.transcribe([f], decoder=decoder)[0], None))
        except _data.AudioError as e:
            out.append((str(f), None, str(e)))
    return out
