"""The ``fctc`` command line: train / eval / transcribe, checkpoints, exact resume, Ctrl-C, config.

Every run uses a tiny model on a few bundled utterances (``data.limit``), so the whole file
takes seconds of compute; the run that several tests look at is the shared ``straight_run``
fixture (tests/conftest.py). Errors, locks, data parallel and the rest of issue 15's cases are
in test_cli_*.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import fctc
import fctc.testing
from fctc import data
from fctc.cli import build_parser, main
from fctc.cli import logs as cli_logs
from fctc.cli.checkpoints import load_checkpoint_model, resolve_checkpoint, save_checkpoint_dir
from fctc.cli.config import REPLACED_WHOLE, ConfigError, default_config, load_config, merge_config
from fctc.cli.progress import Progress
from fctc.cli.recipe import (
    build_front_end,
    build_model,
    build_optimizer,
    build_vocabulary,
    output_frames,
    total_updates,
)
from fctc.models import augmented_front_end, cached_front_end
from fctc.cli.train import INTERRUPTED_EXIT, default_out_dir, resolve_device
from fctc.lexicon import lexicon_words, read_lexicon
from fctc.lm import KneserNeyLM

from cli_helpers import STEPS, TINY  # noqa: F401  (the shared tiny recipe; fixtures in conftest)
from cli_helpers import deep_update as _deep_update
from cli_helpers import few_manifest, run_cli
from cli_helpers import tensors as _tensors
from cli_helpers import train_rows as _train_rows
from cli_helpers import write_config as _write


# -- fctc train ------------------------------------------------------------------------------


def test_train_writes_metrics_checkpoints_plot_and_test_results(straight_run):
    out, rc, stdout = straight_run
    assert rc == 0
    rows = _train_rows(out)
    assert list(rows[0]) == list(cli_logs.COLUMNS)
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "validation"]
    assert [int(r["step"]) for r in train] == list(range(1, STEPS + 1))
    assert [int(r["step"]) for r in val] == [2, 4]
    assert all(math.isfinite(float(r["loss"])) and float(r["utterances_per_s"]) > 0 for r in train)
    assert all(0.0 <= float(r["val_cer"]) for r in val)
    assert (out / "last" / "train_state.safetensors").is_file()
    assert (out / "best" / "model.safetensors").is_file()
    assert (out / "config.yaml").is_file()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "test_results.json").read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == result
    assert {"cer", "wer", "n", "loss", "step"} <= set(result) and result["n"] > 0
    lines = (out / "test_predictions.jsonl").read_text().splitlines()
    assert len(lines) == result["n"]
    # best/ holds the step with the lowest validation CER (ties keep the earlier one).
    best_step = min(val, key=lambda r: float(r["val_cer"]))["step"]
    assert result["step"] == int(best_step)


def test_checkpoint_metadata_rebuilds_the_model(straight_run):
    out, _, _ = straight_run
    loaded = load_checkpoint_model(out / "last")
    assert loaded.config["model"]["front_end"] == {"nfilt": 16}
    assert loaded.metadata["step"] == STEPS
    assert loaded.vocabulary.itos[:27] == list(fctc.corpus.CHARACTERS)
    model_file = _tensors(out / "last")
    state_file = _tensors(out / "last", "train_state.safetensors")
    names = [k for k in state_file if k.startswith("params.")]
    assert names and all(torch.equal(model_file[k], state_file[k]) for k in names)
    flat = dict(zip(fctc.checkpoint.leaf_names(loaded.params), fctc.tree.leaves(loaded.params)))
    assert all(torch.equal(flat[k[len("params."):]], state_file[k]) for k in names)


def test_eval_prints_one_json_line_and_writes_per_utterance_results(straight_run, tmp_path, capsys):
    out, _, _ = straight_run
    manifest = tmp_path / "few.jsonl"
    lines = data.bundled_manifests()["test"].read_text().splitlines()[:5]
    base = data.bundled_manifests()["test"].parent
    rows = [json.loads(line) for line in lines]
    for r in rows:
        r["audio_filepath"] = str(base / r["audio_filepath"])
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = tmp_path / "results.jsonl"
    rc = main(["eval", "--checkpoint", str(out), "--manifest", str(manifest),
               "--output", str(results), "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    result = json.loads(printed[0])
    assert result["n"] == 5 and 0 <= result["cer"] and 0 <= result["wer"]
    per = [json.loads(x) for x in results.read_text().splitlines()]
    assert len(per) == 5
    assert sorted(p["reference"] for p in per) == sorted(r["text"] for r in rows)
    counts = fctc.metrics.error_counts([p["prediction"] for p in per], [p["reference"] for p in per])
    assert result["cer"] == pytest.approx(counts.cer)
    # transcribe gives, file by file, the transcripts eval scored.
    files = [p["audio_filepath"] for p in per[:2]]
    assert main(["transcribe", "--checkpoint", str(out), *files, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == [p["prediction"] for p in per[:2]]


# -- decoding: the run's lexicon and LM, the decoder flags, fctc lm --------------------------


def _few(tmp_path: Path, n: int = 5) -> Path:
    """A manifest of the first ``n`` bundled test utterances, with absolute audio paths."""
    return few_manifest(tmp_path / "few.jsonl", n)


def test_train_writes_the_lexicon_and_lm_of_its_training_texts(straight_run):
    out, _, _ = straight_run
    texts = [u.text for u in data.read_manifest(data.bundled_manifests()["train"])[:12]]
    assert list(read_lexicon(out / "lexicon.txt")) == lexicon_words(texts)
    assert (out / "lm.arpa").read_text() == KneserNeyLM(texts, order=3).to_arpa()


def _eval(out: Path, manifest: Path, results: Path, capsys, *flags: str):
    rc = main(["eval", "--checkpoint", str(out), "--manifest", str(manifest), "--output",
               str(results), "--device", "cpu", *flags])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    return json.loads(captured.out.strip().splitlines()[-1]), rows, captured.err


def test_eval_and_transcribe_decode_as_the_flags_say(straight_run, tmp_path, capsys):
    out, _, _ = straight_run
    manifest, results = _few(tmp_path), tmp_path / "results.jsonl"
    result, rows, _ = _eval(out, manifest, results, capsys)  # the default: what the run carries
    assert result["decoding"]["decoder"] == "beam"
    assert result["decoding"]["lexicon"] == str(out / "lexicon.txt")
    assert result["decoding"]["lm"] == str(out / "lm.arpa")
    words = set(read_lexicon(out / "lexicon.txt"))
    assert all(set(r["prediction"].split()) <= words for r in rows)
    files = [r["audio_filepath"] for r in rows]
    assert main(["transcribe", "--checkpoint", str(out), *files, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == [r["prediction"] for r in rows]
    # Greedy: the transcripts fctc train's own test pass wrote for the same files.
    result, rows, _ = _eval(out, manifest, results, capsys, "--decoder", "greedy")
    assert result["decoding"] == {"decoder": "greedy"}
    train_rows = [json.loads(x) for x in (out / "test_predictions.jsonl").read_text().splitlines()]
    by_file = {r["audio_filepath"]: r["prediction"] for r in train_rows}
    assert all(by_file[r["audio_filepath"]] == r["prediction"] for r in rows)
    flags = ["--decoder", "beam", "--beam-size", "8", "--lexicon", "none", "--lm", "none"]
    result, rows, _ = _eval(out, manifest, results, capsys, *flags)
    assert (result["decoding"]["beam_size"], result["decoding"]["lexicon"]) == (8, None)
    assert main(["transcribe", "--checkpoint", str(out), *files, "--device", "cpu", *flags]) == 0
    assert capsys.readouterr().out.splitlines() == [r["prediction"] for r in rows]
    flags = ["--lm-weight", "0.5", "--word-score", "1.5", "--lexicon", str(out / "lexicon.txt")]
    result, _, _ = _eval(out, manifest, results, capsys, *flags)
    assert result["decoding"]["lm_weight"] == 0.5 and result["decoding"]["word_score"] == 1.5
    assert result["decoding"]["lm"] == str(out / "lm.arpa")


def test_beam_search_without_the_decode_extra(straight_run, tmp_path, capsys, monkeypatch):
    out, _, _ = straight_run
    manifest, results = _few(tmp_path, 2), tmp_path / "results.jsonl"
    monkeypatch.setattr(fctc.inference, "beam_search_available", lambda: False)
    for flags in (["--decoder", "beam"], ["--lm-weight", "2"]):
        rc = main(["eval", "--checkpoint", str(out), "--manifest", str(manifest), *flags])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1
        assert "pip install 'fctc[decode]'" in err
    result, _, err = _eval(out, manifest, results, capsys)  # the default falls back to greedy
    assert result["decoding"] == {"decoder": "greedy"}
    assert "note: decoding greedily" in err


def test_decoding_errors_are_one_line(straight_run, tmp_path, capsys):
    out, _, _ = straight_run
    audio = str(data.bundled_manifests()["test"].parent / "test" / "0000.flac")
    cases = [
        (["--lexicon", str(tmp_path / "missing.txt")], "missing.txt"),
        (["--lexicon", "none", "--lm", str(out / "lm.arpa")], "needs a lexicon"),
        (["--decoder", "greedy", "--beam-size", "3"], "only apply to beam"),
    ]
    for flags, named in cases:
        assert main(["transcribe", "--checkpoint", str(out), audio, *flags]) == 2
        err = capsys.readouterr().err
        assert named in err and err.count("\n") == 1


def test_lm_command_writes_arpa_and_lexicon(tmp_path, capsys):
    manifest = data.bundled_manifests()["validation"]
    arpa, lexicon = tmp_path / "lm.arpa", tmp_path / "lexicon.txt"
    rc = main(["lm", "--manifest", str(manifest), "--order", "2", "--out", str(arpa),
               "--lexicon", str(lexicon)])
    assert rc == 0
    texts = [u.text for u in data.read_manifest(manifest)]
    assert arpa.read_text() == fctc.lm.build_arpa(texts, order=2)
    assert list(read_lexicon(lexicon)) == lexicon_words(texts)
    summary = json.loads(capsys.readouterr().out)
    assert summary["order"] == 2 and summary["texts"] == len(texts)
    assert main(["lm", "--manifest", str(tmp_path / "no.jsonl"), "--out", str(arpa)]) == 2
    assert "no.jsonl" in capsys.readouterr().err
    assert main(["lm", "--manifest", str(manifest), "--order", "1", "--out", str(arpa)]) == 2
    assert "order" in capsys.readouterr().err


def _interrupt_at(monkeypatch, at_step: int) -> None:
    """Send this process a real SIGINT once the loop reports step ``at_step``."""
    original = Progress.update

    def update(self, step):
        original(self, step)
        if step == at_step:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Progress, "update", update)


def test_interrupt_then_resume_is_bit_identical(straight_run, tiny_config, tmp_path, monkeypatch):
    straight, _, _ = straight_run
    out = tmp_path / "resumed"
    _interrupt_at(monkeypatch, 1)  # mid-epoch, between checkpoints
    rc = main(["train", "--config", str(tiny_config), "--out", str(out), "--no-progress"])
    assert rc == INTERRUPTED_EXIT
    meta = fctc.checkpoint.read_metadata(out / "last" / "train_state.safetensors")["metadata"]
    assert meta["step"] == 1 and (meta["epoch"], meta["batch"]) == (0, 1)
    assert not (out / "test_results.json").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    for name in ("model.safetensors", "train_state.safetensors"):
        a, b = _tensors(straight / "last", name), _tensors(out / "last", name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k} differs after resuming"
    ra, rb = _train_rows(straight), _train_rows(out)
    assert [(r["step"], r["kind"], r["loss"], r["lr"], r["val_cer"]) for r in ra] == [
        (r["step"], r["kind"], r["loss"], r["lr"], r["val_cer"]) for r in rb
    ]
    a = json.loads((straight / "test_results.json").read_text())
    b = json.loads((out / "test_results.json").read_text())
    assert (a["cer"], a["wer"], a["step"]) == (b["cer"], b["wer"], b["step"])


def test_real_sigint_saves_a_resumable_checkpoint(tiny_config, tmp_path):
    """Ctrl-C on the real program (a subprocess) saves last/ and exits with status 130."""
    config = yaml.safe_load(tiny_config.read_text())
    config["training"].update(max_steps=100_000, eval_every=100_000, checkpoint_every=100_000)
    path = _write(tmp_path / "long.yaml", config)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fctc", "train", "--config", str(path), "--out", str(out),
         "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (out / "metrics.csv").exists() and len(_train_rows(out)) >= 2:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == INTERRUPTED_EXIT, stderr
    assert f"--resume {out}" in stderr
    meta = fctc.checkpoint.read_metadata(out / "last" / "train_state.safetensors")["metadata"]
    assert meta["step"] >= 2 and len(meta["history"]) == meta["step"]


def test_resume_a_finished_run_only_reevaluates(straight_run, tmp_path, capsys):
    out, _, _ = straight_run
    before = _tensors(out / "last")
    assert main(["train", "--resume", str(out / "last"), "--no-progress"]) == 0
    after = _tensors(out / "last")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] > 0


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, named",
    [
        ({"trainig": {}}, "['trainig']"),
        ({"data": {"max_batch_secs": 3}}, "['max_batch_secs']"),
        ({"model": {"encoder": {"filter": [8]}}}, "['filter']"),
        ({"model": {"front_end": {"n_mels": 40}}}, "['n_mels']"),
        ({"model": {"spec_augment": {"masks": 2}}}, "['masks']"),
        ({"optimizer": {"name": "lamb"}}, "'lamb'"),
        ({"schedule": {"name": "step"}}, "'step'"),
    ],
)
def test_config_errors_name_the_bad_key(tmp_path, capsys, config, named):
    path = _write(tmp_path / "bad.yaml", _deep_update(TINY, config))
    rc = main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error" in err and named in err


def test_usage_errors(straight_run, tiny_config, tmp_path, capsys):
    out, _, _ = straight_run
    assert main(["train", "--config", str(tiny_config), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--config", str(tiny_config)]) == 2
    assert "saved configuration" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "train_state" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--manifest", str(tmp_path / "no.jsonl")]) == 2
    assert "no.jsonl" in capsys.readouterr().err
    assert main(["transcribe", "--checkpoint", str(tmp_path), "x.flac"]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_corrupt_checkpoints_are_one_line_errors(straight_run, tmp_path, capsys):
    """A flipped byte in model.safetensors stops transcribe; NaN weights stop --resume."""
    import shutil

    out, _, _ = straight_run
    run = tmp_path / "copy"
    shutil.copytree(out, run)
    model_file = run / "best" / "model.safetensors"
    good = model_file.read_bytes()
    data = bytearray(good)
    data[-5] ^= 0xFF  # inside the last tensor's bytes
    model_file.write_bytes(bytes(data))
    assert main(["transcribe", "--checkpoint", str(run / "best"), "x.flac"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and str(model_file) in err and "checksum" in err
    model_file.write_bytes(good)
    state_file = run / "last" / "train_state.safetensors"
    tree, meta = fctc.checkpoint.load(state_file)
    name = next(n for n in fctc.checkpoint.leaf_names(tree) if n.startswith("params."))
    leaf = tree
    for part in name.split(".")[:-1]:
        leaf = leaf[part]
    leaf[name.split(".")[-1]] = torch.full_like(leaf[name.split(".")[-1]], math.nan)
    fctc.checkpoint.save(state_file, tree, meta)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(state_file) in err and repr(name) in err and "non-finite" in err, err


def test_python_dash_m_runs_the_same_program():
    proc = subprocess.run([sys.executable, "-m", "fctc", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "train" in proc.stdout and "transcribe" in proc.stdout


# -- building blocks -------------------------------------------------------------------------


def test_default_config_is_the_schema_and_builds():
    config = default_config()
    assert load_config() == config
    assert {"model", "optimizer", "schedule", "data", "training", "vocabulary"} <= set(config)
    vocab = build_vocabulary(config, [])
    model = build_model(config["model"], vocab)
    params, _ = model.init(fctc.random.key(0))
    assert 20_000 < fctc.tree.size(params) < 1_000_000


def test_merge_config_merges_sections_and_replaces_kwargs_sections():
    base = default_config()
    merged = merge_config(base, {"training": {"epochs": 3}, "model": {"encoder": {"filters": [8]}}})
    assert merged["training"]["epochs"] == 3
    assert merged["training"]["log_every"] == base["training"]["log_every"]
    assert merged["model"]["encoder"] == {"filters": [8]}
    assert merge_config(base, {"model": {"spec_augment": None}})["model"]["spec_augment"] is None
    assert base == default_config()  # inputs untouched
    assert "model.encoder" in REPLACED_WHOLE
    with pytest.raises(ConfigError, match=r"'bogus'.*data"):
        merge_config(base, {"data": {"bogus": 1}})
    with pytest.raises(ConfigError, match="mapping"):
        merge_config(base, {"data": 3})


def test_build_vocabulary_from_transcripts_or_tokens():
    config = default_config()
    config["vocabulary"]["tokens"] = None
    vocab = build_vocabulary(config, ["ba", "ab c"])
    assert vocab.itos == [" ", "a", "b", "c", "<blank>"]
    config["vocabulary"]["tokens"] = "xy"
    assert build_vocabulary(config, []).itos == ["x", "y", "<blank>"]
    config["vocabulary"]["tokens"] = None
    with pytest.raises(ConfigError, match="tokens"):
        build_vocabulary(config, [])


def test_optimizer_schedules_and_accumulation():
    config = default_config()
    tx, schedule = build_optimizer(config, 100)
    lr = config["optimizer"]["learning_rate"]
    assert float(schedule(torch.tensor(0))) == 0.0
    assert float(schedule(torch.tensor(10))) == pytest.approx(lr, rel=1e-5)
    config["schedule"]["name"] = "onecycle"
    _, onecycle = build_optimizer(config, 100)
    assert float(onecycle(torch.tensor(0))) == pytest.approx(lr / 25, rel=1e-5)  # float32
    config["schedule"]["name"] = "constant"
    config["optimizer"]["name"] = "sgd"
    config["training"]["accumulate_batches"] = 2
    tx, constant = build_optimizer(config, 100)
    params = {"w": torch.ones(2)}
    state = tx.init(params)
    updates, state = tx.update({"w": torch.ones(2)}, state, params)
    assert torch.equal(updates["w"], torch.zeros(2))  # the first of two accumulated batches
    updates, state = tx.update({"w": torch.ones(2)}, state, params)
    assert torch.allclose(updates["w"], torch.full((2,), -lr / math.sqrt(2)))  # clipped to norm 1
    assert total_updates(5, 2) == 3
    with pytest.raises(ConfigError):
        build_optimizer(config, 0)


def test_logged_learning_rate_is_read_from_the_optimiser_state(tiny_config, tmp_path):
    """With accumulate_batches=2 the lr column is the learning rate of the last applied update
    (the schedule at that update's count, as inject_hyperparams holds it), and the metrics
    keep one row per batch."""
    config = yaml.safe_load(tiny_config.read_text())
    config["training"].update(accumulate_batches=2, eval_every=100, checkpoint_every=100)
    config["schedule"] = {"name": "warmup_cosine", "warmup_fraction": 0.5}
    out = tmp_path / "accum"
    assert main(["train", "--config", str(_write(tmp_path / "a.yaml", config)), "--out", str(out), "--no-progress"]) == 0
    _, schedule = build_optimizer(merge_config(default_config(), config), total_updates(STEPS, 2))
    train = [r for r in _train_rows(out) if r["kind"] == "train"]
    applied = [0, 1, 1, 2]  # updates applied after steps 1..4
    want = [float(schedule(torch.tensor(max(n - 1, 0)))) for n in applied]
    assert [int(r["step"]) for r in train] == [1, 2, 3, 4]
    assert [float(r["lr"]) for r in train] == pytest.approx(want, rel=1e-6, abs=0)
    assert want[0] == want[1] == 0.0 and want[3] > 0.0  # warm-up from 0: the rows differ


def test_one_accumulation_key():
    """training.accumulate_batches is the one accumulation key of fctc train."""
    training = default_config()["training"]
    assert "accumulate_batches" in training and "micro_batches" not in training
    with pytest.raises(ConfigError, match="micro_batches"):
        merge_config(default_config(), {"training": {"micro_batches": 2}})


def test_output_frames_matches_the_model():
    config = default_config()
    frames = output_frames(config["model"])
    vocab = build_vocabulary(config, [])
    model = build_model(config["model"], vocab)
    params, state = model.init(fctc.random.key(0))
    audio = torch.zeros(1, 16000)
    (logits, lengths), _ = model.apply(params, state, audio, torch.tensor([12345]))
    assert int(lengths[0]) == frames(12345)


def test_front_end_variants_agree_in_evaluation():
    config = default_config()
    spec = {"freq_masks": 2, "freq_width": 15, "time_masks": 4, "time_width": 0.05}  # (off by default)
    front = build_front_end(config["model"])
    _, state = front.init(None)
    audio, lengths = torch.randn(2, 4000), torch.tensor([4000, 3000])
    (x, xl), _ = front.apply({}, state, audio, lengths)
    augmented = augmented_front_end(front, spec)
    (y, yl), _ = augmented.apply({}, state, audio, lengths, train=False)
    assert torch.equal(x, y) and torch.equal(xl, yl)
    (z, _), _ = augmented.apply({}, state, audio, lengths, train=True, key=fctc.random.key(1))
    assert (z == 0).sum() > (x == 0).sum()  # SpecAugment masked something
    cached = cached_front_end(front, spec)
    (c, cl), _ = cached.apply({}, state, x, xl, train=False)
    assert c is x and cl is xl
    (c, _), _ = cached.apply({}, state, x, xl, train=True, key=fctc.random.key(1))
    assert c.shape == x.shape and (c == 0).sum() > (x == 0).sum()


def test_metrics_log_plot_and_history(tmp_path):
    log = cli_logs.MetricsLog(tmp_path, tensorboard=False)
    log.append({"step": 1, "epoch": 0, "kind": "train", "loss": 2.0, "lr": 1e-3})
    log.append({"step": 1, "epoch": 0, "kind": "validation", "val_loss": 1.5, "val_cer": 0.5,
                "val_wer": 0.9})
    with pytest.raises(ValueError, match="bogus"):
        log.append({"step": 2, "bogus": 1})
    resumed = cli_logs.MetricsLog(tmp_path, history=log.rows[:1], tensorboard=False)
    assert len(_train_rows(tmp_path)) == 1
    resumed.close()
    png = cli_logs.plot_curves(log.rows, tmp_path / "c.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert isinstance(cli_logs.tensorboard_available(), bool)


def test_log_window_survives_a_checkpoint_exactly():
    """The window's float32 values go through JSON unchanged, so a resumed row is the same."""
    values = torch.randn(5, generator=torch.Generator().manual_seed(0))
    window = cli_logs.LogWindow()
    for i, v in enumerate(values):
        window.add(v, v.abs(), 3 + i)
    window.add(torch.tensor(float("nan")), torch.tensor(float("nan")), 1)
    restored = cli_logs.LogWindow.from_dict(json.loads(json.dumps(window.to_dict())))
    assert len(restored) == 6 and restored.utterances == window.utterances == 26
    a, b = window.row(), restored.row()
    assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"])
    assert a["loss"] == float(values.mean()) and len(window) == 0
    assert len(cli_logs.LogWindow.from_dict(None)) == 0


def test_checkpoint_folders_swap_whole_and_resolve(tmp_path):
    params, state = {"w": torch.ones(2)}, {"b": torch.zeros(1)}
    folder = save_checkpoint_dir(tmp_path / "run" / "last", params, state, {"x": 1}, params, {})
    save_checkpoint_dir(folder, {"w": torch.full((2,), 2.0)}, state, {"x": 2})
    assert not (tmp_path / "run" / "last.tmp").exists() and not (tmp_path / "run" / "last.old").exists()
    assert not (folder / "train_state.safetensors").exists()  # replaced as a whole
    assert resolve_checkpoint(tmp_path / "run") == folder
    with pytest.raises(FileNotFoundError, match="train_state"):
        resolve_checkpoint(tmp_path / "run", need_train_state=True)
    with pytest.raises(fctc.checkpoint.CheckpointError, match="fctc train"):
        load_checkpoint_model(folder)


def test_devices_out_dirs_and_progress():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="tpu"):
        resolve_device("tpu")
    assert default_out_dir().parent == Path("runs")
    bar = Progress(3, enabled=False)
    bar.update(2)
    bar.postfix(loss=1.0, lr=0.1, utt_s=3.0)
    bar.close()


@pytest.mark.skipif(not cli_logs.tensorboard_available(), reason="tensorboard is not installed")
def test_metrics_log_writes_tensorboard_events(tmp_path):
    log = cli_logs.MetricsLog(tmp_path, tensorboard=True)
    log.append({"step": 1, "epoch": 0, "kind": "train", "loss": 2.0, "lr": 1e-3})
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_training_runs_with_the_setup_frozen_for_the_garbage_collector(tmp_path, tiny_config, monkeypatch):
    # The run's setup (torch's import, the model, the feature cache) is frozen while it trains,
    # so that the collector's full passes skip it; it is unfrozen when the run ends.
    import gc

    from fctc.cli.train import Trainer

    frozen = []
    step = Trainer._train_step

    def recording(self, batch):
        frozen.append(gc.get_freeze_count())
        return step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", recording)
    before = gc.get_freeze_count()
    rc, _, err = run_cli("train", "--config", str(tiny_config), "--out", str(tmp_path / "run"), "--no-progress")
    assert rc == 0, err
    assert len(frozen) == STEPS and min(frozen) > before + 10_000
    assert gc.get_freeze_count() == before
