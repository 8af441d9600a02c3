"""Stochastic Lanczos quadrature (SLQ): spectral density and ``tr f(A)``.

For a probe ``z`` (Rademacher or Gaussian), ``m`` Lanczos steps from ``z``
give the Gauss quadrature ``zᵀ f(A) z ≈ ‖z‖² Σ_j τ_j² f(θ_j)`` with nodes
``θ_j`` (eigenvalues of the tridiagonal ``T_m``) and weights ``τ_j²`` (squared
first components of its eigenvectors), exact for polynomials of degree
``2m - 1`` (Golub & Meurant; Ubaru, Chen & Saad 2017). Averaging over probes
estimates the spectral measure ``(1/n) Σ_i δ(t - λ_i)``; smoothing it with a
Gaussian of width ``σ`` gives a density on a grid (Ghorbani, Krishnan & Xiao
2019 use it for neural-network Hessians). ``tr f(A)`` (log-det, trace of the
inverse) comes from the same quadrature. Its error bar covers both error
sources: the probe spread and the quadrature error of ``m`` steps, the
latter estimated from shorter Gauss rules of the same recurrence (or bounded
by a Gauss–Radau bracket when a lower bound ``lambda_min`` of the spectrum is
given); when the quadrature is unresolved the result says so
(``converged=False``, infinite ``std_error``, :class:`ConvergenceWarning`).

The ``P`` probes run as one block (``block=True``, the default): each Lanczos
step applies the operator once to the ``(n, P)`` block of the probes' current
basis vectors (one ``matmat``: a single pass for torch/JAX operators and the
reference MLP) and reorthogonalises every probe against its own basis, so each
probe follows exactly the recurrence :func:`curvlab.linalg.lanczos` runs from
it (full reorthogonalisation, float64 coefficients, symmetric tridiagonal
eigensolver); a probe whose Krylov space closes leaves the block.
``block=False`` runs the probes one after the other with ``matvec``.

Examples
--------
>>> import numpy as np
>>> A = np.diag(np.linspace(1.0, 2.0, 200))
>>> sd = slq(A, n_probes=10, m=20, rng=0)
>>> est = sd.trace(np.log)
>>> bool(abs(est.estimate - np.log(np.linspace(1.0, 2.0, 200)).sum()) < 4 * est.std_error + 1e-8)
True
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import scipy.linalg

from .. import backend
from ._checks import as_symmetric_operator, check_positive_int
from ._probes import check_probe, draw, sample_se, t_factor
from ._progress import Monitor
from .lanczos import lanczos, tridiagonal_eigh
from .results import ConvergenceError, SpectralDensity, Status, TraceEstimate, warn_unconverged

__all__ = ["slq", "slq_logdet", "slq_trace_inverse", "exact_smoothed_density", "wasserstein1"]


def _memory_cap() -> int:
    """Bytes of physical host memory (``os.sysconf``), or 1 TiB where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def _check_workspace(P: int, m: int, n: int, itemsize: int, block: bool) -> None:
    """Refuse (``ValueError`` naming ``n_probes``) a run whose arrays cannot fit in memory.

    Workspace: four ``(P, m)`` float64 arrays (nodes, weights, Lanczos coefficients) and, with
    ``block=True``, the ``(n, P)`` probe block and the ``P m n`` basis in the operator dtype.
    """
    need = 32 * P * m + (itemsize * P * n * (m + 2) if block else 0)
    cap = _memory_cap()
    if need > cap:
        raise ValueError(
            f"n_probes = {P} with m = {m} on n = {n} needs about {need / 2**30:.3g} GiB of workspace "
            f"(32·P·m{' + itemsize·P·n·(m+2)' if block else ''} bytes), more than the {cap / 2**30:.3g} GiB "
            "of memory here; use fewer probes"
        )


