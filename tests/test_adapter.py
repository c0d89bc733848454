"""FunctionalModule: an nn.Module view of fctc models, checked against torch.nn modules."""

import copy

import pytest
import torch
from torch import nn

import fctc
from fctc import tree
from fctc.adapter import FunctionalModule
from fctc.backend import value_and_grad
from fctc.nn.core import Model


def _pair(model, reference, seed=0):
    """A FunctionalModule of ``model`` and ``reference`` holding the same tensors."""
    params, state = model.init(fctc.random.key(seed))
    fm = FunctionalModule(model, params, state)
    reference.load_state_dict(fm.state_dict())
    return fm, reference


def _small_stack():
    model = fctc.nn.serial(
        fctc.nn.conv1d(3, 4, 3, padding=1), fctc.nn.relu(), fctc.nn.batch_norm(4)
    )
    reference = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm1d(4))
    return model, reference


CASES = {
    "conv1d": lambda: (fctc.nn.conv1d(3, 5, 3, stride=2), nn.Conv1d(3, 5, 3, stride=2)),
    "batch_norm": lambda: (fctc.nn.batch_norm(3), nn.BatchNorm1d(3)),
    "sequential": _small_stack,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_keys_match_the_torch_module(name):
    model, reference = CASES[name]()
    fm, reference = _pair(model, reference)
    assert list(fm.state_dict()) == list(reference.state_dict())
    assert [k for k, _ in fm.named_parameters()] == [k for k, _ in reference.named_parameters()]
    assert [k for k, _ in fm.named_buffers()] == [k for k, _ in reference.named_buffers()]
    for k, v in reference.state_dict().items():
        assert fm.state_dict()[k].dtype == v.dtype


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("training", [True, False])
def test_outputs_grads_and_running_stats_match_torch(name, training):
    model, reference = CASES[name]()
    fm, reference = _pair(model, reference, seed=1)
    fm.train(training)
    reference.train(training)
    x = torch.randn(4, 3, 9)
    y, y_ref = fm(x), reference(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-6)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    (y_ref * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    ref_params = dict(reference.named_parameters())
    for k, p in fm.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[k].grad, rtol=1e-5, atol=1e-6)
    ref_sd = reference.state_dict()
    for k, v in fm.state_dict().items():
        torch.testing.assert_close(v, ref_sd[k], rtol=0, atol=1e-6)


def test_grads_match_value_and_grad_on_the_same_model():
    model, _ = _small_stack()
    params, state = model.init(fctc.random.key(2))
    fm = FunctionalModule(model, params, state)
    x = torch.randn(2, 3, 7)

    def loss_fn(p):
        y, _ = model.apply(p, state, x, train=True)
        return (y**2).mean()

    loss, grads = value_and_grad(loss_fn)(params)
    out = (fm(x) ** 2).mean()
    out.backward()
    torch.testing.assert_close(out.detach(), loss, rtol=0, atol=0)
    got = tree.unflatten_dict({k: p.grad for k, p in fm.named_parameters()})
    want = tree.flatten_dict(grads)
    for k, g in tree.flatten_dict(got).items():
        torch.testing.assert_close(g, want[k], rtol=0, atol=0)


def test_train_mode_writes_state_back_and_eval_mode_does_not():
    fm = FunctionalModule(fctc.nn.batch_norm(2), *fctc.nn.batch_norm(2).init(fctc.random.key(0)))
    x = torch.randn(5, 2) * 3 + 1
    fm.eval()
    fm(x)
    assert int(fm.state["num_batches_tracked"]) == 0
    torch.testing.assert_close(fm.state["running_mean"], torch.zeros(2))
    fm.train()
    fm(x)
    fm(x)
    assert int(fm.state["num_batches_tracked"]) == 2
    ref = nn.BatchNorm1d(2)
    ref(x), ref(x)
    torch.testing.assert_close(fm.state["running_mean"], ref.running_mean)
    torch.testing.assert_close(fm.state["running_var"], ref.running_var)
    assert not fm.state["running_mean"].requires_grad


def test_nested_keys_with_dots():
    # thunder's Masked(BatchNorm1d) inside a MultiSequential: keys "0.layer.0.running_mean".
    model = fctc.nn.sequential(fctc.nn.masked(fctc.nn.batch_norm(3)))
    fm = FunctionalModule(model, *model.init(fctc.random.key(0)))
    masked = nn.Module()
    masked.layer = nn.Sequential(nn.BatchNorm1d(3))
    reference = nn.Sequential(masked)
    assert list(fm.state_dict()) == list(reference.state_dict())
    assert "0.layer.0.running_mean" in dict(fm.named_buffers())
    x, lengths = torch.randn(2, 3, 6), torch.tensor([6, 4])
    (y, out_lengths) = fm(x, lengths)
    assert y.shape == x.shape and torch.equal(out_lengths, lengths)


def test_state_dict_round_trip_through_a_torch_module():
    model, reference = _small_stack()
    fm, reference = _pair(model, reference, seed=3)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p))
        reference[2].running_mean.normal_()
        reference[2].num_batches_tracked.fill_(7)
    other = FunctionalModule(model, *model.init(fctc.random.key(4)))
    result = other.load_state_dict(reference.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in reference.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    # and back: fctc -> torch
    fresh = _small_stack()[1]
    fresh.load_state_dict(other.state_dict())
    x = torch.randn(2, 3, 5)
    other.eval(), fresh.eval()
    torch.testing.assert_close(other(x), fresh(x), rtol=0, atol=0)
    # the pytrees follow the loaded values
    assert torch.equal(other.params["0"]["weight"], reference[0].weight.detach())
    assert int(other.state["2"]["num_batches_tracked"]) == 7


def test_load_state_dict_errors_name_every_bad_key():
    model, reference = _small_stack()
    fm, _ = _pair(model, reference)
    sd = dict(fm.state_dict())
    bad = dict(sd)
    del bad["0.bias"]
    bad["extra.weight"] = torch.zeros(1)
    bad["2.weight"] = torch.zeros(5)
    with pytest.raises(RuntimeError) as err:
        fm.load_state_dict(bad)
    msg = str(err.value)
    assert "missing keys (1): ['0.bias']" in msg
    assert "unexpected keys (1): ['extra.weight']" in msg
    assert "2.weight: checkpoint shape (5,), module shape (4,)" in msg
    # non-strict ignores missing / unexpected keys, but a wrong shape stays an error
    with pytest.raises(RuntimeError, match=r"2\.weight: checkpoint shape"):
        fm.load_state_dict(bad, strict=False)
    del bad["2.weight"]
    result = fm.load_state_dict(bad, strict=False)
    assert result.missing_keys == ["0.bias", "2.weight"]
    assert result.unexpected_keys == ["extra.weight"]
    with pytest.raises(RuntimeError, match="expected a tensor, got list"):
        fm.load_state_dict({**sd, "0.bias": [0.0] * 4})
    with pytest.raises(TypeError, match="mapping"):
        fm.load_state_dict([1, 2])


def test_load_state_dict_keeps_dtype_or_assigns():
    fm = FunctionalModule(fctc.nn.linear(2, 2), *fctc.nn.linear(2, 2).init(fctc.random.key(0)))
    w = torch.arange(4, dtype=torch.float64).reshape(2, 2)
    fm.load_state_dict({"weight": w, "bias": torch.ones(2)})
    assert fm.weight.dtype == torch.float32 and torch.equal(fm.params["weight"], w.float())
    fm.load_state_dict({"weight": w, "bias": torch.ones(2, dtype=torch.float64)}, assign=True)
    assert fm.weight.dtype == torch.float64 and isinstance(fm.weight, nn.Parameter)
    assert fm.weight.requires_grad
    w.add_(1)  # assign installs the given tensor itself
    assert torch.equal(fm.params["weight"], w)


def test_sgd_steps_on_module_parameters_show_in_params():
    model = fctc.nn.linear(3, 2)
    params, state = model.init(fctc.random.key(0))
    fm = FunctionalModule(model, params, state)
    before = tree.map(torch.clone, fm.params)
    opt = torch.optim.SGD(fm.parameters(), lr=0.5)
    x = torch.randn(4, 3)
    loss = fm(x).pow(2).sum()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in fm.named_parameters()}
    opt.step()
    for k in ("weight", "bias"):
        torch.testing.assert_close(fm.params[k], before[k] - 0.5 * grads[k])
        assert not fm.params[k].requires_grad
    # copy=True (default): the caller's pytree is untouched by the optimiser
    assert torch.equal(params["weight"], before["weight"])
    # copy=False aliases the caller's tensors
    aliased = FunctionalModule(model, params, state, copy=False)
    with torch.no_grad():
        aliased.weight.zero_()
    assert torch.count_nonzero(params["weight"]) == 0


