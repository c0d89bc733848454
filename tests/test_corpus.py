"""Tests of the bundled corpus (fctc/corpus) and of the generator's plan behind it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fctc.corpus import CHARACTERS, ENGINES, SPLITS, bundled_manifests, voice_group
from fctc.data import SpeechDataset, load_audio, output_frames_fn, read_manifest
from fctc.text import Vocabulary

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fctc" / "corpus"
MAX_BYTES = 40_000_000


def load_script():
    spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "scripts" / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_corpus():
    return load_script()


@pytest.fixture(scope="module")
def manifests():
    return bundled_manifests()


@pytest.fixture(scope="module")
def records(manifests):
    return {s: [json.loads(x) for x in p.read_text().splitlines()] for s, p in manifests.items()}


@pytest.fixture(scope="module")
def provenance():
    return json.loads((CORPUS / "provenance.json").read_text())


def test_manifests_load_and_are_not_empty(manifests):
    assert set(manifests) == set(SPLITS)
    for split, path in manifests.items():
        utts = read_manifest(path)
        assert len(utts) >= 100, split
        assert all(u.audio_filepath.is_relative_to(path.parent / split) for u in utts)


def test_every_file_decodes_at_16k_mono_with_its_duration(manifests):
    for path in manifests.values():
        for utt in read_manifest(path):
            info = sf.info(str(utt.audio_filepath))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), utt.where
            assert abs(info.frames / 16000 - utt.duration) < 1e-3, utt.where
            # (the shortest is flite kal16's "up": 0.19 s, 0.08 s of it the kept margins)
            assert 0.15 <= utt.duration <= 4.0, utt.where


def test_audio_is_speech_not_silence(manifests, records):
    utts = list(zip(read_manifest(manifests["test"]), records["test"]))
    picked = [u for e in ENGINES for u in [u for u, r in utts if r["engine"] == e][:20]]
    assert len(picked) == 40
    for utt in picked:
        audio = load_audio(utt.audio_filepath)
        assert 0.1 <= float(audio.abs().max()) <= 0.7, utt.where  # levelled, never clipped
        # trimmed: at most ~50 ms before the first and after the last frame within 40 dB of
        # the loudest one
        frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
        db = 10 * torch.log10(frames.pow(2).mean(dim=1) + 1e-12)
        loud = torch.nonzero(db > db.max() - 40).flatten()
        assert int(loud[0]) <= 5 and int(loud[-1]) >= len(db) - 6, utt.where


def test_entries_name_their_engine_voice_rate_and_pitch(records, make_corpus):
    for split, rs in records.items():
        for r in rs:
            assert r["engine"] in ENGINES, r
            assert isinstance(r["voice"], str) and r["voice"], r
            if r["engine"] == "espeak-ng":
                assert isinstance(r["rate"], int) and isinstance(r["pitch"], int), r
                assert make_corpus.ESPEAK_RATE[0] <= r["rate"] <= make_corpus.ESPEAK_RATE[1], r
                assert make_corpus.ESPEAK_PITCH[0] <= r["pitch"] <= make_corpus.ESPEAK_PITCH[1]
            else:
                assert r["voice"] in make_corpus.FLITE_SPLIT, r
                assert make_corpus.FLITE_RATE[0] <= r["rate"] <= make_corpus.FLITE_RATE[1], r
                pitch = make_corpus.FLITE_PITCH
                assert pitch[0] <= r["pitch"] <= pitch[1] or r["voice"] == "rms", r
        # both engines in every split, interleaved: the first 20 utterances hold both
        assert {r["engine"] for r in rs[:20]} == set(ENGINES), split
    assert {r["pitch"] for r in records["validation"] if r["voice"] == "rms"} == {1.0}


def test_splits_share_no_voice(records):
    voices = {s: {(r["engine"], r["voice"]) for r in rs} for s, rs in records.items()}
    assert not voices["train"] & voices["validation"]
    assert not voices["train"] & voices["test"]
    assert not voices["validation"] & voices["test"]
    by_engine = {s: {e: {v for x, v in vs if x == e} for e in ENGINES} for s, vs in voices.items()}
    espeak = {s: by["espeak-ng"] for s, by in by_engine.items()}
    assert len(espeak["train"]) >= 100 and len(espeak["test"]) >= 20
    # every accent and every variant heard in training, in new combinations at test time
    for split in ("validation", "test"):
        for voice in espeak[split]:
            base, variant = voice.split("+")
            assert any(v.startswith(base + "+") for v in espeak["train"])
            assert any(v.endswith("+" + variant) for v in espeak["train"])
    # flite: training hears two speakers, validation and test one unseen speaker each
    flite = {s: by["flite"] for s, by in by_engine.items()}
    assert flite == {"train": {"kal16", "slt"}, "validation": {"rms"}, "test": {"awb"}}


def test_split_sizes_and_balance(records, provenance):
    for split, rs in records.items():
        counts = {e: sum(r["engine"] == e for r in rs) for e in ENGINES}
        assert counts == provenance["counts"][split]
        for engine in ENGINES:  # voices take turns: each speaks about equally often
            per_voice = {}
            for r in rs:
                if r["engine"] == engine:
                    per_voice[r["voice"]] = per_voice.get(r["voice"], 0) + 1
            assert max(per_voice.values()) - min(per_voice.values()) <= 1, (split, engine)


def test_texts_use_the_documented_characters(records):
    for rs in records.values():
        for r in rs:
            text = r["text"]
            assert text and set(text) <= set(CHARACTERS), text
            assert text == " ".join(text.split()), text  # no stray spaces


def test_texts_cover_digit_strings_commands_and_commands_with_digits(records, make_corpus):
    digit_words = set(make_corpus.DIGITS) | {"oh"}
    texts = [r["text"] for r in records["train"]]
    lengths = {len(t.split()) for t in texts if set(t.split()) <= digit_words}
    assert lengths == set(range(1, 8))
    words = [w for t in texts for w in t.split()]
    assert "oh" in words and "zero" in words
    assert not any({"oh", "zero"} <= set(t.split()) for t in texts)  # one habit per string
    heads = {t.split()[0] for t in texts if set(t.split()[1:]) <= digit_words}
    assert {"dial", "call", "room", "channel"} <= heads
    for split, rs in records.items():  # commands take turns: each said about equally often
        said = [r["text"] for r in rs if r["text"] in make_corpus.COMMANDS]
        times = [said.count(c) for c in make_corpus.COMMANDS]
        assert max(times) - min(times) <= 1, split
        assert min(times) >= (5 if split == "train" else 0), split


def test_training_hears_every_word_of_validation_and_test(records):
    """A lexicon of the training transcripts covers the evaluation splits."""
    heard = {w for r in records["train"] for w in r["text"].split()}
    for split in ("validation", "test"):
        assert {w for r in records[split] for w in r["text"].split()} <= heard, split


def test_turns_come_up_equally_often_in_a_fresh_order_each_round(make_corpus):
    rng = np.random.default_rng(0)
    turns = make_corpus.Turns(("a", "b", "c"))
    rounds = [[turns.next(rng) for _ in range(3)] for _ in range(20)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1


def test_total_size_within_budget():
    files = [p for p in CORPUS.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES


def test_every_transcript_fits_a_stride_2_model(manifests):
    vocab = Vocabulary(list(CHARACTERS))
    for path in manifests.values():
        ds = SpeechDataset(read_manifest(path), vocab, max_labels=output_frames_fn(160, 2),
                           on_error="stop")  # fmt: skip
        assert len(ds) == len(read_manifest(path))


def test_generator_plan_matches_the_bundled_corpus(records, provenance, make_corpus):
    """The corpus is what scripts/make_corpus.py plans from its defaults (no synthesiser
    needed)."""
    assert provenance["seed"] == 0 and provenance["counts"] == make_corpus.COUNTS
    plan = make_corpus.plan(0, make_corpus.COUNTS)
    assert plan == make_corpus.plan(0, make_corpus.COUNTS)  # deterministic
    keys = ("text", "engine", "voice", "rate", "pitch")
    bundled = [(r["audio_filepath"], *(r[k] for k in keys)) for s in SPLITS for r in records[s]]
    planned = [(p["name"], *(p[k] for k in keys)) for p in plan]
    assert planned == bundled
    assert make_corpus.CHARACTERS == CHARACTERS
    assert make_corpus.ENGINES == ENGINES and make_corpus.SPLITS == SPLITS


def test_plan_of_validation_and_test_does_not_depend_on_the_train_size(make_corpus):
    counts = {s: dict(by) for s, by in make_corpus.COUNTS.items()}
    counts["train"] = {"espeak-ng": 7, "flite": 3}
    small = make_corpus.plan(0, counts)
    full = make_corpus.plan(0, make_corpus.COUNTS)
    assert [p for p in small if p["split"] != "train"] == [p for p in full if p["split"] != "train"]
    assert sum(p["split"] == "train" for p in small) == 10
    assert make_corpus.plan(1, counts) != small  # the seed matters


def test_spoken_text_is_the_transcript_with_pauses(make_corpus):
    plan = make_corpus.plan(0, make_corpus.COUNTS)
    grouped = [p for p in plan if p["spoken"] != p["text"]]
    assert grouped  # some phone-number-like strings are spoken in two groups
    for p in plan:
        assert p["spoken"].replace(",", "") == p["text"], p
        assert p["spoken"].count(",") <= 1


def test_parse_counts(make_corpus):
    defaults = json.loads(json.dumps(make_corpus.COUNTS))
    counts = make_corpus.parse_counts(["train:flite=3", "test:espeak-ng=5"])
    assert counts["train"] == {**defaults["train"], "flite": 3}
    assert counts["test"] == {**defaults["test"], "espeak-ng": 5}
    assert counts["validation"] == defaults["validation"]
    assert make_corpus.COUNTS == defaults  # the defaults are left alone
    assert make_corpus.parse_counts([]) == defaults
    for bad in ("train=3", "train:festival=3", "dev:flite=3", "train:flite=x"):
        with pytest.raises(SystemExit, match="SPLIT:ENGINE=N"):
            make_corpus.parse_counts([bad])


def test_voice_group(records):
    groups = {voice_group(r) for r in records["test"]}
    assert groups == set(ENGINES)
    for r in records["test"]:
        assert voice_group(r) == r["engine"]
    assert voice_group({"audio_filepath": "a.wav", "duration": 1.0, "text": "hi"}) is None
    with pytest.raises(TypeError, match="engine must be a string"):
        voice_group({"engine": 3})


def installed_versions_match(provenance) -> bool:
    if not (shutil.which("espeak-ng") and shutil.which("flite")):
        return False
    module = load_script()
    return module.provenance(provenance["seed"], provenance["counts"]) == provenance


@pytest.mark.skipif(
    not installed_versions_match(json.loads((CORPUS / "provenance.json").read_text())),
    reason="espeak-ng / flite / libsndfile / soxr missing or not the versions that made the corpus",
)
def test_resynthesis_is_byte_identical(records, make_corpus, tmp_path):
    """With the recorded tool versions, the generator remakes bundled files byte for byte."""
    plan = make_corpus.plan(0, make_corpus.COUNTS)
    picked = []
    for split in SPLITS:
        for engine in ENGINES:
            picked += [p for p in plan if p["split"] == split and p["engine"] == engine][:2]
    by_name = {r["audio_filepath"]: r for rs in records.values() for r in rs}
    for spec in picked:
        data, record = make_corpus.utterance(spec, str(tmp_path))
        assert data == (CORPUS / spec["name"]).read_bytes(), spec["name"]
        assert record == by_name[spec["name"]]


def test_missing_synthesiser_exits_naming_the_package(make_corpus, monkeypatch):
    monkeypatch.setattr(make_corpus.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="apt-get install flite"):
        make_corpus.engine_binary("flite")



def test_package_data_ships_every_corpus_file():
    """pyproject's package-data globs cover every data file of fctc/corpus (a wheel has them)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["fctc.corpus"]
    shipped = {p for pattern in patterns for p in CORPUS.glob(pattern)}
    data = {p for p in CORPUS.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")}
    assert data == shipped


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")),
                    reason="espeak-ng or flite not installed")  # fmt: skip
def test_main_writes_a_small_corpus_with_its_report(make_corpus, tmp_path, capsys):
    counts = ["train:espeak-ng=2", "train:flite=2", "validation:espeak-ng=1",
              "validation:flite=0", "test:espeak-ng=1", "test:flite=1"]  # fmt: skip
    make_corpus.main(["--out", str(tmp_path), "--counts", *counts, "--max-mb", "1"])
    printed = capsys.readouterr().out
    assert "total: 7 utterances" in printed
    assert "validation      flite" not in printed  # a split and engine without utterances
    plan = make_corpus.plan(0, make_corpus.parse_counts(counts))
    for split in SPLITS:
        rs = [json.loads(x) for x in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        assert [r["audio_filepath"] for r in rs] == [p["name"] for p in plan if p["split"] == split]
        assert all((tmp_path / r["audio_filepath"]).is_file() for r in rs)
    assert json.loads((tmp_path / "provenance.json").read_text())["counts"]["train"]["flite"] == 2
    with pytest.raises(SystemExit, match="over --max-mb"):
        make_corpus.main(["--out", str(tmp_path), "--counts", *counts, "--max-mb", "0.001"])
