"""Citrinet's NeMo compatibility: ``encoder.jasper`` -> :func:`fctc.models.citrinet_encoder`.

NeMo's Citrinet block list is a separable stem, the body (``jasper[1:-1]``: ``filters``,
``kernel`` and ``stride``, residual, separable, striding only the last sub-block) and a final
block, every one with squeeze-excite over the whole utterance (``se_context_size: -1``).
"""

from __future__ import annotations

from typing import Any

from ..models import CITRINET
from .compatibility import Compatibility, block_kernels, check_block, check_block_count, first_int

__all__ = ["COMPATIBILITY"]

_ARCH = "Citrinet"

_SUPPORTED = (
    ("se", (True,)),
    ("se_context_size", (-1, None)),
    ("kernel_size_factor", (1, 1.0, None)),
    ("residual_mode", ("add", "stride_add", None)),
)


def _matches(jasper: list) -> bool:
    return any(b.get("se") for b in jasper)


def _check_supported(jasper: list) -> None:
    for i, b in enumerate(jasper):
        for key, ok in _SUPPORTED:
            value = b.get(key, ok[0] if key == "se" else None)
            if value not in ok:
                raise ValueError(
                    f"load_nemo: encoder.jasper[{i}].{key}={value!r} is not supported by fctc's "
                    f"Citrinet encoder (needs one of {list(ok)})"
                )


def _body_strides(body: list, repeat: int) -> list[int]:
    strides = []
    for i, b in enumerate(body, start=1):
        check_block(b, i, _ARCH, dilation=1, residual=True, separable=True, repeat=repeat)
        s = first_int(b.get("stride", [1]), f"encoder.jasper[{i}].stride")
        if s > 1 and repeat > 1 and not b.get("stride_last", False):
            raise ValueError(
                f"load_nemo: encoder.jasper[{i}] strides every sub-block (stride_last is not "
                "set); fctc's Citrinet strides only the last one"
            )
        strides.append(s)
    return strides


def _encoder_kwargs(jasper: list, feat_in: int, dropout: float) -> dict[str, Any]:
    check_block_count(jasper, 2, _ARCH, "a stem, body blocks and a final block")
    stem, body, final = jasper[0], jasper[1:-1], jasper[-1]
    n = len(jasper)
    _check_supported(jasper)
    check_block(stem, 0, _ARCH, stride=1, dilation=1, residual=False, separable=True, repeat=1)
    repeat = body[0].get("repeat", 1) if body else 1
    strides = _body_strides(body, repeat)
    check_block(final, n - 1, _ARCH, stride=1, dilation=1, residual=False, separable=True, repeat=1)
    return dict(
        filters=[b["filters"] for b in body],
        kernel_sizes=block_kernels(body, 1),
        strides=strides,
        feat_in=feat_in,
        dropout=dropout,
        repeat=repeat,
        stem_filters=stem["filters"],
        stem_kernel=first_int(stem["kernel"], "encoder.jasper[0].kernel"),
        final_filters=final["filters"],
        final_kernel=first_int(final["kernel"], f"encoder.jasper[{n - 1}].kernel"),
    )


COMPATIBILITY = Compatibility(CITRINET, _matches, _encoder_kwargs)
"""Citrinet's piece: blocks with squeeze-excite."""
