"""One builder per architecture: its encoder, named sizes, front end, decoder width and stride.

An :class:`Architecture` is everything the rest of fctc needs to know about QuartzNet or
Citrinet: the encoder builder, its named sizes, the front end NeMo pairs with it, the width of
the encoder's output (the decoder's input) and the encoder's total time downsampling (the
stride that turns feature frames into output frames). The recipe of ``fctc train``, NeMo
loading and the benchmarks all build models through it, so an architecture's shape is
described once. :func:`quartznet_ctc` and :func:`citrinet_ctc` build the usual complete models.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..audio import filterbank
from ..nn.core import Model
from ..nn.decoders import conv1d_decoder
from .citrinet import citrinet_config, citrinet_encoder
from .ctc import ctc_model
from .quartznet import STEM_STRIDE, quartznet_config, quartznet_encoder

__all__ = [
    "Architecture",
    "QUARTZNET",
    "CITRINET",
    "ARCHITECTURES",
    "architecture",
    "quartznet_ctc",
    "citrinet_ctc",
]


@dataclass(frozen=True)
class Architecture:
    """An encoder architecture and what follows from its arguments.

    Args:
        name: ``"quartznet"`` or ``"citrinet"`` (the ``model.name`` of ``fctc train``).
        encoder: the encoder builder (e.g. :func:`fctc.models.quartznet_encoder`).
        config: named size -> the builder's keyword arguments.
        front_end: the :func:`fctc.audio.filterbank` arguments NeMo pairs with it.
        width_of: the builder's complete keyword arguments -> output channels.
        stride_of: the builder's complete keyword arguments -> time downsampling.
    """

    name: str
    encoder: Callable[..., Model]
    config: Callable[[str], dict[str, Any]]
    front_end: Mapping[str, Any]
    width_of: Callable[[dict[str, Any]], int]
    stride_of: Callable[[dict[str, Any]], int]

    def encoder_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the encoder builder, completed with its defaults.

        Args:
            kwargs: some of the builder's keyword arguments.

        Returns:
            Every argument that has a default, overridden by ``kwargs``.
        """
        params = inspect.signature(self.encoder).parameters.values()
        defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        return {**defaults, **kwargs}

    def decoder_width(self, kwargs: Mapping[str, Any]) -> int:
        """The encoder's output channels, which the decoder reads.

        Args:
            kwargs: keyword arguments of the encoder builder (defaults filled in).

        Returns:
            The width.
        """
        return int(self.width_of(self.encoder_kwargs(kwargs)))

    def output_stride(self, kwargs: Mapping[str, Any]) -> int:
        """How many feature frames make one output frame (rounding up, "same" padding).

        Args:
            kwargs: keyword arguments of the encoder builder (defaults filled in).

        Returns:
            The total stride.
        """
        return int(self.stride_of(self.encoder_kwargs(kwargs)))

    def ctc_model(self, front_end: Model, num_classes: int, kwargs: Mapping[str, Any]) -> Model:
        """The complete CTC model: ``front_end``, this encoder, thunder's 1x1 conv decoder.

        Args:
            front_end: the front end (audio -> features; possibly augmented or a pass-through
                for precomputed features).
            num_classes: output classes, blank included.
            kwargs: keyword arguments of the encoder builder.

        Returns:
            The :func:`fctc.models.ctc_model`.
        """
        encoder = self.encoder(**kwargs)
        decoder = conv1d_decoder(self.decoder_width(kwargs), num_classes)
        return ctc_model(front_end, encoder, decoder)


QUARTZNET = Architecture(
    name="quartznet",
    encoder=quartznet_encoder,
    config=quartznet_config,
    front_end={"nfilt": 64},
    width_of=lambda kw: tuple(kw["final_filters"])[-1],
    stride_of=lambda kw: STEM_STRIDE,
)
"""QuartzNet: 64 mel features, output width ``final_filters[-1]``, stride 2 (its stem)."""

CITRINET = Architecture(
    name="citrinet",
    encoder=citrinet_encoder,
    config=citrinet_config,
    front_end={"nfilt": 80, "n_window_size": 400},
    width_of=lambda kw: kw["final_filters"],
    stride_of=lambda kw: math.prod(kw.get("strides", (1,))),
)
"""Citrinet: NeMo's 80 features over 25 ms windows, width ``final_filters``, stride the product
of ``strides``."""

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (QUARTZNET, CITRINET)}
"""Every architecture by name."""


