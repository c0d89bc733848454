"""Compiling pure functions of pytrees so that the compiled code guards tensors only.

``torch.compile`` guards every Python value the traced code reads, and for fctc's models,
pure functions whose closures hold the layer configuration (shapes, strides, child lists),
that is over a thousand guards, checked before every call (about a millisecond on a small
CPU). :func:`jit_trees` compiles ``fn(*trees)`` as a function of the flat list of tensor
leaves instead: the trees are rebuilt inside the compiled code by generated Python (their
structure is a constant of that code), the inputs' tensor properties, aliasing and torch's
global state stay guarded, and what the function reads from closures and module globals is a
constant of the compiled code, as with ``jax.jit``. One compiled function per input structure.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optree
import torch
import torch._functorch.config

from . import tree as _tree

__all__ = ["jit_trees", "opaque_kernels", "without_opaque_kernels"]

# Guards kept whatever their source: the inputs' tensors, their aliasing, the shape relations.
_ALWAYS_KEPT = frozenset({"TENSOR_MATCH", "DUPLICATE_INPUT", "SHAPE_ENV"})
_counter = itertools.count()


class _OpaqueKernels:
    """Whether the code being compiled may call fctc's CPU kernels as opaque custom ops: set
    around the calls of what :func:`jit_trees` compiles, cleared around the ``torch.func``
    transforms fctc applies in there (inside ``torch.compile``, functorch cannot differentiate
    through a custom op called from an ``autograd.Function``). Traced code reads it as a constant."""

    __slots__ = ("on",)

    def __init__(self):
        self.on = False


_OPAQUE = _OpaqueKernels()


def opaque_kernels() -> bool:
    """Whether fctc's CPU kernels may run here as opaque custom ops (see :class:`_OpaqueKernels`).

    Returns:
      True while ``torch.compile`` traces a function compiled by :func:`jit_trees`, outside
      fctc's ``torch.func`` transforms.
    """
    return _OPAQUE.on and torch.compiler.is_compiling()


def without_opaque_kernels(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with :func:`opaque_kernels` off (for a ``torch.func`` transform).

    Args:
      fn: the function to call.
      *args, **kwargs: its arguments.

    Returns:
      What ``fn`` returns.
    """
    return _with_opaque_kernels(False, fn, *args, **kwargs)


