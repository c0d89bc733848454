"""speechain's knobs as compositions: accum_grad, step_per_update, ft_factor, clip, modules."""

from __future__ import annotations

import pytest
import torch

import fctc
from fctc import optim
from fctc.testing import assert_trees_allclose, assert_trees_equal
from fctc.optim import every_n_steps, only_modules, speechain_optimizer


def _params():
    g = torch.Generator().manual_seed(0)
    return {
        "encoder": {"w": torch.randn(3, 4, generator=g), "b": torch.randn(3, generator=g)},
        "decoder": {"w": torch.randn(2, 3, generator=g)},
    }


def _grads(i):
    g = torch.Generator().manual_seed(100 + i)
    return fctc.tree.map(lambda p: torch.randn(p.shape, generator=g), _params())


def _run(tx, n):
    params = _params()
    state = tx.init(params)
    for i in range(n):
        updates, state = tx.update(_grads(i), state, params)
        params = optim.apply_updates(params, updates)
    return params, state


def test_ft_factor_scales_the_learning_rate():
    got, _ = _run(speechain_optimizer(optim.adam(1e-2), ft_factor=0.1), 5)
    want, _ = _run(optim.adam(1e-3), 5)
    assert_trees_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_grad_clip_uses_the_given_norm_type():
    tx = speechain_optimizer(optim.sgd(1.0), grad_clip=0.5, grad_norm_type=float("inf"))
    params = _params()
    updates, _ = tx.update(_grads(0), tx.init(params), params)
    assert float(fctc.tree.global_norm(updates, ord=float("inf"))) == pytest.approx(0.5, rel=1e-6)


def test_accum_grad_averages_then_updates():
    k = 3
    got, state = _run(speechain_optimizer(optim.sgd(0.1), accum_grad=k), k)
    mean = fctc.tree.map(lambda *g: sum(g) / k, *[_grads(i) for i in range(k)])
    want = fctc.tree.map(lambda p, g: p - 0.1 * g, _params(), mean)
    assert_trees_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_step_per_update_applies_every_nth_and_discards_the_rest():
    got, state = _run(every_n_steps(optim.sgd(0.1), 3), 6)
    want = fctc.tree.map(lambda p, a, b: p - 0.1 * a - 0.1 * b, _params(), _grads(2), _grads(5))
    assert_trees_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert int(state.count) == 6
    # the inner state only moves on applied updates
    _, s = _run(every_n_steps(optim.adam(1e-2), 3), 4)
    assert int(s.inner_state[0].count) == 1


def test_updated_modules_freezes_the_others():
    got, state = _run(speechain_optimizer(optim.adam(1e-2), updated_modules=["decoder"]), 3)
    assert_trees_equal(got["encoder"], _params()["encoder"])
    assert not torch.equal(got["decoder"]["w"], _params()["decoder"]["w"])
    with pytest.raises(ValueError, match=r"no modules named \['head'\]"):
        only_modules(optim.sgd(0.1), ["head"]).init(_params())
    with pytest.raises(ValueError, match="positive int"):
        every_n_steps(optim.sgd(0.1), 0)


# -- parity with speechain's OptimScheduler.step ----------------------------------------------
# An imperative reference written for these tests from speechain's documented step: the real
# step counts accumulation windows, backward (loss / accum_grad) runs only in windows where
# real_step % step_per_update == 0, the learning rate is ft_factor * update_lr(real_step)
# (Noamlr: lr * warmup**0.5 * min(real_step**-0.5, real_step * warmup**-1.5)), and at the
# window's last call clip_grad_norm_ over all of model.parameters() decides: a non-finite norm
# skips the step; then the optimiser's (trained) parameters' gradients are zeroed.


def real_step(step_num, accum_grad):
    return (step_num - 1) // accum_grad + 1


def noamlr(lr, warmup, step):
    return lr * warmup**0.5 * min(step**-0.5, step * warmup**-1.5)


