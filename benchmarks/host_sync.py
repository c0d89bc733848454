"""Where ``fctc train``'s default step reads values back to the host: what stalls a GPU.

It builds the default recipe's model (over cached features, as ``fctc train`` trains it, or
over audio with ``--waveform``: the on-the-fly waveform augmentation), its optimiser and the
eager train step, runs warm-up steps, then counts over ``--steps`` steps every read of a
tensor value by the line that asked (:class:`fctc.host_reads.HostReads`), per step:

* on the CPU, under :func:`fctc.host_reads.accelerator_path` (fctc's accelerator branches,
  the tensors on the CPU): the reads a GPU run would make;
* on CUDA, the same count on the real device, plus the synchronisations torch reports with
  ``torch.cuda.set_sync_debug_mode("warn")`` (those below Python too, e.g. copies of host
  data to the device), by the Python line that caused them.

    python benchmarks/host_sync.py [--device cuda] [--steps 3] [--waveform] [--out reads.json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import default_step  # noqa: E402  (the recipe's batches)

import fctc  # noqa: E402
from fctc.host_reads import HostReads, accelerator_path  # noqa: E402
from fctc.train import Batch  # noqa: E402

SAMPLE_RATE = 16_000


def audio_batches(config: dict, n: int = 2, seconds: float = 3.2) -> list[Batch]:
    """Audio batches with the feature batches' shapes (seeded noise, the recipe's targets).

    Args:
        config: the configuration.
        n: how many batches.
        seconds: the longest utterance.

    Returns:
        The batches, audio ``(B, samples)``.
    """
    out = []
    for b in default_step.batches(config, n, seconds):
        lengths = b.audio_lengths * (SAMPLE_RATE // 100)
        g = torch.Generator().manual_seed(int(lengths.sum()))
        audio = 0.1 * torch.randn(b.audio.shape[0], int(lengths.max()), generator=g)
        out.append(Batch(audio, lengths, b.targets, b.target_lengths))
    return out


@contextlib.contextmanager
def cuda_sync_warnings(device: torch.device):
    """On CUDA, torch's sync debug mode in "warn", its warnings counted by Python line.

    Yields:
        A Counter of ``"path:line"`` (empty off CUDA).
    """
    counts: collections.Counter = collections.Counter()
    if device.type != "cuda":
        yield counts
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            yield counts
        for w in seen:
            if "synchroniz" in str(w.message):
                counts[f"{w.filename}:{w.lineno}"] += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")


def count_reads(device: torch.device, steps: int, warmup: int, waveform: bool) -> dict:
    """Run the step and count its host reads per step.

    Args:
        device: where the state and batches live (the CPU: fctc's accelerator path there).
        steps: counted steps.
        warmup: steps run before counting.
        waveform: over audio instead of cached features.

    Returns:
        ``{"device", "waveform", "steps", "reads": [[per step, what, where], ...],
        "cuda_syncs": [[per step, where], ...]}``.
    """
    config, step = default_step.recipe_step(cached_features=not waveform)
    data = audio_batches(config) if waveform else default_step.batches(config, 2)
    data = [Batch(*(t.to(device) for t in b)) for b in data]
    state = step.init_state(fctc.random.key(0), device=device)
    for i in range(warmup):
        state, _ = step(state, data[i % len(data)])
    path = accelerator_path() if device.type == "cpu" else contextlib.nullcontext()
    with path, cuda_sync_warnings(device) as syncs, HostReads(fail=False) as reads:
        for i in range(steps):
            state, _ = step(state, data[i % len(data)])
    return {
        "device": str(device), "waveform": waveform, "steps": steps,
        "reads": [[n / steps, what, where] for (what, where), n in reads.sites.most_common()],
        "cuda_syncs": [[n / steps, where] for where, n in syncs.most_common()],
    }


def main(argv=None) -> dict:
    """Parse the flags, count, print the table (and write ``--out``).

    Args:
        argv: the command line (None: ``sys.argv``).

    Returns:
        The result of :func:`count_reads`.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--waveform", action="store_true", help="over audio, augmented on the fly")
    ap.add_argument("--out", type=Path, help="write the result as JSON here")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error(f"--steps must be at least 1 and --warmup at least 0, got {args.steps} and {args.warmup}")
    torch.set_num_threads(args.threads)
    result = count_reads(torch.device(args.device), args.steps, args.warmup, args.waveform)
    where = "over audio" if args.waveform else "over cached features"
    print(f"default recipe's eager step {where}, {result['device']}: host reads per step")
    print("\n".join(f"  {n:g}  {what}  {at}" for n, what, at in result["reads"]) or "  none")
    if result["device"].startswith("cuda"):
        print("torch's sync debug warnings per step")
        print("\n".join(f"  {n:g}  {at}" for n, at in result["cuda_syncs"]) or "  none")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
