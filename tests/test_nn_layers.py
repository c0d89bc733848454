"""Parity of fctc.nn's pure layers with torch.nn: outputs, gradients, running statistics,
state_dict keys; plus hypothesis properties (shapes, purity, batch independence)."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fctc import nn, random, tree
from fctc.backend import value_and_grad


def _load(module: torch.nn.Module, params, state) -> torch.nn.Module:
    module.load_state_dict(tree.flatten_dict(params) | tree.flatten_dict(state))
    return module


def _keys_and_shapes(params, state):
    flat = tree.flatten_dict(params) | tree.flatten_dict(state)
    return {k: tuple(v.shape) for k, v in flat.items()}


def _torch_keys_and_shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _check_parity(model, module, x, train, key=None, exact=True):
    """Output, parameter gradients, input gradient and new state agree with ``module``."""
    params, state = model.init(random.key(0))
    assert _keys_and_shapes(params, state) == _torch_keys_and_shapes(module)
    _load(module, params, state)
    module.train(train)
    g = torch.Generator().manual_seed(5)
    xr = x.detach().clone().requires_grad_(True)
    ref = module(xr)
    w = torch.randn(ref.shape, generator=g, dtype=ref.dtype)
    (ref * w).sum().backward()

    def loss(p, inp):
        y, new_state = model.apply(p, state, inp, train=train, key=key)
        return (y * w).sum(), (y, new_state)

    (_, (y, new_state)), (gp, gx) = value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    tol = {} if not exact else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(y, ref.detach(), **tol)
    torch.testing.assert_close(gx, xr.grad, **tol)
    torch_grads = {k: p.grad for k, p in module.named_parameters()}
    torch.testing.assert_close(tree.flatten_dict(gp), torch_grads, **tol)
    torch.testing.assert_close(tree.flatten_dict(new_state), dict(module.named_buffers()), **tol)
    return params, state, new_state


# ---------------------------------------------------------------- linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (7,)])
def test_linear_parity(bias, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    _check_parity(nn.linear(7, 4, bias=bias), torch.nn.Linear(7, 4, bias=bias), x, train=True)


def test_linear_init_bounds_and_dtype():
    params, state = nn.linear(40, 30, dtype=torch.float64).init(random.key(3))
    assert state == {}
    assert params["weight"].dtype == torch.float64
    assert params["weight"].abs().max() <= 1 / math.sqrt(40)
    assert params["bias"].abs().max() <= 1 / math.sqrt(40)
    params2, _ = nn.linear(40, 30, dtype=torch.float64).init(random.key(3))
    assert torch.equal(params["weight"], params2["weight"])


def test_linear_errors():
    m = nn.linear(3, 2)
    params, state = m.init(random.key(0))
    with pytest.raises(ValueError, match=r"end in 3 features.*\(4, 5\)"):
        m.apply(params, state, torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"params\['weight'\] has shape \(2, 4\)"):
        m.apply({"weight": torch.randn(2, 4), "bias": torch.randn(2)}, state, torch.randn(3))
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        m.apply({"weight": params["weight"]}, state, torch.randn(3))
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        nn.linear(0, 2)


# ---------------------------------------------------------------- conv1d


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3),
        dict(kernel_size=5, stride=2, padding=2, bias=False),
        dict(kernel_size=3, dilation=2, padding=2),
        dict(kernel_size=3, groups=2, padding=1),
        dict(kernel_size=7, groups=4, padding="same"),  # depthwise
        dict(kernel_size=(11,), stride=(1,), padding=5),  # thunder passes 1-tuples
    ],
)
def test_conv1d_parity(kw):
    x = torch.randn(2, 4, 13, generator=torch.Generator().manual_seed(2))
    out = 8 if kw.get("groups", 1) != 4 else 4
    _check_parity(nn.conv1d(4, out, **kw), torch.nn.Conv1d(4, out, **kw), x, train=True)


def test_conv1d_unbatched_input():
    m = nn.conv1d(3, 2, 3, padding=1)
    params, state = m.init(random.key(0))
    x = torch.randn(3, 9)
    y, _ = m.apply(params, state, x)
    y_batched, _ = m.apply(params, state, x[None])
    torch.testing.assert_close(y, y_batched[0])


def test_conv1d_errors():
    with pytest.raises(ValueError, match=r"in_channels \(6\) and out_channels \(4\).*groups \(4\)"):
        nn.conv1d(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        nn.conv1d(2, 2, 0)
    with pytest.raises(ValueError, match="padding must be an int, 'same' or 'valid'"):
        nn.conv1d(2, 2, 3, padding="full")
    m = nn.conv1d(4, 2, 5)
    params, state = m.init(random.key(0))
    with pytest.raises(ValueError, match=r"expected 4 input channels.*\(2, 3, 10\)"):
        m.apply(params, state, torch.randn(2, 3, 10))
    with pytest.raises(ValueError, match="must have rank 2 or 3"):
        m.apply(params, state, torch.randn(1, 1, 4, 10))
    with pytest.raises(ValueError, match=r"params\['weight'\] has shape \(2, 4, 3\)"):
        m.apply({"weight": torch.randn(2, 4, 3), "bias": params["bias"]}, state,
                torch.randn(1, 4, 10))
    with pytest.raises(ValueError, match="fewer than the kernel's span of 5"):
        m.apply(params, state, torch.randn(1, 4, 3))


@given(
    c_in_mult=st.integers(1, 3),
    c_out_mult=st.integers(1, 3),
    groups=st.integers(1, 3),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding=st.integers(0, 3),
    extra=st.integers(0, 6),
    batch=st.integers(1, 3),
)
def test_conv1d_property_shape_and_parity(
    c_in_mult, c_out_mult, groups, kernel, stride, dilation, padding, extra, batch
):
    c_in, c_out = c_in_mult * groups, c_out_mult * groups
    span = dilation * (kernel - 1) + 1
    steps = max(1, span - 2 * padding) + extra
    m = nn.conv1d(c_in, c_out, kernel, stride, padding, dilation, groups)
    params, state = m.init(random.key(extra))
    x = torch.randn(batch, c_in, steps, generator=torch.Generator().manual_seed(extra))
    y, _ = m.apply(params, state, x)
    assert y.shape == (batch, c_out, (steps + 2 * padding - span) // stride + 1)
    ref = _load(torch.nn.Conv1d(c_in, c_out, kernel, stride, padding, dilation, groups),
                params, state)
    torch.testing.assert_close(y, ref(x).detach(), rtol=0, atol=0)


# ---------------------------------------------------------------- batch norm


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 4)])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(eps=1e-3, momentum=0.3),
        dict(affine=False),
        dict(track_running_stats=False),
        dict(momentum=None),
    ],
)
def test_batch_norm_parity(train, shape, kw):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 3 + 1
    model = nn.batch_norm(5, **kw)
    module = torch.nn.BatchNorm1d(5, **kw)
    params, state = model.init(random.key(0))
    # Non-trivial parameters and running statistics, seen by both sides.
    g = torch.Generator().manual_seed(4)
    params = tree.map(lambda p: p + 0.5 * torch.randn(p.shape, generator=g), params)
    if "running_mean" in state:
        state = dict(state, running_mean=torch.randn(5, generator=g),
                     running_var=torch.rand(5, generator=g) + 0.5,
                     num_batches_tracked=torch.tensor(3))
    _load(module, params, state)
    module.train(train)
    xr = x.clone().requires_grad_(True)
    ref = module(xr)
    w = torch.randn(ref.shape, generator=g)
    (ref * w).sum().backward()

    def loss(p, inp):
        y, new_state = model.apply(p, state, inp, train=train)
        return (y * w).sum(), (y, new_state)

    (_, (y, new_state)), (gp, gx) = value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    exact = {"rtol": 0, "atol": 0}
    torch.testing.assert_close(y, ref.detach(), **exact)
    torch.testing.assert_close(gx, xr.grad, **exact)
    torch.testing.assert_close(
        tree.flatten_dict(gp), {k: p.grad for k, p in module.named_parameters()}, **exact
    )
    buffers = dict(module.named_buffers())
    assert set(tree.flatten_dict(new_state)) == set(buffers)
    for k, v in tree.flatten_dict(new_state).items():
        # momentum=None updates with a cumulative-average factor computed as a tensor (so a
        # compiled step never syncs); it may differ from torch's Python float in the last ulp.
        tol = exact if kw.get("momentum", 0.1) is not None else {}
        torch.testing.assert_close(v, buffers[k], **tol)
        assert v.dtype == buffers[k].dtype


def test_batch_norm_state_dict_keys_and_init():
    params, state = nn.batch_norm(7).init(random.key(0))
    module = torch.nn.BatchNorm1d(7)
    assert _keys_and_shapes(params, state) == _torch_keys_and_shapes(module)
    torch.testing.assert_close(
        tree.flatten_dict(params) | tree.flatten_dict(state), module.state_dict(), rtol=0, atol=0
    )
    assert state["num_batches_tracked"].dtype == torch.int64
    assert nn.batch_norm(7, track_running_stats=False).init(random.key(0))[1] == {}
    assert nn.batch_norm(7, affine=False).init(random.key(0))[0] == {}


def test_batch_norm_two_steps_match_torch():
    """Running statistics thread through consecutive training steps as torch's buffers do."""
    model, module = nn.batch_norm(3, momentum=None), torch.nn.BatchNorm1d(3, momentum=None)
    params, state = model.init(random.key(0))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(4, 3, 6, generator=g)
        _, state = model.apply(params, state, x, train=True)
        module(x)
    torch.testing.assert_close(tree.flatten_dict(state), dict(module.named_buffers()))
    assert int(state["num_batches_tracked"]) == 3


