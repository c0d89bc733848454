"""``fctc train`` under ``torchrun``: data parallel over :mod:`fctc.distributed`.

Every process builds the same global batches (the same plan from the same seed) and trains on
its shard: rows ``[round(r * B / W), round((r + 1) * B / W))`` of a batch of ``B`` utterances
for rank ``r`` of ``W``, the split ``make_train_step(..., accum_steps=W)`` makes into
micro-batches. So any batch size works, the remainder included: rank ``r``'s loss is scaled
by ``W * n_r / B`` and the gradients are averaged across processes before the optimiser
(clipping sees the global gradient), which sums each shard's gradient with the weight of its
share of the batch; each shard draws its augmentation and dropout from the step key folded
with its index among the non-empty shards (the key itself when only one shard is non-empty),
as that micro-batch would. One update of a ``W``-process run is therefore the update of one process that
splits the same batch into the same ``W`` micro-batches, up to the rounding of the all-reduce.

BatchNorm normalises each shard with its own statistics (as DDP does without SyncBatchNorm);
after every step the running statistics become the mean over the processes of theirs
(weighted by shard size), so every process holds the same state and rank 0's checkpoint is
everyone's. The same collective carries the logged metrics and the Ctrl-C flag, so all
processes stop after the same step. A batch with fewer utterances than processes leaves some
ranks without a shard: they run the step on a copy of one utterance with weight 0.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import torch

from .. import distributed as _dist
from .. import random as _random
from .. import tree as _tree
from ..optim.base import EmptyState, GradientTransformation, with_extra_args_support
from ..train.loss_output import LossOutput, as_loss_output, weight_of
from ..train.stats import STATS_PREFIX

__all__ = ["World", "ShardedBatch", "init_world", "DataParallel"]


class World(NamedTuple):
    """This process's place among the training processes.

    Args:
        rank: its rank (0 writes logs and checkpoints).
        size: the number of processes.
        local_rank: its rank on its machine (its GPU).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0


class ShardedBatch(NamedTuple):
    """One rank's shard of a global batch and its loss weight.

    Args:
        batch: the shard (a :class:`fctc.data.Batch`).
        scale: ``(n,)``, every entry the factor its loss is multiplied by (``W * n_r / B``).
        fold: ``(n,)`` int64, every entry what the step key is folded with for this shard (its
            index among the non-empty shards), or -1 for the step key itself (the batch has
            one non-empty shard, which ``make_train_step`` would not split either).
    """

    batch: Any
    scale: torch.Tensor
    fold: torch.Tensor


def init_world(device: str = "auto") -> World:
    """Join the process group ``torchrun`` describes, if any (:func:`fctc.distributed.init_from_env`).

    Args:
        device: the run's ``device`` setting. ``"cpu"`` joins with gloo alone, so that a CPU
            run on a machine with GPUs neither starts NCCL nor claims a GPU per process (more
            processes than GPUs would fail there); otherwise torch's choice for the machine.

    Returns:
        This process's :class:`World` (``World()`` when run alone).
    """
    rank, size = _dist.init_from_env(backend="gloo" if device == "cpu" else None)
    return World(rank, size, int(os.environ.get("LOCAL_RANK", rank)) if size > 1 else 0)