def test_params_share_storage_with_the_module():
    model = fctc.nn.linear(2, 2)
    fm = FunctionalModule(model, *model.init(fctc.random.key(0)))
    view = fm.params
    with torch.no_grad():
        fm.bias.fill_(3.0)
    assert torch.equal(view["bias"], torch.full((2,), 3.0))


def test_to_dtype_moves_params_and_buffers():
    model, _ = _small_stack()
    fm = FunctionalModule(model, *model.init(fctc.random.key(0))).to(torch.float64)
    assert fm.params["0"]["weight"].dtype == torch.float64
    assert fm.state["2"]["running_var"].dtype == torch.float64
    assert fm.state["2"]["num_batches_tracked"].dtype == torch.int64
    fm.eval()
    y = fm(torch.randn(2, 3, 5, dtype=torch.float64))
    assert y.dtype == torch.float64
    fm.to("cpu")
    assert fm.params["0"]["weight"].device.type == "cpu"


def test_deepcopy_is_independent():
    model, _ = _small_stack()
    fm = FunctionalModule(model, *model.init(fctc.random.key(0)))
    twin = copy.deepcopy(fm)
    with torch.no_grad():
        twin.get_parameter("0.weight").zero_()
    assert torch.count_nonzero(fm.params["0"]["weight"]) > 0
    assert torch.count_nonzero(twin.params["0"]["weight"]) == 0


