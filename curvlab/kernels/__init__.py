"""Fused kernels: Numba (CPU), CuPy (GPU) and plain-array reference twins.

One public function per fused kernel. Each takes 1-D contiguous arrays of one
float dtype (float32 or float64), dispatches on their backend (NumPy ->
:mod:`.cpu` (Numba), CuPy -> :mod:`.gpu`) or to :mod:`.reference` with
``impl="reference"``, and updates state arrays in place. Per-element
arithmetic is float64; reductions accumulate in float64. Host syncs: every
kernel that returns a number costs one device-to-host read on CuPy (none on
NumPy). Method inspired by arXiv 2310.20574 (arTuRO).

Kernels
-------
- :func:`rls_filter_update` — the per-coordinate 2-state Kalman/RLS filter step
  (reads 7 arrays, writes 5, one pass).
- :func:`kl_dual` — ``(KL(η), dKL/dη)`` of the arTuRO closed-form mean (reads 4).
- :func:`kl_pole` — ``(max_j −c_j/p_j, #{h_j < 0})`` (reads 2).
- :func:`arturo_apply` — the mean step and precision update given η (reads 4, writes 2).
- :func:`count_nonfinite` — number of NaN/Inf entries (reads 1).
- :func:`kl_dual_multi` — :func:`kl_dual` at several η in one pass (reads 4).
- :func:`arturo_prepare` — pass 1 of an arTuRO step: the filter into scratch ``an, hn``
  (the state is only read), its pole and negative-curvature count, and the dual at several η
  (reads 8, writes 2).
- :func:`arturo_finish` — last pass: the filter's covariance update, ``a, h <- an, hn`` and
  the primal update given η, optionally the achieved KL (reads 8, writes 7).

Examples
--------
>>> import numpy as np
>>> w = np.zeros(4); a = np.ones(4); h = np.ones(4); p = np.ones(4)
>>> kl, dkl = kl_dual(1.0, w, a, h, p, beta_p0=0.0)   # G = 1, c + ηp = 2
>>> round(kl, 12), round(dkl, 12)
(0.5, -0.5)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .. import backend
from . import reference

__all__ = ["rls_filter_update", "kl_dual", "kl_pole", "arturo_apply", "count_nonfinite", "kl_dual_multi",
           "arturo_prepare", "arturo_finish", "IMPLS", "check_impl"]

#: accepted values of ``impl``: "auto" (Numba for NumPy arrays, CuPy kernels for CuPy arrays),
#: "numba", "cupy", "reference" (the plain-array oracle, float64 arithmetic) and "numpy" (the same
#: plain-array code in the arrays' own dtype: the straightforward multi-pass baseline)
IMPLS = ("auto", "numba", "cupy", "reference", "numpy")


def check_impl(impl: Any, name: str = "impl") -> str:
    """Return ``impl`` if it is one of :data:`IMPLS`, else raise ``ValueError`` naming ``name``.

    For objects that take ``impl=`` at construction (the array backend is checked per call).
    """
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"{name} must be one of {IMPLS}, got {impl!r}")
    return impl


def _module(impl: str, *arrays: Any) -> Any:  # a kernel module, or the dtype-native twins
    check_impl(impl)
    xp = backend.get_namespace(*arrays)
    if impl == "reference":
        return reference
    if impl == "numpy":
        return _NATIVE
    if xp is np:
        if impl == "cupy":
            raise ValueError("impl='cupy' needs CuPy arrays, got NumPy arrays")
        from . import cpu  # noqa: PLC0415

        return cpu
    if impl == "numba":
        raise ValueError("impl='numba' needs NumPy arrays, got CuPy arrays")
    from . import gpu  # noqa: PLC0415

    return gpu


def _check(names: str, arrays: tuple[Any, ...], writable: str = "") -> None:
    n = arrays[0].size
    dt = np.dtype(arrays[0].dtype)
    for name, x in zip(names.split(), arrays):
        backend.check_float_array(x, name, ndim=1)
        if x.size != n:
            raise ValueError(f"{name} must have shape ({n},) like {names.split()[0]}, got {tuple(x.shape)}")
        if np.dtype(x.dtype) != dt:
            raise TypeError(f"{name} must have dtype {dt} like {names.split()[0]}, got {np.dtype(x.dtype)}")
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    for name in writable.split():
        x = arrays[names.split().index(name)]
        if isinstance(x, np.ndarray) and not x.flags.writeable:
            raise ValueError(f"{name} must be writeable (it is updated in place)")


def _scalars(**checks: tuple[Any, str]) -> None:
    """Check scalar options: ``name=(value, rule)``, rule "finite", "nonneg", "pos", "notnan" or "forget"."""
    for name, (v, rule) in checks.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
        x = float(v)
        ok = {"finite": math.isfinite(x), "nonneg": math.isfinite(x) and x >= 0, "pos": math.isfinite(x) and x > 0,
              "notnan": x == x, "forget": 0 < x <= 1}[rule]
        if not ok:
            want = {"finite": "a finite number", "nonneg": "a finite number >= 0", "pos": "a finite number > 0",
                    "notnan": "a number (not NaN)", "forget": "in (0, 1]"}[rule]
            raise ValueError(f"{name} must be {want}, got {v!r}")


class _NativeDtype:
    """The reference twins computing in the arrays' own dtype (``impl="numpy"``)."""

    def __getattr__(self, name: str) -> Any:
        fn = getattr(reference, name)
        if name == "count_nonfinite":
            return fn

        def call(*args: Any, **kw: Any) -> Any:
            arrays = [a for a in args if hasattr(a, "dtype")]
            return fn(*args, dtype=arrays[0].dtype if arrays else np.float64, **kw)

        return call


