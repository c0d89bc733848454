"""A tiny synthetic CTC task shared by the training tests: it learns in a few seconds.

Each label is shown as a one-hot feature vector held for ``repeat`` frames, with noise. The
model is a masked conv stack over ``(B, C, T)`` features; its output frames equal its input
frames, so lengths pass through.
"""

from __future__ import annotations

import torch

import fctc
from fctc import nn
from fctc.train import Batch

VOCAB = 6  # labels 0..4, blank 5
BLANK = VOCAB - 1
CHANNELS = 8


def tiny_model(hidden: int = 16, norm: str | None = None) -> nn.Model:
    """A masked conv1d -> [norm] -> relu -> conv1d(1x1) CTC model over (B, CHANNELS, T)."""
    layers = [nn.conv1d(CHANNELS, hidden, 3, padding=1)]
    if norm == "batch":
        layers.append(nn.batch_norm(hidden))
    layers += [nn.relu(), nn.conv1d(hidden, VOCAB, 1)]
    return nn.masked(*layers)


def tiny_batch(seed: int, batch: int = 8, labels: int = 5, repeat: int = 3, ragged: bool = True) -> Batch:
    """A batch of the synthetic task; with ``ragged`` the utterances have different lengths."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, BLANK, (batch, labels), generator=g)
    x = torch.nn.functional.one_hot(targets, CHANNELS).float().repeat_interleave(repeat, 1)
    x = x.transpose(1, 2) + 0.1 * torch.randn(batch, CHANNELS, labels * repeat, generator=g)
    if ragged:
        target_lengths = torch.randint(2, labels + 1, (batch,), generator=g)
    else:
        target_lengths = torch.full((batch,), labels)
    return Batch(x, target_lengths * repeat, targets, target_lengths)


def loss_fn(model: nn.Model):
    """The CTC loss of ``model`` on a :class:`Batch` (the contract of make_train_step)."""

    def fn(params, state, batch, key):
        (logits, lengths), state = model.apply(
            params, state, batch.audio, batch.audio_lengths, train=True, key=key
        )
        return fctc.losses.ctc_loss(logits, lengths, batch.targets, batch.target_lengths, BLANK), state

    return fn
