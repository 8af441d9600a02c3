"""Linear solves with curvlab operators: closed forms, preconditioned CG, MINRES, inverse operators.

:func:`solve` returns ``x`` with ``A x ≈ b`` as a typed :class:`SolveResult`. It
dispatches (``method="auto"``) to

* a **closed form** when the operator has one: :class:`~.operators.DiagonalOperator`,
  :class:`~.operators.LowRankPlusDiagonal` (Woodbury), the Kronecker layer blocks
  (:mod:`.kronecker`), a :class:`~.operators.BlockDiagonalOperator` of those (blockwise),
  a scaled one (``(cA)⁻¹ = A⁻¹/c``), and a :class:`~.operators.DenseOperator` (LU in
  float64); status ``exact`` when the true residual meets the tolerance;
* **preconditioned conjugate gradients** (Hestenes & Stiefel 1952) for an operator
  tagged ``psd``;
* **MINRES** (Paige & Saunders 1975) for one tagged ``symmetric`` (indefinite or singular
  consistent systems); the preconditioner must be symmetric positive definite.

A non-symmetric operator without a closed form raises ``ValueError`` (CG/MINRES need
symmetry). Every result reports the **true** residual ``‖b - A x‖`` (one extra product
per column, counted); a Krylov run whose recurrence residual met the tolerance but whose
true residual did not restarts from the true residual (at most 3 times), then stops with
status ``stagnated``. Unconverged results warn (:class:`~.results.ConvergenceWarning`)
unless ``warn=False``; ``strict=True`` raises :class:`~.results.ConvergenceError`.

:func:`inverse` wraps a solve as a :class:`~.operators.LinearOperator` ``(A + δI)⁻¹``
(Newton-CG steps, influence functions): each matvec/matmat is one :func:`solve`; the last
result is kept on ``last_result``.

Host syncs: CG two per iteration (the stopping test, ``pᵀAp``), MINRES two per iteration
(its scalar recurrences, all columns together), plus a few per call (``‖b‖``, the final true residual);
closed forms sync as their operators' ``solve`` states.

Examples
--------
>>> import numpy as np
>>> from curvlab.linalg.operators import DenseOperator
>>> A = DenseOperator(np.array([[4.0, 1.0], [1.0, 3.0]]), symmetric=True, psd=True)
>>> res = solve(A, np.array([1.0, 2.0]), method="cg")
>>> bool(res.converged), np.allclose(A.A @ res.x, [1.0, 2.0])
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend
from ._checks import check_positive_int
from .kronecker import KroneckerLayerBlock, KroneckerSumBlock, ProjectedSpectralBlock
from .operators import (
    BlockDiagonalOperator,
    DenseOperator,
    DiagonalOperator,
    LinearOperator,
    LowRankPlusDiagonal,
    ScaledOperator,
    ShiftedOperator,
    _finite_scalar,
    aslinearoperator,
)
from .results import ConvergenceError, Status, _g, _repr, _values, warn_unconverged

__all__ = ["SolveResult", "solve", "inverse", "InverseOperator", "METHODS"]

#: accepted ``method=`` values of :func:`solve`
METHODS = ("auto", "direct", "cg", "minres")
#: true-residual restarts of a Krylov run whose recurrence residual drifted below the true one
_MAX_RESTARTS = 3


@dataclass(repr=False)
class SolveResult:
    """The result of :func:`solve`.

    Attributes
    ----------
    x : array ``(n,)`` or ``(n, k)``
        The solution, on the operator's backend and in its dtype.
    residual_norm : float or array ``(k,)``
        True residual ``‖b - A x‖₂`` per column, computed after the solve (host NumPy).
    b_norm : float or array ``(k,)``
        ``‖b‖₂`` per column.
    iterations : int
        Krylov iterations (the most over the columns; 0 for a closed form).
    n_matvecs : int
        Products with ``A`` spent by this solve (residual check included).
    converged : bool or bool array ``(k,)``
        Per column: ``residual_norm <= max(tol * b_norm, atol)``.
    status : Status
        ``exact`` (closed form), ``converged``, ``max_iter``, ``breakdown``,
        ``nonfinite`` or ``stagnated`` (the worst over the columns).
    method : str
        ``"cg"``, ``"minres"`` or ``"direct:<operator class>"``.
    tol, atol : float
    message : str
    """

    x: Any
    residual_norm: Any
    b_norm: Any
    iterations: int
    n_matvecs: int
    converged: Any
    status: Status
    method: str
    tol: float
    atol: float = 0.0
    message: str = ""

    @property
    def all_converged(self) -> bool:
        """True when every column met the tolerance."""
        return bool(np.all(self.converged))

    @property
    def relative_residual(self) -> Any:
        """``residual_norm / b_norm`` per column (0 where ``b = 0``)."""
        r, b = np.asarray(self.residual_norm, float), np.asarray(self.b_norm, float)
        out = np.where(b > 0, r / np.where(b > 0, b, 1.0), 0.0)
        return float(out) if out.ndim == 0 else out

    def __repr__(self) -> str:
        res = self.residual_norm
        shown = _g(res) if np.ndim(res) == 0 else _values(np.asarray(res))
        conv = bool(self.converged) if np.ndim(self.converged) == 0 else (
            f"{int(np.sum(self.converged))}/{np.size(self.converged)}")
        return _repr(
            "SolveResult",
            [f"method={self.method!r}", f"status={self.status}", f"converged={conv}",
             f"x.shape={tuple(self.x.shape)}"],
            [f"residual_norm={shown}", f"tol={_g(self.tol)}", f"iterations={self.iterations}",
             f"n_matvecs={self.n_matvecs}"],
            message=self.message if not self.status.ok else "",
        )


# -- closed forms ------------------------------------------------------------------------------
def _closed_form(A: LinearOperator) -> Any:
    """A function ``b -> A⁻¹ b`` (``b`` of shape ``(n,)`` or ``(n, k)``) when ``A`` has a closed form, else None."""
    if isinstance(A, (DiagonalOperator, LowRankPlusDiagonal, KroneckerLayerBlock, KroneckerSumBlock,
                      ProjectedSpectralBlock)):
        return A.solve
    if isinstance(A, DenseOperator) and A.shape[0] == A.shape[1]:
        return A.solve
    if isinstance(A, ShiftedOperator):
        S = _shifted(A.base, A.lam)
        return None if S is None else _closed_form(S)
    if isinstance(A, ScaledOperator) and A.alpha != 0:
        inner = _closed_form(A.base)
        if inner is None:
            return None
        return lambda b: inner(b) / A.dtype.type(A.alpha)
    if isinstance(A, BlockDiagonalOperator) and A.shape[0] == A.shape[1] and all(
            B.shape[0] == B.shape[1] for B in A.blocks):
        parts = [_closed_form(B) for B in A.blocks]
        if any(p is None for p in parts):
            return None

        def blockwise(b: Any) -> Any:
            out = A.xp.empty(b.shape, dtype=A.dtype)
            for i, p in enumerate(parts):
                out[A._rows[i]:A._rows[i + 1]] = p(b[A._cols[i]:A._cols[i + 1]])
            return out

        return blockwise
    return None


def _shifted(B: LinearOperator, lam: float) -> LinearOperator | None:
    """``B + lam I`` as an operator with a closed-form solve (damping of a diagonal, low-rank,
    Kronecker or block-diagonal operator keeps its closed form), else None."""
    if isinstance(B, (DiagonalOperator, LowRankPlusDiagonal)):
        return B.shift(lam)
    if isinstance(B, KroneckerLayerBlock) and B.lam + lam >= 0:
        return KroneckerLayerBlock(B.M, B.a, B.lam + lam, _eig=B._eig)
    if isinstance(B, KroneckerSumBlock) and B.lam + lam >= 0:
        return KroneckerSumBlock(B.Ms, B.A, B.lam + lam, scale=B.scale)
    if isinstance(B, ShiftedOperator):
        return _shifted(B.base, B.lam + lam)
    if isinstance(B, DenseOperator) and B.shape[0] == B.shape[1]:
        return DenseOperator(B.A + B.dtype.type(lam) * B.xp.eye(B.shape[0], dtype=B.dtype), check=False)
    if isinstance(B, BlockDiagonalOperator) and all(b.shape[0] == b.shape[1] for b in B.blocks):
        blocks = [_shifted(b, lam) for b in B.blocks]
        return None if any(b is None for b in blocks) else BlockDiagonalOperator(blocks)
    return None


# -- helpers -----------------------------------------------------------------------------------
def _col_norms(xp: Any, R: Any) -> np.ndarray:
    """Column 2-norms of ``R`` (n, k) in float64 on the host (one sync)."""
    return np.asarray(backend.to_numpy(xp.linalg.norm(R.astype(np.float64), axis=0)), dtype=np.float64)


def _as_preconditioner(M: Any, n: int, xp: Any) -> LinearOperator | None:
    if M is None:
        return None
    if callable(M) and not isinstance(M, LinearOperator) and not hasattr(M, "matvec"):
        M = aslinearoperator(M, shape=(n, n), check=False)
    else:
        M = aslinearoperator(M, check=False)
    if M.shape != (n, n):
        raise ValueError(f"M (the preconditioner) must have shape ({n}, {n}), got {M.shape}")
    if M.xp is not xp:
        raise TypeError(f"M (the preconditioner) works on {M.xp.__name__} arrays but A on {xp.__name__} arrays")
    return M


def _cg(A: LinearOperator, B: Any, X: Any, M: Any, thresh: np.ndarray, maxiter: int) -> tuple:
    """Preconditioned CG on every column of ``B`` (``(n, k)``, float64), from ``X``; the
    active columns are applied in one ``matmat`` per iteration. Returns
    (X, iterations, status per column as a list, message)."""
    xp = A.xp
    k = B.shape[1]
    R = B - A.matmat(X.astype(A.dtype)).astype(np.float64) if bool(xp.any(X != 0)) else B.copy()
    Z = R if M is None else M.matmat(R.astype(M.dtype)).astype(np.float64)
    rz = xp.sum(R * Z, axis=0)
    Pd = Z.copy()
    status: list[Status | None] = [None] * k
    msg = ""
    it = 0
    while True:
        # one host read per iteration for the stopping test: residual norms and rᵀMr together
        both = np.asarray(backend.to_numpy(xp.concatenate([xp.linalg.norm(R, axis=0), rz])), dtype=np.float64)
        rn, rz_h = both[:k], both[k:]
        for j in range(k):
            if status[j] is None:
                if not np.isfinite(rn[j]):
                    status[j], msg = Status.NONFINITE, "the residual became NaN/Inf"
                elif rn[j] <= thresh[j]:
                    status[j] = Status.CONVERGED
                elif not rz_h[j] > 0:
                    status[j] = Status.BREAKDOWN
                    msg = f"rᵀMr = {rz_h[j]:.3e} <= 0: the preconditioner M is not positive definite"
        act = [j for j in range(k) if status[j] is None]
        if not act or it >= maxiter:
            break
        it += 1
        ia = xp.asarray(np.asarray(act))
        P = Pd[:, ia]
        AP = A.matmat(P.astype(A.dtype)).astype(np.float64)
        pAp = xp.sum(P * AP, axis=0)
        pAp_h = np.asarray(backend.to_numpy(pAp), dtype=np.float64)
        bad = ~(pAp_h > 0)
        if np.any(bad):
            for jj in np.nonzero(bad)[0]:
                j = act[jj]
                if np.isfinite(pAp_h[jj]):
                    status[j] = Status.BREAKDOWN
                    msg = (f"pᵀAp = {pAp_h[jj]:.3e} <= 0: A is not positive definite on the Krylov space "
                           "(method='minres' handles symmetric indefinite A)")
                else:
                    status[j], msg = Status.NONFINITE, "A returned NaN/Inf"
            pAp = xp.where(xp.asarray(bad), 1.0, pAp)
        alpha = xp.where(xp.asarray(bad), 0.0, rz[ia] / pAp)
        X[:, ia] += alpha * P
        R[:, ia] -= alpha * AP
        Ra = R[:, ia]
        Za = Ra if M is None else M.matmat(Ra.astype(M.dtype)).astype(np.float64)
        rz_new = xp.sum(Ra * Za, axis=0)
        beta = xp.where(rz[ia] != 0, rz_new / xp.where(rz[ia] != 0, rz[ia], 1.0), 0.0)
        Pd[:, ia] = Za + beta * P
        rz[ia] = rz_new
    for j in range(k):
        if status[j] is None:
            status[j] = Status.MAX_ITER
    return X, it, status, msg


def _minres_block(A: LinearOperator, B: Any, X: Any, M: Any, thresh: np.ndarray, maxiter: int) -> tuple:
    """Preconditioned MINRES (Paige & Saunders 1975) on every column of ``B`` (``(n, k)``,
    float64) from ``X``: one ``matmat`` on the active columns per iteration, the scalar
    recurrences per column on the host (two syncs per iteration). A column stops when its
    recurrence residual (in the ``M``-norm when preconditioned, relative to its start)
    drops below its ``thresh``, when the Krylov space is exhausted, or on a breakdown.
    Returns (X, iterations per column, status per column (None = recurrence converged), message)."""
    xp = A.xp
    eps = np.finfo(np.float64).eps
    k = B.shape[1]

    def Am(V: Any) -> Any:
        return A.matmat(V.astype(A.dtype)).astype(np.float64)

    def Mm(V: Any) -> Any:
        return V if M is None else M.matmat(V.astype(M.dtype)).astype(np.float64)

    def dev(a: np.ndarray) -> Any:
        return xp.asarray(a)[None, :]

    def host(a: Any) -> np.ndarray:
        return np.asarray(backend.to_numpy(a), dtype=np.float64)

    status: list = [Status.MAX_ITER] * k
    its = np.zeros(k, dtype=int)
    msg = ""
    R1 = B - Am(X) if bool(xp.any(X != 0)) else B.copy()
    Y = Mm(R1)
    h = host(xp.concatenate([xp.sum(R1 * Y, axis=0), xp.linalg.norm(R1, axis=0)]))
    b1sq, rn0 = h[:k], h[k:]
    keep = []
    for j in range(k):
        if not np.isfinite(b1sq[j]):
            status[j], msg = Status.NONFINITE, "the residual became NaN/Inf; "
        elif b1sq[j] < 0:
            status[j], msg = Status.BREAKDOWN, "rᵀMr < 0: the preconditioner M is not positive definite; "
        elif b1sq[j] == 0 or rn0[j] <= thresh[j]:
            status[j] = None
        else:
            keep.append(j)
    act = np.asarray(keep, dtype=int)
    if act.size == 0:
        return X, its, status, msg
    ia = xp.asarray(act)
    beta1 = np.sqrt(b1sq[act])
    target = beta1 * thresh[act] / rn0[act]
    oldb, beta, dbar, epsln = np.zeros(act.size), beta1.copy(), np.zeros(act.size), np.zeros(act.size)
    phibar, cs, sn = beta1.copy(), -np.ones(act.size), np.zeros(act.size)
    R1, Y, Xa = R1[:, ia], Y[:, ia], X[:, ia]
    R2 = R1
    W, W2 = xp.zeros_like(R1), xp.zeros_like(R1)
    it = 0
    while act.size and it < maxiter:
        it += 1
        V = Y / dev(beta)
        Y = Am(V)
        if it >= 2:
            Y = Y - dev(beta / oldb) * R1
        alfa = host(xp.sum(V * Y, axis=0))
        Y = Y - dev(alfa / beta) * R2
        R1, R2 = R2, Y
        Y = Mm(R2)
        oldb = beta
        bb = host(xp.sum(R2 * Y, axis=0))
        nonfinite = ~(np.isfinite(bb) & np.isfinite(alfa))
        negative = ~nonfinite & (bb < 0)
        beta = np.sqrt(np.where(bb > 0, bb, 0.0))
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma = np.maximum(np.hypot(gbar, beta), eps)
        cs, sn = gbar / gamma, beta / gamma
        phi = cs * phibar
        phibar = sn * phibar
        W1, W2 = W2, W
        W = (V - dev(oldeps) * W1 - dev(delta) * W2) / dev(gamma)
        Xprev, Xa = Xa, Xa + dev(np.where(nonfinite | negative, 0.0, phi)) * W
        conv = np.abs(phibar) <= target
        exhausted = beta <= eps * beta1
        finish = nonfinite | negative | conv | exhausted
        if not finish.any():
            continue
        for i in np.nonzero(finish)[0]:
            j = int(act[i])
            its[j] = it
            if nonfinite[i]:
                status[j], msg = Status.NONFINITE, "A or M returned NaN/Inf; "
            elif negative[i]:
                status[j] = Status.BREAKDOWN
                msg = "rᵀMr < 0 inside MINRES: the preconditioner M is not positive definite or A is not symmetric; "
            elif conv[i]:
                status[j] = None
            else:
                status[j] = Status.BREAKDOWN
                msg = ("the Krylov space was exhausted with a nonzero residual (A may be singular and b outside its "
                       "range: x is the minimum-residual solution); ")
        fi = xp.asarray(np.nonzero(finish)[0])
        bad = xp.asarray(np.nonzero(finish & (nonfinite | negative))[0])
        X[:, ia[fi]] = Xa[:, fi]
        if bad.size:
            X[:, ia[bad]] = Xprev[:, bad]
        kp = ~finish
        ki = xp.asarray(np.nonzero(kp)[0])
        act, ia = act[kp], ia[ki]
        beta1, target, oldb, beta, dbar, epsln = beta1[kp], target[kp], oldb[kp], beta[kp], dbar[kp], epsln[kp]
        phibar, cs, sn = phibar[kp], cs[kp], sn[kp]
        R1, R2, Y, W, W2, Xa = R1[:, ki], R2[:, ki], Y[:, ki], W[:, ki], W2[:, ki], Xa[:, ki]
    if act.size:
        X[:, ia] = Xa
        its[act] = it
    return X, its, status, msg


def _refuse_stochastic(A: LinearOperator) -> None:
    if getattr(A, "stochastic", False):
        raise ValueError(
            "A is a stochastic operator (a fresh mini-batch per matvec): a Krylov solve would mix different "
            "matrices; freeze one batch with A.fixed(rng) and solve with that"
        )


def _check_tol(value: Any, name: str) -> float:
    return float(backend.check_positive(name, value, allow_zero=True))


# -- public ------------------------------------------------------------------------------------
def solve(
    A: Any,
    b: Any,
    *,
    method: str = "auto",
    x0: Any = None,
    tol: float = 1e-8,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: Any = None,
    warn: bool = True,
    strict: bool = False,
) -> SolveResult:
    """Solve ``A x = b``.

    Parameters
    ----------
    A : LinearOperator or anything :func:`~.operators.aslinearoperator` wraps
        Square. ``method="auto"``: a closed form when ``A`` has one (see the module
        docstring), else CG when ``A.psd``, else MINRES when ``A.symmetric``, else
        ``ValueError``.
    b : array ``(n,)`` or ``(n, k)``
        Right-hand side(s) on ``A``'s backend; the ``k`` columns are solved together
        (one ``matmat`` on the still unconverged columns per Krylov iteration).
    method : {"auto", "direct", "cg", "minres"}
        ``"direct"`` insists on a closed form (``TypeError`` when there is none).
    x0 : array like ``b``, optional
        Starting guess (Krylov methods; default zero).
    tol, atol : float
        Column ``j`` has converged when ``‖b_j - A x_j‖ <= max(tol ‖b_j‖, atol)``
        (the true residual).
    maxiter : int, optional
        Krylov iterations per column (default ``10 n``), restarts included.
    M : LinearOperator, array or callable, optional
        Preconditioner approximating ``A⁻¹`` (symmetric positive definite).
    warn, strict : bool
        An unconverged result warns (``ConvergenceWarning``) unless ``warn=False``;
        ``strict=True`` raises ``ConvergenceError`` carrying the result.

    Returns
    -------
    SolveResult
        ``x`` in ``A``'s dtype; residuals are computed in float64. Krylov iterations run
        in float64 whatever ``A``'s dtype (products in ``A``'s dtype).
    """
    A = aslinearoperator(A)
    if A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ValueError(f"A must be a non-empty square operator to solve A x = b, got shape {A.shape}")
    _refuse_stochastic(A)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tol, atol = _check_tol(tol, "tol"), _check_tol(atol, "atol")
    if tol == 0 and atol == 0:
        raise ValueError("tol and atol are both 0: give a positive tolerance (e.g. tol=1e-8)")
    n = A.shape[0]
    ndim = getattr(b, "ndim", None)
    if ndim not in (1, 2):
        if isinstance(b, (list, tuple)):
            ndim = np.ndim(b)
        if ndim not in (1, 2):
            raise ValueError(f"b must be a (n,) vector or an (n, k) block, got {type(b).__name__} of ndim {ndim}")
    b = A._check_input(b, ndim, "b")
    backend.check_finite_data(b, "b")
    xp = A.xp
    vec = b.ndim == 1
    B = (b[:, None] if vec else b).astype(np.float64)
    k = B.shape[1]
    if maxiter is None:
        maxiter = 10 * max(n, 1)
    maxiter = check_positive_int(maxiter, "maxiter")
    start = A.n_matvecs
    bn = _col_norms(xp, B)
    thresh = np.maximum(tol * bn, atol)

    closed = _closed_form(A) if method in ("auto", "direct") else None
    if method == "direct" and closed is None:
        raise TypeError(f"method='direct': {A.description} ({type(A).__name__}) has no closed-form solve")
    X0 = None
    if x0 is not None:  # checked even where a closed form ignores it
        X0 = A._check_input(x0, getattr(x0, "ndim", np.ndim(x0)), "x0")
        if X0.shape != b.shape:
            raise ValueError(f"x0 has shape {tuple(X0.shape)}, expected {tuple(b.shape)} (the shape of b)")
        backend.check_finite_data(X0, "x0")
    if X0 is not None and closed is None:
        X = (X0[:, None] if vec else X0).astype(np.float64).copy()
    else:
        X = xp.zeros_like(B)
    iterations = 0
    statuses: list[Status | None] = []
    msg = ""
    used = None
    if closed is not None:
        try:
            X = xp.asarray(closed(B.astype(A.dtype))).astype(np.float64).reshape(n, k)
            used = f"direct:{type(A).__name__}"
        except (np.linalg.LinAlgError, ValueError) as exc:
            if method == "direct" or not A.symmetric:
                raise
            msg = f"closed form refused ({exc}); "
            X = xp.zeros_like(B)
    if used is None:
        if method == "cg" or (method == "auto" and A.psd):
            used = "cg"
        elif method == "minres" or (method == "auto" and A.symmetric):
            used = "minres"
        else:
            raise ValueError(
                f"A ({A.description}) is neither declared psd nor symmetric and has no closed-form solve: "
                "CG needs psd=True, MINRES symmetric=True; for a non-symmetric A solve the normal equations "
                "solve(A.T @ A, A.T @ b)"
            )
        if used == "minres" and not A.symmetric:
            raise ValueError(f"method='minres' needs A declared symmetric, got {A.description}")
        Mop = _as_preconditioner(M, n, xp)
        statuses = [None] * k
        its = np.zeros(k, dtype=int)
        restarts = 0
        while True:
            todo = [j for j in range(k) if statuses[j] is None]
            if used == "cg":
                ia = xp.asarray(np.asarray(todo))
                Xs, it, st, m = _cg(A, B[:, ia], X[:, ia].copy(), Mop, thresh[todo], maxiter - int(its[todo].max()))
                X[:, ia] = Xs
                for jj, j in enumerate(todo):
                    its[j] += it
                    statuses[j] = st[jj]
                msg = msg + m if m else msg
            else:
                ia = xp.asarray(np.asarray(todo))
                Xs, it, st, m = _minres_block(A, B[:, ia], X[:, ia].copy(), Mop, thresh[todo],
                                              maxiter - int(its[todo].max()))
                X[:, ia] = Xs
                for jj, j in enumerate(todo):
                    its[j] += int(it[jj])
                    statuses[j] = st[jj] if st[jj] is not None else Status.CONVERGED
                msg = msg + m if m and m not in msg else msg
            # verify with the true residual; restart the columns whose recurrence drifted
            R = B - A.matmat(X.astype(A.dtype)).astype(np.float64)
            rn = _col_norms(xp, R)
            again = False
            for j in range(k):
                if statuses[j] == Status.BREAKDOWN and rn[j] <= thresh[j]:
                    statuses[j] = Status.CONVERGED  # MINRES reached the exact solution of its Krylov space
                elif statuses[j] == Status.CONVERGED and not rn[j] <= thresh[j]:
                    if restarts < _MAX_RESTARTS and its[j] < maxiter:
                        statuses[j] = None
                        again = True
                    else:
                        statuses[j] = Status.STAGNATED
            if not again:
                break
            restarts += 1
        iterations = int(its.max()) if k else 0
    Xout = X.astype(A.dtype)
    R = B - A.matmat(Xout).astype(np.float64)
    rn = _col_norms(xp, R)
    conv = rn <= thresh
    if used.startswith("direct"):
        statuses = [Status.EXACT if c else Status.STAGNATED for c in conv]
        if not conv.all():
            msg += "the closed-form solve lost accuracy (A is ill-conditioned for this dtype); "
    else:
        statuses = [s if (s != Status.CONVERGED or c) else Status.STAGNATED for s, c in zip(statuses, conv)]
        statuses = [Status.CONVERGED if (c and s in (Status.MAX_ITER, Status.STAGNATED, Status.BREAKDOWN)) else s
                    for s, c in zip(statuses, conv)]
        if conv.all():
            msg = msg if msg.startswith("closed form refused") else ""
    order = [Status.NONFINITE, Status.BREAKDOWN, Status.STAGNATED, Status.MAX_ITER, Status.CONVERGED, Status.EXACT]
    status = next((s for s in order if s in statuses), Status.CONVERGED)
    if not conv.all():
        worst = int(np.argmax(np.where(bn > 0, rn / np.where(bn > 0, bn, 1), rn)))
        msg += (f"{int((~conv).sum())} of {k} column(s) unconverged after {iterations} iterations "
                f"({status}): relative residual {rn[worst] / bn[worst] if bn[worst] > 0 else rn[worst]:.2e} "
                f"> tol {tol:.1e}")
    res = SolveResult(
        x=Xout[:, 0] if vec else Xout,
        residual_norm=float(rn[0]) if vec else rn,
        b_norm=float(bn[0]) if vec else bn,
        iterations=iterations,
        n_matvecs=A.n_matvecs - start,
        converged=bool(conv[0]) if vec else conv,
        status=status,
        method=used,
        tol=tol,
        atol=atol,
        message=msg.rstrip("; "),
    )
    if not res.all_converged:
        if strict:
            raise ConvergenceError(f"solve: {res.message}", res)
        warn_unconverged("solve", res.message, warn=warn)
    return res


class InverseOperator(LinearOperator):
    """``(A + δI)⁻¹`` as an operator: each matvec/matmat is one :func:`solve`.

    Built by :func:`inverse`. ``last_result`` is the last :class:`SolveResult`
    (``last_status`` its status), ``n_solves`` the number of solves and
    ``n_inner_matvecs`` the products with ``A`` they spent. Unconverged solves warn
    (``warn=True``) or raise (``strict=True``). Symmetric (PSD) when ``A`` is.
    """

    def __init__(self, A: LinearOperator, damping: float, solve_kw: dict[str, Any], name: str | None) -> None:
        self.base = A
        self.damping = damping
        self._op = A if damping == 0 else A.shift(damping)
        super().__init__(
            A.shape, A.dtype, symmetric=A.symmetric, psd=A.psd and damping >= 0, xp=A.xp,
            name=name if name is not None else
            (f"({A.description} + {damping:.6g} I)⁻¹" if damping else f"({A.description})⁻¹"),
        )
        self._kw = solve_kw
        self.last_result: SolveResult | None = None
        self.n_solves = 0
        self.n_inner_matvecs = 0

    @property
    def last_status(self) -> Status | None:
        """Status of the last solve (None before the first)."""
        return None if self.last_result is None else self.last_result.status

    def _solve(self, V: Any) -> Any:
        res = solve(self._op, V, **self._kw)
        self.last_result = res
        self.n_solves += 1
        self.n_inner_matvecs += res.n_matvecs
        return res.x

    def _matvec(self, v: Any) -> Any:
        return self._solve(v)

    def _matmat(self, V: Any) -> Any:
        return self._solve(V)

    def solve(self, b: Any) -> Any:
        """``(A + δI) b`` — the inverse of the inverse (products with ``A``, not counted here)."""
        b = self._check_input(b, getattr(b, "ndim", 1), "b")
        return self._op.matvec(b) if b.ndim == 1 else self._op.matmat(b)


def inverse(
    A: Any,
    damping: float = 0.0,
    *,
    method: str = "auto",
    tol: float = 1e-8,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: Any = None,
    warn: bool = True,
    strict: bool = False,
    name: str | None = None,
) -> InverseOperator:
    """The operator ``v -> (A + damping·I)⁻¹ v`` built on :func:`solve` (same options).

    For Newton-CG steps ``-(H + δI)⁻¹ g`` and influence functions
    ``gᵀ (H + δI)⁻¹ g'``. ``damping`` must be finite; a closed-form ``A`` keeps its
    closed form under the shift where it has one (diagonal, low rank plus diagonal).

    >>> import numpy as np
    >>> from curvlab.linalg.operators import DiagonalOperator
    >>> Hinv = inverse(DiagonalOperator(np.array([1.0, 3.0])), damping=1.0)
    >>> Hinv @ np.array([2.0, 4.0])
    array([1., 1.])
    """
    A = aslinearoperator(A)
    if A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ValueError(f"A must be a non-empty square operator to invert, got shape {A.shape}")
    _refuse_stochastic(A)
    damping = _finite_scalar(damping, "damping")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    target = A if damping == 0 else A.shift(damping)
    if method in ("auto", "direct") and _closed_form(target) is None and (method == "direct" or not A.symmetric):
        raise ValueError(
            f"A ({A.description}) has no closed-form solve and is not declared symmetric: CG/MINRES cannot "
            "invert it (declare symmetric=True/psd=True, or invert A.T @ A)"
        )
    kw = dict(method=method, tol=tol, atol=atol, maxiter=maxiter, M=M, warn=warn, strict=strict)
    _check_tol(tol, "tol")
    _check_tol(atol, "atol")
    return InverseOperator(A, float(damping), kw, name)
