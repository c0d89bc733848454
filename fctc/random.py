"""Explicit, splittable, counter-based random keys (JAX's model, on torch tensors).

A key is an ``int64`` tensor of shape ``(2,)`` holding two 32-bit words. Every random number
is a pure function of a key and a position: the Threefry-2x32 block cipher (20 rounds, the
generator JAX uses) encrypts a counter under the key. So the same key gives the same bits
every time, on every device, eagerly and under ``torch.compile`` (floating transforms of them
can differ by an ulp where a compiler uses its own kernel, e.g. ``erfinv`` in :func:`normal`
under inductor); and no global RNG state is
read or written. Keys are consumed, not advanced: derive new ones with :func:`split` or
:func:`fold_in`, and never use one key for two purposes.

The counter space is divided into domains so that :func:`split`, :func:`fold_in` and the
sampling functions can never produce the same block from one key.

Deriving keys (:func:`split`, :func:`fold_in`) eagerly from a CPU key runs the cipher on the
host, in Python integers, where reading the key back costs no device synchronisation: the same
words as the tensor cipher, without the ~150 tiny tensor operations of its 20 rounds (a train
step derives a few keys per step). Under tracing, and for keys on accelerators, the cipher
stays in tensor operations; under ``torch.compile`` its 20 rounds are one operator,
``fctc::threefry_rounds``, which runs the eager rounds (inlined, inductor spent 30-40 s
generating the code of each draw on a small CPU).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import torch

from .backend import as_tensor, host_is_free, is_tracing

__all__ = [
    "key",
    "split",
    "fold_in",
    "bits",
    "uniform",
    "normal",
    "bernoulli",
    "randint",
    "permutation",
    "is_key",
]

_MASK = 0xFFFFFFFF
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA
# Counter domains (the high counter word) keep the streams of one key apart.
_SAMPLE_DOMAIN = 0
_SPLIT_DOMAIN = 1
_FOLD_DOMAIN = 2


def key(seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A new key from an integer seed.

    Args:
        seed: any Python int (reduced modulo ``2**64``), or an integer tensor scalar.
        device: where the key lives; the numbers drawn from it are the same on every device.

    Returns:
        The key: an ``int64`` tensor of shape ``(2,)`` (two 32-bit words).

    Raises:
        TypeError: ``seed`` is not an int.
    """
    if isinstance(seed, torch.Tensor):
        seed = int(seed.item())
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"random.key: seed must be an int, got {type(seed).__name__}")
    seed %= 2**64
    return torch.tensor([(seed >> 32) & _MASK, seed & _MASK], dtype=torch.int64, device=device)


def is_key(k: object) -> bool:
    """Whether ``k`` looks like an fctc key.

    Args:
        k: any value.

    Returns:
        True for an ``int64`` tensor of shape ``(2,)``.
    """
    return isinstance(k, torch.Tensor) and k.dtype == torch.int64 and tuple(k.shape) == (2,)


def _check_key(k: object, fn: str) -> torch.Tensor:
    if not is_key(k):
        what = (
            f"a {k.dtype} tensor of shape {tuple(k.shape)}"
            if isinstance(k, torch.Tensor)
            else type(k).__name__
        )
        raise TypeError(
            f"random.{fn}: expected a key (int64 tensor of shape (2,), from fctc.random.key), "
            f"got {what}"
        )
    return k


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """Reinterpret 32-bit words held in int64 as int32 (two's complement)."""
    return (((x + 2**31) % 2**32) - 2**31).to(torch.int32)


def _to_word(x: torch.Tensor) -> torch.Tensor:
    """int32 words back to int64 values in [0, 2**32)."""
    return x.to(torch.int64) & _MASK


def _rotl(x: torch.Tensor, r: int) -> torch.Tensor:
    # int32 shifts right are arithmetic; mask the wrapped-around bits to make it logical.
    return (x << r) | ((x >> (32 - r)) & ((1 << r) - 1))


def _threefry2x32(k: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor):
    """Threefry-2x32 with 20 rounds on int32 tensors (additions wrap modulo 2**32).

    ``k`` is a key (int64 words); ``x0``/``x1`` and the results are int32 words.
    """
    ks = _key_schedule(k)
    if torch.compiler.is_compiling():  # one opaque operation for the compiler (see _rounds_op)
        return tuple(_rounds_op(x0, x1, *ks))
    return _rounds(ks, x0, x1)


