"""QuartzNet's NeMo compatibility: ``encoder.jasper`` -> :func:`fctc.models.quartznet_encoder`.

NeMo's QuartzNet block list is a stride-2 separable stem, the body (``jasper[1:-2]``:
``filters`` and ``kernel``, residual, separable, one ``repeat`` for all), a dilation-2
separable block and a 1x1 block, none with squeeze-excite.
"""

from __future__ import annotations

from typing import Any

from ..models import QUARTZNET
from .compatibility import Compatibility, block_kernels, check_block, check_block_count, first_int

__all__ = ["COMPATIBILITY"]

_ARCH = "QuartzNet"


def _matches(jasper: list) -> bool:
    return (
        not any(b.get("se") for b in jasper)
        and len(jasper) >= 3
        and all(b.get("separable") for b in jasper[:-1])
    )


def _encoder_kwargs(jasper: list, feat_in: int, dropout: float) -> dict[str, Any]:
    check_block_count(jasper, 3, _ARCH, "a stem, body blocks and two final blocks")
    stem, body, dil, last = jasper[0], jasper[1:-2], jasper[-2], jasper[-1]
    check_block(stem, 0, _ARCH, stride=2, dilation=1, residual=False, separable=True, repeat=1)
    repeat = body[0].get("repeat", 1) if body else 1
    for i, b in enumerate(body, start=1):
        check_block(b, i, _ARCH, stride=1, dilation=1, residual=True, separable=True, repeat=repeat)
    n = len(jasper)
    check_block(dil, n - 2, _ARCH, stride=1, dilation=2, residual=False, separable=True, repeat=1)
    check_block(last, n - 1, _ARCH, stride=1, dilation=1, residual=False, separable=False, repeat=1)
    if first_int(last.get("kernel"), f"encoder.jasper[{n - 1}].kernel") != 1:
        raise ValueError(f"load_nemo: QuartzNet's last block must have kernel 1 (jasper[{n - 1}])")
    return dict(
        feat_in=feat_in,
        filters=[b["filters"] for b in body],
        kernel_sizes=block_kernels(body, 1),
        repeat_blocks=1,
        dropout=dropout,
        repeat=repeat,
        stem_filters=stem["filters"],
        stem_kernel=first_int(stem["kernel"], "encoder.jasper[0].kernel"),
        final_filters=(dil["filters"], last["filters"]),
        final_kernel=first_int(dil["kernel"], f"encoder.jasper[{n - 2}].kernel"),
    )


COMPATIBILITY = Compatibility(QUARTZNET, _matches, _encoder_kwargs)
"""QuartzNet's piece: separable blocks without squeeze-excite, at least three of them."""
