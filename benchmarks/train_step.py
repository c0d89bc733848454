"""fctc's train step side by side with the imperative PyTorch training loop it replaces.

Both sides train the same QuartzNet (thunder's encoder and 1x1 convolution decoder, with the
same initial weights: fctc's are loaded into the ``nn.Module`` by ``state_dict`` key) on the
same batches with the same optimiser: ``clip_by_global_norm(1.0)`` then AdamW (weight decay
1e-3) with a linear-warm-up cosine learning rate, and the CTC loss with thunder's reduction
(torch's "mean"). The batches are precomputed 64-band log-mel features: the filterbank front
end has no parameters and costs the same on both sides, so it is left out of the timings.

Rows (per precision; "torch eager" of the same precision is the reference of the ratios):

* ``torch eager``: the ``nn.Module`` (``benchmarks/imperative_quartznet.py``), ``loss.backward()``,
  ``torch.nn.utils.clip_grad_norm_``, ``torch.optim.AdamW`` (``foreach=True``; ``fused=True`` on
  CUDA), ``LambdaLR`` with the same warm-up cosine, ``GradScaler`` for fp16;
* ``torch compile``: the same loop with ``torch.compile`` on the module;
* ``fctc eager``: ``fctc.train.make_train_step(..., jit=False)``;
* ``fctc donated``: the same step with ``donate=True`` (the update reuses the state's buffers);
* ``fctc jit``: the same step with ``jit=True`` and ``donate=True`` (the loss and its gradient
  compiled by ``torch.compile``, the update eager and donated);
* ``fctc jit step`` (with ``--jit-step``): the same step with ``jit="step"`` (the whole step,
  update included, one compiled function; minutes of compilation on a small CPU).

With ``--accum K`` (default 4) two more rows split each batch into K micro-batches, accumulate
gradients and update once (torch: K ``backward()`` calls of weighted losses; fctc:
``accum_steps=K``). Their "speed vs ref" is to the same side's one-large-batch row, and "vs
torch, same work" to torch eager's row of the same precision and accumulation.

Timing: every row is set up in one process and warmed up; then the rows take turns, a few
steps each, for several rounds, so that load from other processes hits all rows alike. A step
is timed from a device synchronisation to the next; the table shows medians. Memory: each row
runs again in a fresh subprocess (so the peaks are separable), warms up, then measures two
steps: CUDA ``max_memory_allocated``, or on CPU the peak resident set size (``VmHWM``, reset
after the warm-up through ``/proc/self/clear_refs`` so compilation does not count; the whole
process, Python and torch included). The JSON also holds, per row, the memory after setup
(model, optimiser state, batches; torch allocates AdamW's moments lazily, in the first step)
and the increase of the peak over the memory just before the measured steps.

    python benchmarks/train_step.py --device cpu|cuda --config 5x5|15x5 --batch B --seconds S \
        [--precisions fp32,bf16,fp16] [--accum 4] [--no-compile] [--jit-step] [--quick] \
        [--out results.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fctc  # noqa: E402
import fctc.optim as fo  # noqa: E402
from benchmarks.imperative_quartznet import quartznet_ctc as imperative_quartznet_ctc  # noqa: E402
from fctc.nn.core import Model  # noqa: E402
from fctc.data import Batch  # noqa: E402
from fctc.train import make_train_step  # noqa: E402

NUM_CLASSES = 29  # 28 characters and the blank, as thunder's English QuartzNet
BLANK = 28
FEAT_IN = 64
FRAMES_PER_SECOND = 100  # 10 ms hop
LABELS_PER_SECOND = 15
NUM_BATCHES = 3  # distinct batches, cycled

PEAK_LR = 1e-3
INIT_LR = 1e-5
WARMUP_STEPS = 10
DECAY_STEPS = 10_000
WEIGHT_DECAY = 1e-3
MAX_NORM = 1.0

SIDES = ("torch eager", "torch compile", "fctc eager", "fctc donated", "fctc jit", "fctc jit step")
JIT = {"fctc jit": True, "fctc jit step": "step"}  # the compiled fctc rows' jit modes


# ------------------------------------------------------------------------------ the workload


def make_batches(batch: int, seconds: float, device: torch.device, seed: int = 0) -> list[Batch]:
    """``NUM_BATCHES`` padded batches of random features with lengths in ``[0.7 S, S]`` seconds.

    The longest utterance of every batch fills the padding, as a length-sorted loader's would.
    Targets (``LABELS_PER_SECOND`` labels per second of the shortest possible utterance) are
    always alignable.

    Args:
        batch: utterances per batch.
        seconds: the longest utterance ``S``.
        device: where the batches live.
        seed: the generator's seed.

    Returns:
        The batches (features ``(B, FEAT_IN, frames)``).
    """
    g = torch.Generator().manual_seed(seed)
    frames = int(seconds * FRAMES_PER_SECOND) + 1
    n_labels = max(1, int(0.7 * seconds * LABELS_PER_SECOND))
    out = []
    for _ in range(NUM_BATCHES):
        x = torch.randn(batch, FEAT_IN, frames, generator=g)
        lengths = torch.randint(int(0.7 * frames), frames + 1, (batch,), generator=g)
        lengths[0] = frames
        targets = torch.randint(0, BLANK, (batch, n_labels), generator=g)
        target_lengths = torch.randint(max(1, n_labels // 2), n_labels + 1, (batch,), generator=g)
        out.append(Batch(x, lengths, targets, target_lengths))
    return [Batch(*(t.to(device) for t in b)) for b in out]


def audio_seconds(batch: Batch) -> float:
    """Seconds of (unpadded) audio in a batch.

    Args:
        batch: a batch of features.

    Returns:
        Its valid frames in seconds.
    """
    return float(batch.audio_lengths.sum()) / FRAMES_PER_SECOND


def lr_at(count: int) -> float:
    """The warm-up cosine learning rate, optax's formula.

    Args:
        count: the 0-based update.

    Returns:
        Its learning rate.
    """
    if count < WARMUP_STEPS:
        return INIT_LR + (PEAK_LR - INIT_LR) * count / WARMUP_STEPS
    t = min(count - WARMUP_STEPS, DECAY_STEPS - WARMUP_STEPS)
    return PEAK_LR * 0.5 * (1 + math.cos(math.pi * t / (DECAY_STEPS - WARMUP_STEPS)))


def fctc_transformation() -> fo.GradientTransformation:
    """fctc's optimiser of the benchmark.

    Returns:
        ``clip_by_global_norm(1.0)`` then AdamW with :func:`lr_at`'s schedule.
    """
    schedule = fo.warmup_cosine_decay_schedule(INIT_LR, PEAK_LR, WARMUP_STEPS, DECAY_STEPS)
    return fo.chain(fo.clip_by_global_norm(MAX_NORM), fo.adamw(schedule, weight_decay=WEIGHT_DECAY))


def fctc_model(config: str) -> Model:
    """fctc's QuartzNet CTC model over features, built by its architecture.

    Args:
        config: a QuartzNet size (``"5x5"``, ``"15x5"``, ``"tiny"``).

    Returns:
        The model, with an identity front end (the batches hold features).
    """
    kwargs = {**fctc.models.quartznet_config(config), "feat_in": FEAT_IN}
    return fctc.models.QUARTZNET.ctc_model(fctc.models.identity_front_end(), NUM_CLASSES, kwargs)


@functools.lru_cache(maxsize=None)
def _initial_trees(config: str, seed: int) -> tuple[Any, Any]:
    return fctc_model(config).init(fctc.random.key(seed))


def initial_weights(config: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """fctc's initial params and buffers, the weights both sides start from.

    Args:
        config: a QuartzNet size.
        seed: the init key's seed.

    Returns:
        The trees flattened to ``state_dict`` keys.
    """
    params, state = _initial_trees(config, seed)
    return {**fctc.tree.flatten_dict(params), **fctc.tree.flatten_dict(state)}


def micro_bounds(size: int, k: int) -> list[tuple[int, int]]:
    """The micro-batch slices fctc's ``accum_steps`` uses.

    Args:
        size: the batch size.
        k: micro-batches.

    Returns:
        ``(start, stop)`` pairs with ``round(i * size / k)`` bounds.
    """
    bounds = [round(i * size / k) for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


# ------------------------------------------------------------------------------ the two sides


class TorchLoop:
    """The imperative training loop: a module updated in place by ``torch.optim``."""

    def __init__(self, config, weights, device, precision, compiled, accum):
        self.module = imperative_quartznet_ctc(config, NUM_CLASSES, FEAT_IN)
        self.module.load_state_dict({k: v.clone() for k, v in weights.items()})
        self.module.to(device).train()
        self.forward = torch.compile(self.module) if compiled else self.module
        fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
        self.opt = torch.optim.AdamW(
            self.module.parameters(), lr=PEAK_LR, weight_decay=WEIGHT_DECAY, **fused
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda c: lr_at(c) / PEAK_LR)
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.accum = accum

    def _loss(self, b: Batch) -> torch.Tensor:
        with torch.autocast(self.device.type, self.dtype, enabled=self.dtype is not None):
            logits, lengths = self.forward(b.audio, b.audio_lengths)
        log_probs = F.log_softmax(logits.float().permute(2, 0, 1), dim=2)
        return F.ctc_loss(
            log_probs, b.targets, lengths, b.target_lengths, blank=BLANK, reduction="mean",
            zero_infinity=True,
        )

    def __call__(self, batch: Batch) -> None:
        self.opt.zero_grad(set_to_none=True)
        size = batch.audio.shape[0]
        total = 0.0
        for a, b in micro_bounds(size, self.accum):
            mb = batch if self.accum == 1 else Batch(*(t[a:b] for t in batch))
            loss = self._loss(mb) * ((b - a) / size)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total = total + loss.detach()
        self.loss = total
        if self.scaler:
            self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), MAX_NORM)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        with warnings.catch_warnings():
            # GradScaler skips fp16 steps with non-finite gradients, and LambdaLR then warns
            # that it stepped before the optimiser. (Its count keeps advancing on skipped steps,
            # fctc's does not: a difference of learning rate, not of cost.)
            warnings.simplefilter("ignore", UserWarning)
            self.sched.step()

    def weights(self) -> dict[str, torch.Tensor]:
        """The module's weights now.

        Returns:
            Its ``state_dict``, on the CPU.
        """
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}


class FctcLoop:
    """fctc's pure train step, its state threaded through the loop."""

    def __init__(self, config, weights, device, precision, jit, accum, donate=False):
        model = fctc_model(config)
        self.step = make_train_step(
            model, fctc_transformation(), blank=BLANK, precision=precision, accum_steps=accum,
            jit=jit, donate=donate,
        )
        params, state = _initial_trees(config, 0)  # the tree structure (cached)
        flat = {k: v.clone() for k, v in weights.items()}
        params, state = _restore(params, flat), _restore(state, flat)
        self.state = self.step.init_state(
            fctc.random.key(0), params=params, model_state=state, device=device
        )

    def __call__(self, batch: Batch) -> None:
        self.state, self.metrics = self.step(self.state, batch)
        self.loss = self.metrics["loss"]

    def weights(self) -> dict[str, torch.Tensor]:
        """The train state's weights now.

        Returns:
            Params and model state under ``state_dict`` keys, on the CPU.
        """
        s = self.state
        flat = {**fctc.tree.flatten_dict(s.params), **fctc.tree.flatten_dict(s.model_state)}
        return {k: v.detach().cpu() for k, v in flat.items()}


