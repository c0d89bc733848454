"""fctc: functional, JAX-style training of CTC speech recognition models on PyTorch."""

from . import (  # noqa: F401
    adapter,
    audio,
    backend,
    checkpoint,
    data,
    decode,
    distributed,
    inference,
    lexicon,
    lm,
    losses,
    metrics,
    models,
    nemo,
    nn,
    optim,
    random,
    text,
    train,
    tree,
)
from .adapter import FunctionalModule  # noqa: F401
from .inference import Recognizer, load  # noqa: F401

__version__ = "0.1.0"
