import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fctc.text import SentencePieceTokenizer, Vocabulary, char_tokenizer

LETTERS = [" "] + list("abcdefghijklmnopqrstuvwxyz")


def full_vocab():
    return Vocabulary(
        LETTERS, unknown_token="<unk>", start_token="<bos>", end_token="<eos>"
    )


def test_thunder_golden_encoding():
    v = full_vocab()
    assert v.encode("hello world").tolist() == [29, 8, 5, 12, 12, 15, 0, 23, 15, 18, 12, 4, 30]
    assert v.encode("hello world").dtype == torch.long
    assert (v.blank_idx, v.pad_idx, v.unk_idx, v.start_idx, v.end_idx) == (27, 27, 28, 29, 30)
    assert len(v) == 31


def test_index_order_follows_thunder():
    v = Vocabulary(["a", "b"], pad_token="<pad>", unknown_token="<unk>")
    assert v.itos == ["a", "b", "<blank>", "<pad>", "<unk>"]
    # A blank already among the tokens keeps its place.
    v = Vocabulary(["<b>", "a"], blank_token="<b>")
    assert v.itos == ["<b>", "a"] and v.blank_idx == 0 and v.pad_idx == 0


def test_unknown_characters_map_to_unk_or_raise():
    v = full_vocab()
    assert v.encode("a!").tolist() == [29, 1, 28, 30]
    plain = Vocabulary(LETTERS)
    with pytest.raises(ValueError, match=r"\['!', 'Z'\]"):
        plain.encode("aZ!")


def test_invalid_vocabularies_raise():
    with pytest.raises(ValueError, match="repeated"):
        Vocabulary(["a", "a"])
    with pytest.raises(ValueError, match="non-empty"):
        Vocabulary(["a", ""])


def test_encode_batch_pads_with_pad_index():
    v = Vocabulary(LETTERS)
    targets, lengths = v.encode_batch(["ab", "c", ""])
    assert lengths.tolist() == [2, 1, 0]
    assert targets.tolist() == [[1, 2], [3, 27], [27, 27]]
    with pytest.raises(TypeError):
        v.encode_batch("abc")
    with pytest.raises(ValueError):
        v.encode_batch([])


@given(st.lists(st.text(alphabet="abc xyz", max_size=12), min_size=1, max_size=5))
def test_decode_targets_round_trip(texts):
    v = full_vocab()
    assert v.decode_targets(*v.encode_batch(texts)) == texts


def test_greedy_decoding_merges_repeats_then_drops_blanks():
    v = Vocabulary(LETTERS)
    b = v.blank_idx
    # "h h blank h e l l blank l o" -> "hhello" is wrong; repeats merge first: "hello"
    seq = [8, 8, b, 8, 5, 12, 12, b, 12, 15]
    assert v.decode_prediction(torch.tensor([seq])) == ["hhello"]
    assert v.decode_prediction(torch.tensor([[b, b, 1, 1, b, 2, 2, 2]])) == ["ab"]


def test_greedy_decoding_respects_lengths_and_logits():
    v = Vocabulary(LETTERS)
    b = v.blank_idx
    idx = torch.tensor([[1, 1, 2, b, 3], [4, b, 4, 5, 5]])
    assert v.decode_prediction(idx, torch.tensor([3, 3])) == ["ab", "dd"]
    logits = torch.nn.functional.one_hot(idx, len(v)).float().transpose(1, 2) * 5.0
    assert v.decode_prediction(logits) == ["abc", "dde"]
    assert v.decode_prediction(logits, torch.tensor([0, 1])) == ["", "d"]
    with pytest.raises(ValueError, match="vocab=28"):
        v.decode_prediction(torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="lengths"):
        v.decode_prediction(idx, torch.tensor([6, 1]))
    with pytest.raises(ValueError, match=r"\[0, 28\)"):
        v.decode_prediction(torch.tensor([[28]]))


def test_decoding_drops_special_tokens_and_maps_word_markers():
    v = Vocabulary(["▁he", "llo", "▁", "x"], start_token="<s>", end_token="</s>")
    ids = torch.tensor([[v.start_idx, 0, 1, 2, 3, v.end_idx]])
    assert v.decode_prediction(ids) == [" hello x"]
    assert v.decode_targets(ids) == [" hello x"]


def test_decode_prediction_matches_a_reference_loop():
    v = Vocabulary(list("abc"), start_token="<s>")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, len(v), (6, 20), generator=g)
    lengths = torch.randint(0, 21, (6,), generator=g)
    specials = {v.blank_idx, v.start_idx}
    expected = []
    for row, n in zip(x.tolist(), lengths.tolist()):
        out, prev = [], None
        for i in row[:n]:
            if i != prev and i not in specials:
                out.append(v.itos[i])
            prev = i
        expected.append("".join(out))
    assert v.decode_prediction(x, lengths) == expected


def test_dict_round_trip_is_json_serialisable():
    v = full_vocab()
    d = json.loads(json.dumps(v.to_dict()))
    w = Vocabulary.from_dict(d)
    assert w.itos == v.itos and w.blank_idx == v.blank_idx and w.pad_idx == v.pad_idx
    assert w.encode("hello").tolist() == v.encode("hello").tolist()
    custom = Vocabulary(["a"], tokenizer=lambda s: s.split())
    with pytest.raises(ValueError, match="custom tokenizer"):
        Vocabulary.from_dict(custom.to_dict())
    again = Vocabulary.from_dict(custom.to_dict(), tokenizer=str.split)
    assert again.encode("a a").tolist() == [0, 0]


def test_char_tokenizer():
    assert char_tokenizer("ab c") == ["a", "b", " ", "c"]


def test_sentencepiece_vocabulary(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["hello world", "hello there", "world of words"] * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "tok"), vocab_size=20,
        model_type="unigram", hard_vocab_limit=False, minloglevel=2,
    )
    model = str(tmp_path / "tok.model")
    v = Vocabulary.from_sentencepiece(model)
    assert v.itos[-1] == "<blank>" and "<unk>" not in v.itos
    assert isinstance(v.tokenizer, SentencePieceTokenizer)
    ids = v.encode("hello world")
    assert v.decode_targets(ids.unsqueeze(0)) == [" hello world"]
    again = Vocabulary.from_dict(json.loads(json.dumps(v.to_dict())))
    assert again.encode("hello world").tolist() == ids.tolist()
