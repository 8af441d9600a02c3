"""Plain-array reference twins of the fused kernels (the oracle of the fast versions).

Every function here is written with whole-array NumPy/CuPy operations (several
passes over memory) and computes in ``dtype`` (float64 by default, so float32
inputs are up-cast, exactly as the fused kernels do per element). Results are
written back in the state's dtype. The same functions, called with
``dtype=float32``, are the "straightforward multi-pass" baseline of the
benchmarks. Method inspired by arXiv 2310.20574 (arTuRO).

Examples
--------
>>> import numpy as np
>>> g = np.array([1.0, np.nan]); w = np.zeros(2)
>>> a, h, P00, P01, P11 = (np.zeros(2) for _ in range(5))
>>> rls_filter_update(g, w, a, h, P00, P01, P11, q=0.0, r=1.0, init=True, h0=0.1, P0=1.0)
(1, 0)
>>> float(a[0])
1.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend

__all__ = ["rls_filter_update", "kl_dual", "kl_pole", "arturo_apply", "count_nonfinite", "kl_dual_multi",
           "arturo_prepare", "arturo_finish"]


def count_nonfinite(x: Any) -> int:
    """Number of NaN/Inf entries of ``x`` (any shape). Host syncs: 1."""
    xp = backend.get_namespace(x)
    return int(x.size - int(xp.count_nonzero(xp.isfinite(x))))


def rls_filter_update(g: Any, w: Any, a: Any, h: Any, P00: Any, P01: Any, P11: Any, *,
                      xscale: float = 1.0, q: float, r: float, forget: float = 1.0,
                      init: bool = False, h0: float = 0.1, P0: float = 0.0,
                      psd_guard: bool = False, dtype: Any = np.float64) -> tuple[int, int]:
    """One step of the per-coordinate 2-state Kalman/RLS filter, in place.

    All arrays are 1-D of length ``n``; ``a, h, P00, P01, P11`` are updated in
    place. Regressor ``x = w * xscale``, observation ``g``. Process model:
    ``P <- P / forget + q I`` (Kalman random walk for ``forget = 1``, exponential
    forgetting RLS for ``q = 0``). With ``init`` the state is first set to
    ``a = g, h = h0, P00 = P11 = P0, P01 = 0``. Coordinates with non-finite
    ``g`` or ``x`` keep their state (after ``init``, with ``a = 0``).
    Returns ``(n_skipped, n_guarded)``. Host syncs: 1 (both counts are read together).
    """
    xp = backend.get_namespace(g, w, a)
    dt = np.dtype(dtype)
    g_ = g.astype(dt)
    x = w.astype(dt) * dt.type(xscale)
    ok = xp.isfinite(g_) & xp.isfinite(x)
    if init:
        a[...] = xp.where(ok, g_, 0).astype(a.dtype)
        h[...] = h0
        P00[...] = P0
        P01[...] = 0
        P11[...] = P0
    A, H = a.astype(dt), h.astype(dt)
    p00, p01, p11 = P00.astype(dt), P01.astype(dt), P11.astype(dt)
    inv = dt.type(1.0 / forget)
    p00 = p00 * inv + dt.type(q)
    p01 = p01 * inv
    p11 = p11 * inv + dt.type(q)
    k0 = p00 + p01 * x
    k1 = p01 + p11 * x
    S = k0 + k1 * x + dt.type(r)
    iS = 1 / S
    K0 = k0 * iS
    K1 = k1 * iS
    e = g_ - (A + H * x)
    A = A + K0 * e
    H = H + K1 * e
    p00 = p00 - S * K0 * K0
    p01 = p01 - S * K0 * K1
    p11 = p11 - S * K1 * K1
    for dst, src in ((a, A), (h, H), (P00, p00), (P01, p01), (P11, p11)):
        dst[...] = xp.where(ok, src, dst).astype(dst.dtype)
    n_guard = None
    if psd_guard:  # on the stored values, as the fused kernels do (a second pass there)
        p00, p01, p11 = P00.astype(np.float64), P01.astype(np.float64), P11.astype(np.float64)
        q00 = xp.maximum(p00, 0)
        q11 = xp.maximum(p11, 0)
        bound = xp.sqrt(q00 * q11)
        q01 = xp.where(xp.abs(p01) > bound, xp.copysign(bound, p01), p01)
        changed = ok & ((q00 != p00) | (q11 != p11) | (q01 != p01))
        n_guard = xp.count_nonzero(changed)
        for dst, src in ((P00, q00), (P01, q01), (P11, q11)):
            dst[...] = xp.where(changed, src, dst).astype(dst.dtype)
    counts = xp.stack((xp.asarray(ok.size - xp.count_nonzero(ok), dtype=np.int64),
                       xp.asarray(0 if n_guard is None else n_guard, dtype=np.int64)))
    n_skip, n_guard = backend.to_numpy(counts)  # one device-to-host read
    return int(n_skip), int(n_guard)


def _terms(w: Any, a: Any, h: Any, mscale: float, beta_p0: float, h_min: float, dt: np.dtype) -> tuple[Any, Any, Any]:
    xp = backend.get_namespace(w)
    mu = w.astype(dt) * dt.type(mscale)
    H = h.astype(dt)
    G = a.astype(dt) + (H + dt.type(beta_p0)) * mu
    c = xp.maximum(H, dt.type(h_min)) + dt.type(beta_p0)
    return mu, G, c


def kl_dual(eta: float, w: Any, a: Any, h: Any, p: Any, *, mscale: float = 1.0, beta_p0: float,
            h_min: float = -np.inf, domain_check: bool = False, dtype: Any = np.float64) -> tuple[float, float]:
    """``(KL(η), dKL/dη)`` of the arTuRO mean step, summed in float64.

    With ``μ = w·mscale``, ``G = a + (h + βp0)μ``, ``c = max(h, h_min) + βp0``:
    ``KL = ½ Σ p G²/(c + ηp)²`` and ``dKL/dη = −Σ p² G²/(c + ηp)³``; entries
    with ``G = 0`` contribute 0. ``domain_check``: ``KL = +inf`` when some
    ``c + ηp < 0`` (η below that coordinate's pole).

    Host syncs: 1 (the two sums are read together).
    """
    xp = backend.get_namespace(w, a, h, p)
    dt = np.dtype(dtype)
    _, G, c = _terms(w, a, h, mscale, beta_p0, h_min, dt)
    P = p.astype(dt)
    with np.errstate(divide="ignore", invalid="ignore"):  # G = 0 terms are dropped below
        D = c + dt.type(eta) * P
        iD = 1 / D
        t = G * iD
        pt2 = P * t * t
        d2 = pt2 * P * iD
    terms = xp.where(G == 0, dt.type(0), pt2)
    if domain_check:
        terms = xp.where(D < 0, dt.type(np.inf), terms)
    sums = xp.stack((xp.sum(terms, dtype=np.float64), xp.sum(xp.where(G == 0, dt.type(0), d2), dtype=np.float64)))
    kl, dkl = (float(v) for v in backend.to_numpy(sums))  # one device-to-host read
    return 0.5 * kl, -dkl


def kl_pole(h: Any, p: Any, *, beta_p0: float, h_min: float = -np.inf, dtype: Any = np.float64) -> tuple[float, int]:
    """``(max_j −c_j/p_j, #{h_j < 0})``; NaN entries are ignored; ``−inf`` for empty input.

    Host syncs: 1 (both numbers are read together).
    """
    xp = backend.get_namespace(h, p)
    dt = np.dtype(dtype)
    if h.size == 0:
        return -np.inf, 0
    c = xp.maximum(h.astype(dt), dt.type(h_min)) + dt.type(beta_p0)
    with np.errstate(divide="ignore", invalid="ignore"):  # p = 0: ±inf (or NaN, ignored)
        v = -c / p.astype(dt)
    both = xp.stack((xp.asarray(xp.max(xp.where(xp.isnan(v), -np.inf, v)), dtype=np.float64),
                     xp.asarray(xp.count_nonzero(h < 0), dtype=np.float64)))
    m, n = backend.to_numpy(both)  # one device-to-host read (the count is exact in float64)
    return float(m), int(n)


def arturo_apply(eta: float, w: Any, a: Any, h: Any, p: Any, out: Any, *, mscale: float = 1.0,
                 beta_p0: float, h_min: float = -np.inf, nu: float, beta: float,
                 p_min: float = -np.inf, dtype: Any = np.float64) -> int:
    """The arTuRO primal update given η, in place: ``out`` and ``p``.

    ``out = μ' − w`` with ``μ' = μ − G/(c + ηp)`` (``G = 0`` keeps ``μ``), and
    ``p <- max((c + νp)/(β + ν), p_min)``. Returns the number of clamped ``p``.
    Host syncs: 1.
    """
    xp = backend.get_namespace(w, a, h, p, out)
    dt = np.dtype(dtype)
    mu, G, c = _terms(w, a, h, mscale, beta_p0, h_min, dt)
    P = p.astype(dt)
    D = c + dt.type(eta) * P
    step = xp.where(G == 0, dt.type(0), -G / xp.where(G == 0, dt.type(1), D))
    out[...] = ((mu - w.astype(dt)) + step).astype(out.dtype)
    pn = (c + dt.type(nu) * P) / dt.type(beta + nu)
    clamped = pn < dt.type(p_min)
    p[...] = xp.where(clamped, dt.type(p_min), pn).astype(p.dtype)
    return int(xp.count_nonzero(clamped))


def kl_dual_multi(etas: Any, w: Any, a: Any, h: Any, p: Any, *, mscale: float = 1.0, beta_p0: float,
                  h_min: float = -np.inf, domain_check: bool = False, dtype: Any = np.float64,
                  _ops: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(KL, dKL/dη)`` at every η of ``etas`` (float64 host arrays): :func:`kl_dual` per η.

    The twin of the one-pass multi-η kernels. Host syncs: 1 per η (the CuPy kernels: 1 in all).
    """
    kw: dict[str, Any] = dict(mscale=mscale, beta_p0=beta_p0, h_min=h_min, domain_check=domain_check)
    if _ops is None:
        kw["dtype"] = dtype
    fn = kl_dual if _ops is None else _ops.kl_dual
    vals = [fn(float(e), w, a, h, p, **kw) for e in np.asarray(etas, dtype=np.float64).reshape(-1)]
    return (np.array([v[0] for v in vals], dtype=np.float64), np.array([v[1] for v in vals], dtype=np.float64))


def arturo_prepare(etas: Any, g: Any, w: Any, a: Any, h: Any, P00: Any, P01: Any, P11: Any, p: Any, an: Any, hn: Any,
                   *, xscale: float = 1.0, q: float, r: float, forget: float = 1.0, mscale: float = 1.0,
                   beta_p0: float, h_min: float = -np.inf, domain_check: bool = False, pole: bool = True,
                   dtype: Any = np.float64, _ops: Any = None) -> tuple[int, float, int, np.ndarray, np.ndarray]:
    """Pass 1 of an arTuRO step, composed of the twins: the filter into ``an, hn`` (the state
    arrays are only read), then :func:`kl_pole` and :func:`kl_dual_multi` on the filtered values.

    Returns ``(n_skipped, max(0, pole), n_negative_h, KL[etas], dKL[etas])`` (the pole NaN with
    ``pole=False``).
    """
    kw: dict[str, Any] = {} if _ops is not None else dict(dtype=dtype)
    ops = _ops if _ops is not None else _this()
    an[...] = a
    hn[...] = h
    P = [x.copy() for x in (P00, P01, P11)]
    skipped, _ = ops.rls_filter_update(g, w, an, hn, *P, xscale=xscale, q=q, r=r, forget=forget, **kw)
    m, neg = ops.kl_pole(hn, p, beta_p0=beta_p0, h_min=h_min, **kw)
    kls, dkls = ops.kl_dual_multi(etas, w, an, hn, p, mscale=mscale, beta_p0=beta_p0, h_min=h_min,
                                  domain_check=domain_check, **kw)
    return int(skipped), max(0.0, float(m)) if pole else math.nan, int(neg), kls, dkls


def arturo_finish(eta: float, g: Any, w: Any, an: Any, hn: Any, P00: Any, P01: Any, P11: Any, p: Any, a: Any, h: Any,
                  out: Any, *, xscale: float = 1.0, q: float, r: float, forget: float = 1.0, mscale: float = 1.0,
                  beta_p0: float, h_min: float = -np.inf, nu: float, beta: float, p_min: float = -np.inf,
                  want_kl: bool = False, dtype: Any = np.float64, _ops: Any = None) -> tuple[int, float, float]:
    """Last pass of an arTuRO step, composed of the twins: the filter's covariance update of
    ``P00, P01, P11`` (in place), ``a, h <- an, hn``, then :func:`arturo_apply` with ``an, hn``
    and the old ``p``. Returns ``(n_clamped, KL, dKL)``, the dual at η from :func:`kl_dual`
    (before ``p`` changes) with ``want_kl``, else NaN."""
    kw: dict[str, Any] = {} if _ops is not None else dict(dtype=dtype)
    ops = _ops if _ops is not None else _this()
    kl, dkl = (ops.kl_dual(eta, w, an, hn, p, mscale=mscale, beta_p0=beta_p0, h_min=h_min, **kw) if want_kl
               else (math.nan, math.nan))
    ta, th = a.copy(), h.copy()  # the filter's a, h updates are discarded (an, hn hold them)
    ops.rls_filter_update(g, w, ta, th, P00, P01, P11, xscale=xscale, q=q, r=r, forget=forget, **kw)
    a[...] = an
    h[...] = hn
    n = int(ops.arturo_apply(eta, w, an, hn, p, out, mscale=mscale, beta_p0=beta_p0, h_min=h_min, nu=nu,
                             beta=beta, p_min=p_min, **kw))
    return n, float(kl), float(dkl)


def _this() -> Any:
    import sys  # noqa: PLC0415

    return sys.modules[__name__]
