"""Reading NeMo's ``model_config.yaml``: sections, ``${...}`` interpolations, the front end.

Older configs (``encoder.params.jasper``, ``preprocessor.params``) and whole-value
``${a.b}`` interpolations between config entries (OmegaConf's) are understood. The front end
comes from ``preprocessor``: ``sample_rate``, ``window_size`` and ``window_stride`` (seconds,
turned into samples with ``int(seconds * sample_rate)``), ``n_fft``, ``features`` (``nfilt``)
and ``dither``; NeMo's ``preprocessor.*`` buffers are recomputed, not read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["resolve", "section", "encoder_blocks", "front_end_config"]

_INTERP = re.compile(r"^\$\{([^${}]+)\}$")


def _lookup(root: dict, ref: str) -> Any:
    def walk(node: Any, parts: list[str]) -> Any:
        for p in parts:
            if isinstance(node, Mapping) and p in node:
                node = node[p]
            elif isinstance(node, list) and p.isdigit() and int(p) < len(node):
                node = node[int(p)]
            else:
                raise KeyError(ref)
        return node

    parts = ref.strip().split(".")
    try:
        return walk(root, parts)
    except KeyError:
        if parts[0] == "model" and "model" not in root:  # training configs nest under model:
            return walk(root, parts[1:])
        raise


def resolve(node: Any, root: dict, where: str, depth: int = 0) -> Any:
    """Replace whole-value ``${a.b}`` interpolations by the values they name.

    Args:
        node: a config value (mappings and lists are resolved recursively).
        root: the whole config, which the references are relative to (a leading ``model.``
            may be left out, as in NeMo's training configs).
        where: the value's place, for error messages.
        depth: the nesting of references followed so far.

    Returns:
        ``node`` with every interpolation replaced.

    Raises:
        ValueError: a reference names no entry, or references do not terminate.
    """
    if depth > 32:
        raise ValueError(f"load_nemo: the config interpolation at {where} does not terminate")
    if isinstance(node, str):
        m = _INTERP.match(node)
        if not m:
            return node
        try:
            target = _lookup(root, m.group(1))
        except KeyError:
            raise ValueError(
                f"load_nemo: the config value {node!r} at {where} names an entry that does not "
                "exist; fix model_config.yaml"
            ) from None
        return resolve(target, root, where, depth + 1)
    if isinstance(node, Mapping):
        return {k: resolve(v, root, f"{where}.{k}", depth) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, root, f"{where}[{i}]", depth) for i, v in enumerate(node)]
    return node


def section(config: dict, name: str) -> dict:
    """A top-level section of the config, interpolations resolved.

    Args:
        config: the parsed ``model_config.yaml``.
        name: ``"encoder"``, ``"decoder"``, ``"preprocessor"``, ...

    Returns:
        The section (its ``params`` entry for NeMo < 1.0 configs).

    Raises:
        ValueError: there is no such section (not a NeMo CTC model).
    """
    sec = config.get(name)
    if not isinstance(sec, Mapping):
        raise ValueError(
            f"load_nemo: model_config.yaml has no {name!r} section; is this a NeMo CTC model "
            "(EncDecCTCModel / EncDecCTCModelBPE)?"
        )
    sec = resolve(dict(sec), config, name)
    params = sec.get("params")
    return dict(params) if isinstance(params, Mapping) else sec  # NeMo < 1.0 nests under params


def encoder_blocks(encoder: Mapping[str, Any], architectures: list[str]) -> list[Mapping]:
    """The ``jasper`` block list of a ConvASREncoder section, with its global settings checked.

    Args:
        encoder: the ``encoder`` section.
        architectures: the names fctc loads, for the error message.

    Returns:
        The block configs.

    Raises:
        ValueError: there is no block list (another encoder), or ``conv_mask`` / ``activation``
            differ from what fctc's encoders do.
    """
    jasper = encoder.get("jasper")
    if not (isinstance(jasper, list) and jasper and all(isinstance(b, Mapping) for b in jasper)):
        raise ValueError(
            "load_nemo: unknown architecture: model_config.yaml has no encoder.jasper block list "
            f"(encoder: {encoder.get('_target_', encoder.get('cls', '?'))}); fctc loads "
            f"the ConvASREncoder models {architectures}"
        )
    if encoder.get("conv_mask", True) is not True:
        raise ValueError("load_nemo: encoder.conv_mask=false checkpoints are not supported")
    if encoder.get("activation", "relu") != "relu":
        raise ValueError(
            f"load_nemo: encoder.activation={encoder['activation']!r} is not supported "
            "(fctc's QuartzNet and Citrinet use relu)"
        )
    return jasper


def front_end_config(preprocessor: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`fctc.audio.filterbank` keyword arguments from NeMo's ``preprocessor`` section.

    Args:
        preprocessor: the section.

    Returns:
        ``sample_rate``, ``n_window_size``, ``n_window_stride``, ``n_fft``, ``nfilt``,
        ``dither``, ``pad_mode="reflect"`` (the STFT padding of thunder-speech, whose
        parity tests fctc's NeMo loading follows) and, when given, ``preemph``.

    Raises:
        ValueError: a setting fctc's filterbank does not implement (window, normalisation,
            frame splicing), or a required entry is missing.
    """
    for key, allowed in (("window", ("hann",)), ("normalize", ("per_feature",))):
        if preprocessor.get(key, allowed[0]) not in allowed:
            raise ValueError(
                f"load_nemo: preprocessor.{key}={preprocessor[key]!r} is not supported; fctc's "
                f"filterbank implements {key}={allowed[0]!r}"
            )
    if preprocessor.get("frame_splicing", 1) != 1:
        raise ValueError("load_nemo: preprocessor.frame_splicing != 1 is not supported")
    try:
        sr = preprocessor["sample_rate"]
        win = int(preprocessor["window_size"] * sr)
        hop = int(preprocessor["window_stride"] * sr)
        nfilt = preprocessor["features"]
    except KeyError as e:
        raise ValueError(f"load_nemo: the preprocessor section lacks {e}") from None
    n_fft = preprocessor.get("n_fft") or 2 ** (win - 1).bit_length()  # NeMo's default
    out = dict(
        sample_rate=sr, n_window_size=win, n_window_stride=hop, n_fft=n_fft, nfilt=nfilt,
        dither=float(preprocessor.get("dither", 1e-5)), pad_mode="reflect",
    )
    if "preemph" in preprocessor and preprocessor["preemph"] is not None:
        out["preemph"] = float(preprocessor["preemph"])
    return out
