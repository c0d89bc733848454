"""speechain's optimiser knobs as compositions of gradient transformations.

speechain's ``OptimScheduler`` takes ``accum_grad``, ``step_per_update``, ``ft_factor``,
``grad_clip`` with ``grad_norm_type`` and ``updated_modules``. Each is one transformation here,
and :func:`speechain_optimizer` chains them in speechain's order, so a recipe ports as a value::

    tx = fctc.optim.speechain_optimizer(fctc.optim.adam(1e-3), accum_grad=2, ft_factor=0.1,
                                        grad_clip=5.0, grad_norm_type=2.0, updated_modules=["decoder"])
    step = fctc.train.make_train_step(model, tx, blank=vocab.blank_idx)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .accumulation import MultiSteps, every_n_steps
from .base import GradientTransformation, chain
from .clipping import clip_by_global_norm
from .masking import selective_transform
from .transforms import scale

__all__ = ["only_modules", "speechain_optimizer"]


def only_modules(inner: GradientTransformation, modules: Sequence[str]) -> GradientTransformation:
    """Train only the named top-level submodules (speechain's ``updated_modules``).

    :func:`~fctc.optim.selective_transform` with the other top-level keys frozen: their
    parameters get zero updates and no optimiser state.

    Args:
      inner: the optimiser of the trained modules.
      modules: the first components of the parameter paths to train (``"encoder"``).

    Returns:
      A :class:`~fctc.optim.GradientTransformation`; its init and update raise ``TypeError``
      when the parameters are not a dict and ``ValueError`` for names the model lacks.

    Raises:
      ValueError: no module is named.
    """
    wanted = [modules] if isinstance(modules, str) else list(modules)
    if not wanted:
        raise ValueError("only_modules: give at least one module name")

    def frozen(params: Any) -> dict[str, bool]:
        if not isinstance(params, dict):
            raise TypeError("only_modules: params must be a dict keyed by module name")
        missing = [m for m in wanted if m not in params]
        if missing:
            raise ValueError(f"only_modules: no modules named {missing}; the model has {sorted(params)}")
        return {k: k not in wanted for k in params}

    return selective_transform(inner, freeze_mask=frozen)


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

    Non-finite gradients need no knob: :func:`fctc.train.make_train_step` already skips them.

    Args:
      optimizer: the optimiser (e.g. ``fctc.optim.adam(1e-3)``).
      accum_grad: average gradients over that many calls, then update (:class:`MultiSteps`
        with the mean, fctc's accumulation across calls).
      step_per_update: of those updates, apply only every n-th (:func:`every_n_steps`); the
        gradients in between are discarded, as speechain does. Schedules inside
        ``optimizer`` count applied updates.
      ft_factor: scale the learning rate (the update is multiplied by it).
      grad_clip: clip by the global ``grad_norm_type``-norm of the trained parameters'
        gradients, before the optimiser (None: no clipping).
      grad_norm_type: the norm's p (a number, or inf).
      updated_modules: train only these top-level submodules (:func:`only_modules`).

    Returns:
      A :class:`~fctc.optim.GradientTransformation`.

    Raises:
      ValueError: ``accum_grad`` is not a positive int.
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
