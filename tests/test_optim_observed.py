"""Transformations driven by what the loop observes: reduce_on_plateau's value_count, epoch
schedules through inject_hyperparams(schedule_input=...), plateau_scale."""

from __future__ import annotations

import pytest
import torch

from fctc import optim
from fctc.testing import assert_trees_equal


def _plateau_reference(values, factor, patience):
    """optax.contrib's rule (accumulation_size=1, rtol=1e-4, no cooldown) with Python branches."""
    scale, best, plateau, scales = 1.0, float("inf"), 0, []
    for v in values:
        if v < (1 - 1e-4) * best:
            best, plateau = v, 0
        else:
            plateau += 1
            if plateau == patience:
                scale, plateau = scale * factor, 0
        scales.append(scale)
    return scales


def test_plateau_takes_each_counted_value_in_once():
    """With value_count=, repeated calls with the same count apply the scale without taking the
    value in again; each new count is one observation, as optax's calls are."""
    values = [1.0, 0.9, 0.95, 0.93, 0.91, 0.8, 0.85, 0.82]
    want = _plateau_reference(values, factor=0.5, patience=2)
    tx = optim.reduce_on_plateau(factor=0.5, patience=2)
    params = {"w": torch.ones(2)}
    state = tx.init(params)
    g = {"w": torch.tensor([1.0, -2.0])}
    for n, (v, scale) in enumerate(zip(values, want), start=1):
        for _ in range(3):  # three updates between two observations
            upd, state = tx.update(g, state, params, value=torch.tensor(v), value_count=n)
            assert state.scale.item() == scale and int(state.value_count) == n
            assert torch.equal(upd["w"], scale * g["w"])
    # before any observation (value_count 0, value +inf) nothing is taken in
    fresh = tx.init(params)
    upd, after = tx.update(g, fresh, params, value=torch.tensor(float("inf")), value_count=0)
    assert_trees_equal(after, fresh)
    assert torch.equal(upd["w"], g["w"])


def test_plateau_without_value_count_is_optax():
    values = [1.0, 1.0, 1.0, 0.5, 0.6, 0.6]
    want = _plateau_reference(values, factor=0.1, patience=2)
    tx = optim.reduce_on_plateau(factor=0.1, patience=2)
    params = {"w": torch.ones(1)}
    state = tx.init(params)
    for v, scale in zip(values, want):
        _, state = tx.update({"w": torch.ones(1)}, state, params, value=v)
        assert state.scale.item() == pytest.approx(scale, rel=1e-6)
    with pytest.raises(TypeError, match=r"step\.observe"):
        tx.update({"w": torch.ones(1)}, state, params)


def test_plateau_scale_multiplies_every_plateau_in_the_state():
    params = {"w": torch.ones(1)}
    tx = optim.chain(optim.sgd(0.1), optim.reduce_on_plateau(factor=0.5, patience=1))
    state = tx.init(params)
    assert optim.plateau_scale(state).item() == 1.0
    for v in (1.0, 1.0):
        _, state = tx.update({"w": torch.ones(1)}, state, params, value=v)
    assert optim.plateau_scale(state).item() == 0.5
    assert optim.plateau_scale({"a": state, "b": state}).item() == 0.25
    assert optim.plateau_scale(optim.sgd(0.1).init(params)) is None


def test_inject_hyperparams_counts_an_extra_argument():
    """schedule_input="epoch": the schedule is evaluated at epoch=, not at the update count."""
    schedule = optim.exponential_decay(1.0, transition_steps=1, decay_rate=0.5)
    tx = optim.inject_hyperparams(optim.sgd, schedule_input="epoch")(learning_rate=schedule)
    params = {"w": torch.zeros(1)}
    state = tx.init(params)
    assert state.hyperparams["learning_rate"].item() == 1.0
    for epoch in (0, 0, 0, 1, 1, 3):
        upd, state = tx.update({"w": torch.ones(1)}, state, params, epoch=torch.tensor(epoch))
        lr = 0.5**epoch
        assert state.hyperparams["learning_rate"].item() == lr
        assert upd["w"].item() == -lr
    assert int(state.count) == 6  # the update count still counts updates
    with pytest.raises(TypeError, match=r"update needs epoch="):
        tx.update({"w": torch.ones(1)}, state, params)
    # through chain and update_and_apply as well
    chained = optim.chain(optim.clip_by_global_norm(10.0), tx)
    p, s = optim.update_and_apply(chained, {"w": torch.ones(1)}, chained.init(params), params,
                                  epoch=torch.tensor(2))
    assert p["w"].item() == -0.25
