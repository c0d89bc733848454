"""fctc.nn.conv1d's pointwise path: kernel-size-1 convolutions on the CPU run as one matrix
product per utterance, equal to F.conv1d to rounding, with its gradients, where it applies."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fctc import nn, random
from fctc.nn import conv


@settings(deadline=None, max_examples=40)
@given(
    batch=st.integers(1, 4),
    c_in=st.integers(1, 9),
    c_out=st.integers(1, 9),
    frames=st.integers(1, 40),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_output_and_gradients_match_conv1d(batch, c_in, c_out, frames, bias, seed):
    torch.set_num_threads(2)  # the path's condition (the suite restores the thread count)
    layer = nn.conv1d(c_in, c_out, 1, bias=bias)
    params, state = layer.init(random.key(seed))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, frames, generator=g, requires_grad=True)
    ps = {k: v.requires_grad_() for k, v in params.items()}
    assert conv._pointwise(x, ps["weight"], 1, 0, 1)
    y, _ = layer.apply(ps, state, x)
    want = F.conv1d(x, ps["weight"], ps.get("bias"))
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    ct = torch.randn(y.shape, generator=g)
    inputs = (x, *ps.values())
    for a, b in zip(torch.autograd.grad(y, inputs, ct), torch.autograd.grad(want, inputs, ct)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_only_eager_float32_cpu_kernel_one_stride_one_one_group():
    torch.set_num_threads(2)
    x, w = torch.randn(2, 4, 10), torch.randn(6, 4, 1)
    assert conv._pointwise(x, w, 1, 0, 1)
    assert conv._pointwise(x, w, 1, "same", 1)
    assert not conv._pointwise(x, w, 2, 0, 1)  # strided
    assert not conv._pointwise(x, w, 1, 1, 1)  # padded: zero columns at the ends
    assert not conv._pointwise(x, torch.randn(6, 2, 1), 1, 0, 2)  # grouped
    assert not conv._pointwise(x, torch.randn(6, 4, 3), 1, 0, 1)  # a wider kernel
    assert not conv._pointwise(x.double(), w.double(), 1, 0, 1)
    assert not conv._pointwise(x[0], w, 1, 0, 1)  # unbatched (C, T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv._pointwise(x, w, 1, 0, 1)
    layer = nn.conv1d(4, 6, 1)
    params, state = layer.init(random.key(0))
    y, _ = layer.apply(params, state, x)
    # vmap runs F.conv1d (the matrix product is for eager calls): the same values.
    per_row = torch.func.vmap(lambda row: layer.apply(params, state, row.unsqueeze(0))[0][0])(x)
    torch.testing.assert_close(per_row, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_utterance_does_not_depend_on_its_batch_or_grad_mode(threads):
    """Each utterance is its own product: its output is the same bits alone or padded into a
    batch, with or without gradients."""
    torch.set_num_threads(threads)
    layer = nn.conv1d(128, 192, 1)
    params, state = layer.init(random.key(1))
    a = torch.randn(1, 128, 37)
    batch = torch.cat([torch.cat([a, torch.zeros(1, 128, 60)], -1), torch.randn(1, 128, 97)])
    alone, _ = layer.apply(params, state, a)
    together, _ = layer.apply(params, state, batch)
    assert torch.equal(alone[0], together[0, :, :37])
    ps = {k: v.clone().requires_grad_() for k, v in params.items()}
    tracked, _ = layer.apply(ps, state, batch.requires_grad_())
    assert torch.equal(tracked.detach(), together)


def test_only_where_conv1d_would_take_onednn():
    """torch's rule for 1x1 kernels: oneDNN with more than one thread or 16 or more
    utterances; its own product otherwise, which the path leaves it."""
    x, w = torch.randn(15, 4, 10), torch.randn(6, 4, 1)
    torch.set_num_threads(1)
    assert not conv._pointwise(x, w, 1, 0, 1)
    assert conv._pointwise(torch.randn(16, 4, 10), w, 1, 0, 1)
    torch.set_num_threads(2)
    assert conv._pointwise(x, w, 1, 0, 1)


def test_one_thread_gives_the_same_bits_on_either_side_of_the_batch_rule():
    """With one thread an utterance's output is the same in a batch of 3 (F.conv1d's own
    product) and of 16 (the bmm), so the route a batch takes does not show in the numbers."""
    torch.set_num_threads(1)
    layer = nn.conv1d(64, 96, 1)
    params, state = layer.init(random.key(2))
    g = torch.Generator().manual_seed(2)
    big = torch.randn(16, 64, 50, generator=g)
    small, _ = layer.apply(params, state, big[:3])
    large, _ = layer.apply(params, state, big)
    assert torch.equal(small, large[:3])
