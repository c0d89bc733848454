"""Tests of the bundled corpus (fctc/corpus) and of the generator's plan behind it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

from fctc.corpus import CHARACTERS, SPLITS, bundled_manifests
from fctc.data import SpeechDataset, load_audio, output_frames_fn, read_manifest
from fctc.text import Vocabulary

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 15_000_000


@pytest.fixture(scope="module")
def manifests():
    return bundled_manifests()


@pytest.fixture(scope="module")
def records(manifests):
    return {s: [json.loads(x) for x in p.read_text().splitlines()] for s, p in manifests.items()}


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
            assert 0.2 <= utt.duration <= 4.0, utt.where


def test_audio_is_speech_not_silence(manifests):
    for utt in read_manifest(manifests["test"])[:40]:
        audio = load_audio(utt.audio_filepath)
        assert 0.1 <= float(audio.abs().max()) <= 0.7, utt.where  # levelled, never clipped
        # trimmed: at most ~50 ms before the first and after the last frame within 40 dB of
        # the loudest one
        frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
        db = 10 * torch.log10(frames.pow(2).mean(dim=1) + 1e-12)
        loud = torch.nonzero(db > db.max() - 40).flatten()
        assert int(loud[0]) <= 5 and int(loud[-1]) >= len(db) - 6, utt.where


def test_splits_share_no_voice(records):
    voices = {s: {r["voice"] for r in rs} for s, rs in records.items()}
    assert not voices["train"] & voices["validation"]
    assert not voices["train"] & voices["test"]
    assert not voices["validation"] & voices["test"]
    assert len(voices["train"]) >= 100 and len(voices["test"]) >= 20
    # every accent and every variant heard in training, in new combinations at test time
    for split in ("validation", "test"):
        for voice in voices[split]:
            base, variant = voice.split("+")
            assert any(v.startswith(base + "+") for v in voices["train"])
            assert any(v.endswith("+" + variant) for v in voices["train"])


def test_texts_use_the_documented_characters(records):
    for rs in records.values():
        for r in rs:
            text = r["text"]
            assert text and set(text) <= set(CHARACTERS), text
            assert text == " ".join(text.split()), text  # no stray spaces


def test_total_size_within_budget():
    root = ROOT / "fctc" / "corpus"
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".flac", ".jsonl")]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES


def test_every_transcript_fits_a_stride_2_model(manifests):
    vocab = Vocabulary(list(CHARACTERS))
    for path in manifests.values():
        ds = SpeechDataset(read_manifest(path), vocab, max_labels=output_frames_fn(160, 2),
                           on_error="stop")  # fmt: skip
        assert len(ds) == len(read_manifest(path))


def test_generator_plan_matches_the_bundled_corpus(records):
    """The corpus is what scripts/make_corpus.py plans from seed 0 (no espeak-ng needed)."""
    script = ROOT / "scripts" / "make_corpus.py"
    spec = importlib.util.spec_from_file_location("make_corpus", script)
    make_corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_corpus)
    counts = {s: len(rs) for s, rs in records.items()}
    plan = make_corpus.plan(0, sum(counts.values()))
    assert plan == make_corpus.plan(0, sum(counts.values()))  # deterministic
    bundled = [(r["audio_filepath"], r["text"], r["voice"], r["rate"], r["pitch"])
               for s in SPLITS for r in records[s]]  # fmt: skip
    planned = [(p["name"], p["text"], p["voice"], p["rate"], p["pitch"]) for p in plan]
    assert planned == bundled
    assert make_corpus.CHARACTERS == CHARACTERS
