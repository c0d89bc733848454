"""Elementary gradient transformations with optax's names, arguments, states and formulas.

Each update flattens its input trees once (:class:`~fctc.optim._leaves.Leaves`) and runs
``torch._foreach_*`` kernels over the leaf lists. Nothing is mutated: every result is a new
tensor; in-place foreach calls only touch tensors created in the same update.

Hyperparameters may be Python numbers or 0-d tensors (``inject_hyperparams`` passes tensors), and
step counts are int32 tensors, so no Python branch depends on a hyperparameter value and a
compiled step never recompiles when they change. ``None`` leaves in ``updates`` pass through as
``None`` (optax's convention), and an empty tree is a valid input.

How the leaf lists are processed on the CPU (cache blocking, torch's fused Adam kernel) is
:mod:`fctc.optim._kernels`' business; the results are the same to rounding everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import backend as _backend
from .. import tree as _tree
from . import _kernels
from ._kernels import AdamHyper, axpy, blocked, check_cpu_kernel
from ._leaves import bias_correction as _bias_correction
from ._leaves import (
    Leaves,
    add_scalar,
    ema,
    ema_sq,
    full_like,
    like_dtypes,
    on,
    promoted,
    scaled,
    tree_zeros,
)
from .base import EmptyState, GlobalScale, GradientTransformation, _can_donate, safe_int32_increment
from .masking import masked

__all__ = [
    "ScaleState",
    "ScaleByScheduleState",
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "TraceState",
    "AddDecayedWeightsState",
    "scale",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_by_adam",
    "scale_by_rms",
    "scale_by_stddev",
    "trace",
    "add_decayed_weights",
]

Scalar = Any  # a Python number or a 0-d tensor
ScalarOrSchedule = Any  # a Scalar or a callable count -> Scalar


def _count_like(params: Any) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int32, device=_tree.device_of(params))


# --------------------------------------------------------------------------------------------
# States (optax's names and fields)
# --------------------------------------------------------------------------------------------

ScaleState = EmptyState
AddDecayedWeightsState = EmptyState


class ScaleByScheduleState(NamedTuple):
    """The step count of :func:`scale_by_schedule` (int32 scalar tensor)."""

    count: torch.Tensor


class ScaleByAdamState(NamedTuple):
    """Adam's step count, first moment ``mu`` and second moment ``nu``."""

    count: torch.Tensor
    mu: Any
    nu: Any


class ScaleByRmsState(NamedTuple):
    """The moving average of squared updates of :func:`scale_by_rms`."""

    nu: Any


class ScaleByRmsWithCountState(NamedTuple):
    """:class:`ScaleByRmsState` with a step count (``bias_correction=True``)."""

    count: torch.Tensor
    nu: Any


class ScaleByRStdDevState(NamedTuple):
    """Moving averages of updates and of their squares (:func:`scale_by_stddev`)."""

    mu: Any
    nu: Any


class ScaleByRStdDevWithCountState(NamedTuple):
    """:class:`ScaleByRStdDevState` with a step count (``bias_correction=True``)."""

    count: torch.Tensor
    mu: Any
    nu: Any


class TraceState(NamedTuple):
    """The momentum accumulator of :func:`trace`."""

    trace: Any


# --------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------


def scale(step_size: Scalar) -> GradientTransformation:
    """Multiply every update by ``step_size`` (a number or a 0-d tensor).

    Args:
      step_size: the factor.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` with :data:`ScaleState`.
    """

    def init(params):
        del params
        return ScaleState()

    def update(updates, state, params=None, **extra):
        del params, extra
        return scaled(updates, step_size), state

    return GradientTransformation(init, update)


def scale_by_schedule(step_size_fn: Callable[[torch.Tensor], Scalar]) -> GradientTransformation:
    """Multiply updates by ``step_size_fn(count)``, ``count`` being the number of past updates.

    The count is an int32 tensor, so the schedule is evaluated with tensor arithmetic and a
    compiled step does not recompile as it advances.

    Args:
      step_size_fn: the schedule, ``count -> factor``.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` with :class:`ScaleByScheduleState`.
    """

    def init(params):
        return ScaleByScheduleState(count=_count_like(params))

    def update(updates, state, params=None, **extra):
        del params, extra
        step_size = step_size_fn(state.count)
        return scaled(updates, step_size), ScaleByScheduleState(safe_int32_increment(state.count))

    return GradientTransformation(init, update)