_NATIVE = _NativeDtype()


def count_nonfinite(x: Any, *, impl: str = "auto") -> int:
    """Number of NaN/Inf entries of the float array ``x`` (any shape). Host syncs: 0 (NumPy), 1 (CuPy)."""
    backend.check_float_array(x, "x")
    return _module(impl, x).count_nonfinite(x)


def rls_filter_update(g: Any, w: Any, a: Any, h: Any, P00: Any, P01: Any, P11: Any, *, xscale: float = 1.0,
                      q: float, r: float, forget: float = 1.0, init: bool = False, h0: float = 0.1,
                      P0: float = 0.0, psd_guard: bool = False, impl: str = "auto") -> tuple[int, int]:
    """One fused step of the diagonal Kalman/RLS curvature filter, in place.

    Per coordinate (method inspired by arXiv 2310.20574), with ``x = w·xscale``
    and observation ``g``: ``P <- P/forget + qI``; ``k = P z`` (``z = [1, x]``),
    ``S = zᵀPz + r``, ``K = k/S``; ``e = g − (a + h x)``; ``[a, h] += K e``;
    ``P -= S K Kᵀ``. ``init`` first sets ``a = g, h = h0, P = P0·I``.
    Non-finite ``g`` or ``x``: the coordinate keeps its state (counted).
    ``psd_guard`` clamps ``P00, P11 ≥ 0`` and ``|P01| ≤ √(P00 P11)`` (counted).

    Shapes: all ``(n,)``, one dtype. Returns ``(n_skipped, n_guarded)``.
    Host syncs: 0 for NumPy arrays, 1 for CuPy arrays (both counts together).
    ``ValueError`` for ``q < 0``, ``r <= 0``, ``forget`` outside ``(0, 1]``,
    ``P0 < 0`` or a non-finite ``xscale``/``h0``.
    """
    _scalars(xscale=(xscale, "finite"), q=(q, "nonneg"), r=(r, "pos"), forget=(forget, "forget"),
             h0=(h0, "finite"), P0=(P0, "nonneg"))
    arrays = (g, w, a, h, P00, P01, P11)
    _check("g w a h P00 P01 P11", arrays, "a h P00 P01 P11")
    return _module(impl, *arrays).rls_filter_update(*arrays, xscale=xscale, q=q, r=r, forget=forget, init=init,
                                                    h0=h0, P0=P0, psd_guard=psd_guard)


def kl_dual(eta: float, w: Any, a: Any, h: Any, p: Any, *, mscale: float = 1.0, beta_p0: float,
            h_min: float = -np.inf, domain_check: bool = False, impl: str = "auto") -> tuple[float, float]:
    """``(KL(η), dKL/dη)`` for the arTuRO step, in one fused pass (float64 sums).

    ``μ = w·mscale``, ``G = a + (h + βp0)μ``, ``c = max(h, h_min) + βp0``;
    ``KL = ½ Σ p G²/(c + ηp)²``, ``dKL/dη = −Σ p²G²/(c + ηp)³`` (``G = 0``
    terms are 0). ``domain_check=True``: ``KL = +inf`` when some
    ``c_j + ηp_j < 0`` (η below that coordinate's pole, where the step would
    take a negative precision), whatever ``G_j`` — so a root-finder can never
    accept such an η, whatever :func:`kl_pole` returned. Host syncs: 0 for
    NumPy arrays, 1 for CuPy arrays (``impl="numpy"``/``"reference"``: 1).
    Method inspired by arXiv 2310.20574.
    """
    _scalars(eta=(eta, "notnan"), mscale=(mscale, "finite"), beta_p0=(beta_p0, "nonneg"), h_min=(h_min, "notnan"))
    arrays = (w, a, h, p)
    _check("w a h p", arrays)
    return _module(impl, *arrays).kl_dual(eta, *arrays, mscale=mscale, beta_p0=beta_p0, h_min=h_min,
                                          domain_check=domain_check)


