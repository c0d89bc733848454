"""Issue 15 items 8 and 9: every user error of the ``fctc`` program is one line and exit 2.

The line is ``fctc <command>: error: ...``; it names the config key with its ``file:line`` (or
the flag, the manifest line, the file) and what to do, and no internal name (a function, a
class, a library's exception type) leaks into it. Config values are validated against
``fctc.cli.schema.RULES``, the one place their ranges live.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from fctc.cli import schema
from fctc.cli.config import ConfigError, default_config, load_config, merge_config
from fctc.cli.errors import RunError, user_error_message

from cli_helpers import TINY, bundled_audio, deep_update, few_manifest, run_cli, tensors, write_config

INTERNAL = ("Traceback", "bucket_batches", "read_manifest", "SpeechDataset", "SafetensorError",
            "ZeroDivisionError", "could not convert", "ManifestError", "AudioError",
            "ConfigError", "RunError", "on_error='skip'")


def one_line_error(rc: int, err: str, command: str) -> str:
    """Check the one-line form (the last line of stderr, after any progress messages);
    returns the line."""
    lines = err.splitlines()
    assert rc == 2, err
    assert [line.startswith(f"fctc {command}: error: ") for line in lines].count(True) == 1, err
    assert lines[-1].startswith(f"fctc {command}: error: "), err
    assert "Traceback" not in err
    assert not any(name in lines[-1] for name in INTERNAL), lines[-1]
    return lines[-1]


def train_with(tmp_path: Path, override: dict, *flags: str) -> str:
    path = write_config(tmp_path / "bad.yaml", deep_update(TINY, override))
    rc, _, err = run_cli("train", "--config", str(path), "--out", str(tmp_path / "run"),
                         "--no-progress", *flags)
    return one_line_error(rc, err, "train")


def _line_of(path: Path, key: str) -> int:
    """The 1-based line of the last part of a dotted key in a YAML file."""
    name = key.split(".")[-1]
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1)
                if line.strip().startswith(f"{name}:"))


# Each case: an override, the key that must be named, and what it must be (the fix).
VALUE_CASES = [
    ({"optimizer": {"learning_rate": "fast"}}, "optimizer.learning_rate", "a number > 0"),
    ({"optimizer": {"learning_rate": -1e-3}}, "optimizer.learning_rate", "a number > 0"),
    ({"optimizer": {"b1": 1.5}}, "optimizer.b1", "a number in [0, 1)"),
    ({"optimizer": {"b2": 1.0}}, "optimizer.b2", "a number in [0, 1)"),
    ({"optimizer": {"eps": 0}}, "optimizer.eps", "a number > 0"),
    ({"optimizer": {"clip_grad_norm": -1}}, "optimizer.clip_grad_norm", "a number > 0 or null"),
    ({"data": {"batch_size": -4}}, "data.batch_size", "an integer >= 1 or null"),
    ({"data": {"max_batch_seconds": 0}}, "data.max_batch_seconds", "a number > 0 or null"),
    ({"data": {"num_workers": -1}}, "data.num_workers", "an integer >= 0"),
    ({"data": {"on_error": "ignore"}}, "data.on_error", "one of skip, stop"),
    ({"data": {"sample_rate": 0}}, "data.sample_rate", "an integer >= 1"),
    ({"data": {"limit": 0}}, "data.limit", "an integer >= 1 or null"),
    ({"training": {"log_every": 0}}, "training.log_every", "an integer >= 1"),
    ({"training": {"eval_every": 0}}, "training.eval_every", "an integer >= 1"),
    ({"training": {"checkpoint_every": -1}}, "training.checkpoint_every", "an integer >= 1"),
    ({"training": {"epochs": -3, "max_steps": None}}, "training.epochs", "an integer >= 1"),
    ({"training": {"max_steps": 2.5}}, "training.max_steps", "an integer >= 1 or null"),
    ({"training": {"accumulate_batches": 0}}, "training.accumulate_batches", "an integer >= 1"),
    ({"training": {"precision": "fp64"}}, "training.precision", "one of fp32, bf16, fp16"),
    ({"training": {"jit": "fast"}}, "training.jit", "true, false, step or reduce-overhead"),
    ({"schedule": {"warmup_fraction": 1.5}}, "schedule.warmup_fraction", "a number in [0, 1)"),
    ({"decoding": {"beam_size": 0}}, "decoding.beam_size", "an integer >= 1"),
    ({"seed": -1}, "seed", "an integer >= 0"),
    ({"threads": 0}, "threads", "an integer >= 1 or null"),
    ({"device": "tpu"}, "device", "cpu, cuda, cuda:N or auto"),
]


@pytest.mark.parametrize("override, key, rule", VALUE_CASES, ids=[c[1] for c in VALUE_CASES])
def test_config_values_are_checked_with_file_line_and_the_rule(tmp_path, override, key, rule):
    line = train_with(tmp_path, override)
    path = tmp_path / "bad.yaml"
    assert f"{path}:{_line_of(path, key)}: {key} must be {rule}" in line
    assert not (tmp_path / "run" / "last").exists()


def test_epochs_are_named_as_epochs_not_as_max_steps(tmp_path):
    line = train_with(tmp_path, {"training": {"epochs": -3, "max_steps": None}})
    assert "training.epochs" in line and "max_steps" not in line and "-60" not in line


def test_numeric_strings_are_numbers():
    """YAML 1.1 reads ``1e-3`` as a string; a number key takes it as the number."""
    config = merge_config(default_config(), {"optimizer": {"learning_rate": "1e-3"}})
    assert schema.validate_config(config)["optimizer"]["learning_rate"] == 1e-3


def test_every_scalar_key_has_a_rule_in_one_place():
    """The schema covers every scalar key of default.yaml but the model section's, and names
    no key default.yaml lacks (renaming a key is then a one-line change in RULES)."""

    def scalars(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from scalars(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    keys = {k for k in scalars(default_config()) if not k.startswith("model.")}
    assert keys == set(schema.RULES)
    assert schema.validate_config(default_config()) == load_config()


def test_both_batch_limits_null(tmp_path):
    line = train_with(tmp_path, {"data": {"batch_size": None, "max_batch_seconds": None}})
    assert "data.batch_size" in line and "data.max_batch_seconds" in line and "set one" in line


def test_yaml_syntax_and_unknown_keys_name_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  max_steps: 4\n   log_every: 2\n")
    rc, _, err = run_cli("train", "--config", str(path), "--out", str(tmp_path / "run"))
    assert f"{path}:3: not valid YAML" in one_line_error(rc, err, "train")
    path.write_text("data:\n  limit: 3\ntraining:\n  max_step: 4\n")
    rc, _, err = run_cli("train", "--config", str(path), "--out", str(tmp_path / "run"))
    assert f"{path}:4: unknown config key ['max_step']" in one_line_error(rc, err, "train")
    rc, _, err = run_cli("train", "--config", str(tmp_path), "--out", str(tmp_path / "run"))
    assert "is a folder" in one_line_error(rc, err, "train")


@pytest.mark.parametrize("flags, named", [
    (["--max-steps", "0"], "--max-steps: training.max_steps must be an integer >= 1"),
    (["--seed", "-2"], "--seed: seed must be an integer >= 0"),
    (["--device", "tpu"], "--device: device must be cpu, cuda, cuda:N or auto"),
    (["--max-steps", "many"], "argument --max-steps: invalid int value: 'many'"),
])
def test_flag_errors_name_the_flag(tmp_path, flags, named):
    line = train_with(tmp_path, {}, *flags)
    assert named in line


def _manifest(tmp_path: Path, lines: list[str]) -> Path:
    audio = bundled_audio()
    good = json.dumps({"audio_filepath": str(audio), "duration": 1.0, "text": "one"})
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join([good, *lines]) + "\n")
    return path


@pytest.mark.parametrize("line, named", [
    ('{"audio_filepath": "a.flac", "text": ', "m.jsonl:2: not valid JSON"),
    ('{"audio_filepath": "a.flac", "duration": 1}', "m.jsonl:2: missing field(s) ['text']"),
    ('{"audio_filepath": "a.flac", "duration": "long", "text": "x"}',
     "m.jsonl:2: 'duration' must be a number of seconds"),
])
def test_manifest_errors_name_the_line_in_train_and_eval(straight_run, tmp_path, line, named):
    manifest = _manifest(tmp_path, [line])
    assert named in train_with(tmp_path, {"data": {"train": str(manifest)}})
    run, _, _ = straight_run
    rc, _, err = run_cli("eval", "--checkpoint", str(run), "--manifest", str(manifest))
    assert named in one_line_error(rc, err, "eval")


def test_stop_policy_names_the_line_and_the_config_key(tmp_path):
    manifest = _manifest(tmp_path, [json.dumps({"audio_filepath": str(tmp_path / "gone.flac"),
                                                "duration": 1.0, "text": "two"})])
    line = train_with(tmp_path, {"data": {"train": str(manifest), "on_error": "stop"}})
    assert "m.jsonl:2: the audio file does not exist" in line
    assert "set data.on_error: skip" in line
    line = train_with(tmp_path, {"data": {"train": str(tmp_path / "missing.jsonl")}})
    assert "data.train: manifest" in line and "missing.jsonl does not exist" in line


def test_checkpoint_given_a_file_and_eval_flags(straight_run, tmp_path):
    run, _, _ = straight_run
    file = run / "best" / "model.safetensors"
    for command in (["eval", "--manifest", str(few_manifest(tmp_path / "m.jsonl", 1))],
                    ["transcribe", str(bundled_audio())]):
        rc, _, err = run_cli(command[0], "--checkpoint", str(file), *command[1:])
        line = one_line_error(rc, err, command[0])
        assert f"checkpoint {file} is a file" in line and str(run / "best") in line
    rc, _, err = run_cli("eval", "--checkpoint", str(run), "--manifest",
                         str(tmp_path / "m.jsonl"), "--batch-seconds", "0")
    assert "--batch-seconds must be" in one_line_error(rc, err, "eval")


def test_eval_output_into_a_missing_folder_fails_before_evaluating(straight_run, tmp_path,
                                                                    monkeypatch):
    import fctc.cli.evaluate

    def never(*args, **kwargs):
        raise AssertionError("evaluated before checking --output")

    monkeypatch.setattr(fctc.cli.evaluate, "evaluate_manifest", never)
    monkeypatch.setattr(fctc.inference, "load", never)
    run, _, _ = straight_run
    out = tmp_path / "no" / "such" / "results.jsonl"
    rc, _, err = run_cli("eval", "--checkpoint", str(run), "--manifest",
                         str(few_manifest(tmp_path / "m.jsonl", 1)), "--output", str(out))
    assert f"--output {out}: the folder {out.parent} does not exist" in one_line_error(rc, err, "eval")


def test_read_only_out_is_one_line(tmp_path, monkeypatch):
    """A folder that cannot be created (a read-only disk; we may be root, so simulated)."""
    target = tmp_path / "ro" / "run"
    original = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    path = write_config(tmp_path / "tiny.yaml", TINY)
    rc, _, err = run_cli("train", "--config", str(path), "--out", str(target), "--no-progress")
    line = one_line_error(rc, err, "train")
    assert str(target) in line and "Permission denied" in line and "--out" in line


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The writer fails with ENOSPC on the second save: one line, last/ from the first save."""
    import fctc.checkpoint

    config = deep_update(TINY, {"training": {"eval_every": 100, "checkpoint_every": 1},
                                "data": {"validation": None, "test": None}})
    path = write_config(tmp_path / "tiny.yaml", config)
    out = tmp_path / "run"
    original, calls = fctc.checkpoint.save_file, []

    def save_file(tensors_, filename, metadata=None):
        calls.append(filename)
        if len(calls) > 2:  # last/ of step 1 is model + train state; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors_, filename, metadata=metadata)

    monkeypatch.setattr(fctc.checkpoint, "save_file", save_file)
    rc, _, err = run_cli("train", "--config", str(path), "--out", str(out), "--no-progress")
    line = one_line_error(rc, err, "train")
    assert f"could not save the checkpoint {out / 'last'}: No space left on device" in line
    assert "previous checkpoint" in line and f"--resume {out}" in line
    meta = fctc.checkpoint.read_metadata(out / "last" / "train_state.safetensors")["metadata"]
    assert meta["step"] == 1 and not (out / "last.tmp").exists()
    monkeypatch.undo()
    assert run_cli("train", "--resume", str(out), "--no-progress")[0] == 0


def test_user_error_message_of_os_and_other_errors():
    e = OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.csv")
    assert user_error_message(e) == ("runs/x/metrics.csv: No space left on device; free some "
                                     "disk space (or choose another folder) and run again")
    assert user_error_message(RunError("a\nb")) == "a; b"
    assert user_error_message(ZeroDivisionError("x")) is None  # a bug keeps its traceback
    assert user_error_message(ConfigError("bad key", key="a.b")) == "bad key"


def test_resume_refuses_an_edited_config(straight_run, tmp_path):
    """Item 9: an edit to a run's config.yaml is refused on --resume, naming the key."""
    run, _, _ = straight_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    saved = config["optimizer"]["learning_rate"]
    assert saved != 0.1
    config["optimizer"]["learning_rate"] = 0.1
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rc, _, err = run_cli("train", "--resume", str(copy), "--no-progress")
    line = one_line_error(rc, err, "train")
    assert f"{copy / 'config.yaml'} was edited" in line
    assert f"optimizer.learning_rate: 0.1 there, {saved} in the checkpoint" in line
    assert f"--config {copy / 'config.yaml'}" in line
    before = tensors(copy / "last")
    assert all(torch.equal(before[k], v) for k, v in tensors(run / "last").items())
