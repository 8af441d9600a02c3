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

The code lives in the private package :mod:`curvlab.linalg._operators`, one module per kind:
``checks`` (argument and tag checks), ``base`` (:class:`LinearOperator` and its algebra),
``wrappers`` (callable, dense, diagonal, SciPy), ``lowrank`` (:class:`LowRankPlusDiagonal`),
``blockdiag`` (:class:`BlockDiagonalOperator`), ``conversion`` (:func:`aslinearoperator`,
:func:`symmetry_defect`). This module re-exports every name (private helpers included) and
stays the import path; to change a module constant (a test's monkeypatch of
``WOODBURY_DENSE_FALLBACK_N``), patch the ``_operators`` module that reads it.

Examples
--------
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

# Every name is re-exported, private helpers too (other curvlab modules and tests import them from
# here). Rebinding a name here does not change it where it is used: patch the _operators module.
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
from ._operators.blockdiag import BlockDiagonalOperator
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
from ._operators.conversion import aslinearoperator, symmetry_defect
from ._operators.lowrank import _SPLIT_MAX, _SPLIT_TAU, WOODBURY_DENSE_FALLBACK_N, LowRankPlusDiagonal
from ._operators.wrappers import CallableOperator, DenseOperator, DiagonalOperator, ScipyWrappedOperator

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
