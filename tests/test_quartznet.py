"""QuartzNet encoder: parity with the imperative thunder reference, keys, counts, properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference_thunder import (
    ConvBlock,
    MaskedConv1d,
    QuartznetEncoder,
    assert_exact_in_float32,
    assert_same_layout,
    check_parity,
    init64,
    load_fctc,
)

import fctc
import fctc.models as models
from fctc.tree import flatten_dict

TINY = models.quartznet_config("tiny")
FEAT = 6


def _tiny(dropout=0.0, **overrides):
    kwargs = TINY | overrides
    return (
        models.quartznet_encoder(FEAT, dropout=dropout, **kwargs),
        QuartznetEncoder(FEAT, dropout=dropout, **kwargs),
    )


def _batch(seed=0, batch=3, steps=21, lengths=(21, 14, 5), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, FEAT, steps, generator=g, dtype=dtype)
    return x, torch.tensor(lengths)


# ---------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("train", [False, True])
def test_tiny_parity_with_reference(train):
    model, ref = _tiny()
    params, state = init64(model)
    x, lengths = _batch()
    new_state = check_parity(model, ref, params, state, x, lengths, train)
    if not train:
        assert flatten_dict(new_state).keys() == flatten_dict(state).keys()
        for k, v in flatten_dict(new_state).items():
            assert torch.equal(v, flatten_dict(state)[k])


def test_parity_with_dropout_in_eval_mode_and_two_repeat_blocks():
    model, ref = _tiny(dropout=0.3, repeat_blocks=2, repeat=3)
    params, state = init64(model, seed=3)
    x, lengths = _batch(seed=4, batch=2, steps=17, lengths=(9, 17))
    check_parity(model, ref, params, state, x, lengths, train=False)


def test_parity_in_float32_is_exact():
    assert_exact_in_float32(*_tiny(), *_batch(dtype=torch.float32))


def test_output_lengths_halve_rounding_up():
    model, _ = _tiny()
    params, state = model.init(fctc.random.key(0))
    lengths = torch.tensor([1, 2, 7, 8, 21, 0])
    x = torch.randn(6, FEAT, 21)
    (y, out_lengths), _ = model.apply(params, state, x, lengths)
    assert y.shape == (6, TINY["final_filters"][1], 11)
    assert out_lengths.tolist() == [(n + 1) // 2 for n in lengths.tolist()]
    assert out_lengths.dtype == lengths.dtype


def test_train_mode_with_dropout_needs_and_follows_the_key():
    model, _ = _tiny(dropout=0.5)
    params, state = model.init(fctc.random.key(0))
    x, lengths = _batch(dtype=torch.float32)
    with pytest.raises(ValueError, match="key"):
        model.apply(params, state, x, lengths, train=True)
    (a, _), _ = model.apply(params, state, x, lengths, train=True, key=fctc.random.key(5))
    (b, _), _ = model.apply(params, state, x, lengths, train=True, key=fctc.random.key(5))
    (c, _), _ = model.apply(params, state, x, lengths, train=True, key=fctc.random.key(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Without dropout, a key changes nothing.
    model0, _ = _tiny()
    (d, _), _ = model0.apply(params, state, x, lengths, train=True)
    (e, _), _ = model0.apply(params, state, x, lengths, train=True, key=fctc.random.key(5))
    assert torch.equal(d, e)


@pytest.mark.parametrize("stride, dilation, padding", [(1, 1, 2), (2, 1, 2), (1, 2, 4), (3, 1, 0)])
def test_masked_conv1d_matches_reference(stride, dilation, padding):
    conv = models.masked_conv1d(4, 6, 5, stride, padding, dilation)
    params, state = conv.init(fctc.random.key(0))
    assert list(flatten_dict(params)) == ["conv.weight"]
    ref = load_fctc(MaskedConv1d(4, 6, 5, stride, padding, dilation), params, state)
    x, lengths = torch.randn(3, 4, 16), torch.tensor([16, 9, 1])
    (y, out_lengths), _ = conv.apply(params, state, x, lengths)
    with torch.no_grad():
        ry, r_lengths = ref(x, lengths)
    assert torch.equal(y, ry) and torch.equal(out_lengths, r_lengths)
    span = dilation * 4 + 1
    assert out_lengths.tolist() == [(n + 2 * padding - span) // stride + 1 for n in (16, 9, 1)]
    assert y.shape[-1] == out_lengths[0]


@pytest.mark.parametrize("train", [False, True])
def test_strided_residual_block_matches_reference(train):
    """QuartzNet-style striding: every sub-block strides, the residual by stride ** repeat."""
    kw = dict(repeat=2, kernel_size=3, stride=2, residual=True, separable=True)
    block = models.conv_block(4, 8, **kw)
    params, state = init64(block, seed=2)
    x, lengths = torch.randn(2, 4, 13, dtype=torch.float64), torch.tensor([13, 6])
    ref = ConvBlock(4, 8, **kw)
    assert dict(ref.res[0].conv.named_parameters())["weight"].shape == (8, 4, 1)
    assert ref.res[0].conv.stride == (4,)
    check_parity(block, ref, params, state, x, lengths, train)


# -------------------------------------------------------------------- keys, shapes, counts


@pytest.fixture(scope="module")
def qn5x5():
    model = models.quartznet_encoder(64, **models.quartznet_config("5x5"))
    return model, *model.init(fctc.random.key(0))


def test_5x5_layout_and_parameter_count(qn5x5):
    _, params, state = qn5x5
    ref = QuartznetEncoder(64)
    assert_same_layout(params, state, ref)
    assert fctc.tree.size(params) == 6_683_456
    load_fctc(ref, params, state)  # strict
    assert flatten_dict(params)["0.mconv.0.conv.weight"].shape == (64, 1, 33)
    assert "0.mconv.2.layer.0.running_mean" in flatten_dict(state)


def test_15x5_layout_and_parameter_count():
    model = models.quartznet_encoder(64, **models.quartznet_config("15x5"))
    params, state = model.init(fctc.random.key(0))
    assert fctc.tree.size(params) == 18_894_656
    assert_same_layout(params, state, QuartznetEncoder(64, repeat_blocks=3))


def test_5x5_initialisation_follows_torch_defaults(qn5x5):
    _, params, state = qn5x5
    flat = flatten_dict(params)
    for name, w in flat.items():
        if name.endswith("conv.weight"):
            fan_in = w.shape[1] * w.shape[2]
            bound = 1.0 / fan_in**0.5
            assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound, name
            assert abs(w.mean().item()) < 0.1 * bound, name
        elif name.endswith("layer.0.weight"):
            assert torch.equal(w, torch.ones_like(w))
        elif name.endswith("layer.0.bias"):
            assert torch.equal(w, torch.zeros_like(w))
        else:
            raise AssertionError(f"unexpected parameter {name}")
    for name, b in flatten_dict(state).items():
        if name.endswith("num_batches_tracked"):
            assert b.dtype == torch.int64 and b.item() == 0
    # Different keys, different weights; the same key, the same weights.
    model = models.quartznet_encoder(FEAT, **TINY)
    a, _ = model.init(fctc.random.key(1))
    b, _ = model.init(fctc.random.key(1))
    c, _ = model.init(fctc.random.key(2))
    assert all(torch.equal(u, v) for u, v in zip(fctc.tree.leaves(a), fctc.tree.leaves(b)))
    assert not torch.equal(fctc.tree.leaves(a)[0], fctc.tree.leaves(c)[0])


def test_config_helper():
    cfg = models.quartznet_config("15x5")
    cfg["filters"] = (1,)
    assert models.quartznet_config("15x5")["filters"] == (256, 256, 512, 512, 512)
    assert models.quartznet_config("5x5")["repeat_blocks"] == 1
    with pytest.raises(ValueError, match="unknown configuration 'big'"):
        models.quartznet_config("big")


# -------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(filters=(8, 8), kernel_sizes=(5,)), "same length"),
        (dict(kernel_sizes=(5, 6)), r"kernel_sizes\[1\]=6 is even"),
        (dict(stem_kernel=4), "stem_kernel=4 is even"),
        (dict(repeat_blocks=0), "repeat_blocks must be an int >= 1"),
        (dict(repeat=0), "repeat must be an int >= 1"),
        (dict(dropout=1.0), "dropout must be a probability"),
        (dict(final_filters=(8,)), "final_filters must hold two widths"),
        (dict(filters=(8, -1)), r"filters\[1\] must be an int >= 1"),
    ],
)
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.quartznet_encoder(FEAT, **(TINY | kwargs))


def test_bad_inputs_are_refused():
    model, _ = _tiny()
    params, state = model.init(fctc.random.key(0))
    x, lengths = _batch(dtype=torch.float32)
    with pytest.raises(ValueError, match=f"feat_in={FEAT}"):
        model.apply(params, state, torch.randn(3, FEAT + 2, 21), lengths)
    with pytest.raises(ValueError, match="rank 3"):
        model.apply(params, state, x[0], lengths)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        model.apply(params, state, x, lengths[:2])
    with pytest.raises(ValueError, match="beyond"):
        model.apply(params, state, x, lengths + 5)


# ----------------------------------------------------------------------------- properties


@st.composite
def padded_batches(draw):
    batch = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(1, 16), min_size=batch, max_size=batch))
    steps = max(lengths) + draw(st.integers(0, 6))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, FEAT, steps, generator=g, dtype=torch.float64)
    return x, torch.tensor(lengths), seed


@pytest.fixture(scope="module")
def tiny64():
    model = models.quartznet_encoder(FEAT, **TINY)
    return (model, *init64(model, seed=11))


def _valid(y, lengths, b):
    return y[b, :, : int(lengths[b])]


@given(padded_batches(), st.integers(1, 9), st.floats(-1e3, 1e3))
def test_padding_never_reaches_valid_outputs_in_eval(tiny64, batch, extra, fill):
    model, params, state = tiny64
    x, lengths, _ = batch
    (y, out_lengths), _ = model.apply(params, state, x, lengths)
    beyond = torch.arange(x.shape[-1] + extra) >= lengths[:, None]
    longer = torch.cat([x, torch.zeros(*x.shape[:2], extra, dtype=x.dtype)], dim=-1)
    longer = torch.where(beyond[:, None, :], torch.full_like(longer, fill), longer)
    (y2, out_lengths2), _ = model.apply(params, state, longer, lengths)
    assert torch.equal(out_lengths, out_lengths2)
    for b in range(x.shape[0]):
        torch.testing.assert_close(_valid(y2, out_lengths, b), _valid(y, out_lengths, b))


@given(padded_batches())
def test_examples_are_independent_in_eval(tiny64, batch):
    model, params, state = tiny64
    x, lengths, _ = batch
    (y, out_lengths), _ = model.apply(params, state, x, lengths)
    for b in range(x.shape[0]):
        (yb, lb), _ = model.apply(params, state, x[b : b + 1], lengths[b : b + 1])
        assert lb.item() == out_lengths[b].item()
        torch.testing.assert_close(_valid(yb, lb, 0), _valid(y, out_lengths, b))


@given(padded_batches(), st.booleans())
def test_apply_is_pure(tiny64, batch, train):
    model, params, state = tiny64
    x, lengths, _ = batch
    before = [t.clone() for t in fctc.tree.leaves((params, state, x, lengths))]
    (y1, l1), s1 = model.apply(params, state, x, lengths, train=train)
    (y2, l2), s2 = model.apply(params, state, x, lengths, train=train)
    after = fctc.tree.leaves((params, state, x, lengths))
    assert all(torch.equal(u, v) for u, v in zip(before, after))
    assert torch.equal(y1, y2) and torch.equal(l1, l2)
    assert all(torch.equal(u, v) for u, v in zip(fctc.tree.leaves(s1), fctc.tree.leaves(s2)))
    if train:
        counts = [v for k, v in flatten_dict(s1).items() if k.endswith("num_batches_tracked")]
        assert all(c.item() == 4 for c in counts)  # perturb_running_stats starts them at 3
