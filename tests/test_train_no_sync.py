"""The eager train step on an accelerator-like path reads nothing back to the host.

On CUDA every read of a tensor's value waits for the device. fctc takes its host shortcuts only
where that read is free (:func:`fctc.backend.host_is_free`) and checks user-given values only
where :func:`fctc.backend.checks_values` allows. Under :func:`fctc.host_reads.accelerator_path`
both say "accelerator" while the tensors stay on the CPU, and :class:`fctc.host_reads.HostReads`
fails on every read: Python's (``Tensor.item`` and the like) and, below them, the ATen
operations that copy a value to the host on CUDA (``_local_scalar_dense``, which also serves
torch's own conversions of a 0-d tensor to a Python number, and the operations whose output
size depends on values, such as ``nonzero``). The last tests run the step on the meta device,
which holds no values at all.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fctc
from fctc import models, optim, random
from fctc.host_reads import HostReadError as HostRead
from fctc.host_reads import HostReads, accelerator_path
from fctc.testing import assert_trees_allclose
from fctc.train import Batch, make_train_step

FEAT, CLASSES, BLANK = 8, 6, 5


@contextlib.contextmanager
def accelerator_like():
    """fctc's device tests answer as on an accelerator, and reading a tensor's value fails."""
    with accelerator_path(), HostReads():
        yield


def _model():
    kwargs = {**models.quartznet_config("tiny"), "feat_in": FEAT, "dropout": 0.1}
    return models.QUARTZNET.ctc_model(models.identity_front_end(), CLASSES, kwargs)


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, FEAT, 40, generator=g)
    targets = torch.randint(0, BLANK, (4, 6), generator=g)
    return Batch(x, torch.tensor([40, 31, 25, 36]), targets, torch.tensor([6, 4, 5, 3]))


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_eager_step_makes_no_host_read_on_an_accelerator_path(accum_steps):
    """QuartzNet with dropout, clipping and an AdamW schedule, one batch or micro-batches:
    no value read, and the same results as with the CPU's host shortcuts."""
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.warmup_cosine_decay_schedule(
        0.0, 1e-2, 2, 10), weight_decay=1e-3))
    step = make_train_step(_model(), tx, blank=BLANK, accum_steps=accum_steps)
    reference = state = step.init_state(random.key(0))
    for i in range(2):
        reference, m_ref = step(reference, _batch(i))
    with accelerator_like():
        for read in (bool, lambda t: torch._foreach_add([t], t), torch.nonzero):
            with pytest.raises(HostRead):  # the detector works, in Python and below it
                read(torch.ones(()))
        for i in range(2):
            state, m = step(state, _batch(i))
    # The same arithmetic as with the host shortcuts.
    torch.testing.assert_close(m["loss"], m_ref["loss"])
    assert_trees_allclose(state.params, reference.params)


def test_fp16_step_with_loss_scaling_makes_no_host_read():
    """The fp16 step (autocast, dynamic loss scale, skip decision) reads no value either."""
    step = make_train_step(_model(), optim.adamw(1e-3), blank=BLANK, precision="fp16")
    state = step.init_state(random.key(0))
    with accelerator_like():
        state, m = step(state, _batch(0))
    assert m["loss_scale"].dtype == torch.float32


_SCHEDULE = optim.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10)
_FAMILIES = {
    "adam with eps_root": lambda: optim.adam(1e-3, eps_root=1e-8),
    "nesterov adam": lambda: optim.adam(1e-3, nesterov=True),
    "centred rmsprop with momentum": lambda: optim.rmsprop(1e-3, centered=True, momentum=0.9),
    "nesterov sgd on a schedule": lambda: optim.sgd(_SCHEDULE, momentum=0.9, nesterov=True),
    "clip by value": lambda: optim.chain(optim.clip(0.5), optim.sgd(0.1)),
    "adaptive clipping": lambda: optim.chain(optim.adaptive_grad_clip(0.1), optim.sgd(0.1)),
    "injected hyperparameters": lambda: optim.inject_hyperparams(optim.adamw)(
        learning_rate=_SCHEDULE, b1=0.9, weight_decay=1e-2),
    "apply_if_finite": lambda: optim.apply_if_finite(optim.adamw(1e-3), 3),
    "MultiSteps": lambda: optim.MultiSteps(optim.adamw(1e-3), 2),
    "every_n_steps": lambda: optim.every_n_steps(optim.adamw(1e-3), 2),
    "reduce_on_plateau": lambda: optim.chain(optim.adamw(1e-3), optim.reduce_on_plateau()),
}


