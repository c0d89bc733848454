import math
import warnings
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import fctc.losses
from fctc import backend
from fctc.losses import REDUCTIONS, ctc_loss, infeasible_count


def batch(seed=0, b=3, vocab=5, t=12, max_target=4, blank=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, vocab, t, generator=g, dtype=dtype)
    lengths = torch.randint(max_target * 2 + 1, t + 1, (b,), generator=g)
    target_lengths = torch.randint(1, max_target + 1, (b,), generator=g)
    targets = torch.randint(0, vocab - 1, (b, max_target), generator=g)  # never the blank
    targets[torch.arange(max_target) >= target_lengths.unsqueeze(1)] = blank  # padding
    return logits, lengths, targets, target_lengths


def reference(logits, lengths, targets, target_lengths, blank, reduction):
    log_probs = F.log_softmax(logits.permute(2, 0, 1), dim=2)
    return F.ctc_loss(log_probs, targets, lengths, target_lengths, blank=blank,
                      reduction=reduction, zero_infinity=True)


@pytest.mark.parametrize("seed", range(3))
def test_matches_direct_torch_ctc(seed):
    logits, lengths, targets, target_lengths = batch(seed)
    args = (logits, lengths, targets, target_lengths)
    per = reference(*args, 4, "none")
    torch.testing.assert_close(ctc_loss(*args, blank=4, reduction="none"), per)
    torch.testing.assert_close(ctc_loss(*args, blank=4), reference(*args, 4, "mean"))
    torch.testing.assert_close(
        ctc_loss(*args, blank=4, reduction="mean"), reference(*args, 4, "mean")
    )
    torch.testing.assert_close(ctc_loss(*args, blank=4, reduction="sum"), per.sum())
    torch.testing.assert_close(ctc_loss(*args, blank=4, reduction="espnet"), per.sum() / 3)
    # thunder's reduction: per-utterance loss over target length, then the batch mean.
    torch.testing.assert_close(
        ctc_loss(*args, blank=4, reduction="thunder"), (per / target_lengths).mean()
    )


def test_hand_computed_tiny_cases():
    # Two classes (blank=0, label=1), two frames, target "1": the alignments are
    # (1,1), (0,1), (1,0), so p = a1*b1 + a0*b1 + a1*b0.
    p = torch.tensor([[0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)  # (time, vocab)
    logits = p.log().T.unsqueeze(0)  # (1, vocab, time); log_softmax gives back log p
    a, b_ = p[0], p[1]
    expected = -math.log(a[1] * b_[1] + a[0] * b_[1] + a[1] * b_[0])
    loss = ctc_loss(logits, torch.tensor([2]), torch.tensor([[1]]), torch.tensor([1]), blank=0,
                    reduction="sum")
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # One frame only counts for the first frame.
    loss1 = ctc_loss(logits, torch.tensor([1]), torch.tensor([[1]]), torch.tensor([1]), blank=0,
                     reduction="none")
    assert loss1.item() == pytest.approx(-math.log(0.7), rel=1e-12)
    # Target "1 1" needs a blank between the repeats: 3 frames, only path 1,0,1.
    p3 = torch.tensor([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]], dtype=torch.float64)
    loss3 = ctc_loss(p3.log().T.unsqueeze(0), torch.tensor([3]), torch.tensor([[1, 1]]),
                     torch.tensor([2]), blank=0, reduction="sum")
    assert loss3.item() == pytest.approx(-math.log(0.8 * 0.9 * 0.6), rel=1e-12)
    # "thunder" divides that by the target length 2.
    loss3t = ctc_loss(p3.log().T.unsqueeze(0), torch.tensor([3]), torch.tensor([[1, 1]]),
                      torch.tensor([2]), blank=0)
    assert loss3t.item() == pytest.approx(-math.log(0.8 * 0.9 * 0.6) / 2, rel=1e-12)


def test_infeasible_targets_give_zero_loss_and_a_counting_warning():
    logits = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 1, 2], [1, 2, 3], [1, 2, 0]])
    target_lengths = torch.tensor([3, 3, 2])
    lengths = torch.tensor([3, 5, 1])  # "1 1 2" needs 4 frames; "1 2" needs 2
    assert int(infeasible_count(lengths, targets, target_lengths)) == 2
    with pytest.warns(RuntimeWarning, match="2 of 3 utterances"):
        per = ctc_loss(logits, lengths, targets, target_lengths, blank=0, reduction="none")
    assert per[0].item() == 0.0 and per[2].item() == 0.0 and per[1].item() > 0
    per.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0].abs().max() == 0 and logits.grad[2].abs().max() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctc_loss(logits, lengths, targets, target_lengths, blank=0, check_feasible=False)
        ctc_loss(logits, torch.tensor([5, 5, 5]), targets, target_lengths, blank=0)


