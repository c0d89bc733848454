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
from ..audio import (
    add_noise,
    augment_waveform,
    band_limit,
    filterbank,
    random_gain,
    random_warp,
    reverberate,
    spec_augment,
    speed_perturb,
)
from ..data import FeatureCache, output_frames_fn
from ..models import ARCHITECTURES, Architecture, augmented_front_end, cached_front_end
from ..nn.core import Model
from ..text import Vocabulary
from .config import ConfigError

__all__ = [
    "build_vocabulary",
    "build_front_end",
    "build_model",
    "build_feature_cache",
    "build_optimizer",
    "total_updates",
    "output_frames",
]


def build_vocabulary(config: dict[str, Any], texts: Iterable[str]) -> Vocabulary:
    """The character vocabulary of ``config["vocabulary"]``.

    Args:
        config: the whole configuration.
        texts: the training transcripts, used when ``vocabulary.tokens`` is null.

    Returns:
        Its ``tokens``, or every character of ``texts`` in sorted order, then the blank.

    Raises:
        ConfigError: the tokens would come from ``texts`` and they are empty.
    """
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


def _architecture(model_config: dict[str, Any]) -> Architecture:
    name = model_config.get("name")
    if name not in ARCHITECTURES:
        raise ConfigError(f"model.name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name]


def build_front_end(model_config: dict[str, Any]) -> Model:
    """The filterbank front end of the ``model`` section (no augmentation).

    Args:
        model_config: the ``model`` section.

    Returns:
        :func:`fctc.audio.filterbank` of ``model.front_end``.

    Raises:
        ConfigError: ``model.front_end`` has a key ``filterbank`` does not take.
    """
    return filterbank(**_checked_kwargs(filterbank, model_config.get("front_end") or {}, "model.front_end"))


def _augmentation(model_config: dict[str, Any]) -> tuple[dict | None, dict | None]:
    """``(spec_augment, warp)`` keyword arguments of the ``model`` section, keys checked."""
    augment = model_config.get("spec_augment")
    if augment is not None:
        augment = _checked_kwargs(
            spec_augment, augment, "model.spec_augment", exclude=("features", "lengths")
        )
    warp = model_config.get("warp")
    if warp is not None:
        warp = _checked_kwargs(random_warp, warp, "model.warp", exclude=("features", "lengths"))
    return augment, warp


_WAVEFORM_STEPS = {
    "speed": (speed_perturb, ()),
    "reverb": (reverberate, ("sample_rate",)),
    "noise": (add_noise, ()),
    "band_limit": (band_limit, ("sample_rate",)),
    "gain": (random_gain, ()),
}


def _waveform(model_config: dict[str, Any]) -> tuple[dict | None, int]:
    """``(augment_waveform keyword arguments or None, cached copies)`` of ``model.waveform``.

    Names are checked against the functions, and values by one run on a dummy batch, so a
    bad range stops the run when the model is built, naming its key.
    """
    section = model_config.get("waveform") or {}
    allowed = [*_WAVEFORM_STEPS, "cached_copies"]
    unknown = sorted(k for k in section if k not in allowed)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} in section 'model.waveform'; allowed: {allowed}")
    copies = section.get("cached_copies", 1)
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ConfigError(f"model.waveform.cached_copies must be a positive int, got {copies!r}")
    steps = {}
    for name, (fn, exclude) in _WAVEFORM_STEPS.items():
        value = section.get(name)
        where = f"model.waveform.{name}"
        if value is not None:
            steps[name] = _checked_kwargs(fn, value, where, exclude=("audio", "lengths", *exclude))
            try:
                augment_waveform(_random.key(0), torch.zeros(2, 1600), torch.tensor([1600, 800]),
                                 **{name: steps[name]})
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: {e}") from None
    if not steps:
        return None, copies
    fe = model_config.get("front_end") or {}
    rate = fe.get("sample_rate", inspect.signature(filterbank).parameters["sample_rate"].default)
    return {"sample_rate": int(rate), **steps}, copies