def _rounds(ks: tuple, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_threefry2x32` under the round keys ``ks``: the first key injection makes fresh
    words (``x0``/``x1`` are not written), then the 20 rounds, in place on large eager inputs,
    else one new tensor per operation."""
    x0 = x0 + ks[0]
    x1 = x1 + ks[1]
    if x0.numel() >= _IN_PLACE_MIN and x0.shape == x1.shape and _eager(x0, x1):
        return _rounds_in_place(ks, x0, x1)
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + (ks[(i + 2) % 3] + (i + 1))
    return x0, x1


@torch.library.custom_op("fctc::threefry_rounds", mutates_args=())
def _rounds_op(
    x0: torch.Tensor, x1: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_rounds` as one operator, what compiled code calls for the cipher (a new pair of
    words, its inputs untouched).

    Inlined, the rounds are ~130 integer operations whose every value is read two or three
    times; inductor re-expands such chains into each kernel that reads them, and generating
    the code of a single draw took 30 to 40 s on a 2-vCPU CPU (torch 2.13), minutes for a
    model with augmentation and dropout. As an operator the compiler sees one call; it runs
    the eager rounds (in place on large draws), so compiled words are the eager ones.
    """
    return _rounds((k0, k1, k2), x0, x1)


@_rounds_op.register_fake
def _(x0, x1, k0, k1, k2):
    shape = torch.broadcast_shapes(x0.shape, x1.shape, k0.shape, k1.shape, k2.shape)
    return x0.new_empty(shape), x1.new_empty(shape)


@torch.library.register_vmap("fctc::threefry_rounds")
def _(info, in_dims, *args):
    # Element-wise with broadcasting: line every argument up as (batch, *logical shape).
    ndim = max(a.dim() - (d is not None) for a, d in zip(args, in_dims))
    lined = []
    for a, d in zip(args, in_dims):
        if d is None:
            a = a.reshape((1,) * (1 + ndim - a.dim()) + a.shape)
        else:
            a = a.movedim(d, 0)
            a = a.reshape(a.shape[:1] + (1,) * (1 + ndim - a.dim()) + a.shape[1:])
        lined.append(a)
    return _rounds_op(*lined), (0, 0)


def _key_schedule(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A key's two int32 words and their parity word, the cipher's three round keys."""
    kw = _to_int32(k)
    k0, k1 = kw[0], kw[1]
    return k0, k1, k0 ^ k1 ^ _PARITY  # the parity constant fits in int32 as it is


#: From this many blocks on, eager ciphers run in place (a third of the time on 2**20 blocks).
_IN_PLACE_MIN = 4096


def _eager(*xs: torch.Tensor) -> bool:
    """Whether ``xs`` are plain tensors outside any compile or ``torch.func`` transform (where
    in-place operations and ``out=`` are not safe)."""
    return not is_tracing() and all(type(x) is torch.Tensor and not x.requires_grad for x in xs)


def _rotation_operands(device: torch.device) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per rotation ``r``: ``r``, ``32 - r`` and the low-``r``-bit mask as 0-d int32 tensors on
    ``device``, made once: a Python-int operand costs a scalar tensor and a cast per operation,
    which on the in-place rounds' mid-sized words is about half their time."""
    ops = _ROTATION_OPERANDS.get(device)
    if ops is None:
        ops = {
            r: tuple(torch.tensor(v, dtype=torch.int32, device=device) for v in (r, 32 - r, (1 << r) - 1))
            for r in set(_ROTATIONS[0] + _ROTATIONS[1])
        }
        _ROTATION_OPERANDS[device] = ops
    return ops


_ROTATION_OPERANDS: dict[torch.device, dict[int, tuple[torch.Tensor, ...]]] = {}


def _rounds_in_place(ks: tuple, x0: torch.Tensor, x1: torch.Tensor):
    """The 20 rounds of :func:`_threefry2x32` after the first key injection, updating the
    fresh ``x0``/``x1`` in place: the same words, without a new tensor per operation."""
    t = torch.empty_like(x1)
    ops = _rotation_operands(x1.device)
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            left, right, low = ops[r]
            x0 += x1
            torch.bitwise_right_shift(x1, right, out=t)
            t &= low  # the logical shift's bits (int32 shifts right are arithmetic)
            x1 <<= left
            x1 |= t
            x1 ^= x0
        x0 += ks[(i + 1) % 3]
        x1 += ks[(i + 2) % 3] + (i + 1)
    return x0, x1


def _threefry_words(k0: int, k1: int, x0: int, x1: int) -> tuple[int, int]:
    """:func:`_threefry2x32` on Python ints (32-bit words): the host form of the same cipher."""
    m = _MASK
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = (x0 + k0) & m
    x1 = (x1 + k1) & m
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = (x0 + x1) & m
            x1 = (((x1 << r) | (x1 >> (32 - r))) & m) ^ x0
        x0 = (x0 + ks[(i + 1) % 3]) & m
        x1 = (x1 + ks[(i + 2) % 3] + i + 1) & m
    return x0, x1


#: Up to this many keys, :func:`split` runs the cipher on the host (when that is free).
_HOST_SPLIT_MAX = 32


def _host_key(k: torch.Tensor) -> tuple[int, int] | None:
    """The key's two words as Python ints when reading them costs nothing, else None."""
    if type(k) is not torch.Tensor or not host_is_free([k]):
        return None
    w0, w1 = k.tolist()
    return w0 & _MASK, w1 & _MASK


def split(k: torch.Tensor, num: int = 2) -> torch.Tensor:
    """``num`` new independent keys derived from ``k`` (which should not be used again).

    Args:
        k: a key.
        num: how many keys, ``>= 1``.

    Returns:
        The keys stacked as a ``(num, 2)`` tensor (unpack it or index it).

    Raises:
        TypeError: ``k`` is not a key.
        ValueError: ``num`` is not a positive int.
    """
    _check_key(k, "split")
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"random.split: num must be a positive int, got {num!r}")
    words = _host_key(k) if num <= _HOST_SPLIT_MAX else None
    if words is not None:
        out = [_threefry_words(*words, _SPLIT_DOMAIN, i) for i in range(num)]
        return torch.tensor(out, dtype=torch.int64, device=k.device)
    lo = torch.arange(num, dtype=torch.int32, device=k.device)
    hi = torch.full_like(lo, _SPLIT_DOMAIN)
    y0, y1 = _threefry2x32(k, hi, lo)
    return _to_word(torch.stack([y0, y1], dim=-1))


