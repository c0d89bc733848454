"""Schedules: functions ``count -> value`` for learning rates and other hyperparameters.

Names, arguments and formulas follow optax. A schedule accepts a Python int or an integer tensor
of any shape (0-d for a step counter, 1-d to tabulate a whole run) and returns a float32 tensor of
the same shape on the same device. Piecewise definitions are evaluated with ``torch.where`` and
``clamp`` rather than Python branches on the count, so a compiled step that reads its learning
rate from a counter tensor never synchronises with the host and never recompiles as the count
advances.

Two schedules reproduce imperative schedulers step for step, counting like an optax schedule
(``count`` = number of updates already applied, so ``count=0`` is the first step):

* :func:`noam_schedule` is ESPnet's ``WarmupLR`` (and speechain's ``Noamlr`` without
  ``d_model``): the inverse-square-root Transformer schedule peaking at ``peak_value``.
* :func:`torch_onecycle_schedule` is ``torch.optim.lr_scheduler.OneCycleLR``, whose phase
  boundaries sit one step earlier than those of optax's :func:`cosine_onecycle_schedule`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from .. import backend as _backend

__all__ = [
    "Schedule",
    "constant_schedule",
    "polynomial_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "exponential_decay",
    "cosine_decay_schedule",
    "piecewise_interpolate_schedule",
    "linear_onecycle_schedule",
    "cosine_onecycle_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "join_schedules",
    "sgdr_schedule",
    "noam_schedule",
    "torch_onecycle_schedule",
]

_log = logging.getLogger(__name__)

Schedule = Callable[[Any], torch.Tensor]


def _count(count: Any) -> torch.Tensor:
    """The step count as a tensor (a Python int becomes a 0-d CPU tensor)."""
    if isinstance(count, torch.Tensor):
        return count
    return torch.as_tensor(count)


def _f32(count: torch.Tensor) -> torch.Tensor:
    return count.to(torch.float32)


def _constants(xs: Sequence[float], device: torch.device) -> torch.Tensor:
    """Python numbers as a float32 vector on ``device``: built on the CPU, filled in one by one
    elsewhere (a copy of host data would wait for an accelerator)."""
    if device.type == "cpu":
        return torch.tensor(xs, dtype=torch.float32)
    return torch.stack([_backend.as_tensor(x, torch.float32, device) for x in xs])


def _full(value: Any, like: torch.Tensor) -> torch.Tensor:
    """``value`` broadcast to ``like``'s shape as float32 on its device."""
    return torch.zeros(like.shape, dtype=torch.float32, device=like.device) + value


