"""What a per-architecture compatibility piece is, and the block checks the pieces share.

NeMo describes a QuartzNet or Citrinet encoder as ``encoder.jasper``, a list of block
configs. Each architecture fctc loads has one module in this package (``quartznet.py``,
``citrinet.py``, as thunder-speech has one ``compatibility.py`` per architecture) that
recognises its block list and turns it into the keyword arguments of its fctc encoder
builder; :class:`Compatibility` is what such a module provides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from ..models import Architecture

__all__ = ["Compatibility", "first_int", "check_block", "check_block_count", "block_kernels"]


class Compatibility(NamedTuple):
    """How one architecture's NeMo encoder config maps onto fctc.

    Args:
        architecture: the fctc architecture (its builder makes the model).
        matches: ``encoder.jasper`` -> whether it describes this architecture.
        encoder_kwargs: ``(jasper, feat_in, dropout)`` -> the encoder builder's keyword
            arguments; raises ``ValueError`` for a block list fctc's encoder cannot hold.
    """

    architecture: Architecture
    matches: Callable[[list], bool]
    encoder_kwargs: Callable[[list, int, float], dict[str, Any]]


def first_int(value: Any, where: str) -> int:
    """An int given as itself or as a one-element list (NeMo writes ``kernel: [11]``).

    Args:
        value: the config value.
        where: its place in the config, for the error message.

    Returns:
        The int.

    Raises:
        ValueError: it is neither.
    """
    v = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"load_nemo: {where} must be an int or a one-element list, got {value!r}")
    return v


def check_block(block: Mapping, i: int, arch: str, **want: Any) -> None:
    """Check that block ``i`` of ``encoder.jasper`` has the settings fctc's encoder builds.

    Args:
        block: the block's config (missing keys take NeMo's defaults).
        i: its index, for the error message.
        arch: the architecture's name, for the error message.
        **want: expected values (``stride`` and ``dilation`` as ints).

    Raises:
        ValueError: a setting differs (the checkpoint's architecture is not supported).
    """
    defaults = {"stride": [1], "dilation": [1], "residual": True, "separable": False, "repeat": 1}
    for key, expected in want.items():
        got = block.get(key, defaults.get(key))
        if isinstance(expected, int) and not isinstance(expected, bool) and key in (
            "stride", "dilation",
        ):
            got = first_int(got, f"encoder.jasper[{i}].{key}")
        if got != expected:
            raise ValueError(
                f"load_nemo: encoder.jasper[{i}] has {key}={got!r}, but fctc's {arch} encoder "
                f"needs {key}={expected!r} there; this checkpoint's architecture is not supported"
            )


def check_block_count(jasper: Sequence, minimum: int, arch: str, layout: str) -> None:
    """Check that ``encoder.jasper`` has at least ``minimum`` blocks.

    Args:
        jasper: the block list.
        minimum: the fewest blocks the architecture has.
        arch: the architecture's name, for the error message.
        layout: what its blocks are (``"a stem, body blocks and a final block"``).

    Raises:
        ValueError: there are fewer.
    """
    if len(jasper) < minimum:
        raise ValueError(
            f"load_nemo: a {arch} config has {layout}; encoder.jasper has only {len(jasper)} blocks"
        )


def block_kernels(blocks: Sequence[Mapping], start: int) -> list[int]:
    """The kernel size of each block, ``blocks[0]`` being ``encoder.jasper[start]``.

    Args:
        blocks: block configs.
        start: the index of the first one in ``encoder.jasper``.

    Returns:
        One int per block.

    Raises:
        ValueError: a kernel is not an int or a one-element list (``KeyError`` when missing).
    """
    return [first_int(b["kernel"], f"encoder.jasper[{i}].kernel") for i, b in
            enumerate(blocks, start=start)]
