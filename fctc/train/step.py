"""The stateless train step: ``step(state, batch) -> (state, metrics)``.

One pure function does what the imperative training modules do in a loop body: forward under
autocast, CTC (or any) loss, gradients, accumulation over micro-batches, loss scaling, the
gradient-transformation chain, the parameter update, and skipping of non-finite batches. It
mutates nothing, so it composes with any loop, compiles whole with ``jit=True``, and resumes
exactly from a saved :class:`~fctc.train.TrainState`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from .. import backend
from .. import random as _random
from .. import tree as _tree
from ..losses import ctc_loss
from ..nn.core import Model, deterministic, uses_key
from ..optim.base import GradientTransformation, update_and_apply
from ..optim.loss_scale import DynamicLossScale, dynamic_loss_scale
from .loss_output import SINGLE as _SINGLE
from .loss_output import LossRules, as_loss_output, stats_tensors, weight_of
from .routing import Labels, group_params, merge_groups
from .state import TrainState, init_train_state, observe
from .stats import STATS_PREFIX, WeightedMean

__all__ = ["ctc_loss_fn", "make_train_step", "TrainStep", "PRECISIONS", "JIT_MODES", "autocast"]

PRECISIONS = ("fp32", "bf16", "fp16")

LossFn = Callable[..., tuple[Any, Any]]


def ctc_loss_fn(model: Model, blank: int, reduction: str = "thunder", train: bool = True) -> LossFn:
    """The default loss: run ``model`` on a :class:`~fctc.train.Batch` and take its CTC loss.

    Returns ``loss_fn(params, model_state, batch, key) -> (loss, new_model_state)``, the
    contract every loss function given to :func:`make_train_step` follows. A loss function may
    also return a dict of named scalar losses for multi-loss routing, or ESPnet3's
    ``(loss, stats, weight)`` (:class:`~fctc.train.LossOutput`) to log statistics.

    Args:
      model: the model.
      blank: the blank index.
      reduction: the CTC loss's reduction (:func:`fctc.losses.ctc_loss`).
      train: run the model in training mode (dropout, augmentation; for
        :func:`make_train_step`), or in evaluation mode, ``key`` unused (for
        ``make_eval_step(..., loss_fn=...)``).

    Returns:
      The loss function; marked :func:`~fctc.nn.deterministic` when ``model`` is, so that
      the train step derives no key for it.
    """

    def loss_fn(params, model_state, batch, key):
        (logits, lengths), new_state = model.apply(
            params, model_state, batch.audio, batch.audio_lengths, train=train, key=key if train else None
        )
        loss = ctc_loss(
            logits, lengths, batch.targets, batch.target_lengths, blank, reduction, check_feasible=train
        )
        return loss, new_state

    # A model that draws nothing needs no key: the step then derives none.
    return loss_fn if uses_key(model) else deterministic(loss_fn)


def autocast(precision: str, device: torch.device):
    """The autocast context for ``precision`` ("fp32" gives a no-op context).

    Args:
      precision: one of :data:`PRECISIONS`.
      device: the device the step runs on.

    Returns:
      A context manager.

    Raises:
      ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _batch_size(batch: Any) -> int:
    xs = _tree.leaves(batch)
    if not xs:
        raise ValueError("train_step: the batch holds no tensors")
    return int(xs[0].shape[0])


def _micro_batches(batch: Any, k: int) -> list[tuple[Any, float]]:
    """Split a batch along dim 0 into ``k`` micro-batches, each with weight ``size / B``.

    A batch of fewer than ``k`` utterances (the last of an epoch, a small bucket) is split
    into one micro-batch per utterance.
    """
    size = _batch_size(batch)
    if size < 1:
        raise ValueError("train_step: the batch is empty")
    k = min(k, size)
    if k == 1:
        return [(batch, 1.0)]  # the whole batch (equal to batch[0:size], without the slicing)
    bounds = [round(i * size / k) for i in range(k + 1)]
    return [
        (_tree.map(lambda x, a=a, b=b: x[a:b], batch), (b - a) / size)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]


