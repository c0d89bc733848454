"""``fctc eval`` and ``fctc transcribe``, and the corpus evaluation shared with ``fctc train``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .. import data as _data
from .. import tree as _tree
from ..metrics import ErrorCounts, error_counts
from ..inference import Recognizer, load
from ..train import WeightedMean, make_eval_step

__all__ = ["evaluate_dataset", "evaluate_manifest", "transcribe_files"]


def evaluate_dataset(
    eval_step,
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

    Batches follow the manifest order (bucketed by duration, no shuffling).

    Args:
        eval_step: :func:`fctc.train.make_eval_step`'s step (its decoder decodes).
        params: the model's parameters.
        model_state: the model's buffers.
        dataset: the utterances.
        device: where the model runs.
        batch_size: utterances per batch, or
        max_batch_seconds: audio seconds per batch.
        output: write one JSON line per utterance (file, reference, prediction, its own CER
            and WER) here.

    Returns:
        ``{"cer", "wer", "loss", "n", "skipped", "char_edits", "chars", "word_edits",
        "words"}``; ``loss`` is the mean per-utterance loss; with an eval step whose loss
        function reports statistics, also ``"stats"`` (their weighted means) and ``"weight"``.
    """
    batches = _data.bucket_batches(
        dataset.durations, batch_size=batch_size, max_batch_seconds=max_batch_seconds,
        shuffle=False,
    )
    counts = ErrorCounts()
    stats = WeightedMean()
    loss_sum, n = 0.0, 0
    rows: list[dict[str, Any]] = []
    for plan in batches:
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
        out = eval_step(params, model_state, batch)
        size = len(kept)
        counts = counts + out.counts
        if out.stats:
            stats.add(out.stats, out.weight)
        loss_sum += float(out.loss) * size
        n += size
        if output is not None:
            for i, hyp, ref in zip(kept, out.transcripts, out.references):
                c = error_counts([hyp], [ref])
                rows.append({
                    "audio_filepath": str(dataset.utterances[i].audio_filepath),
                    "reference": ref, "prediction": hyp, "cer": c.cer, "wer": c.wer,
                })
    skipped = dict(getattr(dataset, "skipped", {}) or {})
    if output is not None:
        with open(output, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return _result(counts, loss_sum, n, skipped, stats)


def _result(counts: ErrorCounts, loss_sum: float, n: int, skipped: dict, stats: WeightedMean) -> dict:
    """:func:`evaluate_dataset`'s result dict."""
    result = {
        "cer": counts.cer,
        "wer": counts.wer,
        "loss": loss_sum / n if n else float("nan"),
        "n": n,
        "skipped": sum(skipped.values()) if skipped else 0,
        **counts._asdict(),
    }
    if stats:  # the loss function's statistics, weighted by its weights (fctc.train.WeightedMean)
        result["stats"] = {k: float(v) for k, v in stats.means().items()}
        result["weight"] = float(stats.total_weight())
    return result


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
    eval_step = make_eval_step(recognizer.model, recognizer.vocabulary, decode=decoder)
    result = evaluate_dataset(
        eval_step, recognizer.params, recognizer.state, dataset, recognizer.device,
        batch_size=batch_size, max_batch_seconds=None if batch_size else max_batch_seconds,
        output=output,
    )
    return {"manifest": str(manifest), "decoding": decoder.options(), **result}


def transcribe_files(
    recognizer: Recognizer, files: list[str | os.PathLike], decoder: Any = None
) -> list[str]:
    """Transcripts of audio files, one per file.

    Args:
        recognizer: a loaded checkpoint (:func:`fctc.inference.load`).
        files: the audio files.
        decoder: a decoder (:mod:`fctc.decode`); None: the checkpoint's default.

    Returns:
        One transcript per file, in order.

    Raises:
        FileNotFoundError: a file does not exist.
    """
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"audio file {f} does not exist")
    return recognizer.transcribe(list(files), decoder=decoder)
