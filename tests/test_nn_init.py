"""fctc.nn.init: torch's default initialisation distributions, drawn from fctc.random keys."""

import math

import pytest
import torch
from scipy import stats

from fctc import random
from fctc.nn import init


def _uniform_moments_ok(x: torch.Tensor, bound: float) -> None:
    """Bounds, mean and variance of ``x`` agree with ``U(-bound, bound)`` (5 sigma)."""
    x = x.double().flatten()
    n = x.numel()
    assert x.min() >= -bound and x.max() < bound
    assert x.max() > 0.95 * bound and x.min() < -0.95 * bound
    var = bound**2 / 3
    assert abs(x.mean().item()) < 5 * math.sqrt(var / n)
    # The sample variance of a uniform has variance (mu4 - var**2) / n with mu4 = bound**4 / 5.
    assert abs(x.var().item() - var) < 5 * math.sqrt((bound**4 / 5 - var**2) / n)


def test_compute_fans_matches_torch():
    for shape in [(3, 5), (8, 4, 3), (6, 2, 1), (2, 3, 4, 5)]:
        t = torch.empty(shape)
        assert init.compute_fans(shape) == torch.nn.init._calculate_fan_in_and_fan_out(t)
    with pytest.raises(ValueError, match="rank >= 2"):
        init.compute_fans((4,))


def test_calculate_gain_matches_torch():
    for name, param in [("linear", None), ("conv1d", None), ("sigmoid", None), ("tanh", None),
                        ("relu", None), ("leaky_relu", None), ("leaky_relu", 0.2),
                        ("leaky_relu", math.sqrt(5)), ("selu", None)]:
        assert init.calculate_gain(name, param) == pytest.approx(
            torch.nn.init.calculate_gain(name, param), rel=1e-12
        )
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        init.calculate_gain("swish")


def test_kaiming_uniform_sqrt5_is_one_over_sqrt_fan_in():
    shape = (96, 16, 5)  # a conv weight: fan_in = 80
    w = init.kaiming_uniform(a=math.sqrt(5))(random.key(0), shape)
    assert w.shape == shape and w.dtype == torch.float32
    _uniform_moments_ok(w, 1 / math.sqrt(80))


def test_kaiming_uniform_default_and_fan_out():
    w = init.kaiming_uniform(nonlinearity="relu", mode="fan_out")(random.key(1), (64, 128))
    _uniform_moments_ok(w, math.sqrt(2.0) * math.sqrt(3.0 / 64))


def test_xavier_uniform_bound():
    w = init.xavier_uniform(gain=2.0)(random.key(2), (60, 40, 3))
    _uniform_moments_ok(w, 2.0 * math.sqrt(6.0 / (120 + 180)))


def test_bias_uniform_and_zero_fan():
    b = init.bias_uniform(25)(random.key(3), (20000,))
    _uniform_moments_ok(b, 0.2)
    assert torch.equal(init.bias_uniform(0)(random.key(3), (4,)), torch.zeros(4))


def test_normal_initialisers_moments():
    n = (200, 100)
    for fn, std in [
        (init.kaiming_normal(nonlinearity="relu"), math.sqrt(2.0 / 100)),
        (init.xavier_normal(gain=0.5), 0.5 * math.sqrt(2.0 / 300)),
        (init.normal(0.3, mean=1.0), 0.3),
    ]:
        w = fn(random.key(4), n).double()
        mean = 1.0 if std == 0.3 else 0.0
        assert abs(w.mean().item() - mean) < 5 * std / math.sqrt(w.numel())
        # sd of the sample variance of a normal: std**2 * sqrt(2 / n)
        assert abs(w.var().item() - std**2) < 5 * std**2 * math.sqrt(2 / w.numel())


def test_constants_and_dtype():
    k = random.key(0)
    assert torch.equal(init.zeros()(k, (2, 3)), torch.zeros(2, 3))
    assert torch.equal(init.ones()(k, 4, torch.float64), torch.ones(4, dtype=torch.float64))
    assert torch.equal(init.constant(0.5)(k, (2,)), torch.full((2,), 0.5))
    assert init.xavier_uniform()(k, (3, 4), torch.float64).dtype == torch.float64


def test_same_key_same_values_different_key_different_values():
    f = init.kaiming_uniform(a=math.sqrt(5))
    assert torch.equal(f(random.key(7), (8, 8)), f(random.key(7), (8, 8)))
    assert not torch.equal(f(random.key(7), (8, 8)), f(random.key(8), (8, 8)))


def test_distribution_parity_with_torch_default_init():
    """Two-sample KS tests: fctc's draws and torch.nn.Linear / Conv1d's own init agree."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(50, 200)
    conv = torch.nn.Conv1d(12, 300, 7, groups=3)
    ours_w = init.kaiming_uniform(a=math.sqrt(5))(random.key(0), tuple(lin.weight.shape))
    ours_b = init.bias_uniform(50)(random.key(1), (200,))
    ours_c = init.kaiming_uniform(a=math.sqrt(5))(random.key(2), tuple(conv.weight.shape))
    ours_cb = init.bias_uniform(4 * 7)(random.key(3), (300,))
    for ours, theirs in [(ours_w, lin.weight), (ours_b, lin.bias), (ours_c, conv.weight),
                         (ours_cb, conv.bias)]:
        res = stats.ks_2samp(ours.flatten().numpy(), theirs.detach().flatten().numpy())
        assert res.pvalue > 1e-3
    torch.manual_seed(1)
    xw = torch.nn.init.xavier_uniform_(torch.empty(80, 60, 1))
    ours_x = init.xavier_uniform()(random.key(4), (80, 60, 1))
    assert stats.ks_2samp(ours_x.flatten().numpy(), xw.flatten().numpy()).pvalue > 1e-3


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match="expected a key"):
        init.uniform(1.0)(None, (2,))
    with pytest.raises(ValueError, match="mode must be"):
        init.kaiming_uniform(mode="fan_avg")
    with pytest.raises(ValueError, match="bound must be >= 0"):
        init.uniform(-1.0)
    with pytest.raises(ValueError, match="non-negative ints"):
        init.zeros()(random.key(0), (2, -1))
