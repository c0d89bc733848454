"""CTC loss over model logits, with the reductions users of thunder-speech and ESPnet know.

``ctc_loss`` takes logits shaped ``(batch, vocab, time)``, as thunder's models return them,
applies ``log_softmax`` over the vocabulary (in float32 when the logits are half precision)
and runs the CTC kernels of ``torch.nn.functional.ctc_loss`` with ``zero_infinity=True``,
wrapped so that ``torch.compile`` traces through them and ``torch.func`` transforms
differentiate them (per-utterance losses and gradients are bit for bit ``F.ctc_loss``'s).
Reductions:

* ``"thunder"`` and ``"mean"`` — torch's ``"mean"``, which is what thunder trains with: each
  utterance's loss divided by its target length (clamped to at least 1), averaged over the
  batch;
* ``"espnet"`` — the summed loss divided by the batch size (ESPnet's CTC);
* ``"sum"`` and ``"none"`` (per-utterance losses, shape ``(B,)``).

An utterance whose target cannot be aligned to its frames (CTC needs one frame per label plus
one per pair of equal adjacent labels) has infinite loss; ``zero_infinity`` turns that into a
zero loss with a zero gradient. Eagerly, ``ctc_loss`` warns with the number of such
utterances so the data problem does not go unnoticed. That count and the checks of the
targets' values are a few vectorised comparisons and one read back to the host; they run where
:func:`fctc.backend.checks_values` allows (eagerly on the CPU by default; on accelerators only
inside ``fctc.backend.value_checks("always")``, since the read waits for the device; never
while tracing, so a compiled training step pays nothing for them). ``check_feasible=False``
skips the count.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .backend import checks_values, host_is_free, is_tracing
from .nn.core import length_bounds

__all__ = ["ctc_loss", "infeasible_count", "REDUCTIONS"]

REDUCTIONS = ("thunder", "mean", "espnet", "sum", "none")


def _validate(logits, lengths, targets, target_lengths, blank, reduction):
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"ctc_loss: logits must have shape (batch, vocab, time), got {shape}")
    if not logits.is_floating_point():
        raise TypeError(f"ctc_loss: logits must be floating point, got {logits.dtype}")
    batch, vocab, _ = logits.shape
    for name, x in (("lengths", lengths), ("target_lengths", target_lengths)):
        if not isinstance(x, torch.Tensor) or x.shape != (batch,):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"ctc_loss: {name} must have shape ({batch},), got {shape}")
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"ctc_loss: {name} must be integers, got {x.dtype}")
    if not isinstance(targets, torch.Tensor) or targets.dim() != 2 or targets.shape[0] != batch:
        shape = (
            tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        )
        raise ValueError(
            f"ctc_loss: targets must be padded indices of shape ({batch}, max_target_length), "
            f"got {shape}"
        )
    if targets.is_floating_point() or targets.is_complex():
        raise TypeError(f"ctc_loss: targets must be integers, got {targets.dtype}")
    if isinstance(blank, bool) or not isinstance(blank, int) or not 0 <= blank < vocab:
        raise ValueError(f"ctc_loss: blank must be an int in [0, {vocab}), got {blank!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"ctc_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")


#: Up to this many target entries, the label checks read the targets back as Python ints
#: (where that is free: on the CPU) instead of running a dozen tiny tensor operations.
_HOST_CHECK_MAX = 4096


def _target_stats(targets, target_lengths, blank, vocab) -> tuple[int, int, tuple | None]:
    """The smallest and largest target length, and ``(lowest label, highest label, any
    blank)`` over the labels within the target lengths (None when there is none to check).

    One read back: of the values themselves for small CPU targets, else of a few reductions.
    Padding is replaced by a label that passes every check (a non-blank index in range); with
    a vocabulary of the blank alone there is none, and any label at all is an error."""
    max_target = targets.shape[1]
    if targets.numel() <= _HOST_CHECK_MAX and host_is_free([targets, target_lengths]):
        lengths = target_lengths.tolist()
        labels = [v for row, n in zip(targets.tolist(), lengths) for v in row[: max(n, 0)]]
        found = (min(labels), max(labels), blank in labels) if labels else None
        return min(lengths), max(lengths), found
    stats = list(torch.aminmax(target_lengths))
    valid = torch.arange(max_target, device=targets.device) < target_lengths.unsqueeze(1)
    if valid.numel():
        filler = 1 if blank == 0 else 0
        labels = torch.where(valid, targets.long(), filler if vocab > 1 else blank)
        stats += [*torch.aminmax(labels), (labels == blank).any()]
    tl_lo, tl_hi, *found = torch.stack(stats).tolist()  # promoted to one integer dtype
    if found and vocab == 1:  # the fill was the blank itself: every label is one
        found[2] = bool(valid.any())
    return tl_lo, tl_hi, tuple(found) or None


def _check_values(logits, lengths, targets, target_lengths, blank) -> None:
    """Host-side checks of the values. Lengths whose range is known on the host cost no read
    (:func:`fctc.nn.core.length_bounds`); the target lengths and the labels take one read
    together (the eager step pays these checks on each micro-batch)."""
    time, max_target, vocab = logits.shape[2], targets.shape[1], logits.shape[1]
    if not lengths.numel():
        return
    lo, hi = length_bounds(lengths)
    if lo < 0 or hi > time:
        raise ValueError(
            f"ctc_loss: lengths must lie in [0, {time}] (the frames of logits), got "
            f"{lengths.tolist()}"
        )
    tl_lo, tl_hi, labels = _target_stats(targets, target_lengths, blank, vocab)
    if tl_lo < 0 or tl_hi > max_target:
        raise ValueError(
            f"ctc_loss: target_lengths must lie in [0, {max_target}] (the columns of "
            f"targets), got {target_lengths.tolist()}"
        )
    if labels is None:
        return
    lab_lo, lab_hi, has_blank = labels
    if lab_lo < 0 or lab_hi >= vocab:
        raise ValueError(
            f"ctc_loss: target indices must lie in [0, {vocab}), got values from "
            f"{lab_lo} to {lab_hi}"
        )
    if has_blank:
        raise ValueError(
            f"ctc_loss: targets contain the blank index {blank} within target_lengths; the "
            "blank must never be a label (pad targets only beyond their lengths)"
        )


# -- the CTC kernel as an opaque custom op ------------------------------------------------------
# aten's CTC kernels allocate their alpha table with a shape that depends on the largest target
# length (a value, not a shape), so torch.compile cannot trace them and would split a compiled
# train step in two around the loss. Wrapped as custom ops with the alpha table padded to the
# padded target width, their output shapes follow from input shapes alone: the compiled step
# stays one graph and calls exactly the kernels F.ctc_loss calls.


@torch.library.custom_op("fctc::ctc_nll", mutates_args=())
def _ctc_nll_op(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    nll, alpha = torch.ops.aten._ctc_loss.Tensor(
        log_probs, targets, lengths, target_lengths, blank, True
    )
    width = 2 * targets.shape[1] + 1
    padded = alpha.new_full((alpha.shape[0], alpha.shape[1], width), -float("inf"))
    padded[:, :, : alpha.shape[2]] = alpha
    return nll, padded


@_ctc_nll_op.register_fake
def _(log_probs, targets, lengths, target_lengths, blank):
    batch, time = log_probs.shape[1], log_probs.shape[0]
    nll = log_probs.new_empty((batch,))
    return nll, log_probs.new_empty((batch, time, 2 * targets.shape[1] + 1))


@torch.library.custom_op("fctc::ctc_nll_backward", mutates_args=())
def _ctc_nll_backward_op(
    grad: torch.Tensor,
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    nll: torch.Tensor,
    alpha: torch.Tensor,
    blank: int,
) -> torch.Tensor:
    width = 2 * int(target_lengths.max()) + 1 if target_lengths.numel() else 1
    return torch.ops.aten._ctc_loss_backward.Tensor(
        grad, log_probs, targets, lengths, target_lengths, nll,
        alpha[:, :, :width].contiguous(), blank, True,
    )


@_ctc_nll_backward_op.register_fake
def _(grad, log_probs, targets, lengths, target_lengths, nll, alpha, blank):
    return torch.empty_like(log_probs)


def _ctc_nll(log_probs, targets, lengths, target_lengths, blank):
    """Per-utterance CTC negative log-likelihood, infinite ones zeroed (``zero_infinity``), and
    the mask of those infinite ones.

    Eagerly (no tracing, no functorch transform) this is ``F.ctc_loss``'s own path: aten's
    kernel, differentiated by its autograd formula. Traced, the derivative comes without an
    ``autograd.Function``: when ``log_probs`` needs a gradient, the backward kernel runs here with unit upstream gradients, giving ``slope = d nll_b /
    d log_probs[:, b]``, and ``nll + sum((log_probs - log_probs.detach()) * slope)`` (the same
    value, exactly: the added term is zero) hands it to autograd, which multiplies it by the
    upstream gradient. The kernel scales its result by the upstream gradient as its last
    operation, so the gradient is bit for bit what ``F.ctc_loss`` gives. Plain ops differentiate
    under every transform: ``torch.func.grad`` / ``vjp`` eagerly, and compiled steps, where
    torch <= 2.9 turns any ``autograd.Function`` into one that functorch refuses.
    """
    if not is_tracing():
        nll, _ = torch.ops.aten._ctc_loss.Tensor(
            log_probs, targets, lengths, target_lengths, blank, True
        )
        infinite = nll.isposinf()
        return nll.masked_fill(infinite, 0.0), infinite
    lp = log_probs.detach()
    nll, alpha = _ctc_nll_op(lp, targets, lengths, target_lengths, blank)
    if log_probs.requires_grad:
        slope = _ctc_nll_backward_op(
            torch.ones_like(nll), lp, targets, lengths, target_lengths, nll, alpha, blank
        )
        nll = nll + ((log_probs - lp) * slope).sum(dim=(0, 2))
    # The kernel's zero_infinity flag only zeroes gradients; the value is zeroed here, as
    # aten::ctc_loss does around the same kernel.
    infinite = nll.isposinf()
    return nll.masked_fill(infinite, 0.0), infinite


def infeasible_count(lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor):
    """How many utterances have too few frames for their targets (an int64 tensor scalar).

    CTC needs ``target_length + repeats`` frames, where ``repeats`` counts adjacent equal
    labels (a blank must separate them).

    Args:
        lengths: frames per utterance ``(B,)``.
        targets: padded labels ``(B, L)``.
        target_lengths: labels per utterance ``(B,)``.

    Returns:
        The count, an ``int64`` tensor scalar (no host synchronisation).
    """
    max_target = targets.shape[1]
    valid = torch.arange(max_target, device=targets.device) < target_lengths.unsqueeze(1)
    repeats = ((targets[:, 1:] == targets[:, :-1]) & valid[:, 1:]).sum(dim=1)
    needed = target_lengths.to(repeats.dtype) + repeats
    return (needed > lengths.to(needed.device)).sum()


def ctc_loss(
    logits: torch.Tensor,
    lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
    reduction: str = "thunder",
    check_feasible: bool = True,
) -> torch.Tensor:
    """CTC loss of logits ``(B, vocab, T)`` with frame ``lengths`` against padded ``targets``.

    ``targets`` is ``(B, L)``, padded beyond ``target_lengths`` with any index. ``blank`` is the
    blank's index (``Vocabulary.blank_idx``). See the module notes for the reductions and for
    the warning about utterances with more labels than frames.

    Args:
        logits: unnormalised scores ``(B, vocab, T)`` (half precision is computed in float32).
        lengths: valid frames per utterance ``(B,)``, integers.
        targets: padded label indices ``(B, L)``, never the blank within ``target_lengths``.
        target_lengths: labels per utterance ``(B,)``, integers.
        blank: the blank's index, in ``[0, vocab)``.
        reduction: ``"thunder"``, ``"mean"``, ``"espnet"``, ``"sum"`` or ``"none"``.
        check_feasible: warn (eagerly) about utterances with too few frames.

    Returns:
        A float scalar, or the per-utterance losses ``(B,)`` for ``"none"``.

    Raises:
        TypeError: non-floating logits, or non-integer lengths or targets.
        ValueError: shapes that do not agree, a bad ``blank`` or ``reduction``, or (eagerly)
            lengths or labels out of range, or the blank used as a label.
    """
    _validate(logits, lengths, targets, target_lengths, blank, reduction)
    checking = checks_values([lengths, targets, target_lengths])
    if checking:
        _check_values(logits, lengths, targets, target_lengths, blank)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    log_probs = F.log_softmax(logits.permute(2, 0, 1), dim=2)
    nll, infinite = _ctc_nll(log_probs, targets.long(), lengths.long(), target_lengths.long(), blank)
    infeasible = 0
    # An utterance too short for its labels has an infinite loss: only when the kernel gave one
    # is the exact count needed (a few more comparisons and a second read).
    if checking and check_feasible and bool(infinite.any()):
        infeasible = int(infeasible_count(lengths, targets, target_lengths))
    target_lengths = target_lengths.long()
    if reduction in ("thunder", "mean"):  # torch's "mean"
        loss = (nll / target_lengths.clamp_min(1)).mean()  # the division promotes, as torch's
    elif reduction == "sum":
        loss = nll.sum()
    elif reduction == "espnet":
        loss = nll.sum() / logits.shape[0]
    else:
        loss = nll
    if infeasible:
        warnings.warn(
            f"ctc_loss: {infeasible} of {logits.shape[0]} utterances have more labels (plus "
            "repeats) than output frames; their loss is set to 0 (zero_infinity). Filter out such "
            "utterances or use a model with less downsampling.",
            RuntimeWarning,
            stacklevel=2,
        )
    return loss
