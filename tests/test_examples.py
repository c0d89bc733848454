"""The examples run as documented (with small step counts, in-process to keep them quick)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import fctc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_custom_loop_trains_saves_and_evaluates(tmp_path, monkeypatch, capsys):
    out = tmp_path / "loop.safetensors"
    argv = ["custom_loop.py", "--steps", "3", "--limit", "12", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / "custom_loop.py"), run_name="__main__")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("step 3: loss ")
    assert printed[-1].startswith("validation CER ") and str(out) in printed[-1]
    meta = fctc.checkpoint.read_metadata(out)["metadata"]
    assert meta["kind"] == "train_state" and meta["step"] == 3
    vocab = fctc.text.Vocabulary.from_dict(meta["vocabulary"])
    assert vocab.itos[:-1] == list(fctc.corpus.CHARACTERS)


def test_property_test_example_passes(capsys):
    runpy.run_path(str(EXAMPLES / "property_test.py"), run_name="__main__")
    assert capsys.readouterr().out.strip() == "all properties hold"
