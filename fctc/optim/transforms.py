"""Elementary gradient transformations with optax's names, arguments, states and formulas.

Each update flattens its input trees once (the tree definition of ``updates`` drives the others
through ``flatten_up_to``) and runs ``torch._foreach_*`` kernels over the leaf lists. Nothing is
mutated: every result is a new tensor; in-place foreach calls only touch tensors created in the
same update.

Hyperparameters may be Python numbers or 0-d tensors (``inject_hyperparams`` passes tensors), and
step counts are int32 tensors, so no Python branch depends on a hyperparameter value and a
compiled step never recompiles when they change. ``None`` leaves in ``updates`` pass through as
``None`` (optax's convention), and an empty tree is a valid input.

On CPU, long leaf lists are processed in blocks of about :data:`BLOCK_ELEMENTS` elements: every
kernel of an update runs on one block before the next, so intermediate results are still in cache
when they are read again. Results are identical with or without blocking (the same elementwise
operations run on the same values); blocking is off under tracing and on accelerators.

Adam on CPU (eager, Python-number betas/eps, no ``eps_root``/Nesterov) runs torch's single-pass
fused kernel, which works in place: it runs on copies of the moments (and, for
:func:`~fctc.optim.update_and_apply`, of the parameters), so it stays pure; a clipping factor
handed over by :func:`~fctc.optim.chain` is applied to a copy of the gradients too, since the
kernel writes rescaled gradients back. Only donated buffers
(``update_and_apply(..., donate=True)``) are updated in place. Every other case (tensor
hyperparameters, tracing, CUDA, mixed dtypes) takes the foreach path. The two agree to rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import optree
import torch

from .. import backend as _backend
from .. import tree as _tree
from .base import EmptyState, GradientTransformation, _added, _can_donate

__all__ = [
    "ScaleState",
    "ScaleByScheduleState",
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "TraceState",
    "AddDecayedWeightsState",
    "scale",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_by_adam",
    "scale_by_rms",
    "scale_by_stddev",
    "trace",
    "add_decayed_weights",
    "safe_int32_increment",
]

Scalar = Any  # a Python number or a 0-d tensor
ScalarOrSchedule = Any  # a Scalar or a callable count -> Scalar

#: Target number of elements per block when CPU updates are cache-blocked (see module docstring).
BLOCK_ELEMENTS = 1 << 18

_INT32_MAX = 2**31 - 1
_NS = "fctc"


# --------------------------------------------------------------------------------------------
# Shared machinery (also used by clipping.py and aliases.py)
# --------------------------------------------------------------------------------------------


def _is_none(x: Any) -> bool:
    return x is None


class _Leaves:
    """``updates`` flattened once; other trees are flattened up to its structure.

    ``None`` leaves of ``updates`` are kept aside: ``xs`` holds the present leaves only and
    :meth:`build` puts ``None`` back at their places.
    """

    __slots__ = ("treedef", "xs", "idx", "n")

    def __init__(self, updates: Any):
        leaves, self.treedef = optree.tree_flatten(updates, is_leaf=_is_none, namespace=_NS)
        self.n = len(leaves)
        if any(x is None for x in leaves):
            self.idx = [i for i, x in enumerate(leaves) if x is not None]
            self.xs = [leaves[i] for i in self.idx]
        else:
            self.idx = None
            self.xs = leaves

    def take(self, tree: Any, what: str = "tree") -> list:
        """The leaves of ``tree`` matching the present leaves of ``updates``."""
        try:
            leaves = self.treedef.flatten_up_to(tree)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"the {what} does not have the structure of the updates ({self.treedef}); "
                f"was the state built by this transformation's init on the same parameters? ({e})"
            ) from None
        return leaves if self.idx is None else [leaves[i] for i in self.idx]

    def build(self, xs: Sequence[Any], fill: Sequence[Any] | None = None) -> Any:
        """A tree with the structure of ``updates`` from values for the present leaves; the
        absent ones are ``None``, or taken from ``fill`` (a full leaf list) when given."""
        if self.idx is not None:
            full: list[Any] = [None] * self.n if fill is None else list(fill)
            for i, x in zip(self.idx, xs):
                full[i] = x
            xs = full
        return optree.tree_unflatten(self.treedef, list(xs))


def _first_device(xs: Sequence[torch.Tensor]) -> torch.device:
    return xs[0].device if xs else torch.device("cpu")


def _params_device(params: Any) -> torch.device:
    leaves = optree.tree_leaves(params, namespace=_NS)
    for x in leaves:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


def _count_like(params: Any) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int32, device=_params_device(params))


def safe_int32_increment(count: torch.Tensor) -> torch.Tensor:
    """``count + 1``, saturating at the largest int32 instead of wrapping (optax semantics)."""
    return torch.where(count < _INT32_MAX, count + 1, count)


def _on(x: Scalar, device: torch.device) -> Scalar:
    """A tensor hyperparameter moved to ``device`` (Python numbers are returned unchanged)."""
    if isinstance(x, torch.Tensor) and x.device != device:
        return x.to(device)
    return x


def _fpow(base: Scalar, count: torch.Tensor) -> torch.Tensor:
    """``base ** count`` in float32 for a Python or tensor ``base`` and an integer tensor count."""
    c = count.to(torch.float32)
    if isinstance(base, torch.Tensor):
        return torch.pow(base.to(torch.float32), c)
    return torch.pow(float(base), c)


def _bias_correction(decay: Scalar, count: torch.Tensor) -> torch.Tensor:
    return 1 - _fpow(decay, count)


def _blocks(xs: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """Index ranges of consecutive leaves holding about ``BLOCK_ELEMENTS`` elements each."""
    n = len(xs)
    if n < 2 or xs[0].device.type != "cpu" or _backend.is_tracing():
        return [(0, n)]
    bounds, start, acc = [], 0, 0
    for i, x in enumerate(xs):
        acc += x.numel()
        if acc >= BLOCK_ELEMENTS:
            bounds.append((start, i + 1))
            start, acc = i + 1, 0
    if start < n:
        bounds.append((start, n))
    return bounds


def _blocked(kernel: Callable[..., tuple], n_out: int, *lists: Sequence | None) -> tuple[list, ...]:
    """Run ``kernel`` on aligned slices of ``lists`` (None stays None) and join its outputs."""
    bounds = _blocks(lists[0])
    if len(bounds) == 1:
        return tuple(list(o) for o in kernel(*lists))
    outs: tuple[list, ...] = tuple([] for _ in range(n_out))
    for a, b in bounds:
        res = kernel(*(None if lst is None else lst[a:b] for lst in lists))
        for o, r in zip(outs, res):
            o.extend(r)
    return outs


def _sc(xs: list, s: Scalar) -> Any:
    """A scalar operand for a foreach add/sub/lerp/clamp over ``xs``.

    Under tracing, a tensor scalar is passed as a list of 0-d tensors: dynamo traces that form
    without a graph break, while the single-tensor overloads of these ops would read the value
    on the host. Eagerly the single-tensor overload keeps CUDA's fused foreach kernels.
    """
    if isinstance(s, torch.Tensor) and _backend.is_tracing():
        return [s] * len(xs)
    return s


def _axpy(xs: list, ys: list, a: Scalar) -> list:
    """``x + a * y`` for each pair, as new tensors."""
    if not isinstance(a, torch.Tensor):
        return list(torch._foreach_add(xs, ys, alpha=a))
    if xs[0].device.type == "cpu":
        return list(torch._foreach_addcmul(xs, ys, [a] * len(ys)))
    out = torch._foreach_mul(ys, a)
    torch._foreach_add_(out, xs)
    return list(out)


def _axpy_(xs: list, ys: list, a: Scalar) -> None:
    """``x += a * y`` in place (``xs`` must be tensors created by the caller)."""
    if not isinstance(a, torch.Tensor):
        torch._foreach_add_(xs, ys, alpha=a)
    elif xs[0].device.type == "cpu":
        torch._foreach_addcmul_(xs, ys, [a] * len(ys))
    else:
        torch._foreach_add_(xs, torch._foreach_mul(ys, a))


def _cast_list(xs: list, dtypes: Sequence[torch.dtype]) -> list:
    return [x if x.dtype == d else x.to(d) for x, d in zip(xs, dtypes)]


def _like_dtypes(xs: list, refs: list) -> list:
    return _cast_list(xs, [r.dtype for r in refs])


def _promoted(*lists: list) -> tuple[list, ...]:
    """The aligned lists cast leaf by leaf to their common dtype (no copy when they agree)."""
    dts = [x.dtype for x in lists[0]]
    if all([x.dtype for x in other] == dts for other in lists[1:]):
        return lists
    dtypes = []
    for xs in zip(*lists):
        d = xs[0].dtype
        for x in xs[1:]:
            d = torch.promote_types(d, x.dtype)
        dtypes.append(d)
    return tuple(_cast_list(lst, dtypes) for lst in lists)


def _ema_sq(gs: list, nus: list, decay: Scalar) -> list:
    """``(1 - decay) * g**2 + decay * nu`` as new tensors (computed as a lerp from ``g**2``)."""
    out = torch._foreach_mul(gs, gs)
    torch._foreach_lerp_(out, _like_dtypes(nus, gs), _sc(out, decay))
    return list(out)


def _ema(gs: list, mus: list, decay: Scalar) -> list:
    """``(1 - decay) * g + decay * mu`` as new tensors."""
    return list(torch._foreach_lerp(_like_dtypes(mus, gs), gs, _sc(gs, 1 - decay)))


# --------------------------------------------------------------------------------------------
# States (optax's names and fields)
# --------------------------------------------------------------------------------------------

ScaleState = EmptyState
AddDecayedWeightsState = EmptyState


class ScaleByScheduleState(NamedTuple):
    """The step count of :func:`scale_by_schedule` (int32 scalar tensor)."""

    count: torch.Tensor


class ScaleByAdamState(NamedTuple):
    """Adam's step count, first moment ``mu`` and second moment ``nu``."""

    count: torch.Tensor
    mu: Any
    nu: Any


