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

Examples
--------
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
from ..linalg.results import ConvergenceError, Status, _g, _repr, warn_unconverged
from ._roots import _count, _number, bisect_reference, solve_decreasing

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
    (:func:`curvlab.kernels.kl_dual`), summed in float64, unless its η was stored
    by :meth:`prefetch` (several η in one pass, :func:`curvlab.kernels.kl_dual_multi`)
    or :meth:`seed` (values from a fused pass of the caller); ``n_evals`` counts
    calls, ``n_passes`` passes over the data and ``n_nan`` the calls that returned
    NaN (a corrupted state). :meth:`estimate_root` guesses the root from the
    stored values (the reference solver evaluates its predicted path ahead).
    ``dual(eta, domain_check=True)`` returns ``KL = +inf`` below any
    coordinate's pole (the exact solver's guard). The data are not copied nor
    scanned for NaN/Inf (that would cost a pass): a non-finite entry makes the
    dual NaN or +inf, which :func:`solve_kl` reports (``status``).
    Options are checked here (``beta, prior_prec ≥ 0`` finite, ``mscale``
    finite, ``h_min`` finite or None, ``impl`` one of ``kernels.IMPLS``).

    Host syncs: 0 on NumPy with the Numba kernels; on CuPy (or with
    ``impl="numpy"``/``"reference"``) 1 per block per call, and 1 per block
    for :meth:`pole`.

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
        for i, blocks in enumerate(zip(self.w, self.a, self.h, self.p)):
            for name, x in zip("wahp", blocks):
                if x.size != blocks[0].size or np.dtype(x.dtype) != np.dtype(blocks[0].dtype):
                    raise ValueError(f"{name}[{i}] must have the size and dtype of w[{i}] "
                                     f"({blocks[0].size}, {np.dtype(blocks[0].dtype)}), got "
                                     f"({x.size}, {np.dtype(x.dtype)})")
        beta = _number("beta (the prior weight)", beta, low=0.0)
        prior_prec = _number("prior_prec (the prior precision p0)", prior_prec, low=0.0)
        self.beta_p0 = beta * prior_prec
        self.mscale = _number("mscale", mscale)
        self.h_min = -math.inf if h_min is None else _number("h_min (the curvature floor)", h_min)
        self.impl = kernels.check_impl(impl)
        self.n_evals = 0
        self.n_passes = 0
        self.n_nan = 0
        self._cache: dict[tuple[float, bool], tuple[float, float]] = {}
        self._pole: tuple[float, int] | None = None

    def __call__(self, eta: float, *, domain_check: bool = False) -> tuple[float, float]:
        self.n_evals += 1
        key = (float(eta), bool(domain_check))
        hit = self._cache.get(key)
        if hit is None:
            self.n_passes += 1
            kl = dkl = 0.0
            for w, a, h, p in zip(self.w, self.a, self.h, self.p):
                k, d = kernels.kl_dual(eta, w, a, h, p, mscale=self.mscale, beta_p0=self.beta_p0, h_min=self.h_min,
                                       domain_check=domain_check, impl=self.impl)
                kl += k
                dkl += d
            hit = (kl, dkl)
        if hit[0] != hit[0]:
            self.n_nan += 1
        return hit

    def known(self, eta: float, *, domain_check: bool = False) -> bool:
        """Whether ``dual(eta)`` is stored (:meth:`prefetch`, :meth:`seed`): a call makes no pass."""
        return (float(eta), bool(domain_check)) in self._cache

    def prefetch(self, etas: Sequence[float], *, domain_check: bool = False) -> None:
        """Evaluate the dual at every η of ``etas`` in one pass per block
        (:func:`curvlab.kernels.kl_dual_multi`); later calls at these η read the stored values
        (they still count in ``n_evals``, which counts the values used). ``n_passes`` counts the
        passes over the data. The values are those of the arrays as they are now: after changing
        the arrays in place, build a new dual. Host syncs: 1 per block on CuPy."""
        todo = [float(e) for e in dict.fromkeys(etas) if not self.known(e, domain_check=domain_check)]
        if not todo:
            return
        self.n_passes += 1
        kl, dkl = np.zeros(len(todo)), np.zeros(len(todo))
        for w, a, h, p in zip(self.w, self.a, self.h, self.p):
            k, d = kernels.kl_dual_multi(todo, w, a, h, p, mscale=self.mscale, beta_p0=self.beta_p0,
                                         h_min=self.h_min, domain_check=domain_check, impl=self.impl)
            kl += k
            dkl += d
        self.seed(todo, kl, dkl, domain_check=domain_check)

    def seed(self, etas: Sequence[float], kl: Any, dkl: Any, *, domain_check: bool = False,
             pole: tuple[float, int] | None = None) -> None:
        """Store dual values (and the :meth:`pole`) computed by a fused pass
        (:func:`curvlab.kernels.arturo_prepare`) over exactly these data."""
        for e, k, d in zip(etas, kl, dkl):
            self._cache[(float(e), bool(domain_check))] = (float(k), float(d))
        if pole is not None:
            self._pole = (float(pole[0]), int(pole[1]))

    def estimate_root(self, eps: float) -> tuple[float, Any]:
        """A guess of η with ``KL(η) = eps`` from the stored values: a Newton step on ``KL^{-1/2}``
        (linear in η when ``c ∝ p``) from the stored value nearest the target, and that linear model
        ``η ↦ KL`` (or ``(NaN, None)`` when no stored value is usable). A guess only: it chooses
        which η to evaluate ahead, never the answer."""
        best, x, model = math.inf, math.nan, None
        for (e, _), (k, d) in self._cache.items():
            if not (0.0 < k < math.inf and d < 0.0 and math.isfinite(d)):
                continue
            gap = abs(math.log(k / eps))
            if gap < best:
                psi, dpsi = k ** -0.5, -0.5 * k ** -1.5 * d
                best, x = gap, e - (psi - eps ** -0.5) / dpsi

                def model(eta: float, e: float = e, psi: float = psi, dpsi: float = dpsi) -> float:
                    v = psi + dpsi * (eta - e)
                    return v ** -2 if v > 0 else math.inf

        return x, model

    def pole(self) -> tuple[float, int]:
        """``(max_j −c_j/p_j, #{h_j < 0})`` over all blocks (``−inf`` if empty)."""
        if self._pole is not None:
            return self._pole
        m, n = -math.inf, 0
        for h, p in zip(self.h, self.p):
            mm, nn = kernels.kl_pole(h, p, beta_p0=self.beta_p0, h_min=self.h_min, impl=self.impl)
            m, n = max(m, mm), n + nn
        self._pole = (m, n)
        return m, n


