"""The torch backend layer: the one module that touches ``torch.func`` and ``torch.compile``.

Everything else in fctc differentiates, vectorises and compiles through these functions, so the
choice of machinery lives in one place:

* :func:`value_and_grad` / :func:`grad` follow JAX's conventions (``argnums``, ``has_aux``).
  Eagerly they run one ``torch.autograd.grad`` over detached copies of the differentiated
  leaves, which costs exactly what ``loss.backward()`` costs; under ``torch.compile`` or inside
  another functorch transform they use ``torch.func.grad_and_value`` so that the whole step
  traces into one graph. Both paths use the same derivative formulas.
* :class:`GradSum` sums the gradients of several functions of the same parameters (the train
  step's micro-batches): eagerly in ``.grad`` of private copies, as ``loss.backward()`` does,
  under tracing with ``torch.func.vjp``.
* :func:`vmap` is ``torch.func.vmap``.
* :func:`jit` compiles a pure function with ``torch.compile``; ``jit(fn, enabled=False)`` runs
  the very same function eagerly, so every compiled path has an eager twin for tests.
  :func:`jit_trees` compiles a function of pytrees over their flat tensor leaves, so that the
  compiled code guards tensors only (see :mod:`fctc._tree_jit`).
* :func:`all_finite` and :func:`select` are :mod:`fctc.tree`'s branch-free checks with the one
  host shortcut fctc takes: eagerly on the CPU, where reading a flag back costs no device
  synchronisation (:func:`host_is_free`), the choice is made in Python. On accelerators and
  under tracing they stay tensor operations.
* :func:`checks_values` says whether an eager check of user-given values (lengths in range,
  labels not the blank) may read them back now: on the CPU by default, never under tracing,
  and on accelerators only inside :func:`value_checks` ``("always")``, since each read waits
  for the device there.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.func

from . import _tree_jit
from . import tree as _tree
from ._tree_jit import jit_trees as jit_trees

__all__ = [
    "value_and_grad",
    "grad",
    "vjp",
    "differentiable",
    "GradSum",
    "vmap",
    "jit",
    "jit_trees",
    "is_tracing",
    "host_is_free",
    "as_tensor",
    "checks_values",
    "value_checks",
    "VALUE_CHECKS",
    "all_finite",
    "select",
]


def is_tracing() -> bool:
    """Whether torch.compile traces or a functorch transform (grad, vmap) is active.

    Returns:
      True inside ``torch.compile`` tracing or a ``torch.func`` transform: then Python must not
      branch on tensor values, and buffers must not be written in place.
    """
    return _tree._is_tracing()


def host_is_free(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether reading values of ``tensors`` back to Python costs no device synchronisation.

    Args:
      tensors: the tensors a decision would read.

    Returns:
      True outside tracing when every tensor lives on the CPU.
    """
    return not is_tracing() and all(map(_IS_CPU, tensors))


_IS_CPU = operator.attrgetter("is_cpu")


def as_tensor(value: Any, dtype: torch.dtype | None = None, device: Any = None) -> torch.Tensor:
    """``torch.as_tensor(value, dtype, device)``, a Python number filled in on the device.

    ``torch.as_tensor`` and ``torch.tensor`` build a tensor from Python data on the CPU and
    copy it over, and on CUDA that copy waits for the device; a Python ``bool``, ``int`` or
    ``float`` here becomes ``torch.full`` of it (a fill kernel, nothing copied), with the same
    value and the same inferred dtype. Tensors and other data go to ``torch.as_tensor``.

    Args:
      value: a Python number, a tensor, or data ``torch.as_tensor`` takes.
      dtype: the dtype (None: inferred, as ``torch.as_tensor`` does).
      device: the device (None: the default one, or a tensor's own).

    Returns:
      The tensor (``value`` itself when it is a tensor that already fits).
    """
    if isinstance(value, (bool, int, float)):
        return torch.full((), value, dtype=dtype, device=device)
    return torch.as_tensor(value, dtype=dtype, device=device)


#: The modes of :func:`value_checks`.
VALUE_CHECKS = ("auto", "always", "never")
_value_checks = ["auto"]


