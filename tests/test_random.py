"""fctc.random: Threefry known answers, reproducibility, independence, ranges, no global RNG.

Statistical checks use fixed keys (so they are deterministic) and bounds of about 5 standard
errors, which a correct generator passes with overwhelming probability for any key.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fctc import backend
from fctc import random as R
from fctc import testing as ft

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
Z = 5.0  # standard errors allowed in statistical checks


def words(*values):
    return [torch.tensor(v, dtype=torch.int64) for v in values]


# ----------------------------------------------------------------------------- the cipher


@pytest.mark.parametrize(
    "key, counter, expected",
    [  # Random123's known answers for Threefry-2x32, 20 rounds (also JAX's test vectors)
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ],
)
def test_threefry_known_answers(key, counter, expected):
    c0, c1 = words(*counter)
    if hasattr(R, "_to_int32"):  # the cipher may run on int32 words internally
        c0, c1 = R._to_int32(c0), R._to_int32(c1)
    y0, y1 = R._threefry2x32(torch.tensor(key), c0, c1)
    assert (int(y0) & 0xFFFFFFFF, int(y1) & 0xFFFFFFFF) == expected


@pytest.mark.parametrize("key, counter", [((0, 0), (0, 0)), ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF)),
                                          ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3))])
def test_threefry_in_place_rounds_give_the_known_answers_in_bulk(key, counter):
    """A block of many counters takes the in-place path; each block still gives the known
    answer of its counter, the same as the tensor rounds."""
    n = R._IN_PLACE_MIN + 3
    c0, c1 = (R._to_int32(w).expand(n).clone() for w in words(*counter))
    y0, y1 = R._threefry2x32(torch.tensor(key), c0, c1)
    one = R._threefry2x32(torch.tensor(key), c0[:1], c1[:1])
    assert torch.equal(y0, one[0].expand(n)) and torch.equal(y1, one[1].expand(n))
    assert torch.equal(c0, R._to_int32(words(*counter)[0]).expand(n))  # inputs untouched


def test_bulk_bits_equal_under_vmap_and_eagerly():
    """vmap over keys runs the tensor rounds; eagerly the in-place ones: the same words."""
    keys = R.split(R.key(5), 3)
    n = 2 * R._IN_PLACE_MIN
    vmapped = torch.func.vmap(lambda k: R.bits(k, (n,)))(keys)
    assert torch.equal(vmapped, torch.stack([R.bits(k, (n,)) for k in keys]))


# ----------------------------------------------------------------------------- keys


def test_key_from_seeds():
    assert R.is_key(R.key(0)) and R.key(0).tolist() == [0, 0]
    assert R.key(2**32 + 5).tolist() == [1, 5]
    assert torch.equal(R.key(-1), R.key(2**64 - 1)) and R.key(-1).tolist() == [2**32 - 1] * 2
    assert torch.equal(R.key(torch.tensor(7)), R.key(7))
    assert not torch.equal(R.key(1), R.key(2))


@pytest.mark.parametrize("seed", [1.5, True, "1", None])
def test_key_rejects_non_int_seeds(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        R.key(seed)


BAD_KEYS = [
    (torch.tensor([1.0, 2.0]), r"torch.float32 tensor of shape \(2,\)"),
    (torch.tensor([1, 2, 3]), r"torch.int64 tensor of shape \(3,\)"),
    (torch.tensor([1, 2], dtype=torch.int32), "torch.int32"),
    (torch.zeros(2, 2, dtype=torch.int64), r"shape \(2, 2\)"),
    (42, "got int"),
]


@pytest.mark.parametrize("bad, detail", BAD_KEYS)
@pytest.mark.parametrize(
    "call",
    [
        lambda k: R.split(k),
        lambda k: R.fold_in(k, 1),
        lambda k: R.bits(k, 2),
        lambda k: R.uniform(k, 2),
        lambda k: R.normal(k, 2),
        lambda k: R.bernoulli(k, 0.5, 2),
        lambda k: R.randint(k, 2, 0, 5),
        lambda k: R.permutation(k, 3),
    ],
)
def test_bad_keys_are_named(call, bad, detail):
    pattern = rf"expected a key \(int64 tensor of shape \(2,\).*{detail}"
    with pytest.raises(TypeError, match=pattern):
        call(bad)


# ----------------------------------------------------------------------------- reproducibility


def draw_everything(k):
    ks = R.split(k, 8)
    return {
        "split": R.split(k, 3),
        "fold": R.fold_in(k, 12345),
        "bits": R.bits(ks[0], (3, 4)),
        "uniform": R.uniform(ks[1], (5,), minval=-2.0, maxval=3.0),
        "normal": R.normal(ks[2], (2, 3), dtype=torch.float64),
        "bernoulli": R.bernoulli(ks[3], 0.3, (7,)),
        "randint": R.randint(ks[4], (6,), 3, 17),
        "permutation": R.permutation(ks[5], 9),
        "half": R.uniform(ks[6], (4,), torch.bfloat16),
    }


@given(ft.keys())
def test_same_key_same_numbers_and_no_global_rng(k):
    state = torch.random.get_rng_state()
    first = ft.assert_pure(draw_everything, k)
    ft.assert_trees_equal(first, draw_everything(k.clone()))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_no_global_rng_is_read_or_written():
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    a = draw_everything(R.key(3))
    torch.manual_seed(999)
    _ = torch.rand(5)
    b = draw_everything(R.key(3))
    ft.assert_trees_equal(a, b)
    torch.manual_seed(0)
    after = torch.random.get_rng_state()
    draw_everything(R.key(3))
    assert torch.equal(torch.random.get_rng_state(), after)
    torch.random.set_rng_state(state)


def small_draw(k):
    a, b = R.split(k)
    return a, R.uniform(R.fold_in(b, 7), (16,), minval=-2.0, maxval=3.0)


def test_jit_compiled_draws_equal_eager():
    """The one inductor compile of this file: the same key gives the same bits compiled.

    (``normal`` is left out: inductor's own erfinv may differ from ATen's by an ulp.)
    """
    compiled = backend.jit(small_draw)
    ft.assert_trees_equal(compiled(R.key(11)), small_draw(R.key(11)))
    ft.assert_trees_equal(compiled(R.key(12)), small_draw(R.key(12)))  # key is data, not a constant


def _captured_graphs(fn, *args, dynamic=False):
    """``fn(*args)`` compiled through AOTAutograd on fake tensors (no inductor), with the
    FX graphs dynamo captured."""
    graphs = []

    def backend_(gm, example_inputs):
        graphs.append(gm)
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=lambda g, _: g)(gm, example_inputs)

    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend_, fullgraph=True, dynamic=dynamic)(*args)
    return out, graphs


def test_compiled_code_sees_the_cipher_rounds_as_one_operator():
    """Inlined, the 20 rounds made inductor take 30-40 s per draw to generate code: compiled,
    they are one ``fctc::threefry_rounds`` call per cipher, with the eager words."""
    n = 2 * R._IN_PLACE_MIN + 5  # a draw large enough for the in-place rounds, odd

    def draws(k):
        a, b = R.split(k)
        return a, R.bits(R.fold_in(b, 3), (n,)), R.uniform(b, (4, 3))

    for dynamic in (False, True):
        out, graphs = _captured_graphs(draws, R.key(5), dynamic=dynamic)
        ft.assert_trees_equal(out, draws(R.key(5)))
        targets = [node.target for g in graphs for node in g.graph.nodes if node.op == "call_function"]
        assert targets.count(torch.ops.fctc.threefry_rounds.default) == 4  # split, fold_in, 2 draws
        # Left inline: the key schedules' parity words and fold_in's domain, not 20 per round.
        assert sum("xor" in str(t) for t in targets) <= 2 * 4 + 1


def test_the_cipher_operator_under_vmap_and_compile():
    """vmap over keys inside compiled code batches the operator's key words (its vmap rule)."""
    keys = R.split(R.key(9), 3)

    def draw(k):
        a, b = R.split(k)
        return a, R.bits(R.fold_in(b, torch.tensor(2)), (5, 2))

    expected = [torch.stack(v) for v in zip(*[draw(k) for k in keys])]
    out, _ = _captured_graphs(torch.func.vmap(draw), keys)
    ft.assert_trees_equal(list(out), expected)
    # The rule itself, on batched and unbatched operands of different ranks.
    x0 = torch.arange(6, dtype=torch.int32).reshape(3, 2)
    x1 = torch.full((2,), 7, dtype=torch.int32)
    k0, k1, k2 = (torch.tensor([1, 2, 3], dtype=torch.int32) + i for i in range(3))
    y = torch.func.vmap(R._rounds_op, in_dims=(0, None, 0, 0, 0))(x0, x1, k0, k1, k2)
    rows = [R._rounds((k0[b], k1[b], k2[b]), x0[b], x1) for b in range(3)]
    ft.assert_trees_equal(list(y), [torch.stack(c) for c in zip(*rows)])


