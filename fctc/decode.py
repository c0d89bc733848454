"""CTC decoding: greedy, and beam search with an optional lexicon and n-gram word LM.

A decoder is a callable ``decoder(logits, lengths) -> list[str]`` over a model's output,
``logits (B, vocab, T)`` (log-probabilities are accepted too: the log-softmax over the
vocabulary axis is applied either way and changes nothing for them). Frames at or past
``lengths[b]`` are never read, so padding is ignored.

* :class:`GreedyDecoder` is :meth:`fctc.text.Vocabulary.decode_prediction`: the best token per
  frame, repeats merged, blanks dropped.
* :class:`BeamSearchDecoder` runs flashlight-text's CTC decoders (the wav2letter / flashlight
  search that torchaudio's ``ctc_decoder`` also wraps). We use it rather than pyctcdecode
  because its wheel bundles KenLM (pyctcdecode needs the ``kenlm`` package, which compiles
  from source), its search loop is C++ rather than Python, and it has a true lexicon decoder
  (a trie of word spellings: output words come only from the word list; pyctcdecode only
  biases towards known words). It is the optional extra ``pip install 'fctc[decode]'``.

The CTC details, and what a score means:

* Without a lexicon the search is CTC prefix beam search over tokens. flashlight starts every
  hypothesis with the "silence" token as its previous token, so a separator in the first
  frame would be swallowed as a repeat; we give it the blank as silence, which makes the
  search exactly CTC's (a repeated token is a new one only after a blank). The text is the
  greedy collapse of the best hypothesis' alignment (``decode_prediction`` again).
* With a lexicon, each spelling ends with the word separator (the space of a character
  vocabulary), so a word is complete when the separator after it is seen and repeated
  letters inside a word stay CTC's. A model never emits a separator after the last word, so
  one frame certain of the separator (log-probability 0; every other token -1e30) is
  appended to each utterance: it completes the last word and adds nothing to any score.
* With ``log_add=True`` (the default) hypotheses that reach the same state (same words or
  tokens so far, same last token, same blank flag) are merged by log-sum-exp, so without
  pruning the ``score`` of a hypothesis with no LM and no word score is
  ``log P(labelling | x)``, CTC's sum over all its alignments (with a lexicon: over all the
  labellings that spell its words); with ``log_add=False`` it is the log-probability of its
  best alignment. An LM adds ``lm_weight`` times its log10 probability (KenLM's unit, kept in
  ``lm_score``), and each word adds ``word_score``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from .lexicon import SEPARATOR, read_lexicon
from .text import Vocabulary

__all__ = [
    "INSTALL_HINT",
    "DecoderUnavailable",
    "Hypothesis",
    "GreedyDecoder",
    "BeamSearchDecoder",
    "beam_search_available",
    "make_decoder",
    "word_separator",
]

INSTALL_HINT = "beam search needs flashlight-text: pip install 'fctc[decode]'"
"""The one-line message of :class:`DecoderUnavailable`."""

_IMPOSSIBLE = -1e30  # the log-probability of every other token in the appended separator frame


class DecoderUnavailable(ImportError):
    """Beam search was asked for but flashlight-text is not installed."""


def beam_search_available() -> bool:
    """Whether beam search can run here.

    Returns:
        True when flashlight-text (the ``decode`` extra) can be imported.
    """
    try:
        _flashlight()
    except DecoderUnavailable:
        return False
    return True


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the process's stderr (file descriptor 2, which C++ code writes to) for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _flashlight() -> dict[str, Any]:
    try:
        from flashlight.lib.text import decoder as fl
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary
    except ImportError as e:
        raise DecoderUnavailable(INSTALL_HINT) from e
    return {"fl": fl, "KenLM": KenLM, "Dictionary": Dictionary}


class Hypothesis(NamedTuple):
    """One beam-search result: the text and its scores (see the module docstring)."""

    text: str
    score: float
    lm_score: float


def word_separator(vocabulary: Vocabulary) -> int:
    """The index of the vocabulary's word separator: ``" "``, else one of its space tokens.

    Args:
        vocabulary: a character (or word-piece) vocabulary.

    Returns:
        The token index that separates words.

    Raises:
        ValueError: the vocabulary has no such token.
    """
    for token in (" ", *vocabulary.space_tokens):
        if token in vocabulary.stoi:
            return vocabulary.stoi[token]
    raise ValueError(
        "lexicon decoding needs a word-separator token in the vocabulary (' ' or one of "
        f"{list(vocabulary.space_tokens)}); {vocabulary!r} has none"
    )


def _log_probs(vocabulary: Vocabulary, logits: torch.Tensor, lengths: torch.Tensor | None):
    """``(B, T, vocab)`` float32 log-probabilities on the CPU, and the lengths as ints."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[1] != len(vocabulary):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"decoder: logits must be a (batch, vocab={len(vocabulary)}, time) tensor, got {shape}"
        )
    batch, _, frames = logits.shape
    if lengths is None:
        lengths = torch.full((batch,), frames, dtype=torch.long)
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (batch,):
        raise ValueError(f"decoder: lengths must be a tensor of shape ({batch},)")
    sizes = [int(n) for n in lengths.cpu()]
    if any(n < 0 or n > frames for n in sizes):
        raise ValueError(f"decoder: lengths must lie in [0, {frames}], got {sizes}")
    lp = torch.log_softmax(logits.detach().float(), dim=1).transpose(1, 2).contiguous().cpu()
    return lp, sizes


