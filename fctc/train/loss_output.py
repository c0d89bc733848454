"""What a loss function returns, and the rules that decide which of its losses are optimised.

A loss function given to :func:`fctc.train.make_train_step` returns ``(out, new_model_state)``,
``out`` being one of

* a scalar loss tensor (one transformation);
* a dict of named scalar losses (multi-loss routing: one per transformation group);
* :class:`LossOutput` ``(loss, stats, weight)``, or a plain 3-tuple in that order (ESPnet3's
  model return): ``loss`` is either of the above, ``stats`` a dict of values logged as they
  are (detached; ``stats/<key>`` in the step's metrics, ``val_<key>`` in evaluation), and
  ``weight`` the weight of this batch's statistics when they are averaged over micro-batches,
  batches and workers (ESPnet3's ``weight``, e.g. the batch size; None: the number of
  utterances).

:class:`LossRules` applies the seed's routing rules, each error naming the rule it enforces:
one transformation optimises one loss tensor (ESPnet3: "returning OptimizationStep with the
single optimizer is forbidden"), a dict of transformations needs named losses, and a name
with no transformation is an error, unless the user lists it in ``log_only``: such losses
are logged and never optimised (speechain's losses dict, whose ``optim_loss`` picks the one
to optimise).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

import torch

from .. import backend as _backend
from .. import tree as _tree

__all__ = ["LossOutput", "as_loss_output", "stats_tensors", "weight_of", "LossRules", "SINGLE"]

SINGLE = "loss"
"""The group name of a step with one transformation."""

_ESPNET_SINGLE = "ESPnet3's rule: returning OptimizationStep with the single optimizer is forbidden"
_ESPNET_MULTI = (
    "ESPnet3's rule: with multiple optimizers the loss must say which optimizer each loss updates"
)
_ESPNET_NAME = "ESPnet3's rule: every OptimizationStep names one of the configured optimizers"


class LossOutput(NamedTuple):
    """A loss function's output with statistics: ESPnet3's ``(loss, stats, weight)``.

    ``loss``: a scalar tensor, or a dict of named scalar losses. ``stats``: a dict of values
    to log (detached by the step), or None. ``weight``: the weight of these statistics in
    averages (a number or 0-d tensor, e.g. the batch size), or None for the number of
    utterances.
    """

    loss: Any
    stats: dict[str, torch.Tensor] | None = None
    weight: Any = None


def as_loss_output(out: Any) -> LossOutput:
    """``out`` (what a loss function returned first) as a :class:`LossOutput`.

    Args:
      out: a loss tensor, a dict of them, a :class:`LossOutput` or a 3-tuple
        ``(loss, stats, weight)``.

    Returns:
      The :class:`LossOutput`.

    Raises:
      TypeError: a tuple of another length, or stats that are not a dict.
    """
    if isinstance(out, tuple) and not isinstance(out, LossOutput):
        if len(out) != 3:
            raise TypeError(
                f"loss_fn returned a tuple of {len(out)} as its loss; it returns (loss, model_state) "
                "with loss a tensor, a dict of named losses, or (loss, stats, weight)"
            )
        out = LossOutput(*out)
    if not isinstance(out, LossOutput):
        return LossOutput(out)
    if out.stats is not None and not isinstance(out.stats, dict):
        raise TypeError(f"loss_fn: stats must be a dict of tensors, got {type(out.stats).__name__}")
    return out


def stats_tensors(stats: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """A loss function's statistics as detached float32 tensors on ``device``.

    Args:
      stats: what the loss function returned (numbers or tensors, by name).
      device: where they go.

    Returns:
      The statistics, by the same names.
    """
    return {k: _backend.as_tensor(v, device=device).detach().float() for k, v in stats.items()}


def weight_of(weight: Any, batch: Any, device: torch.device) -> torch.Tensor:
    """A batch's statistics weight as a 0-d float32 tensor on ``device``.

    Args:
      weight: what the loss function returned (a number or 0-d tensor), or None.
      batch: the (micro-)batch: None counts its utterances (dim 0 of its first tensor).
      device: where the weight goes.

    Returns:
      The weight.

    Raises:
      ValueError: the weight is not a single number.
    """
    if weight is None:
        weight = float(_tree.leaves(batch)[0].shape[0])
    w = _backend.as_tensor(weight, device=device)
    if w.numel() != 1:
        raise ValueError(f"loss_fn: weight must be a single number, got shape {tuple(w.shape)}")
    return w.detach().reshape(()).to(torch.float32)


class LossRules:
    """Which of a loss function's losses a step optimises, and which it only logs.

    Args:
      groups: the names of the transformations when routing (a dict ``tx``), or None for one.
      log_only: names of losses that are logged, never optimised.

    Raises:
      ValueError: a name is both a group and ``log_only``.
    """

    def __init__(self, groups: Collection[str] | None, log_only: Collection[str] = ()):
        self.groups = None if groups is None else tuple(groups)
        self.log_only = frozenset([log_only] if isinstance(log_only, str) else log_only)
        both = sorted(self.log_only & set(self.groups or ()))
        if both:
            raise ValueError(f"make_train_step: {both} are both transformation groups and log_only; pick one")

    def split(self, loss: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(optimised, logged)``: the losses by group, and those only logged, by name.

        Args:
          loss: the loss tensor or dict of named losses.

        Returns:
          Two dicts; with one transformation the optimised loss is under :data:`SINGLE` (and a
          dict's optimised entry is logged under its own name too).

        Raises:
          ValueError: the output breaks a routing rule (the message names the rule).
        """
        if self.groups is None:
            return self._single(loss)
        if not isinstance(loss, dict):
            raise ValueError(
                f"train_step: with a dict of transformations {sorted(self.groups)}, loss_fn must "
                f"return a dict of named losses, one per group ({_ESPNET_MULTI}); got one "
                f"{type(loss).__name__}"
            )
        unknown = [n for n in loss if n not in self.groups and n not in self.log_only]
        if unknown:
            raise ValueError(
                f"train_step: loss_fn returned a loss {unknown[0]!r} with no transformation; the "
                f"groups are {sorted(self.groups)} ({_ESPNET_NAME}); add a group for it, or log it "
                f"without optimising it: make_train_step(..., log_only=[{unknown[0]!r}])"
            )
        optimised = {n: v for n, v in loss.items() if n in self.groups}
        if not optimised:
            raise ValueError(
                f"train_step: loss_fn returned only the log_only losses {sorted(loss)}, so the step "
                f"has nothing to optimise; return a loss for at least one of the groups "
                f"{sorted(self.groups)}"
            )
        return optimised, {n: v for n, v in loss.items() if n in self.log_only}

    def _single(self, loss: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if not isinstance(loss, dict):
            return {SINGLE: loss}, {}
        names = sorted(loss)
        if not self.log_only:
            raise ValueError(
                f"train_step: loss_fn returned named losses {names} to a single transformation, "
                f"which optimises one loss tensor ({_ESPNET_SINGLE}); return the loss itself (and "
                "the rest as stats: LossOutput(loss, stats, weight)), route them (a dict of "
                "transformations with param_labels), or list those only logged in log_only"
            )
        kept = [n for n in names if n not in self.log_only]
        if len(kept) != 1:
            raise ValueError(
                f"train_step: a single transformation optimises one loss, but loss_fn returned "
                f"{kept} besides the log_only ones {sorted(self.log_only)}; list all but one in "
                "log_only, or route them (a dict of transformations)"
            )
        return {SINGLE: loss[kept[0]]}, dict(loss)
