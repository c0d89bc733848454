"""Training: the train state, the stateless train step, evaluation and prediction.

``step = make_train_step(model, tx, blank=vocab.blank_idx)`` builds a pure function;
``state = step.init_state(key)`` its state; ``state, metrics = step(state, batch)`` trains.
The gradient transformations themselves (speechain's knobs included) are :mod:`fctc.optim`'s.
"""

from .evaluate import EvalOutput, make_eval_step, predict
from .routing import Labels, group_params, merge_groups, resolve_labels
from .state import Batch, NonFiniteLossError, TrainState, check_nonfinite, init_train_state
from .step import PRECISIONS, TrainStep, autocast, ctc_loss_fn, make_train_step

__all__ = [
    "EvalOutput",
    "make_eval_step",
    "predict",
    "Labels",
    "resolve_labels",
    "group_params",
    "merge_groups",
    "TrainState",
    "Batch",
    "init_train_state",
    "NonFiniteLossError",
    "check_nonfinite",
    "ctc_loss_fn",
    "make_train_step",
    "TrainStep",
    "PRECISIONS",
    "autocast",
]
