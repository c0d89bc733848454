"""The worker of tests/test_distributed.py: ``torchrun --nproc_per_node=2 tests/dist_worker.py``.

Every check runs inside one launch (process start-up dominates the cost). Each rank trains on its
half of every batch with ``all_reduce_gradients`` in the chain; rank 0 also trains alone on the
whole batches without it, and the parameters must agree. Collectives are counted by wrapping
``fctc.distributed._sum_across``. A failed check raises, so the rank
exits non-zero and torchrun reports the failure; success prints ``dist_worker rank R: ok``.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import NamedTuple

import torch
from tiny_task import loss_fn, tiny_batch, tiny_model

import fctc
from fctc import distributed as dist
from fctc import optim
from fctc.train import make_train_step

ATOL = 1e-6


class _Trace(NamedTuple):
    trace: dict


def heavy_ball(lr: float, beta: float = 0.9) -> optim.GradientTransformation:
    """SGD with momentum (torch.optim.SGD's formula), a stateful optimiser for the checks."""

    def init(params):
        return _Trace(fctc.tree.zeros_like(params))

    def update(updates, state, params=None, **extra):
        trace = fctc.tree.map(lambda t, g: beta * t + g, state.trace, updates)
        return fctc.tree.map(lambda t: -lr * t, trace), _Trace(trace)

    return optim.GradientTransformation(init, update)


@contextlib.contextmanager
def count_all_reduces():
    """Count the all-reduces fctc.distributed issues inside the block (through ``_sum_across``,
    its one all-reduce, eager or traced): ``calls[0]``."""
    calls = [0]
    original = dist._sum_across

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    dist._sum_across = counted
    try:
        yield calls
    finally:
        dist._sum_across = original


def thread_count() -> int:
    """This process's threads (Linux), or -1 where /proc does not list them."""
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else -1


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(f"rank {dist.rank()}: {what}")


def close(a, b, what: str, atol: float = ATOL) -> None:
    for (path, x), y in zip(fctc.tree.flatten_dict(a).items(), fctc.tree.flatten_dict(b).values()):
        err = (x - y).abs().max().item()
        expect(err <= atol, f"{what}: {path} differs by {err:.3g}")


def raises(exc: type, fn, what: str) -> None:
    try:
        fn()
    except exc:
        return
    raise AssertionError(f"rank {dist.rank()}: {what}: no {exc.__name__} raised")


def check_process_group(r: int, w: int) -> None:
    expect((r, w) == (dist.rank(), dist.world_size()) and w == 2, f"init_from_env gave {(r, w)}")
    expect(dist.init_from_env() == (r, w), "init_from_env is not idempotent")
    expect(dist.is_initialized(), "is_initialized() is False after init")
    dist.barrier()


def check_broadcast(r: int) -> None:
    tree = {
        "w": torch.full((2, 3), float(r)),
        "n": {
            "step": torch.tensor(r + 5),
            "flag": torch.tensor(r == 1),
            "h": torch.arange(3.0, dtype=torch.float64) * (r + 1),
        },
        "tag": "kept",
    }
    before = fctc.tree.map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree)
    out = dist.broadcast_tree(tree)
    expect(torch.equal(out["w"], torch.zeros(2, 3)), "broadcast float32")
    expect(out["n"]["step"].item() == 5 and out["n"]["step"].dtype == torch.int64, "broadcast int64")
    expect(out["n"]["flag"].dtype == torch.bool and not out["n"]["flag"].item(), "broadcast bool")
    expect(torch.equal(out["n"]["h"], torch.arange(3.0, dtype=torch.float64)), "broadcast float64")
    expect(out["tag"] == "kept", "non-tensor leaf")
    for x, y in zip(fctc.tree.leaves(tree), fctc.tree.leaves(before)):
        expect(not isinstance(x, torch.Tensor) or torch.equal(x, y), "broadcast_tree modified its input")
    from_1 = dist.broadcast_tree({"w": torch.full((2,), float(r))}, src=1)
    expect(torch.equal(from_1["w"], torch.ones(2)), "broadcast from src=1")
    bad = {"w": torch.zeros(2 + r)}  # rank 1's shape differs: every rank must raise
    raises(ValueError, lambda: dist.broadcast_tree(bad), "broadcast of mismatched trees")


def check_all_reduce(r: int) -> None:
    g = {
        "a": torch.full((3,), r + 1.0),
        "b": {"c": torch.full((2, 2), 2.0 * r)},
        "d": torch.ones(2, dtype=torch.float64) * r,
    }
    before = fctc.tree.map(torch.clone, g)
    tx = dist.all_reduce_gradients()
    with count_all_reduces() as calls:
        out, st = tx.update(g, tx.init(g))
    expect(calls[0] == 2, f"expected one all-reduce per dtype (2), got {calls[0]}")
    expect(torch.equal(out["a"], torch.full((3,), 1.5)), "average of a")
    expect(torch.equal(out["b"]["c"], torch.ones(2, 2)), "average of b.c")
    half64 = torch.full((2,), 0.5, dtype=torch.float64)
    expect(out["d"].dtype == torch.float64 and torch.equal(out["d"], half64), "average of float64")
    close(g, before, "all_reduce_gradients modified its input", atol=0.0)
    summed, _ = dist.all_reduce_gradients(average=False).update(g, st)
    expect(torch.equal(summed["a"], torch.full((3,), 3.0)), "average=False sums")
    with count_all_reduces() as calls:
        same, _ = tx.update(g, st, sync=torch.tensor(False))
    expect(same is g and calls[0] == 0, "sync=False must pass through without communicating")
    raises(TypeError, lambda: tx.update({"i": torch.ones(2, dtype=torch.int64)}, st), "averaging integers")

    metrics = dist.mean_across({"loss": torch.tensor(float(r)), "finite": torch.tensor(r == 0)})
    expect(metrics["loss"].item() == 0.5 and metrics["finite"].item() == 0.5, f"mean_across gave {metrics}")
    expect(metrics["finite"].dtype == torch.float32, "mean_across of a bool is float32")


