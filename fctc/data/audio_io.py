"""Decoding audio files into float32 tensors at one sample rate (soundfile, soxr resampling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

__all__ = ["AudioError", "load_audio"]


class AudioError(OSError):
    """An audio file that is missing or cannot be decoded; the message names the file."""


def load_audio(
    path: str | Path,
    sample_rate: int = 16000,
    *,
    offset: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """Decode an audio file into a float32 ``(samples,)`` tensor at ``sample_rate``.

    Any format soundfile reads (FLAC, WAV, OGG, ...); several channels are mixed down to
    their mean; other sample rates are resampled with soxr (high quality).

    Args:
        path: the audio file.
        sample_rate: the rate of the returned samples.
        offset: seconds into the file where reading starts.
        duration: seconds to read; None reads to the end.

    Returns:
        The mono samples, float32, at ``sample_rate``.

    Raises:
        AudioError: the file is missing, cannot be decoded, has no samples, or has NaN/Inf
            samples (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {str(path)!r} does not exist")
    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            start = int(round(offset * rate))
            if start:
                f.seek(start)
            frames = -1 if duration is None else int(round(duration * rate))
            data = f.read(frames, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for bad files
        raise AudioError(f"cannot decode audio file {str(path)!r}: {e}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {str(path)!r} contains no samples")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise AudioError(f"audio file {str(path)!r} contains NaN or infinite samples")
    if rate != sample_rate:
        import soxr

        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
