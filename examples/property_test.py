"""Property-test a block you wrote, with fctc.testing and hypothesis.

    pytest examples/property_test.py

The block: a time-channel separable convolution (QuartzNet's building block) over
``(x, lengths)``, made of fctc's masked convolutions. The properties: the shapes and lengths
come out right; it is pure (inputs untouched, same output twice); what the padding holds never
reaches the valid outputs; examples in a batch never mix; and it matches the same computation
written with ``torch.nn.Conv1d``, for every initialisation hypothesis draws.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fctc
from fctc import testing as ft
from fctc.models import masked_conv1d

CHANNELS, KERNEL = 3, 5


def separable_conv(channels: int, kernel_size: int) -> fctc.nn.Model:
    """Depthwise masked conv ("same" padding), then a pointwise one; lengths pass through."""
    return fctc.nn.sequential(
        masked_conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels),
        masked_conv1d(channels, channels, 1),
    )


block = separable_conv(CHANNELS, KERNEL)
batches = ft.padded_batches(channels=CHANNELS, max_time=st.integers(1, 12), min_length=1)


@settings(max_examples=20, deadline=None)
@given(ft.params_of(block), batches)
def test_separable_conv_properties(params_state, batch):
    params, state = params_state
    x, lengths = batch

    def run(x, lengths):
        return block.apply(params, state, x, lengths)[0]

    y, y_lengths = ft.assert_pure(run, x, lengths)
    assert y.shape == x.shape and torch.equal(y_lengths, lengths)
    ft.assert_padding_invariant(run, x, lengths)
    ft.assert_batch_independent(run, x, lengths)


@settings(max_examples=20, deadline=None)
@given(ft.params_of(block), batches)
def test_separable_conv_matches_torch_nn(params_state, batch):
    params, state = params_state
    x, lengths = batch
    reference = torch.nn.Sequential(
        torch.nn.Conv1d(CHANNELS, CHANNELS, KERNEL, padding=KERNEL // 2, groups=CHANNELS, bias=False),
        torch.nn.Conv1d(CHANNELS, CHANNELS, 1, bias=False),
    )
    # The pytree paths are the reference's state_dict keys, up to the masked conv's "conv".
    reference.load_state_dict({f"{i}.weight": params[str(i)]["conv"]["weight"] for i in range(2)})
    x0 = ft.fill_padding(x, lengths, "zeros")
    y, _ = block.apply(params, state, x, lengths)[0]
    with torch.no_grad():
        expected = reference(x0)
    # The reference sees zeros at the padding; the pointwise conv of the block masks its input
    # again, so compare the valid steps only.
    valid = fctc.nn.lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1)
    ft.assert_trees_allclose(y * valid, expected * valid, rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    test_separable_conv_properties()
    test_separable_conv_matches_torch_nn()
    print("all properties hold")
