"""Numba CPU versions of the fused kernels (parallel over cores, one pass each).

Each kernel (a parallel version, and a serial twin used below
``PARALLEL_MIN`` elements) reads its 1-D contiguous float32/float64 arrays
once, does the arithmetic of one element in float64 registers and writes the
state back in its own dtype; reductions accumulate in float64. Loop bodies are
branch-free (selects, unconditional stores) so that LLVM vectorises them.
``fastmath`` is off for the element-wise kernels (the twins in
:mod:`curvlab.kernels.reference` are matched to rounding); the two pure
reductions (dual, pole) allow reassociation only (``fastmath={"reassoc"}``),
which is what vectorises a sum: terms may be regrouped (a few ulps), while
NaN/Inf keep their IEEE behaviour. ``cache=True`` keeps the compiled code between processes.
``error_model="numpy"``: a division by zero gives ±inf/NaN as in the twins.
Host syncs: none (host arrays). Every kernel here is compared with its twin on
both sides of ``PARALLEL_MIN`` (``tests/kernels/test_thresholds.py``): a
reduction inside ``prange`` must have a form Numba recognises (``x += y``,
``x = max(x, y)``), or each thread's partial result is silently dropped.

The step kernels ``kl_dual_multi``, ``arturo_prepare`` and ``arturo_finish`` are chunked
instead: ``prange`` runs over chunks of ``CHUNK`` elements, each chunk writes its own partial
results (no ``prange`` reduction to recognise) and they are added in chunk order, so the sums
do not depend on the number of threads. Inside a chunk, the element-wise loop runs once over
memory and the reductions (the dual at each η, the pole) rerun over the chunk while it is in
cache, in helpers compiled with ``fastmath={"reassoc"}`` on 0-based views (a loop from an
offset index does not vectorise). Their twins are also compared at ``CHUNK ± 1``.
``arturo_finish`` multiplies by ``1/(β + ν)`` where the twin divides (within an ulp).
Method inspired by arXiv 2310.20574 (arTuRO).

Examples
--------
>>> import numpy as np
>>> count_nonfinite(np.array([1.0, np.inf, np.nan]))
2
"""

from __future__ import annotations

import math
import types
from typing import Any

import numba as nb
import numpy as np

__all__ = ["rls_filter_update", "kl_dual", "kl_pole", "arturo_apply", "count_nonfinite"]

#: ``error_model="numpy"``: a division by zero gives ±inf/NaN as IEEE says (as the twins do) instead
#: of Numba's default Python semantics, under which the serial kernels raised ``ZeroDivisionError``
#: (e.g. ``kl_dual`` at η = 0 with ``h + βp0 = 0``) while the parallel ones did not
_OPTS: dict[str, Any] = dict(parallel=True, cache=True, fastmath=False, nogil=True, error_model="numpy")
#: reductions only: reassociation lets LLVM vectorise the float64 sums (their order is already
#: unspecified across threads); no nnan/ninf flags, so NaN and Inf behave as IEEE says
_RED: dict[str, Any] = dict(parallel=True, cache=True, fastmath={"reassoc"}, nogil=True, error_model="numpy")
_SERIAL: dict[str, Any] = dict(parallel=False, cache=True, fastmath=False, nogil=True, error_model="numpy")

#: below this many elements the serial twin of each kernel runs: waking worker threads costs
#: more than the work (milliseconds on a loaded machine)
PARALLEL_MIN = 1 << 16


def _count_nonfinite(x):  # pragma: no cover - compiled
    n = 0
    for i in nb.prange(x.size):
        n += 0 if x[i] - x[i] == 0 else 1
    return n


