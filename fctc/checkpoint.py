"""Checkpoints: pytrees (whole train states, or models alone) as safetensors + JSON metadata.

A checkpoint is one ``.safetensors`` file. Each tensor is stored under its readable pytree path
(``params.0.mconv.1.layer.0.weight``, ``opt_state.1.mu.…``); the file's header metadata holds a
JSON document with the format version, every leaf's shape and dtype, the SHA-256 of every
tensor's stored bytes, a SHA-256 of the document itself, and whatever the caller adds (model
config, vocabulary, step). So:

* loading never unpickles anything: safetensors and JSON only;
* writes are atomic: the file is written beside its destination, flushed to disk, then renamed
  over it, so a crash leaves the previous checkpoint intact, never a half-written one; the file
  gets the mode a new file gets (``0o666`` minus the umask: ``0o644`` under umask ``022``);
* every load verifies what it reads: a flipped bit in a tensor, an edited metadata value, a
  truncated or otherwise corrupt file gives a :class:`CheckpointError` naming the file (and the
  tensor, or the first name, shape or dtype that differs). The checksums catch corruption (bit
  rot, a bad copy, a hand edit), not a deliberate forgery: anyone can recompute a SHA-256;
* restoring into a template (the state a fresh run would start from) rebuilds the exact pytree
  types (NamedTuple optimiser states and all) with the stored bits, so a resumed run continues
  bit for bit; ``require_finite=True`` refuses a model whose parameters hold NaN or inf.

Files written before checksums existed (format version 1, fctc 0.1.0) still load, with a
:class:`CheckpointWarning` saying that they cannot be verified: refusing them would strand every
trained model and resumable run of that version, while their structure (names, shapes, dtypes,
file size) is still checked. Saving one again adds the checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import warnings
from pathlib import Path
from typing import Any

import optree
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import tree as _tree

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "save",
    "load",
    "read_metadata",
    "check_finite",
    "save_train_state",
    "load_train_state",
    "save_model",
    "load_model",
    "leaf_names",
]

FORMAT = "fctc-checkpoint"
FORMAT_VERSION = 2
_CHECKSUMS_SINCE = 2  # the first format version that stores checksums
_META_KEY = "fctc"
_CHECKSUM_KEY = "sha256"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read, or does not match what was expected."""


class CheckpointWarning(UserWarning):
    """A checkpoint was read but could not be fully verified (it predates checksums)."""


def _entry_name(entry: Any) -> str:
    for attr in ("field", "key", "index", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_names(tree: Any) -> list[str]:
    """Readable names of the leaves of ``tree``, the keys they are stored under.

    Args:
        tree: any pytree (nested dicts, lists, NamedTuples such as optimiser states).

    Returns:
        One ``"."``-joined path per leaf, in flattening order (NamedTuple fields by name).
    """
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


def _digest(x: torch.Tensor) -> str:
    """SHA-256 of a contiguous CPU tensor's bytes (what safetensors stores for it)."""
    data = x.reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(data)).hexdigest()


def _digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """:func:`_digest` of every tensor, by name."""
    return {n: _digest(x) for n, x in tensors.items()}


