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

from .base import GradientTransformation as GradientTransformation
from .base import GlobalScale as GlobalScale
from .base import ScalingTransformation as ScalingTransformation
from .base import FusedTransformation as FusedTransformation
from .base import EmptyState as EmptyState
from .base import chain as chain
from .base import named_chain as named_chain
from .base import identity as identity
from .base import set_to_zero as set_to_zero
from .base import stateless as stateless
from .base import apply_updates as apply_updates
from .base import update_and_apply as update_and_apply
from .base import with_extra_args_support as with_extra_args_support
from .base import safe_int32_increment as safe_int32_increment

from .transforms import ScaleState as ScaleState
from .transforms import ScaleByScheduleState as ScaleByScheduleState
from .transforms import ScaleByAdamState as ScaleByAdamState
from .transforms import ScaleByRmsState as ScaleByRmsState
from .transforms import ScaleByRmsWithCountState as ScaleByRmsWithCountState
from .transforms import ScaleByRStdDevState as ScaleByRStdDevState
from .transforms import ScaleByRStdDevWithCountState as ScaleByRStdDevWithCountState
from .transforms import TraceState as TraceState
from .transforms import AddDecayedWeightsState as AddDecayedWeightsState
from .transforms import scale as scale
from .transforms import scale_by_learning_rate as scale_by_learning_rate
from .transforms import scale_by_schedule as scale_by_schedule
from .transforms import scale_by_adam as scale_by_adam
from .transforms import scale_by_rms as scale_by_rms
from .transforms import scale_by_stddev as scale_by_stddev
from .transforms import trace as trace
from .transforms import add_decayed_weights as add_decayed_weights

from .clipping import ClipState as ClipState
from .clipping import ClipByGlobalNormState as ClipByGlobalNormState
from .clipping import AdaptiveGradClipState as AdaptiveGradClipState
from .clipping import clip as clip
from .clipping import clip_by_global_norm as clip_by_global_norm
from .clipping import adaptive_grad_clip as adaptive_grad_clip
from .clipping import unitwise_norm as unitwise_norm

from .aliases import sgd as sgd
from .aliases import adam as adam
from .aliases import adamw as adamw
from .aliases import rmsprop as rmsprop

from .schedules import Schedule as Schedule
from .schedules import constant_schedule as constant_schedule
from .schedules import polynomial_schedule as polynomial_schedule
from .schedules import linear_schedule as linear_schedule
from .schedules import piecewise_constant_schedule as piecewise_constant_schedule
from .schedules import exponential_decay as exponential_decay
from .schedules import cosine_decay_schedule as cosine_decay_schedule
from .schedules import piecewise_interpolate_schedule as piecewise_interpolate_schedule
from .schedules import linear_onecycle_schedule as linear_onecycle_schedule
from .schedules import cosine_onecycle_schedule as cosine_onecycle_schedule
from .schedules import warmup_constant_schedule as warmup_constant_schedule
from .schedules import warmup_cosine_decay_schedule as warmup_cosine_decay_schedule
from .schedules import warmup_exponential_decay_schedule as warmup_exponential_decay_schedule
from .schedules import join_schedules as join_schedules
from .schedules import sgdr_schedule as sgdr_schedule
from .schedules import noam_schedule as noam_schedule
from .schedules import torch_onecycle_schedule as torch_onecycle_schedule

from .loss_scale import LossScaleState as LossScaleState
from .loss_scale import DynamicLossScale as DynamicLossScale
from .loss_scale import dynamic_loss_scale as dynamic_loss_scale

from .masking import MaskedNode as MaskedNode
from .masking import MaskedState as MaskedState
from .masking import masked as masked
from .masking import MultiTransformState as MultiTransformState
from .masking import multi_transform as multi_transform
from .masking import freeze as freeze
from .masking import selective_transform as selective_transform

from .accumulation import MultiStepsState as MultiStepsState
from .accumulation import MultiSteps as MultiSteps
from .accumulation import skip_not_finite as skip_not_finite
from .accumulation import skip_large_updates as skip_large_updates
from .accumulation import EveryNStepsState as EveryNStepsState
from .accumulation import every_n_steps as every_n_steps

from .guards import ApplyIfFiniteState as ApplyIfFiniteState
from .guards import apply_if_finite as apply_if_finite

from .hyperparams import InjectHyperparamsState as InjectHyperparamsState
from .hyperparams import inject_hyperparams as inject_hyperparams
from .hyperparams import find_hyperparams as find_hyperparams

from .plateau import ReduceLROnPlateauState as ReduceLROnPlateauState
from .plateau import reduce_on_plateau as reduce_on_plateau
from .plateau import plateau_scale as plateau_scale

from .speechain import only_modules as only_modules
from .speechain import speechain_optimizer as speechain_optimizer
