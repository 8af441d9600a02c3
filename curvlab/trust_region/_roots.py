"""Scalar root-finding shared by the KL and l2 trust regions.

Both problems look for the multiplier ``x`` at which a positive, strictly
decreasing function ``F`` (the mean-KL of the step, or ``½‖s‖²``) meets a
target ``t``, on a domain ``(lower, ∞)`` that may start at a pole.

- :func:`solve_decreasing` — safeguarded Newton on ``ψ(x) = F^{-1/2} − t^{-1/2}``
  (exactly linear when every term has the same pole, so one step solves that
  case), with bracket expansion, geometric/arithmetic bisection as the fallback,
  and the "inactive" exit when ``F(lower_point) ≤ t``.
- :func:`bisect_reference` — the fixed-tolerance bisection of the official arTuRO
  code (cold/warm bracket, early exit, final-bracket midpoint).

``fun(x)`` returns ``(F, dF/dx)`` for the Newton solver and is called once per
iteration (its count is ``n_evals``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable

import numpy as np

from ..linalg.results import Status

__all__ = ["RootResult", "solve_decreasing", "bisect_reference"]


@dataclasses.dataclass
class RootResult:
    """Outcome of a scalar root-finder.

    ``x`` the multiplier; ``f`` = ``F(x)`` (NaN if not evaluated there);
    ``n_evals`` calls of ``F``; ``converged`` the tolerance ``|F/t − 1| ≤ rtol``
    holds at ``x`` (or the constraint is inactive); ``at_lower`` the answer is
    the domain's lower point (inactive constraint or, with a pole, the hard
    case); ``bracket_failed`` no upper bound found; ``status`` a
    :class:`curvlab.linalg.results.Status` (strings are converged): ``"converged"``,
    ``"max_iter"``, ``"breakdown"`` (no upper bound found: ``bracket_failed``),
    ``"nonfinite"`` (F returned NaN) and ``"stagnated"`` (the bracket shrank to
    rounding level before the tolerance was met: the tolerance is not
    attainable in float64).
    """

    x: float
    f: float
    n_evals: int
    converged: bool
    at_lower: bool = False
    bracket_failed: bool = False
    status: Status | str = Status.CONVERGED

    def __post_init__(self) -> None:
        self.status = Status.of(self.status, "RootResult.status")

    @property
    def all_converged(self) -> bool:
        """Same as ``converged`` (one root)."""
        return bool(self.converged)


def _number(name: str, v: Any, *, low: float = -math.inf, strict: bool = False, finite: bool = True) -> float:
    """``float(v)``, or a ``ValueError`` naming ``name`` unless it is a number (finite) ``>``/``>= low``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    x = float(v)
    bad = x != x or (finite and not math.isfinite(x)) or (x <= low if strict else x < low)
    if bad:
        what = ("a finite number" if finite else "a number") + (f" {'>' if strict else '>='} {low}"
                                                                 if low > -math.inf else "")
        raise ValueError(f"{name} must be {what}, got {v!r}")
    return x