@given(st.lists(st.integers(1, 3), min_size=0, max_size=6), st.integers(0, 12))
def test_infeasible_count_matches_torch_infinity(labels, frames):
    n = len(labels)
    logits = torch.zeros(1, 4, max(frames, 1), dtype=torch.float64)
    targets = torch.tensor([labels + [0]], dtype=torch.long)
    per = F.ctc_loss(F.log_softmax(logits.permute(2, 0, 1), 2), targets, torch.tensor([frames]),
                     torch.tensor([n]), blank=0, reduction="none", zero_infinity=False)
    count = int(infeasible_count(torch.tensor([frames]), targets, torch.tensor([n])))
    assert count == int(torch.isinf(per).item())


def test_validation_errors():
    logits, lengths, targets, target_lengths = batch()
    with pytest.raises(ValueError, match=r"\(batch, vocab, time\)"):
        ctc_loss(logits[0], lengths, targets, target_lengths, blank=4)
    with pytest.raises(ValueError, match="lengths must have shape"):
        ctc_loss(logits, lengths[:2], targets, target_lengths, blank=4)
    with pytest.raises(ValueError, match="targets must be padded"):
        ctc_loss(logits, lengths, targets.flatten(), target_lengths, blank=4)
    with pytest.raises(ValueError, match="blank must be an int"):
        ctc_loss(logits, lengths, targets, target_lengths, blank=5)
    with pytest.raises(ValueError, match="reduction must be one of"):
        ctc_loss(logits, lengths, targets, target_lengths, blank=4, reduction="avg")
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 12\]"):
        ctc_loss(logits, lengths + 20, targets, target_lengths, blank=4)
    with pytest.raises(ValueError, match="target_lengths must lie"):
        ctc_loss(logits, lengths, targets, target_lengths + 4, blank=4)
    bad = targets.clone()
    bad[0, 0] = 4
    with pytest.raises(ValueError, match="blank index 4"):
        ctc_loss(logits, lengths, bad, target_lengths, blank=4)
    with pytest.raises(TypeError, match="integers"):
        ctc_loss(logits, lengths.float(), targets, target_lengths, blank=4)
    assert set(REDUCTIONS) == {"thunder", "mean", "espnet", "sum", "none"}


def test_half_precision_logits_are_computed_in_float32():
    logits, lengths, targets, target_lengths = batch(dtype=torch.float32)
    loss = ctc_loss(logits.bfloat16(), lengths, targets, target_lengths, blank=4)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(
        loss, ctc_loss(logits.bfloat16().float(), lengths, targets, target_lengths, blank=4)
    )


def test_value_and_grad_matches_autograd():
    logits, lengths, targets, target_lengths = batch(1)

    def fn(x):
        return ctc_loss(x, lengths, targets, target_lengths, blank=4)

    value, grad = backend.value_and_grad(fn)(logits)
    x = logits.clone().requires_grad_(True)
    ref = reference(x, lengths, targets, target_lengths, 4, "mean")
    ref.backward()
    torch.testing.assert_close(value, ref.detach())
    torch.testing.assert_close(grad, x.grad)


# The one torch.compile test of this file (compilation costs several seconds).
def test_compiled_matches_eager():
    logits, lengths, targets, target_lengths = batch(2, dtype=torch.float32)

    def step(x, n, y, m):
        return backend.value_and_grad(
            lambda z: ctc_loss(z, n, y, m, blank=4, reduction="espnet")
        )(x)

    eager = step(logits, lengths, targets, target_lengths)
    compiled = backend.jit(step)(logits, lengths, targets, target_lengths)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-5)


