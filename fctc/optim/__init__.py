"""optax-compatible gradient transformations on torch tensors.

Names, arguments and numerics follow optax; states are NamedTuples of tensors; hot paths run
``torch._foreach_*`` over the flattened leaves. Where things live:

* ``base``: the transformation types (:class:`GradientTransformation`, and fctc's
  :class:`ScalingTransformation` / :class:`FusedTransformation` that :func:`chain` fuses),
  ``chain``, ``apply_updates``, ``update_and_apply``;
* ``transforms``, ``clipping``, ``aliases``, ``schedules``, ``loss_scale``: optax's building
  blocks, clipping, ready-made optimisers, schedules, and dynamic loss scaling;
* ``masking`` (masks and parameter groups), ``accumulation`` (``MultiSteps``,
  ``every_n_steps``), ``guards`` (``apply_if_finite``), ``hyperparams``
  (``inject_hyperparams``), ``plateau`` (``reduce_on_plateau``), ``speechain`` (its
  ``OptimScheduler`` knobs);
* ``_kernels`` (private): the CPU kernels (cache blocking, torch's fused Adam) behind Adam's
  ``cpu_kernel=`` argument.
"""

from .base import (
    GradientTransformation,
    GlobalScale,
    ScalingTransformation,
    FusedTransformation,
    EmptyState,
    chain,
    named_chain,
    identity,
    set_to_zero,
    stateless,
    apply_updates,
    update_and_apply,
    with_extra_args_support,
    safe_int32_increment,
)
from .transforms import (
    ScaleState,
    ScaleByScheduleState,
    ScaleByAdamState,
    ScaleByRmsState,
    ScaleByRmsWithCountState,
    ScaleByRStdDevState,
    ScaleByRStdDevWithCountState,
    TraceState,
    AddDecayedWeightsState,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
    scale_by_adam,
    scale_by_rms,
    scale_by_stddev,
    trace,
    add_decayed_weights,
)
from .clipping import (
    ClipState,
    ClipByGlobalNormState,
    AdaptiveGradClipState,
    clip,
    clip_by_global_norm,
    adaptive_grad_clip,
    unitwise_norm,
)
from .aliases import (
    sgd,
    adam,
    adamw,
    rmsprop,
)
from .schedules import (
    Schedule,
    constant_schedule,
    polynomial_schedule,
    linear_schedule,
    piecewise_constant_schedule,
    exponential_decay,
    cosine_decay_schedule,
    piecewise_interpolate_schedule,
    linear_onecycle_schedule,
    cosine_onecycle_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
    join_schedules,
    sgdr_schedule,
    noam_schedule,
    torch_onecycle_schedule,
)
from .loss_scale import (
    LossScaleState,
    DynamicLossScale,
    dynamic_loss_scale,
)
from .masking import (
    MaskedNode,
    MaskedState,
    masked,
    MultiTransformState,
    multi_transform,
    freeze,
    selective_transform,
)
from .accumulation import (
    MultiStepsState,
    MultiSteps,
    skip_not_finite,
    skip_large_updates,
    EveryNStepsState,
    every_n_steps,
)
from .guards import (
    ApplyIfFiniteState,
    apply_if_finite,
)
from .hyperparams import (
    InjectHyperparamsState,
    inject_hyperparams,
    find_hyperparams,
)
from .plateau import (
    ReduceLROnPlateauState,
    reduce_on_plateau,
)
from .speechain import (
    only_modules,
    speechain_optimizer,
)

__all__ = [
    "GradientTransformation",
    "GlobalScale",
    "ScalingTransformation",
    "FusedTransformation",
    "EmptyState",
    "chain",
    "named_chain",
    "identity",
    "set_to_zero",
    "stateless",
    "apply_updates",
    "update_and_apply",
    "with_extra_args_support",
    "safe_int32_increment",
    "ScaleState",
    "ScaleByScheduleState",
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "TraceState",
    "AddDecayedWeightsState",
    "scale",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_by_adam",
    "scale_by_rms",
    "scale_by_stddev",
    "trace",
    "add_decayed_weights",
    "ClipState",
    "ClipByGlobalNormState",
    "AdaptiveGradClipState",
    "clip",
    "clip_by_global_norm",
    "adaptive_grad_clip",
    "unitwise_norm",
    "sgd",
    "adam",
    "adamw",
    "rmsprop",
    "Schedule",
    "constant_schedule",
    "polynomial_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "exponential_decay",
    "cosine_decay_schedule",
    "piecewise_interpolate_schedule",
    "linear_onecycle_schedule",
    "cosine_onecycle_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "join_schedules",
    "sgdr_schedule",
    "noam_schedule",
    "torch_onecycle_schedule",
    "LossScaleState",
    "DynamicLossScale",
    "dynamic_loss_scale",
    "MaskedNode",
    "MaskedState",
    "masked",
    "MultiTransformState",
    "multi_transform",
    "freeze",
    "selective_transform",
    "MultiStepsState",
    "MultiSteps",
    "skip_not_finite",
    "skip_large_updates",
    "EveryNStepsState",
    "every_n_steps",
    "ApplyIfFiniteState",
    "apply_if_finite",
    "InjectHyperparamsState",
    "inject_hyperparams",
    "find_hyperparams",
    "ReduceLROnPlateauState",
    "reduce_on_plateau",
    "only_modules",
    "speechain_optimizer",
]
