"""fctc.nn decoders against thunder-speech's: module structure, state_dict keys, init, outputs."""

import math

import pytest
import torch
from scipy import stats
from torch import nn as tnn

from fctc import nn, random, tree
from fctc.backend import value_and_grad


class ThunderSwapLastDimension(tnn.Module):
    """Reference: thunder's SwapLastDimension transposes the last two axes."""

    def forward(self, x):
        return x.transpose(-1, -2)


def thunder_linear_decoder(channels, classes, p):
    """Reference: thunder's linear_decoder module tree (swap, dropout, linear, swap)."""
    return tnn.Sequential(ThunderSwapLastDimension(), tnn.Dropout(p), tnn.Linear(channels, classes),
                          ThunderSwapLastDimension())


def thunder_conv1d_decoder(channels, classes):
    """Reference: thunder's conv1d_decoder, a 1x1 Conv1d with an xavier-uniform weight."""
    conv = tnn.Conv1d(channels, classes, kernel_size=1, bias=True)
    tnn.init.xavier_uniform_(conv.weight, gain=1.0)
    return conv


def _parity(model, module, x, tol=None):
    """``model`` against the torch ``module``: the same keys and shapes, outputs and gradients
    equal (bit for bit, or within ``tol``)."""
    tol = tol or {"rtol": 0, "atol": 0}
    params, state = model.init(random.key(0))
    flat = tree.flatten_dict(params) | tree.flatten_dict(state)
    assert {k: v.shape for k, v in flat.items()} == {
        k: v.shape for k, v in module.state_dict().items()
    }
    module.load_state_dict(flat)
    module.eval()
    ref = module(x)
    ref.square().sum().backward()
    (_, y), grads = value_and_grad(
        lambda p: (lambda y: (y.square().sum(), y))(model.apply(p, state, x)[0]), has_aux=True
    )(params)
    torch.testing.assert_close(y, ref.detach(), **tol)
    torch.testing.assert_close(
        tree.flatten_dict(grads), {k: p.grad for k, p in module.named_parameters()}, **tol
    )
    return params


def test_swap_last_dimension():
    x = torch.randn(2, 3, 4)
    y, state = nn.swap_last_dimension().apply({}, {}, x)
    assert torch.equal(y, ThunderSwapLastDimension()(x)) and state == {}
    assert nn.swap_last_dimension().init(random.key(0)) == ({}, {})
    with pytest.raises(ValueError, match=r"rank >= 2, got \(3,\)"):
        nn.swap_last_dimension().apply({}, {}, torch.randn(3))


def test_linear_decoder_matches_thunder():
    x = torch.randn(2, 6, 5)
    params = _parity(nn.linear_decoder(6, 4, 0.1), thunder_linear_decoder(6, 4, 0.1), x)
    assert set(tree.flatten_dict(params)) == {"2.weight", "2.bias"}
    # torch's default nn.Linear init: both bounded by 1/sqrt(fan_in)
    assert params["2"]["weight"].abs().max() <= 1 / math.sqrt(6)
    assert params["2"]["bias"].abs().max() <= 1 / math.sqrt(6)


def test_linear_decoder_dropout_in_training():
    model = nn.linear_decoder(8, 3, 0.5)
    params, state = model.init(random.key(0))
    x = torch.randn(2, 8, 7)
    y1, _ = model.apply(params, state, x, train=True, key=random.key(1))
    y2, _ = model.apply(params, state, x, train=True, key=random.key(1))
    y_eval, _ = model.apply(params, state, x)
    assert torch.equal(y1, y2) and not torch.equal(y1, y_eval)
    with pytest.raises(ValueError, match="needs a random key"):
        model.apply(params, state, x, train=True)


def test_conv1d_decoder_matches_thunder():
    x = torch.randn(2, 6, 5)
    # fctc.nn.conv1d runs the 1x1 convolution as a matrix product on the CPU: equal to
    # Conv1d's to rounding, not bit for bit.
    tol = {"rtol": 1e-5, "atol": 1e-6}
    params = _parity(nn.conv1d_decoder(6, 4), thunder_conv1d_decoder(6, 4), x, tol)
    assert set(params) == {"weight", "bias"}


def test_conv1d_decoder_init_distribution_matches_thunder():
    """xavier-uniform weight (bound sqrt(6 / (fan_in + fan_out))), default conv bias."""
    params, _ = nn.conv1d_decoder(256, 200).init(random.key(0))
    bound = math.sqrt(6 / (256 + 200))
    w, b = params["weight"], params["bias"]
    assert w.abs().max() < bound and w.abs().max() > 0.99 * bound
    assert b.abs().max() < 1 / 16
    torch.manual_seed(0)
    ref = thunder_conv1d_decoder(256, 200)
    assert stats.ks_2samp(w.flatten().numpy(), ref.weight.detach().flatten().numpy()).pvalue > 1e-3
    assert stats.ks_2samp(b.numpy(), ref.bias.detach().numpy()).pvalue > 1e-3


def test_decoder_channel_errors():
    for model in (nn.conv1d_decoder(6, 4), nn.linear_decoder(6, 4, 0.0)):
        params, state = model.init(random.key(0))
        with pytest.raises(ValueError, match=r"6"):
            model.apply(params, state, torch.randn(2, 5, 3))
