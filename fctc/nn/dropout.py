"""Dropout, ``torch.nn.Dropout`` as a pure model whose randomness comes from an explicit key.

The mask is drawn with :func:`fctc.random.bernoulli` from 16-bit halves of random words (two
elements per word, the keep probability rounded up to a multiple of ``2**-16``: half the
cipher work of whole words), so the same key drops the same elements eagerly, compiled and
after a resume; the scaling is torch's (inverted dropout).
"""

from __future__ import annotations

import torch

from .. import random as _random
from .core import Model, _marked

__all__ = ["dropout"]


def dropout(p: float = 0.5) -> Model:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    The keep probability ``1 - p`` is drawn to 16 bits: rounded up to a multiple of ``2**-16``.

    Identity when ``train=False`` or ``p == 0``. In training it needs ``key`` (the same key
    always drops the same elements, so a step can be replayed exactly); ``p == 1`` zeroes
    everything, as torch does. No params, no state.

    Args:
        p: the probability of zeroing an element, in ``[0, 1]``.

    Returns:
        The layer as a :class:`Model`; its ``apply`` raises ``ValueError`` when
        ``train=True`` and ``p > 0`` come without a ``key``.

    Raises:
        ValueError: ``p`` is not a probability.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    p = float(p)

    def init(key=None):
        return {}, {}

    def apply(params, state, x, *, train=False, key=None):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"dropout: x must be a tensor, got {type(x).__name__}")
        if not train or p == 0.0:
            return x, state
        if key is None:
            raise ValueError(
                "dropout: train=True with p > 0 needs a random key; pass key=fctc.random.key(seed) "
                "(or a key split from one), or train=False"
            )
        if p == 1.0:
            return x * torch.zeros((), dtype=x.dtype, device=x.device), state
        keep = _random.bernoulli(key.to(x.device), 1.0 - p, tuple(x.shape), word_bits=16)
        return x * (keep.to(x.dtype) * (1.0 / (1.0 - p))), state

    return _marked(Model(init, apply), p > 0.0)