class ScaleByRmsState(NamedTuple):
    """The moving average of squared updates of :func:`scale_by_rms`."""

    nu: Any


class ScaleByRmsWithCountState(NamedTuple):
    """:class:`ScaleByRmsState` with a step count (``bias_correction=True``)."""

    count: torch.Tensor
    nu: Any


class ScaleByRStdDevState(NamedTuple):
    """Moving averages of updates and of their squares (:func:`scale_by_stddev`)."""

    mu: Any
    nu: Any


class ScaleByRStdDevWithCountState(NamedTuple):
    """:class:`ScaleByRStdDevState` with a step count (``bias_correction=True``)."""

    count: torch.Tensor
    mu: Any
    nu: Any


class TraceState(NamedTuple):
    """The momentum accumulator of :func:`trace`."""

    trace: Any


# --------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------


def _scaled(updates: Any, step_size: Scalar) -> Any:
    lv = _Leaves(updates)
    if not lv.xs:
        return updates
    return lv.build(torch._foreach_mul(lv.xs, _on(step_size, _first_device(lv.xs))))


def scale(step_size: Scalar) -> GradientTransformation:
    """Multiply every update by ``step_size`` (a number or a 0-d tensor)."""

    def init(params):
        del params
        return ScaleState()

    def update(updates, state, params=None, **extra):
        del params, extra
        return _scaled(updates, step_size), state

    return GradientTransformation(init, update)


