import math

import jiwer
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fctc.metrics import ErrorCounts, cer, error_counts, error_rate, wer


def test_hand_computed_rates():
    # "the cat" vs "the bat": 1 substituted char of 7, 1 substituted word of 2.
    assert cer(["the bat"], ["the cat"]) == pytest.approx(1 / 7)
    assert wer(["the bat"], ["the cat"]) == pytest.approx(1 / 2)
    # Corpus level: edits summed over total reference length, not a mean of rates.
    preds, refs = ["a", "abcd"], ["b", "abcd"]
    assert cer(preds, refs) == pytest.approx(1 / 5)
    assert wer(preds, refs) == pytest.approx(1 / 2)


def test_counts_are_corpus_sums():
    c = error_counts(["a b c", "xyz"], ["a x c", "xy"])
    assert c == ErrorCounts(char_edits=2, chars=7, word_edits=2, words=4)
    assert c.cer == pytest.approx(2 / 7) and c.wer == pytest.approx(2 / 4)


def test_empty_predictions_and_references():
    assert cer([""], ["abc"]) == 1.0 and wer([""], ["a b"]) == 1.0
    assert error_counts(["ab"], [""]) == ErrorCounts(2, 0, 1, 0)
    assert error_counts(["ab"], [""]).cer == math.inf
    assert cer([""], [""]) == 0.0 and wer([""], [""]) == 0.0
    assert cer([], []) == 0.0 and error_counts([], []) == ErrorCounts()
    assert error_rate(0, 0) == 0.0 and error_rate(3, 0) == math.inf and error_rate(1, 4) == 0.25


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        cer(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="not a str"):
        wer("abc", "abc")
    with pytest.raises(TypeError, match="int"):
        error_counts([1], ["a"])


texts = st.text(alphabet="ab c", max_size=10)
pairs = st.lists(st.tuples(texts, texts), max_size=6)


@given(pairs, pairs)
def test_counts_add_up_across_batches(batch1, batch2):
    def counts(batch):
        return error_counts([p for p, _ in batch], [r for _, r in batch])

    whole = counts(batch1 + batch2)
    assert counts(batch1) + counts(batch2) == whole
    assert sum([counts(batch1), counts(batch2)]) == whole


@given(st.lists(st.tuples(texts, texts.filter(lambda s: s.strip())), min_size=1, max_size=6))
def test_matches_jiwer_corpus_rates(batch):
    preds, refs = [p for p, _ in batch], [r for _, r in batch]
    assert cer(preds, refs) == pytest.approx(jiwer.cer(refs, preds))
    assert wer(preds, refs) == pytest.approx(jiwer.wer(refs, preds))
