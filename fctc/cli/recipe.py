"""From a configuration to the objects a run needs: vocabulary, model, optimiser and schedule.

Everything here is a pure function of the configuration (and of the training transcripts, for
the default vocabulary), so ``fctc eval`` and ``fctc transcribe`` rebuild exactly the model a
checkpoint was trained as, from the ``model`` section and the vocabulary saved beside it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any

import torch

from .. import optim
from .. import random as _random
from ..audio import filterbank, spec_augment
from ..models import citrinet_encoder, ctc_model, quartznet_encoder
from ..nn.core import Model
from ..nn.decoders import conv1d_decoder
from ..text import Vocabulary
from .config import ConfigError

__all__ = [
    "ENCODERS",
    "build_vocabulary",
    "augmented_front_end",
    "build_front_end",
    "build_model",
    "build_optimizer",
    "count_parameters",
    "total_updates",
    "output_frames",
]

ENCODERS = {"quartznet": quartznet_encoder, "citrinet": citrinet_encoder}
"""Encoder builders by ``model.name``."""


def build_vocabulary(config: dict[str, Any], texts: Iterable[str]) -> Vocabulary:
    """The character vocabulary of ``config["vocabulary"]``: its ``tokens``, or every character
    of ``texts`` (the training transcripts) in sorted order, then the blank."""
    section = config["vocabulary"]
    tokens = section["tokens"]
    if tokens is None:
        tokens = sorted({c for text in texts for c in text})
        if not tokens:
            raise ConfigError(
                "vocabulary: the training transcripts are empty, so no vocabulary can be "
                "derived from them; set vocabulary.tokens"
            )
    elif isinstance(tokens, str):
        tokens = list(tokens)
    return Vocabulary(list(tokens), blank_token=section["blank_token"])


def _checked_kwargs(fn, kwargs: dict[str, Any], where: str, exclude: tuple[str, ...] = ()) -> dict:
    params = inspect.signature(fn).parameters
    allowed = [n for n in params if n not in exclude and n != "key"]
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {unknown} in section "
            f"{where!r}; allowed: {allowed}"
        )
    return dict(kwargs)


def augmented_front_end(
    front_end: Model, augment: dict[str, Any] | None, warp: dict[str, Any] | None = None
) -> Model:
    """``front_end`` followed, in training only, by :func:`fctc.cli.features.random_warp` with
    the keyword arguments ``warp`` and :func:`fctc.audio.spec_augment` with ``augment`` (None
    skips either).

    Params and state are the front end's own, so checkpoints keep thunder's layout; the key
    is split between the front end (dither) and the augmentation.
    """
    from .features import augment_features

    if augment is None and warp is None:
        return front_end

    def apply(params, state, audio, lengths, *, train=False, key=None):
        if not train:
            return front_end.apply(params, state, audio, lengths, train=False)
        if key is None:
            raise ValueError("front end: training with SpecAugment needs a key")
        k_front, k_aug = _random.split(key)
        (x, out_lengths), state = front_end.apply(params, state, audio, lengths, train=True, key=k_front)
        return augment_features(k_aug, x, out_lengths, warp, augment), state

    return Model(front_end.init, apply)


def build_front_end(model_config: dict[str, Any]) -> Model:
    """The filterbank front end of the ``model`` section (no augmentation)."""
    return filterbank(**_checked_kwargs(filterbank, model_config.get("front_end") or {}, "model.front_end"))


def build_model(
    model_config: dict[str, Any], vocabulary: Vocabulary, cached_features: bool = False
) -> Model:
    """The CTC model of the ``model`` section: front end (+ SpecAugment), encoder, conv decoder.

    With ``cached_features`` the model takes precomputed features instead of audio
    (:func:`fctc.cli.features.cached_front_end`); its params and state are the same trees.
    """
    name = model_config.get("name")
    if name not in ENCODERS:
        raise ConfigError(f"model.name must be one of {sorted(ENCODERS)}, got {name!r}")
    builder = ENCODERS[name]
    fe_kwargs = _checked_kwargs(filterbank, model_config.get("front_end") or {}, "model.front_end")
    enc_kwargs = _checked_kwargs(
        builder, model_config.get("encoder") or {}, "model.encoder", exclude=("feat_in",)
    )
    augment = model_config.get("spec_augment")
    if augment is not None:
        augment = _checked_kwargs(
            spec_augment, augment, "model.spec_augment", exclude=("features", "lengths")
        )
    from .features import random_warp

    warp = model_config.get("warp")
    if warp is not None:
        warp = _checked_kwargs(random_warp, warp, "model.warp", exclude=("features", "lengths"))
    front = filterbank(**fe_kwargs)
    feat_in = inspect.signature(filterbank).parameters["nfilt"].default
    feat_in = fe_kwargs.get("nfilt", feat_in)
    try:
        encoder = builder(feat_in=feat_in, **enc_kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.encoder: {e}") from None
    if name == "quartznet":
        final = enc_kwargs.get("final_filters", inspect.signature(builder).parameters["final_filters"].default)
        width = list(final)[-1]
    else:
        width = enc_kwargs.get("final_filters", inspect.signature(builder).parameters["final_filters"].default)
    decoder = conv1d_decoder(int(width), len(vocabulary))
    if cached_features:
        from .features import cached_front_end

        return ctc_model(cached_front_end(front, augment, warp), encoder, decoder)
    return ctc_model(augmented_front_end(front, augment, warp), encoder, decoder)


def _schedule(config: dict[str, Any], total_updates: int):
    lr = float(config["optimizer"]["learning_rate"])
    sched = config["schedule"]
    name = sched["name"]
    warm = float(sched["warmup_fraction"])
    if not 0.0 <= warm < 1.0:
        raise ConfigError(f"schedule.warmup_fraction must lie in [0, 1), got {warm}")
    if name == "constant":
        return optim.constant_schedule(lr)
    if name == "warmup_cosine":
        warmup = min(int(round(warm * total_updates)), total_updates - 1)
        return optim.warmup_cosine_decay_schedule(
            0.0, lr, warmup, total_updates, end_value=lr * float(sched["end_fraction"])
        )
    if name == "onecycle":
        return optim.torch_onecycle_schedule(lr, total_updates, pct_start=warm)
    raise ConfigError(
        f"schedule.name must be one of ['constant', 'onecycle', 'warmup_cosine'], got {name!r}"
    )


def _base_optimizer(opt: dict[str, Any], schedule) -> optim.FusedTransformation:
    """The ``optimizer`` section's optimiser, its learning rate injected into the state.

    Only the learning rate becomes a state tensor (``find_hyperparams`` reads it for the log);
    the other hyperparameters stay Python numbers, which keeps AdamW on torch's fused CPU
    kernel.
    """
    name = opt["name"]
    if name == "adamw":
        static = ("b1", "b2", "eps", "eps_root", "weight_decay")
        return optim.inject_hyperparams(optim.adamw, static_args=static)(
            schedule, b1=opt["b1"], b2=opt["b2"], eps=opt["eps"], weight_decay=opt["weight_decay"]
        )
    if name == "adam":
        static = ("b1", "b2", "eps", "eps_root")
        return optim.inject_hyperparams(optim.adam, static_args=static)(
            schedule, b1=opt["b1"], b2=opt["b2"], eps=opt["eps"]
        )
    if name == "sgd":
        return optim.inject_hyperparams(optim.sgd, static_args=("momentum",))(schedule, momentum=opt["momentum"])
    raise ConfigError(f"optimizer.name must be one of ['adam', 'adamw', 'sgd'], got {name!r}")


def build_optimizer(config: dict[str, Any], total_updates: int):
    """The optimiser of ``config``: clipping, the optimiser with its schedule, accumulation.

    ``training.accumulate_batches = k`` averages the gradients of ``k`` consecutive batches
    per update (:class:`fctc.optim.MultiSteps`): the schedule counts updates, and the learning
    rate of the last update is in the optimiser state (:func:`fctc.optim.find_hyperparams`).

    Args:
      config: the merged configuration.
      total_updates: the optimiser updates of the run (:func:`total_updates`).

    Returns:
      ``(tx, schedule)``: the transformation and its learning-rate schedule.

    Raises:
      ConfigError: no updates, an unknown optimiser or schedule, or a bad
        ``training.accumulate_batches``.
    """
    if total_updates < 1:
        raise ConfigError(f"the run has no optimiser updates (total {total_updates}); train longer")
    opt = config["optimizer"]
    schedule = _schedule(config, total_updates)
    base = _base_optimizer(opt, schedule)
    clip = opt["clip_grad_norm"]
    tx = optim.chain(optim.clip_by_global_norm(float(clip)), base) if clip is not None else base
    k = config["training"]["accumulate_batches"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"training.accumulate_batches must be a positive int, got {k!r}")
    if k > 1:
        tx = optim.MultiSteps(tx, k).gradient_transformation()
    return tx, schedule


def count_parameters(params: Any) -> int:
    """The number of scalars in a parameter tree."""
    from .. import tree

    return sum(x.numel() for x in tree.leaves(params) if isinstance(x, torch.Tensor))


def total_updates(total_steps: int, accumulate_batches: int) -> int:
    """Optimiser updates in a run of ``total_steps`` batches.

    Args:
      total_steps: the batches of the run.
      accumulate_batches: batches per update.

    Returns:
      The number of updates (at least 1; a last incomplete window counts).
    """
    return max(1, math.ceil(total_steps / accumulate_batches))


def output_frames(model_config: dict[str, Any]):
    """Audio samples -> output frames of the model of ``model_config`` (the ``max_labels`` of
    :class:`fctc.data.SpeechDataset`, which skips utterances too short for their transcript)."""
    from ..data import output_frames_fn

    hop = (model_config.get("front_end") or {}).get(
        "n_window_stride", inspect.signature(filterbank).parameters["n_window_stride"].default
    )
    if model_config.get("name") == "citrinet":
        stride = math.prod((model_config.get("encoder") or {}).get("strides", (1,)))
    else:
        stride = 2  # QuartzNet's stem
    return output_frames_fn(int(hop), int(stride))
