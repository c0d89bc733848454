"""fctc.backend: JAX-style transforms agree with torch.autograd, never mutate, fail clearly."""

import pytest
import torch

import fctc
from fctc import backend
from fctc import testing as ft


def make_params(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return {
        "layer": {"weight": torch.randn(3, 4, generator=gen, dtype=dtype),
                  "bias": torch.randn(3, generator=gen, dtype=dtype)},
        "scale": torch.randn((), generator=gen, dtype=dtype),
    }


def loss_fn(params, x, target):
    h = torch.tanh(x @ params["layer"]["weight"].T + params["layer"]["bias"])
    return ((h * params["scale"] - target) ** 2).mean()


def autograd_reference(fn, args, argnums):
    """Gradients by plain ``loss.backward()`` on fresh leaf copies."""
    copies = [fctc.tree.map(lambda t: t.detach().clone().requires_grad_(True), a) for a in args]
    value = fn(*copies)
    value.backward()
    grads = [fctc.tree.map(lambda t: t.grad, copies[n]) for n in argnums]
    return value.detach(), grads


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    return x, torch.randn(5, 3, generator=gen, dtype=torch.float64)


# ----------------------------------------------------------------------------- value_and_grad


def test_value_and_grad_matches_autograd(batch):
    params, (x, y) = make_params(), batch
    value, grads = ft.assert_pure(backend.value_and_grad(loss_fn), params, x, y)
    ref_value, (ref_grads,) = autograd_reference(loss_fn, [params, x, y], [0])
    ft.assert_trees_equal(value, ref_value)
    ft.assert_trees_allclose(grads, ref_grads, rtol=1e-12, atol=1e-14)
    assert value.grad_fn is None and value.shape == ()
    assert all(not g.requires_grad for g in fctc.tree.leaves(grads))
    assert all(not p.requires_grad for p in fctc.tree.leaves(params))


@pytest.mark.parametrize("argnums", [1, -2, (0, 1), (2, 0), (0, 1, 2)])
def test_value_and_grad_argnums(batch, argnums):
    args = [make_params(), *batch]
    value, grads = backend.value_and_grad(loss_fn, argnums=argnums)(*args)
    nums = (argnums,) if isinstance(argnums, int) else argnums
    _, ref = autograd_reference(loss_fn, args, [n % 3 for n in nums])
    if isinstance(argnums, int):
        assert isinstance(grads, torch.Tensor)
        ft.assert_trees_allclose(grads, ref[0], rtol=1e-12, atol=1e-14)
    else:
        assert isinstance(grads, tuple) and len(grads) == len(argnums)
        ft.assert_trees_allclose(grads, tuple(ref), rtol=1e-12, atol=1e-14)


def test_value_and_grad_has_aux_and_kwargs(batch):
    x, y = batch

    def fn(params, x, *, target):
        loss = loss_fn(params, x, target)
        return loss, {"loss": loss, "h": x @ params["layer"]["weight"].T, "tag": "step"}

    (value, aux), grads = backend.value_and_grad(fn, has_aux=True)(make_params(), x, target=y)
    ft.assert_trees_equal(value, aux["loss"])
    assert aux["tag"] == "step" and aux["h"].grad_fn is None and aux["loss"].grad_fn is None
    _, (ref,) = autograd_reference(lambda p: loss_fn(p, x, y), [make_params()], [0])
    ft.assert_trees_allclose(grads, ref, rtol=1e-12, atol=1e-14)
    grads2, aux2 = backend.grad(fn, has_aux=True)(make_params(), x, target=y)
    ft.assert_trees_equal(grads2, grads)
    ft.assert_trees_equal(aux2, aux)


def test_value_and_grad_unused_leaves_and_constant_functions_get_zeros():
    params = {"used": torch.ones(2), "unused": torch.full((3,), 5.0)}
    value, grads = backend.value_and_grad(lambda p: (p["used"] ** 2).sum())(params)
    ft.assert_trees_equal(grads, {"used": torch.full((2,), 2.0), "unused": torch.zeros(3)})
    value, grads = backend.value_and_grad(lambda p: torch.tensor(3.0))(params)
    ft.assert_trees_equal(value, torch.tensor(3.0))
    ft.assert_trees_equal(grads, fctc.tree.zeros_like(params))


def test_vjp_matches_autograd_and_may_be_called_again(batch):
    params = make_params()
    value, grads = autograd_reference(loss_fn, (params, *batch), (0,))
    out, vjp_fn, aux = backend.vjp(lambda p: (loss_fn(p, *batch), {"aux": p["scale"] * 2}), params, has_aux=True)
    torch.testing.assert_close(out, value)
    assert not out.requires_grad and not aux["aux"].requires_grad
    for _ in range(2):  # the graph is kept for further calls
        (got,) = vjp_fn(torch.ones_like(out))
        ft.assert_trees_allclose(got, grads[0])
    (half,) = vjp_fn(torch.full_like(out, 0.5))
    ft.assert_trees_allclose(half, fctc.tree.map(lambda g: g * 0.5, grads[0]))


def test_vjp_last_call_frees_the_graph(batch):
    """``retain_graph=False`` gives the same gradients and frees the graph: a further call
    fails the way autograd does, instead of silently returning something."""
    params = make_params()
    out, vjp_fn = backend.vjp(lambda p: loss_fn(p, *batch), params)
    (kept,) = vjp_fn(torch.ones_like(out))
    (last,) = vjp_fn(torch.ones_like(out), retain_graph=False)
    ft.assert_trees_equal(last, kept)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        vjp_fn(torch.ones_like(out))


def _two_losses(params, x, target):
    h = torch.tanh(x @ params["layer"]["weight"].T + params["layer"]["bias"])
    return {"fit": ((h - target) ** 2).mean(), "scale": (params["scale"] * h).mean()}


def test_grad_sum_adds_weighted_gradients_without_touching_the_params(batch):
    x, y = batch
    params = make_params()
    acc = backend.GradSum(params)
    weights = (0.25, 0.75)
    for w, rows in zip(weights, (slice(0, 2), slice(2, 5))):
        out, aux = acc.add(
            lambda p, rows=rows: ({"loss": loss_fn(p, x[rows], y[rows])}, {"h": p["scale"] * 2}),
            torch.tensor(w, dtype=torch.float64),
        )
        assert not out["loss"].requires_grad and not aux["h"].requires_grad
    want = autograd_reference(
        lambda p: 0.25 * loss_fn(p, x[:2], y[:2]) + 0.75 * loss_fn(p, x[2:], y[2:]), [params], [0]
    )[1][0]
    ft.assert_trees_allclose(acc.total(), want, rtol=1e-12, atol=1e-14)
    assert all(p.grad is None and not p.requires_grad for p in fctc.tree.leaves(params))
    # every leaf is one of the function's inputs, even an unused one: zeros there
    unused = backend.GradSum({"used": torch.ones(2), "unused": torch.ones(3)})
    unused.add(lambda p: ({"loss": p["used"].sum()}, None), torch.tensor(1.0))
    unused.add(lambda p: ({"loss": torch.tensor(2.0)}, None), torch.tensor(1.0))  # no gradient
    ft.assert_trees_equal(unused.total(), {"used": torch.ones(2), "unused": torch.zeros(3)})
    with pytest.raises(TypeError, match="floating tensors"):
        backend.GradSum({"steps": torch.tensor(3)})


def test_grad_sum_routes_each_output_to_its_labelled_leaves(batch):
    """A leaf labelled ``name`` sums only output ``name``'s gradients (routing); the sums
    are those of separate differentiations, and a label no output has gets zeros."""
    x, y = batch
    params = make_params()
    labels = {"layer": {"weight": "fit", "bias": "scale"}, "scale": "scale"}
    acc = backend.GradSum(params, labels)
    for rows in (slice(0, 2), slice(2, 5)):
        acc.add(lambda p, rows=rows: (_two_losses(p, x[rows], y[rows]), ()), torch.tensor(0.5, dtype=torch.float64))
    total = acc.total()

    def part(name):
        fn = lambda p: sum(0.5 * _two_losses(p, x[r], y[r])[name] for r in (slice(0, 2), slice(2, 5)))  # noqa: E731
        return backend.grad(fn)(params)

    fit, scale = part("fit"), part("scale")
    ft.assert_trees_allclose(total["layer"]["weight"], fit["layer"]["weight"], rtol=1e-12, atol=1e-14)
    ft.assert_trees_allclose(total["layer"]["bias"], scale["layer"]["bias"], rtol=1e-12, atol=1e-14)
    ft.assert_trees_allclose(total["scale"], scale["scale"], rtol=1e-12, atol=1e-14)
    lonely = backend.GradSum(params, fctc.tree.map(lambda _: "other", params))
    lonely.add(lambda p: (_two_losses(p, x, y), ()), torch.tensor(1.0, dtype=torch.float64))
    ft.assert_trees_equal(lonely.total(), fctc.tree.zeros_like(params))


def test_grad_sum_traced_equals_eager(batch):
    x, y = batch
    params = make_params()
    labels = {"layer": {"weight": "fit", "bias": "scale"}, "scale": "fit"}

    paths = []

    def sums(params, x, y):
        acc = backend.GradSum(params, labels)
        paths.append(acc._tracing)  # which way it summed
        for rows in (slice(0, 2), slice(2, 5)):
            acc.add(lambda p, rows=rows: (_two_losses(p, x[rows], y[rows]), ()), torch.tensor(0.5, dtype=torch.float64))
        return acc.total()

    torch._dynamo.reset()
    traced = torch.compile(sums, backend="eager")(params, x, y)
    ft.assert_trees_allclose(traced, sums(params, x, y), rtol=1e-12, atol=1e-14)
    assert paths == [True, False]


def test_differentiable_copies_are_used_as_they_are_with_the_same_gradients(batch):
    params = make_params()
    copies = backend.differentiable(params)
    leaves, originals = fctc.tree.leaves(copies), fctc.tree.leaves(params)
    assert all(c.requires_grad and c.is_leaf for c in leaves)
    assert not any(p.requires_grad for p in originals)  # the originals are untouched
    assert all(c.data_ptr() == p.data_ptr() for c, p in zip(leaves, originals))  # no data copied
    assert backend.differentiable(copies) is copies  # already differentiable: nothing rebuilt
    want = backend.grad(loss_fn)(params, *batch)
    for _ in range(2):  # one set of copies serves several differentiations
        ft.assert_trees_equal(backend.grad(loss_fn)(copies, *batch), want)
        out, vjp_fn = backend.vjp(lambda p: loss_fn(p, *batch), copies)
        ft.assert_trees_equal(vjp_fn(torch.ones_like(out))[0], want)
    assert all(c.grad is None for c in leaves)  # gradients are returned, never accumulated
    seen = []  # the functions get the tree itself, not a tree rebuilt from its leaves
    backend.vjp(lambda p: seen.append(p) or loss_fn(p, *batch), copies)
    backend.grad(lambda p: seen.append(p) or loss_fn(p, *batch))(copies)
    assert seen[0] is copies and seen[1] is copies
    backend.vjp(lambda p: seen.append(p) or loss_fn(p, *batch), params)
    assert seen[2] is not params and fctc.tree.leaves(seen[2])[0] is not originals[0]


def test_a_tensor_twice_in_the_primals_gets_a_gradient_per_position():
    """JAX semantics: every leaf is its own input, even when two leaves are one tensor (tied
    weights); such a tree is never used as it is, not even when the tensor requires grad."""
    w = torch.ones(3, requires_grad=True)
    tied = {"a": w, "b": w}
    out, vjp_fn = backend.vjp(lambda p: (p["a"] * 2 + p["b"] * 3).sum(), tied)
    (grads,) = vjp_fn(torch.ones_like(out))
    ft.assert_trees_equal(grads, {"a": torch.full((3,), 2.0), "b": torch.full((3,), 3.0)})


def test_differentiable_under_tracing_is_the_identity():
    params = {"w": torch.ones(3)}
    seen = []

    def f(w):
        seen.append(backend.differentiable({"w": w})["w"] is w)
        return (w * 2).sum()

    torch.func.grad(f)(params["w"])
    assert seen == [True]


def test_value_and_grad_works_under_no_grad_and_keeps_dtype():
    p = {"w": torch.ones(2, dtype=torch.float32), "h": torch.ones(2, dtype=torch.float16)}
    with torch.no_grad():
        _, grads = backend.value_and_grad(lambda p: (p["w"] * 3).sum() + p["h"].float().sum())(p)
    assert grads["w"].dtype == torch.float32 and grads["h"].dtype == torch.float16
    ft.assert_trees_equal(grads["w"], torch.full((2,), 3.0))


def test_grad_returns_only_gradients(batch):
    params, (x, y) = make_params(), batch
    ft.assert_trees_equal(
        backend.grad(loss_fn)(params, x, y), backend.value_and_grad(loss_fn)(params, x, y)[1]
    )
    assert backend.grad(loss_fn).__name__ == "loss_fn"


def test_value_and_grad_errors():
    vg = backend.value_and_grad
    with pytest.raises(TypeError, match=r"floating scalar tensor.*got \(3,\)"):
        vg(lambda x: x * 2)(torch.ones(3))
    with pytest.raises(TypeError, match="floating scalar tensor.*got float"):
        vg(lambda x: 1.0)(torch.ones(3))
    with pytest.raises(TypeError, match="floating scalar"):
        vg(lambda x: x.sum().long())(torch.ones(3))
    with pytest.raises(TypeError, match="argument 0 must be a pytree of floating.*torch.int64"):
        vg(lambda x: x.sum().float())(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"argnums=2 does not fit a call with 2 positional"):
        vg(lambda x, y: x.sum(), argnums=2)(torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="at least one argument"):
        vg(lambda x: x.sum(), argnums=())(torch.ones(1))
    with pytest.raises(ValueError, match="names an argument twice"):
        vg(lambda x, y: (x * y).sum(), argnums=(0, -2))(torch.ones(1), torch.ones(1))
    with pytest.raises(TypeError, match=r"has_aux=True the function must return a pair"):
        vg(lambda x: x.sum(), has_aux=True)(torch.ones(2))
    with pytest.raises(TypeError, match=r"has_aux=True the function must return a pair"):
        vg(lambda x: x * 1.0, has_aux=True)(torch.ones(2))  # a 2-vector must not unpack


# ----------------------------------------------------------------------------- traced path


def test_value_and_grad_inside_vmap_gives_per_example_gradients(batch):
    """Under a functorch transform value_and_grad takes the torch.func path."""
    params, (x, y) = make_params(), batch
    assert not backend.is_tracing()

    def per_example(params, xi, yi):
        assert backend.is_tracing()
        return backend.value_and_grad(loss_fn)(params, xi[None], yi[None])

    values, grads = backend.vmap(per_example, in_dims=(None, 0, 0))(params, x, y)
    for i in range(x.shape[0]):
        ref_value, (ref,) = autograd_reference(loss_fn, [params, x[i : i + 1], y[i : i + 1]], [0])
        ft.assert_trees_allclose(values[i], ref_value, rtol=1e-12, atol=1e-14)
        ft.assert_trees_allclose(fctc.tree.map(lambda g: g[i], grads), ref, rtol=1e-12, atol=1e-14)


def test_traced_path_has_aux_tuple_argnums_and_errors(batch):
    params, (x, y) = make_params(), batch

    def fn(p, x):
        loss = loss_fn(p, x, y)
        return loss, loss * 2

    def run(p, x):
        return backend.value_and_grad(fn, argnums=(0, 1), has_aux=True)(p, x)

    ones = torch.ones(2, dtype=torch.float64)  # a trivial batch, only to activate the transform
    (value, aux), (gp, gx) = backend.vmap(lambda s: run(params, x * s))(ones)
    reference = backend.value_and_grad(fn, argnums=(0, 1), has_aux=True)
    (ref_value, ref_aux), (ref_gp, ref_gx) = reference(params, x)
    ft.assert_trees_allclose(value[0], ref_value, rtol=1e-12)
    ft.assert_trees_allclose(aux[1], ref_aux, rtol=1e-12)
    ft.assert_trees_allclose(fctc.tree.map(lambda g: g[1], gp), ref_gp, rtol=1e-12, atol=1e-14)
    ft.assert_trees_allclose(gx[0], ref_gx, rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="must return a pair"):
        backend.vmap(lambda s: backend.value_and_grad(lambda v: v.sum(), has_aux=True)(x * s))(ones)


# ----------------------------------------------------------------------------- vmap


def test_vmap_matches_a_loop():
    w = torch.randn(4, 3)
    xs = torch.randn(6, 4)
    out = backend.vmap(lambda x, w: torch.tanh(x @ w), in_dims=(0, None))(xs, w)
    ft.assert_trees_allclose(out, torch.stack([torch.tanh(x @ w) for x in xs]), rtol=1e-6)
    chunked = backend.vmap(lambda x: x.sum(), chunk_size=4)(xs)
    ft.assert_trees_allclose(chunked, xs.sum(1), rtol=1e-6)
    pair = backend.vmap(lambda x: (x.max(), x.min()), out_dims=(0, 0))(xs)
    ft.assert_trees_equal(pair, (xs.max(1).values, xs.min(1).values))
    with pytest.raises(RuntimeError):  # randomness must come from keys, not global state
        backend.vmap(lambda x: x + torch.rand(()))(xs)


# ----------------------------------------------------------------------------- jit


def tiny(x, w):
    return torch.tanh(x @ w).square().sum(-1) + torch.sin(x).mean()


def test_jit_disabled_is_the_function_itself():
    assert backend.jit(tiny, enabled=False) is tiny
    decorated = backend.jit(enabled=False)(tiny)
    assert decorated is tiny


def test_jit_compiles_and_matches_eager():
    """The one inductor compile of this file (a few seconds the first time in a process)."""
    x, w = torch.randn(5, 4), torch.randn(4, 3)
    compiled = backend.jit(tiny, fullgraph=True)
    assert compiled is not tiny
    ft.assert_trees_allclose(ft.assert_pure(compiled, x, w), tiny(x, w), rtol=1e-6, atol=1e-6)


def test_jit_traces_value_and_grad_through_torch_func(batch):
    """Under torch.compile value_and_grad must take the traceable path (cheap 'eager' backend)."""
    params, (x, y) = make_params(), batch
    seen = []

    def with_aux(params, x, y):
        loss = loss_fn(params, x, y)
        return loss, {"double": 2 * loss}

    def step(params, x, y):
        seen.append(backend.is_tracing())
        return backend.value_and_grad(with_aux, has_aux=True)(params, x, y)

    (value, aux), grads = backend.jit(step, backend="eager", fullgraph=True)(params, x, y)
    assert seen and all(seen)
    (ref_value, ref_aux), ref_grads = backend.value_and_grad(with_aux, has_aux=True)(params, x, y)
    ft.assert_trees_allclose((value, aux), (ref_value, ref_aux), rtol=1e-12)
    ft.assert_trees_allclose(grads, ref_grads, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- host shortcuts


def test_all_finite_cpu_shortcut_is_exact():
    """The eager CPU path (norms instead of a mask per leaf) answers what the element-wise
    check answers, overflowing sums of squares included, with or without a precomputed
    norm, over leaves of several dtypes."""
    import fctc.tree as T

    big = torch.full((8,), 1e30)  # finite, but its sum of squares overflows
    cases = [
        {"a": torch.randn(5), "b": torch.randn(2, 3)},
        {"a": torch.randn(5), "b": torch.tensor([1.0, float("nan")])},
        {"a": torch.tensor([float("inf")]), "b": torch.randn(3)},
        {"a": torch.tensor([-float("inf")], dtype=torch.float16)},
        {"a": big},
        {"a": big, "b": torch.tensor([float("nan")])},
        {"a": torch.ones(3), "b": torch.ones(2, dtype=torch.float16), "c": torch.empty(0)},
        {"a": torch.full((100,), 100.0, dtype=torch.float16), "n": torch.tensor(3)},  # fp16 norm overflows
        {"a": torch.ones(3, dtype=torch.float64), "b": torch.tensor([float("nan")], dtype=torch.bfloat16)},
        {},
    ]
    for tree in cases:
        exact = all(bool(torch.isfinite(x).all()) for x in T.leaves(tree))
        assert bool(backend.all_finite(tree)) == exact, tree
        assert bool(T.all_finite(tree)) == exact, tree
        if tree:
            assert bool(backend.all_finite(tree, T.global_norm(tree))) == exact, tree


def test_host_is_free_only_eagerly_on_the_cpu():
    assert backend.host_is_free([torch.zeros(1), torch.ones(2)])
    assert not backend.host_is_free([torch.zeros(1), torch.zeros(1, device="meta")])
    seen = []

    def f(x):
        seen.append(backend.host_is_free([x]))
        return x + 1

    torch.compile(f, backend="eager", fullgraph=True)(torch.zeros(1))
    assert seen == [False]


def test_select_on_the_host_returns_the_chosen_leaves_themselves():
    new = {"w": torch.ones(3), "s": 1}
    old = {"w": torch.zeros(3), "s": 2}
    out = backend.select(torch.tensor(True), new, old)
    assert out["w"] is new["w"] and out["s"] == 2
    out = backend.select(torch.tensor(False), new, old)
    assert out["w"] is old["w"]


def test_as_tensor_fills_python_numbers_in_on_the_device():
    """The same values and dtypes as torch.as_tensor; a number is filled in on the device (one
    aten.full there, no copy of host data), anything else is torch.as_tensor's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    for value in (True, 3, -(2**63), 2**63 - 1, 1.5, -0.0, float("inf")):
        for dtype in (None, torch.float64, torch.int64):
            if dtype is torch.int64 and isinstance(value, float):
                continue
            got, want = backend.as_tensor(value, dtype), torch.as_tensor(value, dtype=dtype)
            assert got.dtype == want.dtype and got.shape == () and torch.equal(got, want)
        with Ops() as ops:
            on_meta = backend.as_tensor(value, device="meta")
        assert ops.seen == ["full"] and on_meta.device.type == "meta"
    x = torch.arange(3.0)
    assert backend.as_tensor(x) is x
    assert torch.equal(backend.as_tensor([1, 2]), torch.tensor([1, 2]))
