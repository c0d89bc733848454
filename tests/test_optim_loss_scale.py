"""Dynamic loss scaling: step-for-step parity with torch.amp.GradScaler on CPU."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fctc.optim as optim


def gradscaler_trace(finite_steps, init_scale, growth_factor, backoff_factor, growth_interval):
    """(scale, growth_tracker) after each step of a real GradScaler fed finite / inf gradients."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.0)
    scaler = torch.amp.GradScaler(
        "cpu",
        init_scale=init_scale,
        growth_factor=growth_factor,
        backoff_factor=backoff_factor,
        growth_interval=growth_interval,
    )
    trace = []
    for finite in finite_steps:
        scaler.scale(p.sum()).backward()  # initialises the scale tensor lazily
        if not finite:
            p.grad = torch.tensor([1.0, float("inf"), 2.0])
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        trace.append((scaler.get_scale(), int(scaler._growth_tracker.item())))
    return trace


@given(
    steps=st.lists(st.booleans(), min_size=1, max_size=150),
    init_scale=st.sampled_from([2.0**16, 1.0, 3.0, 2.0**126]),
    growth_factor=st.sampled_from([2.0, 1.5]),
    backoff_factor=st.sampled_from([0.5, 0.25]),
    growth_interval=st.integers(1, 6),
)
def test_adjust_matches_gradscaler(steps, init_scale, growth_factor, backoff_factor, growth_interval):
    ref = gradscaler_trace(steps, init_scale, growth_factor, backoff_factor, growth_interval)
    ls = optim.dynamic_loss_scale(init_scale, growth_factor, backoff_factor, growth_interval, min_scale=0.0)
    state = ls.init()
    for finite, (scale, tracker) in zip(steps, ref):
        state = ls.adjust(state, torch.tensor(finite))
        assert state.scale.item() == scale
        assert state.growth_tracker.item() == tracker
    assert state.scale.dtype == torch.float32 and state.growth_tracker.dtype == torch.int32


def test_growth_stops_at_float32_max_like_gradscaler():
    steps = [True] * 12
    ref = gradscaler_trace(steps, 2.0**125, 2.0, 0.5, 2)
    ls = optim.dynamic_loss_scale(2.0**125, growth_interval=2, min_scale=0.0)
    state = ls.init()
    for finite, (scale, tracker) in zip(steps, ref):
        state = ls.adjust(state, finite)
        assert (state.scale.item(), state.growth_tracker.item()) == (scale, tracker)
    assert math.isfinite(state.scale.item()) and state.scale.item() == 2.0**127


def test_min_scale_floors_backoff():
    ls = optim.dynamic_loss_scale(init_scale=8.0, growth_interval=3)  # min_scale=1.0 by default
    state = ls.init()
    for _ in range(10):
        state = ls.adjust(state, torch.tensor(False))
    assert state.scale.item() == 1.0 and state.growth_tracker.item() == 0
    for _ in range(3):
        state = ls.adjust(state, torch.tensor(True))
    assert state.scale.item() == 2.0


def test_scale_and_unscale_match_gradscaler():
    ls = optim.dynamic_loss_scale(init_scale=3.0)
    state = ls.init()
    ref = torch.amp.GradScaler("cpu", init_scale=3.0)
    for loss in (torch.tensor(1.5, dtype=torch.float16), torch.tensor([1.5, 2.0], dtype=torch.float16)):
        scaled, expected = ls.scale(loss, state), ref.scale(loss)
        assert scaled.dtype == expected.dtype and torch.equal(scaled, expected)
    tree = ls.scale({"a": torch.tensor([1.0, 2.0]), "b": (torch.tensor([2.0], dtype=torch.bfloat16),)}, state)
    assert tree["a"].tolist() == [3.0, 6.0] and tree["b"][0].dtype == torch.bfloat16

    # GradScaler.unscale_ multiplies by float32(1 / float64(scale)).
    p = torch.nn.Parameter(torch.zeros(5))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=3.0)
    scaler.scale(p.sum()).backward()
    g = torch.randn(5, generator=torch.Generator().manual_seed(0)) * 7
    p.grad = g.clone()
    scaler.unscale_(opt)
    ours = ls.unscale({"w": g, "h": g.half()}, state)
    assert torch.equal(ours["w"], p.grad)
    assert ours["h"].dtype == torch.float16


def test_all_finite_and_state_is_tensors():
    ls = optim.dynamic_loss_scale()
    assert ls.all_finite({"a": torch.ones(3), "b": torch.zeros(2)}).item() is True
    assert ls.all_finite({"a": torch.ones(3), "b": torch.tensor([0.0, float("nan")])}).item() is False
    state = ls.init()
    assert isinstance(state, optim.LossScaleState)
    assert state.scale.item() == 2.0**16 and state.growth_tracker.item() == 0


def test_validation_messages():
    with pytest.raises(ValueError, match="growth_factor"):
        optim.dynamic_loss_scale(growth_factor=1.0)
    with pytest.raises(ValueError, match="backoff_factor"):
        optim.dynamic_loss_scale(backoff_factor=1.5)
    with pytest.raises(ValueError, match="growth_interval"):
        optim.dynamic_loss_scale(growth_interval=0)
    with pytest.raises(ValueError, match="init_scale"):
        optim.dynamic_loss_scale(init_scale=0.0)
