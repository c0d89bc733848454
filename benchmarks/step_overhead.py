"""Load-independent counts of a train step's fixed cost: tensor operations and Python calls.

Wall-clock ratios on a shared CPU are noisy; what a step *does* is not. For each side of
:mod:`benchmarks.train_step` (the imperative loop and fctc's eager step, one batch or
``--accum`` micro-batches), after warm-up steps, this counts over ``--steps`` steps:

* ``aten ops``: the ATen operations dispatched (a ``TorchDispatchMode`` that counts every op
  reaching the dispatcher below autograd, backward kernels included), total and the most
  frequent ones;
* ``python calls``: function calls seen by ``cProfile`` (Python and C functions), and the
  fctc / optree / torch functions that make most of them;
* ``CPU ms``: the process CPU time per step (noisy under load, shown for scale only).

    python benchmarks/step_overhead.py --config tiny --batch 8 --seconds 2 [--accum 4] \
        [--steps 10] [--top 15] [--out counts.json]

Run it with another checkout's interpreter and ``--repo`` to count that version (``cd
/work/base && .venv/bin/python /path/to/benchmarks/step_overhead.py --repo .``).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _runner(side: str, tsb, config, weights, accum: int):
    """A one-step callable of the benchmark's row ``side`` (``torch eager`` / ``fctc eager``)."""
    spec = {"side": side, "precision": "fp32", "accum": accum}
    return tsb.build_row(spec, config, weights, torch.device("cpu"))


def count_side(side: str, tsb, args) -> dict:
    """Counts of one side over ``args.steps`` steps after ``args.warmup`` warm-up steps.

    Args:
        side: ``"torch eager"`` or ``"fctc eager"``.
        tsb: the ``benchmarks.train_step`` module of the checkout being counted.
        args: the command line.

    Returns:
        Per-step aten ops and Python calls, their leaders, and CPU ms per step.
    """
    weights = tsb.initial_weights(args.config)
    batches = tsb.make_batches(args.batch, args.seconds, torch.device("cpu"))
    run = _runner(side, tsb, args.config, weights, args.accum)
    for i in range(args.warmup):
        run(batches[i % len(batches)])
    counter = OpCounter()
    with counter:
        for i in range(args.steps):
            run(batches[i % len(batches)])
    prof = cProfile.Profile()
    t0 = time.process_time()
    prof.enable()
    for i in range(args.steps):
        run(batches[i % len(batches)])
    prof.disable()
    cpu = time.process_time() - t0
    stats = pstats.Stats(prof)
    calls = sum(v[1] for v in stats.stats.values())  # primitive + recursive call counts
    by_func = collections.Counter()
    for (file, _line, name), v in stats.stats.items():
        where = "fctc" if "/fctc/" in file else ("optree" if "optree" in file else
                                                 ("torch" if "/torch/" in file else "other"))
        by_func[f"{where}: {Path(file).name}:{name}"] += v[1]
    n = args.steps
    return {
        "aten_ops_per_step": sum(counter.counts.values()) / n,
        "top_aten_ops": [(k, v / n) for k, v in counter.counts.most_common(args.top)],
        "python_calls_per_step": calls / n,
        "top_python_calls": [(k, v / n) for k, v in by_func.most_common(args.top)],
        "cpu_ms_per_step": 1e3 * cpu / n,
    }


def main(argv=None) -> dict:
    """Count both sides and print a short table (and ``--out`` JSON).

    Args:
        argv: the command line; None reads ``sys.argv``.

    Returns:
        The counts per side.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", choices=["5x5", "15x5", "tiny"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--sides", default="torch eager,fctc eager")
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                    help="the checkout whose fctc and benchmarks are counted")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(args.repo).resolve()))
    import benchmarks.train_step as tsb  # the chosen checkout's benchmark and fctc

    out = {"args": vars(args), "torch": torch.__version__, "fctc": str(Path(tsb.fctc.__file__).parent)}
    for side in args.sides.split(","):
        out[side] = count_side(side, tsb, args)
    print(f"{args.config}, batch {args.batch} x {args.seconds} s, accum {args.accum}, "
          f"{args.steps} steps, fctc from {out['fctc']}")
    print("| side | aten ops/step | python calls/step | CPU ms/step |")
    print("|---|---:|---:|---:|")
    for side in args.sides.split(","):
        r = out[side]
        print(f"| {side} | {r['aten_ops_per_step']:.0f} | {r['python_calls_per_step']:.0f} | "
              f"{r['cpu_ms_per_step']:.1f} |")
    for side in args.sides.split(","):
        print(f"\n{side}: top aten ops {out[side]['top_aten_ops']}")
        print(f"{side}: top python calls {out[side]['top_python_calls']}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
