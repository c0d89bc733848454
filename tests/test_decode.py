"""fctc.decode: greedy and beam search against brute-force CTC probabilities on tiny inputs.

Every alignment of a 4-frame problem is enumerated; its labelling is CTC's collapse
(``Vocabulary.decode_prediction`` on the path). The beam search, with a beam larger than the
number of labellings and no pruning, must return every labelling with ``score`` equal to the
brute-force ``log P(labelling)`` (``log_add=True``) or the best alignment's log-probability
(``log_add=False``), best first.
"""

from __future__ import annotations

import builtins
import itertools
import math

import pytest
import torch

from fctc import decode, lm
from fctc.decode import BeamSearchDecoder, GreedyDecoder, make_decoder, word_separator
from fctc.text import Vocabulary

pytest.importorskip("flashlight.lib.text", reason="the decode extra (flashlight-text) is missing")

EXACT = {"beam_size": 1000, "beam_threshold": math.inf}


def _brute_force(vocab: Vocabulary, logits: torch.Tensor, key=lambda text: text):
    """``{key(labelling): (log sum, log max)}`` over all alignments of one utterance."""
    lp = torch.log_softmax(logits.double(), dim=1)[0].T  # (T, V)
    frames, classes = lp.shape
    sums: dict[str, float] = {}
    best: dict[str, float] = {}
    for path in itertools.product(range(classes), repeat=frames):
        score = float(sum(lp[t, k] for t, k in enumerate(path)))
        label = key(vocab.decode_prediction(torch.tensor([path]))[0])
        if label is None:
            continue
        sums[label] = sums.get(label, 0.0) + math.exp(score)
        best[label] = max(best.get(label, -math.inf), score)
    return {k: (math.log(sums[k]), best[k]) for k in sums}


@pytest.mark.parametrize("seed", range(6))
def test_beam_search_finds_every_labelling_with_its_ctc_probability(seed):
    vocab = Vocabulary([" ", "a"])  # space, a, blank: a 3-symbol problem
    logits = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(seed)) * 2
    truth = _brute_force(vocab, logits)
    hyps = BeamSearchDecoder(vocab, **EXACT).decode(logits, nbest=100)[0]
    assert sorted(h.text for h in hyps) == sorted(truth)  # 15 labellings of 4 frames
    for h in hyps:
        assert h.score == pytest.approx(truth[h.text][0], abs=1e-5)
    assert hyps[0].text == max(truth, key=lambda k: truth[k][0])
    # Without log-add the score is the best alignment's: Viterbi, the best path's labelling.
    viterbi = BeamSearchDecoder(vocab, log_add=False, **EXACT).decode(logits)[0][0]
    path_label = max(truth, key=lambda k: truth[k][1])
    assert viterbi.text == path_label
    assert viterbi.score == pytest.approx(truth[path_label][1], abs=1e-5)
    assert viterbi.text == vocab.decode_prediction(logits)[0]  # the best path is greedy's


