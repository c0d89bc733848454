"""Schedules: parity with torch.optim.lr_scheduler over whole runs, optax formulas, tensor counts."""

import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fctc.optim import schedules as S


def torch_lrs(make_scheduler, base_lr, steps):
    """The learning rate the optimiser uses at each of ``steps`` updates under a torch scheduler."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return torch.tensor(lrs, dtype=torch.float64)


def ours(schedule, steps):
    out = schedule(torch.arange(steps))
    assert out.dtype == torch.float32 and out.shape == (steps,)
    return out.double()


def assert_close(actual, expected, scale=1.0):
    torch.testing.assert_close(actual, expected, rtol=2e-5, atol=2e-6 * scale)


# --- parity with torch.optim.lr_scheduler over the whole schedule ----------------------------


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("total, pct", [(100, 0.3), (37, 0.25), (7, 0.3)])
def test_torch_onecycle_matches_onecyclelr(anneal, three_phase, total, pct):
    max_lr = 0.4
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o,
            max_lr=max_lr,
            total_steps=total,
            pct_start=pct,
            anneal_strategy=anneal,
            three_phase=three_phase,
            div_factor=20.0,
            final_div_factor=50.0,
            cycle_momentum=False,
        ),
        max_lr / 20.0,
        total,
    )
    sched = S.torch_onecycle_schedule(
        max_lr, total, pct, anneal, div_factor=20.0, final_div_factor=50.0, three_phase=three_phase
    )
    assert_close(ours(sched, total), ref, max_lr)
    # After the run the value holds at OneCycleLR's final learning rate.
    assert_close(sched(torch.tensor([total + 3]))[0].double(), ref[-1], max_lr)


def test_torch_onecycle_defaults_match_onecyclelr():
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=50, cycle_momentum=False),
        1.0,
        50,
    )
    assert_close(ours(S.torch_onecycle_schedule(1.0, 50), 50), ref)


def test_cosine_decay_matches_cosine_annealing_lr():
    lr, eta_min, t_max = 0.3, 0.01, 50
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t_max, eta_min=eta_min), lr, t_max + 1
    )
    assert_close(ours(S.cosine_decay_schedule(lr, t_max, alpha=eta_min / lr), t_max + 1), ref, lr)


def test_linear_schedule_matches_linear_lr():
    lr, total = 0.5, 20
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, end_factor=0.7, total_iters=total),
        lr,
        2 * total,
    )
    assert_close(ours(S.linear_schedule(lr * 0.1, lr * 0.7, total), 2 * total), ref, lr)


def test_exponential_decay_matches_exponential_lr():
    lr, gamma = 0.2, 0.97
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=gamma), lr, 200)
    assert_close(ours(S.exponential_decay(lr, 1, gamma), 200), ref, lr)


@pytest.mark.parametrize("warmup", [25, 1, 0])
def test_noam_matches_espnet_warmup_lr_as_lambda_lr(warmup):
    """ESPnet's WarmupLR: lr * w**0.5 * min(s**-0.5, s * w**-1.5) with s = last_epoch + 1."""
    peak = 1e-3

    def factor(epoch):
        s = epoch + 1
        if warmup == 0:
            return s**-0.5
        return warmup**0.5 * min(s**-0.5, s * warmup**-1.5)

    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(o, factor), peak, 200)
    got = ours(S.noam_schedule(peak, warmup), 200)
    assert_close(got, ref, peak)
    if warmup:
        assert got.argmax().item() == warmup - 1
        assert got.max().item() == pytest.approx(peak, rel=1e-6)


# --- optax formulas -----------------------------------------------------------------------


def test_polynomial_schedule_optax_example():
    sched = S.polynomial_schedule(1.0, 0.01, power=2, transition_steps=100, transition_begin=5)
    counts = [0, 5, 6, 104, 105, 110]
    expected = [1.0, 1.0, 0.9803, 0.0101, 0.0100, 0.0100]
    got = [round(sched(c).item(), 4) for c in counts]
    assert got == expected


@given(
    init=st.floats(-2, 2),
    end=st.floats(-2, 2),
    power=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    steps=st.integers(1, 40),
    begin=st.integers(-3, 10),
)
def test_polynomial_schedule_formula(init, end, power, steps, begin):
    sched = S.polynomial_schedule(init, end, power, steps, begin)
    b = max(begin, 0)
    expected = [
        (init - end) * (1 - min(max(c - b, 0), steps) / steps) ** power + end for c in range(60)
    ]
    assert_close(ours(sched, 60), torch.tensor(expected, dtype=torch.float64), 2.0)


