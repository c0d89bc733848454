"""The ``fctc`` command line: ``fctc train``, ``fctc eval``, ``fctc transcribe`` and ``fctc lm``.

``fctc train`` with no arguments trains the default small model (``fctc/configs/default.yaml``)
on the corpus bundled with fctc and writes everything into ``./runs/<timestamp>``:
``metrics.csv`` (and TensorBoard events when tensorboard is installed), ``best/`` and
``last/`` checkpoints, ``curves.png`` and ``test_results.json``. ``python -m fctc`` is the same
program. Errors a user can cause print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import checkpoint as _ckpt
from .config import ConfigError, load_config

__all__ = ["main", "build_parser"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fctc`` program.

    Returns:
        The parser, with one sub-command per task.
    """
    from .decoding import add_decoder_flags, add_lm_parser

    parser = argparse.ArgumentParser(
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
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="CER/WER of a checkpoint on a manifest, as one JSON line")
    e.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint folder, or a run folder (its best/ checkpoint)")
    e.add_argument("--manifest", required=True, metavar="FILE", help="NeMo JSONL manifest")
    e.add_argument("--output", metavar="FILE", help="write per-utterance results (JSONL) here")
    e.add_argument("--batch-seconds", type=float, default=64.0, metavar="S",
                   help="audio seconds per batch (default 64)")
    e.add_argument("--device", default="auto", metavar="{cpu,cuda,auto}")
    add_decoder_flags(e)

    r = sub.add_parser("transcribe", help="print one transcript per audio file")
    r.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint folder, or a run folder (its best/ checkpoint)")
    r.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files (wav, flac, ...)")
    r.add_argument("--device", default="auto", metavar="{cpu,cuda,auto}")
    add_decoder_flags(r)
    add_lm_parser(sub)
    return parser


def _train(args: argparse.Namespace) -> int:
    from .checkpoints import resolve_checkpoint
    from .train import INTERRUPTED_EXIT, Trainer, default_out_dir, resolve_device

    resume = None
    if args.resume:
        if args.config or args.seed is not None:
            raise ConfigError("--resume continues a run with its saved configuration; drop "
                              "--config and --seed (or start a new run without --resume)")
        resume = resolve_checkpoint(args.resume, need_train_state=True)
        meta = _ckpt.read_metadata(resume / "train_state.safetensors")["metadata"]
        config = meta["config"]
        out = Path(args.out) if args.out else resume.parent
        if args.max_steps is not None and args.max_steps != config["training"]["max_steps"]:
            _log(f"note: --max-steps {args.max_steps} changes the run's length, so its learning-"
                 "rate schedule now spans a different number of steps than before")
    else:
        config = load_config(args.config)
        out = Path(args.out) if args.out else default_out_dir()
        if (out / "last").exists() or (out / "last.old").exists():
            raise ConfigError(f"{out} already holds a run; continue it with --resume {out} or "
                              "choose another --out")
        if args.seed is not None:
            config["seed"] = args.seed
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise ConfigError(f"--max-steps must be positive, got {args.max_steps}")
        config["training"]["max_steps"] = args.max_steps
    if args.device is not None:
        config["device"] = args.device
    device = resolve_device(str(config["device"]))
    if config["threads"] is not None:
        if not isinstance(config["threads"], int) or config["threads"] < 1:
            raise ConfigError(f"threads must be a positive int or null, got {config['threads']!r}")
        torch.set_num_threads(config["threads"])
    trainer = Trainer(config, out, device, resume=resume, log=_log,
                      progress=not args.no_progress)
    if not trainer.run():
        return INTERRUPTED_EXIT
    result = trainer.finish()
    if result is not None:
        _log(f"test: CER {100 * result['cer']:.2f}%, WER {100 * result['wer']:.2f}% on "
             f"{result['n']} utterances (best checkpoint, step {result['step']}); "
             f"saved {out / 'test_results.json'}")
        print(json.dumps(result), flush=True)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..inference import load
    from .decoding import build_decoder
    from .evaluate import evaluate_manifest
    from .train import resolve_device

    if not Path(args.manifest).is_file():
        raise FileNotFoundError(f"manifest {args.manifest} does not exist")
    recognizer = load(args.checkpoint, resolve_device(args.device))
    decoder = build_decoder(recognizer, args, _log)
    result = evaluate_manifest(recognizer, args.manifest, output=args.output,
                               max_batch_seconds=args.batch_seconds, decoder=decoder)
    print(json.dumps(result), flush=True)
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from ..inference import load
    from .decoding import build_decoder
    from .evaluate import transcribe_files
    from .train import resolve_device

    recognizer = load(args.checkpoint, resolve_device(args.device))
    decoder = build_decoder(recognizer, args, _log)
    for text in transcribe_files(recognizer, args.audio, decoder):
        print(text, flush=True)
    return 0


def _lm(args: argparse.Namespace) -> int:
    from .decoding import run_lm

    result = run_lm(args)
    _log(f"wrote {result['out']} ({result['order']}-gram interpolated Kneser-Ney LM of "
         f"{result['texts']} transcripts, {result['words']} words)")
    print(json.dumps(result), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fctc`` program.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 done, 2 a usage or input error, 130 stopped by Ctrl-C after saving.
    """
    args = build_parser().parse_args(argv)
    commands = {"train": _train, "eval": _eval, "transcribe": _transcribe, "lm": _lm}
    try:
        return commands[args.command](args)
    except (ConfigError, FileNotFoundError, _ckpt.CheckpointError) as e:
        print(f"fctc {args.command}: error: {e}", file=sys.stderr, flush=True)
        return 2
