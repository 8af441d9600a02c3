"""Argument checks and the verification of declared tags, shared by the operator modules.

The construction-time checks of ``symmetric=True``/``psd=True`` (exact on a dense matrix, one
random probe pair on a function; see :mod:`curvlab.linalg.operators`), the checks of shapes and
scalars, and a singular-aware dense solve. Re-exported by :mod:`curvlab.linalg.operators`.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

import numpy as np

from ... import backend

if TYPE_CHECKING:
    from .base import LinearOperator

#: symmetry tolerance of a random-probe check, per dtype (see :func:`symmetry_defect`)
PROBE_SYMMETRY_TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
#: dense PSD check: exact smallest eigenvalue up to this size, diagonal + probes above
_PSD_EIG_MAX_N = 256


def _check_shape(shape: Any) -> tuple[int, int]:
    """``shape`` as a pair of non-negative ints, else ``TypeError``/``ValueError`` naming ``shape``."""
    try:
        m, n = shape
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair (m, n) of non-negative ints, got {shape!r}") from None
    for v in (m, n):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"shape must be a pair (m, n) of non-negative ints, got {shape!r}")
        if v < 0:
            raise ValueError(f"shape must be a pair (m, n) of non-negative ints, got {shape!r}")
    return int(m), int(n)


def _finite_scalar(x: Any, name: str) -> float:
    """``x`` as a finite real float, else ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(x, (bool, np.bool_)) or isinstance(x, (complex, np.complexfloating)):
        raise TypeError(f"{name} must be a finite real number, got {type(x).__name__} {x!r}")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a finite real number, got {type(x).__name__}") from None
    if not np.isfinite(v):
        raise ValueError(f"{name} must be a finite real number, got {v}")
    return v


def _is_curvlab_code(f: Any) -> bool:
    """True when ``f`` is defined inside the curvlab package (its products are trusted)."""
    mod = getattr(f, "__module__", None) or ""
    return mod == "curvlab" or mod.startswith("curvlab.")


def _sym_tol(dtype: Any, n: int) -> float:
    return 100.0 * np.sqrt(max(int(n), 1)) * float(np.finfo(np.dtype(dtype)).eps)


def _is_symmetric(A: Any, xp: Any) -> tuple[bool, float]:
    """Exact dense symmetry test ``‖A - Aᵀ‖_F <= 100 sqrt(n) eps ‖A‖_F`` (one sync); (ok, relative defect)."""
    n = A.shape[0]
    if n == 0:
        return True, 0.0
    num, den = (float(v) for v in backend.to_numpy(xp.stack([xp.linalg.norm(A - A.T), xp.linalg.norm(A)])))
    rel = num / den if den > 0 else 0.0
    return bool(rel <= _sym_tol(A.dtype, n)), rel


def _check_dense_tags(A: Any, name: str, symmetric: bool, psd: bool, xp: Any) -> None:
    """Verify declared tags of a dense square matrix; ``ValueError`` naming ``name``."""
    n = A.shape[0]
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} is declared symmetric/psd but is not square: shape {tuple(A.shape)}")
    ok, rel = _is_symmetric(A, xp)
    if not ok:
        raise ValueError(
            f"{name} is declared symmetric but ‖{name} - {name}ᵀ‖_F / ‖{name}‖_F = {rel:.2e} exceeds the "
            f"round-off tolerance {_sym_tol(A.dtype, n):.1e}; pass 0.5 * ({name} + {name}.T) if the symmetric "
            "part is meant, or symmetric=False"
        )
    if not psd or n == 0:
        return
    S = 0.5 * (A + A.T)
    eps = float(np.finfo(A.dtype).eps)
    if n <= _PSD_EIG_MAX_N:
        w = backend.to_numpy(xp.linalg.eigvalsh(S.astype(np.float64)))
        scale = float(np.abs(w).max())
        if w[0] < -32.0 * n * eps * scale:
            raise ValueError(
                f"{name} is declared psd but its smallest eigenvalue is {w[0]:.3e} (largest magnitude "
                f"{scale:.3e}); pass psd=False"
            )
        return
    diag = backend.to_numpy(xp.diagonal(S)).astype(np.float64)
    scale = float(np.abs(diag).max()) if diag.size else 0.0
    if diag.min() < -32.0 * n * eps * max(scale, 1e-300):
        raise ValueError(f"{name} is declared psd but has a negative diagonal entry {diag.min():.3e}; pass psd=False")
    g = backend.default_rng(_PROBE_SEED, xp)
    X = g.standard_normal((n, 2)).astype(A.dtype)
    AX = S @ X
    q = backend.to_numpy(xp.sum(X * AX, axis=0)).astype(np.float64)
    nrm = backend.to_numpy(xp.linalg.norm(X, axis=0) * xp.linalg.norm(AX, axis=0)).astype(np.float64)
    if np.any(q < -32.0 * n * eps * nrm):
        raise ValueError(f"{name} is declared psd but xᵀ{name}x < 0 for a random probe x; pass psd=False")


