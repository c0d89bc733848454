"""Parity of fctc.optim's aliases and clipping with torch.optim / torch.nn.utils over 100 steps.

The parameter tree has the shapes of a small QuartzNet-like network (depthwise and pointwise
convolution weights, batch-norm weight/bias, a linear decoder with bias). Gradients are drawn
from a fixed generator, the same for both sides; after 100 steps the parameters must agree to
float32 rounding: rtol 1e-5 and atol 1e-5 (per-step rounding differences of about one ulp,
accumulated over 100 steps). Adam-family tests run both the fused CPU
kernel path and the foreach path (the one used under torch.compile, on accelerators and with
tensor hyperparameters).
"""

import pytest
import torch

import fctc.optim as optim
import fctc.optim._kernels as kernels
from fctc import tree as T

STEPS = 100
SHAPES = {
    "conv": {"depthwise": (16, 1, 5), "pointwise": (24, 16, 1)},
    "bn": {"weight": (24,), "bias": (24,)},
    "block": {"depthwise": (24, 1, 7), "pointwise": (24, 24, 1), "bn_weight": (24,), "bn_bias": (24,)},
    "decoder": {"weight": (10, 24, 1), "bias": (10,)},
}


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return T.map(lambda s: torch.randn(s, generator=g) * 0.3, SHAPES, is_leaf=lambda x: isinstance(x, tuple))


def grad_stream(params, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    leaves, spec = T.flatten(params)
    for _ in range(STEPS):
        yield T.unflatten(spec, [torch.randn(p.shape, generator=g) * scale for p in leaves])


def run_fctc(tx, params, grads_iter):
    state = tx.init(params)
    for grads in grads_iter:
        updates, state = tx.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    return params, state


def run_torch(make_opt, params, grads_iter, scheduler=None, clip=None):
    leaves, spec = T.flatten(params)
    ps = [p.clone().requires_grad_(True) for p in leaves]
    opt = make_opt(ps)
    sched = scheduler(opt) if scheduler else None
    for grads in grads_iter:
        for p, g in zip(ps, T.leaves(grads)):
            p.grad = g.clone()
        if clip is not None:
            clip(ps)
        opt.step()
        if sched is not None:
            sched.step()
    return T.unflatten(spec, [p.detach() for p in ps])


def assert_close_trees(a, b, rtol=1e-5, atol=1e-5):
    la, sa = T.flatten(a)
    lb, sb = T.flatten(b)
    assert sa == sb
    for x, y in zip(la, lb):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["fused", "foreach"])
def adam_path(request, monkeypatch):
    if request.param == "foreach":
        monkeypatch.setattr(kernels, "_FUSED_ADAMW", None)
    else:  # route every leaf, even these small ones, through torch's fused CPU kernel
        monkeypatch.setattr(kernels, "FUSED_MIN_ELEMENTS", 0)
    return request.param


@pytest.mark.parametrize(
    "momentum,nesterov", [(None, False), (0.9, False), (0.9, True)], ids=["plain", "momentum", "nesterov"]
)
def test_sgd_matches_torch(momentum, nesterov):
    params = make_params()
    ours, _ = run_fctc(optim.sgd(0.05, momentum=momentum, nesterov=nesterov), params, grad_stream(params))
    ref = run_torch(
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=momentum or 0.0, nesterov=nesterov, foreach=True),
        params,
        grad_stream(params),
    )
    assert_close_trees(ours, ref)


def test_adam_matches_torch(adam_path):
    params = make_params()
    ours, state = run_fctc(optim.adam(1e-2, b1=0.8, b2=0.99, eps=1e-6), params, grad_stream(params))
    ref = run_torch(
        lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, foreach=True),
        params,
        grad_stream(params),
    )
    assert_close_trees(ours, ref)
    assert int(state[0].count) == STEPS


