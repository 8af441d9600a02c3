"""Lanczos with full reorthogonalisation and a thick-restart eigen-driver.

:func:`lanczos` runs ``m`` steps of the symmetric Lanczos recurrence
``A Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ`` from one start vector, reorthogonalising
every new vector against the whole basis with blocked classical Gram-Schmidt:
on a device applied twice ("twice is enough"); on the host the three-term part
is removed first and a second full pass runs only when the DGKS test asks for
it (as ARPACK does), at about half the cost. The recurrence coefficients ``α, β`` are
kept in float64 on the host even for float32 operators, and the tridiagonal
eigenproblem is solved with :func:`scipy.linalg.eigh_tridiagonal`.

:func:`eigsh` computes ``k`` extreme eigenpairs by thick-restart Lanczos
(Wu & Simon 2000): after each cycle of ``ncv`` steps it keeps the ``n_keep``
Ritz pairs nearest the wanted end(s) together with the residual direction, so
the projected matrix becomes "arrowhead + tridiagonal"; it is diagonalised
with a symmetric dense eigensolver on the host (never a general ``eig``).
Convergence is tested after every step once ``k`` Ritz values exist (every
2nd or 4th step while the residuals are still more than 1e2 or 1e6 times the
tolerance; after a restart, after half the matvecs the observed convergence
rate still needs), so the solver stops as soon as the wanted pairs meet it.

Stopping rule (the same as ARPACK's): pair ``i`` has converged when
``‖A y_i - θ_i y_i‖ <= tol · max(|θ_i|, ε^{2/3} ‖T‖)`` (with
``tol_relative_to="norm"``: ``<= tol · max|θ|``, a lower bound of ``‖A‖``). The iteration stops
when the residual read from the Lanczos relation (``|β| |s_{m,i}|``) meets
it; that estimate is only as good as the relation, which round-off (float32,
or drift over many restarts) breaks, so the returned pairs are then verified
on their true residuals (computed in float64) and a pair is called converged
only if its true residual meets ``tol`` and ``tol`` is attainable at all
(``tol · max(|θ|, ...) >= eps ‖A‖``). While the raw products ``A V`` are kept
(through 3 restarts) a claim is verified at once from them, with their drift
over the restarts to spare, and the iteration goes on if it is refuted;
otherwise the recurrence must meet ``tol`` with ``√j eps ‖T‖`` to spare. A run
the verification contradicts is repeated once from the sum of its Ritz
vectors; what remains unconverged is flagged (status "stagnated", with the
reason).

NaN or Inf from the operator stops the run (status "nonfinite"). Every
unconverged result issues a :class:`~curvlab.linalg.results.ConvergenceWarning`
(``warn=False`` silences it, ``strict=True`` raises instead). A single-vector
Krylov method finds one copy of a repeated eigenvalue per round-off
"seed"; for multiplicities use :func:`curvlab.linalg.lobpcg` (a block method).

Examples
--------
>>> import numpy as np
>>> from curvlab.linalg.testing import prescribed_spectrum_operator
>>> ps = prescribed_spectrum_operator(np.arange(1.0, 101.0), rng=0)
>>> res = eigsh(ps.operator, k=3, which="LA", rng=1)
>>> np.round(res.eigenvalues, 6).tolist(), bool(res.all_converged)
([100.0, 99.0, 98.0], True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.linalg.lapack

from .. import backend
from ._checks import as_symmetric_operator, check_budget, check_k, check_positive_int, eigen_problem, host_floats, start_vectors
from ._progress import Monitor
from .results import EigResult, eig_result, warn_unconverged

__all__ = ["LanczosDecomposition", "lanczos", "eigsh"]

_EPS23 = np.finfo(np.float64).eps ** (2.0 / 3.0)
#: restarts through which eigsh keeps the raw products ``A V`` up to date (see ``_eigsh``)
_IMAGE_RESTARTS = 3


@dataclass
class LanczosDecomposition:
    """``A Q ≈ Q T + β_m q_{m+1} e_mᵀ`` from :func:`lanczos`.

    Attributes
    ----------
    alpha : numpy.ndarray ``(m,)`` float64, diagonal of ``T``
    beta : numpy.ndarray ``(m,)`` float64; ``beta[:-1]`` off-diagonal of ``T``,
        ``beta[-1]`` the residual norm ``β_m``
    basis : array ``(n, m)`` or None (operator backend/dtype)
    start_norm : float  ``‖v0‖``
    n_matvecs : int
    breakdown : bool  True when an invariant subspace was found (``β ≈ 0``) before ``m`` steps
    message : str
    """

    alpha: np.ndarray
    beta: np.ndarray
    basis: Any
    start_norm: float
    n_matvecs: int
    breakdown: bool
    message: str = ""

    @property
    def n_steps(self) -> int:
        return int(self.alpha.size)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values ``(m,)`` ascending and eigenvectors ``(m, m)`` of ``T`` (host float64)."""
        return tridiagonal_eigh(self.alpha, self.beta[:-1])


