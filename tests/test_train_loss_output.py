"""The loss-function contract: ESPnet3's (loss, stats, weight), the routing rules and their
errors, losses that are only logged, weighted statistics, and the same stats in evaluation."""

from __future__ import annotations

import pytest
import torch

import fctc
from fctc import optim, random
from fctc.testing import assert_trees_allclose, assert_trees_equal
from fctc.text import Vocabulary
from fctc.train import LossOutput, WeightedMean, ctc_loss_fn, make_eval_step, make_train_step
from tiny_task import BLANK, tiny_batch, tiny_model

MODEL = tiny_model()
VOCAB = Vocabulary(["a", "b", "c", "d", "e"])


def _ctc(params, state, batch, key, train=True):
    (logits, lengths), state = MODEL.apply(params, state, batch.audio, batch.audio_lengths, train=train)
    loss = fctc.losses.ctc_loss(logits, lengths, batch.targets, batch.target_lengths, BLANK,
                                check_feasible=train)
    return loss, logits, state


def espnet_style(weight=None, as_tuple=True):
    """A loss function returning ESPnet3's (loss, stats, weight)."""

    def fn(params, state, batch, key):
        loss, logits, state = _ctc(params, state, batch, key)
        stats = {"frames": batch.audio_lengths.float().mean(), "logit_mean": logits.mean()}
        w = weight(batch) if callable(weight) else weight
        out = (loss, stats, w) if as_tuple else LossOutput(loss, stats, w)
        return out, state

    return fn


def plain(params, state, batch, key):
    loss, _, state = _ctc(params, state, batch, key)
    return loss, state


def test_stats_are_logged_and_do_not_change_the_update():
    batch = tiny_batch(0)
    base = make_train_step(MODEL, optim.adam(1e-2), plain)
    state = base.init_state(random.key(0))
    want, m0 = base(state, batch)
    for fn in (espnet_style(), espnet_style(as_tuple=False), espnet_style(weight=3.0)):
        got, m = make_train_step(MODEL, optim.adam(1e-2), fn)(state, batch)
        assert_trees_equal(got.params, want.params)
        assert torch.equal(m["loss"], m0["loss"])
        torch.testing.assert_close(m["stats/frames"], batch.audio_lengths.float().mean())
        assert not m["stats/logit_mean"].requires_grad
    assert float(make_train_step(MODEL, optim.adam(1e-2), espnet_style())(state, batch)[1]["weight"]) == 8.0
    assert float(m["weight"]) == 3.0
    assert "weight" not in m0 and not any(k.startswith("stats/") for k in m0)


def test_weights_average_the_stats_over_micro_batches():
    """accum_steps=3: stats/<k> = sum(w_i * s_i) / sum(w_i) with the weights the loss returned;
    weight = sum(w_i). The default weight is the micro-batch's number of utterances."""
    batch = tiny_batch(1, batch=7)
    w = lambda b: b.target_lengths.sum()  # noqa: E731  (tokens, as a per-token statistic would)
    step = make_train_step(MODEL, optim.sgd(0.1), espnet_style(weight=w), accum_steps=3)
    state = step.init_state(random.key(1))
    _, m = step(state, batch)
    parts = [(0, 2), (2, 5), (5, 7)]  # round(i * 7 / 3)
    frames = [batch.audio_lengths[a:b].float().mean() for a, b in parts]
    weights = [batch.target_lengths[a:b].sum().float() for a, b in parts]
    want = sum(wi * fi for wi, fi in zip(weights, frames)) / sum(weights)
    torch.testing.assert_close(m["stats/frames"], want)
    assert float(m["weight"]) == float(sum(weights))
    default = make_train_step(MODEL, optim.sgd(0.1), espnet_style(), accum_steps=3)
    _, m = default(state, batch)
    sizes = [b - a for a, b in parts]
    want = sum(n * f for n, f in zip(sizes, frames)) / 7
    torch.testing.assert_close(m["stats/frames"], want)
    assert float(m["weight"]) == 7.0


