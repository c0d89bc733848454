"""Reading a ``.nemo`` archive in memory: its config, its weights (never unpickling code), its
tokenizer model.

A ``.nemo`` file is a tar archive (often gzipped, member names often under ``./``). It is never
extracted to disk: members are read by name, so odd member paths cannot write anywhere.
``model_weights.ckpt`` is a torch pickle, which could run arbitrary code if unpickled naively;
it is read with ``torch.load(..., weights_only=True)``, which accepts tensors and plain
containers only.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import yaml

__all__ = ["NemoArchive", "read_nemo_archive", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "model_config.yaml"
"""The archive member holding the model's hyperparameters."""
WEIGHTS_NAME = "model_weights.ckpt"
"""The archive member holding the model's ``state_dict``."""


class NemoArchive(NamedTuple):
    """The raw contents of a ``.nemo`` file.

    Args:
        config: the parsed ``model_config.yaml``.
        weights: the ``state_dict`` (NeMo's key names).
        tokenizer_model: the sentencepiece model's bytes; None when absent.
    """

    config: dict
    weights: dict[str, torch.Tensor]
    tokenizer_model: bytes | None


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _read_members(path: Path) -> tuple[bytes, bytes, bytes | None]:
    """The config, weights and tokenizer bytes of the tar archive at ``path``."""
    with tarfile.open(path, mode="r:*") as tar:
        members = {}
        for m in tar.getmembers():
            if m.isfile():
                members[_member_name(m.name)] = m
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if n not in members]
        if missing:
            raise ValueError(
                f"read_nemo_archive: {str(path)!r} lacks {missing}; a .nemo archive holds "
                f"{CONFIG_NAME} and {WEIGHTS_NAME} (found: {sorted(members)})"
            )

        def read(name: str) -> bytes:
            f = tar.extractfile(members[name])
            if f is None:  # pragma: no cover - isfile() members always have data
                raise ValueError(f"read_nemo_archive: member {name!r} has no data")
            return f.read()

        config_bytes = read(CONFIG_NAME)
        weights_bytes = read(WEIGHTS_NAME)
        tok_names = sorted(n for n in members if n.endswith("tokenizer.model"))
        tokenizer = read(tok_names[0]) if tok_names else None
        return config_bytes, weights_bytes, tokenizer


def read_nemo_archive(path: str | os.PathLike) -> NemoArchive:
    """Read a ``.nemo`` archive (tar or tar.gz) in memory: config, weights, tokenizer model.

    Args:
        path: the ``.nemo`` file.

    Returns:
        Its contents; the weights are loaded with ``torch.load(..., weights_only=True)``
        (never an arbitrary unpickle) on the CPU.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: it is not a complete ``.nemo`` archive (not a tar, truncated or corrupt
            data, missing members, unreadable config or weights); the message names the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_nemo_archive: no such file: {str(path)!r}")
    try:
        config_bytes, weights_bytes, tokenizer = _read_members(path)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ValueError(
            f"read_nemo_archive: {str(path)!r} is not a readable .nemo archive (a tar or tar.gz "
            f"file); it may be truncated or corrupt: {type(e).__name__}: {e}"
        ) from None
    try:
        config = yaml.safe_load(config_bytes.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"read_nemo_archive: {CONFIG_NAME} is not valid YAML: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"read_nemo_archive: {CONFIG_NAME} must hold a mapping, got {type(config).__name__}"
        )
    return NemoArchive(config, _load_weights(weights_bytes), tokenizer)


def _load_weights(data: bytes) -> dict[str, torch.Tensor]:
    try:
        weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(
            f"read_nemo_archive: {WEIGHTS_NAME} could not be loaded as tensors with "
            f"torch.load(weights_only=True) (corrupt, or it holds objects other than tensors, "
            f"which fctc refuses to unpickle): {type(e).__name__}: {e}"
        ) from None
    if isinstance(weights, Mapping) and "state_dict" in weights and len(weights) <= 8:
        weights = weights["state_dict"]  # a Lightning checkpoint rather than a bare state_dict
    if not isinstance(weights, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise ValueError(
            f"read_nemo_archive: {WEIGHTS_NAME} must hold a state_dict (str -> tensor), got "
            f"{type(weights).__name__}"
        )
    return dict(weights)
