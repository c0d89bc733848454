"""Evaluation and prediction: loss, greedy transcripts, corpus error counts."""

from __future__ import annotations

import pytest
import torch

import fctc
from fctc import optim, random
from fctc.metrics import ErrorCounts, error_counts
from fctc.text import Vocabulary
from fctc.testing import assert_trees_equal
from fctc.train import make_eval_step, make_train_step, predict
from tiny_task import BLANK, tiny_batch, tiny_model

VOCAB = Vocabulary(["a", "b", "c", "d", "e"])  # blank appended last: index 5 == BLANK


@pytest.fixture(scope="module")
def trained():
    model = tiny_model()
    step = make_train_step(model, optim.adam(2e-2), blank=BLANK)
    state = step.init_state(random.key(0))
    for i in range(120):
        state, _ = step(state, tiny_batch(i % 8))
    return model, state


def test_vocabulary_matches_the_tiny_task():
    assert VOCAB.blank_idx == BLANK and len(VOCAB) == 6


def test_eval_step_scores_transcripts_against_targets(trained):
    model, state = trained
    eval_step = make_eval_step(model, VOCAB)
    batch = tiny_batch(100)
    out = eval_step(state.params, state.model_state, batch)
    assert len(out.transcripts) == len(out.references) == batch.audio.shape[0]
    assert out.references == VOCAB.decode_targets(batch.targets, batch.target_lengths)
    assert out.counts == error_counts(out.transcripts, out.references)
    assert out.counts.cer < 0.2  # the task is learnt
    # the loss is the eval-mode CTC loss
    (logits, lengths), _ = model.apply(state.params, state.model_state, batch.audio, batch.audio_lengths)
    want = fctc.losses.ctc_loss(logits, lengths, batch.targets, batch.target_lengths, BLANK)
    torch.testing.assert_close(out.loss, want)
    # counts add up to corpus-level figures
    total = sum((eval_step(state.params, state.model_state, tiny_batch(s)).counts for s in (1, 2)), ErrorCounts(0, 0, 0, 0))
    assert total.chars > 0 and 0.0 <= total.cer <= 1.0


def test_eval_step_uses_running_statistics_and_changes_nothing():
    model = tiny_model(norm="batch")
    params, state = model.init(random.key(1))
    before = fctc.tree.map(torch.clone, state)
    out1 = make_eval_step(model, VOCAB)(params, state, tiny_batch(3))
    out2 = make_eval_step(model, VOCAB)(params, state, tiny_batch(3))
    assert_trees_equal(state, before)
    assert out1.transcripts == out2.transcripts and torch.equal(out1.loss, out2.loss)


def test_predict_returns_one_string_per_utterance(trained):
    model, state = trained
    batch = tiny_batch(200)
    texts = predict(model, state.params, state.model_state, VOCAB, batch.audio, batch.audio_lengths)
    refs = VOCAB.decode_targets(batch.targets, batch.target_lengths)
    assert len(texts) == len(refs)
    assert fctc.metrics.cer(texts, refs) < 0.2
    n = int(batch.audio_lengths[0])
    single = predict(model, state.params, state.model_state, VOCAB, batch.audio[:1, :, :n])
    assert single == texts[:1]  # no lengths: the whole (trimmed) input
    with pytest.raises(ValueError, match="predict: audio"):
        predict(model, state.params, state.model_state, VOCAB, torch.tensor(1.0))
