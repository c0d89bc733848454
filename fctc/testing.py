"""Hypothesis strategies and assertions for property-testing your own fctc blocks.

fctc's own layers are tested with these helpers; they are public so that a block you write
gets the same scrutiny: the right shapes, the same result whatever the padding holds, no
mutation of its inputs, and parity with a reference. Strategies draw keys, lengths, padded
batches (with *garbage* beyond each length by default, so a block that reads its padding is
caught) and the parameters of any :class:`fctc.nn.Model`. The assertions compare pytrees and
name the first leaf that differs.

A complete property test of a user-written, length-aware block::

    import torch
    from hypothesis import given

    import fctc
    from fctc import testing as ft


    def masked_scale(channels):
        # A toy block: a per-channel scale that zeroes the padding.
        def init(key):
            return {"weight": fctc.random.normal(key, (channels, 1))}, {}

        def apply(params, state, x, lengths, train=False, key=None):
            mask = fctc.nn.lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1)
            y = torch.where(mask, x * params["weight"], torch.zeros((), dtype=x.dtype))
            return (y, lengths), state

        return fctc.nn.Model(init, apply)


    model = masked_scale(3)


    @given(ft.params_of(model), ft.padded_batches(channels=3))
    def test_masked_scale(params_state, batch):
        params, state = params_state
        x, lengths = batch

        def run(x, lengths):
            return model.apply(params, state, x, lengths)[0]

        (y, y_lengths) = ft.assert_pure(run, x, lengths)  # inputs untouched, deterministic
        assert y.shape == x.shape
        ft.assert_padding_invariant(run, x, lengths)  # padding never leaks into the output
        ft.assert_batch_independent(run, x, lengths)  # examples never mix
        expected = x * params["weight"] * fctc.nn.lengths_to_mask(lengths, x.shape[-1])[:, None]
        ft.assert_trees_allclose(y, expected)

Batches are ``(B, C, T)`` (or ``(B, T)`` with ``channels=None``) with time last, which is the
layout of fctc's encoders.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import random as _random
from . import tree as _tree

try:
    from hypothesis import strategies as st
except ImportError as e:  # pragma: no cover - exercised only without the dev extra
    raise ImportError(
        "fctc.testing needs hypothesis: pip install hypothesis (or fctc[dev])"
    ) from e

__all__ = [
    "keys",
    "lengths",
    "padded_batches",
    "params_of",
    "fill_padding",
    "assert_trees_allclose",
    "assert_trees_equal",
    "assert_pure",
    "assert_padding_invariant",
    "assert_batch_independent",
]

_PADDINGS = ("garbage", "zeros", "nan")
_GARBAGE_SCALE = 1e3


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


def _as_strategy(value: Any, name: str) -> st.SearchStrategy:
    if isinstance(value, st.SearchStrategy):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return st.just(value)
    raise TypeError(f"fctc.testing: {name} must be an int or a hypothesis strategy, got {value!r}")


def keys(min_seed: int = 0, max_seed: int = 2**32 - 1) -> st.SearchStrategy[torch.Tensor]:
    """Random keys (``fctc.random.key(seed)``) for seeds in ``[min_seed, max_seed]``.

    Use it wherever a block takes a ``key``: init, dropout, augmentation. Hypothesis shrinks a
    failure to the smallest seed that shows it.

    Args:
        min_seed: the smallest seed.
        max_seed: the largest seed.

    Returns:
        A strategy of keys.

    Raises:
        ValueError: ``min_seed`` exceeds ``max_seed``.

    >>> from hypothesis import given
    >>> @given(keys())
    ... def test_uniform_is_reproducible(key):
    ...     assert torch.equal(fctc.random.uniform(key, (3,)), fctc.random.uniform(key, (3,)))
    >>> test_uniform_is_reproducible()
    """
    if min_seed > max_seed:
        raise ValueError(f"keys: min_seed={min_seed} exceeds max_seed={max_seed}")
    return st.integers(min_seed, max_seed).map(_random.key)


def _at_least(t: int, min_length: int, max_time: Any, who: str) -> int:
    """A drawn time size raised to ``min_length``; an explicit int below it is an error."""
    if min_length < 0:
        raise ValueError(f"{who}: min_length must be >= 0, got {min_length}")
    if t < min_length:
        if not isinstance(max_time, st.SearchStrategy):
            raise ValueError(f"{who}: min_length={min_length} exceeds max_time={t}")
        return min_length
    return t


@st.composite
def _lengths(draw, batch_size, max_time, min_length, full):
    b = draw(_as_strategy(batch_size, "batch_size"))
    t = _at_least(draw(_as_strategy(max_time, "max_time")), min_length, max_time, "lengths")
    if b < 0:
        raise ValueError(f"lengths: batch_size must be >= 0, got {b}")
    values = draw(st.lists(st.integers(min_length, t), min_size=b, max_size=b))
    if full and b:
        values[draw(st.integers(0, b - 1))] = t
    return torch.tensor(values, dtype=torch.int64).reshape(b)


def lengths(
    batch_size: int | st.SearchStrategy[int],
    max_time: int | st.SearchStrategy[int],
    min_length: int = 0,
    full: bool = False,
) -> st.SearchStrategy[torch.Tensor]:
    """Per-example lengths: int64, shape ``(batch_size,)``, values in ``[min_length, max_time]``.

    ``full=True`` makes at least one length equal ``max_time``, as a collate function that pads
    to the longest example does. ``batch_size`` and ``max_time`` may be strategies (a drawn
    ``max_time`` below ``min_length`` is raised to ``min_length``).

    Args:
        batch_size: the number of lengths ``B`` (an int or a strategy).
        max_time: the largest length ``T`` (an int or a strategy).
        min_length: the smallest length.
        full: make some length equal ``max_time``.

    Returns:
        A strategy of ``int64`` tensors of shape ``(B,)``; a negative size or a
        ``min_length`` above an int ``max_time`` raises ``ValueError`` when drawn.

    >>> from hypothesis import given
    >>> @given(lengths(batch_size=4, max_time=10, min_length=1, full=True))
    ... def test_lengths(ls):
    ...     assert ls.shape == (4,) and ls.dtype == torch.int64
    ...     assert 1 <= int(ls.min()) and int(ls.max()) == 10
    >>> test_lengths()
    """
    return _lengths(batch_size, max_time, min_length, full)


def fill_padding(
    x: torch.Tensor,
    lengths: torch.Tensor,
    fill: str | float = "garbage",
    key: torch.Tensor | None = None,
    time_dim: int = -1,
) -> torch.Tensor:
    """A copy of ``x`` whose positions at or beyond each example's length hold ``fill``.

    ``fill`` is a number, ``"zeros"``, ``"garbage"`` (large random values drawn from ``key``,
    the default ``key(0)``) or ``"nan"`` (NaN, +inf and -inf in turn). The valid region is
    copied unchanged. Time is ``x``'s ``time_dim``; the batch is dimension 0.

    Args:
        x: a batch, batch first.
        lengths: its lengths ``(B,)``.
        fill: what the padding gets (see above).
        key: the key for ``"garbage"``.
        time_dim: the time axis.

    Returns:
        A new tensor like ``x``.

    Raises:
        ValueError: an unknown ``fill``, or ``x`` and ``lengths`` that do not fit together.

    >>> x = torch.ones(2, 4)
    >>> fill_padding(x, torch.tensor([4, 1]), "zeros")
    tensor([[1., 1., 1., 1.],
            [1., 0., 0., 0.]])
    """
    valid = _valid_mask(x, lengths, time_dim, "fill_padding")
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        junk = torch.full_like(x, float(fill))
    elif fill == "zeros":
        junk = torch.zeros_like(x)
    elif fill == "garbage":
        k = _random.key(0) if key is None else key
        junk = _random.uniform(
            k, x.shape, x.dtype, minval=-_GARBAGE_SCALE, maxval=_GARBAGE_SCALE
        ).to(x.device)
    elif fill == "nan":
        pattern = torch.tensor([math.nan, math.inf, -math.inf], dtype=x.dtype, device=x.device)
        junk = pattern[torch.arange(x.numel(), device=x.device) % 3].reshape(x.shape)
    else:
        raise ValueError(
            f"fill_padding: fill must be a number or one of {_PADDINGS}, got {fill!r}"
        )
    return torch.where(valid, x, junk)


@st.composite
def _padded_batches(
    draw, batch_sizes, channels, max_time, min_length, dtype, padding, full, elements, scale
):
    b = draw(_as_strategy(batch_sizes, "batch_sizes"))
    c = None if channels is None else draw(_as_strategy(channels, "channels"))
    t = _at_least(draw(_as_strategy(max_time, "max_time")), min_length, max_time, "padded_batches")
    lens = draw(lengths(b, t, min_length=min_length, full=full))
    shape = (b, t) if c is None else (b, c, t)
    if elements is None:
        seed = draw(st.integers(0, 2**32 - 1))
        x = _random.normal(_random.key(seed), shape, dtype=torch.float64) * scale
    else:
        n = math.prod(shape)
        values = draw(st.lists(elements, min_size=n, max_size=n))
        x = torch.tensor(values, dtype=torch.float64).reshape(shape)
    x = x.to(dtype)
    if padding != "none":
        x = fill_padding(x, lens, padding, key=_random.key(draw(st.integers(0, 2**32 - 1))))
    return x, lens


def padded_batches(
    batch_sizes: int | st.SearchStrategy[int] = st.integers(1, 4),
    channels: int | st.SearchStrategy[int] | None = st.integers(1, 4),
    max_time: int | st.SearchStrategy[int] = st.integers(1, 16),
    min_length: int = 0,
    dtype: torch.dtype = torch.float32,
    padding: str | float = "garbage",
    full: bool = False,
    elements: st.SearchStrategy[float] | None = None,
    scale: float = 1.0,
) -> st.SearchStrategy[tuple[torch.Tensor, torch.Tensor]]:
    """Padded batches ``(x, lengths)``: ``x`` is ``(B, C, T)`` (``(B, T)`` if ``channels=None``).

    Positions at or beyond ``lengths[b]`` hold ``padding``: ``"garbage"`` (default: large
    random values, so a block that reads its padding fails a padding-invariance test),
    ``"zeros"``, ``"nan"``, a number, or ``"none"`` (leave the drawn values). The valid
    region holds standard normal values times ``scale``, drawn from a hypothesis-chosen
    seed, or, with ``elements`` (a float strategy such as ``st.floats(-1, 1)``), values drawn
    one by one, which lets hypothesis find edge cases such as constant rows (slower). Sizes
    may be ints or strategies (a drawn ``max_time`` below ``min_length`` is raised to it);
    ``full=True`` makes some length equal ``T``.

    Args:
        batch_sizes: ``B`` (an int or a strategy).
        channels: ``C`` (an int or a strategy), or None for ``(B, T)`` batches.
        max_time: ``T`` (an int or a strategy).
        min_length: the smallest length.
        dtype: a floating dtype.
        padding: what the padding holds (see above).
        full: make some length equal ``T``.
        elements: a float strategy for the values, or None for scaled normal values.
        scale: the normal values' scale.

    Returns:
        A strategy of ``(x, lengths)`` pairs.

    Raises:
        ValueError: an unknown ``padding``.
        TypeError: a non-floating ``dtype``.

    >>> from hypothesis import given
    >>> @given(padded_batches(batch_sizes=2, channels=3, max_time=5, min_length=1))
    ... def test_shapes(batch):
    ...     x, ls = batch
    ...     assert x.shape == (2, 3, 5) and x.dtype == torch.float32 and ls.shape == (2,)
    >>> test_shapes()
    """
    if not (isinstance(padding, (int, float)) or padding in _PADDINGS + ("none",)):
        raise ValueError(
            f"padded_batches: padding must be a number or one of {_PADDINGS + ('none',)}, "
            f"got {padding!r}"
        )
    if not dtype.is_floating_point:
        raise TypeError(f"padded_batches: dtype must be floating, got {dtype}")
    return _padded_batches(
        batch_sizes, channels, max_time, min_length, dtype, padding, full, elements, scale
    )


def params_of(model: Any, keys_: st.SearchStrategy[torch.Tensor] | None = None):
    """``(params, state)`` of ``model`` (any object with ``init(key)``), from a drawn key.

    Property tests then hold for every initialisation hypothesis tries, not one lucky seed.

    Args:
        model: the model (anything with ``init(key)``).
        keys_: the strategy of keys (default :func:`keys`).

    Returns:
        A strategy of ``model.init(key)`` results.

    Raises:
        TypeError: ``model`` has no ``init``.

    >>> from hypothesis import given
    >>> toy = fctc.nn.Model(lambda key: ({"w": fctc.random.normal(key, (2,))}, {}), None)
    >>> @given(params_of(toy))
    ... def test_init(params_state):
    ...     params, state = params_state
    ...     assert params["w"].shape == (2,) and state == {}
    >>> test_init()
    """
    if not callable(getattr(model, "init", None)):
        raise TypeError(
            f"params_of: expected a Model with an init(key) function, got {type(model).__name__}"
        )
    return (keys() if keys_ is None else keys_).map(model.init)


# --------------------------------------------------------------------------------------------
# Assertions
# --------------------------------------------------------------------------------------------


def _flat_with_paths(tree: Any) -> tuple[list[str], list[Any], Any]:
    leaves, spec = _tree.flatten(tree)
    return _tree.paths(tree), leaves, spec


def _check_same_structure(actual: Any, expected: Any, what: str) -> tuple[list, list, list]:
    pa, la, sa = _flat_with_paths(actual)
    pe, le, se = _flat_with_paths(expected)
    if sa != se:
        only_a = sorted(set(pa) - set(pe))
        only_e = sorted(set(pe) - set(pa))
        raise AssertionError(
            f"{what}: the trees have different structures.\n"
            f"  only in actual:   {only_a}\n  only in expected: {only_e}\n"
            f"  actual structure:   {sa}\n  expected structure: {se}"
        )
    return pa, la, le


def _name(path: str) -> str:
    return repr(path) if path else "<root>"


def _leaf_mismatch(path, a, b, rtol, atol, equal_nan, exact) -> str | None:
    """A description of how leaf ``a`` differs from ``b``, or None when they agree."""
    a_t, b_t = isinstance(a, torch.Tensor), isinstance(b, torch.Tensor)
    if not (a_t or b_t):
        if isinstance(a, (int, float, complex)) and isinstance(b, (int, float, complex)):
            if exact:
                same = a == b or (equal_nan and a != a and b != b)
            else:
                same = _scalar_isclose(a, b, rtol, atol, equal_nan)
            return None if same else f"leaf {_name(path)}: {a!r} != {b!r}"
        return None if a == b else f"leaf {_name(path)}: {a!r} != {b!r}"
    if not (a_t and b_t):
        return (
            f"leaf {_name(path)}: one side is a tensor and the other is not "
            f"({type(a).__name__} vs {type(b).__name__})"
        )
    if a.shape != b.shape:
        return f"leaf {_name(path)}: shape {tuple(a.shape)} != expected {tuple(b.shape)}"
    if a.dtype != b.dtype:
        return f"leaf {_name(path)}: dtype {a.dtype} != expected {b.dtype}"
    if a.numel() == 0:
        return None
    a_, b_ = a.detach().cpu(), b.detach().cpu()
    if a_.is_floating_point() or a_.is_complex():
        wide = torch.complex128 if a_.is_complex() else torch.float64
        a_, b_ = a_.to(wide), b_.to(wide)
        nan_a, nan_b = torch.isnan(a_), torch.isnan(b_)
        if exact:
            bad = (a_ != b_) & ~(nan_a & nan_b if equal_nan else torch.zeros_like(nan_a))
        else:
            close = torch.isclose(a_, b_, rtol=rtol, atol=atol, equal_nan=equal_nan)
            bad = ~close
        diff = (a_ - b_).abs()
        diff = torch.where(torch.isnan(diff), torch.full_like(diff.real, math.inf), diff.real)
    else:
        bad = a_ != b_
        diff = (a_.to(torch.float64) - b_.to(torch.float64)).abs()
    if not bool(bad.any()):
        return None
    count = int(bad.sum())
    worst = torch.where(bad, diff, torch.full_like(diff, -1.0))
    flat = int(worst.reshape(-1).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a_.shape))
    tol = "exact equality" if exact else f"rtol={rtol}, atol={atol}"
    return (
        f"leaf {_name(path)} (shape {tuple(a.shape)}, {a.dtype}): {count} of {a.numel()} "
        f"elements differ ({tol}); max abs diff {float(diff.reshape(-1)[flat]):.6g} at index "
        f"{index}: actual {a_.reshape(-1)[flat].item()!r}, expected {b_.reshape(-1)[flat].item()!r}"
    )


def _scalar_isclose(a, b, rtol, atol, equal_nan) -> bool:
    if isinstance(a, complex) or isinstance(b, complex):
        a, b = complex(a), complex(b)
        if equal_nan and (a != a) and (b != b):
            return True
        return abs(a - b) <= atol + rtol * abs(b)
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return equal_nan and math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * abs(b)


def _compare(actual, expected, rtol, atol, equal_nan, exact, what, msg):
    paths, la, le = _check_same_structure(actual, expected, what)
    problems = []
    for p, a, b in zip(paths, la, le):
        m = _leaf_mismatch(p, a, b, rtol, atol, equal_nan, exact)
        if m is not None:
            problems.append((p, m))
    if problems:
        first = problems[0][1]
        others = [p for p, _ in problems[1:]]
        more = f"\n  other differing leaves: {others}" if others else ""
        prefix = f"{msg}\n" if msg else ""
        raise AssertionError(f"{prefix}{what}: {first}{more}")


def assert_trees_allclose(
    actual: Any,
    expected: Any,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    equal_nan: bool = False,
    msg: str = "",
) -> None:
    """Assert two pytrees have the same structure and leaf-wise close values.

    Each tensor leaf must match in shape and dtype and satisfy
    ``|actual - expected| <= atol + rtol * |expected|`` (torch.isclose). On failure the message
    names the first differing leaf by its ``"a.b.c"`` path, the number of differing elements,
    the largest absolute difference and where it is; other differing leaves are listed.

    Args:
        actual: the pytree under test.
        expected: the reference pytree.
        rtol: relative tolerance.
        atol: absolute tolerance.
        equal_nan: count NaNs in the same places as equal.
        msg: a line put before the message on failure.

    Raises:
        AssertionError: the structures, a shape or dtype, or a value differ.

    >>> assert_trees_allclose({"w": torch.ones(2)}, {"w": torch.ones(2) + 1e-7})
    >>> assert_trees_allclose({"w": torch.ones(2)}, {"w": torch.zeros(2)})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: trees not close: leaf 'w' (shape (2,), torch.float32): 2 of 2 elements ...
    """
    _compare(actual, expected, rtol, atol, equal_nan, False, "trees not close", msg)


def assert_trees_equal(actual: Any, expected: Any, equal_nan: bool = True, msg: str = "") -> None:
    """Assert two pytrees are identical: structure, shapes, dtypes and every value.

    For bit-for-bit claims (eager == compiled, same key -> same numbers, resumed == uninterrupted
    training). NaNs in the same places count as equal unless ``equal_nan=False``.

    Args:
        actual: the pytree under test.
        expected: the reference pytree.
        equal_nan: count NaNs in the same places as equal.
        msg: a line put before the message on failure.

    Raises:
        AssertionError: the structures, a shape or dtype, or a value differ.

    >>> nan = float("nan")
    >>> assert_trees_equal((torch.tensor([1.0, nan]),), (torch.tensor([1.0, nan]),))
    >>> assert_trees_equal([torch.tensor([1, 2])], [torch.tensor([1, 3])])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: trees not equal: leaf '0' ... max abs diff 1 at index (1,): actual 2, expected 3
    """
    _compare(actual, expected, 0.0, 0.0, equal_nan, True, "trees not equal", msg)


def _snapshot(tree: Any) -> tuple[Any, list[int | None]]:
    leaves = _tree.leaves(tree)
    copies = _tree.map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, tree)
    versions = []
    for v in leaves:
        try:
            versions.append(v._version if isinstance(v, torch.Tensor) else None)
        except RuntimeError:  # inference tensors have no version counter
            versions.append(None)
    return copies, versions


def assert_pure(fn: Callable[..., Any], *args: Any, deterministic: bool = True, **kwargs: Any):
    """Call ``fn(*args, **kwargs)``, assert it left every input untouched, and return its result.

    "Untouched" means equal values and no in-place write at all (each tensor's version counter
    is unchanged, which catches an in-place op even when it restores the value). With
    ``deterministic`` (default) ``fn`` is called a second time and must return an identical
    result: a pure function's randomness comes only from its key.

    Args:
        fn: the function under test.
        *args: its positional arguments.
        deterministic: call it twice and require identical results.
        **kwargs: its keyword arguments.

    Returns:
        ``fn``'s (first) result.

    Raises:
        AssertionError: ``fn`` wrote to or changed an input, or is not deterministic.

    >>> assert_pure(lambda x: x * 2, torch.ones(3))
    tensor([2., 2., 2.])
    >>> assert_pure(lambda x: x.mul_(2), torch.ones(3))
    Traceback (most recent call last):
    ...
    AssertionError: assert_pure: fn wrote in place to its input at 'args.0'
    """
    inputs = {"args": args, "kwargs": kwargs}
    before, versions = _snapshot(inputs)
    result = fn(*args, **kwargs)
    paths = _tree.paths(inputs)
    for p, v, ver in zip(paths, _tree.leaves(inputs), versions):
        if isinstance(v, torch.Tensor) and ver is not None and v._version != ver:
            raise AssertionError(f"assert_pure: fn wrote in place to its input at {p!r}")
    _compare(inputs, before, 0.0, 0.0, True, True, "assert_pure: fn changed its inputs", "")
    if deterministic:
        again = fn(*args, **kwargs)
        _compare(again, result, 0.0, 0.0, True, True, "assert_pure: fn is not deterministic", "")
    return result


def _valid_mask(x: torch.Tensor, lengths: torch.Tensor, time_dim: int, who: str) -> torch.Tensor:
    """A bool mask broadcastable to ``x``: True where the time index is below the length."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who}: x must be a tensor with batch and time dims, got {shape}")
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (x.shape[0],):
        got = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(
            f"{who}: lengths must have shape ({x.shape[0]},) for x of shape {tuple(x.shape)}, "
            f"got {got}"
        )
    time_dim = time_dim % x.dim()
    if time_dim == 0:
        raise ValueError(f"{who}: time_dim cannot be the batch dimension 0")
    t = x.shape[time_dim]
    view = [1] * x.dim()
    view[time_dim] = t
    positions = torch.arange(t, device=x.device).reshape(view)
    lens = lengths.to(device=x.device, dtype=torch.int64).reshape([-1] + [1] * (x.dim() - 1))
    return positions < lens