def test_weighted_mean_over_batches_and_workers():
    """The one averaging rule, over a window of steps (a skipped step left out) and over
    data-parallel ranks (a reduce that takes the mean of each rank's sums, as mean_across)."""
    ranks = [WeightedMean(), WeightedMean()]
    data = [[(1.0, 2.0, True), (3.0, 1.0, True)], [(5.0, 4.0, True), (float("nan"), 9.0, False)]]
    for acc, rows in zip(ranks, data):
        for value, weight, finite in rows:
            acc.add_metrics({"stats/x": torch.tensor(value), "weight": torch.tensor(weight),
                             "finite": torch.tensor(finite), "loss": torch.tensor(0.0)})
    assert ranks[0].means()["x"].item() == pytest.approx((1 * 2 + 3 * 1) / 3)
    assert ranks[1].means()["x"].item() == 5.0 and ranks[1].total_weight().item() == 4.0

    def mean_over_ranks(tree):
        trees = [(r.sums, r.weights) for r in ranks]
        return fctc.tree.map(lambda *xs: sum(xs) / len(xs), *trees)

    overall = ranks[0].means(reduce=mean_over_ranks)["x"].item()
    assert overall == pytest.approx((1 * 2 + 3 * 1 + 5 * 4) / (2 + 1 + 4))
    empty = WeightedMean()
    assert not empty and empty.means() == {} and empty.total_weight() is None
    with pytest.raises(ValueError, match="single numbers"):
        empty.add({"x": torch.ones(2)}, 1.0)


def two_losses(params, state, batch, key):
    loss, logits, state = _ctc(params, state, batch, key)
    return {"ctc": loss, "aux": logits.pow(2).mean()}, state


LABELS = {"layer": {"0": {"weight": "aux", "bias": "aux"}, "2": {"weight": "ctc", "bias": "ctc"}}}


def test_routing_rule_errors_name_the_rule():
    batch = tiny_batch(0)
    single = make_train_step(MODEL, optim.sgd(0.1), two_losses)
    with pytest.raises(ValueError, match="ESPnet3's rule: returning OptimizationStep with the single "
                                         "optimizer is forbidden"):
        single(single.init_state(random.key(0)), batch)
    routed = make_train_step(MODEL, {"ctc": optim.sgd(0.1), "aux": optim.sgd(0.1)}, plain, param_labels=LABELS)
    with pytest.raises(ValueError, match="ESPnet3's rule: with multiple optimizers the loss must say"):
        routed(routed.init_state(random.key(0)), batch)
    only_ctc = make_train_step(MODEL, {"ctc": optim.sgd(0.1)}, two_losses,
                               param_labels=fctc.tree.map(lambda _: "ctc", LABELS))
    with pytest.raises(ValueError, match=r"loss 'aux' with no transformation.*ESPnet3's rule: every "
                                         r"OptimizationStep names one of the configured optimizers.*log_only"):
        only_ctc(only_ctc.init_state(random.key(0)), batch)
    three = make_train_step(MODEL, optim.sgd(0.1), lambda *a: ({**two_losses(*a)[0], "x": torch.tensor(1.0)}, a[1]),
                            log_only=["x"])
    with pytest.raises(ValueError, match=r"optimises one loss, but loss_fn returned \['aux', 'ctc'\]"):
        three(three.init_state(random.key(0)), batch)
    logged_only = make_train_step(MODEL, {"ctc": optim.sgd(0.1)}, lambda *a: ({"aux": two_losses(*a)[0]["aux"]}, a[1]),
                                  param_labels=fctc.tree.map(lambda _: "ctc", LABELS), log_only=["aux"])
    with pytest.raises(ValueError, match=r"returned only the log_only losses \['aux'\].*groups \['ctc'\]"):
        logged_only(logged_only.init_state(random.key(0)), batch)
    with pytest.raises(ValueError, match="both transformation groups and log_only"):
        make_train_step(MODEL, {"ctc": optim.sgd(0.1)}, two_losses, param_labels=LABELS, log_only=["ctc"])
    bad = make_train_step(MODEL, optim.sgd(0.1), lambda p, s, b, k: ((plain(p, s, b, k)[0], {}), s))
    with pytest.raises(TypeError, match="tuple of 2"):
        bad(bad.init_state(random.key(0)), batch)


