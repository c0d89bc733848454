"""fctc.nn.core.padding_mask: the padding of a lengths tensor, made once per tensor eagerly."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from fctc import nn, random, tree
from fctc.backend import value_and_grad
from fctc.models.quartznet import quartznet_config, quartznet_encoder
from fctc.nn.core import padding_mask


@given(st.lists(st.integers(0, 9), min_size=1, max_size=5), st.integers(0, 9), st.booleans())
def test_the_mask_is_the_complement_of_lengths_to_mask(lens, time, floating):
    lengths = torch.tensor(lens, dtype=torch.float32 if floating else torch.int64)
    if floating:
        lengths = lengths + 0.5  # truncated, as lengths_to_mask does
    expected = ~nn.lengths_to_mask(lengths, time).unsqueeze(1)
    assert torch.equal(padding_mask(lengths, time), expected)
    assert torch.equal(padding_mask(lengths, time), expected)  # the remembered one


def test_one_mask_per_tensor_and_time_until_the_tensor_changes():
    lengths = torch.tensor([3, 1])
    first = padding_mask(lengths, 4)
    assert padding_mask(lengths, 4) is first
    assert padding_mask(torch.tensor([3, 1]), 4) is not first  # another tensor, same values
    assert padding_mask(lengths, 5).shape == (2, 1, 5)
    lengths[1] = 4  # in place: the version changes
    assert torch.equal(padding_mask(lengths, 4), torch.tensor([[[False, False, False, True]],
                                                               [[False, False, False, False]]]))


def test_an_inference_mode_mask_never_reaches_a_training_graph():
    model = quartznet_encoder(feat_in=8, **quartznet_config("tiny"))
    params, state = model.init(random.key(0))
    x, lengths = torch.randn(2, 8, 12), torch.tensor([12, 7])
    with torch.inference_mode():
        model.apply(params, state, x, lengths)  # masks for these lengths, made in inference mode

    def loss(p):
        (y, _), _ = model.apply(p, state, x, lengths, train=True, key=random.key(1))
        return y.sum()

    value, grads = value_and_grad(loss)(params)  # an inference-mode mask would raise here
    assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in tree.leaves(grads))


def test_under_vmap_the_mask_is_computed_each_time():
    lengths = torch.tensor([[2, 3], [1, 0]])
    masks = torch.func.vmap(lambda ls: padding_mask(ls, 3))(lengths)
    assert torch.equal(masks[0], ~nn.lengths_to_mask(lengths[0], 3).unsqueeze(1))
    assert torch.equal(masks[1], ~nn.lengths_to_mask(lengths[1], 3).unsqueeze(1))


def test_models_run_under_inference_mode():
    # Inference tensors have no version counter: the lengths bookkeeping must not ask for one.
    model = quartznet_encoder(feat_in=8, **quartznet_config("tiny"))
    params, state = model.init(random.key(0))
    x, lengths = torch.randn(2, 8, 12), torch.tensor([12, 7])
    with torch.no_grad():
        (want, want_lengths), _ = model.apply(params, state, x, lengths)
    for _ in range(2):
        with torch.inference_mode():
            (y, out_lengths), _ = model.apply(params, state, x.clone(), lengths.clone())
        assert torch.equal(y, want) and torch.equal(out_lengths, want_lengths)
