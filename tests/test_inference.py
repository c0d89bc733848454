"""fctc.load / Recognizer: checkpoint folders to transcripts, greedy or beam, defaults carried.

The checkpoint is written directly from an untrained tiny model (no training needed to test
the plumbing): its transcripts are noise, which is what makes "only lexicon words" telling.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import fctc
from fctc import data, decode, inference
from fctc.cli.checkpoints import load_checkpoint_model, save_checkpoint_dir
from fctc.cli.config import default_config, merge_config
from fctc.cli.decoding import write_decoding_files
from fctc.cli.recipe import build_model, build_vocabulary
from fctc.train import predict

TINY_MODEL = {
    "encoder": {"filters": [8], "kernel_sizes": [5], "repeat": 1, "stem_filters": 8,
                "stem_kernel": 5, "final_filters": [8, 8], "final_kernel": 5},
    "front_end": {"nfilt": 16},
}
TEXTS = ["two three", "one two", "stop", "volume up"]


def _run_folder(path, decoding=None, with_files=True, config_has_decoding=True):
    config = merge_config(default_config(), {"model": TINY_MODEL, "decoding": decoding or {}})
    vocab = build_vocabulary(config, [])
    model = build_model(config["model"], vocab)
    params, state = model.init(fctc.random.key(0))
    if not config_has_decoding:
        del config["decoding"]
    meta = {"config": config, "vocabulary": vocab.to_dict(), "sample_rate": 16000, "step": 0}
    save_checkpoint_dir(path / "best", params, state, meta)
    if with_files:
        write_decoding_files(path, TEXTS, vocab, config)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _run_folder(tmp_path_factory.mktemp("inference") / "run")


@pytest.fixture(scope="module")
def clips():
    manifest = data.bundled_manifests()["test"]
    utts = data.read_manifest(manifest)[:3]
    return [str(u.audio_filepath) for u in utts]


def test_load_carries_the_model_and_its_decoding_defaults(run):
    rec = fctc.load(run)
    assert isinstance(rec, fctc.Recognizer) and rec.sample_rate == 16000
    loaded = load_checkpoint_model(run)  # LoadedModel and Recognizer name the buffers `state`
    for mine, theirs in ((rec.params, loaded.params), (rec.state, loaded.state)):
        a, b = fctc.tree.flatten_dict(mine), fctc.tree.flatten_dict(theirs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rec.decoding["decoder"] == "beam"
    assert rec.decoding["lexicon"] == run / inference.LEXICON_FILE
    assert rec.decoding["lm"] == run / inference.LM_FILE
    assert (run / "lexicon.txt").read_text().splitlines()[0] == "one\to n e |"
    assert fctc.load(run / "best").decoding == rec.decoding  # the checkpoint folder itself


def test_transcribe_files_tensors_and_batches_alike(run, clips):
    rec = fctc.load(run)
    signals = [data.load_audio(f) for f in clips]
    by_file = rec.transcribe(clips, decoder="greedy")
    assert len(by_file) == 3
    assert rec.transcribe(signals, decoder="greedy") == by_file
    assert rec.transcribe(clips[0], decoder="greedy") == by_file[:1]
    expected = predict(rec.model, rec.params, rec.state, rec.vocabulary, signals[1][None])
    assert rec.transcribe(signals[1], decoder="greedy") == expected
    assert rec.transcribe(*_padded(signals), decoder="greedy") == by_file
    with torch.inference_mode():  # inference tensors have no version counter to remember
        assert rec.transcribe(clips, decoder="greedy") == by_file
        assert rec.transcribe(*_padded(signals), decoder="greedy") == by_file


def _padded(signals):
    """A zero-padded ``(B, S)`` batch of 1-D signals and their lengths."""
    lengths = torch.tensor([len(x) for x in signals])
    batch = torch.zeros(len(signals), int(lengths.max()))
    for i, x in enumerate(signals):
        batch[i, : len(x)] = x
    return batch, lengths


def test_beam_with_the_carried_lexicon_outputs_only_its_words(run, clips):
    rec = fctc.load(run)
    words = {w for t in TEXTS for w in t.split()}
    default = rec.transcribe(clips)  # the default: beam + lexicon + LM
    assert all(set(t.split()) <= words for t in default)
    assert rec.transcribe(clips, decoder="beam", lm_weight=0.0, lm=False) == rec.transcribe(
        clips, lexicon=rec.decoding["lexicon"], lm="none")
    free = rec.transcribe(clips, decoder="beam", lexicon=False)
    assert isinstance(free[0], str)
    decoder = rec.decoder("beam", beam_size=7, word_score=0.5)
    assert decoder.options()["beam_size"] == 7 and decoder.options()["word_score"] == 0.5
    assert rec.transcribe(clips, decoder=decoder) == [decoder(*_logits(rec, f))[0] for f in clips]


def _logits(rec, path):
    audio = data.load_audio(path)[None]
    (logits, lengths), _ = rec.model.apply(rec.params, rec.state, audio, torch.tensor([audio.shape[1]]))
    return logits, lengths


def test_decoder_settings_and_the_missing_extra(monkeypatch):
    defaults = {"decoder": "beam", "beam_size": 50, "lexicon": "lex.txt", "lm": "lm.arpa",
                "lm_weight": 1.0, "word_score": 0.0, "beam_threshold": 25.0, "log_add": True}
    settings, note = inference.decoder_settings(defaults, lexicon="none")
    assert settings["lexicon"] is None and settings["lm"] is None and note is None
    settings, _ = inference.decoder_settings(defaults, decoder="beam", lm_weight=2.0)
    assert settings["lm_weight"] == 2.0 and settings["lm"] == "lm.arpa"
    assert inference.decoder_settings(defaults, "greedy") == ({"decoder": "greedy"}, None)
    with pytest.raises(ValueError, match="only apply to beam"):
        inference.decoder_settings(defaults, "greedy", beam_size=3)
    with pytest.raises(ValueError, match="'bogus'"):
        inference.decoder_settings(defaults, bogus=1)
    with pytest.raises(ValueError, match="'viterbi'"):
        inference.decoder_settings(defaults, "viterbi")
    monkeypatch.setattr(inference, "beam_search_available", lambda: False)
    settings, note = inference.decoder_settings(defaults)
    assert settings == {"decoder": "greedy"} and "pip install 'fctc[decode]'" in note
    for asked in ({"decoder": "beam"}, {"beam_size": 4}):
        with pytest.raises(decode.DecoderUnavailable, match="fctc\\[decode\\]"):
            inference.decoder_settings(defaults, **asked)


def test_default_beam_falls_back_to_greedy_with_a_warning(run, clips, monkeypatch):
    rec = fctc.load(run)
    greedy = rec.transcribe(clips, decoder="greedy")
    monkeypatch.setattr(inference, "beam_search_available", lambda: False)
    with pytest.warns(UserWarning, match="decoding greedily"):
        assert rec.transcribe(clips) == greedy


def test_decoding_files_are_found_beside_or_above_the_checkpoint(tmp_path):
    (tmp_path / "best").mkdir()
    assert inference.decoding_files(tmp_path / "best") == {"lexicon": None, "lm": None}
    (tmp_path / "lm.arpa").write_text("x")
    (tmp_path / "best" / "lexicon.txt").write_text("x")
    assert inference.decoding_files(tmp_path / "best") == {
        "lexicon": tmp_path / "best" / "lexicon.txt", "lm": tmp_path / "lm.arpa"}


def test_config_switches_and_older_checkpoints(tmp_path):
    no_lm = fctc.load(_run_folder(tmp_path / "a", {"lm_order": None}))
    assert no_lm.decoding["lexicon"] is not None and no_lm.decoding["lm"] is None
    assert not (tmp_path / "a" / "lm.arpa").exists()
    greedy = fctc.load(_run_folder(tmp_path / "b", {"decoder": "greedy", "lexicon": False}))
    assert greedy.decoding["decoder"] == "greedy" and greedy.decoding["lexicon"] is None
    assert not (tmp_path / "b" / "lexicon.txt").exists()
    old = fctc.load(_run_folder(tmp_path / "c", with_files=False, config_has_decoding=False))
    assert old.decoding["decoder"] == default_config()["decoding"]["decoder"]
    assert old.decoding["lexicon"] is None and old.decoding["lm"] is None


def test_a_recognizer_from_any_model_pytrees(clips):
    config = merge_config(default_config(), {"model": TINY_MODEL})
    vocab = build_vocabulary(config, [])
    model = build_model(config["model"], vocab)
    params, state = model.init(fctc.random.key(1))
    rec = fctc.Recognizer(model, params, state, vocab)  # e.g. a NemoCheckpoint's fields
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = rec.transcribe(clips[:1])
    signal = data.load_audio(clips[0])[None]
    assert out == predict(model, params, state, vocab, signal)
    with pytest.raises(ValueError, match="1-D"):
        rec.transcribe([torch.zeros(1, 2, 3)])


def test_readme_python_snippet_runs(run, clips, capsys):
    """The README's "Transcribe from Python" block, on this test's run folder and clips."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Transcribe from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for name, value in (("runs/x", run), ("one.wav", clips[0]), ("two.flac", clips[1]),
                        ("words.txt", run / "lexicon.txt"), ("lm.arpa", run / "lm.arpa")):
        assert f'"{name}"' in code
        code = code.replace(f'"{name}"', repr(str(value)))
    signals = [data.load_audio(f) for f in clips[:2]]
    batch, lengths = _padded(signals)
    exec(compile(code, "README.md", "exec"), {"signal": signals[0], "batch": batch, "lengths": lengths})
    assert "Vocabulary(" in capsys.readouterr().out