class GreedyDecoder:
    """Greedy CTC decoding (:meth:`fctc.text.Vocabulary.decode_prediction`).

    Args:
        vocabulary: the model's vocabulary.
    """

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary = vocabulary

    def __call__(self, logits: torch.Tensor, lengths: torch.Tensor | None = None) -> list[str]:
        """Transcripts of a batch of ``(B, vocab, T)`` logits with ``lengths`` frames each."""
        return self.vocabulary.decode_prediction(logits, lengths)

    def options(self) -> dict[str, Any]:
        """What the decoder does, for results files.

        Returns:
            ``{"decoder": "greedy"}``.
        """
        return {"decoder": "greedy"}


class BeamSearchDecoder:
    """CTC beam search on flashlight-text, with an optional lexicon and n-gram word LM.

    Args:
        vocabulary: the model's vocabulary (its blank is CTC's blank).
        beam_size: hypotheses kept after each frame.
        beam_size_token: tokens tried per frame (the most probable ones); None: all.
        beam_threshold: hypotheses scoring this far below the best are dropped.
        lexicon: a lexicon file (:mod:`fctc.lexicon`) or a dict word -> spellings (lists of
            tokens); the output then holds only its words. None: any token sequence.
        lm: an ARPA or KenLM binary word LM (needs a lexicon). None: no LM.
        lm_weight: weight of the LM's log10 probabilities in the score.
        word_score: added to the score per word (lexicon decoding only).
        log_add: merge equal hypotheses by log-sum-exp (True) or keep the best (False).

    Raises:
        DecoderUnavailable: flashlight-text is not installed.
        ValueError: an LM without a lexicon, a spelling with a token outside the vocabulary,
            a vocabulary without a word separator, or an LM file KenLM cannot load.
    """

    def __init__(
        self,
        vocabulary: Vocabulary,
        *,
        beam_size: int = 50,
        beam_size_token: int | None = None,
        beam_threshold: float = 25.0,
        lexicon: str | os.PathLike | Mapping[str, Sequence[Sequence[str]]] | None = None,
        lm: str | os.PathLike | None = None,
        lm_weight: float = 1.0,
        word_score: float = 0.0,
        log_add: bool = True,
    ):
        lib = _flashlight()
        if int(beam_size) < 1 or (beam_size_token is not None and int(beam_size_token) < 1):
            raise ValueError(f"beam search: beam_size and beam_size_token must be >= 1, got "
                             f"{beam_size} and {beam_size_token}")
        if lm is not None and lexicon is None:
            raise ValueError("beam search: an n-gram word LM needs a lexicon (flashlight scores "
                             "the LM on the lexicon's words); pass lexicon=... as well")
        self.vocabulary = vocabulary
        self._options = {
            "decoder": "beam", "beam_size": int(beam_size), "beam_size_token": beam_size_token,
            "beam_threshold": float(beam_threshold),
            "lexicon": None if lexicon is None or isinstance(lexicon, Mapping) else str(lexicon),
            "lm": None if lm is None else str(lm), "lm_weight": float(lm_weight),
            "word_score": float(word_score), "log_add": bool(log_add),
        }
        tokens = len(vocabulary) if beam_size_token is None else min(int(beam_size_token), len(vocabulary))
        fl = lib["fl"]
        common = (int(beam_size), tokens, float(beam_threshold))
        if lexicon is None:
            options = fl.LexiconFreeDecoderOptions(*common, 0.0, 0.0, bool(log_add),
                                                   fl.CriterionType.CTC)
            blank = vocabulary.blank_idx
            self._decoder = fl.LexiconFreeDecoder(options, fl.ZeroLM(), blank, blank, [])
            self._words = None
        else:
            self._build_lexicon_decoder(lib, lexicon, lm, common, lm_weight, word_score, log_add)

    def _build_lexicon_decoder(self, lib, lexicon, lm, common, lm_weight, word_score, log_add):
        fl, vocabulary = lib["fl"], self.vocabulary
        spellings = read_lexicon(lexicon) if not isinstance(lexicon, Mapping) else lexicon
        self._separator = separator = word_separator(vocabulary)
        self._words = list(spellings) + ["<unk>"]
        words = lib["Dictionary"](self._words)
        if lm is None:
            self._lm = fl.ZeroLM()
        else:
            if not os.path.isfile(lm):
                raise FileNotFoundError(f"language model {lm} does not exist")
            try:
                with _quiet_stderr():  # KenLM draws a progress bar while it reads an ARPA file
                    self._lm = lib["KenLM"](str(lm), words)
            except Exception as e:  # KenLM raises RuntimeError subclasses of its own
                first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise ValueError(f"language model {lm}: KenLM cannot load it: {first}") from None
        trie = fl.Trie(len(vocabulary), separator)
        start = self._lm.start(False)
        for index, (word, forms) in enumerate(spellings.items()):
            score = self._lm.score(start, index)[1]
            for form in forms:
                trie.insert(self._spell(word, form) + [separator], index, score)
        trie.smear(fl.SmearingMode.MAX)
        options = fl.LexiconDecoderOptions(*common, float(lm_weight), float(word_score),
                                           -math.inf, 0.0, bool(log_add), fl.CriterionType.CTC)
        self._decoder = fl.LexiconDecoder(options, trie, self._lm, separator,
                                          vocabulary.blank_idx, len(self._words) - 1, [], False)

    def _spell(self, word: str, form: Sequence[str]) -> list[int]:
        v = self.vocabulary
        stoi, special = v.stoi, {v.blank_idx, v.pad_idx, v.start_idx, v.end_idx}
        out = []
        for token in form:
            index = self._separator if token == SEPARATOR else stoi.get(token)
            if index is None or index in special:
                raise ValueError(
                    f"lexicon: the spelling of {word!r} uses {token!r}, which is not an ordinary "
                    f"token of the model's vocabulary {self.vocabulary.itos}"
                )
            out.append(index)
        return out

    def options(self) -> dict[str, Any]:
        """The decoder's settings, for results files.

        Returns:
            ``{"decoder": "beam", "beam_size": ..., "lexicon": path or None, "lm": ..., ...}``.
        """
        return dict(self._options)

    def __call__(self, logits: torch.Tensor, lengths: torch.Tensor | None = None) -> list[str]:
        """The best transcript of each utterance of a ``(B, vocab, T)`` batch."""
        return [hyps[0].text if hyps else "" for hyps in self.decode(logits, lengths)]

    def decode(
        self, logits: torch.Tensor, lengths: torch.Tensor | None = None, nbest: int = 1
    ) -> list[list[Hypothesis]]:
        """The ``nbest`` best hypotheses of each utterance, best first, with their scores.

        Args:
            logits: ``(B, vocab, T)`` logits or log-probabilities.
            lengths: valid frames per utterance; None: all ``T``.
            nbest: how many hypotheses to return per utterance (at most the beam).

        Returns:
            One list of :class:`Hypothesis` per utterance.
        """
        lp, sizes = _log_probs(self.vocabulary, logits, lengths)
        out = []
        for b, frames in enumerate(sizes):
            emissions = lp[b, :frames]
            if self._words is not None:
                end = torch.full((1, lp.shape[2]), _IMPOSSIBLE)
                end[0, self._separator] = 0.0
                emissions = torch.cat([emissions, end]).contiguous()
            results = self._decoder.decode(emissions.data_ptr(), emissions.shape[0], lp.shape[2])
            out.append([self._hypothesis(r) for r in results[: max(int(nbest), 1)]])
        return out

    def _hypothesis(self, result) -> Hypothesis:
        if self._words is None:
            path = torch.tensor([[t for t in result.tokens if t >= 0]], dtype=torch.long)
            text = self.vocabulary.decode_prediction(path)[0]
        else:
            text = " ".join(self._words[w] for w in result.words if w >= 0)
        return Hypothesis(text, float(result.score), float(result.lmScore))


def make_decoder(vocabulary: Vocabulary, decoder: str = "greedy", **options: Any):
    """A decoder by name: ``"greedy"`` or ``"beam"`` (with :class:`BeamSearchDecoder`'s options).

    Args:
        vocabulary: the model's vocabulary.
        decoder: ``"greedy"`` or ``"beam"``.
        **options: keyword arguments of :class:`BeamSearchDecoder` (beam only).

    Returns:
        A :class:`GreedyDecoder` or :class:`BeamSearchDecoder`.

    Raises:
        ValueError: an unknown decoder name, or options given to the greedy decoder.
        DecoderUnavailable: beam search without flashlight-text.
    """
    if decoder == "greedy":
        given = sorted(k for k, v in options.items() if v is not None)
        if given:
            raise ValueError(f"the greedy decoder takes no options; got {given} (use decoder='beam')")
        return GreedyDecoder(vocabulary)
    if decoder == "beam":
        return BeamSearchDecoder(vocabulary, **{k: v for k, v in options.items() if v is not None})
    raise ValueError(f"decoder must be 'greedy' or 'beam', got {decoder!r}")
