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
