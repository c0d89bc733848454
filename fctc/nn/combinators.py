"""Combinators that build models out of models, with thunder-speech's naming.

* :func:`serial` chains single-input models like ``nn.Sequential``.
* :func:`sequential` chains length-aware models over ``(x, lengths)`` like thunder's
  ``MultiSequential``.
* :func:`masked` lifts a chain of plain models into a length-aware one like thunder's
  ``Masked``.

Children are keyed ``"0"``, ``"1"``, ... so the "."-joined parameter paths equal the
``state_dict`` keys of the imperative containers. A child without parameters contributes an
empty dict, which :func:`fctc.tree.flatten_dict` drops, exactly as ``nn.Sequential`` has no
keys for an activation; params loaded back from a ``state_dict`` may therefore lack those
children, and apply accepts that. ``train`` reaches every child, and each child gets its own
key, the ``i``-th of ``split(key, n)`` (``None`` when no key is given). A chain whose children
all draw no random numbers (:func:`~fctc.nn.core.deterministic`) is itself deterministic: it
splits no key, and gives its children none.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import random as _random
from .core import Model, _marked, check_lengths, check_rank, uses_key

__all__ = ["serial", "sequential", "masked"]


def _check_models(models: tuple, name: str) -> tuple[Model, ...]:
    if not models:
        raise ValueError(f"{name}: give at least one model")
    for i, m in enumerate(models):
        if not isinstance(m, Model):
            raise TypeError(
                f"{name}: argument {i} must be a fctc.nn.Model (init, apply), "
                f"got {type(m).__name__}; call layer factories, e.g. relu() not relu"
            )
    return models


def _child_keys(key: Any, n: int) -> list[Any]:
    """One key per child, all from a single split (``None`` for every child without a key)."""
    if key is None:
        return [None] * n
    return list(_random.split(key, n)) if n > 1 else [key]


def _init_children(models: tuple[Model, ...], key: Any) -> tuple[dict, dict]:
    params, state = {}, {}
    for i, (m, k) in enumerate(zip(models, _child_keys(key, len(models)))):
        params[str(i)], state[str(i)] = m.init(k)
    return params, state


# The child keys of chains of up to 64 models (immutable: compiled code may read it).
_CHILD_NAMES = tuple(frozenset(str(i) for i in range(n)) for n in range(65))


def _children(tree: Any, n: int, what: str, name: str) -> dict:
    names = _CHILD_NAMES[n] if n < len(_CHILD_NAMES) else frozenset(str(i) for i in range(n))
    if type(tree) is dict and tree.keys() <= names:  # the common case, quickly
        return tree
    if not isinstance(tree, dict):
        raise TypeError(f"{name}: {what} must be a dict, got {type(tree).__name__}")
    names = {str(i) for i in range(n)}
    unexpected = sorted(k for k in tree if k not in names)
    if unexpected:
        raise ValueError(
            f"{name}: {what} has keys {unexpected} that match none of its {n} children "
            f"(expected keys among {sorted(names, key=int)})"
        )
    return tree


def _run_chain(models, params, state, name, step, carry, train, key):
    """Thread ``carry`` through the children; ``step(model, p, s, carry, k)`` -> (carry, s)."""
    params = _children(params, len(models), "params", name)
    state = _children(state, len(models), "state", name)
    new_state = {}
    for i, (m, k) in enumerate(zip(models, _child_keys(key, len(models)))):
        child = str(i)
        carry, s = step(m, params.get(child, {}), state.get(child, {}), carry, k)
        if child in state or s:
            new_state[child] = s
    return carry, new_state


def serial(*models: Model) -> Model:
    """Chain single-input models like ``nn.Sequential``: each output feeds the next model.

    ``apply(params, state, *inputs, train=False, key=None) -> (output, state)``: the first
    child receives ``*inputs``, the others the previous output. Params and state are
    ``{"0": ..., "1": ..., ...}``.

    Args:
        *models: the children, in order (at least one).

    Returns:
        The chain as a :class:`Model`.

    Raises:
        ValueError: no model is given.
        TypeError: an argument is not a :class:`Model`.
    """
    models = _check_models(models, "serial")
    keyed = any(map(uses_key, models))

    def init(key=None):
        return _init_children(models, key)

    def apply(params, state, *inputs, train=False, key=None):
        def step(m, p, s, carry, k):
            args = carry if isinstance(carry, _Args) else (carry,)
            return m.apply(p, s, *args, train=train, key=k)

        key = key if keyed else None
        return _run_chain(models, params, state, "serial", step, _Args(inputs), train, key)

    return _marked(Model(init, apply), keyed)  # no child draws: no keys derived


class _Args(tuple):
    """The initial positional inputs of a :func:`serial` chain (told apart from a tuple output)."""


def sequential(*models: Model) -> Model:
    """Chain length-aware models over ``(x, lengths)`` (thunder's ``MultiSequential``).

    Every child is called as ``apply(p, s, x, lengths, train=..., key=...)`` and returns
    ``((x, lengths), s)``; the chain returns ``((x, lengths), state)``. Params and state are
    ``{"0": ..., "1": ..., ...}``; wrap plain layers in :func:`masked`.

    Args:
        *models: the length-aware children, in order (at least one).

    Returns:
        The chain as a :class:`Model`; its ``apply`` raises ``TypeError`` (suggesting
        :func:`masked`) when a child does not take or return ``(x, lengths)``.

    Raises:
        ValueError, TypeError: as :func:`serial`, for no model or a non-model argument.
    """
    models = _check_models(models, "sequential")
    keyed = any(map(uses_key, models))

    def init(key=None):
        return _init_children(models, key)

    def apply(params, state, x, lengths, *, train=False, key=None):
        if isinstance(x, torch.Tensor) and x.dim() >= 1:
            check_lengths(lengths, x, "sequential")

        def step(m, p, s, carry, k):
            try:
                out, s = m.apply(p, s, *carry, train=train, key=k)
            except TypeError as e:
                if "positional argument" not in str(e):
                    raise
                raise TypeError(
                    f"sequential: a child could not take (x, lengths): {e}; plain layers take x "
                    "alone, so wrap them in masked(...)"
                ) from e
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    "sequential: every child must return ((x, lengths), state); got "
                    f"{type(out).__name__} as output; wrap plain layers in masked(...)"
                )
            return out, s

        key = key if keyed else None
        return _run_chain(models, params, state, "sequential", step, (x, lengths), train, key)

    return _marked(Model(init, apply), keyed)  # no child draws: no keys derived


def masked(*models: Model) -> Model:
    """Run plain models on ``x`` inside a length-aware chain (thunder's ``Masked``).

    ``apply(params, state, x, lengths, ...) -> ((y, lengths), state)`` where ``y`` is the
    :func:`serial` chain of ``models`` applied to ``x`` and ``lengths`` passes through
    unchanged. Like thunder's ``Masked``, nothing is zeroed: positions beyond each length are
    computed like any other, so layers that mix time steps (convolutions with padding) or
    batch statistics (batch norm in training) let them reach valid outputs, exactly as in
    thunder. Params and state are ``{"layer": {"0": ..., "1": ...}}``.

    Args:
        *models: the plain children, chained as by :func:`serial` (at least one).

    Returns:
        The wrapper as a :class:`Model` over ``(x, lengths)``.

    Raises:
        ValueError, TypeError: as :func:`serial`, for no model or a non-model argument.
    """
    inner = serial(*_check_models(models, "masked"))

    def init(key=None):
        params, state = inner.init(key)
        return {"layer": params}, {"layer": state}

    def apply(params, state, x, lengths, *, train=False, key=None):
        check_rank(x, (2, 3), "masked")
        check_lengths(lengths, x, "masked")
        for what, tree in (("params", params), ("state", state)):
            if not isinstance(tree, dict) or set(tree) - {"layer"}:
                got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
                raise ValueError(f"masked: {what} must be {{'layer': ...}}, got {got}")
        y, s = inner.apply(
            params.get("layer", {}), state.get("layer", {}), x, train=train, key=key
        )
        new_state = {"layer": s} if "layer" in state or s else {}
        return (y, lengths), new_state

    return _marked(Model(init, apply), uses_key(inner))
