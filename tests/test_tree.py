"""fctc.tree: pytree helpers, the global norm against torch's, and state_dict key round trips."""

import math
from typing import NamedTuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fctc import testing as ft
from fctc import tree


class Pair(NamedTuple):
    first: object
    second: object


def sample_tree():
    return {
        "b": [torch.arange(3.0), torch.ones(2, 2)],
        "a": Pair(torch.tensor(5.0), {"z": torch.zeros(1), "y": None}),
        "count": torch.tensor(7),
    }


# ----------------------------------------------------------------------------- traversal


def test_leaves_order_and_none_is_empty():
    t = sample_tree()
    got = tree.leaves(t)
    expected = [t["a"].first, t["a"].second["z"], t["b"][0], t["b"][1], t["count"]]
    assert len(got) == 5 and all(g is e for g, e in zip(got, expected))  # dict keys sorted


def test_paths_follow_leaves_and_name_positions():
    assert tree.paths(sample_tree()) == ["a.0", "a.1.z", "b.0", "b.1", "count"]
    assert tree.paths(sample_tree(), sep="/")[1] == "a/1/z"
    assert tree.paths(torch.ones(1)) == [""]


def test_map_over_one_and_several_trees():
    t = sample_tree()
    doubled = tree.map(lambda x: x * 2, t)
    assert isinstance(doubled["a"], Pair) and doubled["a"].second["y"] is None
    ft.assert_trees_equal(doubled["b"], [torch.arange(3.0) * 2, torch.ones(2, 2) * 2])
    summed = tree.map(lambda x, y, z: x + y + z, t, doubled, t)
    ft.assert_trees_equal(summed, tree.map(lambda x: x * 4, t))
    with pytest.raises(ValueError):
        tree.map(lambda x, y: x, {"a": torch.ones(1)}, {"b": torch.ones(1)})


def test_map_is_leaf():
    t = {"pair": (torch.ones(1), torch.zeros(1)), "x": torch.ones(2)}
    is_pair = lambda v: isinstance(v, tuple)  # noqa: E731
    out = tree.map(lambda v: "pair" if is_pair(v) else "x", t, is_leaf=is_pair)
    assert out == {"pair": "pair", "x": "x"}


def test_map_with_path_gives_keys_and_other_trees():
    t = {"layer": {"weight": torch.ones(2), "bias": torch.zeros(2)}, "scale": torch.ones(1)}
    other = tree.map(lambda x: x + 1, t)
    out = tree.map_with_path(lambda k, x, y: (k, float((x + y).sum())), t, other)
    assert out == {
        "layer": {"bias": ("layer.bias", 2.0), "weight": ("layer.weight", 6.0)},
        "scale": ("scale", 3.0),
    }


def test_flatten_unflatten_structure_round_trip():
    t = sample_tree()
    leaves, spec = tree.flatten(t)
    assert spec == tree.structure(t)
    rebuilt = tree.unflatten(spec, [x + 1 for x in leaves])
    ft.assert_trees_equal(rebuilt, tree.map(lambda x: x + 1, t))
    assert isinstance(rebuilt["a"], Pair)


# ----------------------------------------------------------------------------- constructors


def test_zeros_ones_full_like():
    t = {"w": torch.randn(2, 3, dtype=torch.float64), "n": torch.tensor(3)}
    z, o, f = tree.zeros_like(t), tree.ones_like(t), tree.full_like(t, 0.5)
    ft.assert_trees_equal(z, {"w": torch.zeros(2, 3, dtype=torch.float64), "n": torch.tensor(0)})
    ft.assert_trees_equal(o, {"w": torch.ones(2, 3, dtype=torch.float64), "n": torch.tensor(1)})
    assert f["w"].dtype == torch.float64 and (f["w"] == 0.5).all()
    half = tree.zeros_like(t, dtype=torch.float16)
    assert half["w"].dtype == half["n"].dtype == torch.float16
    assert tree.full_like(t, 2, dtype=torch.int32)["w"].dtype == torch.int32


def test_cast_leaves_counters_alone_unless_asked():
    t = {"w": torch.ones(2), "step": torch.tensor(3)}
    out = tree.cast(t, torch.bfloat16)
    assert out["w"].dtype == torch.bfloat16 and out["step"].dtype == torch.int64
    assert tree.cast(t, torch.float64, only_floating=False)["step"].dtype == torch.float64
    assert t["w"].dtype == torch.float32  # not in place