def test_batch_norm_is_pure():
    model = nn.batch_norm(4)
    params, state = model.init(random.key(0))
    before = tree.map(torch.clone, (params, state))
    x = torch.randn(3, 4, 5)
    x0 = x.clone()
    _, new_state = model.apply(params, state, x, train=True)
    torch.testing.assert_close((params, state), before, rtol=0, atol=0)
    assert torch.equal(x, x0)
    assert not torch.equal(new_state["running_mean"], state["running_mean"])


def test_batch_norm_errors():
    model = nn.batch_norm(4)
    params, state = model.init(random.key(0))
    with pytest.raises(ValueError, match=r"expected 4 channels.*\(2, 3, 5\)"):
        model.apply(params, state, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="rank 2 or 3"):
        model.apply(params, state, torch.randn(4))
    with pytest.raises(ValueError, match=r"state.*missing \['num_batches_tracked'\]"):
        model.apply(params, {k: state[k] for k in ("running_mean", "running_var")},
                    torch.randn(2, 4))
    with pytest.raises(ValueError, match="momentum must be a number in"):
        nn.batch_norm(4, momentum=1.5)


# ---------------------------------------------------------------- layer norm


@pytest.mark.parametrize(
    "shape,kw", [(5, {}), ((3, 5), {}), (5, dict(bias=False)), (5, dict(elementwise_affine=False))]
)
def test_layer_norm_parity(shape, kw):
    x = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(6))
    model = nn.layer_norm(shape, eps=1e-4, **kw)
    params, state = model.init(random.key(0))
    g = torch.Generator().manual_seed(1)
    params = tree.map(lambda p: p + torch.randn(p.shape, generator=g), params)
    model_init = model.init
    model = nn.Model(lambda key: (params, state), model.apply)
    _check_parity(model, torch.nn.LayerNorm(shape, eps=1e-4, **kw), x, train=True)
    torch.testing.assert_close(
        tree.flatten_dict(model_init(random.key(0))[0]),
        torch.nn.LayerNorm(shape, **kw).state_dict(),
    )


