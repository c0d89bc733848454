"""``fctc train``: the training loop behind the command line.

The loop is a plain ``for`` over batches around :func:`fctc.train.make_train_step`; all the
rest is bookkeeping that makes a run pleasant and exactly resumable:

* the data order is a function of ``(seed, epoch)`` (:func:`fctc.data.bucket_batches`), and the
  position is ``(epoch, batch)``; randomness inside the step comes from the train state's key
  folded with the step number; so a run resumed from ``last/`` replays exactly what a straight
  run would have done, bit for bit;
* ``metrics.csv`` (and TensorBoard when installed), validation CER/WER every ``eval_every``
  steps, ``best/`` (lowest validation CER) and ``last/`` checkpoints, ``curves.png`` and the
  test-split result ``test_results.json`` at the end;
* Ctrl-C finishes the current step, saves ``last/`` and exits with status 130; ``--resume``
  continues from there. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as _ckpt
from .. import data as _data
from .. import optim
from .. import random as _random
from .. import tree as _tree
from ..text import Vocabulary
from ..train import check_nonfinite, make_eval_step, make_train_step
from .checkpoints import (
    TRAIN_STATE_FILE,
    load_checkpoint_model,
    resolve_checkpoint,
    save_checkpoint_dir,
)
from .config import ConfigError, dump_config
from .decoding import write_decoding_files
from .evaluate import evaluate_dataset
from .logs import MetricsLog, plot_curves
from .progress import Progress
from .recipe import (
    build_feature_cache,
    build_model,
    build_optimizer,
    build_vocabulary,
    output_frames,
    total_updates,
)

__all__ = ["Trainer", "resolve_device", "default_out_dir", "INTERRUPTED_EXIT"]

INTERRUPTED_EXIT = 130
"""Exit status of a run stopped by Ctrl-C (after saving ``last/``), as shells report SIGINT."""


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (or ``cuda:N``) or ``auto`` (cuda when available) as a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or name.startswith("cuda"):
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for but CUDA is not available; use cpu or auto")
        return torch.device(name)
    raise ConfigError(f"device must be cpu, cuda or auto, got {name!r}")


def default_out_dir() -> Path:
    """``./runs/<YYYYmmdd-HHMMSS>``: a fresh folder per run, sorted by start time."""
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _manifest(value: Any, split: str) -> Path | None:
    if value is None:
        return None
    if value == "bundled":
        return Path(_data.bundled_manifests()[split])
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"data.{split}: manifest {path} does not exist")
    return path


def _to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    return _tree.map(lambda x: x.to(device, non_blocking=True), batch)


class Trainer:
    """One training run: built from a configuration (or a checkpoint to resume), run by :meth:`run`.

    Args:
      config: the merged configuration (:func:`fctc.cli.config.load_config`).
      out_dir: the run folder (metrics, checkpoints, plot, results).
      device: the torch device to train on.
      resume: a resumable checkpoint folder (``last/``) to continue from, or None.
      log: where progress messages go (the bar itself writes to stderr).
    """

    def __init__(self, config: dict[str, Any], out_dir: Path, device: torch.device,
                 resume: Path | None = None, log=print, progress: bool = True):
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = device
        self.log = log
        self.show_progress = progress
        self.interrupted = False
        self._sigint_count = 0
        data_cfg = config["data"]
        train_cfg = config["training"]
        self.sample_rate = int(data_cfg["sample_rate"])

        resume_meta = None
        if resume is not None:
            resume_meta = _ckpt.read_metadata(resume / TRAIN_STATE_FILE)["metadata"]

        # Data: manifests, vocabulary, datasets, batches per epoch.
        limit = data_cfg["limit"]
        self.train_utts = self._read(_manifest(data_cfg["train"], "train"), limit)
        if resume_meta is not None:
            self.vocabulary = Vocabulary.from_dict(resume_meta["vocabulary"])
        else:
            self.vocabulary = build_vocabulary(config, [u.text for u in self.train_utts])
        self.max_labels = output_frames(config["model"])
        self.train_set = self._dataset(self.train_utts)
        val_path = _manifest(data_cfg["validation"], "validation")
        self.val_set = self._dataset(self._read(val_path, limit)) if val_path else None
        self.test_path = _manifest(data_cfg["test"], "test")
        self.batches_per_epoch = len(self._epoch_batches(0))
        if self.batches_per_epoch == 0:
            raise ConfigError("the training split yields no batches; check data.train and data.limit")

        self.total_steps = train_cfg["max_steps"] or train_cfg["epochs"] * self.batches_per_epoch
        if not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ConfigError(f"training.max_steps must be a positive int, got {self.total_steps!r}")
        accumulate = train_cfg["accumulate_batches"]

        # Model, optimiser, step functions.
        self.cache_features = bool(data_cfg["cache_features"])
        self.model = build_model(config["model"], self.vocabulary)
        train_model = build_model(config["model"], self.vocabulary, self.cache_features)
        tx, self.schedule = build_optimizer(config, total_updates(self.total_steps, accumulate))
        self.step_fn = make_train_step(
            train_model, tx, blank=self.vocabulary.blank_idx, precision=train_cfg["precision"],
            jit=bool(train_cfg["jit"]), donate=bool(train_cfg["donate"]),
        )
        self.eval_step = make_eval_step(
            self.model, self.vocabulary, precision=train_cfg["precision"], jit=bool(train_cfg["jit"])
        )
        state = self.step_fn.init_state(_random.key(int(config["seed"])), device=device)
        self.epoch, self.batch_index = 0, 0
        self.best_cer = math.inf
        self.elapsed = 0.0
        history: list[dict[str, Any]] = []
        if resume is not None:
            state, meta = _ckpt.load_train_state(resume / TRAIN_STATE_FILE, state, require_finite=True)
            self.epoch, self.batch_index = int(meta["epoch"]), int(meta["batch"])
            best = meta.get("best_cer")
            self.best_cer = math.inf if best is None else float(best)
            self.elapsed = float(meta.get("elapsed_s", 0.0))
            history = list(meta.get("history", []))
        self.state = state
        self.cache = None
        if self.cache_features:
            front_state = _tree.map(lambda x: x.cpu(), state.model_state["audio_transform"])
            self.cache = build_feature_cache(config["model"], self.train_set, front_state, int(config["seed"]))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, self.out_dir / "config.yaml")
        write_decoding_files(self.out_dir, [u.text for u in self.train_utts], self.vocabulary, config)
        self.metrics = MetricsLog(self.out_dir, history)

    # -- data ----------------------------------------------------------------------------

    @staticmethod
    def _read(path: Path, limit: int | None):
        utts = _data.read_manifest(path)
        if limit is not None:
            utts = utts[: int(limit)]
        if not utts:
            raise ConfigError(f"manifest {path} holds no utterances")
        return utts

    def _dataset(self, utterances):
        return _data.SpeechDataset(
            utterances, self.vocabulary, sample_rate=self.sample_rate,
            on_error=self.config["data"]["on_error"], max_labels=self.max_labels,
        )

    def _batching(self) -> dict[str, Any]:
        d = self.config["data"]
        return {"batch_size": d["batch_size"], "max_batch_seconds": d["max_batch_seconds"]}

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        return _data.bucket_batches(
            self.train_set.durations, shuffle=True, seed=int(self.config["seed"]), epoch=epoch, **self._batching()
        )

    def _batches(self, epoch: int, start: int):
        """``(batch, position)`` pairs of an epoch's plan from batch ``start`` on."""
        plan = self._epoch_batches(epoch)
        if self.cache is not None:
            yield from self.cache.iterate(plan, start, epoch)
            return
        loader = _data.make_loader(
            self.train_set, plan, num_workers=int(self.config["data"]["num_workers"]),
            start_batch=start,
        )
        for batch in loader:
            yield batch, loader.position

    # -- checkpoints ---------------------------------------------------------------------

    def _model_metadata(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "vocabulary": self.vocabulary.to_dict(),
            "sample_rate": self.sample_rate,
            "step": int(self.state.step),
        }

    def save_last(self) -> Path:
        """Save the resumable ``last/`` checkpoint: train state, data position, history."""
        epoch, batch = self.epoch, self.batch_index
        if batch >= self.batches_per_epoch:
            epoch, batch = epoch + 1, 0
        meta = {
            **self._model_metadata(),
            "epoch": epoch,
            "batch": batch,
            "best_cer": None if math.isinf(self.best_cer) else self.best_cer,
            "elapsed_s": self.elapsed,
            "history": self.metrics.rows,
        }
        return save_checkpoint_dir(
            self.out_dir / "last", self.state.params, self.state.model_state,
            self._model_metadata(), self.state, meta,
        )

    def save_best(self) -> Path:
        """Save the model alone to ``best/`` (the lowest validation CER so far)."""
        return save_checkpoint_dir(
            self.out_dir / "best", self.state.params, self.state.model_state, self._model_metadata()
        )

    # -- Ctrl-C --------------------------------------------------------------------------

    def _on_sigint(self, signum, frame) -> None:
        """First Ctrl-C: stop after this step and save; second: abort at once."""
        self._sigint_count += 1
        if self._sigint_count > 1:
            raise KeyboardInterrupt
        self.interrupted = True
        print("\ninterrupted: saving last/ after this step (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    # -- the loop ------------------------------------------------------------------------

    def validate(self) -> dict[str, float] | None:
        """Loss, CER and WER on the validation split (None when there is none)."""
        if self.val_set is None:
            return None
        result = evaluate_dataset(
            self.eval_step, self.state.params, self.state.model_state, self.val_set,
            self.device, **self._batching(),
        )
        return {"val_loss": result["loss"], "val_cer": result["cer"], "val_wer": result["wer"]}

    def _lr(self) -> float:
        """The learning rate of the last update, as the optimiser state holds it."""
        return float(optim.find_hyperparams(self.state.opt_state)["learning_rate"])

    def run(self) -> bool:
        """Train until ``total_steps`` (or Ctrl-C). Returns True when the run is complete."""
        cfg = self.config["training"]
        log_every, eval_every = int(cfg["log_every"]), int(cfg["eval_every"])
        ckpt_every, max_bad = int(cfg["checkpoint_every"]), int(cfg["max_nonfinite"])
        step = int(self.state.step)
        if step == 0:
            n = _tree.size(self.state.params)
            self.log(
                f"training {self.config['model']['name']} ({n:,} parameters) on "
                f"{len(self.train_set)} utterances, {self.batches_per_epoch} batches per epoch, "
                f"{self.total_steps} steps, device {self.device}; output in {self.out_dir}"
            )
        else:
            self.log(f"resuming at step {step} (epoch {self.epoch}, batch {self.batch_index}); "
                     f"output in {self.out_dir}")
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        bar = Progress(self.total_steps, step, enabled=self.show_progress)
        window_losses, window_norms, window_utts = [], [], 0
        t_window = time.perf_counter()
        t_run = time.perf_counter()
        elapsed0 = self.elapsed
        try:
            while step < self.total_steps and not self.interrupted:
                for batch, position in self._batches(self.epoch, self.batch_index):
                    self.state, m = self.step_fn(self.state, _to_device(batch, self.device))
                    step += 1
                    self.batch_index = position
                    window_losses.append(m["loss"].detach())
                    window_norms.append(m["grad_norm"].detach())
                    window_utts += int(batch.audio.shape[0])
                    self.elapsed = elapsed0 + time.perf_counter() - t_run
                    if step % log_every == 0 or step == self.total_steps:
                        check_nonfinite(self.state, max_bad)
                        now = time.perf_counter()
                        losses = torch.stack(window_losses).float()
                        finite = torch.isfinite(losses)
                        row = {
                            "step": step, "epoch": self.epoch, "kind": "train",
                            "elapsed_s": round(self.elapsed, 3),
                            "loss": float(losses[finite].mean()) if finite.any() else float("nan"),
                            "grad_norm": float(torch.stack(window_norms).float().nanmean()),
                            "lr": self._lr(),
                            "utterances_per_s": window_utts / max(now - t_window, 1e-9),
                            "nonfinite": int(self.state.nonfinite_total),
                        }
                        self.metrics.append(row)
                        bar.postfix(loss=row["loss"], lr=row["lr"], utt_s=row["utterances_per_s"])
                        window_losses, window_norms, window_utts = [], [], 0
                        t_window = now
                    bar.update(step)
                    final = step == self.total_steps
                    if step % eval_every == 0 or final:
                        self._validate_and_save(step)
                        t_window = time.perf_counter()
                    elif step % ckpt_every == 0:
                        self.save_last()
                    if self.interrupted or final:
                        break
                else:
                    self.epoch += 1
                    self.batch_index = 0
            if self.interrupted:
                self.elapsed = elapsed0 + time.perf_counter() - t_run
                path = self.save_last()
                bar.close()
                self.log(f"stopped at step {step}; saved {path}. Continue with: "
                         f"fctc train --resume {self.out_dir}")
                return False
        finally:
            bar.close()
            signal.signal(signal.SIGINT, previous)
        return True

    def _validate_and_save(self, step: int) -> None:
        val = self.validate()
        if val is not None:
            self.metrics.append({"step": step, "epoch": self.epoch, "kind": "validation",
                                 "elapsed_s": round(self.elapsed, 3), **val})
            self.log(f"step {step}: validation loss {val['val_loss']:.4f}, "
                     f"CER {100 * val['val_cer']:.2f}%, WER {100 * val['val_wer']:.2f}%")
            if val["val_cer"] < self.best_cer:
                self.best_cer = val["val_cer"]
                self.save_best()
        else:
            self.save_best()
        self.save_last()

    def finish(self) -> dict[str, Any] | None:
        """Plot the curves and evaluate the best checkpoint on the test split (saved as JSON)."""
        self.metrics.close()
        plot = plot_curves(self.metrics.rows, self.out_dir / "curves.png")
        self.log(f"curves: {plot}")
        if self.test_path is None:
            return None
        loaded = load_checkpoint_model(resolve_checkpoint(self.out_dir), self.device)
        test_set = _data.SpeechDataset(
            self._read(self.test_path, self.config["data"]["limit"]), loaded.vocabulary, sample_rate=self.sample_rate,
            on_error=self.config["data"]["on_error"], max_labels=self.max_labels,
        )
        eval_step = make_eval_step(loaded.model, loaded.vocabulary,
                                   precision=self.config["training"]["precision"])
        result = evaluate_dataset(
            eval_step, loaded.params, loaded.state, test_set, self.device,
            output=self.out_dir / "test_predictions.jsonl", **self._batching(),
        )
        result = {"split": "test", "manifest": str(self.test_path),
                  "checkpoint": str(resolve_checkpoint(self.out_dir)),
                  "step": int(loaded.metadata.get("step", -1)), **result}
        (self.out_dir / "test_results.json").write_text(json.dumps(result, indent=2) + "\n")
        return result