def _count(name: str, v: Any, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


def solve_decreasing(fun: Callable[[float], tuple[float, float]], target: float, *, lower: float,
                     lower_point: float, start: float | None = None, rtol: float = 1e-10,
                     max_iter: int = 50, max_expand: int = 60, xtol: float = 1e-12) -> RootResult:
    """Solve ``F(x) = target`` for ``F`` strictly decreasing on ``(lower, ∞)``.

    ``lower_point`` (≥ ``lower``) is the first point tried at the domain's
    edge; if ``F(lower_point) ≤ target`` the answer is ``lower_point``
    (``at_lower``) when ``lower_point == lower``. With a gap (a pole at
    ``lower``, F possibly infinite there) the search goes on in
    ``(lower, lower_point)`` and answers ``at_lower`` only if F stays below the
    target down to the edge as resolved in float64 (a few ulps, or F = +inf
    below: outside the domain by rounding). ``start`` is the warm start
    (ignored unless > ``lower``).
    Stops when ``|F/target − 1| ≤ rtol``, when the bracket is narrower than
    ``xtol·(hi − lower)`` or 4 ulps (returns the feasible end ``hi``, converged
    only if the tolerance holds there, else ``status="stagnated"``), at the
    first NaN value of ``F`` (``"nonfinite"``), or after ``max_iter``
    evaluations (``converged=False``; ``bracket_failed`` too if no upper end
    was found, as after ``max_expand`` expansions). ``F = +inf`` counts as
    above the target (outside the domain).

    >>> r = solve_decreasing(lambda x: (1 / (1 + x) ** 2, -2 / (1 + x) ** 3), 0.25, lower=0.0, lower_point=0.0)
    >>> round(r.x, 12), r.converged
    (1.0, True)
    """
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target}")
    lo, lo_ok, f_lo = lower, False, math.nan
    hi, f_hi = math.inf, math.nan
    tried_lower = False
    x = start if (start is not None and start > lower and math.isfinite(start)) else lower_point
    n = 0
    n_expand = 0
    prev_step = math.inf
    s_t = target ** -0.5
    while True:
        F, dF = fun(x)
        n += 1
        if F != F:  # NaN: the function is broken (e.g. a corrupted state); give up at once
            return RootResult(x, F, n, False, status="nonfinite")
        if x <= lower_point:
            tried_lower = True
            if F <= target and lower_point <= lower:
                return RootResult(lower_point, F, n, True, at_lower=True)
        if abs(F / target - 1.0) <= rtol:
            return RootResult(x, F, n, True)
        if F > target:
            lo, lo_ok, f_lo = x, True, F
        else:
            hi, f_hi = x, F
        if n >= max_iter:
            if math.isfinite(hi):
                return RootResult(hi, f_hi, n, False, status="max_iter")
            return RootResult(x, F, n, False, bracket_failed=True, status="breakdown")
        # bracket collapsed: relative to the distance from the domain's edge (a pole makes F steep
        # there), or to a few ulps; converged only if the tolerance holds at the returned end
        if math.isfinite(hi) and (hi - lo <= xtol * (hi - lower) or hi - lo <= 4 * math.ulp(hi)):
            if not lo_ok or f_lo == math.inf:  # collapsed onto the domain's edge: inactive up to the edge
                return RootResult(hi, f_hi, n, True, at_lower=True)
            ok = abs(f_hi / target - 1.0) <= rtol
            return RootResult(hi, f_hi, n, ok, status="converged" if ok else "stagnated")
        cand = math.nan
        if 0.0 < F < math.inf and dF < 0.0 and math.isfinite(dF):
            dpsi = -0.5 * F ** -1.5 * dF
            if dpsi > 0.0:
                cand = x - (F ** -0.5 - s_t) / dpsi
        if math.isinf(hi):
            n_expand += 1
            if n_expand > max_expand:
                return RootResult(x, F, n, False, bracket_failed=True, status="breakdown")
            grow = max(4.0 * x, 1.0)
            if not (math.isfinite(cand) and cand > x):
                cand = grow
            x = cand
        elif not lo_ok and not tried_lower and not (lo < cand < hi):
            x = lower_point
        else:
            # Newton while its steps at least halve; otherwise (or outside the bracket) bisect,
            # geometrically in the distance from the domain's edge when the bracket spans decades
            # (a root next to a pole, as in the near-hard case, is then found in O(log log) steps)
            if not (lo < cand < hi) or abs(cand - x) > 0.5 * prev_step:
                a, b = lo - lower, hi - lower
                if lo > 0.0 and hi > 4.0 * lo and lower <= 0.0:
                    cand = math.sqrt(lo * hi)
                elif b > 4.0 * a:
                    cand = lower + math.sqrt(max(a, 1e-16 * b) * b)
                else:
                    cand = 0.5 * (lo + hi)
                if not lo < cand < hi:  # below the resolution next to the edge: probe a few ulps above lo
                    cand = lo + 2.0 * math.ulp(hi)
                if not lo < cand < hi:
                    cand = 0.5 * (lo + hi)
                prev_step = math.inf
            else:
                prev_step = abs(cand - x)
            x = cand


def bisect_reference(fun: Callable[[float], float], target: float, x_prev: float, *, tol_abs: float = 0.5,
                     x_max: float = 1e4, warm: float = 3.0, early: float = 0.1,
                     ahead: Callable[[float, float], None] | None = None) -> tuple[float, int]:
    """The official arTuRO bisection; returns ``(x, iterations)``.

    Bracket ``[0, x_max]`` when ``x_prev < 0`` (cold), else
    ``[x_prev/warm, min(warm·x_prev, x_max)]`` (never expanded). While the
    width exceeds ``tol_abs``: ``D = F(mid) − target``, ``lo = mid`` if
    ``D > 0`` else ``hi = mid``, then stop if ``|D| < early·target``.
    Returns the midpoint of the final bracket. ``ahead(lo, hi)``, if given, is called before each
    evaluation with the current bracket (to evaluate the rest of the path in one pass); it must
    not change what ``fun`` returns.

    >>> bisect_reference(lambda x: 1.0, 2.0, -1.0)     # constraint inactive, cold start
    (0.152587890625, 15)
    """
    if x_prev < 0:
        lo, hi = 0.0, x_max
    else:
        lo, hi = x_prev / warm, min(warm * x_prev, x_max)
    it = 0
    while hi - lo > tol_abs:
        mid = (lo + hi) / 2.0
        if ahead is not None:
            ahead(lo, hi)
        D = fun(mid) - target
        it += 1
        if D > 0:
            lo = mid
        else:
            hi = mid
        if abs(D) < early * target:
            break
    return (lo + hi) / 2.0, it
