"""Data-parallel training over ``torch.distributed``: the all-reduce is a gradient transformation.

Each process (one per GPU, or several on a CPU with gloo) holds the whole model, trains on its
own shard of every batch, and averages its gradients with the others' before the optimiser runs.
Nothing here wraps the model or hooks into autograd: averaging the gradients is one more pure
step in the transformation chain, so the train step, the optimisers and checkpoints are the
single-process ones. When ``torch.distributed`` is not initialised (or the world has one
process) every function here is the identity, so the same script runs alone or under
``torchrun``::

    # train.py   --   torchrun --nproc_per_node=2 train.py   (or: python train.py)
    import fctc
    from fctc import distributed as dist, optim
    from fctc.train import make_train_step

    rank, world = dist.init_from_env()            # gloo on CPU, NCCL on GPU; (0, 1) alone
    model = fctc.models.ctc_model(...)
    tx = optim.chain(dist.all_reduce_gradients(), optim.adamw(1e-3))
    step = make_train_step(model, tx, blank=blank, accum_steps=2)
    state = dist.broadcast_tree(step.init_state(fctc.random.key(0)))   # rank 0's start
    for batch in loader:                           # the same global batches on every rank
        state, metrics = step(state, dist.shard_batch(batch, rank, world))
        metrics = dist.mean_across(metrics)         # for logging
        if rank == 0:
            print(float(metrics["loss"]))
    dist.barrier()

Once per update, not per micro-batch:

* with ``make_train_step(..., accum_steps=k)`` the step sums the micro-batch gradients and runs
  the chain once, so ``all_reduce_gradients()`` first in the chain communicates once per step;
* :class:`fctc.optim.MultiSteps` (accumulation across calls) runs its inner transformation
  eagerly only on the ``k``-th call, so ``MultiSteps(chain(all_reduce_gradients(), opt), k)``
  communicates once per update in eager mode; compiled, MultiSteps is branch-free (it runs the
  inner chain at every call and selects), so an all-reduce inside it would communicate at every
  micro-step. :class:`DistributedMultiSteps` communicates once per update in both modes: it
  passes ``sync=False`` to the all-reduce on the other micro-steps, which then stays local.

Gradients are coalesced into one flat buffer per (device, dtype): one collective per dtype, not
one per tensor. Eagerly the all-reduce is ``torch.distributed.all_reduce`` on that buffer;
traced by ``torch.compile`` (``make_train_step(..., jit="step")``) it is the functional
collective (``torch.distributed._functional_collectives``) that compiles into the graph; gloo
on CPU, NCCL on GPU.

Per-rank state: running statistics (BatchNorm) are updated from each rank's own shard, as in
DDP with ``broadcast_buffers=False``; ``state._replace(model_state=broadcast_tree(
state.model_state))`` adopts rank 0's, before evaluating or saving, say.

Non-finite gradients: the train step checks the updates that come out of the chain as well as
each rank's own gradients, and a NaN on one rank reaches every rank through the average; so all
ranks skip the same batches together and their parameters stay identical.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as _dist

from . import tree as _tree
from .backend import is_tracing
from .optim.accumulation import MultiSteps
from .optim.base import EmptyState, GradientTransformation, with_extra_args_support

__all__ = [
    "init_from_env",
    "is_initialized",
    "rank",
    "world_size",
    "barrier",
    "all_reduce_gradients",
    "DistributedMultiSteps",
    "broadcast_tree",
    "shard_batch",
    "mean_across",
]


# --- the process group ----------------------------------------------------------------------


def is_initialized() -> bool:
    """True when a default ``torch.distributed`` process group exists.

    Returns:
      Whether a default ``torch.distributed`` process group exists.
    """
    return _dist.is_available() and _dist.is_initialized()


def rank(group: Any = None) -> int:
    """This process's rank in ``group`` (the default group); 0 when not distributed.

    Args:
      group: a process group (None: the default one).

    Returns:
      This process's rank (0 when not distributed).
    """
    return _dist.get_rank(group) if is_initialized() else 0


def world_size(group: Any = None) -> int:
    """The number of processes in ``group`` (the default group); 1 when not distributed.

    Args:
      group: a process group (None: the default one).

    Returns:
      The number of processes (1 when not distributed).
    """
    return _dist.get_world_size(group) if is_initialized() else 1


def barrier(group: Any = None) -> None:
    """Wait until every process reaches this point; nothing when not distributed.

    Args:
      group: a process group (None: the default one).
    """
    if is_initialized() and world_size(group) > 1:
        _dist.barrier(group)


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"init_from_env: the environment variable {name}={value!r} is not an integer"
        ) from None


def init_from_env(backend: str | None = None, timeout: float | None = None) -> tuple[int, int]:
    """Initialise the default process group from ``torchrun``'s environment; return ``(rank, world)``.

    ``torchrun --nproc_per_node=N train.py`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT``; this reads them. The default ``backend`` is gloo without
    CUDA and ``"cpu:gloo,cuda:nccl"`` with it (NCCL for GPU tensors, gloo for CPU ones), and
    each process then uses the GPU ``cuda:LOCAL_RANK``. ``timeout`` is in seconds.

    Idempotent: a second call returns the existing group's rank and size. Run without
    ``torchrun`` (no ``WORLD_SIZE`` in the environment) it initialises nothing and returns
    ``(0, 1)``, so one script serves both cases.

    Args:
      backend: the process-group backend (default: gloo, or gloo and NCCL with CUDA).
      timeout: the collectives' timeout in seconds (None: torch's).

    Returns:
      ``(rank, world_size)``.

    Raises:
      RuntimeError: ``WORLD_SIZE`` is set without the rest of torchrun's environment, or
        torch has no distributed support.
      ValueError: a variable of the environment is not an integer.
    """
    if is_initialized():
        return rank(), world_size()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    missing = [n for n in ("RANK", "MASTER_ADDR", "MASTER_PORT") if n not in os.environ]
    if missing:
        raise RuntimeError(
            f"init_from_env: WORLD_SIZE is set but {missing} are not; launch with "
            "`torchrun --nproc_per_node=N train.py`, which sets them all"
        )
    if not _dist.is_available():
        raise RuntimeError("init_from_env: this PyTorch build has no torch.distributed support")
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if cuda and "nccl" in backend:
        torch.cuda.set_device(_env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0)
    kwargs = {} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}
    _dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=_env_int("RANK"),
        world_size=_env_int("WORLD_SIZE"),
        **kwargs,
    )
    return rank(), world_size()


def _active(group: Any) -> bool:
    return is_initialized() and _dist.get_world_size(group) > 1


# --- coalescing -----------------------------------------------------------------------------


def _coalesced(leaves: Sequence[Any], fn: Callable[[torch.Tensor], torch.Tensor]) -> list[Any]:
    """Apply ``fn`` to one flat buffer per (device, dtype) of the tensor leaves; split it back.

    The buffer is a fresh tensor (``torch.cat`` copies), so ``fn`` may work in place on it; the
    leaves come back as views of ``fn``'s result with their own shapes. Non-tensors pass through.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, x in enumerate(leaves):
        if isinstance(x, torch.Tensor):
            groups.setdefault((x.device, x.dtype), []).append(i)
    out = list(leaves)
    for idx in groups.values():
        ts = [leaves[i] for i in idx]
        flat = fn(torch.cat([t.reshape(-1) for t in ts]))
        for i, piece in zip(idx, flat.split([t.numel() for t in ts])):
            out[i] = piece.view(leaves[i].shape)
    return out


def _is_discrete(x: Any) -> bool:
    """An integer or bool tensor."""
    return isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex())


def _group_or_world(group: Any) -> Any:
    return _dist.group.WORLD if group is None else group


def _sum_across(buf: torch.Tensor, group: Any) -> torch.Tensor:
    """``buf`` summed over the processes of ``group``, in place (``buf`` is a fresh buffer).

    Traced, the functional collective (the one ``torch.compile`` can trace). Eagerly, the plain
    in-place ``all_reduce``: the same sum, while an eager functional collective keeps the process
    group alive after ``destroy_process_group`` (torch 2.13), and its gloo threads, still running
    as the interpreter exits, can abort the process.
    """
    if is_tracing():
        from torch.distributed import _functional_collectives as funcol

        return funcol.wait_tensor(funcol.all_reduce(buf, "sum", _group_or_world(group)))
    _dist.all_reduce(buf, op=_dist.ReduceOp.SUM, group=group)
    return buf


# --- the gradient all-reduce ----------------------------------------------------------------


_SYNC_TYPE = "all_reduce_gradients: sync must be a bool or a 0-d bool tensor, got"


def _sync_requested(sync: Any) -> bool:
    if isinstance(sync, torch.Tensor):
        if sync.numel() != 1:
            raise ValueError(f"{_SYNC_TYPE} a tensor of shape {tuple(sync.shape)}")
        return bool(sync)  # one host read; every rank must pass the same value
    if isinstance(sync, bool):
        return sync
    raise TypeError(f"{_SYNC_TYPE} {type(sync).__name__}")


def all_reduce_gradients(group: Any = None, average: bool = True) -> GradientTransformation:
    """A stateless transformation that sums (``average``: averages) the updates over processes.

    Put it first in the chain, ``chain(all_reduce_gradients(), clip_by_global_norm(1.0),
    adamw(1e-3))``, so that clipping and the optimiser see the global gradient and every rank
    computes the same update. With batch-mean losses and equal shards, the average of the ranks'
    gradients is the gradient of the whole batch.

    The updates are packed into one flat buffer per (device, dtype), summed with one
    functional (traceable) all-reduce each, divided by the world size and unpacked: new tensors,
    inputs untouched. Identity when ``torch.distributed`` is not initialised or ``group`` has
    one process.

    ``update`` takes an optional keyword ``sync`` (a bool or a 0-d bool tensor, default True):
    with ``sync=False`` the updates pass through unchanged and nothing is sent. Every rank must
    pass the same value. :class:`DistributedMultiSteps` uses it so that only the micro-step that
    emits an update communicates; a tensor ``sync`` is read on the host (a graph break under
    ``torch.compile``).

    Args:
      group: a process group (None: the default one).
      average: divide the sum by the world size.

    Returns:
      A stateless :class:`~fctc.optim.GradientTransformation`; its update raises ``TypeError``
      when averaging integer updates or for a bad ``sync``.
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, sync: Any = True, **extra):
        del params, extra
        if not _active(group) or not _sync_requested(sync):
            return updates, state
        leaves, spec = _tree.flatten(updates)
        n = _dist.get_world_size(group)
        if average:
            for x in leaves:
                if _is_discrete(x):
                    raise TypeError(
                        f"all_reduce_gradients: cannot average an update of dtype {x.dtype}; "
                        "gradients are floating point (use average=False to sum integers)"
                    )
            out = _coalesced(leaves, lambda b: _sum_across(b, group) / n)
        else:
            out = _coalesced(leaves, lambda b: _sum_across(b, group))
        return _tree.unflatten(spec, out), state

    return GradientTransformation(init, update)


def _reduced_then(opt: GradientTransformation, group: Any) -> GradientTransformation:
    """``opt`` preceded by an all-reduce, keeping ``opt``'s own state layout."""
    reduce = all_reduce_gradients(group)
    opt = with_extra_args_support(opt)

    def update(updates, state, params=None, *, sync: Any = True, **extra):
        updates, _ = reduce.update(updates, EmptyState(), params, sync=sync)
        return opt.update(updates, state, params, **extra)

    return GradientTransformation(opt.init, update)


def _agreed_skip(fn: Callable, group: Any) -> Callable:
    """Make a ``should_skip_update_fn`` decide the same on every rank: skip if any rank skips."""

    def agreed(updates, gradient_step, params):
        skip, skip_state = fn(updates, gradient_step, params)
        if _active(group) and isinstance(skip, torch.Tensor):
            votes = _sum_across(skip.to(torch.int32, copy=True).reshape(1), group)
            skip = votes.reshape(()) > 0
        return skip, skip_state

    return agreed


class DistributedMultiSteps(MultiSteps):
    """:class:`fctc.optim.MultiSteps` with one gradient all-reduce per emitted update.

    ``DistributedMultiSteps(adamw(1e-3), every_k_schedule=4)`` accumulates each rank's
    gradients locally for ``k`` calls and all-reduces the accumulated gradient only on the
    ``k``-th call, right before the inner optimiser; the other calls send nothing, compiled or
    not. (Compiled, MultiSteps computes its inner update at every call and keeps it only on the
    ``k``-th, so ``MultiSteps(chain(all_reduce_gradients(), opt), k)`` would communicate ``k``
    times per update.) Whether the current call emits is read from ``mini_step`` on the host:
    one small synchronisation per call, and a graph break under ``torch.compile``; the in-step
    ``make_train_step(..., accum_steps=k)`` needs neither and is the first choice.

    The state is exactly ``MultiSteps(opt, ...)``'s, so checkpoints move between single- and
    multi-process runs. A ``should_skip_update_fn`` (e.g. :func:`fctc.optim.skip_not_finite`)
    is made to agree across ranks (a micro-step is skipped everywhere when any rank skips it;
    one tiny all-reduce per call), which keeps the ranks' ``mini_step`` counters, and so their
    collectives, in step.
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[torch.Tensor], Any],
        use_grad_mean: bool = True,
        should_skip_update_fn: Callable | None = None,
        accumulator_dtype: torch.dtype = torch.float32,
        *,
        group: Any = None,
    ):
        skip = None if should_skip_update_fn is None else _agreed_skip(should_skip_update_fn, group)
        super().__init__(_reduced_then(opt, group), every_k_schedule, use_grad_mean, skip, accumulator_dtype)
        self._group = group

    def update(self, updates: Any, state: Any, params: Any = None, **extra) -> tuple[Any, Any]:
        """Accumulate; on the ``k``-th call all-reduce the accumulated gradient and run ``opt``.

        Args:
          updates: this rank's gradients of this call.
          state: the :class:`~fctc.optim.MultiStepsState`.
          params: the parameters.
          **extra: passed to ``opt``'s update.

        Returns:
          ``(updates, new_state)``, as :meth:`fctc.optim.MultiSteps.update`.
        """
        if _active(self._group):
            extra["sync"] = self.emits(state)  # the all-reduce runs only where the window ends
        else:
            extra.pop("sync", None)
        return super().update(updates, state, params, **extra)


# --- starting together, sharding, logging ---------------------------------------------------


def _signature(leaves: Sequence[Any], spec: Any) -> int:
    desc = repr(spec) + "".join(
        f"|{tuple(x.shape)}:{x.dtype}" if isinstance(x, torch.Tensor) else f"|{type(x).__name__}"
        for x in leaves
    )
    return int.from_bytes(hashlib.sha256(desc.encode()).digest()[:7], "little")


def _wire_device(device: torch.device, group: Any) -> torch.device:
    """Where a buffer on ``device`` can be communicated: NCCL-only groups need a GPU."""
    if device.type != "cpu":
        return device
    backend = str(_dist.get_backend(group))
    if "gloo" in backend or "mpi" in backend:
        return device
    return torch.device("cuda", torch.cuda.current_device())


def broadcast_tree(tree: Any, src: int = 0, group: Any = None) -> Any:
    """Every process gets rank ``src``'s copy of ``tree`` (parameters, a whole train state).

    Call it once after initialising: each rank may have drawn different initial parameters (or
    loaded a checkpoint only on rank 0); afterwards all start from the same point. The trees
    must have the same structure, shapes and dtypes on every rank, else every rank raises a
    ``ValueError``. Returns new tensors (one broadcast per device and dtype); the input is not
    modified. Non-tensor leaves are kept as they are. Identity when not distributed.

    Args:
      tree: the tree (the same structure, shapes and dtypes on every rank).
      src: the rank whose copy everyone gets.
      group: a process group (None: the default one).

    Returns:
      Rank ``src``'s tree, in new tensors.

    Raises:
      ValueError: the trees differ between ranks.
    """
    if not _active(group):
        return tree
    leaves, spec = _tree.flatten(tree)
    wire = _wire_device(torch.device("cpu"), group)
    sig = torch.tensor([_signature(leaves, spec)], dtype=torch.int64, device=wire)
    src_sig = sig.clone()
    _dist.broadcast(src_sig, src, group)
    mismatch = (src_sig != sig).to(torch.int32)
    _dist.all_reduce(mismatch, group=group)
    if int(mismatch.item()):
        raise ValueError(
            f"broadcast_tree: the tree differs from rank {src}'s on {int(mismatch.item())} rank(s) "
            "(structure, shapes or dtypes); build it the same way on every rank"
        )

    def bcast(buf: torch.Tensor) -> torch.Tensor:
        wire = buf.to(torch.uint8) if buf.dtype == torch.bool else buf
        home = wire.device
        wire = wire.to(_wire_device(home, group))
        _dist.broadcast(wire, src, group)  # in place on a fresh buffer
        return wire.to(home).to(buf.dtype)

    return _tree.unflatten(spec, _coalesced(leaves, bcast))


def shard_batch(batch: Any, rank: int | None = None, world_size: int | None = None) -> Any:
    """This rank's slice of a batch: every tensor leaf split along dim 0 into equal parts.

    ``rank``/``world_size`` default to this process's. Rank ``r`` gets rows
    ``[r * B / W, (r + 1) * B / W)``, so every rank must see the same global batch (same data
    order and seed). Equal shards keep the average of the ranks' batch-mean gradients equal to
    the whole batch's. Raises ``ValueError`` when the batch size is not divisible by the world
    size or the leaves disagree on it. Returns views; nothing is copied or modified.

    Args:
      batch: the global batch (a pytree of tensors with a batch dimension 0).
      rank, world_size: the shard to take (default: this process's).

    Returns:
      This rank's shard (views).

    Raises:
      ValueError: a bad rank or world size, no tensors, a 0-d leaf, leaves of different
        sizes, or a batch size not divisible by the world size.
    """
    distributed = is_initialized()
    r = (_dist.get_rank() if distributed else 0) if rank is None else rank
    w = (_dist.get_world_size() if distributed else 1) if world_size is None else world_size
    if not isinstance(w, int) or w < 1:
        raise ValueError(f"shard_batch: world_size must be a positive int, got {w!r}")
    if not isinstance(r, int) or not 0 <= r < w:
        raise ValueError(f"shard_batch: rank must be an int in [0, {w}), got {r!r}")
    leaves, spec = _tree.flatten(batch)
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if not tensors:
        raise ValueError("shard_batch: the batch holds no tensors")
    for x in tensors:
        if x.dim() == 0:
            raise ValueError(
                "shard_batch: a batch leaf is a 0-d tensor; every leaf needs a batch dimension 0"
            )
    sizes = sorted({int(x.shape[0]) for x in tensors})
    if len(sizes) != 1:
        raise ValueError(f"shard_batch: the batch leaves have different sizes along dim 0: {sizes}")
    size = sizes[0]
    if size % w:
        raise ValueError(
            f"shard_batch: batch size {size} is not divisible by world size {w}; use a global "
            f"batch size that is a multiple of {w} (and drop the last incomplete batch)"
        )
    n = size // w
    shards = [x[r * n : (r + 1) * n] if isinstance(x, torch.Tensor) else x for x in leaves]
    return _tree.unflatten(spec, shards)


def mean_across(tree: Any, group: Any = None) -> Any:
    """The mean of every tensor leaf over the processes, e.g. metrics for logging.

    Floating leaves keep their dtype; integer and bool leaves come back as float32 means (a
    ``finite`` flag gives the fraction of ranks whose step was finite). One all-reduce per
    device and dtype, so call it every few steps for logging. Identity when not distributed.

    Args:
      tree: the tree (e.g. the step's metrics).
      group: a process group (None: the default one).

    Returns:
      The tree of means.
    """
    if not _active(group):
        return tree
    leaves, spec = _tree.flatten(tree)
    leaves = [x.to(torch.float32) if _is_discrete(x) else x for x in leaves]
    n = _dist.get_world_size(group)

    def mean(buf: torch.Tensor) -> torch.Tensor:
        return (_sum_across(buf.to(_wire_device(buf.device, group)), group) / n).to(buf.device)

    return _tree.unflatten(spec, _coalesced(leaves, mean))
