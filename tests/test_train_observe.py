"""Metric- and epoch-driven schedules through make_train_step: step.observe feeds the loop's
validation metric and epoch to the optimiser; both live in the train state and resume exactly."""

from __future__ import annotations

import pytest
import torch

import fctc
from fctc import optim, random
from fctc.testing import assert_trees_allclose, assert_trees_equal
from fctc.train import make_train_step
from tiny_task import BLANK, tiny_batch, tiny_model

MODEL = tiny_model()
# Scripted validation losses, one per epoch: with patience=2 the 2nd and 3rd values after the
# best (0.85, 0.9) halve the learning rate, and so do 0.75, 0.76 after the new best 0.7.
VALS = [1.0, 0.8, 0.85, 0.9, 0.7, 0.75, 0.76, 0.6]
SCALES = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]  # the plateau's scale after each VALS[e]
STEPS_PER_EPOCH = 3
LR = 0.1


def _plateau_step():
    tx = optim.chain(
        optim.inject_hyperparams(optim.sgd)(learning_rate=LR),
        optim.reduce_on_plateau(factor=0.5, patience=2),
    )
    return make_train_step(MODEL, tx, blank=BLANK)


def _epoch(step, state, e, after_step=None):
    """One epoch: report the epoch, train STEPS_PER_EPOCH batches, report the validation value."""
    state = step.observe(state, epoch=e)
    for i in range(STEPS_PER_EPOCH):
        state, _ = step(state, tiny_batch(100 * e + i))
        if after_step is not None:
            after_step(e, i, state)
    return step.observe(state, VALS[e])


def test_plateau_halves_the_learning_rate_after_patience_validations():
    step = _plateau_step()
    state = step.init_state(random.key(0))
    plain = {}
    for e in range(len(VALS)):
        # the scale of every update of epoch e is the one after VALS[e - 1]
        want = 1.0 if e == 0 else SCALES[e - 1]
        first = state
        state = _epoch(step, state, e)
        assert optim.plateau_scale(state.opt_state).item() == want
        assert int(state.observed.value_count) == e + 1
        # the first update of the epoch equals plain SGD at LR * scale from the same state
        sgd = make_train_step(MODEL, optim.sgd(LR * want), blank=BLANK)
        start = step.observe(first, epoch=e)
        got, _ = step(start, tiny_batch(100 * e))
        ref, _ = sgd(sgd.init_state(random.key(0), params=start.params, model_state=start.model_state),
                     tiny_batch(100 * e))
        assert_trees_allclose(got.params, ref.params, rtol=1e-6, atol=1e-7)
        plain[e] = want
    assert list(plain.values()) == [1.0] + SCALES[:-1]
    # the last observation (0.6, an improvement) is taken in by the next update
    state, _ = step(state, tiny_batch(999))
    assert optim.plateau_scale(state.opt_state).item() == SCALES[-1]
    assert state.opt_state[1].best_value.item() == pytest.approx(0.6)


@pytest.mark.parametrize("stop", [(2, STEPS_PER_EPOCH), (3, 1)])
def test_plateau_resumes_exactly_from_a_checkpoint_taken_in_between(tmp_path, stop):
    """(2, 3): after the validation of epoch 2 (one validation without improvement, its value
    not yet taken in by an update); (3, 1): in the middle of epoch 3, the halving pending."""
    step = _plateau_step()
    straight = step.init_state(random.key(1))
    saved = {}

    def snapshot(e, i, state):
        if (e, i + 1) == stop:
            saved["state"] = state

    for e in range(6):
        straight = _epoch(step, straight, e, snapshot)
        if (e, STEPS_PER_EPOCH) == stop:
            saved["state"] = straight  # after the validation of epoch e
    path = fctc.checkpoint.save_train_state(tmp_path / "s.safetensors", saved["state"], {"stop": list(stop)})
    resumed, _ = fctc.checkpoint.load_train_state(path, step.init_state(random.key(1)))
    assert_trees_equal(resumed, saved["state"])
    e, done = stop
    if done < STEPS_PER_EPOCH:  # finish the interrupted epoch
        for i in range(done, STEPS_PER_EPOCH):
            resumed, _ = step(resumed, tiny_batch(100 * e + i))
        resumed = step.observe(resumed, VALS[e])
    for e in range(e + 1, 6):
        resumed = _epoch(step, resumed, e)
    assert_trees_equal(resumed, straight)
    assert optim.plateau_scale(resumed.opt_state).item() == 0.5


def _nan_batch(seed):
    b = tiny_batch(seed)
    return b._replace(audio=torch.full_like(b.audio, float("nan")))


