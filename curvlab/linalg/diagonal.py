"""Stochastic diagonal estimation: Hutchinson and XDiag, with per-entry standard errors.

* :func:`hutchinson_diagonal`: ``diag(A) ≈ (1/m) Σ z_i ⊙ A z_i`` (Bekas,
  Kokiopoulou & Saad 2007); Rademacher probes make it exact for a diagonal
  ``A``. Standard error per entry: sample std / √m.
* :func:`xdiag`: XDiag (method inspired by Epperly, Tropp & Webber, arXiv
  2301.07825): with the leave-one-out bases of XTrace
  (``Q_(i)Q_(i)ᵀ = Q (I - s_i s_iᵀ) Qᵀ``, see :mod:`curvlab.linalg.trace`),
  ``d_i = diag(Q_(i)Q_(i)ᵀ A) + ω_i ⊙ (I - Q_(i)Q_(i)ᵀ) A ω_i`` is unbiased for
  ``diag(A)`` and the estimate is their mean, ``2 s`` matvecs. ``A`` must be
  symmetric (``Qᵀ A = (A Q)ᵀ`` is used). Standard error: the jackknife over
  probes per entry (``std_i(d_i)/√s`` understates it: the ``d_i`` are
  positively correlated).

Error bars are Student-t calibrated as in :mod:`curvlab.linalg.trace`; a
budget of ``n`` matvecs or more gives the exact diagonal from ``n``
unit-vector products (``exact=True``, ``std_error`` 0). Adaptivity as for the
trace: ``target_rel_error`` stops when ``‖se‖₂ <= target ‖estimate‖₂``;
``max_matvecs`` caps the work; a missed target warns (``ConvergenceWarning``).
Estimates and errors are arrays ``(n,)`` on the operator's backend, float64.

Examples
--------
>>> import numpy as np
>>> d = hutchinson_diagonal(np.diag([1.0, 2.0, 3.0]), 4, rng=0)
>>> d.estimate.tolist()
[1.0, 2.0, 3.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ._adaptive import blocks, diagonal_rule, doubling_rounds, finish
from ._checks import check_positive_int
from ._probes import draw, t_factor
from .results import DiagonalEstimate
from .trace import _estimate, _exact_diagonal, _exchangeable_sketch, _loo_pairs, _setup, jackknife_se

__all__ = ["hutchinson_diagonal", "xdiag"]


def _checked_rel(xp: Any, X: Any, est: Any, se: Any, who: str) -> float:
    """One host read of ``(any non-finite in X, ‖se‖₂, ‖est‖₂)``: raise on NaN/Inf, else ``‖se‖/‖est‖``."""
    bad = xp.sum(~xp.isfinite(X)).astype(np.float64)
    h = np.asarray(backend.to_numpy(xp.stack([bad, xp.linalg.norm(se), xp.linalg.norm(est)])), dtype=np.float64)
    if h[0] > 0 or not np.isfinite(h[2]):
        raise FloatingPointError(f"{who}: the operator returned NaN/Inf")
    return float(h[1] / max(h[2], 1e-300))


def _exact_diag(op: Any, who: str) -> Any:
    """``() -> (diag(A), zeros)`` from ``n`` unit-vector products (one host sync)."""

    def exact() -> tuple[Any, Any]:
        d = _exact_diagonal(op)
        _checked_rel(op.xp, d, d, d, who)
        return d, op.xp.zeros_like(d)

    return exact


def hutchinson_diagonal(
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
) -> DiagonalEstimate:
    """Hutchinson's diagonal estimator (square ``A``; default 100 probes without a target).

    A budget ``>= n`` computes ``diag(A)`` exactly from ``n`` unit vectors
    (``exact=True``, ``std_error`` 0); an adaptive run uses at most ``n - 1``
    probes, then the exact answer if ``n`` matvecs remain in the cap; a missed
    target warns (``warn``) or raises (``strict``). The per-entry standard
    error is the sample one times ``t_{ν,0.975}/z_{0.975}`` (``ν`` = probes - 1).

    ``callback``/``progress``: once per probe round (see :mod:`curvlab.linalg._progress`), with
    ``n_matvecs`` and ``rel_std_error`` (``‖se‖/‖estimate‖``); a stop returns the estimate so
    far, unconverged (status "max_iter").

    Host syncs: 1 per probe block (finiteness and the relative error in one
    transfer); the exact path 1.
    """
    op, probe, cap, tgt, g = _setup(A, probe, n_matvecs, max_matvecs, target_rel_error, rng)
    bs = check_positive_int(block_size, "block_size")
    xp, n = op.xp, op.shape[0]
    s1 = xp.zeros(n, dtype=np.float64)
    s2 = xp.zeros(n, dtype=np.float64)

    def step(b: int, used: int) -> tuple[Any, Any, float]:
        nonlocal s1, s2
        Z = draw(g, n, b, probe, op.dtype)
        P = (Z * op.matmat(Z)).astype(np.float64)
        s1 = s1 + P.sum(axis=1)
        s2 = s2 + (P * P).sum(axis=1)
        est = s1 / used
        var = xp.maximum(s2 / used - est * est, 0.0) * (used / max(used - 1, 1))
        se = xp.sqrt(var / used) * t_factor(used - 1) if used > 1 else xp.full(n, np.inf)
        return est, se, _checked_rel(xp, P, est, se, "hutchinson_diagonal")

    rule = diagonal_rule(xp)
    res = _estimate(
        op, cap, tgt, lambda c: blocks(c, bs), step, rule, _exact_diag(op, "hutchinson_diagonal"), record=return_history, who="hutchinson_diagonal", callback=callback, progress=progress, min_rounds=2
    )
    res.samples = None
    return finish(res.diagonal_estimate("exact" if res.exact else f"hutchinson diagonal ({probe})"), "hutchinson_diagonal", warn, strict)


def _xdiag_once(op: Any, s: int, g: Any, probe: str) -> tuple[Any, Any, float]:
    """One XDiag round: ``(estimate, std_error, rel. error)`` (``2 s`` matvecs, 2 host syncs).

    The estimate is the mean of the ``d_i``; the error bar the jackknife over
    probes (``T_(-j)``, XDiag without probe ``j``, from the leave-two-out
    projectors of :func:`~curvlab.linalg.trace._loo_pairs`), per entry, times
    ``t_{s-1,0.975}/z_{0.975}``. With ``a = Q u_i``, ``b = Q u_j`` and
    ``z_a = Z u_i``, ``z_b = Z u_j``: ``diag(Q P_ij Zᵀ) = w (a⊙z_a + b⊙z_b -
    γ (a⊙z_b + b⊙z_a))`` and ``(I - Π_ij) A ω_i = w((F_ii - γF_ji) a + (F_ji -
    γF_ii) b)``, ``F = UᵀR``; summed over ``i ≠ j`` these are ``(n, s) @ (s, s)``
    products (derived here).
    """
    xp, dt = op.xp, op.dtype
    Om, Y, Q, Z, small = _exchangeable_sketch(op, s, g, probe, "xdiag")
    Rh, U = small["R"], small["U"]
    base = xp.sum(Q.astype(np.float64) * Z.astype(np.float64), axis=1)
    if U is None:  # rank A Ω < s: range(Q) holds range(A), diag(Q Qᵀ A) is diag(A) to rounding
        se = xp.full(base.shape, 100 * s * np.finfo(dt).eps * float(np.linalg.norm(small["H"], 2)))
        return base, se, _checked_rel(xp, base, base, se, "xdiag")
    f64 = lambda X: xp.asarray(X.astype(np.float64))  # noqa: E731
    Om64, Q64, Z64 = Om.astype(np.float64), Q.astype(np.float64), Z.astype(np.float64)
    QS, ZS = Q64 @ f64(U), Z64 @ f64(U)
    Cr = Rh - U * np.einsum("ji,ji->i", U, Rh)[None, :]
    D = base[:, None] - QS * ZS + Om64 * (Y.astype(np.float64) - Q64 @ f64(Cr))
    est = D.mean(axis=1)
    # jackknife: T_(-j) for all j as (n, s) from (n, s) @ (s, s) products
    off, gam, w = _loo_pairs(U)
    F = U.T @ Rh
    Fii = np.diag(F)[:, None]
    c1 = w * (Fii - gam * F.T)
    c2 = w * (F.T - gam * Fii)
    wg = w * gam
    low = (s - 1) * base[:, None] - (QS * ZS) @ f64(w) - QS * ZS * f64(w.sum(axis=0))[None, :] + (QS @ f64(wg)) * ZS + (ZS @ f64(wg)) * QS
    rem = (Om64 * QS) @ f64(c1) + (Om64 @ f64(c2)) * QS
    Tj = (low + rem) / (s - 1)
    se = jackknife_se(Tj, axis=1) * t_factor(s - 1)
    return est, se, _checked_rel(xp, D, est, se, "xdiag")


def xdiag(
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
) -> DiagonalEstimate:
    """XDiag estimate of ``diag(A)`` for a symmetric ``A`` (``2 s`` matvecs, ``s = n_matvecs // 2``).

    A budget ``>= n`` computes ``diag(A)`` exactly (``exact=True``,
    ``std_error`` 0). Adaptive run (``target_rel_error``): ``s = 8, 16, ...``
    afresh until the target or the cap (all rounds counted; at most ``n - 1``
    matvecs, then the exact answer if ``n`` remain); a missed target warns
    (``warn``) or raises (``strict``). Error bar: per-entry jackknife over
    probes, Student-t calibrated (see :func:`_xdiag_once`).

    ``callback``/``progress``: once per probe round (see :mod:`curvlab.linalg._progress`), with
    ``n_matvecs`` and ``rel_std_error`` (``‖se‖/‖estimate‖``); a stop returns the estimate so
    far, unconverged (status "max_iter").

    Host syncs: 2 per round (the sketch's Gram matrices; finiteness and the
    relative error); the exact path 1.
    """
    op, probe, cap, tgt, g = _setup(A, probe, n_matvecs, max_matvecs, target_rel_error, rng, symmetric=True)
    xp, n = op.xp, op.shape[0]
    res = _estimate(
        op,
        cap,
        tgt,
        lambda c: doubling_rounds("xdiag", c, tgt, n),
        lambda s, used: _xdiag_once(op, s, g, probe),
        diagonal_rule(xp),
        _exact_diag(op, "xdiag"),
        record=return_history, who="xdiag", callback=callback, progress=progress,
        cost=2,
    )
    res.samples = None
    return finish(res.diagonal_estimate("exact" if res.exact else f"xdiag ({probe})"), "xdiag", warn, strict)
