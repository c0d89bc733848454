"""Every fctc.optim transformation is pure: ``update`` (and ``update_and_apply`` without
donation) writes into none of its inputs and gives the same result twice, on the fused CPU path
(one thread) and the foreach path alike, with and without clipping in front."""

from __future__ import annotations

import pytest
import torch

import fctc.optim as optim
from fctc import tree as T
from fctc.testing import assert_pure


def matrices(params):
    return T.map(lambda p: p.ndim > 1, params)


def sched(count):
    return 1e-2 * torch.clamp((count.to(torch.float32) + 1) / 3, max=1.0)


TXS = {
    "scale": lambda: optim.scale(0.5),
    "scale_by_learning_rate(schedule)": lambda: optim.scale_by_learning_rate(sched),
    "scale_by_adam": lambda: optim.scale_by_adam(),
    "scale_by_adam(nesterov)": lambda: optim.scale_by_adam(nesterov=True),
    "scale_by_rms": lambda: optim.scale_by_rms(bias_correction=True),
    "scale_by_stddev": lambda: optim.scale_by_stddev(eps_in_sqrt=False),
    "trace(nesterov)": lambda: optim.trace(0.9, nesterov=True),
    "add_decayed_weights(mask)": lambda: optim.add_decayed_weights(1e-2, mask=matrices),
    "clip": lambda: optim.clip(0.1),
    "clip_by_global_norm": lambda: optim.clip_by_global_norm(0.1),
    "clip_by_global_norm(inf)": lambda: optim.clip_by_global_norm(0.1, norm_type=float("inf")),
    "adaptive_grad_clip": lambda: optim.adaptive_grad_clip(0.01),
    "sgd(nesterov)": lambda: optim.sgd(1e-2, momentum=0.9, nesterov=True),
    "adam": lambda: optim.adam(1e-2),
    "adamw(schedule, mask)": lambda: optim.adamw(sched, weight_decay=0.1, mask=matrices),
    "rmsprop(centered, momentum)": lambda: optim.rmsprop(1e-2, centered=True, momentum=0.9),
    "clip+adam": lambda: optim.chain(optim.clip_by_global_norm(0.1), optim.adam(1e-2)),
    "clip+adamw(schedule)": lambda: optim.chain(optim.clip_by_global_norm(0.1), optim.adamw(sched)),
    "named_chain": lambda: optim.named_chain(("clip", optim.clip_by_global_norm(0.1)), ("opt", optim.adamw(1e-2))),
    "masked(adamw)": lambda: optim.masked(optim.adamw(1e-2), matrices),
    "multi_transform": lambda: optim.multi_transform(
        {"a": optim.adamw(1e-2), "b": optim.sgd(0.1, momentum=0.9)}, {"conv": "a", "decoder": "b"}
    ),
    "freeze": lambda: optim.freeze({"conv": True, "decoder": False}),
    "selective_transform": lambda: optim.selective_transform(optim.adam(1e-2), freeze_mask={"conv": False, "decoder": True}),
    "MultiSteps(clip+adamw)": lambda: optim.MultiSteps(
        optim.chain(optim.clip_by_global_norm(0.1), optim.adamw(1e-2)), 2
    ),
    "apply_if_finite(adam)": lambda: optim.apply_if_finite(optim.adam(1e-2), 3),
    "inject_hyperparams(adamw)": lambda: optim.inject_hyperparams(optim.adamw)(learning_rate=sched, weight_decay=1e-2),
    "set_to_zero": lambda: optim.set_to_zero(),
}


def make(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "conv": {"weight": torch.randn(48, 16, 5, generator=g), "bias": torch.randn(48, generator=g)},
        "decoder": torch.randn(29, 48, 1, generator=g),
    }


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", sorted(TXS))
def test_update_writes_into_no_input_and_is_deterministic(name, threads):
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tx = TXS[name]()
        params = make(0)
        state = tx.init(params)
        for i in range(3):  # a state that has moved (and for MultiSteps, an emitting call)
            _, state = tx.update(make(10 + i), state, params)
        assert_pure(tx.update, make(20), state, params)
        assert_pure(optim.update_and_apply, tx, make(21), state, params)
    finally:
        torch.set_num_threads(n)
