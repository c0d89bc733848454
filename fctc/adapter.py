"""``FunctionalModule``: an ``nn.Module`` view of a pure fctc model and its pytrees.

fctc models are ``Model(init, apply)`` pairs over parameter and state pytrees. Imperative code
(``torch.optim``, Lightning, thunder-speech, ``torch.compile(module)``, ``state_dict``
checkpoints) expects an ``nn.Module`` instead. :class:`FunctionalModule` bridges the two: it
registers every parameter leaf as an ``nn.Parameter`` and every state leaf as a buffer, nested
in plain sub-modules so that ``state_dict()`` keys are exactly the pytree paths joined with
``"."`` -- which, by the model contract, are the keys of the reference imperative module.
``forward`` calls ``model.apply`` on the live parameters, so gradients reach them and
``loss.backward()`` plus any ``torch.optim`` optimiser work unchanged; in train mode the new
state (running statistics) is written back into the buffers, as an imperative module would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from . import tree as _tree
from .nn.core import Model

__all__ = ["FunctionalModule"]


class _Node(nn.Module):
    """A plain container sub-module: it only holds parameters, buffers and children."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError(
            "FunctionalModule: a nested container was called directly; call the "
            "FunctionalModule itself"
        )


def _check_path(path: str, where: str) -> list[str]:
    parts = path.split(".")
    if any(p == "" for p in parts):
        raise ValueError(
            f"FunctionalModule: the {where} pytree has a leaf at {path!r}, which is not a valid "
            "state_dict key (empty component); use non-empty dict keys without '.'"
        )
    return parts


def _insertion_order(tree: Any, sorted_paths: list[str]) -> list[str]:
    # The leaf paths of ``tree`` with dicts walked in insertion order (other containers in
    # optree's order).
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(node, torch.Tensor):
            out.append(prefix)
        else:
            for p in _tree.paths(node):
                out.append(f"{prefix}.{p}" if prefix else p)

    walk(tree, "")
    if sorted(out) != sorted(sorted_paths):  # an exotic container: keep optree's order
        return list(sorted_paths)
    return out


def _order(params_keys: list[str], state_keys: list[str]) -> list[str]:
    # Children of one node in state_dict order: digit names (sequential indices) sort
    # numerically; otherwise parameter children first, then buffer-only children.
    keys = list(dict.fromkeys(params_keys + state_keys))
    if keys and all(k.isdigit() for k in keys):
        keys.sort(key=int)
    return keys


def _check_trees(p_leaves, s_leaves, p_paths: list[str], s_paths: list[str]) -> None:
    """Every leaf a tensor, and every ``"."``-joined path naming one tensor only."""
    for kind, leaves in (("params", p_leaves), ("state", s_leaves)):
        for x in leaves:
            if not isinstance(x, torch.Tensor):
                raise TypeError(
                    f"FunctionalModule: every {kind} leaf must be a tensor, got "
                    f"{type(x).__name__}"
                )
    for kind, paths_ in (("params", p_paths), ("state", s_paths)):
        if len(set(paths_)) != len(paths_):
            dup = sorted({p for p in paths_ if paths_.count(p) > 1})
            raise ValueError(
                f"FunctionalModule: the {kind} keys {dup} are ambiguous (a dict key holds "
                "a '.'); state_dict keys join the pytree path with '.'"
            )
    clash = sorted(set(p_paths) & set(s_paths))
    if clash:
        raise ValueError(
            f"FunctionalModule: keys {clash} are both a parameter and a state entry; "
            "a state_dict key can only name one tensor"
        )


