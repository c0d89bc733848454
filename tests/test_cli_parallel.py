"""Issue 15 item 11: ``fctc train`` under ``torchrun``, two gloo processes on the CPU.

The two-process run (interrupted by its length at step 4, then resumed to 8) must equal one
process on the same global batches split into the same two shards (the one-process run uses
``make_train_step(..., accum_steps=2)``, whose micro-batches are the ranks' shards): the same
parameters and optimiser state within the rounding of the all-reduce, bit-equal integer state,
the same logged losses, and rank 0 alone writing. Batches of odd sizes (unequal shards) are
part of the plan. BatchNorm's running statistics are the ranks' mean there and the micro-
batches' sequence here, so they are checked for their count only (one update per step).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fctc.cli.train
from fctc.cli.training_data import TrainingData
from fctc.cli.config import load_config

from cli_helpers import TINY, deep_update, run_cli, tensors, train_rows, write_config

CONFIG = deep_update(TINY, {
    "data": {"test": None, "max_batch_seconds": 5.0},  # odd sizes and a 1-utterance batch
    "schedule": {"name": "constant"},  # the length changes at the resume; the lr does not
    # 8 steps: rounding differences (the all-reduce's, a kernel's) grow with the steps, and
    # over 20 a ReLU input near zero can flip and move the state well past rounding.
    "training": {"max_steps": 8, "log_every": 2, "eval_every": 100, "checkpoint_every": 100},
})


def torchrun(*argv: str, cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fctc", "train", *argv, "--no-progress"]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    path = write_config(root / "c.yaml", CONFIG)
    steps = CONFIG["training"]["max_steps"]
    sizes = [len(b) for e in range(10) for b in TrainingData(load_config(path)).plan(e)][:steps]
    assert any(n % 2 for n in sizes), "the run should hold batches of odd sizes"
    assert 1 in sizes, "the run should hold a batch that leaves a rank without rows"
    first = torchrun("--config", str(path), "--out", "dp", "--max-steps", "4", cwd=root)
    resumed = torchrun("--resume", "dp", "--max-steps", "8", cwd=root)
    mp = pytest.MonkeyPatch()
    original = fctc.cli.train.make_train_step

    def two_micro_batches(*args, **kwargs):
        return original(*args, **{**kwargs, "accum_steps": 2})

    mp.setattr(fctc.cli.train, "make_train_step", two_micro_batches)
    try:
        rc, _, err = run_cli("train", "--config", str(path), "--out", str(root / "one"))
    finally:
        mp.undo()
    assert rc == 0, err
    return root, first, resumed


def test_two_processes_equal_one_on_the_same_global_batches(runs):
    root, _, _ = runs
    data = TrainingData(load_config(root / "c.yaml"))
    batches = [b for e in range(10) for b in data.plan(e)][:8]
    micro = sum(min(2, len(b)) for b in batches)  # a one-utterance batch is one micro-batch
    dp, one = tensors(root / "dp" / "last", "train_state.safetensors"), tensors(
        root / "one" / "last", "train_state.safetensors")
    assert dp.keys() == one.keys()
    for name, x in dp.items():
        y = one[name]
        if name.startswith("model_state.") and name.endswith("num_batches_tracked"):
            assert int(x) == 8 and int(y) == micro  # one update per step; per micro-batch
        elif name.startswith("model_state."):
            assert torch.isfinite(x).all()
        elif x.is_floating_point():
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(x, y), name
    rows = train_rows(root / "dp")
    assert [r["step"] for r in rows if r["kind"] == "validation"] == ["4", "8"]  # two ends
    a = [(r["step"], float(r["loss"])) for r in rows if r["kind"] == "train"]
    b = [(r["step"], float(r["loss"])) for r in train_rows(root / "one") if r["kind"] == "train"]
    assert [s for s, _ in a] == [s for s, _ in b] == ["2", "4", "6", "8"]
    assert [x for _, x in a] == pytest.approx([y for _, y in b], rel=1e-4)


def test_rank_zero_alone_writes(runs):
    root, first, resumed = runs
    assert sorted(p.name for p in root.iterdir()) == ["c.yaml", "dp", "one"]
    assert first.stderr.count("training quartznet") == 1 and "2 processes" in first.stderr
    assert resumed.stderr.count("resuming at step 4") == 1
    assert first.stdout == resumed.stdout == ""  # no test split: no result line
    assert (root / "dp" / "best" / "model.safetensors").is_file()


def test_shards_are_the_micro_batches_of_one_process():
    """Rank r's rows are make_train_step's micro-batch r; the weights are the shares."""
    from fctc.cli.parallel import DataParallel, World
    from fctc.data import Batch
    from fctc.train.step import _micro_batches

    for size in range(1, 8):
        batch = Batch(torch.arange(size * 3.0).reshape(size, 3), torch.full((size,), 3),
                      torch.arange(size).reshape(size, 1), torch.ones(size, dtype=torch.int64))
        for world in (2, 3):
            shards = [DataParallel(World(r, world), torch.device("cpu")).shard(batch)
                      for r in range(world)]
            assert sum(w for _, w in shards) == pytest.approx(1.0)
            if size >= world:
                for (sharded, weight), (micro, micro_weight) in zip(shards, _micro_batches(batch, world)):
                    assert torch.equal(sharded.batch.audio, micro.audio)
                    assert weight == pytest.approx(micro_weight)
                    assert torch.allclose(sharded.scale, torch.tensor(world * weight))
            for sharded, weight in shards:
                if weight == 0:  # no rows of its own: a copy of row 0 that weighs nothing
                    assert torch.equal(sharded.batch.audio, batch.audio[:1])
                    assert torch.equal(sharded.scale, torch.zeros(1))
            # The non-empty shards, in rank order, are the micro-batches, and each draws the
            # micro-batch's key: folded with its index, unless the batch is not split at all.
            filled = [sharded for sharded, weight in shards if weight > 0]
            micro = _micro_batches(batch, world)
            assert len(filled) == len(micro)
            for i, (sharded, (mb, _)) in enumerate(zip(filled, micro)):
                assert torch.equal(sharded.batch.audio, mb.audio)
                assert set(sharded.fold.tolist()) == {i if len(micro) > 1 else -1}


def test_alone_the_sync_and_the_all_reduce_change_nothing():
    from fctc import optim
    from fctc.cli.parallel import DataParallel, World, init_world

    assert init_world() == World()  # no torchrun environment here
    parallel = DataParallel(World(0, 2), torch.device("cpu"))
    state = {"running_mean": torch.tensor([1.0, 2.0]), "num_batches_tracked": torch.tensor(3)}
    metrics = {"loss": torch.tensor(2.0), "grad_norm": torch.tensor(0.5)}
    synced, m, stop = parallel.sync(state, metrics, 1.0, True)
    assert torch.equal(synced["running_mean"], state["running_mean"]) and stop is True
    assert synced["num_batches_tracked"].dtype == torch.int64 and float(m["loss"]) == 2.0
    tx = parallel.transformation(optim.sgd(0.1))
    params = {"w": torch.ones(2)}
    updates, _ = tx.update({"w": torch.ones(2)}, tx.init(params), params)
    assert torch.allclose(updates["w"], torch.full((2,), -0.1))


def test_a_cpu_run_under_torchrun_never_claims_a_gpu(monkeypatch):
    """On a machine with CUDA, `fctc train --device cpu` under torchrun joins with gloo alone:
    no NCCL, and no torch.cuda.set_device(LOCAL_RANK) (which fails with more processes than
    GPUs). device auto or cuda there keeps gloo for CPU tensors and NCCL for GPU ones."""
    import fctc.distributed as fd
    from fctc.cli.parallel import init_world

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(fd._dist, "init_process_group", lambda **kw: calls.append(("init", kw["backend"])))
    monkeypatch.setattr(fd, "is_initialized", lambda: False)
    monkeypatch.setattr(fd, "rank", lambda: 3)
    monkeypatch.setattr(fd, "world_size", lambda: 4)
    for name, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    assert init_world("cpu").local_rank == 3
    assert calls == [("init", "gloo")]
    calls.clear()
    for device in ("auto", "cuda"):
        init_world(device)
        assert calls == [("set_device", 3), ("init", "cpu:gloo,cuda:nccl")]
        calls.clear()
