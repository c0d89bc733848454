"""fctc.lm: interpolated Kneser-Ney against hand-computed counts, ARPA validity, normalisation.

The toy corpus is ``["a b", "a", "b a b"]``, i.e. the sentences ``<s> a b </s>``,
``<s> a </s>`` and ``<s> b a b </s>``. Every expected number below is written out from the
module docstring's formulas, with the counts read off these three sentences.
"""

from __future__ import annotations

import itertools
import math

import pytest

from fctc import lm
from fctc.lm import KneserNeyLM

TEXTS = ["a b", "a", "b a b"]


def test_adjusted_counts_and_discounts_of_a_trigram_model():
    model = KneserNeyLM(TEXTS, order=3)
    # Trigrams (highest order): raw counts.
    assert model.counts[3] == {("<s>", "a", "b"): 1, ("a", "b", "</s>"): 2, ("<s>", "a", "</s>"): 1,
                               ("<s>", "b", "a"): 1, ("b", "a", "b"): 1}
    # Bigrams: raw counts after <s>, else the number of distinct words before them.
    assert model.counts[2] == {("<s>", "a"): 2, ("<s>", "b"): 1, ("a", "b"): 2, ("b", "</s>"): 1,
                               ("a", "</s>"): 1, ("b", "a"): 1}
    # Unigrams: continuation counts (a after <s>, b; b after <s>, a; </s> after a, b).
    assert model.counts[1] == {("a",): 2, ("b",): 2, ("</s>",): 2}
    # D = n1 / (n1 + 2 n2): unigrams have no count 1 (fallback 0.5); bigrams 4 ones and
    # 2 twos; trigrams 4 ones and 1 two.
    assert model.discounts[1:] == [0.5, 4 / (4 + 2 * 2), 4 / (4 + 2 * 1)]
    assert model.vocabulary == ["</s>", "<unk>", "a", "b"]


def test_probabilities_against_hand_computed_values():
    model = KneserNeyLM(TEXTS, order=3)
    d1, d2, d3 = 0.5, 0.5, 2 / 3
    # Unigrams: A = 6, three types, |V| = 4 (a, b, </s>, <unk>).
    p1 = {w: max(2 - d1, 0) / 6 + d1 * 3 / 6 / 4 for w in ("a", "b", "</s>")}
    p1["<unk>"] = d1 * 3 / 6 / 4
    assert p1["a"] == 0.3125 and p1["<unk>"] == 0.0625
    for w, p in p1.items():
        assert model.prob(w) == pytest.approx(p, rel=1e-12)
    # Bigrams after "b": a(b </s>) = a(b a) = 1, A = 2, two types.
    p2_b = {w: max(c - d2, 0) / 2 + d2 * 2 / 2 * p1[w]
            for w, c in (("</s>", 1), ("a", 1), ("b", 0), ("<unk>", 0))}
    assert p2_b["</s>"] == pytest.approx(0.40625) and p2_b["b"] == pytest.approx(0.15625)
    for w, p in p2_b.items():
        assert model.prob(w, ["b"]) == pytest.approx(p, rel=1e-12)
    # Bigrams after "a": a(a b) = 2, a(a </s>) = 1, A = 3.
    p2_a = {w: max(c - d2, 0) / 3 + d2 * 2 / 3 * p1[w]
            for w, c in (("b", 2), ("</s>", 1), ("a", 0), ("<unk>", 0))}
    assert p2_a["b"] == pytest.approx(0.5 + 0.3125 / 3)
    # Trigrams after "<s> a": c(<s> a b) = c(<s> a </s>) = 1, A = 2, two types.
    for w, c in (("b", 1), ("</s>", 1), ("a", 0), ("<unk>", 0)):
        expected = max(c - d3, 0) / 2 + d3 * 2 / 2 * p2_a[w]
        assert model.prob(w, ["<s>", "a"]) == pytest.approx(expected, rel=1e-12)
    assert model.prob("b", ["<s>", "a"]) == pytest.approx(1 / 6 + 2 / 3 * (0.5 + 0.3125 / 3))
    # After "a b": c(a b </s>) = 2 only.
    assert model.prob("</s>", ["a", "b"]) == pytest.approx((2 - d3) / 2 + d3 / 2 * p2_b["</s>"])
    # An unseen context backs off whole; a longer context uses its last two words; an
    # unknown word is <unk>.
    assert model.prob("a", ["b", "b"]) == pytest.approx(p2_b["a"], rel=1e-12)
    assert model.prob("b", ["x", "<s>", "a"]) == model.prob("b", ["<s>", "a"])
    assert model.prob("zebra", ["b"]) == model.prob("<unk>", ["b"])
    # Back-off weights D n(h) / A(h).
    assert model.backoff(["<s>", "a"]) == pytest.approx(d3 * 2 / 2)
    assert model.backoff(["a", "b"]) == pytest.approx(d3 * 1 / 2)
    assert model.backoff(["b"]) == pytest.approx(d2 * 2 / 2)
    assert model.backoff(["b", "b"]) == 1.0


