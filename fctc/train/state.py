"""The train state: everything a training run carries from one step to the next, as one pytree.

:class:`TrainState` is what :func:`fctc.train.make_train_step` takes and returns and what a
checkpoint saves; :func:`init_train_state` builds the first one, :func:`observe` records what
the loop tells the optimiser between steps (the epoch, a validation metric: its
:class:`Observations`), and :func:`check_nonfinite` turns a run of skipped (non-finite)
batches into an error.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import random as _random
from .. import tree as _tree
from ..data.batch import Batch as Batch  # its home is fctc.data; kept here as fctc.train.Batch
from ..nn.core import Model
from ..optim.base import GradientTransformation
from ..optim.loss_scale import DynamicLossScale, LossScaleState
from .routing import Labels, group_params

__all__ = [
    "TrainState",
    "Observations",
    "Batch",
    "init_train_state",
    "observe",
    "NonFiniteLossError",
    "check_nonfinite",
]


class Observations(NamedTuple):
    """What the loop has told the optimiser (:func:`observe`); part of the train state.

    The train step passes the three to every update of its transformations as extra keyword
    arguments, which those that do not use them ignore:

    * ``epoch``: int32, the epoch the loop last reported (0 before any): what epoch-interval
      schedules count (``inject_hyperparams(..., schedule_input="epoch")``);
    * ``value``: float32, the monitored metric the loop last reported (+inf, the worst, before
      any), and
    * ``value_count``: int32, how many values it has reported: :func:`fctc.optim.reduce_on_plateau`
      takes each reported value in once, at the first update after the report.
    """

    epoch: torch.Tensor
    value: torch.Tensor
    value_count: torch.Tensor

    def as_extra_args(self) -> dict[str, torch.Tensor]:
        """The keyword arguments the train step passes to the transformations' updates.

        Returns:
          ``{"epoch": ..., "value": ..., "value_count": ...}``.
        """
        return self._asdict()


def _observations(device: torch.device) -> Observations:
    i32 = dict(dtype=torch.int32, device=device)
    return Observations(
        epoch=torch.zeros((), **i32),
        value=torch.full((), float("inf"), dtype=torch.float32, device=device),
        value_count=torch.zeros((), **i32),
    )


class TrainState(NamedTuple):
    """A pytree of tensors: a whole training run's state, saved and restored as one.

    * ``params`` / ``model_state``: the model's parameters and buffers (running statistics).
    * ``opt_state``: the optimiser state (a dict of states, one per loss group, when the step
      routes several losses).
    * ``step``: int64 count of batches seen, skipped ones included.
    * ``key``: the run's base key; step ``n`` draws from ``fold_in(key, n)``, so resuming at
      step ``n`` replays exactly the randomness a straight run would have used.
    * ``loss_scale``: the dynamic loss scale for float16 training (``None`` otherwise).
    * ``nonfinite_count``: consecutive skipped (non-finite) batches; ``nonfinite_total``: all of
      them. Both int64 tensors, updated without a host sync.
    * ``observed``: the loop's :class:`Observations` (the epoch and the monitored metric that
      metric- and epoch-driven schedules read), set by :func:`observe`; saved with the rest,
      so a resumed run continues those schedules exactly. None only in states built by hand.
    """

    params: Any
    model_state: Any
    opt_state: Any
    step: torch.Tensor
    key: torch.Tensor
    loss_scale: LossScaleState | None
    nonfinite_count: torch.Tensor
    nonfinite_total: torch.Tensor
    observed: Observations | None = None


def init_train_state(
    model: Model,
    tx: GradientTransformation | dict[str, GradientTransformation],
    key: torch.Tensor,
    *,
    params: Any = None,
    model_state: Any = None,
    param_labels: Any = None,
    loss_scale: DynamicLossScale | None = None,
    device: torch.device | str | None = None,
) -> TrainState:
    """Build the first :class:`TrainState`.

    Args:
      model: the model (its ``init`` draws the parameters unless they are given).
      tx: the transformation, or a dict of them for multi-loss routing.
      key: the run's key: the model is initialised from ``split(key)[0]``; the run's base key
        is ``split(key)[1]``.
      params, model_state: start from these instead (fine-tuning).
      param_labels: with a dict ``tx``, a tree of group names shaped like ``params`` (or a
        prefix of it, or a function of ``params`` returning one) assigning each parameter to
        one group; the optimiser state holds one state per group, built on that group's
        parameters only.
      loss_scale: the ``loss_scale`` given to :func:`make_train_step`, for float16 training.
      device: move the parameters, model state and key there.

    Returns:
      The :class:`TrainState` at step 0.

    Raises:
      ValueError: ``param_labels`` without a dict ``tx``, or labels that do not fit.
    """
    init_key, run_key = _random.split(key)
    if params is None or model_state is None:
        p0, s0 = model.init(init_key)
        params = p0 if params is None else params
        model_state = s0 if model_state is None else model_state
    if device is not None:
        params = _tree.map(lambda x: x.to(device), params)
        model_state = _tree.map(lambda x: x.to(device), model_state)
        run_key = run_key.to(device)
    dev = run_key.device
    if isinstance(tx, dict):
        labels = Labels(param_labels, tx).of(params)
        opt_state = {name: t.init(group_params(params, labels, name)) for name, t in tx.items()}
    else:
        if param_labels is not None:
            raise ValueError("init_train_state: param_labels needs a dict of transformations")
        opt_state = tx.init(params)
    zero = torch.zeros((), dtype=torch.int64, device=dev)
    return TrainState(
        params=params,
        model_state=model_state,
        opt_state=opt_state,
        step=zero,
        key=run_key,
        loss_scale=None if loss_scale is None else loss_scale.init(dev),
        nonfinite_count=zero.clone(),
        nonfinite_total=zero.clone(),
        observed=_observations(dev),
    )


def observe(state: TrainState, value: Any = None, *, epoch: int | None = None) -> TrainState:
    """Record what the loop tells the optimiser: a monitored metric, the current epoch.

    Pure: returns a new state whose :class:`Observations` hold ``value`` (counted as one more
    report) and/or ``epoch``; parameters and optimiser state are untouched. The next train
    step hands them to its transformations (:class:`Observations`), so a plateau schedule sees
    each validation once and an epoch-interval schedule sees the epoch; and since they are
    part of the state, a checkpoint taken in between resumes exactly::

        state = step.observe(state, epoch=epoch)          # at the start of each epoch
        state = step.observe(state, val["val_loss"])      # after each validation

    Args:
      state: the train state.
      value: the monitored metric (a number or a 0-d tensor), or None.
      epoch: the epoch now starting (0-based), or None.

    Returns:
      The new :class:`TrainState`.

    Raises:
      ValueError: the state holds no observations, ``value`` is not a single number, or
        ``epoch`` is negative.
    """
    obs = state.observed
    if obs is None:
        raise ValueError(
            "observe: this train state has no observations; build it with "
            "step.init_state(key) or fctc.train.init_train_state(...)"
        )
    if value is not None:
        v = torch.as_tensor(value).detach()
        if v.numel() != 1:
            raise ValueError(f"observe: value must be a single number, got shape {tuple(v.shape)}")
        v = v.reshape(()).to(device=obs.value.device, dtype=obs.value.dtype)
        obs = obs._replace(value=v, value_count=obs.value_count + 1)
    if epoch is not None:
        if int(epoch) < 0:
            raise ValueError(f"observe: epoch must be >= 0, got {epoch}")
        obs = obs._replace(epoch=torch.full_like(obs.epoch, int(epoch)))
    return state._replace(observed=obs)


class NonFiniteLossError(RuntimeError):
    """Raised when too many batches in a row had a NaN/Inf loss or gradient."""


def check_nonfinite(state: TrainState, max_consecutive: int = 100) -> None:
    """Stop a training loop after ``max_consecutive`` non-finite batches in a row.

    Each skipped batch already left the model untouched; this check (one host sync, so call it
    every step or every few steps as you like) turns a run that is stuck into a clear error, as
    ESPnet3 does after 100 bad batches.

    Args:
      state: the current train state.
      max_consecutive: the limit.

    Raises:
      NonFiniteLossError: ``state.nonfinite_count`` reached the limit.
    """
    n = int(state.nonfinite_count)
    if n >= max_consecutive:
        raise NonFiniteLossError(
            f"{n} batches in a row had a non-finite loss or gradient (limit {max_consecutive}); "
            f"{int(state.nonfinite_total)} were skipped in all up to step {int(state.step)}. "
            "Lower the learning rate, enable gradient clipping, or check the data for empty "
            "or corrupt utterances."
        )