def _restore(tree: Any, flat: dict[str, torch.Tensor]) -> Any:
    """``tree`` with every leaf replaced by ``flat``'s tensor of the same ``state_dict`` key."""
    return fctc.tree.map_with_path(lambda key, _: flat[key], tree)


def build_row(spec: dict, config: str, weights, device) -> Callable[[Batch], None]:
    """The runner of one row.

    Args:
        spec: the row (``side``, ``precision``, ``accum``).
        config: the QuartzNet size.
        weights: the initial weights.
        device: where it runs.

    Returns:
        A callable that trains one step on a batch.
    """
    side, precision, accum = spec["side"], spec["precision"], spec["accum"]
    if side.startswith("torch"):
        return TorchLoop(config, weights, device, precision, side == "torch compile", accum)
    return FctcLoop(
        config, weights, device, precision, JIT.get(side, False), accum,
        donate=side in ("fctc donated", "fctc jit"),
    )


def row_specs(precisions, compile_rows: bool, accum: int, jit_step: bool = False) -> list[dict]:
    """The rows of the table.

    Args:
        precisions: ``fp32`` / ``bf16`` / ``fp16``.
        compile_rows: include the compiled rows.
        accum: micro-batches of the accumulation rows (1: none).
        jit_step: with the compiled rows, the ``fctc jit step`` row.

    Returns:
        One dict per row, each with its reference row (the ratio's denominator).
    """
    specs = []
    sides = SIDES if compile_rows else ("torch eager", "fctc eager", "fctc donated")
    sides = [s for s in sides if jit_step or s != "fctc jit step"]
    for p in precisions:
        for side in sides:
            specs.append(dict(name=f"{side} {p}", side=side, precision=p, accum=1,
                              ref=f"torch eager {p}"))
    if accum > 1:
        p = precisions[0]
        for side in ("torch eager", "fctc eager"):
            specs.append(dict(name=f"{side} {p} accum{accum}", side=side, precision=p,
                              accum=accum, ref=f"{side} {p}"))
    return specs