def _filter(g, w, a, h, P00, P01, P11, xscale, q, r, inv_lam):  # pragma: no cover
    # branch-free body (selects, unconditional stores) so that LLVM vectorises it
    skipped = 0
    for i in nb.prange(g.size):
        gi = np.float64(g[i])
        x = np.float64(w[i]) * xscale
        ok = (gi - gi == 0.0) & (x - x == 0.0)  # finite test that vectorises (NaN/Inf give NaN)
        A0 = np.float64(a[i])
        H0 = np.float64(h[i])
        p00 = np.float64(P00[i])
        p01 = np.float64(P01[i])
        p11 = np.float64(P11[i])
        n00 = p00 * inv_lam + q
        n01 = p01 * inv_lam
        n11 = p11 * inv_lam + q
        k0 = n00 + n01 * x
        k1 = n01 + n11 * x
        S = k0 + k1 * x + r
        iS = 1.0 / S
        K0 = k0 * iS
        K1 = k1 * iS
        e = gi - (A0 + H0 * x)
        A = A0 + K0 * e
        H = H0 + K1 * e
        n00 = n00 - S * K0 * K0
        n01 = n01 - S * K0 * K1
        n11 = n11 - S * K1 * K1
        skipped += 0 if ok else 1
        a[i] = A if ok else A0
        h[i] = H if ok else H0
        P00[i] = n00 if ok else p00
        P01[i] = n01 if ok else p01
        P11[i] = n11 if ok else p11
    return skipped


def _init(g, w, a, h, P00, P01, P11, xscale, h0, P0):  # pragma: no cover
    # the reference initialisation, once, as its own pass (a branch on it slows the filter loop)
    for i in nb.prange(g.size):
        gi = np.float64(g[i])
        x = np.float64(w[i]) * xscale
        ok = (gi - gi == 0.0) & (x - x == 0.0)
        a[i] = gi if ok else 0.0
        h[i] = h0
        P00[i] = P0
        P01[i] = 0.0
        P11[i] = P0


def _guard(g, w, xscale, P00, P01, P11):  # pragma: no cover
    # PSD guard as its own pass: inside the filter loop it stops LLVM from vectorising
    guarded = 0
    for i in nb.prange(g.size):
        x = np.float64(w[i]) * xscale
        if math.isfinite(np.float64(g[i])) and math.isfinite(x):
            n00 = np.float64(P00[i])
            n01 = np.float64(P01[i])
            n11 = np.float64(P11[i])
            q00 = max(n00, 0.0)
            q11 = max(n11, 0.0)
            bound = math.sqrt(q00 * q11)
            q01 = n01
            if abs(n01) > bound:
                q01 = math.copysign(bound, n01)
            if q00 != n00 or q11 != n11 or q01 != n01:
                guarded += 1
                P00[i] = q00
                P01[i] = q01
                P11[i] = q11
    return guarded


def _dual(eta, w, a, h, p, mscale, bp0, hmin, chk):  # pragma: no cover
    kl = 0.0
    dkl = 0.0
    for i in nb.prange(w.size):
        H = np.float64(h[i])
        G = np.float64(a[i]) + (H + bp0) * (np.float64(w[i]) * mscale)
        P = np.float64(p[i])
        D = ((hmin if H < hmin else H) + bp0) + eta * P
        iD = 1.0 / D
        t = G * iD
        pt2 = P * t * t
        d2 = pt2 * P * iD
        # domain check: a coordinate below its pole (D < 0) makes KL = +inf, whatever G
        kl += np.inf if (chk and D < 0.0) else (pt2 if G != 0.0 else 0.0)
        dkl += d2 if G != 0.0 else 0.0
    return 0.5 * kl, -dkl


def _pole(h, p, bp0, hmin):  # pragma: no cover
    # The running maximum must be written ``m = max(m, v)``: Numba recognises only ``x op= y``,
    # ``x = x op y`` and ``x = max/min(x, y)`` as reductions inside ``prange``; a conditional
    # expression ``m = v if v > m else m`` compiles without a warning and each thread's maximum
    # is thrown away (the parallel version returned -inf for any data, issue 11). NaN terms are
    # mapped to -inf first, so that they are ignored whatever ``max`` does with a NaN.
    m = -np.inf
    neg = 0
    for i in nb.prange(h.size):
        H = np.float64(h[i])
        v = -((hmin if H < hmin else H) + bp0) / np.float64(p[i])
        v = v if v == v else -np.inf
        m = max(m, v)
        neg += 1 if H < 0.0 else 0
    return m, neg


