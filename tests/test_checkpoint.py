"""Checkpoints: atomic safetensors + JSON, exact resume, clear errors, no pickles."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fctc
from fctc import checkpoint, optim, random
from fctc.checkpoint import CheckpointError
from fctc.testing import assert_trees_equal
from tiny_task import BLANK, tiny_batch, tiny_model


def _straight_and_resumed(tmp_path, step, n, k, batches):
    state = step.init_state(random.key(0))
    straight = state
    for i in range(n):
        straight, _ = step(straight, batches[i % len(batches)])
    resumed = state
    for i in range(k):
        resumed, _ = step(resumed, batches[i % len(batches)])
    path = checkpoint.save_train_state(tmp_path / "ckpt.safetensors", resumed, {"config": {"k": k}})
    template = step.init_state(random.key(123))  # a fresh run's state: values differ, shape same
    resumed, meta = checkpoint.load_train_state(path, template)
    assert meta["step"] == k and meta["config"] == {"k": k} and meta["kind"] == "train_state"
    for i in range(k, n):
        resumed, _ = step(resumed, batches[i % len(batches)])
    return straight, resumed


@settings(max_examples=5)
@given(n=st.integers(2, 7), data=st.data())
def test_resume_is_bit_identical_with_accumulation_counters(tmp_path_factory, n, data):
    """k steps + save + load + (n-k) steps == n straight steps, bit for bit, with MultiSteps
    mid-accumulation, AdamW moments, BatchNorm statistics and dropout keys in the state."""
    k = data.draw(st.integers(1, n - 1))
    model = fctc.nn.masked(
        fctc.nn.conv1d(8, 16, 3, padding=1), fctc.nn.batch_norm(16), fctc.nn.relu(),
        fctc.nn.dropout(0.2), fctc.nn.conv1d(16, 6, 1),
    )
    tx = optim.MultiSteps(
        optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-2)), every_k_schedule=3
    ).gradient_transformation()
    step = fctc.train.make_train_step(model, tx, blank=BLANK)
    batches = [tiny_batch(i) for i in range(3)]
    straight, resumed = _straight_and_resumed(tmp_path_factory.mktemp("ck"), step, n, k, batches)
    assert_trees_equal(straight, resumed)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    tree = {"a": torch.arange(4.0), "b": {"c": torch.ones(2, dtype=torch.int64)}}
    path = checkpoint.save(tmp_path / "x.safetensors", tree)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"a": torch.zeros(4)})
    assert path.read_bytes() == before  # the old checkpoint survives a failed write
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors"]


def test_roundtrip_keeps_dtypes_shapes_and_namedtuples(tmp_path):
    state = optim.adam(1e-3).init({"w": torch.randn(3, 2, dtype=torch.float64)})
    tree = {
        "opt": state,
        "bf16": torch.randn(4).to(torch.bfloat16),
        "flag": torch.tensor(True),
        "view": torch.arange(6.0).reshape(2, 3).t(),  # non-contiguous
    }
    tree["alias"] = tree["bf16"]  # shared storage is fine
    path = checkpoint.save(tmp_path / "t.safetensors", tree, {"note": "hi"})
    back, meta = checkpoint.load(path, tree)
    assert meta == {"note": "hi"}
    assert type(back["opt"]) is type(state)
    assert_trees_equal(back, tree)
    untemplated, _ = checkpoint.load(path)
    assert set(untemplated) == {"opt", "bf16", "flag", "view", "alias"}


def test_file_is_plain_safetensors_with_json_metadata(tmp_path):
    from safetensors import safe_open

    path = checkpoint.save(tmp_path / "m.safetensors", {"w": torch.ones(2)}, {"vocab": ["a", "b"]})
    with safe_open(str(path), framework="pt") as f:
        doc = json.loads(f.metadata()["fctc"])
        assert list(f.keys()) == ["w"]
    assert doc["format"] == "fctc-checkpoint" and doc["metadata"] == {"vocab": ["a", "b"]}
    assert doc["leaves"]["w"] == {"shape": [2], "dtype": "torch.float32"}


def test_truncated_file_names_the_problem(tmp_path):
    path = checkpoint.save(tmp_path / "t.safetensors", {"w": torch.randn(1000)})
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for cut in (len(data) - 7, 40, 3):
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            checkpoint.load(bad, {"w": torch.zeros(1000)})
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.safetensors")


def test_mismatched_template_names_the_keys(tmp_path):
    path = checkpoint.save(tmp_path / "t.safetensors", {"a": torch.zeros(2), "b": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"missing \['c'\], unexpected \['b'\]"):
        checkpoint.load(path, {"a": torch.zeros(2), "c": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="'b' is stored as torch.float32 \\(3,\\)"):
        checkpoint.load(path, {"a": torch.zeros(2), "b": torch.zeros(4)})
    with pytest.raises(CheckpointError, match="'b' is stored as torch.float32"):
        checkpoint.load(path, {"a": torch.zeros(2), "b": torch.zeros(3, dtype=torch.float64)})


def test_non_tensor_leaves_and_bad_metadata_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="leaf 'n' is a int"):
        checkpoint.save(tmp_path / "x.safetensors", {"n": 3})
    with pytest.raises(CheckpointError, match="JSON-serialisable"):
        checkpoint.save(tmp_path / "x.safetensors", {"w": torch.ones(1)}, {"obj": object()})


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="no fctc metadata"):
        checkpoint.load(tmp_path / "foreign.safetensors")


def test_model_alone_roundtrip_and_from_train_state(tmp_path):
    model = tiny_model(norm="batch")
    params, state = model.init(random.key(0))
    path = checkpoint.save_model(tmp_path / "model.safetensors", params, state, {"config": {"h": 16}})
    p2, s2, meta = checkpoint.load_model(path, (params, state))
    assert_trees_equal((p2, s2), (params, state))
    assert meta["kind"] == "model" and meta["config"] == {"h": 16}
    step = fctc.train.make_train_step(model, optim.sgd(0.1), blank=BLANK)
    ts, _ = step(step.init_state(random.key(0)), tiny_batch(0))
    tpath = checkpoint.save_train_state(tmp_path / "ts.safetensors", ts)
    p3, s3, _ = checkpoint.load_model(tpath)
    assert_trees_equal(fctc.tree.flatten_dict(p3), fctc.tree.flatten_dict(ts.params))
    assert_trees_equal(fctc.tree.flatten_dict(s3), fctc.tree.flatten_dict(ts.model_state))