# ----------------------------------------------------------------------------- split / fold_in


@given(
    st.integers(0, 2**64 - 1),
    st.one_of(st.integers(-(2**70), 2**70), st.integers(-(2**31), 2**31 - 1).map(torch.tensor)),
    st.integers(1, 40),
)
def test_host_cipher_equals_tensor_cipher(seed, data, num):
    """Eagerly on the CPU, split and fold_in run the cipher in Python ints: the same words."""
    k = R.key(seed)
    host_split, host_fold = R.split(k, num), R.fold_in(k, data)
    original = R._host_key
    R._host_key = lambda k: None  # the tensor cipher, as under tracing or on accelerators
    try:
        assert torch.equal(host_split, R.split(k, num))
        assert torch.equal(host_fold, R.fold_in(k, data))
    finally:
        R._host_key = original
    assert host_split.dtype == host_fold.dtype == torch.int64


def test_split_shapes_and_distinctness():
    k = R.key(0)
    ks = R.split(k, 1000)
    assert ks.shape == (1000, 2) and ks.dtype == torch.int64 and R.is_key(ks[0])
    assert len({tuple(v) for v in ks.tolist()} | {tuple(k.tolist())}) == 1001
    assert ((ks >= 0) & (ks < 2**32)).all()
    assert torch.equal(R.split(k)[0], ks[0])  # prefix-stable
    a, b = R.split(k)  # unpacking works
    assert R.is_key(a) and R.is_key(b)
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="num must be a positive int"):
            R.split(k, bad)


