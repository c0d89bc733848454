"""fctc.optim.update_and_apply: ``tx.update`` and ``apply_updates`` in one call, pure by default
and in place on donated buffers; torch.optim.AdamW(fused=True) is the reference for adamw."""

import pytest
import torch

import fctc
import fctc.optim as optim
from fctc import tree as T
from fctc.testing import assert_pure


pytestmark = pytest.mark.usefixtures("one_thread")


def make_params(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {
        "conv": {"weight": torch.randn(64, 32, 5, generator=g, dtype=dtype), "bias": torch.randn(64, generator=g, dtype=dtype)},
        "bn": {"weight": torch.randn(64, generator=g, dtype=dtype)},
        "decoder": torch.randn(29, 64, 1, generator=g, dtype=dtype),
    }


def grads_like(params, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return T.map(lambda p: torch.randn(p.shape, generator=g, dtype=p.dtype) * scale, params)


def warmup(count):
    return 1e-2 * torch.clamp((count.to(torch.float32) + 1) / 4, max=1.0)


def decay_matrices(params):
    return T.map(lambda p: p.ndim > 1, params)


TXS = {
    "clip+adamw(schedule)": lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(warmup, weight_decay=1e-2)),
    "adam": lambda: optim.adam(1e-2),
    "adamw(mask)": lambda: optim.adamw(1e-2, weight_decay=0.1, mask=decay_matrices),
    "adam(nesterov)": lambda: optim.adam(1e-2, nesterov=True),
    "adamw(eps_root)": lambda: optim.adamw(1e-2, eps_root=1e-8),
    "inject(adamw)": lambda: optim.inject_hyperparams(optim.adamw)(learning_rate=1e-2, weight_decay=1e-2),
    "sgd(momentum)": lambda: optim.sgd(1e-2, momentum=0.9),
    "nested chain": lambda: optim.chain(optim.clip(0.5), optim.chain(optim.clip_by_global_norm(2.0), optim.adam(1e-2))),
    "clip+adamw, no fusion pair": lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.scale(0.5), optim.adamw(1e-2)),
}


def run(tx, params, steps, *, fused_apply, donate=False, seed=10, scale=1.0):
    state = tx.init(params)
    if donate:  # the caller gives up its trees: hand over copies so the originals stay intact
        params, state = T.map(torch.clone, params), T.map(torch.clone, state)
    for i in range(steps):
        grads = grads_like(params, seed + i, scale)
        if fused_apply:
            params, state = optim.update_and_apply(tx, grads, state, params, donate=donate)
        else:
            updates, state = tx.update(grads, state, params)
            params = optim.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("name", sorted(TXS))
@pytest.mark.parametrize("donate", [False, True])
def test_update_and_apply_equals_update_then_apply_updates(name, donate):
    params = make_params()
    ref_p, ref_s = run(TXS[name](), params, 6, fused_apply=False)
    p, s = run(TXS[name](), params, 6, fused_apply=True, donate=donate)
    # The fused kernel adds the update to the parameter in its own pass: a few ulps apart.
    fctc.testing.assert_trees_allclose(p, ref_p, rtol=2e-6, atol=1e-7)
    fctc.testing.assert_trees_allclose(s, ref_s, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(TXS))
def test_donating_gives_exactly_the_pure_result(name):
    params = make_params(1)
    pure_p, pure_s = run(TXS[name](), params, 4, fused_apply=True, donate=False)
    don_p, don_s = run(TXS[name](), params, 4, fused_apply=True, donate=True)
    fctc.testing.assert_trees_allclose(don_p, pure_p, rtol=0, atol=0)
    fctc.testing.assert_trees_allclose(don_s, pure_s, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(TXS))
def test_without_donation_no_input_is_touched(name):
    tx = TXS[name]()
    params = make_params(2)
    state = tx.init(params)
    _, state = tx.update(grads_like(params, 3), state, params)  # a state that is not all zeros
    assert_pure(optim.update_and_apply, tx, grads_like(params, 4), state, params)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adamw_matches_torch_fused_adamw_bit_for_bit(weight_decay):
    """Both run torch's fused CPU kernel on the same inputs, so the iterates agree exactly."""
    params = make_params(3)
    tx = optim.adamw(1e-3, b1=0.8, b2=0.99, eps=1e-6, weight_decay=weight_decay)
    leaves = [p.clone().requires_grad_(True) for p in T.leaves(params)]
    ref = torch.optim.AdamW(leaves, lr=1e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay, fused=True)
    state = tx.init(params)
    for i in range(20):
        grads = grads_like(params, 100 + i)
        for p, g in zip(leaves, T.leaves(grads)):
            p.grad = g.clone()
        ref.step()
        params, state = optim.update_and_apply(tx, grads, state, params)
    for ours, theirs in zip(T.leaves(params), leaves):
        torch.testing.assert_close(ours, theirs.detach(), rtol=0, atol=0)
    for ours, p in zip(T.leaves(state[0].nu), leaves):
        torch.testing.assert_close(ours, ref.state[p]["exp_avg_sq"], rtol=0, atol=0)


