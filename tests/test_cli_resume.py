"""Issue 15 item 7: a resumed run writes the same ``metrics.csv`` as an uninterrupted one.

The interruption falls off a ``log_every`` boundary, so the steps of the next row were half
done: the checkpoint carries them (the logging window), and the resumed run's rows equal the
straight run's row for row, all but the timing columns.
"""

from __future__ import annotations

import signal

import torch

from fctc.cli.progress import Progress
from fctc.cli.train import INTERRUPTED_EXIT

from cli_helpers import TINY, deep_update, run_cli, tensors, train_rows, write_config

TIMING = ("elapsed_s", "utterances_per_s")


def _without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_resume_off_a_log_boundary_writes_the_same_metrics(tmp_path, monkeypatch):
    config = deep_update(TINY, {"training": {"max_steps": 8, "log_every": 3, "eval_every": 4,
                                             "checkpoint_every": 100}, "data": {"test": None}})
    path = write_config(tmp_path / "c.yaml", config)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli("train", "--config", str(path), "--out", str(straight), "--no-progress")[0] == 0

    original = Progress.update

    def update(self, step):
        original(self, step)
        if step == 5:  # 5 % 3 == 2: two steps of the row of step 6 are done
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Progress, "update", update)
    rc, _, _ = run_cli("train", "--config", str(path), "--out", str(resumed), "--no-progress")
    assert rc == INTERRUPTED_EXIT
    monkeypatch.undo()
    assert [r["step"] for r in train_rows(resumed) if r["kind"] == "train"] == ["3"]
    assert run_cli("train", "--resume", str(resumed), "--no-progress")[0] == 0

    a, b = train_rows(straight), train_rows(resumed)
    assert [(r["step"], r["kind"]) for r in a] == [
        ("3", "train"), ("4", "validation"), ("6", "train"), ("8", "train"), ("8", "validation")
    ]
    assert _without_timing(a) == _without_timing(b)
    for name in ("model.safetensors", "train_state.safetensors"):
        x, y = tensors(straight / "last", name), tensors(resumed / "last", name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