# --------------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
"""``--clock``: wall-clock time, or the CPU time of the timing thread (with ``--threads 1`` on
the CPU every kernel and the backward pass run on it; less sensitive to other processes'
load, blind to time spent waiting for a device)."""


def time_rows(runners: dict, batches, device, warmup: int, rounds: int, per_round: int,
              clock=time.perf_counter) -> dict:
    """Warm every row up, then let the rows take turns.

    Args:
        runners: row name -> runner.
        batches: the batches, cycled.
        device: synchronised around every step.
        warmup: untimed steps per row.
        rounds: turns.
        per_round: steps per row and turn.
        clock: the timer of the turns (:data:`CLOCKS`); first steps are always wall time.

    Returns:
        ``{"first": first-step seconds per row, "times": per-step wall times per row}``.
    """
    first, times = {}, {name: [] for name in runners}
    for name, run in runners.items():
        for i in range(warmup):
            _sync(device)
            t0 = time.perf_counter()
            run(batches[i % len(batches)])
            _sync(device)
            if i == 0:
                first[name] = time.perf_counter() - t0
                _progress(f"{name}: first step {first[name]:.2f} s")
    names = list(runners)
    k = 0
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            for _ in range(per_round):
                b = batches[k % len(batches)]
                k += 1
                _sync(device)
                t0 = clock()
                runners[name](b)
                _sync(device)
                times[name].append(clock() - t0)
        _progress(f"round {r + 1}/{rounds} done")
    return {"first": first, "times": times}


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_memory_here(spec, config, batch, seconds, device, warmup) -> dict:
    """Peak memory of one row in this (fresh) process: warm up, then two measured steps.

    Args:
        spec: the row.
        config: the QuartzNet size.
        batch: utterances per batch.
        seconds: the longest utterance.
        device: where it runs.
        warmup: untimed steps first.

    Returns:
        The memory after setup, the peak and its increase over the steps, in MB.
    """
    weights = initial_weights(config)
    batches = make_batches(batch, seconds, device)
    run = build_row(spec, config, weights, device)
    _sync(device)
    if device.type == "cuda":
        setup = torch.cuda.memory_allocated(device) / 2**20
    else:
        rss = _status_kb("VmRSS")
        setup = rss / 1024 if rss is not None else None
    for i in range(warmup):
        run(batches[i % len(batches)])
    _sync(device)
    out: dict[str, Any] = {"setup_mb": setup}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for i in range(2):
            run(batches[i % len(batches)])
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        out.update(kind="cuda_max_allocated", peak_mb=peak / 2**20,
                   increase_mb=(peak - before) / 2**20)
    else:
        reset = _reset_peak_rss()
        before = _status_kb("VmRSS")
        for i in range(2):
            run(batches[i % len(batches)])
        peak = _status_kb("VmHWM") if reset else None
        if peak is None:  # no /proc: the lifetime peak (includes compilation)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.update(kind="cpu_peak_rss" if reset else "cpu_max_rss_lifetime", peak_mb=peak / 1024,
                   increase_mb=(peak - before) / 1024 if before is not None else None)
    return out


