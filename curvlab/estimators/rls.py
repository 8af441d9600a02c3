"""Diagonal curvature from stochastic gradients: a per-coordinate Kalman / RLS filter.

Method inspired by arXiv 2310.20574 (arTuRO). Each coordinate's gradient is
modelled as ``g ≈ a + h·θ``; the pair ``(a, h)`` is tracked by a 2-state
Kalman filter with regressor ``z = [1, x]`` (``x`` the current coordinate
value) and observation ``g``:

    P <- P/λ + q·I;  S = zᵀPz + r;  K = Pz/S;  e = g − (a + h x);
    [a, h] += K e;  P -= S·K Kᵀ

``λ = 1`` is the Kalman random walk of the reference code (process noise
``q``); ``variant="forgetting"`` is exponential-forgetting RLS (``λ < 1``,
``q = 0`` by default). The reference initialisation, on the first call, sets
``a = g, h = h0 (0.1), P = P0·I`` and then runs the update with the same
``g``. ``h`` is the diagonal-curvature estimate.

The update is one fused pass over memory (:func:`curvlab.kernels.rls_filter_update`)
and runs in place on the state arrays. Non-finite gradient (or ``x``) entries:
those coordinates keep their state and the call reports how many were skipped.

Examples
--------
>>> import numpy as np
>>> est = DiagonalRLS(q=1e-3, r=1.0, P0=1.0)
>>> rng = np.random.default_rng(0); H = np.array([0.5, 2.0, 8.0])
>>> state = est.init(np.zeros(3))
>>> for _ in range(500):
...     x = rng.standard_normal(3)
...     state, info = est.update(state, H * x + 1.0, x)
>>> np.allclose(state.h, H, rtol=1e-4), info.n_skipped
(True, 0)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

from .. import backend, kernels
from ..methods import TransformState
from ..tree import Tree, check_tree_like, tree_leaves, tree_map

__all__ = ["DiagonalRLS", "RLSState", "RLSInfo"]


@dataclasses.dataclass
class RLSState(TransformState):
    """Filter state: trees (array or list of arrays) shaped like the parameters.

    ``a`` intercept, ``h`` curvature, ``P00, P01, P11`` the 2×2 covariance;
    ``initialized`` whether the first gradient has been seen; ``count``
    updates done; ``n_skipped`` total coordinates skipped (non-finite);
    ``n_guarded`` total PSD-guard clamps.
    """

    a: Any
    h: Any
    P00: Any
    P01: Any
    P11: Any
    initialized: bool = False
    count: int = 0
    n_skipped: int = 0
    n_guarded: int = 0


@dataclasses.dataclass
class RLSInfo:
    """Per-call report: coordinates skipped (non-finite) and PSD-guard clamps."""

    n_skipped: int
    n_guarded: int


def _real(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v}")
    return v


def _check_nonneg(name: str, v: float, strict: bool = False) -> float:
    v = _real(name, v)
    if v <= 0 if strict else v < 0:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, got {v}")
    return v


class DiagonalRLS:
    """Vectorised diagonal-curvature estimator (Kalman filter or forgetting RLS).

    Parameters
    ----------
    q : process noise variance (≥ 0) added to ``P00`` and ``P11`` each step.
    r : measurement noise variance (> 0).
    P0 : initial covariance ``P0·I`` (≥ 0).
    h0 : initial curvature (reference value 0.1).
    variant : ``"kalman"`` (default) or ``"forgetting"`` (``P <- P/forget + qI``).
    forget : forgetting factor in ``(0, 1]`` (variant ``"forgetting"``, default 0.99).
    psd_guard : clamp ``P00, P11 ≥ 0`` and ``|P01| ≤ √(P00 P11)`` after each update.
    impl : kernel implementation (one of :data:`curvlab.kernels.IMPLS`).

    Every option is checked here (``ValueError``/``TypeError`` naming it).
    Non-finite gradients or regressors (policy): those coordinates keep their
    state and are counted (``RLSInfo.n_skipped``, ``RLSState.n_skipped``).

    Host syncs: 0 per update on NumPy with the Numba kernels; on CuPy (or with
    ``impl="numpy"``/``"reference"``) 1 per array of the tree per update (the
    skip/guard counters).
    """

    def __init__(self, q: float, r: float, P0: float, *, h0: float = 0.1, variant: str = "kalman",
                 forget: float | None = None, psd_guard: bool = False, impl: str = "auto") -> None:
        self.q = _check_nonneg("q (process noise variance)", q)
        self.r = _check_nonneg("r (measurement noise variance)", r, strict=True)
        self.P0 = _check_nonneg("P0 (initial filter covariance)", P0)
        self.h0 = _real("h0 (the initial curvature)", h0)
        if variant not in ("kalman", "forgetting"):
            raise ValueError(f"variant must be 'kalman' or 'forgetting', got {variant!r}")
        self.variant = variant
        if variant == "kalman":
            if forget not in (None, 1.0):
                raise ValueError(f"forget is only used by variant='forgetting', got forget={forget}")
            self.forget = 1.0
        else:
            f = 0.99 if forget is None else _real("forget", forget)
            if not (0.0 < f <= 1.0):
                raise ValueError(f"forget must be in (0, 1], got {forget}")
            self.forget = f
        self.psd_guard = bool(psd_guard)
        self.impl = kernels.check_impl(impl)

    def init(self, params: Tree) -> RLSState:
        """Zero state shaped like ``params``; the first :meth:`update` initialises it."""
        leaves = tree_leaves(params)
        for i, p in enumerate(leaves):
            backend.check_float_array(p, f"params[{i}]")

        def z(x: Any) -> Any:
            return backend.get_namespace(x).zeros(x.shape, dtype=x.dtype)

        return RLSState(*(tree_map(z, params) for _ in range(5)))

    def update(self, state: RLSState, grads: Tree, x: Tree, *, xscale: float = 1.0,
               copy: bool = False) -> tuple[RLSState, RLSInfo]:
        """Filter one gradient observation ``grads`` at regressor ``x·xscale``.

        ``grads`` and ``x`` are trees shaped like the state. The state arrays
        are updated in place (``copy=True`` works on copies) and the same
        object is returned with its counters advanced. Non-finite entries of
        ``grads`` or ``x·xscale`` skip their coordinates (counted); a
        non-finite ``xscale`` raises ``ValueError``.
        """
        xscale = _real("xscale", xscale)
        check_tree_like("grads", grads, state.a, "the state")
        check_tree_like("x", x, state.a, "the state")
        if copy:
            state = RLSState.from_dict(state.to_dict(), xp=backend.get_namespace(*tree_leaves(state.a)))
        init = not state.initialized
        sk = gd = 0
        for leaves in zip(*(tree_leaves(t) for t in (grads, x, state.a, state.h, state.P00, state.P01, state.P11))):
            g, w = leaves[0], leaves[1]
            dt = leaves[2].dtype
            g = g.reshape(-1).astype(dt, copy=False)
            w = w.reshape(-1).astype(dt, copy=False)
            s, k = kernels.rls_filter_update(g, w, *(v.reshape(-1) for v in leaves[2:]), xscale=xscale, q=self.q,
                                             r=self.r, forget=self.forget, init=init, h0=self.h0, P0=self.P0,
                                             psd_guard=self.psd_guard, impl=self.impl)
            sk += s
            gd += k
        state.initialized = True
        state.count += 1
        state.n_skipped += sk
        state.n_guarded += gd
        return state, RLSInfo(sk, gd)
