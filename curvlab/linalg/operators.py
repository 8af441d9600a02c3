"""Linear operators on NumPy or CuPy vectors.

A :class:`LinearOperator` knows its ``shape`` and ``dtype``, applies itself to a
vector (:meth:`~LinearOperator.matvec`) or to a block of vectors in one call
(:meth:`~LinearOperator.matmat`), declares the tags ``symmetric`` and ``psd``
that solvers check, and counts the vectors it was applied to
(``n_matvecs``; a ``matmat`` on ``k`` columns counts ``k``).

Concrete operators: :class:`CallableOperator` (from a function),
:class:`DenseOperator`, :class:`DiagonalOperator`,
:class:`LowRankPlusDiagonal` (``D + U C Uᵀ`` with exact eigenvalues and a
Woodbury solve), :class:`BlockDiagonalOperator` (one block per layer).
Algebra with SciPy's reach: ``A + B``, ``A - B``, ``-A``, ``c * A``, ``A * c``,
``A / c``, ``sum([A, B])``, ``A @ B`` (:class:`ProductOperator`), ``A @ x`` /
``A @ X`` (matvec / matmat), ``A.T`` / ``A.H`` / ``A.adjoint()`` (``A`` itself when
symmetric; a transpose operator for dense, sums, products, scalings, shifts, block
diagonals and a :class:`CallableOperator` given ``rmatvec=``; ``TypeError`` otherwise),
``A.shift(lam)`` (``A + lam I``). Tags propagate conservatively (a sum of
symmetric/PSD operators is symmetric/PSD; a product only for ``A @ A`` with ``A``
symmetric and for ``Aᵀ @ A``, ``A @ Aᵀ``); mismatched shapes raise ``ValueError``
naming the left or right operand. ``name=`` says what an operator is and leads
its ``repr``; derived operators name their parts. Solves: :func:`curvlab.linalg.solve`.
:func:`aslinearoperator` wraps anything a
solver may receive (a curvlab operator, a SciPy ``LinearOperator``, a dense
array, a callable) and :meth:`LinearOperator.to_scipy` goes the other way, so
``scipy.sparse.linalg.eigsh`` runs on ours.

Input policy: vectors must be real floating arrays of the operator's backend
with matching leading dimension; a float of the other precision is cast to
the operator's dtype; integer, boolean and complex vectors raise
``TypeError``; wrong shapes raise ``ValueError`` naming both shapes.

Declared tags are checked (``check=True``, the default, except for
:class:`CallableOperator` built from curvlab's own functions): the data of
:class:`DenseOperator`, :class:`DiagonalOperator` and
:class:`LowRankPlusDiagonal` must be finite; ``symmetric=True`` on a dense
matrix is checked exactly (``‖A - Aᵀ‖_F <= 100 sqrt(n) eps ‖A‖_F``) and on a
function by one random probe pair (:func:`symmetry_defect`; not counted in
``n_matvecs``); ``psd=True`` by the smallest eigenvalue for ``n <= 256`` and
by the diagonal and random probes above. A failed check raises ``ValueError``
naming the argument. ``check=False`` skips all of it (for huge trusted data:
the dense checks cost ``O(n^2)``, the PSD eigenvalue ``O(n^3)`` for ``n <= 256``).

Example
-------
>>> import numpy as np
>>> from curvlab.linalg.operators import DenseOperator, DiagonalOperator
>>> A = DenseOperator(np.array([[2.0, 1.0], [1.0, 3.0]]), symmetric=True)
>>> B = (A + DiagonalOperator(np.ones(2))).shift(0.5)
>>> B @ np.array([1.0, 0.0])
array([3.5, 1. ])
>>> A.n_matvecs
1
"""

from __future__ import annotations

import types
from typing import Any, Callable

import numpy as np

from .. import backend
from ._operators.base import (
    LinearOperator,
    ProductOperator,
    ScaledOperator,
    ShiftedOperator,
    SumOperator,
    _check_operand,
    _clip,
    _common_backend,
    _inherit_stochastic,
    _label,
    _scalar_add,
)
from ._operators.checks import (
    _PROBE_SEED,
    _PSD_EIG_MAX_N,
    PROBE_SYMMETRY_TOL,
    _check_dense_tags,
    _check_shape,
    _finite_scalar,
    _is_curvlab_code,
    _is_symmetric,
    _probe_tags,
    _solve_checked,
    _sym_tol,
)

