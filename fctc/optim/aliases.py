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

import optree
import torch

from .base import EmptyState, GradientTransformation, chain, identity
from .transforms import (
    ScaleByScheduleState,
    _adam_init,
    _adam_step,
    _is_none,
    _Leaves,
    safe_int32_increment,
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
    """
    first = (
        trace(decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)
        if momentum is not None
        else identity()
    )
    return chain(first, scale_by_learning_rate(learning_rate))


def _mask_per_leaf(mask: Any, updates: Any, lv: _Leaves) -> list[bool]:
    tree = mask(updates) if callable(mask) else mask
    try:
        full = optree.broadcast_prefix(tree, updates, is_leaf=_is_none, namespace="fctc")
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"adamw: mask must be a tree of bools shaped like the parameters (or a prefix of it); {e}"
        ) from None
    keep = full if lv.idx is None else [full[i] for i in lv.idx]
    out = []
    for k in keep:
        if isinstance(k, torch.Tensor):
            raise TypeError(
                "adamw: mask leaves must be Python bools (they are decided when the step is "
                "built), got a tensor; use e.g. lambda p: fctc.tree.map(lambda x: x.ndim > 1, p)"
            )
        out.append(bool(k))
    return out


def _fused_adam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar,
    b2: Scalar,
    eps: Scalar,
    eps_root: Scalar,
    mu_dtype: torch.dtype | None,
    nesterov: bool,
    decay: bool,
    weight_decay: Scalar = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    """Adam (``decay=False``) or AdamW as one transformation with the state of optax's chain."""
    scheduled = callable(learning_rate)
    lr_tx = scale_by_learning_rate(learning_rate)

    def init(params):
        states: list = [_adam_init(params, mu_dtype)]
        if decay:
            if mask is None:
                states.append(EmptyState())
            else:
                from .wrappers import MaskedState

                states.append(MaskedState(EmptyState()))
        states.append(lr_tx.init(params))
        return tuple(states)

    def update(updates, state, params=None, **extra):
        del extra
        return _update(updates, state, params, None)

    def scaled_update(updates, state, params, input_scale, **extra):
        """``update(updates * input_scale, ...)``, the factor applied inside the kernel."""
        del extra
        return _update(updates, state, params, input_scale)

    def apply(updates, state, params, *, input_scale=None, input_norm=None, donate=False, **extra):
        """``params + update(updates * input_scale, ...)`` and the new state, the sum taken in
        the kernel (see :func:`~fctc.optim.update_and_apply`); ``input_norm``, a norm of
        ``updates`` when the caller has one, spares the finiteness check of a donated call."""
        del extra
        if params is None:
            raise ValueError("update_and_apply: the parameters are needed; got params=None")
        return _update(
            updates, state, params, input_scale, apply=True, donate=donate, input_norm=input_norm
        )

    def _update(updates, state, params, input_scale, apply=False, donate=False, input_norm=None):
        n = 3 if decay else 2
        if not isinstance(state, tuple) or len(state) != n:
            raise ValueError(
                f"{'adamw' if decay else 'adam'}: expected the {n}-tuple state built by this "
                f"optimiser's init, got {type(state).__name__}"
            )
        adam_state, lr_state = state[0], state[-1]
        if scheduled:
            lr = learning_rate(lr_state.count)
            lr_state = ScaleByScheduleState(safe_int32_increment(lr_state.count))
        else:
            lr = learning_rate
        wd_mask = None
        if decay and mask is not None:
            wd_mask = _mask_per_leaf(mask, updates, _Leaves(updates))
        new_updates, adam_state = _adam_step(
            updates,
            adam_state,
            params,
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            nesterov=nesterov,
            lr=-lr,
            wd=weight_decay if decay else None,
            wd_mask=wd_mask,
            input_scale=input_scale,
            apply=apply,
            donate=donate,
            input_norm=input_norm,
        )
        return new_updates, (adam_state, *state[1:-1], lr_state)

    update.fctc_scaled_update = scaled_update
    update.fctc_apply = apply
    return GradientTransformation(init, update)


def adam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Adam: ``chain(scale_by_adam(...), scale_by_learning_rate(learning_rate))``, fused.

    Matches ``torch.optim.Adam(lr, betas=(b1, b2), eps=eps)`` up to rounding; ``nesterov=True``
    is NAdam's moment (optax's ``nadam``).
    """
    return _fused_adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, decay=False)


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
) -> GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), fused.

    ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``: the parameter moves by
    ``-learning_rate * (adam_update + weight_decay * param)``, as in
    ``torch.optim.AdamW(lr, betas, eps, weight_decay)``. ``mask`` (tree of bools, a prefix of
    one, or ``params -> tree``) selects the leaves that decay. Needs ``params`` in ``update``.
    """
    return _fused_adam(
        learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, decay=True,
        weight_decay=weight_decay, mask=mask,
    )


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
    """
    kw = dict(decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt,
              bias_correction=bias_correction)
    first = scale_by_stddev(**kw) if centered else scale_by_rms(**kw)
    last = trace(decay=momentum, nesterov=nesterov) if momentum is not None else identity()
    return chain(first, scale_by_learning_rate(learning_rate), last)
