"""fctc.tree inside compiled code (fctc._traced_trees): optree's answers, in code dynamo traces fast."""

from __future__ import annotations

import collections

import optree
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fctc import _traced_trees
from fctc import tree as T
from tests.test_tree_flatteners import LEAVES, Other, Pair, _order, trees


def _has_ordered_dict(tree) -> bool:
    if isinstance(tree, collections.OrderedDict):
        return True
    if isinstance(tree, dict):
        return any(_has_ordered_dict(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return any(_has_ordered_dict(v) for v in tree)
    return False


def _grown(tree, sub):
    """``tree`` with every leaf (None included) replaced by ``sub``: it has tree's structure as a prefix."""
    return optree.tree_map(lambda _: sub, tree, none_is_leaf=True)


@settings(max_examples=300, deadline=None)
@given(trees(st.sampled_from(LEAVES)), st.booleans())
def test_flatten_unflatten_and_leaves_match_optree(tree, none_is_leaf):
    got = _traced_trees.flatten(tree, none_is_leaf)
    if _has_ordered_dict(tree):  # left to optree
        assert got is None and _traced_trees.leaves(tree) is None
        return
    ref, ref_spec = optree.tree_flatten(tree, none_is_leaf=none_is_leaf, namespace="fctc")
    xs, spec = got
    assert len(xs) == len(ref) == spec.num_leaves and all(x is y for x, y in zip(xs, ref))
    assert _order(spec.unflatten(xs)) == _order(optree.tree_unflatten(ref_spec, ref))
    leaves = _traced_trees.leaves(tree)
    assert leaves is not None and [id(x) for x in leaves] == [id(x) for x in optree.tree_leaves(tree, namespace="fctc")]


@settings(max_examples=300, deadline=None)
@given(trees(), trees(), st.booleans())
def test_flatten_up_to_matches_optree(a, b, none_is_leaf):
    if _has_ordered_dict(a):
        return
    _, spec = _traced_trees.flatten(a, none_is_leaf)
    _, ref_spec = optree.tree_flatten(a, none_is_leaf=none_is_leaf, namespace="fctc")
    for other in (a, b, _grown(a, {"k": [1, 2]}), _grown(a, None)):
        try:
            ref = ref_spec.flatten_up_to(other)
        except (ValueError, TypeError):
            with pytest.raises(ValueError):
                spec.flatten_up_to(other)
            continue
        got = spec.flatten_up_to(other)
        assert [_order(x) for x in got] == [_order(x) for x in ref]


def test_dicts_with_keys_that_compare_are_sorted_as_optree_sorts_them():
    t = [torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)]
    for tree in ({2: t[0], 1: t[1], 10: t[2]}, {(1, "b"): t[0], (1, "a"): t[1]}):
        xs, spec = _traced_trees.flatten(tree, False)
        assert [id(x) for x in xs] == [id(x) for x in optree.tree_leaves(tree, namespace="fctc")]
        assert list(spec.unflatten(xs)) == list(tree)


def test_unflatten_checks_the_number_of_leaves():
    _, spec = _traced_trees.flatten({"a": torch.zeros(1), "b": [torch.zeros(1)]}, False)
    with pytest.raises(ValueError, match="expected 2 leaves, got 1"):
        spec.unflatten([torch.zeros(1)])


def test_registered_and_unusual_nodes_stay_with_optree():
    t = torch.zeros(1)
    for tree in ({1: t, "a": t}, collections.deque([t]), collections.defaultdict(list, a=t),
                 torch.return_types.max((t, t)), [collections.OrderedDict(a=t)]):
        assert _traced_trees.flatten(tree, False) is None
        assert _traced_trees.leaves(tree) is None


def test_compiled_tree_functions_give_the_eager_answers():
    t = [torch.randn(2) for _ in range(6)]
    a = {"z": Pair(t[0], None), "a": [t[1], (t[2],)], "m": Other(t[3], {"y": t[4], "x": t[5]})}
    b = T.map(lambda x: x + 10, a)
    pred = torch.tensor(False)

    def f(pred, a, b):
        xs, spec = T.flatten(a)
        doubled = T.unflatten(spec, [2 * x for x in xs])
        ys = spec.flatten_up_to(b)
        picked = T.select(pred, a, b)
        with_none, none_spec = T.flatten(a, none_is_leaf=True)  # the optimisers' update trees
        assert len(with_none) == none_spec.num_leaves == 7
        return doubled, sum(x.sum() for x in T.leaves(b)), ys, picked

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    got, want = compiled(pred, a, b), f(pred, a, b)
    assert _order(T.map(lambda x: 0, got[0])) == _order(T.map(lambda x: 0, want[0]))
    assert list(got[0]) == list(want[0])  # the dict's key order is kept
    for g, w in zip(T.leaves(got), T.leaves(want)):
        assert torch.equal(g, w)
    assert torch.equal(got[1], want[1])