class SpeechainReference:
    def __init__(self, params, optim_cls, lr, warmup, accum_grad=1, step_per_update=1,
                 ft_factor=1.0, grad_clip=None, grad_norm_type=2.0, updated_modules=None):
        self.params = {k: torch.nn.Parameter(v.clone()) for k, v in fctc.tree.flatten_dict(params).items()}
        trained = [p for k, p in self.params.items()
                   if updated_modules is None or k.split(".")[0] in updated_modules]
        self.opt = optim_cls(trained, lr=lr)
        self.lr, self.warmup, self.accum, self.spu = lr, warmup, accum_grad, step_per_update
        self.ft, self.clip, self.norm_type = ft_factor, grad_clip, grad_norm_type
        self.lrs = []

    def step(self, grads, step_num):
        r = real_step(step_num, self.accum)
        if r % self.spu != 0:
            return
        for k, g in fctc.tree.flatten_dict(grads).items():
            p = self.params[k]
            p.grad = g / self.accum if p.grad is None else p.grad + g / self.accum
        lr = self.ft * noamlr(self.lr, self.warmup, r)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if step_num % self.accum == 0:
            norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()),
                                                  max_norm=self.clip if self.clip is not None else float("inf"),
                                                  norm_type=self.norm_type)
            if torch.isfinite(norm):
                self.opt.step()
                self.lrs.append(lr)
            self.opt.zero_grad()

    def tree(self):
        return fctc.tree.unflatten_dict({k: p.detach() for k, p in self.params.items()})


def _run_fctc(tx, grads):
    params = _params()
    state = tx.init(params)
    lrs = []
    for g in grads:
        updates, state = tx.update(g, state, params)
        new = optim.apply_updates(params, updates)
        if any(not torch.equal(a, b) for a, b in zip(fctc.tree.leaves(new), fctc.tree.leaves(params))):
            lrs.append(optim.find_hyperparams(state)["learning_rate"].item())
        params = new
    return params, state, lrs


def test_step_per_update_with_noam_gives_speechains_learning_rates():
    """step_per_update=2, Noam warm-up 3, lr 0.01: the first three updates get speechain's
    0.00667 / 0.00866 / 0.00707 (the real_step formula written out), not 0.00333 / 0.00667 / 0.01."""
    lr, warmup = 0.01, 3
    tx = speechain_optimizer(optim.sgd, schedule=optim.noam_schedule(lr, warmup), step_per_update=2)
    got, _, lrs = _run_fctc(tx, [_grads(i) for i in range(6)])
    want = [noamlr(lr, warmup, real_step(n, 1)) for n in range(1, 7) if real_step(n, 1) % 2 == 0]
    assert lrs == pytest.approx(want, rel=1e-6)
    assert lrs == pytest.approx([0.0066667, 0.0086603, 0.0070711], rel=1e-4)
    ref = SpeechainReference(_params(), torch.optim.SGD, lr, warmup, step_per_update=2)
    for n in range(1, 7):
        ref.step(_grads(n - 1), n)
    assert ref.lrs == pytest.approx(want, rel=1e-12)
    assert_trees_allclose(got, ref.tree(), rtol=1e-5, atol=1e-7)
    # count="updates": the schedule counts applied updates (fctc's former behaviour)
    by_updates = speechain_optimizer(optim.sgd, schedule=optim.noam_schedule(lr, warmup),
                                     step_per_update=2, count="updates")
    _, _, lrs = _run_fctc(by_updates, [_grads(i) for i in range(6)])
    assert lrs == pytest.approx([noamlr(lr, warmup, s) for s in (1, 2, 3)], rel=1e-6)


@pytest.mark.parametrize("accum_grad,step_per_update", [(2, 2), (3, 1), (2, 3)])
def test_learning_rates_and_parameters_follow_speechains_real_step(accum_grad, step_per_update):
    lr, warmup, n = 0.02, 4, 24
    grads = [_grads(i) for i in range(n)]
    tx = speechain_optimizer(optim.adam, schedule=optim.noam_schedule(lr, warmup), accum_grad=accum_grad,
                             step_per_update=step_per_update, ft_factor=0.5, grad_clip=2.0)
    got, _, lrs = _run_fctc(tx, grads)
    ref = SpeechainReference(_params(), torch.optim.Adam, lr, warmup, accum_grad, step_per_update,
                             ft_factor=0.5, grad_clip=2.0)
    for step_num, g in enumerate(grads, start=1):
        ref.step(g, step_num)
    want = [0.5 * noamlr(lr, warmup, real_step(s, accum_grad)) for s in range(1, n + 1)
            if real_step(s, accum_grad) % step_per_update == 0 and s % accum_grad == 0]
    assert lrs == pytest.approx(want, rel=1e-6) and ref.lrs == pytest.approx(want, rel=1e-12)
    assert_trees_allclose(got, ref.tree(), rtol=1e-4, atol=1e-6)


