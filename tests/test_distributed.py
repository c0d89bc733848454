"""Tests for fctc.distributed: single-process behaviour here, two gloo processes via torchrun.

The two-process checks (training parity with one process on whole batches, collective counts
per update, broadcast, metrics) all live in ``tests/dist_worker.py`` and run in one launch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fctc
from fctc import distributed as dist
from fctc import optim
from fctc.train import Batch

WORKER = Path(__file__).with_name("dist_worker.py")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_two_processes_gloo_match_one_process():
    """torchrun, 2 CPU processes: same params as 1 process on whole batches; 1 all-reduce per update."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=1", "--nproc_per_node=2", "--max_restarts=0",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(WORKER),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the workers it started
        out, _ = proc.communicate()
        pytest.fail(f"the two-process run timed out:\n{out[-6000:]}")
    assert proc.returncode == 0, out[-6000:]
    for r in range(2):
        assert f"dist_worker rank {r}: ok" in out, out[-6000:]


# --- one process: everything is the identity ------------------------------------------------


def test_not_initialised_is_single_process():
    assert not dist.is_initialized()
    assert (dist.rank(), dist.world_size()) == (0, 1)
    dist.barrier()  # a no-op


def test_init_from_env_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.init_from_env() == (0, 1)
    assert not dist.is_initialized()


def test_init_from_env_incomplete_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        dist.init_from_env()
    assert not dist.is_initialized()


def test_all_reduce_gradients_identity_alone():
    g = {"a": torch.randn(3), "b": torch.randn(2, 2, dtype=torch.float64)}
    tx = optim.chain(dist.all_reduce_gradients(), optim.identity())
    out, _ = tx.update(g, tx.init(g))
    assert out["a"] is g["a"] and out["b"] is g["b"]


def test_broadcast_and_mean_across_identity_alone():
    tree = {"w": torch.randn(3), "step": torch.tensor(4)}
    assert dist.broadcast_tree(tree) is tree
    assert dist.mean_across(tree) is tree


def test_distributed_multisteps_alone_equals_multisteps():
    params = {"w": torch.ones(3), "b": torch.zeros(2)}
    sgd = optim.stateless(lambda u, p: fctc.tree.map(lambda g: -0.1 * g, u))
    ours, ref = dist.DistributedMultiSteps(sgd, 3), optim.MultiSteps(sgd, 3)
    s1, s2 = ours.init(params), ref.init(params)
    for i in range(7):
        g = fctc.tree.map(lambda p, i=i: torch.full_like(p, float(i) - 2.5), params)
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = ref.update(g, s2, params)
        for a, b in zip(fctc.tree.leaves((u1, s1)), fctc.tree.leaves((u2, s2))):
            assert torch.equal(a, b)


# --- shard_batch ----------------------------------------------------------------------------


def test_shard_batch_splits_dim0():
    batch = {"x": torch.arange(12).reshape(6, 2), "n": torch.arange(6)}
    parts = [dist.shard_batch(batch, r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"])
    assert torch.equal(parts[1]["n"], torch.tensor([2, 3]))
    assert torch.equal(dist.shard_batch(batch)["x"], batch["x"])


def test_shard_batch_train_batch():
    targets = torch.zeros(4, 3, dtype=torch.long)
    b = Batch(torch.randn(4, 8, 9), torch.full((4,), 9), targets, torch.full((4,), 3))
    half = dist.shard_batch(b, 1, 2)
    assert isinstance(half, Batch) and half.audio.shape == (2, 8, 9)
    assert torch.equal(half.audio, b.audio[2:])


@pytest.mark.parametrize(
    "batch, rank, world, match",
    [
        ({"x": torch.zeros(5, 2)}, 0, 2, "batch size 5 is not divisible by world size 2"),
        ({"x": torch.zeros(4), "y": torch.zeros(6)}, 0, 2, "different sizes"),
        ({"x": torch.zeros(4)}, 2, 2, r"rank must be an int in \[0, 2\)"),
        ({"x": torch.zeros(4)}, 0, 0, "world_size must be a positive int"),
        ({"x": torch.tensor(1.0)}, 0, 1, "0-d"),
        ({}, 0, 1, "no tensors"),
    ],
)
def test_shard_batch_errors(batch, rank, world, match):
    with pytest.raises(ValueError, match=match):
        dist.shard_batch(batch, rank, world)