#: fixed seed of the construction-time tag probes (deterministic checks, no global state)
_PROBE_SEED = 0x5EED


def _probe_tags(op: LinearOperator, name: str) -> None:
    """One random probe pair on an untrusted operator: symmetric → ``symmetry_defect`` below
    :data:`PROBE_SYMMETRY_TOL`; psd → ``xᵀAx >= 0`` (up to round-off). Products not counted."""
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"{name} is declared symmetric/psd but the operator is not square: shape {op.shape}")
    n = op.shape[0]
    if n == 0:
        return
    xp = op.xp
    X = backend.default_rng(_PROBE_SEED, xp).standard_normal((n, 2)).astype(op.dtype)
    AX = xp.asarray(op._matmat(X))
    if tuple(AX.shape) != (n, 2):
        raise ValueError(f"{name} returned shape {tuple(AX.shape)} for a block of shape {(n, 2)}, expected {(n, 2)}")
    x, y, Ax, Ay = X[:, 0], X[:, 1], AX[:, 0], AX[:, 1]
    vals = backend.to_numpy(xp.stack([
        x @ Ay, y @ Ax, xp.linalg.norm(x), xp.linalg.norm(y), xp.linalg.norm(Ax), xp.linalg.norm(Ay), x @ Ax, y @ Ay,
    ]).astype(np.float64))
    if not np.all(np.isfinite(vals)):
        raise FloatingPointError(
            f"{name} returned NaN or Inf on a random probe while checking the declared tags "
            "(pass check=False to skip the check)"
        )
    xAy, yAx, nx, ny, nAx, nAy, xAx, yAy = vals
    den = nx * nAy + ny * nAx
    defect = abs(xAy - yAx) / den if den > 0 else 0.0
    tol = PROBE_SYMMETRY_TOL[op.dtype]
    if op.symmetric and defect > tol:
        raise ValueError(
            f"{name} is declared symmetric but a random probe pair gives symmetry_defect {defect:.2e} > {tol:.0e} "
            "(|xᵀAy - yᵀAx| relative); pass symmetric=False, or check=False if the asymmetry is expected noise"
        )
    if op.psd and (xAx < -tol * nx * nAx or yAy < -tol * ny * nAy):
        raise ValueError(f"{name} is declared psd but xᵀAx < 0 for a random probe x; pass psd=False")


def _solve_checked(xp: types.ModuleType, T: Any, rhs: Any, message: str) -> Any:
    """``xp.linalg.solve(T, rhs)``, raising ``LinAlgError(message)`` when ``T`` is singular: LAPACK
    reports it, or (CuPy, or a numerically singular ``T``) the solution is not finite (one sync)."""
    try:
        x = xp.linalg.solve(T, rhs)
    except np.linalg.LinAlgError as exc:
        raise np.linalg.LinAlgError(message) from exc
    if not bool(xp.all(xp.isfinite(x))):
        raise np.linalg.LinAlgError(message)
    return x
