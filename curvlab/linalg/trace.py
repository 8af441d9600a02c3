"""Stochastic trace estimation: Hutchinson, Hutch++ and XTrace, each with a standard error.

* :func:`hutchinson`: ``tr A ≈ (1/m) Σ z_iᵀ A z_i`` with Rademacher or Gaussian
  probes (``E[z zᵀ] = I``); error ``O(1/√m)``. Standard error: sample std / √m.
* :func:`hutchpp`: Hutch++ (Meyer, Musco, Musco & Woodruff 2021): the trace of
  ``A`` on a sketched range ``Q = orth(A S)`` exactly, plus Hutchinson on the
  deflated remainder ``(I - QQᵀ) A (I - QQᵀ)``; error ``O(1/m)`` for PSD ``A``
  with decaying spectrum. Standard error: that of the remainder's samples.
* :func:`xtrace`: XTrace (method inspired by Epperly, Tropp & Webber, arXiv
  2301.07825): the exchangeable estimator that uses every probe both to build
  the low-rank basis and to estimate the remainder: with ``Y = A Ω``, ``Q_(i)``
  the basis of ``Y`` without column ``i``,
  ``t_i = tr(Q_(i)ᵀ A Q_(i)) + ω_iᵀ (I - Q_(i)Q_(i)ᵀ) A (I - Q_(i)Q_(i)ᵀ) ω_i``
  is unbiased and the estimate is ``mean(t_i)``; the ``s`` leave-one-out
  bases come from one QR by the downdate ``Q_(i)Q_(i)ᵀ = Q (I - u_i u_iᵀ) Qᵀ``
  with ``u_i = R^{-T} e_i / ‖R^{-T} e_i‖`` (derived here). The ``t_i`` are
  exchangeable, not independent (positively correlated), so ``std(t_i)/√s``
  understates the error; the standard error is the jackknife over probes
  (leave-two-out bases, again from the one QR). Cost ``2 s`` matvecs.

Honest error bars: every standard error is Student-t calibrated (times
``t_{ν,0.975}/z_{0.975}``, ``ν`` = samples - 1), so ``estimate ± 2 std_error``
covers the truth in at least ~95% of runs (checked over many seeds in
``tests/linalg/test_coverage.py``). A budget of ``n`` matvecs or more buys
the exact trace from ``n`` unit-vector products (``exact=True``,
``std_error`` 0), which is cheaper and better than any probe estimate.

Adaptivity: pass ``target_rel_error`` (stop when ``se <= target |estimate|``)
and/or ``max_matvecs`` (a budget); ``converged`` reports whether the target
was met, and a miss issues :class:`~curvlab.linalg.ConvergenceWarning`
(``warn=False`` silences it, ``strict=True`` raises). Hutchinson and Hutch++
add probes in blocks; XTrace doubles its sketch and recomputes (total work is
reported).

All three need a square operator (not necessarily symmetric; Hutch++ and
XTrace are designed for PSD ``A``). NaN from the operator raises
``FloatingPointError``.

Examples
--------
>>> import numpy as np
>>> A = np.ones((50, 50)) + np.eye(50)
>>> est = hutchinson(A, 30, rng=0)
>>> bool(abs(est.estimate - 100.0) < 2 * est.std_error)
True
>>> ex = hutchinson(A, 50)  # a budget of n matvecs: the exact trace
>>> float(ex.estimate), ex.std_error, ex.exact
(100.0, 0.0, True)
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import scipy.linalg

from .. import backend
from ._adaptive import TRACE, Rounds, Rule, blocks, doubling_rounds, exact_rounds, finish, run_rounds, stochastic_cap, with_exact_fallback
from ._checks import as_symmetric_operator, check_positive_int, check_tol
from ._probes import check_probe, draw, sample_se, t_factor
from ._progress import Monitor, check_callback, check_progress
from .operators import LinearOperator, aslinearoperator
from .results import TraceEstimate

__all__ = ["hutchinson", "hutchpp", "xtrace"]


def square_operator(A: Any, name: str = "A") -> LinearOperator:
    """Wrap ``A``; it must be square and deterministic."""
    op = aslinearoperator(A)
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"{name} must be square, got shape {op.shape}")
    if getattr(op, "stochastic", False):
        raise ValueError(
            f"{name} is a stochastic operator; freeze one batch with A.fixed(rng) "
            "(a fresh batch per probe estimates the trace of the expected operator only with extra variance)"
        )
    return op


def _colwise_dot(X: Any, Y: Any) -> np.ndarray:
    xp = backend.get_namespace(X)
    return np.asarray(backend.to_numpy(xp.sum(X.astype(np.float64) * Y.astype(np.float64), axis=0)))


def _finite(x: np.ndarray, who: str) -> None:
    if not np.all(np.isfinite(x)):
        raise FloatingPointError(f"{who}: the operator returned NaN/Inf")


def _setup(
    A: Any, probe: str, n_matvecs: Any, max_matvecs: Any, target: Any, rng: Any, default: int = 100, *, symmetric: bool = False
) -> tuple[LinearOperator, str, int, float | None, Any]:
    """The checked ``(op, probe, cap, tgt, g)`` of an estimator call, shared by the trace and diagonal estimators.

    In this order: :func:`square_operator` (then :func:`as_symmetric_operator`
    with ``symmetric``), :func:`check_probe`, ``target_rel_error``, the budget
    (``n_matvecs`` or ``max_matvecs``, not both; ``default`` without a target,
    10,000 for an adaptive run); ``g`` is the generator from ``rng`` on the
    operator's backend.
    """
    # the raw A goes to as_symmetric_operator: an array or callable is checked (exactly / by probes), not
    # refused as an untagged wrapper
    op = square_operator(A)
    if symmetric:
        op = as_symmetric_operator(A)
    probe = check_probe(probe)
    tgt = None if target is None else check_tol(target, "target_rel_error")
    if n_matvecs is not None and max_matvecs is not None:
        raise ValueError("give n_matvecs (a fixed budget) or max_matvecs (a cap for the adaptive run), not both")
    cap = n_matvecs if n_matvecs is not None else max_matvecs
    if cap is None:
        cap = default if target is None else 10_000
    else:
        cap = check_positive_int(cap, "n_matvecs" if n_matvecs is not None else "max_matvecs")
    return op, probe, int(cap), tgt, backend.default_rng(rng, op.xp)


def _exact_diagonal(op: LinearOperator, block: int = 256) -> Any:
    """``diag(A)`` from ``n`` unit-vector products in blocks of ``block`` columns (operator backend, float64).

    No host sync: the caller reads the result (and checks it is finite) once.
    """
    xp, n = op.xp, op.shape[0]
    out = xp.zeros(n, dtype=np.float64)
    for start in range(0, n, block):
        b = min(block, n - start)
        rows = xp.arange(start, start + b)
        cols = xp.arange(b)
        E = xp.zeros((n, b), dtype=op.dtype)
        E[rows, cols] = 1
        out[start : start + b] = op.matmat(E)[rows, cols].astype(np.float64)
    return out


def _exact_trace(op: LinearOperator, who: str) -> Callable[[], tuple[float, float]]:
    """``() -> (tr A, 0.0)`` from ``n`` unit-vector products (one host sync)."""

    def exact() -> tuple[float, float]:
        t = float(backend.to_numpy(_exact_diagonal(op).sum()))
        _finite(np.asarray(t), who)
        return t, 0.0

    return exact


def _estimate(
    op: LinearOperator,
    cap: int,
    tgt: float | None,
    schedule: Callable[[int], Iterable[int]],
    step: Callable[[int, int], tuple[Any, Any, Any]],
    rule: Rule,
    exact: Callable[[], tuple[Any, Any]],
    *,
    record: bool,
    cost: int = 1,
    min_rounds: int = 1,
    used: Callable[[], int] = lambda: 0,
    who: str = "estimator",
    callback: Any = None,
    progress: Any = False,
) -> Rounds:
    """The common driver of the trace and diagonal estimators.

    Fixed budget ``cap >= n``: the exact answer from ``n`` unit-vector
    products. Otherwise ``schedule(stochastic cap)`` gives the round sizes (it
    may raise ``ValueError`` when the budget is too small for the method: then
    the exact answer if ``cap >= n``) and :func:`run_rounds` runs them; an
    adaptive run that misses its target falls back to the exact answer while
    ``n`` matvecs remain in ``cap``. ``used()`` is the work done by the
    schedule before the rounds (Hutch++'s sketch). ``callback``/``progress``
    follow the rounds (see :mod:`curvlab.linalg._progress`).
    """
    check_callback(callback)
    check_progress(progress)
    n = op.shape[0]
    scap = stochastic_cap(cap, tgt, n)
    if scap is None:
        return exact_rounds(exact, n, rule, record)
    try:
        sizes = list(schedule(scap))
    except ValueError:
        if cap >= n:
            return exact_rounds(exact, n, rule, record)
        raise
    with Monitor(who, callback, progress, total=len(sizes), unit="round",
                 postfix=("n_matvecs", "estimate", "std_error", "rel_std_error")) as mon:
        res = run_rounds(sizes, step, tgt, rule, record=record, cost=cost, used=used(), min_rounds=min_rounds, cap=cap,
                         mon=mon)
    return res if tgt is None else with_exact_fallback(res, cap, n, exact, rule, record)


def _hutchinson_step(
    op: LinearOperator, g: Any, probe: str, who: str, Q: Any = None, low: float | None = None
) -> Callable[[int, int], tuple[float, float, np.ndarray]]:
    """A round of Hutchinson probes for :func:`run_rounds`, deflated by ``Q`` (Hutch++) when given.

    Each call draws ``b`` probes (projected off ``range(Q)``), adds their
    quadratic forms to the samples (one host sync) and returns ``(estimate,
    std_error, all samples)``; the estimate is the sample mean, plus ``low``
    when given; the standard error is the sample one times
    ``t_factor(samples - 1)``.
    """
    n, dt = op.shape[0], op.dtype
    samples: list[np.ndarray] = []

    def step(b: int, used: int) -> tuple[float, float, np.ndarray]:
        G = draw(g, n, b, probe, dt)
        if Q is not None:
            G = G - Q @ (Q.T @ G)
        s = _colwise_dot(G, op.matmat(G))
        _finite(s, who)
        samples.append(s)
        allx = np.concatenate(samples)
        est = float(allx.mean())
        return (est if low is None else low + est), sample_se(allx) * t_factor(allx.size - 1), allx

    return step


def hutchinson(
    A: Any,
    n_matvecs: int | None = None,
    *,
    target_rel_error: float | None = None,
    max_matvecs: int | None = None,
    probe: str = "rademacher",
    block_size: int = 16,
    rng: Any = None,
    return_history: bool = False,
    callback: Any = None,
    progress: Any = False,
    warn: bool = True,
    strict: bool = False,
) -> TraceEstimate:
    """Hutchinson's estimator of ``tr A``.

    Parameters
    ----------
    A : square ``(n, n)`` operator
    n_matvecs : fixed number of probes (default 100 without a target); a
        budget ``>= n`` computes ``tr A`` exactly from ``n`` unit vectors
        (``exact=True``, ``std_error`` 0)
    target_rel_error : stop once ``se <= target |estimate|`` (at least 2 blocks)
    max_matvecs : cap for the adaptive run (default 10,000); the probes use at
        most ``n - 1`` of it, then the exact answer if ``n`` matvecs remain
    probe : "rademacher" or "gaussian"; block_size : probes per ``matmat``
    warn, strict : an adaptive run that misses its target returns
        ``converged=False`` with a :class:`ConvergenceWarning` (``warn=False``
        silences it; ``strict=True`` raises :class:`ConvergenceError`)

    The standard error is the sample one times ``t_{ν,0.975}/z_{0.975}``
    (``ν`` = probes - 1), so ``estimate ± 1.96 std_error`` is a 95%
    Student-t interval.

    ``callback``/``progress``: once per probe round (see :mod:`curvlab.linalg._progress`), with
    ``n_matvecs``, ``estimate`` and ``std_error``; a stop returns the estimate so far, unconverged
    (status "max_iter").

    Host syncs: 1 per probe block (its quadratic forms come to the host); the
    exact path 1.
    """
    op, probe, cap, tgt, g = _setup(A, probe, n_matvecs, max_matvecs, target_rel_error, rng)
    bs = check_positive_int(block_size, "block_size")
    step = _hutchinson_step(op, g, probe, "hutchinson")
    res = _estimate(
        op, cap, tgt, lambda c: blocks(c, bs), step, TRACE, _exact_trace(op, "hutchinson"), record=return_history, who="hutchinson", callback=callback, progress=progress, min_rounds=2
    )
    return finish(res.trace_estimate("exact" if res.exact else f"hutchinson ({probe})"), "hutchinson", warn, strict)


def _orth(Y: Any) -> Any:
    xp = backend.get_namespace(Y)
    Q, _ = xp.linalg.qr(Y)
    return Q


def hutchpp(
    A: Any,
    n_matvecs: int | None = None,
    *,
    rank: int | None = None,
    target_rel_error: float | None = None,
    max_matvecs: int | None = None,
    probe: str = "rademacher",
    block_size: int = 16,
    rng: Any = None,
    return_history: bool = False,
    callback: Any = None,
    progress: Any = False,
    warn: bool = True,
    strict: bool = False,
) -> TraceEstimate:
    """Hutch++ estimate of ``tr A`` (low-rank part exact, Hutchinson on the deflated rest).

    Parameters
    ----------
    n_matvecs : fixed budget ``m`` (default 102): sketch rank ``r = m // 3``
        (``r`` for ``A S``, ``r`` for ``A Q``, the rest remainder probes); a
        budget ``>= n`` computes ``tr A`` exactly (``exact=True``, ``std_error`` 0)
    rank : sketch size ``r`` for the adaptive run (default 32, or ``cap // 3``)
    target_rel_error, max_matvecs : adaptive stopping (remainder probes are
        added in blocks until ``se <= target |estimate|`` or the cap; the run
        uses at most ``n - 1`` matvecs, then the exact answer if ``n`` remain)
    warn, strict : as for :func:`hutchinson`

    The standard error is that of the remainder samples (the low-rank part is
    computed exactly given the sketch), Student-t calibrated as for
    :func:`hutchinson`.

    ``callback``/``progress``: once per probe round (see :mod:`curvlab.linalg._progress`), with
    ``n_matvecs``, ``estimate`` and ``std_error``; a stop returns the estimate so far, unconverged
    (status "max_iter").

    Host syncs: 1 for the sketch plus 1 per remainder probe block; the exact
    path 1.
    """
    op, probe, cap, tgt, g = _setup(A, probe, n_matvecs, max_matvecs, target_rel_error, rng, 102)
    n = op.shape[0]
    if rank is not None:
        rank = check_positive_int(rank, "rank")
    bs = check_positive_int(block_size, "block_size")
    xp, dt = op.xp, op.dtype
    state: dict[str, Any] = {"r": 0}

    def schedule(c: int) -> Iterable[int]:
        if rank is None:
            r = c // 3 if tgt is None else min(32, c // 3)
        else:
            r = rank
        r = max(1, min(r, n, (c - 2) // 2))
        if c < 2 * r + 2:
            raise ValueError(f"hutchpp needs a budget of at least 2 * rank + 2 = {2 * r + 2} matvecs, got {c}")
        S = draw(g, n, r, probe, dt)
        Q = _orth(op.matmat(S))
        AQ = op.matmat(Q)
        low = float(backend.to_numpy(xp.sum(Q.astype(np.float64) * AQ.astype(np.float64))))
        if not np.isfinite(low):
            raise FloatingPointError("hutchpp: the operator returned NaN/Inf")
        state.update(r=r, step=_hutchinson_step(op, g, probe, "hutchpp", Q=Q, low=low))
        rest = c - 2 * r
        return blocks(rest, bs if tgt is not None else rest)

    res = _estimate(
        op,
        cap,
        tgt,
        schedule,
        lambda b, used: state["step"](b, used),
        TRACE,
        _exact_trace(op, "hutchpp"),
        record=return_history, who="hutchpp", callback=callback, progress=progress,
        min_rounds=2,
        used=lambda: 2 * state["r"],
    )
    return finish(res.trace_estimate("exact" if res.exact else f"hutch++ ({probe}, rank {state['r']})"), "hutchpp", warn, strict)


def _exchangeable_sketch(op: LinearOperator, s: int, g: Any, probe: str, who: str) -> tuple[Any, ...]:
    """The sketch shared by XTrace and XDiag (``2 s`` matvecs, 1 host sync).

    Returns ``(Om, Y, Q, Z, small)``: probes ``Ω`` ``(n, s)``, ``Y = A Ω``,
    ``Q, R = qr(Y)``, ``Z = A Q`` (operator backend and dtype), and a dict of
    host float64 ``(s, s)`` matrices read in one transfer: ``R``, ``H = QᵀZ``,
    ``W = QᵀΩ``, ``G = ΩᵀY``, ``M = ΩᵀZ``, and ``U``, the unit downdate
    vectors ``u_i = R^{-T} e_i / ‖R^{-T} e_i‖`` as columns (None when ``R`` is
    numerically singular: ``A Ω`` has rank ``< s``). A non-finite sketch
    raises ``FloatingPointError`` naming ``who``.
    """
    xp, dt = op.xp, op.dtype
    n = op.shape[0]
    Om = draw(g, n, s, probe, dt)
    Y = op.matmat(Om)
    Q, R = xp.linalg.qr(Y)
    Z = op.matmat(Q)
    B = xp.stack([R, Q.T @ Z, Q.T @ Om, Om.T @ Y, Om.T @ Z]).astype(np.float64)
    Rh, H, W, G, M = np.asarray(backend.to_numpy(B), dtype=np.float64)
    if not all(np.all(np.isfinite(x)) for x in (Rh, H, W, G, M)):
        raise FloatingPointError(f"{who}: the operator returned NaN/Inf")
    small = {"R": Rh, "H": H, "W": W, "G": G, "M": M, "U": None}
    d = np.abs(np.diag(Rh))
    if d.min() > 100 * s * np.finfo(dt).eps * max(d.max(), 1e-300):
        # u_i = R^{-T} e_i normalised: row i of inv(R)
        Rinv = scipy.linalg.solve_triangular(Rh, np.eye(s), lower=False, check_finite=False)
        Um = Rinv.T
        norms = np.linalg.norm(Um, axis=0, keepdims=True)
        if np.all(np.isfinite(norms)) and np.all(norms > 0):
            small["U"] = Um / norms
    return Om, Y, Q, Z, small


def _loo_pairs(U: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(off, γ, w)`` for leave-two-out bases: ``γ_ij = u_iᵀu_j``, ``w_ij = 1/(1-γ_ij²)`` (0 on the diagonal).

    Removing probes ``i`` and ``j`` removes ``span(u_i, u_j)`` from ``range(Q)``; its
    projector is ``[u_i u_j] [[1, γ], [γ, 1]]⁻¹ [u_i u_j]ᵀ``.
    """
    s = U.shape[1]
    off = ~np.eye(s, dtype=bool)
    gam = np.where(off, U.T @ U, 0.0)
    w = np.where(off, 1.0 / np.maximum(1.0 - gam**2, 1e-300), 0.0)
    return off, gam, w


def _xtrace_jackknife(small: dict[str, np.ndarray]) -> np.ndarray:
    """``T_(-j)``: the XTrace estimate from all probes but ``j``, for every ``j`` (host ``(s, s)`` algebra, ``O(s³)``).

    With ``Π_ij = Q (I - P_ij) Qᵀ`` the leave-two-out projector (``P_ij`` the
    projector on ``span(u_i, u_j)``, see :func:`_loo_pairs`),
    ``t_i^(-j) = tr(H) - tr(P_ij H) + ω_iᵀ(I - Π_ij) A (I - Π_ij) ω_i`` and
    the remainder is ``g_i - v_iᵀc + cᵀHc`` with ``c = (I - P_ij) W_i``,
    ``v_i = M_{i,:} + R_{:,i}``, ``g_i = G_ii``. (Derived here; checked against
    recomputing XTrace on ``s - 1`` probes in the tests.)
    """
    R, H, W, G, M, U = (small[k] for k in ("R", "H", "W", "G", "M", "U"))
    s = R.shape[0]
    off, gam, w = _loo_pairs(U)
    K = U.T @ H @ U
    D = U.T @ W
    V = M.T + R
    VU = V.T @ U
    VW = np.einsum("ki,ki->i", V, W)
    E = W.T @ (H + H.T) @ U
    WHW = np.einsum("ki,kl,li->i", W, H, W)
    Dii = np.diag(D)[:, None]
    Dji = D.T
    a1 = w * (Dii - gam * Dji)
    a2 = w * (Dji - gam * Dii)
    Kd = np.diag(K)
    Ks = K + K.T
    low = np.trace(H) - w * (Kd[:, None] + Kd[None, :] - gam * Ks)
    rem = (
        (np.diag(G) - VW + WHW)[:, None]
        + a1 * (np.diag(VU) - np.diag(E))[:, None]
        + a2 * (VU - E)
        + a1**2 * Kd[:, None]
        + a1 * a2 * Ks
        + a2**2 * Kd[None, :]
    )
    t = np.where(off, low + rem, 0.0)
    return t.sum(axis=0) / (s - 1)


def jackknife_se(Tj: Any, axis: int = -1) -> Any:
    """Jackknife standard error ``sqrt((s-1)/s Σ_j (T_(-j) - mean)²)`` of leave-one-out estimates ``T_(-j)``.

    By the Efron–Stein inequality its square overestimates the variance in
    expectation, so the interval it gives errs on the wide side.
    """
    s = Tj.shape[axis]
    dev = Tj - Tj.mean(axis=axis, keepdims=True)
    return ((s - 1) / s * (dev * dev).sum(axis=axis)) ** 0.5


def _xtrace_once(op: LinearOperator, s: int, g: Any, probe: str) -> tuple[float, float, np.ndarray]:
    """One XTrace round: ``(estimate, std_error, t_i)`` (``2 s`` matvecs, 2 host syncs).

    A numerically rank-deficient sketch (``rank A Ω < s``, so ``A`` has rank
    ``< s`` and ``range(Q)`` holds its range) gives ``tr(QᵀAQ)`` with an error
    bar at the rounding level of ``‖H‖``.
    """
    xp, dt = op.xp, op.dtype
    Om, Y, Q, Z, small = _exchangeable_sketch(op, s, g, probe, "xtrace")
    H, W, U = small["H"], small["W"], small["U"]
    if U is None:
        est = float(np.trace(H))
        se = 100 * s * np.finfo(dt).eps * float(np.linalg.norm(H, 2)) * op.shape[0]
        return est, se, np.full(s, est)
    # low-rank parts: tr(H) - u_iᵀ H u_i
    lowr = np.trace(H) - np.einsum("ji,jk,ki->i", U, H, U)
    # remainders: (P ω_i)ᵀ A (P ω_i) with P ω_i = ω_i - Q W_i + Q u_i (u_iᵀ W_i), computed on the device
    d = np.einsum("ji,ji->i", U, W)
    Cq = W - U * d[None, :]  # coefficients of Q in (I - P) ω_i
    Cd = xp.asarray(Cq.astype(dt))
    PO = Om - Q @ Cd
    APO = Y - Z @ Cd
    rem = _colwise_dot(PO, APO)
    t = lowr + rem
    _finite(t, "xtrace")
    se = float(jackknife_se(_xtrace_jackknife(small))) * t_factor(s - 1)
    return float(t.mean()), se, t


def xtrace(
    A: Any,
    n_matvecs: int | None = None,
    *,
    target_rel_error: float | None = None,
    max_matvecs: int | None = None,
    probe: str = "rademacher",
    rng: Any = None,
    return_history: bool = False,
    callback: Any = None,
    progress: Any = False,
    warn: bool = True,
    strict: bool = False,
) -> TraceEstimate:
    """XTrace estimate of ``tr A`` (exchangeable low-rank + remainder, ``2 s`` matvecs).

    Parameters
    ----------
    n_matvecs : fixed budget (default 100): ``s = n_matvecs // 2`` probes; a
        budget ``>= n`` computes ``tr A`` exactly (``exact=True``, ``std_error`` 0)
    target_rel_error, max_matvecs : adaptive run: start with ``s = 8`` and
        double until ``se <= target |estimate|`` or the next round would pass
        the cap (or ``n - 1`` matvecs, then the exact answer if ``n`` remain);
        each round starts afresh (work of all rounds is counted).
    warn, strict : as for :func:`hutchinson`

    Error bar: the jackknife over probes (``T_(-j)``, the XTrace estimate
    without probe ``j``, all ``s`` of them from the same QR in ``O(s³)``),
    times ``t_{s-1,0.975}/z_{0.975}``. The exchangeable ``t_i`` are
    positively correlated, so ``std(t_i)/√s`` understates the error (2-se
    coverage 0.64–0.84 measured); the jackknife errs on the wide side.

    ``callback``/``progress``: once per probe round (see :mod:`curvlab.linalg._progress`), with
    ``n_matvecs``, ``estimate`` and ``std_error``; a stop returns the estimate so far, unconverged
    (status "max_iter").

    Host syncs: 2 per round (the ``s x s`` Gram matrices in one transfer, the
    remainders in another); the exact path 1.
    """
    op, probe, cap, tgt, g = _setup(A, probe, n_matvecs, max_matvecs, target_rel_error, rng)
    n = op.shape[0]
    res = _estimate(
        op,
        cap,
        tgt,
        lambda c: doubling_rounds("xtrace", c, tgt, n),
        lambda s, used: _xtrace_once(op, s, g, probe),
        TRACE,
        _exact_trace(op, "xtrace"),
        record=return_history, who="xtrace", callback=callback, progress=progress,
        cost=2,
    )
    return finish(res.trace_estimate("exact" if res.exact else f"xtrace ({probe})"), "xtrace", warn, strict)
