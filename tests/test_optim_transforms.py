"""fctc.optim.transforms and aliases against optax's documented formulas, written out here.

Also: purity, tensor hyperparameters, None leaves and empty trees, mixed dtypes, cache blocking,
fused and foreach paths agreeing, and one small compiled step that must not recompile.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fctc.optim as optim
import fctc.optim._kernels as kernels
from fctc import backend
from fctc import tree as T


pytestmark = pytest.mark.usefixtures("one_thread")


def make_params(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g, dtype=dtype),
        "b": torch.randn(3, generator=g, dtype=dtype),
        "sub": {"k": torch.randn(2, 1, 5, generator=g, dtype=dtype)},
    }


def grads_like(params, seed):
    g = torch.Generator().manual_seed(seed)
    return T.map(lambda p: torch.randn(p.shape, generator=g, dtype=p.dtype), params)


def close(a, b, rtol=1e-6, atol=1e-7):
    la, sa = T.flatten(a)
    lb, sb = T.flatten(b)
    assert sa == sb, (sa, sb)
    for x, y in zip(la, lb):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def snapshot(tree):
    return T.map(lambda x: x.clone(), tree)


def run(tx, params, steps=3, seed=10):
    state = tx.init(params)
    outs = []
    for i in range(steps):
        u, state = tx.update(grads_like(params, seed + i), state, params)
        outs.append(u)
    return outs, state


# ----------------------------------------------------------------------------- scaling


def test_scale_multiplies():
    p = make_params()
    g = grads_like(p, 1)
    u, s = optim.scale(0.5).update(g, optim.scale(0.5).init(p))
    close(u, T.map(lambda x: 0.5 * x, g))
    assert s == optim.ScaleState()


def test_scale_by_schedule_uses_count_then_increments():
    seen = []

    def sched(count):
        seen.append(int(count))
        return 0.1 * (count.to(torch.float32) + 1)

    tx = optim.scale_by_schedule(sched)
    p = make_params()
    state = tx.init(p)
    assert state.count.dtype == torch.int32 and int(state.count) == 0
    for i in range(3):
        g = grads_like(p, i)
        u, state = tx.update(g, state)
        close(u, T.map(lambda x: 0.1 * (i + 1) * x, g))
    assert seen == [0, 1, 2] and int(state.count) == 3


@pytest.mark.parametrize("flip", [True, False])
def test_scale_by_learning_rate(flip):
    p = make_params()
    g = grads_like(p, 1)
    sign = -1.0 if flip else 1.0
    tx = optim.scale_by_learning_rate(0.3, flip_sign=flip)
    u, s = tx.update(g, tx.init(p))
    close(u, T.map(lambda x: sign * 0.3 * x, g))
    assert s == optim.EmptyState()
    tx = optim.scale_by_learning_rate(lambda c: 0.3 + 0 * c.to(torch.float32), flip_sign=flip)
    u, s = tx.update(g, tx.init(p))
    close(u, T.map(lambda x: sign * 0.3 * x, g))
    assert isinstance(s, optim.ScaleByScheduleState) and int(s.count) == 1


def test_safe_int32_increment_saturates():
    top = torch.tensor(2**31 - 1, dtype=torch.int32)
    assert int(optim.safe_int32_increment(top)) == 2**31 - 1
    assert int(optim.safe_int32_increment(torch.tensor(5, dtype=torch.int32))) == 6


# ----------------------------------------------------------------------------- adam


def adam_reference(grads_seq, b1, b2, eps, eps_root=0.0, nesterov=False):
    """optax's scale_by_adam written out with float64 bookkeeping per leaf."""
    mu = nu = None
    outs = []
    for t, g in enumerate(grads_seq, start=1):
        g = g.double()
        mu = (1 - b1) * g + (b1 * mu if mu is not None else 0)
        nu = (1 - b2) * g * g + (b2 * nu if nu is not None else 0)
        if nesterov:
            mu_hat = b1 * mu / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            mu_hat = mu / (1 - b1**t)
        nu_hat = nu / (1 - b2**t)
        outs.append(mu_hat / (torch.sqrt(nu_hat + eps_root) + eps))
    return outs, mu, nu


