"""Any curvlab transform as a ``torch.optim.Optimizer`` (:class:`CurvlabOptimizer`)."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ... import backend
from ...methods import Transform
from .convert import from_torch, to_torch

__all__ = ["CurvlabOptimizer"]

_HYPER = ("lr", "momentum", "weight_decay")


def _hyper_of(transform: Transform) -> dict[str, float]:
    out = {}
    for k in _HYPER:
        v = getattr(transform, k, None)
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, (bool, np.bool_)):
            out[k] = float(v)
    return out


def _check_hyper_value(gi: int, k: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"param_groups[{gi}][{k!r}] must be a real number, got {type(v).__name__}") from None
    if not math.isfinite(f) or f < 0 or (k == "momentum" and f >= 1):
        want = "in [0, 1)" if k == "momentum" else "finite and >= 0"
        raise ValueError(f"param_groups[{gi}][{k!r}] must be {want}, got {v!r}")
    return f


@contextlib.contextmanager
def _hyper_applied(transform: Transform, group: dict[str, Any], gi: int) -> Iterator[None]:
    """Set the transform's hyperparameters to the group's values for one update, then restore."""
    saved = {}
    try:
        for k in _hyper_of(transform):
            if k in group:
                v = _check_hyper_value(gi, k, group[k])
                saved[k] = getattr(transform, k)
                if v != saved[k]:
                    setattr(transform, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(transform, k, v)


def _state_to_tensors(d: dict[str, Any], where: str) -> dict[str, Any]:
    """A transform state dict (NumPy values) as CPU tensors and Python strings (``weights_only`` loadable)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        a = np.asarray(v)
        if a.dtype.kind in "US" and a.ndim == 0:
            out[k] = str(a.item())
            continue
        if a.dtype.kind in "OUSV":
            raise TypeError(f"{where}: state field {k!r} has dtype {a.dtype}, which cannot be stored as a tensor")
        out[k] = torch.from_numpy(np.array(a, copy=True, order="C"))
    return out


