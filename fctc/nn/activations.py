"""Parameter-free activations as pure models (``torch.nn.ReLU``, ``GELU``, ...).

Each returns a :class:`~fctc.nn.core.Model` with empty params and state, so activations sit in
:func:`~fctc.nn.combinators.serial` chains at the same indices as in the ``nn.Sequential`` they
mirror (keeping ``state_dict`` keys aligned). :func:`activation` builds one by name, for configs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .core import Model, deterministic

__all__ = [
    "relu",
    "gelu",
    "tanh",
    "sigmoid",
    "silu",
    "hardtanh",
    "leaky_relu",
    "elu",
    "identity",
    "activation",
]


def _elementwise(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Model:
    def init(key=None):
        return {}, {}

    def apply(params, state, x, *, train=False, key=None):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: x must be a tensor, got {type(x).__name__}")
        return fn(x), state

    return deterministic(Model(init, apply))


def relu() -> Model:
    """``max(x, 0)`` (``torch.nn.ReLU``).

    Returns:
        A :class:`Model` without params or state (as are all activations here).
    """
    return _elementwise("relu", F.relu)


def gelu(approximate: str = "none") -> Model:
    """Gaussian error linear unit (``torch.nn.GELU``).

    Args:
        approximate: ``"none"`` (the exact erf form) or ``"tanh"`` (its tanh approximation).

    Returns:
        The activation as a :class:`Model`.

    Raises:
        ValueError: ``approximate`` is neither.
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _elementwise("gelu", lambda x: F.gelu(x, approximate=approximate))


def tanh() -> Model:
    """Hyperbolic tangent (``torch.nn.Tanh``).

    Returns:
        The activation as a :class:`Model`.
    """
    return _elementwise("tanh", torch.tanh)


def sigmoid() -> Model:
    """Logistic sigmoid (``torch.nn.Sigmoid``).

    Returns:
        The activation as a :class:`Model`.
    """
    return _elementwise("sigmoid", torch.sigmoid)


def silu() -> Model:
    """``x * sigmoid(x)`` (``torch.nn.SiLU``, also called swish).

    Returns:
        The activation as a :class:`Model`.
    """
    return _elementwise("silu", F.silu)


def hardtanh(min_val: float = -1.0, max_val: float = 1.0) -> Model:
    """Clamp to ``[min_val, max_val]`` (``torch.nn.Hardtanh``; QuartzNet uses it as ReLU-20).

    Args:
        min_val: the lower bound.
        max_val: the upper bound.

    Returns:
        The activation as a :class:`Model`.

    Raises:
        ValueError: ``max_val`` is not above ``min_val``.
    """
    if not max_val > min_val:
        raise ValueError(f"hardtanh: need min_val < max_val, got {min_val} and {max_val}")
    return _elementwise("hardtanh", lambda x: F.hardtanh(x, min_val, max_val))


def leaky_relu(negative_slope: float = 0.01) -> Model:
    """``x`` if positive else ``negative_slope * x`` (``torch.nn.LeakyReLU``).

    Args:
        negative_slope: the slope for negative inputs.

    Returns:
        The activation as a :class:`Model`.
    """
    return _elementwise("leaky_relu", lambda x: F.leaky_relu(x, negative_slope))


def elu(alpha: float = 1.0) -> Model:
    """Exponential linear unit (``torch.nn.ELU``): ``x`` if positive, else
    ``alpha * (exp(x) - 1)``.

    Args:
        alpha: the scale of the negative part.

    Returns:
        The activation as a :class:`Model`.
    """
    return _elementwise("elu", lambda x: F.elu(x, alpha))


def identity() -> Model:
    """The input unchanged (``torch.nn.Identity``), to keep a chain's indices aligned.

    Returns:
        The identity as a :class:`Model`.
    """
    return _elementwise("identity", lambda x: x)


_BY_NAME: dict[str, Callable[[], Model]] = {
    "relu": relu,
    "gelu": gelu,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "silu": silu,
    "swish": silu,
    "hardtanh": hardtanh,
    "leaky_relu": leaky_relu,
    "elu": elu,
    "identity": identity,
}


def activation(name: str) -> Model:
    """The activation called ``name`` with its default arguments (for configuration files).

    Args:
        name: one of ``relu``, ``gelu``, ``tanh``, ``sigmoid``, ``silu`` (or ``swish``),
            ``hardtanh``, ``leaky_relu``, ``elu``, ``identity``.

    Returns:
        The activation as a :class:`Model`.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if name not in _BY_NAME:
        raise ValueError(
            f"activation: unknown activation {name!r}; valid names are "
            f"{', '.join(sorted(_BY_NAME))}"
        )
    return _BY_NAME[name]()