def test_fold_in_data_forms_and_distinctness():
    k = R.key(5)
    assert torch.equal(R.fold_in(k, 3), R.fold_in(k, torch.tensor(3)))
    assert torch.equal(R.fold_in(k, -1), R.fold_in(k, 2**64 - 1))
    assert torch.equal(R.fold_in(k, -1), R.fold_in(k, torch.tensor(-1)))
    assert torch.equal(R.fold_in(k, 2**64 + 3), R.fold_in(k, 3))
    folded = {tuple(R.fold_in(k, d).tolist()) for d in range(500)}
    splits = {tuple(v) for v in R.split(k, 500).tolist()}
    assert len(folded) == 500 and not folded & splits
    assert not torch.equal(R.fold_in(k, 1), R.fold_in(R.key(6), 1))
    with pytest.raises(TypeError, match="data must be an int"):
        R.fold_in(k, 1.5)
    with pytest.raises(TypeError, match="integer scalar"):
        R.fold_in(k, torch.tensor(1.0))
    with pytest.raises(TypeError, match="integer scalar"):
        R.fold_in(k, torch.tensor([1, 2]))


def assert_uniform_moments(u, what):
    n = u.numel()
    mean, var = float(u.double().mean()), float(u.double().var())
    assert abs(mean - 0.5) < Z * math.sqrt(1 / 12 / n), f"{what}: mean {mean}"
    # Var of the sample variance of U(0,1) is (1/80 - 1/144) / n.
    assert abs(var - 1 / 12) < Z * math.sqrt((1 / 80 - 1 / 144) / n), f"{what}: var {var}"