def fold_in(k: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """A new key that mixes ``data`` into ``k``: one key per step from one run key.

    Args:
        k: a key.
        data: an int (any size; its 64-bit two's-complement pattern) or an integer tensor
            scalar, e.g. the step counter (so a compiled step need not recompile).

    Returns:
        The new key.

    Raises:
        TypeError: ``k`` is not a key, or ``data`` is not an integer scalar.
    """
    _check_key(k, "fold_in")
    if isinstance(data, torch.Tensor):
        if data.numel() != 1 or data.is_floating_point():
            raise TypeError("random.fold_in: data must be an integer scalar")
    elif not isinstance(data, int) or isinstance(data, bool):
        raise TypeError(f"random.fold_in: data must be an int, got {type(data).__name__}")
    words = _host_key(k)
    if words is not None and (not isinstance(data, torch.Tensor) or host_is_free([data])):
        d = (int(data) if isinstance(data, torch.Tensor) else data) % 2**64
        y = _threefry_words(*words, (d >> 32) ^ (_FOLD_DOMAIN << 16), d & _MASK)
        return torch.tensor(y, dtype=torch.int64, device=k.device)
    if isinstance(data, torch.Tensor):
        d = data.reshape(()).to(device=k.device, dtype=torch.int64)
    else:
        d = data % 2**64  # any Python int, as its 64-bit two's-complement pattern
        d = as_tensor(d - 2**64 if d >= 2**63 else d, torch.int64, k.device)
    hi = ((d >> 32) & _MASK) ^ (_FOLD_DOMAIN << 16)
    y0, y1 = _threefry2x32(k, _to_int32(hi), _to_int32(d & _MASK))
    return _to_word(torch.stack([y0, y1]))


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"random: shape {shape} has a negative dimension")
    return shape


def _bits32(k: torch.Tensor, total: int) -> torch.Tensor:
    """``total`` random 32-bit words as a flat int32 tensor."""
    half = (total + 1) // 2
    if half >= _IN_PLACE_MIN and _eager(k):
        # Both words of every block in one buffer, ciphered in place: no concatenation.
        words = torch.empty((2, half), dtype=torch.int32, device=k.device)
        ks = _key_schedule(k)
        words[0].fill_(_SAMPLE_DOMAIN)
        words[0] += ks[0]
        torch.arange(half, out=words[1])
        words[1] += ks[1]
        _rounds_in_place(ks, words[0], words[1])
        return words.view(-1)[:total]
    lo = torch.arange(half, dtype=torch.int32, device=k.device)
    hi = torch.full_like(lo, _SAMPLE_DOMAIN)
    y0, y1 = _threefry2x32(k, hi, lo)
    return torch.cat([y0, y1])[:total]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def bits(k: torch.Tensor, shape: int | Sequence[int], words: int = 1) -> torch.Tensor:
    """Uniform random 32-bit words, the raw material of every sampler here.

    Args:
        k: a key.
        shape: the output shape.
        words: words per element; ``2`` gives a trailing axis of two.

    Returns:
        ``int64`` values in ``[0, 2**32)``, of shape ``shape`` (``(*shape, 2)`` for
        ``words=2``).

    Raises:
        TypeError: ``k`` is not a key.
        ValueError: a negative dimension.
    """
    _check_key(k, "bits")
    shape = _shape(shape)
    out = _to_word(_bits32(k, _numel(shape) * words))
    return out.reshape(*shape, words) if words > 1 else out.reshape(shape)