def architecture(name: str) -> Architecture:
    """The architecture called ``name``.

    Args:
        name: a key of :data:`ARCHITECTURES`.

    Returns:
        Its :class:`Architecture`.

    Raises:
        ValueError: no architecture has that name.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def _num_classes(vocabulary: Any, fn: str) -> int:
    n = vocabulary if isinstance(vocabulary, int) and not isinstance(vocabulary, bool) else None
    if n is None and hasattr(vocabulary, "__len__") and hasattr(vocabulary, "itos"):
        n = len(vocabulary)
    if n is None or n < 2:
        raise ValueError(
            f"{fn}: vocabulary must be a fctc.text.Vocabulary or the number of output classes "
            f"(blank included, at least 2), got {vocabulary!r}"
        )
    return n


def _named_ctc(arch: Architecture, fn: str, vocabulary, config, dropout, front_end, overrides):
    """The named size ``config`` of ``arch`` over its filterbank (see :func:`quartznet_ctc`)."""
    num_classes = _num_classes(vocabulary, fn)
    fe_kwargs = {**arch.front_end, **(front_end or {})}
    feat_in = fe_kwargs["nfilt"]
    enc_kwargs = {**arch.config(config), "dropout": dropout, **overrides}
    if "feat_in" in enc_kwargs and enc_kwargs["feat_in"] != feat_in:
        raise ValueError(
            f"{fn}: feat_in={enc_kwargs['feat_in']} differs from the front end's "
            f"nfilt={feat_in}; set front_end={{'nfilt': ...}} instead"
        )
    enc_kwargs["feat_in"] = feat_in
    return arch.ctc_model(filterbank(**fe_kwargs), num_classes, enc_kwargs)


def quartznet_ctc(
    vocabulary: Any,
    config: str = "5x5",
    *,
    dropout: float = 0.0,
    front_end: dict[str, Any] | None = None,
    **encoder_kwargs: Any,
) -> Model:
    """QuartzNet as thunder builds it: filterbank front end, ``quartznet_encoder``, conv decoder.

    Args:
        vocabulary: a :class:`fctc.text.Vocabulary` (its length, blank included, is the number
            of classes) or that number.
        config: a size of :func:`~fctc.models.quartznet_config` (``"5x5"``, ``"15x5"``,
            ``"tiny"``).
        dropout: the encoder's dropout.
        front_end: keyword arguments of :func:`fctc.audio.filterbank` (thunder's defaults
            otherwise); the encoder's ``feat_in`` is its ``nfilt``.
        **encoder_kwargs: override single encoder arguments.

    Returns:
        The CTC model over raw audio.

    Raises:
        ValueError: ``vocabulary`` has fewer than 2 classes, the size is unknown, or
            ``feat_in`` contradicts the front end's ``nfilt``.
    """
    return _named_ctc(
        QUARTZNET, "quartznet_ctc", vocabulary, config, dropout, front_end, encoder_kwargs
    )


def citrinet_ctc(
    vocabulary: Any,
    config: str = "256",
    *,
    dropout: float = 0.0,
    front_end: dict[str, Any] | None = None,
    **encoder_kwargs: Any,
) -> Model:
    """Citrinet: filterbank front end, ``citrinet_encoder`` and thunder's conv decoder.

    Like :func:`quartznet_ctc`. The front end defaults to NeMo's Citrinet features: 80 filters
    over 25 ms windows (``n_window_size=400``) every 10 ms.

    Args:
        vocabulary: a :class:`fctc.text.Vocabulary` or the number of classes (blank included).
        config: a size of :func:`~fctc.models.citrinet_config` (``"256"``, ``"512"``,
            ``"1024"``, ``"tiny"``).
        dropout: the encoder's dropout.
        front_end: keyword arguments of :func:`fctc.audio.filterbank` over NeMo's defaults.
        **encoder_kwargs: override single encoder arguments.

    Returns:
        The Citrinet CTC model over raw audio.

    Raises:
        ValueError: as :func:`quartznet_ctc`.
    """
    return _named_ctc(
        CITRINET, "citrinet_ctc", vocabulary, config, dropout, front_end, encoder_kwargs
    )