def _finish(value: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        value = value.to(torch.float32)
        if value.shape != like.shape:
            value = value + torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        return value
    return _full(value, like)


def constant_schedule(value: float) -> Schedule:
    """A schedule that always returns ``value``.

    Args:
      value: the value.

    Returns:
      A schedule ``count -> float32 tensor``.
    """

    def schedule(count):
        return _full(value, _count(count))

    return schedule


def polynomial_schedule(
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """Polynomial transition from ``init_value`` to ``end_value`` (optax formula).

    ``(init - end) * (1 - t / T) ** power + end`` with ``t = clip(count - transition_begin, 0,
    T)``: the value is held at ``init_value`` before ``transition_begin`` and at ``end_value``
    from ``transition_begin + transition_steps`` on. A non-positive ``transition_steps`` gives a
    constant ``init_value``; a negative ``transition_begin`` falls back to 0 (as in optax).

    Args:
      init_value, end_value: the values before and after the transition.
      power: the polynomial's exponent.
      transition_steps: the transition's length ``T``.
      transition_begin: the count at which it starts.

    Returns:
      A schedule ``count -> float32 tensor``.
    """
    if transition_steps <= 0:
        _log.info(
            "polynomial_schedule: transition_steps=%s is not positive; the schedule is the "
            "constant init_value",
            transition_steps,
        )
        return constant_schedule(init_value)
    if transition_begin < 0:
        _log.info("polynomial_schedule: negative transition_begin=%s falls back to 0", transition_begin)
        transition_begin = 0

    def schedule(count):
        c = _count(count)
        t = torch.clamp(_f32(c) - transition_begin, 0, transition_steps)
        frac = 1 - t / transition_steps
        return _finish((init_value - end_value) * frac**power + end_value, c)

    return schedule


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """Linear transition from ``init_value`` to ``end_value`` (:func:`polynomial_schedule`, power 1).

    With ``init_value = lr * start_factor`` and ``end_value = lr * end_factor`` it is
    ``torch.optim.lr_scheduler.LinearLR(start_factor, end_factor, total_iters=transition_steps)``.

    Args:
      init_value, end_value: the values before and after the transition.
      transition_steps: the transition's length.
      transition_begin: the count at which it starts.

    Returns:
      A schedule ``count -> float32 tensor``.
    """
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: Mapping[int, float] | None = None
) -> Schedule:
    """``init_value`` times the product of every ``scale`` whose boundary ``step <= count``.

    ``boundaries_and_scales`` maps a step to a non-negative factor (``{100: 0.1, 200: 0.1}``
    divides by 10 at step 100 and again at step 200), like ``MultiStepLR``.

    Args:
      init_value: the value before the first boundary.
      boundaries_and_scales: ``{step: factor}``.

    Returns:
      A schedule ``count -> float32 tensor``.

    Raises:
      ValueError: a negative factor.
    """
    items = sorted((boundaries_and_scales or {}).items())
    for step, scale in items:
        if not scale >= 0.0:
            raise ValueError(
                "piecewise_constant_schedule expects non-negative scale factors; got "
                f"{scale!r} at step {step}"
            )

    def schedule(count):
        c = _count(count)
        v = _full(init_value, c)
        for threshold, scale in items:
            v = torch.where(c >= threshold, v * scale, v)
        return v

    return schedule


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """``init_value * decay_rate ** ((count - transition_begin) / transition_steps)`` (optax).

    The value is ``init_value`` until ``transition_begin``; with ``staircase`` the exponent is
    floored so the value drops every ``transition_steps``. ``end_value`` is a floor when
    ``decay_rate < 1`` and a ceiling otherwise. ``transition_steps <= 0`` or ``decay_rate == 0``
    give a constant ``init_value``. ``exponential_decay(lr, 1, gamma)`` is ``ExponentialLR``.

    Args:
      init_value: the value before ``transition_begin``.
      transition_steps: the steps over which the value is multiplied by ``decay_rate``.
      decay_rate: the factor.
      transition_begin: the count at which the decay starts.
      staircase: drop in steps instead of continuously.
      end_value: the bound.

    Returns:
      A schedule ``count -> float32 tensor``.
    """
    if transition_steps <= 0:
        _log.info("exponential_decay: non-positive transition_steps gives a constant schedule")
        return constant_schedule(init_value)
    if decay_rate == 0:
        _log.info("exponential_decay: decay_rate=0 gives a constant schedule")
        return constant_schedule(init_value)
    if transition_begin < 0:
        _log.info("exponential_decay: negative transition_begin=%s falls back to 0", transition_begin)
        transition_begin = 0

    def schedule(count):
        c = _count(count)
        shifted = _f32(c) - transition_begin
        p = shifted / transition_steps
        if staircase:
            p = torch.floor(p)
        rate = _backend.as_tensor(decay_rate, torch.float32, c.device)
        decayed = torch.where(shifted <= 0, _full(init_value, c), init_value * torch.pow(rate, p))
        if end_value is not None:
            bound = _full(end_value, c)
            decayed = torch.maximum(decayed, bound) if decay_rate < 1.0 else torch.minimum(decayed, bound)
        return _finish(decayed, c)

    return schedule


def cosine_decay_schedule(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    """Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps`` (optax).

    ``init * ((1 - alpha) * (0.5 * (1 + cos(pi * t / T))) ** exponent + alpha)`` with
    ``t = min(count, T)``. With ``alpha = eta_min / lr`` it is ``CosineAnnealingLR(T_max=T)``
    for ``count <= T`` (which then rises again, while this one stays at the floor).

    Args:
      init_value: the value at count 0.
      decay_steps: the decay's length ``T`` (positive).
      alpha: the final value as a fraction of ``init_value``.
      exponent: the cosine's exponent.

    Returns:
      A schedule ``count -> float32 tensor``.

    Raises:
      ValueError: ``decay_steps`` is not positive.
    """
    if not decay_steps > 0:
        raise ValueError(
            f"cosine_decay_schedule requires positive decay_steps, got decay_steps={decay_steps}"
        )

    def schedule(count):
        c = _count(count)
        t = torch.clamp(_f32(c), max=float(decay_steps))
        cosine = 0.5 * (1 + torch.cos(math.pi * t / decay_steps))
        decayed = (1 - alpha) * cosine**exponent + alpha
        return _finish(init_value * decayed, c)

    return schedule


def _linear_interpolate(start, end, pct):
    return (end - start) * pct + start


def _cosine_interpolate(start, end, pct):
    return end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1)


def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: float,
    boundaries_and_scales: Mapping[int, float] | None = None,
) -> Schedule:
    """Interpolate (``'linear'`` or ``'cosine'``) between accumulated values at the boundaries.

    The value at boundary ``b_i`` is ``init_value`` times the product of the scales up to
    ``b_i``; between boundaries it is interpolated, after the last one it is held (optax).

    Args:
      interpolate_type: ``"linear"`` or ``"cosine"``.
      init_value: the value at count 0.
      boundaries_and_scales: ``{step: factor}``.

    Returns:
      A schedule ``count -> float32 tensor``.

    Raises:
      ValueError: an unknown ``interpolate_type`` or a negative factor.
    """
    if interpolate_type == "linear":
        interpolate = _linear_interpolate
    elif interpolate_type == "cosine":
        interpolate = _cosine_interpolate
    else:
        raise ValueError(
            f"interpolate_type must be 'linear' or 'cosine', got {interpolate_type!r}"
        )
    items = sorted((boundaries_and_scales or {}).items())
    for step, scale in items:
        if not scale >= 0.0:
            raise ValueError(
                "piecewise_interpolate_schedule expects non-negative scale factors; got "
                f"{scale!r} at step {step}"
            )
    bounds = [0] + [int(b) for b, _ in items]
    values = [float(init_value)]
    for _, scale in items:
        values.append(values[-1] * scale)

    def schedule(count):
        c = _count(count)
        cf = _f32(c)[..., None]
        b, v = _constants(bounds, c.device), _constants(values, c.device)
        size = torch.clamp(b[1:] - b[:-1], min=1)
        inside = (b[:-1] <= cf) & (cf < b[1:])
        pct = (cf - b[:-1]) / size
        segments = interpolate(v[:-1], v[1:], pct)
        out = torch.where(inside, segments, torch.zeros_like(segments)).sum(-1)
        return out + torch.where(b[-1] <= cf[..., 0], v[-1], torch.zeros_like(out))

    return schedule


