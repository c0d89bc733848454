"""Ready-made optimisers with optax's names, arguments, defaults and state layouts.

``sgd`` and ``rmsprop`` are the very chains optax builds. ``adam`` and ``adamw`` keep the state
of optax's chains (``(ScaleByAdamState, [add_decayed_weights state,] learning-rate state)``) but
compute the whole chain in one fused pass over each block of leaves, which is what makes them
cost about what ``torch.optim.AdamW(foreach=True)`` costs. Their results equal the unfused
chains up to floating-point rounding.

``learning_rate`` is a number, a 0-d tensor, or a schedule ``count -> value``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._kernels import AdamHyper, check_cpu_kernel
from ._prefix import PrefixTree
from .base import EmptyState, FusedTransformation, GradientTransformation, chain, identity, safe_int32_increment
from .masking import MaskedState
from .transforms import (
    ScaleByScheduleState,
    _adam_init,
    _adam_step,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_stddev,
    trace,
)

__all__ = ["sgd", "adam", "adamw", "rmsprop"]

Scalar = Any
ScalarOrSchedule = Any


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: Scalar | None = None,
    nesterov: bool = False,
    accumulator_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    ``chain(trace(momentum, nesterov), scale_by_learning_rate(learning_rate))``: the same
    iterates as ``torch.optim.SGD(lr, momentum, nesterov=nesterov)`` with ``dampening=0``.

    Args:
      learning_rate: a number, a 0-d tensor, or a schedule.
      momentum: the momentum (None: plain SGD).
      nesterov: Nesterov's momentum.
      accumulator_dtype: the dtype of the momentum buffer.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` (a :func:`~fctc.optim.chain`).
    """
    first = (
        trace(decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)
        if momentum is not None
        else identity()
    )
    return chain(first, scale_by_learning_rate(learning_rate))


def _python_bool(m: Any, where: str) -> bool:
    """A weight-decay mask value: a Python bool (decided when the step is built)."""
    if isinstance(m, torch.Tensor):
        raise TypeError(
            f"{where}: mask leaves must be Python bools (they are decided when the step is "
            "built), got a tensor; use e.g. lambda p: fctc.tree.map(lambda x: x.ndim > 1, p)"
        )
    return bool(m)


def _fused_adam(learning_rate, h: AdamHyper, mu_dtype, decay: bool, mask: Any = None) -> FusedTransformation:
    """Adam (``decay=False``) or AdamW as one fused transformation with the state of optax's chain.

    ``h`` holds the hyperparameters with ``lr=None`` (taken from ``learning_rate``, a constant
    or a schedule, at each update) and ``wd`` (None for Adam).
    """
    name = "adamw" if decay else "adam"
    lr_tx = scale_by_learning_rate(learning_rate)
    wd_mask = None if mask is None else PrefixTree(mask, name, _python_bool)
    n = 3 if decay else 2

    def init(params):
        wd_state = [] if not decay else [EmptyState() if mask is None else MaskedState(EmptyState())]
        return (_adam_init(params, mu_dtype), *wd_state, lr_tx.init(params))

    def run(updates, state, params, scale, apply, donate):
        if not isinstance(state, tuple) or len(state) != n:
            raise ValueError(
                f"{name}: expected the {n}-tuple state built by this optimiser's init, got {type(state).__name__}"
            )
        lr_state = state[-1]
        if callable(learning_rate):
            lr = learning_rate(lr_state.count)
            lr_state = ScaleByScheduleState(safe_int32_increment(lr_state.count))
        else:
            lr = learning_rate
        keep = None if wd_mask is None else wd_mask.per_leaf(updates)
        out, adam_state = _adam_step(
            updates, state[0], params, h._replace(lr=-lr), keep=keep, scale=scale, apply=apply, donate=donate
        )
        return out, (adam_state, *state[1:-1], lr_state)

    def update(updates, state, params=None, *, scale=None, **extra):
        del extra
        return run(updates, state, params, scale, False, False)

    def apply(updates, state, params, *, scale=None, donate=False, **extra):
        del extra
        if params is None:
            raise ValueError("update_and_apply: the parameters are needed; got params=None")
        return run(updates, state, params, scale, True, donate)

    return FusedTransformation(init, update, apply)


