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

from ..backend import checks_values, is_tracing
from .blocks import lengths_to_mask

__all__ = [
    "Model",
    "deterministic",
    "uses_key",
    "check_rank",
    "check_lengths",
    "length_bounds",
    "lengths_follow",
    "check_params",
]


class Model(NamedTuple):
    """A pure model: ``init(key) -> (params, state)`` and
    ``apply(params, state, *inputs, train=False, key=None) -> (outputs, state)``.

    A NamedTuple of the two functions, so a model is a value: it can be built, passed and
    composed (:func:`~fctc.nn.serial`) without hidden state.
    """

    init: Callable[..., tuple[Any, Any]]
    apply: Callable[..., tuple[Any, Any]]


_DETERMINISTIC = "__fctc_deterministic__"


def deterministic(model: Any) -> Any:
    """``model`` marked as drawing no random numbers: its ``apply`` never reads ``key``.

    The combinators (:func:`~fctc.nn.serial`, :func:`~fctc.nn.sequential`,
    :func:`~fctc.nn.masked`) and the models built of parts pass ``key=None`` to a part made only
    of such models instead of deriving keys for it (a key split costs tens of microseconds,
    paid for every chain on every step); parts that draw get the keys they got before, so the
    numbers drawn do not change. fctc's own layers are marked where they are deterministic
    (dropout when ``p == 0``); an unmarked model is assumed to draw. A loss function
    ``loss_fn(params, state, batch, key)`` can be marked too: :func:`fctc.train.make_train_step`
    then derives no key for it and passes ``key=None`` (:func:`fctc.train.ctc_loss_fn` is
    marked when its model is).

    Args:
        model: a :class:`Model` whose ``apply`` ignores ``key``, or such a function.

    Returns:
        The marked model or function (``model`` itself when the function takes attributes).
    """
    fn = model.apply if isinstance(model, Model) else model
    try:
        setattr(fn, _DETERMINISTIC, True)
    except (AttributeError, TypeError):  # a bound method or builtin: mark a forwarding function

        def forward(*args, _inner=fn, **kwargs):
            return _inner(*args, **kwargs)

        setattr(forward, _DETERMINISTIC, True)
        return Model(model.init, forward) if isinstance(model, Model) else forward
    return model


def _marked(model: Model, draws: bool) -> Model:
    """``model`` as it is when it ``draws`` random numbers, else :func:`deterministic` of it
    (for the layers and models whose drawing depends on how they were built)."""
    return model if draws else deterministic(model)


def uses_key(model: Any) -> bool:
    """Whether ``model`` (a :class:`Model`, or a loss function) may draw random numbers
    (read ``key``) in training.

    Args:
        model: a model or a function.

    Returns:
        False for one marked by :func:`deterministic`, True otherwise.
    """
    fn = model.apply if isinstance(model, Model) else model
    return not getattr(fn, _DETERMINISTIC, False)


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


# Host-side bounds of lengths tensors: id -> (weakref, version, lo, hi). A model nests many
# layers that receive the same lengths (or lengths derived from them by a known formula), so
# the values are read once per batch; the rest is bookkeeping on the host.
_BOUNDS: dict[int, tuple[weakref.ref, int, Any, Any]] = {}
_BOUNDS_MAX = 256


def _recall(cache: dict[int, tuple], lengths: torch.Tensor) -> tuple | None:
    """What ``cache`` holds for ``lengths`` (after its weakref and version), while that tensor
    is alive and unmodified; None otherwise."""
    if lengths.is_inference():  # no version counter: never remembered
        return None
    entry = cache.get(id(lengths))
    if entry is None or entry[0]() is not lengths or entry[1] != lengths._version:
        return None
    return entry[2:]


