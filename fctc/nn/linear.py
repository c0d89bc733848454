"""A fully connected layer, ``torch.nn.Linear`` as a pure :class:`~fctc.nn.core.Model`.

Same parameters, initialisation and arithmetic (``F.linear``) as torch, so a ``Linear``'s
``state_dict`` loads as the params.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import random as _random
from .core import Model, check_params, deterministic
from .init import Initializer, bias_uniform, kaiming_uniform

__all__ = ["linear"]


def _positive_int(value: object, what: str, layer: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{layer}: {what} must be a positive int, got {value!r}")
    return value


def linear(
    in_features: int,
    out_features: int,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
    weight_init: Initializer | None = None,
    bias_init: Initializer | None = None,
) -> Model:
    """``y = x @ weight.T + bias`` over the last axis of ``x`` (``torch.nn.Linear``).

    Params: ``{"weight": (out_features, in_features), "bias": (out_features,)}`` (no ``bias``
    when ``bias=False``); no state. The default initialisation is torch's: weight
    ``kaiming_uniform(a=sqrt(5))`` and bias ``U(+-1/sqrt(in_features))``; pass ``weight_init``
    / ``bias_init`` (see :mod:`fctc.nn.init`) to change it.

    Args:
        in_features: the size of ``x``'s last axis.
        out_features: the output size.
        bias: whether the layer has a bias.
        dtype: the params' dtype.
        weight_init: an initialiser for the weight.
        bias_init: an initialiser for the bias.

    Returns:
        The layer as a :class:`Model`; its ``apply`` raises ``ValueError`` when ``x`` does not
        end in ``in_features``.

    Raises:
        ValueError: a size that is not a positive int.
    """
    name = "linear"
    in_features = _positive_int(in_features, "in_features", name)
    out_features = _positive_int(out_features, "out_features", name)
    w_init = weight_init or kaiming_uniform(a=math.sqrt(5))
    b_init = bias_init or bias_uniform(in_features)
    expected = {"weight": (out_features, in_features)}
    if bias:
        expected["bias"] = (out_features,)

    def init(key):
        k_w, k_b = _random.split(key, 2)
        params = {"weight": w_init(k_w, (out_features, in_features), dtype)}
        if bias:
            params["bias"] = b_init(k_b, (out_features,), dtype)
        return params, {}

    def apply(params, state, x, *, train=False, key=None):
        check_params(params, expected, name)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: x must be a tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != in_features:
            raise ValueError(
                f"{name}: x must end in {in_features} features (shape (..., {in_features})), "
                f"got shape {tuple(x.shape)}"
            )
        return F.linear(x, params["weight"], params.get("bias")), state

    return deterministic(Model(init, apply))
