"""make_train_step(donate=True): the same trajectory as the pure step, bit for bit, with the
incoming state's buffers reused and non-finite batches still skipped with the old values."""

from __future__ import annotations

import pytest
import torch

import fctc
from fctc import optim, random
from fctc.testing import assert_trees_equal
from fctc.train import Batch, make_train_step
from test_train_routing import LABELS, MODEL, two_losses
from tiny_task import BLANK, loss_fn, tiny_batch, tiny_model


def _nan_batch(seed):
    b = tiny_batch(seed)
    audio = b.audio.clone()
    audio[0, 0, 0] = float("nan")
    return Batch(audio, b.audio_lengths, b.targets, b.target_lengths)


BATCHES = [tiny_batch(0), tiny_batch(1), _nan_batch(2), tiny_batch(3), tiny_batch(4)]

TXS = {
    "clip+adamw": lambda: optim.chain(optim.clip_by_global_norm(0.5), optim.adamw(1e-2)),
    "sgd(momentum)": lambda: optim.sgd(0.1, momentum=0.9),
    "MultiSteps(adam)": lambda: optim.MultiSteps(optim.adam(1e-2), 2),
}


def _run(step, batches):
    state = step.init_state(random.key(0))
    history = []
    for b in batches:
        state, metrics = step(state, b)
        history.append((fctc.tree.map(torch.clone, state), metrics))
    return history


@pytest.mark.parametrize("threads", [1, 2])  # 1: fused CPU kernel; 2: these small leaves go foreach
@pytest.mark.parametrize("name", sorted(TXS))
def test_donated_steps_equal_pure_steps_bit_for_bit(name, threads):
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = tiny_model(norm="batch")
        pure = _run(make_train_step(model, TXS[name](), blank=BLANK), BATCHES)
        donated = _run(make_train_step(model, TXS[name](), blank=BLANK, donate=True), BATCHES)
    finally:
        torch.set_num_threads(n)
    for (s_p, m_p), (s_d, m_d) in zip(pure, donated):
        assert_trees_equal(s_d, s_p)
        assert bool(m_p["finite"]) == bool(m_d["finite"])
    assert int(donated[-1][0].nonfinite_total) == 1


def test_a_finite_step_reuses_the_incoming_buffers(one_thread):
    step = make_train_step(tiny_model(), TXS["clip+adamw"](), blank=BLANK, donate=True)
    state = step.init_state(random.key(0))
    adam = lambda s: s.opt_state[1][0]  # noqa: E731
    ptrs = [x.data_ptr() for x in fctc.tree.leaves((state.params, adam(state).mu, adam(state).nu))]
    new, metrics = step(state, tiny_batch(0))
    assert bool(metrics["finite"])
    assert [x.data_ptr() for x in fctc.tree.leaves((new.params, adam(new).mu, adam(new).nu))] == ptrs


@pytest.mark.parametrize("name", sorted(TXS))
def test_a_non_finite_batch_leaves_the_donated_state_intact(name, one_thread):
    step = make_train_step(tiny_model(norm="batch"), TXS[name](), blank=BLANK, donate=True)
    state, _ = step(step.init_state(random.key(0)), tiny_batch(0))
    before = fctc.tree.map(torch.clone, state)
    bad, metrics = step(state, _nan_batch(1))
    assert not bool(metrics["finite"])
    assert_trees_equal(state, before)  # nothing was written into the donated buffers
    assert_trees_equal(bad.params, before.params)
    assert_trees_equal(bad.opt_state, before.opt_state)


