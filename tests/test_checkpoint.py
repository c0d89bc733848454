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


# -- checksums, old files, file modes, finiteness (issue 15) ------------------------------------


def _layout(path):
    """``(data start, safetensors header)`` of a safetensors file, read by hand."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return 8 + n, json.loads(data[8 : 8 + n])


def _flip(path, name, where=0.5, mask=0xFF):
    """Flip bits of one byte inside tensor ``name``'s stored bytes."""
    start, header = _layout(path)
    lo, hi = header[name]["data_offsets"]
    data = bytearray(path.read_bytes())
    data[start + lo + min(int((hi - lo) * where), hi - lo - 1)] ^= mask
    path.write_bytes(bytes(data))


def _trained_state(norm="batch"):
    model = tiny_model(norm=norm)
    step = fctc.train.make_train_step(model, optim.adamw(1e-2), blank=BLANK)
    state, _ = step(step.init_state(random.key(0)), tiny_batch(0))
    return step, state


def test_checksums_are_the_sha256_of_each_tensors_stored_bytes(tmp_path):
    import hashlib

    tree = {"w": torch.randn(3, 4), "b": torch.arange(5), "h": torch.randn(2).bfloat16(),
            "flag": torch.tensor(True), "empty": torch.zeros(0, 3)}
    path = checkpoint.save(tmp_path / "c.safetensors", tree, {"step": 3})
    start, header = _layout(path)
    data = path.read_bytes()
    digests = checkpoint.read_metadata(path)["sha256"]["tensors"]
    assert set(digests) == set(tree)
    for name in tree:
        lo, hi = header[name]["data_offsets"]
        assert digests[name] == hashlib.sha256(data[start + lo : start + hi]).hexdigest(), name


@pytest.mark.parametrize(
    "name", ["params.layer.0.weight", "state.layer.1.running_var", "params.layer.3.bias"]
)
def test_a_flipped_byte_in_model_safetensors_is_refused(tmp_path, name):
    model = tiny_model(norm="batch")
    params, state = model.init(random.key(0))
    path = checkpoint.save_model(tmp_path / "model.safetensors", params, state, {"config": {}})
    checkpoint.load_model(path, (params, state))  # intact: loads
    _flip(path, name)
    for load in (lambda: checkpoint.load_model(path, (params, state)),
                 lambda: checkpoint.load_model(path), lambda: checkpoint.load(path)):
        with pytest.raises(CheckpointError, match="checksum") as err:
            load()
        assert str(path) in str(err.value) and repr(name) in str(err.value)


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_a_flipped_byte_in_train_state_safetensors_is_refused(tmp_path, where):
    step, state = _trained_state()
    path = checkpoint.save_train_state(tmp_path / "train_state.safetensors", state, {"epoch": 0})
    names = checkpoint.leaf_names(state)
    for name in ("params.layer.0.weight", "opt_state.0.mu.layer.3.weight",
                 "model_state.layer.1.running_mean"):
        assert name in names
        good = path.read_bytes()
        _flip(path, name, where)
        with pytest.raises(CheckpointError, match=rf"{path}.*{name!r}.*checksum"):
            checkpoint.load_train_state(path, step.init_state(random.key(1)))
        with pytest.raises(CheckpointError, match="checksum"):
            checkpoint.load_model(path)  # the model part of a train state is checked as well
        path.write_bytes(good)
    back, _ = checkpoint.load_train_state(path, step.init_state(random.key(1)))
    assert_trees_equal(back, state)


@pytest.mark.parametrize("mask", [0xFF, 0x01, 0x20])
def test_every_single_byte_change_anywhere_in_the_file_is_refused(tmp_path, mask):
    """No byte of a checkpoint (length prefix, safetensors header, fctc metadata, padding,
    tensor data) can change without load, load_model and read_metadata noticing (or, for
    read_metadata, without the change lying in tensor data, which only loading reads)."""
    tree = {"params": {"w": torch.randn(3, dtype=torch.float64), "b": torch.arange(2)},
            "state": {"n": torch.tensor(7)}}
    path = checkpoint.save(tmp_path / "m.safetensors", tree, {"kind": "model", "step": 12})
    good = path.read_bytes()
    start, _ = _layout(path)
    bad = tmp_path / "bad.safetensors"
    for i in range(len(good)):
        data = bytearray(good)
        data[i] ^= mask
        bad.write_bytes(bytes(data))
        with pytest.raises(CheckpointError):
            checkpoint.load(bad, tree)
        with pytest.raises(CheckpointError):
            checkpoint.load(bad)
        if i < start:
            with pytest.raises(CheckpointError):
                checkpoint.read_metadata(bad)


