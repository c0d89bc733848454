"""Checkpoint save and load times of a QuartzNet 5x5-sized model and train state.

The trees have the names and shapes of the imperative QuartzNet 5x5 CTC model's ``state_dict``
(6.7M parameters plus batch-norm buffers); the train state adds two Adam moments per parameter
(about 80 MB in all). Each round saves and loads both, in turn, through the public
``fctc.checkpoint`` functions, so the script times whichever fctc it imports: run it with two
environments to compare versions (the checksum cost of issue 15 was measured so)::

    python benchmarks/checkpoint.py [--rounds 7] [--config 5x5] [--out results.json]
    cd /work/base && .venv/bin/python /path/to/this/benchmarks/checkpoint.py   # another fctc

Medians of the rounds are printed in seconds, with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# This folder only (not the repository root), so that ``import fctc`` is the installed one.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fctc  # noqa: E402
from imperative_quartznet import quartznet_ctc  # noqa: E402

NUM_CLASSES = 29
FEAT_IN = 64


def trees(config: str) -> tuple[dict, dict, dict]:
    """The trees to save, with the imperative model's ``state_dict`` names and shapes.

    Args:
        config: ``"tiny"``, ``"5x5"`` or ``"15x5"``.

    Returns:
        ``(params, buffers, train_state)`` as nested dicts.
    """
    module = quartznet_ctc(config, NUM_CLASSES, FEAT_IN)
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in module.named_buffers()}
    nest = fctc.tree.unflatten_dict
    state = {
        "params": nest(params),
        "model_state": nest(buffers),
        "opt_state": {
            "mu": nest({k: torch.randn_like(v) * 1e-3 for k, v in params.items()}),
            "nu": nest({k: torch.rand_like(v) * 1e-6 for k, v in params.items()}),
            "count": torch.tensor(1000, dtype=torch.int32),
        },
        "step": torch.tensor(1000, dtype=torch.int64),
    }
    return nest(params), nest(buffers), state


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(config: str, rounds: int) -> dict:
    """Time saving and loading the model file and the train-state file.

    Args:
        config: the model size (see :func:`trees`).
        rounds: timed rounds (one more is run first and dropped).

    Returns:
        The medians in seconds, the file sizes, the fctc imported and the load average.
    """
    params, buffers, state = trees(config)
    ck = fctc.checkpoint
    times: dict[str, list[float]] = {k: [] for k in
                                     ("save_model", "load_model", "save_state", "load_state")}
    with tempfile.TemporaryDirectory(prefix="fctc-ckpt-bench-") as tmp:
        model_path, state_path = Path(tmp) / "model.safetensors", Path(tmp) / "state.safetensors"
        for _ in range(rounds + 1):  # the first round warms caches and is dropped
            t = {
                "save_model": _timed(lambda: ck.save_model(model_path, params, buffers)),
                "load_model": _timed(lambda: ck.load_model(model_path, (params, buffers))),
                "save_state": _timed(lambda: ck.save(state_path, state, {"kind": "state"})),
                "load_state": _timed(lambda: ck.load(state_path, state)),
            }
            for k, v in t.items():
                times[k].append(v)
        sizes = {"model_bytes": model_path.stat().st_size, "state_bytes": state_path.stat().st_size}
    return {
        "config": config,
        "fctc": str(Path(fctc.__file__).resolve().parent),
        "rounds": rounds,
        "median_s": {k: statistics.median(v[1:]) for k, v in times.items()},
        "loadavg": os.getloadavg(),
        **sizes,
    }


def main(argv=None) -> int:
    """Parse the command line, time the rounds, print a table (and write JSON with ``--out``).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status, 0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="5x5", choices=["tiny", "5x5", "15x5"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.config, args.rounds)
    print(f"fctc from {result['fctc']}; load average {result['loadavg']}")
    print(f"model {result['model_bytes'] / 1e6:.1f} MB, train state "
          f"{result['state_bytes'] / 1e6:.1f} MB; median of {args.rounds} rounds:")
    for k, v in result["median_s"].items():
        print(f"| {k} | {v * 1e3:.1f} ms |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
