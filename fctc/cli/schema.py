"""The value rules of ``fctc train``'s configuration: every key's type and range, in one place.

``fctc/configs/default.yaml`` says which keys exist (an unknown key is an error when a user's
file is merged); :data:`RULES` says what each scalar key may hold (learning rate > 0,
``0 <= b1 < 1``, counts >= 1, one of the listed names, ...), and :func:`validate_config`
checks a merged configuration against them, so a bad value stops the run before anything is
built, with one line naming the key, where it was set (``file:line`` or the flag) and what it
must be. The ``model`` section is the exception: its sections are keyword arguments of the
model's builders, checked against their signatures when the model is built
(:mod:`fctc.cli.recipe`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .errors import ConfigError

__all__ = ["Rule", "RULES", "validate_config"]


class Rule(NamedTuple):
    """What one key may hold.

    Args:
        check: value -> the value to use (numeric strings such as YAML's ``1e-3`` become
            floats), or raises ``ValueError`` when the value is not allowed.
        what: the allowed values in words, for the message (``"an integer >= 1"``).
    """

    check: Callable[[Any], Any]
    what: str


def _nullable(rule: Rule, nullable: bool) -> Rule:
    if not nullable:
        return rule
    return Rule(lambda v: None if v is None else rule.check(v), f"{rule.what} or null")


def _integer(low: int, nullable: bool = False) -> Rule:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError
        return v

    return _nullable(Rule(check, f"an integer >= {low}"), nullable)


def _as_float(v: Any) -> float:
    """A finite number; numeric strings count (YAML 1.1 reads ``1e-3`` as a string)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError
    x = float(v)  # ValueError for 'fast'
    if not math.isfinite(x):
        raise ValueError
    return x


def _number(low: float | None = None, high: float | None = None, *, open_low: bool = False,
            open_high: bool = True, nullable: bool = False) -> Rule:
    def check(v: Any) -> float:
        x = _as_float(v)
        if low is not None and (x < low or (open_low and x == low)):
            raise ValueError
        if high is not None and (x > high or (open_high and x == high)):
            raise ValueError
        return x

    if low is not None and high is not None:
        what = f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    elif low is not None:
        what = f"a number {'>' if open_low else '>='} {low:g}"
    else:
        what = "a finite number"
    return _nullable(Rule(check, what), nullable)


def _choice(*options: str) -> Rule:
    def check(v: Any) -> str:
        if v not in options:
            raise ValueError
        return v

    return Rule(check, "one of " + ", ".join(options))


def _boolean() -> Rule:
    def check(v: Any) -> bool:
        if not isinstance(v, bool):
            raise ValueError
        return v

    return Rule(check, "true or false")


def _jit_mode() -> Rule:
    """``make_train_step``'s jit modes: false, true, step or reduce-overhead."""

    def check(v: Any) -> bool | str:
        if not (isinstance(v, bool) or v in ("step", "reduce-overhead")):
            raise ValueError
        return v

    return Rule(check, "true, false, step or reduce-overhead")