def _eager_grad(logits, cotangent, *args, reduction):
    """The gradient of ``sum(cotangent * loss)`` by plain autograd (``loss.backward``)."""
    x = logits.clone().requires_grad_(True)
    loss = ctc_loss(x, *args, blank=4, reduction=reduction)
    (loss * cotangent).sum().backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_is_exactly_the_kernels_gradient(dtype):
    """Bit for bit what F.ctc_loss's own backward gives, whatever the upstream gradient."""
    logits, lengths, targets, target_lengths = batch(3, b=4, t=14, dtype=dtype)
    w = torch.randn(4, dtype=dtype)
    value, grad = _eager_grad(logits, w, lengths, targets, target_lengths, reduction="none")
    x = logits.clone().requires_grad_(True)
    ref = reference(x, lengths, targets, target_lengths, 4, "none")
    (ref * w).sum().backward()
    torch.testing.assert_close(value, ref.detach(), rtol=0, atol=0)
    torch.testing.assert_close(grad, x.grad, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["thunder", "espnet", "none"])
def test_torch_func_grad_and_vjp_equal_the_eager_gradient(reduction):
    """functorch transforms (what compiled steps and backend.value_and_grad use under a
    transform) give the eager gradient exactly, an infeasible utterance included."""
    logits, lengths, targets, target_lengths = batch(4, b=3, dtype=torch.float64)
    lengths = lengths.clone()
    lengths[1] = 1  # infeasible: zero loss, zero gradient
    args = (lengths, targets, target_lengths)
    ones = torch.ones(()) if reduction != "none" else torch.ones(3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value, grad = _eager_grad(logits, ones, *args, reduction=reduction)
    fn = lambda x: ctc_loss(x, *args, blank=4, reduction=reduction)  # noqa: E731
    if reduction != "none":
        torch.testing.assert_close(torch.func.grad(fn)(logits), grad, rtol=0, atol=0)
        g, v = torch.func.grad_and_value(fn)(logits)
        torch.testing.assert_close((g, v), (grad, value), rtol=0, atol=0)
    cotangent = torch.linspace(0.5, 2.0, 3, dtype=torch.float64)
    if reduction != "none":
        cotangent = cotangent[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, expected = _eager_grad(logits, cotangent, *args, reduction=reduction)
    out, vjp_fn = torch.func.vjp(fn, logits)
    (got,) = vjp_fn(cotangent)
    torch.testing.assert_close(out, value, rtol=0, atol=0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.all(got[1] == 0)


def _expected_value_error(targets, target_lengths, vocab, blank):
    """The first value check ctc_loss must fail, worked out element by element."""
    rows, width = targets.shape
    lens = target_lengths.tolist()
    if rows and (min(lens) < 0 or max(lens) > width):
        return "target_lengths must lie"
    labels = [v for r, n in zip(targets.tolist(), lens) for v in r[: max(n, 0)]]
    if any(not 0 <= v < vocab for v in labels):
        return "target indices must lie"
    if blank in labels:
        return f"blank index {blank}"
    return None


@given(
    st.integers(1, 4), st.integers(0, 4), st.integers(1, 5), st.data(),
)
def test_value_checks_match_an_element_by_element_reference(rows, width, vocab, data):
    """Both ways of checking, on the targets' Python ints and in tensor reductions."""
    on_host = data.draw(st.booleans())
    blank = data.draw(st.integers(0, vocab - 1))
    targets = torch.tensor(
        data.draw(st.lists(st.lists(st.integers(-2, vocab + 1), min_size=width, max_size=width),
                           min_size=rows, max_size=rows)), dtype=torch.long,
    ).reshape(rows, width)
    target_lengths = torch.tensor(data.draw(st.lists(st.integers(-1, width + 1), min_size=rows, max_size=rows)))
    frames = 3 * width + 2
    logits = torch.randn(rows, vocab, frames, dtype=torch.float64)
    lengths = torch.full((rows,), frames)
    want = _expected_value_error(targets, target_lengths, vocab, blank)
    with mock.patch.object(fctc.losses, "_HOST_CHECK_MAX", 4096 if on_host else -1):
        if want is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # infeasible utterances only warn
                ctc_loss(logits, lengths, targets, target_lengths, blank=blank)
        else:
            with pytest.raises(ValueError, match=want):
                ctc_loss(logits, lengths, targets, target_lengths, blank=blank)
