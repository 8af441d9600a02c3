"""Any curvlab transform as a ``torch.optim.Optimizer`` (:class:`CurvlabOptimizer`)."""

from __future__ import annotations

import contextlib
import copy
import math
from typing import TYPE_CHECKING, Any, Callable, Iterator, cast

import numpy as np
import torch

from ... import backend
from ...methods import Transform
from .convert import from_torch, to_torch

if TYPE_CHECKING:
    from ...methods.baselines import Adam
    from ...methods.curvature_lr import CurvatureLR
    from ...methods.exact_newton import ExactNewton

__all__ = ["CurvlabOptimizer"]

class _Knob:
    """One hyperparameter of a transform mirrored in a param group: ``obj.attr`` (``obj`` a
    callable of the transform: the transform itself or one of its blocks), checked by ``kind``
    ("pos": finite > 0, "nonneg": finite >= 0, "unit": in [0, 1))."""

    def __init__(self, attr: str, kind: str = "nonneg", obj: Callable[[Transform], Any] = lambda t: t) -> None:
        self.attr, self.kind, self.obj = attr, kind, obj

    def get(self, tr: Transform) -> Any:
        return getattr(self.obj(tr), self.attr)

    def set(self, tr: Transform, v: Any) -> None:
        setattr(self.obj(tr), self.attr, v)

    def check(self, gi: int, k: str, v: Any) -> Any:
        return _check_hyper_value(gi, k, v, self.kind)

    def saved(self, tr: Transform) -> list[tuple[Any, str, Any]]:
        """What :meth:`set` overwrites, as ``(object, attribute, value)`` to restore."""
        return [(self.obj(tr), self.attr, getattr(self.obj(tr), self.attr))]


class _Betas(_Knob):
    """Adam's ``betas = (b1, b2)`` (torch's name and shape, so ``OneCycleLR``/``CyclicLR`` with
    ``cycle_momentum`` cycle ``b1`` as they do for ``torch.optim.Adam``)."""

    def __init__(self) -> None:
        super().__init__("b1", "unit", lambda t: cast("Adam", t)._adam())

    def get(self, tr: Transform) -> Any:
        a = cast("Adam", tr)._adam()   # _knobs gives this knob to an Adam only
        return (float(a.b1), float(a.b2))

    def set(self, tr: Transform, v: Any) -> None:
        a = cast("Adam", tr)._adam()
        a.b1, a.b2 = v

    def check(self, gi: int, k: str, v: Any) -> Any:
        if not isinstance(v, (tuple, list)) or len(v) != 2:
            raise TypeError(f"param_groups[{gi}][{k!r}] must be a pair (b1, b2), got {v!r}")
        return tuple(_check_hyper_value(gi, f"{k}[{i}]", x, "unit") for i, x in enumerate(v))

    def saved(self, tr: Transform) -> list[tuple[Any, str, Any]]:
        a = cast("Adam", tr)._adam()
        return [(a, "b1", a.b1), (a, "b2", a.b2)]


class _ScaledSchedule:
    """``k -> lr · λ(k)``: CurvatureLR's ``lr`` group entry multiplies its schedule's λ."""

    def __init__(self, schedule: Callable[[int], float], lr: float) -> None:
        self.schedule, self.lr = schedule, lr

    def __call__(self, k: int) -> float:
        return self.lr * float(self.schedule(k))


class _LamScale(_Knob):
    """CurvatureLR's ``lr``: a multiplier on λ (default 1), applied by wrapping the schedule."""

    def __init__(self) -> None:
        super().__init__("schedule", "nonneg")

    def get(self, tr: Transform) -> Any:
        s = cast("CurvatureLR", tr).schedule   # _knobs gives this knob to a CurvatureLR only
        return s.lr if isinstance(s, _ScaledSchedule) else 1.0

    def set(self, tr: Transform, v: Any) -> None:
        clr = cast("CurvatureLR", tr)
        clr.schedule = _ScaledSchedule(clr.schedule, float(v))


