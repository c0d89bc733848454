"""The ``fctc`` command line: ``fctc train``, ``fctc eval``, ``fctc transcribe`` and ``fctc lm``.

``fctc train`` with no arguments trains the default small model (``fctc/configs/default.yaml``)
on the corpus bundled with fctc and writes everything into ``./runs/<timestamp>``:
``metrics.csv`` (and TensorBoard events when tensorboard is installed), ``best/`` and
``last/`` checkpoints, ``curves.png`` and ``test_results.json``. ``python -m fctc`` is the same
program. Errors a user can cause print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import checkpoint as _ckpt
from .. import data as _data
from .config import ConfigError, default_config, load_config, merge_config
from .errors import user_error_message
from .schema import validate_config

__all__ = ["main", "build_parser"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``fctc train: error: ...; see fctc train --help``)."""

    def error(self, message: str):
        """Print the error as one line and exit with status 2.

        Args:
            message: argparse's description of the problem.
        """
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fctc`` program.

    Returns:
        The parser, with one sub-command per task.
    """
    from .decoding import add_decoder_flags, add_lm_parser

    parser = _Parser(
        prog="fctc", description="Train and use CTC speech recognition models with fctc."
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,transcribe,lm}", required=True)

    t = sub.add_parser(
        "train", help="train a model (the default recipe on the bundled corpus with no arguments)",
        description="Train a CTC model. With no arguments: the default recipe on the bundled "
        "corpus, written to ./runs/<timestamp>.",
    )
    t.add_argument("--config", metavar="FILE", help="YAML file merged over the default recipe "
                   "(fctc/configs/default.yaml documents every key)")
    t.add_argument("--out", metavar="DIR", help="run folder (default: ./runs/<timestamp>; with "
                   "--resume: the resumed run's folder)")
    t.add_argument("--max-steps", type=int, metavar="N", help="train for N steps (batches) in "
                   "all; sets training.max_steps, so the schedule spans N steps")
    t.add_argument("--resume", metavar="DIR", help="continue a run exactly from its folder (or "
                   "its last/ checkpoint): train state, data position and metrics history")
    t.add_argument("--device", choices=None, metavar="{cpu,cuda,auto}",
                   help="where to train (default: the config's device, auto)")
    t.add_argument("--seed", type=int, help="the run's seed (default: the config's, 0)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (when stderr is "
                   "not a terminal, the bar is plain progress lines every 30 s)")

    e = sub.add_parser("eval", help="CER/WER of a checkpoint on a manifest, as one JSON line")
    e.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint folder, or a run folder (its best/ checkpoint)")
    e.add_argument("--manifest", required=True, metavar="FILE", help="NeMo JSONL manifest")
    e.add_argument("--output", metavar="FILE", help="write per-utterance results (JSONL) here")
    e.add_argument("--batch-seconds", type=float, default=64.0, metavar="S",
                   help="audio seconds per batch (default 64)")
    e.add_argument("--device", default="auto", metavar="{cpu,cuda,auto}")
    e.add_argument("--group-by", default="auto", metavar="FIELD",
                   help="score each value of this manifest field apart too (default: engine, "
                   "when the manifest names one); none: overall scores only")
    add_decoder_flags(e)

    r = sub.add_parser("transcribe", help="print one transcript per audio file",
                       description="Print one transcript per audio file. A file that cannot be "
                       "read is named on stderr and gets no line; the exit status is then 2.")
    r.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint folder, or a run folder (its best/ checkpoint)")
    r.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files (wav, flac, ...)")
    r.add_argument("--with-names", action="store_true",
                   help="print each file's path before its transcript: path<TAB>text")
    r.add_argument("--device", default="auto", metavar="{cpu,cuda,auto}")
    add_decoder_flags(r)
    add_lm_parser(sub)
    return parser


def _resumed_config(args: argparse.Namespace) -> tuple[dict, Path, Path]:
    """``(config, run folder, checkpoint)`` of ``fctc train --resume``."""
    from .checkpoints import TRAIN_STATE_FILE, resolve_checkpoint
    from .run_folder import check_unedited

    if args.config or args.seed is not None:
        raise ConfigError("--resume continues a run with its saved configuration; drop "
                          "--config and --seed (or start a new run without --resume)")
    resume = resolve_checkpoint(args.resume, need_train_state=True)
    saved = _ckpt.read_metadata(resume / TRAIN_STATE_FILE)["metadata"]["config"]
    out = Path(args.out) if args.out else resume.parent
    check_unedited(out, saved, resume)
    config = merge_config(default_config(), saved)
    if args.max_steps is not None and args.max_steps != config["training"]["max_steps"]:
        _log(f"note: --max-steps {args.max_steps} changes the run's length, so its learning-"
             "rate schedule now spans a different number of steps than before")
    return config, out, resume


def _train_config(args: argparse.Namespace) -> tuple[dict, Path, Path | None]:
    """``(config, run folder, checkpoint to resume or None)`` of ``fctc train``'s flags."""
    from .train import default_out_dir

    if args.resume:
        config, out, resume = _resumed_config(args)
    else:
        config, resume = load_config(args.config), None
        out = Path(args.out) if args.out else default_out_dir()
    flags = {"seed": args.seed, "training.max_steps": args.max_steps, "device": args.device}
    origins = {}
    for key, value in flags.items():
        if value is not None:
            section, _, name = key.rpartition(".")
            (config[section] if section else config)[name] = value
            origins[key] = "--" + key.rpartition(".")[2].replace("_", "-")
    return validate_config(config, origins), out, resume