def scale_by_schedule(step_size_fn: Callable[[torch.Tensor], Scalar]) -> GradientTransformation:
    """Multiply updates by ``step_size_fn(count)``, ``count`` being the number of past updates.

    The count is an int32 tensor, so the schedule is evaluated with tensor arithmetic and a
    compiled step does not recompile as it advances.
    """

    def init(params):
        return ScaleByScheduleState(count=_count_like(params))

    def update(updates, state, params=None, **extra):
        del params, extra
        step_size = step_size_fn(state.count)
        return _scaled(updates, step_size), ScaleByScheduleState(safe_int32_increment(state.count))

    return GradientTransformation(init, update)


def _signed_schedule(learning_rate: Callable, sign: float) -> Callable:
    def fn(count):
        return sign * learning_rate(count)

    return fn


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    """Scale updates by ``-learning_rate`` (or ``+learning_rate`` with ``flip_sign=False``).

    ``learning_rate`` is a number, a 0-d tensor, or a schedule ``count -> value``; a schedule
    gives :func:`scale_by_schedule`'s state, a constant gives :func:`scale`'s (empty) state.
    """
    sign = -1.0 if flip_sign else 1.0
    if callable(learning_rate):
        return scale_by_schedule(_signed_schedule(learning_rate, sign))
    return scale(sign * learning_rate)


# --------------------------------------------------------------------------------------------
# Adam
# --------------------------------------------------------------------------------------------


