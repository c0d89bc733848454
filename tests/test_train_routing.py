"""Multi-loss routing: each parameter group learns from its own loss, through its own chain."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fctc
from fctc import backend, optim, random
from fctc.testing import assert_trees_allclose, assert_trees_equal
from fctc.train import make_train_step
from tiny_task import BLANK, tiny_batch, tiny_model

MODEL = tiny_model()


def two_losses(params, state, batch, key):
    """"ctc" trains everything it reaches; "aux" is an L2 pull on the first conv's output."""
    (logits, lengths), state = MODEL.apply(params, state, batch.audio, batch.audio_lengths, train=True)
    ctc = fctc.losses.ctc_loss(logits, lengths, batch.targets, batch.target_lengths, BLANK)
    hidden, _ = fctc.nn.conv1d(8, 16, 3, padding=1).apply(params["layer"]["0"], {}, batch.audio)
    return {"ctc": ctc, "aux": hidden.pow(2).mean()}, state


LABELS = {"layer": {"0": {"weight": "aux", "bias": "aux"}, "2": {"weight": "ctc", "bias": "ctc"}}}


def _expected(params, batch, name, lr):
    def f(p):
        losses, _ = two_losses(p, {}, batch, None)
        return losses[name]

    grads = backend.grad(f)(params)
    return fctc.tree.map(lambda p, g: p - lr * g, params, grads)


@settings(max_examples=5)
@given(seed=st.integers(0, 100))
def test_each_group_gets_only_its_own_loss_gradient(seed):
    batch = tiny_batch(seed)
    step = make_train_step(
        MODEL, {"ctc": optim.sgd(0.1), "aux": optim.sgd(0.3)}, two_losses, param_labels=LABELS
    )
    state = step.init_state(random.key(seed))
    new, metrics = step(state, batch)
    via_ctc = _expected(state.params, batch, "ctc", 0.1)
    via_aux = _expected(state.params, batch, "aux", 0.3)
    assert_trees_allclose(new.params["layer"]["2"], via_ctc["layer"]["2"], rtol=1e-5, atol=1e-7)
    assert_trees_allclose(new.params["layer"]["0"], via_aux["layer"]["0"], rtol=1e-5, atol=1e-7)
    assert set(metrics) >= {"loss/ctc", "loss/aux", "grad_norm/ctc", "grad_norm/aux"}


def test_groups_have_their_own_chains_and_state():
    step = make_train_step(
        MODEL,
        {"ctc": optim.adam(1e-2), "aux": optim.chain(optim.clip_by_global_norm(1e-3), optim.sgd(1.0))},
        two_losses,
        param_labels=LABELS,
    )
    state = step.init_state(random.key(0))
    # the adam group's state holds moments only for its own leaves
    mu = state.opt_state["ctc"][0].mu
    assert fctc.tree.size(mu) == fctc.tree.size(state.params["layer"]["2"])
    new, metrics = step(state, tiny_batch(0))
    moved = fctc.tree.global_norm(
        fctc.tree.map(lambda a, b: a - b, new.params["layer"]["0"], state.params["layer"]["0"])
    )
    assert float(moved) <= 1e-3 * (1 + 1e-5)  # the aux group's own clip applied


def test_group_whose_loss_is_absent_is_untouched():
    def sometimes(params, state, batch, key):
        losses, state = two_losses(params, state, batch, key)
        return {"ctc": losses["ctc"]}, state  # no aux loss in this batch

    step = make_train_step(
        MODEL, {"ctc": optim.adam(1e-2), "aux": optim.adam(1e-2)}, sometimes, param_labels=LABELS
    )
    state = step.init_state(random.key(0))
    new, metrics = step(state, tiny_batch(0))
    assert_trees_equal(new.params["layer"]["0"], state.params["layer"]["0"])
    assert_trees_equal(new.opt_state["aux"], state.opt_state["aux"])  # counters too
    assert int(new.opt_state["ctc"][0].count) == 1
    assert "loss/aux" not in metrics