def _rewrite_fctc_document(path, edit):
    """Rewrite a checkpoint's fctc JSON document with ``edit(doc)``, tensors untouched."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        doc = json.loads(f.metadata()["fctc"])
    edit(doc)
    save_file(tensors, str(path), metadata={"fctc": json.dumps(doc)})


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["metadata"].update(step=4),
        lambda d: d["metadata"].update(config={"lr": 1.0}),
        lambda d: d["leaves"]["w"].update(shape=[4]),
        lambda d: d["sha256"]["tensors"].update(w="0" * 64),
        lambda d: d["sha256"]["tensors"].pop("w"),
        lambda d: d.pop("sha256"),
        lambda d: d["sha256"].pop("document"),
        lambda d: d.update(fctc_version="9.9"),
    ],
    ids=["step", "config", "shape", "tensor-digest", "missing-digest", "no-checksums",
         "no-document-digest", "version"],
)
def test_edited_metadata_is_refused(tmp_path, edit):
    path = checkpoint.save(tmp_path / "e.safetensors", {"w": torch.ones(2)}, {"step": 3})
    _rewrite_fctc_document(path, edit)
    for read in (lambda: checkpoint.read_metadata(path), lambda: checkpoint.load(path),
                 lambda: checkpoint.load(path, {"w": torch.zeros(2)})):
        with pytest.raises(CheckpointError, match=str(path)) as err:
            read()
        assert "checksum" in str(err.value) or "modified" in str(err.value)


def test_a_same_length_edit_of_the_metadata_is_refused(tmp_path):
    """Editing the step in place (the safetensors header stays valid) is caught too."""
    step, state = _trained_state()
    path = checkpoint.save_train_state(tmp_path / "train_state.safetensors", state, {"epoch": 3})
    data = path.read_bytes()
    assert data.count(b'\\"epoch\\": 3') == 1
    path.write_bytes(data.replace(b'\\"epoch\\": 3', b'\\"epoch\\": 4'))
    with pytest.raises(CheckpointError, match="modified"):
        checkpoint.read_metadata(path)
    with pytest.raises(CheckpointError, match="modified"):
        checkpoint.load_train_state(path, step.init_state(random.key(1)))


def test_a_truncated_train_state_is_refused(tmp_path):
    step, state = _trained_state()
    path = checkpoint.save_train_state(tmp_path / "train_state.safetensors", state)
    data = path.read_bytes()
    start, _ = _layout(path)
    for cut in (len(data) - 1, (start + len(data)) // 2, start, start - 1, 9):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"{path}.*(truncated or corrupt)"):
            checkpoint.load_train_state(path, step.init_state(random.key(1)))


def _save_format_1(path, tree, metadata):
    """Write ``tree`` exactly as fctc 0.1.0 did: format version 1, no checksums."""
    from safetensors.torch import save_file

    names = checkpoint.leaf_names(tree)
    tensors = {n: x.contiguous() for n, x in zip(names, fctc.tree.leaves(tree))}
    doc = {
        "format": "fctc-checkpoint", "format_version": 1, "fctc_version": "0.1.0",
        "leaves": {n: {"shape": list(x.shape), "dtype": str(x.dtype)} for n, x in tensors.items()},
        "metadata": metadata,
    }
    save_file(tensors, str(path), metadata={"fctc": json.dumps(doc)})
    return path


def test_checkpoints_from_before_checksums_load_with_a_warning(tmp_path):
    step, state = _trained_state()
    path = _save_format_1(tmp_path / "old.safetensors", state, {"kind": "train_state", "step": 1})
    template = step.init_state(random.key(1))
    with pytest.warns(checkpoint.CheckpointWarning, match=rf"{path}.*no checksums.*save it again"):
        back, meta = checkpoint.load_train_state(path, template)
    assert_trees_equal(back, state) and meta["step"] == 1
    import warnings

    # Once per file: reading it again (fctc eval reads the document, then the tensors; a resume
    # reads it three times) says nothing new.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p, s, _ = checkpoint.load_model(path)
        assert checkpoint.read_metadata(path)["format_version"] == 1
    assert_trees_equal(fctc.tree.flatten_dict(p), fctc.tree.flatten_dict(state.params))
    other = _save_format_1(tmp_path / "other.safetensors", state, {"kind": "train_state", "step": 1})
    with pytest.warns(checkpoint.CheckpointWarning, match="other.safetensors"):
        checkpoint.read_metadata(other)  # another file warns
    _save_format_1(path, state, {"kind": "train_state", "step": 12345})  # rewritten: warns again
    with pytest.warns(checkpoint.CheckpointWarning, match="old.safetensors"):
        checkpoint.read_metadata(path)
    # Their structure is still checked: a tensor the index does not list is refused.
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = f.metadata()
    extra = tmp_path / "extra.safetensors"
    save_file({**tensors, "stray": torch.ones(1)}, str(extra), metadata=header)
    with pytest.raises(CheckpointError, match="differ from its index"):
        checkpoint.load_train_state(extra, template)
    # Saving it again adds the checksums: no warning from then on.
    again = checkpoint.save_train_state(tmp_path / "new.safetensors", back, meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.load_train_state(again, template)


def test_checkpoint_files_respect_the_umask(tmp_path):
    import stat

    params, state = tiny_model().init(random.key(0))
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            model = checkpoint.save_model(tmp_path / f"m{umask:o}.safetensors", params, state)
            tree = checkpoint.save(tmp_path / f"t{umask:o}.safetensors", {"w": torch.ones(1)})
        finally:
            os.umask(old)
        for path in (model, tree):
            assert stat.S_IMODE(path.stat().st_mode) == mode, (oct(umask), path)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_check_finite_names_the_first_non_finite_tensor():
    tree = {"a": {"w": torch.ones(3)}, "b": torch.tensor([1.0, float("nan")]),
            "c": torch.tensor([float("inf")]), "n": torch.arange(3)}
    with pytest.raises(CheckpointError, match=r"'b' holds 1 non-finite value"):
        checkpoint.check_finite(tree)
    with pytest.raises(CheckpointError, match=r"^run/x.safetensors: 'c' holds 1 non-finite"):
        checkpoint.check_finite({"c": tree["c"], "a": tree["a"]}, "run/x.safetensors")
    checkpoint.check_finite({"a": tree["a"], "n": tree["n"], "h": torch.ones(2).half()})


def test_require_finite_refuses_non_finite_parameters_on_load(tmp_path):
    step, state = _trained_state()
    w = state.params["layer"]["0"]["weight"].clone()
    w[1, 2, 0] = float("nan")
    params = {"layer": {**state.params["layer"], "0": {**state.params["layer"]["0"], "weight": w}}}
    bad = state._replace(params=params)
    path = checkpoint.save_train_state(tmp_path / "train_state.safetensors", bad)
    template = step.init_state(random.key(1))
    back, _ = checkpoint.load_train_state(path, template)  # allowed unless asked
    assert torch.isnan(back.params["layer"]["0"]["weight"]).sum() == 1
    with pytest.raises(CheckpointError, match=rf"{path}.*'params.layer.0.weight' holds 1 non-finite"):
        checkpoint.load_train_state(path, template, require_finite=True)
    mpath = checkpoint.save_model(tmp_path / "model.safetensors", params, state.model_state)
    with pytest.raises(CheckpointError, match=r"'params.layer.0.weight' holds 1 non-finite"):
        checkpoint.load_model(mpath, require_finite=True)
    # Running statistics count as the model's too; optimiser moments are not checked.
    stats = {"layer": {**state.model_state["layer"], "1": {
        **state.model_state["layer"]["1"], "running_var": torch.full((16,), float("inf"))}}}
    path2 = checkpoint.save_train_state(tmp_path / "t2.safetensors", state._replace(model_state=stats))
    with pytest.raises(CheckpointError, match=r"'model_state.layer.1.running_var' holds 16"):
        checkpoint.load_train_state(path2, template, require_finite=True)
