"""Additive noise at a random signal-to-noise ratio: coloured noise from a key, and babble.

:func:`colored_noise` shapes white Gaussian noise (drawn from a key) in the frequency domain
so that its power spectral density falls as ``1 / f**exponent``: white (0), pink (1, -3 dB
per octave) or brown (2, -6 dB per octave). :func:`babble` sums other utterances of the
same batch, as a crowd of talkers. :func:`mix_at_snr` scales a noise so that the ratio of
the powers over each row's valid samples is exactly the SNR asked for, and
:func:`add_noise` draws the kind, the SNR and the rows from a key.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import random as _random
from .waveform import apply_to, check_audio, draw_uniform, on_rows, valid_power, zero_padding

__all__ = ["NOISE_COLORS", "NOISE_KINDS", "colored_noise", "babble", "mix_at_snr", "add_noise"]

NOISE_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
"""Noise colours and the exponent of their power spectral density ``1 / f**exponent``."""
NOISE_KINDS = ("white", "pink", "brown", "babble")
"""What :func:`add_noise` can add."""

_SEGMENT = 1 << 14  # samples of noise drawn per row; longer rows repeat it (1.02 s at 16 kHz)


def colored_noise(
    key: torch.Tensor,
    shape: tuple[int, int],
    exponents: float | torch.Tensor,
    dtype: torch.dtype = torch.float32,
    segment: int = _SEGMENT,
) -> torch.Tensor:
    """Gaussian noise whose power spectral density falls as ``1 / f**exponent``, unit power.

    Each row is a periodic segment of ``min(T, segment)`` samples, repeated to length ``T``
    (drawing less keeps noise cheap; a 2**14-sample period puts spectral lines 1 Hz apart at
    16 kHz): white noise is drawn from ``key``, its spectrum scaled by ``f**(-exponent / 2)``
    (the mean removed), and the row scaled to a mean square of 1.

    Args:
        key: the PRNG key of the noise.
        shape: ``(B, T)``.
        exponents: one exponent for every row, or ``(B,)`` of them (0 white, 1 pink, 2 brown).
        dtype: the output's dtype.
        segment: the period of each row, in samples.

    Returns:
        ``(B, T)`` noise on the key's device.

    Raises:
        ValueError: a shape that is not ``(B, T)`` with ``T >= 1``.
    """
    if len(shape) != 2 or shape[1] < 1 or shape[0] < 0:
        raise ValueError(f"colored_noise: shape must be (B, T) with T >= 1, got {tuple(shape)}")
    batch, n_time = shape
    n = min(n_time, max(2, int(segment)))
    white = _random.normal(key, (batch, n), dtype=torch.float32)
    spec = torch.fft.rfft(white)
    freqs = torch.arange(spec.shape[-1], device=spec.device, dtype=torch.float32)
    e = torch.as_tensor(exponents, dtype=torch.float32, device=spec.device).reshape(-1, 1)
    scale = torch.where(freqs > 0, freqs.clamp_min(1.0).pow(-e / 2.0), torch.zeros(()))
    noise = torch.fft.irfft(spec * scale, n=n)
    noise = noise / noise.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    reps = -(-n_time // n)
    return noise.repeat(1, reps)[:, :n_time].to(dtype)


def babble(
    audio: torch.Tensor, lengths: torch.Tensor, speakers: int = 3, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Babble for each row: the sum of ``speakers`` other rows of the batch.

    Row ``b`` hears rows ``b+1, ..., b+k`` (modulo ``B``, ``k = min(speakers, B - 1)``), each
    repeated cyclically over its own valid samples to cover the whole time axis and scaled to
    unit power, so the talkers are equally loud. With one row there is nobody else: zeros.

    Args:
        audio: ``(B, T)`` samples (the padding is ignored).
        lengths: ``(B,)`` valid samples per row.
        speakers: how many other rows talk at once.
        rows: int64 indices of the rows to make babble for; None: all.

    Returns:
        ``(len(rows), T)`` babble (not masked to each row's length).

    Raises:
        ValueError: ``speakers`` is not a positive int.
    """
    if isinstance(speakers, bool) or not isinstance(speakers, int) or speakers < 1:
        raise ValueError(f"babble: speakers must be a positive int, got {speakers!r}")
    x = zero_padding(audio, lengths)
    batch = x.shape[0]
    lengths = lengths.to(device=x.device, dtype=torch.int64)
    rows = torch.arange(batch, device=x.device) if rows is None else rows.to(x.device)
    unit = x / valid_power(x, lengths).sqrt().clamp_min(1e-12).unsqueeze(1)
    out = x.new_zeros(rows.shape[0], x.shape[-1])
    t = torch.arange(x.shape[-1], device=x.device)
    for s in range(1, min(speakers, batch - 1) + 1):
        other = (rows + s) % batch
        n = lengths.index_select(0, other).clamp_min(1).unsqueeze(1)
        out = out + unit.index_select(0, other).gather(1, t.unsqueeze(0) % n)
    return out