def test_adamw_with_schedule_matches_torch(adam_path):
    """optax's adamw decays by lr * wd * p, as torch.optim.AdamW; lr follows a warm-up."""
    params = make_params()

    def schedule(count):
        return 1e-2 * torch.clamp((count.to(torch.float32) + 1) / 20, max=1.0)

    ours, state = run_fctc(optim.adamw(schedule, weight_decay=0.1), params, grad_stream(params))
    ref = run_torch(
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, foreach=True),
        params,
        grad_stream(params),
        scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda c: min(1.0, (c + 1) / 20)),
    )
    assert_close_trees(ours, ref)
    assert int(state[-1].count) == STEPS


def test_adamw_tensor_hyperparameters_match_torch():
    """0-d tensor hyperparameters (what inject_hyperparams passes) take the foreach path."""
    params = make_params()
    tx = optim.adamw(
        torch.tensor(1e-2), b1=torch.tensor(0.9), b2=torch.tensor(0.999), eps=torch.tensor(1e-8),
        weight_decay=torch.tensor(0.05),
    )
    ours, _ = run_fctc(tx, params, grad_stream(params))
    ref = run_torch(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05), params, grad_stream(params))
    assert_close_trees(ours, ref)


@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centered"])
@pytest.mark.parametrize("momentum", [None, 0.9], ids=["nomomentum", "momentum"])
def test_rmsprop_matches_torch(centered, momentum):
    """torch's RMSprop adds eps outside the root: optax's eps_in_sqrt=False."""
    params = make_params()
    tx = optim.rmsprop(1e-3, decay=0.99, eps=1e-8, eps_in_sqrt=False, centered=centered, momentum=momentum)
    ours, _ = run_fctc(tx, params, grad_stream(params))
    ref = run_torch(
        lambda ps: torch.optim.RMSprop(
            ps, lr=1e-3, alpha=0.99, eps=1e-8, centered=centered, momentum=momentum or 0.0, foreach=True
        ),
        params,
        grad_stream(params),
    )
    assert_close_trees(ours, ref)


@pytest.mark.parametrize("norm_type", [2.0, float("inf"), 1.0])
def test_clip_then_adamw_matches_torch(norm_type, adam_path):
    """chain(clip_by_global_norm, adamw) against clip_grad_norm_ + AdamW.

    torch scales by min(1, max_norm / (norm + 1e-6)), optax by max_norm / norm when
    norm >= max_norm: a relative difference of 1e-6 / norm per step, far below the tolerance.
    """
    params = make_params()
    tx = optim.chain(optim.clip_by_global_norm(1.0, norm_type=norm_type), optim.adamw(1e-2, weight_decay=1e-2))
    ours, _ = run_fctc(tx, params, grad_stream(params, scale=3.0))
    ref = run_torch(
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2, foreach=True),
        params,
        grad_stream(params, scale=3.0),
        clip=lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0, norm_type=norm_type),
    )
    assert_close_trees(ours, ref)


@pytest.mark.parametrize("norm_type", [2.0, float("inf"), 3.0])
def test_clip_by_global_norm_matches_clip_grad_norm(norm_type):
    """One clipping of gradients well above the threshold: relative agreement 2e-6
    (torch's extra 1e-6 in the denominator), gradients below it pass unchanged in both."""
    params = make_params()
    for scale, max_norm in [(5.0, 1.0), (1e-3, 10.0)]:
        grads = next(grad_stream(params, seed=3, scale=scale))
        out, _ = optim.clip_by_global_norm(max_norm, norm_type).update(grads, optim.EmptyState())
        leaves = [torch.zeros_like(g).requires_grad_(True) for g in T.leaves(grads)]
        for p, g in zip(leaves, T.leaves(grads)):
            p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(leaves, max_norm, norm_type=norm_type)
        torch.testing.assert_close(T.global_norm(grads, norm_type), total, rtol=1e-6, atol=0)
        for o, r in zip(T.leaves(out), leaves):
            torch.testing.assert_close(o, r.grad, rtol=2e-6, atol=1e-9)
