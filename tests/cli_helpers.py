"""Helpers of the ``fctc`` command-line tests: the tiny recipe, config files, CSV rows, manifests.

The tiny recipe trains a model of a few thousand parameters on 12 bundled utterances, so a run
of a few steps takes seconds; ``tests/conftest.py`` builds the one complete run the CLI tests
share (``straight_run``).
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from fctc import data
from fctc.cli import main

TINY = {
    "data": {"limit": 12, "max_batch_seconds": 6.0},
    "model": {
        "encoder": {
            "filters": [8], "kernel_sizes": [5], "repeat": 1, "stem_filters": 8,
            "stem_kernel": 5, "final_filters": [8, 8], "final_kernel": 5,
        },
        "front_end": {"nfilt": 16},
        "spec_augment": {"freq_masks": 1, "freq_width": 4, "time_masks": 1, "time_width": 0.05},
    },
    "training": {"max_steps": 4, "log_every": 1, "eval_every": 2, "checkpoint_every": 1},
}
STEPS = TINY["training"]["max_steps"]


def write_config(path: Path, config: dict) -> Path:
    """Write ``config`` as YAML at ``path``; returns ``path``."""
    path.write_text(yaml.safe_dump(config))
    return path


def deep_update(base: dict, extra: dict) -> dict:
    """``extra`` merged into a copy of ``base``, section by section."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train_rows(run: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv``."""
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def tensors(folder: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file."""
    return load_file(str(folder / name))


def few_manifest(path: Path, n: int = 5, split: str = "test") -> Path:
    """A manifest of the first ``n`` bundled utterances of ``split``, with absolute paths."""
    source = data.bundled_manifests()[split]
    rows = [json.loads(line) for line in source.read_text().splitlines()[:n]]
    for r in rows:
        r["audio_filepath"] = str(source.parent / r["audio_filepath"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def bundled_audio(index: int = 0, split: str = "test") -> Path:
    """The audio file of a bundled utterance."""
    source = data.bundled_manifests()[split]
    row = json.loads(source.read_text().splitlines()[index])
    return source.parent / row["audio_filepath"]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``fctc *argv`` in this process: ``(exit status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()