def max_abs_correlation(streams):
    x = streams.double()
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)
    corr = (x @ x.T) / (x.shape[1] - 1)
    return float((corr - torch.eye(len(x), dtype=x.dtype)).abs().max())


def test_split_and_fold_in_streams_are_independent():
    n, k = 20000, R.key(2024)
    children = list(R.split(k, 8))
    folded = [R.fold_in(k, d) for d in range(8)]
    streams = torch.stack([R.uniform(c, (n,)) for c in [k, *children, *folded]])
    for i, s in enumerate(streams):
        assert_uniform_moments(s, f"stream {i}")
    # 153 pairwise correlations, each ~N(0, 1/n): a Bonferroni-safe bound.
    assert max_abs_correlation(streams) < 5.5 / math.sqrt(n)
    # Lagged self-correlation within a stream (a counter-based generator must not leak order).
    s = streams[0].double() - 0.5
    for lag in (1, 2, 7):
        r = float((s[:-lag] * s[lag:]).mean() / s.var())
        assert abs(r) < Z / math.sqrt(n), f"lag {lag}: {r}"


def test_sibling_keys_give_different_but_equally_distributed_draws():
    parent = R.key(77)
    a, b = R.split(parent)
    assert not torch.equal(R.uniform(a, (16,)), R.uniform(b, (16,)))
    grandchildren = torch.stack([R.uniform(g, (4000,)) for g in R.split(a, 16)])
    assert max_abs_correlation(grandchildren) < 5.0 / math.sqrt(4000)


# ----------------------------------------------------------------------------- distributions


@given(ft.keys(), st.integers(0, 40))
def test_bits_are_32_bit_words(k, n):
    b = R.bits(k, (n,))
    assert b.dtype == torch.int64 and b.shape == (n,)
    assert ((b >= 0) & (b < 2**32)).all()
    pair = R.bits(k, (n,), words=2)
    assert pair.shape == (n, 2)


def test_bits_are_balanced():
    b = R.bits(R.key(9), (20000,))
    per_bit = torch.stack([(b >> i) & 1 for i in range(32)]).double().mean(1)
    assert (per_bit - 0.5).abs().max() < Z * 0.5 / math.sqrt(20000)


@pytest.mark.parametrize("dtype", FLOATS)
def test_uniform_unit_interval_moments_and_dtype(dtype):
    u = R.uniform(R.key(1), (40000,), dtype)
    assert u.dtype == dtype and (u >= 0).all() and (u < 1).all()
    assert_uniform_moments(u, str(dtype))


@given(
    ft.keys(),
    st.sampled_from(FLOATS),
    st.floats(-1e3, 1e3),
    st.floats(1e-3, 1e3),
    st.integers(0, 300),
)
def test_uniform_stays_in_half_open_interval(k, dtype, low, width, n):
    lo_t = torch.tensor(low, dtype=dtype)
    hi_t = torch.tensor(low + width, dtype=dtype)
    if not hi_t > lo_t:
        return  # the interval collapses in this dtype
    u = R.uniform(k, (n,), dtype, minval=low, maxval=low + width)
    assert u.dtype == dtype and u.shape == (n,)
    assert (u >= lo_t).all() and (u < hi_t).all()


@pytest.mark.parametrize("dtype", FLOATS)
def test_extreme_bits_never_reach_the_upper_bound(dtype, monkeypatch):
    """With every random bit set, uniform stays below maxval and normal stays finite."""

    def all_ones(k, shape, words=1):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return torch.full(shape + ((words,) if words > 1 else ()), 2**32 - 1, dtype=torch.int64)

    monkeypatch.setattr(R, "bits", all_ones)
    if hasattr(R, "_bits32"):  # the internal source of raw int32 words
        ones32 = lambda k, total: torch.full((total,), -1, dtype=torch.int32)  # noqa: E731
        monkeypatch.setattr(R, "_bits32", ones32)
    k = R.key(0)
    top = torch.full((3,), 1 - torch.finfo(dtype).eps, dtype=dtype)
    ft.assert_trees_equal(R.uniform(k, (3,), dtype), top)  # the patch bites: the largest draw
    for lo, hi in [(0.0, 1.0), (5.0, 7.7), (1e-3, 1.1e-3), (-1.0, 1.0), (0.1, 0.3), (-3.3, 100.1)]:
        assert (R.uniform(k, (3,), dtype, lo, hi) < torch.tensor(hi, dtype=dtype)).all(), (lo, hi)
    assert torch.isfinite(R.normal(k, (3,), dtype)).all()
    assert R.bernoulli(k, 1.0, (3,)).all()