def checks_values(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether an eager check of the values of ``tensors`` runs now.

    Args:
      tensors: the tensors the check would read.

    Returns:
      False under tracing; otherwise, in the :func:`value_checks` mode ``"auto"`` (the
      default) :func:`host_is_free`, in ``"always"`` True, in ``"never"`` False.
    """
    if is_tracing():
        return False
    mode = _value_checks[0]
    if mode == "auto":
        for x in tensors:  # (a loop, not all(...): this runs for every layer)
            if not x.is_cpu:
                return False
        return True
    return mode == "always"


@contextlib.contextmanager
def value_checks(mode: str) -> Iterator[None]:
    """Choose, for the block, where fctc checks user-given values eagerly (a debug switch).

    Lengths (:func:`fctc.nn.check_lengths`) and CTC targets (:func:`fctc.losses.ctc_loss`)
    are checked once per batch. On the CPU that is free; on an accelerator each read waits
    for the device, so by default (``"auto"``) they are checked on the CPU only and an
    accelerator step never synchronises for them. ``"always"`` checks everywhere (debugging
    a GPU run), ``"never"`` nowhere. Compiled code never checks values.

    Args:
      mode: one of :data:`VALUE_CHECKS`.

    Yields:
      Nothing; the previous mode comes back on exit.

    Raises:
      ValueError: an unknown mode.
    """
    if mode not in VALUE_CHECKS:
        raise ValueError(f"value_checks: mode must be one of {VALUE_CHECKS}, got {mode!r}")
    previous = _value_checks[0]
    _value_checks[0] = mode
    try:
        yield
    finally:
        _value_checks[0] = previous


def all_finite(tree: Any, norm: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`fctc.tree.all_finite`, with norms instead of a mask per leaf on the CPU.

    Eagerly on the CPU finite norms prove every element finite (a NaN or Inf anywhere makes
    any p-norm NaN or Inf): the caller's global norm, or else the leaves' 2-norms from one
    ``torch._foreach_norm`` call, read on the host at once. Only a non-finite norm (a bad
    element, or a sum of squares that overflowed) falls back to the element-wise check, so the
    answer is always the element-wise one. Elsewhere this is :func:`fctc.tree.all_finite`:
    tensor operations only.

    Args:
      tree: a pytree of tensors.
      norm: a global norm of ``tree`` (any p) that the caller already has, to spare the
        reduction; None computes the leaves' norms when the shortcut applies.

    Returns:
      A 0-d bool tensor.
    """
    if norm is not None and host_is_free([norm]) and bool(torch.isfinite(norm)):
        return torch.ones((), dtype=torch.bool)  # the caller's norm proves it: no flattening
    xs = [x for x in _tree.leaves(tree) if x.is_floating_point()]
    if not xs:
        return torch.ones((), dtype=torch.bool)
    if host_is_free(xs):
        # Per-leaf norms are enough (any non-finite element makes its leaf's norm non-finite):
        # one fused call, without global_norm's grouping and final reduction.
        if norm is None:
            finite = torch.stack(torch._foreach_norm(xs)).isfinite().all()
        else:
            finite = torch.isfinite(norm)
        if bool(finite):
            return torch.ones((), dtype=torch.bool)
    return _tree.all_finite(xs)


def select(pred: torch.Tensor, on_true: Any, on_false: Any, alike: bool = False) -> Any:
    """:func:`fctc.tree.select`, decided on the host when that costs nothing.

    Eagerly with a CPU ``pred`` the choice is made once in Python and the chosen leaves come
    back as they are (no copy of a whole parameter or optimiser-state tree); on accelerators
    and under tracing it is a ``torch.where`` per leaf. The results are the same.

    Args:
      pred: a 0-d bool tensor.
      on_true: the tree chosen where ``pred`` holds.
      on_false: a tree of the same structure, chosen otherwise.
      alike: the caller knows ``on_true`` to have ``on_false``'s structure, dtypes and
        devices (new parameters from :func:`fctc.optim.update_and_apply`): the host's choice
        then returns it unchecked.

    Returns:
      A tree with ``on_false``'s dtypes, devices and non-tensor leaves.
    """
    if not host_is_free([pred]):
        return _tree.select(pred, on_true, on_false)
    if not bool(pred):
        return on_false
    if alike:
        return on_true
    # Usually on_false is the state passed in (whose structure fctc.tree remembers) and on_true
    # has its structure, leaf for leaf: then nothing needs casting and on_true is the answer.
    b, spec_false = _tree.flatten(on_false)
    try:
        if _same_kind(spec_false.flatten_up_to(on_true), b):
            return on_true
    except (ValueError, TypeError):
        pass  # another structure: the general path below says what is wrong
    a, spec = _tree.flatten(on_true)
    b = spec.flatten_up_to(on_false)
    out = []
    for x, y in zip(a, b):
        out.append(torch.as_tensor(x, device=y.device).to(y.dtype) if isinstance(y, torch.Tensor) else y)
    return _tree.unflatten(spec, out)


_DTYPE = operator.attrgetter("dtype")
_DEVICE = operator.attrgetter("device")


def _same_kind(a: list, b: list) -> bool:
    """Whether two leaf lists are plain tensors with the same dtypes and devices, leaf by leaf
    (C-level loops: the eager step asks this of its whole state every step)."""
    types = set(map(type, a))
    types.update(map(type, b))
    if types != {torch.Tensor}:
        return not a and not b
    if list(map(_DTYPE, a)) != list(map(_DTYPE, b)):
        return False
    if all(map(_IS_CPU, a)) and all(map(_IS_CPU, b)):  # the usual answer, without device objects
        return True
    return list(map(_DEVICE, a)) == list(map(_DEVICE, b))


def _check_argnums(argnums: int | Sequence[int], nargs: int) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums:
        raise ValueError("value_and_grad: argnums must name at least one argument")
    for a in nums:
        if not isinstance(a, int) or not -nargs <= a < nargs:
            raise ValueError(
                f"value_and_grad: argnums={argnums!r} does not fit a call with {nargs} "
                "positional arguments"
            )
    out = tuple(a % nargs for a in nums)
    if len(set(out)) != len(out):
        raise ValueError(f"value_and_grad: argnums={argnums!r} names an argument twice")
    return out


def _split_aux(out: Any) -> tuple[Any, Any]:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(
            "value_and_grad: with has_aux=True the function must return a pair (value, aux), "
            f"got {type(out).__name__}"
        )
    return out[0], out[1]


def _check_scalar(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(
            "value_and_grad: the function must return a floating scalar tensor "
            f"(or (scalar, aux) with has_aux=True), got {shape}"
        )
    return value


def value_and_grad(
    fn: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """Return a function computing ``fn``'s value and its gradient, JAX style.

    ``fn`` must return a floating scalar tensor, or ``(scalar, aux)`` when ``has_aux``. The
    returned function gives ``(value, grads)`` or ``((value, aux), grads)``; ``grads`` mirrors
    the pytree of the argument named by ``argnums`` (a tuple of them when ``argnums`` is a
    tuple). Leaves the value does not depend on get zero gradients. Inputs are never mutated.

    Args:
      fn: the function to differentiate.
      argnums: the positional argument(s) to differentiate with respect to.
      has_aux: ``fn`` returns ``(value, aux)``.

    Returns:
      The function computing ``(value, grads)`` (``((value, aux), grads)`` with ``has_aux``);
      it raises ``TypeError``/``ValueError`` for a non-scalar value or bad ``argnums``.
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        nums = _check_argnums(argnums, len(args))
        if is_tracing():
            return _func_path(fn, nums, argnums, has_aux, args, kwargs)
        return _autograd_path(fn, nums, argnums, has_aux, args, kwargs)

    return wrapped


def _func_path(fn, nums, argnums, has_aux, args, kwargs):
    def inner(*a):
        out = fn(*a, **kwargs)
        if has_aux:
            value, aux = _split_aux(out)
            return _check_scalar(value), aux
        return _check_scalar(out), out

    transform = torch.func.grad_and_value(inner, argnums=nums, has_aux=True)
    grads, (value, aux) = _tree_jit.without_opaque_kernels(transform, *args)
    if not has_aux:
        value = aux
    grads = grads[0] if isinstance(argnums, int) else grads
    return ((value, aux) if has_aux else value), grads


def _floating_leaves(tree: Any, what: str) -> tuple[list[torch.Tensor], Any]:
    """``tree``'s leaves and treedef; a TypeError naming ``what`` for a non-floating leaf."""
    xs, spec = _tree.flatten(tree)
    for x in xs:
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            raise TypeError(
                f"{what} must be a pytree of floating tensors; found a leaf of type "
                f"{getattr(x, 'dtype', type(x).__name__)}"
            )
    return xs, spec


def _leaf_inputs(tree: Any, what: str) -> tuple[Any, list[torch.Tensor], Any]:
    """The tree to call the function with, its leaves to differentiate with respect to, and
    ``tree``'s treedef (eager paths): detached copies that require grad, or ``tree`` and its
    leaves themselves when every leaf already is a distinct autograd leaf that requires grad
    (what :func:`differentiable` makes; then nothing is rebuilt)."""
    xs, spec = _floating_leaves(tree, what)
    if all(x.requires_grad and x.is_leaf for x in xs) and len(set(map(id, xs))) == len(xs):
        return tree, xs, spec
    xs = [x.detach().requires_grad_(True) for x in xs]
    return _tree.unflatten(spec, xs), xs, spec


def differentiable(tree: Any) -> Any:
    """``tree`` with every leaf replaced by a detached copy that requires grad (eagerly).

    :func:`vjp`, :func:`value_and_grad` and :func:`grad` make such copies of their primals at
    every call; given a tree made here they use its leaves as they are. A loop that
    differentiates several functions of the same parameters makes the copies once (to sum
    their gradients, as micro-batches do, :class:`GradSum` is cheaper still). Under tracing
    (``torch.func`` transforms, ``torch.compile``) the tree comes back unchanged.

    Args:
      tree: a pytree of floating tensors.

    Returns:
      The tree of copies (their values are ``tree``'s: no data is copied); ``tree`` itself
      when it already is such a tree (every leaf a distinct autograd leaf requiring grad).

    Raises:
      TypeError: a leaf is not a floating tensor.
    """
    if is_tracing():
        return tree
    return _leaf_inputs(tree, "differentiable: tree")[0]


def _regroup(flats: list, gs: Sequence[torch.Tensor | None]) -> list[Any]:
    """Gradients of the concatenated leaves of ``flats`` back into one tree per input (unused
    leaves get zeros)."""
    grads, i = [], 0
    for xs, spec in flats:
        part = [torch.zeros_like(x) if g is None else g for x, g in zip(xs, gs[i : i + len(xs)])]
        grads.append(_tree.unflatten(spec, part))
        i += len(xs)
    return grads


def _detach_aux(aux: Any) -> Any:
    # A tensor that needs no gradient is in no graph: it is its own detached value. Usually no
    # leaf needs one (running statistics, logged values): then the tree comes back as it is.
    xs, spec = _tree.flatten(aux)
    if not any(isinstance(a, torch.Tensor) and a.requires_grad for a in xs):
        return aux
    return spec.unflatten([a.detach() if isinstance(a, torch.Tensor) and a.requires_grad else a for a in xs])


def _autograd_path(fn, nums, argnums, has_aux, args, kwargs):
    args = list(args)
    flats = []
    for n in nums:
        args[n], xs, spec = _leaf_inputs(args[n], f"value_and_grad: argument {n}")
        flats.append((xs, spec))
    with torch.enable_grad():
        out = fn(*args, **kwargs)
        value, aux = (_split_aux(out) if has_aux else (out, None))
        _check_scalar(value)
        all_leaves = [x for xs, _ in flats for x in xs]
        if all_leaves and value.requires_grad:
            gs = torch.autograd.grad(value, all_leaves, allow_unused=True)
        else:  # the value does not depend on any differentiated leaf
            gs = [None] * len(all_leaves)
    grads = _regroup(flats, gs)
    value = value.detach()
    grads = grads[0] if isinstance(argnums, int) else tuple(grads)
    return ((value, _detach_aux(aux)) if has_aux else value), grads


def grad(
    fn: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """Return a function computing the gradient of ``fn`` (``(grads, aux)`` with ``has_aux``).

    Args:
      fn: the function to differentiate.
      argnums: the positional argument(s) to differentiate with respect to.
      has_aux: ``fn`` returns ``(value, aux)``.

    Returns:
      The function computing the gradients.
    """
    vg = value_and_grad(fn, argnums=argnums, has_aux=has_aux)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        out, grads = vg(*args, **kwargs)
        return (grads, out[1]) if has_aux else grads

    return wrapped


def vjp(fn: Callable[..., Any], *primals: Any, has_aux: bool = False):
    """Evaluate ``fn(*primals)`` and return ``(out, vjp_fn)`` (``(out, vjp_fn, aux)`` with
    ``has_aux``), JAX style.

    ``vjp_fn(cotangents, *, retain_graph=True)`` takes a pytree shaped like ``out`` (tensors,
    or ``None`` for outputs that get no cotangent) and returns a tuple with one gradient pytree
    per primal. It may be called several times, which is how one forward pass serves several
    losses (multi-loss routing). Leaves of ``out`` that no cotangent reaches cost nothing in the
    backward pass. Eagerly, ``retain_graph=False`` marks the last call: the backward pass frees
    the graph's saved tensors as it goes (as ``loss.backward()`` does), and a later call raises
    autograd's ``RuntimeError``; under tracing the flag changes nothing.
    Eagerly the primals' leaves are detached copies; a tree from :func:`differentiable` is
    used as it is.

    Args:
      fn: the function.
      *primals: its arguments (pytrees of floating tensors).
      has_aux: ``fn`` returns ``(out, aux)``.

    Returns:
      ``(out, vjp_fn)`` or ``(out, vjp_fn, aux)``.
    """
    if is_tracing():
        res = _tree_jit.without_opaque_kernels(torch.func.vjp, fn, *primals, has_aux=has_aux)
        out, inner = res[0], res[1]

        def vjp_fn_traced(cotangents, *, retain_graph=True):
            ct = _tree.map(
                lambda o, c: torch.zeros_like(o) if c is None else c,
                out,
                cotangents,
                is_leaf=lambda x: x is None,
            )
            return inner(ct)

        return (out, vjp_fn_traced, res[2]) if has_aux else (out, vjp_fn_traced)

    inputs = [_leaf_inputs(primal, f"vjp: primal {n}") for n, primal in enumerate(primals)]
    args = [tree for tree, _, _ in inputs]
    flats = [(xs, spec) for _, xs, spec in inputs]
    with torch.enable_grad():
        res = fn(*args)
    out, aux = (res if has_aux else (res, None))
    out_leaves, out_spec = _tree.flatten(out)
    all_inputs = [x for xs, _ in flats for x in xs]

    def vjp_fn(cotangents, *, retain_graph=True):
        cts = out_spec.flatten_up_to(cotangents) if cotangents is not None else []
        pairs = [(o, c) for o, c in zip(out_leaves, cts) if c is not None and o.requires_grad]
        if pairs and all_inputs:
            # The graph may be kept for further calls; a compiled forward (jit_trees) then needs
            # a backward without AOTAutograd's donated buffers, decided when it is compiled here.
            with _tree_jit.no_donated_buffers():
                gs = torch.autograd.grad(
                    [o for o, _ in pairs],
                    all_inputs,
                    grad_outputs=[c for _, c in pairs],
                    retain_graph=retain_graph,
                    allow_unused=True,
                )
        else:
            gs = [None] * len(all_inputs)
        return tuple(_regroup(flats, gs))

    detached = _tree.map(lambda o: o.detach(), out)
    return (detached, vjp_fn, _detach_aux(aux)) if has_aux else (detached, vjp_fn)


class GradSum:
    """Gradients of several functions of the same parameters, summed: the micro-batches of
    one step, as an imperative loop sums them with one ``loss.backward()`` per micro-batch.

    Each :meth:`add` evaluates ``fn(params) -> (out, aux)`` at :attr:`params` (``out`` a dict
    of named tensors of one shape, e.g. scalar losses) and adds the gradients of its outputs,
    each weighted by the given cotangent; :meth:`total` is the sum. With ``labels`` (a tree
    shaped like the parameters whose leaves name outputs: multi-loss routing) a leaf gets only
    the gradient of the output its label names; without, every leaf gets every output's.

    Eagerly, :attr:`params` holds detached copies of the parameters' leaves (no data is
    copied, the trees given are never written) and autograd's own accumulation sums into
    their ``.grad``: the first gradient is kept, later ones are added in place, in the order of
    the calls, so the sums are bit for bit those of the imperative loop. Under tracing
    (``torch.compile``, ``torch.func`` transforms) it runs :func:`torch.func.vjp` and adds the
    gradients leaf by leaf, in the same order.

    Args:
      params: a pytree of floating tensors.
      labels: None, or a tree shaped like ``params`` with one output name per leaf.

    Raises:
      TypeError: a leaf of ``params`` is not a floating tensor.
    """

    def __init__(self, params: Any, labels: Any = None):
        self._tracing = is_tracing()
        xs, self._spec = _floating_leaves(params, "GradSum: params")
        self._labels = None if labels is None else self._spec.flatten_up_to(labels)
        if self._tracing:
            self._xs, self._sums = xs, [None] * len(xs)
            self.params = params
        else:
            self._xs = [x.detach().requires_grad_(True) for x in xs]
            self.params = _tree.unflatten(self._spec, self._xs)
        self._inputs: dict[Any, list[torch.Tensor]] = {}

    def _reached(self, name: Any) -> list[int]:
        """The positions of the leaves that output ``name``'s gradient reaches."""
        if self._labels is None:
            return list(range(len(self._xs)))
        return [i for i, lab in enumerate(self._labels) if lab == name]

    def add(
        self, fn: Callable[[Any], tuple[dict, Any]], cotangent: float | torch.Tensor
    ) -> tuple[dict, Any]:
        """Evaluate ``fn`` at :attr:`params` and add its outputs' gradients to the sums.

        Args:
          fn: ``fn(params) -> (out, aux)``, ``out`` a dict of tensors.
          cotangent: the weight of every output's gradient in this call (a micro-batch's
            share of the batch, say): a number, or a tensor shaped like the outputs.

        Returns:
          ``(out, aux)``, their tensors detached.
        """

        def ct(v):
            if isinstance(cotangent, torch.Tensor):
                return cotangent
            return torch.full_like(v, cotangent)

        if self._tracing:
            out, vjp_fn, aux = _tree_jit.without_opaque_kernels(
                torch.func.vjp, fn, self.params, has_aux=True
            )
            for name in out:
                cts = {n: (ct(v) if n == name else torch.zeros_like(v)) for n, v in out.items()}
                (grads,) = vjp_fn(cts)
                gs = self._spec.flatten_up_to(grads)
                for i in self._reached(name):
                    self._sums[i] = gs[i] if self._sums[i] is None else self._sums[i] + gs[i]
            return out, aux
        with torch.enable_grad():
            out, aux = fn(self.params)
            todo = [n for n, v in out.items() if v.requires_grad]
            for j, name in enumerate(todo):
                inputs = self._inputs.get(name)
                if inputs is None:
                    inputs = self._inputs[name] = [self._xs[i] for i in self._reached(name)]
                if not inputs:
                    continue
                retain = j < len(todo) - 1  # the last pass frees the graph as it runs
                # A kept graph needs, from a compiled forward (jit_trees), a backward without
                # AOTAutograd's donated buffers, decided when it is compiled here.
                with _tree_jit.no_donated_buffers() if retain else contextlib.nullcontext():
                    torch.autograd.backward(
                        [out[name]], [ct(out[name])], retain_graph=retain, inputs=inputs
                    )
        return {n: v.detach() for n, v in out.items()}, _detach_aux(aux)

    def total(self) -> Any:
        """The sums so far: a tree shaped like the parameters (zeros where no gradient came).

        Returns:
          The gradient tree.
        """
        if self._tracing:
            gs = [torch.zeros_like(x) if g is None else g for x, g in zip(self._xs, self._sums)]
        else:
            gs = [torch.zeros_like(x) if x.grad is None else x.grad for x in self._xs]
        return _tree.unflatten(self._spec, gs)


def vmap(
    fn: Callable[..., Any],
    in_dims: Any = 0,
    out_dims: Any = 0,
    randomness: str = "error",
    chunk_size: int | None = None,
) -> Callable[..., Any]:
    """Vectorise ``fn`` over a batch dimension (``torch.func.vmap``).

    Args:
      fn: the function of one example.
      in_dims, out_dims: the batch dimensions of the inputs and outputs.
      randomness: torch.func's randomness mode.
      chunk_size: examples per chunk (None: all at once).

    Returns:
      The vectorised function.
    """
    vectorised = torch.func.vmap(
        fn, in_dims=in_dims, out_dims=out_dims, randomness=randomness, chunk_size=chunk_size
    )

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        return _tree_jit.without_opaque_kernels(vectorised, *args, **kwargs)

    return wrapped


def jit(
    fn: Callable[..., Any] | None = None,
    *,
    enabled: bool = True,
    fullgraph: bool = False,
    dynamic: bool | None = None,
    mode: str | None = None,
    backend: str = "inductor",
    options: dict | None = None,
) -> Callable[..., Any]:
    """Compile a pure function with ``torch.compile``; ``enabled=False`` returns it unchanged.

    Usable as ``jit(fn)``, ``jit(fn, enabled=flag)`` or as a decorator ``@jit(fullgraph=True)``.
    The function must be pure (no mutation of its inputs, randomness only from keys), which is
    what lets the compiled and the eager paths agree.

    Args:
      fn: the function (None: return a decorator).
      enabled: compile (else return ``fn`` itself).
      fullgraph, dynamic, mode, backend, options: ``torch.compile``'s.

    Returns:
      The compiled function (or ``fn``, or a decorator).
    """
    if fn is None:
        return functools.partial(
            jit,
            enabled=enabled,
            fullgraph=fullgraph,
            dynamic=dynamic,
            mode=mode,
            backend=backend,
            options=options,
        )
    if not enabled:
        return fn
    return torch.compile(
        fn, fullgraph=fullgraph, dynamic=dynamic, mode=mode, backend=backend, options=options
    )
