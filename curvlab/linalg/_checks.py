"""Shared input validation for the eigen-solvers and estimators (private).

Also :func:`host_floats`, the one-transfer read of per-step scalars that the
iterative solvers use so a CuPy step costs a single device sync.

Policies
--------
* The operator is wrapped by :func:`aslinearoperator`; a non-square one raises
  ``ValueError`` naming the shape.
* ``symmetric=True`` is required where the algorithm assumes it; an operator
  not declared symmetric raises ``ValueError``, unless ``check_symmetry`` is
  set, which measures :func:`symmetry_defect` on random probes instead (and
  raises when the defect exceeds ``100 * eps``-scaled tolerance).
* A stochastic operator (``A.stochastic``) is refused by the deterministic
  solvers: they would mix different matrices (use :mod:`curvlab.linalg.power`).
* ``k`` must satisfy ``1 <= k < n``; a zero, non-finite or wrongly shaped
  start vector raises ``ValueError``.
"""

from __future__ import annotations

from typing import Any, overload

import numpy as np

from .. import backend
from ..backend import check_positive_int
from .operators import PROBE_SYMMETRY_TOL, LinearOperator, aslinearoperator, symmetry_defect


def as_symmetric_operator(
    A: Any,
    name: str = "A",
    *,
    check_symmetry: bool | None = None,
    rng: Any = None,
    allow_stochastic: bool = False,
) -> LinearOperator:
    """Wrap ``A`` and check it is square and (declared or measured) symmetric.

    ``check_symmetry=None`` (default) trusts the tag of a curvlab operator and
    checks the symmetry of anything else through :func:`aslinearoperator`
    (exactly for an array, by a random probe pair for a SciPy operator or a
    callable); ``check_symmetry=True`` on a curvlab operator measures
    :func:`symmetry_defect` with 4 probe matvecs (NaN products raise
    ``FloatingPointError``).
    """
    wrapped = not isinstance(A, LinearOperator)
    if check_symmetry is None:
        check_symmetry = wrapped
    # a wrapped input is declared symmetric and checked by aslinearoperator itself (exactly for a dense
    # array, by a probe pair for a callable or SciPy operator), with a message naming the argument
    op = aslinearoperator(A, symmetric=True if wrapped else None, check=bool(check_symmetry))
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"{name} must be square, got shape {op.shape}")
    if getattr(op, "stochastic", False) and not allow_stochastic:
        raise ValueError(
            f"{name} is a stochastic operator (a fresh mini-batch per matvec); this deterministic solver "
            "would mix different matrices. Use curvlab.linalg.stochastic_power (Oja iteration with "
            "averaging), or freeze one batch with A.fixed(rng)."
        )
    if check_symmetry and not wrapped:
        tol = PROBE_SYMMETRY_TOL[op.dtype]
        defect = symmetry_defect(op, rng=rng, n_probes=2)
        if np.isnan(defect):
            raise FloatingPointError(f"{name} returned NaN or Inf on a random probe while checking its symmetry")
        if not defect <= tol:
            raise ValueError(
                f"{name} must be symmetric: measured symmetry_defect {defect:.3e} > {tol:.0e} on random probes"
            )
    elif not op.symmetric:
        raise ValueError(
            f"{name} must be a symmetric operator (declare symmetric=True, or pass check_symmetry=True to "
            f"verify it with random probes), got {op!r}"
        )
    return op


def check_k(k: Any, n: int, name: str = "k", *, allow_n: bool = False) -> int:
    """``k`` must be an integer with ``1 <= k < n`` (``<= n`` with ``allow_n``)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    k = int(k)
    hi = n if allow_n else n - 1
    if k < 1 or k > hi:
        rel = "<=" if allow_n else "<"
        raise ValueError(
            f"{name} must satisfy 1 <= {name} {rel} n = {n}, got {name} = {k}"
            + ("" if allow_n else " (for all eigenvalues use a dense eigh)")
        )
    return k


def check_tol(tol: Any, name: str = "tol") -> float:
    """A finite float ``> 0`` (a string, bool, None or complex raises ``TypeError`` naming ``name``)."""
    return backend.check_positive(name, tol)


def start_vectors(op: LinearOperator, v0: Any, rng: Any, k: int = 1, name: str = "v0") -> Any:
    """A ``(n,)`` (``k == 1``) or ``(n, k)`` start block on the operator's backend.

    ``v0`` given: checked (shape, finite, non-zero) and cast; else Gaussian
    from ``rng``.
    """
    xp, n = op.xp, op.shape[0]
    if v0 is None:
        g = backend.default_rng(rng, xp)
        shape = (n,) if k == 1 else (n, k)
        return g.standard_normal(shape).astype(op.dtype)
    v = backend.as_float_array(v0, name, dtype=op.dtype, xp=xp)
    want = (n,) if k == 1 else (n, k)
    if k == 1 and v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim == 1 and k > 1:
        raise ValueError(f"{name} has shape {tuple(v.shape)}, expected {want}")
    if tuple(v.shape) != want:
        raise ValueError(f"{name} has shape {tuple(v.shape)}, expected {want}")
    if not bool(xp.all(xp.isfinite(v))):
        raise ValueError(f"{name} contains NaN or Inf")
    norms = xp.linalg.norm(v.reshape(n, -1), axis=0)
    if bool(xp.any(norms == 0)):
        raise ValueError(f"{name} must be non-zero (a zero start vector spans no Krylov space)")
    return v.copy()


def check_which(which: str | None, allowed: tuple[str, ...]) -> str:
    w = str(which).upper()
    if w not in allowed:
        raise ValueError(f"which must be one of {allowed}, got {which!r}")
    return w


@overload
def eigen_problem(
    A: Any, k: Any, tol: Any, which: str | None = None, allowed: tuple[()] = (), *,
    check_symmetry: bool | None = None, rng: Any = None,
) -> tuple[LinearOperator, int, int, str | None, float]: ...
@overload
def eigen_problem(
    A: Any, k: Any, tol: Any, which: str | None, allowed: tuple[str, ...], *,
    check_symmetry: bool | None = None, rng: Any = None,
) -> tuple[LinearOperator, int, int, str, float]: ...
def eigen_problem(
    A: Any,
    k: Any,
    tol: Any,
    which: str | None = None,
    allowed: tuple[str, ...] = (),
    *,
    check_symmetry: bool | None = None,
    rng: Any = None,
) -> tuple[LinearOperator, int, int, str | None, float]:
    """The checked ``(op, n, k, which, tol)`` of an eigen-solver call.

    ``A`` as in :func:`as_symmetric_operator`, then :func:`check_k`,
    :func:`check_which` (only when ``allowed`` is given) and :func:`check_tol`,
    in that order.
    """
    op = as_symmetric_operator(A, check_symmetry=check_symmetry, rng=rng)
    n = op.shape[0]
    k = check_k(k, n)
    if allowed:
        which = check_which(which, allowed)
    tol = check_tol(tol)
    return op, n, k, which, tol


def check_budget(max_matvecs: Any) -> float:
    """Matvec budget: ``inf`` when ``max_matvecs`` is None, else a positive int."""
    return np.inf if max_matvecs is None else check_positive_int(max_matvecs, "max_matvecs")


def host_floats(xp: Any, *xs: Any) -> tuple[float, ...]:
    """0-d arrays of backend ``xp`` as host floats, in one device-to-host transfer (one sync for CuPy)."""
    if xp is np:
        return tuple(float(x) for x in xs)
    return tuple(float(x) for x in backend.to_numpy(xp.stack(xs)))