def _adam_kernel(
    gs, ms, vs, ps, *, b1, b2, eps, eps_root, nesterov, bc1, bc1_next, bc2, lr, wd, wd_keep
):
    """Adam's moments and direction on aligned leaf lists, optionally fused with optax's
    ``add_decayed_weights`` (``wd``) and ``scale_by_learning_rate`` (``lr``).

    Returns ``(updates, mu, nu)``; mu is in the dtype of the updates (the caller casts).
    ``updates = mu_hat / (sqrt(nu_hat + eps_root) + eps)`` with ``mu_hat = mu / bc1`` and
    ``nu_hat = nu / bc2``, evaluated as ``mu / (c * sqrt(nu + eps_root * bc2) + e)`` with
    ``c = bc1 / sqrt(bc2)`` and ``e = eps * bc1`` (the same quantity, one pass fewer).
    """
    if not gs:
        return [], [], []
    mu = _ema(gs, ms, b1)
    nu = _ema_sq(gs, vs, b2)
    sqrt_bc2 = torch.sqrt(bc2)
    if isinstance(eps_root, (int, float)) and eps_root == 0:
        denom = torch._foreach_sqrt(nu)
    else:
        denom = torch._foreach_add(nu, _sc(nu, eps_root * bc2))
        torch._foreach_sqrt_(denom)
    if nesterov:
        # mu_hat = b1 * mu / bc1(t+1) + (1 - b1) * g / bc1(t)
        num = torch._foreach_mul(mu, b1 / bc1_next)
        _axpy_(num, gs, (1 - b1) / bc1)
        torch._foreach_div_(denom, sqrt_bc2)
        torch._foreach_add_(denom, _sc(denom, eps))
    else:
        num = mu
        torch._foreach_mul_(denom, bc1 / sqrt_bc2)
        torch._foreach_add_(denom, _sc(denom, eps * bc1))
    upd = torch._foreach_div(num, denom)
    if wd is not None:
        keep_ps = ps if wd_keep is None else [p for p, k in zip(ps, wd_keep) if k]
        keep_us = upd if wd_keep is None else [u for u, k in zip(upd, wd_keep) if k]
        if keep_us:
            _axpy_(keep_us, _like_dtypes(keep_ps, keep_us), wd)
    if lr is not None:
        torch._foreach_mul_(upd, lr)
    return list(upd), mu, nu


_FUSED_ADAMW = getattr(torch, "_fused_adamw_", None)
_FUSED_DTYPES = {torch.float32, torch.float64}
#: Leaves smaller than this take the foreach path even when the fused CPU kernel applies.
FUSED_MIN_ELEMENTS = 1 << 15


def _fused_eligible(gs, ms, vs, ps, b1, b2, eps, eps_root, nesterov) -> bool:
    """Whether torch's single-pass CPU Adam kernel computes exactly this update.

    It takes Python-number betas and eps, has no ``eps_root`` or Nesterov moment, needs one
    dtype per leaf across gradient, moments and parameter, and has no autograd formula.
    """
    if _FUSED_ADAMW is None or nesterov or _backend.is_tracing():
        return False
    if any(isinstance(h, torch.Tensor) for h in (b1, b2, eps)):
        return False
    if not (isinstance(eps_root, (int, float)) and eps_root == 0):
        return False
    lists = (gs, ms, vs) if ps is None else (gs, ms, vs, ps)
    dts = [g.dtype for g in gs]
    if not set(dts) <= _FUSED_DTYPES:
        return False
    if any([x.dtype for x in lst] != dts for lst in lists[1:]):
        return False
    if not all(x.is_cpu for lst in lists for x in lst):
        return False
    if torch.is_grad_enabled() and any(x.requires_grad for lst in lists for x in lst):
        return False
    return True


def _adam_fused_cpu(gs, ms, vs, ps, keep, *, step, b1, b2, eps, lr, wd, grad_scale=None):
    """:func:`_adam_kernel` through ``torch._fused_adamw_``, one pass per leaf, purely.

    The kernel works in place, so it runs on tensors created here: copies of the moments, and
    an output buffer that starts at ``lr * wd * params`` (0 without decay) and from which the
    kernel subtracts ``-lr * adam_update`` (``lr`` being the final multiplier, ``-1`` for
    :func:`scale_by_adam` alone). ``grad_scale`` divides the gradients inside the kernel (how
    a preceding clip's factor is applied without a pass of its own). Same formula as optax;
    rounding differs by a few ulps.
    """
    if not gs:
        return [], [], []
    mu, nu = _copies(ms), _copies(vs)  # the kernel updates them in place
    mult = 1.0 if lr is None else lr
    if wd is None:
        out = torch._foreach_mul(gs, 0.0)
    else:
        k = mult * wd
        if keep is None or all(keep):
            out = torch._foreach_mul(ps, k)
        else:
            zero = torch.zeros_like(k) if isinstance(k, torch.Tensor) else 0.0
            srcs = [p if kp else g for p, g, kp in zip(ps, gs, keep)]
            out = torch._foreach_mul(srcs, [k if kp else zero for kp in keep])
    _FUSED_ADAMW(
        out, gs, mu, nu, [], [step] * len(gs), lr=-mult, beta1=float(b1), beta2=float(b2),
        weight_decay=0.0, eps=float(eps), amsgrad=False, maximize=False, grad_scale=grad_scale,
    )
    return list(out), list(mu), list(nu)


