"""Hyperparameters in the optimiser state: optax's ``inject_hyperparams``.

The wrapped optimiser is rebuilt at every update from tensor hyperparameters held in its state
(schedules evaluated at the state's count), so a run can read them for logging
(:func:`find_hyperparams`), change them without rebuilding, and checkpoint them; a compiled step
does not recompile when they change. The wrapper forwards fusion: when the rebuilt optimiser is
a :class:`~fctc.optim.FusedTransformation` (``adam``, ``adamw``), so is the wrapper, and a
preceding clip's factor and :func:`~fctc.optim.update_and_apply` reach its kernel.

Schedules count the wrapper's updates (optax's ``count``) unless ``schedule_input`` names an
extra argument of ``update`` to count instead: ``schedule_input="epoch"`` gives epoch-interval
schedules, fed by :func:`fctc.train.make_train_step` from the train state's epoch
(``step.observe(state, epoch=e)``), so the learning rate changes at epoch boundaries whatever
the number of updates per epoch and however many batches were skipped.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from .. import backend as _backend
from .. import tree as _tree
from ._leaves import float_dtype
from .base import (
    FusedTransformation,
    _accepts_extra,
    safe_int32_increment,
    _scaled_apply,
    _scaled_update,
)

__all__ = ["InjectHyperparamsState", "inject_hyperparams", "find_hyperparams"]


class InjectHyperparamsState(NamedTuple):
    """The state of an :func:`inject_hyperparams` transformation.

    ``hyperparams`` maps each numeric hyperparameter to a tensor: the value the last update
    used. Read it for logging, or assign a new tensor (``state.hyperparams["learning_rate"] =
    torch.tensor(3e-4)``) to change it without rebuilding the optimiser. Scheduled ones are
    recomputed from ``count`` at every update.
    """

    count: torch.Tensor
    hyperparams: dict[str, torch.Tensor]
    inner_state: Any


def find_hyperparams(opt_state: Any) -> dict[str, torch.Tensor]:
    """The hyperparameters held in an optimiser state (the first :class:`InjectHyperparamsState`
    found, depth first), e.g. the learning rate the last update used, for logging.

    Args:
      opt_state: an optimiser state (a chain's tuple, a dict of them, ...).

    Returns:
      That state's ``hyperparams`` dict (0-d tensors).

    Raises:
      ValueError: the state holds no :class:`InjectHyperparamsState`.
    """
    is_inject = lambda x: isinstance(x, InjectHyperparamsState)  # noqa: E731
    for x in _tree.leaves(opt_state, is_leaf=is_inject):
        if is_inject(x):
            return x.hyperparams
    raise ValueError(
        "find_hyperparams: the optimiser state holds no InjectHyperparamsState; build the "
        "optimiser with fctc.optim.inject_hyperparams(...) to keep its hyperparameters in the state"
    )


def _annotation_is_int(annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty:
        return False
    if isinstance(annotation, str):
        parts = [p.strip() for p in annotation.replace("Optional[", "").rstrip("]").split("|")]
        return any(p in ("int", "bool") for p in parts)
    candidates = typing.get_args(annotation) or (annotation,)
    return any(c in (int, bool) for c in candidates)


def _integer_params(sig: inspect.Signature) -> set[str]:
    names = set()
    for name, p in sig.parameters.items():
        default_int = p.default is not p.empty and isinstance(p.default, int) and not isinstance(p.default, bool)
        if _annotation_is_int(p.annotation) or default_int or isinstance(p.default, bool):
            names.add(name)
    return names


class _Split(NamedTuple):
    """The factory's arguments by kind: schedules, numbers (become tensors), the rest."""

    scheduled: dict[str, Callable]
    numeric: dict[str, Any]
    other: dict[str, Any]


def _split_arguments(sig, static, integer_params, args, kwargs) -> _Split:
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    out = _Split({}, {}, {})
    for name, value in bound.arguments.items():
        if name in static or isinstance(value, bool) or (name in integer_params and isinstance(value, int)):
            out.other[name] = value
        elif callable(value):
            out.scheduled[name] = value
        elif isinstance(value, (int, float, torch.Tensor)):
            out.numeric[name] = value
        else:
            out.other[name] = value
    return out


def _as_hyperparam(v: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = _backend.as_tensor(v, device=device)
    if t.is_floating_point() or not isinstance(v, torch.Tensor):
        t = t.to(dtype)
    return t


def inject_hyperparams(
    inner_factory: Callable[..., Any],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: torch.dtype | None = None,
    *,
    schedule_input: str | None = None,
) -> Callable[..., FusedTransformation]:
    """Wrap an optimiser factory so its numeric hyperparameters live in the optimiser state.

    ``inject_hyperparams(adamw)(learning_rate=warmup_cosine_decay_schedule(...), b1=0.9)`` builds
    a transformation whose state is :class:`InjectHyperparamsState`. Every update rebuilds the
    inner transformation from ``inner_factory`` with 0-d tensor hyperparameters: schedules
    (callables) are evaluated at ``count``, other numbers are read from ``state.hyperparams``.
    Bools, ints passed for ``int``/``bool`` parameters, non-numeric values and the names in
    ``static_args`` are passed as they are (pass ``b1``, ``b2``, ``eps`` as static to keep
    Adam on torch's fused CPU kernel, which takes Python numbers).

    Args:
      inner_factory: a function of hyperparameters returning a transformation (``adamw``).
      static_args: names of arguments passed as they are.
      hyperparam_dtype: the dtype of floating hyperparameters (default: the widest floating
        dtype of the parameters); they are put on the parameters' device.
      schedule_input: None to evaluate schedules at the update count (optax), or the name of
        an extra argument of ``update`` whose value (an integer tensor) they are evaluated at
        instead, e.g. ``"epoch"``; ``init`` evaluates them at 0. An update without that
        argument raises ``TypeError``.

    Returns:
      A function taking ``inner_factory``'s arguments and returning a
      :class:`~fctc.optim.FusedTransformation` (its fused paths are the rebuilt optimiser's
      when it has them, the plain update and sum otherwise).

    Raises:
      ValueError: ``static_args`` names arguments ``inner_factory`` does not take.
    """
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    sig = inspect.signature(inner_factory)
    unknown = static - set(sig.parameters)
    if unknown:
        raise ValueError(
            f"inject_hyperparams: static_args {sorted(unknown)} are not parameters of "
            f"{inner_factory.__qualname__ if inspect.isfunction(inner_factory) else inner_factory!r}; "
            f"it takes {list(sig.parameters)}"
        )
    integer_params = _integer_params(sig)

    @functools.wraps(inner_factory)
    def wrapped(*args, **kwargs) -> FusedTransformation:
        split = _split_arguments(sig, static, integer_params, args, kwargs)
        return _injected(inner_factory, split, hyperparam_dtype, schedule_input)

    return wrapped


def _schedule_count(state: InjectHyperparamsState, extra: dict, schedule_input: str | None):
    """What the schedules are evaluated at: the update count, or the named extra argument."""
    if schedule_input is None:
        return state.count
    if extra.get(schedule_input) is None:
        raise TypeError(
            f"inject_hyperparams: the schedules count {schedule_input!r}, so update needs "
            f"{schedule_input}=...; fctc.train.make_train_step passes the train state's "
            f"observations (state = step.observe(state, {schedule_input}=...))"
        )
    return _backend.as_tensor(extra[schedule_input], device=state.count.device).to(torch.int32)


def _injected(inner_factory: Callable, split: _Split, hyperparam_dtype, schedule_input) -> FusedTransformation:
    """The transformation built by :func:`inject_hyperparams` for one set of arguments."""
    # Whether the inner update takes **extra, decided once eagerly (inspect is not traceable).
    takes_extra: dict[str, bool] = {}

    def build(stored, count, dtype, device):
        hps = {k: _as_hyperparam(v, dtype, device) for k, v in stored.items()}
        hps.update({k: _as_hyperparam(f(count), dtype, device) for k, f in split.scheduled.items()})
        tx = inner_factory(**split.other, **hps)
        if "v" not in takes_extra:
            takes_extra["v"] = isinstance(tx, FusedTransformation) or _accepts_extra(tx.update)
        return tx, hps

    def rebuilt(state, params, updates, extra):
        dtype = hyperparam_dtype or float_dtype(params if params is not None else updates, highest=True)
        count = _schedule_count(state, extra, schedule_input)
        return build(state.hyperparams, count, dtype, state.count.device)

    def init(params):
        device = _tree.device_of(params)
        count = torch.zeros((), dtype=torch.int32, device=device)
        tx, hps = build(split.numeric, count, hyperparam_dtype or float_dtype(params, highest=True), device)
        return InjectHyperparamsState(count, hps, tx.init(params))

    def new_state(state, hps, inner_state):
        return InjectHyperparamsState(safe_int32_increment(state.count), hps, inner_state)

    def update(updates, state, params=None, *, scale=None, **extra):
        tx, hps = rebuilt(state, params, updates, extra)
        extra = extra if takes_extra["v"] else {}
        updates, inner_state = _scaled_update(tx, updates, state.inner_state, params, scale, extra)
        return updates, new_state(state, hps, inner_state)

    def apply(updates, state, params, *, scale=None, donate=False, **extra):
        tx, hps = rebuilt(state, params, updates, extra)
        extra = extra if takes_extra["v"] else {}
        params, inner_state = _scaled_apply(tx, updates, state.inner_state, params, scale, donate, extra)
        return params, new_state(state, hps, inner_state)

    return FusedTransformation(init, update, apply)