def _signed_schedule(learning_rate: Callable, sign: float) -> Callable:
    def fn(count):
        return sign * learning_rate(count)

    return fn


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    """Scale updates by ``-learning_rate`` (or ``+learning_rate`` with ``flip_sign=False``).

    ``learning_rate`` is a number, a 0-d tensor, or a schedule ``count -> value``; a schedule
    gives :func:`scale_by_schedule`'s state, a constant gives :func:`scale`'s (empty) state.

    Args:
      learning_rate: the learning rate.
      flip_sign: descend (multiply by ``-learning_rate``).

    Returns:
      A :class:`~fctc.optim.GradientTransformation`.
    """
    sign = -1.0 if flip_sign else 1.0
    if callable(learning_rate):
        return scale_by_schedule(_signed_schedule(learning_rate, sign))
    return scale(sign * learning_rate)


# --------------------------------------------------------------------------------------------
# Adam
# --------------------------------------------------------------------------------------------


def _adam_step(updates, state, params, h: AdamHyper, *, keep=None, scale: GlobalScale | None = None,
              apply=False, donate=False):
    """One Adam update over whole trees: ``(updates or new params, ScaleByAdamState)``.

    ``h`` may fuse the alias's later steps (weight decay, learning rate); ``keep`` is the
    per-leaf weight-decay mask; ``scale`` a preceding clip's factor (and the norm it came from);
    with ``apply`` the first result is ``params + updates`` (see
    :func:`~fctc.optim.update_and_apply`), written into the given buffers when ``donate`` and
    the gradients are finite. The arithmetic is :func:`fctc.optim._kernels.adam`'s.
    """
    lv = Leaves(updates)
    count = safe_int32_increment(state.count)
    if not lv.xs:
        return (params if apply else updates), ScaleByAdamState(count, state.mu, state.nu)
    ms = lv.take(state.mu, "state's mu")
    vs = lv.take(state.nu, "state's nu")
    ps = None
    if h.wd is not None or apply:
        if params is None:
            raise ValueError("adamw: weight decay needs the parameters; call update(grads, state, params)")
        ps = lv.take(params, "params")
    gs, ms_c, vs_c = promoted(lv.xs, ms, vs)
    # Donation (decided once, on the host) never lets non-finite gradients reach the donated
    # buffers: the caller can still discard the (non-finite) result and keep its old state,
    # as the train step does. A finite norm handed over with the scale proves them finite.
    norm = None if scale is None else scale.norm
    donate = apply and donate and _can_donate(ps, ms_c, vs_c, gs) and bool(_backend.all_finite(gs, norm))
    factor = None if scale is None else scale.factor
    out, mu, nu = _kernels.adam(
        gs, ms_c, vs_c, ps, keep, count, h.on(lv.device), factor=factor, apply=apply, donate=donate
    )
    state = ScaleByAdamState(count, lv.build(like_dtypes(mu, ms)), lv.build(like_dtypes(nu, vs)))
    if apply:  # parameters without an update (None) stay as they are
        fill = None if lv.idx is None else lv.treedef.flatten_up_to(params)
        return lv.build(out, fill=fill), state
    return lv.build(out), state


def _adam_init(params: Any, mu_dtype: torch.dtype | None) -> ScaleByAdamState:
    """Adam's initial state: a zero count and zero moments (``mu`` in ``mu_dtype``)."""
    return ScaleByAdamState(count=_count_like(params), mu=tree_zeros(params, mu_dtype), nu=tree_zeros(params))


def scale_by_adam(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
    cpu_kernel: str = "fused",
) -> GradientTransformation:
    """Rescale updates by Adam's bias-corrected moment ratio (Kingma & Ba, 2014).

    ``mu = b1 * mu + (1 - b1) * g``, ``nu = b2 * nu + (1 - b2) * g**2``, and the update is
    ``mu_hat / (sqrt(nu_hat + eps_root) + eps)`` with ``mu_hat = mu / (1 - b1**t)``,
    ``nu_hat = nu / (1 - b2**t)``.

    Args:
      b1, b2: the decay rates of the first and second moments.
      eps, eps_root: added outside and inside the square root.
      mu_dtype: store the first moment in this dtype (e.g. ``torch.bfloat16``).
      nesterov: use Dozat's (2016) Nesterov moment ``b1 * mu / (1 - b1**(t+1)) + (1 - b1) * g
        / (1 - b1**t)`` (NAdam).
      cpu_kernel: ``"fused"`` (torch's single-pass CPU kernel where it applies), ``"foreach"``
        or ``"split"`` (see :mod:`fctc.optim._kernels`); the same update to rounding.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` with :class:`ScaleByAdamState`.

    Raises:
      ValueError: an unknown ``cpu_kernel``.
    """
    h = AdamHyper(b1, b2, eps, eps_root, nesterov, None, None, check_cpu_kernel(cpu_kernel, "scale_by_adam"))

    def init(params):
        return _adam_init(params, mu_dtype)

    def update(updates, state, params=None, **extra):
        del params, extra
        return _adam_step(updates, state, None, h)

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------------------------
# RMS and centred RMS
# --------------------------------------------------------------------------------------------


