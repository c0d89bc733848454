"""Tests of fctc.data: manifests, audio loading, the bad-data policy, bucketing, loading."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import multiprocessing
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fctc.audio import filterbank
from fctc.data import (
    SKIP_REASONS,
    AudioError,
    Batch,
    DataError,
    FeatureCache,
    Loader,
    ManifestError,
    Skipped,
    SpeechDataset,
    Utterance,
    bucket_batches,
    collate,
    ctc_frames_needed,
    load_audio,
    make_loader,
    output_frames_fn,
    read_manifest,
)
from fctc.data import bundled_manifests
from fctc.text import Vocabulary

VOCAB = Vocabulary(list(" abcdefghijklmnopqrstuvwxyz"))


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    if channels == 1:
        return x
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)


def write_audio(path: Path, seconds: float, rate: int = 16000, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, rate, **kw), rate, subtype="PCM_16")
    return path


def write_manifest(path: Path, entries: list) -> Path:
    lines = [e if isinstance(e, str) else json.dumps(e) for e in entries]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_corpus(tmp_path: Path, texts_seconds: list[tuple[str, float]]) -> Path:
    entries = []
    for i, (text, seconds) in enumerate(texts_seconds):
        write_audio(tmp_path / "audio" / f"{i}.flac", seconds)
        entries.append({"audio_filepath": f"audio/{i}.flac", "duration": seconds, "text": text})
    return write_manifest(tmp_path / "m.jsonl", entries)


# -- manifests ----------------------------------------------------------------------------


def test_read_manifest_relative_and_absolute_paths(tmp_path):
    write_audio(tmp_path / "sub" / "a.flac", 0.5)
    absolute = write_audio(tmp_path / "elsewhere" / "b.wav", 0.25)
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            {"audio_filepath": "sub/a.flac", "duration": 0.5, "text": "go", "extra": 1},
            "",
            {"audio_filepath": str(absolute), "duration": "0.25", "text": "stop", "offset": 0.1},
        ],
    )
    utts = read_manifest(manifest)
    assert [u.line for u in utts] == [1, 3]
    assert utts[0].audio_filepath == tmp_path / "sub" / "a.flac"
    assert utts[1].audio_filepath == absolute
    assert (utts[0].duration, utts[1].duration, utts[1].offset) == (0.5, 0.25, 0.1)
    assert [u.text for u in utts] == ["go", "stop"]
    assert utts[0].manifest == manifest and utts[0].where == f"{manifest}:1"


def test_read_manifest_relative_to_manifest_not_cwd(tmp_path, monkeypatch):
    write_audio(tmp_path / "data" / "a.flac", 0.2)
    entry = {"audio_filepath": "a.flac", "duration": 0.2, "text": "x"}
    write_manifest(tmp_path / "data" / "m.jsonl", [entry])
    monkeypatch.chdir(tmp_path)
    (utt,) = read_manifest("data/m.jsonl")
    assert utt.audio_filepath.is_file() and utt.audio_filepath.is_absolute()


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"audio_filepath": "a.flac", "duration": 1', "not valid JSON"),
        ('["a.flac", 1, "x"]', "expected a JSON object"),
        ('{"audio_filepath": "a.flac", "duration": 1}', "missing field.*text"),
        ('{"duration": 1, "text": "x"}', "missing field.*audio_filepath"),
        ('{"audio_filepath": "a.flac", "duration": "long", "text": "x"}', "'duration' must be"),
        ('{"audio_filepath": "a.flac", "duration": true, "text": "x"}', "'duration' must be"),
        ('{"audio_filepath": "a.flac", "duration": -1, "text": "x"}', "finite and >= 0"),
        ('{"audio_filepath": "a.flac", "duration": 1, "text": null}', "'text' must be a string"),
        ('{"audio_filepath": "", "duration": 1, "text": "x"}', "non-empty string"),
    ],
)
def test_read_manifest_bad_line_names_file_and_line(tmp_path, line, match):
    good = json.dumps({"audio_filepath": "a.flac", "duration": 1.0, "text": "x"})
    manifest = write_manifest(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(ManifestError, match=match) as e:
        read_manifest(manifest)
    assert "bad.jsonl:2" in str(e.value)


def test_read_manifest_keeps_the_other_fields_read_only(tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [
        {"audio_filepath": "a.flac", "duration": 1.0, "text": "go", "engine": "flite",
         "voice": "awb", "rate": 0.94, "tags": ["x"]},
        {"audio_filepath": "b.flac", "text": "stop", "offset": 0.5},
    ])
    a, b = read_manifest(manifest)
    # every field but the four read_manifest interprets, in the line's order
    assert list(a.fields.items()) == [("engine", "flite"), ("voice", "awb"), ("rate", 0.94),
                                      ("tags", ["x"])]
    assert dict(b.fields) == {} and b.offset == 0.5
    with pytest.raises(TypeError):
        a.fields["engine"] = "espeak-ng"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.fields = {}
    # equal, hashable (fields stay out of the hash) and picklable (DataLoader workers) as before
    again = read_manifest(manifest)[0]
    assert again == a and hash(again) == hash(a) and a != b
    assert pickle.loads(pickle.dumps(a)) == a and copy.deepcopy(b) == b
    assert pickle.loads(pickle.dumps(a)).fields["engine"] == "flite"


def test_utterance_fields_default_empty_and_copied():
    plain = Utterance(Path("/x/a.flac"), 1.0, "go")
    assert dict(plain.fields) == {}
    given = {"engine": "espeak-ng"}
    u = Utterance(Path("/x/a.flac"), 1.0, "go", fields=given)
    given["engine"] = "flite"  # the utterance holds its own read-only copy
    assert u.fields["engine"] == "espeak-ng" and u != plain
    with pytest.raises(TypeError):
        u.fields["voice"] = "awb"
    with pytest.raises(TypeError, match="fields must be a mapping"):
        Utterance(Path("/x/a.flac"), 1.0, "go", fields=["engine"])


def test_read_manifest_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_manifest(tmp_path / "nope.jsonl")


# -- audio --------------------------------------------------------------------------------


def test_load_audio_16k_is_the_file(tmp_path):
    path = write_audio(tmp_path / "a.flac", 0.3)
    expected, _ = sf.read(str(path), dtype="float32")
    out = load_audio(path)
    assert out.dtype == torch.float32 and out.shape == (4800,)
    assert torch.equal(out, torch.from_numpy(expected))


@pytest.mark.parametrize("rate", [8000, 44100])
def test_load_audio_resamples_to_16k(tmp_path, rate):
    path = write_audio(tmp_path / "a.wav", 1.0, rate=rate, freq=1000.0)
    out = load_audio(path, 16000)
    assert abs(out.shape[0] - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / out.shape[0] - 1000.0) <= 2.0  # 1 kHz stays 1 kHz
    assert abs(float(out.abs().max()) - 0.5) < 0.02  # level kept


def test_load_audio_mixes_stereo_down(tmp_path):
    path = tmp_path / "st.wav"
    x = tone(0.2, channels=2)
    sf.write(str(path), x, 16000, subtype="FLOAT")
    out = load_audio(path)
    torch.testing.assert_close(out, torch.from_numpy(x.mean(axis=1)), rtol=0, atol=1e-7)


def test_load_audio_segment(tmp_path):
    path = tmp_path / "a.wav"
    x = np.arange(16000, dtype=np.float32) / 16000
    sf.write(str(path), x, 16000, subtype="FLOAT")
    out = load_audio(path, offset=0.25, duration=0.5)
    assert torch.equal(out, torch.from_numpy(x[4000:12000]))


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="missing.flac.*does not exist"):
        load_audio(tmp_path / "missing.flac")
    bad = tmp_path / "corrupt.flac"
    bad.write_bytes(b"this is not audio" * 10)
    with pytest.raises(AudioError, match="cannot decode.*corrupt.flac"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav.*no samples"):
        load_audio(empty)


# -- CTC feasibility ----------------------------------------------------------------------


def test_ctc_frames_needed_counts_repeats():
    assert ctc_frames_needed(VOCAB.encode("hello")) == 6
    assert ctc_frames_needed([1, 1, 1]) == 5
    assert ctc_frames_needed([]) == 0


def test_output_frames_fn():
    f = output_frames_fn(160, 2)
    assert [f(n) for n in (0, 159, 160, 320, 480)] == [1, 1, 1, 2, 2]  # ceil((n//160 + 1) / 2)
    assert output_frames_fn(160, 1)(16000) == 101
    with pytest.raises(ValueError, match="stride"):
        output_frames_fn(160, 0)


# -- the bad-data policy ------------------------------------------------------------------

GOOD = [("go", 0.3), ("stop", 0.4), ("turn left", 0.5)]


def _bad_case(tmp_path: Path, case: str) -> tuple[Path, dict]:
    """A corpus of three good utterances plus one bad one (line 4); the dataset kwargs."""
    manifest = make_corpus(tmp_path, GOOD)
    entry = {"audio_filepath": "audio/bad.flac", "duration": 0.3, "text": "yes"}
    kwargs: dict = {}
    if case == "missing_audio":
        pass
    else:
        write_audio(tmp_path / "audio" / "bad.flac", 0.3)
    if case == "corrupt_audio":
        (tmp_path / "audio" / "bad.flac").write_bytes(b"\x00garbage" * 50)
    elif case == "empty_text":
        entry["text"] = "  "
    elif case == "out_of_vocabulary":
        entry["text"] = "héllo"
    elif case == "too_short":
        entry["text"] = "a much longer transcript than fits"
        kwargs["max_labels"] = output_frames_fn(160, 2)  # 0.3 s -> 16 frames
    with open(manifest, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return manifest, kwargs


@pytest.mark.parametrize("case", list(SKIP_REASONS))
def test_policy_skip_counts_and_warns(tmp_path, case):
    manifest, kwargs = _bad_case(tmp_path, case)
    with pytest.warns(UserWarning, match="skipped 1 utterance.*m.jsonl:4"):
        ds = SpeechDataset(read_manifest(manifest), VOCAB, **kwargs)
    assert dict(ds.skipped) == {case: 1}
    assert len(ds) == 3 and [u.text for u in ds.utterances] == [t for t, _ in GOOD]
    assert len(ds.durations) == len(ds.targets) == 3


@pytest.mark.parametrize("case", list(SKIP_REASONS))
def test_policy_stop_names_file_and_line(tmp_path, case):
    manifest, kwargs = _bad_case(tmp_path, case)
    with pytest.raises(DataError, match=f"m.jsonl:4: {SKIP_REASONS[case][:20]}"):
        SpeechDataset(read_manifest(manifest), VOCAB, on_error="stop", **kwargs)


def test_policy_good_corpus_is_silent_and_unknown_token_keeps_oov(tmp_path):
    manifest, _ = _bad_case(tmp_path, "out_of_vocabulary")
    vocab = Vocabulary(list(" abcdefghijklmnopqrstuvwxyz"), unknown_token="<unk>")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = SpeechDataset(read_manifest(manifest), vocab, on_error="stop")
    assert len(ds) == 4 and not ds.skipped
    assert ds.targets[3].tolist() == vocab.encode("héllo").tolist()


def test_dataset_items_and_header_durations(tmp_path):
    manifest = make_corpus(tmp_path, GOOD)
    lines = manifest.read_text().splitlines()
    lines[0] = lines[0].replace('"duration": 0.3', '"duration": 9.0')  # a wrong manifest duration
    manifest.write_text("\n".join(lines) + "\n")
    ds = SpeechDataset(read_manifest(manifest), VOCAB)
    assert ds.durations == pytest.approx([0.3, 0.4, 0.5])  # measured from the file headers
    audio, target = ds[2]
    assert audio.shape == (8000,) and audio.dtype == torch.float32
    assert target.tolist() == VOCAB.encode("turn left").tolist()


def test_load_time_failures_skip_or_stop(tmp_path):
    manifest = make_corpus(tmp_path, GOOD + [("yes", 0.3)])
    ds = SpeechDataset(read_manifest(manifest), VOCAB)
    os.unlink(tmp_path / "audio" / "1.flac")  # vanishes after the up-front check
    (tmp_path / "audio" / "2.flac").write_bytes(b"\x00garbage" * 50)
    assert ds[0][1].tolist() == VOCAB.encode("go").tolist()
    assert ds[1] == Skipped(1, "missing_audio", ds[1].message) and "1.flac" in ds[1].message
    assert ds[2].reason == "corrupt_audio" and "m.jsonl:3" in ds[2].message
    strict = SpeechDataset(read_manifest(manifest)[:1], VOCAB, on_error="stop")
    os.unlink(tmp_path / "audio" / "0.flac")
    with pytest.raises(DataError, match="m.jsonl:1: the audio file does not exist"):
        strict[0]


def test_load_time_too_short_when_headers_are_not_checked(tmp_path):
    manifest = make_corpus(tmp_path, [("go", 0.3), ("a long transcript here", 0.1)])
    lines = manifest.read_text().splitlines()
    lines[1] = lines[1].replace('"duration": 0.1', '"duration": 5.0')
    manifest.write_text("\n".join(lines) + "\n")
    ds = SpeechDataset(
        read_manifest(manifest), VOCAB, max_labels=output_frames_fn(160, 2), check_audio=False
    )
    assert len(ds) == 2 and ds.durations == [0.3, 5.0]
    assert isinstance(ds[0], tuple)
    assert ds[1].reason == "too_short" and "needs 22" in ds[1].message


def test_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        SpeechDataset([], VOCAB, on_error="ignore")
    with pytest.raises(TypeError, match="Utterance"):
        SpeechDataset([{"text": "x"}], VOCAB)
    with pytest.raises(TypeError, match="Vocabulary"):
        SpeechDataset([], list("abc"))


# -- bucketing ----------------------------------------------------------------------------


def _durations(n: int = 500, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 4.0, n)


def _padding(durations, batches) -> float:
    return sum(len(b) * max(durations[b]) - sum(durations[b]) for b in batches)


@pytest.mark.parametrize("kwargs", [{"batch_size": 16}, {"max_batch_seconds": 30.0},
                                    {"batch_size": 8, "max_batch_seconds": 20.0}])  # fmt: skip
def test_bucket_batches_partition_and_limits(kwargs):
    d = _durations()
    for shuffle in (True, False):
        batches = bucket_batches(d, shuffle=shuffle, seed=3, epoch=1, **kwargs)
        assert sorted(i for b in batches for i in b) == list(range(len(d)))
        for b in batches:
            assert len(b) <= kwargs.get("batch_size", len(d))
            if "max_batch_seconds" in kwargs and len(b) > 1:
                assert len(b) * max(d[b]) <= kwargs["max_batch_seconds"]


def test_bucket_batches_deterministic_and_epoch_dependent():
    d = _durations()
    a = bucket_batches(d, batch_size=16, seed=5, epoch=2)
    assert a == bucket_batches(list(d), batch_size=16, seed=5, epoch=2)
    assert a != bucket_batches(d, batch_size=16, seed=5, epoch=3)
    assert a != bucket_batches(d, batch_size=16, seed=6, epoch=2)
    state = np.random.get_state()
    torch_state = torch.get_rng_state()
    bucket_batches(d, batch_size=16, seed=5, epoch=2)  # no global RNG used
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_bucket_batches_pad_less_than_random_batches():
    d = _durations()
    batches = bucket_batches(d, batch_size=16, seed=0, epoch=0)
    perm = np.random.default_rng(1).permutation(len(d))
    random_batches = [perm[i : i + 16].tolist() for i in range(0, len(d), 16)]
    assert _padding(d, batches) < 0.1 * _padding(d, random_batches)


def test_bucket_batches_unshuffled_is_sorted():
    d = _durations(100)
    batches = bucket_batches(d, batch_size=10, shuffle=False)
    flat = [i for b in batches for i in b]
    assert flat == np.argsort(d, kind="stable").tolist()


def test_bucket_batches_long_utterance_alone_and_errors():
    assert bucket_batches([1.0, 50.0, 1.0], max_batch_seconds=10.0, shuffle=False) == [[0, 2], [1]]
    assert bucket_batches([], batch_size=4) == []
    with pytest.raises(ValueError, match="batch_size, max_batch_seconds"):
        bucket_batches([1.0])
    with pytest.raises(ValueError, match="finite"):
        bucket_batches([1.0, math.nan], batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        bucket_batches([1.0], batch_size=0)


# -- collate and the loader ---------------------------------------------------------------


def test_collate_shapes_and_padding():
    items = [(torch.ones(5), torch.tensor([1, 2])), Skipped(7, "corrupt_audio", "x"),
             (torch.full((3,), 2.0), torch.tensor([3, 4, 5]))]  # fmt: skip
    batch = collate(items, pad_idx=27)
    assert isinstance(batch, Batch)
    assert batch.audio.shape == (2, 5) and batch.audio.dtype == torch.float32
    assert batch.audio[1].tolist() == [2.0, 2.0, 2.0, 0.0, 0.0]
    assert batch.audio_lengths.tolist() == [5, 3] and batch.audio_lengths.dtype == torch.int64
    assert batch.targets.tolist() == [[1, 2, 27], [3, 4, 5]]
    assert batch.target_lengths.tolist() == [2, 3] and batch.targets.dtype == torch.int64
    padded = collate(items, pad_idx=0, pad_to_multiple=4)
    assert padded.audio.shape == (2, 8) and padded.audio_lengths.tolist() == [5, 3]
    with pytest.raises(ValueError, match="no items"):
        collate([Skipped(0, "missing_audio", "x")], pad_idx=0)


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = ["go", "stop", "yes", "no", "turn left", "volume up"]
    texts = [(words[i % len(words)], float(rng.uniform(0.1, 0.6))) for i in range(24)]
    return SpeechDataset(read_manifest(make_corpus(tmp_path, texts)), VOCAB), tmp_path


def _as_lists(batches):
    return [tuple(t.tolist() for t in b) for b in batches]


def test_loader_workers_and_exact_resume(corpus):
    ds, _ = corpus
    plan = bucket_batches(ds.durations, batch_size=4, seed=0, epoch=0)
    full = _as_lists(make_loader(ds, plan))
    assert len(full) == len(plan) == 6
    for batch, idx in zip(full, plan):
        assert batch[1] == [len(ds[i][0]) for i in idx]  # audio_lengths, in plan order
    loader = make_loader(ds, plan, num_workers=2, start_batch=2)
    assert len(loader) == 4
    assert _as_lists(loader) == full[2:]
    assert loader.position == len(plan)
    assert _as_lists(make_loader(ds, plan, start_batch=len(plan))) == []
    for _ in make_loader(ds, plan, num_workers=2):
        break  # an early exit stops the workers at once
    assert not multiprocessing.active_children()


def test_loader_persistent_workers_serve_repeated_passes(corpus):
    ds, _ = corpus
    plan = bucket_batches(ds.durations, batch_size=5, epoch=0)
    loader = make_loader(ds, plan, num_workers=2, persistent_workers=True, pad_to_multiple=160)
    first = _as_lists(loader)
    assert multiprocessing.active_children()  # persistent workers stay between passes
    second = _as_lists(loader)
    assert second == first == _as_lists(make_loader(ds, plan, pad_to_multiple=160))
    assert all(len(b[0][0]) % 160 == 0 for b in second)
    assert multiprocessing.active_children()
    loader.close()
    assert not multiprocessing.active_children()


def test_loader_counts_load_time_skips_in_main_process(corpus):
    ds, root = corpus
    plan = [[0, 1], [2, 3], [4]]
    os.unlink(root / "audio" / "1.flac")
    os.unlink(root / "audio" / "4.flac")  # the whole last batch fails
    loader = make_loader(ds, plan, num_workers=2)
    with pytest.warns(UserWarning, match="skipping .*m.jsonl:2"):
        batches = list(loader)
    assert [b.audio.shape[0] for b in batches] == [1, 2]
    assert dict(ds.skipped) == {"missing_audio": 2}
    assert loader.position == 3


def test_loader_stop_policy_raises_through_workers(corpus):
    ds, root = corpus
    ds.on_error = "stop"
    os.unlink(root / "audio" / "3.flac")
    with pytest.raises(DataError, match="m.jsonl:4"):
        list(make_loader(ds, [[0, 1], [2, 3]], num_workers=2))


def test_make_loader_argument_errors(corpus):
    ds, _ = corpus
    with pytest.raises(ValueError, match="start_batch"):
        make_loader(ds, [[0]], start_batch=2)
    with pytest.raises(ValueError, match="at least one index"):
        make_loader(ds, [[0], []])
    with pytest.raises(TypeError, match="SpeechDataset"):
        make_loader([1, 2], [[0]])


def test_utterance_where_without_manifest():
    u = Utterance(Path("/x/a.flac"), 1.0, "go")
    assert u.where == "/x/a.flac"


def test_collate_pads_features_along_time():
    feats = [torch.randn(3, 5), torch.randn(3, 2)]
    targets = [torch.tensor([1, 2]), torch.tensor([3])]
    batch = collate(list(zip(feats, targets)), pad_idx=0, pad_to_multiple=4)
    assert batch.audio.shape == (2, 3, 8) and batch.audio.dtype == torch.float32
    assert batch.audio_lengths.tolist() == [5, 2] and batch.target_lengths.tolist() == [2, 1]
    assert torch.equal(batch.audio[0, :, :5], feats[0]) and torch.equal(batch.audio[1, :, :2], feats[1])
    assert not batch.audio[0, :, 5:].any() and not batch.audio[1, :, 2:].any()
    assert batch.targets.tolist() == [[1, 2], [3, 0]]
    with pytest.raises(ValueError, match=r"same shape but for its last.*\(4, 2\)"):
        collate([(torch.zeros(3, 2), targets[0]), (torch.zeros(4, 2), targets[1])], pad_idx=0)


def test_feature_cache_batches_hold_each_utterance_features():
    ds = SpeechDataset(read_manifest(bundled_manifests()["validation"])[:3], VOCAB)
    front = filterbank(nfilt=16)
    _, state = front.init(None)
    cache = FeatureCache(ds, front, state)
    batches = list(cache.iterate([[0, 2], [1]], start=1))
    assert [pos for _, pos in batches] == [2]
    batch = cache.batch([0, 2])
    for row, i in enumerate([0, 2]):
        audio, target = ds[i]
        (x, xl), _ = front.apply({}, state, audio[None], torch.tensor([audio.shape[0]]))
        assert int(batch.audio_lengths[row]) == int(xl[0])
        assert torch.equal(batch.audio[row, :, : int(xl[0])], x[0, :, : int(xl[0])])
        assert torch.equal(batch.targets[row, : len(target)], target)
    # One collation: the cache's batch is data.collate of the cached features.
    same = collate([(cache.features[i], ds.targets[i]) for i in (0, 2)], VOCAB.pad_idx)
    assert all(torch.equal(a, b) for a, b in zip(batch, same))


def test_feature_cache_leaves_out_utterances_that_fail_to_load(corpus):
    ds, root = corpus
    os.unlink(root / "audio" / "1.flac")
    front = filterbank(nfilt=16)
    _, state = front.init(None)
    with pytest.warns(UserWarning, match="m.jsonl:2"):
        cache = FeatureCache(ds, front, state)
    assert cache.features[1] is None and dict(ds.skipped) == {"missing_audio": 1}
    assert cache.batch([1]) is None
    assert cache.batch([0, 1]).audio.shape[0] == 1
    assert [pos for _, pos in cache.iterate([[1], [0, 2]])] == [2]


def test_batch_lives_in_data_and_train_reexports_it():
    import fctc.train

    assert fctc.train.Batch is Batch and Batch.__module__ == "fctc.data.batch"


def test_make_loader_is_the_loader_class(corpus):
    ds, _ = corpus
    assert make_loader is Loader and isinstance(make_loader(ds, [[0]]), Loader)