def adam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
    cpu_kernel: str = "fused",
) -> FusedTransformation:
    """Adam: ``chain(scale_by_adam(...), scale_by_learning_rate(learning_rate))``, fused.

    Matches ``torch.optim.Adam(lr, betas=(b1, b2), eps=eps)`` up to rounding, and keeps the
    state layout of optax's chain.

    Args:
      learning_rate: a number, a 0-d tensor, or a schedule ``count -> value``.
      b1, b2, eps, eps_root, mu_dtype: as :func:`~fctc.optim.scale_by_adam`.
      nesterov: NAdam's moment (optax's ``nadam``).
      cpu_kernel: ``"fused"``, ``"foreach"`` or ``"split"`` (see :mod:`fctc.optim._kernels`).

    Returns:
      A :class:`~fctc.optim.FusedTransformation`.

    Raises:
      ValueError: an unknown ``cpu_kernel``.
    """
    h = AdamHyper(b1, b2, eps, eps_root, nesterov, None, None, check_cpu_kernel(cpu_kernel, "adam"))
    return _fused_adam(learning_rate, h, mu_dtype, decay=False)


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    weight_decay: Scalar = 1e-4,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    nesterov: bool = False,
    cpu_kernel: str = "fused",
) -> FusedTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), fused.

    ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``: the parameter moves by
    ``-learning_rate * (adam_update + weight_decay * param)``, as in
    ``torch.optim.AdamW(lr, betas, eps, weight_decay)``. Needs ``params`` in ``update``.

    Args:
      learning_rate: a number, a 0-d tensor, or a schedule ``count -> value``.
      b1, b2, eps, eps_root, mu_dtype: as :func:`~fctc.optim.scale_by_adam`.
      weight_decay: the decoupled decay rate.
      mask: the leaves that decay: a tree of Python bools, a prefix of one, or ``params ->
        tree`` (None: all).
      nesterov: NAdam's moment.
      cpu_kernel: ``"fused"``, ``"foreach"`` or ``"split"`` (see :mod:`fctc.optim._kernels`).

    Returns:
      A :class:`~fctc.optim.FusedTransformation`.

    Raises:
      ValueError: an unknown ``cpu_kernel``.
    """
    h = AdamHyper(b1, b2, eps, eps_root, nesterov, None, weight_decay, check_cpu_kernel(cpu_kernel, "adamw"))
    return _fused_adam(learning_rate, h, mu_dtype, decay=True, mask=mask)


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: Scalar | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> GradientTransformation:
    """RMSProp (Tieleman & Hinton, 2012), optionally centred and with momentum.

    ``chain(scale_by_rms or scale_by_stddev, scale_by_learning_rate, trace(momentum))``.
    ``torch.optim.RMSprop(lr, alpha=decay, eps, momentum, centered)`` is
    ``eps_in_sqrt=False`` (torch adds eps outside the root).

    Args:
      learning_rate: a number, a 0-d tensor, or a schedule.
      decay, eps, initial_scale, eps_in_sqrt, bias_correction: as
        :func:`~fctc.optim.scale_by_rms`.
      centered: divide by the standard deviation (:func:`~fctc.optim.scale_by_stddev`).
      momentum: a momentum after the learning rate (None: none).
      nesterov: Nesterov's momentum.

    Returns:
      A :class:`~fctc.optim.GradientTransformation` (a :func:`~fctc.optim.chain`).
    """
    kw = dict(decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt,
              bias_correction=bias_correction)
    first = scale_by_stddev(**kw) if centered else scale_by_rms(**kw)
    last = trace(decay=momentum, nesterov=nesterov) if momentum is not None else identity()
    return chain(first, scale_by_learning_rate(learning_rate), last)
