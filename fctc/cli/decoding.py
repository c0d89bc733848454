"""Decoding in the command line: ``fctc lm``, the decoder flags of ``fctc eval`` / ``transcribe``,
and the lexicon and LM that ``fctc train`` writes into its run folder.

``fctc lm --manifest train.jsonl --order 3 --out lm.arpa [--lexicon lexicon.txt]`` estimates an
interpolated Kneser-Ney word LM (:mod:`fctc.lm`) of a manifest's transcripts and, with
``--lexicon``, writes their words as a lexicon (:mod:`fctc.lexicon`).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import data as _data
from ..decode import DecoderUnavailable
from ..inference import LEXICON_FILE, LM_FILE, Recognizer
from ..lexicon import lexicon_words, write_lexicon
from ..lm import KneserNeyLM
from ..text import Vocabulary
from .config import ConfigError, default_config

__all__ = [
    "add_decoder_flags",
    "add_lm_parser",
    "build_decoder",
    "run_lm",
    "write_decoding_files",
]


def add_decoder_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--decoder``, ``--beam-size``, ``--lexicon``, ``--lm``, ``--lm-weight``, ``--word-score``.

    Args:
        parser: the ``eval`` or ``transcribe`` sub-command's parser.
    """
    g = parser.add_argument_group("decoding (default: what the checkpoint carries, its config's "
                                  "decoding section and the run's lexicon.txt / lm.arpa)")
    g.add_argument("--decoder", choices=("greedy", "beam"),
                   help="greedy, or beam search (needs pip install 'fctc[decode]')")
    g.add_argument("--beam-size", type=int, metavar="N", help="hypotheses kept per frame")
    g.add_argument("--lexicon", metavar="FILE", help="output only words of this lexicon or word "
                   "list; 'none': any character sequence")
    g.add_argument("--lm", metavar="FILE", help="ARPA or KenLM binary word LM (with a lexicon); "
                   "'none': no LM")
    g.add_argument("--lm-weight", type=float, metavar="W", help="weight of the LM's log10 "
                   "probabilities")
    g.add_argument("--word-score", type=float, metavar="S", help="score added per word")


def build_decoder(recognizer: Recognizer, args: argparse.Namespace, log: Callable[[str], None]):
    """The decoder that ``args`` (the flags of :func:`add_decoder_flags`) ask of ``recognizer``.

    Args:
        recognizer: the loaded checkpoint, with its decoding defaults.
        args: parsed flags.
        log: where a note goes when the default beam search falls back to greedy.

    Returns:
        A decoder (callable on logits and lengths, with ``options()``).

    Raises:
        ConfigError: beam search without flashlight-text, or unusable decoding flags or files.
    """
    options = {"beam_size": args.beam_size, "lexicon": args.lexicon, "lm": args.lm,
               "lm_weight": args.lm_weight, "word_score": args.word_score}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decoder = recognizer.decoder(args.decoder, **options)
    except (ValueError, DecoderUnavailable) as e:
        raise ConfigError(str(e)) from None
    for w in caught:
        log(f"note: {w.message}")
    return decoder


def _decoding_section(config: dict[str, Any]) -> tuple[bool, int | None]:
    section = {**default_config()["decoding"], **config.get("decoding", {})}  # older runs: none
    lexicon, order = section["lexicon"], section["lm_order"]
    if not isinstance(lexicon, bool):
        raise ConfigError(f"decoding.lexicon must be true or false, got {lexicon!r}")
    if order is not None and (not isinstance(order, int) or isinstance(order, bool) or order < 2):
        raise ConfigError(f"decoding.lm_order must be an int >= 2 or null, got {order!r}")
    return lexicon, order


def write_decoding_files(
    folder: Path, texts: Sequence[str], vocabulary: Vocabulary, config: dict[str, Any]
) -> list[Path]:
    """Write the lexicon and LM of a run's training texts into its folder (``fctc train``).

    Transcripts with a character outside the vocabulary are left out (training skips them
    too). ``decoding.lexicon: false`` writes neither file; ``decoding.lm_order: null`` no LM.

    Args:
        folder: the run folder.
        texts: the training transcripts.
        vocabulary: the model's vocabulary.
        config: the run's configuration (its ``decoding`` section).

    Returns:
        The files written.

    Raises:
        ConfigError: a bad ``decoding.lexicon`` or ``decoding.lm_order``.
    """
    lexicon, order = _decoding_section(config)
    if not lexicon:
        return []
    tokens = set(vocabulary.itos)
    usable = [t for t in texts if set(t) <= tokens and t.split()]
    if not usable:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = [write_lexicon(folder / LEXICON_FILE, lexicon_words(usable))]
    if order is not None:
        path = folder / LM_FILE
        path.write_text(KneserNeyLM(usable, order).to_arpa(), encoding="utf-8")
        written.append(path)
    return written


def add_lm_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``lm`` sub-command to the ``fctc`` parser.

    Args:
        sub: the ``fctc`` parser's sub-parsers.
    """
    p = sub.add_parser("lm", help="estimate an n-gram word LM (ARPA) and a lexicon from manifests",
                       description="Estimate an interpolated Kneser-Ney word LM of the "
                       "transcripts of NeMo manifests, as an ARPA file.")
    p.add_argument("--manifest", required=True, nargs="+", metavar="FILE",
                   help="NeMo JSONL manifest(s) whose text fields are the training texts")
    p.add_argument("--out", required=True, metavar="FILE", help="the ARPA file to write")
    p.add_argument("--order", type=int, default=3, metavar="N", help="n-gram order (default 3)")
    p.add_argument("--discount", type=float, metavar="D", help="one Kneser-Ney discount in "
                   "(0, 1] for every order (default: estimated per order)")
    p.add_argument("--lexicon", metavar="FILE", help="also write the texts' words as a lexicon")


def run_lm(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``fctc lm``: read the manifests, write the ARPA file (and lexicon).

    Args:
        args: the parsed ``lm`` flags.

    Returns:
        A summary: the files written, the order, the discounts, the numbers of words and texts.

    Raises:
        FileNotFoundError: a manifest does not exist.
        ConfigError: a bad order or discount, or no words in the manifests.
    """
    texts = []
    for manifest in args.manifest:
        if not Path(manifest).is_file():
            raise FileNotFoundError(f"manifest {manifest} does not exist")
        texts.extend(u.text for u in _data.read_manifest(manifest))
    try:
        model = KneserNeyLM(texts, args.order, args.discount)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    Path(args.out).write_text(model.to_arpa(), encoding="utf-8")
    words = lexicon_words(texts)
    if args.lexicon:
        write_lexicon(args.lexicon, words)
    return {"out": str(args.out), "order": args.order, "lexicon": args.lexicon,
            "discounts": model.discounts[1:], "words": len(words), "texts": len(texts)}