def test_key_reaches_the_model():
    model = fctc.nn.dropout(0.5)
    fm = FunctionalModule(model, *model.init(fctc.random.key(0))).train()
    x = torch.ones(64)
    a = fm(x, key=fctc.random.key(1))
    b = fm(x, key=fctc.random.key(1))
    c = fm(x, key=fctc.random.key(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    fm.eval()
    assert torch.equal(fm(x), x)


def test_names_that_clash_with_module_attributes_still_register():
    def init(key):
        return {"training": {"forward": torch.ones(2)}}, {"state": torch.zeros(2)}

    def apply(params, state, x, *, train=False, key=None):
        return x * params["training"]["forward"], {"state": state["state"] + x}

    fm = FunctionalModule(Model(init, apply), *init(None))
    assert sorted(fm.state_dict()) == ["state", "training.forward"]
    assert fm.training is True and isinstance(fm.state, dict)
    fm(torch.ones(2))
    torch.testing.assert_close(fm.state["state"], torch.ones(2))


def test_construction_and_apply_errors():
    with pytest.raises(TypeError, match="fctc Model"):
        FunctionalModule(nn.Linear(2, 2), {}, {})
    with pytest.raises(TypeError, match="must be a tensor"):
        FunctionalModule(fctc.nn.relu(), {"w": 1.0}, {})
    with pytest.raises(ValueError, match="ambiguous"):
        FunctionalModule(fctc.nn.relu(), {"a.b": torch.ones(1), "a": {"b": torch.ones(1)}}, {})
    with pytest.raises(ValueError, match="both a parameter and a state"):
        FunctionalModule(fctc.nn.relu(), {"w": torch.ones(1)}, {"w": torch.ones(1)})

    def init(key):
        return {}, {"count": torch.zeros(())}

    def bad_apply(params, state, x, *, train=False, key=None):
        return x, {"other": torch.zeros(())}

    fm = FunctionalModule(Model(init, bad_apply), *init(None))
    with pytest.raises(ValueError, match="structure differs"):
        fm(torch.ones(1))

    def reshaping_apply(params, state, x, *, train=False, key=None):
        return x, {"count": torch.zeros(3)}

    fm = FunctionalModule(Model(init, reshaping_apply), *init(None))
    with pytest.raises(ValueError, match=r"'count' with shape \(3,\)"):
        fm(torch.ones(1))


# The one torch.compile test of this file (the aot_eager backend keeps it to a few seconds).
def test_torch_compile_of_the_module_matches_eager():
    model, reference = _small_stack()
    fm, reference = _pair(model, reference, seed=5)
    compiled = torch.compile(fm, backend="aot_eager")  # dynamo + autograd tracing, no codegen
    x = torch.randn(4, 3, 8)
    y = compiled(x)
    y_ref = reference(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fm.state["2"]["running_mean"], reference[2].running_mean)
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(
        fm.get_parameter("0.weight").grad, reference[0].weight.grad, rtol=1e-4, atol=1e-5
    )