def _copies(xs: list) -> list:
    """Exact copies of the tensors (one foreach copy into fresh buffers)."""
    out = [torch.empty_like(x) for x in xs]
    torch._foreach_copy_(out, xs)
    return out


def _adam_fused_cpu_apply(gs, ms, vs, ps, keep, *, step, b1, b2, eps, lr, wd, grad_scale, donate):
    """Adam applied to the parameters inside ``torch._fused_adamw_``: ``(new_params, mu, nu)``.

    ``lr`` is the (negated) final multiplier as in :func:`_adam_fused_cpu`; with ``wd`` the
    kernel's decoupled decay ``p * (1 - lr * wd)`` is torch.optim.AdamW's, on the leaves that
    ``keep`` selects. The kernel writes in place: into copies of the parameters and moments,
    or with ``donate`` into the given tensors themselves.
    """
    if not gs:
        return [], [], []
    if donate:
        new_p, mu, nu = list(ps), list(ms), list(vs)
    else:
        new_p, mu, nu = _copies(ps), _copies(ms), _copies(vs)
    rate = -lr
    decay = 0.0 if wd is None else float(wd)
    groups = [(range(len(gs)), decay)]
    if decay and keep is not None and not all(keep):
        groups = [([i for i, k in enumerate(keep) if k], decay), ([i for i, k in enumerate(keep) if not k], 0.0)]
    for idx, w in groups:
        if not idx:
            continue
        _FUSED_ADAMW(
            [new_p[i] for i in idx], [gs[i] for i in idx], [mu[i] for i in idx],
            [nu[i] for i in idx], [], [step] * len(idx), lr=rate, beta1=float(b1),
            beta2=float(b2), weight_decay=w, eps=float(eps), amsgrad=False, maximize=False,
            grad_scale=grad_scale,
        )
    return new_p, mu, nu


def _split_by_size(big_fn, small_fn, n_out, *lists):
    """Run ``big_fn`` on the leaves of at least :data:`FUSED_MIN_ELEMENTS` elements and
    ``small_fn`` on the others, and put the results back in leaf order.

    torch's fused CPU kernel parallelises even tiny tensors, which costs a thread hand-off per
    leaf (milliseconds on a loaded machine); below the usual parallel grain the foreach path
    stays on one thread. With a single intra-op thread there is no hand-off to avoid.
    """
    xs = lists[0]
    threshold = FUSED_MIN_ELEMENTS if torch.get_num_threads() > 1 else 0
    big = [i for i, x in enumerate(xs) if x.numel() >= threshold]
    if len(big) == len(xs):
        return big_fn(*lists)
    if not big:
        return small_fn(*lists)
    bigset = set(big)
    small = [i for i in range(len(xs)) if i not in bigset]

    def pick(lst, idx):
        return None if lst is None else [lst[i] for i in idx]

    rb = big_fn(*(pick(lst, big) for lst in lists))
    rs = small_fn(*(pick(lst, small) for lst in lists))
    outs = []
    for ob, os_ in zip(rb, rs):
        merged: list = [None] * len(xs)
        for i, v in zip(big, ob):
            merged[i] = v
        for i, v in zip(small, os_):
            merged[i] = v
        outs.append(merged)
    return tuple(outs)