def _wrote_in_place(new: Any, old: Any) -> bool:
    """Whether a donated update reused the old parameter tensors (it does not when its input
    was non-finite: then the old values are intact and the step can be skipped)."""
    return any(x is y for x, y in zip(_tree.leaves(new), _tree.leaves(old)))


JIT_MODES = (False, True, "step", "reduce-overhead")
"""The values of ``make_train_step(jit=...)``."""


def _check_jit(jit: Any) -> bool | str:
    """``jit`` when it is one of :data:`JIT_MODES`, else a ValueError naming the choices."""
    if not any(jit is m or (isinstance(m, str) and jit == m) for m in JIT_MODES):
        raise ValueError(f"make_train_step: jit must be one of {JIT_MODES}, got {jit!r}")
    return jit


def _compiled_step(step: Callable, jit: bool | str) -> Callable:
    """The step as it runs: eager (``jit`` False or True: then only the loss is compiled), or
    compiled whole over the flat leaves of state and batch (the batch's sizes dynamic), or
    with CUDA graphs (static sizes)."""
    if jit == "step":
        return backend.jit_trees(step, dynamic=(1,))
    if jit == "reduce-overhead":
        return backend.jit_trees(step, mode="reduce-overhead")
    return step


def _check_cuda_graphs(state: TrainState) -> None:
    """CUDA graphs record CUDA work only: a clear error for a state elsewhere."""
    device = _tree.device_of(state.params)
    if device.type != "cuda":
        raise ValueError(
            f"train_step: jit='reduce-overhead' records the step as a CUDA graph, which needs the "
            f"state on a CUDA device; it is on {device.type}: use jit=True (or jit='step') there"
        )


def _extra_args(state: TrainState) -> dict[str, torch.Tensor]:
    """The extra arguments every update gets: the loop's :class:`~fctc.train.Observations`."""
    return {} if state.observed is None else state.observed.as_extra_args()