def kl_pole(h: Any, p: Any, *, beta_p0: float, h_min: float = -np.inf, impl: str = "auto") -> tuple[float, int]:
    """``(max_j −(max(h_j, h_min) + βp0)/p_j, #{h_j < 0})``; NaN terms ignored; ``(−inf, 0)`` when empty.

    Host syncs: 0 for NumPy arrays, 1 for CuPy arrays or ``impl="numpy"``/``"reference"``.
    """
    _scalars(beta_p0=(beta_p0, "nonneg"), h_min=(h_min, "notnan"))
    _check("h p", (h, p))
    return _module(impl, h, p).kl_pole(h, p, beta_p0=beta_p0, h_min=h_min)


def arturo_apply(eta: float, w: Any, a: Any, h: Any, p: Any, out: Any, *, mscale: float = 1.0, beta_p0: float,
                 h_min: float = -np.inf, nu: float, beta: float, p_min: float = -np.inf,
                 impl: str = "auto") -> int:
    """The arTuRO primal update given η, fused: writes ``out`` and ``p`` in place.

    ``out = μ' − w`` with ``μ = w·mscale``, ``μ' = μ − G/(c + ηp)`` (``G = 0``
    keeps ``μ``); ``p <- max((c + νp)/(β + ν), p_min)``. Returns the number of
    clamped precisions. (The achieved mean-KL ``½ Σ p_old (μ' − μ)²`` is
    :func:`kl_dual` at the same η: a reduction here would stop the
    element-wise loop from vectorising.) Host syncs: 0 for NumPy arrays, 1 for
    CuPy arrays (the clamp count). Method inspired by arXiv 2310.20574.
    """
    _scalars(eta=(eta, "notnan"), mscale=(mscale, "finite"), beta_p0=(beta_p0, "nonneg"), h_min=(h_min, "notnan"),
             nu=(nu, "nonneg"), beta=(beta, "nonneg"), p_min=(p_min, "notnan"))
    if not beta + nu > 0:
        raise ValueError(f"beta + nu must be > 0 (the precision update divides by it), got {beta} + {nu}")
    arrays = (w, a, h, p, out)
    _check("w a h p out", arrays, "p out")
    return _module(impl, *arrays).arturo_apply(eta, *arrays, mscale=mscale, beta_p0=beta_p0, h_min=h_min, nu=nu,
                                               beta=beta, p_min=p_min)


def _eta_list(etas: Any) -> tuple[float, ...]:
    e = tuple(float(x) for x in np.asarray(etas, dtype=np.float64).reshape(-1))
    if any(x != x for x in e):
        raise ValueError(f"etas must not hold NaN, got {e}")
    return e


