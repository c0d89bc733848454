"""Waveform augmentation in the recipe: the augmented front end, the cache's augmented copies,
and the ``model.waveform`` section of the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fctc
from fctc import data
from fctc.audio import augment_waveform, filterbank
from fctc.cli.config import ConfigError, default_config, merge_config
from fctc.cli.recipe import build_feature_cache, build_model, build_vocabulary
from fctc.data import FeatureCache
from fctc.models import augmented_front_end

WAVE = {"sample_rate": 16000, "speed": {}, "noise": {"snr_db": (5.0, 5.0)}, "gain": {}}
SPEC = {"freq_masks": 1, "freq_width": 4, "time_masks": 1, "time_width": 0.1}


def test_augmented_front_end_runs_the_waveform_steps_first_in_training_only():
    front = filterbank(nfilt=16, pad_mode="constant")
    _, state = front.init()
    audio = torch.randn(3, 4000) * 0.1
    lengths = torch.tensor([4000, 3000, 1000])
    aug = augmented_front_end(front, SPEC, None, WAVE)
    key = fctc.random.key(2)
    (y, yl), _ = aug.apply({}, state, audio, lengths, train=True, key=key)
    k_front, k_aug = fctc.random.split(key)
    k_dither, k_wave = fctc.random.split(k_front)
    wav, wav_lengths = augment_waveform(k_wave, audio, lengths, **WAVE)
    (x, xl), _ = front.apply({}, state, wav, wav_lengths, train=True, key=k_dither)
    want, want_l = fctc.audio.augment_features(k_aug, x, xl, None, SPEC)
    assert torch.equal(y, want) and torch.equal(yl, want_l)
    (ev, _), _ = aug.apply({}, state, audio, lengths)
    assert torch.equal(ev, front.apply({}, state, audio, lengths)[0][0])
    # no step at all: the front end itself
    nothing = {"sample_rate": 16000, "speed": None, "noise": None}
    assert augmented_front_end(front, None, None, nothing) is front


@pytest.fixture(scope="module")
def dataset():
    utts = data.read_manifest(data.bundled_manifests()["train"])[:8]
    config = default_config()
    return data.SpeechDataset(utts, build_vocabulary(config, [u.text for u in utts]))


def test_feature_cache_serves_a_clean_copy_and_augmented_ones_in_turn(dataset):
    front = filterbank(nfilt=16, pad_mode="constant")
    _, state = front.init()
    aug = augmented_front_end(front, None, None, WAVE)
    key = fctc.random.key(4)
    cache = FeatureCache(dataset, front, state, copies=3, augmented=aug, key=key, group=4)
    clean = FeatureCache(dataset, front, state)
    for i in range(len(dataset)):
        assert torch.equal(cache.features[i], clean.features[i])
        assert torch.equal(cache.copy_of(i, epoch=-i), clean.features[i])  # copy 0
        one, two = cache.copy_of(i, 1 - i), cache.copy_of(i, 2 - i)
        assert one.shape[0] == 16 and not torch.equal(one[:, :10], two[:, :10])
    # copy 1 of the first group is the augmenting front end run on that group, padded
    order = fctc.random.permutation(fctc.random.fold_in(key, 1), len(dataset)).tolist()[:4]
    audio = [dataset[i][0] for i in order]
    lengths = torch.tensor([len(a) for a in audio])
    batch = torch.zeros(4, int(lengths.max()))
    for b, a in enumerate(audio):
        batch[b, : len(a)] = a
    (x, frames), _ = aug.apply({}, state, batch, lengths, train=True,
                               key=fctc.random.fold_in(fctc.random.fold_in(key, 1), 0))
    for b, i in enumerate(order):
        assert torch.equal(cache.augmented[0][i], x[b, :, : int(frames[b])])
    # a batch at epoch e mixes the copies (e + i) % 3
    got = cache.batch([0, 1, 2], epoch=5)
    for row, i in enumerate((0, 1, 2)):
        want = cache.copy_of(i, 5)
        assert torch.equal(got.audio[row, :, : want.shape[-1]], want)
    assert [b for b, _ in cache.iterate([[0, 1], [2]], epoch=5)][1].audio.shape[0] == 1
    with pytest.raises(ValueError, match="copies must be a positive int"):
        FeatureCache(dataset, front, state, copies=0)
    with pytest.raises(ValueError, match="needs the augmenting front end"):
        FeatureCache(dataset, front, state, copies=2)


def test_the_default_recipe_caches_four_copies(dataset):
    config = default_config()
    model = build_model(config["model"], dataset.vocabulary)
    _, state = model.init(fctc.random.key(0))
    cache = build_feature_cache(config["model"], dataset, state["audio_transform"], seed=0)
    assert cache.copies == config["model"]["waveform"]["cached_copies"] == 4
    off = merge_config(config, {"model": {"waveform": {s: None for s in
                                                       ("speed", "reverb", "noise", "band_limit", "gain")}}})
    assert build_feature_cache(off["model"], dataset, state["audio_transform"], seed=0).copies == 1


@pytest.mark.parametrize("waveform,named", [
    ({"noise": {"snr_db": [30.0, 10.0]}}, "model.waveform.noise: add_noise: snr_db"),
    ({"noise": {"loudness": 3}}, "'model.waveform.noise'"),
    ({"reverb": {"rt60": [0.1, 0.5], "sample_rate": 8000}}, "'model.waveform.reverb'"),
    ({"band_limit": {"p": 2.0}}, "model.waveform.band_limit: band_limit: p"),
    ({"speed": {"factors": [0.0, 1.0]}}, "model.waveform.speed"),
    ({"cached_copies": 0}, "model.waveform.cached_copies"),
])
def test_waveform_config_errors_name_the_key(waveform, named):
    config = merge_config(default_config(), {"model": {"waveform": waveform}})
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("(", r"\(")):
        build_model(config["model"], build_vocabulary(config, []))
    with pytest.raises(ConfigError, match="unknown config key"):
        merge_config(default_config(), {"model": {"waveform": {"echo": {}}}})


@pytest.mark.parametrize("cache", [True, False])
def test_tiny_training_runs_with_waveform_augmentation(tmp_path, cache):
    """Cached copies (augmented once) or on the fly (cache off): both train, losses finite."""
    import csv

    import yaml

    from fctc.cli import main

    threads = torch.get_num_threads()
    config = {
        "data": {"limit": 8, "max_batch_seconds": 4.0, "cache_features": cache, "test": None},
        "model": {"encoder": {"filters": [8], "kernel_sizes": [5], "repeat": 1,
                              "stem_filters": 8, "stem_kernel": 5, "final_filters": [8, 8],
                              "final_kernel": 5},
                  "front_end": {"nfilt": 16, "pad_mode": "constant"},
                  "waveform": {"cached_copies": 2}},
        "training": {"max_steps": 6, "log_every": 1, "eval_every": 6, "checkpoint_every": 3},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r["kind"] == "train"]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))


def test_waveform_benchmark_reports_every_step_and_the_cache():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import waveform_augment as bench

    threads = torch.get_num_threads()
    try:
        result = bench.run(1, 1, 1, limit=12)
    finally:
        torch.set_num_threads(threads)
    names = [r["what"] for r in result["rows"]]
    assert names[0] == "train step (cached features)" and "waveform: whole chain" in names
    assert all(f"waveform: {s}" in names for s in bench.STEPS)
    assert result["rows"][0]["ratio_to_train_step"] == 1.0
    assert set(result["cache_cpu_seconds"]) == {1, 4} and all(v > 0 for v in result["cache_cpu_seconds"].values())
