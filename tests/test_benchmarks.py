"""benchmarks/train_step.py: the imperative baseline loads fctc's weights, matches fctc's
schedule, and the ``--quick`` run produces a complete JSON report (so the script never rots).

The quick run takes ~20-40 s on two shared cores (a subprocess; it spawns two more for memory).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import train_step as ts  # noqa: E402
from benchmarks.imperative_quartznet import quartznet_ctc  # noqa: E402


def test_imperative_module_has_fctc_state_dict_keys():
    """fctc's params and buffers load into the nn.Module by key, strictly, shapes included."""
    weights = ts.initial_weights("tiny")
    module = quartznet_ctc("tiny", ts.NUM_CLASSES, ts.FEAT_IN)
    assert set(module.state_dict()) == set(weights)
    module.load_state_dict(weights, strict=True)
    for k, v in module.state_dict().items():
        assert torch.equal(v, weights[k]), k


@pytest.mark.parametrize("config, encoder_params", [("5x5", 6_683_456), ("15x5", 18_894_656)])
def test_full_size_models_have_quartznets_parameter_counts(config, encoder_params):
    """The full-width baselines are QuartzNet 5x5 / 15x5 (fctc's documented counts at feat_in 64;
    fctc's own init of these sizes is slow, so the keys are checked on the tiny model above)."""
    module = quartznet_ctc(config, ts.NUM_CLASSES, ts.FEAT_IN)
    assert sum(p.numel() for p in module.encoder.parameters()) == encoder_params
    assert sum(p.numel() for p in module.decoder.parameters()) == 1024 * ts.NUM_CLASSES + ts.NUM_CLASSES


def test_lr_schedule_matches_fctc():
    """The LambdaLR of the baseline and fctc's warmup_cosine_decay_schedule agree."""
    schedule = ts.fo.warmup_cosine_decay_schedule(
        ts.INIT_LR, ts.PEAK_LR, ts.WARMUP_STEPS, ts.DECAY_STEPS
    )
    for count in [0, 1, ts.WARMUP_STEPS - 1, ts.WARMUP_STEPS, 500, ts.DECAY_STEPS, 20_000]:
        got = float(schedule(torch.tensor(count, dtype=torch.int32)))
        assert math.isclose(got, ts.lr_at(count), rel_tol=1e-5, abs_tol=1e-12), count


