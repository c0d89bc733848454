"""Citrinet encoder: parity with the imperative thunder reference, keys, strides, properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference_thunder import (
    CitrinetEncoder,
    MaskedSqueezeExcite,
    assert_exact_in_float32,
    assert_same_layout,
    check_parity,
    init64,
    load_fctc,
)

import fctc
import fctc.models as models
from fctc.tree import flatten_dict

TINY = models.citrinet_config("tiny")
FEAT = 5


def _pair(dropout=0.0, **overrides):
    kwargs = TINY | overrides
    return (
        models.citrinet_encoder(feat_in=FEAT, dropout=dropout, **kwargs),
        CitrinetEncoder(feat_in=FEAT, dropout=dropout, **kwargs),
    )


def _batch(seed=0, batch=3, steps=23, lengths=(23, 12, 4), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, FEAT, steps, generator=g, dtype=dtype), torch.tensor(lengths)


# ---------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("masked_se", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_tiny_parity_with_reference(train, masked_se):
    model, ref = _pair(masked_se=masked_se)
    params, state = init64(model)
    x, lengths = _batch()
    check_parity(model, ref, params, state, x, lengths, train)


def test_parity_with_strides_dropout_in_eval_and_a_wider_stem():
    kw = dict(filters=(8, 16, 16), kernel_sizes=(3, 5, 3), strides=(2, 2, 1), stem_filters=24)
    model, ref = _pair(dropout=0.2, repeat=3, **kw)
    params, state = init64(model, seed=2)
    x, lengths = _batch(seed=3, batch=2, steps=19, lengths=(19, 6))
    check_parity(model, ref, params, state, x, lengths, train=False)


def test_parity_in_float32_is_exact():
    assert_exact_in_float32(*_pair(), *_batch(dtype=torch.float32))


def test_squeeze_excite_alone_matches_reference():
    se = models.squeeze_excite(16)
    params, state = se.init(fctc.random.key(0))
    assert list(flatten_dict(params)) == ["layer.0.fc.0.weight", "layer.0.fc.2.weight"]
    assert flatten_dict(params)["layer.0.fc.0.weight"].shape == (2, 16)
    x = torch.randn(2, 16, 9)
    lengths = torch.tensor([9, 4])
    for masked in (False, True):
        ref = load_fctc(MaskedSqueezeExcite(16, masked), params, state)
        (y, out_lengths), _ = models.squeeze_excite(16, masked=masked).apply(
            params, state, x, lengths
        )
        with torch.no_grad():
            ry, _ = ref(x, lengths)
        assert torch.equal(out_lengths, lengths)
        torch.testing.assert_close(y, ry)
    with pytest.raises(ValueError, match="at least 8 channels"):
        models.squeeze_excite(7)


def test_output_lengths_follow_the_strides():
    kw = dict(filters=(8, 8, 8), kernel_sizes=(3, 3, 3), strides=(2, 1, 2), repeat=1)
    model, _ = _pair(**kw)
    params, state = model.init(fctc.random.key(0))
    lengths = torch.tensor([1, 3, 4, 9, 30, 0])
    (y, out_lengths), _ = model.apply(params, state, torch.randn(6, FEAT, 30), lengths)
    expected = [-(-(-(-n // 2)) // 2) for n in lengths.tolist()]  # ceil(ceil(n / 2) / 2)
    assert out_lengths.tolist() == expected
    assert y.shape == (6, TINY["final_filters"], 8)
    # The masked squeeze-excite pools an empty example to zero instead of dividing by zero.
    masked, _ = _pair(masked_se=True, **kw)
    (y, _), _ = masked.apply(params, state, torch.randn(6, FEAT, 30), lengths)
    assert torch.isfinite(y).all()


# -------------------------------------------------------------------- keys, shapes, widths


def test_nemo_depth_layout_matches_reference():
    """The real Citrinet block layout (21 blocks, its kernels and strides) at a small width."""
    cfg = models.citrinet_config("256")
    kw = dict(cfg, filters=(8,) * 21, final_filters=16)
    model = models.citrinet_encoder(feat_in=FEAT, **kw)
    params, state = model.init(fctc.random.key(0))
    ref = CitrinetEncoder(feat_in=FEAT, **kw)
    assert_same_layout(params, state, ref)
    flat = flatten_dict(params)
    assert flat["1.mconv.23.layer.0.fc.0.weight"].shape == (1, 8)
    assert flat["1.mconv.0.conv.weight"].shape == (8, 1, 11)
    assert flat["22.mconv.0.conv.weight"].shape == (8, 1, 41)
    assert "1.res.1.layer.0.running_var" in flatten_dict(state)
    assert not any(k.startswith(("0.res", "22.res")) for k in flat)
    assert len(cfg["strides"]) == 21 and sum(s == 2 for s in cfg["strides"]) == 3


def test_stem_follows_filters_and_thunder_layout_is_reachable():
    # Thunder's stem is always 256 wide; ours follows filters[0] so 512-wide models load ...
    model = models.citrinet_encoder((512,), (3,), (1,), feat_in=FEAT, repeat=1, final_filters=8)
    params, _ = model.init(fctc.random.key(0))
    assert flatten_dict(params)["0.mconv.1.conv.weight"].shape == (512, FEAT, 1)
    # ... and stem_filters=256 rebuilds thunder's literal layout for any filters.
    kw = dict(filters=(16,), kernel_sizes=(3,), strides=(1,), repeat=1, final_filters=8)
    model = models.citrinet_encoder(feat_in=FEAT, stem_filters=256, **kw)
    params, state = model.init(fctc.random.key(0))
    assert_same_layout(params, state, CitrinetEncoder(feat_in=FEAT, stem_filters=256, **kw))


def test_config_helper():
    cfg = models.citrinet_config("1024")
    assert cfg["filters"] == (1024,) * 21
    cfg["filters"] = ()
    assert models.citrinet_config("1024")["filters"] == (1024,) * 21
    with pytest.raises(ValueError, match="unknown configuration '2048'"):
        models.citrinet_config("2048")


# -------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(strides=(2,)), "same length"),
        (dict(kernel_sizes=(5,)), "same length"),
        (dict(kernel_sizes=(5, 8)), r"kernel_sizes\[1\]=8 is even"),
        (dict(final_kernel=2), "final_kernel=2 is even"),
        (dict(filters=(16, 4)), r"filters\[1\]=4 is below 8"),
        (dict(stem_filters=3), "stem_filters=3 is below 8"),
        (dict(strides=(2, 0)), r"strides\[1\] must be an int >= 1"),
        (dict(dropout=-0.1), "dropout must be a probability"),
        (dict(filters=(), kernel_sizes=(), strides=()), "filters is empty"),
    ],
)
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.citrinet_encoder(feat_in=FEAT, **(TINY | kwargs))


def test_wrong_feature_count_is_refused():
    model, _ = _pair()
    params, state = model.init(fctc.random.key(0))
    with pytest.raises(ValueError, match=f"built with feat_in={FEAT}"):
        model.apply(params, state, torch.randn(2, 80, 10), torch.tensor([10, 10]))


# ----------------------------------------------------------------------------- properties


@st.composite
def padded_batches(draw):
    batch = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(1, 16), min_size=batch, max_size=batch))
    steps = max(lengths) + draw(st.integers(0, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return torch.randn(batch, FEAT, steps, generator=g, dtype=torch.float64), torch.tensor(lengths)


@pytest.fixture(scope="module")
def tiny_masked():
    model = models.citrinet_encoder(feat_in=FEAT, masked_se=True, **TINY)
    return (model, *init64(model, seed=5))


def _valid(y, lengths, b):
    return y[b, :, : int(lengths[b])]


def _pad(x, lengths, extra, fill):
    longer = torch.cat([x, torch.zeros(*x.shape[:2], extra, dtype=x.dtype)], dim=-1)
    beyond = torch.arange(longer.shape[-1]) >= lengths[:, None]
    return torch.where(beyond[:, None, :], torch.full_like(longer, fill), longer)


@given(padded_batches(), st.integers(1, 9), st.floats(-1e3, 1e3))
def test_masked_se_encoder_is_padding_invariant_in_eval(tiny_masked, batch, extra, fill):
    model, params, state = tiny_masked
    x, lengths = batch
    (y, out_lengths), _ = model.apply(params, state, x, lengths)
    (y2, out_lengths2), _ = model.apply(params, state, _pad(x, lengths, extra, fill), lengths)
    assert torch.equal(out_lengths, out_lengths2)
    for b in range(x.shape[0]):
        torch.testing.assert_close(_valid(y2, out_lengths, b), _valid(y, out_lengths, b))


def test_thunder_se_sees_the_padding():
    """Thunder's squeeze-excite averages over padding too: documented, so tested."""
    model = models.citrinet_encoder(feat_in=FEAT, **TINY)
    params, state = init64(model, seed=5)
    x, lengths = _batch(lengths=(10, 10, 10))
    (y, out_lengths), _ = model.apply(params, state, x, lengths)
    (y2, _), _ = model.apply(params, state, _pad(x, lengths, 8, 3.0), lengths)
    valid = out_lengths[0].item()
    assert not torch.allclose(y[..., :valid], y2[..., :valid])


@given(padded_batches())
def test_examples_are_independent_in_eval(tiny_masked, batch):
    model, params, state = tiny_masked
    x, lengths = batch
    (y, out_lengths), _ = model.apply(params, state, x, lengths)
    for b in range(x.shape[0]):
        (yb, lb), _ = model.apply(params, state, x[b : b + 1], lengths[b : b + 1])
        assert lb.item() == out_lengths[b].item()
        torch.testing.assert_close(_valid(yb, lb, 0), _valid(y, out_lengths, b))


@given(padded_batches(), st.booleans())
def test_apply_is_pure(tiny_masked, batch, train):
    model, params, state = tiny_masked
    x, lengths = batch
    before = [t.clone() for t in fctc.tree.leaves((params, state, x, lengths))]
    (y1, l1), s1 = model.apply(params, state, x, lengths, train=train)
    (y2, l2), s2 = model.apply(params, state, x, lengths, train=train)
    after = fctc.tree.leaves((params, state, x, lengths))
    assert all(torch.equal(u, v) for u, v in zip(before, after))
    assert torch.equal(y1, y2) and torch.equal(l1, l2)
    assert all(torch.equal(u, v) for u, v in zip(fctc.tree.leaves(s1), fctc.tree.leaves(s2)))
