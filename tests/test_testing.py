"""fctc.testing: every strategy draws what it promises, every assertion fails when it should."""

import doctest
import math
import re
import textwrap

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fctc
from fctc import testing as ft

# ----------------------------------------------------------------------------- documentation


def test_module_docstring_example_runs():
    """The complete property test in the module docstring is real, runnable code."""
    doc = ft.__doc__
    block = doc[doc.index("::\n") + 3 : doc.index("Batches are")]
    namespace: dict = {}
    exec(compile(textwrap.dedent(block), "<fctc.testing docstring>", "exec"), namespace)
    namespace["test_masked_scale"]()


def test_docstring_examples_pass():
    result = doctest.testmod(
        ft, extraglobs={"fctc": fctc, "torch": torch}, optionflags=doctest.ELLIPSIS
    )
    assert result.attempted >= 20 and result.failed == 0


def test_every_public_function_has_an_example():
    for name in ft.__all__:
        assert ">>>" in (getattr(ft, name).__doc__ or ""), name


# ----------------------------------------------------------------------------- strategies


@given(ft.keys())
def test_keys_are_valid_keys(key):
    assert fctc.random.is_key(key)
    fctc.random.uniform(key, (2,))


@given(ft.keys(min_seed=5, max_seed=5))
def test_keys_respect_seed_range(key):
    assert torch.equal(key, fctc.random.key(5))


def test_keys_rejects_empty_range():
    with pytest.raises(ValueError, match="min_seed=3 exceeds max_seed=2"):
        ft.keys(3, 2)


@given(ft.lengths(batch_size=st.integers(0, 6), max_time=st.integers(0, 9), min_length=0))
def test_lengths_shape_dtype_and_range(ls):
    assert ls.dtype == torch.int64 and ls.dim() == 1 and ls.shape[0] <= 6
    assert ls.numel() == 0 or (0 <= int(ls.min()) and int(ls.max()) <= 9)


@given(ft.lengths(batch_size=3, max_time=st.integers(0, 7), min_length=2, full=True))
def test_lengths_full_and_min_length(ls):
    assert ls.shape == (3,)
    assert int(ls.min()) >= 2  # a drawn max_time below 2 is raised to 2
    assert int(ls.max()) == max(2, int(ls.max()))
    assert (ls == ls.max()).any()


@given(ft.lengths(batch_size=4, max_time=6, full=True))
def test_lengths_full_reaches_max_time(ls):
    assert int(ls.max()) == 6


def test_lengths_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_length=5 exceeds max_time=3"):
        given(ft.lengths(2, 3, min_length=5))(lambda ls: None)()
    with pytest.raises(TypeError, match="batch_size must be an int or a hypothesis strategy"):
        given(ft.lengths(2.5, 3))(lambda ls: None)()


@given(
    ft.padded_batches(
        batch_sizes=st.integers(1, 3),
        channels=None,
        max_time=st.integers(1, 8),
        dtype=torch.float64,
        padding="zeros",
    )
)
def test_padded_batches_without_channels_zero_padding(batch):
    x, ls = batch
    assert x.dim() == 2 and x.dtype == torch.float64 and ls.shape == (x.shape[0],)
    beyond = ~fctc.nn.lengths_to_mask(ls, x.shape[-1])
    assert (x[beyond] == 0).all()
    assert torch.isfinite(x).all()


@given(ft.padded_batches(batch_sizes=3, channels=2, max_time=12, min_length=1))
def test_padded_batches_garbage_is_large_and_valid_region_normal(batch):
    x, ls = batch
    assert x.shape == (3, 2, 12) and x.dtype == torch.float32
    mask = fctc.nn.lengths_to_mask(ls, 12).unsqueeze(1).expand_as(x)
    assert x[mask].abs().max() < 10  # standard normal values
    garbage = x[~mask]
    if garbage.numel() >= 4:
        assert garbage.abs().max() > 10  # uniform on (-1000, 1000)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_padded_batches_dtypes(dtype):
    @given(ft.padded_batches(dtype=dtype))
    def check(batch):
        assert batch[0].dtype == dtype

    check()


@given(ft.padded_batches(batch_sizes=2, channels=1, max_time=9, padding="nan", full=True))
def test_padded_batches_nan_padding(batch):
    x, ls = batch
    mask = fctc.nn.lengths_to_mask(ls, 9).unsqueeze(1)
    assert torch.isfinite(x[mask.expand_as(x)]).all()
    assert not torch.isfinite(x[~mask.expand_as(x)]).any()