def _apply(eta, w, a, h, p, out, mscale, bp0, hmin, nu, beta, pmin):  # pragma: no cover
    clamped = 0
    for i in nb.prange(w.size):
        W = np.float64(w[i])
        H = np.float64(h[i])
        P = np.float64(p[i])
        mu = W * mscale
        G = np.float64(a[i]) + (H + bp0) * mu
        c = (hmin if H < hmin else H) + bp0
        step = -G / (c + eta * P)
        step = step if G != 0.0 else 0.0
        out[i] = (mu - W) + step
        pn = (c + nu * P) / (beta + nu)
        low = pn < pmin
        p[i] = pmin if low else pn
        clamped += 1 if low else 0
    return clamped


#: elements per chunk of the chunked multi-η kernels (the η-loop reruns over a chunk held in cache);
#: the partial sums of each chunk are added in chunk order, so the result does not depend on the threads
CHUNK = 4096


def _chunk_dual(w, a, h, p, eta, mscale, bp0, hmin, chk):  # pragma: no cover - compiled
    # ``_dual`` over one chunk (slices: LLVM vectorises a loop from 0 over a view, not one from an offset)
    kl = 0.0
    dkl = 0.0
    for i in range(w.size):
        H = np.float64(h[i])
        G = np.float64(a[i]) + (H + bp0) * (np.float64(w[i]) * mscale)
        P = np.float64(p[i])
        D = ((hmin if H < hmin else H) + bp0) + eta * P
        iD = 1.0 / D
        t = G * iD
        pt2 = P * t * t
        d2 = pt2 * P * iD
        kl += np.inf if (chk and D < 0.0) else (pt2 if G != 0.0 else 0.0)
        dkl += d2 if G != 0.0 else 0.0
    return kl, dkl


_chunk_dual_jit = nb.njit(cache=True, fastmath={"reassoc"}, nogil=True, error_model="numpy")(_chunk_dual)


def _chunk_pole(h, p, bp0, hmin, buf):  # pragma: no cover - compiled
    # max(0, max -c/p) over one chunk: the quotients (NaN -> 0) into ``buf``, then the maximum of
    # their bit patterns as int64 (monotone for non-negative doubles): both loops vectorise
    m = h.size
    for i in range(m):
        H = np.float64(h[i])
        v = -((hmin if H < hmin else H) + bp0) / np.float64(p[i])
        buf[i] = v if v > 0.0 else 0.0
    bits = buf.view(np.int64)
    mx = 0
    for i in range(m):
        mx = max(mx, bits[i])
    bits[0] = mx
    return buf[0]


def _chunk_scan(h, p, bp0, hmin):  # pragma: no cover - compiled
    # division-free: the coordinates whose -c/p may be > 0 (c < 0, p <= 0, NaN), and the count of h < 0
    need = 0
    neg = 0
    for i in range(h.size):
        H = np.float64(h[i])
        c = (hmin if H < hmin else H) + bp0
        P = np.float64(p[i])
        need += 0 if (P > 0.0) & (c >= 0.0) else 1  # NaN c or p counts
        neg += 1 if H < 0.0 else 0
    return need, neg


_chunk_scan_jit = nb.njit(cache=True, fastmath={"reassoc"}, nogil=True, error_model="numpy")(_chunk_scan)
_chunk_pole_jit = nb.njit(cache=True, fastmath={"reassoc"}, nogil=True, error_model="numpy")(_chunk_pole)


def _duals(etas, w, a, h, p, mscale, bp0, hmin, chk, part):  # pragma: no cover
    # ``(KL, dKL)`` at every η of ``etas`` in one pass over memory: the η-loop reruns over a chunk
    # held in cache; ``part[chunk, k]``/``part[chunk, K + k]`` receive the chunk's sums
    n = w.size
    K = etas.size
    for ch in nb.prange(part.shape[0]):
        lo = ch * CHUNK
        hi = min(n, lo + CHUNK)
        ws, As, hs, ps = w[lo:hi], a[lo:hi], h[lo:hi], p[lo:hi]
        for k in range(K):
            s1, s2 = _chunk_dual_jit(ws, As, hs, ps, etas[k], mscale, bp0, hmin, chk)
            part[ch, k] = s1
            part[ch, K + k] = s2


