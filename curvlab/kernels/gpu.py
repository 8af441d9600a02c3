"""CuPy versions of the fused kernels (ElementwiseKernel / ReductionKernel).

Imported lazily by :mod:`curvlab.kernels` only when a CuPy array arrives. The
per-element arithmetic is done in ``double`` and stored in the array's dtype,
as in :mod:`curvlab.kernels.cpu`; each reduction returns one device scalar and
costs one host synchronisation when read. Host syncs per call: 1 for every
kernel (``kl_pole`` reads its maximum and its count together; the element-wise
kernels read their counters). Method inspired by arXiv 2310.20574.

Examples
--------
>>> import cupy as cp                                   # doctest: +SKIP
>>> count_nonfinite(cp.asarray([1.0, cp.nan]))          # doctest: +SKIP
1
"""

from __future__ import annotations

import functools
import math

import sys
from typing import Any

import cupy as cp
import numpy as np

from . import reference

__all__ = ["rls_filter_update", "kl_dual", "kl_pole", "arturo_apply", "count_nonfinite", "kl_dual_multi",
           "arturo_prepare", "arturo_finish"]

_FILTER_OP = r"""
double gi = (double)g;
double x = (double)w * xscale;
bool ok = isfinite(gi) && isfinite(x);
if (init) { a = (T)(ok ? gi : 0.0); h = (T)h0; P00 = (T)P0; P01 = (T)0; P11 = (T)P0; }
if (!ok) {
    atomicAdd(&counts[0], 1ULL);
} else {
    double A = (double)a, H = (double)h;
    double p00 = (double)P00 * inv_lam + q;
    double p01 = (double)P01 * inv_lam;
    double p11 = (double)P11 * inv_lam + q;
    double k0 = p00 + p01 * x;
    double k1 = p01 + p11 * x;
    double S = k0 + k1 * x + r;
    double iS = 1.0 / S;
    double K0 = k0 * iS, K1 = k1 * iS;
    double e = gi - (A + H * x);
    A = A + K0 * e;
    H = H + K1 * e;
    p00 = p00 - S * K0 * K0;
    p01 = p01 - S * K0 * K1;
    p11 = p11 - S * K1 * K1;
    if (guard) {
        p00 = (double)(T)p00; p01 = (double)(T)p01; p11 = (double)(T)p11;  // guard the stored values
        double q00 = fmax(p00, 0.0), q11 = fmax(p11, 0.0);
        double bound = sqrt(q00 * q11);
        double q01 = fabs(p01) > bound ? copysign(bound, p01) : p01;
        if (q00 != p00 || q11 != p11 || q01 != p01) atomicAdd(&counts[1], 1ULL);
        p00 = q00; p01 = q01; p11 = q11;
    }
    a = (T)A; h = (T)H; P00 = (T)p00; P01 = (T)p01; P11 = (T)p11;
}
"""

_DUAL_PREAMBLE = r"""
__device__ complex<double> _kl_term(double w, double a, double h, double p, double eta,
                                    double mscale, double bp0, double hmin, bool chk) {
    double G = a + (h + bp0) * (w * mscale);
    double D = (((h < hmin) ? hmin : h) + bp0) + eta * p;
    // domain check: a coordinate below its pole makes KL = +inf, whatever G
    if (chk && D < 0.0) return complex<double>(__longlong_as_double(0x7ff0000000000000ULL), 0.0);
    if (G == 0.0) return complex<double>(0.0, 0.0);
    double iD = 1.0 / D;
    double t = G * iD;
    double pt2 = p * t * t;
    return complex<double>(pt2, pt2 * p * iD);
}
"""

_APPLY_OP = r"""
double W = (double)w, H = (double)h, P = (double)p;
double mu = W * mscale;
double G = (double)a + (H + bp0) * mu;
double c = ((H < hmin) ? hmin : H) + bp0;
double step = (G != 0.0) ? -G / (c + eta * P) : 0.0;
out = (T)((mu - W) + step);
double pn = (c + nu * P) / (beta + nu);
if (pn < pmin) { pn = pmin; atomicAdd(&counts[0], 1ULL); }
p = (T)pn;
"""


#: no fused multiply-add contraction: the same IEEE operations as the CPU kernels and the twins
_OPTIONS = ("--fmad=false",)