@given(ft.padded_batches(batch_sizes=2, channels=2, max_time=5, padding=-7.5))
def test_padded_batches_numeric_padding(batch):
    x, ls = batch
    mask = fctc.nn.lengths_to_mask(ls, 5).unsqueeze(1).expand_as(x)
    assert (x[~mask] == -7.5).all()


@given(ft.padded_batches(max_time=6, elements=st.floats(-2, 2), padding="none"))
def test_padded_batches_elementwise_values(batch):
    x, _ = batch
    assert (x.abs() <= 2).all()


def test_padded_batches_rejects_bad_arguments():
    with pytest.raises(ValueError, match="padding must be"):
        ft.padded_batches(padding="junk")
    with pytest.raises(TypeError, match="dtype must be floating"):
        ft.padded_batches(dtype=torch.int32)


def test_fill_padding_keeps_valid_region_and_handles_time_dim():
    x = torch.arange(24.0).reshape(2, 4, 3)  # (B, T, C): time in the middle
    out = ft.fill_padding(x, torch.tensor([4, 1]), "zeros", time_dim=1)
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1, :1], x[1, :1]) and (out[1, 1:] == 0).all()
    garbage = ft.fill_padding(x, torch.tensor([4, 1]), "garbage", key=fctc.random.key(3))
    assert torch.equal(garbage, ft.fill_padding(x, torch.tensor([4, 1]), key=fctc.random.key(3)))
    assert not torch.equal(garbage, x)
    assert torch.equal(x, torch.arange(24.0).reshape(2, 4, 3))  # input untouched


def test_fill_padding_rejects_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        ft.fill_padding(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="time_dim cannot be the batch dimension"):
        ft.fill_padding(x, torch.tensor([1, 2]), time_dim=0)
    with pytest.raises(ValueError, match="fill must be a number or one of"):
        ft.fill_padding(x, torch.tensor([1, 2]), "ones")
    with pytest.raises(ValueError, match="batch and time dims"):
        ft.fill_padding(torch.zeros(3), torch.tensor([1, 2, 3]))


def _toy_model(n):
    def init(key):
        k1, k2 = fctc.random.split(key)
        return {"w": fctc.random.normal(k1, (n,))}, {"count": fctc.random.randint(k2, (), 0, 9)}

    return fctc.nn.Model(init, None)


@given(ft.params_of(_toy_model(3)))
def test_params_of_calls_init(params_state):
    params, state = params_state
    assert params["w"].shape == (3,) and state["count"].dtype == torch.int64


@given(ft.params_of(_toy_model(4), ft.keys(7, 7)))
def test_params_of_uses_given_keys(params_state):
    ft.assert_trees_equal(params_state, _toy_model(4).init(fctc.random.key(7)))


def test_params_of_rejects_non_models():
    with pytest.raises(TypeError, match="expected a Model with an init"):
        ft.params_of(object())


# ----------------------------------------------------------------------------- tree assertions


def test_assert_trees_allclose_passes_and_names_first_differing_leaf():
    a = {"a": torch.ones(3), "b": {"c": torch.tensor([1.0, 2.0, 3.0]), "d": torch.zeros(2)}}
    ft.assert_trees_allclose(a, {**a, "a": a["a"] + 1e-7})
    b = {"a": torch.ones(3) + 1, "b": {"c": torch.tensor([1.0, 2.5, 3.0]), "d": torch.zeros(2)}}
    with pytest.raises(AssertionError) as info:
        ft.assert_trees_allclose(b, a, msg="after one step")
    text = str(info.value)
    assert text.startswith("after one step\n")
    assert "leaf 'a'" in text and "3 of 3 elements differ" in text and "max abs diff 1" in text
    assert "other differing leaves: ['b.c']" in text
    with pytest.raises(AssertionError, match=r"leaf 'b\.c'.*max abs diff 0\.5 at index \(1,\)"):
        ft.assert_trees_allclose({**a, "b": b["b"]}, a)


def test_assert_trees_allclose_tolerances():
    x = torch.tensor([100.0, 1.0])
    ft.assert_trees_allclose(x + torch.tensor([0.5, 0.0]), x, rtol=1e-2, atol=0)
    with pytest.raises(AssertionError, match="max abs diff 0.5"):
        ft.assert_trees_allclose(x + torch.tensor([0.0, 0.5]), x, rtol=1e-2, atol=0)
    ft.assert_trees_allclose(x + 0.5, x, rtol=0, atol=0.5)


