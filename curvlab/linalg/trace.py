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
  bases come from one QR by the downdate ``Q_(i)Q_(i)ᵀ = Q (I - s_i s_iᵀ) Qᵀ``
  with ``s_i = R^{-T} e_i / ‖R^{-T} e_i‖`` (derived here). Standard error:
  ``std(t_i) / √s`` (as the authors suggest; the ``t_i`` are exchangeable,
  not independent). Cost ``2 s`` matvecs.

Adaptivity: pass ``target_rel_error`` (stop when ``se <= target |estimate|``)
and/or ``max_matvecs`` (a budget); ``converged`` reports whether the target
was met. Hutchinson and Hutch++ add probes in blocks; XTrace doubles its
sketch and recomputes (total work is reported).

All three need a square operator (not necessarily symmetric; Hutch++ and
XTrace are designed for PSD ``A``). NaN from the operator raises
``FloatingPointError``.

Example
-------
>>> import numpy as np
>>> A = np.ones((50, 50)) + np.eye(50)
>>> est = hutchinson(A, 200, rng=0)
>>> bool(abs(est.estimate - 100.0) < 5 * est.std_error)
True
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import scipy.linalg

from .. import backend
from ._adaptive import TRACE, blocks, doubling_rounds, run_rounds
from ._checks import as_symmetric_operator, check_positive_int, check_tol
from ._probes import check_probe, draw, sample_se
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
    op = square_operator(A)
    if symmetric:
        op = as_symmetric_operator(op)
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


