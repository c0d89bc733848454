"""Run configurations: the default recipe (``fctc/configs/default.yaml``) merged with a user's file.

A configuration is a nested dict of plain values (JSON- and YAML-serialisable, so it travels
inside checkpoints). The default file lists every key a user may set, and a key it does not
list is an error that names the key (with its ``file:line``) and the keys allowed there; the
values are checked against :data:`fctc.cli.schema.RULES`. Sections that are keyword arguments
of a function (the encoder, the front end, SpecAugment) are replaced whole rather than merged;
their keys are checked against the function when the model is built.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .schema import validate_config

__all__ = [
    "ConfigError",
    "REPLACED_WHOLE",
    "default_config",
    "load_config",
    "merge_config",
    "dump_config",
    "key_lines",
]

REPLACED_WHOLE = frozenset(
    {"model.encoder", "model.front_end", "model.spec_augment", "model.warp"}
    | {f"model.waveform.{step}" for step in ("speed", "reverb", "noise", "band_limit", "gain")}
)
"""Dotted paths of the sections a user's value replaces instead of being merged into."""


def default_config() -> dict[str, Any]:
    """The default recipe, read from the packaged ``fctc/configs/default.yaml``.

    Returns:
        A fresh nested dict (the caller may modify it).
    """
    text = resources.files("fctc").joinpath("configs/default.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def merge_config(base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``override`` merged over ``base`` (neither is modified); unknown keys raise ConfigError.

    Nested sections merge key by key, except those in :data:`REPLACED_WHOLE`, which the
    override replaces. A section may be set to ``null`` only where the default is ``null`` or
    the section is replaced whole (``model.spec_augment: null`` turns SpecAugment off).

    Args:
        base: the configuration merged into (its keys are the allowed ones).
        override: the user's values.
        where: the dotted path of these sections, for messages and :data:`REPLACED_WHOLE`.

    Returns:
        A new merged configuration.

    Raises:
        ConfigError: an unknown key (named, with the keys allowed there), a section that is
            not a mapping, or a non-mapping value for a section replaced whole.
    """
    if not isinstance(override, dict):
        raise ConfigError(
            f"config{' section ' + repr(where) if where else ''} must be a mapping of keys to "
            f"values, got {type(override).__name__}: {override!r}", key=where or None
        )
    out = copy.deepcopy(base)
    unknown = sorted(str(k) for k in override if k not in base)
    if unknown:
        place = f"in section {where!r}" if where else "at the top level"
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {unknown} {place}; "
            f"allowed: {sorted(base)}", key=f"{where}.{unknown[0]}" if where else unknown[0]
        )
    for key, value in override.items():
        path = f"{where}.{key}" if where else key
        default = base[key]
        if path in REPLACED_WHOLE:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config key {path!r} must be a mapping or null, got {value!r}",
                                  key=path)
            out[key] = copy.deepcopy(value)
        elif isinstance(default, dict):
            out[key] = merge_config(default, value, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def key_lines(text: str, source: str) -> dict[str, str]:
    """Where each key of a YAML document is set: dotted key -> ``"source:line"``.

    Args:
        text: the YAML document.
        source: its name in the result (the file's path).

    Returns:
        The 1-based line of every key of every nested mapping; empty when the document is
        not a mapping.
    """
    lines: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = f"{source}:{key_node.start_mark.line + 1}"
            walk(value_node, key + ".")

    walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    return lines


def _read_yaml(path: Path) -> tuple[Any, dict[str, str]]:
    """The YAML document of a config file and the lines of its keys."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what}")
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text), key_lines(text, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: not valid YAML ({problem}); check the indentation and "
                          "the `key: value` pairs there") from None


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The default recipe, with the YAML file at ``path`` (if any) merged over it, validated.

    Args:
        path: a YAML file of overrides, or None for the defaults alone.

    Returns:
        The merged configuration, its values checked (:func:`fctc.cli.schema.validate_config`).

    Raises:
        ConfigError: the file is missing or not valid YAML, a key in it is unknown, or a value
            is out of its range (the message starts with ``file:line``).
    """
    config = default_config()
    if path is None:
        return validate_config(config)
    path = Path(path)
    user, lines = _read_yaml(path)
    if user is None:
        return validate_config(config)
    try:
        config = merge_config(config, user)
    except ConfigError as e:
        where = lines.get(e.key or "", str(path))
        raise ConfigError(f"{where}: {e}", key=e.key) from None
    return validate_config(config, lines)


def dump_config(config: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``config`` as YAML (keys in the default file's order), atomically.

    The text goes to a temporary file renamed over ``path``, so a process killed while
    writing leaves the previous file whole (``--resume`` compares it with the checkpoint's).

    Args:
        config: the configuration.
        path: the file to write (replaced if it exists).
    """
    path = Path(path)
    text = yaml.safe_dump(config, sort_keys=False)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