@pytest.mark.parametrize("order", [2, 3, 4])
def test_every_context_sums_to_one(order):
    texts = TEXTS + ["b b b a", "a a", "c a b"]
    model = KneserNeyLM(texts, order=order)
    words = [w for w in model.vocabulary]
    contexts = {g[:-1] for k in range(2, order + 1) for g in model.counts[k]}
    contexts |= set(itertools.product(["a", "c", "x"], repeat=order - 1))  # unseen ones too
    for h in contexts:
        assert math.fsum(model.prob(w, h) for w in words) == pytest.approx(1.0, abs=1e-12)


def test_arpa_is_valid_for_kenlm_and_reproduces_the_model(tmp_path):
    flashlight = pytest.importorskip("flashlight.lib.text.dictionary")
    from flashlight.lib.text.decoder.kenlm import KenLM

    texts = TEXTS + ["b b b a", "a a", "c a b"]
    model = KneserNeyLM(texts, order=3)
    path = lm.write_arpa(tmp_path / "lm.arpa", texts, order=3)
    text = path.read_text()
    assert text == lm.build_arpa(texts, order=3) == model.to_arpa()
    assert text.startswith("\\data\\\nngram 1=6\n") and text.endswith("\\end\\\n")
    assert "-99.0000000\t<s>\t" in text
    words = [w for w in model.vocabulary if w != "</s>"]
    kenlm = KenLM(str(path), flashlight.Dictionary(words))
    # Walk KenLM's states two words deep: every score is the model's log10 probability, and
    # each context's probabilities (the words and </s>) sum to 1.
    frontier = [(kenlm.start(False), ["<s>"])]
    for _ in range(3):
        following = []
        for state, history in frontier:
            total = 0.0
            for i, w in enumerate(words):
                child, score = kenlm.score(state, i)
                assert score == pytest.approx(math.log10(model.prob(w, history)), abs=1e-6)
                total += 10 ** score
                following.append((child, history + [w]))
            _, end = kenlm.finish(state)
            assert end == pytest.approx(math.log10(model.prob("</s>", history)), abs=1e-6)
            assert total + 10 ** end == pytest.approx(1.0, abs=1e-5)
        frontier = following[:40]


def test_errors():
    with pytest.raises(ValueError, match="order"):
        KneserNeyLM(TEXTS, order=1)
    with pytest.raises(ValueError, match="discount"):
        KneserNeyLM(TEXTS, discount=1.5)
    with pytest.raises(ValueError, match="no words"):
        KneserNeyLM(["", " "])
    with pytest.raises(ValueError, match="<s>"):
        KneserNeyLM(["a <s> b"])
    with pytest.raises(TypeError, match="not one str"):
        KneserNeyLM("a b")
    fixed = KneserNeyLM(TEXTS, order=2, discount=0.7)
    assert fixed.discounts[1:] == [0.7, 0.7]