class TrainStep:
    """The pure train step built by :func:`make_train_step`; call it as ``step(state, batch)``.

    ``init_state(key, ...)`` builds a matching :class:`~fctc.train.TrainState` (the optimiser
    groups and the loss scale the step expects).
    """

    def __init__(
        self,
        model: Model,
        tx: GradientTransformation | dict[str, GradientTransformation],
        loss_fn: LossFn,
        accum_steps: int,
        precision: str,
        param_labels: Any,
        loss_scale: DynamicLossScale | None,
        jit: bool | str,
        donate: bool = False,
        log_only: Any = (),
        skip_nonfinite: bool = True,
    ):
        self.model = model
        self.tx = tx
        self.loss_fn = loss_fn
        self.accum_steps = accum_steps
        self.precision = precision
        self.param_labels = param_labels
        self.loss_scale = loss_scale
        self.routed = isinstance(tx, dict)
        self.routing = Labels(param_labels, tx) if self.routed else None
        self.keyed = uses_key(loss_fn)  # False: the loss function draws nothing, gets key=None
        self.jit = _check_jit(jit)
        if self.jit is True:  # the loss and its gradient compiled; the update stays eager
            self.loss_fn = backend.jit_trees(loss_fn, dynamic=(2,))
        # The eager update (jit False or True) can reuse buffers; a compiled one plans its own.
        self.donate = donate and (self.jit is False or self.jit is True)
        self.rules = LossRules(tuple(tx) if self.routed else None, log_only)
        self.skip_nonfinite = skip_nonfinite
        self._compiled = _compiled_step(self._step, self.jit)

    def init_state(self, key: torch.Tensor, **kwargs: Any) -> TrainState:
        """A fresh :class:`TrainState` for this step (see :func:`fctc.train.init_train_state`).

        Args:
          key: the run's key.
          **kwargs: more :func:`fctc.train.init_train_state` arguments (``params``, ``device``).

        Returns:
          The first :class:`TrainState`.
        """
        return init_train_state(
            self.model,
            self.tx,
            key,
            param_labels=self.param_labels,
            loss_scale=self.loss_scale,
            **kwargs,
        )

    def observe(self, state: TrainState, value: Any = None, *, epoch: int | None = None) -> TrainState:
        """Tell the optimiser a monitored metric and/or the epoch (:func:`fctc.train.observe`).

        Args:
          state: the train state.
          value: the monitored metric (e.g. the validation loss), or None.
          epoch: the epoch now starting, or None.

        Returns:
          The new state (pure; the next step's updates see the observations).
        """
        return observe(state, value, epoch=epoch)

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, torch.Tensor]]:
        if not isinstance(state, TrainState):
            raise TypeError(f"train_step: state must be a TrainState, got {type(state).__name__}")
        if self.loss_scale is not None and state.loss_scale is None:
            raise ValueError(
                "train_step: fp16 training needs a loss-scale state; build the state with "
                "step.init_state(key) or init_train_state(..., loss_scale=step.loss_scale)"
            )
        if self.jit == "reduce-overhead":
            _check_cuda_graphs(state)
        return self._compiled(state, batch)

    # -- the pure step -------------------------------------------------------------------

    def _labels(self, params):
        return self.routing.of(params) if self.routed else None

    def _forward(self, mb: Any, key: torch.Tensor, model_state: Any):
        """The loss function on one micro-batch, split by the routing rules: a function of the
        parameters returning ``(optimised losses, (new model state, logged losses, stats,
        weight))`` for :func:`fctc.backend.vjp`."""
        device = _tree.leaves(mb)[0].device

        def forward(params):
            with autocast(self.precision, device):
                out, new_state = self.loss_fn(params, model_state, mb, key)
            out = as_loss_output(out)
            optimised, logged = self.rules.split(out.loss)
            logged = {n: v.detach().float() for n, v in logged.items()}
            stats, weight = {}, ()  # aux holds tensors only (functorch's vjp): none by default
            if out.stats:
                stats = stats_tensors(out.stats, device)
                weight = weight_of(out.weight, mb, device)
            return {n: v.float() for n, v in optimised.items()}, (new_state, logged, stats, weight)

        return forward

    def _gradients(self, state: TrainState, batch: Any, key: torch.Tensor):
        """Loss per name, gradient per group (unscaled, summed over micro-batches), new state,
        labels, and what is only logged (:meth:`_logged`)."""
        scale = state.loss_scale.scale if state.loss_scale is not None else None
        labels = self._labels(state.params)
        model_state = state.model_state
        total_loss: dict[str, torch.Tensor] = {}
        logged: dict[str, torch.Tensor] = {}
        stats, weight = WeightedMean(), None
        micro = _micro_batches(batch, self.accum_steps)
        # One forward and backward pass per micro-batch, the gradients summed as they come (as
        # loss.backward() sums them into .grad); a routed loss reaches its own group only.
        acc = backend.GradSum(state.params, labels)
        for i, (mb, share) in enumerate(micro):
            mkey = key if key is None or len(micro) == 1 else _random.fold_in(key, i)
            # The cotangent weights each micro-batch by its share (times the fp16 loss scale).
            ct = share if scale is None else share * scale
            forward = self._forward(mb, mkey, model_state)  # optimised losses, as float32
            losses, (model_state, mb_logged, mb_stats, mb_weight) = acc.add(forward, ct)
            for totals, values in ((total_loss, losses), (logged, mb_logged)):
                for name, value in values.items():
                    value = value if share == 1.0 else share * value  # (x * 1.0 is x)
                    totals[name] = totals[name] + value if name in totals else value
            if mb_stats:
                stats.add(mb_stats, mb_weight)
                weight = mb_weight if weight is None else weight + mb_weight
        total = acc.total()
        grads = {}
        for name in total_loss:
            g = group_params(total, labels, name) if self.routed else total
            # Unscaled once, after the sum, as GradScaler.unscale_ does after accumulation.
            grads[name] = g if scale is None else self.loss_scale.unscale(g, state.loss_scale)
        return total_loss, grads, model_state, labels, self._logged(logged, stats, weight)

    @staticmethod
    def _logged(losses: dict, stats: WeightedMean, weight: Any) -> dict[str, torch.Tensor]:
        """The metrics of what is only logged: ``loss/<name>``, ``stats/<key>``, ``weight``."""
        out = {f"loss/{n}": v for n, v in losses.items()}
        if stats:
            out.update({STATS_PREFIX + k: v for k, v in stats.means().items()})
            out["weight"] = weight
        return out

    def _step(self, state: TrainState, batch: Any):
        key = _random.fold_in(state.key, state.step) if self.keyed else None
        losses, grads, model_state, labels, logged = self._gradients(state, batch, key)
        # One global norm per group: logged, proving the gradients finite on the CPU, and
        # handed to the chain, whose leading clip_by_global_norm then needs no second pass.
        grad_norms = {n: _tree.global_norm(g) for n, g in grads.items()}
        finite = torch.stack(
            [torch.isfinite(v) for v in losses.values()]
            + [backend.all_finite(g, grad_norms[n]) for n, g in grads.items()]
        ).all()
        # With skip_nonfinite=False the chain sees non-finite gradients and decides (it may
        # discard them, as speechain's discard_window does); non-finite new parameters are
        # still refused.
        allowed = finite if self.skip_nonfinite else torch.ones_like(finite)
        params, opt_state, kept = self._update(state, grads, grad_norms, labels, allowed)
        # Skipping, kept alone is the answer (its finiteness includes the gradients').
        good = kept if self.skip_nonfinite else finite & kept
        # On the CPU, eagerly, the choice is made on the host: no copy of the trees per step.
        # update_and_apply keeps the parameters' structure, dtypes and devices.
        params = backend.select(kept, params, state.params, alike=True)
        opt_state = backend.select(kept, opt_state, state.opt_state)
        model_state = backend.select(good, model_state, state.model_state)
        loss_scale = state.loss_scale
        if loss_scale is not None:
            loss_scale = self.loss_scale.adjust(loss_scale, good)
        bad = (~good).to(torch.int64)
        new_state = TrainState(
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            step=state.step + 1,
            key=state.key,
            loss_scale=loss_scale,
            nonfinite_count=(state.nonfinite_count + bad) * bad,
            nonfinite_total=state.nonfinite_total + bad,
            observed=state.observed,
        )
        metrics = self._metrics(losses, grad_norms, good, loss_scale)
        metrics.update(logged)
        return new_state, metrics

    def _update(self, state: TrainState, grads, grad_norms, labels, finite):
        """Every group's chain and parameter update: ``(params, opt_state, finite)``."""
        txs = self.tx if self.routed else {_SINGLE: self.tx}
        opt_states = state.opt_state if self.routed else {_SINGLE: state.opt_state}
        new_opt = dict(opt_states)
        new_groups = {}
        # Donation (eager only) is decided on the host: a non-finite batch donates nothing, and
        # update_and_apply never writes non-finite values into donated buffers either, so a
        # skipped step still finds the old parameters and optimiser state intact.
        donate = self.donate and not backend.is_tracing() and bool(finite)
        extra = _extra_args(state)
        for name, g in grads.items():
            params_g = group_params(state.params, labels, name) if self.routed else state.params
            # One call: adam/adamw (and chains ending in one) add the update to the parameters
            # inside their kernel instead of materialising an update tree.
            new_groups[name], new_opt[name] = update_and_apply(
                txs[name], g, opt_states[name], params_g, donate=donate, norm=grad_norms[name], **extra
            )
            # Checked after the chain too: a transformation that mixes in other processes'
            # gradients (fctc.distributed.all_reduce_gradients) makes every rank see the same
            # non-finite average, so all ranks skip the batch together. A non-finite update
            # (or one that overflows a parameter) leaves non-finite new parameters.
            group_finite = backend.all_finite(new_groups[name])
            if donate and not bool(group_finite) and _wrote_in_place(new_groups[name], params_g):
                raise FloatingPointError(
                    "train_step: finite gradients gave non-finite parameters (an overflow) in "
                    f"group {name!r}, and with donate=True the previous parameters are already "
                    "overwritten; resume from a checkpoint, lower the learning rate, or build "
                    "the step with donate=False to skip such steps instead"
                )
            finite = finite & group_finite
        if self.routed:
            return merge_groups(state.params, labels, new_groups), new_opt, finite
        return new_groups[_SINGLE], new_opt[_SINGLE], finite

    def _metrics(self, losses, grad_norms, finite, loss_scale) -> dict[str, torch.Tensor]:
        values = list(losses.values())
        total = values[0]  # the sum without a leading 0 + ... (one tensor op fewer per step)
        for v in values[1:]:
            total = total + v
        metrics = {"loss": total, "finite": finite}
        if self.routed:
            metrics.update({f"loss/{n}": v for n, v in losses.items()})
            metrics.update({f"grad_norm/{n}": v for n, v in grad_norms.items()})
        else:
            metrics["grad_norm"] = grad_norms[_SINGLE]
        if loss_scale is not None:
            metrics["loss_scale"] = loss_scale.scale
        return metrics