def test_donated_buffers_hold_the_result():
    """On the CPU fast path the new parameters and moments are the donated tensors themselves."""
    params = make_params(4)
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-2))
    state = tx.init(params)
    ptrs = [x.data_ptr() for x in T.leaves((params, state[1][0].mu, state[1][0].nu))]
    new_p, new_s = optim.update_and_apply(tx, grads_like(params, 5), state, params, donate=True)
    assert [x.data_ptr() for x in T.leaves((new_p, new_s[1][0].mu, new_s[1][0].nu))] == ptrs


def test_donated_tree_with_a_leaf_twice_is_not_updated_twice():
    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(0))
    tx = optim.adam(1e-1)
    tied = {"a": w, "b": w}
    grads = {"a": torch.ones(40, 30), "b": torch.ones(40, 30)}
    ref, _ = optim.update_and_apply(tx, grads, tx.init(tied), tied)
    state = tx.init(tied)
    donated = {"a": w.clone(), "b": None}
    donated["b"] = donated["a"]
    out, _ = optim.update_and_apply(tx, grads, state, donated, donate=True)
    fctc.testing.assert_trees_allclose(out, ref, rtol=0, atol=0)


def test_donation_leaves_parameters_that_require_grad_alone():
    params = T.map(lambda p: p.clone().requires_grad_(True), make_params(5))
    tx = optim.adamw(1e-2)
    before = T.map(lambda p: p.detach().clone(), params)
    new_p, _ = optim.update_and_apply(tx, grads_like(params, 6), tx.init(params), params, donate=True)
    fctc.testing.assert_trees_allclose(T.map(torch.detach, params), before, rtol=0, atol=0)
    assert not any(torch.equal(a.detach(), b) for a, b in zip(T.leaves(new_p), T.leaves(before)))


def test_mixed_sizes_and_dtypes_with_two_threads():
    """With cpu_kernel="split", two threads send small leaves to the foreach path and large ones
    to the fused kernel; float64 leaves and a mixed-dtype leaf take the foreach path. Results
    match the two-call form."""
    torch.set_num_threads(2)
    params = {**make_params(6), "big": torch.randn(300, 300, dtype=torch.float64), "tiny": torch.randn(3)}
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(warmup, mu_dtype=torch.float64, cpu_kernel="split"))
    ref_p, ref_s = run(tx, params, 4, fused_apply=False)
    p, s = run(tx, params, 4, fused_apply=True, donate=True)
    fctc.testing.assert_trees_allclose(p, ref_p, rtol=2e-6, atol=1e-7)
    fctc.testing.assert_trees_allclose(s, ref_s, rtol=2e-6, atol=1e-7)


def test_non_finite_gradients_give_the_same_result_as_the_two_call_form():
    params = make_params(7)
    grads = grads_like(params, 8)
    grads["bn"]["weight"][3] = float("nan")
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-2))
    updates, ref_s = tx.update(grads, tx.init(params), params)
    ref_p = optim.apply_updates(params, updates)
    p, s = optim.update_and_apply(tx, grads, tx.init(params), params)
    fctc.testing.assert_trees_allclose(p, ref_p, rtol=2e-6, atol=1e-7, equal_nan=True)


def test_under_jit_equals_eager_and_donation_mutates_nothing():
    params = make_params(9)
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(warmup, weight_decay=1e-2))

    def step(params, state, grads):
        return optim.update_and_apply(tx, grads, state, params, donate=True)

    compiled = fctc.backend.jit(step)
    state = tx.init(params)
    grads = grads_like(params, 11)
    before = T.map(torch.clone, (params, state))
    got = compiled(params, state, grads)
    fctc.testing.assert_trees_allclose((params, state), before, rtol=0, atol=0)
    want = optim.update_and_apply(tx, grads, state, params)
    fctc.testing.assert_trees_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_bad_calls_are_clear_errors():
    params = make_params()
    tx = optim.adamw(1e-2)
    with pytest.raises(ValueError, match="parameters"):
        optim.update_and_apply(tx, grads_like(params, 1), tx.init(params), None)
    with pytest.raises(TypeError, match="GradientTransformation"):
        optim.update_and_apply(lambda g: g, grads_like(params, 1), (), params)
    with pytest.raises(ValueError, match="structure"):
        optim.update_and_apply(tx, {"conv": params["conv"]}, tx.init(params), params)


def test_docstring_examples_run():
    import doctest

    import fctc.optim.base

    result = doctest.testmod(fctc.optim.base, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 1 and result.failed == 0


@pytest.mark.parametrize("name", ["clip+adamw(schedule)", "adam(nesterov)", "sgd(momentum)", "adamw(mask)"])
def test_non_finite_updates_never_reach_donated_buffers(name):
    """A donated call with a NaN gradient returns the pure (NaN) result in fresh tensors and
    leaves the donated parameters and optimiser state holding their old values."""
    tx = TXS[name]()
    params = make_params(12)
    _, state = tx.update(grads_like(params, 13), tx.init(params), params)
    grads = grads_like(params, 14)
    grads["conv"]["weight"][0, 0, 0] = float("nan")
    want_p, want_s = optim.update_and_apply(tx, grads, state, params)
    old = T.map(torch.clone, (params, state))
    got_p, got_s = optim.update_and_apply(tx, grads, state, params, donate=True)
    fctc.testing.assert_trees_allclose((params, state), old, rtol=0, atol=0)
    fctc.testing.assert_trees_allclose((got_p, got_s), (want_p, want_s), rtol=0, atol=0, equal_nan=True)
