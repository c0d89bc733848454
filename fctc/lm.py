"""n-gram word language models: interpolated Kneser-Ney estimation, written as ARPA.

The smoothing is interpolated Kneser-Ney (Chen and Goodman, 1998, section 3.5) with one
absolute discount ``D_k`` per order. Each sentence is ``<s> w1 ... wm </s>``; ``N`` is the
order. The counts of order ``k`` are

* ``a(g) = c(g)``, the raw count, when ``k = N`` or ``g`` starts with ``<s>``;
* ``a(g) = N1+(. g)``, the number of distinct words seen before ``g``, otherwise
  (the continuation count, which is what makes it Kneser-Ney).

With ``A(h) = sum_w a(h w)`` and ``n(h)`` the number of words ``w`` with ``a(h w) > 0``::

    P(w | h) = max(a(h w) - D_k, 0) / A(h) + D_k n(h) / A(h) * P(w | h')   if A(h) > 0
    P(w | h) = P(w | h')                                                 otherwise
    P(w)     = max(a(w) - D_1, 0) / A + D_1 n / A * 1 / |V|

where ``h'`` is ``h`` without its first word and the unigram level interpolates with the
uniform distribution over the vocabulary ``V`` (the words, ``</s>`` and ``<unk>``), so every
word, unknown ones included, has a probability. ``D_k = n1 / (n1 + 2 n2)`` (Ney's estimate,
``n1`` and ``n2`` the numbers of order-``k`` n-grams with ``a = 1`` and ``a = 2``), or 0.5
when one of them is 0 (tiny corpora), or the ``discount`` given.

The ARPA file lists ``log10 P(w | h)`` for every n-gram with ``a > 0`` and the back-off weight
``log10(D_k n(h) / A(h))`` of each context: the back-off rule of ARPA (an unlisted ``h w``
scores ``bow(h) P(w | h')``) then reproduces the interpolated model exactly, so the
probabilities of every context sum to 1.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["BOS", "EOS", "UNK", "KneserNeyLM", "build_arpa", "write_arpa"]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_FALLBACK_DISCOUNT = 0.5


def _sentences(texts: Iterable[str]) -> list[list[str]]:
    if isinstance(texts, str):
        raise TypeError("KneserNeyLM: texts must be a sequence of transcripts, not one str")
    out = [[BOS, *text.split(), EOS] for text in texts]
    if not any(len(s) > 2 for s in out):
        raise ValueError("KneserNeyLM: the texts hold no words to estimate a language model from")
    for s in out:
        special = {BOS, EOS, UNK} & set(s[1:-1])
        if special:
            raise ValueError(f"KneserNeyLM: a transcript holds the reserved word(s) {sorted(special)}")
    return out


class KneserNeyLM:
    """An interpolated Kneser-Ney n-gram model of word sequences (see the module docstring).

    Args:
        texts: the training transcripts; words are split on whitespace.
        order: the n-gram order ``N`` (2 or more).
        discount: one discount for every order, in (0, 1]; None: Ney's estimate per order.

    Raises:
        ValueError: a bad order or discount, no words, or a transcript holding ``<s>``,
            ``</s>`` or ``<unk>``.
    """

    def __init__(self, texts: Iterable[str], order: int = 3, discount: float | None = None):
        if not isinstance(order, int) or order < 2:
            raise ValueError(f"KneserNeyLM: order must be an int >= 2 (KenLM, the decoder's LM, "
                             f"reads bigram models and up), got {order!r}")
        if discount is not None and not 0.0 < float(discount) <= 1.0:
            raise ValueError(f"KneserNeyLM: discount must lie in (0, 1], got {discount!r}")
        self.order = order
        sentences = _sentences(texts)
        raw = [Counter() for _ in range(order + 1)]
        for s in sentences:
            for k in range(1, order + 1):
                for i in range(len(s) - k + 1):
                    if k > 1 or s[i] != BOS:
                        raw[k][tuple(s[i : i + k])] += 1
        self.counts: list[dict[tuple[str, ...], int]] = [{}] + [
            dict(raw[k]) if k == order else self._continuation(raw[k], raw[k + 1])
            for k in range(1, order + 1)
        ]
        self.discounts = [0.0] + [
            float(discount) if discount is not None else self._ney(self.counts[k])
            for k in range(1, order + 1)
        ]
        self.vocabulary = sorted({g[0] for g in self.counts[1]} | {UNK})
        self._totals: list[dict[tuple[str, ...], tuple[int, int]]] = [{} for _ in range(order + 1)]
        self._totals[0][()] = (sum(self.counts[1].values()), len(self.counts[1]))
        for k in range(2, order + 1):
            for g, a in self.counts[k].items():
                total, types = self._totals[k - 1].get(g[:-1], (0, 0))
                self._totals[k - 1][g[:-1]] = (total + a, types + 1)

    @staticmethod
    def _continuation(raw: Counter, longer: Counter) -> dict[tuple[str, ...], int]:
        counts: Counter = Counter()
        for g in longer:  # distinct longer n-grams: one per word seen before g[1:]
            counts[g[1:]] += 1
        for g, c in raw.items():
            if g[0] == BOS:
                counts[g] = c
        return dict(counts)

    @staticmethod
    def _ney(counts: dict[tuple[str, ...], int]) -> float:
        values = Counter(counts.values())
        n1, n2 = values[1], values[2]
        return n1 / (n1 + 2 * n2) if n1 and n2 else _FALLBACK_DISCOUNT

    def prob(self, word: str, context: Sequence[str] = ()) -> float:
        """``P(word | context)`` of the interpolated model.

        Args:
            word: the next word (``</s>`` for the end of the sentence; a word outside the
                vocabulary is ``<unk>``).
            context: the preceding words, oldest first (``<s>`` first at a sentence start);
                only the last ``order - 1`` are used.

        Returns:
            The probability, in (0, 1].
        """
        word = word if word in self.vocabulary else UNK
        history = tuple(context)[max(len(context) - self.order + 1, 0) :] if self.order > 1 else ()
        return self._prob(word, history)

    def _prob(self, word: str, history: tuple[str, ...]) -> float:
        k = len(history) + 1
        total, types = self._totals[k - 1].get(history, (0, 0))
        if k == 1:
            lower = 1.0 / len(self.vocabulary)
        else:
            lower = self._prob(word, history[1:])
            if total == 0:
                return lower
        d = self.discounts[k]
        a = self.counts[k].get(history + (word,), 0)
        return max(a - d, 0.0) / total + d * types / total * lower

    def backoff(self, context: Sequence[str]) -> float:
        """The back-off weight of a context: the share of probability it leaves to ``h'``.

        Args:
            context: the context ``h``, oldest word first, shorter than the order.

        Returns:
            ``D n(h) / A(h)``, or 1 when ``h`` was never followed by a word.
        """
        context = tuple(context)
        total, types = self._totals[len(context)].get(context, (0, 0))
        return self.discounts[len(context) + 1] * types / total if total else 1.0

    def to_arpa(self) -> str:
        """The model as an ARPA file.

        Returns:
            The file's text: log10 probabilities and back-off weights, n-grams sorted.
        """
        sections = []
        for k in range(1, self.order + 1):
            ngrams = sorted(self.counts[k]) if k > 1 else [(w,) for w in self.vocabulary]
            if k == 1:
                ngrams = sorted(ngrams + [(BOS,)])
            lines = [f"\\{k}-grams:"]
            for g in ngrams:
                p = -99.0 if g == (BOS,) else math.log10(self.prob(g[-1], g[:-1]))
                line = f"{p:.7f}\t{' '.join(g)}"
                if k < self.order and self._totals[k].get(g, (0, 0))[0] > 0:
                    line += f"\t{math.log10(self.backoff(g)):.7f}"
                lines.append(line)
            sections.append((len(ngrams), "\n".join(lines)))
        header = ["\\data\\"] + [f"ngram {k}={n}" for k, (n, _) in enumerate(sections, 1)]
        return "\n".join(header) + "\n\n" + "\n\n".join(s for _, s in sections) + "\n\n\\end\\\n"


def build_arpa(texts: Iterable[str], order: int = 3, discount: float | None = None) -> str:
    """The ARPA text of the interpolated Kneser-Ney model of ``texts``.

    Args:
        texts: the training transcripts (words split on whitespace).
        order: the n-gram order.
        discount: one discount for every order; None: Ney's estimate per order.

    Returns:
        The ARPA file's text.
    """
    return KneserNeyLM(texts, order, discount).to_arpa()


def write_arpa(
    path: str | os.PathLike, texts: Iterable[str], order: int = 3, discount: float | None = None
) -> Path:
    """Estimate the model of ``texts`` (:func:`build_arpa`) and write it to ``path``.

    Args:
        path: the ARPA file to write (replaced when it exists).
        texts: the training transcripts.
        order: the n-gram order.
        discount: one discount for every order; None: Ney's estimate per order.

    Returns:
        The path written.
    """
    path = Path(path)
    path.write_text(build_arpa(texts, order, discount), encoding="utf-8")
    return path
