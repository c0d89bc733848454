"""Text processing for CTC: a vocabulary, encoding to padded targets, greedy CTC decoding.

The conventions are thunder-speech's, so that a model's output layer and its checkpoint mean
the same thing in both libraries:

* the index order is ``tokens + [blank] + [pad] + [unk] + [start] + [end]``, where each special
  token is appended only when it is given and not already among ``tokens`` (``pad`` defaults to
  the blank, so by default nothing is added for it);
* encoding adds the start/end tokens around every utterance;
* greedy decoding merges repeated indices first and then drops the blank (and the other
  special tokens), and turns sentencepiece's ``"▁"`` and wav2vec's ``"|"`` into spaces.

One deliberate difference: thunder silently drops characters that are not in the vocabulary
when there is no unknown token. Here they map to the unknown token when there is one, and
otherwise raise a ``ValueError`` that names them, because silently shortened targets train a
model on the wrong labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["Vocabulary", "SentencePieceTokenizer", "char_tokenizer"]


def char_tokenizer(text: str) -> list[str]:
    """Split text into characters: the tokenizer of character-level CTC models.

    Args:
        text: the text.

    Returns:
        Its characters, spaces included.
    """
    return list(text)


class SentencePieceTokenizer:
    """Tokenize text into sentencepiece pieces (needs the optional ``sentencepiece`` package).

    The package is imported when an instance is created, so fctc itself does not depend on it.

    Args:
        model_path: the sentencepiece ``.model`` file.

    Raises:
        ImportError: ``sentencepiece`` is not installed (the message says how to install it).
    """

    def __init__(self, model_path: str):
        try:
            import sentencepiece
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "SentencePieceTokenizer needs the 'sentencepiece' package: "
                "pip install sentencepiece"
            ) from e
        self.model_path = str(model_path)
        self._sp = sentencepiece.SentencePieceProcessor(model_file=self.model_path)

    def __call__(self, text: str) -> list[str]:
        """The pieces of ``text``, as strings."""
        return list(self._sp.encode(text, out_type=str))

    def pieces(self) -> list[str]:
        """Every piece of the model, in the model's id order.

        Returns:
            The pieces as strings, specials (``<s>``, ``<unk>``, ...) included.
        """
        return [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]


_SENTENCEPIECE_SPECIALS = ("<s>", "</s>", "<pad>", "<unk>")


class Vocabulary:
    """A CTC vocabulary: maps text to index tensors and model outputs back to text.

    Args:
        tokens: the ordinary tokens (characters or pieces), in output-layer order.
        blank_token: the CTC blank; appended after ``tokens`` unless already among them.
        pad_token: the token that pads batched targets; defaults to the blank.
        unknown_token: optional; characters outside the vocabulary map to it.
        start_token, end_token: optional; added around every encoded utterance.
        tokenizer: splits a string into tokens; characters by default.
        space_tokens: strings replaced by a space in decoded text (sentencepiece's word
            marker and wav2vec's word delimiter, as thunder does); ``()`` turns this off.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        blank_token: str = "<blank>",
        pad_token: str | None = None,
        unknown_token: str | None = None,
        start_token: str | None = None,
        end_token: str | None = None,
        tokenizer: Callable[[str], list[str]] | None = None,
        space_tokens: Sequence[str] = ("▁", "|"),
    ):
        tokens = list(tokens)
        for t in tokens:
            if not isinstance(t, str) or not t:
                raise ValueError(f"Vocabulary: every token must be a non-empty string, got {t!r}")
        dupes = sorted(t for t, n in Counter(tokens).items() if n > 1)
        if dupes:
            raise ValueError(f"Vocabulary: tokens must be unique; repeated: {dupes}")
        if not blank_token:
            raise ValueError("Vocabulary: blank_token must be a non-empty string")
        self.blank_token = blank_token
        self.pad_token = pad_token or blank_token
        self.unknown_token = unknown_token
        self.start_token = start_token
        self.end_token = end_token
        self.space_tokens = tuple(space_tokens)
        self.tokenizer = tokenizer or char_tokenizer
        itos = list(tokens)
        for special in (blank_token, pad_token, unknown_token, start_token, end_token):
            if special and special not in itos:
                itos.append(special)
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(itos)}
        self.blank_idx = self.stoi[self.blank_token]
        self.pad_idx = self.stoi[self.pad_token]
        self.unk_idx = self.stoi[unknown_token] if unknown_token else None
        self.start_idx = self.stoi[start_token] if start_token else None
        self.end_idx = self.stoi[end_token] if end_token else None
        special = {self.blank_idx, self.pad_idx, self.start_idx, self.end_idx} - {None}
        self._special_indices = torch.tensor(sorted(special), dtype=torch.long)

    # -- basic mapping -------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of output classes a CTC model over this vocabulary needs."""
        return len(self.itos)

    def __repr__(self) -> str:
        return (
            f"Vocabulary({len(self)} tokens, blank={self.blank_token!r} ({self.blank_idx}), "
            f"pad={self.pad_token!r} ({self.pad_idx}))"
        )

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into tokens and add the start/end tokens when the vocabulary has them.

        Args:
            text: one utterance's text.

        Returns:
            Its tokens (not yet checked against the vocabulary).

        Raises:
            TypeError: ``text`` is not a str.
        """
        if not isinstance(text, str):
            raise TypeError(f"Vocabulary: text must be a str, got {type(text).__name__}")
        toks = list(self.tokenizer(text))
        if self.start_token:
            toks = [self.start_token] + toks
        if self.end_token:
            toks = toks + [self.end_token]
        return toks

    def encode(self, text: str) -> torch.Tensor:
        """The index tensor (``int64``, 1-D) of one utterance, start/end tokens included.

        Tokens outside the vocabulary become the unknown token when there is one; otherwise a
        ``ValueError`` names them.

        Args:
            text: one utterance's text.

        Returns:
            Its token indices.

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: tokens outside a vocabulary without an unknown token (named).
        """
        toks = self.tokenize(text)
        stoi = self.stoi
        if self.unk_idx is None:
            missing = sorted({t for t in toks if t not in stoi})
            if missing:
                raise ValueError(
                    f"Vocabulary: {text!r} contains tokens that are not in the vocabulary: "
                    f"{missing}. Add them to the tokens, normalise the text first, or give the "
                    "vocabulary an unknown_token."
                )
            ids = [stoi[t] for t in toks]
        else:
            unk = self.unk_idx
            ids = [stoi.get(t, unk) for t in toks]
        return torch.tensor(ids, dtype=torch.long)

    def encode_batch(
        self, texts: Sequence[str], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode several utterances into padded CTC targets.

        Args:
            texts: the utterances' texts.
            device: where the tensors go.

        Returns:
            ``(targets, lengths)``: ``(B, L)`` indices padded with ``pad_idx`` and ``(B,)``
            lengths, both ``int64``.

        Raises:
            TypeError: ``texts`` is a single str.
            ValueError: ``texts`` is empty, or as :meth:`encode`.
        """
        if isinstance(texts, str):
            raise TypeError("Vocabulary.encode_batch: texts must be a sequence of str, not a str")
        encoded = [self.encode(t) for t in texts]
        if not encoded:
            raise ValueError("Vocabulary.encode_batch: texts is empty")
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        targets = torch.full((len(encoded), int(lengths.max())), self.pad_idx, dtype=torch.long)
        for i, e in enumerate(encoded):
            targets[i, : len(e)] = e
        return targets.to(device), lengths.to(device)

    # -- decoding ------------------------------------------------------------------------

    def _check_indices(self, x: torch.Tensor, lengths: torch.Tensor | None, fn: str):
        if x.dim() != 2:
            raise ValueError(
                f"Vocabulary.{fn}: expected a (batch, time) tensor, got {tuple(x.shape)}"
            )
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"Vocabulary.{fn}: indices must be integers, got {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= len(self)):
            raise ValueError(
                f"Vocabulary.{fn}: indices must lie in [0, {len(self)}), got values from "
                f"{int(x.min())} to {int(x.max())}"
            )
        if lengths is None:
            return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        if not isinstance(lengths, torch.Tensor) or lengths.shape != (x.shape[0],):
            shape = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths)
            raise ValueError(
                f"Vocabulary.{fn}: lengths must be a tensor of shape ({x.shape[0]},), got {shape}"
            )
        if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > x.shape[1]):
            raise ValueError(
                f"Vocabulary.{fn}: lengths must lie in [0, {x.shape[1]}], got "
                f"{lengths.tolist()}"
            )
        return lengths.to(x.device)

    def _join(self, rows: list[list[int]]) -> list[str]:
        itos, out = self.itos, []
        for row in rows:
            text = "".join(itos[i] for i in row)
            for marker in self.space_tokens:
                text = text.replace(marker, " ")
            out.append(text)
        return out

    def decode_prediction(
        self, predictions: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> list[str]:
        """Greedy CTC decoding of a batch: merge repeats, then drop blanks (and special tokens).

        ``predictions`` is either indices ``(B, T)`` or logits / probabilities ``(B, vocab, T)``
        as a model returns them (the argmax over the vocabulary is taken). Frames at or beyond
        ``lengths[b]`` are ignored.

        Args:
            predictions: indices ``(B, T)`` or scores ``(B, vocab, T)``.
            lengths: valid frames per utterance ``(B,)``; all ``T`` by default.

        Returns:
            One str per utterance.

        Raises:
            TypeError: ``predictions`` is not a tensor, or holds non-integer indices.
            ValueError: a wrong shape or vocabulary size, indices or lengths out of range.
        """
        if not isinstance(predictions, torch.Tensor):
            raise TypeError(
                f"Vocabulary.decode_prediction: expected a tensor, got {type(predictions).__name__}"
            )
        if predictions.dim() == 3:
            if predictions.shape[1] != len(self):
                raise ValueError(
                    "Vocabulary.decode_prediction: logits must have shape (batch, vocab, time) "
                    f"with vocab={len(self)}, got {tuple(predictions.shape)}"
                )
            predictions = predictions.argmax(dim=1)
        x = predictions.detach()
        lengths = self._check_indices(x, lengths, "decode_prediction")
        t = torch.arange(x.shape[1], device=x.device)
        valid = t.unsqueeze(0) < lengths.unsqueeze(1)
        new = torch.ones_like(valid)
        new[:, 1:] = x[:, 1:] != x[:, :-1]
        keep = valid & new & ~torch.isin(x, self._special_indices.to(x.device))
        return self._rows(x, keep)

    def decode_targets(
        self, targets: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> list[str]:
        """Turn encoded targets back into text, without CTC collapsing.

        Positions at or beyond ``lengths[b]`` and the special tokens (blank, pad, start, end)
        are dropped, so ``decode_targets(*encode_batch(texts))`` gives ``texts`` back for
        character vocabularies (unknown characters come back as the unknown token).

        Args:
            targets: indices ``(B, L)``.
            lengths: valid positions per row ``(B,)``; all ``L`` by default.

        Returns:
            One str per row.

        Raises:
            TypeError: ``targets`` is not a tensor, or holds non-integer indices.
            ValueError: a wrong shape, indices or lengths out of range.
        """
        if not isinstance(targets, torch.Tensor):
            raise TypeError(
                f"Vocabulary.decode_targets: expected a tensor, got {type(targets).__name__}"
            )
        x = targets.detach()
        lengths = self._check_indices(x, lengths, "decode_targets")
        t = torch.arange(x.shape[1], device=x.device)
        valid = t.unsqueeze(0) < lengths.unsqueeze(1)
        keep = valid & ~torch.isin(x, self._special_indices.to(x.device))
        return self._rows(x, keep)

    def _rows(self, x: torch.Tensor, keep: torch.Tensor) -> list[str]:
        xs, ks = x.cpu().tolist(), keep.cpu().tolist()
        return self._join([[i for i, k in zip(row, kr) if k] for row, kr in zip(xs, ks)])

    # -- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description, for checkpoint metadata (see :meth:`from_dict`).

        Returns:
            The tokens, special tokens, space tokens and tokenizer (``"char"``, a
            sentencepiece model path, or None for a custom tokenizer, which cannot be stored).
        """
        if self.tokenizer is char_tokenizer:
            tok: Any = "char"
        elif isinstance(self.tokenizer, SentencePieceTokenizer):
            tok = {"sentencepiece": self.tokenizer.model_path}
        else:
            tok = None
        return {
            "tokens": [t for t in self.itos],
            "blank_token": self.blank_token,
            "pad_token": self.pad_token,
            "unknown_token": self.unknown_token,
            "start_token": self.start_token,
            "end_token": self.end_token,
            "space_tokens": list(self.space_tokens),
            "tokenizer": tok,
        }

    @classmethod
    def from_dict(
        cls, d: dict[str, Any], tokenizer: Callable[[str], list[str]] | None = None
    ) -> Vocabulary:
        """Rebuild a vocabulary from :meth:`to_dict`.

        Args:
            d: what :meth:`to_dict` returned.
            tokenizer: the tokenizer, required when the vocabulary used a custom one.

        Returns:
            The vocabulary, with the same indices.

        Raises:
            ValueError: ``d`` records a custom tokenizer and none is given.
        """
        tok = d.get("tokenizer", "char")
        if tokenizer is None:
            if isinstance(tok, dict) and "sentencepiece" in tok:
                tokenizer = SentencePieceTokenizer(tok["sentencepiece"])
            elif tok is None:
                raise ValueError(
                    "Vocabulary.from_dict: this vocabulary used a custom tokenizer, which cannot "
                    "be stored; pass it again as tokenizer=..."
                )
        return cls(
            d["tokens"],
            blank_token=d["blank_token"],
            pad_token=d.get("pad_token"),
            unknown_token=d.get("unknown_token"),
            start_token=d.get("start_token"),
            end_token=d.get("end_token"),
            tokenizer=tokenizer,
            space_tokens=tuple(d.get("space_tokens", ("▁", "|"))),
        )

    @classmethod
    def from_sentencepiece(cls, model_path: str, **kwargs: Any) -> Vocabulary:
        """A vocabulary over a sentencepiece model's pieces, as thunder builds it.

        The pieces keep the model's order; its ``<s>``, ``</s>``, ``<pad>`` and ``<unk>``
        pieces are left out and the blank is appended last.

        Args:
            model_path: the sentencepiece ``.model`` file.
            **kwargs: further :class:`Vocabulary` arguments (blank token, ...).

        Returns:
            The vocabulary, tokenizing with that model.
        """
        tokenizer = SentencePieceTokenizer(model_path)
        pieces = [p for p in tokenizer.pieces() if p not in _SENTENCEPIECE_SPECIALS]
        return cls(pieces, tokenizer=tokenizer, **kwargs)
