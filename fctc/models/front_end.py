"""Front ends as the CTC model sees them: with training-time augmentation, or over features.

:func:`augmented_front_end` runs, in training only, the waveform augmentation of
:func:`fctc.audio.augment_waveform` (speed, reverberation, noise, band-limiting, gain), then
the front end, then the feature augmentation of :func:`fctc.audio.augment_features` (time
stretch, mel warp, SpecAugment). :func:`cached_front_end` is the same
augmentation over inputs that already are the front end's features (the batches of
:class:`fctc.data.FeatureCache`), and :func:`identity_front_end` passes features through
untouched. All keep the wrapped front end's params and state, so a model trained on cached
features has the trees, and the checkpoints, of the model over raw audio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import random as _random
from ..audio import augment_features, augment_waveform
from ..nn.core import Model, deterministic

__all__ = ["augmented_front_end", "cached_front_end", "identity_front_end"]


def _no_state(key: Any = None) -> tuple[dict, dict]:
    return {}, {}


def identity_front_end(init: Callable[..., Any] | None = None) -> Model:
    """A front end for inputs that already are features ``(B, F, T)`` with frame counts.

    Args:
        init: the ``init`` of the front end that computed the features, so that the model's
            trees stay the same; None: no params and no state.

    Returns:
        A model whose ``apply`` returns ``((features, lengths), state)`` unchanged.
    """

    def apply(params, state, features, lengths, *, train=False, key=None):
        return (features, lengths), state

    return deterministic(Model(_no_state if init is None else init, apply))


def augmented_front_end(
    front_end: Model,
    augment: dict[str, Any] | None,
    warp: dict[str, Any] | None = None,
    waveform: dict[str, Any] | None = None,
) -> Model:
    """``front_end`` with, in training only, waveform augmentation before and feature
    augmentation after it.

    Params and state are the front end's own, so checkpoints keep thunder's layout. The key
    is split between the front end and the feature augmentation as without waveform
    augmentation (so features-only runs draw what they drew before); the front end's share
    is split again between its dither and the waveform augmentation when there is some.

    Args:
        front_end: the front end.
        augment: keyword arguments of :func:`fctc.audio.spec_augment`; None skips it.
        warp: keyword arguments of :func:`fctc.audio.random_warp`; None skips it.
        waveform: keyword arguments of :func:`fctc.audio.augment_waveform` (``sample_rate``
            and one dict or None per step); None or no step skips it.

    Returns:
        ``front_end`` itself when there is no augmentation at all, else the augmented front
        end (whose ``apply`` raises ``ValueError`` when training without a key).
    """
    steps = {k: v for k, v in (waveform or {}).items() if k != "sample_rate"}
    if not any(v is not None for v in steps.values()):
        waveform = None
    if augment is None and warp is None and waveform is None:
        return front_end

    def apply(params, state, audio, lengths, *, train=False, key=None):
        if not train:
            return front_end.apply(params, state, audio, lengths, train=False)
        if key is None:
            raise ValueError(
                "front end: training with augmentation (waveform, warp, SpecAugment) needs a "
                "key: pass key=... to apply"
            )
        k_front, k_aug = _random.split(key)
        if waveform is not None:
            k_front, k_wave = _random.split(k_front)
            audio, lengths = augment_waveform(k_wave, audio, lengths, **waveform)
        (x, out_lengths), state = front_end.apply(params, state, audio, lengths, train=True, key=k_front)
        return augment_features(k_aug, x, out_lengths, warp, augment), state

    return Model(front_end.init, apply)


def cached_front_end(
    front_end: Model, augment: dict[str, Any] | None, warp: dict[str, Any] | None = None
) -> Model:
    """A stand-in for ``front_end`` whose inputs are already its features.

    The features ``(B, nfilt, T)`` with frame counts pass through, augmented in training as
    :func:`augmented_front_end` augments ``front_end``'s output (with the same share of the
    key), so cached and uncached training draw the same masks and warps.

    Args:
        front_end: the front end that computed the features (its ``init`` is kept).
        augment: keyword arguments of :func:`fctc.audio.spec_augment`; None skips it.
        warp: keyword arguments of :func:`fctc.audio.random_warp`; None skips it.

    Returns:
        The stand-in model, with ``front_end``'s params and state.
    """
    return augmented_front_end(identity_front_end(front_end.init), augment, warp)
