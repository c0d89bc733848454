"""``fctc train``: the training loop behind the command line.

The loop is a plain ``for`` over batches around :func:`fctc.train.make_train_step`; all the
rest is bookkeeping that makes a run pleasant and exactly resumable:

* the data order is a function of ``(seed, epoch)`` (:func:`fctc.data.bucket_batches`), and the
  position is ``(epoch, batch)``; randomness inside the step comes from the train state's key
  folded with the step number; the steps since the last ``metrics.csv`` row travel in the
  checkpoint too; so a run resumed from ``last/`` replays exactly what a straight run would
  have done, bit for bit, metrics included;
* the run lasts ``training.max_steps`` steps, or else ``training.epochs`` whole epochs (their
  plans' batches, which are counted up front for the schedule);
* ``metrics.csv`` (and TensorBoard when installed), validation CER/WER every ``eval_every``
  steps, ``best/`` (lowest validation CER) and ``last/`` checkpoints, ``curves.png`` and the
  test-split result ``test_results.json`` at the end;
* Ctrl-C finishes the current step, saves ``last/`` and exits with status 130; ``--resume``
  continues from there. A second Ctrl-C aborts at once (not under ``torchrun``, whose agent
  forwards the first one: there every process stops after the same step);
* under ``torchrun`` every process trains on its shard of each batch
  (:mod:`fctc.cli.parallel`) and rank 0 alone writes.
"""

from __future__ import annotations

import gc
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
from .. import distributed as _dist
from .. import optim
from .. import random as _random
from .. import tree as _tree
from ..text import Vocabulary
from ..train import check_nonfinite, ctc_loss_fn, make_train_step
from .checkpoints import (
    TRAIN_STATE_FILE,
    load_checkpoint_model,
    resolve_checkpoint,
    save_checkpoint_dir,
)
from .config import ConfigError, dump_config
from .decoding import write_decoding_files
from .evaluate import Scorer, evaluate_dataset
from .logs import LogWindow, MetricsLog, plot_curves, stat_columns
from .parallel import DataParallel, World
from .progress import Progress
from .schedule_feed import ScheduleFeed
from .recipe import build_model, build_optimizer, total_updates
from .training_data import TrainingData, nothing_usable

__all__ = ["Trainer", "resolve_device", "default_out_dir", "INTERRUPTED_EXIT"]

