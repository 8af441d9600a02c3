"""Learning rate rescaled by the directional curvature ``c = dᵀHd`` (method inspired by arXiv 2210.14520).

A base optimizer (SGD, momentum, Adam from :mod:`curvlab.methods.baselines`) proposes a
direction ``d``; the step along it is the minimiser of the quadratic model
``q(t) = f − t⟨g, d⟩ + ½t²c`` scaled by ``λ``:

    t = λ · ⟨g, d⟩ / c,      θ ← θ − t d,      predicted change  q(t) − f = −λ(2 − λ)·⟨g, d⟩²/(2c).

Regimes of ``λ`` (on an exact quadratic the error along ``d`` is multiplied by ``1 − λ``):

* ``0 < λ < 1`` under-relaxed, monotone ("hyper-convergence");
* ``λ = 1`` model minimiser, largest predicted decrease;
* ``1 < λ < 2`` over-relaxed, oscillating but decreasing (exploration/convergence trade-off);
* ``λ = 2`` mirror point, zero predicted change;
* ``λ > 2`` predicted increase ("hyper-exploration"; diverges on a quadratic).

(The names in quotes follow a secondary description; their mapping to λ is a guess.)
Schedules: :class:`ConstantSchedule` and exponential decay from an exploration value
``λ_0`` to a convergence value ``λ_end`` (:class:`GeometricSchedule`, the default
``2.0 → 0.1``, and :class:`ExpFloorSchedule`).

The curvature ``c`` comes from a curvature source (:class:`curvlab.sources.CurvatureSource`:
the reference MLP's, ``TorchCurvature``, ``JaxCurvature``): ``mode="forward"`` calls
``source.directional_curvature(d)`` (Taylor mode), ``"adjoint"`` ``source.grad_and_curvature(d)``
(adjoint mode, arXiv 2210.14520 §3, whose loss also serves the realised change). The source is
given once, ``CurvatureLR(source=src)`` (the extra ``data=batch`` rebinds the batch), or per step,
``update(..., source=src)``; either way it is rebound to the step's ``params`` with
``src.at(params=..., data=...)``, reusing what it built or compiled (no per-step rebuild;
``params`` is the flat vector of ``src.layout`` or a pytree of its parameters in layout order).
The older extras still work: ``curvature(d) -> float`` (any callable), or
``model.curvature(params, X, y, d, mode)`` of the reference MLP. ``⟨g, d⟩`` and ``‖d‖²``
are accumulated in float64. Only ``dᵀHd`` is needed, so every source serves (no
``layer_structure()``).

Policy when ``c ≤ c_rel·‖d‖²`` (negative, zero or tiny curvature), ``curvature_policy``:
``"fallback"`` (default) steps with ``fallback_lr`` (``None``: the previous valid ``t``,
``t_init`` before any), ``"abs"`` uses ``|c|`` (then the floor if still tiny), ``"floor"``
uses ``c = c_rel·‖d‖²``, ``"skip"`` makes no step. Each event is counted. Other cases: ``d = 0``
or ``⟨g, d⟩ = 0`` (zero gradient): no step, no division; ``⟨g, d⟩ < 0``: the model
minimiser (``t < 0``) is kept unless ``sign="clamp"`` (no step). Optional cap
``max_step``: ``|t|·‖d‖ ≤ max_step``.

NaN/Inf in ``g``, ``d``, ``c`` or the base's new state follow the shared ``nan_policy``
(:mod:`curvlab.methods._transform`): skipped by default — zero update, the state *and the
base's state* unchanged but for ``n_skipped_steps``/``consecutive_skips`` (so the next step
is the one a run without the bad step would take), ``FloatingPointError`` past
``max_consecutive_skips`` in a row; ``"raise"``; ``"propagate"`` (``t`` = NaN, the base's
state committed). The base's own ``nan_policy`` is not used (its ``direction`` is).

Host syncs per step: one read of ``(⟨g, d⟩, ‖d‖², base state finite)`` together, plus what
``curvature(d)`` costs (a float), plus one per loss evaluation when the realised change is
recorded. The base gives ``d`` through the protocol's ``direction`` (no duck typing: a base
without one, such as ArTuRO, raises ``NotImplementedError``).

Examples
--------
>>> import numpy as np
>>> A = np.diag([1.0, 4.0])                       # f = ½θᵀAθ, g = Aθ
>>> opt = CurvatureLR(schedule=1.0)
>>> th = np.array([1.0, 1.0]); st = opt.init(th)
>>> upd, st, info = opt.update_with_info(A @ th, st, th, curvature=lambda d: float(d @ A @ d))
>>> round(info.t, 6), round(info.predicted, 6)    # t = gᵀg / gᵀAg = 17/65
(0.261538, -2.223077)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, SupportsFloat

import numpy as np

from .. import backend
from ..tree import tree_leaves, tree_map, tree_vdot, tree_zeros_like
from ._transform import (
    DEFAULT_MAX_CONSECUTIVE_SKIPS,
    StepInfo,
    Transform,
    TransformState,
    Tree,
    apply_updates,
    check_params,
    check_tree_like,
    state_leaves,
)
from ._source import flat_of, resolve_source
from .baselines import SGD

__all__ = [
    "CurvatureLR",
    "CurvatureLRState",
    "CurvatureLRInfo",
    "ConstantSchedule",
    "GeometricSchedule",
    "ExpFloorSchedule",
    "as_schedule",
    "DIAGNOSTIC_FIELDS",
]

#: the per-step report of :class:`CurvatureLRInfo` (see :meth:`CurvatureLR.diagnostics`)
DIAGNOSTIC_FIELDS = ("t", "c", "gd", "dd", "lam", "predicted", "realized", "event")


def _pos(name: str, v: SupportsFloat) -> float:
    v = float(v)
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite positive number, got {v!r}")
    return v


def _read(xp: Any, *values: Any) -> list[float]:
    """Device scalars (and Python numbers) as Python floats in one host read."""
    if xp is np:
        return [float(v) for v in values]
    return [float(v) for v in backend.to_numpy(xp.stack([xp.asarray(v, dtype=np.float64) for v in values]))]


def _all_finite_dev(xp: Any, leaves: list[Any]) -> Any:
    """``1.0`` if every leaf is finite else ``0.0``, as a device scalar (no host read)."""
    ok: Any = 1.0
    for x in leaves:
        ok = ok * xp.all(xp.isfinite(x))
    return ok


class ConstantSchedule:
    """``λ_k = lam`` for every step k.

    >>> ConstantSchedule(0.5)(10)
    0.5
    """

    def __init__(self, lam: float) -> None:
        self.lam = _pos("lam", lam)

    def __call__(self, k: int) -> float:
        return self.lam

    def __repr__(self) -> str:
        return f"ConstantSchedule({self.lam})"


class GeometricSchedule:
    """Exponential decay ``λ_k = λ_0 · (λ_end/λ_0)^(k/K)`` for ``k ≤ K``, then ``λ_end``.

    Exploration (``λ_0 ≈ 2``) to convergence (``λ_end < 1``): hits both ends exactly.

    >>> s = GeometricSchedule(2.0, 0.1, 100)
    >>> s(0), s(100), round(s(50), 6)
    (2.0, 0.1, 0.447214)
    """

    def __init__(self, lam0: float = 2.0, lam_end: float = 0.1, total_steps: int = 1000) -> None:
        self.lam0, self.lam_end = _pos("lam0", lam0), _pos("lam_end", lam_end)
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)

    def __call__(self, k: int) -> float:
        if k <= 0:
            return self.lam0
        if k >= self.total_steps:
            return self.lam_end
        return self.lam0 * (self.lam_end / self.lam0) ** (k / self.total_steps)

    def __repr__(self) -> str:
        return f"GeometricSchedule({self.lam0}, {self.lam_end}, {self.total_steps})"


class ExpFloorSchedule:
    """Exponential decay to a floor ``λ_k = λ_end + (λ_0 − λ_end)·exp(−k/τ)`` (monotone).

    >>> round(ExpFloorSchedule(2.0, 0.5, tau=10.0)(10), 6)
    1.051819
    """

    def __init__(self, lam0: float = 2.0, lam_end: float = 0.1, tau: float = 100.0) -> None:
        self.lam0, self.lam_end, self.tau = _pos("lam0", lam0), _pos("lam_end", lam_end), _pos("tau", tau)

    def __call__(self, k: int) -> float:
        return self.lam_end + (self.lam0 - self.lam_end) * math.exp(-max(k, 0) / self.tau)

    def __repr__(self) -> str:
        return f"ExpFloorSchedule({self.lam0}, {self.lam_end}, tau={self.tau})"


def as_schedule(schedule: Any) -> Callable[[int], float]:
    """A number becomes :class:`ConstantSchedule`; a callable ``k -> λ`` is returned as is."""
    if isinstance(schedule, (bool, np.bool_)):
        raise TypeError(f"schedule must be a number or a callable k -> lambda, got bool {schedule!r}")
    if isinstance(schedule, (int, float, np.floating, np.integer)):
        return ConstantSchedule(_pos("schedule", schedule))
    if callable(schedule):
        return schedule
    raise TypeError(f"schedule must be a number or a callable k -> lambda, got {type(schedule).__name__}")


@dataclasses.dataclass
class CurvatureLRState(TransformState):
    """State of :class:`CurvatureLR`: the base optimizer's state plus scalars (what the next
    step needs; the step's report is its :class:`CurvatureLRInfo`).

    ``count``: steps taken (the schedule index; it advances on policy events — no step
    for ``d = 0``, a clamp, ``curvature_policy="skip"`` — but not on a step skipped for NaN/Inf);
    ``t_prev``: last valid step length (``t_init`` before any). Counters: ``n_policy``,
    ``n_zero``, ``n_skipped_steps`` (steps skipped for NaN/Inf; a skipped step changes nothing
    else), ``n_capped``, ``n_negative_gd``, ``consecutive_skips``. ``base``: the base
    transform's state (nested in ``to_dict`` under ``"base/"`` keys). Saved states of earlier
    versions, which also held the last step's report, load (those keys are ignored).
    """

    count: int
    t_prev: float
    n_policy: int
    n_zero: int
    n_skipped_steps: int
    n_capped: int
    n_negative_gd: int
    consecutive_skips: int
    base: Any = None

    def to_dict(self) -> dict[str, np.ndarray]:
        base = self.base
        out = dataclasses.replace(self, base=None)
        d = TransformState.to_dict(out)
        d.pop("base/none", None)
        if base is not None:
            for k, v in base.to_dict().items():
                d["base/" + k] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], xp: Any = np, base_class: Any = None) -> "CurvatureLRState":
        own = {k: v for k, v in d.items() if not k.startswith("base/")}
        own["base/none"] = np.asarray(0)
        st = TransformState.from_dict.__func__(cls, own, xp)  # type: ignore[attr-defined]
        sub = {k[5:]: v for k, v in d.items() if k.startswith("base/")}
        if sub:
            if base_class is None:
                raise ValueError("the dict holds a base state: pass base_class (or use CurvatureLR.load_state)")
            st.base = base_class.from_dict(sub, xp=xp)
        return st


@dataclasses.dataclass
class CurvatureLRInfo(StepInfo):
    """Report of one :class:`CurvatureLR` step.

    ``t`` the step length (also ``lr``), ``c`` = dᵀHd, ``gd`` = ⟨g, d⟩, ``dd`` = ‖d‖², ``lam``
    = λ_k, ``predicted`` = ``−t·gd + ½t²c`` (the quadratic model's change, with the measured
    ``c``), ``realized`` = ``f(θ − t d) − f(θ)`` (NaN unless a loss function was available),
    ``event`` (0 normal, 1 curvature policy, 2 zero direction/gradient, 3 non-finite under
    ``nan_policy="propagate"``, 4 sign clamp, 5 skipped by policy), ``skipped`` (by the NaN
    policy; the other fields then hold what was measured before the skip, NaN otherwise).
    """

    t: float = 0.0
    c: float = math.nan
    gd: float = math.nan
    dd: float = math.nan
    lam: float = math.nan
    predicted: float = math.nan
    realized: float = math.nan
    event: int = 0


class CurvatureLR(Transform):
    """Curvature-rescaled learning rate wrapping a base transform (see the module docstring).

    Parameters
    ----------
    base:
        Base transform giving the direction ``d`` through :meth:`Transform.direction`
        (default ``SGD(lr=1)``; SGD, Momentum, Adam, AdamW, a :func:`chain`, ExactNewton, DSGD).
        The step ``t·d`` does not depend on the base's step size (``t`` rescales); a base
        without a direction (ArTuRO) raises ``NotImplementedError`` at the first update.
    schedule:
        ``λ``: a number (constant), a schedule object, or any ``k -> λ`` callable.
    mode:
        ``dᵀHd`` mode of the source (or of the reference MLP given as the extra ``model``):
        "forward" (Taylor, ``directional_curvature``) or "adjoint" (``grad_and_curvature``).
    source:
        A curvature source, rebound each step (module docstring); or pass ``source=`` to
        ``update``. The rebound source is also passed to the base (as its extra ``source``).
    curvature_policy, fallback_lr, c_rel, t_init:
        Non-positive/tiny-curvature policy (module docstring): "fallback" | "abs" | "floor" | "skip".
    sign:
        "keep" (default: ``t < 0`` when ``⟨g, d⟩ < 0``) or "clamp" (no step then).
    max_step:
        Optional cap on ``|t|·‖d‖``.
    realized:
        Compute the realised change (one extra forward pass) when a loss is available.
    nan_policy, max_consecutive_skips:
        The shared numerical-trouble policy (module docstring).
    """

    state_class = CurvatureLRState

    def __init__(self, base: Transform | None = None, schedule: Any = None, mode: str = "adjoint",
                 curvature_policy: str = "fallback", fallback_lr: float | None = None, c_rel: float = 1e-12,
                 t_init: float = 0.1, sign: str = "keep", max_step: float | None = None,
                 realized: bool = True, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS, source: Any = None) -> None:
        self.set_nan_policy(nan_policy, max_consecutive_skips)
        if source is not None:
            resolve_source("CurvatureLR", source, None, None, None)   # type check only
        self.source = source
        self.base = SGD(lr=1.0) if base is None else base
        if not isinstance(self.base, Transform):
            raise TypeError(f"base must be a curvlab Transform, got {type(self.base).__name__}")
        self.schedule = as_schedule(GeometricSchedule() if schedule is None else schedule)
        if mode not in ("forward", "adjoint"):
            raise ValueError(f"mode must be 'forward' or 'adjoint', got {mode!r}")
        if curvature_policy not in ("fallback", "abs", "floor", "skip"):
            raise ValueError(f"curvature_policy must be 'fallback', 'abs', 'floor' or 'skip', got {curvature_policy!r}")
        if sign not in ("keep", "clamp"):
            raise ValueError(f"sign must be 'keep' or 'clamp', got {sign!r}")
        self.mode, self.policy, self.sign = mode, curvature_policy, sign
        self.fallback_lr = None if fallback_lr is None else _pos("fallback_lr", fallback_lr)
        self.c_rel = float(c_rel)
        if not (np.isfinite(self.c_rel) and self.c_rel >= 0):
            raise ValueError(f"c_rel must be a finite number >= 0, got {c_rel!r}")
        if isinstance(self.base, CurvatureLR):
            raise TypeError("base must not be a CurvatureLR (nest the base's base instead)")
        if getattr(self.base, "inplace", False):
            raise ValueError(f"base {type(self.base).__name__} updates its state in place, so a step this "
                             "transform skips would still change it; build it with copy_state=True")
        self.t_init = _pos("t_init", t_init)
        self.max_step = None if max_step is None else _pos("max_step", max_step)
        self.realized = bool(realized)

    def init(self, params: Tree) -> CurvatureLRState:
        check_params(params)
        return CurvatureLRState(count=0, t_prev=self.t_init, n_policy=0, n_zero=0, n_skipped_steps=0,
                                n_capped=0, n_negative_gd=0, consecutive_skips=0, base=self.base.init(params))

    def load_state(self, d: dict[str, Any], xp: Any = np) -> CurvatureLRState:
        """The state saved by ``to_dict``, the base's through the base's own ``load_state``."""
        st = CurvatureLRState.from_dict({k: v for k, v in d.items() if not k.startswith("base/")}, xp=xp)
        sub = {k[5:]: v for k, v in d.items() if k.startswith("base/")}
        st.base = self.base.load_state(sub, xp=xp) if sub else None
        return st

    @staticmethod
    def diagnostics(report: CurvatureLRInfo | CurvatureLRState) -> dict[str, float]:
        """A step's report as a plain dict (keys :data:`DIAGNOSTIC_FIELDS`).

        ``report``: the ``info`` of :meth:`update_with_info`, or the state that step made
        (all NaN for a state no step made, e.g. ``init``'s or a loaded one).
        """
        source: CurvatureLRInfo | None
        if isinstance(report, TransformState):
            source = report.__dict__.get("_info")  # not the deprecated state.<field> view
        elif isinstance(report, CurvatureLRInfo):
            source = report
        else:
            raise TypeError("CurvatureLR.diagnostics: report must be a CurvatureLRInfo (update_with_info's "
                            f"info) or a CurvatureLRState; got {type(report).__name__}")
        return {k: getattr(source, k, math.nan) for k in DIAGNOSTIC_FIELDS}

    def _update(self, grads: Tree, state: CurvatureLRState, params: Tree | None = None, *,
                curvature: Callable[[Tree], float] | None = None, model: Any = None, X: Any = None,
                y: Any = None, loss: float | None = None, loss_fn: Callable[[Tree], float] | None = None,
                source: Any = None, data: Any = None,
                **extras: Any) -> tuple[Tree, CurvatureLRState, CurvatureLRInfo]:
        """One rescaled step: ``(updates = −t·d, new_state, info)``.

        Extras: ``source`` (and/or ``data``: see the module docstring), or
        ``curvature(d) -> dᵀHd`` (``d`` structured like ``grads``), or ``model`` with
        ``X``, ``y`` (reference MLP, flat params; ``mode`` picks its dᵀHd mode); ``loss`` =
        f(θ) and ``loss_fn(params) -> float`` for the realised change (``model`` supplies both).
        Other extras, and ``model``, ``X``, ``y``, go to the base's ``direction``.
        """
        if params is not None:
            check_tree_like("grads", grads, params)
        else:
            check_params(grads, "grads")
        xp = backend.get_namespace(*tree_leaves(grads))
        propagate = self.nan_policy == "propagate"
        base_extras = dict(extras)
        base_extras.update({k: v for k, v in (("model", model), ("X", X), ("y", y)) if v is not None})
        src = None
        if curvature is None and (source is not None or self.source is not None or data is not None):
            if params is None:
                raise ValueError("CurvatureLR with a curvature source needs params (the source is rebound to them)")
            src = resolve_source("CurvatureLR", self.source, source, data, params)
            base_extras["source"] = src
        d, base_state = self.base.direction(grads, state.base, params, **base_extras)
        lam = float(self.schedule(state.count))
        new = dataclasses.replace(state, count=state.count + 1, base=base_state, consecutive_skips=0)
        info = CurvatureLRInfo(lam=lam, t=0.0, predicted=0.0, lr=0.0)
        zeros = tree_zeros_like(grads)
        base_ok = 1.0 if propagate else _all_finite_dev(xp, state_leaves(base_state))
        gd, dd, ok = _read(xp, tree_vdot(grads, d), tree_vdot(d, d), base_ok)   # the one host read
        info.gd, info.dd = gd, dd
        if not (ok and math.isfinite(gd) and math.isfinite(dd)):
            if propagate:
                return self._propagate(d, new, info)
            self.nonfinite(gd, dd, ok or math.nan,
                           blame={"grads": grads, "the direction d": d, "the base's new state": state_leaves(base_state)})
            return zeros, self.skipped(state), dataclasses.replace(info, skipped=True, t=math.nan, lr=math.nan)
        if dd == 0.0 or gd == 0.0:
            new.n_zero += 1
            info.event = 2
            return zeros, new, info
        if gd < 0:
            new.n_negative_gd += 1
            if self.sign == "clamp":
                info.event = 4
                return zeros, new, info
        f_src = None
        if src is not None:
            c, f_src = self._source_curvature(src, d)
        else:
            c = self._curvature(d, params, curvature, model, X, y)
        info.c = c
        if not math.isfinite(c):
            if propagate:
                return self._propagate(d, new, info)
            self.nonfinite(c, blame={"the curvature dᵀHd": c})
            return zeros, self.skipped(state), dataclasses.replace(info, skipped=True, t=math.nan, lr=math.nan)
        thresh = self.c_rel * dd
        if c > thresh and c > 0:
            t = lam * gd / c
        else:
            new.n_policy += 1
            info.event = 1
            if self.policy == "skip":
                info.event = 5
                return zeros, new, info
            if self.policy == "fallback":
                t = self.fallback_lr if self.fallback_lr is not None else state.t_prev
                t = math.copysign(t, gd)
            else:
                ce = abs(c) if self.policy == "abs" else 0.0
                ce = max(ce, thresh)
                if ce <= 0:  # c_rel = 0 and c = 0: nothing to divide by
                    t = math.copysign(self.fallback_lr if self.fallback_lr is not None else state.t_prev, gd)
                else:
                    t = lam * gd / ce
        if self.max_step is not None and abs(t) * math.sqrt(dd) > self.max_step:
            t = math.copysign(self.max_step / math.sqrt(dd), t)
            new.n_capped += 1
        info.t = info.lr = t
        if info.event == 0:
            new.t_prev = abs(t)
        info.predicted = -t * gd + 0.5 * t * t * c
        upd = tree_map(lambda x: x * x.dtype.type(-t), d)
        if self.realized:
            if loss_fn is None and src is not None:
                lay = src.layout
                loss_fn = lambda p: src.at(params=flat_of(lay, p, "params", "CurvatureLR")).loss()  # noqa: E731
                loss = f_src if loss is None else loss
            if loss_fn is None and model is not None and X is not None:
                loss_fn = lambda p: model.loss(p, X, y)  # noqa: E731
            if loss_fn is not None and params is not None:
                f0 = float(loss) if loss is not None else float(loss_fn(params))
                info.realized = float(loss_fn(apply_updates(params, upd))) - f0
        return upd, new, info

    @staticmethod
    def _propagate(d: Tree, new: CurvatureLRState,
                   info: CurvatureLRInfo) -> tuple[Tree, CurvatureLRState, CurvatureLRInfo]:
        """``nan_policy="propagate"``: a NaN step ``−t·d`` with ``t`` = NaN, the base state committed."""
        info.t = info.lr = info.predicted = math.nan
        info.event = 3
        return tree_map(lambda x: x * x.dtype.type(math.nan), d), new, info

    def _source_curvature(self, src: Any, d: Tree) -> tuple[float, float | None]:
        """``(dᵀHd, loss or None)`` from the source in this transform's ``mode``."""
        v = flat_of(src.layout, d, "the direction d", "CurvatureLR")
        if self.mode == "forward":
            return float(src.directional_curvature(v)), None
        f, _, c = src.grad_and_curvature(v)
        return float(c), float(f)

    def _curvature(self, d: Tree, params: Tree | None, curvature: Any, model: Any, X: Any, y: Any) -> float:
        if curvature is not None:
            return float(curvature(d))
        if model is not None:
            if params is None or X is None or y is None:
                raise ValueError("the extra model needs params, X and y to compute dᵀHd")
            return float(model.curvature(params, X, y, d, mode=self.mode))
        raise ValueError("CurvatureLR.update needs a curvature source (source=, here or at construction), "
                         "the extra curvature(d) -> dᵀHd, or model with X and y")
