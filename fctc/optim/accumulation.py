"""Accumulation and cadence across calls: ``MultiSteps`` (optax's) and ``every_n_steps``.

fctc has one accumulation story with two places:

* inside one train step, ``make_train_step(..., accum_steps=k)`` splits the batch into ``k``
  micro-batches and sums their gradients before the chain runs once (the first choice: no host
  synchronisation, one compiled graph, one all-reduce);
* across calls, :class:`MultiSteps` folds each call's gradient into an accumulator and runs its
  inner transformation every ``k``-th call (optax's ``MultiSteps``, for loops that feed one
  micro-batch per call, and speechain's ``accum_grad``). :class:`fctc.distributed.DistributedMultiSteps`
  is the same class with one all-reduce per emitted update, built on :meth:`MultiSteps.emits`.

:func:`every_n_steps` (speechain's ``step_per_update``) runs its inner transformation on every
``n``-th call and discards the gradients in between. Both decide per call with one rule
(:func:`_run_when`): compiled, the inner update runs at every call and is selected with
``torch.where`` (branch-free, one graph), and so on accelerators, where reading a counter would
wait for the device; eagerly on the CPU, a call that emits nothing skips it (a free host read).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import backend as _backend
from .. import tree as _tree
from .base import GradientTransformation, safe_int32_increment, with_extra_args_support

__all__ = [
    "MultiStepsState",
    "MultiSteps",
    "skip_not_finite",
    "skip_large_updates",
    "EveryNStepsState",
    "every_n_steps",
]


def _run_when(on: torch.Tensor, tx: Any, updates: Any, inner_state: Any, params: Any, extra: dict):
    """``tx``'s update where ``on`` holds; zero updates and the old inner state elsewhere.

    Args:
      on: a 0-d bool tensor.
      tx: the inner transformation.
      updates, inner_state, params, extra: its arguments.

    Returns:
      ``(updates, inner_state)``. Eagerly on the CPU a False ``on`` skips ``tx`` altogether
      (its host read is free there); traced, or on an accelerator (where the read would wait
      for the device), ``tx`` runs and its results are selected, so one graph serves both.
    """
    if _backend.host_is_free([on]) and not bool(on):
        return _tree.map(torch.zeros_like, updates), inner_state
    new_updates, new_inner = tx.update(updates, inner_state, params, **extra)
    out = _backend.select(on, new_updates, _tree.map(torch.zeros_like, new_updates))
    return out, _backend.select(on, new_inner, inner_state)


# --- MultiSteps -----------------------------------------------------------------------------


class MultiStepsState(NamedTuple):
    """The state of :class:`MultiSteps` (optax's layout).

    ``mini_step``: calls since the last emitted update (int32); ``gradient_step``: emitted
    updates (int32); ``inner_opt_state``; ``acc_grads`` (the running mean or sum);
    ``skip_state``: what ``should_skip_update_fn`` returned last.
    """

    mini_step: torch.Tensor
    gradient_step: torch.Tensor
    inner_opt_state: Any
    acc_grads: Any
    skip_state: Any = ()


def skip_not_finite(updates: Any, gradient_step: torch.Tensor, params: Any) -> tuple[torch.Tensor, dict]:
    """A ``should_skip_update_fn`` for :class:`MultiSteps`: skip micro-steps with NaN/Inf.

    Args:
      updates: the incoming gradients.
      gradient_step: the state's ``gradient_step`` (unused).
      params: the parameters (unused).

    Returns:
      ``(should_skip, {"should_skip", "num_not_finite"})``, all tensors.
    """
    del gradient_step, params
    xs = [x for x in _tree.leaves(updates) if x.is_floating_point()]
    if xs:
        device = xs[0].device
        num = torch.stack([(~torch.isfinite(x)).sum().to(device) for x in xs]).sum().to(torch.int32)
    else:
        num = torch.zeros((), dtype=torch.int32)
    should_skip = num > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num}


def skip_large_updates(
    updates: Any, gradient_step: torch.Tensor, params: Any, max_squared_norm: float
) -> tuple[torch.Tensor, dict]:
    """A ``should_skip_update_fn``: skip micro-steps whose squared global norm is not below
    ``max_squared_norm`` (NaN norms are skipped too). Bind it with ``functools.partial``.

    Args:
      updates: the incoming gradients.
      gradient_step: the state's ``gradient_step`` (unused).
      params: the parameters (unused).
      max_squared_norm: the bound on the squared global 2-norm.

    Returns:
      ``(should_skip, {"should_skip", "norm_squared"})``, all tensors.
    """
    del gradient_step, params
    norm_sq = _tree.global_norm(updates) ** 2
    should_skip = torch.logical_not(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


def _no_skip(updates, gradient_step, params):
    del updates, params
    return torch.zeros((), dtype=torch.bool, device=gradient_step.device), ()


def _accumulated(gs: list, accs: list, mini: torch.Tensor, mean: bool) -> list:
    """The accumulators after adding ``gs``: a running (Welford) mean, as optax, or a sum."""
    if not gs:
        return []
    g32 = [g.to(a.dtype) for g, a in zip(gs, accs)]
    if mean:  # acc + (g - acc) / (n + 1)
        n1 = (mini + 1).to(accs[0].dtype)
        return list(torch._foreach_add(accs, torch._foreach_div(torch._foreach_sub(g32, accs), n1)))
    return list(torch._foreach_add(accs, g32))


class MultiSteps:
    """Gradient accumulation across calls: one inner update every ``k`` calls (optax's MultiSteps).

    Each :meth:`update` folds the incoming gradient into ``acc_grads`` and returns zeros, except
    on the ``k``-th call, where the inner optimiser runs on the accumulated gradient and its
    update is returned (see :func:`_run_when` for how a call that does not emit is skipped).
    For micro-batches inside one step prefer ``make_train_step(..., accum_steps=k)``. The
    inner optimiser's fused paths are used for its own update (a clip's factor still reaches
    AdamW's kernel), but not to apply it: :func:`~fctc.optim.update_and_apply` adds the
    (mostly zero) output in a second pass.

    Args:
      opt: the inner transformation.
      every_k_schedule: ``k``, an int or a function of ``gradient_step`` (the number of
        emitted updates).
      use_grad_mean: accumulate the mean of the gradients (else their sum).
      should_skip_update_fn: ``(updates, gradient_step, params) -> (0-d bool tensor,
        skip_state)``, rejecting a call as if it never happened (:func:`skip_not_finite`).
      accumulator_dtype: the dtype of ``acc_grads``.

    Raises:
      ValueError: ``every_k_schedule`` is an int below 1.
      TypeError: ``every_k_schedule`` is neither an int nor a function.
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[torch.Tensor], Any],
        use_grad_mean: bool = True,
        should_skip_update_fn: Callable | None = None,
        accumulator_dtype: torch.dtype = torch.float32,
    ):
        self._opt = with_extra_args_support(opt)
        if isinstance(every_k_schedule, int):
            if every_k_schedule < 1:
                raise ValueError(f"MultiSteps: every_k_schedule must be >= 1, got {every_k_schedule}")
            k = every_k_schedule
            self._every_k_schedule = lambda step: k
        elif callable(every_k_schedule):
            self._every_k_schedule = every_k_schedule
        else:
            raise TypeError(
                f"MultiSteps: every_k_schedule must be an int or a function of the gradient step, "
                f"got {type(every_k_schedule).__name__}"
            )
        self._use_grad_mean = use_grad_mean
        self._should_skip_update_fn = should_skip_update_fn or _no_skip
        self._accumulator_dtype = accumulator_dtype

    @property
    def inner_opt(self) -> GradientTransformation:
        """The wrapped optimiser.

        Returns:
          The inner transformation.
        """
        return self._opt

    def init(self, params: Any) -> MultiStepsState:
        """Zero counters and accumulators, and the inner optimiser's initial state.

        Args:
          params: the parameters.

        Returns:
          The :class:`MultiStepsState`.
        """
        device = _tree.device_of(params)
        gradient_step = torch.zeros((), dtype=torch.int32, device=device)
        _, skip_state = self._should_skip_update_fn(_tree.zeros_like(params), gradient_step, params)
        return MultiStepsState(
            mini_step=torch.zeros((), dtype=torch.int32, device=device),
            gradient_step=gradient_step,
            inner_opt_state=self._opt.init(params),
            acc_grads=_tree.zeros_like(params, dtype=self._accumulator_dtype),
            skip_state=skip_state,
        )

    def every_k(self, state: MultiStepsState) -> torch.Tensor:
        """``k`` for the current accumulation window, as an int32 tensor.

        Args:
          state: the current state.

        Returns:
          ``every_k_schedule(state.gradient_step)`` on the state's device.
        """
        k = self._every_k_schedule(state.gradient_step)
        return _backend.as_tensor(k, device=state.mini_step.device).to(torch.int32)

    def emits(self, state: MultiStepsState) -> torch.Tensor:
        """Whether the next :meth:`update` on ``state`` ends an accumulation window.

        Args:
          state: the current state.

        Returns:
          A 0-d bool tensor: the call is the ``k``-th of its window (it then emits the inner
          update, unless ``should_skip_update_fn`` rejects it).
        """
        return state.mini_step == (self.every_k(state) - 1)

    def update(self, updates: Any, state: MultiStepsState, params: Any = None, **extra) -> tuple[Any, MultiStepsState]:
        """Accumulate ``updates``; return the inner update every ``k`` calls, zeros otherwise.

        Args:
          updates: the gradients of this call.
          state: the current state.
          params: the parameters (passed to the inner update).
          **extra: passed to the inner update.

        Returns:
          ``(updates, new_state)``.

        Raises:
          ValueError: ``should_skip_update_fn`` did not return a 0-d bool tensor.
        """
        mini = state.mini_step
        k = self.every_k(state)
        should_skip, skip_state = self._should_skip_update_fn(updates, state.gradient_step, params)
        if not (isinstance(should_skip, torch.Tensor) and should_skip.dtype == torch.bool and should_skip.dim() == 0):
            raise ValueError(
                "MultiSteps: should_skip_update_fn must return a 0-d bool tensor as its first "
                f"output, got {should_skip!r}"
            )
        gs, spec = _tree.flatten(updates)
        new_accs = _accumulated(gs, spec.flatten_up_to(state.acc_grads), mini, self._use_grad_mean)
        acc_as_updates = _tree.unflatten(spec, [a.to(g.dtype) for a, g in zip(new_accs, gs)])
        emit = mini == (k - 1)
        keep = ~should_skip
        step_on = emit & keep
        out_updates, new_inner = _run_when(step_on, self._opt, acc_as_updates, state.inner_opt_state, params, extra)
        acc_out = [torch.where(emit, torch.zeros_like(a), a) for a in new_accs]
        new_state = MultiStepsState(
            mini_step=torch.where(keep, torch.remainder(safe_int32_increment(mini), k), mini),
            gradient_step=torch.where(step_on, safe_int32_increment(state.gradient_step), state.gradient_step),
            inner_opt_state=new_inner,
            acc_grads=_backend.select(keep, _tree.unflatten(spec, acc_out), state.acc_grads),
            skip_state=skip_state,
        )
        return out_updates, new_state

    def has_updated(self, state: MultiStepsState) -> torch.Tensor:
        """Whether the call that produced ``state`` emitted an inner update.

        Args:
          state: the state after a call.

        Returns:
          A 0-d bool tensor.
        """
        return (state.mini_step == 0) & (state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformation:
        """This accumulator as a plain :class:`~fctc.optim.GradientTransformation`.

        Returns:
          ``GradientTransformation(self.init, self.update)``.
        """
        return GradientTransformation(self.init, self.update)


# --- every_n_steps --------------------------------------------------------------------------


class EveryNStepsState(NamedTuple):
    """The state of :func:`every_n_steps`: calls seen (int32) and the inner state."""

    count: torch.Tensor
    inner_state: Any


def every_n_steps(inner: GradientTransformation, n: int) -> GradientTransformation:
    """Run ``inner`` only on every ``n``-th call (calls n, 2n, ...) (speechain's ``step_per_update``).

    Other calls give zero updates, leave ``inner``'s state untouched and discard their
    gradient (see :func:`_run_when` for how they are skipped).

    Args:
      inner: the transformation to run.
      n: the period, a positive int.

    Returns:
      A plain :class:`~fctc.optim.GradientTransformation` with :class:`EveryNStepsState`.

    Raises:
      ValueError: ``n`` is not a positive int.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"every_n_steps: n must be a positive int, got {n!r}")
    inner = with_extra_args_support(inner)

    def init(params):
        count = torch.zeros((), dtype=torch.int32, device=_tree.device_of(params))
        return EveryNStepsState(count, inner.init(params))

    def update(updates, state, params=None, **extra):
        if n == 1:
            new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
            return new_updates, EveryNStepsState(state.count + 1, new_inner)
        on = torch.remainder(state.count + 1, n) == 0
        out, new_inner = _run_when(on, inner, updates, state.inner_state, params, extra)
        return out, EveryNStepsState(state.count + 1, new_inner)

    return GradientTransformation(init, update)
