"""The stateless train step: learning, accumulation, purity, non-finite skipping, precision."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fctc
from fctc import optim, random
from fctc.testing import assert_trees_allclose, assert_trees_equal
from fctc.train import Batch, NonFiniteLossError, check_nonfinite, make_train_step
from tiny_task import BLANK, loss_fn, tiny_batch, tiny_model


def _clone(tree):
    return fctc.tree.map(lambda x: x.clone(), tree)


def test_loss_falls_on_synthetic_task_within_seconds():
    """120 steps of a tiny model (about a second of CPU; timing is benchmarks' business)."""
    model = tiny_model()
    step = make_train_step(model, optim.adam(1e-2), blank=BLANK)
    state = step.init_state(random.key(0))
    batches = [tiny_batch(i) for i in range(4)]
    first = None
    for i in range(120):
        state, metrics = step(state, batches[i % 4])
        first = float(metrics["loss"]) if first is None else first
    last = float(metrics["loss"])
    assert last < 0.3 * first, (first, last)
    assert int(state.step) == 120 and int(state.nonfinite_total) == 0


def test_default_loss_equals_explicit_loss_fn():
    model = tiny_model()
    batch = tiny_batch(1)
    a = make_train_step(model, optim.sgd(0.1), blank=BLANK)
    b = make_train_step(model, optim.sgd(0.1), loss_fn(model))
    state = a.init_state(random.key(3))
    sa, ma = a(state, batch)
    sb, mb = b(state, batch)
    assert_trees_equal(sa, sb)
    assert torch.equal(ma["loss"], mb["loss"])


def test_step_is_pure_and_deterministic():
    model = tiny_model(norm="batch")
    step = make_train_step(model, optim.adamw(1e-2), blank=BLANK)
    state = step.init_state(random.key(0))
    batch = tiny_batch(2)
    state_copy, batch_copy = _clone(state), _clone(batch)
    s1, m1 = step(state, batch)
    s2, m2 = step(state, batch)
    assert_trees_equal(state, state_copy)  # inputs untouched
    assert_trees_equal(batch, batch_copy)
    assert_trees_equal(s1, s2)  # same inputs, same outputs
    assert torch.equal(m1["loss"], m2["loss"])
    # running statistics moved, and came back in the new state
    rm = s1.model_state["layer"]["1"]["running_mean"]
    assert not torch.equal(rm, state.model_state["layer"]["1"]["running_mean"])


@settings(max_examples=8)
@given(k=st.integers(1, 4), batch=st.integers(4, 9), seed=st.integers(0, 1000))
def test_in_step_accumulation_equals_full_batch(k, batch, seed):
    """accum_steps=k splits the batch; the gradient (so the SGD update) equals the full batch's."""
    model = tiny_model()
    data = tiny_batch(seed, batch=batch)
    full = make_train_step(model, optim.sgd(0.5), blank=BLANK)
    acc = make_train_step(model, optim.sgd(0.5), blank=BLANK, accum_steps=k)
    state = full.init_state(random.key(seed))
    s_full, m_full = full(state, data)
    s_acc, m_acc = acc(state, data)
    assert_trees_allclose(s_acc.params, s_full.params, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m_acc["loss"], m_full["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m_acc["grad_norm"], m_full["grad_norm"], rtol=1e-4, atol=1e-6)


def test_batch_smaller_than_accum_steps_takes_one_micro_batch_per_utterance():
    model = tiny_model()
    data = tiny_batch(3, batch=3)
    full = make_train_step(model, optim.sgd(0.5), blank=BLANK)
    acc = make_train_step(model, optim.sgd(0.5), blank=BLANK, accum_steps=8)
    state = full.init_state(random.key(0))
    assert_trees_allclose(acc(state, data)[0].params, full(state, data)[0].params, rtol=1e-5, atol=1e-6)


def test_multisteps_across_calls_equals_one_large_batch():
    """fctc.optim.MultiSteps over k calls of B/k utterances == one call on all B."""
    model = tiny_model()
    k, size = 4, 8
    data = tiny_batch(5, batch=size * k, ragged=False)
    pieces = [fctc.tree.map(lambda x, i=i: x[i * size : (i + 1) * size], data) for i in range(k)]
    big = make_train_step(model, optim.adam(1e-2), blank=BLANK)
    small = make_train_step(model, optim.MultiSteps(optim.adam(1e-2), k).gradient_transformation(), blank=BLANK)
    s_big = big.init_state(random.key(1))
    s_small = small.init_state(random.key(1))
    for _ in range(2):
        s_big, _ = big(s_big, data)
        for p in pieces:
            before = _clone(s_small.params)
            s_small, _ = small(s_small, p)
        assert not fctc.tree.leaves(fctc.tree.map(torch.equal, before, s_small.params))[0]
    assert_trees_allclose(s_small.params, s_big.params, rtol=1e-4, atol=1e-6)
    assert int(s_small.opt_state.gradient_step) == 2 and int(s_small.opt_state.mini_step) == 0


def _nan_batch(seed):
    b = tiny_batch(seed)
    audio = b.audio.clone()
    audio[0, 0, 0] = float("nan")
    return Batch(audio, b.audio_lengths, b.targets, b.target_lengths)


def test_nonfinite_batch_changes_nothing_and_is_counted():
    model = tiny_model(norm="batch")
    step = make_train_step(model, optim.adam(1e-2), blank=BLANK)
    state = step.init_state(random.key(0))
    state, _ = step(state, tiny_batch(0))
    bad, metrics = step(state, _nan_batch(1))
    assert not bool(metrics["finite"])
    assert_trees_equal(bad.params, state.params)
    assert_trees_equal(bad.opt_state, state.opt_state)
    assert_trees_equal(bad.model_state, state.model_state)  # running stats untouched too
    assert int(bad.nonfinite_count) == 1 and int(bad.nonfinite_total) == 1
    assert int(bad.step) == int(state.step) + 1
    bad2, _ = step(bad, _nan_batch(2))
    assert int(bad2.nonfinite_count) == 2
    good, m = step(bad2, tiny_batch(3))
    assert bool(m["finite"]) and int(good.nonfinite_count) == 0 and int(good.nonfinite_total) == 2


def test_check_nonfinite_stops_after_n_in_a_row():
    model = tiny_model()
    step = make_train_step(model, optim.sgd(0.1), blank=BLANK)
    state = step.init_state(random.key(0))
    for i in range(3):
        state, _ = step(state, _nan_batch(i))
        check_nonfinite(state, max_consecutive=4)
    state, _ = step(state, _nan_batch(9))
    with pytest.raises(NonFiniteLossError, match="4 batches in a row"):
        check_nonfinite(state, max_consecutive=4)


def test_bf16_autocast_trains():
    model = tiny_model()
    step = make_train_step(model, optim.adam(1e-2), blank=BLANK, precision="bf16")
    state = step.init_state(random.key(0))
    losses = []
    for i in range(30):
        state, m = step(state, tiny_batch(i % 3))
        losses.append(float(m["loss"]))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert fctc.tree.leaves(state.params)[0].dtype == torch.float32  # master weights stay fp32


def test_fp16_loss_scale_backs_off_and_skips_on_overflow():
    model = tiny_model()
    ls = optim.dynamic_loss_scale(init_scale=2.0**10, growth_interval=2)
    step = make_train_step(model, optim.sgd(0.1), blank=BLANK, precision="fp16", loss_scale=ls)
    state = step.init_state(random.key(0))
    assert float(state.loss_scale.scale) == 2.0**10
    s1, m1 = step(state, tiny_batch(0))
    s2, m2 = step(s1, tiny_batch(1))
    assert bool(m1["finite"]) and bool(m2["finite"])
    assert float(s2.loss_scale.scale) == 2.0**11  # grew after growth_interval finite steps
    # a scale so large that the scaled fp16 gradients overflow: update skipped, scale halves
    huge = s2._replace(loss_scale=s2.loss_scale._replace(scale=torch.tensor(2.0**60)))
    s3, m3 = step(huge, tiny_batch(2))
    assert not bool(m3["finite"])
    assert_trees_equal(s3.params, s2.params)
    assert float(s3.loss_scale.scale) == 2.0**59
    # gradients are unscaled before the chain: an fp16 step matches fp32 closely
    f32 = make_train_step(model, optim.sgd(0.1), blank=BLANK)
    s_ref, _ = f32(f32.init_state(random.key(0)), tiny_batch(0))
    assert_trees_allclose(s1.params, s_ref.params, rtol=2e-2, atol=2e-3)


def test_fp16_accumulation_is_the_gradscaler_loop_bit_for_bit():
    """accum_steps=2 in fp16: the scaled losses' gradients summed, unscaled once, stepped: an
    imperative loop with GradScaler (scale(loss).backward() per micro-batch, unscale_, step)."""
    model = tiny_model(norm="batch")
    batch = tiny_batch(0)
    ls = optim.dynamic_loss_scale(init_scale=3.0 * 2**10)  # not a power of 2: unscaling rounds
    step = make_train_step(
        model, optim.sgd(1.0), blank=BLANK, precision="fp16", accum_steps=2, loss_scale=ls
    )
    state = step.init_state(random.key(0))
    new, metrics = step(state, batch)
    assert bool(metrics["finite"])

    params = fctc.tree.map(lambda p: p.detach().clone().requires_grad_(True), state.params)
    opt = torch.optim.SGD(fctc.tree.leaves(params), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=float(state.loss_scale.scale))
    model_state = state.model_state
    for half in (slice(0, 4), slice(4, 8)):
        mb = Batch(*(t[half] for t in batch))
        with torch.autocast("cpu", dtype=torch.float16):
            loss, model_state = loss_fn(model)(params, model_state, mb, None)
        scaler.scale(loss.float() * 0.5).backward()
    scaler.unscale_(opt)
    opt.step()
    assert_trees_equal(fctc.tree.map(torch.Tensor.detach, params), new.params)


def test_fp16_state_without_loss_scale_is_a_clear_error():
    model = tiny_model()
    step = make_train_step(model, optim.sgd(0.1), blank=BLANK, precision="fp16")
    plain = make_train_step(model, optim.sgd(0.1), blank=BLANK).init_state(random.key(0))
    with pytest.raises(ValueError, match="loss-scale state"):
        step(plain, tiny_batch(0))


def test_bad_arguments_are_named():
    model = tiny_model()
    with pytest.raises(ValueError, match="precision"):
        make_train_step(model, optim.sgd(0.1), blank=BLANK, precision="fp8")
    with pytest.raises(ValueError, match="accum_steps"):
        make_train_step(model, optim.sgd(0.1), blank=BLANK, accum_steps=0)
    with pytest.raises(ValueError, match="blank"):
        make_train_step(model, optim.sgd(0.1))
    step = make_train_step(model, optim.sgd(0.1), blank=BLANK, accum_steps=9)
    with pytest.raises(ValueError, match="batch is empty"):
        step(step.init_state(random.key(0)), fctc.tree.map(lambda x: x[:0], tiny_batch(0)))
    with pytest.raises(TypeError, match="TrainState"):
        step({"params": {}}, tiny_batch(0))


def test_step_key_depends_on_step_only():
    """Randomness of step n comes from fold_in(key, n): new per step, replayed exactly."""
    model = tiny_model()
    seen = []

    def fn(params, state, batch, key):
        seen.append(key.clone())
        return loss_fn(model)(params, state, batch, key)

    step = make_train_step(model, optim.sgd(0.1), fn)
    state = step.init_state(random.key(0))
    s1, _ = step(state, tiny_batch(0))
    step(s1, tiny_batch(0))
    step(state, tiny_batch(0))
    assert not torch.equal(seen[0], seen[1]) and torch.equal(seen[0], seen[2])


def test_a_loss_that_draws_nothing_gets_no_key_and_the_same_update(monkeypatch):
    """A deterministic model's loss (fctc.nn.deterministic) gets key=None: no key is derived
    per step or per micro-batch, and the step is the one a keyed loss function makes."""
    model = tiny_model()
    assert not fctc.nn.uses_key(model) and not fctc.nn.uses_key(fctc.train.ctc_loss_fn(model, BLANK))
    seen = []

    def keyed(params, state, batch, key):  # unmarked: assumed to draw
        seen.append(key)
        return loss_fn(model)(params, state, batch, key)

    for accum in (1, 3):
        plain = make_train_step(model, optim.sgd(0.1), keyed, accum_steps=accum)
        quiet = make_train_step(model, optim.sgd(0.1), blank=BLANK, accum_steps=accum)
        state = plain.init_state(random.key(0))
        want, _ = plain(state, tiny_batch(0))
        assert len(seen) == accum and all(random.is_key(k) for k in seen)
        folds = []
        real = random.fold_in
        monkeypatch.setattr(random, "fold_in", lambda k, d: folds.append(d) or real(k, d))
        got, _ = quiet(state, tiny_batch(0))
        monkeypatch.setattr(random, "fold_in", real)
        assert folds == []
        assert_trees_equal(got, want)
        seen.clear()
    def quiet_fn(params, state, batch, key):
        seen.append(key)
        return loss_fn(model)(params, state, batch, key)

    marked = fctc.nn.deterministic(quiet_fn)
    make_train_step(model, optim.sgd(0.1), marked, accum_steps=2)(state, tiny_batch(0))
    assert seen == [None, None]


def test_jit_step_equals_eager_and_never_recompiles():
    """The whole step compiled once: equal to eager, no recompiles across steps or as the
    schedule, the counters and the non-finite count change."""
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny_model()
    tx = optim.chain(
        optim.clip_by_global_norm(1.0),
        optim.adamw(optim.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20)),
    )
    eager = make_train_step(model, tx, blank=BLANK)
    jitted = make_train_step(model, tx, blank=BLANK, jit=True)
    s_e = s_j = eager.init_state(random.key(0))
    batches = [tiny_batch(i, ragged=False) for i in range(3)] + [_nan_batch(7)]
    batches = [Batch(b.audio[:, :, :15], b.audio_lengths.clamp(max=15), b.targets, b.target_lengths) for b in batches]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for b in batches + batches[:2]:
            s_e, m_e = eager(s_e, b)
            s_j, m_j = jitted(s_j, b)
            torch.testing.assert_close(m_j["loss"], m_e["loss"], rtol=1e-4, atol=1e-5, equal_nan=True)
    assert_trees_allclose(s_j.params, s_e.params, rtol=1e-4, atol=1e-5)
    assert int(s_j.nonfinite_total) == 1 and int(s_j.step) == 6
