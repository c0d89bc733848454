"""fctc.lexicon: words of transcripts, flashlight's lexicon file format, word lists."""

from __future__ import annotations

import pytest

from fctc.lexicon import SEPARATOR, lexicon_words, read_lexicon, write_lexicon


def test_words_are_distinct_and_sorted():
    assert lexicon_words(["two three", "three  one", ""]) == ["one", "three", "two"]


def test_write_then_read_round_trips_in_flashlights_format(tmp_path):
    path = write_lexicon(tmp_path / "lexicon.txt", ["two", "oh"])
    assert path.read_text() == f"two\tt w o {SEPARATOR}\noh\to h {SEPARATOR}\n"
    assert read_lexicon(path) == {"two": [["t", "w", "o"]], "oh": [["o", "h"]]}


def test_flashlight_reads_the_file(tmp_path):
    dictionary = pytest.importorskip("flashlight.lib.text.dictionary")
    path = write_lexicon(tmp_path / "lexicon.txt", ["two", "oh"])
    words = dictionary.load_words(str(path))
    assert words["two"] == [["t", "w", "o", "|"]] and words["oh"] == [["o", "h", "|"]]


def test_word_lists_several_spellings_and_blank_lines(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("zero\n\nzero z i r o |\nread r e d\n")
    assert read_lexicon(path) == {"zero": [list("zero"), list("ziro")], "read": [list("red")]}


def test_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("two\tt w o |\nthree\t|\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: .*'three'"):
        read_lexicon(bad)
    bad.write_text("a\ta | b |\n")
    with pytest.raises(ValueError, match=r"bad.txt:1"):
        read_lexicon(bad)
    bad.write_text("\n\n")
    with pytest.raises(ValueError, match="no word"):
        read_lexicon(bad)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_lexicon(tmp_path / "missing.txt")
    for word in ("", "a b", "a|b"):
        with pytest.raises(ValueError, match="lexicon word"):
            write_lexicon(tmp_path / "out.txt", [word])