@functools.lru_cache(maxsize=None)
def _kernels() -> dict:
    k = {}
    k["filter"] = cp.ElementwiseKernel(
        "T g, T w, float64 xscale, float64 q, float64 r, float64 inv_lam, bool init, float64 h0, "
        "float64 P0, bool guard, raw uint64 counts",
        "T a, T h, T P00, T P01, T P11", _FILTER_OP, name="curvlab_rls_filter", options=_OPTIONS)
    k["dual"] = cp.ReductionKernel(
        "T w_, T a_, T h_, T p_, float64 eta, float64 mscale, float64 bp0, float64 hmin, bool chk", "complex128 y",
        "_kl_term((double)w_, (double)a_, (double)h_, (double)p_, eta, mscale, bp0, hmin, chk)",
        "a + b", "y = a", "complex<double>(0.0, 0.0)", name="curvlab_kl_dual", options=_OPTIONS,
        reduce_type="complex<double>", preamble=_DUAL_PREAMBLE)
    k["pole"] = cp.ReductionKernel(
        "T h_, T p_, float64 bp0, float64 hmin", "float64 y",
        "-((((double)h_ < hmin) ? hmin : (double)h_) + bp0) / (double)p_", "fmax(a, b)", "y = a",
        "__longlong_as_double(0xfff0000000000000ULL)",
        name="curvlab_kl_pole", options=_OPTIONS, reduce_type="double")
    k["neg"] = cp.ReductionKernel("T x", "int64 y", "(x < (T)0) ? 1 : 0", "a + b", "y = a", "0",
                                  name="curvlab_count_neg", options=_OPTIONS, reduce_type="long long")
    k["nonfinite"] = cp.ReductionKernel("T x", "int64 y", "isfinite((double)x) ? 0 : 1", "a + b", "y = a", "0",
                                        name="curvlab_count_nonfinite", options=_OPTIONS, reduce_type="long long")
    k["apply"] = cp.ElementwiseKernel(
        "T w, T a, T h, float64 eta, float64 mscale, float64 bp0, float64 hmin, float64 nu, float64 beta, "
        "float64 pmin, raw uint64 counts",
        "T p, T out", _APPLY_OP, name="curvlab_arturo_apply", options=_OPTIONS)
    return k


def count_nonfinite(x) -> int:
    if x.size == 0:
        return 0
    return int(_kernels()["nonfinite"](x.reshape(-1)))


def rls_filter_update(g, w, a, h, P00, P01, P11, *, xscale=1.0, q, r, forget=1.0, init=False,
                      h0=0.1, P0=0.0, psd_guard=False) -> tuple[int, int]:
    counts = cp.zeros(2, dtype=cp.uint64)
    if g.size:
        _kernels()["filter"](g, w, float(xscale), float(q), float(r), 1.0 / float(forget), bool(init), float(h0),
                             float(P0), bool(psd_guard), counts, a, h, P00, P01, P11)
    c = counts.get()
    return int(c[0]), int(c[1])


def kl_dual(eta, w, a, h, p, *, mscale=1.0, beta_p0, h_min=-math.inf, domain_check=False) -> tuple[float, float]:
    if w.size == 0:
        return 0.0, 0.0
    z = complex(_kernels()["dual"](w, a, h, p, float(eta), float(mscale), float(beta_p0), float(h_min),
                                   bool(domain_check)).get())
    return 0.5 * z.real, -z.imag


def kl_pole(h, p, *, beta_p0, h_min=-math.inf) -> tuple[float, int]:
    if h.size == 0:
        return -math.inf, 0
    k = _kernels()
    m = k["pole"](h, p, float(beta_p0), float(h_min))
    n = k["neg"](h)
    both = cp.stack((m, n.astype(cp.float64))).get()  # one host sync (the count is exact in float64)
    return float(both[0]), int(both[1])


def arturo_apply(eta, w, a, h, p, out, *, mscale=1.0, beta_p0, h_min=-math.inf, nu, beta,
                 p_min=-math.inf) -> int:
    counts = cp.zeros(1, dtype=cp.uint64)
    if w.size:
        _kernels()["apply"](w, a, h, float(eta), float(mscale), float(beta_p0), float(h_min), float(nu),
                            float(beta), float(p_min), counts, p, out)
    return int(counts.get()[0])


def kl_dual_multi(etas, w, a, h, p, *, mscale=1.0, beta_p0, h_min=-math.inf,
                  domain_check=False) -> tuple[np.ndarray, np.ndarray]:
    """One dual reduction per η, all read back in one host sync."""
    e = [float(x) for x in np.asarray(etas, dtype=np.float64).reshape(-1)]
    if w.size == 0 or not e:
        return np.zeros(len(e)), np.zeros(len(e))
    k = _kernels()["dual"]
    zs = [k(w, a, h, p, x, float(mscale), float(beta_p0), float(h_min), bool(domain_check)) for x in e]
    z = cp.stack(zs).get()  # one host sync for all η
    return 0.5 * z.real.astype(np.float64), -z.imag.astype(np.float64)


def arturo_prepare(etas, g, w, a, h, P00, P01, P11, p, an, hn, **kw: Any) -> tuple[int, float, int, Any, Any]:
    """Pass 1 of an arTuRO step: the composition of :mod:`.reference` over these kernels (3 host syncs)."""
    return reference.arturo_prepare(etas, g, w, a, h, P00, P01, P11, p, an, hn, _ops=sys.modules[__name__], **kw)


def arturo_finish(eta, g, w, an, hn, P00, P01, P11, p, a, h, out, **kw: Any) -> tuple[int, float, float]:
    """Last pass of an arTuRO step: the composition of :mod:`.reference` over these kernels (2 host syncs,
    3 with ``want_kl``)."""
    return reference.arturo_finish(eta, g, w, an, hn, P00, P01, P11, p, a, h, out, _ops=sys.modules[__name__], **kw)
