"""The model contract: a ``Model`` is a pair of pure functions over parameter pytrees.

``init(key) -> (params, state)`` builds the parameters (what ``nn.Module.parameters()`` holds)
and the state (its buffers: running statistics, counters) as nested dicts of tensors whose
"."-joined paths are the ``state_dict`` keys of the matching imperative module.

``apply(params, state, *inputs, train=False, key=None) -> (outputs, new_state)`` never mutates
its arguments; updated running statistics come back in ``new_state``, and randomness comes only
from ``key``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

__all__ = ["Model", "check_rank", "check_lengths", "check_params"]


class Model(NamedTuple):
    """A pure model: ``init(key) -> (params, state)`` and
    ``apply(params, state, *inputs, train=False, key=None) -> (outputs, state)``.

    A NamedTuple of the two functions, so a model is a value: it can be built, passed and
    composed (:func:`~fctc.nn.serial`) without hidden state.
    """

    init: Callable[..., tuple[Any, Any]]
    apply: Callable[..., tuple[Any, Any]]


def check_rank(x: Any, rank: int | tuple[int, ...], name: str, what: str = "x") -> torch.Tensor:
    """Check that ``x`` is a tensor of the given rank, with an error that names the layer.

    Args:
        x: the value to check.
        rank: the allowed rank, or a tuple of allowed ranks.
        name: the layer, for the message.
        what: what ``x`` is called in the message.

    Returns:
        ``x`` itself.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: its rank is not allowed.
    """
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a tensor, got {type(x).__name__}")
    if x.dim() not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"{name}: {what} must have rank {want}, got shape {tuple(x.shape)} (rank {x.dim()})"
        )
    return x


_LAST_CHECKED: list = [None, -1, -1]  # weakref to the lengths tensor, its version, its maximum


def check_lengths(lengths: Any, x: torch.Tensor, name: str, time_dim: int = -1) -> torch.Tensor:
    """Validate per-example lengths against ``x``: a 1-D integer or float tensor of size B.

    Values are checked against ``[0, x.shape[time_dim]]`` outside tracing only (the check
    needs a host sync, which a compiled step must not pay). A model nests many layers that
    receive the same lengths tensor, so the value check runs once per tensor: a tensor already
    checked, and not modified in place since, is only compared with the new time dimension.

    Args:
        lengths: the lengths to check.
        x: the batch they describe (its dimension 0 is the batch).
        name: the layer, for the message.
        time_dim: the axis of ``x`` the lengths count.

    Returns:
        ``lengths`` itself.

    Raises:
        TypeError: ``lengths`` is not a tensor.
        ValueError: a shape that does not match the batch, a negative length, or one beyond
            ``x.shape[time_dim]``.
    """
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"{name}: lengths must be a tensor, got {type(lengths).__name__}")
    if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name}: lengths must have shape ({x.shape[0]},) to match the batch of x with shape "
            f"{tuple(x.shape)}, got {tuple(lengths.shape)}"
        )
    from ..backend import is_tracing

    if is_tracing() or not lengths.numel():
        return lengths
    limit = x.shape[time_dim]
    ref, version, hi = _LAST_CHECKED
    if ref is not None and ref() is lengths and version == lengths._version:
        if hi > limit:
            raise ValueError(
                f"{name}: lengths go up to {hi}, beyond the {limit} time steps of x "
                f"(shape {tuple(x.shape)})"
            )
        return lengths
    # One host synchronisation for both bounds (it is a device sync on accelerators).
    lo, hi = (int(v) for v in torch.stack(torch.aminmax(lengths)).tolist())
    if lo < 0:
        raise ValueError(f"{name}: lengths must be non-negative, got a minimum of {lo}")
    if hi > limit:
        raise ValueError(
            f"{name}: lengths go up to {hi}, beyond the {limit} time steps of x "
            f"(shape {tuple(x.shape)})"
        )
    _LAST_CHECKED[:] = [weakref.ref(lengths), lengths._version, hi]
    return lengths


def check_params(params: Any, expected: dict[str, tuple[int, ...]], name: str) -> None:
    """Check that ``params`` holds exactly the named tensors with the expected shapes.

    Args:
        params: a layer's params (or state) dict.
        expected: name -> shape of every tensor it must hold.
        name: the layer, for the message.

    Raises:
        TypeError: ``params`` is not a dict.
        ValueError: a name is missing or unexpected, or a shape differs (the message says
            which).
    """
    if not isinstance(params, dict):
        raise TypeError(f"{name}: params must be a dict, got {type(params).__name__}")
    missing = [k for k in expected if k not in params]
    unexpected = [k for k in params if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{name}: params do not match the layer: missing {missing}, unexpected {unexpected}"
        )
    for k, shape in expected.items():
        got = tuple(params[k].shape)
        if got != tuple(shape):
            raise ValueError(f"{name}: params[{k!r}] has shape {got}, expected {tuple(shape)}")