def _split_output(out: Any, who: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, (tuple, list)) and len(out) == 2 and all(
        isinstance(o, torch.Tensor) for o in out
    ):
        return out[0], out[1]
    raise TypeError(
        f"{who}: fn must return a tensor y or a pair (y, lengths), got {type(out).__name__}"
    )


def _masked_output(y, y_lengths, in_lengths, time_dim, who):
    ls = in_lengths if y_lengths is None else y_lengths
    return torch.where(_valid_mask(y, ls, time_dim, who), y, torch.zeros((), dtype=y.dtype))


def _first_run(fn, x, lengths, time_dim, who):
    """``fn(x, lengths)`` after checking the batch: ``(output, y, y_lengths or None)``."""
    _valid_mask(x, lengths, time_dim, who)
    out = fn(x, lengths)
    return (out, *_split_output(out, who))


def _agrees(out, ref, ref_lengths, in_lengths, out_time_dim, tol, who, lengths_msg, values_msg):
    """Assert that output ``out`` of a second run of ``fn`` has the reference's lengths and,
    where valid, its values (``ref`` is the first run's masked output)."""
    y, y_lengths = _split_output(out, who)
    if ref_lengths is not None:
        assert_trees_equal(y_lengths, ref_lengths, msg=f"{who}: {lengths_msg}")
    got = _masked_output(y, y_lengths, in_lengths, out_time_dim, who)
    assert_trees_allclose(got, ref, rtol=tol[0], atol=tol[1], msg=f"{who}: {values_msg}")


