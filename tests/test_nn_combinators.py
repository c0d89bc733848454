"""fctc.nn combinators against thunder-speech's containers: serial ~ nn.Sequential,
sequential ~ thunder's MultiSequential, masked ~ thunder's Masked."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn as tnn

from fctc import nn, random, tree
from fctc.backend import jit, value_and_grad


class ThunderMultiSequential(tnn.Sequential):
    """Reference: thunder's MultiSequential threads (audio, lengths) through its children."""

    def forward(self, audio, lengths):  # type: ignore[override]
        for child in self:
            audio, lengths = child(audio, lengths)
        return audio, lengths


class ThunderMasked(tnn.Module):
    """Reference: thunder's Masked runs ``.layer`` (an nn.Sequential) on audio only."""

    def __init__(self, *layers):
        super().__init__()
        self.layer = tnn.Sequential(*layers)

    def forward(self, audio, lengths):
        return self.layer(audio), lengths


class HalveLengths(tnn.Module):
    """A length-aware module without parameters (lengths -> lengths // 2, x unchanged)."""

    def forward(self, x, lengths):
        return x, lengths // 2


def halve_lengths():
    """The fctc twin of HalveLengths."""
    return nn.Model(lambda key=None: ({}, {}),
                    lambda p, s, x, lengths, train=False, key=None: ((x, lengths // 2), s))


def _load(module, params, state):
    module.load_state_dict(tree.flatten_dict(params) | tree.flatten_dict(state))
    return module


def _stack():
    """A thunder-style body: two masked conv/bn/relu groups around a length-changing child."""
    model = nn.sequential(
        nn.masked(nn.conv1d(3, 6, 3, padding=1, bias=False), nn.batch_norm(6, eps=1e-3),
                  nn.relu(), nn.dropout(0.0)),
        halve_lengths(),
        nn.masked(nn.conv1d(6, 6, 5, padding=2, groups=6), nn.batch_norm(6), nn.hardtanh(0, 20)),
    )
    module = ThunderMultiSequential(
        ThunderMasked(tnn.Conv1d(3, 6, 3, padding=1, bias=False), tnn.BatchNorm1d(6, eps=1e-3),
                      tnn.ReLU(), tnn.Dropout(0.0)),
        HalveLengths(),
        ThunderMasked(tnn.Conv1d(6, 6, 5, padding=2, groups=6), tnn.BatchNorm1d(6),
                      tnn.Hardtanh(0, 20)),
    )
    return model, module


def test_serial_matches_nn_sequential_keys_outputs_and_grads():
    model = nn.serial(nn.linear(4, 8), nn.relu(), nn.layer_norm(8), nn.linear(8, 2))
    module = tnn.Sequential(tnn.Linear(4, 8), tnn.ReLU(), tnn.LayerNorm(8), tnn.Linear(8, 2))
    params, state = model.init(random.key(0))
    assert set(params) == {"0", "1", "2", "3"} and params["1"] == {}
    flat = tree.flatten_dict(params)
    assert {k: v.shape for k, v in flat.items()} == {
        k: v.shape for k, v in module.state_dict().items()
    }
    _load(module, params, state)
    x = torch.randn(5, 4)
    ref = module(x)
    ref.square().sum().backward()
    (value, (y, _)), grads = value_and_grad(
        lambda p: (lambda out: (out[0].square().sum(), out))(model.apply(p, state, x)),
        has_aux=True,
    )(params)
    torch.testing.assert_close(y, ref.detach(), rtol=0, atol=0)
    torch.testing.assert_close(
        tree.flatten_dict(grads), {k: p.grad for k, p in module.named_parameters()}, rtol=0, atol=0
    )
    # Params loaded back from a state_dict have no entries for parameter-free children.
    loaded = tree.unflatten_dict(dict(module.state_dict()))
    assert "1" not in loaded
    y2, _ = model.apply(loaded, state, x)
    torch.testing.assert_close(y2, y, rtol=0, atol=0)


@pytest.mark.parametrize("train", [True, False])
def test_sequential_masked_parity_with_thunder(train):
    model, module = _stack()
    params, state = model.init(random.key(1))
    g = torch.Generator().manual_seed(2)
    # Perturb bn weights/buffers so eval mode is not a near-identity.
    params = tree.map(lambda p: p + 0.2 * torch.randn(p.shape, generator=g), params)
    state = tree.map_with_path(
        lambda k, v: v + 0.3 * torch.rand(v.shape, generator=g) if v.is_floating_point() else v,
        state,
    )
    flat = tree.flatten_dict(params) | tree.flatten_dict(state)
    assert {k: v.shape for k, v in flat.items()} == {
        k: v.shape for k, v in module.state_dict().items()
    }
    assert "0.layer.1.running_mean" in flat and "2.layer.0.weight" in flat
    _load(module, params, state)
    module.train(train)
    x = torch.randn(3, 3, 10, generator=g)
    lengths = torch.tensor([10, 7, 4])
    xr = x.clone().requires_grad_(True)
    ref, ref_lengths = module(xr, lengths)
    w = torch.randn(ref.shape, generator=g)
    (ref * w).sum().backward()

    def loss(p, inp):
        (y, out_lengths), new_state = model.apply(p, state, inp, lengths, train=train,
                                                  key=random.key(0))
        return (y * w).sum(), (y, out_lengths, new_state)

    (_, (y, out_lengths, new_state)), (gp, gx) = value_and_grad(
        loss, argnums=(0, 1), has_aux=True
    )(params, x)
    exact = {"rtol": 0, "atol": 0}
    torch.testing.assert_close(y, ref.detach(), **exact)
    assert torch.equal(out_lengths, ref_lengths)
    torch.testing.assert_close(gx, xr.grad, **exact)
    # The depthwise convolution's weight and bias gradients are sums over batch and time that
    # fctc.nn.depthwise takes in another order than oneDNN: equal to rounding, not bit for bit.
    depthwise = {"2.layer.0.weight", "2.layer.0.bias"}
    for name, p in module.named_parameters():
        tol = {"rtol": 1e-5, "atol": 1e-5} if name in depthwise else exact
        got = tree.flatten_dict(gp)[name]
        torch.testing.assert_close(got, p.grad, **tol, msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(tree.flatten_dict(new_state), dict(module.named_buffers()), **exact)
    assert tree.structure(new_state) == tree.structure(state)


def test_masked_zeroes_nothing_and_passes_lengths_through():
    """Thunder's Masked does not mask: positions beyond a length are computed like the rest."""
    model = nn.masked(nn.linear(4, 4))
    params, state = model.init(random.key(0))
    x = torch.randn(2, 3, 4)
    lengths = torch.tensor([1, 2])
    (y, out_lengths), new_state = model.apply(params, state, x, lengths)
    inner, _ = nn.linear(4, 4).apply(params["layer"]["0"], {}, x)
    assert torch.equal(y, inner)
    assert out_lengths is lengths
    assert set(params) == {"layer"} and set(new_state) == {"layer"}


def test_children_get_distinct_keys_and_train_flag():
    seen = []

    def probe(i):
        def apply(p, s, x, train=False, key=None):
            seen.append((i, train, None if key is None else tuple(key.tolist())))
            return x, s
        return nn.Model(lambda key=None: ({}, {}), apply)

    model = nn.serial(probe(0), nn.serial(probe(1), probe(2)))
    model.apply({}, {}, torch.zeros(1), train=True, key=random.key(3))
    keys = [k for _, _, k in seen]
    assert all(t for _, t, _ in seen) and len(set(keys)) == 3
    assert keys[0] == tuple(random.split(random.key(3), 2)[0].tolist())
    assert keys[1] == tuple(random.split(random.split(random.key(3), 2)[1], 2)[0].tolist())
    seen.clear()
    model.apply({}, {}, torch.zeros(1))
    assert [(t, k) for _, t, k in seen] == [(False, None)] * 3


def test_dropout_in_chain_uses_child_key():
    model = nn.serial(nn.relu(), nn.dropout(0.5))
    x = torch.rand(50, 50) + 1
    key = random.key(9)
    y, _ = model.apply({}, {}, x, train=True, key=key)
    z, _ = nn.dropout(0.5).apply({}, {}, x, train=True, key=random.split(key, 2)[1])
    assert torch.equal(y, z)
    y2, _ = model.apply({}, {}, x, train=True, key=key)
    assert torch.equal(y, y2)


def test_chains_of_deterministic_models_derive_no_keys(monkeypatch):
    """No key is split for a part that draws nothing; a part that draws gets the key it got
    before (so the numbers drawn are the same)."""
    splits = []
    real_split = random.split
    monkeypatch.setattr(random, "split", lambda k, n=2: splits.append(n) or real_split(k, n))
    seen = []

    def probe(marked):
        def apply(p, s, x, train=False, key=None):
            seen.append(None if key is None else tuple(key.tolist()))
            return x, s
        model = nn.Model(lambda key=None: ({}, {}), apply)
        return nn.deterministic(model) if marked else model

    quiet = nn.serial(nn.relu(), nn.dropout(0.0), nn.serial(probe(True), nn.tanh()))
    assert not nn.uses_key(quiet)
    x = torch.rand(4, 3)
    y, _ = quiet.apply({}, {}, x, train=True, key=random.key(3))
    assert torch.equal(y, torch.tanh(x)) and splits == [] and seen == [None]
    lengths = torch.tensor([3, 2, 1, 3])
    assert not nn.uses_key(nn.sequential(nn.masked(nn.relu()), nn.masked(nn.dropout(0.0))))
    assert not nn.uses_key(nn.masked(nn.linear(3, 3)))

    seen.clear()
    drawing = nn.serial(nn.relu(), nn.serial(probe(False), nn.tanh()))
    assert nn.uses_key(drawing) and nn.uses_key(nn.dropout(0.1)) and nn.uses_key(probe(False))
    drawing.apply({}, {}, x, train=True, key=random.key(3))
    inner = real_split(real_split(random.key(3), 2)[1], 2)[0]
    assert seen == [tuple(inner.tolist())] and splits == [2, 2]
    (z, _), _ = nn.sequential(nn.masked(nn.relu())).apply({}, {}, x, lengths, train=True, key=random.key(1))
    assert torch.equal(z, torch.relu(x)) and splits == [2, 2]


def test_deterministic_marks_any_callable_apply():
    class Layer:
        def apply(self, params, state, x, *, train=False, key=None):
            return x + 1, state

    model = nn.deterministic(nn.Model(lambda key=None: ({}, {}), Layer().apply))
    assert not nn.uses_key(model) and nn.uses_key(nn.Model(lambda key=None: ({}, {}), Layer().apply))
    assert torch.equal(model.apply({}, {}, torch.zeros(2), train=True)[0], torch.ones(2))
    relu = nn.relu()
    assert nn.deterministic(relu) is relu  # a function takes the mark itself


def test_combinator_errors():
    with pytest.raises(TypeError, match=r"call layer factories, e.g. relu\(\) not relu"):
        nn.serial(nn.relu)
    with pytest.raises(ValueError, match="give at least one model"):
        nn.sequential()
    model = nn.sequential(nn.masked(nn.conv1d(2, 2, 1)))
    params, state = model.init(random.key(0))
    x = torch.randn(2, 2, 5)
    with pytest.raises(ValueError, match="lengths go up to 6, beyond the 5 time steps"):
        model.apply(params, state, x, torch.tensor([6, 2]))
    with pytest.raises(ValueError, match="lengths must be non-negative, got a minimum of -1"):
        model.apply(params, state, x, torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        model.apply(params, state, x, torch.tensor([5]))
    with pytest.raises(ValueError, match=r"params has keys \['7'\] that match none of its 1"):
        model.apply({"7": {}}, state, x, torch.tensor([5, 5]))
    with pytest.raises(ValueError, match=r"masked: params must be \{'layer': ...\}"):
        model.apply({"0": {"weight": 1}}, state, x, torch.tensor([5, 5]))
    with pytest.raises(TypeError, match=r"could not take \(x, lengths\).*wrap them in masked"):
        nn.sequential(nn.relu()).apply({}, {}, x, torch.tensor([5, 5]))


@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_property_padding_invariance_of_pointwise_masked_stack(lengths, seed):
    """Through masked/sequential, time-pointwise layers (kernel-1 convs, eval batch norm,
    activations, linear over channels) never let what lies beyond a length reach valid
    outputs; shapes and lengths come back as given."""
    model = nn.sequential(
        nn.masked(nn.conv1d(3, 5, 1), nn.batch_norm(5), nn.relu()),
        nn.masked(nn.conv1d(5, 5, 1, groups=5), nn.silu(), nn.dropout(0.3)),
    )
    params, state = model.init(random.key(seed))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), 3, 9, generator=g)
    lens = torch.tensor(lengths)
    valid = torch.arange(9)[None, :] < lens[:, None]
    noisy = torch.where(valid[:, None, :], x, 100 * torch.randn(x.shape, generator=g))
    snapshot = tree.map(torch.clone, (params, state, x, lens))
    (y, out), new_state = model.apply(params, state, x, lens)
    (y2, out2), _ = model.apply(params, state, noisy, lens)
    torch.testing.assert_close((params, state, x, lens), snapshot, rtol=0, atol=0)
    assert y.shape == (len(lengths), 5, 9)
    assert torch.equal(out, lens) and torch.equal(out2, lens)
    torch.testing.assert_close(
        y[valid[:, None, :].expand_as(y)], y2[valid[:, None, :].expand_as(y2)], rtol=0, atol=0
    )
    torch.testing.assert_close(new_state, state, rtol=0, atol=0)


def test_jit_matches_eager_for_conv_bn_stack():
    """JIT TEST (torch.compile, a few seconds): the only compiled test of fctc.nn's layers."""
    model = nn.serial(nn.conv1d(2, 3, 3, padding=1), nn.batch_norm(3), nn.relu())
    params, state = model.init(random.key(0))
    x = torch.randn(2, 2, 6)

    def step(p, s, inp):
        return model.apply(p, s, inp, train=True)

    compiled = jit(step, fullgraph=True)
    y_e, s_e = step(params, state, x)
    y_c, s_c = compiled(params, state, x)
    torch.testing.assert_close(y_c, y_e)
    torch.testing.assert_close(s_c, s_e)
