"""Fusion as types: what chain returns, how a clip's factor and a known norm travel, the CPU
kernel choice (cpu_kernel=), and the wrappers that forward fusion (inject_hyperparams) or not."""

import pytest
import torch

import fctc
import fctc.optim as optim
import fctc.optim._kernels as kernels
from fctc import tree as T
from fctc.testing import assert_trees_allclose, assert_trees_equal

pytestmark = pytest.mark.usefixtures("one_thread")


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "conv": {"weight": torch.randn(64, 32, 5, generator=g), "bias": torch.randn(64, generator=g)},
        "decoder": torch.randn(29, 64, 1, generator=g),
    }


def grads_like(params, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return T.map(lambda p: torch.randn(p.shape, generator=g) * scale, params)


def warmup(count):
    return 1e-2 * torch.clamp((count.to(torch.float32) + 1) / 4, max=1.0)


def count_fused_calls(monkeypatch):
    calls = []
    real = kernels._FUSED_ADAMW

    def counting(params, grads, *a, **k):
        calls.append([g.numel() for g in grads])
        return real(params, grads, *a, **k)

    monkeypatch.setattr(kernels, "_FUSED_ADAMW", counting)
    return calls


def test_transformation_types():
    clip = optim.clip_by_global_norm(1.0)
    assert isinstance(clip, optim.ScalingTransformation)
    assert isinstance(optim.adamw(1e-3), optim.FusedTransformation)
    assert isinstance(optim.adam(1e-3), optim.FusedTransformation)
    assert isinstance(optim.chain(clip, optim.adamw(1e-3)), optim.FusedTransformation)
    assert isinstance(optim.inject_hyperparams(optim.adamw)(1e-3), optim.FusedTransformation)
    # A chain is fused only when its last member is; masks and accumulation do not forward.
    for plain in (
        optim.chain(optim.adamw(1e-3), optim.scale(0.5)),
        optim.chain(clip, optim.sgd(0.1)),
        optim.masked(optim.adamw(1e-3), True),
        optim.MultiSteps(optim.adamw(1e-3), 2).gradient_transformation(),
        optim.apply_if_finite(optim.adamw(1e-3), 2),
        optim.scale_by_adam(),
    ):
        assert type(plain) is optim.GradientTransformation


def test_a_fused_update_takes_the_factor_into_its_kernel():
    params = make_params()
    g = grads_like(params, 1)
    factor = torch.tensor(0.25)
    for tx in (optim.adamw(1e-2, weight_decay=0.1), optim.chain(optim.adam(1e-2)),
               optim.inject_hyperparams(optim.adamw)(warmup)):
        state = tx.init(params)
        got, got_s = tx.update(g, state, params, scale=optim.GlobalScale(factor, None))
        want, want_s = tx.update(T.map(lambda x: x * factor, g), state, params)
        assert_trees_allclose((got, got_s), (want, want_s), rtol=1e-6, atol=1e-8)
        new_p, new_s = tx.apply(g, state, params, scale=optim.GlobalScale(factor, None))
        assert_trees_allclose(new_p, optim.apply_updates(params, want), rtol=2e-6, atol=1e-7)
        assert_trees_allclose(new_s, want_s, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_the_clip_factor_from_a_known_norm(norm_type, monkeypatch):
    """clip.factor(updates, norm) uses a given 2-norm instead of computing it; other p-norms
    are computed (a 2-norm does not give them)."""
    clip = optim.clip_by_global_norm(0.5, norm_type=norm_type)
    g = grads_like(make_params(), 2)
    norm = T.global_norm(g)
    want = clip.factor(g)
    calls = []
    real = fctc.tree.global_norm
    monkeypatch.setattr(fctc.tree, "global_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = clip.factor(g, norm)
    assert isinstance(got, optim.GlobalScale)
    assert_trees_equal(tuple(got), tuple(want))
    assert len(calls) == (0 if norm_type == 2.0 else 1)
    assert clip.factor({}) is None


def test_update_and_apply_computes_the_global_norm_once(monkeypatch):
    """The train step hands its grad norm to update_and_apply (norm=): a leading clip reuses it
    and the result is bit for bit the one without it."""
    params = make_params(3)
    g = grads_like(params, 4, scale=10.0)
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(warmup, weight_decay=1e-2))
    state = tx.init(params)
    want = optim.update_and_apply(tx, g, state, params)
    norm = T.global_norm(g)
    calls = []
    real = fctc.tree.global_norm
    monkeypatch.setattr(fctc.tree, "global_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = optim.update_and_apply(tx, g, state, params, norm=norm)
    assert calls == []
    assert_trees_equal(got, want)
    donated = optim.update_and_apply(tx, T.map(torch.clone, g), T.map(torch.clone, state),
                                     T.map(torch.clone, params), donate=True, norm=norm)
    assert calls == []  # the finite norm also proves the donated gradients finite
    assert_trees_equal(donated, want)


def test_a_norm_is_not_used_after_the_updates_change():
    """chain(scale, clip, adamw): the caller's norm is of the chain's input, which scale changes
    before the clip sees it; the chain drops it rather than clip by a stale norm."""
    params = make_params(5)
    g = grads_like(params, 6, scale=10.0)
    tx = optim.chain(optim.scale(0.5), optim.clip_by_global_norm(1.0), optim.adamw(1e-2))
    want = optim.update_and_apply(tx, g, tx.init(params), params)
    got = optim.update_and_apply(tx, g, tx.init(params), params, norm=T.global_norm(g))
    assert_trees_equal(got, want)


def test_nested_chains_forward_the_factor():
    params = make_params(7)
    g = grads_like(params, 8, scale=10.0)
    nested = optim.chain(optim.clip_by_global_norm(1.0), optim.chain(optim.clip_by_global_norm(0.5), optim.adamw(1e-2)))
    ref = optim.chain(optim.clip_by_global_norm(1.0), optim.clip_by_global_norm(0.5), optim.scale(1.0), optim.adamw(1e-2))
    for fused in (False, True):
        if fused:
            got = optim.update_and_apply(nested, g, nested.init(params), params)
            p, s = optim.update_and_apply(ref, g, ref.init(params), params)
            want = (p, (s[0], (s[1], s[3])))
        else:
            u, s = ref.update(g, ref.init(params), params)
            got = nested.update(g, nested.init(params), params)
            want = (u, (s[0], (s[1], s[3])))
        assert_trees_allclose(got, want, rtol=2e-6, atol=1e-7)


def test_inject_hyperparams_forwards_fusion_to_the_fused_kernel(monkeypatch):
    """chain(clip, inject_hyperparams(adamw)(schedule)) with static betas runs torch's fused CPU
    kernel and gives bit for bit chain(clip, adamw(schedule))'s iterates; its state logs the
    learning rate the last update used."""
    calls = count_fused_calls(monkeypatch)
    params = make_params(9)
    injected = optim.chain(
        optim.clip_by_global_norm(1.0),
        optim.inject_hyperparams(optim.adamw, static_args=("b1", "b2", "eps", "eps_root", "weight_decay"))(
            warmup, weight_decay=1e-2
        ),
    )
    plain = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(warmup, weight_decay=1e-2))
    p1, s1, p2, s2 = params, injected.init(params), params, plain.init(params)
    for i in range(3):
        g = grads_like(params, 20 + i, scale=3.0)
        p1, s1 = optim.update_and_apply(injected, g, s1, p1)
        p2, s2 = optim.update_and_apply(plain, g, s2, p2)
        assert float(optim.find_hyperparams(s1)["learning_rate"]) == pytest.approx(float(warmup(torch.tensor(i))))
    assert len(calls) == 6  # both ran torch's fused kernel, three updates each
    assert_trees_equal(p1, p2)
    assert_trees_equal(s1[1].inner_state[0], s2[1][0])


def test_find_hyperparams_looks_through_wrappers():
    params = make_params()
    tx = optim.MultiSteps(optim.chain(optim.clip_by_global_norm(1.0), optim.inject_hyperparams(optim.sgd)(0.3)), 2)
    hps = optim.find_hyperparams(tx.init(params))
    assert set(hps) == {"learning_rate"} and float(hps["learning_rate"]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        optim.find_hyperparams(optim.adamw(1e-3).init(params))


# --- the CPU kernel choice ------------------------------------------------------------------


def test_cpu_kernel_is_checked():
    for make in (optim.adam, optim.adamw):
        with pytest.raises(ValueError, match="cpu_kernel must be one of"):
            make(1e-3, cpu_kernel="fast")
    with pytest.raises(ValueError, match="cpu_kernel"):
        optim.scale_by_adam(cpu_kernel="gpu")


def test_default_rounding_does_not_depend_on_the_thread_count(monkeypatch):
    """The default kernel choice is the same for every leaf at any thread count, so the
    iterates are bit for bit the same with one thread and with two."""
    params = {**make_params(10), "tiny": torch.randn(3)}
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(warmup, weight_decay=1e-2))

    def run(threads):
        torch.set_num_threads(threads)
        p, s = params, tx.init(params)
        for i in range(3):
            p, s = optim.update_and_apply(tx, grads_like(params, 30 + i, 5.0), s, p)
        return p, s

    one = run(1)
    two = run(2)
    torch.set_num_threads(1)
    assert_trees_equal(one, two)


def test_split_kernel_sends_small_leaves_to_foreach_with_threads(monkeypatch):
    calls = count_fused_calls(monkeypatch)
    big = kernels.FUSED_MIN_ELEMENTS + 5
    params = {"big": torch.randn(big), "small": torch.randn(7)}
    g = {"big": torch.randn(big), "small": torch.randn(7)}
    split = optim.adamw(1e-2, weight_decay=0.1, cpu_kernel="split")
    ref = optim.adamw(1e-2, weight_decay=0.1, cpu_kernel="foreach")
    torch.set_num_threads(2)
    try:
        got = optim.update_and_apply(split, g, split.init(params), params)
    finally:
        torch.set_num_threads(1)
    assert calls == [[big]]  # the small leaf took the foreach path
    calls.clear()
    want = optim.update_and_apply(ref, g, ref.init(params), params)
    assert calls == []  # "foreach" never runs the fused kernel
    assert_trees_allclose(got, want, rtol=1e-5, atol=1e-7)
    optim.update_and_apply(split, g, split.init(params), params)  # one thread: every leaf fused
    assert calls == [[big, 7]]


# --- selective_transform and only_modules: one mechanism ------------------------------------


def test_selective_transform_takes_a_function_mask():
    params = make_params()
    frozen = {"conv": True, "decoder": False}
    a = optim.selective_transform(optim.adam(1e-2), freeze_mask=frozen)
    b = optim.selective_transform(optim.adam(1e-2), freeze_mask=lambda p: {k: k == "conv" for k in p})
    c = optim.only_modules(optim.adam(1e-2), ["decoder"])
    g = grads_like(params, 11)
    outs = [tx.update(g, tx.init(params), params) for tx in (a, b, c)]
    assert_trees_equal(outs[0], outs[1])
    assert_trees_equal(outs[0], outs[2])
    assert all(bool((x == 0).all()) for x in T.leaves(outs[0][0]["conv"]))


def test_no_dispatch_through_function_attributes():
    """Fusion is typed: nothing in fctc.optim looks transformations up with getattr or sets
    attributes on functions (the former fctc_apply / fctc_scaled_update / fctc_output_factor)."""
    import ast
    from pathlib import Path

    for path in sorted(Path(optim.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "getattr", f"{path.name}:{node.lineno}: getattr"
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    assert not (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                                and t.value.id != "self"), f"{path.name}:{node.lineno}: attribute set on {t.value.id}"