def assert_padding_invariant(
    fn: Callable[[torch.Tensor, torch.Tensor], Any],
    x: torch.Tensor,
    lengths: torch.Tensor,
    fills: Sequence[str | float] = ("zeros", "garbage"),
    time_dim: int = -1,
    out_time_dim: int = -1,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    seed: int = 1,
):
    """Assert that what ``x`` holds beyond each length never changes ``fn``'s valid outputs.

    ``fn(x, lengths)`` returns ``y`` or ``(y, y_lengths)``. It is run on ``x`` and again with
    the padding replaced by each of ``fills`` (see :func:`fill_padding`; add ``"nan"`` for a
    block that must survive NaN padding); ``y`` must agree at positions below ``y_lengths``
    (or below ``lengths`` when ``fn`` returns no lengths, in which case the output must keep
    the input's time size), and ``y_lengths`` must agree exactly.

    Args:
        fn: the block under test, ``fn(x, lengths) -> y`` or ``(y, y_lengths)``.
        x: a padded batch, batch first.
        lengths: its lengths ``(B,)``.
        fills: the paddings to try (see :func:`fill_padding`).
        time_dim: the time axis of ``x``.
        out_time_dim: the time axis of ``y``.
        rtol: relative tolerance of the comparison.
        atol: absolute tolerance of the comparison.
        seed: the first key's seed for ``"garbage"`` fills (one key per fill).

    Returns:
        ``fn``'s output on ``x``.

    Raises:
        AssertionError: a fill changed the valid outputs or the output lengths.
        ValueError: ``fn`` changed the time size without returning lengths, or ``x`` and
            ``lengths`` do not fit together.
        TypeError: ``fn`` returned something other than ``y`` or ``(y, y_lengths)``.

    >>> from fctc.nn import normalize_tensor, lengths_to_mask
    >>> def norm(x, ls):
    ...     return normalize_tensor(x, lengths_to_mask(ls, x.shape[-1]).unsqueeze(1))
    >>> x, ls = torch.randn(2, 3, 6), torch.tensor([6, 2])
    >>> _ = assert_padding_invariant(norm, x, ls, fills=("zeros", "garbage", "nan"))
    >>> assert_padding_invariant(lambda x, ls: x - x.mean(-1, keepdim=True), x, ls)  # unmasked mean
    Traceback (most recent call last):
    ...
    AssertionError: ...
    """
    who = "assert_padding_invariant"
    out, y, y_lengths = _first_run(fn, x, lengths, time_dim, who)
    if y_lengths is None and y.shape[out_time_dim] != x.shape[time_dim]:
        raise ValueError(
            f"{who}: fn changed the time size ({x.shape[time_dim]} -> {y.shape[out_time_dim]}) "
            "but returned no output lengths; return (y, y_lengths)"
        )
    ref = _masked_output(y, y_lengths, lengths, out_time_dim, who)
    for i, fill in enumerate(fills):
        x2 = fill_padding(x, lengths, fill, key=_random.key(seed + i), time_dim=time_dim)
        _agrees(
            fn(x2, lengths), ref, y_lengths, lengths, out_time_dim, (rtol, atol), who,
            f"output lengths changed with {fill!r} padding",
            f"the valid outputs changed when the padding was filled with {fill!r}",
        )
    return out


