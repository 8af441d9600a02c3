"""KL trust region of arTuRO: closed form given η, the dual, and two root-finders.

Method inspired by arXiv 2310.20574 (arTuRO). Per coordinate ``j`` with mean
``μ``, precision ``p``, gradient model ``ĝ(θ) = a + hθ``, prior weight ``β``
and prior precision ``p0`` (``c = h_eff + βp0``, ``G = a + (h + βp0)μ``):

- mean        ``μ'(η) = (ηpμ − a)/(c + ηp) = μ − G/(c + ηp)`` (when ``h_eff = h``);
- precision   ``p' = (c + νp)/(β + ν)`` (``ν = η`` is the exact Lagrangian optimum);
- dual        ``KL(η) = ½ Σ p G²/(c + ηp)²``, ``dKL/dη = −Σ p²G²/(c + ηp)³``,
  strictly decreasing on ``(η_pole, ∞)``, ``η_pole = max(0, max_j −c_j/p_j)``.

:func:`solve_kl` finds η with ``KL(η) = ε`` in mode ``"reference"`` (the
official code's bisection, quirks included) or ``"exact"`` (safeguarded
Newton, relative tolerance ``rtol`` on the KL, inactive constraint → η = 0).

Example
-------
>>> import numpy as np
>>> w = np.array([1.0, -2.0]); a = np.array([0.5, 0.1]); h = np.array([1.0, 2.0]); p = np.array([10.0, 10.0])
>>> dual = KLDual(w, a, h, p, beta=0.1, prior_prec=0.0015)
>>> res = solve_kl(dual, 0.01, mode="exact", rtol=1e-12)
>>> res.converged, abs(res.kl / 0.01 - 1) < 1e-12
(True, True)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from .. import backend, kernels
from ._roots import bisect_reference, solve_decreasing

__all__ = ["KLDual", "KLSolveResult", "solve_kl", "kl_mean", "kl_precision", "kl_of_step",
           "steady_state_eta", "REFERENCE_DEFAULTS"]

#: the official code's solver constants
REFERENCE_DEFAULTS = dict(eta_tol=0.5, eta_max=1e4, warm_factor=3.0, early_exit=0.1)


def _flat_list(x: Any, name: str) -> list[Any]:
    leaves = list(x) if isinstance(x, (list, tuple)) else [x]
    out = []
    for i, leaf in enumerate(leaves):
        backend.check_float_array(leaf, f"{name}[{i}]")
        out.append(leaf.reshape(-1))
    return out


class KLDual:
    """The arTuRO dual ``η ↦ (KL(η), dKL/dη)`` over one or more coordinate blocks.

    ``w, a, h, p``: arrays (or lists of arrays, one per layer) of one shape per
    block, float32/float64; ``μ = w·mscale``. ``h_min`` (optional) floors the
    curvature in the denominator only. Each call is one fused pass per block
    (:func:`curvlab.kernels.kl_dual`), summed in float64; ``n_evals`` counts
    calls and ``n_nan`` the calls that returned NaN (a corrupted state).

    >>> import numpy as np
    >>> d = KLDual(np.zeros(1), np.ones(1), np.ones(1), np.ones(1), beta=0.0, prior_prec=0.0)
    >>> d(1.0)     # G = 1, c + ηp = 2: KL = ½·1/4
    (0.125, -0.125)
    """

    def __init__(self, w: Any, a: Any, h: Any, p: Any, *, beta: float, prior_prec: float, mscale: float = 1.0,
                 h_min: float | None = None, impl: str = "auto") -> None:
        self.w, self.a = _flat_list(w, "w"), _flat_list(a, "a")
        self.h, self.p = _flat_list(h, "h"), _flat_list(p, "p")
        if not (len(self.w) == len(self.a) == len(self.h) == len(self.p)):
            raise ValueError("w, a, h, p must have the same number of blocks, got "
                             f"{len(self.w)}, {len(self.a)}, {len(self.h)}, {len(self.p)}")
        if beta < 0 or prior_prec < 0:
            raise ValueError(f"beta and prior_prec must be >= 0, got {beta}, {prior_prec}")
        self.beta_p0 = float(beta) * float(prior_prec)
        self.mscale = float(mscale)
        self.h_min = -math.inf if h_min is None else float(h_min)
        self.impl = impl
        self.n_evals = 0
        self.n_nan = 0

    def __call__(self, eta: float) -> tuple[float, float]:
        self.n_evals += 1
        kl = dkl = 0.0
        for w, a, h, p in zip(self.w, self.a, self.h, self.p):
            k, d = kernels.kl_dual(eta, w, a, h, p, mscale=self.mscale, beta_p0=self.beta_p0, h_min=self.h_min,
                                   impl=self.impl)
            kl += k
            dkl += d
        if kl != kl:
            self.n_nan += 1
        return kl, dkl

    def pole(self) -> tuple[float, int]:
        """``(max_j −c_j/p_j, #{h_j < 0})`` over all blocks (``−inf`` if empty)."""
        m, n = -math.inf, 0
        for h, p in zip(self.h, self.p):
            mm, nn = kernels.kl_pole(h, p, beta_p0=self.beta_p0, h_min=self.h_min, impl=self.impl)
            m, n = max(m, mm), n + nn
        return m, n


@dataclasses.dataclass
class KLSolveResult:
    """Result of :func:`solve_kl`.

    ``eta`` the multiplier; ``kl`` the mean-KL at ``eta`` (NaN when not
    evaluated, see ``final_kl``); ``kl_ratio`` = ``kl/eps``; ``iterations``
    root-finder iterations (reference: bisection steps; exact: dual
    evaluations); ``n_evals`` dual evaluations; ``converged``; ``inactive``
    (exact mode: the unconstrained step is inside the region, η = η_pole);
    ``bracket_failed`` (exact mode: no upper bound within 60 expansions);
    ``eta_pole`` (exact mode; 0 without a pole).
    """

    eta: float
    kl: float
    kl_ratio: float
    iterations: int
    n_evals: int
    converged: bool
    inactive: bool = False
    bracket_failed: bool = False
    eta_pole: float = 0.0
    n_negative_h: int = 0


def solve_kl(dual: KLDual, eps: float, *, mode: str = "exact", eta_prev: float = -1.0, rtol: float = 1e-10,
             max_iter: int = 50, eta_tol: float = 0.5, eta_max: float = 1e4, warm_factor: float = 3.0,
             early_exit: float = 0.1, final_kl: bool = True) -> KLSolveResult:
    """Find η with ``KL(η) = eps`` for the arTuRO step (method inspired by arXiv 2310.20574).

    ``mode="reference"``: the official bisection — bracket ``[0, eta_max]``
    when ``eta_prev < 0`` else ``[eta_prev/3, min(3·eta_prev, eta_max)]``,
    absolute tolerance ``eta_tol``, early exit at ``|KL − ε| < 0.1ε``, returns
    the final bracket's midpoint (``final_kl`` adds one evaluation there).

    ``mode="exact"``: domain ``η > η_pole``; η = 0 (or just above the pole) when
    ``KL`` there is ≤ ε; otherwise safeguarded Newton on ``KL^{-1/2} − ε^{-1/2}``
    from the warm start ``eta_prev`` to ``|KL/ε − 1| ≤ rtol``.

    Raises ``ValueError`` for ``eps <= 0`` or an unknown mode.
    """
    eps = float(eps)
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps (the KL bound) must be a finite number > 0, got {eps}")
    n0 = dual.n_evals
    if mode == "reference":
        eta, it = bisect_reference(lambda e: dual(e)[0], eps, float(eta_prev), tol_abs=eta_tol, x_max=eta_max,
                                   warm=warm_factor, early=early_exit)
        kl = dual(eta)[0] if final_kl else math.nan
        return KLSolveResult(eta, kl, kl / eps, it, dual.n_evals - n0, True)
    if mode != "exact":
        raise ValueError(f"mode must be 'reference' or 'exact', got {mode!r}")
    if not rtol > 0:
        raise ValueError(f"rtol must be > 0, got {rtol}")
    pole, n_neg = dual.pole()
    lower = max(0.0, pole)
    lower_point = lower if lower == 0.0 else lower * (1 + 1e-8) + 1e-12
    r = solve_decreasing(dual, eps, lower=lower, lower_point=lower_point, start=float(eta_prev), rtol=rtol,
                         max_iter=max_iter)
    return KLSolveResult(r.x, r.f, r.f / eps, r.n_evals, dual.n_evals - n0, r.converged, inactive=r.at_lower,
                         bracket_failed=r.bracket_failed, eta_pole=lower, n_negative_h=n_neg)


def kl_mean(eta: float, mu: Any, a: Any, h: Any, p: Any, *, beta: float, prior_prec: float) -> Any:
    """Closed-form mean ``μ' = (ηpμ − a)/(h + βp0 + ηp)`` (arrays of one shape)."""
    c = h + beta * prior_prec
    return (eta * p * mu - a) / (c + eta * p)


def kl_precision(p: Any, h: Any, *, beta: float, prior_prec: float, nu: float) -> Any:
    """Precision update ``p' = (h + βp0 + νp)/(β + ν)``; ``ν = η`` gives the Lagrangian optimum."""
    return (h + beta * prior_prec + nu * p) / (beta + nu)


def kl_of_step(mu_new: Any, mu: Any, p: Any) -> float:
    """Mean part of ``KL(q'‖q)`` under the old precision: ``½ Σ p (μ' − μ)²`` (float64)."""
    xp = backend.get_namespace(mu_new, mu, p)
    d = (mu_new - mu).astype(np.float64)
    return 0.5 * float(xp.sum(p.astype(np.float64) * d * d))


def steady_state_eta(G: Sequence[Any] | Any, c: Any, *, beta: float, eps: float) -> float:
    """Steady-state oracle ``(1 + η/β)² = Σ G²/c / (2βε)``, exact when ``p = c/β``.

    Returns ``max(β(√(Σ G²/c/(2βε)) − 1), 0)``.
    """
    xp = backend.get_namespace(G, c)
    s = float(xp.sum(G.astype(np.float64) ** 2 / c.astype(np.float64)))
    return max(beta * (math.sqrt(s / (2 * beta * eps)) - 1.0), 0.0)
