"""Training: the train state, the stateless train step, evaluation and prediction.

``step = make_train_step(model, tx, blank=vocab.blank_idx)`` builds a pure function;
``state = step.init_state(key)`` its state; ``state, metrics = step(state, batch)`` trains.
The gradient transformations themselves (speechain's knobs included) are :mod:`fctc.optim`'s.
"""

from .evaluate import EvalOutput as EvalOutput
from .evaluate import make_eval_step as make_eval_step
from .evaluate import predict as predict

from .routing import Labels as Labels
from .routing import group_params as group_params
from .routing import merge_groups as merge_groups
from .routing import resolve_labels as resolve_labels

from .state import Batch as Batch
from .state import NonFiniteLossError as NonFiniteLossError
from .state import TrainState as TrainState
from .state import check_nonfinite as check_nonfinite
from .state import init_train_state as init_train_state

from .step import JIT_MODES as JIT_MODES
from .step import PRECISIONS as PRECISIONS
from .step import TrainStep as TrainStep
from .step import autocast as autocast
from .step import ctc_loss_fn as ctc_loss_fn
from .step import make_train_step as make_train_step