def build_model(
    model_config: dict[str, Any], vocabulary: Vocabulary, cached_features: bool = False
) -> Model:
    """The CTC model of the ``model`` section: front end (+ augmentation), encoder, conv decoder.

    Waveform augmentation (``model.waveform``) runs on the fly in training over audio; over
    cached features it is in the cache's augmented copies instead
    (:func:`build_feature_cache`).

    Args:
        model_config: the ``model`` section (``name``, ``encoder``, ``front_end``,
            ``waveform``, ``spec_augment``, ``warp``).
        vocabulary: the output classes.
        cached_features: build the model over precomputed features instead of audio
            (:func:`fctc.models.cached_front_end`); its params and state are the same trees.

    Returns:
        The model, built by its :class:`fctc.models.Architecture`.

    Raises:
        ConfigError: an unknown ``model.name``, an unknown key in a section, or encoder
            arguments the encoder refuses.
    """
    arch = _architecture(model_config)
    fe_kwargs = _checked_kwargs(filterbank, model_config.get("front_end") or {}, "model.front_end")
    enc_kwargs = _checked_kwargs(
        arch.encoder, model_config.get("encoder") or {}, "model.encoder", exclude=("feat_in",)
    )
    augment, warp = _augmentation(model_config)
    waveform, _ = _waveform(model_config)
    front = filterbank(**fe_kwargs)
    feat_in = fe_kwargs.get("nfilt", inspect.signature(filterbank).parameters["nfilt"].default)
    try:
        if cached_features:
            front_end = cached_front_end(front, augment, warp)
        else:
            front_end = augmented_front_end(front, augment, warp, waveform)
        return arch.ctc_model(front_end, len(vocabulary), {"feat_in": feat_in, **enc_kwargs})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.encoder: {e}") from None


def build_feature_cache(
    model_config: dict[str, Any], dataset: Any, front_state: Any, seed: int
) -> FeatureCache:
    """The training features of ``data.cache_features``, with the waveform-augmented copies of
    ``model.waveform.cached_copies``.

    Args:
        model_config: the ``model`` section.
        dataset: the training :class:`fctc.data.SpeechDataset`.
        front_state: the front end's state (window and mel buffers).
        seed: the run's seed (the augmented copies draw from it).

    Returns:
        A :class:`fctc.data.FeatureCache`: copy 0 clean, the others augmented once.

    Raises:
        ConfigError: a bad ``model.front_end`` or ``model.waveform``.
    """
    front = build_front_end(model_config)
    waveform, copies = _waveform(model_config)
    if waveform is None:
        copies = 1
    augmented = augmented_front_end(front, None, None, waveform) if copies > 1 else None
    key = _random.fold_in(_random.key(int(seed)), 0x5EED)
    return FeatureCache(dataset, front, front_state, copies=copies, augmented=augmented, key=key)


SCHEDULES = ("constant", "onecycle", "plateau", "warmup_cosine")


def _schedule(config: dict[str, Any], total: int):
    """The learning-rate schedule of the ``schedule`` section over ``total`` counts (updates,
    or epochs with ``interval: epoch``); ``plateau`` starts at the peak and is cut by
    :func:`_plateau`."""
    lr = float(config["optimizer"]["learning_rate"])
    sched = config["schedule"]
    name = sched["name"]
    warm = float(sched["warmup_fraction"])
    if not 0.0 <= warm < 1.0:
        raise ConfigError(f"schedule.warmup_fraction must lie in [0, 1), got {warm}")
    if name in ("constant", "plateau"):
        return optim.constant_schedule(lr)
    if name == "warmup_cosine":
        warmup = min(int(round(warm * total)), total - 1)
        return optim.warmup_cosine_decay_schedule(
            0.0, lr, warmup, total, end_value=lr * float(sched["end_fraction"])
        )
    if name == "onecycle":
        return optim.torch_onecycle_schedule(lr, total, pct_start=warm)
    raise ConfigError(f"schedule.name must be one of {list(SCHEDULES)}, got {name!r}")


def _plateau(sched: dict[str, Any]) -> optim.GradientTransformation:
    """``reduce_on_plateau`` of the ``schedule`` section (``patience``, ``factor``; their
    ranges are :mod:`fctc.cli.schema`'s)."""
    return optim.reduce_on_plateau(factor=float(sched["factor"]), patience=int(sched["patience"]))