def _prepare(g, w, a, h, P00, P01, P11, p, an, hn, xscale, q, r, inv_lam, mscale, bp0, hmin, etas, chk,
             want_pole, part, stats):  # pragma: no cover
    # pass 1 of a step: the filter of ``_filter`` into ``an, hn`` (the state is only read), the pole,
    # the count of h < 0, and the dual at every η of ``etas`` on the filtered values as stored
    n = g.size
    K = etas.size
    for ch in nb.prange(part.shape[0]):
        lo = ch * CHUNK
        hi = min(n, lo + CHUNK)
        gs, ws, As, hs, ps = g[lo:hi], w[lo:hi], a[lo:hi], h[lo:hi], p[lo:hi]
        q00, q01, q11, ans, hns = P00[lo:hi], P01[lo:hi], P11[lo:hi], an[lo:hi], hn[lo:hi]
        skipped = 0
        for j in range(gs.size):
            gi = np.float64(gs[j])
            x = np.float64(ws[j]) * xscale
            ok = (gi - gi == 0.0) & (x - x == 0.0)
            A0 = np.float64(As[j])
            H0 = np.float64(hs[j])
            n00 = np.float64(q00[j]) * inv_lam + q
            n01 = np.float64(q01[j]) * inv_lam
            n11 = np.float64(q11[j]) * inv_lam + q
            k0 = n00 + n01 * x
            k1 = n01 + n11 * x
            S = k0 + k1 * x + r
            iS = 1.0 / S
            K0 = k0 * iS
            K1 = k1 * iS
            e = gi - (A0 + H0 * x)
            A = A0 + K0 * e
            H = H0 + K1 * e
            skipped += 0 if ok else 1
            ans[j] = A if ok else A0
            hns[j] = H if ok else H0
        # the pole (on the values as stored, in cache): its division only in a chunk that has a
        # coordinate with c < 0 or p <= 0 (or NaN) -- elsewhere -c/p <= 0, below the 0 returned at least
        need, neg = _chunk_scan_jit(hns, ps, bp0, hmin)
        mx = _chunk_pole_jit(hns, ps, bp0, hmin, np.empty(hns.size)) if (need and want_pole) else 0.0
        stats[ch, 0] = skipped
        stats[ch, 1] = neg
        stats[ch, 2] = mx
        for k in range(K):  # the chunk of w, an, hn, p is in cache
            s1, s2 = _chunk_dual_jit(ws, ans, hns, ps, etas[k], mscale, bp0, hmin, chk)
            part[ch, k] = s1
            part[ch, K + k] = s2


def _finish_chunk(g, w, an, hn, P00, P01, P11, p, a, h, out, eta, xscale, q, r, inv_lam, mscale, bp0, hmin,
                  nu, beta, pmin):  # pragma: no cover - compiled
    # the last pass of a step: the covariance part of ``_filter`` (the same arithmetic), ``a, h <- an, hn``
    # and the primal update of ``_apply`` given η
    clamped = 0
    ibn = 1.0 / (beta + nu)  # a multiplication in the loop (within an ulp of the twin's division)
    for i in range(g.size):
        gi = np.float64(g[i])
        x = np.float64(w[i]) * xscale
        ok = (gi - gi == 0.0) & (x - x == 0.0)
        p00 = np.float64(P00[i])
        p01 = np.float64(P01[i])
        p11 = np.float64(P11[i])
        n00 = p00 * inv_lam + q
        n01 = p01 * inv_lam
        n11 = p11 * inv_lam + q
        k0 = n00 + n01 * x
        k1 = n01 + n11 * x
        S = k0 + k1 * x + r
        iS = 1.0 / S
        K0 = k0 * iS
        K1 = k1 * iS
        n00 = n00 - S * K0 * K0
        n01 = n01 - S * K0 * K1
        n11 = n11 - S * K1 * K1
        P00[i] = n00 if ok else p00
        P01[i] = n01 if ok else p01
        P11[i] = n11 if ok else p11
        A = an[i]
        Hs = hn[i]
        a[i] = A
        h[i] = Hs
        W = np.float64(w[i])
        H = np.float64(Hs)
        P = np.float64(p[i])
        mu = W * mscale
        G = np.float64(A) + (H + bp0) * mu
        c = (hmin if H < hmin else H) + bp0
        step = -G / (c + eta * P)
        step = step if G != 0.0 else 0.0
        out[i] = (mu - W) + step
        pn = (c + nu * P) * ibn
        low = pn < pmin
        p[i] = pmin if low else pn
        clamped += 1 if low else 0
    return clamped


