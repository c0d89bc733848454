"""Run logs: the metrics CSV, optional TensorBoard events, and the curves plot.

Every row of ``metrics.csv`` is either a training row (the mean loss and gradient norm over
the last ``log_every`` steps, the learning rate, utterances per second) or a validation row
(loss, CER, WER); the columns of the other kind are left empty. A loss function that reports
statistics (:class:`fctc.train.LossOutput`) adds columns: ``train/<key>`` and ``weight`` (the
window's weighted means and summed weight) and ``val_<key>`` and ``val_weight``; they appear
when first logged (the file is then rewritten with the wider header). The history also
travels in the resumable checkpoint, with the steps of the training row not written yet
(:class:`LogWindow`), so ``--resume`` rewrites the CSV exactly as it stood at the checkpoint
and goes on with the same rows an uninterrupted run writes.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..train import WeightedMean

__all__ = ["COLUMNS", "LogWindow", "MetricsLog", "plot_curves", "stat_columns", "tensorboard_available"]

COLUMNS = (
    "step", "epoch", "kind", "elapsed_s", "loss", "grad_norm", "lr", "utterances_per_s",
    "nonfinite", "val_loss", "val_cer", "val_wer",
)
_RESERVED = ("loss", "cer", "wer", "weight")


def _is_stat_column(name: str) -> bool:
    return name.startswith("train/") or name.startswith("val_") or name == "weight"


def stat_columns(stats: dict[str, Any], weight: Any, validation: bool) -> dict[str, float]:
    """A row's statistics columns: ``train/<key>`` and ``weight``, or ``val_<key>`` and
    ``val_weight``.

    Args:
        stats: key -> value (numbers or 0-d tensors).
        weight: their summed weight, or None.
        validation: the columns of a validation row.

    Returns:
        column -> float.

    Raises:
        ValueError: a key that would take a column fctc writes itself (loss, cer, wer, weight).
    """
    clash = sorted(k for k in stats if k in _RESERVED)
    if clash:
        raise ValueError(
            f"loss_fn: the statistics {clash} are named like columns fctc train writes itself "
            f"(loss, val_loss, val_cer, val_wer, weight); rename them, e.g. {clash[0]!r} -> "
            f"{clash[0] + '_stat'!r}"
        )
    prefix = "val_" if validation else "train/"
    out = {prefix + k: float(v) for k, v in stats.items()}
    if weight is not None:
        out["val_weight" if validation else "weight"] = float(weight)
    return out


def tensorboard_available() -> bool:
    """Whether TensorBoard events can be written (the optional ``tensorboard`` extra).

    Returns:
        True when ``torch.utils.tensorboard`` and the ``tensorboard`` package import.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception:
        return False
    return True


