"""fctc.tree's generated flatteners (fctc._flatteners) give optree's answer on every tree."""

from __future__ import annotations

import collections
from typing import NamedTuple

import optree
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fctc import _flatteners
from fctc import tree as T


class Pair(NamedTuple):
    a: object
    b: object


Other = collections.namedtuple("Other", "a b")
LEAVES = [torch.zeros(1), torch.ones(2), torch.nn.Parameter(torch.zeros(3)), 1, "s", None]


def _order(tree):
    """The tree with every container's type and a dict's key order made explicit."""
    if isinstance(tree, dict):
        return (type(tree), [(k, _order(v)) for k, v in tree.items()])
    if isinstance(tree, (list, tuple)):
        return (type(tree), [_order(v) for v in tree])
    if type(tree).__name__ == "Box":  # the registered class of the test below
        return ("Box", _order(tree.x))
    return tree if not isinstance(tree, torch.Tensor) else ("T", id(tree))


def _same_as_optree(tree, none_is_leaf=False):
    for _ in range(3):  # the second full flatten generates the flattener, the third uses it
        xs, spec = T.flatten(tree, none_is_leaf=none_is_leaf)
    ref, ref_spec = optree.tree_flatten(tree, none_is_leaf=none_is_leaf, namespace="fctc")
    assert len(xs) == len(ref) and all(x is y for x, y in zip(xs, ref))
    assert spec == ref_spec
    assert _order(T.unflatten(spec, xs)) == _order(optree.tree_unflatten(ref_spec, ref))
    assert [x for x in T.leaves(tree)] == [x for x in optree.tree_leaves(tree, namespace="fctc")]


keys = st.sampled_from(["a", "b", "c", "0", "1", "10"])
leaf = st.sampled_from(LEAVES[:3])


def trees(leaves=leaf):
    return st.recursive(
        leaves | st.none(),
        lambda kids: st.one_of(
            st.dictionaries(keys, kids, max_size=4),
            st.lists(kids, max_size=3),
            st.lists(kids, max_size=3).map(tuple),
            st.tuples(kids, kids).map(lambda t: Pair(*t)),
            st.tuples(kids, kids).map(lambda t: Other(*t)),
            st.dictionaries(keys, kids, max_size=3).map(collections.OrderedDict),
        ),
        max_leaves=12,
    )


@settings(max_examples=200, deadline=None)
@given(trees(st.sampled_from(LEAVES)), st.booleans())
def test_flatten_matches_optree(tree, none_is_leaf):
    _same_as_optree(tree, none_is_leaf)


@settings(max_examples=200, deadline=None)
@given(trees(), trees(), st.booleans())
def test_a_flattener_never_answers_for_another_structure(a, b, none_is_leaf):
    # Both wrapped alike, so that they share the top-level signature the cache is keyed by.
    _same_as_optree({"x": a}, none_is_leaf)
    _same_as_optree({"x": b}, none_is_leaf)
    _same_as_optree({"x": a}, none_is_leaf)


def test_what_the_generated_code_checks():
    t = torch.zeros(1)
    base = {"p": {"w": t, "b": t}, "s": [t, (t, None)], "n": Pair(t, t)}
    _same_as_optree(base)
    variants = [
        {"p": {"b": t, "w": t}, "s": [t, (t, None)], "n": Pair(t, t)},  # key order
        {"p": collections.OrderedDict(w=t, b=t), "s": [t, (t, None)], "n": Pair(t, t)},
        {"p": collections.defaultdict(list, w=t, b=t), "s": [t, (t, None)], "n": Pair(t, t)},
        {"p": {"w": t, "b": t}, "s": [t, (t, t)], "n": Pair(t, t)},  # None -> tensor
        {"p": {"w": t, "b": t}, "s": [t, [t, None]], "n": Pair(t, t)},  # tuple -> list
        {"p": {"w": t, "b": t}, "s": [t, (t, None)], "n": Other(t, t)},  # another NamedTuple
        {"p": {"w": t, "b": t}, "s": [t, (t, None)], "n": (t, t)},
        {"p": {"w": t, "b": 3}, "s": [t, (t, None)], "n": Pair(t, t)},  # a non-tensor leaf
        {"p": {"w": t, "b": {"c": t}}, "s": [t, (t, None)], "n": Pair(t, t)},  # a deeper tree
        {"p": {"w": t, "b": t}, "s": [t, (t, None), t], "n": Pair(t, t)},  # a longer list
    ]
    for v in variants:
        _same_as_optree(v)
        _same_as_optree(base)


def test_registered_classes_stay_with_optree():
    class Box:
        def __init__(self, x):
            self.x = x

    optree.register_pytree_node(Box, lambda b: ((b.x,), None), lambda _, xs: Box(*xs), namespace="fctc")
    try:
        t = torch.zeros(1)
        _same_as_optree({"a": Box(t), "b": t})
        _same_as_optree({"a": Box({"c": t}), "b": t})
        assert not any(
            spec == optree.tree_structure({"a": Box(t), "b": t}, namespace="fctc")
            for entries in _flatteners._BY_SIGNATURE.values() for _, spec in entries
        )
    finally:
        optree.unregister_pytree_node(Box, namespace="fctc")


def test_map_with_several_trees_matches_optree():
    t = [torch.randn(2) for _ in range(4)]
    a = {"x": [t[0], t[1]], "y": t[2]}
    b = {"x": [t[1], t[2]], "y": t[3]}
    for _ in range(3):
        got = T.map(torch.add, a, b)
    ref = optree.tree_map(torch.add, a, b, namespace="fctc")
    assert _order(T.map(lambda x: x, got)) and optree.tree_structure(got) == optree.tree_structure(ref)
    assert all(torch.equal(x, y) for x, y in zip(T.leaves(got), optree.tree_leaves(ref)))


def test_compiled_code_gets_the_leaves_eager_code_gets():
    t = torch.randn(3)

    @torch.compile(backend="eager", fullgraph=True)
    def f(tree):
        return sum(T.leaves(tree))

    tree = {"a": t, "b": [t, t]}
    for _ in range(3):
        T.leaves(tree)
    assert torch.allclose(f(tree), 3 * t)


def test_the_caches_stay_bounded():
    t = torch.zeros(1)
    for n in range(_flatteners._MAX_SIGNATURES + 20):
        for _ in range(2):
            _same_as_optree([t] * (n % 300 + 1) + [{"k": t}])
    assert len(_flatteners._BY_SIGNATURE) <= _flatteners._MAX_SIGNATURES
    assert len(_flatteners._SEEN) <= _flatteners._MAX_SEEN