#: LowRankPlusDiagonal.solve: dense float64 fallback up to this size when Woodbury is inaccurate
WOODBURY_DENSE_FALLBACK_N = 4096
#: LowRankPlusDiagonal.solve: entries |d_i| <= τ ‖U_i‖² ‖C‖_F are eliminated with the core (bordered system)
_SPLIT_TAU = 1e-3
#: ... up to this many of them; beyond, only the dense fallback (n <= WOODBURY_DENSE_FALLBACK_N) is stable
_SPLIT_MAX = 1024


__all__ = [
    "LinearOperator",
    "CallableOperator",
    "DenseOperator",
    "DiagonalOperator",
    "LowRankPlusDiagonal",
    "SumOperator",
    "ScaledOperator",
    "ShiftedOperator",
    "ProductOperator",
    "BlockDiagonalOperator",
    "ScipyWrappedOperator",
    "aslinearoperator",
    "symmetry_defect",
]


class CallableOperator(LinearOperator):
    """Operator from a function ``v -> A v`` (and optionally ``V -> A V``).

    Parameters
    ----------
    matvec : callable
        Maps a ``(n,)`` array to a ``(m,)`` array.
    shape, dtype : as in :class:`LinearOperator`.
    matmat : callable, optional
        Maps ``(n, k)`` to ``(m, k)``; without it, columns are applied one by one.
    check : bool or None
        Verify declared ``symmetric``/``psd`` tags with one random probe pair
        (two products, not counted in ``n_matvecs``; a fixed internal seed).
        ``None`` (default): verify unless ``matvec`` is curvlab's own code (the
        library's models and adapters build exact Hessian products). A failed
        check raises ``ValueError``; a probe returning NaN/Inf raises
        ``FloatingPointError``.
    rmatvec, rmatmat : callable, optional
        ``v -> Aᵀ v`` (and ``V -> Aᵀ V``): give a non-symmetric operator its
        transpose (``A.T``) and SciPy's ``rmatvec``.
    name : str, optional
        What the operator is; leads the ``repr``.

    Example
    -------
    >>> import numpy as np
    >>> op = CallableOperator(lambda v: 2.0 * v, shape=(3, 3), dtype=np.float64, symmetric=True)
    >>> op @ np.ones(3)
    array([2., 2., 2.])
    """

    def __init__(
        self,
        matvec: Callable[[Any], Any],
        shape: tuple[int, int],
        dtype: Any = np.float64,
        *,
        matmat: Callable[[Any], Any] | None = None,
        symmetric: bool = False,
        psd: bool = False,
        xp: types.ModuleType | None = None,
        check: bool | None = None,
        rmatvec: Callable[[Any], Any] | None = None,
        rmatmat: Callable[[Any], Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(matvec):
            raise TypeError(f"matvec must be callable, got {type(matvec).__name__}")
        for arg, f in (("matmat", matmat), ("rmatvec", rmatvec), ("rmatmat", rmatmat)):
            if f is not None and not callable(f):
                raise TypeError(f"{arg} must be callable or None, got {type(f).__name__}")
        if rmatmat is not None and rmatvec is None:
            raise ValueError("rmatmat needs rmatvec as well (rmatvec=None was given)")
        super().__init__(shape, dtype, symmetric=symmetric, psd=psd, xp=xp, name=name)
        self._fmv = matvec
        self._fmm = matmat
        self._frmv = rmatvec
        self._frmm = rmatmat
        if check is None:
            check = not _is_curvlab_code(matvec)
        if check and (self.symmetric or self.psd):
            _probe_tags(self, "matvec")

    def _matvec(self, v: Any) -> Any:
        out = self.xp.asarray(self._fmv(v))
        if out.shape != (self.shape[0],):
            raise ValueError(f"matvec callable returned shape {tuple(out.shape)}, expected ({self.shape[0]},)")
        return out.astype(self.dtype, copy=False)

    def _matmat(self, V: Any) -> Any:
        if self._fmm is None:
            return super()._matmat(V)
        out = self.xp.asarray(self._fmm(V))
        if out.shape != (self.shape[0], V.shape[1]):
            raise ValueError(
                f"matmat callable returned shape {tuple(out.shape)}, expected ({self.shape[0]}, {V.shape[1]})"
            )
        return out.astype(self.dtype, copy=False)

    def _adjoint(self) -> LinearOperator:
        if self._frmv is None:
            return super()._adjoint()
        return CallableOperator(
            self._frmv, (self.shape[1], self.shape[0]), self.dtype, matmat=self._frmm, rmatvec=self._fmv,
            rmatmat=self._fmm, psd=self.psd, xp=self.xp, check=False, name=_label(self) + "ᵀ",
        )



class DenseOperator(LinearOperator):
    """Operator of an explicit ``(m, n)`` matrix (NumPy or CuPy).

    ``symmetric``/``psd`` are declared by the caller and checked (``check=True``):
    ``A`` finite, ``‖A - Aᵀ‖_F <= 100 sqrt(n) eps ‖A‖_F`` (symmetrise with
    ``0.5 * (A + A.T)`` first if the asymmetry is round-off you accept), and for
    ``psd`` the smallest eigenvalue ``>= -32 n eps ‖A‖₂`` (``n <= 256``; above, the
    diagonal and two random probes). ``check=False`` trusts the caller (``O(n^2)``
    saved; ``O(n^3)`` for a small declared PSD matrix). :meth:`eigh` gives the exact
    eigendecomposition of a symmetric one.
    """

    def __init__(
        self, A: Any, *, symmetric: bool = False, psd: bool = False, check: bool = True, name: str | None = None
    ) -> None:
        backend.check_float_array(A, "A", ndim=2)
        super().__init__(A.shape, A.dtype, symmetric=symmetric, psd=psd, xp=backend.get_namespace(A), name=name)
        self.A = A
        if check:
            backend.check_finite_data(A, "A")
            if self.symmetric or self.psd:
                _check_dense_tags(A, "A", self.symmetric, self.psd, self.xp)

    def _matvec(self, v: Any) -> Any:
        return self.A @ v

    def _matmat(self, V: Any) -> Any:
        return self.A @ V

    def to_dense(self) -> Any:
        return self.A.copy()

    def _adjoint(self) -> LinearOperator:
        return DenseOperator(self.A.T, psd=self.psd, check=False, name=self.name and self.name + "ᵀ")

    def solve(self, b: Any) -> Any:
        """``A⁻¹ b`` by LU in float64 (``O(n^3)``), ``b`` of shape ``(n,)`` or ``(n, k)``; result in
        the operator's dtype. ``ValueError`` for a non-square ``A``; ``LinAlgError`` when ``A`` is singular."""
        if self.shape[0] != self.shape[1]:
            raise ValueError(f"solve needs a square operator, got shape {self.shape}")
        b = self._check_input(b, getattr(b, "ndim", 1), "b")
        x = _solve_checked(self.xp, self.A.astype(np.float64), b.astype(np.float64),
                           "DenseOperator.solve: the matrix is singular")
        return x.astype(self.dtype)

    def eigh(self) -> tuple[Any, Any]:
        """Ascending eigenvalues ``(n,)`` and eigenvectors ``(n, n)`` (symmetric only)."""
        if not self.symmetric:
            raise ValueError("eigh needs an operator declared symmetric")
        return self.xp.linalg.eigh(self.A)

    def eigvalsh(self) -> Any:
        """All ``n`` eigenvalues, ascending (symmetric only; LAPACK in float64, ``O(n^3)``)."""
        if not self.symmetric:
            raise ValueError("eigvalsh needs an operator declared symmetric")
        return self.xp.linalg.eigvalsh(self.A.astype(np.float64))



class DiagonalOperator(LinearOperator):
    """``diag(d)`` for a vector ``d`` of shape ``(n,)``; exact eigenvalues and solve.

    ``d`` must be finite (``ValueError`` naming ``d``; ``check=False`` skips the test).
    """

    def __init__(self, d: Any, *, check: bool = True) -> None:
        backend.check_float_array(d, "d", ndim=1)
        if check:
            backend.check_finite_data(d, "d")
        xp = backend.get_namespace(d)
        super().__init__((d.shape[0], d.shape[0]), d.dtype, symmetric=True, psd=bool(xp.all(d >= 0)), xp=xp)
        self.d = d

    def _matvec(self, v: Any) -> Any:
        return self.d * v

    def _matmat(self, V: Any) -> Any:
        return self.d[:, None] * V

    def eigvalsh(self) -> Any:
        """All ``n`` eigenvalues, ascending."""
        return self.xp.sort(self.d)

    def solve(self, b: Any) -> Any:
        """``diag(d)^{-1} b`` for ``b`` of shape ``(n,)`` or ``(n, k)``; zero entries raise."""
        if bool(self.xp.any(self.d == 0)):
            raise np.linalg.LinAlgError("DiagonalOperator.solve: the diagonal has zero entries")
        b = self._check_input(b, getattr(b, "ndim", 1), "b")
        return b / (self.d if b.ndim == 1 else self.d[:, None])

    def shift(self, lam: float) -> DiagonalOperator:
        lam = _finite_scalar(lam, "lam")
        return DiagonalOperator(self.d + self.dtype.type(lam))



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

    Example
    -------
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



class ScipyWrappedOperator(LinearOperator):
    """A ``scipy.sparse.linalg.LinearOperator`` (or sparse matrix) as a curvlab operator."""

    def __init__(self, A: Any, *, symmetric: bool = False, psd: bool = False, check: bool = True) -> None:
        import scipy.sparse as sps
        from scipy.sparse.linalg import aslinearoperator as sp_aslo

        if check and sps.issparse(A):
            if np.dtype(A.dtype).kind not in "fiub":
                raise TypeError(f"A must be a real sparse matrix, got dtype {A.dtype}")
            data = np.asarray(A.tocoo().data, dtype=np.float64)
            if not np.all(np.isfinite(data)):
                raise ValueError(f"A contains NaN or Inf ({int((~np.isfinite(data)).sum())} stored entries)")
        A = sp_aslo(A)
        dt = np.dtype(A.dtype) if A.dtype is not None else np.dtype(np.float64)
        if dt.kind == "c":
            raise TypeError(f"A must be a real operator, got complex dtype {dt}")
        if dt not in backend.FLOAT_DTYPES:
            dt = backend.float_dtype(np.empty(0, dtype=dt))
        super().__init__(A.shape, dt, symmetric=symmetric, psd=psd, xp=np)
        self.base = A
        if check and (self.symmetric or self.psd):
            _probe_tags(self, "A")

    def _matvec(self, v: Any) -> Any:
        return np.asarray(self.base.matvec(v), dtype=self.dtype).reshape(-1)

    def _adjoint(self) -> LinearOperator:
        # SciPy raises its own error at the first product when the wrapped operator has no rmatvec
        return ScipyWrappedOperator(self.base.H, psd=self.psd, check=False)

    def _matmat(self, V: Any) -> Any:
        return np.asarray(self.base.matmat(V), dtype=self.dtype)



class BlockDiagonalOperator(LinearOperator):
    """``diag(A_1, ..., A_L)``: one operator per parameter block (e.g. per layer).

    Parameters
    ----------
    blocks : sequence of LinearOperator
        Non-empty; one backend; blocks may be rectangular (the operator is then
        ``(Σ m_i, Σ n_i)``). Tags: symmetric/PSD when every block is.
    name : str, optional

    ``matvec``/``matmat`` split the input rows by block and apply each block once
    (its own counter counts). :meth:`eigvalsh` is blockwise and exact when every block
    has one (``TypeError`` naming the first block without); :meth:`solve` is blockwise,
    exact for blocks with a closed form and by :func:`curvlab.linalg.solve` (strict) otherwise.
    """

    def __init__(self, blocks: Any, *, name: str | None = None) -> None:
        if isinstance(blocks, LinearOperator) or not hasattr(blocks, "__iter__"):
            raise TypeError(f"blocks must be a sequence of LinearOperator, got {type(blocks).__name__}")
        blocks = tuple(blocks)
        if not blocks:
            raise ValueError("blocks must hold at least one LinearOperator, got an empty sequence")
        for i, B in enumerate(blocks):
            _check_operand(B, f"blocks[{i}]", "BlockDiagonalOperator")
        m = sum(B.shape[0] for B in blocks)
        n = sum(B.shape[1] for B in blocks)
        dt = blocks[0].dtype
        for B in blocks[1:]:
            dt = np.promote_types(dt, B.dtype)
        square = all(B.shape[0] == B.shape[1] for B in blocks)
        super().__init__(
            (m, n), dt, symmetric=square and all(B.symmetric for B in blocks),
            psd=square and all(B.psd for B in blocks), xp=_common_backend(*blocks),
            name=name if name is not None else f"blockdiag({len(blocks)} blocks: {_label(blocks[0])}, ...)"
            if len(blocks) > 1 else f"blockdiag({_label(blocks[0])})",
        )
        self.blocks = blocks
        _inherit_stochastic(self, *blocks)
        self._rows = np.cumsum([0] + [B.shape[0] for B in blocks])
        self._cols = np.cumsum([0] + [B.shape[1] for B in blocks])

    def _matmat(self, V: Any) -> Any:
        out = self.xp.empty((self.shape[0], V.shape[1]), dtype=self.dtype)
        for i, B in enumerate(self.blocks):
            out[self._rows[i]:self._rows[i + 1]] = B.matmat(V[self._cols[i]:self._cols[i + 1]])
        return out

    def _matvec(self, v: Any) -> Any:
        out = self.xp.empty(self.shape[0], dtype=self.dtype)
        for i, B in enumerate(self.blocks):
            out[self._rows[i]:self._rows[i + 1]] = B.matvec(v[self._cols[i]:self._cols[i + 1]])
        return out

    def to_dense(self) -> Any:
        out = self.xp.zeros(self.shape, dtype=self.dtype)
        for i, B in enumerate(self.blocks):
            out[self._rows[i]:self._rows[i + 1], self._cols[i]:self._cols[i + 1]] = B.to_dense()
        return out

    def _adjoint(self) -> LinearOperator:
        return BlockDiagonalOperator([B.adjoint() for B in self.blocks])

    def _need(self, method: str) -> None:
        for i, B in enumerate(self.blocks):
            if not callable(getattr(B, method, None)):
                raise TypeError(
                    f"BlockDiagonalOperator.{method}: blocks[{i}] ({type(B).__name__}) has no exact {method}; "
                    f"use curvlab.linalg.solve / eigsh for an iterative answer"
                )

    def eigvalsh(self) -> Any:
        """All eigenvalues, ascending: the blocks' exact ``eigvalsh`` joined (square symmetric blocks)."""
        if not self.symmetric:
            raise ValueError("eigvalsh needs every block symmetric")
        self._need("eigvalsh")
        xp = self.xp
        return xp.sort(xp.concatenate([xp.asarray(B.eigvalsh()).astype(np.float64) for B in self.blocks]))

    def solve(self, b: Any, *, tol: float = 1e-10) -> Any:
        """``A⁻¹ b`` blockwise, ``b`` of shape ``(n,)`` or ``(n, k)``: a block's own closed-form
        ``solve`` where it has one, else :func:`curvlab.linalg.solve` with ``tol`` and
        ``strict=True`` (``ConvergenceError`` rather than an inaccurate block)."""
        from .solve import solve as krylov_solve

        if self.shape[0] != self.shape[1] or any(B.shape[0] != B.shape[1] for B in self.blocks):
            raise ValueError(f"solve needs square blocks, got {[B.shape for B in self.blocks]}")
        b = self._check_input(b, getattr(b, "ndim", 1), "b")
        out = self.xp.empty(b.shape, dtype=self.dtype)
        for i, B in enumerate(self.blocks):
            bi = b[self._cols[i]:self._cols[i + 1]]
            own = getattr(B, "solve", None)
            xi = own(bi) if callable(own) else krylov_solve(B, bi, tol=tol, strict=True).x
            out[self._rows[i]:self._rows[i + 1]] = xi
        return out



def aslinearoperator(
    A: Any,
    *,
    shape: tuple[int, int] | None = None,
    dtype: Any = None,
    symmetric: bool | None = None,
    psd: bool | None = None,
    check: bool = True,
) -> LinearOperator:
    """Wrap ``A`` as a curvlab :class:`LinearOperator`.

    Accepts a curvlab operator (returned as is), a SciPy ``LinearOperator``
    or sparse matrix, a dense NumPy/CuPy array, or a callable ``v -> A v``
    (then ``shape`` is required; ``dtype`` defaults to float64). ``symmetric``
    and ``psd`` set the tags where the input cannot carry them (default False);
    declared tags are checked (``check=True``): exactly for a dense array, by one
    random probe pair for a SciPy operator or a callable (see the module
    docstring); ``check=False`` trusts them. A torch/JAX tensor raises
    ``TypeError`` saying how to convert it.

    Example
    -------
    >>> import numpy as np
    >>> op = aslinearoperator(np.eye(3), symmetric=True)
    >>> op.symmetric, op.shape
    (True, (3, 3))
    """
    sym = bool(symmetric) if symmetric is not None else False
    pos = bool(psd) if psd is not None else False
    if isinstance(A, LinearOperator):
        return A
    hint = backend.foreign_array_hint(A)
    if hint is not None:
        raise TypeError(f"A must be a NumPy/CuPy array, a curvlab or SciPy operator or a callable, got {hint}")
    if isinstance(A, (list, tuple)):
        A = backend.as_array(A, "A", ndim=2)
    if hasattr(A, "ndim") and hasattr(A, "shape") and (isinstance(A, np.ndarray) or backend.is_cupy_array(A)):
        if A.ndim != 2:
            raise ValueError(f"A must be a 2-D array (an (m, n) matrix), got shape {tuple(A.shape)}")
        if (sym or pos) and A.shape[0] != A.shape[1]:
            raise ValueError(f"A is declared symmetric/psd but is not square: shape {tuple(A.shape)}")
        if A.dtype.kind in "iub":
            A = A.astype(np.float64)
        if dtype is not None:
            dt = np.dtype(dtype)
            if dt not in backend.FLOAT_DTYPES:
                raise TypeError(f"dtype must be float32 or float64, got {dt}")
            A = A.astype(dt)
        return DenseOperator(A, symmetric=sym, psd=pos, check=check)
    try:
        import scipy.sparse as sps
        from scipy.sparse.linalg import LinearOperator as ScipyLO
    except ImportError:  # pragma: no cover - scipy is a core dependency
        sps = None
        ScipyLO = ()
    if isinstance(A, ScipyLO) or (sps is not None and sps.issparse(A)):
        return ScipyWrappedOperator(A, symmetric=sym, psd=pos, check=check)
    if callable(A):
        if shape is None:
            raise ValueError("aslinearoperator: a callable A needs shape=(m, n)")
        shape = _check_shape(shape)
        if (sym or pos) and shape[0] != shape[1]:
            raise ValueError(f"A is declared symmetric/psd but shape {shape} is not square")
        return CallableOperator(A, shape, np.float64 if dtype is None else dtype, symmetric=sym, psd=pos,
                                check=None if check else False)
    raise TypeError(
        "A must be a NumPy/CuPy array, a curvlab or SciPy linear operator, a sparse matrix or a callable "
        f"v -> A v; cannot make a linear operator from {type(A).__name__}"
    )



def symmetry_defect(A: Any, rng: Any = None, n_probes: int = 2) -> float:
    """Relative asymmetry ``|xᵀ A y - yᵀ A x| / (‖x‖‖A y‖ + ‖y‖‖A x‖)`` on random probes.

    A symmetric operator gives round-off (about 1e-15 in float64, 1e-6 in
    float32); a larger value shows ``A`` is not symmetric. Costs
    ``2 * n_probes`` matvecs (counted). ``A`` is anything
    :func:`aslinearoperator` wraps (tags not checked). Returns ``nan`` when a
    product is NaN/Inf (the symmetry cannot be judged), never 0.0; 0.0 for the
    zero operator. ``n_probes`` must be an int >= 1.
    """
    n_probes = backend.check_positive_int(n_probes, "n_probes")
    backend.check_rng(rng)
    A = aslinearoperator(A, check=False)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square to measure its symmetry, got shape {A.shape}")
    xp = A.xp
    rng = backend.default_rng(rng, xp)
    worst = 0.0
    for _ in range(n_probes):
        X = rng.standard_normal((A.shape[0], 2)).astype(A.dtype)
        AX = A.matmat(X)
        x, y, Ax, Ay = X[:, 0], X[:, 1], AX[:, 0], AX[:, 1]
        num = abs(float(x @ Ay) - float(y @ Ax))
        den = float(xp.linalg.norm(x) * xp.linalg.norm(Ay) + xp.linalg.norm(y) * xp.linalg.norm(Ax))
        if not (np.isfinite(num) and np.isfinite(den)):
            return float("nan")
        worst = max(worst, num / den if den > 0 else 0.0)
    return worst
