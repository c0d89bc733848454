"""Checkpoint folders: what ``fctc eval`` / ``transcribe`` need, and what ``--resume`` needs.

A checkpoint folder holds

* ``model.safetensors``: the parameters and buffers (keyed like the thunder ``state_dict``),
  with JSON metadata: the run's whole configuration (its ``model`` section rebuilds the
  model, front end included), the vocabulary, the sample rate and the step;
* ``train_state.safetensors`` (in ``last/`` only): the whole :class:`fctc.train.TrainState`,
  with the data position (epoch and batch), the best validation CER so far and the metrics
  history in its metadata, so ``--resume`` continues bit for bit.

Nothing is ever unpickled: safetensors and JSON only. A folder is written beside its
destination and swapped in by renames, so an interruption while saving leaves the previous
checkpoint (``<name>.old``, picked up automatically) rather than a mix of two.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError

from .. import checkpoint as _ckpt
from .. import random as _random
from ..nn.core import Model
from ..text import Vocabulary
from .errors import ConfigError, RunError
from .recipe import build_model

__all__ = [
    "MODEL_FILE",
    "TRAIN_STATE_FILE",
    "LoadedModel",
    "save_checkpoint_dir",
    "resolve_checkpoint",
    "load_checkpoint_model",
]

MODEL_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.safetensors"


class LoadedModel(NamedTuple):
    """A model rebuilt from a checkpoint folder, ready for :func:`fctc.train.predict`.

    ``params`` and ``state`` are the model's parameters and buffers (running statistics), as
    ``model.init`` returns them and as :class:`fctc.nemo.NemoCheckpoint` names them.
    """

    model: Model
    params: Any
    state: Any
    vocabulary: Vocabulary
    config: dict[str, Any]
    metadata: dict[str, Any]


def save_checkpoint_dir(
    path: str | os.PathLike,
    params: Any,
    model_state: Any,
    model_metadata: dict[str, Any],
    train_state: Any = None,
    train_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder at ``path`` (replacing any previous one as a whole).

    Args:
        path: the folder (``runs/x/best``, ``runs/x/last``).
        params: the model's parameters.
        model_state: the model's buffers.
        model_metadata: JSON metadata of ``model.safetensors`` (config, vocabulary, ...).
        train_state: the whole train state, for a resumable checkpoint; None: the model only.
        train_metadata: JSON metadata of ``train_state.safetensors``.

    Returns:
        The folder written.

    Raises:
        RunError: the files could not be written (a full disk, say); the previous checkpoint
            at ``path`` is left as it was, and the partial copy removed.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        _ckpt.save_model(tmp / MODEL_FILE, params, model_state, model_metadata)
        if train_state is not None:
            _ckpt.save_train_state(tmp / TRAIN_STATE_FILE, train_state, train_metadata)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(_save_failed(path, e)) from None
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path


def _save_failed(path: Path, e: BaseException) -> str:
    """The message of a checkpoint that could not be written."""
    if isinstance(e, OSError):
        reason = e.strerror or str(e)
    else:  # safetensors reports the OS error inside its message: "... code: 28, ..."
        code = re.search(r"code: (\d+)", str(e))
        reason = os.strerror(int(code.group(1))) if code else str(e)
    kept = f"the previous checkpoint {path} is intact" if path.exists() else "nothing was saved"
    return (f"could not save the checkpoint {path}: {reason}; {kept}. Free some disk space "
            f"(or fix the folder's permissions), then continue with fctc train --resume "
            f"{path.parent}")


def _complete(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file()


def resolve_checkpoint(path: str | os.PathLike, need_train_state: bool = False) -> Path:
    """The checkpoint folder meant by ``path``: the folder itself, or in a run folder ``best/``
    (for evaluation) or ``last/`` (for resuming, or when there is no best). A folder whose save
    was interrupted is found under its ``.old`` name.

    Args:
        path: a checkpoint folder or a run folder.
        need_train_state: look for a resumable checkpoint (with ``train_state.safetensors``).

    Returns:
        The checkpoint folder.

    Raises:
        FileNotFoundError: nothing there, or no (resumable) checkpoint in it.
        ConfigError: ``path`` is a file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_file():
        raise ConfigError(
            f"checkpoint {path} is a file; pass the folder that holds it ({path.parent}) or a "
            "run folder"
        )
    order = ["last", "best"] if need_train_state else ["best", "last"]
    candidates = [path] + [path / n for n in order]
    candidates = [c for p in candidates for c in (p, p.with_name(p.name + ".old"))]
    for c in candidates:
        if _complete(c) and (not need_train_state or (c / TRAIN_STATE_FILE).is_file()):
            return c
    what = f"{TRAIN_STATE_FILE} (a resumable last/ checkpoint)" if need_train_state else MODEL_FILE
    raise FileNotFoundError(
        f"no checkpoint in {path}: expected {what} in it or in its best/ or last/ folder"
    )


def load_checkpoint_model(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> LoadedModel:
    """Rebuild the model saved in a checkpoint folder (or run folder) and load its weights.

    Args:
        path: a checkpoint folder or run folder (its ``best/``).
        device: where to put the tensors.

    Returns:
        A :class:`LoadedModel`.

    Raises:
        FileNotFoundError: no checkpoint there.
        fctc.checkpoint.CheckpointError: the file was not written by ``fctc train``.
    """
    folder = resolve_checkpoint(path)
    file = folder / MODEL_FILE
    meta = _ckpt.read_metadata(file)["metadata"]
    config = meta.get("config")
    if not isinstance(config, dict) or "vocabulary" not in meta:
        raise _ckpt.CheckpointError(
            f"{file} has no fctc train configuration or vocabulary in its metadata; it was not "
            "written by `fctc train` (load it with fctc.checkpoint.load_model instead)"
        )
    vocabulary = Vocabulary.from_dict(meta["vocabulary"])
    model = build_model(config["model"], vocabulary)
    template = model.init(_random.key(0))
    params, state, meta = _ckpt.load_model(file, template, device=device)
    return LoadedModel(model, params, state, vocabulary, config, meta)
