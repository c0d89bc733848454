"""``fctc train`` with ``training.jit``: the compiled loss trains as the eager run does; CUDA
graphs off CUDA are a one-line config error."""

from __future__ import annotations

import torch
import torch._dynamo
import torch._dynamo.utils

from cli_helpers import STEPS, TINY, deep_update, run_cli, train_rows, write_config
from test_cli_errors import train_with


def test_jit_true_trains_like_the_eager_run(straight_run, tmp_path):
    run, rc, _ = straight_run
    assert rc == 0
    path = write_config(tmp_path / "jit.yaml", deep_update(TINY, {"training": {"jit": True}}))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    rc, _, err = run_cli("train", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress")
    assert rc == 0, err
    assert torch._dynamo.utils.counters["frames"]["ok"] >= 1  # it did compile
    eager, compiled = train_rows(run), train_rows(tmp_path / "run")
    assert [(r["step"], r["kind"]) for r in compiled] == [(r["step"], r["kind"]) for r in eager]
    assert sum(r["kind"] == "train" for r in eager) == STEPS
    for a, b in zip(eager, compiled):
        for k in ("loss", "val_loss"):
            if a.get(k):
                torch.testing.assert_close(float(b[k]), float(a[k]), rtol=1e-3, atol=1e-4)

def test_cuda_graphs_need_a_cuda_device(tmp_path):
    line = train_with(tmp_path, {"training": {"jit": "reduce-overhead"}}, "--device", "cpu")
    assert "training.jit reduce-overhead (CUDA graphs) needs a CUDA device, not cpu; use true or step" in line
    assert not (tmp_path / "run" / "last").exists()