def test_layer_norm_errors():
    model = nn.layer_norm((3, 5))
    params, state = model.init(random.key(0))
    with pytest.raises(ValueError, match=r"end in the normalized shape \(3, 5\)"):
        model.apply(params, state, torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="normalized_shape must be a positive int"):
        nn.layer_norm(())


# ---------------------------------------------------------------- dropout


def test_dropout_identity_in_eval_and_p0():
    x = torch.randn(4, 5)
    y, _ = nn.dropout(0.5).apply({}, {}, x, train=False)
    assert y is x
    y, _ = nn.dropout(0.0).apply({}, {}, x, train=True)
    assert y is x


def test_dropout_statistics_and_scaling():
    p = 0.3
    x = torch.ones(200, 500)
    y, _ = nn.dropout(p).apply({}, {}, x, train=True, key=random.key(0))
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))


def test_dropout_gradient_matches_mask():
    x = torch.randn(6, 7)
    key = random.key(3)
    y, _ = nn.dropout(0.4).apply({}, {}, x, train=True, key=key)
    drop = nn.dropout(0.4)
    gx = value_and_grad(lambda v: drop.apply({}, {}, v, train=True, key=key)[0].sum())(x)[1]
    torch.testing.assert_close(gx, (y != 0).float() / 0.6)