def measure_memory(specs: list[dict], args, parallel: bool = False) -> list[dict]:
    """Run :func:`measure_memory_here` for each row in its own fresh Python process.

    Args:
        specs: the rows.
        args: the command line (device, sizes, threads).
        parallel: start them together (the quick run: the peaks stay per process, only their
            timings would suffer); one after the other otherwise.

    Returns:
        One result per row (``{"error": ...}`` for a subprocess that failed).
    """
    def finish(p: subprocess.Popen) -> dict:
        stdout, stderr = p.communicate(timeout=3600)
        if p.returncode != 0:
            lines = stderr.strip().splitlines()
            return {"error": lines[-1] if lines else f"exit status {p.returncode}"}
        return json.loads(stdout.strip().splitlines()[-1])

    started, out = [], []
    for spec in specs:
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "--memory-row", json.dumps(spec),
            "--device", args.device, "--config", args.config, "--batch", str(args.batch),
            "--seconds", str(args.seconds), "--warmup", str(args.warmup),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if parallel:
            started.append(p)
        else:
            out.append(finish(p))
            _progress(f"memory of {spec}: {out[-1]}")
    return out + [finish(p) for p in started]


# ---------------------------------------------------------------------------------- parity


def check_parity(config, weights, batches, device, precision="fp32") -> dict:
    """Two steps of torch eager and fctc eager from the same weights: losses and weights agree.

    AdamW moves every weight by up to about one learning rate per step whatever the size of
    its gradient, so a weight whose gradient is at the level of float rounding can move one
    way on one side and the other way on the other: weights differ by less than twice the sum
    of the learning rates (``lr_sum``, here 1.2e-4); the losses agree to rounding.

    Args:
        config: the QuartzNet size.
        weights: the initial weights.
        batches: the first two are trained on.
        device: where it runs.
        precision: the precision of both sides.

    Returns:
        The largest weight and relative loss differences, the losses, ``lr_sum``.
    """
    torch_run = TorchLoop(config, weights, device, precision, compiled=False, accum=1)
    fctc_run = FctcLoop(config, weights, device, precision, jit=False, accum=1)
    losses = []
    for b in batches[:2]:
        torch_run(b)
        fctc_run(b)
        losses.append((float(torch_run.loss), float(fctc_run.loss)))
    a, f = torch_run.weights(), fctc_run.weights()
    diff = max(float((a[k].double() - f[k].double()).abs().max()) for k in f)
    rel = max(abs(t - c) / max(abs(t), 1e-30) for t, c in losses)
    return {"max_abs_weight_diff": diff, "max_rel_loss_diff": rel, "losses": losses,
            "lr_sum": lr_at(0) + lr_at(1), "keys": len(f)}