def _document_digest(doc: dict[str, Any]) -> str:
    """SHA-256 of the document's canonical JSON, without the document digest itself."""
    body = dict(doc)
    body[_CHECKSUM_KEY] = {k: v for k, v in doc[_CHECKSUM_KEY].items() if k != "document"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def save(path: str | os.PathLike, tree: Any, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``tree`` to ``path`` atomically, with checksums and JSON ``metadata``.

    Args:
        path: the ``.safetensors`` file to write (its folder is created if needed); an
            existing file is replaced only once the new one is complete on disk.
        tree: a pytree of tensors (any device; stored from the CPU).
        metadata: JSON-serialisable values stored beside the tensors (config, step, ...).

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        CheckpointError: a leaf is not a tensor, two leaves share a name, or ``metadata`` is
            not JSON-serialisable.
    """
    path = Path(path)
    tensors = _stored_tensors(tree, f"save({path})")
    header = _header(tensors, metadata, path)
    _write_atomically(path, tensors, header)
    return path


def _stored_tensors(tree: Any, what: str) -> dict[str, torch.Tensor]:
    """The leaves as safetensors stores them: detached, on the CPU, contiguous, unshared."""
    names, leaves, _ = _flatten(tree, what)
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
    return tensors


def _header(tensors: dict[str, torch.Tensor], metadata: Any, path: Path) -> dict[str, str]:
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fctc_version": _version(),
        "leaves": {n: {"shape": list(x.shape), "dtype": str(x.dtype)} for n, x in tensors.items()},
        "metadata": metadata or {},
    }
    try:
        doc = json.loads(json.dumps(doc))  # the form a reader gets back (tuples as lists, ...)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"save({path}): metadata must be JSON-serialisable: {e}") from e
    doc[_CHECKSUM_KEY] = {"tensors": _digests(tensors)}
    doc[_CHECKSUM_KEY]["document"] = _document_digest(doc)
    return {_META_KEY: json.dumps(doc)}


def _write_atomically(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 minus the umask, as the kernel applied it
    try:
        save_file(tensors, str(tmp), metadata=header)
        os.chmod(tmp, mode)  # safetensors writes its files 0o600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _new_temp_file(path: Path) -> Path:
    """A new empty file beside ``path``, created with mode ``0o666`` minus the umask (the mode
    of any new file; ``tempfile.mkstemp`` would give ``0o600``)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise CheckpointError(f"save({path}): could not create a temporary file beside it")


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


def _modified(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path}: {what}: the file is corrupt (bit rot, a bad copy) or was modified; "
        "restore it from a backup or use an earlier checkpoint"
    )


def _read_document(path: Path) -> dict[str, Any]:
    """The checkpoint's fctc document, checked (format, version, checksum of the document)."""
    with _open(path) as f:
        raw = (f.metadata() or {}).get(_META_KEY)
        shapes = {n: f.get_slice(n).get_shape() for n in f.keys()}
    if raw is None:
        raise CheckpointError(f"checkpoint {path} has no fctc metadata; was it written by fctc?")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise _modified(path, f"its fctc metadata is not valid JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CheckpointError(f"checkpoint {path} has format {got!r}, not {FORMAT!r}")
    version = doc.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _modified(path, f"its format version {version!r} is not a positive int")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} uses format version {version}; this fctc reads up to "
            f"{FORMAT_VERSION}: upgrade fctc"
        )
    if not isinstance(doc.get("leaves"), dict) or not isinstance(doc.get("metadata"), dict):
        raise _modified(path, "its fctc metadata lacks the leaf index or the caller's metadata")
    _match_index(path, doc["leaves"], shapes)
    if version < _CHECKSUMS_SINCE and _CHECKSUM_KEY not in doc:
        _warn_unverified(path, doc, version)
        return doc
    _verify_document(path, doc)
    return doc


# The files already warned about: (resolved path, modification time, size).
_WARNED: set[tuple[str, int, int]] = set()


def _warn_unverified(path: Path, doc: dict[str, Any], version: int) -> None:
    """Warn that ``path`` has no checksums, once per file and version of it: a command that
    reads the document and then the tensors (or a resume, which reads it three times) says it
    once."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None  # cannot tell the file apart: warn every time
    if key is not None:
        if key in _WARNED:
            return
        _WARNED.add(key)
    warnings.warn(
        f"checkpoint {path} was written by fctc {doc.get('fctc_version', '?')} (format "
        f"version {version}), which stored no checksums: its contents cannot be verified; "
        "save it again with this fctc to add them",
        CheckpointWarning,
        stacklevel=4,
    )


def _match_index(path: Path, leaves: dict[str, Any], shapes: dict[str, list[int]]) -> None:
    """The file's own tensor index (names, shapes) must be the document's."""
    if set(shapes) != set(leaves):
        raise _modified(path, "its tensors differ from its index")
    for n, shape in shapes.items():
        info = leaves[n] if isinstance(leaves[n], dict) else {}
        if list(shape) != info.get("shape"):
            raise _modified(
                path, f"tensor {n!r} has shape {tuple(shape)}, its index says {info.get('shape')}"
            )


def _verify_document(path: Path, doc: dict[str, Any]) -> None:
    sums = doc.get(_CHECKSUM_KEY)
    if doc["format_version"] < _CHECKSUMS_SINCE or not isinstance(sums, dict):
        raise _modified(path, "its checksums are missing")
    tensors, digest = sums.get("tensors"), sums.get("document")
    if not isinstance(tensors, dict) or set(tensors) != set(doc["leaves"]):
        raise _modified(path, "its tensor checksums do not cover its tensors")
    if not isinstance(digest, str) or digest != _document_digest(doc):
        raise _modified(path, "its metadata does not match its checksum (SHA-256)")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON document stored in a checkpoint, verified against its checksum.

    Args:
        path: a checkpoint written by :func:`save` (or the functions built on it).

    Returns:
        The document: ``format``, ``format_version``, ``fctc_version``, ``leaves`` (name ->
        shape and dtype), ``sha256`` (the checksums) and ``metadata`` (the caller's). The
        tensors are not read here; each is verified when it is loaded.

    Raises:
        CheckpointError: the file is missing, unreadable, not an fctc checkpoint, of a newer
            format, or its document does not match its checksum.
    """
    return _read_document(Path(path))


