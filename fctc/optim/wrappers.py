"""Wrappers around gradient transformations: masks, parameter groups, accumulation, guards.

Everything here follows optax's API and state layout (``masked`` / ``MaskedState``,
``multi_transform`` / ``MultiTransformState``, ``MultiSteps`` / ``MultiStepsState``,
``apply_if_finite`` / ``ApplyIfFiniteState``, ``inject_hyperparams`` / ``InjectHyperparamsState``,
``optax.contrib.reduce_on_plateau``) so optax recipes carry over.

Decisions that depend on runtime values (accumulate or emit, finite or not, plateau or not) are
taken with ``torch.where`` over the state tensors instead of Python branches: no ``.item()``, no
host synchronisation, one compiled graph for every step. The price is that a wrapped optimiser's
update is computed on every call and then selected or discarded (``MultiSteps`` runs the inner
update at each micro-step); it is a few ``_foreach`` kernels over the parameters.

Masks and labels are static Python values (bools, strings) decided when the step is traced.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple

import optree
import torch

from .. import backend as _backend
from .. import tree as _tree
from .base import GradientTransformation, set_to_zero, with_extra_args_support

__all__ = [
    "MaskedNode",
    "MaskedState",
    "masked",
    "MultiTransformState",
    "PartitionState",
    "multi_transform",
    "partition",
    "freeze",
    "selective_transform",
    "MultiStepsState",
    "MultiSteps",
    "skip_not_finite",
    "skip_large_updates",
    "ApplyIfFiniteState",
    "apply_if_finite",
    "InjectHyperparamsState",
    "inject_hyperparams",
    "ReduceLROnPlateauState",
    "reduce_on_plateau",
]

_INT32_MAX = 2**31 - 1


# --- small helpers --------------------------------------------------------------------------


def _first_leaf(tree: Any) -> torch.Tensor | None:
    for x in _tree.leaves(tree):
        if isinstance(x, torch.Tensor):
            return x
    return None


def _device_of(tree: Any) -> torch.device:
    x = _first_leaf(tree)
    return x.device if x is not None else torch.device("cpu")


def _float_dtype(tree: Any, highest: bool) -> torch.dtype:
    """The widest (or narrowest) floating dtype among the leaves; float32 when there is none."""
    dtypes = [x.dtype for x in _tree.leaves(tree) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    if not dtypes:
        return torch.float32
    key = lambda d: torch.finfo(d).bits  # noqa: E731
    return max(dtypes, key=key) if highest else min(dtypes, key=key)


def _safe_increment(x: torch.Tensor) -> torch.Tensor:
    """``x + 1`` that saturates at the int32 maximum instead of wrapping (optax's counters)."""
    return torch.where(x < _INT32_MAX, x + 1, x)


# --- masking and parameter groups -----------------------------------------------------------


class MaskedNode(NamedTuple):
    """Stands in for a masked-out leaf: a pytree node with no leaves, so inner transforms skip it."""


class MaskedState(NamedTuple):
    """The state of :func:`masked`: the inner state, built on the selected leaves only."""

    inner_state: Any


def _static_bool(m: Any, where: str) -> bool:
    if isinstance(m, torch.Tensor):
        if m.numel() != 1:
            raise TypeError(f"{where}: mask leaves must be single booleans, got a tensor of shape {tuple(m.shape)}")
        return bool(m)
    if isinstance(m, (bool, int)) or type(m).__name__ == "bool_":
        return bool(m)
    raise TypeError(
        f"{where}: mask leaves must be Python bools (True = selected), got {type(m).__name__}; "
        "build the mask with fctc.tree.map(lambda p: <condition>, params)"
    )


_MISSING = object()


class _PrefixTree:
    """A static mask / label tree (or a function of the updates returning one), resolved per leaf.

    The tree may be a prefix of the parameter tree: each leaf takes the value of the longest
    path of the prefix tree that starts its own path. The prefix tree is flattened eagerly; a
    traced (compiled) update only looks paths up in a dict, because dynamo cannot flatten trees of
    Python constants. A function is evaluated on every eager call (as optax does) and, while
    tracing, replaced by its value at the last eager call (``init`` is always eager).
    """

    def __init__(self, tree_or_fn: Any, where: str, convert: Callable[[Any, str], Any]):
        self.where, self.convert = where, convert
        self.fn = tree_or_fn if callable(tree_or_fn) else None
        self.cached = None if self.fn is not None else self._path_map(tree_or_fn)

    def _path_map(self, prefix: Any) -> dict[tuple, Any]:
        paths, values, _ = optree.tree_flatten_with_path(prefix, namespace=_tree._NS)
        return {tuple(p): self.convert(v, self.where) for p, v in zip(paths, values)}

    def per_leaf(self, tree: Any) -> list[Any]:
        """One value per leaf of ``tree``, in :func:`fctc.tree.leaves` order."""
        if self.fn is not None and (self.cached is None or not _backend.is_tracing()):
            self.cached = self._path_map(self.fn(tree))
        pmap = self.cached
        out = []
        for path in optree.tree_paths(tree, namespace=_tree._NS):
            path = tuple(path)
            for n in range(len(path), -1, -1):
                v = pmap.get(path[:n], _MISSING)
                if v is not _MISSING:
                    out.append(v)
                    break
            else:
                raise ValueError(
                    f"{self.where}: no mask/label covers the parameter {'.'.join(map(str, path))!r}; "
                    "the mask/labels tree must have the structure of the parameters (or a prefix "
                    f"of it), but it has entries for {sorted('.'.join(map(str, k)) for k in pmap)}"
                )
        return out


def _mask_leaves(leaves: list[Any], keep: list[bool]) -> list[Any]:
    return [x if k else MaskedNode() for x, k in zip(leaves, keep)]


def _masked_extra(extra: dict, updates: Any, spec: Any, keep: list[bool], enabled: bool) -> dict:
    """Mask the extra arguments that are trees shaped like the updates (optax's option)."""
    if not enabled:
        return extra
    paths = optree.tree_paths(updates, namespace=_tree._NS)
    out = {}
    for k, v in extra.items():
        same = isinstance(v, (dict, list, tuple)) and optree.tree_paths(v, namespace=_tree._NS) == paths
        out[k] = _tree.unflatten(spec, _mask_leaves(_tree.leaves(v), keep)) if same else v
    return out


def _run_on_subset(tx, updates, updates_leaves, params_leaves, spec, keep, inner_state, extra, mask_extra):
    """Apply ``tx`` to the leaves where ``keep`` is True; return (their new leaves, new state)."""
    sub_u = _tree.unflatten(spec, _mask_leaves(updates_leaves, keep))
    sub_p = None if params_leaves is None else _tree.unflatten(spec, _mask_leaves(params_leaves, keep))
    sub_extra = _masked_extra(extra, updates, spec, keep, mask_extra)
    new_sub, new_state = tx.update(sub_u, inner_state, sub_p, **sub_extra)
    new_leaves = _tree.leaves(new_sub)
    if len(new_leaves) != sum(keep):
        raise ValueError(
            f"masked: the inner transformation returned {len(new_leaves)} updates for "
            f"{sum(keep)} selected parameters"
        )
    return new_leaves, new_state


def masked(
    inner: GradientTransformation,
    mask: Any | Callable[[Any], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """Apply ``inner`` only to the leaves where ``mask`` is True; pass the others through unchanged.

    ``mask`` is a tree of bools with the structure of the parameters (or a prefix of it: one bool
    for a whole subtree), or a function ``params -> mask``. ``inner`` sees the selected leaves
    only (masked-out leaves are :class:`MaskedNode`), so its state holds nothing for the others.
    Typical use: weight decay on matrices only, ``masked(add_decayed_weights(1e-2),
    lambda p: fctc.tree.map(lambda x: x.ndim > 1, p))``, or speechain's ``updated_modules``.
    """
    inner = with_extra_args_support(inner)

    resolved = _PrefixTree(mask, "masked", _static_bool)

    def init(params):
        leaves, spec = _tree.flatten(params)
        keep = resolved.per_leaf(params)
        return MaskedState(inner.init(_tree.unflatten(spec, _mask_leaves(leaves, keep))))

    def update(updates, state, params=None, **extra):
        leaves, spec = _tree.flatten(updates)
        keep = resolved.per_leaf(updates)
        p_leaves = None if params is None else spec.flatten_up_to(params)
        new_leaves, inner_state = _run_on_subset(
            inner, updates, leaves, p_leaves, spec, keep, state.inner_state, extra, mask_compatible_extra_args
        )
        it = iter(new_leaves)
        out = [next(it) if k else u for u, k in zip(leaves, keep)]
        return _tree.unflatten(spec, out), MaskedState(inner_state)

    return GradientTransformation(init, update)


class MultiTransformState(NamedTuple):
    """The state of :func:`multi_transform`: ``{label: MaskedState(inner_state)}``."""

    inner_states: Mapping[Hashable, Any]


PartitionState = MultiTransformState


def multi_transform(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Any], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """Named parameter groups, each with its own transformation (optax's ``multi_transform``).

    ``param_labels`` is a tree of labels with the structure of the parameters (or a prefix of
    it), or a function ``params -> labels``; every label must be a key of ``transforms``. Each
    transformation sees only the leaves carrying its label and keeps state for those only, e.g.
    ``multi_transform({"encoder": adamw(1e-4), "decoder": adamw(1e-3)}, {"encoder": "encoder",
    "decoder": "decoder"})`` (ESPnet's named optimisers). Updates and labels are flattened once
    per call.
    """
    txs = {k: with_extra_args_support(v) for k, v in transforms.items()}

    def _check_label(label, where):
        if not isinstance(label, Hashable):
            raise TypeError(f"{where}: labels must be hashable (strings), got {type(label).__name__}")
        return label

    resolved = _PrefixTree(param_labels, "multi_transform", _check_label)

    def _labels(tree):
        per_leaf = resolved.per_leaf(tree)
        unknown = sorted({repr(lab) for lab in per_leaf if lab not in txs})
        if unknown:
            raise ValueError(
                f"multi_transform: parameters are labelled {unknown} but there is no transformation "
                f"for them; transforms has keys {sorted(map(repr, txs))}"
            )
        return per_leaf

    def init(params):
        leaves, spec = _tree.flatten(params)
        labels = _labels(params)
        states = {}
        for group, tx in txs.items():
            keep = [lab == group for lab in labels]
            states[group] = MaskedState(tx.init(_tree.unflatten(spec, _mask_leaves(leaves, keep))))
        return MultiTransformState(states)

    def update(updates, state, params=None, **extra):
        leaves, spec = _tree.flatten(updates)
        labels = _labels(updates)
        p_leaves = None if params is None else spec.flatten_up_to(params)
        out = list(leaves)
        new_states = {}
        for group, tx in txs.items():
            keep = [lab == group for lab in labels]
            new_leaves, inner = _run_on_subset(
                tx, updates, leaves, p_leaves, spec, keep, state.inner_states[group].inner_state, extra,
                mask_compatible_extra_args,
            )
            idx = [i for i, k in enumerate(keep) if k]
            for i, x in zip(idx, new_leaves):
                out[i] = x
            new_states[group] = MaskedState(inner)
        return _tree.unflatten(spec, out), MultiTransformState(new_states)

    return GradientTransformation(init, update)


partition = multi_transform


def freeze(mask: Any) -> GradientTransformation:
    """Zero the updates of the leaves where ``mask`` is True (frozen); pass the others through.

    ``mask`` is a bool, a tree of bools (or a prefix of the parameter tree). Frozen parameters
    stay exactly as they are after :func:`~fctc.optim.apply_updates`. Put it last in a chain.
    """
    return masked(set_to_zero(), mask)


def selective_transform(optimizer: GradientTransformation, *, freeze_mask: Any) -> GradientTransformation:
    """Run ``optimizer`` on the unfrozen leaves only and zero the frozen ones (``freeze_mask``).

    Unlike ``chain(optimizer, freeze(mask))`` the optimiser keeps no state (moments) for frozen
    parameters. The state is :class:`MultiTransformState` with groups ``"train"``/``"freeze"``.
    """
    labels = _tree.map(lambda m: "freeze" if _static_bool(m, "selective_transform") else "train", freeze_mask)
    return multi_transform({"train": optimizer, "freeze": set_to_zero()}, labels)


# --- gradient accumulation ------------------------------------------------------------------


class MultiStepsState(NamedTuple):
    """The state of :class:`MultiSteps` (optax's layout)."""

    mini_step: torch.Tensor
    gradient_step: torch.Tensor
    inner_opt_state: Any
    acc_grads: Any
    skip_state: Any = ()


def skip_not_finite(updates: Any, gradient_step: torch.Tensor, params: Any) -> tuple[torch.Tensor, dict]:
    """A ``should_skip_update_fn`` for :class:`MultiSteps`: skip micro-steps with NaN/Inf."""
    del gradient_step, params
    xs = [x for x in _tree.leaves(updates) if x.is_floating_point()]
    if xs:
        device = xs[0].device
        num = torch.stack([(~torch.isfinite(x)).sum().to(device) for x in xs]).sum().to(torch.int32)
    else:
        num = torch.zeros((), dtype=torch.int32)
    should_skip = num > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num}


def skip_large_updates(
    updates: Any, gradient_step: torch.Tensor, params: Any, max_squared_norm: float
) -> tuple[torch.Tensor, dict]:
    """A ``should_skip_update_fn``: skip micro-steps whose squared global norm is not below
    ``max_squared_norm`` (NaN norms are skipped too). Bind it with ``functools.partial``."""
    del gradient_step, params
    norm_sq = _tree.global_norm(updates) ** 2
    should_skip = torch.logical_not(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


def _no_skip(updates, gradient_step, params):
    del updates, params
    return torch.zeros((), dtype=torch.bool, device=gradient_step.device), ()


class MultiSteps:
    """Gradient accumulation: emit one inner update every ``k`` micro-steps (optax's MultiSteps).

    Each :meth:`update` folds the incoming gradient into ``acc_grads`` (a running mean with
    ``use_grad_mean``, else a sum) and returns zeros, except on the ``k``-th micro-step where the
    inner optimiser runs on the accumulated gradient and its update is returned.
    ``every_k_schedule`` is an int or a function of ``gradient_step`` (the number of emitted
    updates). ``should_skip_update_fn(updates, gradient_step, params) -> (bool tensor,
    skip_state)`` may reject a micro-step as if it never happened (:func:`skip_not_finite`).
    Accumulators are ``accumulator_dtype`` (float32 by default). Compiled, it is branch-free: the
    inner update is computed at every micro-step and selected with ``torch.where``; eagerly, the
    inner update runs only on the micro-steps that emit (one host read of the counter).
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[torch.Tensor], Any],
        use_grad_mean: bool = True,
        should_skip_update_fn: Callable | None = None,
        accumulator_dtype: torch.dtype = torch.float32,
    ):
        self._opt = with_extra_args_support(opt)
        if isinstance(every_k_schedule, int):
            if every_k_schedule < 1:
                raise ValueError(f"MultiSteps: every_k_schedule must be >= 1, got {every_k_schedule}")
            k = every_k_schedule
            self._every_k_schedule = lambda step: k
        elif callable(every_k_schedule):
            self._every_k_schedule = every_k_schedule
        else:
            raise TypeError(
                f"MultiSteps: every_k_schedule must be an int or a function of the gradient step, "
                f"got {type(every_k_schedule).__name__}"
            )
        self._use_grad_mean = use_grad_mean
        self._should_skip_update_fn = should_skip_update_fn or _no_skip
        self._accumulator_dtype = accumulator_dtype

    @property
    def inner_opt(self) -> GradientTransformation:
        """The wrapped optimiser."""
        return self._opt

    def init(self, params: Any) -> MultiStepsState:
        """Zero counters and accumulators; the inner optimiser's initial state."""
        device = _device_of(params)
        gradient_step = torch.zeros((), dtype=torch.int32, device=device)
        _, skip_state = self._should_skip_update_fn(_tree.zeros_like(params), gradient_step, params)
        return MultiStepsState(
            mini_step=torch.zeros((), dtype=torch.int32, device=device),
            gradient_step=gradient_step,
            inner_opt_state=self._opt.init(params),
            acc_grads=_tree.zeros_like(params, dtype=self._accumulator_dtype),
            skip_state=skip_state,
        )

    def update(self, updates: Any, state: MultiStepsState, params: Any = None, **extra) -> tuple[Any, MultiStepsState]:
        """Accumulate ``updates``; return the inner update every ``k`` steps, zeros otherwise."""
        mini = state.mini_step
        k = torch.as_tensor(self._every_k_schedule(state.gradient_step), device=mini.device).to(torch.int32)
        should_skip, skip_state = self._should_skip_update_fn(updates, state.gradient_step, params)
        if not (isinstance(should_skip, torch.Tensor) and should_skip.dtype == torch.bool and should_skip.dim() == 0):
            raise ValueError(
                "MultiSteps: should_skip_update_fn must return a 0-d bool tensor as its first "
                f"output, got {should_skip!r}"
            )

        gs, spec = _tree.flatten(updates)
        accs = spec.flatten_up_to(state.acc_grads)
        if gs:
            g32 = [g.to(a.dtype) for g, a in zip(gs, accs)]
            if self._use_grad_mean:
                # Welford running mean: acc + (g - acc) / (n + 1), as optax does.
                n1 = (mini + 1).to(accs[0].dtype)
                new_accs = torch._foreach_add(accs, torch._foreach_div(torch._foreach_sub(g32, accs), n1))
            else:
                new_accs = torch._foreach_add(accs, g32)
        else:
            new_accs = []
        acc_as_updates = _tree.unflatten(spec, [a.to(g.dtype) for a, g in zip(new_accs, gs)])
        emit = mini == (k - 1)
        keep = ~should_skip
        step_on = emit & keep
        if _backend.is_tracing() or bool(step_on):
            final_updates, new_inner = self._opt.update(
                acc_as_updates, state.inner_opt_state, params, **extra
            )
        else:
            # Eagerly, a micro-step that emits nothing skips the inner update altogether (one
            # host read of a counter): same results as the branch-free select below, without
            # paying for an optimiser step (or a gradient all-reduce inside it) per micro-step.
            final_updates, new_inner = _tree.map(torch.zeros_like, updates), state.inner_opt_state
        zeros_like_final = _tree.map(torch.zeros_like, final_updates)
        out_updates = _tree.select(step_on, final_updates, zeros_like_final)
        acc_out = [torch.where(emit, torch.zeros_like(a), a) for a in new_accs]
        new_state = MultiStepsState(
            mini_step=torch.where(keep, torch.remainder(_safe_increment(mini), k), mini),
            gradient_step=torch.where(step_on, _safe_increment(state.gradient_step), state.gradient_step),
            inner_opt_state=_tree.select(step_on, new_inner, state.inner_opt_state),
            acc_grads=_tree.select(keep, _tree.unflatten(spec, acc_out), state.acc_grads),
            skip_state=skip_state,
        )
        return out_updates, new_state

    def has_updated(self, state: MultiStepsState) -> torch.Tensor:
        """True (a bool tensor) right after a call that emitted an inner update."""
        return (state.mini_step == 0) & (state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformation:
        """This accumulator as a plain :class:`GradientTransformation`."""
        return GradientTransformation(self.init, self.update)


# --- guards ---------------------------------------------------------------------------------


class ApplyIfFiniteState(NamedTuple):
    """The state of :func:`apply_if_finite` (optax's layout)."""

    notfinite_count: torch.Tensor
    last_finite: torch.Tensor
    total_notfinite: torch.Tensor
    inner_state: Any


def apply_if_finite(inner: GradientTransformation, max_consecutive_errors: int) -> GradientTransformation:
    """Skip updates whose gradients hold NaN/Inf: return zeros and keep ``inner``'s state.

    ``notfinite_count`` counts consecutive bad steps and ``total_notfinite`` all of them. After
    more than ``max_consecutive_errors`` bad steps in a row the update is applied anyway (as
    optax does), so a run that only produces NaN does not silently stall.
    """
    inner = with_extra_args_support(inner)

    def init(params):
        device = _device_of(params)
        return ApplyIfFiniteState(
            notfinite_count=torch.zeros((), dtype=torch.int32, device=device),
            last_finite=torch.ones((), dtype=torch.bool, device=device),
            total_notfinite=torch.zeros((), dtype=torch.int32, device=device),
            inner_state=inner.init(params),
        )

    def update(updates, state, params=None, **extra):
        device = state.notfinite_count.device
        isfinite = _tree.all_finite(updates).to(device)
        notfinite_count = torch.where(
            isfinite, torch.zeros_like(state.notfinite_count), _safe_increment(state.notfinite_count)
        )
        apply = isfinite | (notfinite_count > max_consecutive_errors)
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
        out = _tree.select(apply, new_updates, _tree.map(torch.zeros_like, new_updates))
        return out, ApplyIfFiniteState(
            notfinite_count=notfinite_count,
            last_finite=isfinite,
            total_notfinite=torch.where(isfinite, state.total_notfinite, _safe_increment(state.total_notfinite)),
            inner_state=_tree.select(apply, new_inner, state.inner_state),
        )

    return GradientTransformation(init, update)


# --- hyperparameters in the state -----------------------------------------------------------


class InjectHyperparamsState(NamedTuple):
    """The state of an :func:`inject_hyperparams` transformation.

    ``hyperparams`` maps each numeric hyperparameter to a tensor: read it for logging, or assign a
    new tensor (``state.hyperparams["learning_rate"] = torch.tensor(3e-4)``) to change it without
    rebuilding the optimiser. Scheduled ones are recomputed from ``count`` at every update.
    """

    count: torch.Tensor
    hyperparams: dict[str, torch.Tensor]
    inner_state: Any


def _takes_var_keyword(fn: Callable) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _annotation_is_int(annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty:
        return False
    if isinstance(annotation, str):
        parts = [p.strip() for p in annotation.replace("Optional[", "").rstrip("]").split("|")]
        return any(p in ("int", "bool") for p in parts)
    candidates = typing.get_args(annotation) or (annotation,)
    return any(c in (int, bool) for c in candidates)


def _integer_params(sig: inspect.Signature) -> set[str]:
    names = set()
    for name, p in sig.parameters.items():
        default_int = p.default is not p.empty and isinstance(p.default, int) and not isinstance(p.default, bool)
        if _annotation_is_int(p.annotation) or default_int or isinstance(p.default, bool):
            names.add(name)
    return names


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: torch.dtype | None = None,
) -> Callable[..., GradientTransformation]:
    """Wrap an optimiser factory so its numeric hyperparameters live in the optimiser state.

    ``inject_hyperparams(adamw)(learning_rate=warmup_cosine_decay_schedule(...), b1=0.9)`` builds
    a transformation whose state is :class:`InjectHyperparamsState`. Every update rebuilds the
    inner transformation from ``inner_factory`` with 0-d tensor hyperparameters (so a compiled
    step does not recompile when they change): schedules (callables) are evaluated at
    ``count``, other numbers are read from ``state.hyperparams``. Bools, ints passed for
    ``int``/``bool`` parameters, non-numeric values and the names in ``static_args`` are passed
    as they are. Floating hyperparameters get ``hyperparam_dtype`` (default: the widest floating
    dtype of the parameters) and the parameters' device.
    """
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    sig = inspect.signature(inner_factory)
    unknown = static - set(sig.parameters)
    if unknown:
        raise ValueError(
            f"inject_hyperparams: static_args {sorted(unknown)} are not parameters of "
            f"{getattr(inner_factory, '__name__', inner_factory)}; it takes {list(sig.parameters)}"
        )
    integer_params = _integer_params(sig)

    @functools.wraps(inner_factory)
    def wrapped(*args, **kwargs) -> GradientTransformation:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        sched_hps, numeric_hps, other_hps = {}, {}, {}
        for name, value in bound.arguments.items():
            if name in static or isinstance(value, bool):
                other_hps[name] = value
            elif name in integer_params and isinstance(value, int):
                other_hps[name] = value
            elif callable(value):
                sched_hps[name] = value
            elif isinstance(value, (int, float, torch.Tensor)):
                numeric_hps[name] = value
            else:
                other_hps[name] = value

        def _convert(v, dtype, device):
            t = torch.as_tensor(v, device=device)
            if t.is_floating_point() or not isinstance(v, torch.Tensor):
                t = t.to(dtype)
            return t

        def _hparams(stored, count, dtype, device):
            hps = {k: _convert(v, dtype, device) for k, v in stored.items()}
            hps.update({k: _convert(f(count), dtype, device) for k, f in sched_hps.items()})
            return hps

        # Whether the inner update takes **extra, decided once eagerly (inspect is not traceable).
        accepts_extra: dict[str, bool] = {}

        def _inner_update(tx, updates, inner_state, params, extra):
            if "v" not in accepts_extra:
                accepts_extra["v"] = _takes_var_keyword(tx.update)
            if accepts_extra["v"]:
                return tx.update(updates, inner_state, params, **extra)
            return tx.update(updates, inner_state, params)

        def init(params):
            device = _device_of(params)
            dtype = hyperparam_dtype or _float_dtype(params, highest=True)
            count = torch.zeros((), dtype=torch.int32, device=device)
            hps = _hparams(numeric_hps, count, dtype, device)
            tx = inner_factory(**other_hps, **hps)
            accepts_extra["v"] = _takes_var_keyword(tx.update)
            return InjectHyperparamsState(count, hps, tx.init(params))

        def update(updates, state, params=None, **extra):
            device = state.count.device
            dtype = hyperparam_dtype or _float_dtype(params if params is not None else updates, highest=True)
            hps = _hparams(state.hyperparams, state.count, dtype, device)
            tx = inner_factory(**other_hps, **hps)
            updates, inner_state = _inner_update(tx, updates, state.inner_state, params, extra)
            return updates, InjectHyperparamsState(_safe_increment(state.count), hps, inner_state)

        return GradientTransformation(init, update)

    return wrapped


# --- reduce on plateau ----------------------------------------------------------------------


class ReduceLROnPlateauState(NamedTuple):
    """The state of :func:`reduce_on_plateau` (optax.contrib's layout)."""

    scale: torch.Tensor
    best_value: torch.Tensor
    plateau_count: torch.Tensor
    cooldown_count: torch.Tensor
    count: torch.Tensor
    avg_value: torch.Tensor


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
) -> GradientTransformation:
    """Scale updates down by ``factor`` when a monitored value stops improving (optax.contrib).

    ``update(..., value=loss)`` averages ``value`` over ``accumulation_size`` calls; each average
    that is not below ``(1 - rtol) * best - atol`` counts towards ``patience``. After
    ``patience`` such averages the scale is multiplied by ``factor`` (not below ``min_scale``)
    and ``cooldown`` averages are ignored. Updates are multiplied by ``state.scale``; place it
    after the optimiser in a chain and pass ``value=`` to the chain's update.
    """
    if not 0.0 < factor < 1.0:
        raise ValueError(f"reduce_on_plateau: factor must be in the range (0, 1), got factor={factor}")
    if rtol < 0.0 or atol < 0.0:
        raise ValueError(f"reduce_on_plateau: rtol and atol must be non-negative, got rtol={rtol}, atol={atol}")
    if rtol == 0.0 and atol == 0.0:
        raise ValueError("reduce_on_plateau: at least one of rtol or atol must be positive, got both 0")
    if rtol > 1.0:
        raise ValueError(f"reduce_on_plateau: rtol must be <= 1, got rtol={rtol}")

    def init(params):
        device = _device_of(params)
        i32 = dict(dtype=torch.int32, device=device)
        return ReduceLROnPlateauState(
            scale=torch.ones((), dtype=_float_dtype(params, highest=False), device=device),
            best_value=torch.full((), float("inf"), dtype=torch.float32, device=device),
            plateau_count=torch.zeros((), **i32),
            cooldown_count=torch.zeros((), **i32),
            count=torch.zeros((), **i32),
            avg_value=torch.zeros((), dtype=torch.float32, device=device),
        )

    def update(updates, state, params=None, *, value=None, **extra):
        del params, extra
        if value is None:
            raise TypeError(
                "reduce_on_plateau: update needs the monitored value, e.g. "
                "tx.update(grads, state, params, value=loss)"
            )
        value = torch.as_tensor(value, device=state.avg_value.device).to(state.avg_value.dtype)
        new_count = _safe_increment(state.count)
        avg = (state.count * state.avg_value + value) / new_count

        improved = avg < (1 - rtol) * state.best_value - atol
        best = torch.where(improved, avg, state.best_value)
        plateau = torch.where(improved, torch.zeros_like(state.plateau_count), _safe_increment(state.plateau_count))
        hit = plateau == patience
        in_cooldown = state.cooldown_count > 0
        zero = torch.zeros_like(plateau)
        reduced = torch.clamp(torch.where(hit, state.scale * factor, state.scale), min=min_scale)
        plateau = torch.where(in_cooldown, zero, torch.where(hit, zero, plateau))
        scale = torch.where(in_cooldown, state.scale, reduced.to(state.scale.dtype))
        cooldown_count = torch.where(
            in_cooldown, state.cooldown_count - 1, torch.where(hit, torch.full_like(zero, cooldown), zero)
        )

        done = new_count == accumulation_size
        new_state = ReduceLROnPlateauState(
            scale=torch.where(done, scale, state.scale),
            best_value=torch.where(done, best, state.best_value),
            plateau_count=torch.where(done, plateau, state.plateau_count),
            cooldown_count=torch.where(done, cooldown_count, state.cooldown_count),
            count=torch.where(done, torch.zeros_like(new_count), new_count),
            avg_value=torch.where(done, torch.zeros_like(avg), avg),
        )
        xs, spec = _tree.flatten(updates)
        if xs:
            xs = torch._foreach_mul(xs, new_state.scale)
        return _tree.unflatten(spec, xs), new_state

    return GradientTransformation(init, update)

