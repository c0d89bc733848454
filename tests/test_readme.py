"""Every fenced ``python`` block of README.md runs as printed (issue 15 item 10).

Each block runs alone, in fresh globals, in a folder holding the files the README names: a run
folder ``runs/x`` (the tests' tiny straight run), ``one.wav`` and ``two.flac`` (bundled clips),
``words.txt`` and ``lm.arpa`` (that run's lexicon and LM) and ``QuartzNet5x5LS-En.nemo`` (an
archive built as tests/test_nemo.py builds them). A block the README adds is run too: the
test fails when it does not know which block is which, so new blocks get a look here. The
torchrun block also runs under ``torchrun`` with two gloo processes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

import fctc.testing

from cli_helpers import bundled_audio

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)

# What each block is, by a line only it has.
KINDS = {
    "transcribe": 'model = fctc.load("runs/x")',
    "first_look": "def loss(params, state, key):",
    "custom_loop": 'fctc.checkpoint.save_train_state("run.safetensors"',
    "update": "optim.update_and_apply(tx, grads, opt_state, params, donate=True)",
    "property": "def test_block(params_state, batch):",
    "nemo": 'fctc.nemo.load_nemo("QuartzNet5x5LS-En.nemo")',
    "torchrun": "dist.init_from_env()",
    "porting": "state = step.observe(state, epoch=epoch)",
    "waveform": "audio.augment_waveform(",
}


def _kind(code: str) -> str:
    found = [k for k, marker in KINDS.items() if marker in code]
    assert len(found) == 1, f"a README python block this test does not know:\n{code}"
    return found[0]


def test_every_block_is_known_once():
    assert sorted(_kind(code) for code in BLOCKS) == sorted(KINDS)


def _nemo_archive(path: Path) -> Path:
    from test_nemo import _pairs, _reference_quartznet, _weights, _write, quartznet_config, quartznet_jasper

    weights = _weights(_reference_quartznet(), _pairs(quartznet_jasper()))
    return _write(path, quartznet_config(), weights)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, straight_run):
    run, _, _ = straight_run
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(run, root / "runs" / "x")
    audio, rate = sf.read(str(bundled_audio(0)))
    sf.write(str(root / "one.wav"), audio, rate)
    shutil.copy(bundled_audio(1), root / "two.flac")
    shutil.copy(run / "lexicon.txt", root / "words.txt")
    shutil.copy(run / "lm.arpa", root / "lm.arpa")
    _nemo_archive(root / "QuartzNet5x5LS-En.nemo")
    return root


def _run(code: str, workdir: Path, monkeypatch) -> dict:
    monkeypatch.chdir(workdir)
    env: dict = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), env)
    return env


@pytest.mark.parametrize("index", range(len(BLOCKS)),
                         ids=[_kind(code) for code in BLOCKS])
def test_block_runs_as_printed(index, workdir, monkeypatch, capsys):
    code = BLOCKS[index]
    kind = _kind(code)
    env = _run(code, workdir, monkeypatch)
    out = capsys.readouterr().out
    if kind == "first_look":
        assert "layer.0.weight" in out and "layer.1.running_mean" not in out
    elif kind == "update":  # the three forms agree
        for name in ("fast_params", "params"):
            fctc.testing.assert_trees_allclose(env[name], env["new_params"], rtol=1e-6, atol=1e-7)
    elif kind == "transcribe":
        assert env["model"].transcribe(["one.wav"], decoder="greedy")[0] in out
    elif kind == "custom_loop":
        assert (workdir / "run.safetensors").is_file() and "step 1: loss" in out
    elif kind == "nemo":
        assert isinstance(env["texts"], list) and len(env["texts"]) == 1
        assert "encoder.0.mconv.0.conv.weight" in env["thunder_keys"]
    elif kind == "torchrun":
        assert out.startswith("step 1: loss")
    elif kind == "porting":  # three epochs reported, three values, stats and weights logged
        state, metrics = env["state"], env["metrics"]
        assert int(state.observed.value_count) == 3 and int(state.observed.epoch) == 2
        assert set(metrics) >= {"loss", "stats/mae", "weight"} and float(metrics["weight"]) == 8.0
    elif kind == "waveform":  # speed changes the lengths, the chain keeps the padding zero
        assert env["y"].shape[1] == int(env["y_lengths"].max())
        assert env["z"].shape[1] == int(env["z_lengths"].max())
        pad = torch.arange(env["z"].shape[1])[None, :] >= env["z_lengths"][:, None]
        assert not env["z"][pad].any()


def test_torchrun_block_runs_under_torchrun(workdir):
    code = next(c for c in BLOCKS if _kind(c) == "torchrun")
    (workdir / "train.py").write_text(code)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "train.py"], cwd=workdir, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert steps and steps[0].startswith("step 1: loss")  # rank 0 alone prints
    assert len(steps) == len({line.split(":")[0] for line in steps})
