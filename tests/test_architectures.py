"""fctc.models.architectures: one builder per architecture owns its decoder width and stride.

The width and stride an :class:`Architecture` reports are checked against the encoders it
builds (their output channels, and their output lengths on random inputs), and the named
builders against the parts composed by hand.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fctc
from fctc import tree
from fctc.audio import filterbank
from fctc.models import (
    ARCHITECTURES,
    CITRINET,
    QUARTZNET,
    architecture,
    citrinet_config,
    citrinet_ctc,
    ctc_model,
    identity_front_end,
    quartznet_config,
    quartznet_ctc,
)
from fctc.nn.decoders import conv1d_decoder

SIZES = {
    "quartznet": {**quartznet_config("tiny"), "feat_in": 16},
    "citrinet": {**citrinet_config("tiny"), "feat_in": 16},
    "citrinet-x4": {**citrinet_config("tiny"), "strides": (2, 2), "feat_in": 16},
    "quartznet-wide": {**quartznet_config("tiny"), "final_filters": (24, 40), "feat_in": 16},
}


def _arch(name):
    return architecture(name.split("-")[0])


@settings(max_examples=10, deadline=None)
@given(name=st.sampled_from(sorted(SIZES)), lengths=st.lists(st.integers(1, 40), min_size=1, max_size=3))
def test_width_and_stride_describe_the_built_encoder(name, lengths):
    arch, kwargs = _arch(name), SIZES[name]
    encoder = arch.encoder(**kwargs)
    params, state = encoder.init(fctc.random.key(0))
    x = torch.randn(len(lengths), 16, max(lengths))
    (y, y_lengths), _ = encoder.apply(params, state, x, torch.tensor(lengths))
    assert y.shape[1] == arch.decoder_width(kwargs)
    stride = arch.output_stride(kwargs)
    assert y_lengths.tolist() == [-(-n // stride) for n in lengths]


def test_the_registry_and_its_defaults():
    assert ARCHITECTURES == {"quartznet": QUARTZNET, "citrinet": CITRINET}
    assert architecture("citrinet") is CITRINET
    with pytest.raises(ValueError, match=r"'conformer'.*\['citrinet', 'quartznet'\]"):
        architecture("conformer")
    # width and stride from the builders' own defaults when the arguments leave them out
    assert QUARTZNET.decoder_width({}) == 1024 and QUARTZNET.output_stride({}) == 2
    assert CITRINET.decoder_width({}) == 640 and CITRINET.output_stride({"strides": [2, 1, 2]}) == 4
    assert QUARTZNET.encoder_kwargs({"repeat": 3})["repeat"] == 3
    assert QUARTZNET.encoder_kwargs({})["final_kernel"] == 87
    assert CITRINET.front_end == {"nfilt": 80, "n_window_size": 400}


@pytest.mark.parametrize("name", ["quartznet", "citrinet"])
def test_ctc_model_is_the_three_parts_composed(name):
    arch, kwargs = _arch(name), SIZES[name]
    front = filterbank(nfilt=16)
    model = arch.ctc_model(front, 7, kwargs)
    by_hand = ctc_model(front, arch.encoder(**kwargs), conv1d_decoder(arch.decoder_width(kwargs), 7))
    key = fctc.random.key(3)
    (p, s), (q, t) = model.init(key), by_hand.init(key)
    assert tree.flatten_dict(p).keys() == tree.flatten_dict(q).keys()
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves((p, s)), tree.leaves((q, t))))


def test_named_builders_use_the_architecture():
    q = quartznet_ctc(7, "tiny", front_end={"nfilt": 16})
    want = QUARTZNET.ctc_model(filterbank(nfilt=16), 7, {**SIZES["quartznet"], "dropout": 0.0})
    c = citrinet_ctc(7, "tiny")  # NeMo's Citrinet front end: 80 filters, 25 ms windows
    want_c = CITRINET.ctc_model(
        filterbank(nfilt=80, n_window_size=400), 7, {**citrinet_config("tiny"), "feat_in": 80}
    )
    for got, exp in ((q, want), (c, want_c)):
        key = fctc.random.key(5)
        assert all(torch.equal(a, b) for a, b in zip(tree.leaves(got.init(key)), tree.leaves(exp.init(key))))


def test_identity_front_end_over_features():
    model = QUARTZNET.ctc_model(identity_front_end(), 7, SIZES["quartznet"])
    params, state = model.init(fctc.random.key(0))
    assert params["audio_transform"] == {} and state["audio_transform"] == {}
    x, lengths = torch.randn(2, 16, 30), torch.tensor([30, 17])
    (logits, out_lengths), _ = model.apply(params, state, x, lengths)
    assert logits.shape == (2, 7, 15) and out_lengths.tolist() == [15, 9]
