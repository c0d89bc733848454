"""A depthwise convolution's forward and backward, ``F.conv1d`` against fctc's CPU kernel.

For each of the default model's depthwise layer shapes on a 16 s batch (8 utterances of 2 s:
200 frames after the stem; ``--batch``/``--frames`` change it), the two implementations take
turns for ``--rounds`` rounds of ``--per-round`` calls, forward only and forward with the
backward of both inputs; the medians and the ratio ``F.conv1d / fctc`` (above 1: fctc's
kernel is faster) are printed as one JSON line per shape, with the largest difference of the
outputs and gradients:

    python benchmarks/depthwise_conv.py [--threads 2] [--batch 8] [--frames 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from fctc.nn.depthwise import depthwise_conv1d

#: (channels, taps, dilation) of the default model's depthwise layers (fctc/configs/default.yaml)
LAYERS = [(128, 11, 1), (128, 13, 1), (128, 15, 1), (128, 15, 2)]


def implementations(channels: int, padding: int, dilation: int) -> dict:
    """The two ways of running the layer, as functions of ``(x, w)``.

    Args:
        channels: the layer's channels (its groups).
        padding: zeros on each side.
        dilation: the taps' spacing.

    Returns:
        name -> a function of the input and the kernel.
    """
    return {
        "F.conv1d": lambda x, w: F.conv1d(x, w, None, 1, padding, dilation, channels),
        "fctc": lambda x, w: depthwise_conv1d(x, w, None, padding, dilation),
    }


def time_layer(batch: int, frames: int, channels: int, taps: int, dilation: int,
               rounds: int, per_round: int) -> dict:
    """Median milliseconds per call of each implementation, forward and forward + backward.

    Args:
        batch: utterances.
        frames: frames per utterance.
        channels: the layer's channels.
        taps: the kernel's taps.
        dilation: their spacing.
        rounds: rounds of turns.
        per_round: calls per implementation and round.

    Returns:
        ``{"forward": {name: ms}, "forward+backward": {name: ms}, "max_diff": float}``.
    """
    padding = dilation * (taps - 1) // 2
    x = torch.randn(batch, channels, frames, requires_grad=True)
    w = torch.randn(channels, 1, taps, requires_grad=True)
    fns = implementations(channels, padding, dilation)
    ct = torch.randn(batch, channels, frames)
    results = {name: (fn(x, w), *torch.autograd.grad(fn(x, w), (x, w), ct)) for name, fn in fns.items()}
    diff = max(float((a - b).abs().max()) for a, b in zip(*results.values()))

    def forward(fn):
        with torch.no_grad():
            fn(x, w)

    def both(fn):
        torch.autograd.grad(fn(x, w), (x, w), ct)

    out: dict = {"max_diff": diff}
    for label, run in (("forward", forward), ("forward+backward", both)):
        times: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(rounds):
            for name, fn in (list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]):
                t0 = time.perf_counter()
                for _ in range(per_round):
                    run(fn)
                times[name].append(1e3 * (time.perf_counter() - t0) / per_round)
        out[label] = {name: round(statistics.median(ts), 3) for name, ts in times.items()}
    return out


def main() -> None:
    """Parse the flags, time every layer, print one JSON line per layer."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--per-round", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for channels, taps, dilation in LAYERS:
        r = time_layer(args.batch, args.frames, channels, taps, dilation, args.rounds, args.per_round)
        ratio = {k: round(v["F.conv1d"] / v["fctc"], 2) for k, v in r.items() if k != "max_diff"}
        print(json.dumps({"shape": [args.batch, channels, args.frames], "taps": taps,
                          "dilation": dilation, "threads": args.threads, **r,
                          "speedup": ratio, "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
