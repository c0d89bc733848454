"""Load NeMo ``.nemo`` checkpoints of QuartzNet and Citrinet into fctc models.

A ``.nemo`` file is a tar archive (often gzipped, member names often under ``./``) holding
``model_config.yaml`` (the model's hyperparameters), ``model_weights.ckpt`` (its
``state_dict``) and, for sub-word models, a sentencepiece ``tokenizer.model``. This module
reads them the way thunder-speech's ``load_quartznet_checkpoint`` /
``load_citrinet_checkpoint`` do:

* the front end comes from ``preprocessor``: ``sample_rate``, ``window_size`` and
  ``window_stride`` (seconds, turned into samples with ``int(seconds * sample_rate)``),
  ``n_fft``, ``features`` (``nfilt``) and ``dither``; NeMo's ``preprocessor.*`` buffers are
  recomputed, not read;
* the encoder comes from ``encoder.jasper``, NeMo's list of blocks: QuartzNet's stem, body
  (``jasper[1:-2]``: ``filters`` and ``kernel``), dilated block and 1x1 block; Citrinet's stem,
  body (``jasper[1:-1]``: ``filters``, ``kernel`` and ``stride``) and final block;
* the vocabulary is ``labels`` (or ``decoder.vocabulary``) with the CTC blank appended last;
  for sub-word models NeMo's ``"##piece"`` / ``"piece"`` spelling is turned back into
  sentencepiece's ``"piece"`` / ``"▁piece"`` (:func:`fix_vocab`);
* weights are renamed to thunder's keys (:func:`nemo_key_to_fctc`): ``encoder.encoder.`` is
  dropped, a residual's extra ``.0`` is removed, every layer that is not a masked convolution
  gains thunder's ``layer.0`` wrapper, and ``decoder.decoder_layers.0.`` becomes ``decoder.``.

Older configs (``encoder.params.jasper``, ``preprocessor.params``) and ``${...}``
interpolations between config entries are understood. Safety: ``model_weights.ckpt`` is a
torch pickle, which could run arbitrary code if unpickled naively; it is read with
``torch.load(..., weights_only=True)``, which accepts tensors and plain containers only. The
archive is never extracted to disk: members are read in memory by name, so odd member paths
cannot write anywhere.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

from . import random as _random
from . import tree as _tree
from .audio import filterbank
from .models.citrinet import citrinet_encoder
from .models.ctc import ctc_model
from .models.quartznet import quartznet_encoder
from .nn.core import Model
from .nn.decoders import conv1d_decoder
from .text import SentencePieceTokenizer, Vocabulary

__all__ = [
    "NemoCheckpoint",
    "NemoArchive",
    "load_nemo",
    "read_nemo_archive",
    "nemo_key_to_fctc",
    "fix_vocab",
    "front_end_config",
    "ARCHITECTURES",
]

ARCHITECTURES = ("quartznet", "citrinet")
CONFIG_NAME = "model_config.yaml"
WEIGHTS_NAME = "model_weights.ckpt"


class NemoArchive(NamedTuple):
    """The raw contents of a ``.nemo`` file: the parsed config, the weights ``state_dict``
    (NeMo's key names) and the sentencepiece model bytes (``None`` when absent)."""

    config: dict
    weights: dict[str, torch.Tensor]
    tokenizer_model: bytes | None


class NemoCheckpoint(NamedTuple):
    """A loaded NeMo checkpoint.

    ``model`` is a :func:`~fctc.models.ctc.ctc_model` over raw audio; ``params`` / ``state``
    its pytrees, filled with the checkpoint's weights (thunder's keys: ``encoder.…``,
    ``decoder.…``, ``audio_transform.…``); ``vocabulary`` the output classes (blank last);
    ``front_end`` the :func:`fctc.audio.filterbank` keyword arguments; ``encoder`` the keyword
    arguments of the encoder builder; ``architecture`` ``"quartznet"`` or ``"citrinet"``;
    ``config`` the parsed ``model_config.yaml``; ``tokenizer_model`` the sentencepiece model
    bytes for sub-word vocabularies.
    """

    model: Model
    params: Any
    state: Any
    vocabulary: Vocabulary
    front_end: dict[str, Any]
    encoder: dict[str, Any]
    architecture: str
    config: dict
    tokenizer_model: bytes | None


# ----------------------------------------------------------------------------- the archive


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def read_nemo_archive(path: str | os.PathLike) -> NemoArchive:
    """Read a ``.nemo`` archive (tar or tar.gz) in memory: config, weights, tokenizer model.

    The weights are loaded with ``torch.load(..., weights_only=True)`` (never an arbitrary
    unpickle) on the CPU. Raises ``FileNotFoundError`` for a missing path and ``ValueError``
    naming the problem for anything that is not a complete ``.nemo`` archive (not a tar,
    truncated or corrupt data, missing members, unreadable config or weights).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_nemo_archive: no such file: {str(path)!r}")
    try:
        with tarfile.open(path, mode="r:*") as tar:
            members = {}
            for m in tar.getmembers():
                if m.isfile():
                    members[_member_name(m.name)] = m
            missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if n not in members]
            if missing:
                raise ValueError(
                    f"read_nemo_archive: {str(path)!r} lacks {missing}; a .nemo archive holds "
                    f"{CONFIG_NAME} and {WEIGHTS_NAME} (found: {sorted(members)})"
                )

            def read(name: str) -> bytes:
                f = tar.extractfile(members[name])
                if f is None:  # pragma: no cover - isfile() members always have data
                    raise ValueError(f"read_nemo_archive: member {name!r} has no data")
                return f.read()

            config_bytes = read(CONFIG_NAME)
            weights_bytes = read(WEIGHTS_NAME)
            tok_names = sorted(n for n in members if n.endswith("tokenizer.model"))
            tokenizer = read(tok_names[0]) if tok_names else None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ValueError(
            f"read_nemo_archive: {str(path)!r} is not a readable .nemo archive (a tar or tar.gz "
            f"file); it may be truncated or corrupt: {type(e).__name__}: {e}"
        ) from None
    try:
        config = yaml.safe_load(config_bytes.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"read_nemo_archive: {CONFIG_NAME} is not valid YAML: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"read_nemo_archive: {CONFIG_NAME} must hold a mapping, got {type(config).__name__}"
        )
    return NemoArchive(config, _load_weights(weights_bytes), tokenizer)


def _load_weights(data: bytes) -> dict[str, torch.Tensor]:
    try:
        weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(
            f"read_nemo_archive: {WEIGHTS_NAME} could not be loaded as tensors with "
            f"torch.load(weights_only=True) (corrupt, or it holds objects other than tensors, "
            f"which fctc refuses to unpickle): {type(e).__name__}: {e}"
        ) from None
    if isinstance(weights, Mapping) and "state_dict" in weights and len(weights) <= 8:
        weights = weights["state_dict"]  # a Lightning checkpoint rather than a bare state_dict
    if not isinstance(weights, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise ValueError(
            f"read_nemo_archive: {WEIGHTS_NAME} must hold a state_dict (str -> tensor), got "
            f"{type(weights).__name__}"
        )
    return dict(weights)


# ------------------------------------------------------------------------------ the config


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


def _resolve(node: Any, root: dict, where: str, depth: int = 0) -> Any:
    """Replace whole-value ``${a.b}`` interpolations (OmegaConf's) by the values they name."""
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
        return _resolve(target, root, where, depth + 1)
    if isinstance(node, Mapping):
        return {k: _resolve(v, root, f"{where}.{k}", depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root, f"{where}[{i}]", depth) for i, v in enumerate(node)]
    return node


def _section(config: dict, name: str) -> dict:
    sec = config.get(name)
    if not isinstance(sec, Mapping):
        raise ValueError(
            f"load_nemo: model_config.yaml has no {name!r} section; is this a NeMo CTC model "
            "(EncDecCTCModel / EncDecCTCModelBPE)?"
        )
    sec = _resolve(dict(sec), config, name)
    params = sec.get("params")
    return dict(params) if isinstance(params, Mapping) else sec  # NeMo < 1.0 nests under params


def _first(value: Any, where: str) -> int:
    v = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"load_nemo: {where} must be an int or a one-element list, got {value!r}")
    return v


def front_end_config(preprocessor: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`fctc.audio.filterbank` keyword arguments from NeMo's ``preprocessor`` section."""
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
        dither=float(preprocessor.get("dither", 1e-5)),
    )
    if "preemph" in preprocessor and preprocessor["preemph"] is not None:
        out["preemph"] = float(preprocessor["preemph"])
    return out


def _check_block(block: Mapping, i: int, arch: str, **want: Any) -> None:
    defaults = {"stride": [1], "dilation": [1], "residual": True, "separable": False, "repeat": 1}
    for key, expected in want.items():
        got = block.get(key, defaults.get(key))
        if isinstance(expected, int) and not isinstance(expected, bool) and key in (
            "stride", "dilation",
        ):
            got = _first(got, f"encoder.jasper[{i}].{key}")
        if got != expected:
            raise ValueError(
                f"load_nemo: encoder.jasper[{i}] has {key}={got!r}, but fctc's {arch} encoder "
                f"needs {key}={expected!r} there; this checkpoint's architecture is not supported"
            )


def _quartznet_encoder_kwargs(jasper: list, feat_in: int, dropout: float) -> dict[str, Any]:
    arch = "QuartzNet"
    if len(jasper) < 3:
        raise ValueError(
            f"load_nemo: a QuartzNet config has a stem, body blocks and two final blocks; "
            f"encoder.jasper has only {len(jasper)} blocks"
        )
    stem, body, dil, last = jasper[0], jasper[1:-2], jasper[-2], jasper[-1]
    _check_block(stem, 0, arch, stride=2, dilation=1, residual=False, separable=True, repeat=1)
    repeat = body[0].get("repeat", 1) if body else 1
    for i, b in enumerate(body, start=1):
        _check_block(b, i, arch, stride=1, dilation=1, residual=True, separable=True, repeat=repeat)
    n = len(jasper)
    _check_block(dil, n - 2, arch, stride=1, dilation=2, residual=False, separable=True, repeat=1)
    _check_block(last, n - 1, arch, stride=1, dilation=1, residual=False, separable=False, repeat=1)
    if _first(last.get("kernel"), f"encoder.jasper[{n - 1}].kernel") != 1:
        raise ValueError(f"load_nemo: QuartzNet's last block must have kernel 1 (jasper[{n - 1}])")
    return dict(
        feat_in=feat_in,
        filters=[b["filters"] for b in body],
        kernel_sizes=[_first(b["kernel"], f"encoder.jasper[{i}].kernel") for i, b in
                      enumerate(body, start=1)],
        repeat_blocks=1,
        dropout=dropout,
        repeat=repeat,
        stem_filters=stem["filters"],
        stem_kernel=_first(stem["kernel"], "encoder.jasper[0].kernel"),
        final_filters=(dil["filters"], last["filters"]),
        final_kernel=_first(dil["kernel"], f"encoder.jasper[{n - 2}].kernel"),
    )


def _citrinet_encoder_kwargs(jasper: list, feat_in: int, dropout: float) -> dict[str, Any]:
    arch = "Citrinet"
    if len(jasper) < 2:
        raise ValueError(
            f"load_nemo: a Citrinet config has a stem, body blocks and a final block; "
            f"encoder.jasper has only {len(jasper)} blocks"
        )
    stem, body, final = jasper[0], jasper[1:-1], jasper[-1]
    n = len(jasper)
    for i, b in enumerate(jasper):
        for key, ok in (("se", (True,)), ("se_context_size", (-1, None)),
                        ("kernel_size_factor", (1, 1.0, None)),
                        ("residual_mode", ("add", "stride_add", None))):
            value = b.get(key, ok[0] if key == "se" else None)
            if value not in ok:
                raise ValueError(
                    f"load_nemo: encoder.jasper[{i}].{key}={value!r} is not supported by fctc's "
                    f"Citrinet encoder (needs one of {list(ok)})"
                )
    _check_block(stem, 0, arch, stride=1, dilation=1, residual=False, separable=True, repeat=1)
    repeat = body[0].get("repeat", 1) if body else 1
    strides = []
    for i, b in enumerate(body, start=1):
        _check_block(b, i, arch, dilation=1, residual=True, separable=True, repeat=repeat)
        s = _first(b.get("stride", [1]), f"encoder.jasper[{i}].stride")
        if s > 1 and repeat > 1 and not b.get("stride_last", False):
            raise ValueError(
                f"load_nemo: encoder.jasper[{i}] strides every sub-block (stride_last is not "
                "set); fctc's Citrinet strides only the last one"
            )
        strides.append(s)
    _check_block(final, n - 1, arch, stride=1, dilation=1, residual=False, separable=True, repeat=1)
    return dict(
        filters=[b["filters"] for b in body],
        kernel_sizes=[_first(b["kernel"], f"encoder.jasper[{i}].kernel") for i, b in
                      enumerate(body, start=1)],
        strides=strides,
        feat_in=feat_in,
        dropout=dropout,
        repeat=repeat,
        stem_filters=stem["filters"],
        stem_kernel=_first(stem["kernel"], "encoder.jasper[0].kernel"),
        final_filters=final["filters"],
        final_kernel=_first(final["kernel"], f"encoder.jasper[{n - 1}].kernel"),
    )


def _detect_architecture(jasper: list) -> str:
    if any(b.get("se") for b in jasper):
        return "citrinet"
    if len(jasper) >= 3 and all(b.get("separable") for b in jasper[:-1]):
        return "quartznet"
    raise ValueError(
        "load_nemo: unknown architecture: the encoder.jasper blocks match neither QuartzNet "
        "(separable blocks, no squeeze-excite) nor Citrinet (squeeze-excite); fctc loads "
        f"{list(ARCHITECTURES)} checkpoints (pass architecture=... to force one)"
    )


def fix_vocab(tokens: list[str]) -> list[str]:
    """NeMo's sub-word labels back to sentencepiece pieces (thunder's ``fix_vocab``).

    NeMo writes a word-initial piece ``"▁the"`` as ``"the"`` and a continuation piece
    ``"ing"`` as ``"##ing"``; this undoes it: ``"##ing"`` -> ``"ing"``, ``"the"`` -> ``"▁the"``.
    """
    return [t[2:] if t.startswith("##") else "\u2581" + t for t in tokens]


def _no_tokenizer(text: str) -> list[str]:
    raise ValueError(
        "this vocabulary comes from a NeMo sub-word (sentencepiece) checkpoint and cannot split "
        "text into pieces by itself: pass tokenizer_dir=... to load_nemo (needs the "
        "sentencepiece package) to encode text; decoding works without it"
    )


# ----------------------------------------------------------------------------- the weights


def nemo_key_to_fctc(key: str) -> str | None:
    """Map one NeMo ``state_dict`` key to its fctc / thunder key; ``None`` for keys fctc does
    not read (``preprocessor.*`` buffers, which the front end recomputes).

    ``encoder.encoder.3.mconv.2.weight`` -> ``encoder.3.mconv.2.layer.0.weight``;
    ``encoder.encoder.3.res.0.0.conv.weight`` -> ``encoder.3.res.0.conv.weight``;
    ``decoder.decoder_layers.0.bias`` -> ``decoder.bias``. A key under no known prefix raises
    ``KeyError``.
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


def load_nemo(
    path: str | os.PathLike,
    *,
    architecture: str | None = None,
    dropout: float = 0.0,
    tokenizer_dir: str | os.PathLike | None = None,
) -> NemoCheckpoint:
    """Load a NeMo QuartzNet or Citrinet ``.nemo`` checkpoint as an fctc CTC model.

    Args:
        path: the ``.nemo`` file.
        architecture: ``"quartznet"`` or ``"citrinet"``; detected from the config when None.
        dropout: the encoder's dropout for fine-tuning (thunder's ``augment_params``
            ``dropout``; NeMo's own value is not used, as in thunder).
        tokenizer_dir: for sub-word checkpoints, a folder to write the archive's
            ``tokenizer.model`` into, so that the vocabulary can encode text (needs the
            ``sentencepiece`` package). Without it the vocabulary decodes but cannot encode.

    The weights are read with ``torch.load(..., weights_only=True)``: no code in the archive is
    ever run. Every encoder and decoder tensor must match the model built from the config by
    name and shape (a missing ``num_batches_tracked`` counter starts at 0, as torch allows);
    otherwise a ``ValueError`` lists the missing, unexpected and mis-shaped keys.
    """
    archive = read_nemo_archive(path)
    config = archive.config
    encoder_sec = _section(config, "encoder")
    jasper = encoder_sec.get("jasper")
    if not (isinstance(jasper, list) and jasper and all(isinstance(b, Mapping) for b in jasper)):
        raise ValueError(
            "load_nemo: unknown architecture: model_config.yaml has no encoder.jasper block list "
            f"(encoder: {encoder_sec.get('_target_', encoder_sec.get('cls', '?'))}); fctc loads "
            f"the ConvASREncoder models {list(ARCHITECTURES)}"
        )
    if encoder_sec.get("conv_mask", True) is not True:
        raise ValueError("load_nemo: encoder.conv_mask=false checkpoints are not supported")
    if encoder_sec.get("activation", "relu") != "relu":
        raise ValueError(
            f"load_nemo: encoder.activation={encoder_sec['activation']!r} is not supported "
            "(fctc's QuartzNet and Citrinet use relu)"
        )
    if architecture is None:
        architecture = _detect_architecture(jasper)
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"load_nemo: unknown architecture {architecture!r}; choose one of {list(ARCHITECTURES)}"
        )
    front = front_end_config(_section(config, "preprocessor"))
    feat_in = encoder_sec.get("feat_in", front["nfilt"])
    if feat_in != front["nfilt"]:
        raise ValueError(
            f"load_nemo: encoder.feat_in={feat_in} differs from preprocessor.features="
            f"{front['nfilt']}"
        )
    read_kwargs = (
        _quartznet_encoder_kwargs if architecture == "quartznet" else _citrinet_encoder_kwargs
    )
    try:
        enc_kwargs = read_kwargs(jasper, feat_in, dropout)
    except KeyError as e:
        raise ValueError(
            f"load_nemo: an encoder.jasper block lacks the entry {e}; every block needs "
            "'filters' and 'kernel'"
        ) from None
    if architecture == "quartznet":
        encoder = quartznet_encoder(**enc_kwargs)
        width = enc_kwargs["final_filters"][1]
    else:
        encoder = citrinet_encoder(**enc_kwargs)
        width = enc_kwargs["final_filters"]

    decoder_sec = _section(config, "decoder")
    labels = _resolve(config["labels"], config, "labels") if "labels" in config else None
    if labels is None:
        labels = decoder_sec.get("vocabulary")
    if not isinstance(labels, list) or not labels or not all(isinstance(t, str) for t in labels):
        raise ValueError(
            "load_nemo: the config has no vocabulary (a non-empty list of strings in 'labels' or "
            f"'decoder.vocabulary'), got {labels!r}"
        )
    subword = "tokenizer" in config or archive.tokenizer_model is not None
    if subword:
        tokenizer = _no_tokenizer
        if tokenizer_dir is not None and archive.tokenizer_model is not None:
            tok_path = Path(tokenizer_dir) / "tokenizer.model"
            tok_path.parent.mkdir(parents=True, exist_ok=True)
            tok_path.write_bytes(archive.tokenizer_model)
            tokenizer = SentencePieceTokenizer(str(tok_path))
        vocabulary = Vocabulary(fix_vocab(labels), tokenizer=tokenizer)
    else:
        vocabulary = Vocabulary(labels)

    model = ctc_model(filterbank(**front), encoder, conv1d_decoder(width, len(vocabulary)))
    params, state = model.init(_random.key(0))

    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unknown = []
    for k, v in archive.weights.items():
        try:
            new = nemo_key_to_fctc(k)
        except KeyError:
            unknown.append(k)
            continue
        if new is not None:
            mapped[new], origin[new] = v, k
    expected = {
        k: v for k, v in (_tree.flatten_dict(params) | _tree.flatten_dict(state)).items()
        if k.startswith(("encoder.", "decoder."))
    }
    missing = [
        k for k in expected if k not in mapped and not k.endswith(".num_batches_tracked")
    ]
    unexpected = unknown + [f"{origin[k]} (as {k})" for k in mapped if k not in expected]
    misshaped = [
        f"{origin[k]} (as {k}): checkpoint {tuple(mapped[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in mapped and tuple(mapped[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        lines = [f"load_nemo: the weights in {str(path)!r} do not match the {architecture} "
                 "model described by its config:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {unexpected}")
        if misshaped:
            lines.append(f"  mis-shaped ({len(misshaped)}):\n    " + "\n    ".join(misshaped))
        n_out = tuple(mapped["decoder.weight"].shape)[:1] if "decoder.weight" in mapped else None
        if n_out and n_out[0] != len(vocabulary):
            lines.append(
                f"  the decoder has {n_out[0]} outputs but the vocabulary has {len(vocabulary)} "
                "classes (labels + blank): the labels do not belong to these weights"
            )
        raise ValueError("\n".join(lines))
    return NemoCheckpoint(
        model=model,
        params=_fill(params, mapped),
        state=_fill(state, mapped),
        vocabulary=vocabulary,
        front_end=front,
        encoder=enc_kwargs,
        architecture=architecture,
        config=config,
        tokenizer_model=archive.tokenizer_model,
    )
