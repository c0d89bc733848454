"""``fctc train`` with metric- and epoch-driven schedules, and a loss function's statistics in
metrics.csv: schedule.name plateau / monitor / patience / factor / interval, stat columns."""

from __future__ import annotations

import math

import pytest
import torch

import fctc
import fctc.testing
from fctc import optim
from fctc.cli import logs as cli_logs
from fctc.cli.config import ConfigError, default_config, merge_config
from fctc.cli.recipe import build_optimizer, total_updates
from fctc.cli.schedule_feed import ScheduleFeed
from fctc.cli.schema import validate_config
from fctc.cli.train import Trainer
from fctc.train import LossOutput
from cli_helpers import TINY as CLI_TINY
from cli_helpers import train_rows as _rows

# The shared tiny recipe, eight steps long (validations at steps 2, 4, 6, 8).
TINY = {**CLI_TINY, "training": {**CLI_TINY["training"], "max_steps": 8}}


def _config(**schedule) -> dict:
    return merge_config(default_config(), {**TINY, "data": {**TINY["data"], "test": None}, "schedule": schedule})


def with_stats(model, vocabulary, train):
    """CTC loss plus ESPnet3-style statistics: the mean target length (the same at every
    validation, so a plateau watching it never sees an improvement) and the mean input length."""
    ctc = fctc.train.ctc_loss_fn(model, vocabulary.blank_idx, train=train)

    def fn(params, state, batch, key):
        loss, state = ctc(params, state, batch, key)
        stats = {"target_length": batch.target_lengths.float().mean(), "frames": batch.audio_lengths.float().mean()}
        return LossOutput(loss, stats, None), state

    return fn


class _StopAfter:
    """The trainer's step, asking it to stop (as Ctrl-C does) after ``n`` steps."""

    def __init__(self, trainer: Trainer, n: int):
        self.trainer, self.inner, self.n = trainer, trainer.step_fn, n

    def __call__(self, state, batch):
        out = self.inner(state, batch)
        self.n -= 1
        if self.n == 0:
            self.trainer.interrupted = True
        return out

    def observe(self, *args, **kwargs):
        return self.inner.observe(*args, **kwargs)


def _train(config, out, stop_after=None, resume=False):
    trainer = Trainer(config, out, torch.device("cpu"), resume=out / "last" if resume else None,
                      log=lambda *a: None, progress=False, loss_fn=with_stats)
    if stop_after is not None:
        trainer.step_fn = _StopAfter(trainer, stop_after)
    done = trainer.run()
    trainer.metrics.close()
    return trainer, done


PLATEAU = dict(name="plateau", monitor="val_target_length", patience=1, factor=0.5)


@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("plateau") / "straight"
    trainer, done = _train(_config(**PLATEAU), out)
    assert done
    return out, trainer


def test_plateau_halves_the_learning_rate_after_patience_validations(plateau_run):
    """Validations at steps 2, 4, 6, 8 see the same val_target_length: the first is the best,
    each later one (patience 1) halves the learning rate from the next update on."""
    out, trainer = plateau_run
    lr = default_config()["optimizer"]["learning_rate"]
    train = [r for r in _rows(out) if r["kind"] == "train"]
    val = [r for r in _rows(out) if r["kind"] == "validation"]
    assert [int(r["step"]) for r in val] == [2, 4, 6, 8]
    assert len({r["val_target_length"] for r in val}) == 1
    want = [lr] * 4 + [lr / 2] * 2 + [lr / 4] * 2
    assert [float(r["lr"]) for r in train] == pytest.approx(want, rel=1e-5)
    assert optim.plateau_scale(trainer.state.opt_state).item() == 0.25  # the 4th cut is pending
    assert int(trainer.state.observed.value_count) == 4


