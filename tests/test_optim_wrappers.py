"""Wrappers: masked, multi_transform, freeze, MultiSteps, apply_if_finite, inject_hyperparams,
reduce_on_plateau. Inner optimisers are small stateful transforms defined here, so the wrappers
are tested on their own."""

import math
from typing import Any, NamedTuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fctc.optim as optim
from fctc import backend
from fctc import tree as T


class MomentumState(NamedTuple):
    count: torch.Tensor
    mu: Any


def momentum(learning_rate, beta=0.9, nesterov: bool = False):
    """Heavy-ball SGD with a step counter; hyperparameters may be floats or 0-d tensors."""

    def init(params):
        return MomentumState(torch.zeros((), dtype=torch.int32), T.zeros_like(params))

    def update(updates, state, params=None):
        mu = T.map(lambda m, g: beta * m + g, state.mu, updates)
        direction = T.map(lambda m, g: beta * m + g, mu, updates) if nesterov else mu
        return T.map(lambda m: -learning_rate * m, direction), MomentumState(state.count + 1, mu)

    return optim.GradientTransformation(init, update)


def scale_by(factor):
    return optim.stateless(lambda u, p: T.map(lambda g: factor * g, u))


def make_params():
    g = torch.Generator().manual_seed(0)
    return {
        "enc": {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)},
        "dec": {"w": torch.randn(4, 2, generator=g), "b": torch.randn(2, generator=g)},
    }


def grads_like(params, seed):
    g = torch.Generator().manual_seed(seed)
    return T.map(lambda p: torch.randn(p.shape, generator=g), params)


def assert_trees_equal(a, b):
    la, sa = T.flatten(a)
    lb, sb = T.flatten(b)
    assert sa == sb
    for x, y in zip(la, lb):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


# --- masked / multi_transform / freeze ------------------------------------------------------


def test_masked_transforms_selected_leaves_only():
    params = make_params()
    mask = {"enc": {"w": True, "b": False}, "dec": True}  # "dec" is a prefix: the whole subtree
    tx = optim.masked(momentum(0.1), mask)
    state = tx.init(params)
    assert isinstance(state, optim.MaskedState)
    assert isinstance(state.inner_state.mu["enc"]["b"], optim.MaskedNode)
    assert len(T.leaves(state.inner_state.mu)) == 3

    ref_tx = momentum(0.1)
    sub = lambda t: {"enc": {"w": t["enc"]["w"]}, "dec": t["dec"]}  # noqa: E731
    ref_state = ref_tx.init(sub(params))
    for step in range(3):
        g = grads_like(params, step)
        upd, state = tx.update(g, state, params)
        ref, ref_state = ref_tx.update(sub(g), ref_state)
        assert upd["enc"]["b"] is g["enc"]["b"]  # passed through untouched
        assert_trees_equal(sub(upd), ref)


def test_masked_with_callable_mask_and_bad_mask():
    params = make_params()
    tx = optim.masked(scale_by(-3.0), lambda p: T.map(lambda x: x.ndim > 1, p))
    state = tx.init(params)
    g = grads_like(params, 1)
    upd, _ = tx.update(g, state, params)
    torch.testing.assert_close(upd["dec"]["w"], -3.0 * g["dec"]["w"])
    assert upd["dec"]["b"] is g["dec"]["b"]
    with pytest.raises(TypeError, match="bools"):
        optim.masked(scale_by(1.0), {"enc": "yes", "dec": True}).init(params)
    with pytest.raises(ValueError, match="prefix"):
        optim.masked(scale_by(1.0), {"enc": True}).init(params)


def test_multi_transform_each_group_sees_only_its_leaves():
    params = make_params()
    seen = {}

    def recorder(name, factor):
        def init(p):
            seen[name + ".init"] = T.paths(p)
            return MomentumState(torch.zeros((), dtype=torch.int32), T.zeros_like(p))

        def update(u, s, p=None):
            seen[name] = T.paths(u)
            return T.map(lambda g: factor * g, u), MomentumState(s.count + 1, s.mu)

        return optim.GradientTransformation(init, update)

    labels = {"enc": "slow", "dec": {"w": "fast", "b": "slow"}}
    tx = optim.multi_transform({"slow": recorder("slow", 0.5), "fast": recorder("fast", 10.0)}, labels)
    state = tx.init(params)
    g = grads_like(params, 2)
    upd, state = tx.update(g, state, params)
    assert seen["slow.init"] == seen["slow"] == ["dec.b", "enc.b", "enc.w"]
    assert seen["fast.init"] == seen["fast"] == ["dec.w"]
    torch.testing.assert_close(upd["dec"]["w"], 10.0 * g["dec"]["w"])
    for path in (("enc", "w"), ("enc", "b"), ("dec", "b")):
        torch.testing.assert_close(upd[path[0]][path[1]], 0.5 * g[path[0]][path[1]])
    assert isinstance(state, optim.MultiTransformState)
    assert state.inner_states["fast"].inner_state.count.item() == 1
    assert len(T.leaves(state.inner_states["fast"].inner_state.mu)) == 1


