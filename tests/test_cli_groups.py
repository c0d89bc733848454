"""Scores per voice group on the command line: ``fctc train``'s final test pass (the shared
tiny run) and ``fctc eval --group-by``."""

from __future__ import annotations

import json
from pathlib import Path

import fctc.metrics
from fctc.cli.evaluate import NO_GROUP, group_lines
from fctc.corpus import bundled_manifests

from cli_helpers import TINY, few_manifest, run_cli
from test_cli_errors import one_line_error


def _engines(n: int, split: str = "test") -> list[str]:
    """The engines of the first ``n`` bundled utterances of ``split``."""
    lines = bundled_manifests()[split].read_text().splitlines()[:n]
    return [json.loads(line)["engine"] for line in lines]


def _check_groups(result: dict, rows: list[dict], engines: list[str]) -> None:
    """``result``'s groups are the engines of its utterances, with the counts of their rows."""
    assert result["group_by"] == "engine"
    assert list(result["groups"]) == sorted(set(engines))
    assert [r["group"] for r in rows] == engines
    for name, group in result["groups"].items():
        mine = [r for r in rows if r["group"] == name]
        counts = fctc.metrics.error_counts([r["prediction"] for r in mine],
                                           [r["reference"] for r in mine])
        assert group["n"] == len(mine)
        assert (group["char_edits"], group["chars"], group["word_edits"], group["words"]) == counts
        assert (group["cer"], group["wer"]) == (counts.cer, counts.wer)
    assert sum(g["n"] for g in result["groups"].values()) == result["n"]
    assert sum(g["chars"] for g in result["groups"].values()) == result["chars"]


def test_train_reports_the_test_split_per_engine(straight_run):
    out, rc, stdout = straight_run
    assert rc == 0
    result = json.loads((out / "test_results.json").read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == result
    rows = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    engines = _engines(TINY["data"]["limit"])
    assert set(engines) == {"espeak-ng", "flite"}  # the tiny run's test split holds both
    _check_groups(result, rows, engines)
    # the overall line, then one line per group
    lines = straight_run.stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("test: CER"))
    assert lines[at + 1:at + 3] == group_lines(result, "test")
    assert lines[at + 1].startswith("test engine=espeak-ng: CER ")
    assert lines[at + 2].startswith("test engine=flite: CER ")


def _eval(run: Path, manifest: Path, tmp_path: Path, *flags: str):
    """``fctc eval`` of ``manifest``: ``(exit status, result, rows, stderr)``."""
    output = tmp_path / "rows.jsonl"
    output.unlink(missing_ok=True)
    rc, stdout, stderr = run_cli("eval", "--checkpoint", str(run), "--manifest", str(manifest),
                                 "--output", str(output), "--device", "cpu", *flags)
    if rc:
        return rc, None, None, stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    return rc, json.loads(stdout), rows, stderr


def test_eval_groups_by_engine_unless_told_otherwise(straight_run, tmp_path):
    run = straight_run[0]
    manifest = few_manifest(tmp_path / "few.jsonl", 5)
    rc, result, rows, stderr = _eval(run, manifest, tmp_path)
    assert rc == 0
    _check_groups(result, rows, _engines(5))
    assert stderr.splitlines()[-2:] == group_lines(result, "eval")
    # another field
    rc, by_voice, rows, stderr = _eval(run, manifest, tmp_path, "--group-by", "voice")
    voices = [json.loads(line)["voice"] for line in manifest.read_text().splitlines()]
    assert rc == 0 and by_voice["group_by"] == "voice"
    assert list(by_voice["groups"]) == sorted(set(voices)) and [r["group"] for r in rows] == voices
    assert stderr.splitlines()[-len(set(voices)):] == group_lines(by_voice, "eval")
    # none: the result of before, with no groups
    rc, off, rows, stderr = _eval(run, manifest, tmp_path, "--group-by", "none")
    assert rc == 0 and off["group_by"] is None and off["groups"] is None
    assert all("group" not in r for r in rows) and "eval engine=" not in stderr
    strip = lambda r: {k: v for k, v in r.items() if k not in ("group_by", "groups")}  # noqa: E731
    assert strip(off) == strip(result) == strip(by_voice)


def test_eval_of_a_manifest_without_or_with_some_engines(straight_run, tmp_path):
    run = straight_run[0]
    manifest = few_manifest(tmp_path / "few.jsonl", 5)
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({k: e[k] for k in ("audio_filepath", "duration", "text")})
                             + "\n" for e in entries))
    rc, result, rows, stderr = _eval(run, plain, tmp_path)
    assert rc == 0 and result["group_by"] is None and result["groups"] is None
    assert result["n"] == 5 and all("group" not in r for r in rows) and "engine=" not in stderr
    # a line without the field is in the group "(none)"
    del entries[0]["engine"], entries[3]["engine"]
    some = tmp_path / "some.jsonl"
    some.write_text("".join(json.dumps(e) + "\n" for e in entries))
    rc, result, rows, _ = _eval(run, some, tmp_path)
    assert rc == 0 and result["group_by"] == "engine"
    assert [r["group"] for r in rows] == [NO_GROUP, "flite", "espeak-ng", NO_GROUP, "flite"]
    assert {k: g["n"] for k, g in result["groups"].items()} == {
        NO_GROUP: 2, "espeak-ng": 1, "flite": 2}


def test_eval_group_by_a_field_no_line_has_is_a_one_line_error(straight_run, tmp_path):
    manifest = few_manifest(tmp_path / "few.jsonl", 2)
    rc, _, _, stderr = _eval(straight_run[0], manifest, tmp_path, "--group-by", "speaker")
    line = one_line_error(rc, stderr, "eval")
    assert "'speaker'" in line and str(manifest) in line and "--group-by none" in line
    assert "engine, pitch, rate, voice" in line
