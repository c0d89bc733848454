"""The time of one dropout mask drawn from ``fctc.random``, to compare fctc versions.

A mask of ``--shape`` (default: 9 utterances x 128 channels x 180 frames, one dropout layer of
the default model on a 16 s batch) is drawn three ways: ``uniform(k, shape) < p`` (the float
path), ``bernoulli(k, p, shape)`` and, where the version has it, ``bernoulli(k, p, shape,
word_bits=16)`` (what ``fctc.nn.dropout`` draws). The variants take turns for ``--rounds``
rounds of ``--per-round`` draws; the median per draw is printed as one JSON line. It uses only
functions fctc versions share, so the same file runs under another checkout's venv:

    python benchmarks/dropout_masks.py [--threads 1] [--shape 9 128 180] [--rounds 8]
    cd /other/checkout && .venv/bin/python /path/to/benchmarks/dropout_masks.py   # its fctc
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import fctc
from fctc import random as R


def variants(shape: tuple[int, ...], p: float) -> dict:
    """The ways of drawing the mask that this fctc version offers.

    Args:
        shape: the mask's shape.
        p: the keep probability.

    Returns:
        name -> a function of a key drawing the mask.
    """
    out = {
        "uniform < p": lambda k: R.uniform(k, shape) < p,
        "bernoulli": lambda k: R.bernoulli(k, p, shape),
    }
    try:
        R.bernoulli(R.key(0), p, (2,), word_bits=16)
    except TypeError:  # a version without 16-bit draws
        return out
    out["bernoulli word_bits=16"] = lambda k: R.bernoulli(k, p, shape, word_bits=16)
    return out


def time_variants(shape: tuple[int, ...], p: float, rounds: int, per_round: int) -> dict:
    """Median milliseconds per draw of each variant, the variants taking turns.

    Args:
        shape: the mask's shape.
        p: the keep probability.
        rounds: rounds of turns.
        per_round: draws per variant and round.

    Returns:
        name -> median ms per draw.
    """
    key = R.key(0)
    fns = variants(shape, p)
    for fn in fns.values():  # warm-up
        fn(key)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        order = list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn(key)
            times[name].append(1e3 * (time.perf_counter() - t0) / per_round)
    return {name: round(statistics.median(ts), 3) for name, ts in times.items()}


def main() -> None:
    """Parse the flags, time, print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shape", type=int, nargs="+", default=[9, 128, 180])
    ap.add_argument("--keep", type=float, default=0.85, help="the keep probability 1 - p")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--per-round", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ms = time_variants(tuple(args.shape), args.keep, args.rounds, args.per_round)
    print(json.dumps({"fctc": os.path.dirname(fctc.__file__), "threads": args.threads,
                      "shape": args.shape, "median_ms": ms, "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