_finish_chunk_jit = nb.njit(cache=True, fastmath=False, nogil=True, error_model="numpy")(_finish_chunk)


def _finish(g, w, an, hn, P00, P01, P11, p, a, h, out, eta, xscale, q, r, inv_lam, mscale, bp0, hmin, nu, beta,
            pmin, want_kl, part, stats):  # pragma: no cover
    # chunked: with ``want_kl`` the dual at η of the chunk first (``_chunk_dual``, the old p), then the
    # element-wise update of ``_finish_chunk`` on the chunk while it is in cache
    n = g.size
    for ch in nb.prange(part.shape[0]):
        lo = ch * CHUNK
        hi = min(n, lo + CHUNK)
        if want_kl:
            s1, s2 = _chunk_dual_jit(w[lo:hi], an[lo:hi], hn[lo:hi], p[lo:hi], eta, mscale, bp0, hmin, False)
            part[ch, 0] = s1
            part[ch, 1] = s2
        stats[ch] = _finish_chunk_jit(g[lo:hi], w[lo:hi], an[lo:hi], hn[lo:hi], P00[lo:hi], P01[lo:hi], P11[lo:hi],
                                      p[lo:hi], a[lo:hi], h[lo:hi], out[lo:hi], eta, xscale, q, r, inv_lam, mscale,
                                      bp0, hmin, nu, beta, pmin)


def _renamed(fn, suffix):
    """A copy of ``fn`` under another name, so that numba caches its second compilation separately."""
    name = fn.__name__ + suffix
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name)


_count_nonfinite_par = nb.njit(**_OPTS)(_count_nonfinite)
_count_nonfinite_ser = nb.njit(**_SERIAL)(_renamed(_count_nonfinite, '_serial'))
_filter_par, _filter_ser = nb.njit(**_OPTS)(_filter), nb.njit(**_SERIAL)(_renamed(_filter, '_serial'))
_init_par, _init_ser = nb.njit(**_OPTS)(_init), nb.njit(**_SERIAL)(_renamed(_init, '_serial'))
_guard_par, _guard_ser = nb.njit(**_OPTS)(_guard), nb.njit(**_SERIAL)(_renamed(_guard, '_serial'))
_dual_par, _dual_ser = nb.njit(**_RED)(_dual), nb.njit(**_SERIAL)(_renamed(_dual, '_serial'))
_pole_par, _pole_ser = nb.njit(**_RED)(_pole), nb.njit(**_SERIAL)(_renamed(_pole, '_serial'))
_apply_par, _apply_ser = nb.njit(**_OPTS)(_apply), nb.njit(**_SERIAL)(_renamed(_apply, '_serial'))

_duals_par, _duals_ser = nb.njit(**_OPTS)(_duals), nb.njit(**_SERIAL)(_renamed(_duals, '_serial'))
_prepare_par, _prepare_ser = nb.njit(**_OPTS)(_prepare), nb.njit(**_SERIAL)(_renamed(_prepare, '_serial'))
_finish_par, _finish_ser = nb.njit(**_OPTS)(_finish), nb.njit(**_SERIAL)(_renamed(_finish, '_serial'))

def _pick(par, ser, n):
    return par if n >= PARALLEL_MIN else ser


def count_nonfinite(x: np.ndarray) -> int:
    return int(_pick(_count_nonfinite_par, _count_nonfinite_ser, x.size)(x.reshape(-1)))


def rls_filter_update(g, w, a, h, P00, P01, P11, *, xscale=1.0, q, r, forget=1.0, init=False,
                      h0=0.1, P0=0.0, psd_guard=False) -> tuple[int, int]:
    if init:
        _pick(_init_par, _init_ser, g.size)(g, w, a, h, P00, P01, P11, float(xscale), float(h0), float(P0))
    s = _pick(_filter_par, _filter_ser, g.size)(g, w, a, h, P00, P01, P11, float(xscale), float(q), float(r),
                                                1.0 / float(forget))
    k = _pick(_guard_par, _guard_ser, g.size)(g, w, float(xscale), P00, P01, P11) if psd_guard else 0
    return int(s), int(k)