def test_epoch_interval_schedule_follows_the_epoch_not_the_update_count(tmp_path):
    """lr = 0.1 * 0.5**epoch, with 3, 1 and 4 batches per epoch and a skipped (non-finite)
    batch: every applied update uses its epoch's value; the epoch resumes from a checkpoint."""
    schedule = optim.exponential_decay(LR, transition_steps=1, decay_rate=0.5)
    tx = optim.inject_hyperparams(optim.sgd, schedule_input="epoch")(learning_rate=schedule)
    step = make_train_step(MODEL, tx, blank=BLANK)
    state = step.init_state(random.key(2))
    plan = {0: [tiny_batch(0), tiny_batch(1), tiny_batch(2)], 1: [_nan_batch(3), tiny_batch(4)],
            2: [tiny_batch(5), tiny_batch(6), tiny_batch(7), tiny_batch(8)]}
    lrs = []
    for e, batches in plan.items():
        state = step.observe(state, epoch=e)
        for i, batch in enumerate(batches):
            before = state
            state, metrics = step(state, batch)
            if bool(metrics["finite"]):
                lrs.append((e, optim.find_hyperparams(state.opt_state)["learning_rate"].item()))
                sgd = make_train_step(MODEL, optim.sgd(LR * 0.5**e), blank=BLANK)
                ref, _ = sgd(sgd.init_state(random.key(0), params=before.params,
                                            model_state=before.model_state), batch)
                assert_trees_allclose(state.params, ref.params, rtol=1e-6, atol=1e-7)
            if (e, i) == (2, 1):
                path = fctc.checkpoint.save_train_state(tmp_path / "mid.safetensors", state)
    assert [lr for _, lr in lrs] == pytest.approx([LR * 0.5**e for e, _ in lrs], rel=1e-6)
    assert [e for e, _ in lrs] == [0, 0, 0, 1, 2, 2, 2, 2] and int(state.nonfinite_total) == 1
    resumed, _ = fctc.checkpoint.load_train_state(path, step.init_state(random.key(2)))
    assert int(resumed.observed.epoch) == 2
    for batch in plan[2][2:]:
        resumed, _ = step(resumed, batch)
    assert_trees_equal(resumed, state)


def test_observe_is_pure_and_checks_its_arguments():
    step = _plateau_step()
    state = step.init_state(random.key(0))
    assert int(state.observed.epoch) == 0 and int(state.observed.value_count) == 0
    assert state.observed.value.item() == float("inf")
    new = step.observe(state, torch.tensor([0.5]), epoch=3)
    assert new.observed.value.item() == 0.5 and int(new.observed.value_count) == 1
    assert int(new.observed.epoch) == 3 and new.observed.value.dtype == torch.float32
    assert int(state.observed.value_count) == 0  # the old state is unchanged
    assert_trees_equal(new.params, state.params)
    assert fctc.train.observe(new, epoch=4).observed.value_count.item() == 1
    with pytest.raises(ValueError, match="single number"):
        step.observe(state, torch.ones(2))
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        step.observe(state, epoch=-1)
    with pytest.raises(ValueError, match="no observations"):
        step.observe(state._replace(observed=None), 1.0)


def _loss_with_stats(params, state, batch, key):
    """Named losses (one only logged) and ESPnet3-style statistics with a weight."""
    (logits, lengths), state = MODEL.apply(params, state, batch.audio, batch.audio_lengths, train=True)
    loss = fctc.losses.ctc_loss(logits, lengths, batch.targets, batch.target_lengths, BLANK)
    losses = {"ctc": loss, "aux": logits.pow(2).mean()}
    return fctc.train.LossOutput(losses, {"logit_mean": logits.mean()}, batch.target_lengths.sum()), state


def test_observations_and_stats_do_not_recompile_a_jitted_step():
    """Compiled once: observations changing, statistics, logged-only losses and micro-batches;
    equal to the eager step."""
    tx = optim.chain(optim.adamw(1e-2), optim.reduce_on_plateau(factor=0.5, patience=1))
    kw = dict(log_only=["aux"], accum_steps=2)
    eager = make_train_step(MODEL, tx, _loss_with_stats, **kw)
    step = make_train_step(MODEL, tx, _loss_with_stats, jit=True, **kw)
    state = s_e = step.init_state(random.key(3))
    batch = tiny_batch(0, ragged=False)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i, v in enumerate([1.0, 1.0, 1.0, 2.0]):
            state, m = step(state, batch)
            s_e, m_e = eager(s_e, batch)
            assert set(m) == set(m_e) >= {"loss/aux", "loss/ctc", "stats/logit_mean", "weight"}
            for k in m_e:
                torch.testing.assert_close(m[k], m_e[k], rtol=1e-4, atol=1e-5)
            state = step.observe(state, v, epoch=i)
            s_e = eager.observe(s_e, v, epoch=i)
    assert optim.plateau_scale(state.opt_state).item() == 0.25
    assert_trees_allclose(state.params, s_e.params, rtol=1e-4, atol=1e-5)

