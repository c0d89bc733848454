"""Scores per voice group (fctc.cli.evaluate): which group each utterance is in, CER/WER per
group against hand-computed edit counts, the rows and summary lines that carry them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fctc.cli.errors import ConfigError
from fctc.cli.evaluate import NO_GROUP, evaluate_dataset, group_lines, utterance_groups
from fctc.corpus import bundled_manifests, voice_group
from fctc.data import SpeechDataset, read_manifest
from fctc.text import Vocabulary

VOCAB = Vocabulary(list(" abcdefghijklmnopqrstuvwxyz"))

# reference -> (prediction, loss per character or None when the transcript does not fit)
SCRIPT = {
    "one two": ("one two", 1.0),   # 0 of 7 characters, 0 of 2 words
    "three": ("tree", 2.0),        # 1 of 5 characters (h deleted), 1 of 1 word
    "four five": ("four", 3.0),    # 5 of 9 characters (" five" deleted), 1 of 2 words
    "six": ("sex", None),          # 1 of 3 characters, 1 of 1 word; left out of the loss
    "seven": ("seven", 4.0),       # 0 of 5 characters, 0 of 1 word
}


class Scripted:
    """A scorer that decodes each utterance as :data:`SCRIPT` says (keyed by its reference)."""

    def __call__(self, params, model_state, batch):
        refs = VOCAB.decode_targets(batch.targets, batch.target_lengths)
        losses = [SCRIPT[r][1] for r in refs]
        return {"losses": torch.tensor([0.0 if x is None else x for x in losses]),
                "feasible": torch.tensor([x is not None for x in losses]),
                "transcripts": [SCRIPT[r][0] for r in refs], "references": refs}


def corpus(tmp_path: Path, extra: list[dict]) -> Path:
    """A manifest of one tone file per :data:`SCRIPT` text, each line updated with ``extra``."""
    lines = []
    for i, (text, more) in enumerate(zip(SCRIPT, extra)):
        path = tmp_path / f"{i}.flac"
        sf.write(str(path), np.zeros(1600 * (i + 1), dtype=np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": path.name, "duration": 0.1 * (i + 1),
                                 "text": text, **more}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


TWO_ENGINES = [{"engine": "espeak-ng", "voice": "en-us+f3"},
               {"engine": "espeak-ng", "voice": "en+m1"},
               {"engine": "flite", "voice": "awb"}, {"engine": "flite", "voice": "awb"},
               {"engine": "espeak-ng", "voice": "en-us+f3"}]


def evaluate(manifest: Path, **kwargs):
    dataset = SpeechDataset(read_manifest(manifest), VOCAB)
    return evaluate_dataset(Scripted(), None, None, dataset, torch.device("cpu"), batch_size=2,
                            **kwargs)


def test_cer_and_wer_per_engine_are_the_hand_counted_ones(tmp_path):
    result = evaluate(corpus(tmp_path, TWO_ENGINES))
    assert result["group_by"] == "engine" and list(result["groups"]) == ["espeak-ng", "flite"]
    espeak, flite = result["groups"]["espeak-ng"], result["groups"]["flite"]
    assert espeak == {"cer": 1 / 17, "wer": 1 / 4, "loss": pytest.approx(7 / 3), "n": 3,
                      "loss_excluded": 0, "char_edits": 1, "chars": 17, "word_edits": 1,
                      "words": 4}
    assert flite == {"cer": 6 / 12, "wer": 2 / 3, "loss": 3.0, "n": 2, "loss_excluded": 1,
                     "char_edits": 6, "chars": 12, "word_edits": 2, "words": 3}
    # the overall figures are the sums, not the mean of the groups' rates
    assert (result["cer"], result["wer"], result["n"]) == (7 / 29, 3 / 7, 5)
    assert result["loss"] == pytest.approx(10 / 4) and result["loss_excluded"] == 1


def test_group_by_another_field_none_and_a_field_no_line_has(tmp_path):
    manifest = corpus(tmp_path, TWO_ENGINES)
    by_voice = evaluate(manifest, group_by="voice")
    assert by_voice["group_by"] == "voice"
    assert {k: (g["n"], g["char_edits"], g["chars"]) for k, g in by_voice["groups"].items()} == {
        "awb": (2, 6, 12), "en+m1": (1, 1, 5), "en-us+f3": (2, 0, 12)}
    off = evaluate(manifest, group_by=None)
    assert off["group_by"] is None and off["groups"] is None
    assert {k: v for k, v in off.items() if k not in ("group_by", "groups")} == {
        k: v for k, v in by_voice.items() if k not in ("group_by", "groups")}
    with pytest.raises(ConfigError) as e:
        evaluate(manifest, group_by="speaker")
    message = str(e.value)
    assert "\n" not in message and "'speaker'" in message and str(manifest) in message
    assert "engine, voice" in message and "none" in message


def test_without_the_field_there_are_no_groups_and_lines_without_it_are_grouped_apart(tmp_path):
    plain = evaluate(corpus(tmp_path, [{}] * 5))
    assert plain["group_by"] is None and plain["groups"] is None and plain["n"] == 5
    mixed = evaluate(corpus(tmp_path, [{"engine": "flite"}, {}, {"engine": "flite"}, {},
                                       {"engine": None}]))
    assert mixed["group_by"] == "engine" and list(mixed["groups"]) == [NO_GROUP, "flite"]
    assert mixed["groups"][NO_GROUP]["n"] == 3 and mixed["groups"]["flite"]["n"] == 2
    assert mixed["groups"]["flite"]["char_edits"] == 5 + 0  # "one two" exact, "four five" 5


def test_rows_carry_their_group(tmp_path):
    output = tmp_path / "rows.jsonl"
    evaluate(corpus(tmp_path, TWO_ENGINES), output=output)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["group"] for r in rows] == [e["engine"] for e in TWO_ENGINES]
    evaluate(corpus(tmp_path, TWO_ENGINES), output=output, group_by=None)
    assert all("group" not in json.loads(line) for line in output.read_text().splitlines())


def test_utterance_groups_names_and_values(tmp_path):
    utts = read_manifest(corpus(tmp_path, [{"speaker": 3}, {"speaker": "3"}, {"speaker": True},
                                           {"speaker": ["a", 1]}, {"speaker": None}]))
    assert utterance_groups(utts, "speaker") == (
        "speaker", ["3", "3", "true", '["a", 1]', NO_GROUP])
    assert utterance_groups(utts, None) == (None, None)
    assert utterance_groups(utts) == (None, None)  # "auto": no line names an engine
    assert utterance_groups([], "auto") == (None, None)
    with pytest.raises(ConfigError, match="'engine'.*speaker"):
        utterance_groups(utts, "engine")


def test_auto_groups_of_the_bundled_manifests_are_voice_group():
    for split, path in bundled_manifests().items():
        lines = path.read_text().splitlines()
        assert utterance_groups(read_manifest(path)) == (
            "engine", [voice_group(json.loads(line)) for line in lines]), split


def test_group_lines():
    result = {"group_by": "engine", "groups": {
        "espeak-ng": {"cer": 1 / 17, "wer": 0.25, "n": 3},
        "flite": {"cer": 0.5, "wer": 2 / 3, "n": 1}}}
    assert group_lines(result, "test") == [
        "test engine=espeak-ng: CER 5.88%, WER 25.00% on 3 utterances",
        "test engine=flite: CER 50.00%, WER 66.67% on 1 utterance",
    ]
    assert group_lines({"group_by": None, "groups": None}, "test") == []