def test_clip_scope_all_takes_the_norm_over_every_parameter():
    """speechain clips by the norm over all of model.parameters() with updated_modules; fctc's
    default takes the trained ones only. One window: identical to speechain's first update."""
    g = fctc.tree.map(lambda x: 10.0 * x, _grads(0))
    ref = SpeechainReference(_params(), torch.optim.SGD, 0.1, 1, grad_clip=1.0, updated_modules=["decoder"])
    ref.step(g, 1)
    tx_all = speechain_optimizer(optim.sgd, schedule=optim.constant_schedule(0.1), grad_clip=1.0,
                                 updated_modules=["decoder"], clip_scope="all")
    params = _params()
    upd_all, _ = tx_all.update(g, tx_all.init(params), params)
    assert_trees_allclose(optim.apply_updates(params, upd_all), ref.tree(), rtol=1e-5, atol=1e-7)
    norm_all = fctc.tree.global_norm(g)
    norm_trained = fctc.tree.global_norm(g["decoder"])
    torch.testing.assert_close(fctc.tree.global_norm(upd_all["decoder"]), 0.1 * norm_trained / norm_all)
    assert_trees_equal(upd_all["encoder"], fctc.tree.map(torch.zeros_like, g["encoder"]))
    tx_trained = speechain_optimizer(optim.sgd(0.1), grad_clip=1.0, updated_modules=["decoder"])
    upd, _ = tx_trained.update(g, tx_trained.init(params), params)
    torch.testing.assert_close(fctc.tree.global_norm(upd["decoder"]), torch.tensor(0.1))


def test_discard_window_drops_a_window_with_a_nonfinite_gradient():
    """nonfinite="discard_window": speechain skips the whole window (and counts it); the
    default keeps the window's finite gradients (the train step drops only the bad batch)."""
    lr, warmup = 0.01, 2
    grads = [_grads(i) for i in range(8)]
    grads[2] = fctc.tree.map(lambda x: x * float("nan"), grads[2])  # second window, first call
    tx = speechain_optimizer(optim.sgd, schedule=optim.noam_schedule(lr, warmup), accum_grad=2,
                             nonfinite="discard_window")
    got, state, lrs = _run_fctc(tx, grads)
    ref = SpeechainReference(_params(), torch.optim.SGD, lr, warmup, accum_grad=2)
    for step_num, g in enumerate(grads, start=1):
        ref.step(g, step_num)
    assert lrs == pytest.approx(ref.lrs, rel=1e-6) and len(lrs) == 3  # windows 1, 3, 4
    assert lrs == pytest.approx([noamlr(lr, warmup, r) for r in (1, 3, 4)], rel=1e-6)
    assert_trees_allclose(got, ref.tree(), rtol=1e-5, atol=1e-7)
    assert all(torch.isfinite(x).all() for x in fctc.tree.leaves(state))


def test_speechain_option_errors_name_the_option():
    with pytest.raises(ValueError, match="count must be one of"):
        speechain_optimizer(optim.adam, schedule=optim.constant_schedule(1.0), count="epochs")
    with pytest.raises(ValueError, match="clip_scope"):
        speechain_optimizer(optim.adam(1e-3), clip_scope="frozen")
    with pytest.raises(ValueError, match="nonfinite"):
        speechain_optimizer(optim.adam(1e-3), nonfinite="ignore")
    with pytest.raises(ValueError, match="step_per_update must be a positive int"):
        speechain_optimizer(optim.adam(1e-3), step_per_update=0)
    with pytest.raises(TypeError, match="factory"):
        speechain_optimizer(optim.adam(1e-3), schedule=optim.constant_schedule(1.0))
    with pytest.raises(TypeError, match="together with schedule="):
        speechain_optimizer(optim.adam)