INTERRUPTED_EXIT = 130
"""Exit status of a run stopped by Ctrl-C (after saving ``last/``), as shells report SIGINT."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda`` (or ``cuda:N``) or ``auto`` (cuda when available) as a torch device.

    Args:
        name: the device's name.
        local_rank: this process's rank on its machine under ``torchrun``: plain ``cuda``
            (and ``auto``) then means its own GPU.

    Returns:
        The device.

    Raises:
        ConfigError: an unknown name, or CUDA asked for and not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu" or name.startswith("cuda"):
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for but CUDA is not available; use cpu or auto")
        return torch.device(f"cuda:{local_rank}" if name == "cuda" and local_rank else name)
    raise ConfigError(f"device must be cpu, cuda or auto, got {name!r}")


def default_out_dir() -> Path:
    """``./runs/<YYYYmmdd-HHMMSS>``: a fresh folder per run, sorted by start time.

    Returns:
        The folder's path (not created).
    """
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    return _tree.map(lambda x: x.to(device, non_blocking=True), batch)


class Trainer:
    """One training run: built from a configuration (or a checkpoint to resume), run by :meth:`run`.

    Args:
        config: the merged, validated configuration (:func:`fctc.cli.config.load_config`).
        out_dir: the run folder (metrics, checkpoints, plot, results).
        device: the torch device to train on.
        resume: a resumable checkpoint folder (``last/``) to continue from, or None.
        log: where progress messages go (the bar itself writes to stderr).
        progress: show the progress bar.
        world: this process's place under ``torchrun`` (default: alone).
        loss_fn: ``loss_fn(model, vocabulary, train) -> loss function`` (the contract of
            :func:`fctc.train.make_train_step`) for a model in training (True) or evaluation
            (False) mode; None: the CTC loss. The statistics it reports are logged
            (``train/<key>``, ``val_<key>``) and may be a plateau's ``schedule.monitor``.

    Raises:
        ConfigError: a manifest that does not exist, or a model the config cannot build.
        RunError: a split with no usable utterance.
    """

    def __init__(self, config: dict[str, Any], out_dir: Path, device: torch.device,
                 resume: Path | None = None, log=print, progress: bool = True,
                 world: World | None = None, loss_fn=None):
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = device
        self.log = log
        self.world = world or World()
        self.writes = self.world.rank == 0
        self.show_progress = progress and self.writes
        self.interrupted = False
        self._stop_requested = False
        self._sigint_count = 0
        meta = None
        if resume is not None:
            meta = _ckpt.read_metadata(resume / TRAIN_STATE_FILE)["metadata"]
        vocabulary = Vocabulary.from_dict(meta["vocabulary"]) if meta is not None else None
        self.data = TrainingData(config, vocabulary)
        self.vocabulary, self.sample_rate = self.data.vocabulary, self.data.sample_rate
        self.loss_fn = loss_fn
        self.feed = ScheduleFeed(config["schedule"], self.data.val_set is not None, stats=loss_fn is not None)
        self._build_steps()
        history = self._init_state(resume)
        if self.cache_features:
            self.data.cache_features(config["model"], self.state.model_state["audio_transform"])
        self.metrics = self._open_outputs(history, resume is None) if self.writes else None

    def _build_steps(self) -> None:
        """The run's length, model, optimiser and step functions."""
        config, train_cfg = self.config, self.config["training"]
        epochs, max_steps = train_cfg["epochs"], train_cfg["max_steps"]
        self.epochs = None if max_steps else int(epochs)
        self.total_steps = max_steps or self.data.planned_steps(int(epochs))
        accumulate = train_cfg["accumulate_batches"]
        self.cache_features = bool(config["data"]["cache_features"])
        self.model = build_model(config["model"], self.vocabulary)
        train_model = build_model(config["model"], self.vocabulary, self.cache_features)
        run_epochs = self.epochs or math.ceil(self.total_steps / len(self.data.plan(0)))
        tx, self.schedule = build_optimizer(config, total_updates(self.total_steps, accumulate), run_epochs)
        self.parallel = DataParallel(self.world, self.device) if self.world.size > 1 else None
        loss_fn = None if self.loss_fn is None else self.loss_fn(train_model, self.vocabulary, True)
        if self.parallel is not None:
            tx = self.parallel.transformation(tx)
            loss_fn = self.parallel.loss_fn(loss_fn or ctc_loss_fn(train_model, self.vocabulary.blank_idx))
        if train_cfg["jit"] == "reduce-overhead" and self.device.type != "cuda":
            raise ConfigError(f"training.jit reduce-overhead (CUDA graphs) needs a CUDA device, "
                              f"not {self.device.type}; use true or step", key="training.jit")
        self.step_fn = make_train_step(
            train_model, tx, loss_fn, blank=self.vocabulary.blank_idx,
            precision=train_cfg["precision"],
            jit=train_cfg["jit"], donate=bool(train_cfg["donate"]),
        )
        self.eval_step = self._scorer(self.model, self.vocabulary, bool(train_cfg["jit"]))

    def _scorer(self, model, vocabulary: Vocabulary, jit: bool = False) -> Scorer:
        """The :class:`Scorer` of ``model``, with the evaluation-mode twin of a custom loss."""
        loss = None if self.loss_fn is None else self.loss_fn(model, vocabulary, False)
        return Scorer(model, vocabulary, precision=self.config["training"]["precision"], jit=jit,
                      loss_fn=loss)

    def _init_state(self, resume: Path | None) -> list[dict[str, Any]]:
        """The train state and position, fresh or from ``resume``; returns the metrics history."""
        state = self.step_fn.init_state(_random.key(int(self.config["seed"])), device=self.device)
        self.epoch, self.batch_index = 0, 0
        self.best_cer = math.inf
        self.elapsed = 0.0
        history: list[dict[str, Any]] = []
        meta: dict[str, Any] = {}
        if resume is not None:
            state, meta = _ckpt.load_train_state(resume / TRAIN_STATE_FILE, state, require_finite=True)
            self.epoch, self.batch_index = int(meta["epoch"]), int(meta["batch"])
            best = meta.get("best_cer")
            self.best_cer = math.inf if best is None else float(best)
            self.elapsed = float(meta.get("elapsed_s", 0.0))
            history = list(meta.get("history", []))
        if self.parallel is not None:
            state = _dist.broadcast_tree(state)
        self.state = state
        self.step = int(state.step)
        self.window = LogWindow.from_dict(meta.get("window"))
        self.validated_step = int(meta.get("validated_step", self.step))
        self._last_val: dict[str, Any] | None = None
        return history

    def _open_outputs(self, history: list[dict[str, Any]], fresh: bool) -> MetricsLog:
        """The run folder's config, lexicon, LM and metrics log (rank 0). A resumed run's
        ``config.yaml`` is rewritten with its next checkpoint, so the two always agree."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            dump_config(self.config, self.out_dir / "config.yaml")
        write_decoding_files(self.out_dir, [u.text for u in self.data.train_utts], self.vocabulary,
                             self.config)
        return MetricsLog(self.out_dir, history)

    # -- checkpoints ---------------------------------------------------------------------

    def _model_metadata(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "vocabulary": self.vocabulary.to_dict(),
            "sample_rate": self.sample_rate,
            "step": int(self.state.step),
        }

    def save_last(self) -> Path:
        """Save the resumable ``last/`` checkpoint: train state, data position, history.

        Returns:
            The checkpoint folder.

        Raises:
            RunError: it could not be written (the previous one is then intact).
        """
        epoch, batch = self.epoch, self.batch_index
        if batch >= len(self.data.plan(epoch)):
            epoch, batch = epoch + 1, 0
        meta = {
            **self._model_metadata(),
            "epoch": epoch,
            "batch": batch,
            "best_cer": None if math.isinf(self.best_cer) else self.best_cer,
            "elapsed_s": self.elapsed,
            "history": self.metrics.rows,
            "window": self.window.to_dict(),
            "validated_step": self.validated_step,
        }
        path = save_checkpoint_dir(
            self.out_dir / "last", self.state.params, self.state.model_state,
            self._model_metadata(), self.state, meta,
        )
        dump_config(self.config, self.out_dir / "config.yaml")  # what the checkpoint holds
        return path

    def save_best(self) -> Path:
        """Save the model alone to ``best/`` (the lowest validation CER so far).

        Returns:
            The checkpoint folder.
        """
        return save_checkpoint_dir(
            self.out_dir / "best", self.state.params, self.state.model_state, self._model_metadata()
        )

    # -- Ctrl-C --------------------------------------------------------------------------

    def _on_sigint(self, signum, frame) -> None:
        """First Ctrl-C: stop after this step and save; second (alone): abort at once."""
        self._sigint_count += 1
        if self._sigint_count > 1 and self.parallel is None:
            raise KeyboardInterrupt
        if self._sigint_count == 1 and self.writes:
            print("\ninterrupted: saving last/ after this step (Ctrl-C again to abort)",
                  file=sys.stderr, flush=True)
        self._stop_requested = True
        if self.parallel is None:
            self.interrupted = True

    # -- the loop ------------------------------------------------------------------------

    def validate(self) -> dict[str, float] | None:
        """Loss, CER and WER on the validation split.

        Returns:
            ``{"val_loss", "val_cer", "val_wer"}``, or None without a validation split.

        Raises:
            RunError: no validation utterance could be decoded.
        """
        if self.data.val_set is None:
            return None
        result = evaluate_dataset(
            self.eval_step, self.state.params, self.state.model_state, self.data.val_set,
            self.device, **self.data.batching(),
        )
        if not result["n"]:
            raise nothing_usable("validation", self.data.val_path, self.data.val_set)
        val = {"val_loss": result["loss"], "val_cer": result["cer"], "val_wer": result["wer"]}
        if "stats" in result:
            val.update(stat_columns(result["stats"], result["weight"], validation=True))
        return val

    def _lr(self) -> float:
        """The learning rate of the last update, as the optimiser state holds it (times the
        plateau's scale, when the schedule has one)."""
        lr = optim.find_hyperparams(self.state.opt_state)["learning_rate"]
        scale = optim.plateau_scale(self.state.opt_state)
        return float(lr if scale is None else lr * scale)

    def _done(self) -> bool:
        if self.epochs is None:
            return self.step >= self.total_steps
        return self.epoch >= self.epochs

    def run(self) -> bool:
        """Train until the run's end (or Ctrl-C).

        Returns:
            True when the run is complete, False when it was interrupted (``last/`` saved).
        """
        self._announce()
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        self.bar = Progress(self.total_steps, self.step, enabled=self.show_progress)
        self._t_run, self._elapsed0 = time.perf_counter(), self.elapsed
        self.window.restart()
        # What exists now (torch's import, the model, the data and its feature cache: hundreds
        # of thousands of objects) lives through the run: frozen, the garbage collector's full
        # passes skip it instead of walking it every few hundred steps (~180 ms each). Frozen
        # last, just before the try whose finally unfreezes it.
        gc.collect()
        gc.freeze()
        try:
            while not self._done() and not self.interrupted:
                self._train_epoch()
            if self.interrupted:
                path = self.save_last() if self.writes else None
                self.bar.close()
                self.log(f"stopped at step {self.step}; saved {path}. Continue with: "
                         f"fctc train --resume {self.out_dir}")
                return False
            self._complete()
        finally:
            self.bar.close()
            signal.signal(signal.SIGINT, previous)
            gc.unfreeze()
        return True

    def _announce(self) -> None:
        where = f"output in {self.out_dir}"
        if self.world.size > 1:
            where += f"; {self.world.size} processes"
        if self.step == 0:
            n = _tree.size(self.state.params)
            self.log(
                f"training {self.config['model']['name']} ({n:,} parameters) on "
                f"{len(self.data.train_set)} utterances, {len(self.data.plan(0))} batches per "
                f"epoch, {self.total_steps} steps, device {self.device}; {where}"
            )
        else:
            self.log(f"resuming at step {self.step} (epoch {self.epoch}, batch "
                     f"{self.batch_index}); {where}")

    def _train_epoch(self) -> None:
        """Train on the rest of the current epoch (until the run's end or Ctrl-C).

        Raises:
            RunError: no batch of the epoch could be loaded (nothing left to train on).
        """
        trained = False
        self.state = self.feed.epoch_started(self.step_fn, self.state, self.epoch)
        for batch, position in self.data.batches(self.epoch, self.batch_index):
            self._train_step(batch)
            trained = True
            self.batch_index = position
            self._after_step()
            if self.batch_index >= len(self.data.plan(self.epoch)):
                self._end_of_epoch()
            if self.interrupted or (self.epochs is None and self._done()):
                return
        if not trained and self.batch_index == 0:
            raise self.data.no_batches_error()
        self.epoch += 1
        self.batch_index = 0

    def _train_step(self, batch: Any) -> None:
        """One step on a global batch (this process's shard of it under torchrun)."""
        utterances = int(batch.audio.shape[0])
        if self.parallel is None:
            self.state, m = self.step_fn(self.state, _to_device(batch, self.device))
        else:
            sharded, weight = self.parallel.shard(batch)
            self.state, m = self.step_fn(self.state, _to_device(sharded, self.device))
            model_state, m, self.interrupted = self.parallel.sync(
                self.state.model_state, m, weight, self._stop_requested)
            self.state = self.state._replace(model_state=model_state)
        self.step += 1
        self.window.add(m["loss"], m["grad_norm"], utterances)
        self.window.add_stats(m)
        self.elapsed = self._elapsed0 + time.perf_counter() - self._t_run

    def _last_step(self) -> bool:
        """Whether the step just taken ends the run."""
        if self.epochs is None:
            return self.step >= self.total_steps
        return self.epoch == self.epochs - 1 and self.batch_index >= len(self.data.plan(self.epoch))

    def _after_step(self) -> None:
        """Log, validate and save as the step count says (the last step does all three)."""
        cfg = self.config["training"]
        last = self._last_step()
        if self.step % int(cfg["log_every"]) == 0 or last:
            self._log_row()
        self.bar.update(self.step)
        if self.step % int(cfg["eval_every"]) == 0 or last:
            self._validate_and_save()
        elif self.step % int(cfg["checkpoint_every"]) == 0 and self.writes:
            self.save_last()

    def _complete(self) -> None:
        """The run's last row and validation, unless its last step already had them (it has
        not when the run was interrupted right after it, or when the last batches of an epoch
        run could not be loaded)."""
        if len(self.window):
            self._log_row()
        if self.validated_step != self.step:
            self._validate_and_save()

    def _row_epoch(self) -> int:
        """The epoch of the last step's batch (the position may already be the next epoch's)."""
        return self.epoch if self.batch_index > 0 or self.step == 0 else self.epoch - 1

    def _log_row(self) -> None:
        check_nonfinite(self.state, int(self.config["training"]["max_nonfinite"]))
        values = self.window.row()
        row = {
            "step": self.step, "epoch": self._row_epoch(), "kind": "train",
            "elapsed_s": round(self.elapsed, 3),
            "loss": values["loss"],
            "grad_norm": values["grad_norm"],
            "lr": self._lr(),
            "utterances_per_s": values["utterances_per_s"],
            "nonfinite": int(self.state.nonfinite_total),
        }
        row.update({k: v for k, v in values.items() if k.startswith("train/") or k == "weight"})
        if self.metrics is not None:
            self.metrics.append(row)
        self.bar.postfix(loss=row["loss"], lr=row["lr"], utt_s=row["utterances_per_s"])

    def _end_of_epoch(self) -> None:
        """With a plateau counting epochs: validate (unless this step just did), report the
        monitor, and save ``last/`` so that a resumed run holds the report."""
        if not self.feed.validates_at_epoch_end:
            return
        if self.validated_step != self.step:
            self._validate_and_save()
        self._report(self._last_val, at_epoch_end=True)
        if self.writes:
            self.save_last()

    def _report(self, val: dict[str, Any] | None, at_epoch_end: bool) -> None:
        """Report the validation's monitored metric to the optimiser when it counts
        (rank 0 validates; under torchrun every rank gets its value)."""
        if not self.feed.reports(at_epoch_end):
            return
        if self.parallel is not None:
            val = self.parallel.broadcast_metrics(val, [self.feed.monitor])
        self.state = self.feed.validated(self.step_fn, self.state, val, at_epoch_end)

    def _validate_and_save(self) -> None:
        self.validated_step = self.step
        val = self._last_val = self.validate() if self.writes else None
        self._report(val, at_epoch_end=False)
        if not self.writes:
            return
        if val is not None:
            self.metrics.append({"step": self.step, "epoch": self._row_epoch(), "kind": "validation",
                                 "elapsed_s": round(self.elapsed, 3), **val})
            loss = "none finite" if val["val_loss"] is None else f"{val['val_loss']:.4f}"
            self.log(f"step {self.step}: validation loss {loss}, "
                     f"CER {100 * val['val_cer']:.2f}%, WER {100 * val['val_wer']:.2f}%")
            if val["val_cer"] < self.best_cer:
                self.best_cer = val["val_cer"]
                self.save_best()
        else:
            self.save_best()
        self.save_last()
        self.window.restart()

    def finish(self) -> dict[str, Any] | None:
        """Plot the curves and evaluate the best checkpoint on the test split (saved as JSON).

        Returns:
            The test result, overall and per voice group (``groups``, when the test manifest
            names an ``engine``; see :func:`fctc.cli.evaluate.evaluate_dataset`), with ``n`` 0
            and null scores when no test utterance could be decoded; or None without a test
            split or on a rank other than 0.
        """
        if not self.writes:
            return None
        self.metrics.close()
        plot = plot_curves(self.metrics.rows, self.out_dir / "curves.png")
        self.log(f"curves: {plot}")
        if self.data.test_path is None:
            return None
        checkpoint = resolve_checkpoint(self.out_dir)
        loaded = load_checkpoint_model(checkpoint, self.device)
        test_set = self.data.dataset(self.data.read(self.data.test_path), loaded.vocabulary)
        scorer = self._scorer(loaded.model, loaded.vocabulary)
        result = evaluate_dataset(
            scorer, loaded.params, loaded.state, test_set, self.device,
            output=self.out_dir / "test_predictions.jsonl", **self.data.batching(),
        )
        result = {"split": "test", "manifest": str(self.data.test_path),
                  "checkpoint": str(checkpoint), "step": int(loaded.metadata.get("step", -1)),
                  **result}
        if not result["n"]:
            result["error"] = str(nothing_usable("test", self.data.test_path, test_set))
        (self.out_dir / "test_results.json").write_text(json.dumps(result, indent=2) + "\n")
        return result
