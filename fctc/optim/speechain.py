"""speechain's optimiser knobs as compositions of gradient transformations.

speechain's ``OptimScheduler`` takes ``accum_grad``, ``step_per_update``, ``ft_factor``,
``grad_clip`` with ``grad_norm_type`` and ``updated_modules``, and a scheduler subclass
(``Noamlr``, ...) whose ``update_lr(real_step)`` sets the learning rate. Each is one
transformation here, and :func:`speechain_optimizer` chains them in speechain's order, so a
recipe ports as a value::

    tx = fctc.optim.speechain_optimizer(fctc.optim.adam, schedule=fctc.optim.noam_schedule(1e-3, 4000),
                                        accum_grad=2, step_per_update=2, ft_factor=0.1, grad_clip=1.0)
    step = fctc.train.make_train_step(model, tx, blank=vocab.blank_idx)

Where speechain's behaviour and fctc's differ, both are options; the defaults are fctc's where
they are the better choice, speechain's where parity is the point:

* ``count``: speechain evaluates the schedule at ``real_step = (step_num - 1) // accum_grad + 1``,
  which counts the accumulation windows that ``step_per_update`` skips too (``"real_steps"``,
  the default: a ported schedule gives speechain's learning rates); ``"updates"`` counts applied
  updates only.
* ``clip_scope``: speechain clips by the norm over all of ``model.parameters()`` even with
  ``updated_modules`` (``"all"``); fctc's default ``"trained"`` takes the trained parameters
  only, so frozen modules cannot shrink the trained ones' step. (speechain's optimiser never
  zeroes the frozen modules' gradients, so in speechain they also add up over the run; fctc's
  ``"all"`` takes each window's own gradients.)
* ``grad_clip``: speechain's default is 1.0, fctc's None (no clipping unless asked for); pass
  ``grad_clip=1.0`` to port a recipe that relied on the default.
* ``nonfinite``: speechain discards the whole accumulation window when its gradient norm is not
  finite (``"discard_window"``); fctc's default ``"skip_batch"`` drops only the bad batch (the
  train step skips it, and the window waits for one more), which keeps the good gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .accumulation import MultiSteps, every_n_steps
from .base import GradientTransformation, chain
from .clipping import clip_by_global_norm
from .guards import apply_if_finite
from .hyperparams import inject_hyperparams
from .masking import selective_transform
from .transforms import scale

__all__ = ["only_modules", "speechain_optimizer"]

COUNTS = ("real_steps", "updates")
CLIP_SCOPES = ("trained", "all")
NONFINITE = ("skip_batch", "discard_window")
_NEVER = 2**31 - 1  # apply_if_finite's max_consecutive_errors: never apply a non-finite window


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


def _learning_rate(learning_rate: Any) -> GradientTransformation:
    """The learning rate as a factor on the updates of an optimiser built with learning rate 1
    (injected, so that :func:`~fctc.optim.find_hyperparams` reads ``learning_rate``)."""
    return scale(learning_rate)


def _check(optimizer, schedule, count, clip_scope, nonfinite, accum_grad, step_per_update) -> None:
    for name, value, allowed in (("count", count, COUNTS), ("clip_scope", clip_scope, CLIP_SCOPES),
                                 ("nonfinite", nonfinite, NONFINITE)):
        if value not in allowed:
            raise ValueError(f"speechain_optimizer: {name} must be one of {list(allowed)}, got {value!r}")
    for name, value in (("accum_grad", accum_grad), ("step_per_update", step_per_update)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"speechain_optimizer: {name} must be a positive int, got {value!r}")
    if schedule is not None and not callable(optimizer):
        raise TypeError(
            "speechain_optimizer: with schedule=, optimizer is a factory learning_rate -> "
            "transformation (fctc.optim.adam, functools.partial(fctc.optim.adamw, weight_decay=0.01)), "
            f"got {type(optimizer).__name__}"
        )
    if schedule is None and callable(optimizer):
        raise TypeError(
            "speechain_optimizer: optimizer is a function; pass a transformation "
            "(fctc.optim.adam(1e-3)), or a factory together with schedule="
        )


def _lr_scale(schedule: Callable, ft_factor: float) -> GradientTransformation:
    """``ft_factor * schedule(count)`` as an injected factor on the updates."""
    return inject_hyperparams(_learning_rate)(learning_rate=lambda count: ft_factor * schedule(count))


def _window_update(optimizer, schedule, count, ft_factor, grad_clip, grad_norm_type,
                   updated_modules, clip_scope) -> GradientTransformation:
    """What runs once per applied accumulation window: clip, the optimiser, ``ft_factor``
    (or the schedule counting updates), with the clip over all or the trained parameters."""
    trained = [optimizer(1.0) if schedule is not None else optimizer]
    if schedule is None and ft_factor != 1.0:
        trained.append(scale(ft_factor))
    if schedule is not None and count == "updates":
        trained.append(_lr_scale(schedule, ft_factor))
    clip = [] if grad_clip is None else [clip_by_global_norm(grad_clip, norm_type=grad_norm_type)]
    if updated_modules is not None and clip_scope == "all":
        inner = chain(*trained) if len(trained) > 1 else trained[0]
        return chain(*clip, only_modules(inner, updated_modules))
    parts = clip + trained
    return chain(*parts) if len(parts) > 1 else parts[0]


def speechain_optimizer(
    optimizer: GradientTransformation | Callable[[Any], GradientTransformation],
    *,
    schedule: Callable | None = None,
    count: str = "real_steps",
    accum_grad: int = 1,
    step_per_update: int = 1,
    ft_factor: float = 1.0,
    grad_clip: float | None = None,
    grad_norm_type: float = 2.0,
    updated_modules: Sequence[str] | None = None,
    clip_scope: str = "trained",
    nonfinite: str = "skip_batch",
) -> GradientTransformation:
    """speechain's ``OptimScheduler`` around ``optimizer``, as one transformation.

    The differences from speechain that are options here are listed in the module notes.

    Args:
      optimizer: the optimiser (``fctc.optim.adam(1e-3)``; its own schedules count its applied
        updates), or, with ``schedule``, a factory ``learning_rate -> transformation``
        (``fctc.optim.adam``), built with learning rate 1 and scaled by the schedule.
      schedule: speechain's scheduler: the learning rate as a function of the count
        (``fctc.optim.noam_schedule(lr, warmup)`` is ``Noamlr``), times ``ft_factor``; the
        value of the last update is what :func:`~fctc.optim.find_hyperparams` reports as
        ``learning_rate``, as speechain's ``get_lr`` does.
      count: what ``schedule`` counts: ``"real_steps"`` (speechain's ``real_step - 1``, the
        accumulation windows including those ``step_per_update`` skips) or ``"updates"``.
      accum_grad: average gradients over that many calls, then update (:class:`MultiSteps`
        with the mean, fctc's accumulation across calls).
      step_per_update: of those windows, apply only every n-th (:func:`every_n_steps`); the
        gradients in between are discarded, as speechain does.
      ft_factor: scale the learning rate (the update is multiplied by it).
      grad_clip: clip by the global ``grad_norm_type``-norm of the gradients, before the
        optimiser (None: no clipping; speechain's default is 1.0).
      grad_norm_type: the norm's p (a number, or inf).
      updated_modules: train only these top-level submodules (:func:`only_modules`).
      clip_scope: the clip's norm over the ``"trained"`` parameters or ``"all"`` of them.
      nonfinite: ``"skip_batch"`` (the train step drops a non-finite batch) or
        ``"discard_window"`` (a window whose gradient holds NaN/Inf is not applied, and counts
        as a window; build the step with ``make_train_step(..., skip_nonfinite=False)`` so
        that the non-finite gradients reach the optimiser).

    Returns:
      A :class:`~fctc.optim.GradientTransformation`.

    Raises:
      ValueError: a bad ``count``, ``clip_scope``, ``nonfinite``, ``accum_grad`` or
        ``step_per_update``.
      TypeError: a factory without ``schedule``, or ``schedule`` with a transformation.
    """
    _check(optimizer, schedule, count, clip_scope, nonfinite, accum_grad, step_per_update)
    tx = _window_update(optimizer, schedule, count, ft_factor, grad_clip, grad_norm_type,
                        updated_modules, clip_scope)
    if nonfinite == "discard_window":
        tx = apply_if_finite(tx, _NEVER)
    if step_per_update != 1:
        tx = every_n_steps(tx, step_per_update)
    if schedule is not None and count == "real_steps":
        tx = chain(tx, _lr_scale(schedule, ft_factor))
    if accum_grad != 1:
        tx = MultiSteps(tx, accum_grad).gradient_transformation()
    if updated_modules is not None and clip_scope == "trained":
        tx = only_modules(tx, updated_modules)
    return tx