def test_assert_trees_allclose_structure_shape_dtype_mismatches():
    only = r"(?s)different structures.*only in actual:\s+\['extra'\]"
    with pytest.raises(AssertionError, match=only):
        ft.assert_trees_allclose({"w": torch.ones(1), "extra": torch.ones(1)}, {"w": torch.ones(1)})
    with pytest.raises(AssertionError, match=r"shape \(2,\) != expected \(1, 2\)"):
        ft.assert_trees_allclose({"w": torch.ones(2)}, {"w": torch.ones(1, 2)})
    with pytest.raises(AssertionError, match="dtype torch.float64 != expected torch.float32"):
        ft.assert_trees_allclose({"w": torch.ones(2, dtype=torch.float64)}, {"w": torch.ones(2)})
    with pytest.raises(AssertionError, match="one side is a tensor"):
        ft.assert_trees_allclose([torch.ones(1)], [1.0])


def test_assert_trees_allclose_nan_inf_and_python_leaves():
    nan = torch.tensor([float("nan"), 1.0])
    with pytest.raises(AssertionError, match="max abs diff inf"):
        ft.assert_trees_allclose(nan, nan.clone())
    ft.assert_trees_allclose(nan, nan.clone(), equal_nan=True)
    inf = torch.tensor([float("inf")])
    ft.assert_trees_allclose(inf, inf.clone())
    with pytest.raises(AssertionError):
        ft.assert_trees_allclose(inf, -inf)
    hyper = {"lr": 0.1, "name": "adam", "n": 3}
    ft.assert_trees_allclose(hyper, {**hyper, "lr": 0.1 + 1e-9})
    with pytest.raises(AssertionError, match="leaf 'name': 'adam' != 'sgd'"):
        ft.assert_trees_allclose({"name": "adam"}, {"name": "sgd"})
    with pytest.raises(AssertionError, match="leaf 'lr'"):
        ft.assert_trees_allclose({"lr": 0.1}, {"lr": 0.2})
    ft.assert_trees_allclose(torch.tensor([1 + 1j]), torch.tensor([1 + 1j]))
    with pytest.raises(AssertionError, match="max abs diff 1"):
        ft.assert_trees_allclose(torch.tensor([1 + 1j]), torch.tensor([1 + 0j]))
    ft.assert_trees_allclose(torch.zeros(0, 3), torch.ones(0, 3))


def test_assert_trees_equal_is_exact():
    x = torch.tensor([1.0, 2.0])
    ft.assert_trees_equal({"x": x, "n": 3}, {"x": x.clone(), "n": 3})
    one_ulp = torch.nextafter(x, torch.tensor(math.inf))
    with pytest.raises(AssertionError, match=r"leaf 'x'.*exact equality"):
        ft.assert_trees_equal({"x": one_ulp}, {"x": x})
    nan = torch.tensor([float("nan")])
    ft.assert_trees_equal(nan, nan.clone())
    with pytest.raises(AssertionError):
        ft.assert_trees_equal(nan, nan.clone(), equal_nan=False)
    with pytest.raises(AssertionError, match=r"leaf '1'.*actual 2, expected 3"):
        ft.assert_trees_equal(
            (torch.tensor(1), torch.tensor(2)), (torch.tensor(1), torch.tensor(3))
        )
    with pytest.raises(AssertionError, match="leaf 'n': 3 != 4"):
        ft.assert_trees_equal({"n": 3}, {"n": 4})
    with pytest.raises(AssertionError, match="dtype"):
        ft.assert_trees_equal(torch.tensor([1]), torch.tensor([1.0]))


# ----------------------------------------------------------------------------- purity


def test_assert_pure_returns_result_for_pure_functions():
    params = {"w": torch.ones(2, 3)}
    def affine(p, x, scale=1.0):
        return p["w"] @ x * scale

    out = ft.assert_pure(affine, params, torch.ones(3), scale=2.0)
    assert torch.equal(out, torch.full((2,), 6.0))


def test_assert_pure_catches_in_place_writes_even_when_undone():
    def sneaky(p, x):
        p["w"].add_(1).sub_(1)  # value restored, but written
        return x

    with pytest.raises(AssertionError, match=r"wrote in place to its input at 'args\.0\.w'"):
        ft.assert_pure(sneaky, {"w": torch.ones(2)}, torch.ones(1))
    with pytest.raises(AssertionError, match=r"'kwargs\.x'"):
        ft.assert_pure(lambda x: x.zero_(), x=torch.ones(2))