def kl_dual_multi(etas: Any, w: Any, a: Any, h: Any, p: Any, *, mscale: float = 1.0, beta_p0: float,
                  h_min: float = -np.inf, domain_check: bool = False,
                  impl: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """:func:`kl_dual` at every η of ``etas`` (a sequence of floats) in one pass over memory.

    Returns two float64 host arrays ``(KL, dKL/dη)`` of ``len(etas)``. The Numba kernel splits the
    arrays into chunks of ``cpu.CHUNK`` elements and runs the η-loop over each chunk while it is in
    cache (each further η costs compute, not memory traffic); its sums are added in chunk order, so
    they do not depend on the number of threads. Host syncs: 0 (NumPy), 1 (CuPy), 1 per η
    (``impl="numpy"``/``"reference"``). Method inspired by arXiv 2310.20574.
    """
    e = _eta_list(etas)
    _scalars(mscale=(mscale, "finite"), beta_p0=(beta_p0, "nonneg"), h_min=(h_min, "notnan"))
    arrays = (w, a, h, p)
    _check("w a h p", arrays)
    return _module(impl, *arrays).kl_dual_multi(e, *arrays, mscale=mscale, beta_p0=beta_p0, h_min=h_min,
                                                domain_check=domain_check)


def arturo_prepare(etas: Any, g: Any, w: Any, a: Any, h: Any, P00: Any, P01: Any, P11: Any, p: Any, an: Any, hn: Any,
                   *, xscale: float = 1.0, q: float, r: float, forget: float = 1.0, mscale: float = 1.0,
                   beta_p0: float, h_min: float = -np.inf, domain_check: bool = False, pole: bool = True,
                   impl: str = "auto") -> tuple[int, float, int, np.ndarray, np.ndarray]:
    """Pass 1 of an arTuRO step, fused: read-only on the state, one pass over memory.

    Writes the filter update of :func:`rls_filter_update` (``x = w·xscale``, observation ``g``) of
    ``a, h`` into the scratch arrays ``an, hn`` (coordinates with a non-finite ``g`` or ``x`` keep
    ``a, h``); ``a, h, P00, P01, P11, p`` are not written. On the filtered values as stored, returns
    ``(n_skipped, pole, n_negative_h, KL, dKL)``: the coordinates skipped, ``max(0, pole)`` and the
    count of :func:`kl_pole` (clipped at 0, what the exact solver uses: the Numba kernel divides only
    in chunks where some ``−c_j/p_j`` may be positive; NaN with ``pole=False``, which saves that
    division), and :func:`kl_dual_multi` at ``etas``. Shapes ``(n,)``, one dtype. Host syncs: 0 (NumPy), 3 (CuPy).
    Method inspired by arXiv 2310.20574.
    """
    e = _eta_list(etas)
    _scalars(xscale=(xscale, "finite"), q=(q, "nonneg"), r=(r, "pos"), forget=(forget, "forget"),
             mscale=(mscale, "finite"), beta_p0=(beta_p0, "nonneg"), h_min=(h_min, "notnan"))
    arrays = (g, w, a, h, P00, P01, P11, p, an, hn)
    _check("g w a h P00 P01 P11 p an hn", arrays, "an hn")
    return _module(impl, *arrays).arturo_prepare(e, *arrays, xscale=xscale, q=q, r=r, forget=forget, mscale=mscale,
                                                 beta_p0=beta_p0, h_min=h_min, domain_check=domain_check,
                                                 pole=bool(pole))


def arturo_finish(eta: float, g: Any, w: Any, an: Any, hn: Any, P00: Any, P01: Any, P11: Any, p: Any, a: Any, h: Any,
                  out: Any, *, xscale: float = 1.0, q: float, r: float, forget: float = 1.0, mscale: float = 1.0,
                  beta_p0: float, h_min: float = -np.inf, nu: float, beta: float, p_min: float = -np.inf,
                  want_kl: bool = False, impl: str = "auto") -> tuple[int, float, float]:
    """Last pass of an arTuRO step, fused: the state update given η, in place.

    ``P00, P01, P11`` get the covariance update of :func:`rls_filter_update` (the same ``g``,
    ``x = w·xscale``; coordinates with a non-finite ``g`` or ``x`` keep theirs), ``a, h <- an, hn``
    (from :func:`arturo_prepare`), and ``out, p`` the update of :func:`arturo_apply` computed with
    ``an, hn`` and the old ``p``. Returns ``(n_clamped, KL, dKL)``: the number of clamped
    precisions, and with ``want_kl`` the dual at η (:func:`kl_dual` on ``w, an, hn`` and the old
    ``p``: the achieved mean-KL of the step, computed per chunk while it is in cache; NaN
    otherwise). Host syncs: 0 (NumPy), 2 (CuPy; 3 with ``want_kl``). Method inspired by arXiv
    2310.20574.
    """
    _scalars(eta=(eta, "notnan"), xscale=(xscale, "finite"), q=(q, "nonneg"), r=(r, "pos"),
             forget=(forget, "forget"), mscale=(mscale, "finite"), beta_p0=(beta_p0, "nonneg"),
             h_min=(h_min, "notnan"), nu=(nu, "nonneg"), beta=(beta, "nonneg"), p_min=(p_min, "notnan"))
    if not beta + nu > 0:
        raise ValueError(f"beta + nu must be > 0 (the precision update divides by it), got {beta} + {nu}")
    arrays = (g, w, an, hn, P00, P01, P11, p, a, h, out)
    _check("g w an hn P00 P01 P11 p a h out", arrays, "P00 P01 P11 p a h out")
    return _module(impl, *arrays).arturo_finish(eta, *arrays, xscale=xscale, q=q, r=r, forget=forget, mscale=mscale,
                                                beta_p0=beta_p0, h_min=h_min, nu=nu, beta=beta, p_min=p_min,
                                                want_kl=bool(want_kl))