def _predicted_path(lo: float, hi: float, root: float, tol: float, cap: int = 24, model: Any = None,
                    eps: float = math.nan, early: float = 0.0) -> list[float]:
    """The midpoints :func:`bisect_reference` visits from ``[lo, hi]`` if its root is ``root``,
    and the midpoint of its final bracket (the returned η): what to evaluate ahead in one pass.
    With a ``model`` of ``η ↦ KL``, the path stops at the first midpoint the model puts well
    inside the early exit ``|KL − eps| < early·eps`` (at half that distance)."""
    mids: list[float] = []
    stop = math.inf
    while hi - lo > tol and len(mids) < cap and len(mids) < stop:
        mid = (lo + hi) / 2.0
        mids.append(mid)
        if model is not None and stop == math.inf and abs(model(mid) - eps) < 0.5 * early * eps:
            stop = len(mids)
        if mid < root:
            lo = mid
        else:
            hi = mid
    mids.append((lo + hi) / 2.0)
    return mids


@dataclasses.dataclass
class KLSolveResult:
    """Result of :func:`solve_kl`.

    ``eta`` the multiplier; ``kl`` the mean-KL at ``eta`` (NaN when not
    evaluated, see ``final_kl``); ``kl_ratio`` = ``kl/eps``; ``iterations``
    root-finder iterations (reference: bisection steps; exact: dual
    evaluations); ``n_evals`` dual evaluations; ``converged``; ``inactive``
    (exact mode: the unconstrained step is inside the region, η = η_pole);
    ``bracket_failed`` (exact mode: no upper bound within 60 expansions);
    ``eta_pole`` (exact mode; 0 without a pole); ``status`` (a
    :class:`curvlab.linalg.results.Status`; strings are converted): ``"converged"``,
    ``"max_iter"``, ``"breakdown"`` (``bracket_failed``), ``"nonfinite"``
    (the dual returned NaN: non-finite data) or ``"stagnated"`` (the
    tolerance is not attainable in float64; the returned η is the feasible
    end of the final bracket).
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
    status: Status | str = Status.CONVERGED

    def __post_init__(self) -> None:
        self.status = Status.of(self.status, "KLSolveResult.status")

    @property
    def all_converged(self) -> bool:
        """Same as ``converged`` (one multiplier)."""
        return bool(self.converged)

    def __repr__(self) -> str:
        return _repr(
            "KLSolveResult",
            [f"eta={_g(self.eta)}", f"kl={_g(self.kl)}", f"kl_ratio={_g(self.kl_ratio)}", f"eta_pole={_g(self.eta_pole)}",
             f"inactive={self.inactive}"],
            [f"status={Status.of(self.status).value!r}", f"n_evals={self.n_evals}", f"iterations={self.iterations}",
             f"bracket_failed={self.bracket_failed}", f"n_negative_h={self.n_negative_h}"],
        )


def solve_kl(dual: KLDual, eps: float, *, mode: str = "exact", eta_prev: float = -1.0, rtol: float = 1e-10,
             max_iter: int = 50, eta_tol: float = 0.5, eta_max: float = 1e4, warm_factor: float = 3.0,
             early_exit: float = 0.1, final_kl: bool = True, warn: bool = True,
             strict: bool = False) -> KLSolveResult:
    """Find η with ``KL(η) = eps`` for the arTuRO step (method inspired by arXiv 2310.20574).

    ``mode="reference"``: the official bisection — bracket ``[0, eta_max]``
    when ``eta_prev < 0`` else ``[eta_prev/3, min(3·eta_prev, eta_max)]``,
    absolute tolerance ``eta_tol``, early exit at ``|KL − ε| < 0.1ε``, returns
    the final bracket's midpoint (``final_kl`` adds one evaluation there).

    ``mode="exact"``: domain ``η > η_pole``; η = 0 (or just above the pole) when
    ``KL`` there is ≤ ε; otherwise safeguarded Newton on ``KL^{-1/2} − ε^{-1/2}``
    from the warm start ``eta_prev`` to ``|KL/ε − 1| ≤ rtol``. The dual is
    evaluated with ``domain_check=True``: any η at which some ``c_j + ηp_j < 0``
    (a negative precision) reads as ``KL = +inf``, so the answer lies above
    every coordinate's pole even if the pole pass were wrong. A pole of
    ``+inf`` (``p_j = 0`` with ``h_j + βp0 < 0``, or ``h_j = −inf``: no η is
    feasible) or NaN raises ``ValueError``. Next to the pole the dual itself
    loses accuracy (``c + ηp`` cancels): a root with
    ``2ε_mach·η/(η − η_pole) > rtol`` is returned with ``status="stagnated"``;
    ``inactive`` with a pole means KL ≤ ε down to the pole as resolved in float64.

    Non-finite data (policy): no scan is made; the search stops at the first
    NaN value of the dual with ``converged=False, status="nonfinite"``
    (reference mode: flagged the same way, after its fixed bisection, if any
    evaluation was NaN or ±inf).

    An unconverged result issues :class:`~curvlab.linalg.results.ConvergenceWarning`
    (``warn=False`` silences it; ``strict=True`` raises
    :class:`~curvlab.linalg.results.ConvergenceError` with the result attached).

    Host syncs (CuPy, or ``impl="numpy"``/``"reference"``): exact mode 1 per
    block for the pole + 1 per block per dual evaluation; reference mode 1 per
    block per evaluation (+1 evaluation with ``final_kl``). None otherwise.

    Raises ``ValueError`` naming the argument for ``eps``, ``rtol``, ``eta_prev``
    (NaN), ``max_iter``, ``eta_tol``, ``eta_max``, ``warm_factor``, ``early_exit``
    out of range or an unknown ``mode``.
    """
    if not (callable(dual) and hasattr(dual, "n_evals") and (mode != "exact" or hasattr(dual, "pole"))):
        raise TypeError(f"dual must be a KLDual (callable with n_evals and pole()), got {type(dual).__name__}")
    eps = _number("eps (the KL bound)", eps, low=0.0, strict=True)
    if mode not in ("reference", "exact"):
        raise ValueError(f"mode must be 'reference' or 'exact', got {mode!r}")
    eta_prev = _number("eta_prev (the previous η; < 0 for a cold start)", eta_prev)
    max_iter = _count("max_iter", max_iter)
    n0, nan0 = dual.n_evals, getattr(dual, "n_nan", 0)
    if mode == "reference":
        eta_tol = _number("eta_tol", eta_tol, low=0.0, strict=True)
        eta_max = _number("eta_max", eta_max, low=0.0, strict=True)
        warm_factor = _number("warm_factor", warm_factor, low=1.0)
        early_exit = _number("early_exit", early_exit, low=0.0)
        bad = []

        def kl_of(e: float) -> float:
            v = dual(e)[0]
            if not math.isfinite(v):
                bad.append(v)
            return v

        ahead = None
        if hasattr(dual, "prefetch") and hasattr(dual, "known"):
            def ahead(lo: float, hi: float) -> None:
                if not dual.known((lo + hi) / 2.0):  # evaluate the predicted rest of the path in one pass
                    root, model = dual.estimate_root(eps) if hasattr(dual, "estimate_root") else (math.nan, None)
                    if root != root:  # nothing stored yet: the warm start
                        root = eta_prev if lo < eta_prev < hi else (lo + hi) / 2.0
                    root = min(max(root, lo), hi)  # a root beyond the bracket: the path runs to that edge
                    dual.prefetch(_predicted_path(lo, hi, root, eta_tol, model=model, eps=eps, early=early_exit))

        eta, it = bisect_reference(kl_of, eps, eta_prev, tol_abs=eta_tol, x_max=eta_max, warm=warm_factor,
                                   early=early_exit, ahead=ahead)
        kl = kl_of(eta) if final_kl else math.nan
        ok = not bad and getattr(dual, "n_nan", 0) == nan0
        res = KLSolveResult(eta, kl, kl / eps, it, dual.n_evals - n0, ok, status="converged" if ok else "nonfinite")
        return _report(res, warn, strict)
    rtol = _number("rtol", rtol, low=0.0, strict=True)
    pole, n_neg = dual.pole()
    if not pole < math.inf:
        raise ValueError(f"h, p (the dual's curvature and precision) admit no feasible η: the pole "
                         f"max_j −(h_j + βp0)/p_j is {pole} (a coordinate with p_j = 0 and h_j + βp0 < 0, "
                         "or h_j = −inf; or the pole kernel failed)")
    lower = max(0.0, pole)
    lower_point = lower if lower == 0.0 else lower * (1 + 1e-8) + 1e-12
    r = solve_decreasing(lambda e: dual(e, domain_check=True), eps, lower=lower, lower_point=lower_point,
                         start=eta_prev, rtol=rtol, max_iter=max_iter)
    if r.converged and not r.at_lower and lower > 0:
        # next to a pole, c_j + ηp_j cancels: its rounding error ε·ηp_j is relative ε·η/(η − η_pole) (at
        # most, over all j), and KL ∝ (c + ηp)^-2 doubles it; a tolerance below that is not attained
        attainable = 2.0 * np.finfo(np.float64).eps * r.x / (r.x - lower)
        if attainable > rtol:
            r.converged, r.status = False, "stagnated"
    res = KLSolveResult(r.x, r.f, r.f / eps, r.n_evals, dual.n_evals - n0, r.converged, inactive=r.at_lower,
                        bracket_failed=r.bracket_failed, eta_pole=lower, n_negative_h=n_neg, status=r.status)
    return _report(res, warn, strict)


def _report(res: KLSolveResult, warn: bool, strict: bool) -> KLSolveResult:
    if not res.converged:
        msg = (f"status {Status.of(res.status).value!r} after {res.n_evals} dual evaluations: η = {res.eta:.6g}, "
               f"KL/ε = {res.kl_ratio:.6g}")
        if strict:
            raise ConvergenceError(f"solve_kl: {msg}", res)
        warn_unconverged("solve_kl", msg, warn=warn, stacklevel=4)
    return res


def kl_mean(eta: float, mu: Any, a: Any, h: Any, p: Any, *, beta: float, prior_prec: float) -> Any:
    """Closed-form mean ``μ' = (ηpμ − a)/(h + βp0 + ηp)`` (arrays of one shape)."""
    c = h + beta * prior_prec
    return (eta * p * mu - a) / (c + eta * p)