def test_polynomial_nonpositive_steps_is_constant():
    out = S.polynomial_schedule(0.3, 0.0, 1, 0)(torch.arange(5))
    assert out.dtype == torch.float32 and torch.all(out == torch.tensor(0.3))


def test_piecewise_constant_schedule():
    sched = S.piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.01})
    assert sched(50).item() == pytest.approx(1.0)
    assert sched(100).item() == pytest.approx(0.1)  # the scale applies from the boundary on
    assert sched(150).item() == pytest.approx(0.1)
    assert sched(250).item() == pytest.approx(0.001)
    with pytest.raises(ValueError, match="non-negative"):
        S.piecewise_constant_schedule(1.0, {3: -0.5})


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize("end_value, rate", [(None, 0.5), (0.2, 0.5), (3.0, 1.5)])
def test_exponential_decay_formula(staircase, end_value, rate):
    init, steps, begin = 1.5, 4, 3
    sched = S.exponential_decay(init, steps, rate, begin, staircase, end_value)
    expected = []
    for c in range(40):
        p = (c - begin) / steps
        p = math.floor(p) if staircase else p
        v = init if c - begin <= 0 else init * rate**p
        if end_value is not None:
            v = max(v, end_value) if rate < 1 else min(v, end_value)
        expected.append(v)
    assert_close(ours(sched, 40), torch.tensor(expected, dtype=torch.float64), 4.0)


def test_exponential_decay_degenerate_is_constant():
    assert torch.all(S.exponential_decay(0.7, 0, 0.5)(torch.arange(4)) == torch.tensor(0.7))
    assert torch.all(S.exponential_decay(0.7, 3, 0.0)(torch.arange(4)) == torch.tensor(0.7))


@pytest.mark.parametrize("alpha, exponent", [(0.0, 1.0), (0.1, 2.0), (0.05, 0.5)])
def test_cosine_decay_formula(alpha, exponent):
    init, steps = 2.0, 30
    expected = [
        init * ((1 - alpha) * (0.5 * (1 + math.cos(math.pi * min(c, steps) / steps))) ** exponent + alpha)
        for c in range(45)
    ]
    assert_close(ours(S.cosine_decay_schedule(init, steps, alpha, exponent), 45), torch.tensor(expected).double(), init)
    with pytest.raises(ValueError, match="decay_steps"):
        S.cosine_decay_schedule(1.0, 0)


def test_piecewise_interpolate_optax_example():
    sched = S.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.01})
    got = [round(sched(s).item(), 6) for s in range(0, 11, 2)]
    assert got == [1.0, 0.55, 0.1, 0.0505, 0.001, 0.001]
    with pytest.raises(ValueError, match="interpolate_type"):
        S.piecewise_interpolate_schedule("cubic", 1.0)


def _interp_reference(kind, init, bands):
    """optax's piecewise_interpolate_schedule written out in Python floats."""
    items = sorted(bands.items())
    bounds = [0] + [b for b, _ in items]
    values = [init]
    for _, s in items:
        values.append(values[-1] * s)

    def f(c):
        out = 0.0
        for i in range(len(bounds) - 1):
            if bounds[i] <= c < bounds[i + 1]:
                pct = (c - bounds[i]) / max(bounds[i + 1] - bounds[i], 1)
                a, b = values[i], values[i + 1]
                out += (b - a) * pct + a if kind == "linear" else b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)
        return out + (values[-1] if bounds[-1] <= c else 0.0)

    return f


def test_onecycle_schedules_follow_optax():
    t, peak = 50, 0.8
    ref = _interp_reference("linear", peak / 25, {15: 25.0, 42: 1 / 25, 50: 1e-4})
    assert_close(ours(S.linear_onecycle_schedule(t, peak), 60), torch.tensor([ref(c) for c in range(60)]).double(), peak)
    ref = _interp_reference("cosine", peak / 25, {15: 25.0, 50: 1 / (25 * 1e4)})
    assert_close(ours(S.cosine_onecycle_schedule(t, peak), 60), torch.tensor([ref(c) for c in range(60)]).double(), peak)
    assert S.cosine_onecycle_schedule(t, peak)(15).item() == pytest.approx(peak)
    with pytest.raises(ValueError):
        S.linear_onecycle_schedule(0, 1.0)