def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """optax's three-phase linear one-cycle: up to ``peak_value``, back down, then to the floor.

    Phases end at ``int(pct_start * T)``, ``int(pct_final * T)`` and ``T`` steps; the values are
    ``peak / div_factor``, ``peak``, ``peak / div_factor`` and ``peak / div_factor /
    final_div_factor``. See :func:`torch_onecycle_schedule` for PyTorch's variant.

    Args:
      transition_steps: the cycle's length ``T`` (positive).
      peak_value: the peak.
      pct_start, pct_final: the ends of the first two phases, as fractions of ``T``.
      div_factor, final_div_factor: the start and end values' divisors.

    Returns:
      A schedule ``count -> float32 tensor``.

    Raises:
      ValueError: ``transition_steps`` is not positive.
    """
    if transition_steps <= 0:
        raise ValueError(
            f"linear_onecycle_schedule needs positive transition_steps, got {transition_steps}"
        )
    return piecewise_interpolate_schedule(
        "linear",
        peak_value / div_factor,
        {
            int(pct_start * transition_steps): div_factor,
            int(pct_final * transition_steps): 1.0 / div_factor,
            transition_steps: 1.0 / final_div_factor,
        },
    )


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """optax's cosine one-cycle: cosine up to ``peak_value`` at ``int(pct_start * T)``, then down.

    Starts at ``peak / div_factor`` and ends at ``peak / (div_factor * final_div_factor)`` at
    step ``T``. PyTorch's ``OneCycleLR`` puts its boundaries one step earlier; use
    :func:`torch_onecycle_schedule` to reproduce it.

    Args:
      transition_steps: the cycle's length ``T`` (positive).
      peak_value: the peak.
      pct_start: the end of the rise, as a fraction of ``T``.
      div_factor, final_div_factor: the start and end values' divisors.

    Returns:
      A schedule ``count -> float32 tensor``.

    Raises:
      ValueError: ``transition_steps`` is not positive.
    """
    if transition_steps <= 0:
        raise ValueError(
            f"cosine_onecycle_schedule needs positive transition_steps, got {transition_steps}"
        )
    return piecewise_interpolate_schedule(
        "cosine",
        peak_value / div_factor,
        {
            int(pct_start * transition_steps): div_factor,
            int(transition_steps): 1.0 / (div_factor * final_div_factor),
        },
    )


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i + 1]`` from ``boundaries[i]`` on, restarting its count at 0 there.

    Args:
      schedules: the pieces, in order.
      boundaries: the counts where each next piece starts (one fewer than ``schedules``).

    Returns:
      A schedule ``count -> float32 tensor``.

    Raises:
      ValueError: the numbers of schedules and boundaries do not fit.
    """
    schedules = list(schedules)
    boundaries = [int(b) for b in boundaries]
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"join_schedules: {len(schedules)} schedules need {len(schedules) - 1} boundaries, "
            f"got {len(boundaries)}"
        )

    def schedule(count):
        c = _count(count)
        out = _finish(schedules[0](c), c)
        for boundary, sched in zip(boundaries, schedules[1:]):
            out = torch.where(c < boundary, out, _finish(sched(c - boundary), c))
        return out

    return schedule


def warmup_constant_schedule(init_value: float, peak_value: float, warmup_steps: int) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then constant.

    Args:
      init_value: the value at count 0.
      peak_value: the value after the warm-up.
      warmup_steps: the warm-up's length.

    Returns:
      A schedule ``count -> float32 tensor``.
    """
    return linear_schedule(init_value, peak_value, warmup_steps)


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear warmup to ``peak_value``, then cosine decay to ``end_value`` (optax).

    ``decay_steps`` is the total length including warmup: the cosine runs over
    ``decay_steps - warmup_steps`` steps, which must be positive.

    Args:
      init_value: the value at count 0.
      peak_value: the value at the end of the warm-up.
      warmup_steps: the warm-up's length.
      decay_steps: the schedule's total length.
      end_value: the final value.
      exponent: the cosine's exponent.

    Returns:
      A schedule ``count -> float32 tensor``.
    """
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha, exponent),
        ],
        [warmup_steps],
    )


def warmup_exponential_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """Linear warmup to ``peak_value``, then :func:`exponential_decay` from it (optax).

    Args:
      init_value: the value at count 0.
      peak_value: the value at the end of the warm-up.
      warmup_steps: the warm-up's length.
      transition_steps, decay_rate, transition_begin, staircase, end_value: as
        :func:`exponential_decay`, counted from the end of the warm-up.

    Returns:
      A schedule ``count -> float32 tensor``.
    """
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            exponential_decay(
                peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value
            ),
        ],
        [warmup_steps],
    )


def sgdr_schedule(cosine_kwargs: Iterable[Mapping[str, Any]]) -> Schedule:
    """SGD with warm restarts: consecutive :func:`warmup_cosine_decay_schedule` cycles.

    Each dict holds the arguments of one cycle; its ``decay_steps`` is the cycle's length.

    Args:
      cosine_kwargs: one dict of :func:`warmup_cosine_decay_schedule` arguments per cycle.

    Returns:
      A schedule ``count -> float32 tensor``.

    Raises:
      ValueError: no cycle.
    """
    schedules, boundaries, step = [], [], 0
    for kwargs in cosine_kwargs:
        schedules.append(warmup_cosine_decay_schedule(**kwargs))
        step += int(kwargs["decay_steps"])
        boundaries.append(step)
    if not schedules:
        raise ValueError("sgdr_schedule needs at least one cycle in cosine_kwargs")
    return join_schedules(schedules, boundaries[:-1])


def noam_schedule(peak_value: float, warmup_steps: int) -> Schedule:
    """The Transformer ("Noam") schedule: linear warmup, then inverse-square-root decay.

    ``peak * w**0.5 * min(s**-0.5, s * w**-1.5)`` with the 1-based step ``s = count + 1`` and
    ``w = warmup_steps``: the value rises linearly to ``peak_value`` at ``count = w - 1`` (the
    ``w``-th update) and decays as ``peak * sqrt(w / s)`` afterwards. This is ESPnet's
    ``WarmupLR`` (``step_num = last_epoch + 1``) and speechain's ``Noamlr`` (1-based
    ``real_step``) with the optimiser's lr as ``peak_value``; ESPnet's ``NoamLR(model_size,
    warmup_steps)`` with lr ``lr`` is ``peak_value = lr * (model_size * warmup_steps) ** -0.5``.
    ``warmup_steps=0`` gives the pure decay ``peak * s**-0.5`` (as ESPnet does).

    Args:
      peak_value: the value at the end of the warm-up.
      warmup_steps: ``w`` (0 or more).

    Returns:
      A schedule ``count -> float32 tensor``.

    Raises:
      ValueError: a negative ``warmup_steps``.
    """
    if warmup_steps < 0:
        raise ValueError(f"noam_schedule: warmup_steps must be >= 0, got {warmup_steps}")

    def schedule(count):
        c = _count(count)
        s = torch.clamp(_f32(c) + 1, min=1.0)
        if warmup_steps == 0:
            return _finish(peak_value * torch.rsqrt(s), c)
        w = float(warmup_steps)
        factor = torch.minimum(torch.rsqrt(s), s * w**-1.5)
        return _finish(peak_value * w**0.5 * factor, c)

    return schedule


def torch_onecycle_schedule(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    """``torch.optim.lr_scheduler.OneCycleLR``'s learning rate at step ``count``.

    Same arguments and phases as PyTorch (``initial = max_lr / div_factor``, ``min = initial /
    final_div_factor``; the warmup ends at step ``pct_start * total_steps - 1``, the run at
    ``total_steps - 1``; ``three_phase`` adds a symmetric way back to ``initial`` first), so
    counts ``0 .. total_steps - 1`` give exactly the learning rates ``OneCycleLR`` hands the
    optimiser. Later counts hold the final value (PyTorch raises after one more step).
    Momentum cycling is not part of a learning-rate schedule.

    Args:
      max_lr, total_steps, pct_start, anneal_strategy, div_factor, final_div_factor,
        three_phase: ``OneCycleLR``'s arguments (``anneal_strategy`` ``"cos"`` or
        ``"linear"``).

    Returns:
      A schedule ``count -> float32 tensor``.

    Raises:
      ValueError: a bad ``total_steps``, ``pct_start`` or ``anneal_strategy``.
    """
    if not (isinstance(total_steps, int) and total_steps > 0):
        raise ValueError(f"torch_onecycle_schedule: total_steps must be a positive int, got {total_steps!r}")
    if not 0.0 <= pct_start <= 1.0:
        raise ValueError(f"torch_onecycle_schedule: pct_start must be in [0, 1], got {pct_start}")
    if anneal_strategy == "cos":
        anneal = _cosine_interpolate
    elif anneal_strategy == "linear":
        anneal = _linear_interpolate
    else:
        raise ValueError(
            f"torch_onecycle_schedule: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}"
        )
    initial = max_lr / div_factor
    min_lr = initial / final_div_factor
    if three_phase:
        phases = [
            (float(pct_start * total_steps) - 1, initial, max_lr),
            (float(2 * pct_start * total_steps) - 2, max_lr, initial),
            (float(total_steps - 1), initial, min_lr),
        ]
    else:
        phases = [
            (float(pct_start * total_steps) - 1, initial, max_lr),
            (float(total_steps - 1), max_lr, min_lr),
        ]
    # (end_step, start_step, start_value, end_value) as OneCycleLR walks them.
    spans, start = [], 0.0
    for end, lo, hi in phases:
        spans.append((end, start, lo, hi))
        start = end

    def phase_value(t, span):
        end, begin, lo, hi = span
        length = end - begin
        pct = (t - begin) / length if length != 0 else torch.ones_like(t)
        return anneal(lo, hi, pct)

    def schedule(count):
        c = _count(count)
        t = torch.clamp(_f32(c), 0.0, float(total_steps - 1))
        out = phase_value(t, spans[-1])
        for span in reversed(spans[:-1]):
            out = torch.where(t <= span[0], phase_value(t, span), out)
        return _finish(out, c)

    return schedule
