"""fctc.models.front_end: augmented, cached and identity front ends keep the trees and draws."""

from __future__ import annotations

import pytest
import torch

import fctc
from fctc.audio import augment_features, filterbank
from fctc.models import augmented_front_end, cached_front_end, identity_front_end

SPEC = {"freq_masks": 1, "freq_width": 4, "time_masks": 2, "time_width": 0.1}
WARP = {"time_stretch": 0.1, "freq_warp": 0.1}


def test_identity_front_end_passes_features_through():
    front = identity_front_end()
    assert front.init(None) == ({}, {})
    x, lengths = torch.randn(2, 4, 5), torch.tensor([5, 3])
    (y, yl), state = front.apply({}, {"s": 1}, x, lengths, train=True, key=fctc.random.key(0))
    assert y is x and yl is lengths and state == {"s": 1}
    fb = filterbank(nfilt=8)
    keep = identity_front_end(fb.init)
    assert torch.equal(keep.init(None)[1]["1"]["window"], fb.init(None)[1]["1"]["window"])


def test_cached_front_end_draws_what_the_augmented_one_draws():
    """Training on cached features sees the augmentation training on audio would see."""
    front = filterbank(nfilt=16, dither=0.0)  # no dither: train-mode features equal cached ones
    _, state = front.init(None)
    audio, lengths = torch.randn(3, 4000), torch.tensor([4000, 3100, 900])
    (x, xl), _ = front.apply({}, state, audio, lengths)
    key = fctc.random.key(4)
    (a, al), _ = augmented_front_end(front, SPEC, WARP).apply({}, state, audio, lengths, train=True, key=key)
    (c, cl), _ = cached_front_end(front, SPEC, WARP).apply({}, state, x, xl, train=True, key=key)
    assert torch.equal(a, c) and torch.equal(al, cl)
    want, want_l = augment_features(fctc.random.split(key)[1], x, xl, WARP, SPEC)
    assert torch.equal(c, want) and torch.equal(cl, want_l)


def test_augmented_front_end_only_in_training_and_needs_a_key():
    front = filterbank(nfilt=16)
    assert augmented_front_end(front, None, None) is front
    aug = augmented_front_end(front, SPEC)
    _, state = front.init(None)
    audio, lengths = torch.randn(1, 1600), torch.tensor([1600])
    (x, _), _ = front.apply({}, state, audio, lengths)
    (y, _), _ = aug.apply({}, state, audio, lengths)
    assert torch.equal(x, y)
    with pytest.raises(ValueError, match="needs a key"):
        aug.apply({}, state, audio, lengths, train=True)
    with pytest.raises(ValueError, match="needs a key"):
        cached_front_end(front, None, WARP).apply({}, state, x, torch.tensor([11]), train=True)