@pytest.mark.parametrize("path", ["fused", "foreach"])
@pytest.mark.parametrize(
    "kw",
    [{}, {"b1": 0.5, "b2": 0.9, "eps": 1e-3}, {"eps_root": 1e-4}, {"nesterov": True}],
    ids=["default", "hyper", "eps_root", "nesterov"],
)
def test_scale_by_adam_formula(kw, path, monkeypatch):
    if path == "foreach":
        monkeypatch.setattr(kernels, "_FUSED_ADAMW", None)
    else:
        monkeypatch.setattr(kernels, "FUSED_MIN_ELEMENTS", 0)
    p = make_params()
    outs, state = run(optim.scale_by_adam(**kw), p, steps=4)
    full = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, **kw}
    for path_leaf in ["w", "b"]:
        seq = [grads_like(p, 10 + i)[path_leaf] for i in range(4)]
        ref, mu, nu = adam_reference(seq, full["b1"], full["b2"], full["eps"], full.get("eps_root", 0.0), full.get("nesterov", False))
        for i in range(4):
            torch.testing.assert_close(outs[i][path_leaf], ref[i].float(), rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(state.mu[path_leaf], mu.float(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(state.nu[path_leaf], nu.float(), rtol=1e-5, atol=1e-7)
    assert state.count.dtype == torch.int32 and int(state.count) == 4


def test_scale_by_adam_mu_dtype_stores_first_moment_in_that_dtype():
    p = make_params()
    tx = optim.scale_by_adam(mu_dtype=torch.bfloat16)
    outs, state = run(tx, p, steps=2)
    assert all(m.dtype == torch.bfloat16 for m in T.leaves(state.mu))
    assert all(v.dtype == torch.float32 for v in T.leaves(state.nu))
    ref, _ = run(optim.scale_by_adam(), p, steps=2)
    close(outs[0], ref[0], rtol=1e-5, atol=1e-6)  # first step identical up to rounding
    close(outs[1], ref[1], rtol=2e-2, atol=2e-2)  # then mu went through bfloat16


def test_fused_and_foreach_paths_agree_and_fused_is_used(monkeypatch):
    calls = []
    real = kernels._FUSED_ADAMW

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    p = {"big": torch.randn(kernels.FUSED_MIN_ELEMENTS + 5), "small": torch.randn(7)}
    monkeypatch.setattr(kernels, "_FUSED_ADAMW", counting)
    torch.set_num_threads(2)  # with cpu_kernel="split": big leaf fused, small leaf foreach
    try:
        fused, fs = run(optim.adamw(1e-2, weight_decay=0.1, cpu_kernel="split"), p, steps=3)
    finally:
        torch.set_num_threads(1)
    assert calls, "the fused CPU kernel was not used"
    monkeypatch.setattr(kernels, "_FUSED_ADAMW", None)
    plain, ps = run(optim.adamw(1e-2, weight_decay=0.1), p, steps=3)
    for a, b in zip(fused, plain):  # updates are ~1e-2 (the learning rate): 1e-7 is rounding
        close(a, b, rtol=1e-5, atol=1e-7)
    close(fs, ps, rtol=1e-5, atol=1e-7)


def test_adam_aliases_equal_optax_chains():
    """adam/adamw are fused, but equal optax's chains and keep their state layout."""
    p = make_params()
    sched = lambda c: 1e-2 / (1.0 + c.to(torch.float32))  # noqa: E731
    pairs = [
        (optim.adam(sched), optim.chain(optim.scale_by_adam(), optim.scale_by_learning_rate(sched))),
        (
            optim.adamw(0.01, weight_decay=0.3),
            optim.chain(optim.scale_by_adam(), optim.add_decayed_weights(0.3), optim.scale_by_learning_rate(0.01)),
        ),
        (
            optim.adamw(sched, weight_decay=0.3, mask={"w": True, "b": False, "sub": True}),
            optim.chain(
                optim.scale_by_adam(),
                optim.add_decayed_weights(0.3, mask={"w": True, "b": False, "sub": True}),
                optim.scale_by_learning_rate(sched),
            ),
        ),
    ]
    for fused, chained in pairs:
        a, sa = run(fused, p, steps=3)
        b, sb = run(chained, p, steps=3)
        for x, y in zip(a, b):
            close(x, y, rtol=1e-5, atol=1e-9)
        close(sa, sb, rtol=1e-5, atol=1e-9)
        assert type(sa[-1]) is type(sb[-1])


def test_adamw_callable_mask_and_needs_params():
    p = make_params()
    tx = optim.adamw(0.1, weight_decay=1.0, mask=lambda t: T.map(lambda x: x.ndim > 1, t))
    g = T.zeros_like(p)
    u, _ = tx.update(g, tx.init(p), p)
    torch.testing.assert_close(u["b"], torch.zeros(3))  # no decay, zero gradient
    torch.testing.assert_close(u["w"], -0.1 * p["w"])
    with pytest.raises(ValueError, match="params"):
        tx.update(g, tx.init(p))


# ----------------------------------------------------------------------------- rms / stddev


@pytest.mark.parametrize("eps_in_sqrt", [True, False])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_scale_by_rms_formula(eps_in_sqrt, bias_correction):
    p = make_params()
    decay, eps, init = 0.8, 1e-3, 0.1
    tx = optim.scale_by_rms(decay, eps, initial_scale=init, eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction)
    outs, state = run(tx, p, steps=3)
    nu = torch.full((3,), init, dtype=torch.float64)
    for t in range(1, 4):
        g = grads_like(p, 9 + t)["b"].double()
        nu = (1 - decay) * g * g + decay * nu
        nu_hat = nu / (1 - decay**t) if bias_correction else nu
        ref = g / torch.sqrt(nu_hat + eps) if eps_in_sqrt else g / (torch.sqrt(nu_hat) + eps)
        torch.testing.assert_close(outs[t - 1]["b"], ref.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.nu["b"], nu.float(), rtol=1e-5, atol=1e-7)
    if bias_correction:
        assert isinstance(state, optim.ScaleByRmsWithCountState) and int(state.count) == 3
    else:
        assert isinstance(state, optim.ScaleByRmsState)


@pytest.mark.parametrize("eps_in_sqrt", [True, False])
def test_scale_by_stddev_formula(eps_in_sqrt):
    p = make_params()
    decay, eps = 0.7, 1e-2
    outs, state = run(optim.scale_by_stddev(decay, eps, eps_in_sqrt=eps_in_sqrt), p, steps=3)
    mu = torch.zeros(3, dtype=torch.float64)
    nu = torch.zeros(3, dtype=torch.float64)
    for t in range(1, 4):
        g = grads_like(p, 9 + t)["b"].double()
        mu = (1 - decay) * g + decay * mu
        nu = (1 - decay) * g * g + decay * nu
        var = nu - mu * mu
        ref = g / torch.sqrt(var + eps) if eps_in_sqrt else g / (torch.sqrt(var) + eps)
        torch.testing.assert_close(outs[t - 1]["b"], ref.float(), rtol=1e-4, atol=1e-5)
    assert isinstance(state, optim.ScaleByRStdDevState)
    _, state = run(optim.scale_by_stddev(bias_correction=True), p, steps=2)
    assert isinstance(state, optim.ScaleByRStdDevWithCountState) and int(state.count) == 2


# ----------------------------------------------------------------------------- trace / decay


@pytest.mark.parametrize("nesterov", [False, True])
def test_trace_formula(nesterov):
    p = make_params()
    outs, state = run(optim.trace(0.9, nesterov=nesterov), p, steps=3)
    tr = torch.zeros(4, 3)
    for t in range(3):
        g = grads_like(p, 10 + t)["w"]
        tr = g + 0.9 * tr
        ref = g + 0.9 * tr if nesterov else tr
        torch.testing.assert_close(outs[t]["w"], ref)
    torch.testing.assert_close(state.trace["w"], tr)


def test_trace_accumulator_dtype():
    p = make_params()
    _, state = run(optim.trace(0.5, accumulator_dtype=torch.bfloat16), p, steps=2)
    assert all(t.dtype == torch.bfloat16 for t in T.leaves(state.trace))


def test_add_decayed_weights_formula_and_mask():
    p = make_params()
    g = grads_like(p, 1)
    tx = optim.add_decayed_weights(0.1)
    u, _ = tx.update(g, tx.init(p), p)
    close(u, T.map(lambda a, b: a + 0.1 * b, g, p))
    mask = {"w": True, "b": False, "sub": {"k": True}}
    tx = optim.add_decayed_weights(0.1, mask=mask)
    u, _ = tx.update(g, tx.init(p), p)
    torch.testing.assert_close(u["b"], g["b"])
    torch.testing.assert_close(u["w"], g["w"] + 0.1 * p["w"])
    with pytest.raises(ValueError, match="parameters"):
        optim.add_decayed_weights(0.1).update(g, optim.EmptyState())


# ----------------------------------------------------------------------------- contracts


def all_transforms():
    return {
        "scale": optim.scale(0.5),
        "scale_by_schedule": optim.scale_by_schedule(lambda c: 0.1 * (c.to(torch.float32) + 1)),
        "scale_by_adam": optim.scale_by_adam(),
        "scale_by_adam_nesterov": optim.scale_by_adam(nesterov=True, eps_root=1e-8),
        "scale_by_rms": optim.scale_by_rms(bias_correction=True),
        "scale_by_stddev": optim.scale_by_stddev(),
        "trace": optim.trace(0.9, nesterov=True),
        "add_decayed_weights": optim.add_decayed_weights(0.1),
        "sgd": optim.sgd(0.1, momentum=0.9),
        "adam": optim.adam(1e-3),
        "adamw": optim.adamw(lambda c: 1e-3 * (c.to(torch.float32) + 1), weight_decay=0.1),
        "rmsprop": optim.rmsprop(1e-3, centered=True, momentum=0.9),
    }


@pytest.mark.parametrize("name", list(all_transforms()))
def test_purity_and_determinism(name):
    tx = all_transforms()[name]
    p = make_params()
    g = grads_like(p, 3)
    state = tx.init(p)
    state = tx.update(grads_like(p, 4), state, p)[1]  # a non-trivial state
    before = (snapshot(p), snapshot(g), snapshot(state))
    u1, s1 = tx.update(g, state, p)
    u2, s2 = tx.update(g, state, p)
    close((p, g, state), before, rtol=0, atol=0)
    close(u1, u2, rtol=0, atol=0)
    close(s1, s2, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["adam", "adamw", "scale_by_adam"])
def test_fused_path_is_pure(name, monkeypatch):
    monkeypatch.setattr(kernels, "FUSED_MIN_ELEMENTS", 0)
    test_purity_and_determinism(name)


@pytest.mark.parametrize("name", list(all_transforms()))
def test_none_leaves_and_empty_trees(name):
    tx = all_transforms()[name]
    p = make_params()
    g = grads_like(p, 3)
    g_none = {**g, "b": None}
    u, _ = tx.update(g_none, tx.init(p), p)
    assert u["b"] is None
    full, _ = tx.update(g, tx.init(p), p)
    close(u["w"], full["w"], rtol=0, atol=0)
    empty_u, empty_s = tx.update({}, tx.init({}), {})
    assert empty_u == {}
    tx.update({}, empty_s, {})  # the state of an empty tree is usable again


@pytest.mark.parametrize("name", list(all_transforms()))
def test_mixed_float32_float64_leaves(name):
    tx = all_transforms()[name]
    p = {"a": make_params()["w"], "b": make_params(dtype=torch.float64)["w"]}
    outs, state = run(tx, p, steps=2)
    assert outs[-1]["a"].dtype == torch.float32 and outs[-1]["b"].dtype == torch.float64
    only64, _ = run(tx, {"a": p["a"].double(), "b": p["b"]}, steps=2)
    torch.testing.assert_close(outs[-1]["b"], only64[-1]["b"], rtol=0, atol=0)
    torch.testing.assert_close(outs[-1]["a"].double(), only64[-1]["a"], rtol=1e-4, atol=1e-5)


def test_tensor_hyperparameters_equal_float_ones():
    p = make_params()
    t = torch.tensor
    pairs = [
        (optim.scale_by_adam(0.8, 0.99, 1e-6), optim.scale_by_adam(t(0.8), t(0.99), t(1e-6))),
        (optim.scale_by_rms(0.8, 1e-3, 0.1), optim.scale_by_rms(t(0.8), t(1e-3), t(0.1))),
        (optim.trace(0.9, nesterov=True), optim.trace(t(0.9), nesterov=True)),
        (optim.add_decayed_weights(0.2), optim.add_decayed_weights(t(0.2))),
        (optim.adamw(1e-2, weight_decay=0.2), optim.adamw(t(1e-2), weight_decay=t(0.2))),
        (optim.sgd(0.1, momentum=0.9), optim.sgd(t(0.1), momentum=t(0.9))),
        (optim.clip(0.5), optim.clip(t(0.5))),
        (optim.clip_by_global_norm(1.0), optim.clip_by_global_norm(t(1.0))),
    ]
    for a, b in pairs:
        ua, sa = run(a, p, steps=3)
        ub, sb = run(b, p, steps=3)
        for x, y in zip(ua, ub):
            close(x, y, rtol=2e-6, atol=1e-7)


def test_blocking_gives_identical_results(monkeypatch):
    """CPU cache blocking only changes the order in which leaves are processed."""
    p = {f"l{i}": torch.randn(100 + i) for i in range(12)}
    for name in ["adamw", "rmsprop", "trace", "scale_by_adam_nesterov"]:
        monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", 1 << 30)
        whole, sw = run(all_transforms()[name], p, steps=2)
        monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", 250)
        assert len(kernels.blocks(T.leaves(p))) > 3
        blocked, sb = run(all_transforms()[name], p, steps=2)
        close(whole, blocked, rtol=0, atol=0)
        close(sw, sb, rtol=0, atol=0)


def test_state_structure_mismatch_is_explained():
    p = make_params()
    tx = optim.scale_by_adam()
    state = tx.init({"w": p["w"]})
    with pytest.raises(ValueError, match="structure"):
        tx.update(grads_like(p, 1), state)


@given(
    st.lists(st.floats(-1e3, 1e3, allow_subnormal=False).filter(lambda v: abs(v) > 1e-3), min_size=1, max_size=16),
    st.floats(0.0, 0.99),
)
def test_first_adam_step_is_the_gradient_sign(values, b1):
    """Property: from a fresh state, bias correction makes the first update g / (|g| + eps)."""
    g = torch.tensor(values, dtype=torch.float32)
    tx = optim.scale_by_adam(b1=b1)
    u, _ = tx.update({"g": g}, tx.init({"g": torch.zeros_like(g)}))
    torch.testing.assert_close(u["g"], g / (g.abs() + 1e-8), rtol=1e-5, atol=1e-6)


@given(st.floats(1e-4, 10.0), st.integers(0, 5))
def test_sgd_step_is_minus_lr_times_gradient(lr, seed):
    p = make_params(seed)
    g = grads_like(p, seed + 1)
    tx = optim.sgd(lr)
    u, _ = tx.update(g, tx.init(p))
    close(u, T.map(lambda x: -lr * x, g), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- compiled


def test_compiled_adamw_step_with_schedule_never_recompiles():
    """Small and targeted (dynamo only, aot_eager backend): counts and schedule values are
    tensors, so three steps share one compiled graph and match the eager step."""
    p = make_params()
    tx = optim.chain(
        optim.clip_by_global_norm(1.0),
        optim.adamw(lambda c: 1e-2 * torch.clamp((c.to(torch.float32) + 1) / 5, max=1.0), weight_decay=0.1),
    )

    def step(params, state, grads):
        u, state = tx.update(grads, state, params)
        return optim.apply_updates(params, u), state

    compiled = backend.jit(step, backend="aot_eager")
    eager_p, eager_s = p, tx.init(p)
    comp_p, comp_s = p, tx.init(p)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(3):
            g = grads_like(p, 20 + i)
            comp_p, comp_s = compiled(comp_p, comp_s, g)
            eager_p, eager_s = step(eager_p, eager_s, g)
    close(comp_p, eager_p, rtol=1e-6, atol=1e-7)
    assert int(comp_s[1][0].count) == 3 and math.isfinite(float(T.global_norm(comp_p)))
