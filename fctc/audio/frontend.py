"""The filterbank front end: thunder-speech's ``FilterbankFeatures`` as a pure model and its steps.

The front end turns a batch of waveforms ``(B, N)`` with per-example sample counts into
log-mel features ``(B, nfilt, T)`` with per-example frame counts, in thunder's order:

1. :func:`dither` — in training only, add ``dither * N(0, 1)`` noise to every sample (the
   noise comes from the ``key``);
2. :func:`preemphasis` — ``y[0] = x[0]``, ``y[n] = x[n] - preemph * x[n-1]``; with
   ``pad_mode="constant"`` the samples at or beyond each length are then set to 0;
3. :func:`power_spectrum` — ``torch.stft(center=True)`` (padding of ``n_fft // 2`` samples
   at both ends of the padded batch: a reflection of the signal with ``pad_mode="reflect"``,
   thunder's, or zeros with ``"constant"``) with a symmetric Hann window of
   ``n_window_size`` samples, then ``|X|^2``; ``T = N // hop + 1`` frames;
4. :func:`mel_scale` — the slaney-scale, slaney-normalised mel filterbank of
   :func:`fctc.audio.mel_filterbank` (librosa's default), applied as a matrix product;
5. :func:`log` — ``log(x + 2**-24)``;
6. :func:`normalise` — per example and per filter, subtract the mean and divide by the
   population standard deviation plus ``1e-5`` over the valid frames; frames at or beyond
   :func:`feature_lengths` (``floor(length / hop) + 1``) are set to 0.

Masking: thunder masks nothing before step 6 (its ``Masked`` wrapper only carries the lengths
along), and neither does this module with ``pad_mode="reflect"``. Step 6 uses
``fctc.nn.normalize_tensor`` with a mask, whose statistics cover the valid frames only. Thunder's own masked normalisation
(thunder-speech 3.2.0's ``normalize_tensor``) first sets the padded frames to 0; its mean is
then the mean of the valid frames, but it sums the squared deviations over all frames, so
every padded frame adds ``(0 - mean)**2`` to the variance (which it still divides by the
number of valid frames). On padded batches thunder's features therefore depend on how much
padding a row has, though not on what the padding held. ``stats="thunder"`` reproduces that
computation operation for operation, bit for bit, for parity with features thunder computed
on padded batches. On unpadded input (a single utterance, or a batch whose lengths all equal
``N``) the two modes agree with each other and with thunder, up to rounding.

Padding modes. With ``pad_mode="constant"`` (zeros, as NeMo's current front end pads, and
what ``fctc train`` uses for new models) an utterance gets the same features whatever batch
it is padded into and whatever its padding holds, and the same as alone and unpadded (up to float rounding): frame
``t`` reads samples ``[t*hop - n_fft/2, t*hop + n_fft/2)``, and every sample outside
``[0, length)`` is a zero both in a batch (masked after preemphasis) and alone (the STFT's
zero padding); the valid frames, hence the statistics of step 6, are the same too. With
``pad_mode="reflect"`` (the default, thunder's, kept for thunder and NeMo checkpoints trained
with it; it needs more than ``n_fft // 2`` samples per row):

* features beyond ``feature_lengths`` are exactly 0;
* frames with ``t*hop + win/2 <= length`` never see the padding, while the last few valid
  frames do (a property of ``center=True``, shared with thunder) and so do the statistics of
  step 6, which then shift every frame;
* hence an utterance gives the same features in any batch in which it is followed by at least
  ``n_fft // 2`` zero samples, whatever the other utterances and the total padded length;
  alone and unpadded it differs (by 0.2 to 4 on normalised features), because the STFT then
  reflects its last samples instead of reading zeros.

The front end has no parameters. Its state holds thunder's two buffers under thunder's
``state_dict`` keys, so checkpoints load unchanged: the Hann window at ``1.window`` and the mel
filterbank ``(1, nfilt, n_fft // 2 + 1)`` at ``2.layer.0.fb``.
"""

from __future__ import annotations

import torch

from .. import random as _random
from ..nn.blocks import lengths_to_mask, normalize_tensor
from ..nn.core import Model, _marked
from .mel import mel_filterbank
from .waveform import check_audio