def _adam_step(
    updates,
    state: ScaleByAdamState,
    params,
    *,
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype,
    nesterov,
    lr=None,
    wd=None,
    wd_mask=None,
    input_scale=None,
    apply=False,
    donate=False,
    input_norm=None,
):
    """One Adam update over whole trees; ``lr``/``wd`` fuse the alias's later transformations.

    ``lr`` multiplies the final update (pass ``-learning_rate``); ``wd`` adds ``wd * params``
    before it, on the leaves selected by ``wd_mask`` (a per-leaf list of bools or None).
    ``input_scale`` (a 0-d tensor) multiplies the gradients first: the factor of a preceding
    :func:`~fctc.optim.clip_by_global_norm`, applied inside the fused kernel when it runs.
    With ``apply`` the first result is ``params + updates`` instead of ``updates`` (see
    :func:`~fctc.optim.update_and_apply`), written into the given buffers when ``donate`` and
    the gradients are finite (``input_norm``, their norm when the caller has it, tells).
    """
    lv = _Leaves(updates)
    count = safe_int32_increment(state.count)
    gs = lv.xs
    if not gs:
        return (params if apply else updates), ScaleByAdamState(count, state.mu, state.nu)
    dev = _first_device(gs)
    ms = lv.take(state.mu, "state's mu")
    vs = lv.take(state.nu, "state's nu")
    ps = None
    if wd is not None or apply:
        if params is None:
            raise ValueError("adamw: weight decay needs the parameters; call update(grads, state, params)")
        ps = lv.take(params, "params")
    b1, b2, eps, eps_root = (_on(h, dev) for h in (b1, b2, eps, eps_root))
    lr, wd = _on(lr, dev), _on(wd, dev)
    wd_keep = wd_mask
    gs, ms_c, vs_c = _promoted(gs, ms, vs)
    # Donation (decided once, on the host) never lets non-finite gradients reach the donated
    # buffers: the caller can still discard the (non-finite) result and keep its old state,
    # as the train step does. A finite norm handed over by a clip proves them finite.
    donate = (
        apply and donate and _can_donate(ps, ms_c, vs_c, gs)
        and bool(_tree.all_finite(gs, input_norm))
    )

    bc1 = _bias_correction(b1, count).to(dev)
    bc2 = _bias_correction(b2, count).to(dev)
    bc1_next = _bias_correction(b1, safe_int32_increment(count)).to(dev) if nesterov else None

    def foreach_kernel(gs_, ms_, vs_, ps_, keep_):
        if input_scale is not None:
            gs_ = list(torch._foreach_mul(gs_, input_scale.to(dev)))
        upd_, mu_, nu_ = _adam_kernel(
            gs_, ms_, vs_, ps_, b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov,
            bc1=bc1, bc1_next=bc1_next, bc2=bc2, lr=lr, wd=wd, wd_keep=keep_,
        )
        if apply:
            return _added(ps_, upd_, donate, checked=True), mu_, nu_
        return upd_, mu_, nu_

    kernel = foreach_kernel
    if _fused_eligible(gs, ms_c, vs_c, ps, b1, b2, eps, eps_root, nesterov):
        step = count.to(torch.float32)
        grad_scale = None
        # A factor of exactly 1 (a clip that did not clip) needs no rescaling at all; this
        # path runs eagerly on the CPU, where reading the factor costs no synchronisation.
        if input_scale is not None and bool(input_scale != 1):
            grad_scale = torch.reciprocal(input_scale.to(device=dev, dtype=torch.float32))
        def fused_kernel(gs_, ms_, vs_, ps_, keep_):
            scale_ = grad_scale
            if scale_ is not None and not donate:
                # Given a grad_scale, the kernel writes the rescaled gradients back into its
                # grads argument: unless they were donated, it gets rescaled copies instead
                # (the same float32 division, so the same values).
                gs_, scale_ = list(torch._foreach_div(gs_, scale_)), None
            if apply:
                return _adam_fused_cpu_apply(
                    gs_, ms_, vs_, ps_, keep_, step=step, b1=b1, b2=b2, eps=eps, lr=lr, wd=wd,
                    grad_scale=scale_, donate=donate,
                )
            return _adam_fused_cpu(
                gs_, ms_, vs_, ps_, keep_, step=step, b1=b1, b2=b2, eps=eps, lr=lr, wd=wd,
                grad_scale=scale_,
            )

        def kernel(gs_, ms_, vs_, ps_, keep_):
            return _split_by_size(fused_kernel, foreach_kernel, 3, gs_, ms_, vs_, ps_, keep_)

    upd, mu, nu = _blocked(kernel, 3, gs, ms_c, vs_c, ps, wd_keep)
    mu = _like_dtypes(mu, ms)  # mu_dtype (or the parameters' dtype) for storage
    nu = _like_dtypes(nu, vs)
    state = ScaleByAdamState(count, lv.build(mu), lv.build(nu))
    if apply:  # parameters without an update (None) stay as they are
        fill = None if lv.idx is None else lv.treedef.flatten_up_to(params)
        return lv.build(upd, fill=fill), state
    return lv.build(upd), state


def _adam_init(params, mu_dtype):
    leaves, spec = optree.tree_flatten(params, namespace=_NS)
    mu = optree.tree_unflatten(spec, [torch.zeros_like(p, dtype=mu_dtype) for p in leaves])
    nu = optree.tree_unflatten(spec, [torch.zeros_like(p) for p in leaves])
    return ScaleByAdamState(count=_count_like(params), mu=mu, nu=nu)


