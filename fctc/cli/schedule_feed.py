"""What ``fctc train`` tells the optimiser between steps: the epoch, and the monitored metric.

With ``schedule.interval: epoch`` the learning-rate schedule counts epochs: the loop reports
each epoch as it starts (:func:`fctc.train.observe`). With ``schedule.name: plateau`` it
reports ``schedule.monitor`` after every validation (``interval: step``), or after a
validation at the end of every epoch (``interval: epoch``, ESPnet3's and Lightning's epoch
interval with a monitor). Both reports live in the train state, so ``--resume`` continues
the schedule exactly.
"""

from __future__ import annotations

import math
from typing import Any

from .config import ConfigError

__all__ = ["ScheduleFeed", "BUILTIN_MONITORS"]

BUILTIN_MONITORS = ("val_loss", "val_cer", "val_wer")
"""The validation metrics every run has; a loss function's statistics add ``val_<key>``."""


class ScheduleFeed:
    """The reports of one run, decided from its ``schedule`` section.

    Args:
      schedule: the ``schedule`` section.
      has_validation: whether the run has a validation split.
      stats: whether the loss function may report statistics (``val_<key>`` monitors).

    Raises:
      ConfigError: a plateau without a validation split, or a monitor that is no validation
        metric.
    """

    def __init__(self, schedule: dict[str, Any], has_validation: bool, stats: bool = False):
        self.interval = schedule["interval"]
        self.monitor = schedule["monitor"] if schedule["name"] == "plateau" else None
        if self.monitor is None:
            return
        if not has_validation:
            raise ConfigError(
                "schedule.name: plateau watches a validation metric, but data.validation is null; "
                "give a validation manifest or pick another schedule"
            )
        known = self.monitor in BUILTIN_MONITORS or (stats and str(self.monitor).startswith("val_"))
        if not known:
            raise ConfigError(
                f"schedule.monitor must be one of {list(BUILTIN_MONITORS)}"
                f"{' or val_<key> of the loss statistics' if stats else ''}, got {self.monitor!r}"
            )

    @property
    def validates_at_epoch_end(self) -> bool:
        """Whether the loop validates at the end of each epoch to report the monitor.

        Returns:
          True for a plateau with ``interval: epoch``.
        """
        return self.monitor is not None and self.interval == "epoch"

    def reports(self, at_epoch_end: bool) -> bool:
        """Whether a validation reports the monitor: with a plateau, every validation for
        ``interval: step``, the one at an epoch's end for ``interval: epoch``.

        Args:
          at_epoch_end: whether the validation is the one at the end of an epoch.

        Returns:
          True when :meth:`validated` reports it.
        """
        return self.monitor is not None and at_epoch_end == (self.interval == "epoch")

    def epoch_started(self, step_fn: Any, state: Any, epoch: int) -> Any:
        """The state after reporting the epoch now starting.

        Args:
          step_fn: the train step.
          state: the train state.
          epoch: the epoch (0-based).

        Returns:
          The new train state.
        """
        return step_fn.observe(state, epoch=epoch)

    def validated(self, step_fn: Any, state: Any, metrics: dict[str, Any], at_epoch_end: bool) -> Any:
        """The state after a validation: the monitor reported when this validation counts.

        Args:
          step_fn: the train step.
          state: the train state.
          metrics: the validation metrics (``val_loss``, ``val_cer``, ...).
          at_epoch_end: whether this is the validation at the end of an epoch.

        Returns:
          The new train state (unchanged without a plateau, or when the validation does not
          count for the interval). A metric with no value (a validation whose losses were
          all non-finite) is reported as +inf, a validation without improvement.

        Raises:
          ConfigError: the validation has no ``schedule.monitor``.
        """
        if not self.reports(at_epoch_end):
            return state
        if self.monitor not in metrics:
            raise ConfigError(
                f"schedule.monitor: {self.monitor!r} is not a validation metric of this run; "
                f"it has {sorted(k for k in metrics if k.startswith('val_'))}"
            )
        value = metrics[self.monitor]
        return step_fn.observe(state, math.inf if value is None else float(value))