def check_finite(tree: Any, where: str | None = None) -> None:
    """Refuse a pytree whose floating tensors hold NaN or infinity.

    A diverged run can save NaN weights; resuming from them only trains on garbage, so resume
    checks the model before its first step.

    Args:
        tree: a pytree of tensors (non-floating leaves are skipped).
        where: what the tree is (e.g. ``"checkpoint run/last/train_state.safetensors"``),
            put in front of the message.

    Raises:
        CheckpointError: naming the first leaf (in :func:`leaf_names` order) that holds a
            non-finite value, and how many it holds.
    """
    for name, x in zip(leaf_names(tree), _tree.leaves(tree)):
        if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.is_complex()):
            continue
        if bool(torch.isfinite(x).all()):
            continue
        bad = int((~torch.isfinite(x)).sum())
        prefix = f"{where}: " if where else ""
        raise CheckpointError(
            f"{prefix}{name!r} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf) "
            f"of {x.numel()}; the run diverged before this was saved: use an earlier checkpoint"
        )


def load(
    path: str | os.PathLike,
    template: Any = None,
    device: torch.device | str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint, verifying every tensor against its checksum.

    Args:
        path: a checkpoint written by :func:`save`.
        template: a pytree of the same structure (e.g. a freshly initialised state): the
            result then has the template's exact structure and types, and names, shapes and
            dtypes must all match. Without one, the result is a nested dict built from the
            stored names.
        device: where the tensors go; by default each template leaf's device (the CPU
            without a template).

    Returns:
        ``(tree, metadata)``: the restored pytree and the caller's metadata.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, a tensor or the metadata
            does not match its checksum, or the file does not match ``template``.
    """
    path = Path(path)
    doc = _read_document(path)
    return _load(path, doc, template, device), doc["metadata"]


def _load(path: Path, doc: dict[str, Any], template: Any, device) -> Any:
    stored = doc["leaves"]
    with _open(path) as f:
        if template is None:
            names, devices, spec = list(stored), [device] * len(stored), None
        else:
            names, leaves, spec = _flatten(template, f"load({path})")
            _match_template(path, names, leaves, stored)
            devices = [device if device is not None else ref.device for ref in leaves]
        tensors = {n: _get(f, path, n, stored[n]) for n in names}
    digests = doc.get(_CHECKSUM_KEY, {}).get("tensors")  # None in files without checksums
    if digests is not None:
        actual = _digests(tensors)
        for n in names:
            if actual[n] != digests[n]:
                raise _modified(path, f"tensor {n!r} does not match its checksum (SHA-256)")
    out = [x if d is None else x.to(d) for x, d in zip(tensors.values(), devices)]
    if spec is None:
        return _tree.unflatten_dict(dict(zip(names, out)))
    return _tree.unflatten(spec, out)


def _match_template(path: Path, names: list[str], leaves: list, stored: dict) -> None:
    missing = [n for n in names if n not in stored]
    unexpected = [n for n in stored if n not in set(names)]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the template: missing {_short(missing)}, "
            f"unexpected {_short(unexpected)}"
        )
    for n, ref in zip(names, leaves):
        info = stored[n]
        if list(ref.shape) != info["shape"] or str(ref.dtype) != info["dtype"]:
            raise CheckpointError(
                f"checkpoint {path}: {n!r} is stored as {info['dtype']} {tuple(info['shape'])} "
                f"but the template has {ref.dtype} {tuple(ref.shape)}"
            )


def _get(f, path: Path, name: str, info: dict) -> torch.Tensor:
    try:
        x = f.get_tensor(name)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: tensor {name!r} cannot be read: {e}") from e
    if list(x.shape) != info.get("shape") or str(x.dtype) != info.get("dtype"):
        raise _modified(
            path, f"tensor {name!r} is stored as {x.dtype} {tuple(x.shape)}, its index says "
            f"{info.get('dtype')} {info.get('shape')}"
        )
    return x


def _short(names: list[str], n: int = 8) -> str:
    return str(names[:n] + ([f"... {len(names) - n} more"] if len(names) > n else []))


def save_train_state(
    path: str | os.PathLike, state: Any, metadata: dict[str, Any] | None = None
) -> Path:
    """Save a whole :class:`~fctc.train.TrainState`, for an exact resume.

    Args:
        path: the file to write.
        state: the train state (params, model and optimiser state, step, key, ...).
        metadata: JSON values to keep with it (config, vocabulary, data position); ``kind``
            defaults to ``"train_state"`` and ``step`` to ``int(state.step)``.

    Returns:
        ``path`` (a :class:`~pathlib.Path`); raises as :func:`save` does.
    """
    meta = _with_kind(metadata, "train_state")
    if hasattr(state, "step"):
        meta.setdefault("step", int(state.step))
    return save(path, state, meta)


def _with_kind(metadata: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """A copy of the caller's metadata, with ``kind`` set unless the caller set it."""
    meta = dict(metadata or {})
    meta.setdefault("kind", kind)
    return meta