def mix_at_snr(
    audio: torch.Tensor, lengths: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor
) -> torch.Tensor:
    """``audio + a * noise`` with ``a`` set so that each row's SNR is ``snr_db``.

    The SNR is ``10 log10(P_signal / P_noise)``, both powers over the row's valid samples.
    A silent row, or a row whose noise is silent, is left as it is.

    Args:
        audio: ``(B, T)`` samples (the padding is ignored).
        lengths: ``(B,)`` valid samples per row.
        noise: ``(B, T)`` noise (its padding is ignored).
        snr_db: ``(B,)`` SNRs in dB.

    Returns:
        ``(B, T)``, zero in the padding.
    """
    x = zero_padding(audio, lengths)
    n = zero_padding(noise.to(x.dtype), lengths)
    ps, pn = valid_power(x, lengths), valid_power(n, lengths)
    snr = snr_db.to(device=x.device, dtype=torch.float64)
    gain = (ps.double() / (pn.double().clamp_min(1e-30) * torch.pow(10.0, snr / 10.0))).sqrt()
    gain = torch.where(pn > 0, gain, torch.zeros_like(gain)).to(x.dtype)
    return x + gain.unsqueeze(1) * n


def add_noise(
    key: torch.Tensor,
    audio: torch.Tensor,
    lengths: torch.Tensor,
    snr_db: Sequence[float] = (10.0, 30.0),
    kinds: Sequence[str] = NOISE_KINDS,
    p: float = 1.0,
    babble_speakers: int = 3,
) -> torch.Tensor:
    """Add noise to rows chosen with probability ``p``: a kind and an SNR drawn per row.

    Args:
        key: the PRNG key of every draw (rows, kinds, SNRs, the noise itself).
        audio: ``(B, T)`` samples (the padding is ignored).
        lengths: ``(B,)`` valid samples per row.
        snr_db: the SNR range ``[low, high]`` in dB, drawn uniformly.
        kinds: what to choose from, uniformly: ``"white"``, ``"pink"``, ``"brown"`` (noise
            from the key, :func:`colored_noise`) and ``"babble"`` (other rows of the batch,
            :func:`babble`).
        p: the probability that a row gets noise.
        babble_speakers: talkers in the babble.

    Returns:
        ``(B, T)``, zero in the padding; lengths are unchanged.

    Raises:
        ValueError: an unknown kind, an empty ``kinds``, a bad range or probability.
    """
    name = "add_noise"
    check_audio(audio, lengths, name)
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in NOISE_KINDS]
    if not kinds or unknown:
        raise ValueError(f"{name}: kinds must be a non-empty list of {list(NOISE_KINDS)}, got {kinds!r}")
    batch, n_time = audio.shape
    k_rows, k_kind, k_snr, k_noise = _random.split(key, 4)
    rows = apply_to(k_rows, batch, p, name)
    snr = draw_uniform(k_snr, batch, snr_db, name, "snr_db").cpu()
    choice = _random.randint(k_kind, (batch,), 0, len(kinds)).cpu()
    exponent = torch.tensor([NOISE_COLORS.get(k, 0.0) for k in kinds])[choice]
    is_babble = torch.tensor([k == "babble" for k in kinds])[choice]
    x = zero_padding(audio, lengths)
    lengths = lengths.to(x.device)

    def noisy(idx):
        sel = idx.cpu()
        noise = colored_noise(k_noise, (idx.shape[0], n_time), exponent[sel], x.dtype).to(x.device)
        if bool(is_babble[sel].any()):
            talk = babble(x, lengths, babble_speakers, idx)
            noise = torch.where(is_babble[sel].to(x.device).unsqueeze(1), talk, noise)
        return mix_at_snr(x.index_select(0, idx), lengths.index_select(0, idx), noise, snr[sel])

    return on_rows(rows, x, noisy)
