"""``fctc train`` under ``torchrun`` with a plateau schedule: rank 0 validates, every rank gets
the monitored value, so the two processes' updates stay the one-process run's; and a loss
function's statistics are averaged over the ranks with their weights."""

from __future__ import annotations

import pytest
import torch

import fctc
import fctc.cli.train
from fctc.train import LossOutput

from cli_helpers import TINY, deep_update, run_cli, tensors, train_rows, write_config
from test_cli_parallel import torchrun

CONFIG = deep_update(TINY, {
    "data": {"test": None},
    # val_wer of an untrained model stays 1.0: every validation after the first cuts the lr
    "schedule": {"name": "plateau", "monitor": "val_wer", "patience": 1, "factor": 0.5},
    "training": {"max_steps": 8, "log_every": 2, "eval_every": 2, "checkpoint_every": 100},
})


def test_two_processes_report_the_plateau_monitor_alike(tmp_path):
    path = write_config(tmp_path / "c.yaml", CONFIG)
    torchrun("--config", str(path), "--out", "dp", cwd=tmp_path)
    mp = pytest.MonkeyPatch()
    original = fctc.cli.train.make_train_step
    mp.setattr(fctc.cli.train, "make_train_step",
               lambda *a, **k: original(*a, **{**k, "accum_steps": 2}))
    try:
        rc, _, err = run_cli("train", "--config", str(path), "--out", str(tmp_path / "one"))
    finally:
        mp.undo()
    assert rc == 0, err
    dp = tensors(tmp_path / "dp" / "last", "train_state.safetensors")
    one = tensors(tmp_path / "one" / "last", "train_state.safetensors")
    for name in dp:
        if name.startswith("params.") or ".scale" in name or name.startswith("observed."):
            torch.testing.assert_close(dp[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    lr = [float(r["lr"]) for r in train_rows(tmp_path / "dp") if r["kind"] == "train"]
    assert lr == pytest.approx([float(r["lr"]) for r in train_rows(tmp_path / "one") if r["kind"] == "train"])
    assert lr[-1] < lr[0]  # the plateau cut


def test_stats_are_averaged_over_ranks_with_their_weights():
    """sync's rule on one process: the means of the weighted sums over the ranks, divided."""
    from fctc.cli.parallel import _stats_means, _weighted_stats

    ranks = [{"stats/x": torch.tensor(1.0), "weight": torch.tensor(3.0)},
             {"stats/x": torch.tensor(5.0), "weight": torch.tensor(1.0)}]
    packets = [_weighted_stats(m, torch.device("cpu")) for m in ranks]
    mean = {k: (packets[0][k] + packets[1][k]) / 2 for k in packets[0]}
    out = _stats_means(mean, world=2)
    assert out["stats/x"].item() == pytest.approx((1 * 3 + 5 * 1) / 4) and out["weight"].item() == 4.0
    assert _weighted_stats({"loss": torch.tensor(1.0)}, torch.device("cpu")) == {}


def test_a_sharded_loss_keeps_its_stats_and_a_rank_without_rows_weighs_nothing():
    from fctc.cli.parallel import DataParallel, ShardedBatch, World
    from fctc.data import Batch

    def base(params, state, batch, key):
        return LossOutput({"a": batch.audio.sum()}, {"n": batch.audio.mean()}, None), state

    parallel = DataParallel(World(0, 2), torch.device("cpu"))  # rank 1 holds the one row
    batch = Batch(torch.ones(1, 3), torch.full((1,), 3), torch.zeros(1, 1, dtype=torch.int64),
                  torch.ones(1, dtype=torch.int64))
    sharded, weight = parallel.shard(batch)
    assert weight == 0
    out, _ = parallel.loss_fn(base)(None, {}, sharded, fctc.random.key(0))
    assert float(out.loss["a"]) == 0.0 and float(out.weight) == 0.0 and float(out.stats["n"]) == 1.0
    full = ShardedBatch(batch, torch.full((1,), 2.0), torch.full((1,), -1, dtype=torch.int64))
    out, _ = parallel.loss_fn(base)(None, {}, full, fctc.random.key(0))
    assert float(out.loss["a"]) == 6.0 and float(out.weight) == 1.0
