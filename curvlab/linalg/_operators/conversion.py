"""Conversion of what a solver may receive into a curvlab operator, and the symmetry probe.

:func:`aslinearoperator` (a curvlab or SciPy operator, a sparse or dense matrix, a callable) and
:func:`symmetry_defect`. Re-exported by :mod:`curvlab.linalg.operators`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import backend
from .base import LinearOperator
from .checks import _check_shape
from .wrappers import CallableOperator, DenseOperator, ScipyWrappedOperator


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

    Examples
    --------
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
