"""A file's transcript does not depend on what it is batched with (constant STFT padding).

The whole CTC model (front end -> encoder -> decoder) in evaluation mode, ``fctc eval`` and
``fctc transcribe`` give each utterance what it gets alone; checkpoints record the front end's
pad mode, and one written before the mode existed loads with thunder's reflection.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fctc
from fctc import data
from fctc import testing as ft
from fctc.cli import main
from fctc.cli.checkpoints import load_checkpoint_model, save_checkpoint_dir
from fctc.cli.config import default_config, merge_config
from fctc.cli.recipe import build_model, build_vocabulary

TINY_ENCODER = {"filters": [8], "kernel_sizes": [5], "repeat": 1, "stem_filters": 8,
                "stem_kernel": 5, "final_filters": [8, 8], "final_kernel": 5}


def _config(pad_mode: str | None):
    front_end = {"nfilt": 16} if pad_mode is None else {"nfilt": 16, "pad_mode": pad_mode}
    return merge_config(default_config(), {"model": {"encoder": TINY_ENCODER, "front_end": front_end}})


def _model(pad_mode: str | None, seed: int = 0):
    config = _config(pad_mode)
    vocab = build_vocabulary(config, [])
    model = build_model(config["model"], vocab)
    params, state = model.init(fctc.random.key(seed))
    return config, vocab, model, params, state


def test_the_default_recipe_pads_with_zeros():
    assert default_config()["model"]["front_end"]["pad_mode"] == "constant"


_, _, MODEL, PARAMS, STATE = _model("constant")


@settings(max_examples=8, deadline=None)
@given(ft.padded_batches(batch_sizes=st.integers(1, 4), channels=None,
                         max_time=st.integers(1, 4000), min_length=1, scale=0.1))
def test_whole_ctc_model_in_eval_mode_is_batch_independent(batch):
    x, lengths = batch  # garbage beyond each length

    def run(x, lengths):
        return MODEL.apply(PARAMS, STATE, x, lengths, train=False)[0]

    logits, out_lengths = ft.assert_pure(run, x, lengths)
    ft.assert_padding_invariant(run, x, lengths, fills=("zeros", "garbage"), rtol=1e-4, atol=1e-4)
    ft.assert_batch_independent(run, x, lengths, rtol=1e-4, atol=1e-4)
    for b, n in enumerate(lengths.tolist()):  # alone and unpadded, masked to its output length
        one, one_lengths = run(x[b : b + 1, :n], lengths[b : b + 1])
        m = int(one_lengths[0])
        assert m == int(out_lengths[b]) == one.shape[-1]
        ft.assert_trees_allclose(one[0], logits[b, :, :m], rtol=1e-4, atol=1e-4,
                                 msg=f"utterance {b} alone")


def _checkpoint(folder, pad_mode):
    config, vocab, model, params, state = _model(pad_mode, seed=3)
    if pad_mode is None:  # a checkpoint from before pad_mode: its front end lacks the key
        assert "pad_mode" not in config["model"]["front_end"]
    meta = {"config": config, "vocabulary": vocab.to_dict(), "sample_rate": 16000, "step": 0}
    save_checkpoint_dir(folder / "best", params, state, meta)
    return folder


def test_a_checkpoint_without_pad_mode_loads_with_reflect(tmp_path):
    old = load_checkpoint_model(_checkpoint(tmp_path / "old", None))
    x = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1)) * 0.1
    lengths = torch.tensor([4000, 1234])
    x[1, 1234:] = 0
    got = old.model.apply(old.params, old.state, x, lengths)[0][0]
    for mode, same in (("reflect", True), ("constant", False)):
        config = _config(mode)
        model = build_model(config["model"], build_vocabulary(config, []))
        want = model.apply(old.params, old.state, x, lengths)[0][0]
        assert torch.equal(got, want) is same, mode
    new = load_checkpoint_model(_checkpoint(tmp_path / "new", "constant"))
    assert new.config["model"]["front_end"]["pad_mode"] == "constant"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bundled clips of very different lengths (the shortest, a middle one, and ~8 s), with a
    little background noise, as recordings have: the synthesizer's trailing digital silence
    would hide the reflection (a mirrored run of zeros is zeros)."""
    folder = tmp_path_factory.mktemp("clips")
    utts = sorted(data.read_manifest(data.bundled_manifests()["test"]), key=lambda u: u.duration)
    picks = [utts[0], utts[len(utts) // 2]]
    signals = [data.load_audio(u.audio_filepath, sample_rate=16000) for u in picks]
    longest = torch.cat([data.load_audio(u.audio_filepath, sample_rate=16000) for u in utts[-6:]])
    g = torch.Generator().manual_seed(0)
    out = []
    for i, (sig, text) in enumerate(zip(signals + [longest],
                                        [u.text for u in picks] + ["one two three"])):
        path = folder / f"clip{i}.wav"
        sig = sig + 0.01 * torch.randn(len(sig), generator=g)
        sf.write(path, sig.numpy().astype(np.float32), 16000)
        out.append((path, len(sig) / 16000, text))
    assert out[-1][1] > 20 * out[0][1]
    return out


def _manifest(path, rows):
    with open(path, "w") as f:
        for audio, duration, text in rows:
            f.write(json.dumps({"audio_filepath": str(audio), "duration": duration, "text": text}) + "\n")
    return path


def _eval(run, manifest, out, capsys):
    """``fctc eval``'s printed result and its per-file predictions."""
    assert main(["eval", "--checkpoint", str(run), "--manifest", str(manifest), "--output",
                 str(out), "--decoder", "greedy"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return result, {json.loads(line)["audio_filepath"]: json.loads(line)["prediction"]
                    for line in open(out)}


def _transcribe(run, paths, capsys):
    assert main(["transcribe", "--checkpoint", str(run), "--decoder", "greedy",
                 *map(str, paths)]) == 0
    return capsys.readouterr().out.splitlines()


def test_eval_and_transcribe_give_a_file_its_transcript_alone(tmp_path, files, capsys):
    run = _checkpoint(tmp_path / "run", "constant")
    result, together = _eval(run, _manifest(tmp_path / "all.jsonl", files), tmp_path / "all.out",
                             capsys)
    assert result["n"] == len(together) == len(files) and any(together.values())
    losses = []
    for i, row in enumerate(files):
        one, alone = _eval(run, _manifest(tmp_path / f"{i}.jsonl", [row]), tmp_path / f"{i}.out",
                           capsys)
        losses.append(one["loss"])
        assert alone == {str(row[0]): together[str(row[0])]}
        assert _transcribe(run, [row[0]], capsys) == [together[str(row[0])]]
    assert np.mean(losses) == pytest.approx(result["loss"], rel=1e-5)
    assert _transcribe(run, [r[0] for r in files], capsys) == [together[str(r[0])] for r in files]
    # the recognizer on a padded batch of the three signals agrees too
    rec = fctc.load(run)
    signals = [data.load_audio(r[0], sample_rate=16000) for r in files]
    lengths = torch.tensor([len(s) for s in signals])
    batch = torch.zeros(len(signals), int(lengths.max()))
    for b, s in enumerate(signals):
        batch[b, : len(s)] = s
    assert rec.transcribe(batch, lengths, decoder="greedy") == [together[str(r[0])] for r in files]