def _shard_bounds(size: int, world: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s rows of a batch of ``size``: make_train_step's micro-batch bounds."""
    return round(rank * size / world), round((rank + 1) * size / world)


def _weighted_stats(metrics: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A rank's statistics as weighted sums, and their weight, for the mean across ranks."""
    stats = {k: v for k, v in metrics.items() if k.startswith(STATS_PREFIX)}
    if not stats:
        return {}
    w = metrics["weight"].detach().float().to(device)
    return {"weight": w, **{k: v.detach().float().to(device) * w for k, v in stats.items()}}


def _stats_means(means: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    """The ranks' weighted means of the statistics and their summed weight, from the means of
    the weighted sums (ESPnet3's worker averaging, :class:`fctc.train.WeightedMean`'s rule)."""
    if not means:
        return {}
    w = means["weight"]
    return {"weight": w * world, **{k: v / w for k, v in means.items() if k != "weight"}}


class DataParallel:
    """The pieces that turn ``fctc train``'s single-process step into a data-parallel one.

    Args:
        world: this process's :class:`World` (size > 1).
        device: where the train state lives.
    """

    def __init__(self, world: World, device: torch.device):
        self.world = world
        self.device = device

    def loss_fn(self, base):
        """``base`` (a loss of a :class:`fctc.data.Batch`) on a :class:`ShardedBatch`.

        Args:
            base: ``loss_fn(params, model_state, batch, key) -> (loss, model_state)``.

        Returns:
            The same over a shard: its key folded as :class:`ShardedBatch` says (without a host
            read), its loss (or each named loss) times the scale; statistics pass through, with
            weight 0 on a rank without rows.
        """

        def loss_fn(params, model_state, sharded, key):
            fold = sharded.fold[0]
            key = torch.where(fold >= 0, _random.fold_in(key, fold.clamp(min=0)), key)
            out, new_state = base(params, model_state, sharded.batch, key)
            out = as_loss_output(out)
            scale = sharded.scale[0]
            loss = _tree.map(lambda x: x * scale, out.loss)
            if not out.stats:
                return loss, new_state
            weight = weight_of(out.weight, sharded.batch, scale.device) * (scale > 0)  # no rows: 0
            return LossOutput(loss, out.stats, weight), new_state

        return loss_fn

    @staticmethod
    def transformation(tx: GradientTransformation) -> GradientTransformation:
        """``tx`` preceded by the gradient all-reduce, with ``tx``'s own state layout.

        The layout is the single-process one, so checkpoints move between both kinds of run.

        Args:
            tx: the run's optimiser (clipping, schedule, accumulation).

        Returns:
            The transformation every rank runs.
        """
        reduce = _dist.all_reduce_gradients()
        inner = with_extra_args_support(tx)

        def update(updates, state, params=None, **extra):
            updates, _ = reduce.update(updates, EmptyState(), params)
            return inner.update(updates, state, params, **extra)

        return GradientTransformation(tx.init, update)

    def shard(self, batch: Any) -> tuple[ShardedBatch, float]:
        """This rank's shard of a global batch.

        Args:
            batch: the global :class:`fctc.data.Batch`.

        Returns:
            ``(sharded, weight)``: the shard with its loss scale, and its share of the batch
            (0 for a rank without rows, whose shard is then a copy of row 0).
        """
        size = int(batch.audio.shape[0])
        bounds = [_shard_bounds(size, self.world.size, r) for r in range(self.world.size)]
        lo, hi = bounds[self.world.rank]
        weight = (hi - lo) / size
        filled = [b > a for a, b in bounds]
        index = sum(filled[: self.world.rank]) if sum(filled) > 1 and hi > lo else -1
        if hi == lo:
            lo, hi = 0, 1
        shard = _tree.map(lambda x: x[lo:hi], batch)
        scale = torch.full((hi - lo,), self.world.size * weight, dtype=torch.float32)
        fold = torch.full((hi - lo,), index, dtype=torch.int64)
        return ShardedBatch(shard, scale, fold), weight

    def sync(self, model_state: Any, metrics: dict[str, torch.Tensor], weight: float,
             stop: bool) -> tuple[Any, dict[str, float], bool]:
        """Average the running statistics and metrics over the ranks; agree on stopping.

        One collective per step carries all of it.

        Args:
            model_state: this rank's new model state.
            metrics: this rank's step metrics (``loss``, ``grad_norm``).
            weight: this rank's share of the batch.
            stop: whether this rank was asked to stop (Ctrl-C).

        Returns:
            ``(model_state, metrics, stop)``: the shard-weighted mean of the floating-point
            state (integer counters are the same everywhere and kept), the summed loss of the
            global batch and the mean gradient norm of the ranks (with ``finite``, which every
            rank agrees on, and a loss function's statistics averaged by their weights), and
            whether any rank stops.
        """
        leaves, spec = _tree.flatten(model_state)
        floating = [i for i, x in enumerate(leaves) if x.is_floating_point()]
        w = torch.tensor(float(weight), device=self.device)
        packet = {
            "state": [leaves[i] * w for i in floating], "weight": w,
            "loss": metrics["loss"].detach().float().to(self.device),
            "grad_norm": metrics["grad_norm"].detach().float().to(self.device),
            "stop": torch.tensor(float(stop), device=self.device),
            "stats": _weighted_stats(metrics, self.device),
        }
        mean = _dist.mean_across(packet)
        for i, x in zip(floating, mean["state"]):
            leaves[i] = (x / mean["weight"]).to(leaves[i].dtype)
        out = {"loss": mean["loss"], "grad_norm": mean["grad_norm"],
               **_stats_means(mean["stats"], self.world.size)}
        if "finite" in metrics:
            out["finite"] = metrics["finite"]
        return _tree.unflatten(spec, leaves), out, bool(mean["stop"] > 0)

    def broadcast_metrics(self, metrics: dict[str, Any] | None, keys: list[str]) -> dict[str, float]:
        """Rank 0's values of ``keys`` (a validation's metrics, which rank 0 alone computes).

        Args:
            metrics: the metrics on rank 0 (anything elsewhere).
            keys: the keys every rank needs.

        Returns:
            ``{key: value}`` on every rank (None stays None).
        """
        values = [(metrics or {}).get(k) for k in keys] if self.world.rank == 0 else [None] * len(keys)
        packet = torch.tensor([[math.nan if v is None else float(v), float(v is None)] for v in values],
                              dtype=torch.float64, device=self.device)
        packet = _dist.broadcast_tree({"v": packet})["v"]
        return {k: None if bool(none) else float(v) for k, (v, none) in zip(keys, packet.tolist())}
