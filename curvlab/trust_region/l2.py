"""The l2 trust-region subproblem ``min gᵀs + ½ sᵀBs  s.t. ‖s‖ ≤ Δ``.

``B`` is given by its eigendecomposition ``B = V diag(λ) Vᵀ`` or as a
diagonal. In the eigenbasis (``γ = Vᵀg``) the solution is
``s(σ) = −γ/(λ + σ)`` with ``σ ≥ max(0, −λ_min)`` and ``σ(Δ − ‖s‖) = 0``
(Moré–Sorensen). The secular equation ``½‖s(σ)‖² = ½Δ²`` has the same form as
the arTuRO KL dual (``p = 1``, ``G = γ``, ``c = λ``), so it is solved by the
same safeguarded Newton iteration on ``‖s‖^{-1} − Δ^{-1}``
(:mod:`curvlab.trust_region._roots`). The hard case (``γ`` orthogonal to the
bottom eigenspace and ``‖s(−λ_min)‖ < Δ``) adds ``τ v_min`` to reach the
boundary.

Example
-------
>>> import numpy as np
>>> res = solve_l2_subproblem(np.array([1.0, 0.0]), 0.5, diag=np.array([1.0, 2.0]))
>>> np.round(res.s, 12).tolist(), round(res.sigma, 12), res.interior     # s = -g/(1 + σ), ‖s‖ = Δ
([-0.5, 0.0], 1.0, False)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .. import backend
from ._roots import solve_decreasing

__all__ = ["L2Result", "solve_l2_subproblem"]


@dataclasses.dataclass
class L2Result:
    """Solution of the l2 subproblem.

    ``s`` the step (shape of ``g``); ``sigma`` the multiplier; ``norm`` = ‖s‖;
    ``model`` = ``gᵀs + ½sᵀBs``; ``interior`` (σ = 0, ‖s‖ < Δ);
    ``hard_case``; ``n_evals`` secular-function evaluations; ``converged``.
    """

    s: Any
    sigma: float
    norm: float
    model: float
    interior: bool
    hard_case: bool
    n_evals: int
    converged: bool


def solve_l2_subproblem(g: Any, delta: float, *, eigvals: Any = None, eigvecs: Any = None, diag: Any = None,
                        rtol: float = 1e-10, max_iter: int = 100, hard_tol: float = 1e-12) -> L2Result:
    """Solve ``min gᵀs + ½ sᵀBs, ‖s‖ ≤ delta`` globally.

    Give either ``diag`` (``(n,)``, B diagonal) or ``eigvals`` (``(k,)``) and
    ``eigvecs`` (``(n, k)``, orthonormal columns; ``k = n`` for a full
    decomposition, so that ``B = V diag(λ) Vᵀ``). ``rtol`` is the relative
    tolerance on ``½‖s‖²`` at the boundary. Components of ``γ = Vᵀg`` in the
    bottom eigenspace below ``hard_tol·‖γ‖`` count as zero (hard case).
    Computes in float64; ``s`` is returned in the dtype of ``g``.
    """
    backend.check_float_array(g, "g", ndim=1)
    xp = backend.get_namespace(g, eigvals, eigvecs, diag)
    delta = float(delta)
    if not (delta > 0 and math.isfinite(delta)):
        raise ValueError(f"delta must be a finite number > 0, got {delta}")
    n = g.shape[0]
    if (diag is None) == (eigvals is None):
        raise ValueError("give exactly one of diag= or eigvals= (with eigvecs=)")
    if diag is not None:
        backend.check_float_array(diag, "diag", ndim=1)
        if diag.shape != (n,):
            raise ValueError(f"diag must have shape ({n},) like g, got {tuple(diag.shape)}")
        lam = diag.astype(np.float64)
        gam = g.astype(np.float64)
        V = None
    else:
        if eigvecs is None:
            raise ValueError("eigvals= needs eigvecs=")
        backend.check_float_array(eigvals, "eigvals", ndim=1)
        backend.check_float_array(eigvecs, "eigvecs", ndim=2)
        k = eigvals.shape[0]
        if eigvecs.shape != (n, k):
            raise ValueError(f"eigvecs must have shape ({n}, {k}), got {tuple(eigvecs.shape)}")
        lam = eigvals.astype(np.float64)
        V = eigvecs.astype(np.float64)
        gam = V.T @ g.astype(np.float64)
    if lam.size == 0:
        z = xp.zeros_like(g)
        return L2Result(z, 0.0, 0.0, 0.0, True, False, 0, True)
    lam_min = float(xp.min(lam))
    scale = max(float(xp.max(xp.abs(lam))), 1e-300)
    bottom = lam <= lam_min + 1e-12 * scale
    gnorm = float(xp.linalg.norm(gam))
    gam = xp.where(bottom & (xp.abs(gam) <= hard_tol * gnorm), 0.0, gam)
    nz = gam != 0

    def secular(sig: float) -> tuple[float, float]:
        d = lam + sig
        with np.errstate(divide="ignore", invalid="ignore"):  # γ ≠ 0 at the pole: F = +inf, by design
            t = xp.where(nz, gam / xp.where(nz, d, 1.0), 0.0)
            return 0.5 * float(xp.sum(t * t)), -float(xp.sum(xp.where(nz, t * t / xp.where(nz, d, 1.0), 0.0)))

    lower = max(0.0, -lam_min)
    target = 0.5 * delta * delta
    if gnorm == 0.0 and lam_min >= 0:
        z = xp.zeros_like(g)
        return L2Result(z, 0.0, 0.0, 0.0, True, False, 0, True)
    r = solve_decreasing(secular, target, lower=lower, lower_point=lower, rtol=rtol, max_iter=max_iter)
    sig = r.x
    d = lam + sig
    st = xp.where(nz, -gam / xp.where(nz, d, 1.0), 0.0)
    hard = False
    if r.at_lower and lam_min < 0:
        hard = True
        i = int(xp.argmax(bottom))
        tau = math.sqrt(max(delta * delta - float(xp.sum(st * st)), 0.0))
        st = st.copy()
        st[i] = st[i] + tau
    s = st if V is None else V @ st
    model = float(xp.sum(gam * st) + 0.5 * xp.sum(lam * st * st))
    norm = float(xp.linalg.norm(st))
    return L2Result(s.astype(g.dtype), float(sig), norm, model, bool(r.at_lower and not hard and sig == 0.0), hard,
                    r.n_evals, r.converged)