def _text(nullable: bool = False) -> Rule:
    def check(v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise ValueError
        return v

    return _nullable(Rule(check, "a non-empty string"), nullable)


def _device() -> Rule:
    def check(v: Any) -> str:
        if not isinstance(v, str) or not re.fullmatch(r"cpu|auto|cuda(:\d+)?", v):
            raise ValueError
        return v

    return Rule(check, "cpu, cuda, cuda:N or auto")


def _tokens() -> Rule:
    def check(v: Any) -> Any:
        if v is None or (isinstance(v, str) and v):
            return v
        if isinstance(v, list) and v and all(isinstance(t, str) and t for t in v):
            return v
        raise ValueError

    return Rule(check, "a string of characters, a list of non-empty strings, or null")


_COUNT = _integer(1)
_FRACTION = _number(0.0, 1.0)  # [0, 1)

RULES: dict[str, Rule] = {
    "seed": _integer(0),
    "device": _device(),
    "threads": _integer(1, nullable=True),
    "data.train": _text(),
    "data.validation": _text(nullable=True),
    "data.test": _text(nullable=True),
    "data.sample_rate": _COUNT,
    "data.max_batch_seconds": _number(0.0, open_low=True, nullable=True),
    "data.batch_size": _integer(1, nullable=True),
    "data.num_workers": _integer(0),
    "data.cache_features": _boolean(),
    "data.on_error": _choice("skip", "stop"),
    "data.limit": _integer(1, nullable=True),
    "vocabulary.tokens": _tokens(),
    "vocabulary.blank_token": _text(),
    "optimizer.name": _choice("adamw", "adam", "sgd"),
    "optimizer.learning_rate": _number(0.0, open_low=True),
    "optimizer.weight_decay": _number(0.0),
    "optimizer.b1": _FRACTION,
    "optimizer.b2": _FRACTION,
    "optimizer.eps": _number(0.0, open_low=True),
    "optimizer.momentum": _FRACTION,
    "optimizer.clip_grad_norm": _number(0.0, open_low=True, nullable=True),
    "schedule.name": _choice("warmup_cosine", "onecycle", "constant", "plateau"),
    "schedule.warmup_fraction": _FRACTION,
    "schedule.end_fraction": _number(0.0, 1.0, open_high=False),
    "schedule.interval": _choice("step", "epoch"),
    "schedule.monitor": _text(),
    "schedule.patience": _COUNT,
    "schedule.factor": _number(0.0, 1.0, open_low=True),
    "training.epochs": _COUNT,
    "training.max_steps": _integer(1, nullable=True),
    "training.accumulate_batches": _COUNT,
    "training.precision": _choice("fp32", "bf16", "fp16"),
    "training.jit": _jit_mode(),
    "training.donate": _boolean(),
    "training.log_every": _COUNT,
    "training.eval_every": _COUNT,
    "training.checkpoint_every": _COUNT,
    "training.max_nonfinite": _COUNT,
    "decoding.decoder": _choice("beam", "greedy"),
    "decoding.beam_size": _COUNT,
    "decoding.beam_threshold": _number(0.0, open_low=True),
    "decoding.lexicon": _boolean(),
    "decoding.lm_order": _integer(2, nullable=True),
    "decoding.lm_weight": _number(),
    "decoding.word_score": _number(),
    "decoding.log_add": _boolean(),
}
"""Dotted key -> :class:`Rule`, for every scalar key of the default configuration but the
``model`` section's."""


def _place(key: str, origins: Mapping[str, str]) -> str:
    origin = origins.get(key)
    return f"{origin}: " if origin else ""


def _get(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    *sections, last = key.split(".")
    node = config
    for part in sections:
        node = node[part]
    node[last] = value


def validate_config(config: dict[str, Any], origins: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Check every value of a merged configuration against :data:`RULES`.

    Numeric strings of number keys (YAML 1.1 reads ``1e-3`` as one) are replaced by their
    floats, in place.

    Args:
        config: the merged configuration (every key of the default one present).
        origins: dotted key -> where its value was set (``"my.yaml:12"``, ``"--max-steps"``),
            named in the message.

    Returns:
        ``config``.

    Raises:
        ConfigError: a value outside its rule (one line: where, the key, what it must be and
            what it is), or neither ``data.batch_size`` nor ``data.max_batch_seconds`` set.
    """
    origins = origins or {}
    for key, rule in RULES.items():
        value = _get(config, key)
        try:
            _set(config, key, rule.check(value))
        except (ValueError, TypeError):
            raise ConfigError(
                f"{_place(key, origins)}{key} must be {rule.what}, got {value!r}"
            ) from None
    data = config["data"]
    if data["batch_size"] is None and data["max_batch_seconds"] is None:
        key = "data.batch_size" if "data.batch_size" in origins else "data.max_batch_seconds"
        raise ConfigError(
            f"{_place(key, origins)}data.batch_size and data.max_batch_seconds are both null; "
            "set one of them (utterances per batch, or audio seconds per batch)"
        )
    return config
