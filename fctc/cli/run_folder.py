"""Checks on the folders and files a command is about to write, made before any work starts.

* A new run refuses a folder that already holds one (``--resume`` continues it).
* ``--resume`` refuses a run whose ``config.yaml`` was edited after the run saved its
  configuration: a resumed run continues with the configuration in its checkpoint (that is
  what makes it continue exactly), so an edit would be silently ignored. The message names
  the first differing key and how to train with the edited file instead.
* An output file (``fctc eval --output``) must be creatable: its folder exists and is
  writable, so a typo fails at once rather than after the whole evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["check_new_run", "check_unedited", "check_output_file", "config_differences"]


def check_new_run(out: Path) -> None:
    """Refuse to start a new run in a folder that holds one.

    Args:
        out: the run folder.

    Raises:
        ConfigError: it has a ``last/`` checkpoint.
    """
    if (out / "last").exists() or (out / "last.old").exists():
        raise ConfigError(f"{out} already holds a run; continue it with --resume {out} or "
                          "choose another --out")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The keys where two configurations differ.

    Args:
        a: one configuration.
        b: the other.

    Returns:
        ``(dotted key, value in a, value in b)`` for each, sorted by key (a key missing on
        one side has the value ``"<missing>"`` there).
    """
    fa, fb = _flat(a), _flat(b)
    missing = "<missing>"
    return [(k, fa.get(k, missing), fb.get(k, missing)) for k in sorted(set(fa) | set(fb))
            if fa.get(k, missing) != fb.get(k, missing)]


def check_unedited(out: Path, saved: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to resume a run whose ``config.yaml`` no longer matches its checkpoint.

    Args:
        out: the run folder.
        saved: the configuration in the checkpoint.
        checkpoint: the checkpoint folder (for the message).

    Raises:
        ConfigError: ``config.yaml`` differs from ``saved`` (or is not valid YAML).
    """
    path = out / "config.yaml"
    if not path.is_file():
        return
    try:
        on_disk = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        on_disk = None
    if on_disk == saved:
        return
    diffs = config_differences(on_disk, saved) if isinstance(on_disk, dict) else []
    what = (f"{diffs[0][0]}: {diffs[0][1]!r} there, {diffs[0][2]!r} in the checkpoint"
            + (f", and {len(diffs) - 1} more" if len(diffs) > 1 else "")) if diffs else "unreadable"
    raise ConfigError(
        f"{path} was edited after the run saved its configuration ({what}); --resume continues "
        f"with the configuration saved in {checkpoint}, so undo the edit to resume, or train "
        f"anew with the edited file: fctc train --config {path} --out NEW_FOLDER"
    )


def check_output_file(path: Path, flag: str) -> None:
    """Refuse an output file that could not be written.

    Args:
        path: the file.
        flag: the flag that named it (for the message).

    Raises:
        ConfigError: its folder does not exist or cannot be written, or it is a folder.
    """
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} {path}: cannot write there (permission denied); choose "
                          "another file")
