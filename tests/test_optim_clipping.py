"""fctc.optim.clipping against optax's formulas (written out here) and torch's clip_grad_norm_."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fctc
import fctc.optim as optim
from fctc import tree as T


pytestmark = pytest.mark.usefixtures("one_thread")


def make_grads(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(5, 4, generator=g) * scale,
        "b": torch.randn(7, generator=g) * scale,
        "c": {"d": torch.randn(3, 2, 2, generator=g) * scale},
    }


def update(tx, grads, params=None):
    return tx.update(grads, tx.init(grads if params is None else params), params)[0]


def test_clip_elementwise():
    g = make_grads(scale=2.0)
    out = update(optim.clip(0.5), g)
    for o, x in zip(T.leaves(out), T.leaves(g)):
        torch.testing.assert_close(o, torch.clamp(x, -0.5, 0.5), rtol=0, atol=0)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5, float("inf")])
def test_clip_by_global_norm_formula(norm_type):
    """optax: unchanged when norm < max_norm, else t / norm * max_norm."""
    g = make_grads(scale=3.0)
    leaves = T.leaves(g)
    if math.isinf(norm_type):
        norm = max(x.abs().max() for x in leaves)
    else:
        norm = sum((x.double().abs() ** norm_type).sum() for x in leaves) ** (1 / norm_type)
    for max_norm in [float(norm) * 0.25, float(norm) * 4.0]:
        out = update(optim.clip_by_global_norm(max_norm, norm_type=norm_type), g)
        for o, x in zip(T.leaves(out), leaves):
            expected = x if norm < max_norm else x / norm * max_norm
            torch.testing.assert_close(o, expected.float(), rtol=1e-6, atol=1e-7)
        assert float(T.global_norm(out, norm_type)) <= max_norm * (1 + 1e-5)


def test_clip_by_global_norm_keeps_dtypes_and_handles_zero():
    g = {"a": torch.zeros(3), "b": torch.zeros(2, dtype=torch.float64)}
    out = update(optim.clip_by_global_norm(1.0), g)
    assert out["a"].dtype == torch.float32 and out["b"].dtype == torch.float64
    assert all(bool((x == 0).all()) for x in T.leaves(out))
    mixed = {"a": torch.full((3,), 4.0), "b": torch.full((1,), 3.0, dtype=torch.float64)}
    out = update(optim.clip_by_global_norm(1.0), mixed)
    torch.testing.assert_close(T.global_norm(out), torch.tensor(1.0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_clip_by_global_norm_rejects_bad_norm_type(bad):
    with pytest.raises(ValueError, match="norm_type"):
        optim.clip_by_global_norm(1.0, norm_type=bad)
    with pytest.raises(TypeError, match="norm_type"):
        optim.clip_by_global_norm(1.0, norm_type=torch.tensor(2.0))


def test_clip_by_global_norm_does_not_synchronise_on_the_decision():
    """The factor is computed with torch.where, so a NaN norm propagates instead of raising."""
    g = {"a": torch.tensor([float("nan"), 1.0])}
    out = update(optim.clip_by_global_norm(1.0), g)
    assert bool(torch.isnan(out["a"]).all())


def optax_unitwise_norm(x):
    x = x.double()
    if x.squeeze().ndim <= 1:
        n = torch.sqrt((x * x).sum())
        return n * torch.ones_like(x)
    if x.ndim in (2, 3):
        return torch.sqrt((x * x).sum(0, keepdim=True)).expand_as(x)
    return torch.sqrt((x * x).sum((0, 1, 2), keepdim=True)).expand_as(x)


@pytest.mark.parametrize("shape", [(), (6,), (1, 6, 1), (4, 3), (4, 3, 2), (2, 3, 2, 5)])
def test_unitwise_norm_matches_optax(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = optim.unitwise_norm(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, optax_unitwise_norm(x).float(), rtol=1e-6, atol=1e-7)


def test_unitwise_norm_rejects_rank_5():
    with pytest.raises(ValueError, match="shape"):
        optim.unitwise_norm(torch.ones(2, 2, 2, 2, 2))


def test_adaptive_grad_clip_formula():
    gen = torch.Generator().manual_seed(2)
    params = {"w": torch.randn(4, 3, generator=gen), "b": torch.zeros(3), "k": torch.randn(2, 3, 2, 5, generator=gen)}
    grads = T.map(lambda p: torch.randn(p.shape, generator=gen) * 2.0, params)
    clipping, eps = 0.1, 1e-3
    out = update(optim.adaptive_grad_clip(clipping, eps), grads, params)
    for o, g, p in zip(T.leaves(out), T.leaves(grads), T.leaves(params)):
        g_norm = optax_unitwise_norm(g)
        max_norm = clipping * torch.clamp(optax_unitwise_norm(p), min=eps)
        expected = torch.where(g_norm < max_norm, g.double(), g.double() * (max_norm / torch.clamp(g_norm, min=1e-6)))
        torch.testing.assert_close(o, expected.float(), rtol=1e-5, atol=1e-7)
    small = T.map(lambda g: g * 1e-6, grads)
    out = update(optim.adaptive_grad_clip(clipping, eps), small, params)
    for o, g in zip(T.leaves(out), T.leaves(small)):
        torch.testing.assert_close(o, g, rtol=0, atol=0)
    with pytest.raises(ValueError, match="parameters"):
        optim.adaptive_grad_clip(0.1).update(grads, optim.EmptyState())


@pytest.mark.parametrize(
    "tx",
    [optim.clip(0.3), optim.clip_by_global_norm(0.5, 3.0), optim.adaptive_grad_clip(0.1)],
    ids=["clip", "global_norm", "agc"],
)
def test_clipping_is_pure_and_handles_none_and_empty(tx):
    g = make_grads(scale=2.0)
    p = make_grads(seed=5)
    before = (T.map(torch.clone, g), T.map(torch.clone, p))
    a = update(tx, g, p)
    b = update(tx, g, p)
    for x, y in zip(T.leaves((g, p)), T.leaves(before)):
        assert torch.equal(x, y)
    for x, y in zip(T.leaves(a), T.leaves(b)):
        assert torch.equal(x, y)
    out = update(tx, {**g, "b": None}, p)
    assert out["b"] is None
    assert update(tx, {}, {}) == {}


@given(st.integers(0, 10_000), st.floats(0.01, 100.0), st.sampled_from([1.0, 2.0, float("inf")]))
def test_clip_by_global_norm_property(seed, max_norm, norm_type):
    """Clipped norm never exceeds max_norm, and the direction is unchanged."""
    g = make_grads(seed, scale=float(seed % 7) + 0.1)
    out = update(optim.clip_by_global_norm(max_norm, norm_type), g)
    norm_g = float(T.global_norm(g, norm_type))
    assert float(T.global_norm(out, norm_type)) <= min(max_norm, norm_g) * (1 + 1e-5)
    factor = T.global_norm(out, norm_type) / T.global_norm(g, norm_type)
    for o, x in zip(T.leaves(out), T.leaves(g)):
        torch.testing.assert_close(o, x * factor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alias", ["adam", "adamw"])
@pytest.mark.parametrize("max_norm", [1e-3, 1e6])
def test_chain_hands_the_clip_factor_to_adam_with_the_same_result(alias, max_norm):
    """chain(clip_by_global_norm, adam[w]) applies the clip factor inside adam's kernel; the
    result equals running the two transformations one after the other."""
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(64, 300, generator=g), "b": torch.randn(300, generator=g)}
    clip = optim.clip_by_global_norm(max_norm)
    opt = getattr(optim, alias)(1e-2)
    fused = optim.chain(clip, opt)
    assert isinstance(clip, optim.ScalingTransformation) and isinstance(opt, optim.FusedTransformation)
    s_fused, s_opt = fused.init(params), opt.init(params)
    p_fused = p_ref = params
    for i in range(5):
        grads = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
        u, s_fused = fused.update(grads, s_fused, p_fused)
        p_fused = optim.apply_updates(p_fused, u)
        clipped, _ = clip.update(grads, clip.init(p_ref), p_ref)
        u_ref, s_opt = opt.update(clipped, s_opt, p_ref)
        p_ref = optim.apply_updates(p_ref, u_ref)
    tol = {"rtol": 1e-6, "atol": 1e-7} if max_norm < 1 else {"rtol": 0, "atol": 0}
    for k in params:
        torch.testing.assert_close(p_fused[k], p_ref[k], **tol)
    torch.testing.assert_close(s_fused[1][0].mu["w"], s_opt[0].mu["w"], **tol)


@pytest.mark.parametrize("alias", ["adam", "adamw"])
def test_chain_with_the_clip_factor_handed_to_adam_leaves_the_gradients_alone(alias):
    """torch's fused kernel writes rescaled gradients back into its input: fctc must not let it
    write into the caller's (a purity bug of the first fused version)."""
    g = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(64, 300, generator=g), "b": torch.randn(300, generator=g)}
    tx = optim.chain(optim.clip_by_global_norm(1e-3), getattr(optim, alias)(1e-2))
    grads = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
    fctc.testing.assert_pure(tx.update, grads, tx.init(params), params)
