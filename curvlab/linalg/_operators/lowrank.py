"""``D + U C Uᵀ``: :class:`LowRankPlusDiagonal` with exact eigenvalues and a checked Woodbury solve.

Re-exported by :mod:`curvlab.linalg.operators` (with its tuning constants; rebinding one there,
e.g. ``operators.WOODBURY_DENSE_FALLBACK_N = 10``, rebinds it here too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import backend
from .base import LinearOperator
from .checks import _finite_scalar, _is_symmetric, _solve_checked, _sym_tol

#: LowRankPlusDiagonal.solve: dense float64 fallback up to this size when Woodbury is inaccurate
WOODBURY_DENSE_FALLBACK_N = 4096
#: LowRankPlusDiagonal.solve: entries |d_i| <= τ ‖U_i‖² ‖C‖_F are eliminated with the core (bordered system)
_SPLIT_TAU = 1e-3
#: ... up to this many of them; beyond, only the dense fallback (n <= WOODBURY_DENSE_FALLBACK_N) is stable
_SPLIT_MAX = 1024


class LowRankPlusDiagonal(LinearOperator):
    """``A = D + U C Uᵀ``: a diagonal plus a symmetric rank-``k`` term.

    Parameters
    ----------
    d : float or array ``(n,)``
        The diagonal ``D``; a scalar means ``d * I``.
    U : array ``(n, k)``
    C : array ``(k, k)``, optional
        Symmetric core (default identity). It may be indefinite or singular.
    check : bool
        Default True: ``d``, ``U``, ``C`` must be finite and ``C`` symmetric
        (``‖C - Cᵀ‖_F <= 100 sqrt(k) eps ‖C‖_F``), else ``ValueError`` naming the
        argument. ``psd`` is computed, never declared: ``min(d) >= 0`` and
        ``eigvalsh(C) >= 0`` (exact for the ``k x k`` core).

    Exact spectral data: when ``D = sigma I`` the eigenvalues are
    ``sigma + eig(R C Rᵀ)`` (``U = Q R``, a ``k x k`` problem) and ``sigma``
    with multiplicity ``n - rank``; :meth:`eigh_lowrank` returns the ``k``
    non-trivial pairs, :meth:`eigvalsh` all ``n`` values. :meth:`solve` uses
    the Woodbury identity in the form
    ``A^{-1} = D^{-1} - D^{-1} U (I + C Uᵀ D^{-1} U)^{-1} C Uᵀ D^{-1}``,
    valid for singular ``C``; cost ``O(n k^2 + k^3)``, with a backward-error
    check, iterative refinement and a dense fallback (see :meth:`solve`).

    Examples
    --------
    >>> import numpy as np
    >>> U = np.array([[1.0], [1.0], [0.0]])
    >>> A = LowRankPlusDiagonal(1.0, U)
    >>> A.eigvalsh()
    array([1., 1., 3.])
    >>> A.solve(A @ np.array([1.0, 2.0, 3.0]))
    array([1., 2., 3.])
    """

    def __init__(self, d: Any, U: Any, C: Any = None, *, check: bool = True) -> None:
        backend.check_float_array(U, "U", ndim=2)
        if not (np.isscalar(d) or (isinstance(d, np.ndarray) and d.ndim == 0)):
            backend.check_float_array(d, "d", ndim=1)
        if C is not None:
            backend.check_float_array(C, "C", ndim=2)
        xp = backend.get_namespace(U, d if not np.isscalar(d) else None, C)
        n, k = U.shape
        dtype = U.dtype
        if np.isscalar(d) or (isinstance(d, np.ndarray) and d.ndim == 0):
            d_vec = None
            sigma: float | None = _finite_scalar(d, "d")
        else:
            backend.check_float_array(d, "d", ndim=1)
            if d.shape != (n,):
                raise ValueError(f"d has shape {tuple(d.shape)}, expected ({n},) to match U of shape {(n, k)}")
            d_vec = d.astype(dtype, copy=False)
            sigma = None
        self.sigma = sigma
        if C is None:
            C = xp.eye(k, dtype=dtype)
        else:
            backend.check_float_array(C, "C", ndim=2)
            if C.shape != (k, k):
                raise ValueError(f"C has shape {tuple(C.shape)}, expected ({k}, {k}) to match U of shape {(n, k)}")
            C = C.astype(dtype, copy=False)
        if check:
            backend.check_finite_data(U, "U")
            if d_vec is not None:
                backend.check_finite_data(d_vec, "d")
            backend.check_finite_data(C, "C")
            ok, rel = _is_symmetric(C, xp)
            if not ok:
                raise ValueError(
                    f"C must be a symmetric (k, k) core: ‖C - Cᵀ‖_F / ‖C‖_F = {rel:.2e} exceeds the round-off "
                    f"tolerance {_sym_tol(C.dtype, k):.1e}; pass 0.5 * (C + C.T) if the symmetric part is meant "
                    "(D + U C Uᵀ with a non-symmetric C is not symmetric)"
                )
        self.U, self.C, self._d = U, C, d_vec
        dmin = sigma if sigma is not None else float(xp.min(d_vec)) if n else 0.0
        cmin = float(xp.linalg.eigvalsh(0.5 * (C + C.T)).min()) if k else 0.0
        super().__init__((n, n), dtype, symmetric=True, psd=(dmin >= 0 and cmin >= 0), xp=xp)

    @property
    def diagonal(self) -> Any:
        """The diagonal ``D`` as a vector ``(n,)``."""
        if self._d is None:
            return self.xp.full(self.shape[0], self.sigma, dtype=self.dtype)
        return self._d

    def _dmul(self, X: Any) -> Any:
        if self._d is None:
            return self.dtype.type(self.sigma) * X
        return self._d[:, None] * X if X.ndim == 2 else self._d * X

    def _matvec(self, v: Any) -> Any:
        return self._dmul(v) + self.U @ (self.C @ (self.U.T @ v))

    def _matmat(self, V: Any) -> Any:
        return self._dmul(V) + self.U @ (self.C @ (self.U.T @ V))

    def shift(self, lam: float) -> LowRankPlusDiagonal:
        lam = _finite_scalar(lam, "lam")
        if self.sigma is not None:  # D = sigma I (then self._d is None)
            return LowRankPlusDiagonal(self.sigma + float(lam), self.U, self.C)
        return LowRankPlusDiagonal(self._d + self.dtype.type(lam), self.U, self.C)

    def eigh_lowrank(self) -> tuple[Any, Any]:
        """The ``k`` eigenpairs that the low-rank term moves (``D = sigma I`` only).

        Returns ascending eigenvalues ``(k,)`` and orthonormal eigenvectors
        ``(n, k)``; every vector orthogonal to ``range(U)`` has eigenvalue
        ``sigma``. Computed from the ``k x k`` matrix ``R C Rᵀ`` in float64.
        """
        if self.sigma is None:
            raise ValueError(
                "exact eigenvalues through the core matrix need a constant diagonal D = sigma*I; "
                "use an iterative eigen-solver for a general diagonal"
            )
        xp = self.xp
        Q, R = xp.linalg.qr(self.U.astype(np.float64))
        core = R @ self.C.astype(np.float64) @ R.T
        theta, W = xp.linalg.eigh(0.5 * (core + core.T))
        vals = (self.sigma + theta).astype(self.dtype)
        return vals, (Q @ W).astype(self.dtype)

    def eigvalsh(self) -> Any:
        """All ``n`` eigenvalues, ascending (``D = sigma I`` only; ``k <= n``)."""
        n, k = self.U.shape
        if k > n:
            raise ValueError(f"eigvalsh needs rank k <= n, got U of shape {(n, k)}")
        vals, _ = self.eigh_lowrank()
        rest = self.xp.full(n - k, self.sigma, dtype=self.dtype)
        return self.xp.sort(self.xp.concatenate([vals, rest]))

    def _woodbury_split(self, d64: Any, U: Any, C: Any) -> tuple[Any, Any, Any, Any] | None:
        """Indices ``R`` (``|d_i| > τ ‖U_i‖² ‖C‖_F``, τ = 1e-3) and ``S`` (tiny or zero ``d_i``), the bordered
        ``(k+s) x (k+s)`` matrix ``[[I + C U_Rᵀ D_R⁻¹ U_R, -C U_Sᵀ], [U_S, D_S]]`` and ``D_R⁻¹``; ``None``
        when ``s > _SPLIT_MAX`` (then only the dense fallback is stable). One sync (the count ``s``)."""
        xp = self.xp
        k = U.shape[1]
        normC = float(xp.linalg.norm(C)) if k else 0.0
        small = (d64 == 0) | (xp.abs(d64) <= _SPLIT_TAU * xp.sum(U * U, axis=1) * normC)
        s = int(xp.count_nonzero(small))
        if s > _SPLIT_MAX:
            return None
        Ridx, Sidx = xp.nonzero(~small)[0], xp.nonzero(small)[0]
        dinvR = 1.0 / d64[Ridx]
        UR, US = U[Ridx], U[Sidx]
        T = xp.empty((k + s, k + s), dtype=np.float64)
        T[:k, :k] = xp.eye(k) + C @ (UR.T @ (dinvR[:, None] * UR))
        T[:k, k:] = -(C @ US.T)
        T[k:, :k] = US
        T[k:, k:] = xp.diag(d64[Sidx])
        return Ridx, Sidx, T, dinvR

    def solve(self, b: Any, *, refine: int = 2) -> Any:
        """``A^{-1} b`` by Woodbury, ``b`` of shape ``(n,)`` or ``(n, m)``; float64 inside.

        The plain Woodbury form is not backward stable when ``D`` has entries
        tiny against ``U C Uᵀ`` (the capacitance matrix inherits ``D^{-1}``'s
        scale): with an entry of 1e-16 on a well-conditioned ``A`` it lost every
        digit. So the ``s`` entries with ``|d_i| <= 1e-3 ‖U_i‖² ‖C‖_F`` (zeros
        included) are eliminated together with the core in a bordered
        ``(k+s) x (k+s)`` system ``[[I + C U_Rᵀ D_R⁻¹ U_R, -C U_Sᵀ], [U_S, D_S]]``
        (``y = C Uᵀ x``; ``O(n k^2 + (k+s)^3)``, plain Woodbury when ``s = 0``),
        and every solve measures its backward error
        ``η = ‖b - A x‖ / (‖A‖ ‖x‖ + ‖b‖)`` (per column, ``‖A‖`` bounded by
        ``max|d| + ‖U‖_F^2 ‖C‖_F``; cost ``O(n k)``), runs up to ``refine`` steps
        of iterative refinement while ``η > 64 n eps``, and then, for
        ``n <= WOODBURY_DENSE_FALLBACK_N`` (4096), solves the dense float64
        system by LU (``O(n^3)``). One device sync per check on CuPy.

        Raises
        ------
        numpy.linalg.LinAlgError
            ``D`` has a zero entry while the Woodbury form is needed, ``A`` is
            singular, or the backward error stays above the tolerance (``n``
            too large for the dense fallback): never a silently inaccurate
            result.
        """
        xp = self.xp
        b = self._check_input(b, getattr(b, "ndim", 1), "b")
        refine = int(refine)
        n, k = self.U.shape
        vec = b.ndim == 1
        b64 = b.astype(np.float64)
        B = b64[:, None] if vec else b64
        d64 = self.diagonal.astype(np.float64)
        U = self.U.astype(np.float64)
        C = self.C.astype(np.float64)
        tol = 64.0 * max(n, 1) * np.finfo(np.float64).eps
        normA = float(xp.max(xp.abs(d64))) if n else 0.0
        normA += float(xp.linalg.norm(U)) ** 2 * float(xp.linalg.norm(C))

        def residual(X: Any) -> Any:
            return B - (d64[:, None] * X + U @ (C @ (U.T @ X)))

        def backward_error(X: Any, R: Any) -> float:
            num = xp.linalg.norm(R, axis=0)
            den = normA * xp.linalg.norm(X, axis=0) + xp.linalg.norm(B, axis=0)
            eta = xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0)
            return float(xp.max(eta)) if eta.size else 0.0

        X = None
        eta = np.inf
        split = self._woodbury_split(d64, U, C)
        if split is not None:
            msg = "LowRankPlusDiagonal.solve: the operator is singular (the bordered capacitance system is singular)"
            Ridx, Sidx, T, dinvR = split

            def woodbury(Rhs: Any) -> Any:
                bR = Rhs[Ridx]
                sol = _solve_checked(
                    xp, T, xp.concatenate([C @ (U[Ridx].T @ (dinvR[:, None] * bR)), Rhs[Sidx]], axis=0), msg
                )
                out = xp.empty_like(Rhs)
                out[Ridx] = dinvR[:, None] * (bR - U[Ridx] @ sol[:k])
                out[Sidx] = sol[k:]
                return out

            try:
                X = woodbury(B)
            except np.linalg.LinAlgError:
                if n > WOODBURY_DENSE_FALLBACK_N:
                    raise
                X = None
            if X is not None:
                R = residual(X)
                eta = backward_error(X, R)
                for _ in range(refine):
                    if not eta > tol:
                        break
                    X_new = X + woodbury(R)
                    R_new = residual(X_new)
                    eta_new = backward_error(X_new, R_new)
                    if not eta_new < eta:
                        break
                    X, R, eta = X_new, R_new, eta_new
                if eta <= tol:
                    return (X[:, 0] if vec else X).astype(self.dtype)
        if n > WOODBURY_DENSE_FALLBACK_N:
            if X is None:
                raise np.linalg.LinAlgError(
                    f"LowRankPlusDiagonal.solve: more than {_SPLIT_MAX} entries of D are zero or tiny against "
                    f"U C Uᵀ and n = {n} is above the dense fallback size {WOODBURY_DENSE_FALLBACK_N}"
                )
            raise np.linalg.LinAlgError(
                f"LowRankPlusDiagonal.solve: the Woodbury solve reached a backward error of {eta:.1e} > {tol:.1e} "
                f"(D is badly scaled against U C Uᵀ) and n = {n} is above the dense fallback size "
                f"WOODBURY_DENSE_FALLBACK_N = {WOODBURY_DENSE_FALLBACK_N}"
            )
        # dense float64 LU: backward stable whatever the scaling of D
        Adense = xp.diag(d64) + U @ C @ U.T
        X = _solve_checked(xp, Adense, B, "LowRankPlusDiagonal.solve: the operator is singular")
        R = residual(X)
        eta = backward_error(X, R)
        if not eta <= tol:
            raise np.linalg.LinAlgError(
                f"LowRankPlusDiagonal.solve: the operator is numerically singular (backward error {eta:.1e} "
                f"of a dense LU solve > {tol:.1e})"
            )
        return (X[:, 0] if vec else X).astype(self.dtype)
