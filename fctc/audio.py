"""The filterbank front end (thunder-speech's ``FilterbankFeatures``) and SpecAugment, as pure
functions.

The front end turns a batch of waveforms ``(B, N)`` with per-example sample counts into
log-mel features ``(B, nfilt, T)`` with per-example frame counts, in thunder's order:

1. :func:`dither` — in training only, add ``dither * N(0, 1)`` noise to every sample (the
   noise comes from the ``key``);
2. :func:`preemphasis` — ``y[0] = x[0]``, ``y[n] = x[n] - preemph * x[n-1]``;
3. :func:`power_spectrum` — ``torch.stft(center=True)`` (reflect padding of ``n_fft // 2``
   at both ends of the padded batch) with a symmetric Hann window of ``n_window_size``
   samples, then ``|X|^2``; ``T = N // hop + 1`` frames;
4. :func:`mel_scale` — the slaney-scale, slaney-normalised mel filterbank of
   :func:`mel_filterbank` (librosa's default), applied as a matrix product;
5. :func:`log` — ``log(x + 2**-24)``;
6. :func:`normalise` — per example and per filter, subtract the mean and divide by the
   population standard deviation plus ``1e-5`` over the valid frames; frames at or beyond
   :func:`feature_lengths` (``floor(length / hop) + 1``) are set to 0.

Masking: thunder masks nothing before step 6 (its ``Masked`` wrapper only carries the lengths
along), and neither does this module. Step 6 uses ``fctc.nn.normalize_tensor`` with a mask,
whose statistics cover the valid frames only. Thunder's own masked normalisation sums over
all frames, padding included, while dividing by the number of valid frames; so on padded
batches thunder's features depend on how much padding there is. ``stats="thunder"``
reproduces that formula exactly, for bit-parity with features thunder computed on padded
batches. On unpadded input (a single utterance, or a batch whose lengths all equal ``N``)
both agree with thunder.

What padding can and cannot change (with ``stats="valid"``, the default):

* features beyond ``feature_lengths`` are exactly 0;
* the log-mel energy of frame ``t`` reads samples ``[t*hop - n_fft/2, t*hop + n_fft/2)``
  through a window that is nonzero only on ``[t*hop - win/2, t*hop + win/2)``; so frames with
  ``t*hop + win/2 <= length`` never see the padding, while the last few valid frames do (a
  property of ``center=True``, shared with thunder and NeMo) and so do the statistics of step 6;
* hence an utterance gives the same features in any batch in which it is followed by at least
  ``n_fft // 2`` zero samples, whatever the other utterances and the total padded length;
  alone and unpadded it differs slightly, because the STFT then reflects its last samples
  instead of reading zeros.

The front end has no parameters. Its state holds thunder's two buffers under thunder's
``state_dict`` keys, so checkpoints load unchanged: the Hann window at ``1.window`` and the mel
filterbank ``(1, nfilt, n_fft // 2 + 1)`` at ``2.layer.0.fb``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import random as _random
from .nn.blocks import lengths_to_mask, normalize_tensor
from .nn.core import Model, check_lengths, check_rank

__all__ = [
    "filterbank",
    "mel_filterbank",
    "hz_to_mel",
    "mel_to_hz",
    "dither",
    "preemphasis",
    "power_spectrum",
    "mel_scale",
    "log",
    "normalise",
    "feature_lengths",
    "spec_augment",
]

# Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0
LOG_GUARD = 2.0**-24
DIV_GUARD = 1e-5


def hz_to_mel(freqs: torch.Tensor) -> torch.Tensor:
    """Frequencies in Hz to mels on Slaney's scale (librosa's default, ``htk=False``)."""
    freqs = torch.as_tensor(freqs, dtype=torch.float64)
    linear = freqs / _F_SP
    logpart = _MIN_LOG_MEL + torch.log(freqs.clamp_min(_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(freqs >= _MIN_LOG_HZ, logpart, linear)


def mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    """Mels on Slaney's scale back to Hz (the inverse of :func:`hz_to_mel`)."""
    mels = torch.as_tensor(mels, dtype=torch.float64)
    linear = mels * _F_SP
    logpart = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (mels.clamp_min(_MIN_LOG_MEL) - _MIN_LOG_MEL))
    return torch.where(mels >= _MIN_LOG_MEL, logpart, linear)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Triangular mel filters ``(n_mels, n_fft // 2 + 1)``: slaney scale, slaney (area) norm.

    The same matrix as ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels,
    norm="slaney")`` and torchaudio's ``melscale_fbanks(..., norm="slaney",
    mel_scale="slaney")`` (transposed), which is what thunder registers. Computed in float64
    and returned in ``dtype``.
    """
    if sample_rate <= 0 or n_fft <= 0 or n_mels <= 0:
        raise ValueError(
            "mel_filterbank: sample_rate, n_fft and n_mels must be positive, got "
            f"{sample_rate}, {n_fft}, {n_mels}"
        )
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max:
        raise ValueError(f"mel_filterbank: need 0 <= f_min < f_max, got {f_min}, {f_max}")
    n_freqs = n_fft // 2 + 1
    fft_freqs = torch.linspace(0.0, sample_rate / 2.0, n_freqs, dtype=torch.float64)
    mel_edges = torch.linspace(
        float(hz_to_mel(torch.tensor(f_min))), float(hz_to_mel(torch.tensor(f_max))),
        n_mels + 2, dtype=torch.float64,
    )
    hz_edges = mel_to_hz(mel_edges)
    widths = hz_edges[1:] - hz_edges[:-1]  # (n_mels + 1,)
    ramps = hz_edges.unsqueeze(1) - fft_freqs.unsqueeze(0)  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / widths[:-1].unsqueeze(1)
    upper = ramps[2:] / widths[1:].unsqueeze(1)
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    weights = weights * (2.0 / (hz_edges[2:] - hz_edges[:-2])).unsqueeze(1)
    return weights.to(dtype)


# -- the steps --------------------------------------------------------------------------


def dither(key: torch.Tensor, audio: torch.Tensor, amount: float = 1e-5) -> torch.Tensor:
    """``audio + amount * N(0, 1)``, with the noise drawn from ``key`` (every sample)."""
    noise = _random.normal(key, tuple(audio.shape), dtype=audio.dtype)
    return audio + amount * noise.to(audio.device)


_dither = dither  # the front end's `dither` argument shadows the function inside filterbank


def preemphasis(audio: torch.Tensor, coeff: float = 0.97) -> torch.Tensor:
    """The FIR filter ``y[n] = x[n] - coeff * x[n-1]`` along the last axis (``y[0] = x[0]``)."""
    return torch.cat((audio[..., :1], audio[..., 1:] - coeff * audio[..., :-1]), dim=-1)


def power_spectrum(
    audio: torch.Tensor,
    n_fft: int = 512,
    hop_length: int = 160,
    win_length: int = 320,
    window: torch.Tensor | None = None,
) -> torch.Tensor:
    """``|STFT|^2`` of ``(B, N)`` audio as ``(B, n_fft // 2 + 1, N // hop_length + 1)``.

    ``torch.stft`` with ``center=True`` (reflect padding) and, by default, a symmetric Hann
    window (``torch.hann_window(win_length, periodic=False)``). The magnitude is taken as
    ``sqrt(re^2 + im^2)`` and then squared, exactly as thunder does.
    """
    if window is None:
        window = torch.hann_window(win_length, periodic=False, dtype=audio.dtype)
    spec = torch.stft(
        audio,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window.to(device=audio.device, dtype=audio.dtype),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return torch.view_as_real(spec).pow(2).sum(-1).sqrt().pow(2.0)


def mel_scale(power: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Mel energies ``fb @ power``: ``(B, n_freqs, T)`` to ``(B, n_mels, T)``.

    ``fb`` is ``(n_mels, n_freqs)`` or thunder's buffer shape ``(1, n_mels, n_freqs)``.
    """
    return torch.matmul(fb.to(power.dtype), power)


def log(mel: torch.Tensor) -> torch.Tensor:
    """``log(mel + 2**-24)``: the log compression of thunder and NeMo (finite at zero)."""
    return torch.log(mel + LOG_GUARD)


def feature_lengths(lengths: torch.Tensor, hop: int) -> torch.Tensor:
    """Valid frames per example for ``lengths`` valid samples: ``floor(lengths / hop) + 1``.

    The centred STFT puts a frame at every multiple of ``hop`` from 0 to ``length``. Integer
    lengths use exact integer division; float lengths are floored, as thunder does.
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
    """Per-example, per-feature standardisation of ``(B, C, T)`` over each example's frames.

    ``(x - mean) / (std + div_guard)`` with the population standard deviation over the first
    ``lengths[b]`` frames; later frames become 0. ``stats="thunder"`` reproduces thunder's
    formula instead, whose sums run over all ``T`` frames (see the module notes).
    """
    mask = lengths_to_mask(lengths, features.shape[-1]).unsqueeze(1)
    if stats == "valid":
        return normalize_tensor(features, mask, div_guard=div_guard)
    if stats == "thunder":
        x = features.detach()
        count = mask.sum(dim=-1, keepdim=True)
        mean = x.sum(dim=-1, keepdim=True) / count
        std = ((x - mean).pow(2).sum(dim=-1, keepdim=True) / count).sqrt()
        return torch.masked_fill((features - mean) / (std + div_guard), ~mask, 0.0)
    raise ValueError(f"normalise: stats must be 'valid' or 'thunder', got {stats!r}")


# -- the model --------------------------------------------------------------------------


def filterbank(
    sample_rate: int = 16000,
    n_window_size: int = 320,
    n_window_stride: int = 160,
    n_fft: int = 512,
    preemph: float = 0.97,
    nfilt: int = 64,
    dither: float = 1e-5,  # noqa: F811 - thunder's argument name
    stats: str = "valid",
) -> Model:
    """thunder's ``FilterbankFeatures`` as a :class:`Model` (arguments and defaults are thunder's).

    ``apply(params, state, audio, lengths, train=False, key=None)`` maps audio ``(B, N)`` and
    sample counts ``(B,)`` to ``((features (B, nfilt, N // hop + 1), feature_lengths), state)``.
    Dither applies only when ``train`` is true and needs a ``key`` then. ``stats`` picks the
    normalisation statistics (see the module notes). ``params`` is empty; ``state`` holds the
    window and the mel filterbank under thunder's ``state_dict`` keys.
    """
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
        check_rank(audio, 2, name, "audio (batch, samples)")
        if not audio.is_floating_point():
            raise TypeError(f"{name}: audio must be floating point, got {audio.dtype}")
        if audio.shape[-1] == 0:
            raise ValueError(
                f"{name}: audio is empty (shape {tuple(audio.shape)}); a batch needs at least one "
                "sample per row: drop empty utterances first (fctc.data skips them)"
            )
        check_lengths(lengths, audio, name)
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
        x = audio
        if train and amount > 0:
            if key is None:
                raise ValueError(
                    f"{name}: training with dither={amount} needs a key: pass key=... to apply "
                    "(or build the front end with dither=0)"
                )
            x = _dither(key, x, amount)
        x = preemphasis(x, preemph)
        x = power_spectrum(x, n_fft, n_window_stride, n_window_size, window)
        out_lengths = feature_lengths(lengths, n_window_stride)
        x = log(mel_scale(x, fb))
        x = normalise(x, out_lengths, DIV_GUARD, stats)
        return (x, out_lengths), state

    return Model(init, apply)


# -- SpecAugment ------------------------------------------------------------------------


def _interval_mask(starts: torch.Tensor, widths: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, size)``: True where any of the ``(B, M)`` intervals ``[start, start+width)`` lies."""
    pos = torch.arange(size, device=starts.device).view(1, 1, size)
    inside = (pos >= starts.unsqueeze(-1)) & (pos < (starts + widths).unsqueeze(-1))
    return inside.any(dim=1)


def spec_augment(
    key: torch.Tensor,
    features: torch.Tensor,
    lengths: torch.Tensor,
    freq_masks: int = 2,
    freq_width: int = 27,
    time_masks: int = 2,
    time_width: float | int = 0.05,
    mask_value: float = 0.0,
) -> torch.Tensor:
    """SpecAugment: set random bands of features and spans of frames to ``mask_value``.

    For each example, independently: ``freq_masks`` bands of ``U{0..freq_width}`` features
    each, and ``time_masks`` spans of ``U{0..W}`` frames each, where ``W`` is ``time_width``
    frames (an int) or ``max(1, floor(time_width * length))`` (a float fraction), clamped to
    the example's length. Spans lie inside ``[0, length)`` and bands touch only those frames, so
    nothing beyond ``lengths`` changes. The draws come from ``key`` (vectorised over the batch).
    """
    check_rank(features, 3, "spec_augment", "features (batch, features, time)")
    check_lengths(lengths, features, "spec_augment")
    for name, value in (("freq_masks", freq_masks), ("time_masks", time_masks),
                        ("freq_width", freq_width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"spec_augment: {name} must be a non-negative int, got {value!r}")
    if isinstance(time_width, bool) or not isinstance(time_width, (int, float)) or time_width < 0:
        raise ValueError(
            f"spec_augment: time_width must be a non-negative int (frames) or float (fraction), "
            f"got {time_width!r}"
        )
    if isinstance(time_width, float) and time_width > 1:
        raise ValueError(
            f"spec_augment: a float time_width is a fraction of each length, so it must be at "
            f"most 1, got {time_width}; pass an int for a width in frames"
        )
    batch, n_feat, n_time = features.shape
    device = features.device
    k_fw, k_fs, k_tw, k_ts = _random.split(key, 4)
    # The draws happen on the key's device; the masks are built on the features' device.
    lk = lengths.to(device=key.device, dtype=torch.int64).unsqueeze(1)  # (B, 1)

    fmax = min(freq_width, n_feat)
    f_w = _random.randint(k_fw, (batch, freq_masks), 0, fmax + 1)
    f_s = _random.randint(k_fs, (batch, freq_masks), 0, n_feat - f_w + 1)
    fmask = _interval_mask(f_s.to(device), f_w.to(device), n_feat)  # (B, F)

    if isinstance(time_width, int):
        t_max = torch.full_like(lk, time_width)
    else:
        t_max = torch.floor(lk.to(torch.float64) * time_width).to(torch.int64).clamp_min(1)
    t_max = torch.minimum(t_max, lk)
    t_w = _random.randint(k_tw, (batch, time_masks), 0, t_max + 1)
    t_s = _random.randint(k_ts, (batch, time_masks), 0, lk - t_w + 1)
    tmask = _interval_mask(t_s.to(device), t_w.to(device), n_time)  # (B, T)

    valid = lengths_to_mask(lengths.to(device), n_time)
    mask = (fmask.unsqueeze(2) | tmask.unsqueeze(1)) & valid.unsqueeze(1)
    return features.masked_fill(mask, mask_value)
