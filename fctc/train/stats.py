"""Weighted means of logged statistics: ESPnet3's averaging by ``weight``.

A loss function may report statistics with a weight (:class:`fctc.train.LossOutput`); the
train step averages them over its micro-batches, a loop over the steps of a logging window,
an evaluation over its batches, and data-parallel ranks over each other, always as
``sum(weight * value) / sum(weight)``. :class:`WeightedMean` holds those two sums as tensors
(no host synchronisation until :meth:`WeightedMean.means` is read) and is the one place that
averaging happens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .. import backend as _backend

__all__ = ["WeightedMean", "STATS_PREFIX"]

STATS_PREFIX = "stats/"
"""The prefix of the statistics in the train step's metrics (``stats/<key>``)."""


def _scalar(x: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    device = like.device if like is not None else None
    t = _backend.as_tensor(x, device=device).detach()
    if t.numel() != 1:
        raise ValueError(f"stats and weights must be single numbers, got shape {tuple(t.shape)}")
    return t.reshape(()).to(torch.float32)


class WeightedMean:
    """Running ``sum(weight * value) / sum(weight)`` per statistic.

    A statistic missing from some additions is averaged over the weights of those that have
    it. Additions may be masked (``keep``, a 0-d bool tensor) without a host read.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.sums)

    def add(self, stats: Mapping[str, Any], weight: Any, keep: torch.Tensor | None = None) -> None:
        """Add one batch's statistics with its weight.

        Args:
          stats: name -> value (numbers or 0-d tensors; detached here).
          weight: the batch's weight (a number or 0-d tensor).
          keep: add only where this 0-d bool tensor holds (e.g. the step's ``finite``).

        Raises:
          ValueError: a value or the weight is not a single number.
        """
        for name, value in stats.items():
            v = _scalar(value)
            w = _scalar(weight, v)
            wv = w * v
            if keep is not None:
                k = keep.to(v.device)
                w, wv = torch.where(k, w, torch.zeros_like(w)), torch.where(k, wv, torch.zeros_like(wv))
            if name in self.sums:
                self.sums[name] = self.sums[name] + wv
                self.weights[name] = self.weights[name] + w
            else:
                self.sums[name], self.weights[name] = wv, w

    def add_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Add a train step's statistics (``stats/<key>``, weighted by ``weight``; a step whose
        ``finite`` flag is false is left out).

        Args:
          metrics: the step's metrics.
        """
        stats = {k[len(STATS_PREFIX):]: v for k, v in metrics.items() if k.startswith(STATS_PREFIX)}
        if stats:
            self.add(stats, metrics["weight"], metrics.get("finite"))

    def total_weight(self) -> torch.Tensor | None:
        """The largest summed weight over the statistics (the total weight when every addition
        reported them all), or None when nothing was added.

        Returns:
          A 0-d tensor or None.
        """
        if not self.weights:
            return None
        return torch.stack(list(self.weights.values())).max()

    def means(self, reduce: Callable[[Any], Any] | None = None) -> dict[str, torch.Tensor]:
        """The weighted means.

        Args:
          reduce: a function applied to ``(sums, weights)`` first, e.g.
            :func:`fctc.distributed.mean_across` for the mean over data-parallel ranks (the
            means of both sums give the ranks' overall weighted mean).

        Returns:
          name -> 0-d float32 tensor (NaN where the summed weight is 0).
        """
        sums, weights = self.sums, self.weights
        if reduce is not None:
            sums, weights = reduce((sums, weights))
        return {k: sums[k] / weights[k] for k in sums}