def test_the_most_probable_labelling_need_not_be_the_best_path():
    """A case where greedy (best path) and beam search (best labelling) disagree."""
    vocab = Vocabulary(["a"])  # a, blank
    p = torch.tensor([[0.4, 0.6], [0.4, 0.6]])  # P(a), P(blank) per frame
    logits = p.log().T.unsqueeze(0)  # (1, 2, 2)
    # best path: blank blank (0.36) -> "". P("a") = 0.4*0.4 + 0.4*0.6 + 0.6*0.4 = 0.64.
    assert GreedyDecoder(vocab)(logits) == [""]
    best = BeamSearchDecoder(vocab, **EXACT).decode(logits)[0][0]
    assert best.text == "a" and best.score == pytest.approx(math.log(0.64), abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_lexicon_search_sums_the_labellings_of_each_word_sequence(seed):
    vocab = Vocabulary([" ", "a", "b"])
    lexicon = {"a": [["a"]], "ab": [["a", "b"]], "bb": [["b", "b"]]}

    def words(text):
        ws = text.split()
        return " ".join(ws) if all(w in lexicon for w in ws) else None

    logits = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2
    truth = _brute_force(vocab, logits, words)
    hyps = BeamSearchDecoder(vocab, lexicon=lexicon, **EXACT).decode(logits, nbest=100)[0]
    assert sorted(h.text for h in hyps) == sorted(truth)
    for h in hyps:
        assert h.score == pytest.approx(truth[h.text][0], abs=1e-5)


def _emissions(vocab: Vocabulary, text_per_frame: str, confidence: float = 0.9) -> torch.Tensor:
    """Logits ``(1, V, T)``: each frame puts ``confidence`` on one character ('_' = blank)."""
    rows = []
    for ch in text_per_frame:
        p = torch.full((len(vocab),), (1 - confidence) / (len(vocab) - 1))
        p[vocab.blank_idx if ch == "_" else vocab.stoi[ch]] = confidence
        rows.append(p.log())
    return torch.stack(rows, dim=1).unsqueeze(0)


def test_lexicon_restricts_output_to_its_words(tmp_path):
    vocab = Vocabulary(list(" abcdefghijklmnopqrstuvwxyz"))
    logits = _emissions(vocab, "tt_w_oo__ _tt_h_r_ee_")  # greedy reads "two thre": a typo
    assert GreedyDecoder(vocab)(logits) == ["two thre"]
    assert BeamSearchDecoder(vocab)(logits) == ["two thre"]
    path = tmp_path / "words.txt"
    path.write_text("two\nthree\ntree\nto\n")  # a plain word list is a lexicon too
    out = BeamSearchDecoder(vocab, lexicon=path)(logits)
    assert out == ["two three"]
    assert set(out[0].split()) <= {"two", "three", "tree", "to"}
    # Repeated letters stay CTC's inside a word: "three" needs a blank between its e's.
    assert BeamSearchDecoder(vocab, lexicon={"tree": [list("tree")], "tre": [list("tre")]})(
        _emissions(vocab, "tt_rr_ee")) == ["tre"]


def test_lm_changes_the_ranking_in_its_direction(tmp_path):
    vocab = Vocabulary(list(" abcdefghijklmnopqrstuvwxyz"))
    # "to" is slightly more probable acoustically than "two".
    middle = _mix(vocab, {"o": 0.5, "w": 0.45})
    frames = torch.stack([_emissions(vocab, "t")[0, :, 0], middle, _emissions(vocab, "o")[0, :, 0]],
                         dim=1).unsqueeze(0)
    lexicon = {"to": [list("to")], "two": [list("two")]}
    plain = BeamSearchDecoder(vocab, lexicon=lexicon, **EXACT).decode(frames, nbest=2)[0]
    assert [h.text for h in plain] == ["to", "two"]
    arpa = tmp_path / "lm.arpa"
    lm.write_arpa(arpa, ["two"] * 9 + ["to"], order=2)
    with_lm = BeamSearchDecoder(vocab, lexicon=lexicon, lm=arpa, lm_weight=2.0, **EXACT)
    ranked = with_lm.decode(frames, nbest=2)[0]
    assert [h.text for h in ranked] == ["two", "to"]
    model = lm.KneserNeyLM(["two"] * 9 + ["to"], order=2)
    for h in ranked:  # the LM part of the score: log10 P(words </s>), as KenLM scores it
        expected = math.log10(model.prob(h.text, ["<s>"])) + math.log10(model.prob("</s>", ["<s>", h.text]))
        assert h.lm_score == pytest.approx(expected, abs=1e-5)
    assert ranked[0].score > ranked[1].score
    # A word score shifts every word by the same amount: the ranking of one-word texts stays.
    shifted = BeamSearchDecoder(vocab, lexicon=lexicon, word_score=3.0, **EXACT).decode(
        frames, nbest=2)[0]
    assert [h.text for h in shifted] == ["to", "two"]
    assert shifted[0].score == pytest.approx(plain[0].score + 3.0, abs=1e-6)


def _mix(vocab: Vocabulary, probs: dict[str, float]) -> torch.Tensor:
    rest = (1 - sum(probs.values())) / (len(vocab) - len(probs))
    p = torch.full((len(vocab),), rest)
    for ch, q in probs.items():
        p[vocab.stoi[ch]] = q
    return p.log()


def test_batches_ignore_padding_and_match_one_by_one():
    vocab = Vocabulary([" ", "a", "b"])
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(1, 4, 7, generator=g) * 3, torch.randn(1, 4, 4, generator=g) * 3
    batch = torch.cat([a, torch.cat([b, torch.full((1, 4, 3), float("nan"))], dim=2)])
    lengths = torch.tensor([7, 4])
    for decoder in (GreedyDecoder(vocab), BeamSearchDecoder(vocab),
                    BeamSearchDecoder(vocab, lexicon={"ab": [["a", "b"]], "b": [["b"]]})):
        assert decoder(batch, lengths) == decoder(a) + decoder(b)
    empty = BeamSearchDecoder(vocab)(a, torch.tensor([0]))
    assert empty == [""]


def test_log_probabilities_or_logits_decode_alike():
    vocab = Vocabulary([" ", "a", "b"])
    logits = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(4)) * 3
    beam = BeamSearchDecoder(vocab)
    assert beam(logits) == beam(torch.log_softmax(logits, dim=1)) == beam(logits + 5.0)