@pytest.mark.parametrize("k", [2, 3])
def test_routing_with_accumulation_matches_full_batch(k):
    groups = {"ctc": optim.sgd(0.1), "aux": optim.sgd(0.2)}
    full = make_train_step(MODEL, groups, two_losses, param_labels=LABELS)
    acc = make_train_step(MODEL, groups, two_losses, param_labels=LABELS, accum_steps=k)
    state = full.init_state(random.key(1))
    batch = tiny_batch(4, ragged=False)
    assert_trees_allclose(acc(state, batch)[0].params, full(state, batch)[0].params, rtol=1e-5, atol=1e-7)


def test_routing_with_a_compiled_loss_equals_eager():
    """jit=True compiles the loss; the first of the two backward passes per micro-batch keeps
    the graph, which a compiled backward with donated buffers would refuse."""
    groups = {"ctc": optim.sgd(0.1), "aux": optim.sgd(0.2)}
    eager = make_train_step(MODEL, groups, two_losses, param_labels=LABELS, accum_steps=2)
    jitted = make_train_step(MODEL, groups, two_losses, param_labels=LABELS, accum_steps=2, jit=True)
    state = eager.init_state(random.key(1))
    for i in range(2):
        want, _ = eager(state, tiny_batch(i))
        got, _ = jitted(state, tiny_batch(i))
        assert_trees_allclose(got.params, want.params, rtol=1e-5, atol=1e-7)
        state = want


def test_labels_can_be_a_function_of_params():
    def labels(params):
        return fctc.tree.map_with_path(lambda k, _: "aux" if k.startswith("layer.0") else "ctc", params)

    step = make_train_step(MODEL, {"ctc": optim.sgd(0.1), "aux": optim.sgd(0.3)}, two_losses, param_labels=labels)
    ref = make_train_step(MODEL, {"ctc": optim.sgd(0.1), "aux": optim.sgd(0.3)}, two_losses, param_labels=LABELS)
    state = step.init_state(random.key(2))
    assert_trees_equal(step(state, tiny_batch(2))[0].params, ref(state, tiny_batch(2))[0].params)


def test_routing_errors_name_the_problem():
    with pytest.raises(ValueError, match="param_labels"):
        make_train_step(MODEL, {"ctc": optim.sgd(0.1)}, two_losses)
    bad = {"layer": {"0": {"weight": "aux", "bias": "oops"}, "2": {"weight": "ctc", "bias": "ctc"}}}
    step = make_train_step(MODEL, {"ctc": optim.sgd(0.1), "aux": optim.sgd(0.1)}, two_losses, param_labels=bad)
    with pytest.raises(ValueError, match=r"groups \['oops'\] that have no transformation"):
        step.init_state(random.key(0))
    only_ctc = make_train_step(MODEL, {"ctc": optim.sgd(0.1)}, two_losses,
                               param_labels=fctc.tree.map(lambda _: "ctc", LABELS))
    with pytest.raises(ValueError, match="loss 'aux' with no transformation"):
        only_ctc(only_ctc.init_state(random.key(0)), tiny_batch(0))
    with pytest.raises(ValueError, match="param_labels needs a dict"):
        make_train_step(MODEL, optim.sgd(0.1), two_losses, param_labels=LABELS)


def test_labels_resolve_prefixes_strings_and_functions():
    params = {"enc": {"w": torch.ones(2), "b": torch.ones(1)}, "dec": {"w": torch.ones(3)}}
    groups = {"a": optim.sgd(0.1), "b": optim.sgd(0.1)}
    want = {"enc": {"w": "a", "b": "a"}, "dec": {"w": "b"}}
    assert fctc.train.resolve_labels({"enc": "a", "dec": {"w": "b"}}, params, groups) == want
    assert fctc.train.Labels(lambda p: {"enc": "a", "dec": "b"}, groups).of(params) == want
    assert fctc.train.resolve_labels("a", params, groups) == fctc.tree.map(lambda _: "a", params)
    with pytest.raises(ValueError, match="no mask/label covers the parameter 'dec.w'"):
        fctc.train.resolve_labels({"enc": "a"}, params, groups)