def kl_dual(eta, w, a, h, p, *, mscale=1.0, beta_p0, h_min=-np.inf, domain_check=False) -> tuple[float, float]:
    kl, dkl = _pick(_dual_par, _dual_ser, w.size)(float(eta), w, a, h, p, float(mscale), float(beta_p0),
                                                  float(h_min), bool(domain_check))
    return float(kl), float(dkl)


def kl_pole(h, p, *, beta_p0, h_min=-np.inf) -> tuple[float, int]:
    m, n = _pick(_pole_par, _pole_ser, h.size)(h, p, float(beta_p0), float(h_min))
    return float(m), int(n)


def arturo_apply(eta, w, a, h, p, out, *, mscale=1.0, beta_p0, h_min=-np.inf, nu, beta,
                 p_min=-np.inf) -> int:
    return int(_pick(_apply_par, _apply_ser, w.size)(float(eta), w, a, h, p, out, float(mscale), float(beta_p0),
                                                    float(h_min), float(nu), float(beta), float(p_min)))


def _nchunks(n: int) -> int:
    return max(1, -(-n // CHUNK))


def _etas(etas: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(etas, dtype=np.float64).reshape(-1))


def kl_dual_multi(etas, w, a, h, p, *, mscale=1.0, beta_p0, h_min=-np.inf,
                  domain_check=False) -> tuple[np.ndarray, np.ndarray]:
    e = _etas(etas)
    part = np.zeros((_nchunks(w.size), 2 * e.size))
    if w.size:
        _pick(_duals_par, _duals_ser, w.size)(e, w, a, h, p, float(mscale), float(beta_p0), float(h_min),
                                             bool(domain_check), part)
    s = part.sum(axis=0)
    return 0.5 * s[:e.size], -s[e.size:]


def arturo_prepare(etas, g, w, a, h, P00, P01, P11, p, an, hn, *, xscale=1.0, q, r, forget=1.0, mscale=1.0,
                   beta_p0, h_min=-np.inf, domain_check=False,
                   pole=True) -> tuple[int, float, int, np.ndarray, np.ndarray]:
    e = _etas(etas)
    nch = _nchunks(g.size)
    part = np.zeros((nch, 2 * e.size))
    stats = np.zeros((nch, 3))
    if g.size:
        _pick(_prepare_par, _prepare_ser, g.size)(g, w, a, h, P00, P01, P11, p, an, hn, float(xscale), float(q),
                                                 float(r), 1.0 / float(forget), float(mscale), float(beta_p0),
                                                 float(h_min), e, bool(domain_check), bool(pole), part, stats)
    s = part.sum(axis=0)
    mx = max(0.0, float(stats[:, 2].max())) if pole else math.nan
    return int(stats[:, 0].sum()), mx, int(stats[:, 1].sum()), 0.5 * s[:e.size], -s[e.size:]


def arturo_finish(eta, g, w, an, hn, P00, P01, P11, p, a, h, out, *, xscale=1.0, q, r, forget=1.0, mscale=1.0,
                  beta_p0, h_min=-np.inf, nu, beta, p_min=-np.inf, want_kl=False) -> tuple[int, float, float]:
    nch = _nchunks(g.size)
    part = np.zeros((nch, 2))
    stats = np.zeros(nch, dtype=np.int64)
    if g.size:
        _pick(_finish_par, _finish_ser, g.size)(g, w, an, hn, P00, P01, P11, p, a, h, out, float(eta), float(xscale),
                                               float(q), float(r), 1.0 / float(forget), float(mscale),
                                               float(beta_p0), float(h_min), float(nu), float(beta), float(p_min),
                                               bool(want_kl), part, stats)
    if not want_kl:
        return int(stats.sum()), math.nan, math.nan
    sm = part.sum(axis=0)
    return int(stats.sum()), 0.5 * float(sm[0]), -float(sm[1])
