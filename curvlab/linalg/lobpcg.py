"""Block LOBPCG (locally optimal block preconditioned conjugate gradient) for symmetric operators.

Each iteration applies the operator once to a block (one ``matmat`` call: the
GPU-friendly path) and does a Rayleigh-Ritz step on ``[X, W, P]`` (current
vectors, preconditioned residuals, previous search directions), after
Knyazev (2001). Soft locking: a converged column stays in ``X`` (so the
Rayleigh-Ritz step keeps improving it) but adds no new residual or direction,
so later iterations cost only as many matvecs as there are active columns.
``X0`` warm-starts the block (e.g. the previous step's eigenvectors).

The Rayleigh-Ritz step works from the Gram matrix ``SᵀS`` and ``SᵀAS`` of the
basis ``S = [X, W, P]`` (accumulated in float64, one device-to-host transfer),
orthonormalising through an eigen-decomposition of the Gram matrix and
dropping directions below ``ε``-relative size, so a basis that lost
orthogonality (a flat spectrum, residuals at round-off) cannot corrupt the
Ritz values; the operator images ``AS`` are updated with the same
coefficients, so no extra matvecs are spent. Small dense problems go to host
NumPy in float64; large arrays stay on the operator's backend (NumPy or CuPy).

Stopping rule: column ``i`` converged when
``‖A x_i - θ_i x_i‖ <= tol · max(|θ_i|, ε^{2/3} ‖A‖_est)`` (as :func:`eigsh`),
checked again on the returned vectors with one fresh block product; a ``tol``
below ``eps ‖A‖`` is never met (flagged "stagnated").

Examples
--------
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
from ._progress import Monitor
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


def _gram_and_projection(S: Any, AS: Any) -> Any:
    """``[SᵀS, SᵀAS]`` ``(2, m, m)`` on the device, accumulated in float64 (the Gram-based
    orthonormalisation squares the condition of ``S``, too much for float32 round-off)."""
    xp = backend.get_namespace(S)
    S64, AS64 = S.astype(np.float64, copy=False), AS.astype(np.float64, copy=False)
    return xp.stack([S64.T @ S64, S64.T @ AS64])


def _gram_basis(G: np.ndarray, cols: np.ndarray, drop: float) -> np.ndarray:
    """Coefficients ``T`` ``(m, r)`` with ``(S T)ᵀ (S T) = I`` from the Gram matrix ``G = SᵀS``, using only ``cols``.

    Rank-revealing: directions whose scaled Gram eigenvalue is below
    ``drop`` times the largest are left out (rows outside ``cols`` are zero).
    """
    m = G.shape[0]
    Gc = G[np.ix_(cols, cols)]
    d = np.sqrt(np.maximum(np.diag(Gc), 1e-300))
    Gs = Gc / d[:, None] / d[None, :]
    lam, U = np.linalg.eigh(0.5 * (Gs + Gs.T))
    keep = lam > drop * max(lam[-1], 1e-300)
    T = np.zeros((m, int(np.count_nonzero(keep))))
    T[cols] = (U[:, keep] / np.sqrt(lam[keep])[None, :]) / d[:, None]
    return T


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
    warn: bool = True,
    check_symmetry: bool | None = None,
    callback: Any = None,
    progress: Any = False,
) -> EigResult:
    """``k`` largest ("LA") or smallest ("SA") eigenpairs by block LOBPCG.

    Parameters
    ----------
    A : symmetric ``(n, n)`` operator (uses ``A.matmat`` on blocks)
    k : wanted pairs, ``1 <= k`` and ``3 * block_size <= n``
    X0 : ``(n, b)`` warm start (``b >= k``); default Gaussian from ``rng``
    block_size : ``b >= k`` columns iterated (default ``k``; extra columns
        are guard vectors that speed up convergence of the ``k``-th value)
    maxiter : block iterations (default 500); max_matvecs : budget, the
        final verification product included
    preconditioner : ``T(R)`` applied to the residual block ``(n, m)``
    strict : raise :class:`ConvergenceError` unless all ``k`` converged
    warn : issue a :class:`ConvergenceWarning` unless all ``k`` converged
    callback, progress : see :mod:`curvlab.linalg._progress`; called once per
        block iteration (the first on the start block) with ``n_matvecs``,
        ``eigenvalues`` and ``residual_norms`` of the ``k`` wanted pairs. A
        stop ends the iteration (status "max_iter", message "stopped by
        callback ...", unless the verified pairs meet ``tol``).

    Returns
    -------
    EigResult (descending for "LA", ascending for "SA"); ``n_iterations`` is
    the number of block steps. The returned pairs are the best iterate per
    pair (smallest residual seen), refined by a Rayleigh-Ritz step on their
    span with one fresh block product (``k`` matvecs, counted):
    ``residual_norms`` are the true ``‖A x - θ x‖`` (float64). Status
    "nonfinite" at the first NaN/Inf (operator, preconditioner or iteration),
    "stagnated" when the residuals stop falling near the round-off floor or
    ``tol`` is below what the dtype attains (``tol·|θ| < eps ‖A‖``). An
    exact eigenspace (residuals zero relative to ``‖A‖``, e.g. a flat
    spectrum) is recognised at once.

    Host syncs: at most two per iteration (the residual norms; the Gram and
    projected matrices of ``[X, W, P]`` in one transfer), plus a fixed few at
    the start and for the final verification.
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
    loop_budget = budget - k if np.isfinite(budget) else budget  # room for the final verification
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
    eps = float(np.finfo(dt).eps)
    drop = 1e3 * eps
    X, _ = _orthonormalize(X, None, drop)
    if X.shape[1] < b:
        X = xp.concatenate([X, g.standard_normal((n, b - X.shape[1])).astype(dt)], axis=1)
        X, _ = _orthonormalize(X, None, drop)
    history: list[dict[str, Any]] | None = [] if return_history else None
    sign = 1.0 if which == "LA" else -1.0

    def rayleigh_ritz(S: Any, AS: Any, m: int, cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ritz pairs of span(S) (``G`` and ``H`` in one transfer: one sync); ``C`` ``(S.shape[1], m)``."""
        GH = _host(_gram_and_projection(S, AS))
        if not np.all(np.isfinite(GH)):
            raise FloatingPointError
        G, H = GH[0], 0.5 * (GH[1] + GH[1].T)
        Tb = _gram_basis(G, np.arange(G.shape[0]) if cols is None else cols, drop)
        lam, Z = np.linalg.eigh(Tb.T @ H @ Tb)
        idx = np.argsort(-sign * lam, kind="stable")[:m]
        return lam[idx], Tb @ Z[:, idx]

    message = status = ""
    it = 0
    theta = np.full(b, np.nan)
    rnorm = np.full(b, np.inf)
    conv = np.zeros(b, dtype=bool)
    anorm = 0.0
    P: Any = None  # the previous search directions and their products (none before the first step)
    AP: Any = None
    best = np.full(k, np.inf)  # best relative residual per wanted pair
    Xbest = None
    theta_best = np.full(k, np.nan)
    trail: list[float] = []  # worst best-relative-residual of the unconverged wanted pairs, per iteration
    mon = Monitor("lobpcg", callback, progress, total=maxiter + 1, postfix=("eigenvalues",))
    try:
        AX = op.matmat(X)
        theta, C = rayleigh_ritz(X, AX, b)
        Cd = xp.asarray(C.astype(dt))
        X, AX = X @ Cd, AX @ Cd
        while True:
            R = AX - X * xp.asarray(theta.astype(dt))[None, :]
            rnorm = _host(xp.linalg.norm(R, axis=0))  # sync 1 of the iteration
            if not np.all(np.isfinite(rnorm)) or not np.all(np.isfinite(theta)):
                raise FloatingPointError
            anorm = max(anorm, float(np.max(np.abs(theta))))
            scale = tol * np.maximum(np.abs(theta), _EPS23 * max(anorm, 1e-300))
            attainable = eps * max(anorm, 1e-300)
            conv = (rnorm <= scale) & (scale >= attainable)
            rel = rnorm[:k] / scale[:k]
            better = rel < best
            if better.any():
                Xbest = X[:, :k].copy() if Xbest is None else Xbest
                bi = np.flatnonzero(better)
                Xbest[:, xp.asarray(bi) if xp is not np else bi] = X[:, xp.asarray(bi) if xp is not np else bi]
                best[bi], theta_best[bi] = rel[bi], theta[:k][bi]
            if history is not None:
                history.append(
                    {"n_matvecs": op.n_matvecs - before, "eigenvalues": theta[:k].copy(), "residual_norms": rnorm[:k].copy()}
                )
            stop_cb = mon.active and mon.update(
                n_matvecs=op.n_matvecs - before, eigenvalues=theta[:k].copy(), residual_norms=rnorm[:k].copy()
            )
            if conv[:k].all():
                message, status = "converged", "converged"
                break
            if stop_cb:
                message, status = mon.message, "max_iter"
                break
            roundoff = 5 * attainable  # zero relative to ‖A‖, to a few roundings
            if np.all(rnorm[:k] <= roundoff):
                # an exact eigenspace to working precision (e.g. a flat spectrum): nothing left to improve
                message, status = (
                    f"exact eigenspace to working precision (residuals <= 5·eps·‖A‖ ≈ {roundoff:.1e} in "
                    f"{np.dtype(dt).name}), but tol = {tol:g} asks for less than that: tol below attainable "
                    f"precision; use a larger tol or float64",
                    "stagnated",
                )
                break
            if it >= maxiter:
                message, status = f"maxiter {maxiter} reached", "max_iter"
                break
            open_ = ~conv[:k]
            trail.append(float(np.max(best[open_])))
            w = 10 if np.any(scale[:k][open_] < attainable) else 25
            near_floor = np.all(rnorm[:k][open_] <= 10 * np.sqrt(n) * attainable)

            def near_floor_best(r: np.ndarray) -> bool:
                return bool(np.all(r <= 1e3 * np.sqrt(n) * attainable))

            if np.all(rel[open_] > 100 * best[open_]) and near_floor_best(best[open_] * scale[:k][open_]):
                message, status = (
                    "the iteration is diverging (residuals 100× above the best seen, which lies near the round-off "
                    f"floor of {np.dtype(dt).name}, eps·‖A‖ ≈ {attainable:.1e}): the best iterate is returned",
                    "stagnated",
                )
                break
            if len(trail) > w and trail[-1] > 0.9 * trail[-1 - w] and near_floor:
                message, status = (
                    f"residuals stopped falling near the round-off floor of {np.dtype(dt).name} "
                    f"(best tracked relative residual {trail[-1] * tol:.1e}, eps·‖A‖ ≈ {attainable:.1e})",
                    "stagnated",
                )
                break
            active = np.flatnonzero(~conv)
            if op.n_matvecs - before + active.size > loop_budget:
                message, status = f"matvec budget {max_matvecs} exhausted", "max_matvecs"
                break
            it += 1
            act = xp.asarray(active) if xp is not np else active
            W = R[:, act]
            if preconditioner is not None:
                W = xp.asarray(preconditioner(W)).astype(dt, copy=False)
            for _ in range(2):
                W = W - X @ (X.T @ W)
            # unit columns, scaled on the device (a zero column stays zero and is dropped by the Gram basis)
            nrm = xp.linalg.norm(W, axis=0)
            W = W * (1.0 / xp.where(nrm > 0, nrm, np.inf)).astype(dt, copy=False)[None, :]
            AW = op.matmat(W)
            blocks, ablocks = [X, W], [AX, AW]
            nw = W.shape[1]
            if P is not None:
                Pa, APa = P[:, act], AP[:, act]
                nrm = xp.linalg.norm(Pa, axis=0)
                sc = (1.0 / xp.where(nrm > 0, nrm, np.inf)).astype(dt, copy=False)[None, :]
                Pa, APa = Pa * sc, APa * sc
                # project off span[X, W] (twice), tracking A P with the same coefficients
                for _ in range(2):
                    c = X.T @ Pa
                    Pa, APa = Pa - X @ c, APa - AX @ c
                    c = W.T @ Pa
                    Pa, APa = Pa - W @ c, APa - AW @ c
                blocks.append(Pa)
                ablocks.append(APa)
            S = xp.concatenate(blocks, axis=1)
            AS = xp.concatenate(ablocks, axis=1)
            # the Gram diagonal of P holds its norm after the projection: directions that cancelled
            # (their A-images would carry amplified round-off) are left out of the basis
            m = S.shape[1]
            GH = _host(_gram_and_projection(S, AS))  # sync 2 of the iteration
            if not np.all(np.isfinite(GH)):
                raise FloatingPointError
            G, H = GH[0], 0.5 * (GH[1] + GH[1].T)
            cols = np.arange(m)
            if m > b + nw:
                pn = np.sqrt(np.maximum(np.diag(G)[b + nw:], 0.0))
                cols = np.concatenate([np.arange(b + nw), b + nw + np.flatnonzero(pn > _P_CANCEL[dt.char])])
            Tb = _gram_basis(G, cols, drop)
            lam, Z = np.linalg.eigh(Tb.T @ H @ Tb)
            idx = np.argsort(-sign * lam, kind="stable")[:b]
            theta, C = lam[idx], Tb @ Z[:, idx]
            Cd = xp.asarray(C.astype(dt))
            X, AX = S @ Cd, AS @ Cd
            # new directions: the [W, P] part of the update (no cancellation against X)
            Cp = Cd[b:, :]
            P, AP = S[:, b:] @ Cp, AS[:, b:] @ Cp
        if status == "stagnated" and np.any(scale[:k] < attainable) and "attainable" not in message:
            message += f"; tol = {tol:g} is below attainable precision (tol·|θ| < eps·‖A‖ ≈ {attainable:.1e})"
    except FloatingPointError:
        mon.close()
        message, status = f"NaN/Inf (operator or iteration) after {op.n_matvecs - before} matvecs: stopped at once", "nonfinite"
    mon.close()
    n_it = it
    if status == "nonfinite" or Xbest is None:
        vals = theta_best if Xbest is not None else np.full(k, np.nan)
        return eig_result(
            "lobpcg", strict, warn, eigenvalues=vals, eigenvectors=Xbest, residual_norms=np.full(k, np.inf),
            converged=np.zeros(k, dtype=bool), n_matvecs=op.n_matvecs - before, n_iterations=n_it, history=history,
            method="lobpcg", message=message or "no finite iterate", status=status or "nonfinite", tol=tol,
        )
    # verification: Rayleigh-Ritz on the best iterates with one fresh block product; true residuals
    try:
        AY = op.matmat(Xbest)
        vals, C = rayleigh_ritz(Xbest, AY, k)
        Cd = xp.asarray(C.astype(dt))
        Y, AY = Xbest @ Cd, AY @ Cd
        Rf = AY.astype(np.float64) - Y.astype(np.float64) * xp.asarray(vals)[None, :]
        resid = _host(xp.linalg.norm(Rf, axis=0))
        if not (np.all(np.isfinite(resid)) and np.all(np.isfinite(vals))):
            raise FloatingPointError
    except FloatingPointError:
        return eig_result(
            "lobpcg", strict, warn, eigenvalues=theta_best, eigenvectors=Xbest, residual_norms=np.full(k, np.inf),
            converged=np.zeros(k, dtype=bool), n_matvecs=op.n_matvecs - before, n_iterations=n_it, history=history,
            method="lobpcg", message=f"NaN/Inf in the verification product: {message}", status="nonfinite", tol=tol,
        )
    anorm = max(anorm, float(np.max(np.abs(vals))))
    scale = tol * np.maximum(np.abs(vals), _EPS23 * max(anorm, 1e-300))
    attainable = eps * max(anorm, 1e-300)
    conv = (resid <= scale) & (scale >= attainable)
    if status == "converged" and not conv.all():
        status = "stagnated"
        message = (
            f"the iteration met tol = {tol:g} but the true residual of the returned vectors is "
            f"{float(np.max(resid / np.maximum(np.abs(vals), 1e-300))):.1e}·|θ|"
            + (f" (tol is below attainable precision, eps·‖A‖ ≈ {attainable:.1e})" if np.any(scale < attainable) else "")
        )
    elif status != "converged" and conv.all():
        message, status = f"converged (best iterates; the iteration stopped on: {message})", "converged"
    return eig_result(
        "lobpcg", strict, warn, eigenvalues=vals, eigenvectors=Y, residual_norms=resid,
        converged=conv, n_matvecs=op.n_matvecs - before, n_iterations=n_it, history=history,
        method="lobpcg", message=message, status=status, tol=tol,
    )
