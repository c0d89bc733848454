"""One optimiser update: fctc's ``chain(clip_by_global_norm, adamw(schedule))`` against
``torch.nn.utils.clip_grad_norm_`` + ``torch.optim.AdamW`` (foreach, and fused where it runs).

fctc runs three ways: optax's two calls (``tx.update`` + ``apply_updates``), the pure
``update_and_apply``, and ``update_and_apply(..., donate=True)``, which updates in place as
torch.optim does.

The parameter trees have QuartzNet's shapes (depthwise ``(C, 1, K)`` and pointwise
``(C_out, C_in, 1)`` convolution weights, batch-norm weights and biases, the CTC decoder):
QuartzNet 5x5 (6.7M parameters) and 15x5 (18.9M). Both sides run in the same process,
interleaved iteration by iteration, and the table reports medians and the ratio fctc / torch.

    python benchmarks/optim.py [--device cpu|cuda] [--jit] [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fctc  # noqa: E402
import fctc.optim as fo  # noqa: E402

WARMUP_STEPS = 500.0
PEAK_LR = 1e-3
WEIGHT_DECAY = 1e-2


def quartznet_shapes(repeat: int, feat_in: int = 64, vocab: int = 29) -> dict[str, tuple]:
    """Parameter shapes of QuartzNet (5 blocks x ``repeat``, 5 sub-blocks each), thunder names."""
    shapes: dict[str, tuple] = {}

    def separable(name, c_in, c_out, k):
        shapes[f"{name}.depthwise.weight"] = (c_in, 1, k)
        shapes[f"{name}.pointwise.weight"] = (c_out, c_in, 1)
        shapes[f"{name}.bn.weight"] = (c_out,)
        shapes[f"{name}.bn.bias"] = (c_out,)

    separable("prologue", feat_in, 256, 33)
    blocks = [(256, 256, 33), (256, 256, 39), (256, 512, 51), (512, 512, 63), (512, 512, 75)]
    index = 0
    for c_in, c_out, k in blocks:
        for r in range(repeat):
            first_in = c_in if r == 0 else c_out
            for s in range(5):
                separable(f"block{index}.{s}", first_in if s == 0 else c_out, c_out, k)
            shapes[f"block{index}.residual.weight"] = (c_out, first_in, 1)
            shapes[f"block{index}.residual.bn.weight"] = (c_out,)
            shapes[f"block{index}.residual.bn.bias"] = (c_out,)
            index += 1
    separable("epilogue0", 512, 512, 87)
    shapes["epilogue1.weight"] = (1024, 512, 1)
    shapes["epilogue1.bn.weight"] = (1024,)
    shapes["epilogue1.bn.bias"] = (1024,)
    shapes["decoder.weight"] = (vocab, 1024, 1)
    shapes["decoder.bias"] = (vocab,)
    return shapes


def make_tree(shapes, device, seed):
    g = torch.Generator().manual_seed(seed)
    flat = {k: (torch.randn(s, generator=g) * 0.05).to(device) for k, s in shapes.items()}
    return fctc.tree.unflatten_dict(flat)


def warmup_lr(count):
    """Linear warm-up to PEAK_LR over WARMUP_STEPS updates (tensor in, tensor out)."""
    ramp = (count.to(torch.float32) + 1) / WARMUP_STEPS
    return PEAK_LR * torch.clamp(ramp, max=1.0)


def fctc_side(params, grads, jit, mode="update"):
    """One fctc step as a runner. ``mode``: "update" is optax's two calls (``tx.update`` then
    ``apply_updates``); "apply" is ``update_and_apply``; "donate" is ``update_and_apply`` with
    the parameters, state and gradients given up (a fresh gradient copy each step, as a real
    loop has, made outside the timed call)."""
    tx = fo.chain(fo.clip_by_global_norm(1.0), fo.adamw(warmup_lr, weight_decay=WEIGHT_DECAY))

    def step(params, opt_state, grads):
        if mode == "update":
            updates, opt_state = tx.update(grads, opt_state, params)
            return fo.apply_updates(params, updates), opt_state
        return fo.update_and_apply(tx, grads, opt_state, params, donate=mode == "donate")

    if jit:
        step = fctc.backend.jit(step)
    box = {"params": fctc.tree.map(torch.clone, params), "state": tx.init(params), "grads": grads}

    def prepare():
        if mode == "donate":
            box["grads"] = fctc.tree.map(torch.clone, grads)

    def run():
        box["params"], box["state"] = step(box["params"], box["state"], box["grads"])

    run.prepare = prepare
    return run


def torch_side(params, grads, impl):
    leaves = [p.detach().clone().requires_grad_(True) for p in fctc.tree.leaves(params)]
    gs = fctc.tree.leaves(grads)
    kw = {"foreach": True} if impl == "foreach" else {"fused": True}
    opt = torch.optim.AdamW(leaves, lr=PEAK_LR, weight_decay=WEIGHT_DECAY, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda c: min(1.0, (c + 1) / WARMUP_STEPS))
    for p, g in zip(leaves, gs):
        p.grad = g.clone()

    def run():
        torch.nn.utils.clip_grad_norm_(leaves, 1.0, foreach=True)
        opt.step()
        sched.step()

    return run


def fused_available(device) -> bool:
    try:
        p = torch.zeros(2, device=device, requires_grad=True)
        p.grad = torch.zeros(2, device=device)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def measure(runners: dict, iters: int, warmup: int, sync) -> dict:
    """Interleave the runners iteration by iteration; wall and CPU medians in milliseconds.

    A runner's optional ``prepare()`` runs before each call, outside the timing."""
    prepare = {k: getattr(run, "prepare", lambda: None) for k, run in runners.items()}
    for k, run in runners.items():
        for _ in range(warmup):
            prepare[k]()
            run()
    sync()
    wall = {k: [] for k in runners}
    cpu = {k: [] for k in runners}
    names = list(runners)
    for i in range(iters):
        order = names if i % 2 == 0 else names[::-1]
        for k in order:
            prepare[k]()
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            runners[k]()
            sync()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {
        k: {"wall_ms": 1e3 * statistics.median(wall[k]), "cpu_ms": 1e3 * statistics.median(cpu[k])}
        for k in runners
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--jit", action="store_true", help="also time the fctc update compiled with fctc.backend.jit")
    ap.add_argument("--quick", action="store_true", help="the small tree only, few iterations")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    iters = args.iters or (10 if args.quick else 40)
    warmup = args.warmup or (3 if args.quick else 5)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sizes = {"QuartzNet 5x5": 1} if args.quick else {"QuartzNet 5x5": 1, "QuartzNet 15x5": 3}
    has_fused = fused_available(device)

    rows = []
    for name, repeat in sizes.items():
        shapes = quartznet_shapes(repeat)
        params = make_tree(shapes, device, 0)
        grads = make_tree(shapes, device, 1)
        n_params = sum(math.prod(s) for s in shapes.values())
        runners = {
            "fctc update + apply_updates": fctc_side(params, grads, jit=False),
            "fctc update_and_apply": fctc_side(params, grads, jit=False, mode="apply"),
            "fctc update_and_apply, donated": fctc_side(params, grads, jit=False, mode="donate"),
            "torch foreach": torch_side(params, grads, "foreach"),
        }
        if has_fused:
            runners["torch fused"] = torch_side(params, grads, "fused")
        if args.jit:
            runners["fctc jit, update + apply_updates"] = fctc_side(params, grads, jit=True)
            runners["fctc jit, update_and_apply"] = fctc_side(params, grads, jit=True, mode="apply")
        res = measure(runners, iters, warmup, sync)
        base = res["torch foreach"]
        for impl, r in res.items():
            rows.append(
                {
                    "tree": name,
                    "params": n_params,
                    "tensors": len(shapes),
                    "impl": impl,
                    **r,
                    "ratio_wall": r["wall_ms"] / base["wall_ms"],
                    "ratio_cpu": r["cpu_ms"] / base["cpu_ms"],
                }
            )

    print(
        f"\nOne update, clip_by_global_norm(1.0) + AdamW(warm-up schedule), device={args.device}, "
        f"threads={torch.get_num_threads()}, {iters} iterations (median), torch {torch.__version__}\n"
    )
    print("| tree | params | tensors | implementation | wall ms | CPU ms | wall / torch foreach | CPU / torch foreach |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['tree']} | {r['params'] / 1e6:.1f}M | {r['tensors']} | {r['impl']} | "
            f"{r['wall_ms']:.2f} | {r['cpu_ms']:.2f} | {r['ratio_wall']:.2f} | {r['ratio_cpu']:.2f} |"
        )
    out = {
        "benchmark": "optim_update",
        "device": args.device,
        "threads": torch.get_num_threads(),
        "iters": iters,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