def test_multi_transform_matches_separate_optimisers():
    params = make_params()
    tx = optim.multi_transform(
        {"enc": momentum(0.1, 0.9), "dec": momentum(0.01, 0.5)}, lambda p: {k: k for k in p}
    )
    state = tx.init(params)
    ref = {k: momentum(lr, b) for k, lr, b in (("enc", 0.1, 0.9), ("dec", 0.01, 0.5))}
    ref_states = {k: r.init(params[k]) for k, r in ref.items()}
    for step in range(3):
        g = grads_like(params, step)
        upd, state = tx.update(g, state, params)
        for k in ref:
            r, ref_states[k] = ref[k].update(g[k], ref_states[k])
            assert_trees_equal(upd[k], r)
    with pytest.raises(ValueError, match="no transformation"):
        optim.multi_transform({"enc": momentum(0.1)}, {"enc": "enc", "dec": "dec"}).init(params)


@given(labels=st.lists(st.sampled_from(["a", "b", "c"]), min_size=4, max_size=4))
def test_multi_transform_and_masked_route_every_leaf(labels):
    params = make_params()
    paths = T.paths(params)
    label_tree = T.unflatten(T.structure(params), labels)
    factors = {"a": 2.0, "b": -1.0, "c": 0.5}
    tx = optim.multi_transform({k: scale_by(f) for k, f in factors.items()}, label_tree)
    g = grads_like(params, 3)
    upd, state = tx.update(g, tx.init(params), params)
    for path, lab, u, x in zip(paths, labels, T.leaves(upd), T.leaves(g)):
        torch.testing.assert_close(u, factors[lab] * x, msg=path)
    mask = T.map(lambda lab: lab == "a", label_tree)
    upd, _ = optim.masked(scale_by(2.0), mask).update(g, optim.masked(scale_by(2.0), mask).init(params))
    for lab, u, x in zip(labels, T.leaves(upd), T.leaves(g)):
        assert torch.equal(u, 2.0 * x if lab == "a" else x)


def test_wrappers_do_not_mutate_their_inputs():
    params = make_params()
    txs = [
        optim.masked(momentum(0.1), {"enc": True, "dec": False}),
        optim.multi_transform({"x": momentum(0.1), "y": momentum(0.2)}, {"enc": "x", "dec": "y"}),
        optim.MultiSteps(momentum(0.1), 2).gradient_transformation(),
        optim.apply_if_finite(momentum(0.1), 1),
        optim.inject_hyperparams(momentum)(learning_rate=0.1),
        optim.reduce_on_plateau(),
    ]
    clone = lambda t: T.map(torch.clone, t)  # noqa: E731
    for tx in txs:
        state = tx.init(params)
        for step in range(2):
            g = grads_like(params, step)
            snapshot = clone((g, state, params))
            _, new_state = tx.update(g, state, params, value=1.0)
            assert_trees_equal((g, state, params), snapshot)
            state = new_state


def test_freeze_and_selective_transform_keep_frozen_params():
    params = make_params()
    frozen = {"enc": True, "dec": False}
    for tx in (
        optim.chain(momentum(0.1), optim.freeze(frozen)),
        optim.selective_transform(momentum(0.1), freeze_mask=frozen),
    ):
        state = tx.init(params)
        p = params
        for step in range(3):
            upd, state = tx.update(grads_like(params, step), state, p)
            p = optim.apply_updates(p, upd)
        assert_trees_equal(p["enc"], params["enc"])
        assert not torch.equal(p["dec"]["w"], params["dec"]["w"])
    # selective_transform keeps no optimiser state for frozen leaves.
    train_state = state.inner_states["train"].inner_state
    assert T.paths(train_state.mu) == ["dec.b", "dec.w"]


# --- MultiSteps -----------------------------------------------------------------------------


