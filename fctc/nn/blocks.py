"""thunder-speech's shared blocks, with thunder's semantics and signatures.

These are plain tensor functions (no parameters), so they serve the pure layers and the
audio front end alike:

* :func:`lengths_to_mask` turns per-example lengths into a boolean validity mask.
* :func:`normalize_tensor` standardises features, optionally over the valid region only.
* :func:`get_same_padding` gives the padding that keeps ``T / stride`` frames.
* :func:`convolution_stft` is an STFT written as one ``conv1d`` (exportable, no FFT op); it
  returns what ``torch.stft`` returns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["lengths_to_mask", "normalize_tensor", "get_same_padding", "convolution_stft"]


def _describe(value: object) -> object:
    """A tensor's shape, or the type name of anything else, for error messages."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def lengths_to_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """A boolean ``(B, max_length)`` mask that is True on the first ``lengths[b]`` positions.

    As in thunder, lengths are converted to integers first (float lengths truncate towards
    zero), and ``max_length`` may exceed ``lengths.max()``.

    Args:
        lengths: a 1-D tensor of per-example lengths (integer or float).
        max_length: the mask's time size ``T``.

    Returns:
        A bool tensor of shape ``(B, max_length)`` on ``lengths``' device.

    Raises:
        ValueError: ``lengths`` is not a 1-D tensor.

    >>> lengths_to_mask(torch.tensor([2, 0, 3]), 3)
    tensor([[ True,  True, False],
            [False, False, False],
            [ True,  True,  True]])
    """
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        shape = _describe(lengths)
        raise ValueError(f"lengths_to_mask: lengths must be a 1-D tensor, got {shape}")
    lengths = lengths.to(torch.int64)
    positions = torch.arange(max_length, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def normalize_tensor(
    input_values: torch.Tensor,
    mask: torch.Tensor | None = None,
    div_guard: float = 1e-7,
    dim: int = -1,
) -> torch.Tensor:
    """Standardise ``input_values`` along ``dim``: subtract the mean, divide by the spread.

    Without a mask (thunder's unmasked branch): ``(x - mean) / sqrt(var + div_guard)`` with
    the unbiased variance, so ``dim`` needs at least two elements.

    With a ``mask`` (typically ``lengths_to_mask(lengths, T).unsqueeze(1)`` for ``(B, C, T)``
    features): the mean and the population standard deviation are taken over the valid
    positions only, the result is ``(x - mean) / (std + div_guard)`` there, and exactly 0
    elsewhere. What the padded positions hold (zeros, garbage, even NaN) never changes the
    result. A row with no valid position comes out all zeros.

    As in thunder, the statistics are detached: gradients flow only through ``x`` itself.

    Note, thunder's own masked branch (thunder-speech 3.2.0) differs on padded rows: it
    zero-fills the padding first, so its mean is the mean of the valid positions, as here, but
    it sums the squared deviations over all positions, so each padded position adds
    ``(0 - mean)**2`` to the variance's numerator (still divided by the number of valid
    positions). Its output therefore depends on how much padding a row has (unless the mean
    is 0), though not on what the padding held. This function takes the variance over the
    valid positions only; the two agree (to rounding) when nothing is padded.
    ``fctc.audio.normalise(..., stats="thunder")`` reproduces thunder's branch bit for bit.

    Args:
        input_values: a floating tensor, e.g. ``(B, C, T)`` features.
        mask: optional validity mask, True (or 1) where valid, broadcastable to
            ``input_values``.
        div_guard: keeps constant rows from dividing by zero (added to the variance without
            a mask, to the standard deviation with one).
        dim: the axis the statistics are taken over.

    Returns:
        A tensor of ``input_values``' shape and dtype.

    Raises:
        TypeError: ``input_values`` is not a floating tensor, or ``mask`` is not a tensor.
        ValueError: the unmasked variance gets fewer than two elements, or ``mask`` does not
            broadcast to ``input_values``.
    """
    if not isinstance(input_values, torch.Tensor):
        raise TypeError(
            f"normalize_tensor: input_values must be a tensor, got {type(input_values).__name__}"
        )
    if not input_values.is_floating_point():
        raise TypeError(
            f"normalize_tensor: input_values must be floating point, got {input_values.dtype}; "
            "convert it with .float()"
        )
    if mask is None:
        n = input_values.shape[dim] if input_values.dim() else 1
        if n < 2:
            raise ValueError(
                f"normalize_tensor: the unbiased variance needs at least 2 elements along "
                f"dim={dim}, but input_values has shape {tuple(input_values.shape)}"
            )
        mean = input_values.mean(dim=dim, keepdim=True).detach()
        var = input_values.var(dim=dim, keepdim=True).detach()
        return (input_values - mean) / (var + div_guard).sqrt()

    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"normalize_tensor: mask must be a tensor, got {type(mask).__name__}")
    try:
        shape = torch.broadcast_shapes(mask.shape, input_values.shape)
    except RuntimeError:
        shape = None
    if shape != input_values.shape:
        raise ValueError(
            f"normalize_tensor: mask of shape {tuple(mask.shape)} does not broadcast to "
            f"input_values of shape {tuple(input_values.shape)}; for (B, C, T) features use "
            "lengths_to_mask(lengths, T).unsqueeze(1)"
        )
    valid = mask.to(torch.bool)
    zero = input_values.new_zeros(())
    x = input_values.detach()
    count = valid.sum(dim=dim, keepdim=True).clamp_min(1).to(input_values.dtype)
    mean = torch.where(valid, x, zero).sum(dim=dim, keepdim=True) / count
    centred = torch.where(valid, x - mean, zero)
    std = (centred.square().sum(dim=dim, keepdim=True) / count).sqrt()
    normalized = (input_values - mean) / (std + div_guard)
    return torch.where(valid, normalized, zero)


def get_same_padding(kernel_size: int, stride: int, dilation: int) -> int:
    """The padding that gives "same" output length: ``T`` for stride 1, ``T / stride`` else.

    thunder's rule: ``kernel_size // 2``, or ``(dilation * (kernel_size - 1) + 1) // 2`` when
    dilated. Exact for odd kernel sizes.

    Args:
        kernel_size: the convolution's kernel size.
        stride: its stride.
        dilation: its dilation.

    Returns:
        The padding for each side.

    Raises:
        ValueError: an argument is not a positive int, or stride and dilation both exceed 1.

    >>> get_same_padding(11, 1, 1), get_same_padding(3, 1, 2), get_same_padding(5, 2, 1)
    (5, 2, 2)
    """
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"get_same_padding: {name} must be a positive int, got {value!r}")
    if stride > 1 and dilation > 1:
        raise ValueError(
            f"get_same_padding: only stride OR dilation may be greater than 1, got "
            f"stride={stride} and dilation={dilation}"
        )
    if dilation > 1:
        return (dilation * (kernel_size - 1) + 1) // 2
    return kernel_size // 2


def _stft_basis(
    n_fft: int, window: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Windowed DFT rows ``(2 * (n_fft // 2 + 1), 1, n_fft)``: cosines, then minus sines."""
    win_length = window.shape[0]
    left = (n_fft - win_length) // 2
    padded = F.pad(window.to(device=device, dtype=torch.float64), (left, n_fft - win_length - left))
    freqs = torch.arange(n_fft // 2 + 1, device=device, dtype=torch.int64)
    taps = torch.arange(n_fft, device=device, dtype=torch.int64)
    # Reduce k * n modulo n_fft in integers so that the angles stay exact for large n_fft.
    angle = (torch.outer(freqs, taps) % n_fft).to(torch.float64) * (2.0 * torch.pi / n_fft)
    basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * padded
    return basis.unsqueeze(1).to(dtype)


def convolution_stft(
    input_data: torch.Tensor,
    n_fft: int = 1024,
    hop_length: int = 512,
    win_length: int = 1024,
    window: torch.Tensor | None = None,
    center: bool = True,
    return_complex: bool = False,
) -> torch.Tensor:
    """The short-time Fourier transform as one strided ``conv1d`` against windowed DFT rows.

    Same arguments as thunder's (and as ``torch.stft``'s subset thunder uses), and the same
    result as ``torch.stft(input_data, n_fft, hop_length, win_length, window, center=center,
    pad_mode="reflect", return_complex=True)``: ``(B, n_fft // 2 + 1, frames)`` complex when
    ``return_complex``, else its real view ``(B, n_fft // 2 + 1, frames, 2)`` (real, imaginary),
    which is thunder's layout. A 1-D signal gives the same shapes without ``B``.

    ``window`` defaults to thunder's ``torch.hann_window(win_length, periodic=False)`` (thunder
    fixes it at length 1024, its default ``win_length``). Unlike thunder, ``center=False`` is
    honoured (no reflect padding, frames start at sample 0). Why a convolution: it needs no FFT
    kernel, so it exports to ONNX and runs wherever conv1d does.

    Args:
        input_data: the signal, ``(T,)`` or ``(B, T)``, floating.
        n_fft: the FFT size; ``n_fft // 2 + 1`` frequency bins.
        hop_length: samples between frames.
        win_length: the window's length (at most ``n_fft``; centred in it).
        window: a ``(win_length,)`` window; ``None`` for thunder's Hann window.
        center: reflect-pad ``n_fft // 2`` samples on each side, as ``torch.stft`` does.
        return_complex: return a complex tensor instead of its real view.

    Returns:
        The spectrum, ``(B, n_fft // 2 + 1, frames)`` complex or ``(..., frames, 2)`` real.

    Raises:
        TypeError: ``input_data`` is not floating point.
        ValueError: a bad shape or size, a window of the wrong length, or a signal too short
            for the padding (or, with ``center=False``, for one frame).
    """
    if not isinstance(input_data, torch.Tensor) or input_data.dim() not in (1, 2):
        shape = _describe(input_data)
        raise ValueError(
            f"convolution_stft: input_data must be a (T,) or (B, T) tensor, got {shape}"
        )
    if not input_data.is_floating_point():
        raise TypeError(
            f"convolution_stft: input_data must be floating point, got {input_data.dtype}"
        )
    for name, value in (("n_fft", n_fft), ("hop_length", hop_length), ("win_length", win_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"convolution_stft: {name} must be a positive int, got {value!r}")
    if win_length > n_fft:
        raise ValueError(
            f"convolution_stft: win_length={win_length} must not exceed n_fft={n_fft}"
        )
    if window is None:
        window = torch.hann_window(win_length, periodic=False, dtype=torch.float64)
    if not isinstance(window, torch.Tensor) or tuple(window.shape) != (win_length,):
        raise ValueError(
            f"convolution_stft: window must be a 1-D tensor of length win_length={win_length}, "
            f"got {_describe(window)}"
        )
    unbatched = input_data.dim() == 1
    x = input_data.unsqueeze(0) if unbatched else input_data
    num_samples = x.shape[-1]
    x = x.unsqueeze(1)
    if center:
        pad = n_fft // 2
        if pad >= num_samples:
            raise ValueError(
                f"convolution_stft: center=True reflect-pads {pad} samples on each side, which "
                f"needs more than {pad} samples, got {num_samples}; use a smaller n_fft"
            )
        x = F.pad(x, (pad, pad), mode="reflect")
    elif num_samples < n_fft:
        raise ValueError(
            f"convolution_stft: center=False needs at least n_fft={n_fft} samples, got "
            f"{num_samples}"
        )
    basis = _stft_basis(n_fft, window, x.dtype, x.device)
    frames = F.conv1d(x, basis, stride=hop_length)
    bins = n_fft // 2 + 1
    real, imag = frames[:, :bins], frames[:, bins:]
    out = torch.complex(real, imag) if return_complex else torch.stack((real, imag), dim=-1)
    return out.squeeze(0) if unbatched else out