# ------------------------------------------------------------------------------------ report


def machine_info(device: torch.device) -> dict:
    """What the figures were measured on.

    Args:
        device: the benchmark's device.

    Returns:
        CPU, thread count, versions, load average (and the GPU on CUDA).
    """
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def markdown(result: dict) -> str:
    """The results as a markdown table.

    Args:
        result: what :func:`main` returns.

    Returns:
        The table, with a heading line.
    """
    a = result["args"]
    lines = [
        f"QuartzNet {a['config']} train step, device={a['device']}, batch {a['batch']} x "
        f"{a['seconds']} s, threads={result['machine']['torch_threads']}, "
        f"torch {result['machine']['torch']}; {result['timed_steps']} timed steps per row (median, "
        f"{a.get('clock', 'wall')} clock)",
        "",
        "| row | step ms | utt/s | audio s/s | speed vs ref | ref | vs torch, same work "
        "| paired by round | peak MB | first step s | compile s |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        mem = r.get("memory") or {}
        vs_torch, paired = r.get("speed_vs_torch"), r.get("paired_vs_torch")
        lines.append(
            f"| {r['name']} | {r['step_ms']:.1f} | {r['utt_per_s']:.2f} | "
            f"{r['audio_s_per_s']:.1f} | {r['speed_vs_ref']:.2f}x | {r['ref']} | "
            f"{_fmt(vs_torch)}{'x' if vs_torch is not None else ''} | "
            f"{_fmt(paired)}{'x' if paired is not None else ''} | "
            f"{_fmt(mem.get('peak_mb'), '.0f')} | "
            f"{r['first_step_s']:.2f} | {_fmt(r['compile_s'])} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--config", default="5x5", choices=["5x5", "15x5", "tiny"])
    ap.add_argument("--batch", type=int, default=None, help="utterances per batch")
    ap.add_argument("--seconds", type=float, default=None, help="longest utterance, seconds")
    ap.add_argument("--precisions", default=None,
                    help="comma-separated fp32,bf16,fp16 (default: fp32 on CPU, fp32,bf16 on CUDA)")
    ap.add_argument("--accum", type=int, default=4, help="micro-batches of the accumulation rows (1: none)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    ap.add_argument("--jit-step", action="store_true", help="add the fctc jit step row (jit='step')")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per row first")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--per-round", type=int, default=None, help="steps per row and round")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                    help="time the turns by wall clock or by the timing thread's CPU time")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run in under a minute: tiny model, a few steps, fp32 and fp16, "
                         "accumulation, memory of the fp32 rows only, no compiled rows (their "
                         "first compilation alone takes minutes on a small CPU; --compile adds them)")
    ap.add_argument("--compile", action="store_true", help="with --quick: keep the compiled rows")
    ap.add_argument("--out", default=None, help="write every figure as JSON here")
    ap.add_argument("--memory-row", default=None, help=argparse.SUPPRESS)
    return ap


