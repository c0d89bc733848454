"""Issue 15 items 1, 2, 5, 6 and part of 10: bad data in ``fctc train``, ``eval`` and ``transcribe``.

* a training split whose every clip fails to decode stops at once (cached features or not),
  naming the manifest and the skip counts, instead of spinning for ever;
* eval / transcribe with nothing usable exit with status 2 and valid JSON (``null``, no NaN);
* an infeasible clip (transcript longer than its frames) is left out of the eval loss, counted,
  and still scored in CER/WER;
* transcribe goes on past a bad file, names it on stderr, exits 2, and ``--with-names``;
* eval ``--output`` rows in manifest order; manifests without ``duration``; an epoch-based run
  ends with its last epoch; the progress display off a terminal is plain lines.
"""

from __future__ import annotations

import io
import json
import math
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import soundfile as sf

import fctc
from fctc import data
from fctc.cli.progress import Progress

from cli_helpers import TINY, bundled_audio, deep_update, few_manifest, run_cli, train_rows, write_config


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the run hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def truncated_clip(folder: Path, name: str = "trunc.flac") -> Path:
    """``head -c 2000 good.flac > trunc.flac``: the header reads, the samples do not."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(bundled_audio(0, "train").read_bytes()[:2000])
    assert sf.info(str(path)).frames > 0
    with pytest.raises(data.AudioError):
        data.load_audio(path)
    return path


def manifest_of(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("cache_features", [True, False])
def test_no_decodable_training_clip_stops_at_once(tmp_path, cache_features):
    clip = truncated_clip(tmp_path)
    manifest = manifest_of(tmp_path / "one.jsonl", [{"audio_filepath": str(clip), "text": "one"}])
    config = deep_update(TINY, {"data": {"train": str(manifest), "cache_features": cache_features},
                                "training": {"max_steps": 100}})
    path = write_config(tmp_path / "c.yaml", config)
    with deadline(60):
        rc, _, err = run_cli("train", "--config", str(path), "--out", str(tmp_path / "run"),
                             "--no-progress")
    line = err.splitlines()[-1]
    assert rc == 2, err
    assert line.startswith("fctc train: error: data.train: no usable utterance in")
    assert f"{manifest} (1 skipped: 1 corrupt_audio)" in line


def test_all_missing_training_clips_name_the_counts(tmp_path):
    clip = truncated_clip(tmp_path)
    rows = [{"audio_filepath": str(tmp_path / "gone.flac"), "text": "one"},
            {"audio_filepath": str(clip), "text": ""},
            {"audio_filepath": str(tmp_path / "gone2.flac"), "text": "two"}]
    manifest = manifest_of(tmp_path / "m.jsonl", rows)
    path = write_config(tmp_path / "c.yaml", deep_update(TINY, {"data": {"train": str(manifest)}}))
    rc, _, err = run_cli("train", "--config", str(path), "--out", str(tmp_path / "run"))
    assert rc == 2
    assert f"{manifest} (3 skipped: 1 empty_text, 2 missing_audio)" in err.splitlines()[-1]


def _empty_clip(folder: Path) -> Path:
    path = folder / "empty.wav"
    sf.write(str(path), [], 16000)
    return path


@pytest.mark.parametrize("kind", ["missing", "undecodable", "empty", "no lines"])
def test_eval_on_nothing_usable_is_an_error_with_null_scores(straight_run, tmp_path, kind):
    run, _, _ = straight_run
    clips = {"missing": lambda: tmp_path / "gone.flac", "undecodable": lambda: truncated_clip(tmp_path),
             "empty": lambda: _empty_clip(tmp_path)}
    rows = [] if kind == "no lines" else [{"audio_filepath": str(clips[kind]()), "text": "one"}] * 2
    manifest = manifest_of(tmp_path / "m.jsonl", rows)
    rc, out, err = run_cli("eval", "--checkpoint", str(run), "--manifest", str(manifest),
                           "--decoder", "greedy")
    assert rc == 2, err
    result = json.loads(out)  # valid JSON: NaN would not parse as JSON's null
    assert "NaN" not in out
    assert (result["cer"], result["wer"], result["loss"], result["n"]) == (None, None, None, 0)
    line = err.splitlines()[-1]
    assert line.startswith(f"fctc eval: error: no usable utterance in {manifest}")
    assert "nothing was scored" in line
    if kind != "no lines":
        assert sum(result["skipped_reasons"].values()) == 2 and "2 skipped" in line


def test_infeasible_clip_is_left_out_of_the_loss_and_counted(straight_run, tmp_path):
    """Item 5: a transcript too long for its frames has an infinite loss; zero_infinity would
    count it as 0 and pull the mean down. It is excluded from the loss (and counted), and
    scored in CER/WER like any other clip."""
    run, _, _ = straight_run
    good = few_manifest(tmp_path / "good.jsonl", 3)
    audio, rate = sf.read(str(bundled_audio(0)))
    short = tmp_path / "short.wav"
    sf.write(str(short), audio[: rate // 10], rate)  # 0.1 s: about 6 output frames
    rows = [json.loads(x) for x in good.read_text().splitlines()]
    rows.insert(1, {"audio_filepath": str(short), "text": "seven eight nine zero one"})
    both = manifest_of(tmp_path / "both.jsonl", rows)
    out_good, out_both = tmp_path / "good_rows.jsonl", tmp_path / "both_rows.jsonl"
    rc, a, _ = run_cli("eval", "--checkpoint", str(run), "--manifest", str(good), "--decoder",
                       "greedy", "--output", str(out_good))
    rc2, b, _ = run_cli("eval", "--checkpoint", str(run), "--manifest", str(both), "--decoder",
                        "greedy", "--output", str(out_both))
    assert rc == rc2 == 0
    a, b = json.loads(a), json.loads(b)
    assert (b["n"], b["loss_excluded"], a["loss_excluded"]) == (4, 1, 0)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)  # the mean of the three others
    assert b["chars"] == a["chars"] + len("seven eight nine zero one")  # still scored
    per = [json.loads(x) for x in out_both.read_text().splitlines()]
    assert per[1]["audio_filepath"] == str(short) and per[1]["loss"] is None
    assert all(math.isfinite(p["loss"]) for p in per if p is not per[1])


def test_eval_output_rows_follow_the_manifest(straight_run, tmp_path):
    run, _, _ = straight_run
    manifest = few_manifest(tmp_path / "m.jsonl", 8)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    by_length = sorted(range(len(rows)), key=lambda i: rows[i]["duration"])
    assert by_length != list(range(len(rows)))  # batching reorders them
    out = tmp_path / "rows.jsonl"
    rc, _, _ = run_cli("eval", "--checkpoint", str(run), "--manifest", str(manifest),
                       "--output", str(out), "--decoder", "greedy", "--batch-seconds", "3")
    assert rc == 0
    written = [json.loads(x)["audio_filepath"] for x in out.read_text().splitlines()]
    assert written == [r["audio_filepath"] for r in rows]


def test_transcribe_goes_on_past_a_bad_file(straight_run, tmp_path):
    """Item 6: good, empty, good -> two transcripts, the empty one named, status 2."""
    run, _, _ = straight_run
    good = [str(bundled_audio(0)), str(bundled_audio(1))]
    empty = str(_empty_clip(tmp_path))
    rc, alone, _ = run_cli("transcribe", "--checkpoint", str(run), *good)
    assert rc == 0 and len(alone.splitlines()) == 2
    rc, out, err = run_cli("transcribe", "--checkpoint", str(run), good[0], empty, good[1])
    assert rc == 2
    assert out == alone
    errors = [line for line in err.splitlines() if line.startswith("fctc transcribe: error:")]
    assert len(errors) == 2 and empty in errors[0] and "contains no samples" in errors[0]
    assert errors[1].endswith("1 of 3 audio files could not be read")
    rc, named, _ = run_cli("transcribe", "--checkpoint", str(run), "--with-names", good[0],
                           str(tmp_path / "gone.wav"), good[1])
    assert rc == 2
    assert named.splitlines() == [f"{f}\t{t}" for f, t in zip(good, alone.splitlines())]
    rc, out, err = run_cli("transcribe", "--checkpoint", str(run), empty)
    assert rc == 2 and out == "" and "1 of 1 audio files" in err


def test_transcribe_names_an_undecodable_file_in_one_line(straight_run, tmp_path):
    """Item 8: a file whose header reads but whose data does not (a truncated FLAC) is one
    line naming it, with no internal name; the good file is still transcribed."""
    run, _, _ = straight_run
    good, bad = str(bundled_audio(0)), str(truncated_clip(tmp_path))
    rc, out, err = run_cli("transcribe", "--checkpoint", str(run), bad, good)
    assert rc == 2 and len(out.splitlines()) == 1
    lines = [x for x in err.splitlines() if x.startswith("fctc transcribe: error:")]
    assert bad in lines[0] and "Traceback" not in err and "AudioError" not in err


def test_eval_on_a_flipped_byte_is_a_one_line_checkpoint_error(straight_run, tmp_path):
    """Item 3: fctc eval refuses a checkpoint with a flipped byte, naming the file."""
    import shutil

    run, _, _ = straight_run
    copy = tmp_path / "copy"
    shutil.copytree(run / "best", copy)
    model_file = copy / "model.safetensors"
    data_ = bytearray(model_file.read_bytes())
    data_[-5] ^= 0xFF
    model_file.write_bytes(bytes(data_))
    manifest = few_manifest(tmp_path / "m.jsonl", 2)
    rc, out, err = run_cli("eval", "--checkpoint", str(copy), "--manifest", str(manifest))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("fctc eval: error:") and str(model_file) in err and "checksum" in err


def test_a_runs_files_are_readable_by_others(straight_run):
    """Item 10: every file fctc train writes into the run folder is 0644 (under umask 022)."""
    import os
    import stat

    run, _, _ = straight_run
    umask = os.umask(0o022)
    os.umask(umask)
    if umask != 0o022:
        pytest.skip(f"the run was written under umask {umask:#o}")
    files = [p for p in run.rglob("*") if p.is_file() and p.name != "fctc.lock"]
    assert any(p.name == "model.safetensors" for p in files)
    modes = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_manifest_duration_is_optional(straight_run, tmp_path):
    """Item 10: without ``duration`` the file header gives it (train, eval, the dataset)."""
    run, _, _ = straight_run
    manifest = few_manifest(tmp_path / "m.jsonl", 4)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    bare = manifest_of(tmp_path / "bare.jsonl", [{k: v for k, v in r.items() if k != "duration"}
                                                 for r in rows])
    utts = data.read_manifest(bare)
    assert all(u.duration is None for u in utts)
    vocab = fctc.text.Vocabulary(list(fctc.corpus.CHARACTERS))
    ds = data.SpeechDataset(utts, vocab, check_audio=False)
    assert ds.durations == pytest.approx([r["duration"] for r in rows], abs=1e-4)
    results = []
    for m in (manifest, bare):
        rc, out, _ = run_cli("eval", "--checkpoint", str(run), "--manifest", str(m),
                             "--decoder", "greedy")
        assert rc == 0
        results.append({k: v for k, v in json.loads(out).items() if k != "manifest"})
    assert results[0] == results[1]
    config = deep_update(TINY, {"data": {"train": str(bare), "validation": str(bare),
                                         "test": None}, "training": {"max_steps": 1}})
    path = write_config(tmp_path / "c.yaml", config)
    assert run_cli("train", "--config", str(path), "--out", str(tmp_path / "run"),
                   "--no-progress")[0] == 0


def test_an_epoch_run_ends_with_its_last_epoch(tmp_path):
    """Item 10: epoch plans differ in length when batches are bounded by seconds; a 3-epoch
    run trains exactly their batches (not 3 x the first epoch's) and its rows never reach
    epoch 3 (0-based)."""
    config = deep_update(TINY, {"data": {"limit": 15, "max_batch_seconds": 5.0, "test": None},
                                "training": {"max_steps": None, "epochs": 3, "eval_every": 100}})
    from fctc.cli.config import load_config
    from fctc.cli.training_data import TrainingData

    path = write_config(tmp_path / "c.yaml", config)
    plans = [len(TrainingData(load_config(path)).plan(e)) for e in range(3)]
    assert len(set(plans)) > 1, f"the bundled corpus no longer gives plans of different lengths: {plans}"
    assert plans[0] * 3 != sum(plans)
    out = tmp_path / "run"
    assert run_cli("train", "--config", str(path), "--out", str(out), "--no-progress")[0] == 0
    train = [r for r in train_rows(out) if r["kind"] == "train"]
    assert [int(r["step"]) for r in train] == list(range(1, sum(plans) + 1))
    assert [int(r["epoch"]) for r in train] == [e for e, n in enumerate(plans) for _ in range(n)]
    assert max(int(r["epoch"]) for r in train_rows(out)) == 2


def test_progress_off_a_terminal_is_plain_lines():
    """Item 10: no carriage returns into a log file; a line every ``interval`` and at the end."""
    stream = io.StringIO()
    bar = Progress(4, stream=stream, interval=0.0)
    for step in range(1, 5):
        bar.postfix(loss=1.5, lr=1e-3, utt_s=2.0)
        bar.update(step)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5 and lines[0].startswith("train: step 1/4 (25%)")
    assert lines[-1].startswith("train: step 4/4 (100%)") and "loss=1.500" in lines[-1]
    quiet = io.StringIO()
    bar = Progress(4, stream=quiet, interval=3600.0)
    bar.update(2)
    bar.close()
    assert len(quiet.getvalue().splitlines()) == 1  # only the closing line


def test_train_progress_into_a_log_has_no_carriage_returns(tmp_path):
    path = write_config(tmp_path / "c.yaml", deep_update(TINY, {"data": {"test": None},
                                                               "training": {"max_steps": 2}}))
    rc, _, err = run_cli("train", "--config", str(path), "--out", str(tmp_path / "run"))
    assert rc == 0 and "\r" not in err
    assert "train: step 2/2 (100%)" in err