def test_uniform_tensor_bounds_and_errors():
    lo, hi = torch.tensor([0.0, 10.0]), torch.tensor([1.0, 20.0])
    u = R.uniform(R.key(3), (1000, 2), minval=lo, maxval=hi)
    assert (u >= lo).all() and (u < hi).all()
    assert (u[:, 1] > 10).float().mean() > 0.9
    with pytest.raises(ValueError, match="need minval < maxval"):
        R.uniform(R.key(0), 3, minval=1.0, maxval=1.0)
    with pytest.raises(TypeError, match="dtype must be floating"):
        R.uniform(R.key(0), 3, dtype=torch.int32)
    with pytest.raises(ValueError, match="negative dimension"):
        R.uniform(R.key(0), (2, -1))
    assert R.uniform(R.key(0)).shape == ()


@pytest.mark.parametrize("dtype", FLOATS)
def test_normal_moments(dtype):
    n = 40000
    z = R.normal(R.key(4), (n,), dtype)
    assert z.dtype == dtype and torch.isfinite(z).all()
    z = z.double()
    mean, var = float(z.mean()), float(z.var())
    assert abs(mean) < Z / math.sqrt(n)
    rounding = 0.01 if dtype in (torch.float16, torch.bfloat16) else 0.0
    assert abs(var - 1) < Z * math.sqrt(2 / n) + rounding
    within = float((z.abs() < 1).double().mean())  # P(|Z| < 1) = 0.6827
    p = math.erf(1 / math.sqrt(2))
    assert abs(within - p) < Z * math.sqrt(p * (1 - p) / n) + 0.01 * (dtype == torch.bfloat16)


def test_normal_mean_std_and_errors():
    z = R.normal(R.key(8), (20000,), torch.float64, mean=3.0, std=0.5)
    assert abs(float(z.mean()) - 3.0) < Z * 0.5 / math.sqrt(20000)
    assert abs(float(z.std()) - 0.5) < Z * 0.5 / math.sqrt(2 * 20000)
    base = R.normal(R.key(8), (20000,), torch.float64)
    ft.assert_trees_allclose(z, base * 0.5 + 3.0, rtol=1e-15, atol=1e-15)
    with pytest.raises(TypeError, match="dtype must be floating"):
        R.normal(R.key(0), 2, dtype=torch.int64)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_bernoulli_rate(p):
    n = 20000
    b = R.bernoulli(R.key(6), p, (n,))
    assert b.dtype == torch.bool and b.shape == (n,)
    rate = float(b.double().mean())
    assert abs(rate - p) <= Z * math.sqrt(p * (1 - p) / n)


# Probabilities on and next to the float32 grid of 2**-23, the grid of uniform's values.
_EDGE_PS = (0.0, 1.0, 0.5, 0.1, 0.9, 2.0**-23, 1.0 - 2.0**-24, 0.3 + 2.0**-30, 1e-9, 0.999999999)


@given(ft.keys(), st.sampled_from(_EDGE_PS) | st.floats(0.0, 1.0), st.integers(1, 9000))
def test_bernoulli_number_p_is_uniform_below_p_bit_for_bit(k, p, n):
    """A number p takes an integer threshold on the words (no float pass): the same samples
    as comparing uniform's floats with p, rounded to float32 as torch rounds the scalar."""
    assert torch.equal(R.bernoulli(k, p, (n,)), R.uniform(k, (n,)) < p)