def tridiagonal_eigh(alpha: np.ndarray, offdiag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the symmetric tridiagonal matrix (host float64, ascending)."""
    if alpha.size == 1:
        return alpha.copy(), np.ones((1, 1))
    if np.all(np.isfinite(alpha)) and np.all(np.isfinite(offdiag)):
        # LAPACK stev directly: SciPy's eigh_tridiagonal wrapper validates and copies on every call
        vals, vecs, info = scipy.linalg.lapack.dstev(alpha, offdiag)
        if info == 0:
            return vals, vecs
    return scipy.linalg.eigh_tridiagonal(alpha, offdiag, lapack_driver="stev")


def _projected_eigh(T: np.ndarray, j: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of ``T[:j, :j]``: tridiagonal before the first restart (``p == 0``), else arrowhead."""
    Tj = T[:j, :j]
    if p == 0:
        return tridiagonal_eigh(np.diag(Tj).copy(), np.diag(Tj, 1).copy())
    theta, S = np.linalg.eigh(Tj)  # LAPACK syevd; NumPy's wrapper costs less per call than SciPy's
    return theta, S


def _drift(restarts: int, ncv: int, eps: float, tnorm: float) -> float:
    """Bound on how far the stored products ``A V`` are from fresh ones after ``restarts`` restarts
    (each a ``(p, ncv)`` combination of rows: the rounding of a length-``ncv`` sum, ``√ncv eps ‖A‖``
    per restart, halved). The gap between residuals from the stored and from fresh products,
    measured over prescribed spectra (k = 1, 5, 20, tol down to 3e-15), stayed below 0.08 of one
    such term in total, so the estimate keeps a margin of 6 or more."""
    return 0.5 * restarts * float(np.sqrt(ncv)) * eps * max(tnorm, 1e-300)


def _residual_norms(xp: Any, AY: Any, Y: Any, vals: np.ndarray) -> np.ndarray:
    """``‖A y_i - θ_i y_i‖`` in float64 on the host (``inf`` where not finite); one sync on a device."""
    R = AY.astype(np.float64, copy=False) - Y.astype(np.float64, copy=False) * xp.asarray(vals)[None, :]
    resid = np.asarray(backend.to_numpy(xp.linalg.norm(R, axis=0)), dtype=np.float64)
    return np.where(np.isfinite(resid), resid, np.inf)


def _stored_residuals(xp: Any, V: Any, AV: Any, j: int, S: np.ndarray, vals: np.ndarray,
                      dt: Any) -> tuple[np.ndarray, Any, Any]:
    """Residual norms of the Ritz pairs ``(vals, Y = V[:j]ᵀ S)`` from the stored raw products ``AV[:j]``,
    with ``Y`` and ``AY`` (reused by the final verification when the run stops here)."""
    Sd = xp.asarray(S.astype(dt))
    Y, AY = V[:j].T @ Sd, AV[:j].T @ Sd
    return _residual_norms(xp, AY, Y, vals), Y, AY


def _tol_scale(theta: np.ndarray, sel: np.ndarray, tnorm: float, anorm: float, relative_to: str) -> np.ndarray:
    """Per-pair scale ``s_i`` of the test ``‖A y_i - θ_i y_i‖ <= tol · s_i`` (see :func:`eigsh`'s ``tol_relative_to``)."""
    if relative_to == "norm":
        return np.full(sel.size, max(anorm, 1e-300))
    return np.maximum(np.abs(theta[sel]), _EPS23 * max(tnorm, 1e-300))


def _orthogonalize(Vt: Any, w: Any) -> tuple[Any, Any]:
    """Blocked classical Gram-Schmidt twice: ``w ⟂`` the rows of ``Vt``; returns (w, coefficients).

    The basis is stored as rows (``(j, n)``, C-contiguous) so both products are
    contiguous matrix-vector products.
    """
    h = Vt @ w
    w = w - Vt.T @ h
    h2 = Vt @ w
    w = w - Vt.T @ h2
    return w, h + h2


#: DGKS threshold (Daniel, Gragg, Kaufman & Stewart 1976; ARPACK's 0.717): a second Gram-Schmidt
#: pass is needed only when the first removed more than half of ``‖w‖²``
_DGKS = 1.0 / np.sqrt(2.0)


def _step(op: Any, V: Any, j: int, images: Any = None) -> tuple[Any, float, float]:
    """One Lanczos step from row ``j`` of ``V``: ``w = A v_j`` orthogonalised against ``V[: j + 1]``.

    Returns ``(w, α_j, ‖w‖)``. On a device both coefficients come to the host
    in one transfer, the single sync of a step, after two unconditional
    Gram-Schmidt passes. On the host (NumPy) the second pass runs only when
    the DGKS test asks for it (``‖w‖`` fell below ``‖Av_j‖ / √2`` in the
    first), which keeps orthogonality at the same ``O(eps)`` level at about
    half the cost. With ``images``, the raw product ``A v_j`` is also stored
    in ``images[j]``.
    """
    w = op.matvec(V[j])
    if images is not None:
        images[j] = w
    xp = op.xp
    Vj = V[: j + 1]
    if xp is not np:
        w, h = _orthogonalize(Vj, w)
        a, b = host_floats(xp, h[j], xp.linalg.norm(w))
        return w, a, b
    # the three-term part first (v_j, v_{j-1}: the large components), then one full pass; the
    # DGKS test is taken against the norm left after the three-term part
    lo = max(j - 1, 0)
    c = V[lo: j + 1] @ w
    w = w - V[lo: j + 1].T @ c
    nrm0 = math.sqrt(abs(float(w @ w)))  # what np.linalg.norm computes for a real vector, without its overhead
    h = Vj @ w
    w -= Vj.T @ h
    b = math.sqrt(abs(float(w @ w)))
    if not b > _DGKS * nrm0:  # also when NaN: the second pass keeps the non-finite values visible
        h2 = Vj @ w
        w -= Vj.T @ h2
        h += h2
        b = math.sqrt(abs(float(w @ w)))
    return w, float(c[-1] + h[j]), b


def lanczos(
    A: Any,
    m: int,
    v0: Any = None,
    rng: Any = None,
    *,
    return_basis: bool = False,
    check_symmetry: bool | None = None,
    warn: bool = True,
    callback: Any = None,
    progress: Any = False,
) -> LanczosDecomposition:
    """``m`` Lanczos steps with full reorthogonalisation from ``v0`` (or a Gaussian from ``rng``).

    Parameters
    ----------
    A : symmetric operator ``(n, n)`` (anything :func:`aslinearoperator` wraps)
    m : int, ``1 <= m <= n``
    v0 : array ``(n,)``, optional
    return_basis : keep the ``(n, m)`` orthonormal basis (memory ``n m``)
    warn : issue a :class:`ConvergenceWarning` when a non-finite operator
        output cut the recurrence short or the callback stopped it (``False``
        silences it)
    callback, progress : see :mod:`curvlab.linalg._progress`; called once per
        step with ``n_matvecs``, ``alpha`` and ``beta`` (host floats, no extra
        sync). A stop returns the shorter decomposition (``message`` says so).

    Returns
    -------
    LanczosDecomposition with float64 ``alpha``/``beta``. Stops early on an
    invariant subspace (then the Gauss quadrature is exact) or on a non-finite
    operator output (``message`` says so, and a warning is issued).

    Host syncs: one per step (``α_j`` and ``‖w‖`` in one transfer), plus one
    for ``‖v0‖``.

    Examples
    --------
    >>> import numpy as np
    >>> dec = lanczos(np.diag([1.0, 2.0, 3.0]), 3, v0=np.ones(3))
    >>> np.round(dec.ritz()[0], 10).tolist()
    [1.0, 2.0, 3.0]
    """
    op = as_symmetric_operator(A, check_symmetry=check_symmetry, rng=rng)
    n = op.shape[0]
    m = check_k(m, n, "m", allow_n=True)
    xp = op.xp
    v = start_vectors(op, v0, rng)
    mon = Monitor("lanczos", callback, progress, total=m, unit="step", postfix=("alpha", "beta"))
    before = op.n_matvecs
    nrm0 = float(xp.linalg.norm(v))
    V = xp.zeros((m, n), dtype=op.dtype)  # basis vectors as rows
    V[0] = v / op.dtype.type(nrm0)
    alpha = np.zeros(m)
    beta = np.zeros(m)
    breakdown = False
    msg = "completed"
    j = 0
    coef_max = 1e-300  # running max of |α| and β, the scale of the breakdown test
    for j in range(m):
        w, a, b = _step(op, V, j)
        if not (math.isfinite(a) and math.isfinite(b)):
            msg = f"operator returned NaN/Inf at step {j + 1}"
            breakdown = True
            warn_unconverged("lanczos", f"{msg}; the decomposition stops after {j} steps", warn=warn)
            j -= 1
            break
        alpha[j], beta[j] = a, b
        coef_max = max(coef_max, abs(a), b)
        if b <= 100 * np.finfo(op.dtype).eps * coef_max:
            breakdown = True
            msg = f"invariant subspace found after {j + 1} steps"
            beta[j] = 0.0
            break
        if mon.active and mon.update(n_matvecs=op.n_matvecs - before, alpha=a, beta=b) and j + 1 < m:
            msg = mon.message
            warn_unconverged("lanczos", f"{msg}: {j + 1} of m = {m} steps", warn=warn)
            break
        if j + 1 < m:
            V[j + 1] = w / op.dtype.type(b)
    mon.close()
    steps = j + 1
    return LanczosDecomposition(
        alpha=alpha[:steps],
        beta=beta[:steps],
        basis=V[:steps].T if return_basis else None,
        start_norm=nrm0,
        n_matvecs=op.n_matvecs - before,
        breakdown=breakdown,
        message=msg,
    )


def _select(theta: np.ndarray, which: str, k: int) -> np.ndarray:
    """Indices (into ascending ``theta``) of the ``k`` wanted values, in output order."""
    m = theta.size
    if which == "LA":
        return np.arange(m - 1, m - 1 - k, -1)
    if which == "SA":
        return np.arange(k)
    if which == "LM":
        return np.argsort(-np.abs(theta), kind="stable")[:k]
    # BE: k//2 from the bottom, the rest from the top (ARPACK's convention), ascending
    lo = k // 2
    return np.concatenate([np.arange(lo), np.arange(m - (k - lo), m)])


def _keep_set(theta: np.ndarray, which: str, k: int, n_keep: int) -> np.ndarray:
    """Indices of the Ritz pairs kept at a restart (the wanted end(s), ``n_keep`` of them)."""
    m = theta.size
    n_keep = min(n_keep, m - 1)
    if which == "LA":
        return np.arange(m - n_keep, m)
    if which == "SA":
        return np.arange(n_keep)
    if which == "LM":
        return np.sort(np.argsort(-np.abs(theta), kind="stable")[:n_keep])
    lo = max(k // 2, int(round(n_keep * (k // 2) / k)))
    hi = max(n_keep - lo, k - k // 2)
    lo = n_keep - hi
    return np.concatenate([np.arange(lo), np.arange(m - hi, m)])


def eigsh(
    A: Any,
    k: int = 6,
    which: str = "LA",
    tol: float = 1e-8,
    *,
    maxiter: int | None = None,
    max_matvecs: int | None = None,
    v0: Any = None,
    rng: Any = None,
    ncv: int | None = None,
    n_keep: int | str | None = None,
    return_eigenvectors: bool = True,
    return_history: bool = False,
    strict: bool = False,
    warn: bool = True,
    check_symmetry: bool | None = None,
    solver: str = "lanczos",
    block_size: int | None = None,
    callback: Any = None,
    progress: Any = False,
    tol_relative_to: str = "eigenvalue",
) -> EigResult:
    """``k`` extreme eigenpairs of a symmetric operator by thick-restart Lanczos (or block LOBPCG).

    Parameters
    ----------
    A : symmetric ``(n, n)`` operator, array, SciPy operator or callable
    k : number of eigenpairs, ``1 <= k < n``
    which : "LA" (largest algebraic, default), "SA" (smallest), "BE" (both
        ends: ``k//2`` smallest and the rest largest) or "LM" (largest magnitude)
    tol : relative residual tolerance (see the module docstring and ``tol_relative_to``)
    maxiter : restart cycles allowed (default ``max(100, 10 n)``, ARPACK's
        default; each cycle costs ``ncv - n_keep`` matvecs)
    max_matvecs : matvec budget, the final verification included (default:
        unlimited within ``maxiter``)
    v0, rng : start vector, or the generator drawing a Gaussian one
    ncv : Krylov basis size per cycle (default ``min(n, max(3k + 1, 24))``: for small ``k``
        four more than ARPACK's 20, which saves restarts, and with them matvecs, for a few
        more inner products per step)
    n_keep : Ritz pairs kept at a restart; default "adaptive": ``k`` plus
        ``min(n_converged + 2, (ncv - k) // 2)`` (at least 2) extra pairs, and
        ``(ncv - 1) // 2`` extra for ``k = 1`` (tuned on prescribed spectra to
        need no more matvecs than ARPACK)
    return_history : record Ritz values and residuals at each restart
    strict : raise :class:`ConvergenceError` unless all ``k`` pairs converged
    warn : issue a :class:`ConvergenceWarning` when not all pairs converged
    check_symmetry : verify symmetry with random probes (default: only for
        inputs that are not curvlab operators)
    solver : "lanczos" (default) or "lobpcg". Thick-restart Lanczos applies
        the operator to one vector at a time and needs the fewest products;
        :func:`curvlab.linalg.lobpcg` applies it to blocks (one ``matmat`` of
        ``block_size`` columns per iteration, more products in all) and wins
        when a block product costs much less per vector than a single one
        (torch/JAX operators, the reference MLP's one-pass ``matmat``, GPUs)
        or when eigenvalues are repeated. "lobpcg" supports ``which`` "LA"
        and "SA"; ``v0`` becomes the start block ``X0``; ``ncv`` and
        ``n_keep`` do not apply. Both verify the returned pairs on their true
        residuals and report the same status vocabulary.
    block_size : LOBPCG block width (``>= k``; default ``k``); only with
        ``solver="lobpcg"``
    callback, progress : see :mod:`curvlab.linalg._progress`; Lanczos calls
        the callback once per restart cycle with ``n_matvecs``, ``cycle``,
        ``eigenvalues`` and ``residual_norms`` (the recurrence's estimates of
        the ``k`` wanted pairs); a stop ends the run (status "max_iter",
        message "stopped by callback ...", unless the verified pairs meet
        ``tol``). LOBPCG: see :func:`lobpcg`.
    tol_relative_to : "eigenvalue" (default, ARPACK's test): pair ``i``
        converges when ``‖A y_i - θ_i y_i‖ <= tol · max(|θ_i|, ε^{2/3}‖T‖)``;
        "norm": when ``‖A y_i - θ_i y_i‖ <= tol · max_j |θ_j|`` over all Ritz
        values seen, a lower bound of ``‖A‖``, so a converged pair has
        ``‖A y - θ y‖ / ‖A‖ <= tol`` (SLEPc's ``EPS_CONV_NORM``, PRIMME's test):
        the right test when the small wanted eigenvalues need only absolute
        accuracy (a Hessian's top-k next to its largest). Only with
        ``solver="lanczos"``.

    Returns
    -------
    EigResult; ``eigenvalues`` descending for "LA"/"LM", ascending for
    "SA"/"BE". ``residual_norms`` are the true ``‖A y - θ y‖`` of the returned
    Ritz vectors (computed in float64): from the raw operator products of the
    basis (kept through 3 restarts) when their drift over the restarts
    (estimated as ``√ncv eps ‖T‖ / 2`` per restart) is under half the tolerance,
    and a pair is then called converged only with that drift to spare; else
    from one final block product of the ``k`` Ritz vectors (``k`` matvecs,
    counted). ``converged``
    is decided on these, so a pair the recurrence calls converged but whose
    true residual misses ``tol`` (float32 round-off, ``tol`` below what the
    dtype can attain: about ``√n eps ‖A‖``) is flagged, with status
    "stagnated" and a message saying so.

    Host syncs: one per Lanczos step (``α_j`` and ``‖w‖`` in one transfer),
    plus one for ``‖v0‖``, one for the final residual norms, one per
    stored-product check of a claimed convergence (at most 2 refuted ones),
    and one per invariant subspace met.

    Examples
    --------
    >>> import numpy as np
    >>> res = eigsh(np.diag(np.arange(1.0, 51.0)), k=2, which="BE", rng=0)
    >>> np.round(res.eigenvalues, 8).tolist()
    [1.0, 50.0]
    """
    solver = str(solver).lower() if isinstance(solver, str) else solver
    if solver not in ("lanczos", "lobpcg"):
        raise ValueError(f"solver must be 'lanczos' or 'lobpcg', got {solver!r}")
    if tol_relative_to not in ("eigenvalue", "norm"):
        raise ValueError(f"tol_relative_to must be 'eigenvalue' or 'norm', got {tol_relative_to!r}")
    if solver == "lobpcg" and tol_relative_to != "eigenvalue":
        raise ValueError(f"tol_relative_to='norm' applies to solver='lanczos' only, got solver={solver!r}")
    if solver == "lobpcg":
        if ncv is not None or n_keep is not None:
            raise ValueError(f"ncv and n_keep apply to solver='lanczos' only, got ncv={ncv!r}, n_keep={n_keep!r}")
        if which not in ("LA", "SA"):
            raise ValueError(f"solver='lobpcg' supports which='LA' or 'SA', got which={which!r}")
        from .lobpcg import lobpcg

        res = lobpcg(A, k, which, tol, X0=v0, rng=rng, block_size=block_size, maxiter=maxiter, max_matvecs=max_matvecs,
                     return_history=return_history, strict=strict, warn=warn, check_symmetry=check_symmetry,
                     callback=callback, progress=progress)
        if not return_eigenvectors:
            res.eigenvectors = None
        return res
    if block_size is not None:
        raise ValueError(f"block_size applies to solver='lobpcg' only, got block_size={block_size!r} with solver='lanczos'")
    op = as_symmetric_operator(A, check_symmetry=check_symmetry, rng=rng)
    with Monitor("eigsh", callback, progress, total=maxiter, unit="cycle", postfix=("eigenvalues",)) as mon:
        res = _eigsh_flagged(op, k, which, tol, maxiter, max_matvecs, v0, rng, ncv, n_keep, return_history, mon,
                             tol_relative_to)
    fields = dict(res.__dict__)
    if not return_eigenvectors:
        fields["eigenvectors"] = None
    return eig_result("eigsh", strict, warn, **fields)


def _eigsh_flagged(op: Any, k: int, which: str, tol: float, maxiter: Any, max_matvecs: Any, v0: Any, rng: Any,
                   ncv: Any, n_keep: Any, return_history: bool, mon: Monitor,
                   relative_to: str = "eigenvalue") -> EigResult:
    """:func:`_eigsh`, repeated once when the true residuals contradict the recurrence (see :func:`eigsh`)."""
    res = _eigsh(op, k, which, tol, maxiter, max_matvecs, v0, rng, ncv, n_keep, return_history, False, mon, relative_to)
    if res.status == "stagnated" and res.message.startswith("the recurrence"):
        # the recurrence claimed convergence the true residuals deny (drift over many restarts, or the
        # round-off floor): one fresh run from the sum of the Ritz vectors, kept if it does better
        left = None if max_matvecs is None else max_matvecs - res.n_matvecs
        if left is None or left > 2 * res.eigenvalues.size:
            v1 = res.eigenvectors.sum(axis=1)
            try:
                res2 = _eigsh(op, k, which, tol, maxiter, left, v1, rng, ncv, n_keep, return_history, False, mon,
                              relative_to)
            except ValueError:  # a start vector of zero (cannot happen for orthonormal Ritz vectors)
                res2 = None
            if res2 is not None:
                scale = np.maximum(np.abs(res.eigenvalues), 1e-300)
                bad, bad2 = np.max(res.residual_norms / scale), np.max(res2.residual_norms / np.maximum(np.abs(res2.eigenvalues), 1e-300))
                if res2.status != "nonfinite" and (res2.n_converged, -bad2) > (res.n_converged, -bad):
                    res2.history = (res.history or []) + (res2.history or []) if return_history else None
                    res2.n_matvecs += res.n_matvecs
                    res2.n_iterations += res.n_iterations
                    res = res2
                else:
                    res.n_matvecs += res2.n_matvecs
                    res.n_iterations += res2.n_iterations
    return res


def _eigsh(A: Any, k: int, which: str, tol: float, maxiter: int | None, max_matvecs: Any, v0: Any, rng: Any,
           ncv: int | None, n_keep: Any, return_history: bool, check_symmetry: bool | None,
           mon: Monitor | None = None, relative_to: str = "eigenvalue") -> EigResult:
    """One thick-restart Lanczos run (see :func:`eigsh`), unflagged; eigenvectors always returned."""
    op, n, k, which, tol = eigen_problem(A, k, tol, which, ("LA", "SA", "BE", "LM"), check_symmetry=check_symmetry, rng=rng)
    xp = op.xp
    ncv = min(n, max(3 * k + 1, 24)) if ncv is None else check_positive_int(ncv, "ncv")
    if not k < ncv <= n:
        raise ValueError(f"ncv must satisfy k < ncv <= n (k = {k}, n = {n}), got ncv = {ncv}")
    adaptive_keep = n_keep is None or n_keep == "adaptive"
    if adaptive_keep:
        n_keep = k + (ncv - k) // 2
    n_keep = check_positive_int(n_keep, "n_keep")
    if not k <= n_keep < ncv:
        raise ValueError(f"n_keep must satisfy k <= n_keep < ncv (k = {k}, ncv = {ncv}), got {n_keep}")
    if maxiter is None:
        maxiter = max(100, 10 * n)
    maxiter = check_positive_int(maxiter, "maxiter")
    budget = check_budget(max_matvecs)
    # room for the final verification product of the k Ritz vectors
    loop_budget = budget - k if np.isfinite(budget) else budget
    g = backend.default_rng(rng, xp)
    v = start_vectors(op, v0, g)
    dt = op.dtype
    eps = float(np.finfo(dt).eps)
    before = op.n_matvecs

    # rows are written before they are read (no zero fill: the allocation is touched once)
    V = xp.empty((ncv + 1, n), dtype=dt)  # basis vectors as rows (contiguous Gram-Schmidt)
    AV = xp.empty((ncv, n), dtype=dt)  # raw operator products of the basis rows
    # kept through the first restarts only: then the final verification needs no products, while
    # a long run (cheap matvecs, many restarts) would pay a (p, ncv, n) product per restart to
    # save k matvecs once; it verifies with one block product of the k Ritz vectors instead
    images: Any = AV
    V[0] = v / dt.type(float(xp.linalg.norm(v)))
    T = np.zeros((ncv, ncv))
    p = 0  # number of kept Ritz vectors at the front of V
    history: list[dict[str, Any]] | None = [] if return_history else None
    message = ""
    status = ""
    theta: np.ndarray | None = None
    S: Any = None  # Ritz vectors of the projected matrix (host float64), with theta
    beta_last = 0.0
    cycles = 0
    restarts = 0
    last_sel = None
    tnorm = 0.0
    anorm = 0.0  # max |θ| over the Ritz values seen: a lower bound of ‖A‖ (tol_relative_to="norm")
    misses = 0  # claims the stored-product check refuted
    checked: tuple[int, Any, Any] | None = None  # (j, Y, AY) of the last stored-product check
    next_check = 0  # matvec count of the next Ritz check (besides the one at the end of every cycle)
    last_check: tuple[int, float] | None = None  # (matvecs, log of the worst residual / threshold)
    stop = False
    invariant = False
    claimed = False  # the recurrence's residuals met tol for every wanted pair
    cb_stop = False

    while cycles < maxiter and not stop:
        cycles += 1
        j = p
        while j < ncv:
            if op.n_matvecs - before >= loop_budget:
                message, status = f"matvec budget {max_matvecs} exhausted", "max_matvecs"
                stop = True
                break
            w, a, b = _step(op, V, j, images)
            if not (math.isfinite(a) and math.isfinite(b)):
                message, status = f"operator returned NaN/Inf after {op.n_matvecs - before} matvecs", "nonfinite"
                stop = True
                theta = None
                break
            T[j, j] = a
            tnorm = max(tnorm, abs(a) + b)
            invariant = b <= 100 * eps * max(tnorm, 1e-300)
            if invariant:
                b = 0.0
            beta_last = b
            j += 1
            due = op.n_matvecs - before >= next_check or j == ncv or j == n or invariant
            if due and (j >= k and j >= 2 or j == n):
                # Ritz pairs of the current projected matrix
                theta, S = _projected_eigh(T, j, p)
                if theta.size >= k:
                    sel = _select(theta, which, k)
                    resid = np.abs(beta_last * S[j - 1, sel])
                    anorm = max(anorm, float(np.max(np.abs(theta[[0, -1]]))))
                    scale = _tol_scale(theta, sel, tnorm, anorm, relative_to)
                    # the estimate |β s_m| differs from the true residual by the rounding of the relation
                    # (about sqrt(j) eps ‖T‖). With the raw products at hand a claim is checked on the
                    # true residuals at once (k (j, n) products, no matvec) and the run goes on if they
                    # miss; otherwise (or after two misses) it stops only with sqrt(j) eps ‖T‖ to spare,
                    # at most half of tol: the estimate keeps falling below the round-off floor, so a
                    # run whose tol is unattainable still stops, and the final verification flags it
                    thr = tol * scale
                    check_now = images is not None and misses < 2
                    drift = _drift(restarts, ncv, eps, tnorm)
                    slack = drift if check_now else np.sqrt(j) * eps * tnorm
                    conv = resid <= np.maximum(thr - slack, 0.5 * thr)
                    last_sel = (sel, resid, conv, j)
                    if conv.all() and check_now:
                        true_res, Yc, AYc = _stored_residuals(xp, V, AV, j, S[:, sel], theta[sel], dt)
                        checked = (j, Yc, AYc)
                        true_res = true_res + drift
                        if not np.all(true_res <= thr):
                            misses += 1
                            conv = true_res <= thr
                            last_sel = (sel, resid, conv, j)
                    if conv.all():
                        stop = claimed = True
                        break
                    # far from convergence, skip (cheap but not free) Ritz checks: 4/2/1 steps above
                    # 1e6/1e2/1 times the threshold; once restarted (where convergence is about linear,
                    # while the first cycle's speeds up as Ritz values separate), half the matvecs the
                    # observed rate of decrease, carried over restarts, still needs (the end of a cycle
                    # is always checked)
                    worst = float(np.log(max(float(np.max(resid / np.maximum(thr - slack, 0.5 * thr))), 1.0)))
                    gap = 4 if worst > 6 * np.log(10) else 2 if worst > 2 * np.log(10) else 1
                    done = op.n_matvecs - before
                    if restarts and last_check is not None and last_check[1] > worst and done > last_check[0]:
                        rate = (last_check[1] - worst) / (done - last_check[0])
                        gap = int(max(1.0, min(0.5 * worst / rate, float(n))))
                    last_check = (done, worst)
                    next_check = done + gap
            if invariant:
                if j >= n:
                    stop = True
                    break
                # continue with a fresh random direction orthogonal to the basis (decoupled block)
                r = g.standard_normal(n).astype(dt)
                r, _ = _orthogonalize(V[:j], r)
                V[j] = r / dt.type(float(xp.linalg.norm(r)))
                if j < ncv:
                    T[j, j - 1] = T[j - 1, j] = 0.0
                continue
            xp.multiply(w, dt.type(1.0 / b), out=V[j])
            if j < ncv:
                T[j, j - 1] = T[j - 1, j] = b
        if history is not None and last_sel is not None and theta is not None:
            sel, resid, conv, _ = last_sel
            history.append(
                {"n_matvecs": op.n_matvecs - before, "eigenvalues": theta[sel].copy(), "residual_norms": resid.copy()}
            )
        if mon is not None and mon.active and status != "nonfinite":
            info: dict[str, Any] = {"n_matvecs": op.n_matvecs - before, "cycle": cycles}
            if last_sel is not None and theta is not None:
                info.update(eigenvalues=theta[last_sel[0]].copy(), residual_norms=last_sel[1].copy())
            if mon.update(**info) and not stop:
                message, status = mon.message, "max_iter"
                stop = cb_stop = True
        if stop or theta is None or j < ncv or cycles >= maxiter:
            break
        # thick restart: keep n_keep Ritz pairs nearest the wanted end(s) plus the residual vector
        nk = n_keep
        if adaptive_keep:
            nconv = int(np.count_nonzero(last_sel[2])) if last_sel is not None else 0
            half = (ncv - k) // 2
            nk = k + (half if k == 1 else max(min(2, half), min(nconv + 2, half)))
            nk = min(nk, ncv - 1)
        keep = _keep_set(theta, which, k, nk)
        Skd = xp.asarray(S[:, keep].T.astype(dt))
        p = keep.size
        V[:p] = Skd @ V[:ncv]
        restarts += 1
        checked = None
        if restarts > _IMAGE_RESTARTS:
            images = None
        if images is not None:
            AV[:p] = Skd @ AV[:ncv]
        V[p] = V[ncv]
        coupling = beta_last * S[ncv - 1, keep]
        T[:] = 0.0
        T[np.arange(p), np.arange(p)] = theta[keep]
        T[p, :p] = coupling
        T[:p, p] = coupling
        theta = None

    jj = j
    if not status and cycles >= maxiter and not claimed and not (invariant and jj >= n):
        message, status = f"maxiter {maxiter} restart cycles reached", "max_iter"
    if status == "nonfinite" or jj < 1 or jj < k:
        return EigResult( eigenvalues=np.full(k, np.nan), eigenvectors=None,
            residual_norms=np.full(k, np.inf), converged=np.zeros(k, dtype=bool), n_matvecs=op.n_matvecs - before,
            n_iterations=cycles, history=history, method="thick-restart lanczos",
            message=message or "stopped before k Ritz values were available", status=status or "breakdown", tol=tol,
        )
    # Ritz pairs of the current (consistent) projected matrix and basis V[:, :jj]
    theta_f, S_f = _projected_eigh(T, jj, p)
    sel = _select(theta_f, which, k)
    vals = theta_f[sel]
    anorm = max(anorm, float(np.max(np.abs(theta_f[[0, -1]]))))
    scale = _tol_scale(theta_f, sel, tnorm, anorm, relative_to)
    Sd = xp.asarray(S_f[:, sel].astype(dt))
    # the claim's stored-product check already formed Y and A Y for these pairs (same T, basis and j)
    reuse = claimed and checked is not None and checked[0] == jj
    vecs = checked[1] if reuse and checked is not None else V[:jj].T @ Sd
    # true residuals: the stored raw products are A V up to one rounding per restart, so the residual
    # from them plus that drift bounds the true one; a fresh block product when the drift would matter
    drift = _drift(restarts, ncv, eps, tnorm)
    stored = images is not None and drift <= 0.5 * tol * float(np.min(scale))
    if stored:
        AY = checked[2] if reuse and checked is not None else AV[:jj].T @ Sd
    else:
        AY = op.matmat(vecs)
    resid = _residual_norms(xp, AY, vecs, vals)
    margin = drift if stored else 0.0  # the stored products' drift: convergence is decided with it to spare
    # a residual below the rounding of one product (eps ‖A‖) cannot be told from zero: such a
    # target is unattainable in this dtype, and no pair is called converged against it
    attainable = eps * max(tnorm, 1e-300)
    conv = (resid + margin <= tol * scale) & (tol * scale >= attainable)
    if cb_stop and conv.all():
        message, status = f"converged (verified; {message})", "converged"
    if not status:
        if conv.all():
            message, status = "converged", "converged"
        elif claimed or (invariant and jj >= n):
            worst = int(np.argmax((resid + margin) / (tol * scale)))
            what = "tol·max(|θ|, ε^(2/3)‖A‖)" if relative_to == "eigenvalue" else "tol·max|θ| (≈ tol·‖A‖)"
            drift_txt = f" (+ {margin:.1e} possible drift of the stored products)" if margin else ""
            if np.any(~conv & (tol * scale < attainable)):
                message = (
                    f"tol below attainable precision: {what} = {tol * float(np.min(scale)):.2e} is "
                    f"under the rounding of one {np.dtype(dt).name} product, eps·‖A‖ ≈ {attainable:.1e} (true "
                    f"residual {resid[worst]:.2e}); use a larger tol or float64"
                )
            else:
                message = (
                    f"the recurrence met tol = {tol:g} but the true residual ‖Ay - θy‖ = {resid[worst]:.2e}{drift_txt} "
                    f"exceeds {what} = {tol * scale[worst]:.2e}"
                )
            status = "stagnated"
        else:  # pragma: no cover - every other stop sets a status above
            message, status = "stopped unconverged", "breakdown"
    if which == "BE":
        order = np.argsort(vals)
        vals, resid, conv = vals[order], resid[order], conv[order]
        if vecs is not None:
            vecs = vecs[:, xp.asarray(order)] if xp is not np else vecs[:, order]
    return EigResult( eigenvalues=vals, eigenvectors=vecs, residual_norms=resid, converged=conv,
        n_matvecs=op.n_matvecs - before, n_iterations=cycles, history=history, method="thick-restart lanczos",
        message=message, status=status, tol=tol,
    )