def test_fp16_overflow_is_skipped_with_donation():
    ls = optim.dynamic_loss_scale(init_scale=2.0**10, growth_interval=2)
    kw = dict(blank=BLANK, precision="fp16", loss_scale=ls)
    model = tiny_model()
    pure = make_train_step(model, optim.adam(1e-2), **kw)
    donated = make_train_step(model, optim.adam(1e-2), donate=True, **kw)
    s_p, _ = pure(pure.init_state(random.key(0)), tiny_batch(0))
    s_d, _ = donated(donated.init_state(random.key(0)), tiny_batch(0))
    assert_trees_equal(s_d, s_p)
    huge = lambda s: s._replace(loss_scale=s.loss_scale._replace(scale=torch.tensor(2.0**60)))  # noqa: E731
    kept = fctc.tree.map(torch.clone, s_d)
    s_p, m_p = pure(huge(s_p), tiny_batch(1))
    s_d, m_d = donated(huge(s_d), tiny_batch(1))
    assert not bool(m_d["finite"]) and not bool(m_p["finite"])
    assert_trees_equal(s_d, s_p)
    assert_trees_equal(s_d.params, kept.params)


def test_routed_groups_donate_each_their_own_buffers():
    txs = lambda: {"ctc": optim.adam(1e-2), "aux": optim.sgd(0.3)}  # noqa: E731
    pure = _run(make_train_step(MODEL, txs(), two_losses, param_labels=LABELS), BATCHES[:2])
    donated = _run(make_train_step(MODEL, txs(), two_losses, param_labels=LABELS, donate=True), BATCHES[:2])
    for (s_p, _), (s_d, _) in zip(pure, donated):
        assert_trees_equal(s_d, s_p)


def test_jit_true_donates_its_eager_update_bit_for_bit():
    """jit=True compiles the loss and its gradient; the update stays eager and donates."""
    model = tiny_model()
    pure = _run(make_train_step(model, optim.adam(1e-2), blank=BLANK, jit=True), BATCHES[:2])
    step = make_train_step(model, optim.adam(1e-2), blank=BLANK, jit=True, donate=True)
    state = step.init_state(random.key(0))
    weights = list(fctc.tree.leaves(state.params))
    donated = _run(step, BATCHES[:2])
    for (s_p, m_p), (s_d, m_d) in zip(pure, donated):
        assert_trees_equal(s_d, s_p)
        assert_trees_equal(m_d, m_p)
    new, _ = step(state, tiny_batch(0))
    assert any(a is b for a, b in zip(fctc.tree.leaves(new.params), weights))  # written in place
    # The whole compiled step plans its own buffers: donation is off there.
    assert not make_train_step(model, optim.adam(1e-2), blank=BLANK, jit="step", donate=True).donate


def test_a_chain_that_turns_finite_gradients_non_finite_is_skipped_not_fatal(one_thread):
    """What fctc.distributed.all_reduce_gradients does when another rank's batch was bad: this
    rank's own gradients are finite, the chain's are not. Nothing is donated; the step skips."""
    poison = optim.stateless(lambda u, p: fctc.tree.map(lambda x: x * float("nan"), u))
    step = make_train_step(tiny_model(), optim.chain(poison, optim.adamw(1e-2)), blank=BLANK, donate=True)
    state = step.init_state(random.key(0))
    before = fctc.tree.map(torch.clone, state)
    new, metrics = step(state, tiny_batch(0))
    assert not bool(metrics["finite"])
    assert_trees_equal(state, before)
    assert_trees_equal(new.params, before.params)
    assert int(new.nonfinite_total) == 1


def test_an_overflow_after_donation_is_a_clear_error(one_thread):
    """Finite gradients whose update overflows a parameter: the donated parameters are already
    written, so the step cannot pretend to skip; it says so."""
    model = tiny_model()
    base = loss_fn(model)

    def with_extra(params, state, batch, key):  # one more parameter, with a zero gradient
        loss, state = base({"layer": params["layer"]}, state, batch, key)
        return loss + 0.0 * params["extra"][0], state

    huge = optim.stateless(lambda u, p: fctc.tree.map(lambda x: torch.full_like(x, 3e38), u))
    step = make_train_step(model, huge, with_extra, donate=True)
    params, model_state = model.init(random.key(0))
    params = {**params, "extra": torch.tensor([3e38])}
    state = step.init_state(random.key(0), params=params, model_state=model_state)
    with pytest.raises(FloatingPointError, match="donate=False"):
        step(state, tiny_batch(0))
