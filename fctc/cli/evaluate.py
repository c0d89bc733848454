"""``fctc eval`` and ``fctc transcribe``, and the corpus evaluation shared with ``fctc train``.

The loss of an evaluation is the mean per-utterance CTC loss (each divided by its transcript's
length, as training's) over the utterances whose transcript fits their output frames: an
utterance with more labels (plus repeats) than frames has an infinite loss, which CTC's
``zero_infinity`` would count as 0 and pull the mean down, so it is left out of the loss and
counted in ``loss_excluded``; it stays in CER and WER, which score its transcript like any
other. Nothing usable (every file missing, undecodable or empty) gives ``null`` scores, never
a perfect score on nothing.

Scores per group: the utterances are grouped by the value of one manifest field
(:func:`utterance_groups`; by default ``engine``, the synthesiser that spoke each utterance of
the bundled corpus, :func:`fctc.corpus.voice_group`, when the manifest names one), and each
group gets the same figures as the whole, from the sums of its own edit counts.
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
from ..train import WeightedMean, make_eval_step
from .errors import ConfigError

__all__ = ["NO_GROUP", "Scorer", "evaluate_dataset", "evaluate_manifest", "group_lines",
           "transcribe_files", "utterance_groups"]

NO_GROUP = "(none)"
"""The group of an utterance whose manifest line has no value (or null) for the grouping field."""

_AUTO_FIELD = "engine"  # group_by="auto": the bundled corpus's voice group (corpus.voice_group)


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
        loss_fn: an evaluation-mode loss function whose statistics are reported too
            (``make_eval_step(..., loss_fn=)``), or None.
    """

    def __init__(self, model: Model, vocabulary: Vocabulary, *, decode: Any = None,
                 precision: str = "fp32", jit: bool = False, loss_fn: Any = None):
        self._frames = _FrameCounts(decode or vocabulary.decode_prediction)
        self._step = make_eval_step(model, vocabulary, reduction="none", precision=precision,
                                    jit=jit, decode=self._frames, loss_fn=loss_fn)

    def __call__(self, params: Any, model_state: Any, batch: _data.Batch) -> dict[str, Any]:
        """Score one batch.

        Args:
            params: the model's parameters.
            model_state: its buffers.
            batch: a padded batch.

        Returns:
            ``losses`` (per utterance, each divided by its transcript's length), ``feasible``
            (whether the transcript fits the output frames), ``transcripts``, ``references``,
            and the loss function's ``stats`` and their ``weight`` (``{}`` and None without).
        """
        out = self._step(params, model_state, batch)
        target_lengths = batch.target_lengths.detach().cpu()
        losses = out.loss.detach().float().cpu() / target_lengths.clamp_min(1)
        targets = batch.targets.detach().cpu()
        needed = torch.tensor([ctc_frames_needed(t[:n]) for t, n in zip(targets, target_lengths)])
        return {"losses": losses, "feasible": needed <= self._frames.lengths,
                "transcripts": out.transcripts, "references": out.references,
                "stats": out.stats or {}, "weight": out.weight}


def _group_name(value: Any) -> str:
    """The group a field's value names: a string itself, another value its JSON text."""
    if value is None:
        return NO_GROUP
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def utterance_groups(
    utterances: Sequence[_data.Utterance], group_by: str | None = "auto"
) -> tuple[str | None, list[str] | None]:
    """The group each utterance is scored in: the value of one of its manifest fields.

    Args:
        utterances: the utterances (their ``fields``, :class:`fctc.data.Utterance`).
        group_by: the manifest field whose value names the group; ``"auto"``: ``engine`` (the
            bundled corpus's voice group, :func:`fctc.corpus.voice_group`) when some line has
            it, else no groups; None: no groups.

    Returns:
        ``(field, names)``, one name per utterance, or ``(None, None)`` for no groups. A string
        value is its group's name, another value (a number, a list) its JSON text; a line
        without the field, or with null, is in the group :data:`NO_GROUP`.

    Raises:
        ConfigError: ``group_by`` names a field that no line has a value for.
    """
    if group_by is None:
        return None, None
    field = _AUTO_FIELD if group_by == "auto" else group_by
    if not any(u.fields.get(field) is not None for u in utterances):
        if group_by == "auto":
            return None, None
        where = ", ".join(sorted({str(u.manifest) for u in utterances if u.manifest}))
        have = ", ".join(sorted({k for u in utterances for k in u.fields})) or "none"
        raise ConfigError(
            f"cannot group by {field!r}: no line of {where or 'the utterances'} has it (their "
            f"other fields: {have}); group by one of those, or not at all (--group-by none, "
            "group_by=None)"
        )
    return field, [_group_name(u.fields.get(field)) for u in utterances]


def group_lines(result: dict[str, Any], prefix: str) -> list[str]:
    """One line per group of an evaluation result, as ``fctc train`` and ``fctc eval`` log them.

    Args:
        result: a result of :func:`evaluate_dataset`.
        prefix: what the lines begin with (``"test"``).

    Returns:
        ``"<prefix> <field>=<group>: CER 2.87%, WER 8.00% on 150 utterances"`` per group, in
        the result's order; none without groups.
    """
    lines = []
    for name, g in (result.get("groups") or {}).items():
        noun = "utterance" if g["n"] == 1 else "utterances"
        lines.append(f"{prefix} {result['group_by']}={name}: CER {100 * g['cer']:.2f}%, "
                     f"WER {100 * g['wer']:.2f}% on {g['n']} {noun}")
    return lines