def test_losses_only_logged_are_logged_not_optimised():
    """speechain's losses dict: log_only names are reported as loss/<name>, never optimised."""
    batch = tiny_batch(2)
    ref = make_train_step(MODEL, optim.sgd(0.1), plain)
    state = ref.init_state(random.key(2))
    want, m_ref = ref(state, batch)
    single = make_train_step(MODEL, optim.sgd(0.1), two_losses, log_only=["aux"])
    got, m = single(state, batch)
    assert_trees_equal(got.params, want.params)
    assert torch.equal(m["loss"], m_ref["loss"]) and torch.equal(m["loss/ctc"], m_ref["loss"])
    _, logits, _ = _ctc(state.params, state.model_state, batch, None)
    torch.testing.assert_close(m["loss/aux"], logits.pow(2).mean())
    # routed: the ctc group trains on ctc, "aux" (no group) is logged only
    routed = make_train_step(MODEL, {"ctc": optim.sgd(0.1)}, two_losses,
                             param_labels=fctc.tree.map(lambda _: "ctc", LABELS), log_only=["aux"])
    got, m = routed(routed.init_state(random.key(2)), batch)
    assert_trees_allclose(got.params, want.params, rtol=1e-6, atol=1e-7)
    assert set(m) >= {"loss", "loss/ctc", "loss/aux", "grad_norm/ctc"} and "grad_norm/aux" not in m
    torch.testing.assert_close(m["loss"], m_ref["loss"])


def _nan(batch):
    return batch._replace(audio=torch.full_like(batch.audio, float("nan")))


def test_discard_window_through_the_step():
    """skip_nonfinite=False lets speechain's discard_window see the bad batch: its window is
    dropped whole (and counted), the others apply as if it never existed."""
    batches = [tiny_batch(0), tiny_batch(1), _nan(tiny_batch(2)), tiny_batch(3), tiny_batch(4), tiny_batch(5)]
    tx = optim.speechain_optimizer(optim.sgd(0.1), accum_grad=2, nonfinite="discard_window")
    step = make_train_step(MODEL, tx, plain, skip_nonfinite=False)
    state = step.init_state(random.key(4))
    for b in batches:
        state, m = step(state, b)
    assert int(state.nonfinite_total) == 1
    ref = make_train_step(MODEL, optim.speechain_optimizer(optim.sgd(0.1), accum_grad=2), plain)
    want = ref.init_state(random.key(4))
    for b in (batches[0], batches[1], batches[4], batches[5]):
        want, _ = ref(want, b)
    assert_trees_allclose(state.params, want.params, rtol=1e-6, atol=1e-7)
    # three windows emitted (the discarded one counts, as speechain's real_step), one discarded
    assert int(state.opt_state.gradient_step) == 3 and int(state.opt_state.inner_opt_state.total_notfinite) == 1
    # an unguarded chain with skip_nonfinite=False: non-finite parameters are still refused
    bare = make_train_step(MODEL, optim.sgd(0.1), plain, skip_nonfinite=False)
    s0 = bare.init_state(random.key(5))
    s1, m = bare(s0, _nan(tiny_batch(0)))
    assert_trees_equal(s1.params, s0.params) and not bool(m["finite"])


def test_eval_step_reports_the_same_stats_as_training():
    model_state_batch = tiny_batch(3)
    step = make_train_step(MODEL, optim.adam(1e-2), espnet_style())
    state = step.init_state(random.key(3))

    def eval_loss(params, s, batch, key):
        assert key is None
        loss, logits, s = _ctc(params, s, batch, key, train=False)
        return (loss, {"frames": batch.audio_lengths.float().mean(), "logit_mean": logits.mean()}, None), s

    default = make_eval_step(MODEL, VOCAB)(state.params, state.model_state, model_state_batch)
    out = make_eval_step(MODEL, VOCAB, loss_fn=eval_loss)(state.params, state.model_state, model_state_batch)
    torch.testing.assert_close(out.loss, default.loss)
    assert out.transcripts == default.transcripts and out.counts == default.counts
    assert set(out.stats) == {"frames", "logit_mean"} and float(out.weight) == 8.0
    assert default.stats == {} and default.weight is None
    _, m = step(state, model_state_batch)
    assert {k[len("stats/"):] for k in m if k.startswith("stats/")} == set(out.stats)
    # ctc_loss_fn(train=False), the eval-mode twin of the default training loss, has no stats
    twin = make_eval_step(MODEL, VOCAB, loss_fn=ctc_loss_fn(MODEL, BLANK, train=False))
    out = twin(state.params, state.model_state, model_state_batch)
    assert torch.equal(out.loss, default.loss) and out.stats == {} and out.weight is None
    loss, _ = ctc_loss_fn(MODEL, BLANK, train=False)(state.params, state.model_state, model_state_batch, None)
    torch.testing.assert_close(loss, default.loss)