def _train(args: argparse.Namespace) -> int:
    from .parallel import init_world

    # The configuration comes first: which backend to join with depends on its device (a CPU
    # run joins with gloo alone). Only rank 0 uses the run folder, so ranks that name a default
    # folder in different seconds do no harm.
    config, out, resume = _train_config(args)
    world = init_world(str(config["device"]))
    try:
        return _train_run(args, config, out, resume, world)
    finally:
        if world.size > 1:
            torch.distributed.destroy_process_group()


def _train_run(args: argparse.Namespace, config: dict, out: Path, resume: Path | None, world) -> int:
    from .evaluate import group_lines
    from .lock import RunLock
    from .run_folder import check_new_run
    from .train import INTERRUPTED_EXIT, Trainer, resolve_device

    device = resolve_device(str(config["device"]), world.local_rank)
    if config["threads"] is not None:
        torch.set_num_threads(int(config["threads"]))
    log = _log if world.rank == 0 else (lambda message: None)
    with RunLock(out) if world.rank == 0 else contextlib.nullcontext() as lock:
        if lock is not None and lock.stale_holder:
            held = lock.stale_holder
            _log(f"note: {out} was held by pid {held.get('pid')} on {held.get('host')}, which "
                 "is no longer running (killed?); taking the folder over")
        if resume is None and world.rank == 0:
            check_new_run(out)
        trainer = Trainer(config, out, device, resume=resume, log=log,
                          progress=not args.no_progress, world=world)
        if not trainer.run():
            return INTERRUPTED_EXIT
        result = trainer.finish()
    if result is None:
        return 0
    print(json.dumps(result, allow_nan=False), flush=True)
    if not result["n"]:
        return _fail("train", result["error"])
    _log(f"test: CER {100 * result['cer']:.2f}%, WER {100 * result['wer']:.2f}% on "
         f"{result['n']} utterances (best checkpoint, step {result['step']}); "
         f"saved {out / 'test_results.json'}")
    for line in group_lines(result, "test"):
        _log(line)
    return 0


def _fail(command: str, message: str) -> int:
    print(f"fctc {command}: error: {message}", file=sys.stderr, flush=True)
    return 2


def _eval(args: argparse.Namespace) -> int:
    from ..inference import load
    from .decoding import build_decoder
    from .evaluate import evaluate_manifest, group_lines
    from .run_folder import check_output_file
    from .train import resolve_device

    manifest = Path(args.manifest)
    if not manifest.is_file():
        what = "is a folder, not a file" if manifest.is_dir() else "does not exist"
        raise FileNotFoundError(f"--manifest {manifest} {what}")
    if not args.batch_seconds > 0:
        raise ConfigError(f"--batch-seconds must be a number of seconds > 0, got {args.batch_seconds}")
    if args.output:
        check_output_file(Path(args.output), "--output")
    recognizer = load(args.checkpoint, resolve_device(args.device))
    decoder = build_decoder(recognizer, args, _log)
    group_by = None if args.group_by == "none" else args.group_by
    result = evaluate_manifest(recognizer, manifest, output=args.output,
                               max_batch_seconds=args.batch_seconds, decoder=decoder,
                               group_by=group_by)
    print(json.dumps(result, allow_nan=False), flush=True)
    for line in group_lines(result, "eval"):
        _log(line)
    if not result["n"]:
        summary = _data.skip_summary(result["skipped_reasons"])
        return _fail("eval", f"no usable utterance in {manifest} ({summary}); nothing was "
                     "scored (the warnings above name the first of each kind)")
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from ..inference import load
    from .decoding import build_decoder
    from .evaluate import transcribe_files
    from .train import resolve_device

    recognizer = load(args.checkpoint, resolve_device(args.device))
    decoder = build_decoder(recognizer, args, _log)
    failed = 0
    for path, text, error in transcribe_files(recognizer, args.audio, decoder):
        if error is not None:
            failed += 1
            _fail("transcribe", f"{error}; skipped")
        else:
            print(f"{path}\t{text}" if args.with_names else text, flush=True)
    if failed:
        return _fail("transcribe", f"{failed} of {len(args.audio)} audio files could not be read")
    return 0


def _lm(args: argparse.Namespace) -> int:
    from .decoding import run_lm

    result = run_lm(args)
    _log(f"wrote {result['out']} ({result['order']}-gram interpolated Kneser-Ney LM of "
         f"{result['texts']} transcripts, {result['words']} words)")
    print(json.dumps(result), flush=True)
    return 0


def _one_line_warnings(command: str):
    """A ``warnings.showwarning`` that prints ``fctc <command>: warning: <message>``."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        text = re.sub(r"^[A-Za-z_][\w.]*: ", "", text)  # the library's "Function: " prefix
        print(f"fctc {command}: warning: {text}", file=sys.stderr, flush=True)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fctc`` program.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 done, 2 a usage or input error (one line on stderr), 130 stopped
        by Ctrl-C (after saving, for ``train``).
    """
    args = build_parser().parse_args(argv)
    commands = {"train": _train, "eval": _eval, "transcribe": _transcribe, "lm": _lm}
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warnings(args.command)
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print(f"fctc {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        return _fail(args.command, message)
    finally:
        warnings.showwarning = shown