__all__ = [
    "LOG_GUARD",
    "DIV_GUARD",
    "PAD_MODES",
    "filterbank",
    "dither",
    "preemphasis",
    "power_spectrum",
    "mel_scale",
    "log",
    "normalise",
    "feature_lengths",
]

LOG_GUARD = 2.0**-24
"""Added before the log, as thunder and NeMo do, so that silence gives a finite value."""
DIV_GUARD = 1e-5
"""Added to the standard deviation in :func:`normalise`."""
PAD_MODES = ("constant", "reflect")
"""The STFT paddings of :func:`filterbank`: zeros (batch-independent) or thunder's reflection."""


# -- the steps --------------------------------------------------------------------------


def dither(key: torch.Tensor, audio: torch.Tensor, amount: float = 1e-5) -> torch.Tensor:
    """Add a little Gaussian noise to every sample (thunder's dither).

    Args:
        key: the PRNG key the noise is drawn from.
        audio: samples of any shape.
        amount: the noise's standard deviation.

    Returns:
        ``audio + amount * N(0, 1)``.
    """
    noise = _random.normal(key, tuple(audio.shape), dtype=audio.dtype)
    return audio + amount * noise.to(audio.device)


_dither = dither  # the front end's `dither` argument shadows the function inside filterbank


def preemphasis(audio: torch.Tensor, coeff: float = 0.97) -> torch.Tensor:
    """The FIR filter ``y[n] = x[n] - coeff * x[n-1]`` along the last axis (``y[0] = x[0]``).

    Args:
        audio: samples ``(..., N)``.
        coeff: the filter coefficient.

    Returns:
        The filtered samples, same shape.
    """
    return torch.cat((audio[..., :1], audio[..., 1:] - coeff * audio[..., :-1]), dim=-1)


def power_spectrum(
    audio: torch.Tensor,
    n_fft: int = 512,
    hop_length: int = 160,
    win_length: int = 320,
    window: torch.Tensor | None = None,
    pad_mode: str = "reflect",
) -> torch.Tensor:
    """``|STFT|^2`` of a batch of waveforms.

    ``torch.stft`` with ``center=True``: ``n_fft // 2`` samples of padding at both ends of
    each row, a reflection of the signal (thunder's) or zeros. The magnitude is taken as
    ``sqrt(re^2 + im^2)`` and then squared, exactly as thunder does.

    Args:
        audio: ``(B, N)`` samples.
        n_fft: the FFT size.
        hop_length: samples between frames.
        win_length: the window's length.
        window: the window; None is a symmetric Hann window
            (``torch.hann_window(win_length, periodic=False)``).
        pad_mode: ``"reflect"`` (thunder's; needs ``N > n_fft // 2``) or ``"constant"``
            (zeros).

    Returns:
        ``(B, n_fft // 2 + 1, N // hop_length + 1)`` powers.

    Raises:
        ValueError: ``pad_mode`` is neither ``"reflect"`` nor ``"constant"``.
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"power_spectrum: pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if window is None:
        window = torch.hann_window(win_length, periodic=False, dtype=audio.dtype)
    spec = torch.stft(
        audio,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window.to(device=audio.device, dtype=audio.dtype),
        center=True,
        pad_mode=pad_mode,
        return_complex=True,
    )
    return torch.view_as_real(spec).pow(2).sum(-1).sqrt().pow(2.0)


def mel_scale(power: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Mel energies ``fb @ power``.

    Args:
        power: ``(B, n_freqs, T)`` powers.
        fb: ``(n_mels, n_freqs)`` filters, or thunder's buffer shape ``(1, n_mels, n_freqs)``.

    Returns:
        ``(B, n_mels, T)`` mel energies.
    """
    return torch.matmul(fb.to(power.dtype), power)


def log(mel: torch.Tensor) -> torch.Tensor:
    """The log compression of thunder and NeMo (finite at zero).

    Args:
        mel: energies.

    Returns:
        ``log(mel + 2**-24)``.
    """
    return torch.log(mel + LOG_GUARD)


