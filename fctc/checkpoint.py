"""Checkpoints: pytrees (whole train states, or models alone) as safetensors + JSON metadata.

A checkpoint is one ``.safetensors`` file. Each tensor is stored under its readable pytree path
(``params.0.mconv.1.layer.0.weight``, ``opt_state.1.mu.…``); the file's header metadata holds a
JSON document with the format version, the kind of checkpoint, every leaf's shape and dtype,
and whatever the caller adds (model config, vocabulary, step). So:

* loading never unpickles anything: safetensors and JSON only;
* writes are atomic: the file is written beside its destination, flushed to disk, then renamed
  over it, so a crash leaves the previous checkpoint intact, never a half-written one;
* a truncated, corrupt or mismatched file gives a :class:`CheckpointError` naming what is wrong
  (the path, the missing and unexpected entries, the first shape or dtype that differs);
* restoring into a template (the state a fresh run would start from) rebuilds the exact pytree
  types (NamedTuple optimiser states and all) with the stored bits, so a resumed run continues
  bit for bit.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import optree
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import tree as _tree

__all__ = [
    "CheckpointError",
    "save",
    "load",
    "read_metadata",
    "save_train_state",
    "load_train_state",
    "save_model",
    "load_model",
    "leaf_names",
]

FORMAT = "fctc-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "fctc"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read, or does not match what was expected."""


def _entry_name(entry: Any) -> str:
    for attr in ("field", "key", "index", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_names(tree: Any) -> list[str]:
    """Readable, "."-joined names of the leaves of ``tree`` (NamedTuple fields by name)."""
    accessors = optree.tree_accessors(tree, namespace="fctc")
    return [".".join(_entry_name(e) for e in acc) for acc in accessors]


def _flatten(tree: Any, what: str) -> tuple[list[str], list[torch.Tensor], Any]:
    names = leaf_names(tree)
    leaves, spec = _tree.flatten(tree)
    for n, x in zip(names, leaves):
        if not isinstance(x, torch.Tensor):
            raise CheckpointError(
                f"{what}: leaf {n!r} is a {type(x).__name__}, not a tensor; checkpoints hold "
                "tensors only (store plain values in the metadata)"
            )
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise CheckpointError(f"{what}: several leaves share the names {dup[:5]}")
    return names, leaves, spec


def save(path: str | os.PathLike, tree: Any, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``tree`` (a pytree of tensors) to ``path`` atomically, with JSON ``metadata``."""
    path = Path(path)
    names, leaves, _ = _flatten(tree, f"save({path})")
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for n, x in zip(names, leaves):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        # safetensors refuses tensors that share storage; copy those (and non-contiguous ones).
        ptr = x.untyped_storage().data_ptr() if x.numel() else None
        if ptr in seen or not x.is_contiguous():
            x = x.clone(memory_format=torch.contiguous_format)
        elif ptr is not None:
            seen.add(ptr)
        tensors[n] = x
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fctc_version": _version(),
        "leaves": {n: {"shape": list(x.shape), "dtype": str(x.dtype)} for n, x in tensors.items()},
        "metadata": metadata or {},
    }
    try:
        header = {_META_KEY: json.dumps(doc)}
    except TypeError as e:
        raise CheckpointError(f"save({path}): metadata must be JSON-serialisable: {e}") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _version() -> str:
    from ._version import __version__

    return __version__


def _open(path: Path):
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types for bad files
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file (truncated or corrupt?): {e}"
        ) from e


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON document stored in a checkpoint (format, leaves, and the caller's metadata)."""
    path = Path(path)
    with _open(path) as f:
        raw = (f.metadata() or {}).get(_META_KEY)
    if raw is None:
        raise CheckpointError(f"checkpoint {path} has no fctc metadata; was it written by fctc?")
    doc = json.loads(raw)
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {doc.get('format')!r}, not {FORMAT!r}")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} uses format version {doc['format_version']}; this fctc reads up "
            f"to {FORMAT_VERSION}: upgrade fctc"
        )
    return doc


def load(
    path: str | os.PathLike,
    template: Any = None,
    device: torch.device | str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint; returns ``(tree, metadata)``.

    With a ``template`` (a pytree of the same structure, e.g. a freshly initialised state) the
    result has the template's exact structure and types, each tensor on the template leaf's
    device (or ``device``); names, shapes and dtypes must all match. Without one, the result is
    a nested dict built from the stored names.
    """
    path = Path(path)
    doc = read_metadata(path)
    stored = doc["leaves"]
    with _open(path) as f:
        keys = set(f.keys())
        if keys != set(stored):
            raise CheckpointError(f"checkpoint {path} is inconsistent: its tensors differ from its index")
        if template is None:
            flat = {n: _get(f, path, n, device) for n in stored}
            return _tree.unflatten_dict(flat), doc["metadata"]
        names, leaves, spec = _flatten(template, f"load({path})")
        missing = [n for n in names if n not in stored]
        unexpected = [n for n in stored if n not in set(names)]
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {path} does not match the template: missing {_short(missing)}, "
                f"unexpected {_short(unexpected)}"
            )
        out = []
        for n, ref in zip(names, leaves):
            info = stored[n]
            if list(ref.shape) != info["shape"] or str(ref.dtype) != info["dtype"]:
                raise CheckpointError(
                    f"checkpoint {path}: {n!r} is stored as {info['dtype']} {tuple(info['shape'])} "
                    f"but the template has {ref.dtype} {tuple(ref.shape)}"
                )
            out.append(_get(f, path, n, device if device is not None else ref.device))
    return _tree.unflatten(spec, out), doc["metadata"]


def _get(f, path: Path, name: str, device) -> torch.Tensor:
    try:
        x = f.get_tensor(name)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: tensor {name!r} cannot be read: {e}") from e
    return x if device is None else x.to(device)


def _short(names: list[str], n: int = 8) -> str:
    return str(names[:n] + ([f"... {len(names) - n} more"] if len(names) > n else []))


def save_train_state(
    path: str | os.PathLike, state: Any, metadata: dict[str, Any] | None = None
) -> Path:
    """Save a whole :class:`~fctc.train.TrainState` (metadata: config, vocabulary, ...)."""
    meta = dict(metadata or {})
    meta.setdefault("kind", "train_state")
    if hasattr(state, "step"):
        meta.setdefault("step", int(state.step))
    return save(path, state, meta)


def load_train_state(
    path: str | os.PathLike, template: Any, device: torch.device | str | None = None
) -> tuple[Any, dict[str, Any]]:
    """Restore a train state into ``template`` (e.g. ``step.init_state(key)``): exact resume."""
    return load(path, template, device)


def save_model(
    path: str | os.PathLike, params: Any, model_state: Any, metadata: dict[str, Any] | None = None
) -> Path:
    """Save a model alone (params and buffers, keyed like its ``state_dict``)."""
    meta = dict(metadata or {})
    meta.setdefault("kind", "model")
    return save(path, {"params": params, "state": model_state}, meta)


def load_model(
    path: str | os.PathLike, template: tuple[Any, Any] | None = None, device=None
) -> tuple[Any, Any, dict[str, Any]]:
    """Load ``(params, model_state, metadata)`` saved by :func:`save_model` (or from the
    ``params``/``model_state`` of a train-state checkpoint)."""
    doc = read_metadata(path)
    kind = doc["metadata"].get("kind")
    if kind == "train_state":
        tree, meta = load(path, None, device)
        return tree.get("params", {}), tree.get("model_state", {}), meta
    tmpl = None if template is None else {"params": template[0], "state": template[1]}
    tree, meta = load(path, tmpl, device)
    return tree.get("params", {}), tree.get("state", {}), meta