class FunctionalModule(nn.Module):
    """An ``nn.Module`` holding ``(model, params, state)``; ``forward`` runs ``model.apply``.

    Args:
        model: an fctc :class:`~fctc.nn.core.Model`.
        params: its parameter pytree (registered as ``nn.Parameter``; floating leaves
            require grad).
        state: its state pytree (registered as buffers); ``None`` for a stateless model.
        copy: when True (default) the module owns clones of the given tensors, so optimiser
            steps on the module never change the caller's pytrees; ``copy=False`` aliases them.

    ``state_dict()``, ``named_parameters()`` and ``named_buffers()`` use the pytree paths
    joined with ``"."`` (``"0.mconv.2.layer.0.running_mean"``), i.e. the reference imperative
    module's keys, so checkpoints load both ways. ``forward(*inputs, key=None, **kwargs)``
    calls ``model.apply(params, state, *inputs, train=self.training, key=key, **kwargs)`` and
    returns its outputs; in train mode the returned state is copied into the buffers (without
    gradient), so running statistics update as in an imperative module. ``.to(device/dtype)``,
    ``torch.compile(module)`` and ``torch.optim`` work as for any module.

    Raises:
        TypeError: ``model`` is not an fctc Model, or a leaf is not a tensor.
        ValueError: two leaves share a ``state_dict`` key (a dict key holding ``"."``, or a key
            both in ``params`` and ``state``), or a key has an empty component.
    """

    def __init__(self, model: Model, params: Any, state: Any = None, *, copy: bool = True):
        super().__init__()
        if isinstance(model, nn.Module) or not (
            callable(getattr(model, "init", None)) and callable(getattr(model, "apply", None))
        ):
            raise TypeError(
                "FunctionalModule: model must be an fctc Model (init, apply), got "
                f"{type(model).__name__}"
            )
        state = {} if state is None else state
        # Plain attributes (not in _modules) so that they never appear in the state_dict.
        object.__setattr__(self, "_fctc_model", model)
        p_leaves, p_def = _tree.flatten(params)
        s_leaves, s_def = _tree.flatten(state)
        object.__setattr__(self, "_fctc_defs", (p_def, s_def))
        p_paths = _tree.paths(params)
        s_paths = _tree.paths(state)
        _check_trees(p_leaves, s_leaves, p_paths, s_paths)
        # optree sorts dict keys; registration follows the dicts' insertion order instead,
        # which is the reference module's state_dict order.
        p_ordered = _insertion_order(params, p_paths)
        s_ordered = _insertion_order(state, s_paths)
        # Build the container tree in state_dict order, then fill in leaves.
        self._build(
            [_check_path(p, "params") for p in p_ordered],
            [_check_path(p, "state") for p in s_ordered],
        )
        p_by_path = dict(zip(p_paths, p_leaves))
        s_by_path = dict(zip(s_paths, s_leaves))
        for path in p_ordered:
            owner, name = self._owner(path)
            x = p_by_path[path]
            x = x.detach().clone() if copy else x.detach()
            owner._parameters[name] = nn.Parameter(x, requires_grad=x.is_floating_point())
        for path in s_ordered:
            owner, name = self._owner(path)
            x = s_by_path[path]
            owner._buffers[name] = x.detach().clone() if copy else x.detach()
        # Slots follow optree's leaf order, so the pytrees can be rebuilt with unflatten.
        slots: list[tuple[nn.Module, str, bool]] = []
        for paths_, is_param in ((p_paths, True), (s_paths, False)):
            for path in paths_:
                owner, name = self._owner(path)
                slots.append((owner, name, is_param))
        object.__setattr__(self, "_fctc_slots", slots)
        object.__setattr__(self, "_fctc_paths", (p_paths, s_paths))

    # -- construction helpers -------------------------------------------------------------

    def _build(self, p_parts: list[list[str]], s_parts: list[list[str]]) -> None:
        # Every path's leading components become nested containers, inserted directly into
        # _modules (so names such as "training" or "forward" cannot clash with attributes).
        def children(parts_list: list[list[str]], prefix: list[str]) -> list[str]:
            n = len(prefix)
            return [p[n] for p in parts_list if len(p) > n + 1 and p[:n] == prefix]

        def grow(node: nn.Module, prefix: list[str]) -> None:
            for name in _order(children(p_parts, prefix), children(s_parts, prefix)):
                if name in node._modules:
                    continue
                child = _Node()
                node._modules[name] = child
                grow(child, prefix + [name])

        grow(self, [])

    def _owner(self, path: str) -> tuple[nn.Module, str]:
        parts = path.split(".")
        node: nn.Module = self
        for p in parts[:-1]:
            node = node._modules[p]
        return node, parts[-1]

    # -- the functional view ----------------------------------------------------------------

    @property
    def model(self) -> Model:
        """The wrapped model.

        Returns:
            The fctc ``Model`` given to the constructor.
        """
        return self._fctc_model

    def _live(self) -> tuple[Any, Any]:
        # The registered tensors themselves (not detached), so autograd reaches them.
        p_def, s_def = self._fctc_defs
        ps, ss = [], []
        for owner, name, is_param in self._fctc_slots:
            if is_param:
                ps.append(owner._parameters[name])
            else:
                ss.append(owner._buffers[name])
        return _tree.unflatten(p_def, ps), _tree.unflatten(s_def, ss)

    @property
    def params(self) -> Any:
        """The current parameters.

        Later in-place updates (``optimizer.step()``, ``load_state_dict``) show through; take
        ``fctc.tree.map(torch.clone, module.params)`` for a snapshot.

        Returns:
            The parameter pytree as detached tensors that SHARE storage with the module.
        """
        p, _ = self._live()
        return _tree.map(lambda x: x.detach(), p)

    @property
    def state(self) -> Any:
        """The current state (buffers).

        Returns:
            The state pytree, detached and sharing storage like :attr:`params`.
        """
        _, s = self._live()
        return _tree.map(lambda x: x.detach(), s)

    def forward(self, *inputs: Any, key: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Run ``model.apply`` with the live parameters; in train mode store the new state.

        Args:
            *inputs: the model's inputs (e.g. ``audio, lengths``).
            key: the PRNG key for dropout, dither and augmentation (training).
            **kwargs: more keyword arguments of ``model.apply``.

        Returns:
            The model's outputs (without the state).

        Raises:
            ValueError: in train mode, the returned state does not match the buffers.
        """
        params, state = self._live()
        outputs, new_state = self._fctc_model.apply(
            params, state, *inputs, train=self.training, key=key, **kwargs
        )
        if self.training:
            self._write_state(state, new_state)
        return outputs

    def _write_state(self, state: Any, new_state: Any) -> None:
        if new_state is None:
            new_state = {}
        old_leaves = _tree.leaves(state)
        try:
            new_leaves = _tree.structure(state).flatten_up_to(new_state)
        except (ValueError, TypeError) as e:
            raise ValueError(
                "FunctionalModule: model.apply returned a state whose structure differs from "
                f"the registered buffers ({_tree.paths(state)}); apply must return a state "
                f"shaped like its input: {e}"
            ) from None
        with torch.no_grad():
            for path, old, new in zip(self._fctc_paths[1], old_leaves, new_leaves):
                if old is new:
                    continue
                if tuple(new.shape) != tuple(old.shape):
                    raise ValueError(
                        f"FunctionalModule: model.apply returned state {path!r} with shape "
                        f"{tuple(new.shape)}, but the buffer has shape {tuple(old.shape)}"
                    )
                old.copy_(new)

    # -- checkpoints ------------------------------------------------------------------------

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        """Load parameters and buffers from a flat ``{key: tensor}`` mapping.

        Shapes must match exactly (always an error, also with ``strict=False``).

        Args:
            state_dict: ``state_dict`` keys to tensors.
            strict: missing and unexpected keys are errors listing every offending key.
            assign: install the given tensors themselves instead of copying their values into
                the existing ones (which keeps the module's dtype and device).

        Returns:
            torch's ``(missing_keys, unexpected_keys)`` named tuple.

        Raises:
            TypeError: ``state_dict`` is not a mapping.
            RuntimeError: shapes differ, a value is not a tensor, or (with ``strict``) keys
                are missing or unexpected.
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(
                "FunctionalModule.load_state_dict: expected a mapping of keys to tensors, got "
                f"{type(state_dict).__name__}"
            )
        expected: dict[str, tuple[nn.Module, str, bool]] = {}
        p_paths, s_paths = self._fctc_paths
        for path, slot in zip(p_paths + s_paths, self._fctc_slots):
            expected[path] = slot
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in expected]
        problems = []
        for k, (owner, name, is_param) in expected.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            if not isinstance(v, torch.Tensor):
                problems.append(f"  {k}: expected a tensor, got {type(v).__name__}")
                continue
            cur = owner._parameters[name] if is_param else owner._buffers[name]
            if tuple(v.shape) != tuple(cur.shape):
                problems.append(
                    f"  {k}: checkpoint shape {tuple(v.shape)}, module shape {tuple(cur.shape)}"
                )
        lines = []
        if strict and missing:
            lines.append(f"missing keys ({len(missing)}): {missing}")
        if strict and unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if problems:
            lines.append("mis-shaped or invalid entries:\n" + "\n".join(problems))
        if lines:
            raise RuntimeError(
                "FunctionalModule.load_state_dict: the state_dict does not match the model;\n"
                + "\n".join(lines)
                + "\nLoad a checkpoint of the same architecture and size (or pass strict=False "
                "to skip missing/unexpected keys)."
            )
        with torch.no_grad():
            for k, (owner, name, is_param) in expected.items():
                if k not in state_dict:
                    continue
                v = state_dict[k]
                if is_param:
                    cur = owner._parameters[name]
                    if assign:
                        owner._parameters[name] = nn.Parameter(
                            v.detach(), requires_grad=cur.requires_grad and v.is_floating_point()
                        )
                    else:
                        cur.copy_(v)
                else:
                    if assign:
                        owner._buffers[name] = v.detach()
                    else:
                        owner._buffers[name].copy_(v)
        return _IncompatibleKeys(missing, unexpected)

    def extra_repr(self) -> str:
        """What ``print(module)`` shows.

        Returns:
            The parameter count and the number of buffers.
        """
        return f"parameters={_tree.size(self._live()[0])}, buffers={len(self._fctc_paths[1])}"
