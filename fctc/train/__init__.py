"""Training: the train state, the stateless train step, evaluation and prediction.

``step = make_train_step(model, tx, blank=vocab.blank_idx)`` builds a pure function;
``state = step.init_state(key)`` its state; ``state, metrics = step(state, batch)`` trains.
"""

from .evaluate import *  # noqa: F401,F403
from .knobs import *  # noqa: F401,F403

from .routing import *  # noqa: F401,F403
from .state import *  # noqa: F401,F403
from .step import *  # noqa: F401,F403
