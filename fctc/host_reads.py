"""Find the reads of tensor values back to the host: what makes a GPU step wait for the device.

On CUDA every read of a value (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``), every
operation whose output size depends on values (``nonzero``, boolean indexing, ``unique``) and
every 0-d tensor that torch's argument parser turns into a Python number waits for the device
to finish its queue. fctc's eager train step makes none of its own (``tests/
test_train_no_sync.py``); a loss function, model or transformation of yours may.

:class:`HostReads` catches them on any device, the CPU included, and names the line of Python
that asked. Run under :func:`accelerator_path`, the CPU takes the paths fctc takes on an
accelerator, so a CPU-only machine can check a step before it runs on a GPU::

    import torch
    from fctc.host_reads import HostReads, accelerator_path

    with accelerator_path(), HostReads(fail=False) as reads:
        x = torch.arange(4.0)
        n = int(x.sum())  # a host read: on CUDA, a wait for the device
    print(reads.report())

On CUDA itself, ``torch.cuda.set_sync_debug_mode("warn")`` reports the synchronisations that
happen below Python as well (``benchmarks/host_sync.py`` does both).
"""

from __future__ import annotations

import collections
import contextlib
import os
import traceback
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostReadError", "HostReads", "accelerator_path", "SYNCING_OPS", "PYTHON_READS"]

#: ATen operations that wait for a CUDA device: a value copied to the host (``item`` and
#: torch's own conversions of a 0-d tensor to a number), or an output sized by the values.
SYNCING_OPS = frozenset({
    "_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select", "_unique2",
    "unique_dim", "unique_consecutive",
})

#: Tensor methods that hand a value to Python (``tolist`` and ``numpy`` bypass the dispatcher).
PYTHON_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")

_HERE = os.path.abspath(__file__)
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


class HostReadError(AssertionError):
    """A tensor's value was read back to the host inside :class:`HostReads` (``fail=True``)."""


def _caller() -> str:
    """The innermost frame outside torch, contextlib and this module, as ``path:line``."""
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if path == _HERE or path.startswith(_TORCH) or path.endswith(os.sep + "contextlib.py"):
            continue
        return f"{frame.filename}:{frame.lineno}"
    return "?"


class HostReads(TorchDispatchMode):
    """A context that refuses (``fail=True``) or counts every read of a tensor's value.

    It sees the Python reads (:data:`PYTHON_READS`, patched on ``torch.Tensor`` while active)
    and the ATen operations below them (:data:`SYNCING_OPS`). A read through a Python method is
    counted once, under that method's name.

    Args:
      fail: raise :class:`HostReadError` at the first read (a test), or count them by the
        line that asked (:attr:`sites`, :meth:`report`).

    Attributes:
      sites: ``{(what, "path:line"): count}`` of the reads seen (``fail=False``).
    """

    def __init__(self, fail: bool = True):
        super().__init__()
        self.fail = fail
        self.sites: collections.Counter = collections.Counter()
        self._saved: dict[str, Any] = {}
        self._inside_method = 0

    def _seen(self, what: str) -> None:
        if self.fail:
            raise HostReadError(f"{what} read a value back to the host (at {_caller()})")
        self.sites[(what, _caller())] += 1

    def _method(self, name: str, original: Any) -> Any:
        def read(tensor, *args, **kwargs):
            self._seen(f"Tensor.{name}")
            self._inside_method += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._inside_method -= 1

        return read

    def __enter__(self) -> HostReads:
        for name in PYTHON_READS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._method(name, self._saved[name]))
        try:
            return super().__enter__()
        except BaseException:
            self._restore()
            raise

    def __exit__(self, *exc: Any) -> Any:
        try:
            return super().__exit__(*exc)
        finally:
            self._restore()

    def _restore(self) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCING_OPS and not self._inside_method:
            self._seen(str(func))
        return func(*args, **(kwargs or {}))

    def report(self, per: int = 1) -> str:
        """The reads seen, most frequent first, one per line (``count  what  path:line``).

        Args:
          per: divide the counts by this (e.g. the number of steps run).

        Returns:
          The lines, or ``"no host reads"``.
        """
        if not self.sites:
            return "no host reads"
        return "\n".join(
            f"{n / per:g}  {what}  {where}" for (what, where), n in self.sites.most_common()
        )


@contextlib.contextmanager
def accelerator_path() -> Iterator[None]:
    """Within the block, fctc takes its accelerator paths on the CPU.

    fctc decides per call whether reading a value is free (:func:`fctc.backend.host_is_free`:
    eagerly on the CPU) and whether to check user-given values (:func:`fctc.backend.
    value_checks`, by default on the CPU only); here both answer as on an accelerator, and
    the optimisers take their foreach kernels instead of the CPU's fused one. The arithmetic
    is the same; only what would wait for a device changes, which :class:`HostReads` then
    sees.

    Yields:
      Nothing; the CPU's answers come back on exit.
    """
    from . import backend, random
    from .optim import _kernels

    saved = [(backend, "host_is_free"), (random, "host_is_free"), (_kernels, "_IS_CPU")]
    originals = [getattr(m, a) for m, a in saved]
    backend.host_is_free = random.host_is_free = lambda tensors: False
    _kernels._IS_CPU = lambda x: False
    try:
        with backend.value_checks("never"):
            yield
    finally:
        for (m, a), original in zip(saved, originals):
            setattr(m, a, original)