def _base_optimizer(opt: dict[str, Any], schedule, schedule_input: str | None = None) -> optim.FusedTransformation:
    """The ``optimizer`` section's optimiser, its learning rate injected into the state.

    Only the learning rate becomes a state tensor (``find_hyperparams`` reads it for the log);
    the other hyperparameters stay Python numbers, which keeps AdamW on torch's fused CPU
    kernel. ``schedule_input="epoch"``: the schedule counts epochs.
    """
    name = opt["name"]
    inject = lambda f, static: optim.inject_hyperparams(f, static_args=static, schedule_input=schedule_input)  # noqa: E731
    if name == "adamw":
        static = ("b1", "b2", "eps", "eps_root", "weight_decay")
        return inject(optim.adamw, static)(
            schedule, b1=opt["b1"], b2=opt["b2"], eps=opt["eps"], weight_decay=opt["weight_decay"]
        )
    if name == "adam":
        static = ("b1", "b2", "eps", "eps_root")
        return inject(optim.adam, static)(schedule, b1=opt["b1"], b2=opt["b2"], eps=opt["eps"])
    if name == "sgd":
        return inject(optim.sgd, ("momentum",))(schedule, momentum=opt["momentum"])
    raise ConfigError(f"optimizer.name must be one of ['adam', 'adamw', 'sgd'], got {name!r}")


def build_optimizer(config: dict[str, Any], total_updates: int, total_epochs: int | None = None):
    """The optimiser of ``config``: clipping, the optimiser with its schedule, accumulation.

    ``training.accumulate_batches = k`` averages the gradients of ``k`` consecutive batches
    per update (:class:`fctc.optim.MultiSteps`): the schedule counts updates, and the learning
    rate of the last update is in the optimiser state (:func:`fctc.optim.find_hyperparams`).
    With ``schedule.interval: epoch`` the schedule counts epochs instead (the train step
    passes the epoch, :func:`fctc.train.observe`); ``schedule.name: plateau`` appends
    :func:`fctc.optim.reduce_on_plateau`, which the loop feeds the monitored metric.

    Args:
      config: the merged configuration.
      total_updates: the optimiser updates of the run (:func:`total_updates`).
      total_epochs: the epochs of the run (needed with ``schedule.interval: epoch``).

    Returns:
      ``(tx, schedule)``: the transformation and its learning-rate schedule (of the update
      count, or of the epoch).

    Raises:
      ConfigError: no updates, an unknown optimiser or schedule, or a bad
        ``training.accumulate_batches``.
    """
    if total_updates < 1:
        raise ConfigError(f"the run has no optimiser updates (total {total_updates}); train longer")
    opt, sched = config["optimizer"], config["schedule"]
    by_epoch = sched["interval"] == "epoch"
    if by_epoch and (total_epochs is None or total_epochs < 1):
        raise ConfigError(f"schedule.interval: epoch needs the run's epochs, got {total_epochs!r}")
    schedule = _schedule(config, total_epochs if by_epoch else total_updates)
    base = _base_optimizer(opt, schedule, "epoch" if by_epoch else None)
    if sched["name"] == "plateau":
        base = optim.chain(base, _plateau(sched))
    clip = opt["clip_grad_norm"]
    tx = optim.chain(optim.clip_by_global_norm(float(clip)), base) if clip is not None else base
    k = config["training"]["accumulate_batches"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"training.accumulate_batches must be a positive int, got {k!r}")
    if k > 1:
        tx = optim.MultiSteps(tx, k).gradient_transformation()
    return tx, schedule


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
    """Audio samples -> output frames of the model of ``model_config``.

    Args:
        model_config: the ``model`` section.

    Returns:
        The ``max_labels`` of :class:`fctc.data.SpeechDataset` (which skips utterances too
        short for their transcript): the front end's hop and the architecture's stride.

    Raises:
        ConfigError: an unknown ``model.name``.
    """
    hop = (model_config.get("front_end") or {}).get(
        "n_window_stride", inspect.signature(filterbank).parameters["n_window_stride"].default
    )
    stride = _architecture(model_config).output_stride(model_config.get("encoder") or {})
    return output_frames_fn(int(hop), int(stride))
