"""Parameter initialisers with torch's default distributions, drawn from :mod:`fctc.random`.

Every initialiser here is a factory: ``kaiming_uniform(a=math.sqrt(5))`` returns a function
``init(key, shape, dtype=torch.float32) -> Tensor``. The distributions are torch's
(``torch.nn.init``), so a freshly initialised fctc model is statistically the same as the
imperative module it mirrors, but the numbers come from an explicit key rather than torch's
global RNG, which makes initialisation reproducible and free of hidden state.

``nn.Linear`` and ``nn.Conv1d`` initialise their weight with ``kaiming_uniform(a=sqrt(5))``
(a bound of ``1/sqrt(fan_in)``) and their bias with :func:`bias_uniform` of the same fan-in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .. import random as _random

__all__ = [
    "Initializer",
    "compute_fans",
    "calculate_gain",
    "uniform",
    "normal",
    "constant",
    "zeros",
    "ones",
    "kaiming_uniform",
    "kaiming_normal",
    "xavier_uniform",
    "xavier_normal",
    "bias_uniform",
]

Initializer = Callable[..., torch.Tensor]
"""``init(key, shape, dtype=torch.float32) -> Tensor``."""


def _shape(shape: int | Sequence[int], fn: str) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(not isinstance(s, int) or s < 0 for s in shape):
        raise ValueError(f"init.{fn}: shape must hold non-negative ints, got {shape}")
    return shape


def _check_key(key: object, fn: str) -> torch.Tensor:
    if not _random.is_key(key):
        raise TypeError(
            f"init.{fn}: expected a key from fctc.random.key (int64 tensor of shape (2,)), "
            f"got {type(key).__name__ if not isinstance(key, torch.Tensor) else tuple(key.shape)}"
        )
    return key


def compute_fans(shape: int | Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shape, as ``torch.nn.init`` computes them.

    For a linear weight ``(out, in)`` these are ``in`` and ``out``; for a convolution weight
    ``(out, in / groups, *kernel)`` both are multiplied by the kernel's size.

    Args:
        shape: the weight's shape.

    Returns:
        ``(fan_in, fan_out)``.

    Raises:
        ValueError: the shape has rank below 2 or a negative size.
    """
    shape = _shape(shape, "compute_fans")
    if len(shape) < 2:
        raise ValueError(
            f"init.compute_fans: fan in and fan out need a weight of rank >= 2, got shape {shape}"
        )
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (``torch.nn.init.calculate_gain``).

    Args:
        nonlinearity: ``linear``, a ``conv*`` name, ``sigmoid``, ``tanh``, ``relu``,
            ``leaky_relu`` or ``selu``.
        param: the negative slope for ``leaky_relu`` (default 0.01).

    Returns:
        The gain, a float.

    Raises:
        ValueError: an unsupported nonlinearity, or a slope that is not a number.
    """
    linear_like = (
        "linear",
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "sigmoid",
    )
    if nonlinearity in linear_like:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"init.calculate_gain: negative_slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(
        f"init.calculate_gain: unsupported nonlinearity {nonlinearity!r}; choose one of "
        "linear, conv1d, sigmoid, tanh, relu, leaky_relu, selu"
    )


def uniform(bound: float) -> Initializer:
    """Samples from ``U(-bound, bound)``.

    Args:
        bound: the half-width, ``>= 0`` (0 gives zeros).

    Returns:
        An initialiser ``init(key, shape, dtype=torch.float32) -> Tensor``.

    Raises:
        ValueError: a negative bound.
    """
    if not bound >= 0:
        raise ValueError(f"init.uniform: bound must be >= 0, got {bound}")

    def init(key, shape, dtype=torch.float32):
        shape = _shape(shape, "uniform")
        key = _check_key(key, "uniform")
        if bound == 0:
            return torch.zeros(shape, dtype=dtype, device=key.device)
        return _random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def normal(std: float, mean: float = 0.0) -> Initializer:
    """Samples from ``N(mean, std**2)``.

    Args:
        std: the standard deviation, ``>= 0``.
        mean: the mean.

    Returns:
        An initialiser ``init(key, shape, dtype=torch.float32) -> Tensor``.

    Raises:
        ValueError: a negative ``std``.
    """
    if not std >= 0:
        raise ValueError(f"init.normal: std must be >= 0, got {std}")

    def init(key, shape, dtype=torch.float32):
        shape = _shape(shape, "normal")
        key = _check_key(key, "normal")
        return _random.normal(key, shape, dtype, mean=mean, std=std)

    return init


def constant(value: float) -> Initializer:
    """A tensor filled with ``value`` (the key is accepted and ignored, except for its device).

    Args:
        value: the fill value.

    Returns:
        An initialiser ``init(key, shape, dtype=torch.float32) -> Tensor``.
    """

    def init(key, shape, dtype=torch.float32):
        shape = _shape(shape, "constant")
        device = key.device if isinstance(key, torch.Tensor) else None
        return torch.full(shape, value, dtype=dtype, device=device)

    return init


def zeros() -> Initializer:
    """Zeros (``torch.nn.init.zeros_``; BatchNorm's bias and running mean).

    Returns:
        An initialiser, :func:`constant` of 0.
    """
    return constant(0.0)


def ones() -> Initializer:
    """Ones (``torch.nn.init.ones_``; BatchNorm's weight and running variance).

    Returns:
        An initialiser, :func:`constant` of 1.
    """
    return constant(1.0)


def _fan(shape: tuple[int, ...], mode: str, fn: str) -> int:
    fan_in, fan_out = compute_fans(shape)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ValueError(f"init.{fn}: mode must be 'fan_in' or 'fan_out', got {mode!r}")


def _fan_scaled(
    fn: str, draw: Callable[[float], Initializer], scale: Callable[[tuple[int, ...]], float | None]
) -> Initializer:
    """An initialiser drawing from ``draw(scale(shape))``; an empty tensor when ``scale``
    gives None (a weight with a zero fan, which torch leaves empty too)."""

    def init(key, shape, dtype=torch.float32):
        shape = _shape(shape, fn)
        width = scale(shape)
        if width is None:
            return torch.empty(shape, dtype=dtype, device=_check_key(key, fn).device)
        return draw(width)(key, shape, dtype)

    return init


def _check_mode(mode: str, fn: str) -> None:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"init.{fn}: mode must be 'fan_in' or 'fan_out', got {mode!r}")


def kaiming_uniform(
    a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"
) -> Initializer:
    """He uniform (``torch.nn.init.kaiming_uniform_``): ``U(-b, b)``, ``b = gain*sqrt(3/fan)``.

    With ``a=math.sqrt(5)`` (what ``nn.Linear`` and ``nn.Conv1d`` use) ``b = 1/sqrt(fan_in)``.

    Args:
        a: the negative slope of the leaky ReLU that follows (for the gain).
        mode: ``"fan_in"`` (keeps the forward pass's variance) or ``"fan_out"`` (the
            backward pass's).
        nonlinearity: the nonlinearity the gain is computed for (:func:`calculate_gain`).

    Returns:
        An initialiser ``init(key, shape, dtype)`` for weights of rank >= 2.

    Raises:
        ValueError: an unknown ``mode`` or ``nonlinearity``.
    """
    _check_mode(mode, "kaiming_uniform")
    gain = calculate_gain(nonlinearity, a)

    def bound(shape):
        fan = _fan(shape, mode, "kaiming_uniform")
        return math.sqrt(3.0) * gain / math.sqrt(fan) if fan else None

    return _fan_scaled("kaiming_uniform", uniform, bound)


def kaiming_normal(
    a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"
) -> Initializer:
    """He normal (``torch.nn.init.kaiming_normal_``): ``N(0, (gain/sqrt(fan))**2)``.

    Args:
        a, mode, nonlinearity: as for :func:`kaiming_uniform`.

    Returns:
        An initialiser, as :func:`kaiming_uniform` returns (and raises).
    """
    _check_mode(mode, "kaiming_normal")
    gain = calculate_gain(nonlinearity, a)

    def std(shape):
        fan = _fan(shape, mode, "kaiming_normal")
        return gain / math.sqrt(fan) if fan else None

    return _fan_scaled("kaiming_normal", normal, std)


def xavier_uniform(gain: float = 1.0) -> Initializer:
    """Glorot uniform (``torch.nn.init.xavier_uniform_``): ``b = gain*sqrt(6/(fan_in+fan_out))``.

    Args:
        gain: the scale factor (see :func:`calculate_gain`).

    Returns:
        An initialiser ``init(key, shape, dtype)`` for weights of rank >= 2.
    """

    def bound(shape):
        fan_in, fan_out = compute_fans(shape)
        return gain * math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out else None

    return _fan_scaled("xavier_uniform", uniform, bound)


def xavier_normal(gain: float = 1.0) -> Initializer:
    """Glorot normal (``torch.nn.init.xavier_normal_``): ``std = gain*sqrt(2/(fan_in+fan_out))``.

    Args:
        gain: as for :func:`xavier_uniform`.

    Returns:
        An initialiser, as :func:`xavier_uniform` returns.
    """

    def std(shape):
        fan_in, fan_out = compute_fans(shape)
        return gain * math.sqrt(2.0 / (fan_in + fan_out)) if fan_in + fan_out else None

    return _fan_scaled("xavier_normal", normal, std)


def bias_uniform(fan_in: int) -> Initializer:
    """torch's default bias init for linear and conv layers: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    (zero-width, hence zeros, when ``fan_in`` is 0).

    Args:
        fan_in: the layer's fan-in (``in_features``, or ``in_channels // groups * kernel``).

    Returns:
        An initialiser, :func:`uniform` of that bound.

    Raises:
        ValueError: ``fan_in`` is not a non-negative int.
    """
    if not isinstance(fan_in, int) or fan_in < 0:
        raise ValueError(f"init.bias_uniform: fan_in must be a non-negative int, got {fan_in!r}")
    return uniform(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)