@pytest.mark.parametrize("family", sorted(_FAMILIES))
def test_every_transformation_family_updates_without_a_host_read(family):
    """The optimisers, clips, schedules and wrappers (those that skip calls included) read no
    value on an accelerator path, over calls that emit an update and calls that do not, and
    compute what they compute with the CPU's shortcuts."""
    step = make_train_step(_model(), _FAMILIES[family](), blank=BLANK)
    reference = state = step.init_state(random.key(0))
    for i in range(3):
        reference, _ = step(reference, _batch(i))
    with accelerator_like():
        for i in range(3):
            state, _ = step(state, _batch(i))
    assert_trees_allclose(state.params, reference.params)
    assert_trees_allclose(state.opt_state, reference.opt_state)


class HostToDevice(TorchDispatchMode):
    """Records every copy of host data to another device (on CUDA a copy that, unless
    ``non_blocking``, waits for the device): CPU tensors copied over, and tensors built there
    from Python data by ``torch.tensor`` / ``torch.as_tensor``, which torch does below the
    dispatcher (patched while active). Other operations cannot mix a non-scalar CPU tensor into
    device work: torch refuses them."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []
        self._patch = pytest.MonkeyPatch()

    def _from_data(self, name, make):
        def wrapped(data, *args, device=None, **kwargs):
            out = make(data, *args, device=device, **kwargs)
            if not out.is_cpu and not (isinstance(data, torch.Tensor) and data.device == out.device):
                self.seen.append(f"torch.{name}")
            return out

        return wrapped

    def __enter__(self):
        for name in ("tensor", "as_tensor"):
            self._patch.setattr(torch, name, self._from_data(name, getattr(torch, name)))
        return super().__enter__()

    def __exit__(self, *exc):
        self._patch.undo()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in ("_to_copy", "copy_"):
            src = args[1] if func.overloadpacket.__name__ == "copy_" else args[0]
            if src.is_cpu and not out.is_cpu:
                self.seen.append(str(func))
        return out


_META_SCHEDULES = {
    "warmup cosine": _SCHEDULE,
    "exponential decay": optim.exponential_decay(1e-2, 5, 0.5),
    "one-cycle (piecewise interpolation)": optim.linear_onecycle_schedule(10, 1e-2),
}


@pytest.mark.parametrize("accum_steps, schedule", [
    (1, "warmup cosine"), (2, "warmup cosine"), (1, "exponential decay"),
    (1, "one-cycle (piecewise interpolation)"),
])
def test_eager_step_on_a_device_without_values(accum_steps, schedule):
    """The whole eager step on the meta device, an accelerator whose tensors hold no values:
    every value read fails there, without patching fctc's device tests, and no host data is
    copied over. (torch's CTC kernel has no meta implementation: a loss of the logits stands
    in for it; ``ctc_loss`` itself is covered by the tests above.)"""
    model = _model()
    meta = torch.device("meta")

    def loss_fn(params, model_state, batch, key):
        (logits, _), new_state = model.apply(
            params, model_state, batch.audio, batch.audio_lengths, train=True, key=key
        )
        return logits.float().pow(2).mean(), new_state

    lr = _META_SCHEDULES[schedule]
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(lr, weight_decay=1e-2))
    step = make_train_step(model, tx, loss_fn, accum_steps=accum_steps)
    state = step.init_state(random.key(0), device=meta)
    batch = Batch(*(t.to(meta) for t in _batch(0)))
    with pytest.raises(RuntimeError, match="meta"):
        bool(torch.ones((), device=meta))  # the device has no values to read
    with HostToDevice() as check:  # the detector works
        torch.ones(3).to(meta)
        torch.zeros(3, device=meta).copy_(torch.ones(3))
        torch.tensor([1.0, 2.0], device=meta)
        torch.as_tensor(2.0, device=meta)
        torch.as_tensor(torch.zeros((), device=meta), device=meta)  # already there: no copy
        torch.zeros(3, device=meta) * torch.tensor(2.0)  # a CPU scalar operand is passed by value
    assert len(check.seen) == 4, check.seen
    with HostToDevice() as copies:
        for _ in range(2):
            state, metrics = step(state, batch)
    assert copies.seen == []
    assert {t.device for t in fctc.tree.leaves((state, metrics))} == {meta}