def _state_from_tensors(d: dict[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of :func:`_state_to_tensors` (NumPy arrays of the saved dtypes); NumPy values pass."""
    return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in d.items()}


class CurvlabOptimizer(torch.optim.Optimizer):
    """Any curvlab :class:`~curvlab.methods.Transform` as a ``torch.optim.Optimizer``.

    Each parameter group holds a ``"transform"`` (default: the constructor's)
    and a ``"flat"`` flag. The transform sees the group's parameters and
    gradients as NumPy (CPU) / CuPy (CUDA) arrays that share memory with the
    tensors (DLPack, no copy): a list of per-tensor arrays, or with
    ``flat=True`` one concatenated ``(P,)`` vector (a copy; use it for methods
    whose extras act on flat vectors, e.g. an HVP from :class:`TorchCurvature`).
    Updates are added to the parameters in place.

    Skipped parameters (as torch's optimizers): a parameter with
    ``requires_grad=False`` or ``grad is None`` is not moved (bitwise). The
    transform's state is built on the parameters that have a gradient at the
    group's first step, in group order (the tree or flat vector the transform and
    its extras see); at a later step such a parameter without a gradient gets a zero
    gradient and its update is discarded, and a parameter that was not in the state
    but now has a gradient raises ``ValueError`` (put it in its own param group).
    A group with no gradient at all is skipped.

    Hyperparameters: ``lr``, ``momentum`` and ``weight_decay``, where the
    group's transform has them as numbers, are copied into the group at
    construction and read each step (the transform's attribute is set for that
    update and restored), so ``torch.optim.lr_scheduler`` schedulers work.

    ``step(closure=None, **extras)``: the closure (re-evaluates the loss and
    calls ``backward``) is run first when given; ``extras`` (an HVP or
    curvature callable, ...) go to every group's ``transform.update``; a
    callable ``extras_fn(optimizer, group_index) -> dict`` given to the
    constructor is consulted each step for per-group extras.

    ``state_dict()`` holds only tensors, Python numbers, strings and lists
    (each group's transform state is :meth:`TransformState.to_dict` with its
    arrays as CPU tensors), so ``torch.load(..., weights_only=True)`` (the
    default) reads it back, and ``load_state_dict`` restores the state and the
    groups' hyperparameters exactly: training continues bit for bit.

    Example
    -------
    >>> import torch
    >>> from curvlab.methods.baselines import SGD
    >>> w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    >>> opt = CurvlabOptimizer([w], SGD(lr=0.5))
    >>> opt.param_groups[0]["lr"]
    0.5
    >>> (w ** 2).sum().backward(); _ = opt.step()
    >>> w.detach().tolist()
    [0.0, 0.0, 0.0]
    """

    def __init__(self, params: Any, transform: Transform, *, flat: bool = False,
                 extras_fn: Callable[["CurvlabOptimizer", int], dict[str, Any]] | None = None) -> None:
        if not isinstance(transform, Transform):
            raise TypeError(f"transform must be a curvlab Transform, got {type(transform).__name__}")
        self.extras_fn = extras_fn
        super().__init__(params, {"transform": transform, "flat": bool(flat)})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its transform's ``lr``/``momentum``/``weight_decay`` become group entries."""
        gi = len(self.param_groups)
        tr = param_group.get("transform", self.defaults["transform"])
        if not isinstance(tr, Transform):
            raise TypeError(f"param_groups[{gi}]['transform'] must be a curvlab Transform, got {type(tr).__name__}")
        for k, v in _hyper_of(tr).items():
            param_group[k] = _check_hyper_value(gi, k, param_group.get(k, v))
        super().add_param_group(param_group)

    # -- helpers
    def _state_key(self, group: dict[str, Any]) -> torch.Tensor:
        return group["params"][0]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, **extras: Any) -> Any:  # type: ignore[override]
        """One update of every group; returns the closure's loss (or None)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            ps = group["params"]
            live = {i for i, p in enumerate(ps) if p.requires_grad and p.grad is not None}
            if not live:
                continue
            tr: Transform = group["transform"]
            st = self.state[self._state_key(group)]
            members = st.get("members", sorted(live))
            extra = sorted(live.difference(members))
            if extra:
                raise ValueError(f"param group {gi}: parameters {extra} have a gradient but had none when the "
                                 f"transform state was built (it covers {members}); give them their own param group")
            arrs = [from_torch(ps[i].detach()) for i in members]
            grads = [from_torch(ps[i].grad.detach()) if i in live else backend.get_namespace(a).zeros_like(a)
                     for i, a in zip(members, arrs)]
            if group["flat"]:
                xp = backend.get_namespace(*arrs)
                params, grads = (xp.concatenate([a.reshape(-1) for a in t]) for t in (arrs, grads))
            else:
                params = arrs
            if "transform_state" not in st:
                st["transform_state"] = tr.init(params)
                st["step"] = 0
                st["members"] = list(members)
            kw = dict(extras)
            if self.extras_fn is not None:
                kw.update(self.extras_fn(self, gi))
            with _hyper_applied(tr, group, gi):
                updates, st["transform_state"] = tr.update(grads, st["transform_state"], params, **kw)
            st["step"] += 1
            if group["flat"]:
                u = to_torch(updates)
                off = 0
                ups = []
                for i in members:
                    n = ps[i].numel()
                    ups.append(u[off:off + n])
                    off += n
            else:
                ups = [to_torch(x) for x in updates]
            for i, x in zip(members, ups):
                if i in live:
                    p = ps[i]
                    p.add_(x.reshape(p.shape).to(p.dtype))
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """``{"state": {group_index: {"step", "members", "transform_state"}}, "param_groups": [...]}``.

        ``transform_state`` maps the :meth:`TransformState.to_dict` keys to CPU tensors (0-d
        string fields to ``str``); the groups hold parameter indices, ``flat``, the
        transform's class name and the hyperparameters (Python numbers). Readable by
        ``torch.load(..., weights_only=True)``.
        """
        state: dict[int, Any] = {}
        groups = []
        idx = 0
        for gi, g in enumerate(self.param_groups):
            st = self.state.get(self._state_key(g), {}) if g["params"] else {}
            if "transform_state" in st:
                state[gi] = {"step": int(st["step"]), "members": [int(i) for i in st["members"]],
                             "transform_state": _state_to_tensors(st["transform_state"].to_dict(),
                                                                  f"param group {gi}")}
            n = len(g["params"])
            saved = {k: v for k, v in g.items() if k not in ("params", "transform")
                     and (v is None or isinstance(v, (bool, int, float, str)))}
            saved.update({"params": list(range(idx, idx + n)), "flat": bool(g["flat"]),
                          "transform": type(g["transform"]).__name__})
            groups.append(saved)
            idx += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore what :meth:`state_dict` saved (group structure must match); older
        dicts holding NumPy arrays are accepted too."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, the optimizer {len(self.param_groups)}")
        for gi, (saved, g) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(g["params"]):
                raise ValueError(f"param group {gi}: state_dict has {len(saved['params'])} params, "
                                 f"the optimizer {len(g['params'])}")
            if saved.get("transform") != type(g["transform"]).__name__:
                raise ValueError(f"param group {gi}: state_dict is for {saved.get('transform')}, "
                                 f"the optimizer uses {type(g['transform']).__name__}")
        for gi, (saved, g) in enumerate(zip(groups, self.param_groups)):
            for k, v in saved.items():
                if k not in ("params", "transform"):
                    g[k] = _check_hyper_value(gi, k, v) if k in _HYPER else v
        for gi, g in enumerate(self.param_groups):
            saved = state_dict["state"].get(gi, state_dict["state"].get(str(gi)))
            if not g["params"]:
                continue
            key = self._state_key(g)
            self.state.pop(key, None)
            if saved is not None:
                xp = np if key.device.type == "cpu" else backend._import_cupy()
                members = [int(i) for i in saved.get("members", range(len(g["params"])))]
                self.state[key] = {"step": int(saved["step"]), "members": members,
                                   "transform_state": g["transform"].load_state(
                                       _state_from_tensors(saved["transform_state"]), xp=xp)}