def assert_batch_independent(
    fn: Callable[[torch.Tensor, torch.Tensor], Any],
    x: torch.Tensor,
    lengths: torch.Tensor,
    time_dim: int = -1,
    out_time_dim: int = -1,
    rtol: float = 1e-5,
    atol: float = 1e-6,
):
    """Assert that each example's valid output is what ``fn`` gives for that example alone.

    Catches blocks that mix examples (statistics over the batch in eval mode, a wrong
    reshape). ``fn`` is as in :func:`assert_padding_invariant`; each example is run as a
    batch of one with the same time size.

    Args:
        fn: the block under test, ``fn(x, lengths) -> y`` or ``(y, y_lengths)``.
        x: a padded batch, batch first.
        lengths: its lengths ``(B,)``.
        time_dim: the time axis of ``x``.
        out_time_dim: the time axis of ``y``.
        rtol: relative tolerance of the comparison.
        atol: absolute tolerance of the comparison.

    Returns:
        ``fn``'s output on the whole batch.

    Raises:
        AssertionError: an example alone gives other valid outputs or another length.
        ValueError: ``x`` and ``lengths`` do not fit together.
        TypeError: ``fn`` returned something other than ``y`` or ``(y, y_lengths)``.

    >>> x, ls = torch.randn(3, 2, 5), torch.tensor([5, 3, 1])
    >>> _ = assert_batch_independent(lambda x, ls: (x * 2, ls), x, ls)
    >>> assert_batch_independent(lambda x, ls: x - x.mean(0), x, ls)
    Traceback (most recent call last):
    ...
    AssertionError: ...
    """
    who = "assert_batch_independent"
    out, y, y_lengths = _first_run(fn, x, lengths, time_dim, who)
    full = _masked_output(y, y_lengths, lengths, out_time_dim, who)
    for b in range(x.shape[0]):
        one = slice(b, b + 1)
        _agrees(
            fn(x[one], lengths[one]), full[one], None if y_lengths is None else y_lengths[one],
            lengths[one], out_time_dim, (rtol, atol), who, f"output length of example {b}",
            f"example {b} alone gives a different output than inside the batch",
        )
    return out