def _arguments(argv) -> tuple[argparse.Namespace, torch.device, list[str]]:
    """The command line with the defaults of ``--quick`` and of the device filled in."""
    ap = _parser()
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quick:
        args.config = "tiny" if args.config == "5x5" else args.config
        args.batch = args.batch or 4
        args.seconds = args.seconds or 1.0
        args.warmup = args.warmup or 2
        args.rounds = args.rounds or 2
        args.per_round = args.per_round or 1
        args.precisions = args.precisions or "fp32,fp16"
        args.no_compile = args.no_compile or not args.compile
    args.batch = args.batch or (8 if device.type == "cpu" else 32)
    args.seconds = args.seconds or (4.0 if device.type == "cpu" else 15.0)
    args.warmup = args.warmup or 3
    args.rounds = args.rounds or 4
    args.per_round = args.per_round or 2
    precisions = (args.precisions or ("fp32" if device.type == "cpu" else "fp32,bf16")).split(",")
    for p in precisions:
        if p not in ("fp32", "bf16", "fp16"):
            ap.error(f"--precisions: unknown precision {p!r} (fp32, bf16, fp16)")
    if args.accum > args.batch and args.memory_row is None:
        ap.error(f"--accum {args.accum} exceeds --batch {args.batch}")
    return args, device, precisions


def paired_ratio(ref_times: list[float], times: list[float], per_round: int) -> float:
    """The median over rounds of ``ref``'s median step time in a round divided by the row's in
    the same round: the rows take turns, so a machine whose speed drifts slows both sides of
    each ratio alike (on a shared CPU the step time can change by a third within minutes).

    Args:
        ref_times: the reference row's step times, in round order.
        times: the row's, in the same order.
        per_round: steps per row and round.

    Returns:
        The ratio (above 1: the row is faster).
    """
    ratios = [
        statistics.median(ref_times[i : i + per_round]) / statistics.median(times[i : i + per_round])
        for i in range(0, min(len(ref_times), len(times)), per_round)
    ]
    return statistics.median(ratios)


def _timed_rows(specs, timing, batch: int, seconds_per_batch: float, per_round: int) -> list[dict]:
    """One result row per spec: median step time, throughputs, ratios to its reference and to
    the imperative loop doing the same work (of the medians, and paired round by round)."""
    rows = []
    for s in specs:
        ts = timing["times"][s["name"]]
        med = statistics.median(ts)
        rows.append({
            **s,
            "step_ms": 1e3 * med,
            "utt_per_s": batch / med,
            "audio_s_per_s": seconds_per_batch / med,
            "first_step_s": timing["first"][s["name"]],
            "compile_s": (timing["first"][s["name"]] - med) if s["side"] in ("torch compile", *JIT) else None,
            "step_times_s": ts,
        })
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        r["speed_vs_ref"] = by_name[r["ref"]]["step_ms"] / r["step_ms"]
        # Against the imperative loop doing the same work (same precision and accumulation).
        torch_row = by_name.get(_torch_row(r))
        r["speed_vs_torch"] = None if torch_row is None else torch_row["step_ms"] / r["step_ms"]
        r["paired_vs_torch"] = (
            None if torch_row is None
            else paired_ratio(torch_row["step_times_s"], r["step_times_s"], per_round)
        )
    return rows


