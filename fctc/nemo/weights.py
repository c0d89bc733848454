"""NeMo's weights under thunder's keys: renaming, matching against the built model, filling it.

The renaming (:func:`nemo_key_to_fctc`) is thunder-speech's: ``encoder.encoder.`` is dropped,
a residual's extra ``.0`` is removed, every layer that is not a masked convolution gains
thunder's ``layer.0`` wrapper, and ``decoder.decoder_layers.0.`` becomes ``decoder.``.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import tree as _tree

__all__ = ["nemo_key_to_fctc", "map_weights"]


def nemo_key_to_fctc(key: str) -> str | None:
    """Map one NeMo ``state_dict`` key to its fctc / thunder key.

    ``encoder.encoder.3.mconv.2.weight`` -> ``encoder.3.mconv.2.layer.0.weight``;
    ``encoder.encoder.3.res.0.0.conv.weight`` -> ``encoder.3.res.0.conv.weight``;
    ``decoder.decoder_layers.0.bias`` -> ``decoder.bias``.

    Args:
        key: a NeMo key.

    Returns:
        The fctc key; None for keys fctc does not read (``preprocessor.*`` buffers, which the
        front end recomputes).

    Raises:
        KeyError: the key lies under no known prefix.
    """
    if key.startswith("preprocessor."):
        return None
    enc, dec = "encoder.encoder.", "decoder.decoder_layers.0."
    if key.startswith(enc):
        parts = key[len(enc):].split(".")
        if len(parts) > 2 and parts[1] == "res" and parts[2] == "0":
            del parts[2]  # NeMo nests the residual branch in a one-element ModuleList
        if len(parts) > 3 and parts[3] != "conv":
            parts[3:3] = ["layer", "0"]  # thunder wraps non-conv layers in Masked(...).layer
        return "encoder." + ".".join(parts)
    if key.startswith(dec):
        return "decoder." + key[len(dec):]
    raise KeyError(key)


def _fill(tree_: Any, mapped: dict[str, torch.Tensor]) -> Any:
    def take(path: str, x: torch.Tensor) -> torch.Tensor:
        if path not in mapped:
            return x
        return mapped[path].to(dtype=x.dtype).contiguous()

    return _tree.map_with_path(take, tree_)


def _renamed(weights: dict[str, torch.Tensor]):
    """``(mapped, origin, unknown)``: tensors by fctc key, their NeMo keys, unmappable keys."""
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unknown = []
    for k, v in weights.items():
        try:
            new = nemo_key_to_fctc(k)
        except KeyError:
            unknown.append(k)
            continue
        if new is not None:
            mapped[new], origin[new] = v, k
    return mapped, origin, unknown


def _mismatch(mapped, origin, unknown, expected, source, architecture, num_classes) -> list[str]:
    """The lines of the error report (empty when the weights fit the model)."""
    missing = [
        k for k in expected if k not in mapped and not k.endswith(".num_batches_tracked")
    ]
    unexpected = unknown + [f"{origin[k]} (as {k})" for k in mapped if k not in expected]
    misshaped = [
        f"{origin[k]} (as {k}): checkpoint {tuple(mapped[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in mapped and tuple(mapped[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or misshaped):
        return []
    lines = [f"load_nemo: the weights in {source!r} do not match the {architecture} "
             "model described by its config:"]
    if missing:
        lines.append(f"  missing ({len(missing)}): {missing}")
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): {unexpected}")
    if misshaped:
        lines.append(f"  mis-shaped ({len(misshaped)}):\n    " + "\n    ".join(misshaped))
    n_out = tuple(mapped["decoder.weight"].shape)[:1] if "decoder.weight" in mapped else None
    if n_out and n_out[0] != num_classes:
        lines.append(
            f"  the decoder has {n_out[0]} outputs but the vocabulary has {num_classes} "
            "classes (labels + blank): the labels do not belong to these weights"
        )
    return lines


def map_weights(
    weights: dict[str, torch.Tensor],
    params: Any,
    state: Any,
    *,
    source: str,
    architecture: str,
    num_classes: int,
) -> tuple[Any, Any]:
    """Fill a CTC model's encoder and decoder with a NeMo ``state_dict``.

    Every encoder and decoder tensor of the model must come from the checkpoint, by name and
    shape (a missing ``num_batches_tracked`` counter starts at 0, as torch allows); the front
    end keeps its own buffers.

    Args:
        weights: NeMo's ``state_dict``.
        params: the model's initial params (thunder's keys).
        state: the model's initial state.
        source: the checkpoint's path, for the error message.
        architecture: the architecture's name, for the error message.
        num_classes: the vocabulary's size, to explain a decoder of another size.

    Returns:
        ``(params, state)`` with the checkpoint's tensors, in the model's dtypes.

    Raises:
        ValueError: the weights do not fit; the message lists the missing, unexpected and
            mis-shaped keys.
    """
    mapped, origin, unknown = _renamed(weights)
    expected = {
        k: v for k, v in (_tree.flatten_dict(params) | _tree.flatten_dict(state)).items()
        if k.startswith(("encoder.", "decoder."))
    }
    lines = _mismatch(mapped, origin, unknown, expected, source, architecture, num_classes)
    if lines:
        raise ValueError("\n".join(lines))
    return _fill(params, mapped), _fill(state, mapped)