def test_stats_and_weights_show_up_in_metrics_csv(plateau_run):
    out, trainer = plateau_run
    rows = _rows(out)
    header = list(rows[0])
    assert header[: len(cli_logs.COLUMNS)] == list(cli_logs.COLUMNS)
    assert {"train/target_length", "train/frames", "weight", "val_target_length", "val_frames",
            "val_weight"} <= set(header)
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "validation"]
    for r in train:
        assert float(r["weight"]) >= 1 and float(r["weight"]).is_integer()  # utterances
        assert float(r["train/target_length"]) > 0 and r["val_target_length"] == ""
    items = [trainer.data.val_set[i] for i in range(len(trainer.data.val_set))]
    lengths = [len(target) for item in items if not isinstance(item, fctc.data.Skipped)
               for _, target in [item]]
    for r in val:
        assert float(r["val_weight"]) == len(lengths) and float(r["val_frames"]) > 0 and r["weight"] == ""
    # the validation mean is the utterance-weighted mean over the whole split
    assert float(val[0]["val_target_length"]) == pytest.approx(sum(lengths) / len(lengths), rel=1e-5)


def test_plateau_run_resumes_exactly(plateau_run, tmp_path):
    """Stopped after step 5 (the cut of validation 4 applied, one validation since the best),
    resumed: the same checkpoint, learning rates and statistics as the straight run."""
    straight, _ = plateau_run
    out = tmp_path / "resumed"
    config = _config(**PLATEAU)
    _, done = _train(config, out, stop_after=5)
    assert not done
    _, done = _train(config, out, resume=True)
    assert done
    a = fctc.checkpoint.load(straight / "last" / "train_state.safetensors")[0]
    b = fctc.checkpoint.load(out / "last" / "train_state.safetensors")[0]
    fctc.testing.assert_trees_equal(a, b)
    cols = ("step", "kind", "loss", "lr", "train/target_length", "weight", "val_target_length")
    assert [[r.get(c) for c in cols] for r in _rows(straight)] == [[r.get(c) for c in cols] for r in _rows(out)]


def test_plateau_counting_epochs_validates_at_each_epoch_end(tmp_path):
    config = _config(**PLATEAU, interval="epoch")
    config["training"].update(eval_every=1000, max_steps=None, epochs=3)
    trainer, done = _train(config, tmp_path / "epochs")
    assert done
    rows = _rows(tmp_path / "epochs")
    per_epoch = len(trainer.data.plan(0))
    val_steps = [int(r["step"]) for r in rows if r["kind"] == "validation"]
    assert val_steps == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    lr = default_config()["optimizer"]["learning_rate"]
    train = [r for r in rows if r["kind"] == "train"]
    # epoch 0 at lr, epoch 1 too (its end-of-epoch-0 report was the first, the best), epoch 2 halved
    want = [lr * (0.5 if int(r["step"]) > 2 * per_epoch else 1.0) for r in train]
    assert [float(r["lr"]) for r in train] == pytest.approx(want, rel=1e-5)


def test_epoch_interval_schedule_changes_at_epoch_boundaries(tmp_path):
    config = _config(name="warmup_cosine", interval="epoch", warmup_fraction=0.0)
    config["training"].update(eval_every=1000, max_steps=None, epochs=3)
    trainer = Trainer(config, tmp_path / "run", torch.device("cpu"), log=lambda *a: None, progress=False)
    assert trainer.run()
    trainer.metrics.close()
    _, schedule = build_optimizer(config, total_updates(trainer.total_steps, 1), 3)
    train = [r for r in _rows(tmp_path / "run") if r["kind"] == "train"]
    assert {int(r["epoch"]) for r in train} == {0, 1, 2}
    for r in train:
        assert float(r["lr"]) == pytest.approx(float(schedule(torch.tensor(int(r["epoch"])))), rel=1e-6)
    assert float(train[0]["lr"]) > float(train[-1]["lr"]) > 0  # cosine over 3 epochs
    assert int(trainer.state.observed.epoch) == 2