def _with_opaque_kernels(on: bool, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the flag of :func:`opaque_kernels` set to ``on``, then restored."""
    previous = _OPAQUE.on
    _OPAQUE.on = on
    try:
        return fn(*args, **kwargs)
    finally:
        _OPAQUE.on = previous


def _guard_filter(entries: Sequence[Any]) -> list[bool]:
    """Keep guards on the inputs and on torch's global state; drop those on closures and
    module globals (the function's code and configuration, fixed once it is compiled)."""
    return [
        e.guard_type in _ALWAYS_KEPT or not (e.is_global or "__closure__" in e.name) for e in entries
    ]


class _Slot:
    """A leaf while the rebuilding code is generated: ``xs[index]``, or a named constant."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def _source(node: Any, names: dict[str, Any]) -> str:
    """Python source that rebuilds ``node``; the NamedTuple types it needs go into ``names``."""
    if isinstance(node, _Slot):
        return node.text
    t = type(node)
    if t is dict:
        if not all(type(k) is str for k in node):
            raise TypeError("dict keys other than str")
        return "{" + ", ".join(f"{k!r}: {_source(v, names)}" for k, v in node.items()) + "}"
    if t is list:
        return "[" + ", ".join(_source(v, names) for v in node) + "]"
    if t is tuple:
        return "(" + "".join(_source(v, names) + ", " for v in node) + ")"
    if issubclass(t, tuple) and hasattr(t, "_fields"):  # a NamedTuple
        name = f"T{len(names)}"
        names[name] = t
        return f"{name}(" + "".join(_source(v, names) + ", " for v in node) + ")"
    if node is None:
        return "None"
    raise TypeError(f"a {t.__name__} node")


def _rebuilder(spec: Any, static: dict[int, Any]) -> Callable[[list], tuple] | None:
    """Generated ``rebuild(xs) -> args`` for the argument list of structure ``spec``: ``xs``
    holds its tensor leaves in order, the other leaves (``static``: index -> value) are
    constants. None for a structure the generator does not know (other container types)."""
    names: dict[str, Any] = {}
    slots, k = [], 0
    for i in range(spec.num_leaves):
        if i in static:
            names[f"C{i}"] = static[i]
            slots.append(_Slot(f"C{i}"))
        else:
            slots.append(_Slot(f"xs[{k}]"))
            k += 1
    try:
        body = _source(optree.tree_unflatten(spec, slots), names)
    except TypeError:
        return None
    scope = dict(names)
    code = f"def rebuild(xs):\n    return tuple({body})\n"
    exec(compile(code, f"<fctc.backend.jit_trees rebuild {next(_counter)}>", "exec"), scope)  # noqa: S102
    return scope["rebuild"]


def _cache_key_pass() -> Any:
    """A no-op inductor graph pass whose ``uuid`` names fctc's CPU convolution-backward
    lowering (:func:`_cpu_conv_backward_without_stride_guards`), so that inductor's on-disk
    caches keep the graphs compiled with it apart from those compiled without it (a cached
    backward from the stock lowering carries its time-size guard into every later run, which
    then recompiles for each new padded length). None where torch has no custom passes."""
    try:
        from torch._inductor.custom_graph_pass import CustomGraphPass
    except ImportError:  # pragma: no cover - torch without custom graph passes
        return None

    class _CacheKey(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            return None

        def uuid(self) -> str:
            return "fctc.jit_trees: CPU convolution_backward through its ATen fallback, v1"

    return _CacheKey()


def _options(mode: str | None, backend: str) -> dict[str, Any]:
    """``torch.compile`` options for ``mode`` with the guard filter (mode and options are
    exclusive in ``torch.compile``, so the mode goes in as its inductor options), and for
    inductor the cache key of fctc's lowering (:func:`_cache_key_pass`)."""
    options: dict[str, Any] = {}
    if mode is not None and mode != "default":
        options.update(torch._inductor.list_mode_options(mode))
    options["guard_filter_fn"] = _guard_filter
    if backend == "inductor":
        key = _cache_key_pass()
        # A pass of the user's own stays (it then keys the cache itself).
        if key is not None and getattr(torch._inductor.config, "post_grad_custom_pre_pass", 0) is None:
            options["post_grad_custom_pre_pass"] = key
    return options


def _cpu_conv_backward_without_stride_guards() -> None:
    """Route inductor's lowering of ``convolution_backward`` to its ATen fallback for CPU
    tensors (installed once, when fctc first compiles).

    On the CPU that lowering has no kernel of its own (its templates are Triton, GPU-only) and
    ends in the ATen fallback anyway; but on the way (torch 2.13) it turns the input's strides
    into constants, which specialises the time dimension of every convolution: each new padded
    length would compile the step again. Other devices keep the lowering as it is.
    """
    try:
        from torch._inductor import lowering
        from torch._inductor.kernel import conv
    except ImportError:  # pragma: no cover - inductor not available
        return
    op = torch.ops.aten.convolution_backward.default
    original = lowering.lowerings.get(op)
    fallback = getattr(conv, "aten_convolution_backward_fallback", None)
    if original is None or fallback is None or getattr(original, "_fctc_cpu_fallback", False):
        return

    def lower(grad_out, input, weight, *args, **kwargs):
        device = input.get_device()
        if device is not None and device.type == "cpu":
            return fallback(grad_out, input, weight, *args, **kwargs)
        return original(grad_out, input, weight, *args, **kwargs)

    lower._fctc_cpu_fallback = True  # type: ignore[attr-defined]
    lowering.lowerings[op] = lower


@contextlib.contextmanager
def no_donated_buffers() -> Iterator[None]:
    """AOTAutograd's donated buffers off for the block: they forbid the retained graphs of
    :func:`fctc.backend.vjp` (one forward pass, a backward call per routed loss), and the
    choice is made when a forward or backward graph is compiled (a plain attribute swap, not
    ``config.patch``: this runs on every eager backward call)."""
    config = torch._functorch.config
    previous = config.donated_buffer
    config.donated_buffer = False
    try:
        yield
    finally:
        config.donated_buffer = previous


def _call(compiled: Callable, *args: Any) -> Any:
    """Call compiled code (compiling it on a first call) without donated buffers."""
    with no_donated_buffers():
        return compiled(*args)


def jit_trees(
    fn: Callable[..., Any],
    *,
    dynamic: Sequence[int] = (),
    mode: str | None = None,
    backend: str = "inductor",
    fullgraph: bool = False,
) -> Callable[..., Any]:
    """Compile a pure function of pytrees with ``torch.compile``, guarding tensors only.

    The compiled code takes the tensor leaves of the arguments as one flat list and rebuilds
    the trees itself, so that ``torch.compile`` checks only the tensors' properties (shapes,
    dtypes, devices, strides, aliasing) and torch's global state before each call; Python
    values that ``fn`` reads from closures and module globals are constants of the compiled
    code (as in ``jax.jit``: build a new function to change them). Non-tensor leaves of the
    arguments are constants too: one compiled function per distinct structure and values.
    Every dimension of the tensors in the arguments named by ``dynamic`` is compiled as
    dynamic where the code allows it (``torch._dynamo.maybe_mark_dynamic``), so that batches
    of other lengths run the same compiled code (torch still specialises sizes 0 and 1).

    Args:
      fn: the function; its arguments are pytrees (of tensors, numbers, containers).
      dynamic: positions of the arguments whose dimensions vary between calls (a batch).
      mode: ``torch.compile``'s mode (``"reduce-overhead"``: CUDA graphs).
      backend: ``torch.compile``'s backend.
      fullgraph: fail on a graph break instead of splitting the graph.

    Returns:
      The compiled function, called like ``fn``.
    """
    options = _options(mode, backend)
    if backend == "inductor":
        _cpu_conv_backward_without_stride_guards()
    cache: dict[Any, Callable[[list, tuple], Any]] = {}
    dyn = frozenset(dynamic)

    def compiled_for(spec: Any, static: dict[int, Any]) -> Callable[[list, tuple], Any]:
        rebuild = _rebuilder(spec, static)
        if rebuild is None:  # an unusual container: the trees go in as they are
            def whole(*trees):
                return fn(*trees)

            c = torch.compile(whole, fullgraph=fullgraph, backend=backend, options=dict(options))
            return lambda xs, args: _call(c, *args)

        def flat(xs):
            return fn(*rebuild(xs))

        c = torch.compile(flat, fullgraph=fullgraph, backend=backend, options=dict(options))
        return lambda xs, args: _call(c, xs)

    def call(*args):
        flats = [_tree.flatten(a) for a in args]
        tensors: list[torch.Tensor] = []
        static: dict[int, Any] = {}
        n = 0
        for i, (xs, _) in enumerate(flats):
            for x in xs:
                if not isinstance(x, torch.Tensor):
                    static[n] = x
                else:
                    if i in dyn:
                        for d in range(x.dim()):
                            torch._dynamo.maybe_mark_dynamic(x, d)
                    tensors.append(x)
                n += 1
        key = (tuple(s for _, s in flats), tuple(static.items()))
        entry = cache.get(key)
        if entry is None:
            entry = cache[key] = compiled_for(_tree.structure(list(args)), static)
        return _with_opaque_kernels(True, entry, tensors, args)

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call
