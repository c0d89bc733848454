"""Run configurations: the default recipe (``fctc/configs/default.yaml``) merged with a user's file.

A configuration is a nested dict of plain values (JSON- and YAML-serialisable, so it travels
inside checkpoints). The default file is also the schema: every key a user may set appears in
it, and a key it does not list is an error that names the key and the keys allowed there.
Sections that are keyword arguments of a function (the encoder, the front end, SpecAugment)
are replaced whole rather than merged; their keys are checked against the function when the
model is built.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "REPLACED_WHOLE",
    "default_config",
    "load_config",
    "merge_config",
    "dump_config",
]

REPLACED_WHOLE = frozenset(
    {"model.encoder", "model.front_end", "model.spec_augment", "model.warp"}
    | {f"model.waveform.{step}" for step in ("speed", "reverb", "noise", "band_limit", "gain")}
)
"""Dotted paths of the sections a user's value replaces instead of being merged into."""


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the bad key."""


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
            f"values, got {type(override).__name__}: {override!r}"
        )
    out = copy.deepcopy(base)
    unknown = sorted(str(k) for k in override if k not in base)
    if unknown:
        place = f"in section {where!r}" if where else "at the top level"
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {unknown} {place}; "
            f"allowed: {sorted(base)}"
        )
    for key, value in override.items():
        path = f"{where}.{key}" if where else key
        default = base[key]
        if path in REPLACED_WHOLE:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config key {path!r} must be a mapping or null, got {value!r}")
            out[key] = copy.deepcopy(value)
        elif isinstance(default, dict):
            out[key] = merge_config(default, value, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The default recipe, with the YAML file at ``path`` (if any) merged over it.

    Args:
        path: a YAML file of overrides, or None for the defaults alone.

    Returns:
        The merged configuration.

    Raises:
        ConfigError: the file is missing or not valid YAML, or a key in it is unknown (the
            message starts with the file's path).
    """
    config = default_config()
    if path is None:
        return config
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        user = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if user is None:
        return config
    try:
        return merge_config(config, user)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def dump_config(config: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``config`` as YAML (keys in the default file's order).

    Args:
        config: the configuration.
        path: the file to write (replaced if it exists).
    """
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
