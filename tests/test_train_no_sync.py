"""The eager train step on an accelerator-like path reads nothing back to the host.

On CUDA every Python read of a tensor's value (``.item()``, ``bool(t)``, ``int(t)``,
``.tolist()``) waits for the device. fctc takes its host shortcuts only where that read is
free (:func:`fctc.backend.host_is_free`) and checks user-given values only where
:func:`fctc.backend.checks_values` allows; here both say "accelerator" while the tensors stay on
the CPU, and every value read raises.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import fctc
import fctc.optim._kernels
from fctc import models, optim, random
from fctc.testing import assert_trees_allclose
from fctc.train import Batch, make_train_step

FEAT, CLASSES, BLANK = 8, 6, 5
_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


class HostRead(AssertionError):
    """A value of a tensor was read back to Python."""


@contextlib.contextmanager
def accelerator_like(monkeypatch):
    """fctc's device tests answer as on an accelerator, and reading a tensor's value fails."""
    for where in (fctc.backend, fctc.random):
        monkeypatch.setattr(where, "host_is_free", lambda tensors: False)
    # torch's fused Adam kernel is the CPU's only (accelerators take the foreach kernels).
    monkeypatch.setattr(fctc.optim._kernels, "_IS_CPU", lambda x: False)
    with fctc.backend.value_checks("never"):
        with monkeypatch.context() as m:
            for name in _READS:
                def read(self, *args, _name=name, **kwargs):
                    raise HostRead(f"Tensor.{_name} read a value back to the host")

                m.setattr(torch.Tensor, name, read)
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
def test_eager_step_makes_no_host_read_on_an_accelerator_path(monkeypatch, accum_steps):
    """QuartzNet with dropout, clipping and an AdamW schedule, one batch or micro-batches:
    no value read, and the same results as with the CPU's host shortcuts."""
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.warmup_cosine_decay_schedule(
        0.0, 1e-2, 2, 10), weight_decay=1e-3))
    step = make_train_step(_model(), tx, blank=BLANK, accum_steps=accum_steps)
    reference = state = step.init_state(random.key(0))
    for i in range(2):
        reference, m_ref = step(reference, _batch(i))
    with accelerator_like(monkeypatch):
        with pytest.raises(HostRead):  # the detector works
            bool(torch.ones(()))
        for i in range(2):
            state, m = step(state, _batch(i))
    # The same arithmetic as with the host shortcuts.
    torch.testing.assert_close(m["loss"], m_ref["loss"])
    assert_trees_allclose(state.params, reference.params)


def test_fp16_step_with_loss_scaling_makes_no_host_read(monkeypatch):
    """The fp16 step (autocast, dynamic loss scale, skip decision) reads no value either."""
    step = make_train_step(_model(), optim.adamw(1e-3), blank=BLANK, precision="fp16")
    state = step.init_state(random.key(0))
    with accelerator_like(monkeypatch):
        state, m = step(state, _batch(0))
    assert m["loss_scale"].dtype == torch.float32
