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


def test_update_and_apply_snippet_runs():
    """The optimiser snippet runs on a small tree, and its three forms agree."""
    import torch

    import fctc
    import fctc.optim as optim
    import fctc.testing

    text = README.read_text()
    section = text.split("Writing the update yourself", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    params = {"w": torch.randn(8, 4), "b": torch.zeros(4)}
    grads = {"w": torch.randn(8, 4), "b": torch.ones(4)}
    schedule = optim.linear_schedule(0.0, 1e-2, 10)
    opt_state = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(schedule)).init(params)
    env = {"optim": optim, "schedule": schedule, "grads": grads, "params": params, "opt_state": opt_state}
    lines = code.strip().splitlines()
    exec(compile("\n".join(lines[:3]), "README.md", "exec"), env)
    two_calls = env["params"]
    for line in lines[3:]:
        env.update(params=params, opt_state=opt_state, grads=fctc.tree.map(torch.clone, grads))
        exec(compile(line, "README.md", "exec"), env)
        fctc.testing.assert_trees_allclose(env["params"], two_calls, rtol=1e-6, atol=1e-7)