@pytest.mark.parametrize("use_grad_mean", [True, False])
def test_multisteps_equals_one_step_on_mean_gradient(use_grad_mean):
    params = make_params()
    k = 3
    ms = optim.MultiSteps(momentum(0.1), every_k_schedule=k, use_grad_mean=use_grad_mean)
    state = ms.init(params)
    ref = momentum(0.1)
    ref_state = ref.init(params)
    p, p_ref = params, params
    for cycle in range(3):
        gs = [grads_like(params, 10 * cycle + i) for i in range(k)]
        for i, g in enumerate(gs):
            upd, state = ms.update(g, state, p)
            p = optim.apply_updates(p, upd)
            if i < k - 1:
                assert all(torch.all(x == 0) for x in T.leaves(upd))
                assert not ms.has_updated(state).item()
        assert ms.has_updated(state).item()
        total = T.map(lambda *xs: sum(xs), *gs)
        agg = T.map(lambda s: s / k, total) if use_grad_mean else total
        r, ref_state = ref.update(agg, ref_state, p_ref)
        p_ref = optim.apply_updates(p_ref, r)
        assert_trees_equal(p, p_ref)
    assert state.gradient_step.item() == 3 and state.mini_step.item() == 0
    assert state.inner_opt_state.count.item() == 3  # the inner state only moves on emitted steps
    assert isinstance(state, optim.MultiStepsState)


def test_multisteps_schedule_skip_and_transformation():
    params = {"w": torch.zeros(2)}
    # k = 1 for the first emitted update, 2 afterwards.
    ms = optim.MultiSteps(
        scale_by(1.0), lambda step: torch.where(step < 1, 1, 2), should_skip_update_fn=optim.skip_not_finite
    )
    tx = ms.gradient_transformation()
    state = tx.init(params)
    one = {"w": torch.ones(2)}
    nan = {"w": torch.tensor([float("nan"), 1.0])}
    upd, state = tx.update(one, state)
    assert upd["w"].tolist() == [1.0, 1.0] and state.gradient_step.item() == 1
    upd, state = tx.update(nan, state)  # skipped: as if it never happened
    assert upd["w"].tolist() == [0.0, 0.0] and state.mini_step.item() == 0
    assert state.skip_state["num_not_finite"].item() == 1
    upd, state = tx.update({"w": torch.full((2,), 3.0)}, state)
    assert upd["w"].tolist() == [0.0, 0.0] and state.mini_step.item() == 1
    upd, state = tx.update(one, state)
    assert upd["w"].tolist() == [2.0, 2.0] and state.gradient_step.item() == 2

    skip, info = optim.skip_large_updates({"w": torch.full((4,), 2.0)}, state.gradient_step, None, 15.0)
    assert skip.item() is True and info["norm_squared"].item() == pytest.approx(16.0)
    with pytest.raises(ValueError, match="every_k_schedule"):
        optim.MultiSteps(scale_by(1.0), 0)


# --- apply_if_finite ------------------------------------------------------------------------


def test_apply_if_finite_skips_and_gives_up_after_max_errors():
    params = {"w": torch.ones(2), "b": torch.zeros(1)}
    tx = optim.apply_if_finite(momentum(1.0), max_consecutive_errors=2)
    state = tx.init(params)
    good = {"w": torch.ones(2), "b": torch.ones(1)}
    bad = {"w": torch.tensor([1.0, float("inf")]), "b": torch.ones(1)}

    upd, state = tx.update(good, state, params)
    inner_after_good = state.inner_state
    assert upd["w"].tolist() == [-1.0, -1.0] and state.last_finite.item() is True

    for n in (1, 2):
        upd, state = tx.update(bad, state, params)
        assert all(torch.all(x == 0) for x in T.leaves(upd))
        assert_trees_equal(state.inner_state, inner_after_good)
        assert state.notfinite_count.item() == n and state.total_notfinite.item() == n
        assert state.last_finite.item() is False

    upd, state = tx.update(bad, state, params)  # third in a row > 2: applied anyway
    assert math.isinf(upd["w"][1].item()) and state.inner_state.count.item() == 2
    upd, state = tx.update(good, state, params)
    assert state.notfinite_count.item() == 0 and state.total_notfinite.item() == 3
    assert isinstance(state, optim.ApplyIfFiniteState)


# --- inject_hyperparams ---------------------------------------------------------------------


