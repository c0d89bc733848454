"""CTC feasibility: how many output frames a transcript needs, and how many a model gives.

:class:`fctc.data.SpeechDataset` compares the two to skip utterances whose audio is too short
for their transcript (the CTC loss would be infinite).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["ctc_frames_needed", "output_frames_fn"]


def ctc_frames_needed(target: Sequence[int] | torch.Tensor) -> int:
    """The fewest output frames CTC needs to emit ``target``.

    Args:
        target: label indices.

    Returns:
        Its length plus one blank between every pair of equal neighbours (``"hello"`` needs 6).
    """
    t = target.tolist() if isinstance(target, torch.Tensor) else list(target)
    return len(t) + sum(a == b for a, b in zip(t, t[1:]))


def output_frames_fn(hop_length: int = 160, stride: int = 1) -> Callable[[int], int]:
    """A ``max_labels`` function for :class:`fctc.data.SpeechDataset`: samples -> output frames.

    Args:
        hop_length: the hop of the model's centred STFT (``samples // hop + 1`` frames, as
            :func:`fctc.audio.feature_lengths`).
        stride: the encoder's total time downsampling (``ceil(frames / stride)``, as
            QuartzNet's and Citrinet's "same"-padded strided convolutions).

    Returns:
        A picklable function of a number of audio samples (DataLoader workers may pickle it).

    Raises:
        ValueError: ``hop_length`` or ``stride`` is below 1.
    """
    if int(hop_length) < 1 or int(stride) < 1:
        raise ValueError(
            f"output_frames_fn: hop_length and stride must be >= 1, got {hop_length}, {stride}"
        )
    return _OutputFrames(int(hop_length), int(stride))


class _OutputFrames:
    """Picklable samples -> frames function (DataLoader workers may need to pickle it)."""

    def __init__(self, hop: int, stride: int):
        self.hop, self.stride = hop, stride

    def __call__(self, samples: int) -> int:
        return -(-(int(samples) // self.hop + 1) // self.stride)

    def __repr__(self) -> str:
        return f"output_frames_fn(hop_length={self.hop}, stride={self.stride})"