def _model_part(tree: Any) -> Any:
    """The parameters and buffers of a train state (the whole tree for anything else)."""
    if hasattr(tree, "params") and hasattr(tree, "model_state"):
        return {"params": tree.params, "model_state": tree.model_state}
    return tree


def load_train_state(
    path: str | os.PathLike,
    template: Any,
    device: torch.device | str | None = None,
    require_finite: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Restore a train state into ``template`` (e.g. ``step.init_state(key)``): exact resume.

    Args:
        path: a file written by :func:`save_train_state`.
        template: a train state of the same structure; its values are not used.
        device: where the tensors go (default: each template leaf's device).
        require_finite: refuse the file when the model's parameters or buffers
            (``params``, ``model_state``) hold NaN or inf; optimiser state is not checked
            (some, such as a plateau schedule's best value, start at infinity).

    Returns:
        ``(state, metadata)``.

    Raises:
        CheckpointError: as :func:`load`, or a non-finite value with ``require_finite``.
    """
    state, meta = load(path, template, device)
    if require_finite:
        check_finite(_model_part(state), f"checkpoint {path}")
    return state, meta


def save_model(
    path: str | os.PathLike, params: Any, model_state: Any, metadata: dict[str, Any] | None = None
) -> Path:
    """Save a model alone: params and buffers, stored as ``params.*`` and ``state.*``.

    Args:
        path: the file to write.
        params: the model's parameter pytree (keyed like its ``state_dict``).
        model_state: its buffers (running statistics, ...).
        metadata: JSON values to keep with it; ``kind`` defaults to ``"model"``.

    Returns:
        ``path`` (a :class:`~pathlib.Path`); raises as :func:`save` does.
    """
    return save(path, {"params": params, "state": model_state}, _with_kind(metadata, "model"))


def load_model(
    path: str | os.PathLike,
    template: tuple[Any, Any] | None = None,
    device: torch.device | str | None = None,
    require_finite: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """Load a model saved by :func:`save_model`, or the model inside a train-state file.

    Args:
        path: a model or train-state checkpoint.
        template: ``(params, model_state)`` of the same structure, to restore exact types and
            check shapes (ignored for a train-state file, which is read without one).
        device: where the tensors go.
        require_finite: refuse parameters or buffers that hold NaN or inf.

    Returns:
        ``(params, model_state, metadata)``.

    Raises:
        CheckpointError: as :func:`load`, or a non-finite value with ``require_finite``.
    """
    path = Path(path)
    doc = _read_document(path)
    if doc["metadata"].get("kind") == "train_state":
        tree = _load(path, doc, None, device)
        parts = {"params": tree.get("params", {}), "model_state": tree.get("model_state", {})}
    else:
        tmpl = None if template is None else {"params": template[0], "state": template[1]}
        tree = _load(path, doc, tmpl, device)
        parts = {"params": tree.get("params", {}), "state": tree.get("state", {})}
    if require_finite:
        check_finite(parts, f"checkpoint {path}")
    params, model_state = parts.values()
    return params, model_state, doc["metadata"]