def kl_precision(p: Any, h: Any, *, beta: float, prior_prec: float, nu: float) -> Any:
    """Precision update ``p' = (h + βp0 + νp)/(β + ν)``; ``ν = η`` gives the Lagrangian optimum."""
    return (h + beta * prior_prec + nu * p) / (beta + nu)


def kl_of_step(mu_new: Any, mu: Any, p: Any) -> float:
    """Mean part of ``KL(q'‖q)`` under the old precision: ``½ Σ p (μ' − μ)²`` (float64). Host syncs: 1."""
    xp = backend.get_namespace(mu_new, mu, p)
    d = (mu_new - mu).astype(np.float64)
    return 0.5 * float(xp.sum(p.astype(np.float64) * d * d))


def steady_state_eta(G: Any, c: Any, *, beta: float, eps: float) -> float:
    """Steady-state oracle ``(1 + η/β)² = Σ G²/c / (2βε)``, exact when ``p = c/β``.

    Returns ``max(β(√(Σ G²/c/(2βε)) − 1), 0)``. Host syncs: 1.
    """
    xp = backend.get_namespace(G, c)
    s = float(xp.sum(G.astype(np.float64) ** 2 / c.astype(np.float64)))
    return max(beta * (math.sqrt(s / (2 * beta * eps)) - 1.0), 0.0)