def test_assert_pure_catches_replaced_containers_and_nondeterminism():
    def swaps(state):
        state["step"] = state["step"] + 1  # mutates the dict, not the tensor
        return state["step"]

    with pytest.raises(AssertionError, match="changed its inputs"):
        ft.assert_pure(swaps, {"step": torch.tensor(0)})

    gen = torch.Generator().manual_seed(0)
    with pytest.raises(AssertionError, match="not deterministic"):
        ft.assert_pure(lambda x: x + torch.rand(2, generator=gen), torch.zeros(2))
    ft.assert_pure(lambda x: x + torch.rand(2, generator=gen), torch.zeros(2), deterministic=False)


# ----------------------------------------------------------------------------- padding / batch


def _masked_mean(x, lengths):
    mask = fctc.nn.lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1)
    total = torch.where(mask, x, 0).sum(-1, keepdim=True)
    return total / lengths.clamp_min(1)[:, None, None].to(x.dtype)


@given(ft.padded_batches())
def test_assert_padding_invariant_accepts_masked_blocks(batch):
    x, ls = batch
    out = ft.assert_padding_invariant(
        lambda x, ls: (_masked_mean(x, ls).expand_as(x).contiguous(), ls), x, ls,
        fills=("zeros", "garbage", "nan", 3.0),
    )
    assert out[0].shape == x.shape


def test_assert_padding_invariant_rejects_leaky_blocks():
    x, ls = torch.randn(2, 3, 6), torch.tensor([6, 2])
    with pytest.raises(AssertionError, match="filled with 'zeros'"):
        ft.assert_padding_invariant(lambda x, ls: x - x.mean(-1, keepdim=True), x, ls)
    def mask_mul(x, ls):  # zeroes the padding by multiplication, then mixes over time
        masked = x * fctc.nn.lengths_to_mask(ls, 6).unsqueeze(1)
        return masked.sum(-1, keepdim=True).expand_as(x)

    ft.assert_padding_invariant(mask_mul, x, ls)  # fine with finite padding ...
    with pytest.raises(AssertionError, match="filled with 'nan'"):
        ft.assert_padding_invariant(mask_mul, x, ls, fills=("nan",))  # ... but NaN * 0 = NaN


def test_assert_padding_invariant_checks_output_lengths():
    x, ls = torch.randn(2, 1, 6), torch.tensor([6, 2])

    def lengths_from_padding(x, ls):
        return x, (x[:, 0] != 0).sum(-1)

    with pytest.raises(AssertionError, match="output lengths changed"):
        ft.assert_padding_invariant(lengths_from_padding, x, ls)

    def downsample(x, ls):  # stride 2 on the valid region, with matching output lengths
        mask = fctc.nn.lengths_to_mask(ls, x.shape[-1]).unsqueeze(1)
        return torch.where(mask, x, 0)[..., ::2], (ls + 1) // 2

    ft.assert_padding_invariant(downsample, x, ls)
    with pytest.raises(ValueError, match="returned no output lengths"):
        ft.assert_padding_invariant(lambda x, ls: x[..., ::2], x, ls)
    with pytest.raises(TypeError, match="a tensor y or a pair"):
        ft.assert_padding_invariant(lambda x, ls: [x], x, ls)


@given(ft.padded_batches(batch_sizes=st.integers(1, 3)))
def test_assert_batch_independent_accepts_per_example_blocks(batch):
    x, ls = batch
    ft.assert_batch_independent(lambda x, ls: _masked_mean(x, ls).expand_as(x), x, ls)


def test_assert_batch_independent_rejects_batch_mixing():
    x, ls = torch.randn(3, 2, 5), torch.tensor([5, 3, 1])
    with pytest.raises(AssertionError, match="example 0 alone"):
        ft.assert_batch_independent(lambda x, ls: x - x.mean(0), x, ls)
    with pytest.raises(AssertionError, match="output length of example 1"):
        ft.assert_batch_independent(lambda x, ls: (x, ls * 0 + ls.max()), x, ls)


def test_messages_name_the_fill():
    x, ls = torch.randn(1, 1, 4), torch.tensor([2])
    with pytest.raises(AssertionError) as info:
        ft.assert_padding_invariant(lambda x, ls: x.sum(-1, keepdim=True).expand_as(x), x, ls)
    assert re.search(r"filled with 'zeros'", str(info.value))
