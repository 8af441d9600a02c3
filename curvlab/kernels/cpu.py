"""Numba CPU versions of the fused kernels (parallel over cores, one pass each).

Each kernel (a parallel version, and a serial twin used below
``PARALLEL_MIN`` elements) reads its 1-D contiguous float32/float64 arrays once, does the
arithmetic of one element in float64 registers and writes the state back in
its own dtype; reductions accumulate in float64. ``fastmath`` is off (the
twins in :mod:`curvlab.kernels.reference` are matched to rounding), and
``cache=True`` keeps the compiled code between processes. Method inspired by
arXiv 2310.20574 (arTuRO).

Example
-------
>>> import numpy as np
>>> count_nonfinite(np.array([1.0, np.inf, np.nan]))
2
"""

from __future__ import annotations

import math
import types

import numba as nb
import numpy as np

__all__ = ["rls_filter_update", "kl_dual", "kl_pole", "arturo_apply", "count_nonfinite"]

_OPTS = dict(parallel=True, cache=True, fastmath=False, nogil=True)
_SERIAL = dict(parallel=False, cache=True, fastmath=False, nogil=True)

#: below this many elements the serial twin of each kernel runs: waking worker threads costs
#: more than the work (milliseconds on a loaded machine)
PARALLEL_MIN = 1 << 16


def _count_nonfinite(x):  # pragma: no cover - compiled
    n = 0
    for i in nb.prange(x.size):
        if not math.isfinite(x[i]):
            n += 1
    return n


def _filter(g, w, a, h, P00, P01, P11, xscale, q, r, inv_lam, init, h0, P0, guard):  # pragma: no cover
    skipped = 0
    guarded = 0
    for i in nb.prange(g.size):
        gi = np.float64(g[i])
        x = np.float64(w[i]) * xscale
        ok = math.isfinite(gi) and math.isfinite(x)
        if init:
            a[i] = gi if ok else 0.0
            h[i] = h0
            P00[i] = P0
            P01[i] = 0.0
            P11[i] = P0
        if not ok:
            skipped += 1
        else:
            A = np.float64(a[i])
            H = np.float64(h[i])
            p00 = np.float64(P00[i]) * inv_lam + q
            p01 = np.float64(P01[i]) * inv_lam
            p11 = np.float64(P11[i]) * inv_lam + q
            k0 = p00 + p01 * x
            k1 = p01 + p11 * x
            S = k0 + k1 * x + r
            K0 = k0 / S
            K1 = k1 / S
            e = gi - (A + H * x)
            A = A + K0 * e
            H = H + K1 * e
            p00 = p00 - S * K0 * K0
            p01 = p01 - S * K0 * K1
            p11 = p11 - S * K1 * K1
            if guard:
                q00 = max(p00, 0.0)
                q11 = max(p11, 0.0)
                bound = math.sqrt(q00 * q11)
                q01 = p01
                if abs(p01) > bound:
                    q01 = math.copysign(bound, p01)
                if q00 != p00 or q11 != p11 or q01 != p01:
                    guarded += 1
                p00 = q00
                p01 = q01
                p11 = q11
            a[i] = A
            h[i] = H
            P00[i] = p00
            P01[i] = p01
            P11[i] = p11
    return skipped, guarded


def _dual(eta, w, a, h, p, mscale, bp0, hmin):  # pragma: no cover
    kl = 0.0
    dkl = 0.0
    for i in nb.prange(w.size):
        H = np.float64(h[i])
        G = np.float64(a[i]) + (H + bp0) * (np.float64(w[i]) * mscale)
        if G != 0.0:
            P = np.float64(p[i])
            D = (max(H, hmin) + bp0) + eta * P
            t = G / D
            pt2 = P * t * t
            kl += pt2
            dkl += pt2 * P / D
    return 0.5 * kl, -dkl


def _pole(h, p, bp0, hmin):  # pragma: no cover
    m = -np.inf
    neg = 0
    for i in nb.prange(h.size):
        H = np.float64(h[i])
        v = -(max(H, hmin) + bp0) / np.float64(p[i])
        m = max(m, v)
        if H < 0.0:
            neg += 1
    return m, neg


def _apply(eta, w, a, h, p, out, mscale, bp0, hmin, nu, beta, pmin):  # pragma: no cover
    clamped = 0
    kl = 0.0
    for i in nb.prange(w.size):
        W = np.float64(w[i])
        H = np.float64(h[i])
        P = np.float64(p[i])
        mu = W * mscale
        G = np.float64(a[i]) + (H + bp0) * mu
        c = max(H, hmin) + bp0
        step = 0.0
        if G != 0.0:
            step = -G / (c + eta * P)
            kl += P * step * step
        out[i] = (mu - W) + step
        pn = (c + nu * P) / (beta + nu)
        if pn < pmin:
            pn = pmin
            clamped += 1
        p[i] = pn
    return clamped, 0.5 * kl


def _renamed(fn, suffix):
    """A copy of ``fn`` under another name, so that numba caches its second compilation separately."""
    name = fn.__name__ + suffix
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name)


_count_nonfinite_par, _count_nonfinite_ser = nb.njit(**_OPTS)(_count_nonfinite), nb.njit(**_SERIAL)(_renamed(_count_nonfinite, '_serial'))
_filter_par, _filter_ser = nb.njit(**_OPTS)(_filter), nb.njit(**_SERIAL)(_renamed(_filter, '_serial'))
_dual_par, _dual_ser = nb.njit(**_OPTS)(_dual), nb.njit(**_SERIAL)(_renamed(_dual, '_serial'))
_pole_par, _pole_ser = nb.njit(**_OPTS)(_pole), nb.njit(**_SERIAL)(_renamed(_pole, '_serial'))
_apply_par, _apply_ser = nb.njit(**_OPTS)(_apply), nb.njit(**_SERIAL)(_renamed(_apply, '_serial'))


def _pick(par, ser, n):
    return par if n >= PARALLEL_MIN else ser


def count_nonfinite(x: np.ndarray) -> int:
    return int(_pick(_count_nonfinite_par, _count_nonfinite_ser, x.size)(x.reshape(-1)))


def rls_filter_update(g, w, a, h, P00, P01, P11, *, xscale=1.0, q, r, forget=1.0, init=False,
                      h0=0.1, P0=0.0, psd_guard=False) -> tuple[int, int]:
    s, k = _pick(_filter_par, _filter_ser, g.size)(g, w, a, h, P00, P01, P11, float(xscale), float(q), float(r), 1.0 / float(forget),
                   bool(init), float(h0), float(P0), bool(psd_guard))
    return int(s), int(k)


def kl_dual(eta, w, a, h, p, *, mscale=1.0, beta_p0, h_min=-np.inf) -> tuple[float, float]:
    kl, dkl = _pick(_dual_par, _dual_ser, w.size)(float(eta), w, a, h, p, float(mscale), float(beta_p0), float(h_min))
    return float(kl), float(dkl)


def kl_pole(h, p, *, beta_p0, h_min=-np.inf) -> tuple[float, int]:
    m, n = _pick(_pole_par, _pole_ser, h.size)(h, p, float(beta_p0), float(h_min))
    return float(m), int(n)


def arturo_apply(eta, w, a, h, p, out, *, mscale=1.0, beta_p0, h_min=-np.inf, nu, beta,
                 p_min=-np.inf) -> tuple[int, float]:
    n, kl = _pick(_apply_par, _apply_ser, w.size)(float(eta), w, a, h, p, out, float(mscale), float(beta_p0), float(h_min),
                   float(nu), float(beta), float(p_min))
    return int(n), float(kl)
