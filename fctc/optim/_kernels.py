"""The optimiser kernels: cache blocking, the CPU form of ``axpy``, and Adam's two kernels.

Everything the optimisers do differently on an eager CPU to go fast lives here, behind named
entries (the train step's host shortcuts are :func:`fctc.backend.all_finite` and
:func:`fctc.backend.select`):

* :func:`blocked` runs a kernel over blocks of about :data:`BLOCK_ELEMENTS` elements of a long
  leaf list, so that intermediate results are still in cache when they are read again. The same
  elementwise operations run on the same values: results are identical with or without
  blocking. It is off under tracing and on accelerators.
* :func:`axpy` / :func:`axpy_` compute ``x + a * y``; a tensor ``a`` takes one ``addcmul`` pass on
  the CPU and a multiply and an add elsewhere.
* :func:`adam` is the one entry for Adam's moments and direction. Its ``cpu_kernel`` argument
  (:data:`CPU_KERNELS`) picks the path: ``"fused"`` (the default) runs torch's single-pass CPU
  kernel ``torch._fused_adamw_`` wherever it computes exactly this update (eager, CPU, Python
  number betas and eps, no ``eps_root`` or Nesterov moment, one float32/float64 dtype per leaf,
  no autograd), the foreach formula elsewhere; ``"foreach"`` always the foreach formula;
  ``"split"`` the fused kernel only for leaves of at least :data:`FUSED_MIN_ELEMENTS` elements
  when torch runs more than one intra-op thread. Only ``"split"`` makes the rounding depend on
  ``torch.get_num_threads()``; the paths agree to rounding.

The fused kernel works in place, so it runs on copies of the moments (and, to apply the update,
of the parameters) and stays pure; only donated buffers are updated in place.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from .. import backend as _backend
from ._leaves import Scalar, add_scalar, bias_correction, ema, ema_sq, like_dtypes
from .base import _added, safe_int32_increment

#: Target number of elements per block when CPU updates are cache-blocked.
BLOCK_ELEMENTS = 1 << 18

#: With ``cpu_kernel="split"``, leaves smaller than this take the foreach path.
FUSED_MIN_ELEMENTS = 1 << 15

#: The values of ``cpu_kernel`` (see the module docstring).
CPU_KERNELS = ("fused", "foreach", "split")

_FUSED_ADAMW = torch._fused_adamw_ if hasattr(torch, "_fused_adamw_") else None  # torch >= 2.4 on CPU
_FUSED_DTYPES = {torch.float32, torch.float64}
_IS_CPU = operator.attrgetter("is_cpu")
_REQUIRES_GRAD = operator.attrgetter("requires_grad")


def check_cpu_kernel(cpu_kernel: str, where: str) -> str:
    """``cpu_kernel`` when it is one of :data:`CPU_KERNELS`, else a ValueError naming it."""
    if cpu_kernel not in CPU_KERNELS:
        raise ValueError(f"{where}: cpu_kernel must be one of {list(CPU_KERNELS)}, got {cpu_kernel!r}")
    return cpu_kernel


# --- cache blocking and axpy ------------------------------------------------------------------


def blocks(xs: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
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


def blocked(kernel: Callable[..., tuple], n_out: int, *lists: Sequence | None) -> tuple[list, ...]:
    """Run ``kernel`` on aligned slices of ``lists`` (None stays None) and join its outputs."""
    bounds = blocks(lists[0])
    if len(bounds) == 1:
        return tuple(list(o) for o in kernel(*lists))
    outs: tuple[list, ...] = tuple([] for _ in range(n_out))
    for a, b in bounds:
        res = kernel(*(None if lst is None else lst[a:b] for lst in lists))
        for o, r in zip(outs, res):
            o.extend(r)
    return outs


def axpy(xs: list, ys: list, a: Scalar) -> list:
    """``x + a * y`` for each pair, as new tensors."""
    if not isinstance(a, torch.Tensor):
        return list(torch._foreach_add(xs, ys, alpha=a))
    if xs[0].device.type == "cpu":
        return list(torch._foreach_addcmul(xs, ys, [a] * len(ys)))
    out = torch._foreach_mul(ys, a)
    torch._foreach_add_(out, xs)
    return list(out)


def axpy_(xs: list, ys: list, a: Scalar) -> None:
    """``x += a * y`` in place (``xs`` must be tensors created by the caller)."""
    if not isinstance(a, torch.Tensor):
        torch._foreach_add_(xs, ys, alpha=a)
    elif xs[0].device.type == "cpu":
        torch._foreach_addcmul_(xs, ys, [a] * len(ys))
    else:
        torch._foreach_add_(xs, torch._foreach_mul(ys, a))


# --- Adam -------------------------------------------------------------------------------------


class AdamHyper(NamedTuple):
    """Adam's hyperparameters, with the optional later steps of an alias fused in.

    ``lr`` multiplies the final update (the alias passes ``-learning_rate``; None for
    :func:`~fctc.optim.scale_by_adam`); ``wd`` adds ``wd * params`` before it (AdamW's decoupled
    decay; None for none); ``cpu_kernel`` is one of :data:`CPU_KERNELS`.
    """

    b1: Scalar
    b2: Scalar
    eps: Scalar
    eps_root: Scalar
    nesterov: bool
    lr: Scalar | None
    wd: Scalar | None
    cpu_kernel: str

    def on(self, device: torch.device) -> AdamHyper:
        """The same values with tensor hyperparameters moved to ``device``."""

        def move(x):
            return x.to(device) if isinstance(x, torch.Tensor) and x.device != device else x

        return self._replace(b1=move(self.b1), b2=move(self.b2), eps=move(self.eps),
                             eps_root=move(self.eps_root), lr=move(self.lr), wd=move(self.wd))


class _Corrections(NamedTuple):
    bc1: torch.Tensor
    bc2: torch.Tensor
    bc1_next: torch.Tensor | None


def adam(gs, ms, vs, ps, keep, count, h: AdamHyper, *, factor=None, apply=False, donate=False):
    """Adam over aligned leaf lists: ``(out, mu, nu)``, the one entry for every path.

    Args:
      gs, ms, vs: gradients and the two moments, in one dtype per leaf (see ``promoted``).
      ps: the parameters (needed for ``h.wd`` and ``apply``), or None.
      keep: per leaf, whether weight decay applies (None: every leaf).
      count: the new step count (int32 tensor).
      h: the hyperparameters, on the gradients' device.
      factor: a 0-d tensor multiplying the gradients first (a preceding clip's), or None.
      apply: return ``params + update`` instead of the update.
      donate: write the results into ``ps``, ``ms``, ``vs`` (and ``gs``); the caller has made
        sure that this is allowed and that the gradients are finite.

    Returns:
      ``(out, mu, nu)``: the updates (or new parameters) and the new moments, in the
      gradients' dtypes.
    """
    dev = gs[0].device
    bc = _Corrections(
        bias_correction(h.b1, count).to(dev),
        bias_correction(h.b2, count).to(dev),
        bias_correction(h.b1, safe_int32_increment(count)).to(dev) if h.nesterov else None,
    )
    foreach = functools.partial(_adam_foreach_kernel, h=h, bc=bc, factor=factor, apply=apply, donate=donate)
    kernel = foreach
    if _fused_applies(h, gs, ms, vs, ps):
        fused = _adam_fused_kernel(h, count, factor, apply, donate)
        if h.cpu_kernel == "split" and torch.get_num_threads() > 1:
            kernel = functools.partial(_split_by_size, fused, foreach, 3)
        else:
            kernel = fused
    return blocked(kernel, 3, gs, ms, vs, ps, keep)


def _adam_foreach_kernel(gs, ms, vs, ps, keep, *, h, bc, factor, apply, donate):
    """The foreach path of :func:`adam` on one block."""
    if factor is not None:
        gs = list(torch._foreach_mul(gs, factor.to(gs[0].device)))
    upd, mu, nu = _adam_foreach(gs, ms, vs, ps, keep, h, bc)
    if apply:
        return _added(ps, upd, donate, checked=True), mu, nu
    return upd, mu, nu


def _adam_foreach(gs, ms, vs, ps, keep, h: AdamHyper, bc: _Corrections):
    """Adam's moments and direction in foreach kernels, with ``h.wd`` and ``h.lr`` fused in.

    ``updates = mu_hat / (sqrt(nu_hat + eps_root) + eps)`` with ``mu_hat = mu / bc1`` and
    ``nu_hat = nu / bc2``, evaluated as ``mu / (c * sqrt(nu + eps_root * bc2) + e)`` with
    ``c = bc1 / sqrt(bc2)`` and ``e = eps * bc1`` (the same quantity, one pass fewer).
    Returns ``(updates, mu, nu)``; mu is in the dtype of the updates (the caller casts).
    """
    if not gs:
        return [], [], []
    mu = ema(gs, ms, h.b1)
    nu = ema_sq(gs, vs, h.b2)
    sqrt_bc2 = torch.sqrt(bc.bc2)
    if isinstance(h.eps_root, (int, float)) and h.eps_root == 0:
        denom = torch._foreach_sqrt(nu)
    else:
        denom = add_scalar(nu, h.eps_root * bc.bc2)
        torch._foreach_sqrt_(denom)
    if h.nesterov:
        # mu_hat = b1 * mu / bc1(t+1) + (1 - b1) * g / bc1(t)
        num = torch._foreach_mul(mu, h.b1 / bc.bc1_next)
        axpy_(num, gs, (1 - h.b1) / bc.bc1)
        torch._foreach_div_(denom, sqrt_bc2)
        add_scalar(denom, h.eps, inplace=True)
    else:
        num = mu
        torch._foreach_mul_(denom, bc.bc1 / sqrt_bc2)
        add_scalar(denom, h.eps * bc.bc1, inplace=True)
    upd = torch._foreach_div(num, denom)
    if h.wd is not None:
        keep_ps = ps if keep is None else [p for p, k in zip(ps, keep) if k]
        keep_us = upd if keep is None else [u for u, k in zip(upd, keep) if k]
        if keep_us:
            axpy_(keep_us, like_dtypes(keep_ps, keep_us), h.wd)
    if h.lr is not None:
        torch._foreach_mul_(upd, h.lr)
    return list(upd), mu, nu


def _fused_applies(h: AdamHyper, gs, ms, vs, ps) -> bool:
    """Whether torch's single-pass CPU Adam kernel computes exactly this update.

    It takes Python-number betas and eps, has no ``eps_root`` or Nesterov moment, needs one
    dtype per leaf across gradient, moments and parameter, and has no autograd formula.
    """
    if h.cpu_kernel == "foreach" or _FUSED_ADAMW is None or h.nesterov or _backend.is_tracing():
        return False
    if any(isinstance(x, torch.Tensor) for x in (h.b1, h.b2, h.eps)):
        return False
    if not (isinstance(h.eps_root, (int, float)) and h.eps_root == 0):
        return False
    lists = (gs, ms, vs) if ps is None else (gs, ms, vs, ps)
    dts = [g.dtype for g in gs]
    if not set(dts) <= _FUSED_DTYPES:
        return False
    if any([x.dtype for x in lst] != dts for lst in lists[1:]):
        return False
    if not all(map(_IS_CPU, itertools.chain(*lists))):
        return False
    return not (torch.is_grad_enabled() and any(map(_REQUIRES_GRAD, itertools.chain(*lists))))


def _adam_fused_kernel(h: AdamHyper, count, factor, apply: bool, donate: bool):
    """The fused path of :func:`adam` on one block, as a function of the leaf lists."""
    step = count.to(torch.float32)
    grad_scale = None
    # A factor of exactly 1 (a clip that did not clip) needs no rescaling at all; this path
    # runs eagerly on the CPU, where reading the factor costs no synchronisation.
    if factor is not None and bool(factor != 1):
        grad_scale = torch.reciprocal(factor.to(dtype=torch.float32))

    def kernel(gs, ms, vs, ps, keep):
        scale = grad_scale
        if scale is not None and not donate:
            # Given a grad_scale, the kernel writes the rescaled gradients back into its grads
            # argument: unless they were donated, it gets rescaled copies instead (the same
            # float32 division, so the same values).
            gs, scale = list(torch._foreach_div(gs, scale)), None
        if apply:
            return _adam_fused_apply(gs, ms, vs, ps, keep, step, h, scale, donate)
        return _adam_fused_update(gs, ms, vs, ps, keep, step, h, scale)

    return kernel


def _fused_call(ps, gs, ms, vs, step, h: AdamHyper, lr, weight_decay, grad_scale) -> None:
    """One ``torch._fused_adamw_`` call (in place on ``ps``, ``ms``, ``vs``)."""
    _FUSED_ADAMW(
        ps, gs, ms, vs, [], [step] * len(gs), lr=lr, beta1=float(h.b1), beta2=float(h.b2),
        weight_decay=weight_decay, eps=float(h.eps), amsgrad=False, maximize=False,
        grad_scale=grad_scale,
    )


def _adam_fused_update(gs, ms, vs, ps, keep, step, h: AdamHyper, grad_scale):
    """The update (not applied) through ``torch._fused_adamw_``, one pass per leaf, purely.

    The kernel works in place, so it runs on tensors created here: copies of the moments, and
    an output buffer that starts at ``lr * wd * params`` (0 without decay) and from which the
    kernel subtracts ``-lr * adam_update`` (``lr`` being the final multiplier, ``-1`` for
    :func:`~fctc.optim.scale_by_adam` alone). ``grad_scale`` divides the gradients inside the
    kernel. Same formula as optax; rounding differs by a few ulps.
    """
    if not gs:
        return [], [], []
    mu, nu = _copies(ms), _copies(vs)
    mult = 1.0 if h.lr is None else h.lr
    if h.wd is None:
        out = torch._foreach_mul(gs, 0.0)
    else:
        k = mult * h.wd
        if keep is None or all(keep):
            out = torch._foreach_mul(ps, k)
        else:
            zero = torch.zeros_like(k) if isinstance(k, torch.Tensor) else 0.0
            srcs = [p if kp else g for p, g, kp in zip(ps, gs, keep)]
            out = torch._foreach_mul(srcs, [k if kp else zero for kp in keep])
    _fused_call(out, gs, mu, nu, step, h, -mult, 0.0, grad_scale)
    return list(out), list(mu), list(nu)


def _adam_fused_apply(gs, ms, vs, ps, keep, step, h: AdamHyper, grad_scale, donate: bool):
    """Adam applied to the parameters inside ``torch._fused_adamw_``: ``(new_params, mu, nu)``.

    ``h.lr`` is the (negated) final multiplier as in :func:`_adam_fused_update`; with ``h.wd``
    the kernel's decoupled decay ``p * (1 - lr * wd)`` is torch.optim.AdamW's, on the leaves
    that ``keep`` selects. The kernel writes in place: into copies of the parameters and
    moments, or with ``donate`` into the given tensors themselves.
    """
    if not gs:
        return [], [], []
    if donate:
        new_p, mu, nu = list(ps), list(ms), list(vs)
    else:
        new_p, mu, nu = _copies(ps), _copies(ms), _copies(vs)
    decay = 0.0 if h.wd is None else float(h.wd)
    groups = [(range(len(gs)), decay)]
    if decay and keep is not None and not all(keep):
        groups = [([i for i, k in enumerate(keep) if k], decay), ([i for i, k in enumerate(keep) if not k], 0.0)]
    for idx, w in groups:
        if idx:
            _fused_call([new_p[i] for i in idx], [gs[i] for i in idx], [mu[i] for i in idx],
                        [nu[i] for i in idx], step, h, -h.lr, w, grad_scale)
    return new_p, mu, nu


def _copies(xs: list) -> list:
    """Fresh buffers holding the tensors' values, for the in-place kernel to work on: one
    ``_foreach_clone``, a single dispatch for all leaves (measured on one thread: about as fast
    as a ``clone`` per leaf on the tiny model's 35 leaves and faster on QuartzNet 5x5's 128,
    and faster than a ``_foreach_mul`` by 1 on both)."""
    return list(torch._foreach_clone(xs))


def _split_by_size(big_fn, small_fn, n_out, *lists):
    """Run ``big_fn`` on the leaves of at least :data:`FUSED_MIN_ELEMENTS` elements and
    ``small_fn`` on the others, and put the results back in leaf order (``cpu_kernel="split"``).

    torch's fused CPU kernel parallelises even tiny tensors, which costs a thread hand-off per
    leaf (milliseconds on a loaded machine); below the usual parallel grain the foreach path
    stays on one thread.
    """
    xs = lists[0]
    big = [i for i, x in enumerate(xs) if x.numel() >= FUSED_MIN_ELEMENTS]
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
        merged: list[Any] = [None] * len(xs)
        for i, v in zip(big, ob):
            merged[i] = v
        for i, v in zip(small, os_):
            merged[i] = v
        outs.append(merged)
    return tuple(outs)