def _knobs(tr: Transform) -> dict[str, _Knob]:
    """The group entries of ``tr`` (name -> knob); the learning-rate-like one is always ``lr``.

    SGD/Momentum/Adam/AdamW: ``lr``, ``momentum``, ``betas`` (a pair, as torch's Adam), ``eps``,
    ``weight_decay``;
    ArTuRO: ``lr`` is the KL bound ε (arXiv 2310.20574; the reference code's ``lr``), plus β, p0,
    r, q, ν (a number), ``weight_decay``; CurvatureLR: ``lr`` multiplies λ (so ``t = lr·λ·gᵀd/dᵀHd``),
    plus ``c_rel`` and, when set, ``fallback_lr``, ``max_step``; ExactNewton: ``lr``, ``lam`` (the
    damping), ``kappa_min``, ``kappa_max``, ``shift`` and ``fallback_lr`` (the ``lr`` of its fallback
    transform, which updates the parameters outside the dense layers; a scheduler drives only
    ``lr``, so decay ``fallback_lr`` yourself or give those parameters their own optimizer);
    DSGD: ``lr`` is its ``step`` (in (0, 2), or > 0 for a DSGD built with a step >= 2).
    Others: ``lr``, ``momentum``, ``weight_decay`` where the transform has them as numbers.
    """
    from ...methods.arturo import ArTuRO  # noqa: PLC0415
    from ...methods.baselines import Adam  # noqa: PLC0415
    from ...methods.curvature_lr import CurvatureLR  # noqa: PLC0415
    from ...methods.dsgd import DSGD  # noqa: PLC0415
    from ...methods.exact_newton import ExactNewton  # noqa: PLC0415

    if isinstance(tr, ArTuRO):
        out = {"lr": _Knob("kl_bound", "pos"), "reg_weight": _Knob("reg_weight"),
               "prior_prec": _Knob("prior_prec", "pos"), "measurement_noise": _Knob("measurement_noise", "pos"),
               "dynamic_model_noise": _Knob("dynamic_model_noise"), "weight_decay": _Knob("weight_decay")}
        if tr.nu != "coupled":
            out["nu"] = _Knob("nu")
        return out
    if isinstance(tr, CurvatureLR):
        out = {"lr": _LamScale(), "c_rel": _Knob("c_rel")}
        for k in ("fallback_lr", "max_step"):
            if getattr(tr, k) is not None:
                out[k] = _Knob(k, "pos")
        return out
    if isinstance(tr, ExactNewton):
        out = {"lr": _Knob("lr"), "lam": _Knob("lam", "pos"), "kappa_min": _Knob("kappa_min", "pos"),
               "kappa_max": _Knob("kappa_max", "pos"), "shift": _Knob("shift")}
        fb_lr = getattr(tr.fallback, "lr", None)
        if isinstance(fb_lr, (int, float, np.floating, np.integer)) and not isinstance(fb_lr, (bool, np.bool_)):
            out["fallback_lr"] = _Knob("lr", "nonneg", lambda t: cast("ExactNewton", t).fallback)
        return out
    if isinstance(tr, DSGD):   # s(2 − s) > 0 guarantees decrease; a DSGD built with s >= 2 allows larger steps
        return {"lr": _Knob("step_size", "pos" if tr.step_size >= 2 else "open2")}
    out = {}
    for k in ("lr", "momentum", "weight_decay"):
        v = getattr(tr, k, None)
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, (bool, np.bool_)):
            out[k] = _Knob(k, "unit" if k == "momentum" else "nonneg")
    if isinstance(tr, Adam):
        out.update({"betas": _Betas(), "eps": _Knob("eps", "pos", lambda t: cast("Adam", t)._adam())})
    return out


def _hyper_of(transform: Transform) -> dict[str, Any]:
    return {k: kn.get(transform) if isinstance(kn, _Betas) else float(kn.get(transform))
            for k, kn in _knobs(transform).items()}


_WANT = {"pos": "finite and > 0", "nonneg": "finite and >= 0", "unit": "in [0, 1)", "open2": "in (0, 2)"}


def _check_hyper_value(gi: int, k: str, v: Any, kind: str = "nonneg") -> float:
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"param_groups[{gi}][{k!r}] must be a real number, got bool")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"param_groups[{gi}][{k!r}] must be a real number, got {type(v).__name__}") from None
    if (not math.isfinite(f) or f < 0 or (kind == "unit" and f >= 1) or (kind in ("pos", "open2") and f <= 0)
            or (kind == "open2" and f >= 2)):
        raise ValueError(f"param_groups[{gi}][{k!r}] must be {_WANT[kind]}, got {v!r}")
    return f