def test_inject_hyperparams_state_schedule_and_override():
    params = make_params()
    sched = optim.linear_schedule(1.0, 0.0, 4)
    tx = optim.inject_hyperparams(momentum)(learning_rate=sched, beta=0.5)
    state = tx.init(params)
    assert isinstance(state, optim.InjectHyperparamsState)
    assert set(state.hyperparams) == {"learning_rate", "beta"}
    assert state.hyperparams["beta"].dtype == torch.float32 and state.hyperparams["beta"].shape == ()

    ref_state = momentum(1.0, 0.5).init(params)
    for step in range(3):
        g = grads_like(params, step)
        upd, state = tx.update(g, state, params)
        lr = 1.0 - step / 4
        r, ref_state = momentum(lr, 0.5).update(g, ref_state)
        assert_trees_equal(upd, r)
        assert state.hyperparams["learning_rate"].item() == pytest.approx(lr)  # value used at count
    assert state.count.item() == 3

    state.hyperparams["beta"] = torch.tensor(0.0)  # changed without rebuilding the optimiser
    g = grads_like(params, 9)
    upd, state = tx.update(g, state, params)
    assert_trees_equal(upd, T.map(lambda x: -0.25 * x, g))
    assert state.hyperparams["beta"].item() == 0.0


def test_inject_hyperparams_static_and_dtype():
    seen = {}

    def factory(learning_rate, nesterov: bool = False, depth: int = 2, name="x"):
        seen.update(learning_rate=learning_rate, nesterov=nesterov, depth=depth, name=name)
        return scale_by(-learning_rate)

    params = {"w": torch.ones(2, dtype=torch.float64)}
    tx = optim.inject_hyperparams(factory)(0.5, nesterov=True, depth=3, name="y")
    state = tx.init(params)
    assert set(state.hyperparams) == {"learning_rate"}
    assert state.hyperparams["learning_rate"].dtype == torch.float64  # widest parameter dtype
    assert seen["nesterov"] is True and seen["depth"] == 3 and seen["name"] == "y"

    tx = optim.inject_hyperparams(factory, hyperparam_dtype=torch.bfloat16)(0.5)
    assert tx.init(params).hyperparams["learning_rate"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="static_args"):
        optim.inject_hyperparams(factory, static_args=("nope",))


def test_wrappers_with_library_optimisers():
    """inject_hyperparams and MultiSteps around fctc.optim's own sgd / adamw (when present)."""
    if not all(hasattr(optim, n) for n in ("sgd", "adamw")):
        pytest.skip("fctc.optim.sgd / adamw are not available yet")
    params = make_params()
    sched = optim.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10)
    cases = [
        (optim.inject_hyperparams(optim.sgd)(learning_rate=0.1, momentum=0.9), optim.sgd(0.1, momentum=0.9)),
        (optim.inject_hyperparams(optim.adamw)(sched, weight_decay=0.1), optim.adamw(sched, weight_decay=0.1)),
    ]
    for tx, ref in cases:
        state, ref_state = tx.init(params), ref.init(params)
        for step in range(4):
            g = grads_like(params, step)
            upd, state = tx.update(g, state, params)
            r, ref_state = ref.update(g, ref_state, params)
            assert_trees_equal(upd, r)

    # Three micro-steps of MultiSteps(adamw) = one adamw step on the mean gradient.
    ms = optim.MultiSteps(optim.adamw(1e-2, weight_decay=0.1), 3)
    ref = optim.adamw(1e-2, weight_decay=0.1)
    state, ref_state = ms.init(params), ref.init(params)
    gs = [grads_like(params, 20 + i) for i in range(3)]
    for g in gs:
        upd, state = ms.update(g, state, params)
    r, _ = ref.update(T.map(lambda a, b, c: (a + b + c) / 3, *gs), ref_state, params)
    assert_trees_equal(upd, r)


# --- reduce_on_plateau ----------------------------------------------------------------------


def plateau_reference(values, factor, patience, rtol, atol, cooldown, accumulation_size, min_scale):
    """optax.contrib.reduce_on_plateau written with Python branches, in float32 scalars."""
    f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    scale, best, avg = f32(1.0), f32(float("inf")), f32(0.0)
    plateau = cool = count = 0
    scales = []
    for v in values:
        avg = (count * avg + f32(v)) / (count + 1)
        count += 1
        if count == accumulation_size:
            improved = bool(avg < (1 - rtol) * best - atol)
            if improved:
                best = avg
            curr = 0 if improved else plateau + 1
            if cool > 0:
                plateau, cool = 0, cool - 1
            elif curr == patience:
                plateau, scale, cool = 0, torch.clamp(scale * factor, min=min_scale), cooldown
            else:
                plateau, scale, cool = curr, torch.clamp(scale, min=min_scale), 0
            count, avg = 0, f32(0.0)
        scales.append(scale.item())
    return scales


