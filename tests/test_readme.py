"""The README's first example runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_look_example_runs(capsys):
    text = README.read_text()
    section = text.split("## A first look: init, apply, grad", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "layer.0.weight" in out and "layer.1.running_mean" not in out