def test_schedule_config_errors_name_the_key():
    def check(**schedule):
        return validate_config(_config(**schedule))

    with pytest.raises(ConfigError, match="schedule.interval must be one of step, epoch"):
        check(interval="batch")
    with pytest.raises(ConfigError, match="schedule.patience must be an integer >= 1"):
        check(name="plateau", patience=0)
    with pytest.raises(ConfigError, match=r"schedule.factor must be a number in \(0, 1\)"):
        check(name="plateau", factor=1.5)
    with pytest.raises(ConfigError, match="schedule.name must be one of .*plateau"):
        check(name="cyclic")
    with pytest.raises(ConfigError, match="schedule.monitor must be a non-empty string"):
        check(name="plateau", monitor="")
    assert validate_config(_config(**PLATEAU, interval="epoch"))["schedule"]["factor"] == 0.5
    with pytest.raises(ConfigError, match="needs the run's epochs"):
        build_optimizer(_config(interval="epoch"), 100)
    plateau = _config(**PLATEAU)["schedule"]
    with pytest.raises(ConfigError, match="data.validation is null"):
        ScheduleFeed(plateau, has_validation=False)
    with pytest.raises(ConfigError, match=r"schedule.monitor must be one of \['val_loss', 'val_cer', 'val_wer'\]"):
        ScheduleFeed(plateau, has_validation=True)  # val_target_length needs loss statistics
    feed = ScheduleFeed(plateau, has_validation=True, stats=True)
    with pytest.raises(ConfigError, match="not a validation metric of this run"):
        feed.validated(None, None, {"val_loss": 1.0}, at_epoch_end=False)
    tx, _ = build_optimizer(_config(**PLATEAU), 10)
    assert optim.plateau_scale(tx.init({"w": torch.ones(1)})).item() == 1.0


def test_metrics_log_adds_stat_columns_and_keeps_them_on_resume(tmp_path):
    log = cli_logs.MetricsLog(tmp_path, tensorboard=False)
    log.append({"step": 1, "epoch": 0, "kind": "train", "loss": 2.0})
    log.append({"step": 2, "epoch": 0, "kind": "train", "loss": 1.0,
                **cli_logs.stat_columns({"acc": torch.tensor(0.5)}, 8.0, validation=False)})
    log.append({"step": 2, "epoch": 0, "kind": "validation", "val_loss": 1.5,
                **cli_logs.stat_columns({"acc": 0.25}, 20.0, validation=True)})
    rows = _rows(tmp_path)
    assert [r["train/acc"] for r in rows] == ["", "0.5", ""]
    assert [r["weight"] for r in rows] == ["", "8", ""] and rows[2]["val_acc"] == "0.25"
    assert rows[2]["val_weight"] == "20"
    with pytest.raises(ValueError, match="bogus"):
        log.append({"step": 3, "bogus": 1})
    with pytest.raises(ValueError, match=r"\['loss'\] are named like columns"):
        cli_logs.stat_columns({"loss": 1.0}, None, validation=True)
    resumed = cli_logs.MetricsLog(tmp_path, history=log.rows[:2], tensorboard=False)
    resumed.close()
    assert list(_rows(tmp_path)[0]) == list(cli_logs.COLUMNS) + ["train/acc", "weight"]
    assert len(_rows(tmp_path)) == 2 and math.isclose(float(_rows(tmp_path)[1]["train/acc"]), 0.5)


@pytest.mark.skipif(not cli_logs.tensorboard_available(), reason="tensorboard is not installed")
def test_stat_columns_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = cli_logs.MetricsLog(tmp_path, tensorboard=True)
    log.append({"step": 1, "epoch": 0, "kind": "train", "loss": 2.0, "train/acc": 0.5, "weight": 8.0})
    log.append({"step": 1, "epoch": 0, "kind": "validation", "val_loss": 1.0, "val_acc": 0.25})
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/acc", "train/weight", "validation/acc", "train/loss"} <= set(events.Tags()["scalars"])