def test_micro_bounds_cover_the_batch():
    assert ts.micro_bounds(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert ts.micro_bounds(4, 1) == [(0, 4)]


def test_paired_ratio_cancels_a_drifting_machine():
    """Round by round the row takes half the reference's time while the machine slows down
    threefold: the paired ratio is 2 exactly, the ratio of the medians is not."""
    ref = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    row = [0.5, 0.5, 1.0, 1.0, 1.5, 1.5]
    assert ts.paired_ratio(ref, row, per_round=2) == 2.0
    assert ts.paired_ratio(ref, [3.0, 3.0, 1.0, 1.0, 1.5, 1.5], per_round=2) == 2.0  # median of 1/3, 2, 2


def test_quick_run_writes_complete_json(tmp_path):
    out = tmp_path / "results.json"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--quick", "--threads", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| torch eager fp32 |" in res.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "train_step"
    for key in ("cpu", "logical_cpus", "torch_threads", "torch", "loadavg_start"):
        assert key in data["machine"]
    # the same weights and batches: two steps of both sides agree to float rounding
    parity = data["parity_fp32"]
    assert parity["max_rel_loss_diff"] < 1e-5
    assert parity["max_abs_weight_diff"] < 2 * parity["lr_sum"]
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {
        "torch eager fp32", "fctc eager fp32", "fctc donated fp32", "torch eager fp16",
        "fctc eager fp16", "fctc donated fp16", "torch eager fp32 accum4", "fctc eager fp32 accum4",
    }
    for r in rows.values():
        assert len(r["step_times_s"]) == data["timed_steps"] > 0
        assert r["step_ms"] > 0 and r["utt_per_s"] > 0 and r["audio_s_per_s"] > 0
        assert math.isclose(
            r["speed_vs_ref"], rows[r["ref"]]["step_ms"] / r["step_ms"], rel_tol=1e-9
        )
    assert rows["torch eager fp32"]["speed_vs_ref"] == 1.0
    assert rows["torch eager fp32"]["paired_vs_torch"] == 1.0
    assert rows["fctc eager fp32 accum4"]["paired_vs_torch"] == ts.paired_ratio(
        rows["torch eager fp32 accum4"]["step_times_s"], rows["fctc eager fp32 accum4"]["step_times_s"],
        data["args"]["per_round"],
    )
    assert rows["fctc eager fp32 accum4"]["ref"] == "fctc eager fp32"
    for name in ("torch eager fp32", "fctc eager fp32"):
        mem = rows[name]["memory"]
        assert "error" not in mem, mem
        assert mem["peak_mb"] > 0 and mem["setup_mb"] > 0 and mem["increase_mb"] is not None


def test_default_step_times_the_default_recipe():
    """benchmarks/default_step.py: batches shaped like the recipe's buckets, and figures of a
    short run of the default model."""
    from benchmarks import default_step
    from fctc.cli.config import default_config

    config = default_config()
    bs = default_step.batches(config)
    size = int(config["data"]["max_batch_seconds"] // 3.2)  # the recipe's bucket of 3.2 s clips
    assert size >= 2 and len(bs) == 3 and bs[0].audio.shape == (size, 64, 320)
    assert int(bs[0].audio_lengths.max()) == 320 and int(bs[0].audio_lengths.min()) >= 240
    assert bs[0].targets.shape == (size, 40) and int(bs[0].target_lengths.max()) <= 40
    out = default_step.time_steps(steps=1, warmup=0, jit=False)
    assert out["params"] == 238428 and out["batch"] == [size, 64, 320]
    assert out["median_ms"] > 0 and out["first_step_s"] > 0 and out["jit"] is False


def test_dropout_masks_times_every_variant():
    """benchmarks/dropout_masks.py: each way of drawing a mask gets a positive median, and
    the variants draw masks of the asked shape."""
    from benchmarks import dropout_masks
    from fctc import random

    fns = dropout_masks.variants((3, 4, 5), 0.85)
    assert set(fns) == {"uniform < p", "bernoulli", "bernoulli word_bits=16"}
    assert all(fn(random.key(1)).shape == (3, 4, 5) for fn in fns.values())
    ms = dropout_masks.time_variants((3, 4, 5), 0.85, rounds=2, per_round=1)
    assert set(ms) == set(fns) and all(v > 0 for v in ms.values())


def test_depthwise_conv_times_both_implementations_of_a_layer():
    """benchmarks/depthwise_conv.py: both implementations get positive medians, forward and
    forward + backward, and agree on the layer's output and gradients."""
    from benchmarks import depthwise_conv

    out = depthwise_conv.time_layer(2, 30, 4, 5, 2, rounds=2, per_round=1)
    assert out["max_diff"] < 1e-4
    for label in ("forward", "forward+backward"):
        assert set(out[label]) == {"F.conv1d", "fctc"} and all(v > 0 for v in out[label].values())


def test_host_sync_finds_only_the_time_warps_read_in_the_default_step(capsys):
    """benchmarks/host_sync.py on the CPU (fctc's accelerator path): the default recipe's step
    over cached features reads one value per step, random_warp's longest new length."""
    from benchmarks import host_sync

    result = host_sync.main(["--steps", "2", "--warmup", "1"])
    assert [(n, what) for n, what, _ in result["reads"]] == [(1.0, "Tensor.__int__")]
    assert "fctc/audio/feature_augment.py:" in result["reads"][0][2]
    assert result["cuda_syncs"] == []
    assert "1  Tensor.__int__" in capsys.readouterr().out


def test_gpu_script_runs_every_check_and_brings_back_at_most_eight_files(tmp_path):
    """benchmarks/gpu.sh with a recording interpreter: the checks in order, on CUDA's
    workload, each writing its .txt (and .json), eight files in all (the device tool's most)."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {log}\n'
        'while [ $# -gt 0 ]; do [ "$1" = --out ] && echo {} > "$2"; shift; done\n'
    )
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(fake)}
    done = subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("-c import torch, fctc")
    assert calls[1] == f"benchmarks/host_sync.py --device cuda --out {out}/host_sync.json"
    common = "benchmarks/train_step.py --device cuda --batch 32 --seconds 15 --no-memory"
    assert calls[2:] == [
        f"{common} --config 5x5 --no-compile --precisions fp32,bf16,fp16 --out {out}/eager_5x5.json",
        f"{common} --config 15x5 --no-compile --precisions fp32,bf16 --out {out}/eager_15x5.json",
        f"{common} --config 5x5 --precisions fp32 --accum 1 --out {out}/compiled_5x5.json",
    ]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 8 and {p.rsplit(".", 1)[1] for p in files} == {"txt", "json"}
