"""Layer norms, dual norms and duality maps (method inspired by arXiv 1708.00523).

A layer's weight block ``W`` (shape ``(n, m)``; a conv kernel ``(out, in, k1, k2, ...)``
is viewed as the matrix ``(out, in*k1*k2*...)``, see :func:`as_matrix`) is measured by a
norm ``‖·‖``; its dual norm is ``‖G‖_* = sup{⟨G, U⟩ : ‖U‖ ≤ 1}`` with
``⟨G, U⟩ = Σ G∘U``, and the duality map ``ρ(G)`` satisfies

    ⟨G, ρ(G)⟩ = ‖G‖_*²      and      ‖ρ(G)‖ = ‖G‖_*.

Supported norms (``scale = c > 0``; thin SVD ``G = U diag(σ) Vᵀ`` keeping
``σ_k > rtol·σ_max`` with ``rtol = max(n, m)·eps``):

=================  ==================  ==========================
norm ``‖Δ‖``        dual ``‖G‖_*``       duality map ``ρ(G)``
=================  ==================  ==========================
``c·‖Δ‖_op``        ``Σσ_k / c``         ``(Σσ_k / c²) · U Vᵀ``
``c·‖Δ‖_F``         ``‖G‖_F / c``        ``G / c²``
=================  ==================  ==========================

The polar factor ``U Vᵀ`` comes from an exact thin SVD (``method="svd"``, LAPACK gesdd
with a gesvd retry on NumPy; on NumPy with ``min(n, m) ≥ GRAM_MIN_SIZE`` from the float64
Gram matrix instead: ``M Mᵀ = W diag(σ²) Wᵀ``, ``U Vᵀ = W_r diag(1/σ_r) W_rᵀ M``, 3-4x faster
and taken only when every kept ``σ_i`` is resolved to ``GRAM_TOL`` relative, which holds
for every float32 matrix wider than ~400 (see :func:`_gram_spectrum`; else the SVD) or from the Newton–Schulz iteration
``X ← 1.5 X − 0.5 X XᵀX`` started at ``X₀ = G/‖G‖_F`` (``method="newton_schulz"``,
matrix products only: fast on GPUs). Newton–Schulz acts on each singular value
separately: after ``k`` steps a singular value ``σ`` becomes ``p^k(σ/‖G‖_F)`` with
``p(x) = 1.5x − 0.5x³``, so (exact arithmetic)

    ‖X_k − U Vᵀ‖_op = max_k |p^k(σ_k/‖G‖_F) − 1|

over the non-zero singular values (zero singular values stay zero). Small relative
singular values converge slowly (they grow by 1.5× per step until near 1, then the
error squares each step): a singular value ``σ ≥ δ·‖G‖_F`` is accurate to
``tol`` after about ``log(1/δ)/log(1.5) + log2(log(1/tol)) + 1`` steps. The iteration
stops when ``‖X_{k+1} − X_k‖_F ≤ tol·‖X_k‖_F`` or after ``max_steps``;
:func:`newton_schulz_error_bound` returns the exact error from the singular values
(used in the tests), and :func:`polar_factor` reports the steps used. The nuclear
norm is then ``⟨G, X_k⟩`` (exact when ``X_k = U Vᵀ``).

Examples
--------
>>> import numpy as np
>>> G = np.array([[3.0, 0.0], [0.0, 4.0]])
>>> rho, dn = duality_map(G, "spectral")
>>> float(dn), float(np.vdot(G, rho))
(7.0, 49.0)
>>> round(float(layer_norm(rho, "spectral")), 12)
7.0
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from .. import backend

__all__ = [
    "NORMS",
    "LayerNorm",
    "as_matrix",
    "from_matrix",
    "layer_norm",
    "dual_norm",
    "duality_map",
    "polar_factor",
    "newton_schulz_polar",
    "newton_schulz_error_bound",
    "PolarResult",
]

NORMS = ("spectral", "frobenius")


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _check_scale(scale: float) -> float:
    # TypeError naming scale for a bool/str/complex/None, ValueError for NaN/Inf/<= 0
    return backend.check_positive("scale", scale)


def as_matrix(W: Any, name: str = "W") -> Any:
    """View a weight block as a matrix: ``(n,)`` → ``(n, 1)``, ``(n, m)`` unchanged,
    a conv kernel ``(out, in, k1, ...)`` → ``(out, in·k1·...)`` (row-major, a view when possible).

    >>> as_matrix(np.zeros((8, 3, 5, 5))).shape
    (8, 75)

    ``name`` is the argument named in the errors (a float32/float64 array of ndim >= 1 is required).
    """
    backend.check_float_array(W, name)
    if W.ndim == 0:
        raise ValueError(f"{name} must have ndim >= 1, got shape {tuple(W.shape)}")
    if W.ndim == 1:
        return W.reshape(W.shape[0], 1)
    if W.ndim == 2:
        return W
    return W.reshape(W.shape[0], -1)


def from_matrix(M: Any, shape: Sequence[int]) -> Any:
    """Inverse of :func:`as_matrix`: reshape the matrix ``M`` back to the block ``shape``."""
    shape = tuple(int(s) for s in shape)
    if int(np.prod(shape)) != M.size:
        raise ValueError(f"M has {M.size} entries, cannot reshape to shape {shape}")
    return M.reshape(shape)


def _rtol(M: Any) -> float:
    return max(M.shape) * float(np.finfo(M.dtype).eps)


def _finite(xp: Any, out: Any) -> bool:
    """Whether every array of an SVD result is finite: one device reduction, one host read."""
    parts = out if isinstance(out, tuple) else (out,)
    ok = xp.all(xp.isfinite(parts[0]))
    for x in parts[1:]:
        ok = ok & xp.all(xp.isfinite(x))
    return bool(ok)


def _svd(M: Any, compute_uv: bool = True, check: bool = True) -> Any:
    """Thin SVD (``(U, s, Vt)``, or ``s`` alone without ``compute_uv``).

    A failure is detected both ways it shows: LAPACK raising ``LinAlgError`` (NumPy) and a
    non-finite result (cuSOLVER on CuPy returns NaN/garbage instead of raising; one finiteness
    check, one host sync). Either way the SVD is retried on the host with the gesvd driver
    (scipy) and moved back; ``LinAlgError`` if that fails too (or ``M`` itself is not finite),
    so callers' ``except LinAlgError`` fallbacks trigger on every backend. ``check=False``
    skips the finiteness check: the caller then checks a number it reads anyway and calls
    :func:`_svd_fallback` itself (no extra sync).
    """
    xp = backend.get_namespace(M)
    try:
        out = xp.linalg.svd(M, full_matrices=False, compute_uv=compute_uv)
        if not check or _finite(xp, out):
            return out
    except np.linalg.LinAlgError:
        pass
    return _svd_fallback(M, compute_uv)


def _svd_fallback(M: Any, compute_uv: bool = True) -> Any:
    """The SVD of :func:`_svd` retried on the host with LAPACK gesvd (scipy), moved back."""
    xp = backend.get_namespace(M)
    import scipy.linalg  # noqa: PLC0415

    host = backend.to_numpy(M)
    if not np.all(np.isfinite(host)):
        raise np.linalg.LinAlgError("SVD of a matrix holding NaN or Inf")
    try:
        out = scipy.linalg.svd(host, full_matrices=False, compute_uv=compute_uv, lapack_driver="gesvd",
                               check_finite=False)
    except (np.linalg.LinAlgError, ValueError) as e:
        raise np.linalg.LinAlgError(f"SVD failed (gesdd and gesvd): {e}") from e
    if not _finite(np, out):
        raise np.linalg.LinAlgError("SVD failed: non-finite result from gesdd and gesvd")
    if xp is np:
        return out
    return tuple(xp.asarray(x) for x in out) if isinstance(out, tuple) else xp.asarray(out)


#: ``min(n, m)`` from which NumPy computes the spectral quantities from the float64 Gram matrix
#: (:func:`_gram_spectrum`) instead of a thin SVD; below, the SVD is cheap anyway.
GRAM_MIN_SIZE = 48
#: Relative accuracy asked of every kept singular value on the Gram route (estimate
#: ``eps64·λ_max/λ_i``; measured errors are 5-100x below it). Unmet: the exact SVD is used.
GRAM_TOL = 1e-7


@dataclasses.dataclass
class _Gram:
    """The float64 Gram matrix ``A = M Mᵀ`` of a matrix oriented wide (``M`` is ``(k, l)``,
    ``k ≤ l``; ``transposed``: the caller's matrix is ``Mᵀ``), its eigenvalues ``lam``
    (ascending) and ``rtol`` (the rank tolerance of the caller's dtype and shape)."""

    M: Any
    transposed: bool
    A: Any
    lam: Any
    rtol: float
    W: Any = None   # eigenvectors of A, when computed with the eigenvalues (``vectors=True``)

    @property
    def sigma(self) -> Any:
        """Singular values, descending, float64 ``(k,)``."""
        return np.sqrt(np.maximum(self.lam[::-1], 0.0))

    def kept(self) -> int:
        s = self.sigma
        return int(np.sum(s > self.rtol * s[0])) if s.size and s[0] > 0 else 0


def _eigh_vectors(A: Any) -> tuple[Any, Any]:
    """``eigh`` of a symmetric float64 matrix by SciPy's LAPACK ``syevd`` on a copy (a few % faster
    than ``numpy.linalg.eigh`` at n = 512); ``LinAlgError`` on failure."""
    import scipy.linalg as sla  # noqa: PLC0415

    return sla.eigh(A.copy(), driver="evd", overwrite_a=True, check_finite=False)


def _gram_spectrum(M: Any, vectors: bool = False) -> _Gram | None:
    """Singular values of ``M`` from the eigenvalues of its float64 Gram matrix (NumPy only).

    ``A = M₆₄ M₆₄ᵀ`` over the shorter side ``k`` (``k²l`` flops) and ``eigvalsh(A)`` (``4k³/3``):
    3-4x cheaper than LAPACK ``gesdd`` (values only) at ``k`` = 512, and in float64 whatever the
    dtype of ``M``. An eigenvalue ``λ_i = σ_i²`` is computed to an absolute error of about
    ``eps64·λ_max``, so ``σ_i`` to a relative ``eps64·λ_max/λ_i``: the route is taken only when
    every kept singular value (``σ_i > rtol·σ_max``) is resolved to :data:`GRAM_TOL`, i.e. when
    the rank threshold ``rtol²·λ_max`` is above the resolution ``eps64·λ_max/GRAM_TOL`` (float32
    inputs wider than ~400) or when every eigenvalue is above it (well-conditioned, full rank).
    Returns ``None`` otherwise (CuPy, small or empty ``M``, non-finite values, a zero matrix,
    an unresolved spectrum), and the caller uses the SVD. No host sync (NumPy only).
    ``vectors=True`` also keeps the eigenvectors (``eigh``: about 3x ``eigvalsh``), which
    :func:`_gram_polar` then reuses.
    """
    if backend.get_namespace(M) is not np or M.ndim != 2 or min(M.shape) < GRAM_MIN_SIZE:
        return None
    transposed = M.shape[0] > M.shape[1]
    Mw = M.T if transposed else M
    M64 = Mw.astype(np.float64)
    A = M64 @ M64.T
    W = None
    try:
        if vectors:
            lam, W = _eigh_vectors(A)
        else:
            lam = np.linalg.eigvalsh(A)
    except (np.linalg.LinAlgError, ValueError):
        return None
    lmax = float(lam[-1]) if lam.size else 0.0
    if not (np.isfinite(lmax) and lmax > 0.0) or not np.all(np.isfinite(lam)):
        return None
    rtol = _rtol(M)
    floor = float(np.finfo(np.float64).eps) * lmax / GRAM_TOL
    if rtol * rtol * lmax < floor and float(lam[0]) < floor:
        return None
    return _Gram(M64, transposed, A, lam, rtol, W)


#: Lanczos iterations of :func:`_top_singular_value` before it gives up (the SVD answers).
TOP_SV_MAXITER = 300
#: Relative residual ``‖A y − θ y‖ ≤ TOP_SV_RTOL·θ`` at which the top Ritz value is accepted.
TOP_SV_RTOL = 1e-13


def _top_singular_value(M: Any) -> float | None:
    """``σ_max(M)`` by Lanczos on ``A = MᵀM`` (or ``MMᵀ``, the smaller) in float64, on NumPy for
    ``min(n, m) ≥ GRAM_MIN_SIZE``: full reorthogonalisation, a fixed start vector, and the top
    Ritz pair ``(θ, y)`` of the tridiagonal checked every fourth step; accepted when its residual
    ``β_k |s_k|`` (there is an eigenvalue of ``A`` within it of ``θ``) is ≤ ``TOP_SV_RTOL·θ``, so
    ``σ_max = √θ`` to ~1e-13 relative at worst and to rounding in practice (the eigenvalue error
    is about the residual squared over the gap). ~60 products with ``M`` at 512x512: ~5x
    cheaper than ``gesdd``. ``None`` (the caller uses the SVD) elsewhere: CuPy, small, non-finite
    or zero ``M``, or no convergence in ``TOP_SV_MAXITER`` steps."""
    if backend.get_namespace(M) is not np or M.ndim != 2 or min(M.shape) < GRAM_MIN_SIZE:
        return None
    if not np.all(np.isfinite(M)):
        return None
    from scipy.linalg import eigh_tridiagonal  # noqa: PLC0415

    M64 = M.astype(np.float64)
    tall = M64.shape[0] >= M64.shape[1]
    d = M64.shape[1] if tall else M64.shape[0]
    maxit = min(d, TOP_SV_MAXITER)
    V = np.empty((maxit + 1, d))
    v = np.cos(1.3 * np.arange(d)) + 0.5
    V[0] = v / np.linalg.norm(v)
    alpha, beta = np.empty(maxit), np.empty(maxit)
    for k in range(maxit):
        w = M64.T @ (M64 @ V[k]) if tall else M64 @ (M64.T @ V[k])
        alpha[k] = V[k] @ w
        Vk = V[:k + 1]
        w -= Vk.T @ (Vk @ w)          # full reorthogonalisation, twice
        w -= Vk.T @ (Vk @ w)
        b = float(np.linalg.norm(w))
        beta[k] = b
        if k % 4 == 3 or b == 0.0 or k == maxit - 1:
            th, S = eigh_tridiagonal(alpha[:k + 1], beta[:k], select="i", select_range=(k, k))
            theta = float(th[0])
            if not (np.isfinite(theta) and theta > 0.0):
                return None
            if b * abs(float(S[-1, 0])) <= TOP_SV_RTOL * theta:
                return float(np.sqrt(theta))
        if b == 0.0:
            return None
        V[k + 1] = w / b
    return None


def _gram_polar(g: _Gram, dtype: Any) -> tuple[Any, float, int]:
    """``(Q, Σσ_kept, rank)``: the polar factor ``Q = W_r diag(1/σ_r) W_rᵀ M`` (``W``: eigenvectors
    of the Gram matrix, ``r`` kept singular values) in ``dtype``, shaped like the caller's matrix.

    One ``eigh`` of the ``k×k`` Gram matrix (unless ``g`` holds its vectors) and two products
    (float64); accurate to about ``eps64·(σ_max/σ_r)²`` ≤ :data:`GRAM_TOL` (checked by
    :func:`_gram_spectrum`). Raises ``LinAlgError`` if ``eigh`` fails (the caller falls back to the SVD).
    """
    lam, W = (g.lam, g.W) if g.W is not None else _eigh_vectors(g.A)
    sig = np.sqrt(np.maximum(lam, 0.0))
    smax = float(sig[-1])
    keep = sig > g.rtol * smax
    r = int(keep.sum())
    if r == 0:
        shape = g.M.T.shape if g.transposed else g.M.shape
        return np.zeros(shape, dtype=dtype), 0.0, 0
    k = sig.shape[0]
    sr = sig[k - r:]                       # σ ascending: the kept ones are the last r
    C = W[:, k - r:] / np.sqrt(sr)
    Q = (C @ C.T) @ g.M        # (M Mᵀ)^{-1/2} M on the kept subspace; C Cᵀ is one syrk
    if g.transposed:
        Q = Q.T
    return np.ascontiguousarray(Q, dtype=dtype), float(sr.sum()), r


def _singular_values(M: Any) -> Any:
    """The singular values of ``M`` (:func:`_svd` without vectors; used by methods.dsgd too)."""
    return _svd(M, compute_uv=False)


def _sv_reduce(M: Any, reduce: Any) -> float:
    """``reduce(singular values)`` read as a float in one host read; the SVD's own failure
    shows as a non-finite ``Σσ`` in the same read and is retried by :func:`_svd_fallback`."""
    xp = backend.get_namespace(M)
    for attempt in (0, 1):
        s = _svd(M, compute_uv=False, check=False) if attempt == 0 else _svd_fallback(M, compute_uv=False)
        total, value = (float(v) for v in backend.to_numpy(xp.stack([s.sum(dtype=np.float64),
                                                                      xp.asarray(reduce(s), dtype=np.float64)])))
        if np.isfinite(total):
            return value
    raise np.linalg.LinAlgError("SVD failed: non-finite singular values")  # pragma: no cover - fallback raises


def _kept(s: Any, M: Any) -> Any:
    xp = backend.get_namespace(s)
    if s.size == 0:
        return s
    smax = s.max()
    return xp.where(s > _rtol(M) * smax, s, xp.zeros_like(s))


def layer_norm(W: Any, norm: str = "spectral", scale: float = 1.0) -> float:
    """The layer norm ``scale·‖W‖`` (spectral: largest singular value; frobenius: ‖W‖_F).

    ``W``: float32/float64 array of ndim ≥ 1 (reshaped by :func:`as_matrix`). Returns a
    Python float (computed in the dtype of ``W``; on NumPy for ``min(n, m) ≥ GRAM_MIN_SIZE`` by
    float64 Lanczos checked to a 1e-13 residual, :func:`_top_singular_value`, else the SVD).
    """
    _check_norm(norm)
    c = _check_scale(scale)
    M = as_matrix(W)
    if M.size == 0:
        return 0.0
    xp = backend.get_namespace(M)
    if norm == "frobenius":
        return c * float(xp.linalg.norm(M))
    top = _top_singular_value(M)
    if top is not None:
        return c * top
    return c * _sv_reduce(M, lambda s: s.max())


def dual_norm(G: Any, norm: str = "spectral", scale: float = 1.0) -> float:
    """The dual norm ``‖G‖_*`` of ``scale·‖·‖``: nuclear/scale or Frobenius/scale.

    The nuclear norm sums the singular values kept by the rank tolerance (module docstring).

    >>> float(dual_norm(np.eye(3), "spectral", scale=2.0))
    1.5
    """
    _check_norm(norm)
    c = _check_scale(scale)
    M = as_matrix(G, "G")
    if M.size == 0:
        return 0.0
    xp = backend.get_namespace(M)
    if norm == "frobenius":
        return float(xp.linalg.norm(M)) / c
    g = _gram_spectrum(M)
    if g is not None:
        return float(g.sigma[:g.kept()].sum()) / c
    return _sv_reduce(M, lambda s: _kept(s, M).sum()) / c


@dataclasses.dataclass
class PolarResult:
    """Polar factor ``Q ≈ U Vᵀ`` of a matrix and how it was obtained.

    ``Q``: ``(n, m)`` array in the input dtype; ``nuclear``: ``⟨G, Q⟩`` (the nuclear norm
    when ``Q`` is exact); ``method``: "svd" or "newton_schulz"; ``steps``: Newton–Schulz
    iterations (0 for the SVD); ``converged``: the stopping test was met (always True for
    the SVD); ``rank``: singular values kept (SVD only, −1 otherwise).
    """

    Q: Any
    nuclear: float
    method: str
    steps: int
    converged: bool
    rank: int


def newton_schulz_polar(G: Any, max_steps: int = 60, tol: float | None = None) -> PolarResult:
    """Polar factor of ``G`` (ndim 2) by the cubic Newton–Schulz iteration.

    ``X₀ = G/‖G‖_F``, ``X ← 1.5X − 0.5 (X Xᵀ) X`` (the Gram matrix of the shorter side is
    formed, so a step costs ``4·n·m·min(n, m)`` flops). Stops when the relative Frobenius
    change is ≤ ``tol`` (default ``10·sqrt(eps)`` of the dtype: the error in ``Q`` is then
    about ``tol²``, i.e. near machine precision) or after ``max_steps``. Accuracy: see the
    module docstring and :func:`newton_schulz_error_bound`.

    >>> r = newton_schulz_polar(np.diag([1.0, 0.5]))
    >>> bool(np.allclose(r.Q, np.eye(2), atol=1e-12)), r.converged
    (True, True)
    """
    backend.check_float_array(G, "G", ndim=2)
    if int(max_steps) < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    xp = backend.get_namespace(G)
    if tol is None:
        tol = 10.0 * float(np.sqrt(np.finfo(G.dtype).eps))
    if G.size == 0:
        return PolarResult(xp.zeros_like(G), 0.0, "newton_schulz", 0, True, -1)
    fro = float(xp.linalg.norm(G))
    if fro == 0.0 or not np.isfinite(fro):
        if not np.isfinite(fro):
            raise FloatingPointError("G contains NaN or Inf")
        return PolarResult(xp.zeros_like(G), 0.0, "newton_schulz", 0, True, -1)
    wide = G.shape[0] <= G.shape[1]
    X = G / G.dtype.type(fro)
    if not wide:
        X = X.T
    a, b = G.dtype.type(1.5), G.dtype.type(0.5)
    steps, converged = 0, False
    for steps in range(1, int(max_steps) + 1):
        A = X @ X.T
        Xn = a * X - b * (A @ X)
        # the stopping test: both norms in one device-to-host transfer (one sync per step on CuPy)
        delta, size = xp.stack((xp.linalg.norm(Xn - X), xp.linalg.norm(Xn))).tolist()
        X = Xn
        if delta <= tol * size:
            converged = True
            break
    else:
        steps = int(max_steps)
    Q = X if wide else X.T
    Q = xp.ascontiguousarray(Q)
    nuclear = float(xp.vdot(G.ravel().astype(np.float64), Q.ravel().astype(np.float64)))
    return PolarResult(Q, nuclear, "newton_schulz", steps, converged, -1)


def newton_schulz_error_bound(singular_values: Any, steps: int) -> float:
    """Exact ``‖X_k − U Vᵀ‖_op`` of :func:`newton_schulz_polar` after ``steps`` iterations,
    given the singular values of ``G`` (exact arithmetic; rounding adds O(eps)).

    >>> round(newton_schulz_error_bound(np.array([1.0, 1e-3]), 3), 6)  # 1e-3/‖G‖_F grows 1.5x per step
    0.996625
    """
    s = np.asarray(backend.to_numpy(singular_values), dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    x = s / np.sqrt(np.sum(s * s))
    for _ in range(int(steps)):
        x = 1.5 * x - 0.5 * x**3
    return float(np.max(np.abs(x - 1.0)))


def polar_factor(G: Any, method: str = "svd", max_steps: int = 60, tol: float | None = None) -> PolarResult:
    """The polar factor ``U Vᵀ`` of ``G`` (ndim ≥ 1, reshaped by :func:`as_matrix`).

    ``method="svd"``: exact thin SVD, singular values ≤ ``rtol·σ_max`` dropped (rank-deficient
    ``G`` gives the partial isometry on the kept subspace); on NumPy for ``min(n, m) ≥
    GRAM_MIN_SIZE`` from the float64 Gram matrix when it resolves the kept spectrum (module
    docstring), which agrees with a float64 SVD to ~``GRAM_TOL``. ``method="newton_schulz"``: see
    :func:`newton_schulz_polar` (``max_steps``, ``tol``). ``Q`` has the shape of ``G``.
    """
    if method not in ("svd", "newton_schulz"):
        raise ValueError(f"method must be 'svd' or 'newton_schulz', got {method!r}")
    M = as_matrix(G, "G")
    xp = backend.get_namespace(M)
    if method == "newton_schulz":
        r = newton_schulz_polar(M, max_steps=max_steps, tol=tol)
        r.Q = from_matrix(r.Q, G.shape)
        return r
    if M.size == 0:
        return PolarResult(xp.zeros_like(G), 0.0, "svd", 0, True, 0)
    rg = _polar_gram(M, G.shape)
    if rg is not None:
        return rg
    U, s, Vt = _svd(M)
    keep = s > _rtol(M) * s.max() if s.size else s > 0
    rank = int(keep.sum())
    if rank == 0:
        return PolarResult(xp.zeros_like(G), 0.0, "svd", 0, True, 0)
    Q = U[:, :rank] @ Vt[:rank]
    return PolarResult(from_matrix(Q, G.shape), float(s[:rank].sum()), "svd", 0, True, rank)


def _polar_gram(M: Any, shape: Sequence[int], g: _Gram | None = None) -> PolarResult | None:
    """:func:`polar_factor` ("svd") by the Gram route (:func:`_gram_spectrum`, given or computed),
    ``None`` where the route does not apply or ``eigh`` fails (the caller uses the SVD)."""
    g = _gram_spectrum(M) if g is None else g
    if g is None:
        return None
    try:
        Q, nuc, rank = _gram_polar(g, M.dtype)
    except np.linalg.LinAlgError:
        return None
    return PolarResult(from_matrix(Q, shape), nuc, "svd", 0, True, rank)


def duality_map(G: Any, norm: str = "spectral", scale: float = 1.0, method: str = "svd",
                max_steps: int = 60, tol: float | None = None) -> tuple[Any, float]:
    """The duality map ``ρ(G)`` of the norm ``scale·‖·‖`` and the dual norm ``‖G‖_*``.

    ``G``: float32/float64 array (a matrix, a vector seen as a column, or a conv kernel seen
    through :func:`as_matrix`); ``ρ(G)`` has the shape and dtype of ``G``.
    spectral: ``ρ = (‖G‖_nuc/c²)·U Vᵀ``, ``‖G‖_* = ‖G‖_nuc/c``; frobenius: ``ρ = G/c²``,
    ``‖G‖_* = ‖G‖_F/c``. ``method`` picks the polar factor for the spectral norm ("svd" or
    "newton_schulz"; the latter approximate, with ``‖G‖_nuc`` estimated by ``⟨G, Q⟩``).
    A zero or empty ``G`` maps to zeros with dual norm 0.

    >>> rho, dn = duality_map(np.array([[1.0, 1.0]]), "frobenius", scale=2.0)
    >>> rho, round(dn, 6)
    (array([[0.25, 0.25]]), 0.707107)
    """
    _check_norm(norm)
    c = _check_scale(scale)
    backend.check_float_array(G, "G")
    xp = backend.get_namespace(G)
    if norm == "frobenius":
        M = as_matrix(G, "G")
        dn = float(xp.linalg.norm(M)) / c if M.size else 0.0
        return G * G.dtype.type(1.0 / (c * c)), dn
    r = polar_factor(G, method=method, max_steps=max_steps, tol=tol)
    nuc = r.nuclear
    return r.Q * G.dtype.type(nuc / (c * c)), nuc / c


@dataclasses.dataclass(frozen=True)
class LayerNorm:
    """A layer norm ``scale·‖·‖_kind`` bundled with how its duality map is computed.

    ``kind``: "spectral" or "frobenius"; ``scale``: ``c > 0``; ``method``: "svd" or
    "newton_schulz" (spectral only); ``max_steps``/``tol``: Newton–Schulz controls.

    >>> n = LayerNorm("spectral", scale=2.0)
    >>> round(n.dual(np.eye(2)), 12), round(n.norm(np.eye(2)), 12)
    (1.0, 2.0)
    """

    kind: str = "spectral"
    scale: float = 1.0
    method: str = "svd"
    max_steps: int = 60
    tol: float | None = None

    def __post_init__(self) -> None:
        _check_norm(self.kind)
        _check_scale(self.scale)
        if self.method not in ("svd", "newton_schulz"):
            raise ValueError(f"method must be 'svd' or 'newton_schulz', got {self.method!r}")

    def norm(self, W: Any) -> float:
        """``scale·‖W‖``."""
        return layer_norm(W, self.kind, self.scale)

    def dual(self, G: Any) -> float:
        """``‖G‖_*`` (exact, by SVD for the spectral kind)."""
        return dual_norm(G, self.kind, self.scale)

    def map(self, G: Any) -> tuple[Any, float]:
        """``(ρ(G), ‖G‖_*)`` by :func:`duality_map` with this norm's settings."""
        return duality_map(G, self.kind, self.scale, self.method, self.max_steps, self.tol)
