"""The CTC model composition: front end -> encoder -> decoder, with thunder's naming."""

import pytest
import torch
from torch import nn

import fctc
from fctc import tree
from fctc.adapter import FunctionalModule
from fctc.audio import filterbank
from fctc.models.citrinet import citrinet_config
from fctc.models import citrinet_ctc, ctc_model, quartznet_ctc
from fctc.models.quartznet import quartznet_config, quartznet_encoder
from fctc.nn.decoders import conv1d_decoder
from fctc.text import Vocabulary

import reference_thunder as ref

NUM_CLASSES = 7


def _tiny_parts():
    front = filterbank(nfilt=16)
    enc = quartznet_encoder(feat_in=16, dropout=0.2, **quartznet_config("tiny"))
    dec = conv1d_decoder(32, NUM_CLASSES)
    return front, enc, dec


def _audio(batch=(2400, 1700)):
    gen = torch.Generator().manual_seed(0)
    audio = torch.randn(len(batch), max(batch), generator=gen) * 0.1
    lengths = torch.tensor(batch)
    for i, n in enumerate(batch):
        audio[i, n:] = 0
    return audio, lengths


@pytest.mark.parametrize("build,config", [(quartznet_ctc, "tiny"), (citrinet_ctc, "tiny")])
def test_shapes_and_lengths(build, config):
    model = build(NUM_CLASSES, config, front_end={"nfilt": 16})
    params, state = model.init(fctc.random.key(0))
    audio, lengths = _audio()
    (logits, out_lengths), new_state = model.apply(params, state, audio, lengths)
    frames = lengths // 160 + 1  # the filterbank's frame counts
    assert logits.shape[:2] == (2, NUM_CLASSES)
    assert out_lengths.dtype == torch.long
    assert logits.shape[-1] == int(out_lengths.max())
    # both tiny encoders sub-sample by 2 (quartznet's stem, citrinet's first block), rounding up
    torch.testing.assert_close(out_lengths, -(-frames // 2))
    assert tree.structure(new_state) == tree.structure(state)


def test_apply_equals_running_the_three_parts_by_hand():
    front, enc, dec = _tiny_parts()
    model = ctc_model(front, enc, dec)
    params, state = model.init(fctc.random.key(1))
    audio, lengths = _audio()
    key = fctc.random.key(7)
    for train in (False, True):
        (logits, out_lengths), new_state = model.apply(
            params, state, audio, lengths, train=train, key=key
        )
        k_front, k_enc, k_dec = fctc.random.split(key, 3)
        (f, fl), s_front = front.apply(
            params["audio_transform"], state["audio_transform"], audio, lengths,
            train=train, key=k_front,
        )
        (e, el), s_enc = enc.apply(
            params["encoder"], state["encoder"], f, fl, train=train, key=k_enc
        )
        want, s_dec = dec.apply(params["decoder"], state["decoder"], e, train=train, key=k_dec)
        assert torch.equal(logits, want) and torch.equal(out_lengths, el)
        for got, exp in zip(tree.leaves(new_state), tree.leaves(
            {"encoder": s_enc, "decoder": s_dec, "audio_transform": s_front}
        )):
            assert torch.equal(got, exp)
        running = new_state["encoder"]["0"]["mconv"]["2"]["layer"]["0"]["running_mean"]
        initial = state["encoder"]["0"]["mconv"]["2"]["layer"]["0"]["running_mean"]
        assert torch.equal(running, initial) != train  # stats move only in training


def test_keys_split_independently_and_dropout_needs_them():
    model = ctc_model(*_tiny_parts())
    params, state = model.init(fctc.random.key(1))
    audio, lengths = _audio()

    def out(k):
        return model.apply(params, state, audio, lengths, train=True, key=k)[0][0]

    assert torch.equal(out(fctc.random.key(3)), out(fctc.random.key(3)))
    assert not torch.equal(out(fctc.random.key(3)), out(fctc.random.key(4)))
    with pytest.raises(ValueError, match="key"):
        out(None)


def _thunder_module(encoder: nn.Module, width: int, front_state) -> nn.Module:
    """A thunder BaseCTCModule's module tree: encoder, decoder, audio_transform."""
    audio = nn.Module()
    audio.register_module("0", nn.Identity())
    holder = nn.Module()
    holder.register_buffer("window", front_state["1"]["window"].clone())
    audio.register_module("1", holder)
    masked = nn.Module()
    masked.layer = nn.Sequential(nn.Module())
    masked.layer[0].register_buffer("fb", front_state["2"]["layer"]["0"]["fb"].clone())
    audio.register_module("2", masked)
    module = nn.Module()
    module.encoder = encoder
    module.decoder = nn.Conv1d(width, NUM_CLASSES, 1)
    module.audio_transform = audio
    return module


def test_state_dict_keys_are_thunders_and_logits_match_a_reference():
    front, enc, dec = _tiny_parts()
    model = ctc_model(front, enc, dec)
    params, state = model.init(fctc.random.key(2))
    fm = FunctionalModule(model, params, state).eval()
    reference = _thunder_module(
        ref.QuartznetEncoder(feat_in=16, dropout=0.2, **quartznet_config("tiny")),
        32,
        state["audio_transform"],
    )
    assert list(fm.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(fm.state_dict())
    reference.eval()
    audio, lengths = _audio()
    logits, out_lengths = fm(audio, lengths)
    (features, feature_lengths), _ = front.apply({}, state["audio_transform"], audio, lengths)
    encoded, ref_lengths = reference.encoder(features, feature_lengths)
    torch.testing.assert_close(logits, reference.decoder(encoded), rtol=1e-5, atol=1e-5)
    assert torch.equal(out_lengths, ref_lengths)


def test_citrinet_keys_match_the_reference_module():
    model = citrinet_ctc(NUM_CLASSES, "tiny", front_end={"nfilt": 16})
    params, state = model.init(fctc.random.key(0))
    reference = _thunder_module(
        ref.CitrinetEncoder(feat_in=16, **citrinet_config("tiny")), 32, state["audio_transform"]
    )
    flat = list(tree.flatten_dict(params)) + list(tree.flatten_dict(state))
    assert sorted(flat) == sorted(reference.state_dict())
    assert list(FunctionalModule(model, params, state).state_dict()) == list(
        reference.state_dict()
    )


def test_trees_loaded_from_a_state_dict_run_without_empty_parts():
    model = ctc_model(*_tiny_parts())
    params, state = model.init(fctc.random.key(0))
    # a state_dict round trip drops the empty "audio_transform" params
    assert "audio_transform" not in tree.unflatten_dict(tree.flatten_dict(params))
    loaded = {k: v for k, v in params.items() if k != "audio_transform"}
    audio, lengths = _audio()
    (a, _), _ = model.apply(params, state, audio, lengths)
    (b, _), new_state = model.apply(loaded, state, audio, lengths)
    assert torch.equal(a, b)
    assert set(new_state) == set(state)


def test_builders_take_a_vocabulary_and_check_feature_sizes():
    vocab = Vocabulary(list("abc '"))
    model = quartznet_ctc(vocab, "tiny", front_end={"nfilt": 16})
    params, _ = model.init(fctc.random.key(0))
    assert params["decoder"]["weight"].shape == (len(vocab), 32, 1)
    assert params["encoder"]["0"]["mconv"]["0"]["conv"]["weight"].shape[0] == 16
    with pytest.raises(ValueError, match="nfilt"):
        quartznet_ctc(vocab, "tiny", feat_in=32, front_end={"nfilt": 16})
    with pytest.raises(ValueError, match="vocabulary must be"):
        quartznet_ctc("abc", "tiny")
    with pytest.raises(ValueError, match="unknown configuration"):
        quartznet_ctc(5, "7x7")
    default = citrinet_ctc(5, "tiny")
    _, state = default.init(fctc.random.key(0))
    assert state["audio_transform"]["2"]["layer"]["0"]["fb"].shape[1] == 80


def test_composition_errors():
    front, enc, dec = _tiny_parts()
    with pytest.raises(TypeError, match="encoder must be a fctc Model"):
        ctc_model(front, nn.Linear(1, 1), dec)
    model = ctc_model(front, enc, dec)
    params, state = model.init(fctc.random.key(0))
    audio, lengths = _audio()
    with pytest.raises(ValueError, match=r"keys \['head'\]"):
        model.apply({**params, "head": {}}, state, audio, lengths)