def _torch_row(spec: dict) -> str:
    """The name of the ``torch eager`` row with ``spec``'s precision and accumulation."""
    suffix = f" accum{spec['accum']}" if spec["accum"] > 1 else ""
    return f"torch eager {spec['precision']}{suffix}"


def _add_memory(rows: list[dict], specs: list[dict], args) -> None:
    """Measure each row's memory in its own process (quick: the fp32 rows only, side by side,
    since the code path is the same for every row)."""
    chosen = [i for i, s in enumerate(specs)
              if not args.quick or (s["precision"] == "fp32" and s["accum"] == 1)]
    mems = measure_memory(
        [{k: specs[i][k] for k in ("side", "precision", "accum")} for i in chosen], args,
        parallel=args.quick,
    )
    for i, mem in zip(chosen, mems):
        rows[i]["memory"] = mem


def _workload(args, weights, seconds_per_batch: float) -> dict:
    return {
        "model": f"QuartzNet {args.config} encoder + conv1d decoder, {NUM_CLASSES} classes",
        "input": f"precomputed features ({FEAT_IN} mel bands, {FRAMES_PER_SECOND} frames/s)",
        "params": sum(v.numel() for k, v in weights.items() if "running" not in k
                      and "num_batches" not in k),
        "audio_seconds_per_batch": seconds_per_batch,
        "optimiser": f"clip_by_global_norm({MAX_NORM}) + AdamW(wd={WEIGHT_DECAY}), "
                     f"warm-up {WARMUP_STEPS} / cosine {DECAY_STEPS}, peak lr {PEAK_LR}",
        "loss": "CTC, reduction mean (thunder)",
    }


def main(argv=None) -> dict:
    """Run the benchmark (or, with ``--memory-row``, one memory subprocess).

    Args:
        argv: the command line; None reads ``sys.argv``.

    Returns:
        Every figure (also written to ``--out`` as JSON); the table is printed.
    """
    args, device, precisions = _arguments(argv)
    if args.memory_row is not None:  # the memory subprocess
        out = measure_memory_here(json.loads(args.memory_row), args.config, args.batch,
                                  args.seconds, device, args.warmup)
        print(json.dumps(out))
        return out

    machine = machine_info(device)
    weights = initial_weights(args.config)
    batches = make_batches(args.batch, args.seconds, device)
    parity = check_parity(args.config, weights, batches, device)
    specs = row_specs(precisions, not args.no_compile, args.accum, args.jit_step)
    runners = {s["name"]: build_row(s, args.config, weights, device) for s in specs}
    timing = time_rows(runners, batches, device, args.warmup, args.rounds, args.per_round,
                       CLOCKS[args.clock])
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    seconds_per_batch = statistics.mean(audio_seconds(b) for b in batches)
    rows = _timed_rows(specs, timing, args.batch, seconds_per_batch, args.per_round)
    if not args.no_memory:
        _add_memory(rows, specs, args)

    result = {
        "benchmark": "train_step",
        "date": time.strftime("%Y-%m-%d"),
        "args": {k: v for k, v in vars(args).items() if k != "memory_row"},
        "machine": machine,
        "workload": _workload(args, weights, seconds_per_batch),
        "parity_fp32": parity,
        "timed_steps": args.rounds * args.per_round,
        "rows": rows,
    }
    print(markdown(result))
    print(f"\nparity (2 fp32 eager steps, same weights): losses differ by at most "
          f"{parity['max_rel_loss_diff']:.1e} (relative), weights by at most "
          f"{parity['max_abs_weight_diff']:.1e} (bound: twice the learning rates' sum, "
          f"{2 * parity['lr_sum']:.1e})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