def _bernoulli16_reference(k, p, n):
    """Two samples per random word, written out: sample i reads half i % 2 (low 16 bits first)
    of word i // 2, True below ceil(p * 2**16)."""
    words = R.bits(k, ((n + 1) // 2,)).tolist()
    halves = [h for w in words for h in (w & 0xFFFF, w >> 16)][:n]
    return torch.tensor([h < math.ceil(p * 2**16) for h in halves], dtype=torch.bool)


@given(ft.keys(), st.sampled_from(_EDGE_PS) | st.floats(0.0, 1.0), st.integers(1, 9000))
def test_bernoulli_from_16_bit_halves_follows_its_formula(k, p, n):
    assert torch.equal(R.bernoulli(k, p, (n,), word_bits=16), _bernoulli16_reference(k, p, n))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_bernoulli_16_bit_rate(p):
    n = 20000
    rate = float(R.bernoulli(R.key(7), p, (n,), word_bits=16).double().mean())
    assert abs(rate - p) <= Z * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("word_bits", [32, 16])
def test_bernoulli_number_p_is_the_same_under_vmap_and_compile(word_bits):
    ks = R.split(R.key(4), 3)
    n = 4 * R._IN_PLACE_MIN + 3  # the eager in-place cipher, and an odd count

    def draw(k):
        return R.bernoulli(k, 0.9, (n,), word_bits=word_bits)

    eager = torch.stack([draw(k) for k in ks])
    assert torch.equal(torch.func.vmap(draw)(ks), eager)
    assert torch.equal(torch.compile(draw, fullgraph=True, backend="eager")(ks[0]), eager[0])


def test_bernoulli_word_bits_errors():
    with pytest.raises(ValueError, match="word_bits must be 32 or 16, got 8"):
        R.bernoulli(R.key(0), 0.5, (3,), word_bits=8)
    with pytest.raises(ValueError, match="word_bits=16 needs a number p"):
        R.bernoulli(R.key(0), torch.tensor([0.5]), word_bits=16)


def test_bernoulli_tensor_p_and_errors():
    p = torch.tensor([0.0, 0.25, 1.0])
    b = R.bernoulli(R.key(2), p.expand(8000, 3).contiguous())
    assert b.shape == (8000, 3)
    assert not b[:, 0].any() and b[:, 2].all()
    assert abs(float(b[:, 1].double().mean()) - 0.25) < Z * math.sqrt(0.25 * 0.75 / 8000)
    assert R.bernoulli(R.key(2), p).shape == (3,)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
            R.bernoulli(R.key(2), bad)


@given(ft.keys(), st.integers(-50, 50), st.integers(1, 60), st.integers(0, 200))
def test_randint_range(k, low, span, n):
    r = R.randint(k, (n,), low, low + span)
    assert r.dtype == torch.int64 and r.shape == (n,)
    assert ((r >= low) & (r < low + span)).all()


def test_randint_is_uniform_over_its_range():
    n, span = 30000, 6
    counts = torch.bincount(R.randint(R.key(12), (n,), 0, span), minlength=span).double()
    p = 1 / span
    assert ((counts / n - p).abs() < Z * math.sqrt(p * (1 - p) / n)).all()
    r = R.randint(R.key(1), (4000, 2), torch.tensor([0, 100]), torch.tensor([2, 103]))
    assert set(r[:, 0].tolist()) == {0, 1} and set(r[:, 1].tolist()) == {100, 101, 102}


@given(ft.keys(), st.integers(0, 64))
def test_permutation_is_a_permutation(k, n):
    perm = R.permutation(k, n)
    assert perm.dtype == torch.int64
    assert torch.equal(perm.sort().values, torch.arange(n))


def test_permutation_is_uniform_and_checks_n():
    firsts = torch.tensor([int(R.permutation(k, 4)[0]) for k in R.split(R.key(0), 2000)])
    counts = torch.bincount(firsts, minlength=4).double() / 2000
    assert ((counts - 0.25).abs() < Z * math.sqrt(0.25 * 0.75 / 2000)).all()
    assert not torch.equal(R.permutation(R.key(0), 20), R.permutation(R.key(1), 20))
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="n must be a non-negative int"):
            R.permutation(R.key(0), bad)