def test_warmup_schedules():
    init, peak, warm, total, end = 0.01, 1.0, 10, 40, 0.1
    sched = S.warmup_cosine_decay_schedule(init, peak, warm, total, end)
    expected = []
    for c in range(50):
        if c < warm:
            expected.append(init + (peak - init) * c / warm)
        else:
            t = min(c - warm, total - warm)
            expected.append(end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t / (total - warm))))
    assert_close(ours(sched, 50), torch.tensor(expected).double())

    sched = S.warmup_exponential_decay_schedule(init, peak, warm, 5, 0.5, transition_begin=2, end_value=0.3)
    expected = [
        init + (peak - init) * c / warm if c < warm else max(peak * 0.5 ** max((c - warm - 2) / 5, 0), 0.3)
        for c in range(50)
    ]
    assert_close(ours(sched, 50), torch.tensor(expected).double())

    sched = S.warmup_constant_schedule(0.0, 2.0, 4)
    assert_close(ours(sched, 7), torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]).double())


def test_join_and_sgdr():
    joined = S.join_schedules([S.constant_schedule(1.0), S.linear_schedule(0.0, 4.0, 4)], [3])
    assert_close(ours(joined, 9), torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.0]).double())
    with pytest.raises(ValueError, match="boundaries"):
        S.join_schedules([S.constant_schedule(1.0)], [3])

    cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=6)
    sgdr = S.sgdr_schedule([cycle, dict(cycle, peak_value=0.5)])
    one = S.warmup_cosine_decay_schedule(**cycle)(torch.arange(6))
    two = S.warmup_cosine_decay_schedule(**dict(cycle, peak_value=0.5))(torch.arange(6))
    torch.testing.assert_close(sgdr(torch.arange(12)), torch.cat([one, two]))


# --- counts as Python ints and int tensors --------------------------------------------------

ALL_SCHEDULES = {
    "constant": S.constant_schedule(0.5),
    "polynomial": S.polynomial_schedule(1.0, 0.1, 2.0, 20, 3),
    "linear": S.linear_schedule(0.0, 1.0, 10),
    "piecewise_constant": S.piecewise_constant_schedule(1.0, {5: 0.5, 9: 0.1}),
    "exponential": S.exponential_decay(1.0, 3, 0.8, 2, True, 0.2),
    "cosine": S.cosine_decay_schedule(1.0, 15, 0.1),
    "piecewise_interpolate": S.piecewise_interpolate_schedule("cosine", 1.0, {4: 2.0, 12: 0.1}),
    "linear_onecycle": S.linear_onecycle_schedule(20, 1.0),
    "cosine_onecycle": S.cosine_onecycle_schedule(20, 1.0),
    "warmup_cosine": S.warmup_cosine_decay_schedule(0.0, 1.0, 5, 20, 0.05),
    "warmup_exponential": S.warmup_exponential_decay_schedule(0.0, 1.0, 5, 4, 0.5),
    "sgdr": S.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=8)] * 2),
    "noam": S.noam_schedule(1.0, 6),
    "torch_onecycle": S.torch_onecycle_schedule(1.0, 20, three_phase=True),
}


@pytest.mark.parametrize("name", sorted(ALL_SCHEDULES))
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_tensor_counts(name, dtype):
    sched = ALL_SCHEDULES[name]
    counts = torch.arange(30, dtype=dtype)
    batched = sched(counts)
    assert batched.dtype == torch.float32 and batched.shape == (30,)
    grid = sched(counts.reshape(5, 6))
    assert grid.shape == (5, 6)
    torch.testing.assert_close(grid.reshape(-1), batched)
    for c in (0, 7, 29):
        zero_d = sched(torch.tensor(c, dtype=dtype))
        assert zero_d.shape == () and zero_d.dtype == torch.float32
        assert zero_d.item() == batched[c].item()
        assert float(sched(c)) == batched[c].item()


def test_torch_onecycle_validation():
    with pytest.raises(ValueError, match="anneal_strategy"):
        S.torch_onecycle_schedule(1.0, 10, anneal_strategy="exp")
    with pytest.raises(ValueError, match="total_steps"):
        S.torch_onecycle_schedule(1.0, 0)
    with pytest.raises(ValueError, match="pct_start"):
        S.torch_onecycle_schedule(1.0, 10, pct_start=1.5)
