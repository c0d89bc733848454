"""Training: the train state, the stateless train step, evaluation and prediction.

``step = make_train_step(model, tx, blank=vocab.blank_idx)`` builds a pure function;
``state = step.init_state(key)`` its state; ``state, metrics = step(state, batch)`` trains;
``state = step.observe(state, val_loss, epoch=e)`` reports what metric- and epoch-driven
schedules read. Loss functions may return ESPnet3's ``(loss, stats, weight)``
(:class:`LossOutput`); :class:`LossRules` states the routing rules, :class:`WeightedMean` the
averaging of statistics. The gradient transformations themselves (speechain's knobs
included) are :mod:`fctc.optim`'s.
"""

from .evaluate import EvalOutput as EvalOutput
from .evaluate import make_eval_step as make_eval_step
from .evaluate import predict as predict

from .loss_output import LossOutput as LossOutput
from .loss_output import LossRules as LossRules

from .routing import Labels as Labels
from .routing import group_params as group_params
from .routing import merge_groups as merge_groups
from .routing import resolve_labels as resolve_labels

from .state import Batch as Batch
from .state import NonFiniteLossError as NonFiniteLossError
from .state import Observations as Observations
from .state import TrainState as TrainState
from .state import check_nonfinite as check_nonfinite
from .state import init_train_state as init_train_state
from .state import observe as observe

from .step import JIT_MODES as JIT_MODES
from .step import PRECISIONS as PRECISIONS
from .step import TrainStep as TrainStep
from .step import autocast as autocast
from .step import ctc_loss_fn as ctc_loss_fn
from .step import make_train_step as make_train_step

from .stats import WeightedMean as WeightedMean
