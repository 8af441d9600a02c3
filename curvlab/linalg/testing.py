"""Test operators with prescribed spectra: ``A = Q diag(λ) Qᵀ`` with known eigenpairs.

:func:`prescribed_spectrum_operator` builds a symmetric operator with the
given eigenvalues and a random orthogonal ``Q``; the exact eigenvalues and
eigenvectors come back with it, so eigen-solver tests and benchmarks know the
answer. For ``n`` up to a few thousand ``Q`` is a dense Haar-random matrix; for
larger ``n`` it is a product of a few random Householder reflectors (``O(n)``
memory and matvec cost, eigenvectors still exact). :func:`named_spectrum`
gives the standard hard cases.

Examples
--------
>>> import numpy as np
>>> from curvlab.linalg.testing import prescribed_spectrum_operator, named_spectrum
>>> ps = prescribed_spectrum_operator(named_spectrum("decaying", 50), np.random.default_rng(0))
>>> A = ps.operator
>>> v = ps.eigenvectors([-1])[:, 0]
>>> bool(np.allclose(A @ v, ps.eigenvalues[-1] * v))
True
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import backend
from .operators import CallableOperator, LinearOperator

__all__ = ["PrescribedSpectrum", "prescribed_spectrum_operator", "named_spectrum", "exact_eigvalsh", "SPECTRA"]

#: names accepted by :func:`named_spectrum`
SPECTRA = ("decaying", "fast_decay", "clustered", "repeated", "indefinite", "large_gap", "tiny_gap", "uniform")


def named_spectrum(name: str, n: int) -> np.ndarray:
    """A deterministic spectrum of ``n`` eigenvalues (host float64, ascending).

    * ``decaying``: ``λ_i = 10 · i^{-1}`` (i = 1..n), a Hessian-like slow decay.
    * ``fast_decay``: ``λ_i = 10 · 0.8^{i-1}`` (numerically low rank; trace tests).
    * ``clustered``: top 5 values in a cluster ``[10, 10.01, ...]`` above a bulk in ``[0, 1]``.
    * ``repeated``: top value 5 with multiplicity 3, then 4 (mult. 2), bulk in ``[0, 1]``.
    * ``indefinite``: bulk in ``[-1, 1]``, outliers ``±5, 3, -3, 8``.
    * ``large_gap``: top 20 in ``[50, 100]``, the rest in ``[0, 1]``.
    * ``tiny_gap``: ``λ_n = 1``, ``λ_{n-1} = 1 - 1e-3``, rest in ``[0, 0.9]``.
    * ``uniform``: equispaced in ``[1, 2]``.
    """
    n = backend.check_positive("n", n, integer=True)
    if n < 8:
        raise ValueError(f"named spectra need n >= 8, got n = {n}")
    i = np.arange(1, n + 1, dtype=np.float64)
    if name == "decaying":
        lam = 10.0 / i
    elif name == "fast_decay":
        lam = 10.0 * 0.8 ** (i - 1)
    elif name == "clustered":
        lam = np.concatenate([np.linspace(0.0, 1.0, n - 5), 10.0 + 0.01 * np.arange(5)])
    elif name == "repeated":
        lam = np.concatenate([np.linspace(0.0, 1.0, n - 5), [4.0, 4.0, 5.0, 5.0, 5.0]])
    elif name == "indefinite":
        lam = np.concatenate([np.linspace(-1.0, 1.0, n - 5), [-5.0, -3.0, 3.0, 5.0, 8.0]])
    elif name == "large_gap":
        m = min(20, n // 2)
        lam = np.concatenate([np.linspace(0.0, 1.0, n - m), np.linspace(50.0, 100.0, m)])
    elif name == "tiny_gap":
        lam = np.concatenate([np.linspace(0.0, 0.9, n - 2), [1.0 - 1e-3, 1.0]])
    elif name == "uniform":
        lam = np.linspace(1.0, 2.0, n)
    else:
        raise ValueError(f"unknown spectrum name {name!r}; expected one of {SPECTRA}")
    return np.sort(lam)


@dataclass
class PrescribedSpectrum:
    """An operator ``Q diag(λ) Qᵀ`` with its exact spectral data.

    Attributes
    ----------
    operator : LinearOperator (symmetric)
    eigenvalues : numpy.ndarray ``(n,)`` float64, ascending
    """

    operator: LinearOperator
    eigenvalues: np.ndarray
    _Q: Any
    _reflectors: Any

    def eigenvectors(self, idx: Sequence[int] | slice | None = None) -> Any:
        """Exact eigenvectors (columns, matching ``eigenvalues[idx]``), operator backend and dtype."""
        op = self.operator
        n = op.shape[0]
        sel = np.arange(n)[idx if idx is not None else slice(None)]
        sel = np.atleast_1d(sel)
        if self._Q is not None:
            return self._Q[:, op.xp.asarray(sel)] if op.xp is not np else self._Q[:, sel]
        E = op.xp.zeros((n, len(sel)), dtype=op.dtype)
        E[op.xp.asarray(sel), op.xp.arange(len(sel))] = 1
        return _apply_householder(self._reflectors, E, transpose=False)


def _apply_householder(H: Any, X: Any, transpose: bool) -> Any:
    """``Q X`` (or ``Qᵀ X``) for ``Q = H_1 H_2 ... H_r``, ``H_j = I - 2 h_j h_jᵀ`` (rows of ``H`` unit)."""
    order = range(H.shape[0]) if transpose else range(H.shape[0] - 1, -1, -1)
    for j in order:
        h = H[j]
        X = X - 2.0 * h[:, None] * (h @ X)[None, :]
    return X


def prescribed_spectrum_operator(
    eigenvalues: Any,
    rng: Any = None,
    dtype: Any = np.float64,
    xp: types.ModuleType | None = None,
    *,
    orthogonal: str = "auto",
    n_reflectors: int = 4,
) -> PrescribedSpectrum:
    """Symmetric operator ``A = Q diag(λ) Qᵀ`` with the given eigenvalues.

    Parameters
    ----------
    eigenvalues : array-like ``(n,)``
    rng : seed or Generator (host NumPy; ``Q`` is drawn on the host).
    dtype : float32 or float64 of the operator.
    xp : numpy (default) or cupy.
    orthogonal : "dense" (Haar ``Q`` from a QR of a Gaussian matrix, ``O(n²)``
        memory), "householder" (``n_reflectors`` random reflectors, ``O(n)``)
        or "auto" (dense for ``n <= 3000``).

    Returns
    -------
    PrescribedSpectrum with ``operator`` (a ``CallableOperator`` with a fast
    ``matmat``), ``eigenvalues`` (ascending float64) and ``eigenvectors(idx)``.
    """
    xp = np if xp is None else xp
    if xp is not np and getattr(xp, "__name__", "") != "cupy":
        raise TypeError(f"xp must be the numpy or cupy module, got {xp!r}")
    lam = backend.as_array(eigenvalues, "eigenvalues", ndim=(0, 1), dtype=np.float64)
    lam = np.sort(np.asarray(backend.to_numpy(lam), dtype=np.float64).reshape(-1))
    n = lam.size
    if n < 1 or not np.all(np.isfinite(lam)):
        raise ValueError(f"eigenvalues must be a non-empty finite vector, got shape {lam.shape}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in backend.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    backend.check_rng(rng)
    n_reflectors = backend.check_positive("n_reflectors", n_reflectors, integer=True)
    if orthogonal not in ("auto", "dense", "householder"):
        raise ValueError(f"orthogonal must be 'auto', 'dense' or 'householder', got {orthogonal!r}")
    g = backend.default_rng(rng)
    if orthogonal == "auto":
        orthogonal = "dense" if n <= 3000 else "householder"
    lam_d = xp.asarray(lam.astype(dt))
    psd = bool(lam[0] >= 0)
    if orthogonal == "dense":
        Z = g.standard_normal((n, n))
        Q, R = np.linalg.qr(Z)
        Q = Q * np.sign(np.diag(R))[None, :]
        Qd = xp.asarray(Q.astype(dt))
        QL = Qd * lam_d[None, :]
        A = QL @ Qd.T
        A = 0.5 * (A + A.T)

        def mm(V: Any) -> Any:
            return A @ V

        op = CallableOperator(lambda v: A @ v, (n, n), dt, matmat=mm, symmetric=True, psd=psd, xp=xp)
        return PrescribedSpectrum(op, lam, Qd, None)
    if orthogonal != "householder":
        raise ValueError(f"orthogonal must be 'auto', 'dense' or 'householder', got {orthogonal!r}")
    H = g.standard_normal((int(n_reflectors), n))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    Hd = xp.asarray(H.astype(dt))

    def mm_h(V: Any) -> Any:
        W = _apply_householder(Hd, V, transpose=True)
        return _apply_householder(Hd, lam_d[:, None] * W, transpose=False)

    op = CallableOperator(lambda v: mm_h(v[:, None])[:, 0], (n, n), dt, matmat=mm_h, symmetric=True, psd=psd, xp=xp)
    return PrescribedSpectrum(op, lam, None, Hd)


def exact_eigvalsh(A: Any) -> np.ndarray:
    """All eigenvalues (host float64, ascending) of an operator that knows them exactly.

    Uses the operator's own closed form: ``eigvalsh()`` of
    :class:`~curvlab.linalg.DiagonalOperator`, :class:`~curvlab.linalg.LowRankPlusDiagonal`
    (``D = σI``), the Kronecker layer blocks of :mod:`curvlab.linalg.kronecker`;
    ``eigh()`` of a symmetric :class:`~curvlab.linalg.DenseOperator`; the
    prescribed values of a :class:`PrescribedSpectrum`. Raises ``TypeError``
    for an operator without exact spectral data.

    Examples
    --------
    >>> import numpy as np
    >>> from curvlab.linalg import LowRankPlusDiagonal
    >>> np.round(exact_eigvalsh(LowRankPlusDiagonal(1.0, np.array([[1.0], [1.0]]))), 12).tolist()
    [1.0, 3.0]
    """
    if isinstance(A, PrescribedSpectrum):
        return A.eigenvalues.copy()
    if hasattr(A, "eigvalsh"):
        vals = A.eigvalsh()
    elif hasattr(A, "eigh") and getattr(A, "symmetric", False):
        vals = A.eigh()[0]
    else:
        raise TypeError(f"{type(A).__name__} has no exact spectral data (eigvalsh/eigh)")
    return np.sort(np.asarray(backend.to_numpy(vals), dtype=np.float64))