def make_train_step(
    model: Model,
    tx: GradientTransformation | dict[str, GradientTransformation],
    loss_fn: LossFn | None = None,
    *,
    blank: int | None = None,
    reduction: str = "thunder",
    accum_steps: int = 1,
    precision: str = "fp32",
    param_labels: Any = None,
    loss_scale: DynamicLossScale | None = None,
    jit: bool | str = False,
    donate: bool = False,
    log_only: Any = (),
    skip_nonfinite: bool = True,
) -> TrainStep:
    """Build the pure train step ``step(state, batch) -> (state, metrics)``.

    Args:
      model: the :class:`~fctc.nn.Model` to train (e.g. ``fctc.models.ctc_model(...)``).
      tx: a gradient transformation, or a dict of them for multi-loss routing (then
        ``param_labels`` assigns each parameter to one of its keys and ``loss_fn`` returns a
        dict of losses with the same names; each group gets only its own loss's gradient).
      loss_fn: ``loss_fn(params, model_state, batch, key) -> (loss, new_model_state)``; by
        default the CTC loss of ``model`` on a :class:`~fctc.train.Batch` with ``blank`` and
        ``reduction`` (see :func:`fctc.losses.ctc_loss`). ``loss`` is a tensor, a dict of
        named losses, or ESPnet3's ``(loss, stats, weight)`` (:class:`~fctc.train.LossOutput`:
        ``stats`` come back in the metrics as ``stats/<key>``, averaged over micro-batches with
        ``weight``, and the summed ``weight`` as ``weight``; the gradient still weights each
        micro-batch by its share of the utterances). ``key`` is the step's key,
        ``fold_in(state.key, state.step)`` (micro-batch ``i`` of several gets ``fold_in`` of
        that and ``i``), or None for a loss function marked :func:`fctc.nn.deterministic`.
      accum_steps: split each batch into this many micro-batches and sum their gradients,
        weighted by micro-batch size, inside the step: the update equals the full batch's for
        a batch-mean loss and a model without batch statistics (BatchNorm sees each
        micro-batch alone, as it would in smaller batches). Peak memory is one micro-batch's.
        A batch of fewer utterances is split into one micro-batch per utterance. (For one
        micro-batch per call, accumulate across calls with :class:`fctc.optim.MultiSteps`.)
      precision: "fp32", "bf16" (autocast) or "fp16" (autocast plus dynamic loss scaling:
        the loss is scaled, gradients unscaled before the transformation chain, so before
        clipping, once, after summing the micro-batches, and a step with non-finite gradients
        is skipped, as GradScaler does).
      loss_scale: the :func:`fctc.optim.dynamic_loss_scale` for fp16 (default: GradScaler's).
      jit: compile with ``torch.compile`` (:func:`fctc.backend.jit_trees`: the compiled code
        guards the tensors only; Python values the loss function and model read are constants
        of it, as with ``jax.jit``). ``True``: the loss and its gradient (forward and backward
        in the compiled graphs ``torch.compile`` makes of a module; the update, one fused
        kernel per group on the CPU, stays eager), which compiles in seconds; on the CPU the
        graphs call fctc's depthwise kernel (:mod:`fctc.nn.depthwise`) as an opaque op, as the
        eager step does. ``"step"``: the whole step as one graph, the optimiser included
        (minutes to compile on a CPU, with ``F.conv1d`` for every convolution; the fastest
        steps on accelerators). Both compile the batch's sizes as dynamic, so batches
        of other lengths, widths or sizes reuse the compiled code (batches of one utterance or
        one label are compiled once more: torch specialises sizes 1). ``"reduce-overhead"``:
        the whole step recorded as a CUDA graph (CUDA only; fixed batch shapes, e.g. padded
        to a few bucket lengths with ``pad_to_multiple``).
      donate: let each eager step reuse the incoming state's parameter and optimiser-state
        buffers for the new state (:func:`fctc.optim.update_and_apply` with ``donate=True``,
        JAX's ``donate_argnums``): no second copy of them is allocated, and AdamW on the CPU
        updates in place at ``torch.optim.AdamW(fused=True)``'s cost. Keep only the state a
        call returns; the one passed in may have been overwritten (save checkpoints from
        returned states). Non-finite batches are still skipped with the old values intact.
        It costs one host read of the step's finiteness flag (a synchronisation on
        accelerators). With ``jit=True`` the eager update donates; with ``"step"`` and
        ``"reduce-overhead"`` it has no effect (the compiler plans those buffers).
      log_only: names of losses in ``loss_fn``'s dict that are logged (``loss/<name>``) and
        never optimised (speechain's losses dict). With one transformation, all but one name
        must be listed; the one left is optimised (speechain's ``optim_loss``).
      skip_nonfinite: skip non-finite batches (the default); False hands their gradients to
        the transformations, which decide (``speechain_optimizer(..., nonfinite=
        "discard_window")``, ``optim.apply_if_finite``): the state then advances unless the
        new parameters are non-finite, in which case the step changes nothing. Use it only
        with a chain that guards itself, or one NaN reaches an accumulator for good.

    Non-finite batches (any loss or gradient NaN/Inf) change nothing (params, optimiser state,
    model state); they are counted in ``state.nonfinite_count`` / ``nonfinite_total`` without a
    host sync; :func:`fctc.train.check_nonfinite` turns a long run of them into an error.
    The metrics are tensors: ``loss`` (the sum of the optimised losses), ``grad_norm`` (of the
    unscaled gradients), ``finite`` and, for fp16, ``loss_scale`` (per group ``loss/<name>``
    and ``grad_norm/<name>`` when routed); ``loss/<name>`` for named losses that are only
    logged; ``stats/<key>`` and ``weight`` when ``loss_fn`` reports statistics.

    Routing follows the seed's rules, and an output that breaks one is a ``ValueError`` naming
    it (:class:`fctc.train.LossRules`): one transformation takes one loss tensor (ESPnet3:
    returning OptimizationStep with the single optimizer is forbidden) unless ``log_only``
    leaves one name; a dict of transformations takes named losses, each naming a group or
    listed in ``log_only``.

    Returns:
      The :class:`TrainStep`.

    Raises:
      ValueError: a bad precision, ``accum_steps`` or ``jit``, no ``blank`` for the default
        loss, ``param_labels`` / ``loss_scale`` that do not fit ``tx`` / ``precision``, or a
        ``log_only`` name that is also a group.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"make_train_step: precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(accum_steps, int) or accum_steps < 1:
        raise ValueError(f"make_train_step: accum_steps must be a positive int, got {accum_steps!r}")
    if loss_fn is None:
        if blank is None:
            raise ValueError(
                "make_train_step: give the blank index (blank=vocabulary.blank_idx) for the "
                "default CTC loss, or pass your own loss_fn"
            )
        loss_fn = ctc_loss_fn(model, blank, reduction)
    if isinstance(tx, dict):
        if not tx:
            raise ValueError("make_train_step: the dict of transformations is empty")
        if param_labels is None:
            raise ValueError("make_train_step: a dict of transformations needs param_labels")
    elif param_labels is not None:
        raise ValueError("make_train_step: param_labels needs a dict of transformations")
    if precision == "fp16" and loss_scale is None:
        loss_scale = dynamic_loss_scale()
    if precision != "fp16" and loss_scale is not None:
        raise ValueError("make_train_step: loss_scale is only used with precision='fp16'")
    return TrainStep(
        model, tx, loss_fn, accum_steps, precision, param_labels, loss_scale, jit, donate,
        log_only, skip_nonfinite,
    )
