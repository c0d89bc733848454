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


# -- inside fctc's compiled code: the kernel as opaque custom ops ------------------------------


def _layer_loss():
    layer = nn.conv1d(64, 64, 5, padding=4, dilation=2, groups=64)
    params, state = layer.init(random.key(0))

    def loss(p, x):
        y, _ = layer.apply(p, state, x)
        return y.sin().sum()

    return params, loss


def _value_and_grads(loss, params, x):
    p = {k: v.detach().requires_grad_() for k, v in params.items()}
    value = loss(p, x)
    return value, torch.autograd.grad(value, list(p.values()))


def _recorded(graphs) -> str:
    text = []
    for gm in graphs:
        text += [str(m.graph) for m in gm.modules() if isinstance(m, torch.fx.GraphModule)]
    return "\n".join(text)


def test_compiled_code_calls_the_kernel_as_opaque_ops_with_eager_values():
    from torch._dynamo.testing import EagerAndRecordGraphs

    from fctc import backend

    params, loss = _layer_loss()
    record = EagerAndRecordGraphs()
    compiled = backend.jit_trees(loss, dynamic=(1,), backend=record, fullgraph=True)
    for frames in (200, 260):  # dynamic lengths: one graph for both
        x = torch.randn(3, 64, frames)
        assert depthwise.fits(x, params["weight"], 1, 4, 64)
        want, want_g = _value_and_grads(loss, params, x)
        got, got_g = _value_and_grads(compiled, params, x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
        for a, c in zip(got_g, want_g):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-4)
    assert len(record.graphs) == 1
    graph = _recorded(record.graphs)
    assert "fctc.depthwise_conv1d.default" in graph
    assert "fctc.depthwise_conv1d_backward.default" in graph


def test_fctc_transforms_inside_compiled_code_keep_conv1d():
    """torch.func cannot differentiate the custom ops inside torch.compile: fctc's transforms
    (the whole compiled train step's vjp) take F.conv1d there, and plain torch.compile always."""
    from torch._dynamo.testing import EagerAndRecordGraphs

    from fctc import backend

    params, loss = _layer_loss()
    x = torch.randn(3, 64, 200)

    def step(p, x):
        value, vjp_fn = backend.vjp(lambda q: loss(q, x), p)
        return value, vjp_fn(torch.ones_like(value))[0]

    record = EagerAndRecordGraphs()
    value, grads = backend.jit_trees(step, backend=record, fullgraph=True)(params, x)
    want, want_g = _value_and_grads(loss, params, x)
    torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-3)
    for k, c in zip(params, want_g):
        torch.testing.assert_close(grads[k], c, rtol=1e-5, atol=1e-4)
    assert "fctc.depthwise_conv1d" not in _recorded(record.graphs)
    long = torch.randn(2, 64, 600)  # one row is as large as the kernel takes
    assert depthwise.fits(long[:1], params["weight"], 1, 4, 64)
    rows = backend.vmap(lambda row: loss(params, row.unsqueeze(0)))
    torch.testing.assert_close(
        backend.jit_trees(rows, backend="eager", fullgraph=True)(long), rows(long), rtol=1e-5, atol=1e-3
    )
    seen = []
    torch.compile(lambda v: seen.append(_fits(v, params["weight"], padding=4)) or v, backend="eager")(x)
    assert seen == [False]


def test_inductor_runs_the_opaque_kernel_for_every_length_without_recompiling():
    from fctc import backend

    params, loss = _layer_loss()
    torch._dynamo.reset()
    compiled = backend.jit_trees(loss, dynamic=(1,))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for frames in (200, 230, 260):
            x = torch.randn(3, 64, frames)
            want, want_g = _value_and_grads(loss, params, x)
            got, got_g = _value_and_grads(compiled, params, x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
            for a, c in zip(got_g, want_g):
                torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-4)