def _block_lanczos(
    op: Any, Z: Any, m: int, mon: Monitor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """``m`` Lanczos steps from each column of ``Z`` ``(n, P)``, the ``P`` recurrences advanced together.

    Each step applies the operator once to the ``(n, P_active)`` block of the
    current basis vectors (one ``matmat``); every probe's new vector is then
    reorthogonalised against that probe's own basis only (classical
    Gram-Schmidt twice, batched), so each column follows exactly the
    recurrence :func:`lanczos` runs from it (the same numbers to round-off).
    A probe whose Krylov space closes (``β <= 100 eps max|α|, β``) leaves the
    block. Returns ``(alpha, beta, steps, breakdown, norms², n_matvecs)``
    (host float64, zero padded).

    Host syncs: one for the probe norms, one per step (all ``α`` and ``β``
    of the step in one transfer).
    """
    xp, dt = op.xp, op.dtype
    n, P = Z.shape
    eps = np.finfo(dt).eps
    norms = np.asarray(backend.to_numpy(xp.linalg.norm(Z.astype(dt), axis=0)), dtype=np.float64)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError(f"slq: probe norms must be finite and nonzero, got {norms}")
    V = xp.zeros((P, m, n), dtype=dt)  # V[p, j] = j-th basis vector of probe p
    V[:, 0] = (Z / xp.asarray(norms.astype(dt))[None, :]).T
    alpha = np.zeros((P, m))
    beta = np.zeros((P, m))
    steps = np.zeros(P, dtype=int)
    brk = np.zeros(P, dtype=bool)
    coef_max = np.full(P, 1e-300)
    act = np.arange(P)
    before = op.n_matvecs
    for j in range(m):
        full = act.size == P
        ia = None if full else xp.asarray(act)
        Vb = V[:, : j + 1] if full else V[ia, : j + 1]  # (Pa, j + 1, n)
        X = Vb[:, j].T  # (n, Pa)
        W = op.matmat(xp.ascontiguousarray(X)).T  # (Pa, n)
        h = xp.matmul(Vb, W[:, :, None])  # Gram-Schmidt twice, each probe against its own basis
        W = W - xp.matmul(Vb.transpose(0, 2, 1), h)[:, :, 0]
        h2 = xp.matmul(Vb, W[:, :, None])
        W = W - xp.matmul(Vb.transpose(0, 2, 1), h2)[:, :, 0]
        a_d = (h + h2)[:, j, 0]
        b_d = xp.linalg.norm(W, axis=1)
        ab = np.asarray(backend.to_numpy(xp.concatenate([a_d, b_d])), dtype=np.float64)
        a, b = ab[: act.size], ab[act.size :]
        bad = ~(np.isfinite(a) & np.isfinite(b))
        if bad.any():
            raise FloatingPointError(f"slq: operator returned NaN/Inf at step {j + 1} (probe {int(act[np.argmax(bad)])})")
        alpha[act, j], beta[act, j] = a, b
        coef_max[act] = np.maximum(coef_max[act], np.maximum(np.abs(a), b))
        closed = b <= 100 * eps * coef_max[act]
        steps[act] = j + 1
        beta[act[closed], j] = 0.0
        brk[act[closed]] = True
        n_mv = op.n_matvecs - before
        stop = mon.active and mon.update(n_matvecs=n_mv, step=j + 1, active_probes=int(np.count_nonzero(~closed)))
        if j + 1 == m or stop:
            break
        keep = ~closed
        if not keep.all():
            W, b, act = W[xp.asarray(np.flatnonzero(keep))], b[keep], act[keep]
            if not act.size:
                break
        V[xp.asarray(act) if act.size < P else slice(None), j + 1] = W / xp.asarray(b.astype(dt))[:, None]
    return alpha, beta, steps, brk, norms**2, op.n_matvecs - before


def slq(
    A: Any,
    n_probes: int = 10,
    m: int = 30,
    *,
    probe: str = "rademacher",
    rng: Any = None,
    check_symmetry: bool | None = None,
    block: bool = True,
    callback: Any = None,
    progress: Any = False,
    warn: bool = True,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature of a symmetric operator.

    Parameters
    ----------
    A : symmetric ``(n, n)`` operator
    n_probes : number of random probes ``P``; a run whose workspace (see ``block``)
        exceeds the host's physical memory is refused with a ``ValueError``
    m : Lanczos steps per probe (``1 <= m <= n``); cost ``P m`` matvecs
    probe : "rademacher" (default) or "gaussian"
    rng : seed or generator (the only randomness)
    block : True (default): the ``P`` recurrences advance together, one
        ``matmat`` of an ``(n, P)`` block per step (a probe whose Krylov space
        closed leaves the block), each reorthogonalised against its own basis:
        the same numbers as ``block=False`` (one :func:`lanczos` run per probe,
        ``P m`` single ``matvec`` calls) to round-off, and much faster where a
        block product costs less per vector (torch/JAX operators, the
        reference MLP). Memory ``P m n`` for the bases.
    callback, progress : see :mod:`curvlab.linalg._progress`; called once per
        Lanczos step (per block step, or per step of each probe with
        ``block=False``) with ``n_matvecs``, ``step`` and ``active_probes``.
        A stop leaves the quadrature shorter (status "max_iter", a warning
        unless ``warn=False``); :meth:`SpectralDensity.trace` still judges its
        quadrature error honestly.
    warn : issue that warning (``False`` silences it)

    Returns
    -------
    SpectralDensity with ``nodes``/``weights`` ``(P, m)`` (zero-weight padded
    when a probe's Krylov space closed early), the Lanczos coefficients,
    ``.density(grid, sigma)`` and ``.trace(f)`` (probe spread and quadrature
    error). Raises ``FloatingPointError`` if the operator returns NaN/Inf.

    Host syncs: ``block=True``: ``m + 1`` (one per block step, one for the
    probe norms); ``block=False``: ``P (m + 3)`` (one per Lanczos step; per
    probe, :func:`lanczos`'s start-vector checks and norm).
    """
    op = as_symmetric_operator(A, check_symmetry=check_symmetry, rng=rng)
    n = op.shape[0]
    P = check_positive_int(n_probes, "n_probes")
    m = check_positive_int(m, "m")
    if m > n:
        raise ValueError(f"m must be <= n = {n}, got m = {m}")
    probe = check_probe(probe)
    if not isinstance(block, (bool, np.bool_)):
        raise TypeError(f"block must be a bool, got {type(block).__name__}")
    _check_workspace(P, m, n, np.dtype(op.dtype).itemsize, bool(block))
    g = backend.default_rng(rng, op.xp)
    nodes = np.zeros((P, m))
    weights = np.zeros((P, m))
    with Monitor("slq", callback, progress, total=m if block else P * m, unit="step") as mon:
        if block:
            # drawn as P rows of n: the same numbers as P successive (n, 1) draws (the per-probe path)
            Z = draw(g, P, n, probe, op.dtype).T
            alpha, beta, steps, brk, norms, n_mv = _block_lanczos(op, Z, m, mon)
        else:
            alpha = np.zeros((P, m))
            beta = np.zeros((P, m))
            steps = np.zeros(P, dtype=int)
            brk = np.zeros(P, dtype=bool)
            norms = np.zeros(P)
            n_mv = 0
            for p in range(P):
                z = draw(g, n, 1, probe, op.dtype)[:, 0]

                def step_cb(info: dict[str, Any], _base: int = n_mv) -> bool:
                    return mon.update(n_matvecs=_base + info["n_matvecs"], step=info["iteration"], probe=p, active_probes=1)

                dec = lanczos(op, m, v0=z, callback=step_cb if mon.active else None, warn=False)
                if dec.message.startswith("operator returned"):
                    raise FloatingPointError(f"slq: {dec.message} (probe {p})")
                n_mv += dec.n_matvecs
                s = dec.alpha.size
                alpha[p, :s], beta[p, :s] = dec.alpha, dec.beta
                steps[p], brk[p] = s, dec.breakdown
                norms[p] = dec.start_norm**2
                if mon.stopped:
                    break
        ran = steps > 0
        for q in np.flatnonzero(ran):
            s = int(steps[q])
            theta, S = tridiagonal_eigh(alpha[q, :s], beta[q, : s - 1])
            nodes[q, :s] = theta
            weights[q, :s] = S[0, :] ** 2
    status = Status.CONVERGED
    if mon.stopped:
        status = Status.MAX_ITER
        warn_unconverged("slq", f"{mon.message}; the quadrature has {int(steps[ran].min())} of m = {m} steps"
                         + ("" if ran.all() else f" and {int(np.count_nonzero(ran))} of {P} probes"), warn=warn)
        if not ran.all():  # probes that never ran are dropped (the estimate stays unbiased)
            nodes, weights, alpha, beta, steps, brk, norms = (x[ran] for x in (nodes, weights, alpha, beta, steps, brk, norms))
    return SpectralDensity(
        nodes=nodes,
        weights=weights,
        probe_norms_sq=norms,
        n=n,
        n_matvecs=n_mv,
        lanczos_steps=m,
        probe=probe,
        alpha=alpha,
        beta=beta,
        steps=steps,
        breakdown=brk,
        dtype=op.dtype,
        status=status,
    )


def _positive_definite_nodes(sd: SpectralDensity, who: str) -> None:
    """Refuse an operator whose quadrature nodes show it is not (numerically) positive definite.

    A node ``<= 0`` means ``A`` is not positive definite; a node
    ``<= 10 n eps θ_max`` means ``A`` is singular to working precision, where
    ``log`` and ``1/t`` have no trustworthy value (this was a confident 1e16).
    """
    th = sd.nodes[sd.weights > 0]
    if np.any(th <= 0):
        raise ValueError(f"{who}: a quadrature node is <= 0 (min {th.min():.3e}); A must be positive definite")
    floor = 10 * sd.n * np.finfo(np.dtype(sd.dtype)).eps * th.max()
    if th.min() <= floor:
        raise ValueError(
            f"{who}: A is singular to working precision (smallest Ritz value {th.min():.3e} <= 10 n eps θ_max = "
            f"{floor:.3e}); A must be positive definite and resolvable in {np.dtype(sd.dtype).name}"
        )


def _radau(sd: SpectralDensity, f: Callable[[np.ndarray], np.ndarray], a: float, who: str) -> np.ndarray:
    """Per-probe Gauss–Radau quadratures with a node prescribed at ``a <= λ_min(A)`` (Golub & Meurant, ch. 6).

    ``T_k`` is extended by one row: ``α̃ = a + δ_k`` with ``(T_k - a I) δ = β_k² e_k``,
    so that ``a`` is an eigenvalue of the ``(k+1) x (k+1)`` matrix. For ``f``
    whose even derivatives have one sign and odd ones the other (``log``,
    ``1/t`` on ``t > 0``), Gauss and Radau bracket ``zᵀ f(A) z``.
    """
    P = sd.n_probes
    alpha, beta, steps, brk = sd.alpha, sd.beta, sd.steps, sd.breakdown
    if alpha is None or beta is None or steps is None or brk is None:
        raise ValueError(f"{who}: this SpectralDensity has no Lanczos coefficients (alpha/beta/steps/breakdown); "
                         "build it with curvlab.linalg.slq")
    out = sd.gauss(f, steps)
    for p in range(P):
        k = int(steps[p])
        al, be = alpha[p, :k], beta[p, :k]
        if brk[p] or be[-1] == 0.0:
            continue
        T = np.diag(al) + np.diag(be[:-1], 1) + np.diag(be[:-1], -1)
        rhs = np.zeros(k)
        rhs[-1] = be[-1] ** 2
        delta = np.linalg.solve(T - a * np.eye(k), rhs)
        al2 = np.append(al, a + delta[-1])
        th, S = scipy.linalg.eigh_tridiagonal(al2, be, lapack_driver="stev")
        th = np.maximum(th, a)  # a is an exact eigenvalue; round-off may put it just below
        out[p] = sd.probe_norms_sq[p] * np.sum(S[0] ** 2 * f(th))
    return out


def _spd_trace(
    A: Any,
    f: Callable[[np.ndarray], np.ndarray],
    who: str,
    n_probes: int,
    m: int,
    probe: str,
    rng: Any,
    lambda_min: float | None,
    warn: bool,
    strict: bool,
    block: bool = True,
    callback: Any = None,
    progress: Any = False,
) -> TraceEstimate:
    sd = slq(A, n_probes, m, probe=probe, rng=rng, block=block, callback=callback, progress=progress,
             warn=warn and not strict)
    if sd.status == Status.MAX_ITER and strict:
        raise ConvergenceError(f"{who}: stopped by callback before m = {m} steps", sd)
    _positive_definite_nodes(sd, who)
    stop_msg = ("stopped by callback (fewer Lanczos steps; the error bar is that of the shorter quadrature)"
                if sd.status == Status.MAX_ITER else "")
    if lambda_min is None:
        res = sd.trace(f, name=who, warn=warn, strict=strict)
        res.message = "; ".join(x for x in (stop_msg, res.message) if x)
        return res
    lo = float(lambda_min)
    th_min = float(sd.nodes[sd.weights > 0].min())
    if not (np.isfinite(lo) and 0 < lo):
        raise ValueError(f"{who}: lambda_min must be a finite float > 0 (a lower bound of the smallest eigenvalue), got {lambda_min}")
    if lo > th_min:
        raise ValueError(
            f"{who}: lambda_min = {lo:.6g} exceeds the Ritz value {th_min:.6g}, so it is not a lower bound of "
            "the smallest eigenvalue of A"
        )
    G = sd.probe_values(f)
    R = _radau(sd, f, lo, who)
    vals = 0.5 * (G + R)
    pse = sample_se(vals) * t_factor(sd.n_probes - 1)
    q = float(np.mean(0.5 * np.abs(R - G)))
    return TraceEstimate(
        estimate=float(np.mean(vals)),
        std_error=float(np.hypot(pse, q)),
        n_matvecs=sd.n_matvecs,
        converged=True,
        method=f"{who} (Gauss–Radau bracket, lambda_min = {lo:.3g})",
        samples=vals,
        probe_std_error=pse,
        quadrature_error=q,
        message=stop_msg,
    )


_SPD_DOC = """
    Parameters
    ----------
    A : symmetric positive definite ``(n, n)`` operator
    n_probes, m, probe, rng : as for :func:`slq` (``P m`` matvecs)
    lambda_min : float, optional
        A lower bound ``0 < lambda_min <= λ_min(A)``. When given, each probe's
        Gauss rule and the Gauss–Radau rule with a node at ``lambda_min``
        bracket ``zᵀ f(A) z`` (a guaranteed bound from the same Lanczos run);
        the estimate is the midpoint and the quadrature error the half-width.
        Without it the quadrature error is estimated from shorter rules of the
        same recurrence (:meth:`SpectralDensity.quadrature_tails`).
    block, callback, progress : as for :func:`slq` (one ``matmat`` of the
        ``(n, P)`` probe block per Lanczos step by default)
    warn, strict : an unresolved quadrature (too few steps ``m``) gives
        ``converged=False`` and an infinite ``std_error`` with a
        :class:`ConvergenceWarning` (``warn=False`` silences it; ``strict=True``
        raises :class:`ConvergenceError`).

    Returns
    -------
    TraceEstimate: ``std_error = sqrt(probe_std_error² + quadrature_error²)``,
    both parts kept as fields.

    Raises ``ValueError`` when a quadrature node is ``<= 0`` (``A`` is not
    positive definite) or ``<= 10 n eps θ_max`` (singular to working
    precision), or ``lambda_min`` is not a lower bound of the Ritz values.

    Host syncs: as for :func:`slq` (``m + 1`` with ``block=True``).
"""


def slq_logdet(
    A: Any,
    n_probes: int = 10,
    m: int = 30,
    *,
    probe: str = "rademacher",
    rng: Any = None,
    lambda_min: float | None = None,
    warn: bool = True,
    strict: bool = False,
    block: bool = True,
    callback: Any = None,
    progress: Any = False,
) -> TraceEstimate:
    return _spd_trace(A, np.log, "slq_logdet", n_probes, m, probe, rng, lambda_min, warn, strict, block, callback, progress)


def slq_trace_inverse(
    A: Any,
    n_probes: int = 10,
    m: int = 30,
    *,
    probe: str = "rademacher",
    rng: Any = None,
    lambda_min: float | None = None,
    warn: bool = True,
    strict: bool = False,
    block: bool = True,
    callback: Any = None,
    progress: Any = False,
) -> TraceEstimate:
    return _spd_trace(A, lambda t: 1.0 / t, "slq_trace_inverse", n_probes, m, probe, rng, lambda_min, warn, strict, block, callback, progress)


slq_logdet.__doc__ = "``log det A = tr log A`` for a symmetric positive definite operator, with an error bar.\n" + _SPD_DOC
slq_trace_inverse.__doc__ = "``tr A⁻¹`` for a symmetric positive definite operator, with an error bar.\n" + _SPD_DOC


def exact_smoothed_density(eigenvalues: Any, grid: Any, sigma: float) -> np.ndarray:
    """``(1/n) Σ_i N(t; λ_i, σ²)`` on ``grid``: the target of :meth:`SpectralDensity.density`."""
    lam = np.asarray(backend.to_numpy(eigenvalues), dtype=np.float64).reshape(-1)
    t = np.asarray(grid, dtype=np.float64).reshape(-1)
    z = (t[:, None] - lam[None, :]) / sigma
    return np.exp(-0.5 * z * z).sum(axis=1) / (lam.size * sigma * np.sqrt(2.0 * np.pi))


def wasserstein1(p: Any, q: Any, grid: Any) -> float:
    """Wasserstein-1 distance ``∫ |F_p - F_q| dt`` of two densities tabulated on an equispaced ``grid``.

    Each density is normalised to unit mass on the grid first.
    """
    t = np.asarray(grid, dtype=np.float64)
    dx = float(t[1] - t[0])
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    Fp = np.cumsum(p) / p.sum()
    Fq = np.cumsum(q) / q.sum()
    return float(np.sum(np.abs(Fp - Fq)) * dx)