def test_dropout_p1_zeroes_everything():
    y, _ = nn.dropout(1.0).apply({}, {}, torch.randn(3, 3), train=True, key=random.key(0))
    assert torch.equal(y, torch.zeros(3, 3))


@given(seed=st.integers(0, 2**31), p=st.floats(0.05, 0.95), n=st.integers(1, 64))
def test_dropout_property_same_key_same_mask(seed, p, n):
    x = torch.randn(n, 3)
    k = random.key(seed)
    a, _ = nn.dropout(p).apply({}, {}, x, train=True, key=k)
    b, _ = nn.dropout(p).apply({}, {}, x, train=True, key=k)
    assert torch.equal(a, b)
    assert a.shape == x.shape
    assert torch.equal(a == 0, b == 0)


def test_dropout_errors():
    with pytest.raises(ValueError, match="needs a random key"):
        nn.dropout(0.5).apply({}, {}, torch.randn(2), train=True)
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got 1.5"):
        nn.dropout(1.5)


# ---------------------------------------------------------------- activations

ACTIVATIONS = [
    (nn.relu(), torch.nn.ReLU()),
    (nn.gelu(), torch.nn.GELU()),
    (nn.gelu("tanh"), torch.nn.GELU("tanh")),
    (nn.tanh(), torch.nn.Tanh()),
    (nn.sigmoid(), torch.nn.Sigmoid()),
    (nn.silu(), torch.nn.SiLU()),
    (nn.hardtanh(0.0, 20.0), torch.nn.Hardtanh(0.0, 20.0)),
    (nn.hardtanh(), torch.nn.Hardtanh()),
    (nn.leaky_relu(0.2), torch.nn.LeakyReLU(0.2)),
    (nn.elu(0.7), torch.nn.ELU(0.7)),
    (nn.identity(), torch.nn.Identity()),
]


@pytest.mark.parametrize("model,module", ACTIVATIONS, ids=lambda a: type(a).__name__)
def test_activation_parity(model, module):
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0)) * 4
    _check_parity(model, module, x, train=True)


def test_activation_by_name():
    x = torch.linspace(-3, 3, 13)
    for name, ref in [("relu", torch.relu), ("silu", torch.nn.functional.silu),
                      ("swish", torch.nn.functional.silu), ("hardtanh", torch.nn.Hardtanh())]:
        y, _ = nn.activation(name).apply({}, {}, x)
        assert torch.equal(y, ref(x))
    with pytest.raises(ValueError, match="unknown activation 'relu6'; valid names are elu, gelu"):
        nn.activation("relu6")


# ---------------------------------------------------------------- shared properties

LAYERS = [
    lambda: nn.linear(5, 3),
    lambda: nn.conv1d(5, 4, 3, padding=1),
    lambda: nn.batch_norm(5),
    lambda: nn.layer_norm(5),
    lambda: nn.relu(),
]


@given(index=st.integers(0, len(LAYERS) - 1), batch=st.integers(2, 4), seed=st.integers(0, 99))
def test_property_purity_and_batch_independence_in_eval(index, batch, seed):
    """Eval mode: apply leaves inputs, params and state untouched, and each example's output
    is what it gets alone."""
    model = LAYERS[index]()
    params, state = model.init(random.key(seed))
    g = torch.Generator().manual_seed(seed)
    params = tree.map(lambda p: p + 0.1 * torch.randn(p.shape, generator=g), params)
    shape = (batch, 5, 5)  # last axis 5 so linear and layer_norm see features, conv channels
    x = torch.randn(shape, generator=g)
    snapshot = tree.map(torch.clone, (params, state, x))
    y, new_state = model.apply(params, state, x, train=False)
    torch.testing.assert_close((params, state, x), snapshot, rtol=0, atol=0)
    torch.testing.assert_close(new_state, state, rtol=0, atol=0)
    singles = torch.cat([model.apply(params, state, x[i : i + 1])[0] for i in range(batch)])
    torch.testing.assert_close(y, singles)
