"""What waveform augmentation costs next to the train step of the default recipe.

On batches of the bundled training split, bucketed as ``fctc train`` buckets them
(``data.max_batch_seconds``), it times in interleaved rounds: the default recipe's train step
over cached features (the baseline), the filterbank front end in training mode (what turning
the cache off adds), each step of the default ``model.waveform`` section, and the whole
chain; and prints medians and ratios to the baseline, so the figures hold on a busy machine.
It also measures the CPU time of building the training split's feature cache with one copy
per utterance and with four (``model.waveform.cached_copies``).

    python benchmarks/waveform_augment.py [--batches 6] [--rounds 5] [--threads 1] [--out r.json]
    python benchmarks/waveform_augment.py --quick     # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fctc  # noqa: E402
from fctc import audio as A  # noqa: E402
from fctc import data  # noqa: E402
from fctc.cli.config import default_config  # noqa: E402
from fctc.cli.recipe import (  # noqa: E402
    _waveform,
    build_feature_cache,
    build_front_end,
    build_model,
    build_optimizer,
    build_vocabulary,
)
from fctc.train import make_train_step  # noqa: E402

STEPS = ("speed", "reverb", "noise", "band_limit", "gain")


def _batches(config, n_batches: int, limit: int | None):
    """Padded audio batches and their feature batches, as the recipe builds them."""
    utts = data.read_manifest(data.bundled_manifests()["train"])
    if limit:
        utts = utts[:limit]
    vocab = build_vocabulary(config, [u.text for u in utts])
    ds = data.SpeechDataset(utts, vocab)
    plan = data.bucket_batches(ds.durations, max_batch_seconds=config["data"]["max_batch_seconds"],
                               shuffle=True, seed=0, epoch=0)[:n_batches]
    front = build_front_end(config["model"])
    _, front_state = front.init()
    out = []
    for idx in plan:
        audio_batch = ds.collate([ds[i] for i in idx])
        (x, xl), _ = front.apply({}, front_state, audio_batch.audio, audio_batch.audio_lengths)
        feats = audio_batch._replace(audio=x, audio_lengths=xl)
        out.append((audio_batch, feats))
    return vocab, front, front_state, out


def _timers(config, vocab, front, front_state):
    """name -> fn(audio batch, feature batch, key) for every timed computation."""
    model = build_model(config["model"], vocab, cached_features=True)
    tx, _ = build_optimizer(config, 1000)
    step = make_train_step(model, tx, blank=vocab.blank_idx, donate=True)
    holder = {"state": step.init_state(fctc.random.key(0))}
    waveform, _ = _waveform(config["model"])
    rate = waveform["sample_rate"]

    def train_step(ab, fb, key):
        holder["state"], _ = step(holder["state"], fb)

    timers = {"train step (cached features)": train_step,
              "front end (train mode)": lambda ab, fb, key: front.apply(
                  {}, front_state, ab.audio, ab.audio_lengths, train=True, key=key)}
    for name in STEPS:
        if waveform.get(name) is not None:
            kwargs = {name: waveform[name]}
            timers[f"waveform: {name}"] = (lambda kw: lambda ab, fb, key: A.augment_waveform(
                key, ab.audio, ab.audio_lengths, rate, **kw))(kwargs)
    timers["waveform: whole chain"] = lambda ab, fb, key: A.augment_waveform(
        key, ab.audio, ab.audio_lengths, **waveform)
    return timers


def cache_seconds(copies: int, limit: int | None = None) -> float:
    """CPU seconds to build the default recipe's feature cache of the bundled training split.

    Args:
        copies: copies per utterance (``model.waveform.cached_copies``).
        limit: use only the first utterances (smoke runs); None: all.

    Returns:
        The process CPU time of :func:`fctc.cli.recipe.build_feature_cache`.
    """
    config = default_config()
    config["model"]["waveform"]["cached_copies"] = copies
    utts = data.read_manifest(data.bundled_manifests()["train"])[:limit]
    ds = data.SpeechDataset(utts, build_vocabulary(config, [u.text for u in utts]))
    _, state = build_front_end(config["model"]).init()
    t0 = time.process_time()
    build_feature_cache(config["model"], ds, state, seed=0)
    return time.process_time() - t0


def run(n_batches: int, rounds: int, threads: int, limit: int | None = None) -> dict:
    """Time every row in interleaved rounds and the cache with 1 and 4 copies.

    Args:
        n_batches: batches timed per round.
        rounds: rounds after one warm-up round.
        threads: torch CPU threads.
        limit: use only the first utterances (smoke runs); None: all.

    Returns:
        The report: machine load, workload, the cache's CPU seconds and one row per timing
        (median milliseconds per batch, ratio to the cached train step).
    """
    torch.set_num_threads(threads)
    config = default_config()
    vocab, front, front_state, batches = _batches(config, n_batches, limit)
    timers = _timers(config, vocab, front, front_state)
    times: dict[str, list[float]] = {name: [] for name in timers}
    load_start = os.getloadavg()
    for r in range(rounds + 1):  # round 0 warms up
        for name, fn in timers.items():
            t0 = time.perf_counter()
            for j, (ab, fb) in enumerate(batches):
                fn(ab, fb, fctc.random.fold_in(fctc.random.key(r), j))
            if r:
                times[name].append((time.perf_counter() - t0) / len(batches))
    cache = {k: cache_seconds(k, limit) for k in (1, 4)}
    base = statistics.median(times["train step (cached features)"])
    seconds = sum(float(ab.audio_lengths.sum()) for ab, _ in batches) / 16000 / len(batches)
    return {
        "threads": threads, "batches": len(batches), "rounds": rounds,
        "audio_seconds_per_batch": seconds, "load_average": [load_start, os.getloadavg()],
        "cache_cpu_seconds": cache,
        "rows": [{"what": name, "median_ms": 1e3 * statistics.median(t),
                  "ratio_to_train_step": statistics.median(t) / base} for name, t in times.items()],
    }


def main(argv=None) -> int:
    """The command line: print the table (and write the JSON report with ``--out``).

    Args:
        argv: the arguments; None: ``sys.argv``.

    Returns:
        The exit status, 0.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="2 small batches, 1 round")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    result = run(2, 1, a.threads, limit=40) if a.quick else run(a.batches, a.rounds, a.threads)
    print(f"{result['batches']} batches of {result['audio_seconds_per_batch']:.1f} s of audio, "
          f"{result['threads']} thread(s), load average {result['load_average']}")
    print("| what | median ms per batch | x train step |\n|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['what']} | {row['median_ms']:.1f} | {row['ratio_to_train_step']:.3f} |")
    c = result["cache_cpu_seconds"]
    print(f"feature cache of the training split: {c[1]:.1f} CPU s with 1 copy, {c[4]:.1f} with 4")
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