def _store(cache: dict[int, tuple], lengths: torch.Tensor, *values: Any) -> None:
    """Remember ``values`` for ``lengths`` in ``cache`` (:func:`_recall` gives them back)."""
    if lengths.is_inference():  # made in inference mode: it has no version to check later
        return
    if len(cache) >= _BOUNDS_MAX:
        for k in [k for k, e in cache.items() if e[0]() is None] or list(cache)[: _BOUNDS_MAX // 2]:
            del cache[k]
    cache[id(lengths)] = (weakref.ref(lengths), lengths._version, *values)


def lengths_follow(new: torch.Tensor, old: torch.Tensor, fn: Callable[[int], int]) -> torch.Tensor:
    """Record that ``new == fn(old)`` element by element, for a non-decreasing ``fn``.

    When ``old``'s range is known on the host (it was checked by :func:`check_lengths`, or
    follows from lengths that were), ``new``'s range is ``[fn(lo), fn(hi)]``, so checking
    ``new`` later reads nothing back from the device. Integer lengths only; anything else is
    left to be read when checked.

    Args:
        new: the derived lengths (e.g. a convolution's output lengths).
        old: the lengths they were computed from.
        fn: the same formula on Python ints, non-decreasing.

    Returns:
        ``new`` itself.
    """
    if not (old.dtype.is_floating_point or new.dtype.is_floating_point or is_tracing()):
        bounds = _recall(_BOUNDS, old)
        if bounds is not None:
            _store(_BOUNDS, new, fn(bounds[0]), fn(bounds[1]))
    return new


# Padding masks of lengths tensors: id -> (weakref, version, time, inference mode, mask). The
# layers of a block see the same lengths object and time size, so they share one mask.
_MASKS: dict[int, tuple[weakref.ref, int, int, bool, torch.Tensor]] = {}


def padding_mask(lengths: torch.Tensor, time: int) -> torch.Tensor:
    """A bool ``(B, 1, time)`` mask, True on the padding (positions at or beyond each length),
    for ``x.masked_fill(mask, 0)`` on ``(B, C, time)`` activations.

    Eagerly the mask is made once per lengths tensor and time size and reused while that
    tensor is alive and unmodified (every masked layer of a block asks for the same one); under
    tracing it is computed each time. Float lengths are truncated, as
    :func:`~fctc.nn.lengths_to_mask` does.

    Args:
        lengths: a 1-D tensor of per-example lengths.
        time: the time size ``T``.

    Returns:
        The mask, on ``lengths``' device (do not modify it: it may be shared).
    """
    cache = type(lengths) is torch.Tensor and not is_tracing()
    if cache:
        inference = torch.is_inference_mode_enabled()
        known = _recall(_MASKS, lengths)
        # A mask made in inference mode cannot be saved for a backward pass: reused only there.
        if known is not None and known[0] == time and (inference or not known[1]):
            return known[2]
    mask = ~lengths_to_mask(lengths, time).unsqueeze(1)
    if cache:
        _store(_MASKS, lengths, time, inference, mask)
    return mask


def length_bounds(lengths: torch.Tensor) -> tuple[int, int]:
    """The smallest and the largest of non-empty ``lengths``, as Python ints.

    Read back once per tensor (one read for both, a device sync on accelerators) and
    remembered while the tensor is alive and unmodified; lengths derived from known ones by
    :func:`lengths_follow` are known without a read. Float lengths are truncated, as
    :func:`~fctc.nn.lengths_to_mask` does.

    Args:
        lengths: a non-empty 1-D tensor.

    Returns:
        ``(lo, hi)``.
    """
    bounds = _recall(_BOUNDS, lengths)
    if bounds is None:
        bounds = tuple(int(v) for v in torch.stack(torch.aminmax(lengths)).tolist())
        _store(_BOUNDS, lengths, *bounds)
    return bounds


def check_lengths(lengths: Any, x: torch.Tensor, name: str, time_dim: int = -1) -> torch.Tensor:
    """Validate per-example lengths against ``x``: a 1-D integer or float tensor of size B.

    Values are checked against ``[0, x.shape[time_dim]]`` where :func:`fctc.backend.
    checks_values` allows it: eagerly on the CPU by default, never under tracing, on
    accelerators only when asked for (the check reads the values back, a host sync there).
    They are read once per tensor: a tensor already checked (or whose range follows from
    checked lengths, :func:`lengths_follow`), and not modified in place since, is only
    compared with the new time dimension, on the host.

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
    if not lengths.numel() or not checks_values([lengths]):
        return lengths
    lo, hi = length_bounds(lengths)
    if lo < 0:
        raise ValueError(f"{name}: lengths must be non-negative, got a minimum of {lo}")
    limit = x.shape[time_dim]
    if hi > limit:
        raise ValueError(
            f"{name}: lengths go up to {hi}, beyond the {limit} time steps of x "
            f"(shape {tuple(x.shape)})"
        )
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
    if type(params) is dict and params.keys() == expected.keys():  # the common case, quickly
        for k, shape in expected.items():  # (a loop: a generator costs more than the checks)
            if params[k].shape != shape:
                break
        else:
            return
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
