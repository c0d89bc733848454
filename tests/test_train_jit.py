"""Compiled train steps: one compilation for batches of many lengths, the jit modes' plumbing.

The compiled steps here use the tiny synthetic task; each test compiles once (seconds).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.utils

import fctc
from fctc import optim, random
from fctc.testing import assert_trees_allclose
from fctc.train import JIT_MODES, Batch, make_train_step
from tiny_task import BLANK, tiny_batch, tiny_model


def _batch(seed: int, size: int, labels: int, frames_per_label: int) -> Batch:
    """A batch of the tiny task with its own padded width (frames) and target width."""
    return tiny_batch(seed, batch=size, labels=labels, repeat=frames_per_label)


BATCHES = [  # widths 15, 20, 12, 24 frames; 5, 4, 6, 6 labels; 8, 4, 6, 3 utterances
    _batch(0, 8, 5, 3), _batch(1, 4, 4, 5), _batch(2, 6, 6, 2), _batch(3, 3, 6, 4),
]


def _compilations() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_jit_compiles_once_for_batches_of_several_lengths():
    """jit=True: the batch's sizes are dynamic, so padded widths, target widths and batch
    sizes that change from batch to batch reuse the one compiled graph (a recompile fails)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-2))
    eager = make_train_step(tiny_model(), tx, blank=BLANK)
    jitted = make_train_step(tiny_model(), tx, blank=BLANK, jit=True)
    s_e = s_j = eager.init_state(random.key(0))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for b in BATCHES + BATCHES[:2]:
            s_e, m_e = eager(s_e, b)
            s_j, m_j = jitted(s_j, b)
            torch.testing.assert_close(m_j["loss"], m_e["loss"], rtol=1e-4, atol=1e-5)
    assert _compilations() == 1
    assert_trees_allclose(s_j.params, s_e.params, rtol=1e-4, atol=1e-5)


def test_jit_modes_are_named_and_checked():
    assert JIT_MODES == (False, True, "step", "reduce-overhead")
    with pytest.raises(ValueError, match=r"jit must be one of \(False, True, 'step', 'reduce-overhead'\)"):
        make_train_step(tiny_model(), optim.sgd(0.1), blank=BLANK, jit="fast")


def test_reduce_overhead_compiles_the_whole_step_with_cuda_graphs(monkeypatch):
    """jit='reduce-overhead' hands the whole step to jit_trees in torch's CUDA-graph mode, with
    static shapes; on the CPU the first call says what to use instead."""
    seen = []

    def fake_jit_trees(fn, **kwargs):
        seen.append(kwargs)
        return fn

    monkeypatch.setattr(fctc.backend, "jit_trees", fake_jit_trees)
    step = make_train_step(tiny_model(), optim.sgd(0.1), blank=BLANK, jit="reduce-overhead")
    assert seen == [{"mode": "reduce-overhead"}]
    whole = make_train_step(tiny_model(), optim.sgd(0.1), blank=BLANK, jit="step")
    assert seen[-1] == {"dynamic": (1,)} and whole.donate is False
    with pytest.raises(ValueError, match="needs the state on a CUDA device; it is on cpu: use jit=True"):
        step(step.init_state(random.key(0)), BATCHES[0])


def test_jit_trees_guards_tensors_and_treats_python_values_as_constants():
    """The compiled code is a function of the tensors: other shapes or structures compile
    anew, Python values the function reads are fixed when it is traced (as in jax.jit), and
    non-tensor leaves of the arguments are constants of their own compiled function."""
    torch._dynamo.reset()
    scale = {"value": 2.0}

    def fn(tree, k):
        return {"y": tree["a"] * scale["value"] + tree["b"].sum() * k}

    f = fctc.backend.jit_trees(fn, dynamic=(0,), backend="eager")
    x = {"a": torch.ones(3), "b": torch.ones(2)}
    torch.testing.assert_close(f(x, 1.0)["y"], torch.full((3,), 4.0))
    torch.testing.assert_close(f({"a": torch.ones(5), "b": torch.ones(4)}, 1.0)["y"], torch.full((5,), 6.0))
    torch.testing.assert_close(f(x, 3.0)["y"], torch.full((3,), 8.0))  # a new constant: compiled again
    scale["value"] = 10.0  # read when traced: the compiled code keeps 2.0
    torch.testing.assert_close(f(x, 1.0)["y"], torch.full((3,), 4.0))
    torch.testing.assert_close(f({"a": torch.ones(3, dtype=torch.float64), "b": torch.ones(2)}, 1.0)["y"],
                               torch.full((3,), 12.0, dtype=torch.float64))  # a new dtype: traced anew
    assert f.__wrapped__ is fn


def test_jit_trees_keys_inductor_caches_by_fctcs_lowering():
    """Graphs compiled with fctc's CPU convolution-backward lowering are cached apart from
    stock ones (a stale cached backward would bring its time-size guard back); a user's own
    post-grad pass is left in place."""
    from fctc import _tree_jit

    options = _tree_jit._options(None, "inductor")
    assert "convolution_backward" in options["post_grad_custom_pre_pass"].uuid()
    assert options["guard_filter_fn"] is _tree_jit._guard_filter
    assert "post_grad_custom_pre_pass" not in _tree_jit._options(None, "eager")
    with torch._inductor.config.patch(post_grad_custom_pre_pass=lambda graph: None):
        assert "post_grad_custom_pre_pass" not in _tree_jit._options(None, "inductor")


def test_jit_trees_of_functions_sharing_code_keep_their_own_closures():
    """Two compiled functions built by one factory (same code, other closure values) each
    run their own constants."""

    def make(k):
        return lambda x: x * k

    x = torch.ones(3)
    for backend in ("eager", "inductor"):
        a = fctc.backend.jit_trees(make(2.0), backend=backend)
        b = fctc.backend.jit_trees(make(3.0), backend=backend)
        torch.testing.assert_close(a(x), torch.full((3,), 2.0))
        torch.testing.assert_close(b(x), torch.full((3,), 3.0))


def test_the_quartznet_loss_traces_as_one_graph():
    """The default loss of a QuartzNet (masked convolutions, batch norm, the CTC loss) traces
    without a graph break: the eager-only bookkeeping (lengths bounds, padding masks, value
    checks) stays out of compiled code. A break would split jit=True's compiled loss."""
    from fctc.models import QUARTZNET, identity_front_end, quartznet_config
    from fctc.train import ctc_loss_fn
    from tiny_task import CHANNELS, VOCAB

    model = QUARTZNET.ctc_model(identity_front_end(), VOCAB, {**quartznet_config("tiny"), "feat_in": CHANNELS})
    params, state = model.init(random.key(0))
    loss_fn = fctc.backend.jit_trees(ctc_loss_fn(model, BLANK), dynamic=(2,), backend="eager", fullgraph=True)
    torch._dynamo.reset()
    for b in (_batch(0, 4, 4, 6), _batch(1, 3, 5, 5)):
        eager, _ = ctc_loss_fn(model, BLANK)(params, state, b, random.key(1))
        compiled, _ = loss_fn(params, state, b, random.key(1))
        torch.testing.assert_close(compiled, eager)
