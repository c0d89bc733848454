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

:func:`fctc.models.quartznet_ctc` and :func:`fctc.models.citrinet_ctc` build the usual models
from a vocabulary and a size (:mod:`fctc.models.architectures`).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import random as _random
from ..nn.core import Model, _marked, uses_key

__all__ = ["ctc_model", "CTC_PARTS"]

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
    ``BaseCTCModule.forward``. ``key`` is split three ways (front end: dither; encoder:
    dropout; decoder), so each part's randomness is independent (when no part draws, none is
    split: :func:`~fctc.nn.core.deterministic`); ``train`` reaches all three.

    Params and state are ``{"encoder": ..., "decoder": ..., "audio_transform": ...}``. A
    part without entries may be left out (a tree loaded back from a ``state_dict`` has no
    ``audio_transform`` params, for instance); the returned state keeps the input's keys.

    Args:
        front_end: maps ``(audio, lengths)`` to ``((features, feature_lengths), state)``.
        encoder: maps those to ``((encoded, out_lengths), state)``.
        decoder: maps ``encoded`` to logits.

    Returns:
        The composed model.

    Raises:
        TypeError: a part is not a :class:`~fctc.nn.core.Model`.
    """
    front_end = _check_model(front_end, "front_end")
    encoder = _check_model(encoder, "encoder")
    decoder = _check_model(decoder, "decoder")
    keyed = any(uses_key(m) for m in (front_end, encoder, decoder))

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
        if key is None or not keyed:
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

    return _marked(Model(init, apply), keyed)