def test_greedy_decoder_is_the_vocabularys_collapse():
    vocab = Vocabulary([" ", "a", "b"])
    logits = torch.randn(3, 4, 9, generator=torch.Generator().manual_seed(5))
    lengths = torch.tensor([9, 5, 1])
    assert GreedyDecoder(vocab)(logits, lengths) == vocab.decode_prediction(logits, lengths)
    assert make_decoder(vocab, "greedy").options() == {"decoder": "greedy"}
    assert isinstance(make_decoder(vocab, "beam", beam_size=4), BeamSearchDecoder)
    assert make_decoder(vocab, "beam", beam_size=4).options()["beam_size"] == 4


def test_word_separator():
    assert word_separator(Vocabulary([" ", "a"])) == 0
    assert word_separator(Vocabulary(["a", "|"])) == 1
    with pytest.raises(ValueError, match="separator"):
        word_separator(Vocabulary(["a", "b"]))


def test_errors_name_the_problem(tmp_path):
    vocab = Vocabulary([" ", "a"])
    with pytest.raises(ValueError, match="needs a lexicon"):
        BeamSearchDecoder(vocab, lm=tmp_path / "lm.arpa")
    with pytest.raises(ValueError, match="'z'"):
        BeamSearchDecoder(vocab, lexicon={"za": [["z", "a"]]})
    with pytest.raises(ValueError, match="separator"):
        BeamSearchDecoder(Vocabulary(["a"]), lexicon={"a": [["a"]]})
    with pytest.raises(FileNotFoundError, match="nope.arpa"):
        BeamSearchDecoder(vocab, lexicon={"a": [["a"]]}, lm=tmp_path / "nope.arpa")
    bad = tmp_path / "bad.arpa"
    bad.write_text("not an arpa file\n")
    with pytest.raises(ValueError, match="bad.arpa"):
        BeamSearchDecoder(vocab, lexicon={"a": [["a"]]}, lm=bad)
    with pytest.raises(ValueError, match="beam_size"):
        BeamSearchDecoder(vocab, beam_size=0)
    with pytest.raises(ValueError, match="vocab=3"):
        BeamSearchDecoder(vocab)(torch.zeros(1, 5, 2))
    with pytest.raises(ValueError, match="lengths"):
        BeamSearchDecoder(vocab)(torch.zeros(1, 3, 2), torch.tensor([3]))
    with pytest.raises(ValueError, match="greedy decoder takes no options"):
        make_decoder(vocab, "greedy", beam_size=3)
    with pytest.raises(ValueError, match="'viterbi'"):
        make_decoder(vocab, "viterbi")


def test_missing_extra_is_one_line_naming_the_install(monkeypatch):
    real_import = builtins.__import__

    def no_flashlight(name, *args, **kwargs):
        if name.startswith("flashlight"):
            raise ImportError("No module named 'flashlight'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_flashlight)
    assert not decode.beam_search_available()
    with pytest.raises(decode.DecoderUnavailable) as e:
        BeamSearchDecoder(Vocabulary(["a"]))
    assert str(e.value) == decode.INSTALL_HINT and "pip install 'fctc[decode]'" in str(e.value)
    assert GreedyDecoder(Vocabulary(["a"]))(torch.zeros(1, 2, 3)) == ["a"]  # greedy needs nothing