def _hutchinson_step(
    op: LinearOperator, g: Any, probe: str, who: str, Q: Any = None, low: float | None = None
) -> Callable[[int, int], tuple[float, float, np.ndarray]]:
    """A round of Hutchinson probes for :func:`run_rounds`, deflated by ``Q`` (Hutch++) when given.

    Each call draws ``b`` probes (projected off ``range(Q)``), adds their
    quadratic forms to the samples and returns ``(estimate, std_error, all
    samples)``; the estimate is the sample mean, plus ``low`` when given.
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
        return (est if low is None else low + est), sample_se(allx), allx

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
) -> TraceEstimate:
    """Hutchinson's estimator of ``tr A``.

    Parameters
    ----------
    A : square ``(n, n)`` operator
    n_matvecs : fixed number of probes (default 100 without a target)
    target_rel_error : stop once ``se <= target |estimate|`` (at least 2 blocks)
    max_matvecs : cap for the adaptive run (default 10,000)
    probe : "rademacher" or "gaussian"; block_size : probes per ``matmat``
    """
    op, probe, cap, tgt, g = _setup(A, probe, n_matvecs, max_matvecs, target_rel_error, rng)
    bs = check_positive_int(block_size, "block_size")
    step = _hutchinson_step(op, g, probe, "hutchinson")
    res = run_rounds(blocks(cap, bs), step, tgt, TRACE, record=return_history, min_rounds=2)
    return res.trace_estimate(f"hutchinson ({probe})")


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
) -> TraceEstimate:
    """Hutch++ estimate of ``tr A`` (low-rank part exact, Hutchinson on the deflated rest).

    Parameters
    ----------
    n_matvecs : fixed budget ``m`` (default 102): sketch rank ``r = m // 3``
        (``r`` for ``A S``, ``r`` for ``A Q``, the rest remainder probes)
    rank : sketch size ``r`` for the adaptive run (default 32, or ``cap // 3``)
    target_rel_error, max_matvecs : adaptive stopping (remainder probes are
        added in blocks until ``se <= target |estimate|`` or the cap)

    The standard error is that of the remainder samples (the low-rank part is
    computed exactly given the sketch).
    """
    op, probe, cap, tgt, g = _setup(A, probe, n_matvecs, max_matvecs, target_rel_error, rng, 102)
    n = op.shape[0]
    if rank is None:
        r = cap // 3 if tgt is None else min(32, cap // 3)
    else:
        r = check_positive_int(rank, "rank")
    r = max(1, min(r, n, (cap - 2) // 2))
    if cap < 2 * r + 2:
        raise ValueError(f"hutchpp needs a budget of at least 2 * rank + 2 = {2 * r + 2} matvecs, got {cap}")
    bs = check_positive_int(block_size, "block_size")
    xp, dt = op.xp, op.dtype
    S = draw(g, n, r, probe, dt)
    Q = _orth(op.matmat(S))
    AQ = op.matmat(Q)
    low = float(backend.to_numpy(xp.sum(Q.astype(np.float64) * AQ.astype(np.float64))))
    if not np.isfinite(low):
        raise FloatingPointError("hutchpp: the operator returned NaN/Inf")
    step = _hutchinson_step(op, g, probe, "hutchpp", Q=Q, low=low)
    rest = cap - 2 * r
    sizes = blocks(rest, bs if tgt is not None else rest)
    res = run_rounds(sizes, step, tgt, TRACE, record=return_history, used=2 * r, min_rounds=2)
    return res.trace_estimate(f"hutch++ ({probe}, rank {r})")


def _exchangeable_sketch(op: LinearOperator, s: int, g: Any, probe: str, who: str) -> tuple[Any, ...]:
    """The sketch shared by XTrace and XDiag (``2 s`` matvecs).

    Returns ``(Om, Y, Q, Z, Rh, Sm)``: probes ``Ω`` ``(n, s)``, ``Y = A Ω``,
    ``Q, R = qr(Y)``, ``Z = A Q`` (operator backend and dtype), ``R`` on the
    host in float64, and the unit downdate vectors ``s_i = R^{-T} e_i /
    ‖R^{-T} e_i‖`` as the columns of ``Sm`` (host float64). A non-finite
    ``R`` raises ``FloatingPointError`` naming ``who``.
    """
    xp, dt = op.xp, op.dtype
    n = op.shape[0]
    Om = draw(g, n, s, probe, dt)
    Y = op.matmat(Om)
    Q, R = xp.linalg.qr(Y)
    Z = op.matmat(Q)
    Rh = np.asarray(backend.to_numpy(R), dtype=np.float64)
    if not np.all(np.isfinite(Rh)):
        raise FloatingPointError(f"{who}: the operator returned NaN/Inf")
    # s_i = R^{-T} e_i normalised: column i of inv(R)^T, i.e. row i of inv(R)
    Rinv = scipy.linalg.solve_triangular(Rh, np.eye(s), lower=False, check_finite=False)
    Sm = Rinv.T
    Sm = Sm / np.linalg.norm(Sm, axis=0, keepdims=True)
    return Om, Y, Q, Z, Rh, Sm


def _xtrace_once(op: LinearOperator, s: int, g: Any, probe: str) -> np.ndarray:
    """The ``s`` exchangeable estimates ``t_i`` of XTrace (``2 s`` matvecs)."""
    xp, dt = op.xp, op.dtype
    Om, Y, Q, Z, _, Sm = _exchangeable_sketch(op, s, g, probe, "xtrace")
    H = np.asarray(backend.to_numpy(Q.T @ Z), dtype=np.float64)
    W = np.asarray(backend.to_numpy(Q.T @ Om), dtype=np.float64)
    # low-rank parts: tr(H) - s_iᵀ H s_i
    lowr = np.trace(H) - np.einsum("ji,jk,ki->i", Sm, H, Sm)
    # remainders: (P ω_i)ᵀ A (P ω_i) with P ω_i = ω_i - Q W_i + Q s_i (s_iᵀ W_i)
    d = np.einsum("ji,ji->i", Sm, W)
    Cq = W - Sm * d[None, :]  # coefficients of Q in (I - P) ω_i
    Cd = xp.asarray(Cq.astype(dt))
    PO = Om - Q @ Cd
    APO = Y - Z @ Cd
    rem = _colwise_dot(PO, APO)
    t = lowr + rem
    _finite(t, "xtrace")
    return t


def xtrace(
    A: Any,
    n_matvecs: int | None = None,
    *,
    target_rel_error: float | None = None,
    max_matvecs: int | None = None,
    probe: str = "rademacher",
    rng: Any = None,
    return_history: bool = False,
) -> TraceEstimate:
    """XTrace estimate of ``tr A`` (exchangeable low-rank + remainder, ``2 s`` matvecs).

    Parameters
    ----------
    n_matvecs : fixed budget (default 100): ``s = n_matvecs // 2`` probes
    target_rel_error, max_matvecs : adaptive run: start with ``s = 8`` and
        double until ``se <= target |estimate|`` or the next round would pass
        the cap; each round starts afresh (work of all rounds is counted).
    """
    op, probe, cap, tgt, g = _setup(A, probe, n_matvecs, max_matvecs, target_rel_error, rng)
    rounds = doubling_rounds("xtrace", cap, tgt, op.shape[0])

    def step(s: int, used: int) -> tuple[float, float, np.ndarray]:
        t = _xtrace_once(op, s, g, probe)
        return float(t.mean()), sample_se(t), t

    res = run_rounds(rounds, step, tgt, TRACE, record=return_history, cost=2)
    return res.trace_estimate(f"xtrace ({probe})")