def _batch_rows(dataset: Any, plan: list[int], scored: dict[str, Any],
                groups: list[str] | None) -> list[dict[str, Any]]:
    """The per-utterance rows of one scored batch (``index`` is the dataset index)."""
    rows = []
    for i, hyp, ref, loss, ok in zip(plan, scored["transcripts"], scored["references"],
                                     scored["losses"].tolist(), scored["feasible"].tolist()):
        c = error_counts([hyp], [ref])
        rows.append({"index": i, "counts": c,
                     "audio_filepath": str(dataset.utterances[i].audio_filepath),
                     "reference": ref, "prediction": hyp, "cer": c.cer, "wer": c.wer,
                     "loss": loss if ok and math.isfinite(loss) else None})
        if groups is not None:
            rows[-1]["group"] = groups[i]
    return rows


def _scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """CER, WER, loss and counts of some per-utterance rows (null rates when there are none)."""
    counts = sum((r["counts"] for r in rows), ErrorCounts())
    losses = [r["loss"] for r in rows if r["loss"] is not None]
    n = len(rows)
    return {
        "cer": counts.cer if n else None,
        "wer": counts.wer if n else None,
        "loss": sum(losses) / len(losses) if losses else None,
        "n": n,
        "loss_excluded": n - len(losses),
        **counts._asdict(),
    }


def _summary(rows: list[dict[str, Any]], dataset: Any, field: str | None) -> dict[str, Any]:
    """Corpus-level scores of the per-utterance rows, and per group when ``field`` is set."""
    scores = _scores(rows)
    skipped = dict(getattr(dataset, "skipped", {}) or {})
    groups = None
    if field is not None:
        names = sorted({r["group"] for r in rows})
        groups = {name: _scores([r for r in rows if r["group"] == name]) for name in names}
    return {
        **{k: v for k, v in scores.items() if k not in ErrorCounts._fields},
        "skipped": sum(skipped.values()),
        "skipped_reasons": {k: v for k, v in sorted(skipped.items()) if v},
        **{k: scores[k] for k in ErrorCounts._fields},
        "group_by": field,
        "groups": groups,
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
    group_by: str | None = "auto",
) -> dict[str, Any]:
    """Corpus-level loss, CER and WER of a model over a :class:`fctc.data.SpeechDataset`,
    overall and per group.

    Args:
        scorer: the model's :class:`Scorer` (its decoder decodes).
        params: the model's parameters.
        model_state: the model's buffers.
        dataset: the utterances.
        device: where the model runs.
        batch_size: utterances per batch, or
        max_batch_seconds: audio seconds per batch (batches of similar durations).
        output: write one JSON line per scored utterance here, in manifest order (file,
            reference, prediction, its own CER, WER and loss, null when left out; and its
            ``group`` when grouping).
        group_by: the manifest field to score by too (see :func:`utterance_groups`):
            ``"auto"`` (``engine`` when the manifest has it), a field, or None.

    Returns:
        ``{"cer", "wer", "loss", "n", "loss_excluded", "skipped", "skipped_reasons",
        "char_edits", "chars", "word_edits", "words", "group_by", "groups"}``: ``loss`` is
        the mean over the utterances whose transcript fits their frames (``loss_excluded``
        counts the others, and any whose loss is not finite, as a diverged model gives);
        ``cer``, ``wer`` and ``loss`` are None when nothing was scored, so the result is
        valid JSON. ``groups`` is ``{group: {"cer", "wer", "loss", "n", "loss_excluded",
        "char_edits", ...}}`` over the scored utterances of each group, sorted by name
        (skipped utterances are counted overall only), and ``group_by`` the field; both are
        None without groups. With a scorer whose loss function reports statistics, also
        ``"stats"`` (their means over the batches, weighted by the weights it returned) and
        ``"weight"`` (the total).

    Raises:
        ConfigError: ``group_by`` names a field that no utterance has.
    """
    field, groups = utterance_groups(dataset.utterances, group_by)
    plans = _data.bucket_batches(dataset.durations, batch_size=batch_size,
                                 max_batch_seconds=max_batch_seconds, shuffle=False)
    rows: list[dict[str, Any]] = []
    stats = WeightedMean()
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
        scored = scorer(params, model_state, batch)
        rows.extend(_batch_rows(dataset, kept, scored, groups))
        if scored.get("stats"):
            stats.add(scored["stats"], scored["weight"])
    rows.sort(key=lambda r: r["index"])
    if output is not None:
        with open(output, "w", encoding="utf-8") as f:
            for row in rows:
                public = {k: v for k, v in row.items() if k not in ("index", "counts")}
                f.write(json.dumps(public, ensure_ascii=False) + "\n")
    result = _summary(rows, dataset, field)
    if stats:
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
    group_by: str | None = "auto",
) -> dict[str, Any]:
    """Evaluate a model on a NeMo manifest: CER, WER, loss and counts, overall and per group,
    and how it decoded.

    Args:
        recognizer: a loaded checkpoint (:func:`fctc.inference.load`), or a checkpoint or run
            folder to load on the CPU.
        manifest: the NeMo JSONL manifest.
        output: write one JSON line per utterance here.
        max_batch_seconds: audio seconds per batch (unless ``batch_size``).
        batch_size: utterances per batch.
        decoder: a decoder (:mod:`fctc.decode`); None: the checkpoint's default.
        group_by: the manifest field to score by too: ``"auto"`` (``engine`` when the
            manifest has it), a field, or None (see :func:`utterance_groups`).

    Returns:
        ``{"manifest", "decoding", "cer", "wer", "loss", "n", ..., "group_by", "groups"}``
        (see :func:`evaluate_dataset`).

    Raises:
        ConfigError: ``group_by`` names a field that no line of the manifest has.
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
        output=output, group_by=group_by,
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
