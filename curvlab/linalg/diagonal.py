"""Stochastic diagonal estimation: Hutchinson and XDiag, with per-entry standard errors.

* :func:`hutchinson_diagonal`: ``diag(A) ≈ (1/m) Σ z_i ⊙ A z_i`` (Bekas,
  Kokiopoulou & Saad 2007); Rademacher probes make it exact for a diagonal
  ``A``. Standard error per entry: sample std / √m.
* :func:`xdiag`: XDiag (method inspired by Epperly, Tropp & Webber, arXiv
  2301.07825): with the leave-one-out bases of XTrace
  (``Q_(i)Q_(i)ᵀ = Q (I - s_i s_iᵀ) Qᵀ``, see :mod:`curvlab.linalg.trace`),
  ``d_i = diag(Q_(i)Q_(i)ᵀ A) + ω_i ⊙ (I - Q_(i)Q_(i)ᵀ) A ω_i`` is unbiased for
  ``diag(A)`` and the estimate is their mean, ``2 s`` matvecs. ``A`` must be
  symmetric (``Qᵀ A = (A Q)ᵀ`` is used). Standard error: ``std_i(d_i)/√s``.

Adaptivity as for the trace: ``target_rel_error`` stops when
``‖se‖₂ <= target ‖estimate‖₂``; ``max_matvecs`` caps the work.
Estimates and errors are arrays ``(n,)`` on the operator's backend, float64.

Example
-------
>>> import numpy as np
>>> d = hutchinson_diagonal(np.diag([1.0, 2.0, 3.0]), 4, rng=0)
>>> d.estimate.tolist()
[1.0, 2.0, 3.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._adaptive import blocks, diagonal_rule, doubling_rounds, run_rounds
from ._checks import check_positive_int
from ._probes import draw
from .results import DiagonalEstimate
from .trace import _exchangeable_sketch, _setup

__all__ = ["hutchinson_diagonal", "xdiag"]


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
) -> DiagonalEstimate:
    """Hutchinson's diagonal estimator (square ``A``; default 100 probes without a target)."""
    op, probe, cap, tgt, g = _setup(A, probe, n_matvecs, max_matvecs, target_rel_error, rng)
    bs = check_positive_int(block_size, "block_size")
    xp, n = op.xp, op.shape[0]
    s1 = xp.zeros(n, dtype=np.float64)
    s2 = xp.zeros(n, dtype=np.float64)

    def step(b: int, used: int) -> tuple[Any, Any, None]:
        nonlocal s1, s2
        Z = draw(g, n, b, probe, op.dtype)
        P = (Z * op.matmat(Z)).astype(np.float64)
        if not bool(xp.all(xp.isfinite(P))):
            raise FloatingPointError("hutchinson_diagonal: the operator returned NaN/Inf")
        s1 = s1 + P.sum(axis=1)
        s2 = s2 + (P * P).sum(axis=1)
        est = s1 / used
        var = xp.maximum(s2 / used - est * est, 0.0) * (used / max(used - 1, 1))
        se = xp.sqrt(var / used) if used > 1 else xp.full(n, np.inf)
        return est, se, None

    res = run_rounds(blocks(cap, bs), step, tgt, diagonal_rule(xp), record=return_history, min_rounds=2)
    return res.diagonal_estimate(f"hutchinson diagonal ({probe})")


def _xdiag_once(op: Any, s: int, g: Any, probe: str) -> Any:
    """``(n, s)`` exchangeable diagonal estimates ``d_i`` (``2 s`` matvecs)."""
    xp, dt = op.xp, op.dtype
    Om, Y, Q, Z, Rh, Sm = _exchangeable_sketch(op, s, g, probe, "xdiag")
    Cr = Rh - Sm * np.einsum("ji,ji->i", Sm, Rh)[None, :]
    Smd = xp.asarray(Sm.astype(dt))
    Crd = xp.asarray(Cr.astype(dt))
    base = xp.sum(Q.astype(np.float64) * Z.astype(np.float64), axis=1)
    D = base[:, None] - (Q @ Smd).astype(np.float64) * (Z @ Smd).astype(np.float64)
    D = D + Om.astype(np.float64) * (Y - Q @ Crd).astype(np.float64)
    if not bool(xp.all(xp.isfinite(D))):
        raise FloatingPointError("xdiag: the operator returned NaN/Inf")
    return D


def xdiag(
    A: Any,
    n_matvecs: int | None = None,
    *,
    target_rel_error: float | None = None,
    max_matvecs: int | None = None,
    probe: str = "rademacher",
    rng: Any = None,
    return_history: bool = False,
) -> DiagonalEstimate:
    """XDiag estimate of ``diag(A)`` for a symmetric ``A`` (``2 s`` matvecs, ``s = n_matvecs // 2``).

    Adaptive run (``target_rel_error``): ``s = 8, 16, ...`` afresh until the
    target or the cap (all rounds counted).
    """
    op, probe, cap, tgt, g = _setup(A, probe, n_matvecs, max_matvecs, target_rel_error, rng, symmetric=True)
    xp, n = op.xp, op.shape[0]
    rounds = doubling_rounds("xdiag", cap, tgt, n)

    def step(s: int, used: int) -> tuple[Any, Any, None]:
        D = _xdiag_once(op, s, g, probe)
        return D.mean(axis=1), D.std(axis=1, ddof=1) / np.sqrt(s), None

    res = run_rounds(rounds, step, tgt, diagonal_rule(xp), record=return_history, cost=2)
    return res.diagonal_estimate(f"xdiag ({probe})")