def scale_by_adam(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Rescale updates by Adam's bias-corrected moment ratio (Kingma & Ba, 2014).

    ``mu = b1 * mu + (1 - b1) * g``, ``nu = b2 * nu + (1 - b2) * g**2``, and the update is
    ``mu_hat / (sqrt(nu_hat + eps_root) + eps)`` with ``mu_hat = mu / (1 - b1**t)``,
    ``nu_hat = nu / (1 - b2**t)``. ``nesterov=True`` uses Dozat's (2016) Nesterov moment
    ``b1 * mu / (1 - b1**(t+1)) + (1 - b1) * g / (1 - b1**t)``. ``mu_dtype`` stores the first
    moment in another dtype (e.g. ``torch.bfloat16``).
    """

    def init(params):
        return _adam_init(params, mu_dtype)

    def update(updates, state, params=None, **extra):
        del params, extra
        return _adam_step(
            updates, state, None, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
            mu_dtype=mu_dtype, nesterov=nesterov,
        )

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------------------------
# RMS and centred RMS
# --------------------------------------------------------------------------------------------


def _rms_scale(gs, nu_hat, mu_hat, eps, eps_in_sqrt):
    """``g * rsqrt(nu_hat - mu_hat**2 + eps)`` or ``g / (sqrt(nu_hat - mu_hat**2) + eps)``;
    ``mu_hat=None`` drops the centring term."""
    d = None if mu_hat is None else torch._foreach_addcmul(nu_hat, mu_hat, mu_hat, value=-1)
    if eps_in_sqrt:
        if d is None:
            d = torch._foreach_add(nu_hat, _sc(nu_hat, eps))
        else:
            torch._foreach_add_(d, _sc(d, eps))
        torch._foreach_rsqrt_(d)
        return list(torch._foreach_mul(gs, d))
    if d is None:
        d = torch._foreach_sqrt(nu_hat)
    else:
        torch._foreach_sqrt_(d)
    torch._foreach_add_(d, _sc(d, eps))
    return list(torch._foreach_div(gs, d))


def scale_by_rms(
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    """Divide updates by the root of a moving average of their squares (RMSProp's scaling).

    ``nu = decay * nu + (1 - decay) * g**2``; the update is ``g / sqrt(nu_hat + eps)`` with
    ``eps_in_sqrt`` (optax's default) or ``g / (sqrt(nu_hat) + eps)`` without (torch's RMSprop).
    ``nu_hat = nu / (1 - decay**t)`` with ``bias_correction``, else ``nu``; ``nu`` starts at
    ``initial_scale``.
    """

    def init(params):
        leaves, spec = optree.tree_flatten(params, namespace=_NS)
        nu = optree.tree_unflatten(spec, [_full_like(p, initial_scale) for p in leaves])
        if bias_correction:
            return ScaleByRmsWithCountState(count=_count_like(params), nu=nu)
        return ScaleByRmsState(nu=nu)

    def update(updates, state, params=None, **extra):
        del params, extra
        lv = _Leaves(updates)
        count = safe_int32_increment(state.count) if bias_correction else None
        gs = lv.xs
        if not gs:
            new = ScaleByRmsWithCountState(count, state.nu) if bias_correction else state
            return updates, new
        dev = _first_device(gs)
        nus = lv.take(state.nu, "state's nu")
        d, e = _on(decay, dev), _on(eps, dev)
        bc = _bias_correction(d, count).to(dev) if bias_correction else None
        gs, nus_c = _promoted(gs, nus)

        def kernel(gs_, nus_):
            nu = _ema_sq(gs_, nus_, d)
            nu_hat = torch._foreach_div(nu, bc) if bc is not None else nu
            return _rms_scale(gs_, nu_hat, None, e, eps_in_sqrt), nu

        upd, nu = _blocked(kernel, 2, gs, nus_c)
        nu = lv.build(_like_dtypes(nu, nus))
        if bias_correction:
            return lv.build(upd), ScaleByRmsWithCountState(count, nu)
        return lv.build(upd), ScaleByRmsState(nu)

    return GradientTransformation(init, update)


def scale_by_stddev(
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    """Divide updates by a moving estimate of their standard deviation (centred RMSProp).

    ``mu`` and ``nu`` are moving averages of ``g`` and ``g**2``; the update is
    ``g / sqrt(nu_hat - mu_hat**2 + eps)`` (or ``g / (sqrt(nu_hat - mu_hat**2) + eps)`` when
    ``eps_in_sqrt=False``, torch's ``RMSprop(centered=True)``).
    """

    def init(params):
        leaves, spec = optree.tree_flatten(params, namespace=_NS)
        mu = optree.tree_unflatten(spec, [torch.zeros_like(p) for p in leaves])
        nu = optree.tree_unflatten(spec, [_full_like(p, initial_scale) for p in leaves])
        if bias_correction:
            return ScaleByRStdDevWithCountState(count=_count_like(params), mu=mu, nu=nu)
        return ScaleByRStdDevState(mu=mu, nu=nu)

    def update(updates, state, params=None, **extra):
        del params, extra
        lv = _Leaves(updates)
        count = safe_int32_increment(state.count) if bias_correction else None
        gs = lv.xs
        if not gs:
            if bias_correction:
                return updates, ScaleByRStdDevWithCountState(count, state.mu, state.nu)
            return updates, state
        dev = _first_device(gs)
        mus = lv.take(state.mu, "state's mu")
        nus = lv.take(state.nu, "state's nu")
        d, e = _on(decay, dev), _on(eps, dev)
        bc = _bias_correction(d, count).to(dev) if bias_correction else None
        gs, mus_c, nus_c = _promoted(gs, mus, nus)

        def kernel(gs_, mus_, nus_):
            mu = _ema(gs_, mus_, d)
            nu = _ema_sq(gs_, nus_, d)
            mu_hat = torch._foreach_div(mu, bc) if bc is not None else mu
            nu_hat = torch._foreach_div(nu, bc) if bc is not None else nu
            return _rms_scale(gs_, nu_hat, mu_hat, e, eps_in_sqrt), mu, nu

        upd, mu, nu = _blocked(kernel, 3, gs, mus_c, nus_c)
        mu = lv.build(_like_dtypes(mu, mus))
        nu = lv.build(_like_dtypes(nu, nus))
        if bias_correction:
            return lv.build(upd), ScaleByRStdDevWithCountState(count, mu, nu)
        return lv.build(upd), ScaleByRStdDevState(mu, nu)

    return GradientTransformation(init, update)


def _full_like(p: torch.Tensor, value: Scalar) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=p.device, dtype=p.dtype).expand(p.shape).clone()
    return torch.full_like(p, value)


# --------------------------------------------------------------------------------------------
# Momentum and weight decay
# --------------------------------------------------------------------------------------------


def trace(
    decay: Scalar, nesterov: bool = False, accumulator_dtype: torch.dtype | None = None
) -> GradientTransformation:
    """Momentum: ``trace = g + decay * trace``; the update is ``trace`` (or, with ``nesterov``,
    ``g + decay * trace``).

    This is torch's SGD momentum buffer with ``dampening=0``. ``accumulator_dtype`` stores the
    trace in another dtype.
    """

    def init(params):
        leaves, spec = optree.tree_flatten(params, namespace=_NS)
        tr = [torch.zeros_like(p, dtype=accumulator_dtype) for p in leaves]
        return TraceState(trace=optree.tree_unflatten(spec, tr))

    def update(updates, state, params=None, **extra):
        del params, extra
        lv = _Leaves(updates)
        gs = lv.xs
        if not gs:
            return updates, state
        ts = lv.take(state.trace, "state's trace")
        d = _on(decay, _first_device(gs))
        gs, ts_c = _promoted(gs, ts)

        def kernel(gs_, ts_):
            new = _axpy(gs_, ts_, d)
            out = _axpy(gs_, new, d) if nesterov else new
            return out, new

        upd, new = _blocked(kernel, 2, gs, ts_c)
        new = _like_dtypes(new, ts)
        return lv.build(upd), TraceState(trace=lv.build(new))

    return GradientTransformation(init, update)


def add_decayed_weights(
    weight_decay: Scalar = 0.0, mask: Any | Callable[[Any], Any] | None = None
) -> GradientTransformation:
    """Add ``weight_decay * params`` to the updates (decoupled weight decay, as in AdamW).

    ``mask`` (a tree of bools shaped like the parameters, or a prefix of it, or a function
    ``params -> mask``) restricts the decay to the selected leaves, through
    :func:`fctc.optim.masked` as in optax.
    """

    def init(params):
        del params
        return AddDecayedWeightsState()

    def update(updates, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError(
                "add_decayed_weights needs the parameters: call update(updates, state, params)"
            )
        lv = _Leaves(updates)
        if not lv.xs:
            return updates, state
        ps = lv.take(params, "params")
        wd = _on(weight_decay, _first_device(lv.xs))
        out = _blocked(lambda u, p: (_axpy(u, _like_dtypes(p, u), wd),), 1, lv.xs, ps)[0]
        return lv.build(out), state

    tx = GradientTransformation(init, update)
    if mask is not None:
        from .wrappers import masked

        return masked(tx, mask)
    return tx
