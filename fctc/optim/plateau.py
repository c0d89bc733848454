"""Reduce the step size when a monitored value stops improving (``optax.contrib.reduce_on_plateau``).

Every decision is a ``torch.where`` over the state tensors: no host synchronisation, one compiled
graph. The monitored value comes in as ``update(..., value=...)``: optax's contract, where every
call is one observation. A training loop that observes a validation metric now and then passes
``value_count=`` too (how many values it has observed so far, as
:func:`fctc.train.make_train_step` does from the train state's
:class:`~fctc.train.Observations`): a value is then taken in once, at the first update that
sees its count, and the other updates only apply the current scale.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import backend as _backend
from .. import tree as _tree
from ._leaves import float_dtype
from .base import GradientTransformation, safe_int32_increment

__all__ = ["ReduceLROnPlateauState", "reduce_on_plateau", "plateau_scale"]


class ReduceLROnPlateauState(NamedTuple):
    """The state of :func:`reduce_on_plateau`: optax.contrib's layout, and ``value_count``, the
    ``value_count=`` of the last value taken in (int32; 0 before any)."""

    scale: torch.Tensor
    best_value: torch.Tensor
    plateau_count: torch.Tensor
    cooldown_count: torch.Tensor
    count: torch.Tensor
    avg_value: torch.Tensor
    value_count: torch.Tensor


def _check(factor: float, rtol: float, atol: float) -> None:
    if not 0.0 < factor < 1.0:
        raise ValueError(f"reduce_on_plateau: factor must be in the range (0, 1), got factor={factor}")
    if rtol < 0.0 or atol < 0.0:
        raise ValueError(f"reduce_on_plateau: rtol and atol must be non-negative, got rtol={rtol}, atol={atol}")
    if rtol == 0.0 and atol == 0.0:
        raise ValueError("reduce_on_plateau: at least one of rtol or atol must be positive, got both 0")
    if rtol > 1.0:
        raise ValueError(f"reduce_on_plateau: rtol must be <= 1, got rtol={rtol}")


def _averaged(state: ReduceLROnPlateauState, avg, factor, patience, rtol, atol, cooldown, min_scale):
    """The state after one complete average ``avg`` (optax's rule, branch-free)."""
    improved = avg < (1 - rtol) * state.best_value - atol
    best = torch.where(improved, avg, state.best_value)
    plateau = torch.where(improved, torch.zeros_like(state.plateau_count), safe_int32_increment(state.plateau_count))
    hit = plateau == patience
    in_cooldown = state.cooldown_count > 0
    zero = torch.zeros_like(plateau)
    reduced = torch.clamp(torch.where(hit, state.scale * factor, state.scale), min=min_scale)
    return state._replace(
        scale=torch.where(in_cooldown, state.scale, reduced.to(state.scale.dtype)),
        best_value=best,
        plateau_count=torch.where(in_cooldown, zero, torch.where(hit, zero, plateau)),
        cooldown_count=torch.where(
            in_cooldown, state.cooldown_count - 1, torch.where(hit, torch.full_like(zero, cooldown), zero)
        ),
    )


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
) -> GradientTransformation:
    """Scale updates down by ``factor`` when a monitored value stops improving (optax.contrib).

    ``update(..., value=loss)`` averages ``value`` over ``accumulation_size`` calls; each average
    that is not below ``(1 - rtol) * best - atol`` counts towards ``patience``. After
    ``patience`` such averages the scale is multiplied by ``factor`` (not below ``min_scale``)
    and ``cooldown`` averages are ignored. Updates are multiplied by ``state.scale``; place it
    after the optimiser in a chain and pass ``value=`` to the chain's update.

    ``update(..., value=v, value_count=n)`` takes ``v`` in only when ``n`` differs from the
    ``value_count`` of the last value taken in, so a loop that passes its latest observation at
    every update counts each observation once (see the module notes). Inside
    :func:`fctc.train.make_train_step` that is how it runs: ``step.observe(state, val_loss)``
    after each validation, and ``patience`` counts validations.

    Args:
      factor: the reduction factor, in (0, 1).
      patience: averages without improvement before a reduction.
      rtol, atol: what counts as an improvement (at least one positive; ``rtol <= 1``).
      cooldown: averages ignored after a reduction.
      accumulation_size: calls averaged into one value.
      min_scale: the lowest scale.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` with :class:`ReduceLROnPlateauState`; its
      update raises ``TypeError`` without ``value=``.

    Raises:
      ValueError: a bad ``factor``, ``rtol`` or ``atol``.
    """
    _check(factor, rtol, atol)

    def init(params):
        device = _tree.device_of(params)
        i32 = dict(dtype=torch.int32, device=device)
        return ReduceLROnPlateauState(
            scale=torch.ones((), dtype=float_dtype(params, highest=False), device=device),
            best_value=torch.full((), float("inf"), dtype=torch.float32, device=device),
            plateau_count=torch.zeros((), **i32),
            cooldown_count=torch.zeros((), **i32),
            count=torch.zeros((), **i32),
            avg_value=torch.zeros((), dtype=torch.float32, device=device),
            value_count=torch.zeros((), **i32),
        )

    def observed(state, value):
        """The state after taking in ``value`` (optax's rule)."""
        value = _backend.as_tensor(value, device=state.avg_value.device).to(state.avg_value.dtype)
        new_count = safe_int32_increment(state.count)
        avg = (state.count * state.avg_value + value) / new_count
        after = _averaged(state, avg, factor, patience, rtol, atol, cooldown, min_scale)
        done = new_count == accumulation_size
        return state._replace(
            scale=torch.where(done, after.scale, state.scale),
            best_value=torch.where(done, after.best_value, state.best_value),
            plateau_count=torch.where(done, after.plateau_count, state.plateau_count),
            cooldown_count=torch.where(done, after.cooldown_count, state.cooldown_count),
            count=torch.where(done, torch.zeros_like(new_count), new_count),
            avg_value=torch.where(done, torch.zeros_like(avg), avg),
        )

    def update(updates, state, params=None, *, value=None, value_count=None, **extra):
        del params, extra
        if value is None:
            raise TypeError(
                "reduce_on_plateau: update needs the monitored value, e.g. "
                "tx.update(grads, state, params, value=loss); inside fctc.train.make_train_step, "
                "report it with state = step.observe(state, value)"
            )
        new_state = observed(state, value)
        if value_count is not None:
            n = _backend.as_tensor(value_count, device=state.value_count.device).to(torch.int32)
            fresh = n != state.value_count
            new_state = _backend.select(fresh, new_state._replace(value_count=n), state)
        xs, spec = _tree.flatten(updates)
        if xs:
            xs = torch._foreach_mul(xs, new_state.scale)
        return _tree.unflatten(spec, xs), new_state

    return GradientTransformation(init, update)


def plateau_scale(opt_state: Any) -> torch.Tensor | None:
    """The product of the scales of every :class:`ReduceLROnPlateauState` in ``opt_state``.

    The learning rate the optimiser applies is the injected one
    (:func:`~fctc.optim.find_hyperparams`) times this factor, for logging.

    Args:
      opt_state: an optimiser state (a chain's tuple, a dict of them, ...).

    Returns:
      A 0-d tensor, or None when the state holds no plateau.
    """
    is_plateau = lambda x: isinstance(x, ReduceLROnPlateauState)  # noqa: E731
    scales = [x.scale for x in _tree.leaves(opt_state, is_leaf=is_plateau) if is_plateau(x)]
    if not scales:
        return None
    out = scales[0]
    for s in scales[1:]:
        out = out * s
    return out
