"""fctc: functional, JAX-style training of CTC speech recognition models on PyTorch."""

from . import (  # noqa: F401
    adapter,
    audio,
    backend,
    checkpoint,
    data,
    distributed,
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

from ._version import __version__  # noqa: E402,F401
