"""fctc.nn.depthwise: the CPU depthwise kernel computes F.conv1d's depthwise convolution, its
gradients and second derivatives, and fctc.nn.conv1d uses it exactly where it applies."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fctc import nn, random
from fctc.nn import depthwise


def _reference(x, w, padding, dilation, b=None):
    return F.conv1d(x, w, b, 1, padding, dilation, x.shape[1])


@settings(deadline=None, max_examples=40)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(2, 6),
    taps=st.integers(1, 7),
    padding=st.integers(0, 4),
    dilation=st.integers(1, 3),
    extra=st.integers(0, 9),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_forward_and_gradients_match_conv1d(batch, channels, taps, padding, dilation, extra, bias, seed):
    span = dilation * (taps - 1) + 1
    frames = max(1, span - 2 * padding) + extra
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, frames, generator=g, requires_grad=True)
    w = torch.randn(channels, 1, taps, generator=g, requires_grad=True)
    b = torch.randn(channels, generator=g, requires_grad=True) if bias else None
    inputs = (x, w) if b is None else (x, w, b)
    want = _reference(x, w, padding, dilation, b)
    got = depthwise.depthwise_conv1d(x, w, b, padding, dilation)
    assert got.shape == want.shape
    ct = torch.randn(want.shape, generator=g)
    want_g = torch.autograd.grad(want, inputs, ct)
    got_g = torch.autograd.grad(got, inputs, ct)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, c in zip(got_g, want_g):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_float64_gradients_and_second_derivatives_pass_gradcheck():
    x = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = lambda a, c, d: depthwise.depthwise_conv1d(a, c, d, 2, 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_only_the_inputs_that_need_a_gradient_get_one():
    x = torch.randn(2, 4, 10, requires_grad=True)
    w = torch.randn(4, 1, 3)
    (gx,) = torch.autograd.grad(depthwise.depthwise_conv1d(x, w, None, 1, 1).sum(), (x,))
    torch.testing.assert_close(gx, torch.autograd.grad(_reference(x, w, 1, 1).sum(), (x,))[0])


def _fits(x, w, stride=1, padding=1, groups=None):
    return depthwise.fits(x, w, stride, padding, x.shape[1] if groups is None else groups)


def test_fits_eager_float32_cpu_depthwise_stride_one_only():
    x, w = torch.randn(2, 4, depthwise.MIN_ELEMENTS // 8), torch.randn(4, 1, 3)
    assert _fits(x, w)
    assert _fits(x, torch.nn.Parameter(w))
    assert not _fits(x, w, stride=2)
    assert not _fits(x, w, padding="same")
    assert not _fits(x, torch.randn(8, 1, 3), groups=4)  # a channel multiplier
    assert not _fits(x, torch.randn(4, 2, 3), groups=2)  # grouped, not depthwise
    assert not _fits(x.double(), w.double())
    assert not _fits(x[0], w)  # unbatched
    assert not _fits(x[:, :, :-1], w)  # below MIN_ELEMENTS: oneDNN's one call is faster
    assert not _fits(torch.cat([x[:, :1]] * 4, -1), w[:1])  # one channel: a plain convolution
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _fits(x, w)
    rows = torch.randn(2, 1, 4, depthwise.MIN_ELEMENTS // 4)
    assert _fits(rows[0], w)
    seen = []
    torch.func.vmap(lambda row: seen.append(_fits(row, w)) or row)(rows)
    assert seen == [False]  # under a torch.func transform: F.conv1d


def test_conv1d_layer_gives_the_same_output_on_both_paths():
    layer = nn.conv1d(64, 64, 5, padding=4, dilation=2, groups=64)
    params, state = layer.init(random.key(0))
    x = torch.randn(3, 64, 200)
    y, _ = layer.apply(params, state, x)
    assert depthwise.fits(x, params["weight"], 1, 4, 64)
    want = F.conv1d(x, params["weight"], params["bias"], 1, 4, 2, 64)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # F.conv1d's path: autocast's bf16
        low, _ = layer.apply(params, state, x)
    assert low.dtype == torch.bfloat16
    # vmap takes F.conv1d (the kernel does not run under torch.func transforms): same values.
    per_row = torch.func.vmap(lambda row: layer.apply(params, state, row.unsqueeze(0))[0][0])(x)
    torch.testing.assert_close(per_row, y, rtol=1e-5, atol=1e-6)


def test_gradients_do_not_depend_on_the_number_of_threads():
    x = torch.randn(4, 64, 300, requires_grad=True)
    w = torch.randn(64, 1, 9, requires_grad=True)
    b = torch.randn(64, requires_grad=True)
    ct = torch.randn(4, 64, 300)
    grads = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        grads.append(torch.autograd.grad(depthwise.depthwise_conv1d(x, w, b, 4, 1), (x, w, b), ct))
    assert all(torch.equal(a, c) for a, c in zip(*grads))


@pytest.mark.parametrize("threads", [1, 2])
def test_padding_never_leaks_across_utterances(threads):
    """Each output frame sums its own taps only: an utterance's frames do not change when
    another utterance joins the batch."""
    torch.set_num_threads(threads)
    w = torch.randn(5, 1, 7)
    a = torch.randn(1, 5, 30)
    both = torch.cat([a, torch.randn(1, 5, 30)])
    one, two = (depthwise.depthwise_conv1d(v, w, None, 3, 1) for v in (a, both))
    assert torch.equal(one[0], two[0])
