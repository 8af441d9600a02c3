"""Operators of explicit data: a function, a dense matrix, a diagonal, a SciPy operator.

:class:`CallableOperator`, :class:`DenseOperator`, :class:`DiagonalOperator` and
:class:`ScipyWrappedOperator`; declared tags are checked at construction (see
:mod:`curvlab.linalg.operators`). Re-exported by :mod:`curvlab.linalg.operators`.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import numpy as np

from ... import backend
from .base import LinearOperator, _label
from .checks import _check_dense_tags, _finite_scalar, _is_curvlab_code, _probe_tags, _solve_checked


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

    Examples
    --------
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
