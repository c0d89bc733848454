"""A complete CTC model: audio front end -> encoder -> decoder, as one pure model.

:func:`ctc_model` composes three models the way thunder-speech's ``BaseCTCModule.forward``
does: raw audio ``(B, S)`` and sample counts become features and frame counts (the front end),
then encoded features and output lengths (the encoder), then per-frame class scores
``(B, num_classes, T)`` (the decoder). The scores are raw logits, "log-probabilities ready":
a CTC loss applies ``log_softmax`` over the class axis (axis 1), as thunder's does.

Parameters and state are nested under thunder's attribute names ``encoder``, ``decoder`` and
``audio_transform``, so the "."-joined paths are the ``state_dict`` keys of a thunder
``BaseCTCModule`` (``encoder.0.mconv.0.conv.weight``, ``decoder.weight``,
``audio_transform.2.layer.0.fb``) and thunder checkpoints map directly.

:func:`quartznet_ctc` and :func:`citrinet_ctc` build the usual models from a vocabulary and a size.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import random as _random
from ..audio import filterbank
from ..nn.core import Model
from ..nn.decoders import conv1d_decoder
from .citrinet import citrinet_config, citrinet_encoder
from .quartznet import quartznet_config, quartznet_encoder

__all__ = ["ctc_model", "quartznet_ctc", "citrinet_ctc", "CTC_PARTS"]

CTC_PARTS = ("encoder", "decoder", "audio_transform")
"""The sub-trees of a CTC model's params and state, in thunder's ``state_dict`` order."""


def _check_model(m: Any, what: str) -> Model:
    if not isinstance(m, Model):
        raise TypeError(
            f"ctc_model: {what} must be a fctc Model (init, apply), got {type(m).__name__}"
        )
    return m


def _parts(tree: Any, what: str) -> dict:
    if not isinstance(tree, dict):
        raise TypeError(f"ctc_model: {what} must be a dict, got {type(tree).__name__}")
    unexpected = sorted(k for k in tree if k not in CTC_PARTS)
    if unexpected:
        raise ValueError(
            f"ctc_model: {what} has keys {unexpected}; expected only {list(CTC_PARTS)} "
            "(thunder's BaseCTCModule attribute names)"
        )
    return tree


def ctc_model(front_end: Model, encoder: Model, decoder: Model) -> Model:
    """Compose a front end, an encoder and a decoder into a CTC model over raw audio.

    ``apply(params, state, audio, lengths, train=False, key=None)`` returns
    ``((logits (B, num_classes, T), out_lengths), state)``: thunder's
    ``BaseCTCModule.forward``. ``front_end`` maps ``(audio, lengths)`` to
    ``((features, feature_lengths), state)``, ``encoder`` maps those to
    ``((encoded, out_lengths), state)`` and ``decoder`` maps ``encoded`` to logits. ``key``
    is split three ways (front end: dither; encoder: dropout; decoder), so each part's
    randomness is independent; ``train`` reaches all three.

    Params and state are ``{"encoder": ..., "decoder": ..., "audio_transform": ...}``. A
    part without entries may be left out (a tree loaded back from a ``state_dict`` has no
    ``audio_transform`` params, for instance); the returned state keeps the input's keys.
    """
    front_end = _check_model(front_end, "front_end")
    encoder = _check_model(encoder, "encoder")
    decoder = _check_model(decoder, "decoder")

    def init(key: torch.Tensor):
        k_front, k_enc, k_dec = _random.split(key, 3)
        ep, es = encoder.init(k_enc)
        dp, ds = decoder.init(k_dec)
        ap, as_ = front_end.init(k_front)
        params = {"encoder": ep, "decoder": dp, "audio_transform": ap}
        state = {"encoder": es, "decoder": ds, "audio_transform": as_}
        return params, state

    def apply(params, state, audio, lengths, *, train=False, key=None):
        params = _parts(params, "params")
        state = _parts(state, "state")
        if key is None:
            k_front = k_enc = k_dec = None
        else:
            k_front, k_enc, k_dec = _random.split(key, 3)
        (features, feature_lengths), s_front = front_end.apply(
            params.get("audio_transform", {}),
            state.get("audio_transform", {}),
            audio,
            lengths,
            train=train,
            key=k_front,
        )
        (encoded, out_lengths), s_enc = encoder.apply(
            params.get("encoder", {}),
            state.get("encoder", {}),
            features,
            feature_lengths,
            train=train,
            key=k_enc,
        )
        logits, s_dec = decoder.apply(
            params.get("decoder", {}), state.get("decoder", {}), encoded, train=train, key=k_dec
        )
        new_state = {}
        for name, s in (("encoder", s_enc), ("decoder", s_dec), ("audio_transform", s_front)):
            if name in state or s:
                new_state[name] = s
        return (logits, out_lengths), new_state

    return Model(init, apply)


def _num_classes(vocabulary: Any, fn: str) -> int:
    n = vocabulary if isinstance(vocabulary, int) and not isinstance(vocabulary, bool) else None
    if n is None and hasattr(vocabulary, "__len__") and hasattr(vocabulary, "itos"):
        n = len(vocabulary)
    if n is None or n < 2:
        raise ValueError(
            f"{fn}: vocabulary must be a fctc.text.Vocabulary or the number of output classes "
            f"(blank included, at least 2), got {vocabulary!r}"
        )
    return n


def quartznet_ctc(
    vocabulary: Any,
    config: str = "5x5",
    *,
    dropout: float = 0.0,
    front_end: dict[str, Any] | None = None,
    **encoder_kwargs: Any,
) -> Model:
    """QuartzNet as thunder builds it: filterbank front end, ``quartznet_encoder``, conv decoder.

    ``vocabulary`` is a :class:`fctc.text.Vocabulary` (its length, blank included, is the
    number of classes) or that number. ``config`` names a size of
    :func:`~fctc.models.quartznet.quartznet_config` (``"5x5"``, ``"15x5"``, ``"tiny"``);
    ``encoder_kwargs`` override single encoder arguments. ``front_end`` holds keyword
    arguments of :func:`fctc.audio.filterbank` (thunder's defaults otherwise); the encoder's
    ``feat_in`` is its ``nfilt``.
    """
    num_classes = _num_classes(vocabulary, "quartznet_ctc")
    fe_kwargs = dict(front_end or {})
    feat_in = fe_kwargs.setdefault("nfilt", 64)
    enc_kwargs = {**quartznet_config(config), "dropout": dropout, **encoder_kwargs}
    if "feat_in" in enc_kwargs and enc_kwargs["feat_in"] != feat_in:
        raise ValueError(
            f"quartznet_ctc: feat_in={enc_kwargs['feat_in']} differs from the front end's "
            f"nfilt={feat_in}; set front_end={{'nfilt': ...}} instead"
        )
    enc_kwargs["feat_in"] = feat_in
    width = tuple(enc_kwargs.get("final_filters", (512, 1024)))[-1]
    return ctc_model(
        filterbank(**fe_kwargs), quartznet_encoder(**enc_kwargs), conv1d_decoder(width, num_classes)
    )


def citrinet_ctc(
    vocabulary: Any,
    config: str = "256",
    *,
    dropout: float = 0.0,
    front_end: dict[str, Any] | None = None,
    **encoder_kwargs: Any,
) -> Model:
    """Citrinet: filterbank front end, ``citrinet_encoder`` and thunder's conv decoder.

    Like :func:`quartznet_ctc`, with sizes from :func:`~fctc.models.citrinet.citrinet_config`
    (``"256"``, ``"512"``, ``"1024"``, ``"tiny"``). The front end defaults to NeMo's Citrinet
    features: 80 filters over 25 ms windows (``n_window_size=400``) every 10 ms.
    """
    num_classes = _num_classes(vocabulary, "citrinet_ctc")
    fe_kwargs = {"nfilt": 80, "n_window_size": 400, **(front_end or {})}
    feat_in = fe_kwargs["nfilt"]
    enc_kwargs = {**citrinet_config(config), "dropout": dropout, **encoder_kwargs}
    if "feat_in" in enc_kwargs and enc_kwargs["feat_in"] != feat_in:
        raise ValueError(
            f"citrinet_ctc: feat_in={enc_kwargs['feat_in']} differs from the front end's "
            f"nfilt={feat_in}; set front_end={{'nfilt': ...}} instead"
        )
    enc_kwargs["feat_in"] = feat_in
    width = enc_kwargs.get("final_filters", 640)
    return ctc_model(
        filterbank(**fe_kwargs), citrinet_encoder(**enc_kwargs), conv1d_decoder(width, num_classes)
    )
