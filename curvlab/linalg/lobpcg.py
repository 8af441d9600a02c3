"""Block LOBPCG (locally optimal block preconditioned conjugate gradient) for symmetric operators.

Each iteration applies the operator once to a block (one ``matmat`` call: the
GPU-friendly path) and does a Rayleigh-Ritz step on ``[X, W, P]`` (current
vectors, preconditioned residuals, previous search directions), after
Knyazev (2001). Soft locking: a converged column stays in ``X`` (so the
Rayleigh-Ritz step keeps improving it) but adds no new residual or direction,
so later iterations cost only as many matvecs as there are active columns.
``X0`` warm-starts the block (e.g. the previous step's eigenvectors).

The basis is orthonormalised by an eigen-decomposition of its Gram matrix,
dropping directions below ``ε``-relative size; the operator images ``AS`` are
updated with the same coefficients, so no extra matvecs are spent. Small
dense problems go to host NumPy in float64; large arrays stay on the
operator's backend (NumPy or CuPy).

Stopping rule: column ``i`` converged when
``‖A x_i - θ_i x_i‖ <= tol · max(|θ_i|, ε^{2/3} ‖A‖_est)`` (as :func:`eigsh`).

Example
-------
>>> import numpy as np
>>> res = lobpcg(np.diag(np.arange(1.0, 101.0)), k=2, rng=0, tol=1e-6)
>>> np.round(res.eigenvalues, 6).tolist()
[100.0, 99.0]
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import backend
from ._checks import check_budget, check_positive_int, eigen_problem, start_vectors
from .results import EigResult, eig_result

__all__ = ["lobpcg"]

_EPS23 = np.finfo(np.float64).eps ** (2.0 / 3.0)
# a search direction that lost more than these fractions of its norm to the projection
# (or whose Gram eigenvalue is this small) is dropped, per dtype
_P_CANCEL = {"d": 1e-5, "f": 1e-2}
_P_DROP = {"d": 1e-10, "f": 1e-4}


def _host(x: Any) -> np.ndarray:
    return np.asarray(backend.to_numpy(x), dtype=np.float64)


def _orthonormalize(S: Any, AS: Any | None, drop: float, min_norm: float = 0.0) -> tuple[Any, Any]:
    """``S T`` with orthonormal columns (rank-revealing through ``eig(SᵀS)``); ``AS T`` alongside.

    Columns of norm ``<= min_norm`` (read from the same Gram matrix: one
    device sync in all) are left out first.
    """
    xp = backend.get_namespace(S)
    G = _host(S.T @ S)
    d = np.sqrt(np.maximum(np.diag(G), 1e-300))
    idx = np.flatnonzero(~(d <= min_norm))  # a NaN column is kept (and the eigh below drops all)
    if idx.size < d.size:
        idd = xp.asarray(idx)
        S, AS, G, d = S[:, idd], (AS[:, idd] if AS is not None else None), G[np.ix_(idx, idx)], d[idx]
        if not idx.size:
            return S, AS
    Gs = G / d[:, None] / d[None, :]
    lam, U = np.linalg.eigh(0.5 * (Gs + Gs.T))
    keep = lam > drop * max(lam[-1], 1e-300)
    T = (U[:, keep] / np.sqrt(lam[keep])[None, :]) / d[:, None]
    Td = xp.asarray(T.astype(S.dtype))
    return S @ Td, (AS @ Td if AS is not None else None)


def lobpcg(
    A: Any,
    k: int = 1,
    which: str = "LA",
    tol: float = 1e-8,
    *,
    X0: Any = None,
    rng: Any = None,
    block_size: int | None = None,
    maxiter: int | None = None,
    max_matvecs: int | None = None,
    preconditioner: Callable[[Any], Any] | None = None,
    return_history: bool = False,
    strict: bool = False,
    check_symmetry: bool | None = None,
) -> EigResult:
    """``k`` largest ("LA") or smallest ("SA") eigenpairs by block LOBPCG.

    Parameters
    ----------
    A : symmetric ``(n, n)`` operator (uses ``A.matmat`` on blocks)
    k : wanted pairs, ``1 <= k`` and ``3 * block_size <= n``
    X0 : ``(n, b)`` warm start (``b >= k``); default Gaussian from ``rng``
    block_size : ``b >= k`` columns iterated (default ``k``; extra columns
        are guard vectors that speed up convergence of the ``k``-th value)
    maxiter : block iterations (default 500); max_matvecs : budget
    preconditioner : ``T(R)`` applied to the residual block ``(n, m)``
    strict : raise :class:`ConvergenceError` unless all ``k`` converged

    Returns
    -------
    EigResult (descending for "LA", ascending for "SA"); ``n_iterations`` is
    the number of block steps.
    """
    op, n, k, which, tol = eigen_problem(A, k, tol, which, ("LA", "SA"), check_symmetry=check_symmetry, rng=rng)
    xp, dt = op.xp, op.dtype
    b = k if block_size is None else check_positive_int(block_size, "block_size")
    if X0 is not None and block_size is None:
        b = max(k, int(getattr(X0, "shape", (0, 1))[-1]) if getattr(X0, "ndim", 1) == 2 else 1)
    if b < k:
        raise ValueError(f"block_size must be >= k = {k}, got {b}")
    if 3 * b > n:
        raise ValueError(f"lobpcg needs 3 * block_size <= n (block_size = {b}, n = {n}); use a dense eigh")
    maxiter = 500 if maxiter is None else check_positive_int(maxiter, "maxiter")
    budget = check_budget(max_matvecs)
    g = backend.default_rng(rng, xp)
    if X0 is None:
        X = g.standard_normal((n, b)).astype(dt)
    else:
        X0 = X0[:, None] if getattr(X0, "ndim", 2) == 1 else X0
        X = start_vectors(op, X0, g, k=X0.shape[1], name="X0") if X0.shape[1] > 1 else start_vectors(
            op, X0[:, 0], g, name="X0"
        )[:, None]
        if X.shape[1] < b:
            X = xp.concatenate([X, g.standard_normal((n, b - X.shape[1])).astype(dt)], axis=1)
    before = op.n_matvecs
    drop = 1e3 * np.finfo(dt).eps
    X, _ = _orthonormalize(X, None, drop)
    if X.shape[1] < b:
        X = xp.concatenate([X, g.standard_normal((n, b - X.shape[1])).astype(dt)], axis=1)
        X, _ = _orthonormalize(X, None, drop)
    history: list[dict[str, Any]] | None = [] if return_history else None
    sign = 1.0 if which == "LA" else -1.0

    def rayleigh_ritz(S: Any, AS: Any, m: int) -> tuple[np.ndarray, np.ndarray]:
        H = _host(S.T @ AS)
        H = 0.5 * (H + H.T)
        if not np.all(np.isfinite(H)):
            raise FloatingPointError
        lam, C = np.linalg.eigh(H)
        idx = np.argsort(-sign * lam, kind="stable")[:m]
        return lam[idx], C[:, idx]

    message = ""
    it = 0
    theta = np.full(b, np.nan)
    rnorm = np.full(b, np.inf)
    conv = np.zeros(b, dtype=bool)
    anorm = 0.0
    P = AP = None
    try:
        AX = op.matmat(X)
        theta, C = rayleigh_ritz(X, AX, b)
        Cd = xp.asarray(C.astype(dt))
        X, AX = X @ Cd, AX @ Cd
        while True:
            R = AX - X * xp.asarray(theta.astype(dt))[None, :]
            rnorm = _host(xp.linalg.norm(R, axis=0))
            if not np.all(np.isfinite(rnorm)):
                raise FloatingPointError
            anorm = max(anorm, float(np.max(np.abs(theta))))
            conv = rnorm <= tol * np.maximum(np.abs(theta), _EPS23 * max(anorm, 1e-300))
            if history is not None:
                history.append(
                    {"n_matvecs": op.n_matvecs - before, "eigenvalues": theta[:k].copy(), "residual_norms": rnorm[:k].copy()}
                )
            if conv[:k].all():
                message = "converged"
                break
            if it >= maxiter:
                message = f"maxiter {maxiter} reached"
                break
            active = np.flatnonzero(~conv)
            if op.n_matvecs - before + active.size > budget:
                message = f"matvec budget {max_matvecs} exhausted"
                break
            it += 1
            act = xp.asarray(active) if xp is not np else active
            W = R[:, act]
            if preconditioner is not None:
                W = xp.asarray(preconditioner(W)).astype(dt, copy=False)
            for _ in range(2):
                W = W - X @ (X.T @ W)
            W, _ = _orthonormalize(W, None, drop)
            if W.shape[1] == 0:
                message = "residual block lost rank (stagnation)"
                break
            AW = op.matmat(W)
            blocks, ablocks = [X, W], [AX, AW]
            if P is not None:
                Pa, APa = P[:, act], AP[:, act]
                # unit columns, scaled on the device (a zero column stays zero and is dropped below)
                nrm = xp.linalg.norm(Pa, axis=0)
                sc = (1.0 / xp.where(nrm > 0, nrm, np.inf)).astype(dt, copy=False)[None, :]
                Pa, APa = Pa * sc, APa * sc
                # project off span[X, W] (twice), tracking A P with the same coefficients
                for _ in range(2):
                    c = X.T @ Pa
                    Pa, APa = Pa - X @ c, APa - AX @ c
                    c = W.T @ Pa
                    Pa, APa = Pa - W @ c, APa - AW @ c
                # drop directions that cancelled (their A-images would carry amplified round-off)
                Pa, APa = _orthonormalize(Pa, APa, _P_DROP[dt.char], min_norm=_P_CANCEL[dt.char])
                if Pa.shape[1]:
                    blocks.append(Pa)
                    ablocks.append(APa)
            # X, W, P are orthonormal blocks, mutually orthogonal by construction
            S = xp.concatenate(blocks, axis=1)
            AS = xp.concatenate(ablocks, axis=1)
            theta, C = rayleigh_ritz(S, AS, b)
            Cd = xp.asarray(C.astype(dt))
            X, AX = S @ Cd, AS @ Cd
            # new directions: the [W, P] part of the update (no cancellation against X)
            Cp = Cd[b:, :]
            P, AP = S[:, b:] @ Cp, AS[:, b:] @ Cp
    except FloatingPointError:
        message = f"operator returned NaN/Inf after {op.n_matvecs - before} matvecs"
        conv = np.zeros(b, dtype=bool)
    return eig_result(
        "lobpcg", strict, eigenvalues=theta[:k].copy(), eigenvectors=X[:, :k], residual_norms=rnorm[:k].copy(),
        converged=conv[:k].copy(), n_matvecs=op.n_matvecs - before, n_iterations=it, history=history,
        method="lobpcg", message=message, tol=tol,
    )