def train(tx, batches, *, shard: bool, accum_steps: int = 1, key: int = 0):
    model = tiny_model()
    step = make_train_step(model, tx, loss_fn(model), accum_steps=accum_steps)
    state = step.init_state(fctc.random.key(key))
    if shard:
        state = dist.broadcast_tree(state)
    for b in batches:
        state, _ = step(state, dist.shard_batch(b) if shard else b)
    return state


def check_training(r: int) -> None:
    batches = [tiny_batch(seed=i, batch=8) for i in range(4)]
    cases = {
        # name: (distributed tx, single-process tx, accum_steps, expected all-reduces)
        "chain": (optim.chain(dist.all_reduce_gradients(), heavy_ball(0.3)), heavy_ball(0.3), 1, 4),
        "accum_steps=2": (optim.chain(dist.all_reduce_gradients(), heavy_ball(0.3)), heavy_ball(0.3), 2, 4),
        "DistributedMultiSteps": (
            dist.DistributedMultiSteps(heavy_ball(0.3), 2),
            optim.MultiSteps(heavy_ball(0.3), 2),
            1,
            2,  # one per emitted update
        ),
        "MultiSteps(chain(all_reduce, opt))": (
            optim.MultiSteps(optim.chain(dist.all_reduce_gradients(), heavy_ball(0.3)), 2),
            optim.MultiSteps(heavy_ball(0.3), 2),
            1,
            2,  # eagerly MultiSteps runs its inner chain only when it emits
        ),
    }
    for name, (tx, tx_ref, accum, expected) in cases.items():
        with count_all_reduces() as calls:
            state = train(tx, batches, shard=True, accum_steps=accum, key=r)  # each rank its own init
        expect(calls[0] == expected, f"{name}: {calls[0]} all-reduces for 4 batches, expected {expected}")
        other = dist.broadcast_tree(state.params, src=1)
        close(state.params, other, f"{name}: ranks disagree", atol=0.0)
        if r == 0:
            ref = train(tx_ref, batches, shard=False)
            init = train(tx_ref, [], shard=False).params
            pairs = zip(fctc.tree.leaves(ref.params), fctc.tree.leaves(init))
            moved = max((a - b).abs().max().item() for a, b in pairs)
            expect(moved > 1e-2, f"{name}: the reference did not train")
            close(state.params, ref.params, f"{name}: 2 ranks vs 1 process on whole batches")


def check_multisteps_skip(r: int) -> None:
    params = {"w": torch.ones(3)}
    tx = dist.DistributedMultiSteps(heavy_ball(0.1), 2, should_skip_update_fn=optim.skip_not_finite)
    st = tx.init(params)
    g = {"w": torch.full((3,), float("nan") if r == 1 else 1.0)}
    out, st = tx.update(g, st, params)
    skipped = st.mini_step.item() == 0 and torch.equal(st.acc_grads["w"], torch.zeros(3))
    expect(skipped, "a NaN on rank 1 must make every rank skip the micro-step")
    for _ in range(2):
        out, st = tx.update({"w": torch.full((3,), r + 1.0)}, st, params)
    expect(torch.allclose(out["w"], torch.full((3,), -0.15)), f"emitted update {out['w']}")


def check_donated_skip(r: int) -> None:
    """make_train_step(donate=True) with a gradient all-reduce: a NaN batch on rank 1 makes
    both ranks skip (rank 0's own gradients were finite, so only the chain's check catches
    it), nothing donated is damaged, and the run equals the pure one."""
    batches = [tiny_batch(seed=10 + i, batch=8) for i in range(3)]
    bad = batches[1].audio.clone()
    bad[-1, 0, 0] = float("nan")  # in the last utterance: rank 1's half
    poisoned = batches[1]._replace(audio=bad)
    runs = {}
    for donate in (False, True):
        model = tiny_model()
        tx = optim.chain(dist.all_reduce_gradients(), optim.adamw(1e-2))
        step = make_train_step(model, tx, loss_fn(model), donate=donate)
        state = step.init_state(fctc.random.key(0))
        finite = []
        for i, b in enumerate(batches):
            own = dist.shard_batch(b)
            if i == 1 and r == 1:
                own = dist.shard_batch(poisoned)
            state, m = step(state, own)
            finite.append(bool(m["finite"]))
        expect(finite == [True, False, True], f"donate={donate}: finite flags {finite}")
        runs[donate] = state
    close(runs[True].params, runs[False].params, "donated vs pure distributed run", atol=0.0)
    close(runs[True].params, dist.broadcast_tree(runs[True].params, src=1), "ranks disagree", atol=0.0)


def main() -> None:
    threads = thread_count()
    r, w = dist.init_from_env(timeout=60)
    check_process_group(r, w)
    check_broadcast(r)
    check_all_reduce(r)
    check_multisteps_skip(r)
    check_training(r)
    check_donated_skip(r)
    dist.barrier()
    torch.distributed.destroy_process_group()
    # The group is gone with its gloo threads: threads left running while the interpreter exits
    # can abort the process (an eager functional collective used to keep the group alive).
    for _ in range(20):  # a thread on its way out may be listed a moment longer; a leak stays
        if thread_count() == threads:
            break
        time.sleep(0.1)
    if thread_count() != threads:
        raise AssertionError(f"rank {r}: {thread_count()} threads after destroy_process_group, {threads} before init")
    print(f"dist_worker rank {r}: ok", flush=True)


if __name__ == "__main__":
    main()