@given(
    values=st.lists(st.sampled_from([1.0, 0.9, 0.99999, 1.1, 0.5, 2.0]), min_size=1, max_size=60),
    patience=st.integers(1, 4),
    cooldown=st.integers(0, 3),
    accumulation_size=st.integers(1, 3),
    atol=st.sampled_from([0.0, 0.05]),
    min_scale=st.sampled_from([0.0, 0.02]),
)
def test_reduce_on_plateau_matches_optax_rule(values, patience, cooldown, accumulation_size, atol, min_scale):
    kw = dict(factor=0.5, patience=patience, rtol=1e-4, atol=atol, cooldown=cooldown,
              accumulation_size=accumulation_size, min_scale=min_scale)
    tx = optim.reduce_on_plateau(**kw)
    params = {"w": torch.ones(3)}
    state = tx.init(params)
    expected = plateau_reference(values, **kw)
    g = {"w": torch.tensor([1.0, -2.0, 4.0])}
    for v, scale in zip(values, expected):
        upd, state = tx.update(g, state, params, value=torch.tensor(v))
        assert state.scale.item() == pytest.approx(scale, rel=1e-6)
        torch.testing.assert_close(upd["w"], scale * g["w"])


def test_reduce_on_plateau_in_chain_and_validation():
    tx = optim.chain(scale_by(-1.0), optim.reduce_on_plateau(patience=1, factor=0.5))
    params = {"w": torch.ones(1)}
    state = tx.init(params)
    for v in (1.0, 1.0):
        upd, state = tx.update({"w": torch.ones(1)}, state, params, value=v)
    assert upd["w"].item() == -0.5 and isinstance(state[1], optim.ReduceLROnPlateauState)
    with pytest.raises(TypeError, match="value="):
        tx.update({"w": torch.ones(1)}, state, params)
    for bad in (dict(factor=1.0), dict(rtol=-1.0), dict(rtol=0.0, atol=0.0), dict(rtol=2.0)):
        with pytest.raises(ValueError):
            optim.reduce_on_plateau(**bad)


# --- compiled: no recompilation as counters and hyperparameters change ----------------------


def test_compiled_wrappers_do_not_recompile():
    """The one jit test of the optimiser wrappers and schedules (dynamo, full graph, eager backend)."""
    params = {"w": torch.ones(4), "b": torch.zeros(2)}
    inner = optim.inject_hyperparams(momentum)(learning_rate=optim.warmup_cosine_decay_schedule(0.0, 1.0, 2, 8), beta=0.9)
    tx = optim.chain(
        optim.apply_if_finite(optim.MultiSteps(inner, 2).gradient_transformation(), 2),
        optim.reduce_on_plateau(patience=1, factor=0.5),
        optim.freeze({"w": False, "b": True}),
    )

    def step(params, state, grads, value):
        upd, state = tx.update(grads, state, params, value=value)
        return optim.apply_updates(params, upd), state

    eager_p, eager_s = params, tx.init(params)
    comp_p, comp_s = params, tx.init(params)
    compiled = backend.jit(step, backend="eager", fullgraph=True)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(6):
            g = {"w": torch.full((4,), float(i + 1)), "b": torch.ones(2)}
            if i == 3:
                for s in (eager_s, comp_s):
                    s[0].inner_state.inner_opt_state.hyperparams["beta"] = torch.tensor(0.5)
            eager_p, eager_s = step(eager_p, eager_s, g, torch.tensor(1.0))
            comp_p, comp_s = compiled(comp_p, comp_s, g, torch.tensor(1.0))
            assert_trees_equal(comp_p, eager_p)
    assert_trees_equal(comp_s, eager_s)
    assert torch.equal(comp_p["b"], params["b"])
    assert comp_s[0].inner_state.gradient_step.item() == 3


def test_multisteps_emits_and_every_k_are_its_public_clock():
    """emits(state) says whether the next call ends a window (what DistributedMultiSteps reads
    to all-reduce once per update); with a schedule, k follows gradient_step."""
    params = {"w": torch.zeros(2)}
    ms = optim.MultiSteps(scale_by(1.0), lambda step: torch.where(step < 1, 2, 3))
    state = ms.init(params)
    seen = []
    for _ in range(8):
        seen.append((int(ms.every_k(state)), bool(ms.emits(state))))
        _, state = ms.update({"w": torch.ones(2)}, state)
        assert bool(ms.has_updated(state)) == seen[-1][1]
    assert seen == [(2, False), (2, True), (3, False), (3, False), (3, True), (3, False), (3, False), (3, True)]