class MetricsLog:
    """Append-only metrics of a run: ``metrics.csv`` in ``out_dir``, TensorBoard when available.

    ``history`` (rows from a checkpoint) is written out first, replacing the file, so a resumed
    run's CSV holds exactly the rows up to its checkpoint.
    """

    def __init__(self, out_dir: str | os.PathLike, history: list[dict[str, Any]] | None = None,
                 tensorboard: bool = True):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = [dict(r) for r in (history or [])]
        self.columns = list(COLUMNS)
        for row in self.rows:
            self.columns += [c for c in row if c not in self.columns]
        self._rewrite()
        self._tb = None
        if tensorboard and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            start = int(self.rows[-1]["step"]) + 1 if self.rows else 0
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=start)

    def _rewrite(self) -> None:
        """Write the whole CSV (header and every row) from :attr:`rows`."""
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow(self._cells(row))

    def _cells(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for c in self.columns:
            v = row.get(c)
            if isinstance(v, float):
                v = f"{v:.6g}" if math.isfinite(v) else str(v)
            out[c] = "" if v is None else v
        return out

    def append(self, row: dict[str, Any]) -> None:
        """Record one row in the history, the CSV and TensorBoard.

        Args:
            row: column -> value, keys from :data:`COLUMNS` or statistics columns
                (:func:`stat_columns`); missing ones are left empty.

        Raises:
            ValueError: a key that is neither.
        """
        unknown = sorted(k for k in row if k not in COLUMNS and not _is_stat_column(k))
        if unknown:
            raise ValueError(
                f"MetricsLog: unknown columns {unknown}; allowed: {list(COLUMNS)} and the "
                "statistics columns train/<key>, val_<key>, weight"
            )
        self.rows.append(dict(row))
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self.columns).writerow(self._cells(row))
        if self._tb is not None:
            self._add_scalars(row)

    def _add_scalars(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        names = ["loss", "grad_norm", "lr", "utterances_per_s", "val_loss", "val_cer", "val_wer"]
        names += [c for c in row if c not in COLUMNS]
        for name in names:
            v = row.get(name)
            if v is not None:
                if name.startswith("val_"):
                    tag = f"validation/{name[4:]}"
                else:
                    tag = name if name.startswith("train/") else f"train/{name}"
                self._tb.add_scalar(tag, float(v), step)
        self._tb.flush()

    def close(self) -> None:
        """Flush and close TensorBoard (the CSV is written row by row)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class LogWindow:
    """The steps since the last training row: their losses, gradient norms and utterances,
    and the weighted sums of a loss function's statistics (:class:`fctc.train.WeightedMean`).

    The values stay tensors until a row is made (no host synchronisation per step).
    :meth:`to_dict` / :meth:`from_dict` carry a partly filled window through a checkpoint, so
    a resumed run's next row averages the same steps an uninterrupted run's does.

    Args:
        losses: the losses of the steps so far.
        norms: their gradient norms.
        utterances: the utterances they trained on.
        stats: the statistics' ``{key: [weighted sum, summed weight]}`` so far.
    """

    def __init__(self, losses: list[Any] | None = None, norms: list[Any] | None = None,
                 utterances: int = 0, stats: dict[str, list[float]] | None = None):
        self.losses = list(losses or [])
        self.norms = list(norms or [])
        self.utterances = int(utterances)
        self.stats = WeightedMean()
        for k, (total, weight) in (stats or {}).items():
            self.stats.sums[k] = torch.tensor(total, dtype=torch.float32)
            self.stats.weights[k] = torch.tensor(weight, dtype=torch.float32)
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, utterances: int) -> None:
        """Record one step.

        Args:
            loss: its loss (a scalar tensor).
            grad_norm: its gradient norm.
            utterances: the utterances of its batch.
        """
        self.losses.append(loss.detach())
        self.norms.append(grad_norm.detach())
        self.utterances += int(utterances)

    def add_stats(self, metrics: dict[str, Any]) -> None:
        """Record one step's statistics (``stats/<key>`` with ``weight``; none: nothing).

        Args:
            metrics: the step's metrics.
        """
        self.stats.add_metrics(metrics)

    def __len__(self) -> int:
        return len(self.losses)

    @staticmethod
    def _stack(values: list[Any]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(v, dtype=torch.float32).cpu() for v in values])

    def row(self) -> dict[str, Any]:
        """The training-row values of the window, and a fresh start.

        Returns:
            ``loss`` (the mean of the finite losses; NaN when none is), ``grad_norm`` (the
            mean of the non-NaN norms), ``utterances_per_s`` (since the window started,
            or since :meth:`restart`), and the statistics' columns (:func:`stat_columns`).
        """
        losses = self._stack(self.losses)
        finite = torch.isfinite(losses)
        now = time.perf_counter()
        row = {
            "loss": float(losses[finite].mean()) if finite.any() else float("nan"),
            "grad_norm": float(self._stack(self.norms).nanmean()),
            "utterances_per_s": self.utterances / max(now - self.started, 1e-9),
        }
        if self.stats:
            row.update(stat_columns(self.stats.means(), self.stats.total_weight(), validation=False))
        self.losses, self.norms, self.utterances, self.started = [], [], 0, now
        self.stats = WeightedMean()
        return row

    def restart(self) -> None:
        """Start the throughput clock again (after a validation pass, which is not training)."""
        self.started = time.perf_counter()

    def to_dict(self) -> dict[str, Any]:
        """The window as JSON values, for a checkpoint's metadata.

        Returns:
            ``{"losses", "grad_norms", "utterances", "stats"}`` (float32 values as exact floats).
        """
        stats = {k: [float(self.stats.sums[k]), float(self.stats.weights[k])] for k in self.stats.sums}
        return {"losses": [float(x) for x in self.losses],
                "grad_norms": [float(x) for x in self.norms], "utterances": self.utterances,
                "stats": stats}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "LogWindow":
        """The window :meth:`to_dict` saved (an empty one for None, as older checkpoints have).

        Args:
            values: what :meth:`to_dict` returned, or None.

        Returns:
            The window.
        """
        values = values or {}
        return cls(values.get("losses"), values.get("grad_norms"), values.get("utterances", 0),
                   values.get("stats"))


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Save a PNG of the training/validation loss and the validation CER/WER against steps.

    Args:
        rows: the metrics rows (as :class:`MetricsLog` holds them).
        path: the PNG to write.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("kind") == "train" and r.get("loss") is not None]
    val = [r for r in rows if r.get("kind") == "validation"]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if val:
        ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
        ax_err.plot([r["step"] for r in val], [100 * r["val_cer"] for r in val], "o-", label="CER")
        ax_err.plot([r["step"] for r in val], [100 * r["val_wer"] for r in val], "s--", label="WER")
    ax_loss.set(xlabel="step", ylabel="CTC loss", title="loss")
    ax_loss.set_yscale("log" if train and min(r["loss"] for r in train) > 0 else "linear")
    ax_err.set(xlabel="step", ylabel="error rate (%)", title="validation error rates")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
