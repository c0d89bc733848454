"""The per-step time of ``fctc train``'s default recipe, to compare fctc versions.

It builds the default configuration's model over cached features (SpecAugment and time/mel
warping included, as ``fctc train`` trains it), its optimiser and ``make_train_step``, and
times steps on batches shaped like the recipe's buckets (``data.max_batch_seconds`` of audio
at 100 feature frames per second), printing the median. It uses only the recipe functions
that fctc versions share, so that the same file runs under another checkout's venv:

    python benchmarks/default_step.py [--steps 30] [--warmup 5] [--threads 1] [--jit]
    cd /other/checkout && .venv/bin/python /path/to/benchmarks/default_step.py   # its fctc
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import fctc
from fctc.cli.config import default_config
from fctc.cli.recipe import build_model, build_optimizer, build_vocabulary
from fctc.train import Batch, make_train_step


def batches(config: dict, n: int = 3, seconds: float = 3.2) -> list[Batch]:
    """Feature batches shaped like the recipe's buckets (seeded).

    Args:
        config: the configuration (``data.max_batch_seconds``, ``model.front_end.nfilt``).
        n: how many batches.
        seconds: the longest utterance; the others are 0.75 to 1 times as long.

    Returns:
        ``n`` batches of ``max_batch_seconds // seconds`` utterances (4 by default), with
        targets of 25 to 40 characters.
    """
    size = max(1, int(config["data"]["max_batch_seconds"] // seconds))
    frames, feats = int(seconds * 100), int(config["model"]["front_end"]["nfilt"])
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        lengths = torch.randint(int(0.75 * frames), frames + 1, (size,), generator=g)
        lengths[0] = frames
        x = torch.randn(size, feats, frames, generator=g)
        targets = torch.randint(1, 27, (size, 40), generator=g)
        out.append(Batch(x, lengths, targets, torch.randint(25, 41, (size,), generator=g)))
    return out


def recipe_step(cached_features: bool = True, jit: bool = False):
    """The default recipe's train step, as ``fctc train`` builds it.

    Args:
        cached_features: the model over cached features (False: over audio, with the
            on-the-fly waveform augmentation).
        jit: ``make_train_step(jit=True)``.

    Returns:
        ``(config, step)``.
    """
    config = default_config()
    vocab = build_vocabulary(config, ["abc"])
    model = build_model(config["model"], vocab, cached_features=cached_features)
    tx = build_optimizer(config, 10_000)
    tx = tx[0] if isinstance(tx, tuple) else tx
    return config, make_train_step(model, tx, blank=vocab.blank_idx, jit=jit)


def time_steps(steps: int, warmup: int, jit: bool) -> dict:
    """Build the default recipe's step and time it.

    Args:
        steps: timed steps.
        warmup: untimed steps after the first one.
        jit: ``make_train_step(jit=True)``.

    Returns:
        The figures: fctc's location, parameters, batch shape, first step and median step.
    """
    config, step = recipe_step(jit=jit)
    state = step.init_state(fctc.random.key(0))
    data = batches(config)
    t0 = time.perf_counter()
    state, _ = step(state, data[0])
    first = time.perf_counter() - t0
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, m = step(state, data[i % len(data)])
        float(m["loss"])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    params = sum(x.numel() for x in fctc.tree.leaves(state.params))
    return {"fctc": os.path.dirname(fctc.__file__), "params": params, "batch": list(data[0].audio.shape),
            "first_step_s": round(first, 2), "median_ms": round(1e3 * statistics.median(times), 1),
            "load": os.getloadavg()[0], "jit": jit}


def main() -> None:
    """Parse the flags, time, print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jit", action="store_true", help="make_train_step(jit=True)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(time_steps(args.steps, args.warmup, args.jit)))


if __name__ == "__main__":
    main()