def test_size_counts_elements():
    assert tree.size(sample_tree()) == 3 + 4 + 1 + 1 + 1
    assert tree.size({}) == 0


def test_all_finite():
    t = {"w": torch.ones(3), "n": torch.tensor(2)}
    res = tree.all_finite(t)
    assert isinstance(res, torch.Tensor) and res.dtype == torch.bool and bool(res)
    for bad in (math.nan, math.inf, -math.inf):
        assert not bool(tree.all_finite({**t, "v": torch.tensor([0.0, bad])}))
    assert bool(tree.all_finite({"n": torch.tensor(1)}))  # integer leaves are always finite
    assert bool(tree.all_finite({}))
    assert not bool(tree.all_finite({"h": torch.tensor([65504.0], dtype=torch.float16) * 2}))


# ----------------------------------------------------------------------------- global norm


def grad_trees():
    shapes = st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=3), min_size=1, max_size=4)
    return st.tuples(shapes, st.integers(0, 2**16), st.sampled_from([torch.float32, torch.float64]))


def make_tree(shapes, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    return {
        f"p{i}": torch.randn(tuple(s), generator=gen, dtype=dtype) * 3 for i, s in enumerate(shapes)
    }


@pytest.mark.parametrize("ord", [1, 2, 3.5, math.inf])
@given(grad_trees())
def test_global_norm_matches_torch_get_total_norm(ord, spec):
    t = make_tree(*spec)
    got = tree.global_norm(t, ord)
    assert got.dtype == torch.float32 and got.shape == ()
    nonempty = [x for x in tree.leaves(t) if x.numel()]  # torch's inf norm rejects empty ones
    if not nonempty:
        ft.assert_trees_equal(got, torch.tensor(0.0))
        return
    expected = torch.nn.utils.get_total_norm(nonempty, norm_type=ord)
    flat = torch.cat([x.reshape(-1).double() for x in nonempty])
    ft.assert_trees_allclose(got, expected.float(), rtol=1e-5, atol=1e-6)
    concatenated = torch.linalg.vector_norm(flat, ord)
    ft.assert_trees_allclose(got.double(), concatenated, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ord", [1.0, 2.0, 3.5, math.inf])
def test_global_norm_matches_clip_grad_norm(ord):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9, norm_type=ord)
    ft.assert_trees_allclose(tree.global_norm(grads, ord), total, rtol=1e-6, atol=0)


def test_global_norm_mixed_dtypes_integers_and_empty():
    t = {
        "h": torch.tensor([3.0], dtype=torch.float16),
        "b": torch.tensor([4.0], dtype=torch.bfloat16),
        "d": torch.tensor([12.0], dtype=torch.float64),
        "i": torch.tensor([84]),
    }
    ft.assert_trees_allclose(tree.global_norm(t), torch.tensor(85.0))
    assert float(tree.global_norm(t, math.inf)) == 84.0
    assert float(tree.global_norm(t, 1)) == 103.0
    ft.assert_trees_equal(tree.global_norm({}), torch.tensor(0.0))
    ft.assert_trees_equal(tree.global_norm({"e": torch.zeros(0)}), torch.tensor(0.0))
    with_empty = {"e": torch.zeros(0), "w": -t["d"]}
    ft.assert_trees_equal(tree.global_norm(with_empty, math.inf), torch.tensor(12.0))


@pytest.mark.parametrize("ord", [0, -1, -2.5, math.nan])
def test_global_norm_rejects_bad_ord(ord):
    with pytest.raises(ValueError, match="ord must be positive or inf"):
        tree.global_norm({"w": torch.ones(2)}, ord)


# ----------------------------------------------------------------------------- state_dict keys

names = st.text("abcxyz_0123456789", min_size=1, max_size=4)
nested = st.recursive(
    st.integers(0, 9).map(lambda v: torch.tensor([float(v)])),
    lambda children: st.dictionaries(names, children, min_size=1, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(names, nested, min_size=1, max_size=3))
def test_flatten_dict_round_trip(t):
    flat = tree.flatten_dict(t)
    assert all(isinstance(k, str) and k for k in flat)
    ft.assert_trees_equal(tree.unflatten_dict(flat), t)
    assert tree.flatten_dict(tree.unflatten_dict(flat)) == flat
    assert sorted(flat) == sorted(tree.paths(t))
    slash = tree.flatten_dict(t, sep="/")
    ft.assert_trees_equal(tree.unflatten_dict(slash, sep="/"), t)


def test_flatten_dict_matches_state_dict_keys_and_order():
    model = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU())
    sd = model.state_dict()
    nested = tree.unflatten_dict(sd)
    assert list(nested) == ["0", "1"] and list(nested["1"]) == [
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked",
    ]
    flat = tree.flatten_dict(nested)
    assert list(flat) == list(sd)  # insertion order kept
    assert all(flat[k] is sd[k] for k in sd)


def test_flatten_dict_drops_empty_subtrees_and_checks_keys():
    assert tree.flatten_dict({"relu": {}, "lin": {"weight": 1}}) == {"lin.weight": 1}
    with pytest.raises(ValueError, match=r"key 'a\.b' contains the separator"):
        tree.flatten_dict({"a.b": 1})
    with pytest.raises(ValueError, match="empty keys"):
        tree.flatten_dict({"": {"a": 1}})
    with pytest.raises(ValueError, match="mapping at the top level"):
        tree.flatten_dict(torch.ones(1))
    assert tree.flatten_dict({0: {1: "x"}}) == {"0.1": "x"}


def test_unflatten_dict_conflicts():
    with pytest.raises(ValueError, match="needs 'a' to be a subtree"):
        tree.unflatten_dict({"a": 1, "a.b": 2})
    with pytest.raises(ValueError, match="both a leaf and a subtree"):
        tree.unflatten_dict({"a.b": 2, "a": 1})
    assert tree.unflatten_dict({}) == {}
    assert tree.unflatten_dict({"a/b": 1}, sep="/") == {"a": {"b": 1}}


@pytest.mark.parametrize("module", ["tree", "backend"])
def test_select_keeps_false_side_dtypes_and_never_leaks_nan(module):
    """fctc.tree.select is branch-free; fctc.backend.select decides on the host on the CPU:
    the same results."""
    import fctc.backend
    import fctc.tree

    T = fctc.tree if module == "tree" else fctc.backend

    new = {"w": torch.tensor([float("nan"), 1.0]), "n": torch.tensor(3, dtype=torch.int64), "s": 5}
    old = {"w": torch.tensor([2.0, 2.0], dtype=torch.float64), "n": torch.tensor(1, dtype=torch.int32), "s": 7}
    for pred in (torch.tensor(False), torch.tensor([False]).reshape(())):
        out = T.select(pred, new, old)
        assert torch.equal(out["w"], old["w"]) and out["n"].dtype == torch.int32 and out["s"] == 7
    out = T.select(torch.tensor(True), new, old)
    assert out["w"].dtype == torch.float64 and torch.isnan(out["w"][0]) and int(out["n"]) == 3
    assert out["s"] == 7  # non-tensor leaves always come from on_false


def test_device_of_is_the_first_tensor_leafs():
    assert tree.device_of({"a": 3, "b": torch.zeros(2, device="meta")}) == torch.device("meta")
    assert tree.device_of({"a": torch.zeros(1), "b": torch.zeros(1, device="meta")}) == torch.device("cpu")
    assert tree.device_of({}) == torch.device("cpu") and tree.device_of([None, 1.0]) == torch.device("cpu")


def test_all_finite_and_select_need_no_host_read():
    """The generic tree helpers stay tensor operations (no bool() of a tensor), so a compiled
    graph holds them whole; fctc.backend has the host shortcuts."""
    import torch._dynamo

    def f(pred, a, b):
        return tree.all_finite(a), tree.select(pred, a, b)

    a = {"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor(2)}
    b = {"w": torch.zeros(2), "n": torch.tensor(1)}
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    for pred in (torch.tensor(True), torch.tensor(False)):
        got, want = compiled(pred, a, b), f(pred, a, b)
        assert bool(got[0]) is bool(want[0]) is False
        assert torch.equal(got[1]["w"].nan_to_num(7.0), want[1]["w"].nan_to_num(7.0))
    torch._dynamo.reset()