def _unit(k: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Floats in [0, 1) on a grid of 2**-nmant, so every value is exact in ``dtype``."""
    nmant = round(-math.log2(torch.finfo(dtype).eps))
    if nmant <= 23:
        w = _bits32(k, _numel(shape))
        b = (w >> (32 - nmant)) & ((1 << nmant) - 1)  # the top nmant bits, as a logical shift
        return (b.to(torch.float32) * 2.0**-nmant).to(dtype).reshape(shape)
    w = bits(k, shape, words=2)
    b = (w[..., 0] << 20) | (w[..., 1] >> 12)  # 52 random bits
    return b.to(torch.float64) * 2.0**-52


def uniform(
    k: torch.Tensor,
    shape: int | Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
    minval: float | torch.Tensor = 0.0,
    maxval: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Uniform samples in ``[minval, maxval)`` on the key's device.

    Values in ``[0, 1)`` lie on a grid of ``2**-mantissa_bits``, so each is exact in
    ``dtype``; the affine map to ``[minval, maxval)`` is clamped below ``maxval``.

    Args:
        k: a key.
        shape: the output shape.
        dtype: a floating dtype.
        minval: the lower bound (a number or a broadcastable tensor).
        maxval: the upper bound, excluded.

    Returns:
        A tensor of ``shape`` and ``dtype``.

    Raises:
        TypeError: ``k`` is not a key, or ``dtype`` is not floating.
        ValueError: number bounds with ``maxval <= minval``, or a negative dimension.
    """
    _check_key(k, "uniform")
    if not dtype.is_floating_point:
        raise TypeError(f"random.uniform: dtype must be floating, got {dtype}")
    u = _unit(k, _shape(shape), dtype)
    if isinstance(minval, (int, float)) and isinstance(maxval, (int, float)):
        if minval == 0.0 and maxval == 1.0:
            return u
        if not maxval > minval:
            raise ValueError(f"random.uniform: need minval < maxval, got {minval}, {maxval}")
    out = u * (maxval - minval) + minval
    # Rounding of the affine map can land on maxval itself: keep the interval half-open.
    hi = as_tensor(maxval, dtype, out.device)
    out = torch.minimum(out, torch.nextafter(hi, torch.full_like(hi, -math.inf)))
    return torch.maximum(out, as_tensor(minval, dtype, out.device))


def normal(
    k: torch.Tensor,
    shape: int | Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """Normal samples: ``sqrt(2) * erfinv(u)`` of a uniform ``u`` in ``(-1, 1)``, as JAX does.

    Args:
        k: a key.
        shape: the output shape.
        dtype: a floating dtype (computed in float32, or float64 for float64).
        mean: the mean.
        std: the standard deviation.

    Returns:
        A tensor of ``shape`` and ``dtype``.

    Raises:
        TypeError: ``k`` is not a key, or ``dtype`` is not floating.
    """
    _check_key(k, "normal")
    if not dtype.is_floating_point:
        raise TypeError(f"random.normal: dtype must be floating, got {dtype}")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    # The smallest value above -1 in the working precision (a Python constant: no graph break).
    lo = math.nextafter(-1.0, 0.0) if work == torch.float64 else -1.0 + 2.0**-24
    u = uniform(k, shape, work, minval=lo, maxval=1.0)
    z = torch.erfinv(u) * (2.0**0.5)
    if mean != 0.0 or std != 1.0:
        z = z * std + mean
    return z.to(dtype)


def bernoulli(
    k: torch.Tensor,
    p: float | torch.Tensor = 0.5,
    shape: int | Sequence[int] | None = None,
    *,
    word_bits: int = 32,
) -> torch.Tensor:
    """Boolean samples, True with probability ``p``.

    With ``word_bits=32`` each sample takes one random word and is exactly
    ``uniform(k, shape) < p`` (``p`` resolved to ``2**-23``). With ``word_bits=16`` each word
    gives two samples, its low then its high 16 bits, True below ``ceil(p * 2**16)``: ``p`` is
    rounded up to a multiple of ``2**-16`` and the cipher does half the work, which is what
    large masks such as dropout's want.

    Args:
        k: a key.
        p: the probability, a number in ``[0, 1]`` or (with 32-bit words) a tensor of them.
        shape: the output shape (default: ``p``'s shape).
        word_bits: bits of a random word per sample, 32 or 16.

    Returns:
        A bool tensor.

    Raises:
        TypeError: ``k`` is not a key.
        ValueError: a number ``p`` outside ``[0, 1]``, ``word_bits`` not 32 or 16, or a tensor
            ``p`` with 16-bit samples.
    """
    _check_key(k, "bernoulli")
    if word_bits not in (32, 16):
        raise ValueError(f"random.bernoulli: word_bits must be 32 or 16, got {word_bits!r}")
    if shape is None:
        shape = tuple(p.shape) if isinstance(p, torch.Tensor) else ()
    if isinstance(p, (int, float)) and not 0.0 <= p <= 1.0:
        raise ValueError(f"random.bernoulli: p must lie in [0, 1], got {p}")
    shape = _shape(shape)
    if isinstance(p, torch.Tensor):
        if word_bits == 16:
            raise ValueError("random.bernoulli: word_bits=16 needs a number p; use 32 for a tensor p")
        return uniform(k, shape) < p
    n = _numel(shape)
    if word_bits == 16:
        return _halves_below(_bits32(k, (n + 1) // 2), math.ceil(p * 2**16))[:n].reshape(shape)
    return _below(_bits32(k, n), _word_threshold(p)).reshape(shape)


def _halves_below(words: torch.Tensor, bound: int) -> torch.Tensor:
    """Whether each 16-bit half of int32-held words, read unsigned, is below ``bound`` in
    ``[0, 2**16]``: the low half of each word, then its high half."""
    if bound >= 2**16:
        return torch.ones(2 * words.numel(), dtype=torch.bool, device=words.device)
    low = (words & 0xFFFF) < bound
    high = ((words >> 16) & 0xFFFF) < bound  # masked: int32 shifts right are arithmetic
    return torch.stack([low, high], dim=-1).reshape(-1)


def _word_threshold(p: float) -> int:
    """The unsigned word bound ``t`` with ``uniform < p`` exactly when ``word < t``.

    ``uniform`` keeps a word's top 23 bits ``b`` as ``b * 2**-23``, and torch compares a
    float32 tensor with a number rounded to float32: ``b * 2**-23 < f32(p)`` holds exactly
    when ``b < ceil(f32(p) * 2**23)``, that is when the whole word is below that bound times
    ``2**9``.
    """
    p32 = struct.unpack("f", struct.pack("f", p))[0]
    return math.ceil(p32 * 2**23) << 9


def _below(words: torch.Tensor, bound: int) -> torch.Tensor:
    """Whether each int32-held word, read unsigned, is below ``bound`` in ``[0, 2**32]``:
    flipping the sign bit maps unsigned order onto int32's signed order."""
    if bound >= 2**32:
        return torch.ones_like(words, dtype=torch.bool)
    return (words ^ -(2**31)) < bound - 2**31


def randint(
    k: torch.Tensor, shape: int | Sequence[int], minval: int | torch.Tensor, maxval: int | torch.Tensor
) -> torch.Tensor:
    """Uniform integers in ``[minval, maxval)``.

    Args:
        k: a key.
        shape: the output shape.
        minval: the lower bound, included (an int or a broadcastable tensor).
        maxval: the upper bound, excluded (where ``maxval <= minval``, ``minval``).

    Returns:
        An ``int64`` tensor.

    Raises:
        TypeError: ``k`` is not a key.
    """
    _check_key(k, "randint")
    u = _unit(k, _shape(shape), torch.float64)
    lo = as_tensor(minval, device=k.device)
    hi = as_tensor(maxval, device=k.device)
    span = (hi - lo).clamp_min(0).to(torch.float64)
    out = lo + torch.floor(u * span).to(torch.int64)
    return torch.minimum(out, (hi - 1).clamp_min(lo)).to(torch.int64)


def permutation(k: torch.Tensor, n: int) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` (the sort order of ``n`` uniforms).

    Args:
        k: a key.
        n: the length, ``>= 0``.

    Returns:
        An ``int64`` tensor of shape ``(n,)``.

    Raises:
        TypeError: ``k`` is not a key.
        ValueError: ``n`` is not a non-negative int.
    """
    _check_key(k, "permutation")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"random.permutation: n must be a non-negative int, got {n!r}")
    return torch.argsort(_unit(k, (n,), torch.float64), stable=True)
