"""speechain's optimiser knobs as compositions of gradient transformations.

speechain's ``OptimScheduler`` takes ``accum_grad``, ``step_per_update``, ``ft_factor``,
``grad_clip`` with ``grad_norm_type`` and ``updated_modules``. Each is one transformation here,
and :func:`speechain_optimizer` chains them in speechain's order, so a recipe ports as a value::

    tx = speechain_optimizer(fctc.optim.adam(1e-3), accum_grad=2, ft_factor=0.1,
                             grad_clip=5.0, grad_norm_type=2.0, updated_modules=["decoder"])
    step = fctc.train.make_train_step(model, tx, blank=vocab.blank_idx)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from ..backend import is_tracing
from ..optim.base import GradientTransformation, chain, set_to_zero, with_extra_args_support
from ..optim.clipping import clip_by_global_norm
from ..optim.transforms import scale
from ..optim.wrappers import MultiSteps, multi_transform

__all__ = ["EveryNStepsState", "every_n_steps", "only_modules", "speechain_optimizer"]


class EveryNStepsState(NamedTuple):
    """The state of :func:`every_n_steps`: calls seen (int32) and the inner state."""

    count: torch.Tensor
    inner_state: Any


def every_n_steps(inner: GradientTransformation, n: int) -> GradientTransformation:
    """Run ``inner`` only on every ``n``-th call (calls n, 2n, ...); other calls give zero updates,
    leave ``inner``'s state untouched and discard their gradient (speechain's
    ``step_per_update``). Compiled, it is branch-free (no recompiles); eagerly, the skipped calls
    do not run ``inner`` at all."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"every_n_steps: n must be a positive int, got {n!r}")
    inner = with_extra_args_support(inner)

    def init(params):
        leaves = _tree.leaves(params)
        device = leaves[0].device if leaves else None
        return EveryNStepsState(torch.zeros((), dtype=torch.int32, device=device), inner.init(params))

    def update(updates, state, params=None, **extra):
        if n == 1:
            new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
            return new_updates, EveryNStepsState(state.count + 1, new_inner)
        on = torch.remainder(state.count + 1, n) == 0
        if not is_tracing() and not bool(on):
            # Eagerly, skip the inner update on the calls that discard it (one host read).
            zeros = _tree.map(torch.zeros_like, updates)
            return zeros, EveryNStepsState(state.count + 1, state.inner_state)
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
        out = _tree.map(lambda u: torch.where(on, u, torch.zeros_like(u)), new_updates)
        kept = _tree.map(lambda a, b: torch.where(on, a, b), new_inner, state.inner_state)
        return out, EveryNStepsState(state.count + 1, kept)

    return GradientTransformation(init, update)


def only_modules(inner: GradientTransformation, modules: Sequence[str]) -> GradientTransformation:
    """Train only the named top-level submodules (speechain's ``updated_modules``).

    Parameters under other top-level keys get zero updates and no optimiser state. Names are
    the first component of the parameter paths (``"encoder"``, ``"decoder"``).
    """
    if isinstance(modules, str):
        modules = [modules]
    wanted = list(modules)
    if not wanted:
        raise ValueError("only_modules: give at least one module name")

    def labels(params):
        if not isinstance(params, dict):
            raise TypeError("only_modules: params must be a dict keyed by module name")
        missing = [m for m in wanted if m not in params]
        if missing:
            raise ValueError(
                f"only_modules: no modules named {missing}; the model has {sorted(params)}"
            )
        return {k: ("train" if k in wanted else "freeze") for k in params}

    return multi_transform({"train": inner, "freeze": set_to_zero()}, labels)


def speechain_optimizer(
    optimizer: GradientTransformation,
    *,
    accum_grad: int = 1,
    step_per_update: int = 1,
    ft_factor: float = 1.0,
    grad_clip: float | None = None,
    grad_norm_type: float = 2.0,
    updated_modules: Sequence[str] | None = None,
) -> GradientTransformation:
    """speechain's ``OptimScheduler`` knobs around ``optimizer``, as one transformation.

    * ``accum_grad``: average gradients over that many calls, then update
      (``fctc.optim.MultiSteps``, mean).
    * ``step_per_update``: of those updates, apply only every n-th (:func:`every_n_steps`);
      the gradients in between are discarded, as speechain does. Schedules inside
      ``optimizer`` count applied updates.
    * ``ft_factor``: scale the learning rate (the update is multiplied by it).
    * ``grad_clip`` / ``grad_norm_type``: clip by the global ``grad_norm_type``-norm of the
      trained parameters' gradients, before the optimiser.
    * ``updated_modules``: train only these top-level submodules (:func:`only_modules`).

    Non-finite gradients need no knob: :func:`fctc.train.make_train_step` already skips them.
    """
    parts = []
    if grad_clip is not None:
        parts.append(clip_by_global_norm(grad_clip, norm_type=grad_norm_type))
    parts.append(optimizer)
    if ft_factor != 1.0:
        parts.append(scale(ft_factor))
    tx = chain(*parts) if len(parts) > 1 else optimizer
    if step_per_update != 1:
        tx = every_n_steps(tx, step_per_update)
    if accum_grad != 1:
        if not isinstance(accum_grad, int) or accum_grad < 1:
            raise ValueError(f"speechain_optimizer: accum_grad must be a positive int, got {accum_grad!r}")
        tx = MultiSteps(tx, accum_grad).gradient_transformation()
    if updated_modules is not None:
        tx = only_modules(tx, updated_modules)
    return tx
