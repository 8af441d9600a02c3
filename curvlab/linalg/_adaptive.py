"""Adaptive probe rounds shared by the stochastic trace and diagonal estimators (private).

Every estimator of :mod:`curvlab.linalg.trace` and :mod:`curvlab.linalg.diagonal`
runs the same loop: a schedule of rounds (probe blocks for Hutchinson and
Hutch++, doubling sketches for XTrace and XDiag), each round giving a new
estimate and standard error; the matvecs are counted, an optional history is
recorded, and the loop stops once the target relative error is met (after
``min_rounds`` rounds) or the schedule is exhausted. :func:`run_rounds` is
that loop; a :class:`Rule` says how a round is recorded and what "target met"
means for a scalar (trace) or a vector (diagonal) estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from .results import DiagonalEstimate, TraceEstimate


def blocks(total: int, size: int) -> Iterator[int]:
    """Sizes of consecutive probe blocks: ``size`` each, the last one cut so they sum to ``total``."""
    used = 0
    while used < total:
        b = min(size, total - used)
        yield b
        used += b


def doubling_rounds(who: str, cap: int, tgt: float | None, n: int) -> list[int]:
    """Sketch sizes ``s`` of the XTrace/XDiag rounds (``2 s`` matvecs each).

    Fixed budget (``tgt`` None): one round with ``s = min(cap // 2, n)``, at
    least 2. Adaptive run: ``s = 8, 16, ...`` (at most ``n``) while the total
    work stays within ``cap``; at least one round.
    """
    if tgt is None:
        s = min(cap // 2, n)
        if s < 2:
            raise ValueError(f"{who} needs n_matvecs >= 4, got {cap}")
        return [s]
    rounds, s, tot = [], 8, 0
    while s <= n and tot + 2 * s <= cap:
        rounds.append(s)
        tot += 2 * s
        s *= 2
    if not rounds:
        raise ValueError(f"{who} needs max_matvecs >= 16 for an adaptive run, got {cap}")
    return rounds


def rel_norm(xp: Any, se: Any, est: Any) -> float:
    """``‖se‖₂ / ‖est‖₂`` (the denominator floored at 1e-300)."""
    return float(xp.linalg.norm(se)) / max(float(xp.linalg.norm(est)), 1e-300)


@dataclass(frozen=True)
class Rule:
    """How a round is recorded (``entry(est, se)``, a history dict without ``n_matvecs``)
    and when the target is met (``met(est, se, target)``)."""

    entry: Callable[[Any, Any], dict[str, Any]]
    met: Callable[[Any, Any, float], bool]


#: scalar estimates: history ``{"estimate", "std_error"}``; target met when ``se <= target |estimate|``
TRACE = Rule(
    entry=lambda est, se: {"estimate": est, "std_error": se},
    met=lambda est, se, tgt: se <= tgt * abs(est),
)


def diagonal_rule(xp: Any) -> Rule:
    """Vector estimates: history ``{"rel_std_error"}``; target met when ``‖se‖₂ <= target ‖estimate‖₂``."""
    return Rule(
        entry=lambda est, se: {"rel_std_error": rel_norm(xp, se, est)},
        met=lambda est, se, tgt: rel_norm(xp, se, est) <= tgt,
    )


@dataclass
class Rounds:
    """Outcome of :func:`run_rounds`: the last round's values and the bookkeeping."""

    estimate: Any
    std_error: Any
    samples: Any
    n_matvecs: int
    converged: bool
    history: list[dict[str, Any]] | None
    message: str

    def _common(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "std_error": self.std_error,
            "n_matvecs": self.n_matvecs,
            "converged": self.converged,
            "history": self.history,
            "message": self.message,
        }

    def trace_estimate(self, method: str) -> TraceEstimate:
        return TraceEstimate(method=method, samples=self.samples, **self._common())

    def diagonal_estimate(self, method: str) -> DiagonalEstimate:
        return DiagonalEstimate(method=method, **self._common())


def run_rounds(
    sizes: Iterable[int],
    step: Callable[[int, int], tuple[Any, Any, Any]],
    tgt: float | None,
    rule: Rule,
    *,
    record: bool = False,
    cost: int = 1,
    used: int = 0,
    min_rounds: int = 1,
) -> Rounds:
    """Run ``step(size, used)`` for each round size until the target is met.

    ``step`` gets the round's size and the matvecs counted so far including
    this round (``used`` to start with, plus ``cost * size`` per round) and
    returns ``(estimate, std_error, samples)``. Without a target (``tgt``
    None) every round runs and the result counts as converged; with one, the
    loop stops as soon as ``rule.met`` holds after at least ``min_rounds``
    rounds. ``sizes`` must yield at least one round.
    """
    history: list[dict[str, Any]] | None = [] if record else None
    converged = tgt is None
    est = se = samples = None
    for i, size in enumerate(sizes, 1):
        used += cost * size
        est, se, samples = step(size, used)
        if history is not None:
            history.append({"n_matvecs": used, **rule.entry(est, se)})
        if tgt is not None and i >= min_rounds and rule.met(est, se, tgt):
            converged = True
            break
    message = "target met" if (tgt is not None and converged) else ("budget exhausted" if tgt is not None else "")
    return Rounds(est, se, samples, used, converged, history, message)