@contextlib.contextmanager
def _hyper_applied(transform: Transform, group: dict[str, Any], gi: int) -> Iterator[None]:
    """Set the transform's hyperparameters to the group's values for one update, then restore."""
    saved = []
    try:
        for k, kn in _knobs(transform).items():
            if k in group:
                v = kn.check(gi, k, group[k])
                if v != kn.get(transform):
                    saved.extend(kn.saved(transform))
                    kn.set(transform, v)
        yield
    finally:
        for obj, attr, v in reversed(saved):
            setattr(obj, attr, v)


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

    Hyperparameters: every method's options are copied into the group at
    construction and read each step (the transform's attribute is set for that
    update and restored), so ``torch.optim.lr_scheduler`` schedulers work and
    groups may differ. ``lr`` is always the learning-rate-like knob: the step
    size of SGD/Momentum/Adam/AdamW/ExactNewton; for ``ArTuRO`` the KL bound ε
    (the reference code's ``lr``, arXiv 2310.20574, paper spec 001); for
    ``CurvatureLR`` a multiplier on λ (default 1: ``t = lr·λ_k·gᵀd / dᵀHd``, so
    a decayed ``lr`` shortens every step in proportion); for ``DSGD`` its
    ``step``. The other entries (Adam's ``betas`` pair, ``eps``, ``momentum``,
    ``weight_decay``, ArTuRO's ``reg_weight``/``prior_prec``/..., ExactNewton's
    ``lam`` damping, ...) are listed by :func:`_knobs`; values are checked
    (``ValueError`` naming the group and key) at each step.

    Curvature sources: ``CurvlabOptimizer(params, CurvatureLR(...), source=src)``
    (or a transform built with ``source=``, or a group entry ``"source"``) rebinds
    the source to the group's parameters each step, and to the step's data with
    ``step(batch=(x, y))`` (``src.at(params=..., data=batch)``: no rebuild); the
    group's parameters must be the source's layout (``TorchCurvature`` of the same
    module: its trainable parameters in ``named_parameters()`` order).

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

    Examples
    --------
    >>> import torch
    >>> from curvlab.methods.baselines import SGD
    >>> w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    >>> opt = CurvlabOptimizer([w], SGD(lr=0.5))
    >>> opt.param_groups[0]["lr"]
    0.5
    >>> (w ** 2).sum().backward(); _ = opt.step()
    >>> w.detach().tolist()
    [0.0, 0.0, 0.0]

    ArTuRO's learning-rate-like knob is its KL bound ε, which a scheduler then drives:

    >>> from curvlab.methods.arturo import ArTuRO
    >>> opt = CurvlabOptimizer([w], ArTuRO(kl_bound=0.05))
    >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    >>> opt.param_groups[0]["lr"], opt.param_groups[0]["reg_weight"]
    (0.05, 0.058657)

    A curvature source rebound each step (CurvatureLR; ExactNewton and DSGD likewise):
    ``opt = CurvlabOptimizer(model.parameters(), CurvatureLR(), source=TorchCurvature(model,
    "cross_entropy", first_batch))``, then per batch ``loss.backward(); opt.step(batch=(x, y))``.
    """

    def __init__(self, params: Any, transform: Transform, *, flat: bool = False,
                 extras_fn: Callable[["CurvlabOptimizer", int], dict[str, Any]] | None = None,
                 source: Any = None) -> None:
        if not isinstance(transform, Transform):
            raise TypeError(f"transform must be a curvlab Transform, got {type(transform).__name__}")
        if source is not None and not (hasattr(source, "at") and hasattr(source, "layout")):
            raise TypeError(f"source must be a curvlab CurvatureSource (such as TorchCurvature), "
                            f"got {type(source).__name__}")
        self.extras_fn = extras_fn
        self.source = source
        self._default_used = False
        super().__init__(params, {"transform": transform, "flat": bool(flat)})
        # torch's schedulers look for some entries in defaults (OneCycleLR/CyclicLR: momentum or betas)
        self.defaults.update(_hyper_of(transform))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its transform's hyperparameters (:func:`_knobs`) become group entries.

        A group without its own ``"transform"`` gets the constructor's (the first such group)
        or a deep copy of it (the later ones; a source it holds is shared, not copied), so
        every group has its own transform instance and state.
        """
        gi = len(self.param_groups)
        tr = param_group.get("transform")
        if tr is None:
            tr = self.defaults["transform"]
            if self._default_used:
                memo = {id(x): x for x in (getattr(tr, "source", None), getattr(getattr(tr, "base", None), "source",
                                                                                 None)) if x is not None}
                tr = copy.deepcopy(tr, memo)
            self._default_used = True
            param_group["transform"] = tr
        if not isinstance(tr, Transform):
            raise TypeError(f"param_groups[{gi}]['transform'] must be a curvlab Transform, got {type(tr).__name__}")
        kns = _knobs(tr)
        given = set(param_group)
        for k, v in _hyper_of(tr).items():
            param_group[k] = kns[k].check(gi, k, param_group.get(k, v))
        super().add_param_group(param_group)
        for k in set(self.defaults).difference(given, kns, ("transform", "flat", "params")):
            param_group.pop(k, None)   # another method's default entry: not this group's

    # -- helpers
    def _state_key(self, group: dict[str, Any]) -> torch.Tensor:
        return group["params"][0]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, batch: Any = None,
             **extras: Any) -> Any:
        """One update of every group; returns the closure's loss (or None).

        ``batch``: the ``(inputs, targets)`` of this step, to which the curvature source is
        rebound (``source.at(params=..., data=batch)``, no rebuild) for the groups whose
        transform takes a source (CurvatureLR, ExactNewton, DSGD); without it the source
        keeps the data it is bound to (and is rebound to the parameters only).
        """
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
            if hasattr(tr, "source"):   # a method that takes a curvature source
                src = group.get("source", self.source)
                if src is not None and "source" not in kw and "curvature" not in kw:
                    kw["source"] = src
                if batch is not None and "data" not in kw:
                    kw["data"] = batch
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

    def state_dict(self) -> dict[str, Any]:
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
                     and (v is None or isinstance(v, (bool, int, float, str))
                          or (isinstance(v, (tuple, list)) and all(isinstance(x, (int, float)) for x in v)))}
            saved.update({"params": list(range(idx, idx + n)), "flat": bool(g["flat"]),
                          "transform": type(g["transform"]).__name__})
            groups.append(saved)
            idx += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
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
                    kn = _knobs(g["transform"]).get(k)
                    g[k] = kn.check(gi, k, v) if kn is not None else v
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