def _rms_scale(gs, nu_hat, mu_hat, eps, eps_in_sqrt):
    """``g * rsqrt(nu_hat - mu_hat**2 + eps)`` or ``g / (sqrt(nu_hat - mu_hat**2) + eps)``;
    ``mu_hat=None`` drops the centring term."""
    d = None if mu_hat is None else torch._foreach_addcmul(nu_hat, mu_hat, mu_hat, value=-1)
    if eps_in_sqrt:
        if d is None:
            d = add_scalar(nu_hat, eps)
        else:
            add_scalar(d, eps, inplace=True)
        torch._foreach_rsqrt_(d)
        return list(torch._foreach_mul(gs, d))
    if d is None:
        d = torch._foreach_sqrt(nu_hat)
    else:
        torch._foreach_sqrt_(d)
    add_scalar(d, eps, inplace=True)
    return list(torch._foreach_div(gs, d))


def scale_by_rms(
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    """Divide updates by the root of a moving average of their squares (RMSProp's scaling).

    ``nu = decay * nu + (1 - decay) * g**2``; the update is ``g / sqrt(nu_hat + eps)`` with
    ``eps_in_sqrt`` (optax's default) or ``g / (sqrt(nu_hat) + eps)`` without (torch's RMSprop).
    ``nu_hat = nu / (1 - decay**t)`` with ``bias_correction``, else ``nu``; ``nu`` starts at
    ``initial_scale``.

    Args:
      decay: the moving average's decay.
      eps: added to the mean square.
      initial_scale: the initial ``nu``.
      eps_in_sqrt: add ``eps`` inside the root (optax) or outside (torch).
      bias_correction: divide by ``1 - decay**t``.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` with :class:`ScaleByRmsState` (:class:`ScaleByRmsWithCountState` with
      ``bias_correction``).
    """

    def init(params):
        nu = _tree.map(lambda p: full_like(p, initial_scale), params)
        if bias_correction:
            return ScaleByRmsWithCountState(count=_count_like(params), nu=nu)
        return ScaleByRmsState(nu=nu)

    def update(updates, state, params=None, **extra):
        del params, extra
        lv = Leaves(updates)
        count = safe_int32_increment(state.count) if bias_correction else None
        gs = lv.xs
        if not gs:
            new = ScaleByRmsWithCountState(count, state.nu) if bias_correction else state
            return updates, new
        dev = lv.device
        nus = lv.take(state.nu, "state's nu")
        d, e = on(decay, dev), on(eps, dev)
        bc = _bias_correction(d, count).to(dev) if bias_correction else None
        gs, nus_c = promoted(gs, nus)

        def kernel(gs_, nus_):
            nu = ema_sq(gs_, nus_, d)
            nu_hat = torch._foreach_div(nu, bc) if bc is not None else nu
            return _rms_scale(gs_, nu_hat, None, e, eps_in_sqrt), nu

        upd, nu = blocked(kernel, 2, gs, nus_c)
        nu = lv.build(like_dtypes(nu, nus))
        if bias_correction:
            return lv.build(upd), ScaleByRmsWithCountState(count, nu)
        return lv.build(upd), ScaleByRmsState(nu)

    return GradientTransformation(init, update)


def scale_by_stddev(
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    """Divide updates by a moving estimate of their standard deviation (centred RMSProp).

    ``mu`` and ``nu`` are moving averages of ``g`` and ``g**2``; the update is
    ``g / sqrt(nu_hat - mu_hat**2 + eps)`` (or ``g / (sqrt(nu_hat - mu_hat**2) + eps)`` when
    ``eps_in_sqrt=False``, torch's ``RMSprop(centered=True)``).

    Args:
      decay: the moving averages' decay.
      eps: added to the variance.
      initial_scale: the initial ``nu``.
      eps_in_sqrt: add ``eps`` inside the root (optax) or outside (torch).
      bias_correction: divide by ``1 - decay**t``.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` with :class:`ScaleByRStdDevState` (:class:`ScaleByRStdDevWithCountState`
      with ``bias_correction``).
    """

    def init(params):
        mu = tree_zeros(params)
        nu = _tree.map(lambda p: full_like(p, initial_scale), params)
        if bias_correction:
            return ScaleByRStdDevWithCountState(count=_count_like(params), mu=mu, nu=nu)
        return ScaleByRStdDevState(mu=mu, nu=nu)

    def update(updates, state, params=None, **extra):
        del params, extra
        lv = Leaves(updates)
        count = safe_int32_increment(state.count) if bias_correction else None
        gs = lv.xs
        if not gs:
            if bias_correction:
                return updates, ScaleByRStdDevWithCountState(count, state.mu, state.nu)
            return updates, state
        dev = lv.device
        mus = lv.take(state.mu, "state's mu")
        nus = lv.take(state.nu, "state's nu")
        d, e = on(decay, dev), on(eps, dev)
        bc = _bias_correction(d, count).to(dev) if bias_correction else None
        gs, mus_c, nus_c = promoted(gs, mus, nus)

        def kernel(gs_, mus_, nus_):
            mu = ema(gs_, mus_, d)
            nu = ema_sq(gs_, nus_, d)
            mu_hat = torch._foreach_div(mu, bc) if bc is not None else mu
            nu_hat = torch._foreach_div(nu, bc) if bc is not None else nu
            return _rms_scale(gs_, nu_hat, mu_hat, e, eps_in_sqrt), mu, nu

        upd, mu, nu = blocked(kernel, 3, gs, mus_c, nus_c)
        mu = lv.build(like_dtypes(mu, mus))
        nu = lv.build(like_dtypes(nu, nus))
        if bias_correction:
            return lv.build(upd), ScaleByRStdDevWithCountState(count, mu, nu)
        return lv.build(upd), ScaleByRStdDevState(mu, nu)

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------------------------
# Momentum and weight decay
# --------------------------------------------------------------------------------------------


def trace(
    decay: Scalar, nesterov: bool = False, accumulator_dtype: torch.dtype | None = None
) -> GradientTransformation:
    """Momentum: ``trace = g + decay * trace``; the update is ``trace`` (or, with ``nesterov``,
    ``g + decay * trace``).

    This is torch's SGD momentum buffer with ``dampening=0``. ``accumulator_dtype`` stores the
    trace in another dtype.

    Args:
      decay: the momentum.
      nesterov: return Nesterov's look-ahead.
      accumulator_dtype: the dtype of the trace (default: the parameters').

    Returns:
      A :class:`~fctc.optim.GradientTransformation` with :class:`TraceState`.
    """

    def init(params):
        return TraceState(trace=tree_zeros(params, accumulator_dtype))

    def update(updates, state, params=None, **extra):
        del params, extra
        lv = Leaves(updates)
        gs = lv.xs
        if not gs:
            return updates, state
        ts = lv.take(state.trace, "state's trace")
        d = on(decay, lv.device)
        gs, ts_c = promoted(gs, ts)

        def kernel(gs_, ts_):
            new = axpy(gs_, ts_, d)
            out = axpy(gs_, new, d) if nesterov else new
            return out, new

        upd, new = blocked(kernel, 2, gs, ts_c)
        new = like_dtypes(new, ts)
        return lv.build(upd), TraceState(trace=lv.build(new))

    return GradientTransformation(init, update)


def add_decayed_weights(
    weight_decay: Scalar = 0.0, mask: Any | Callable[[Any], Any] | None = None
) -> GradientTransformation:
    """Add ``weight_decay * params`` to the updates (decoupled weight decay, as in AdamW).

    ``mask`` (a tree of bools shaped like the parameters, or a prefix of it, or a function
    ``params -> mask``) restricts the decay to the selected leaves, through
    :func:`fctc.optim.masked` as in optax.

    Args:
      weight_decay: the decay rate.
      mask: the leaves that decay (None: all).

    Returns:
      A :class:`~fctc.optim.GradientTransformation`; its update raises ``ValueError`` without ``params``.
    """

    def init(params):
        del params
        return AddDecayedWeightsState()

    def update(updates, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError(
                "add_decayed_weights needs the parameters: call update(updates, state, params)"
            )
        lv = Leaves(updates)
        if not lv.xs:
            return updates, state
        ps = lv.take(params, "params")
        wd = on(weight_decay, lv.device)
        out = blocked(lambda u, p: (axpy(u, like_dtypes(p, u), wd),), 1, lv.xs, ps)[0]
        return lv.build(out), state

    tx = GradientTransformation(init, update)
    return tx if mask is None else masked(tx, mask)