def feature_lengths(lengths: torch.Tensor, hop: int) -> torch.Tensor:
    """Valid frames per example: ``floor(lengths / hop) + 1``.

    The centred STFT puts a frame at every multiple of ``hop`` from 0 to ``length``.

    Args:
        lengths: valid samples per example; integer lengths use exact integer division,
            float lengths are floored, as thunder does.
        hop: samples between frames.

    Returns:
        int64 frame counts.
    """
    if lengths.is_floating_point():
        return (torch.floor(lengths / hop) + 1).to(torch.int64)
    return torch.div(lengths, hop, rounding_mode="floor").to(torch.int64) + 1


def normalise(
    features: torch.Tensor,
    lengths: torch.Tensor,
    div_guard: float = DIV_GUARD,
    stats: str = "valid",
) -> torch.Tensor:
    """Per-example, per-feature standardisation over each example's frames.

    ``(x - mean) / (std + div_guard)`` per example and feature, with ``mean`` the mean of the
    first ``lengths[b]`` frames; frames from ``lengths[b]`` on become 0. The statistics are
    detached (gradients flow through ``x`` only), as in thunder.

    * ``stats="valid"``: ``std`` is the population standard deviation of the valid frames;
      what the padded frames hold never changes the result.
    * ``stats="thunder"``: thunder-speech's ``normalize_tensor``, bit for bit: the padded
      frames are set to 0 first, and ``std`` is ``sqrt(sum over all T frames of (x - mean)**2
      / lengths[b])``, so each padded frame adds ``mean**2`` to the variance (see the module
      notes). The result depends on the amount of padding, not on its contents.

    Args:
        features: ``(B, C, T)``.
        lengths: valid frames per example.
        div_guard: added to the standard deviation.
        stats: ``"valid"`` or ``"thunder"``.

    Returns:
        The standardised features, same shape.

    Raises:
        ValueError: ``stats`` is neither ``"valid"`` nor ``"thunder"``.
    """
    mask = lengths_to_mask(lengths, features.shape[-1]).unsqueeze(1)
    if stats == "valid":
        return normalize_tensor(features, mask, div_guard=div_guard)
    if stats == "thunder":
        return _thunder_normalise(features, mask, div_guard)
    raise ValueError(f"normalise: stats must be 'valid' or 'thunder', got {stats!r}")


def _thunder_normalise(x: torch.Tensor, mask: torch.Tensor, div_guard: float) -> torch.Tensor:
    """thunder-speech 3.2.0's masked ``normalize_tensor``, in its order of operations."""
    invalid = ~mask
    x = torch.masked_fill(x, invalid, 0.0)
    count = mask.sum(dim=-1, keepdim=True)
    mean = x.sum(dim=-1, keepdim=True).detach() / count
    std = ((x - mean).pow(2).sum(dim=-1, keepdim=True).detach() / count).sqrt()
    return torch.masked_fill((x - mean) / (std + div_guard), invalid, 0.0)


# -- the model --------------------------------------------------------------------------


def _check_filterbank_args(n_window_size, n_window_stride, n_fft, stats, dither, pad_mode) -> None:
    if n_window_size <= 0 or n_window_stride <= 0:
        raise ValueError(
            "filterbank: n_window_size and n_window_stride must be positive ints, got "
            f"{n_window_size} and {n_window_stride}"
        )
    if n_fft < n_window_size:
        raise ValueError(
            f"filterbank: n_fft ({n_fft}) must be at least n_window_size ({n_window_size})"
        )
    if stats not in ("valid", "thunder"):
        raise ValueError(f"filterbank: stats must be 'valid' or 'thunder', got {stats!r}")
    if dither < 0:
        raise ValueError(f"filterbank: dither must be non-negative, got {dither}")
    if pad_mode not in PAD_MODES:
        raise ValueError(
            f"filterbank: pad_mode must be one of {PAD_MODES}, got {pad_mode!r} ('constant': "
            "features independent of the batch; 'reflect': thunder's, for its checkpoints)"
        )


