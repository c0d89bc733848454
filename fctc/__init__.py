"""fctc: functional, JAX-style training of CTC speech recognition models on PyTorch.

The subpackages are the public API (``fctc.models``, ``fctc.optim``, ``fctc.train``,
``fctc.data``, ...; the README's layout says what each holds); ``fctc.FunctionalModule`` is
the ``nn.Module`` view of a model and its trees.
"""

from . import adapter as adapter
from . import audio as audio
from . import backend as backend
from . import checkpoint as checkpoint
from . import data as data
from . import decode as decode
from . import distributed as distributed
from . import inference as inference
from . import lexicon as lexicon
from . import lm as lm
from . import losses as losses
from . import metrics as metrics
from . import models as models
from . import nemo as nemo
from . import nn as nn
from . import optim as optim
from . import random as random
from . import text as text
from . import train as train
from . import tree as tree
from .adapter import FunctionalModule as FunctionalModule
from .inference import Recognizer as Recognizer
from .inference import load as load

from ._version import __version__  # noqa: E402,F401
