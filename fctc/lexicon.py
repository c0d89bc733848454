"""Lexicons: the words a beam search may output, and how each is spelled in model tokens.

The file format is flashlight's (wav2letter's, torchaudio's): one line per spelling, the word
first, then its tokens separated by spaces, ending with ``|``, the word separator::

    two	t w o |
    three	t h r e e |

``|`` stands for the vocabulary's word separator (the space of fctc's character vocabularies),
which cannot be written as a token in a whitespace-separated file. A line holding only a word
is spelled by its characters, so a plain word list is a lexicon too. A word may have several
spellings (several lines).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SEPARATOR", "lexicon_words", "write_lexicon", "read_lexicon"]

SEPARATOR = "|"
"""How a lexicon file writes the word separator token."""


def lexicon_words(texts: Iterable[str]) -> list[str]:
    """The distinct words of ``texts`` (split on whitespace), sorted.

    Args:
        texts: transcripts, e.g. a training manifest's ``text`` fields.

    Returns:
        The sorted list of distinct words.
    """
    return sorted({w for text in texts for w in text.split()})


def write_lexicon(path: str | os.PathLike, words: Iterable[str]) -> Path:
    """Write a lexicon file: each word spelled by its characters, then the separator.

    Args:
        path: the file to write (replaced when it exists).
        words: the words, one line each, in the order given.

    Returns:
        The path written.

    Raises:
        ValueError: a word is empty, holds whitespace, or holds the ``|`` separator.
    """
    lines = []
    for word in words:
        if not word or any(c.isspace() for c in word) or SEPARATOR in word:
            raise ValueError(
                f"write_lexicon: {word!r} cannot be a lexicon word (it must be non-empty, without "
                f"whitespace and without {SEPARATOR!r})"
            )
        lines.append(f"{word}\t{' '.join(word)} {SEPARATOR}\n")
    path = Path(path)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_lexicon(path: str | os.PathLike) -> dict[str, list[list[str]]]:
    """Read a lexicon file (or a plain word list): word -> its spellings, in file order.

    Each spelling is a list of tokens without the trailing separator (a ``|`` at the end of a
    line is optional and dropped; the decoder adds the separator to every spelling).

    Args:
        path: a lexicon file in flashlight's format, or one word per line.

    Returns:
        A dict from each word to the list of its spellings.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: a spelling is empty or holds ``|`` inside a word (names file:line), or the
            file holds no word.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lexicon {path} does not exist")
    lexicon: dict[str, list[list[str]]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        word, spelling = fields[0], fields[1:] or list(fields[0])
        if spelling[-1] == SEPARATOR:
            spelling = spelling[:-1]
        if not spelling or SEPARATOR in spelling:
            raise ValueError(
                f"{path}:{number}: the spelling of {word!r} must be its tokens followed by one "
                f"{SEPARATOR!r}, e.g. 'two\\tt w o {SEPARATOR}'; got {' '.join(fields[1:])!r}"
            )
        lexicon.setdefault(word, []).append(spelling)
    if not lexicon:
        raise ValueError(f"lexicon {path} holds no word")
    return lexicon