def _buffers(state, name: str, n_window_size: int, nfilt: int, n_freqs: int):
    """The window and mel filterbank buffers of a front end's ``state``, shapes checked."""
    try:
        window = state["1"]["window"]
        fb = state["2"]["layer"]["0"]["fb"]
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"{name}: state must hold '1.window' and '2.layer.0.fb' (from init or a "
            f"thunder checkpoint); missing {e}"
        ) from None
    if tuple(window.shape) != (n_window_size,) or fb.shape[-2:] != (nfilt, n_freqs):
        raise ValueError(
            f"{name}: state buffers have shapes {tuple(window.shape)} and {tuple(fb.shape)}, "
            f"expected ({n_window_size},) and (1, {nfilt}, {n_freqs})"
        )
    return window, fb


def filterbank(
    sample_rate: int = 16000,
    n_window_size: int = 320,
    n_window_stride: int = 160,
    n_fft: int = 512,
    preemph: float = 0.97,
    nfilt: int = 64,
    dither: float = 1e-5,  # noqa: F811 - thunder's argument name
    stats: str = "valid",
    pad_mode: str = "reflect",
) -> Model:
    """thunder's ``FilterbankFeatures`` as a :class:`~fctc.nn.core.Model`.

    ``apply(params, state, audio, lengths, train=False, key=None)`` maps audio ``(B, N)`` and
    sample counts ``(B,)`` to ``((features (B, nfilt, N // hop + 1), feature_lengths), state)``.
    Dither applies only when ``train`` is true and needs a ``key`` then. ``params`` is empty;
    ``state`` holds the window and the mel filterbank under thunder's ``state_dict`` keys.
    Arguments and defaults are thunder's; ``pad_mode="constant"`` makes the features of an
    utterance independent of its batch (see the module notes).

    Args:
        sample_rate: the audio's sample rate in Hz.
        n_window_size: the STFT window's length in samples.
        n_window_stride: the hop between frames in samples.
        n_fft: the FFT size (at least ``n_window_size``).
        preemph: the preemphasis coefficient.
        nfilt: the number of mel filters (output features).
        dither: the standard deviation of the training-time noise; 0 turns it off.
        stats: the normalisation statistics, ``"valid"`` or ``"thunder"`` (see the module
            notes).
        pad_mode: ``"reflect"`` (thunder's STFT padding, for thunder and NeMo checkpoints
            trained with it) or ``"constant"`` (samples beyond each length are zeroed after
            preemphasis and the STFT pads with zeros: batch-independent features).

    Returns:
        The front-end model.

    Raises:
        ValueError: a size is not positive, ``n_fft < n_window_size``, ``dither < 0``, or
            ``stats`` or ``pad_mode`` is unknown.
    """
    _check_filterbank_args(n_window_size, n_window_stride, n_fft, stats, dither, pad_mode)
    amount = float(dither)
    n_freqs = n_fft // 2 + 1

    def init(key: torch.Tensor | None = None):
        """No parameters; the state holds thunder's window and mel filterbank buffers."""
        window = torch.hann_window(n_window_size, periodic=False)
        fb = mel_filterbank(sample_rate, n_fft, nfilt).unsqueeze(0)
        return {}, {"1": {"window": window}, "2": {"layer": {"0": {"fb": fb}}}}

    def apply(params, state, audio, lengths, train: bool = False, key=None):
        """Features ``(B, nfilt, T)`` and their lengths from audio ``(B, N)`` and its lengths."""
        name = "filterbank"
        check_audio(audio, lengths, name)
        window, fb = _buffers(state, name, n_window_size, nfilt, n_freqs)
        x = audio
        if train and amount > 0:
            if key is None:
                raise ValueError(
                    f"{name}: training with dither={amount} needs a key: pass key=... to apply "
                    "(or build the front end with dither=0)"
                )
            x = _dither(key, x, amount)
        x = preemphasis(x, preemph)
        if pad_mode == "constant":
            x = x.masked_fill(~lengths_to_mask(lengths.to(x.device), x.shape[-1]), 0.0)
        x = power_spectrum(x, n_fft, n_window_stride, n_window_size, window, pad_mode)
        out_lengths = feature_lengths(lengths, n_window_stride)
        x = log(mel_scale(x, fb))
        x = normalise(x, out_lengths, DIV_GUARD, stats)
        return (x, out_lengths), state

    return _marked(Model(init, apply), amount > 0)  # only dither draws
