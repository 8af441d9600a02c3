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

from .results import ConvergenceError, DiagonalEstimate, TraceEstimate, warn_unconverged


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
    least 4 (with 2 or 3 probes the jackknife error bar covered only 85–88%
    of runs on a flat spectrum at n = 8). Adaptive run: ``s = 8, 16, ...``
    (at most ``n``) while the total work stays within ``cap``; at least one
    round.
    """
    if tgt is None:
        s = min(cap // 2, n)
        if s < 4:
            raise ValueError(
                f"{who} needs n_matvecs >= 8 (4 probes, for an honest jackknife error bar) or >= n = {n} "
                f"(the exact answer), got {cap}"
            )
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
    """How a round is recorded (``entry(est, se, samples)``, a history dict without ``n_matvecs``),
    its relative error (``rel(est, se, samples)``) and when the target is met (``met(est, se, samples, target)``)."""

    entry: Callable[[Any, Any, Any], dict[str, Any]]
    rel: Callable[[Any, Any, Any], float]

    def met(self, est: Any, se: Any, samples: Any, tgt: float) -> bool:
        return self.rel(est, se, samples) <= tgt


#: scalar estimates: history ``{"estimate", "std_error"}``; target met when ``se <= target |estimate|``
TRACE = Rule(
    entry=lambda est, se, samples: {"estimate": est, "std_error": se},
    rel=lambda est, se, samples: abs(se) / max(abs(est), 1e-300),
)


def diagonal_rule(xp: Any) -> Rule:
    """Vector estimates: history ``{"rel_std_error"}``; target met when ``‖se‖₂ <= target ‖estimate‖₂``.

    A round's ``samples`` may carry that ratio already read to the host (a
    float, so the round costs no extra sync); otherwise it is computed.
    """

    def rel(est: Any, se: Any, samples: Any) -> float:
        return float(samples) if isinstance(samples, float) else rel_norm(xp, se, est)

    return Rule(entry=lambda est, se, samples: {"rel_std_error": rel(est, se, samples)}, rel=rel)


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
    exact: bool = False
    stopped: bool = False  # a callback ended the rounds early

    def _common(self) -> dict[str, Any]:
        extra = {"status": "max_iter"} if self.stopped else {}
        return {
            **extra,
            "estimate": self.estimate,
            "std_error": self.std_error,
            "n_matvecs": self.n_matvecs,
            "converged": self.converged,
            "history": self.history,
            "message": self.message,
            "exact": self.exact,
        }

    def trace_estimate(self, method: str) -> TraceEstimate:
        return TraceEstimate(method=method, samples=self.samples, **self._common())

    def diagonal_estimate(self, method: str) -> DiagonalEstimate:
        return DiagonalEstimate(method=method, **self._common())


def stochastic_cap(cap: int, tgt: float | None, n: int) -> int | None:
    """The matvecs the stochastic rounds may use, or None: compute exactly now.

    With a fixed budget (``tgt`` None) a budget ``cap >= n`` buys the exact
    answer (``n`` unit-vector products), so None. In an adaptive run the
    probes may use at most ``min(cap, n - 1)`` matvecs; should they miss the
    target, :func:`with_exact_fallback` still computes exactly when ``n``
    matvecs remain in the cap.
    """
    if tgt is None:
        return None if cap >= n else cap
    return min(cap, n - 1)


def with_exact_fallback(res: Rounds, cap: int, n: int, exact: Callable[[], Any], rule: Rule, record: bool) -> Rounds:
    """``res`` unless it missed its target and ``n`` matvecs remain in ``cap``: then the exact answer.

    ``exact()`` returns ``(estimate, std_error)`` from ``n`` unit-vector
    products; the matvecs of the stochastic rounds stay counted.
    """
    if res.converged or res.stopped or cap - res.n_matvecs < n:
        return res
    return exact_rounds(exact, n, rule, record, used=res.n_matvecs, history=res.history)


def exact_rounds(
    exact: Callable[[], Any], n: int, rule: Rule, record: bool, *, used: int = 0, history: list[dict[str, Any]] | None = None
) -> Rounds:
    """A :class:`Rounds` for the exact answer ``exact() -> (estimate, std_error)`` (``n`` matvecs after ``used``)."""
    est, se = exact()
    used += n
    if record:
        history = list(history or [])
        history.append({"n_matvecs": used, **rule.entry(est, se, None)})
    return Rounds(est, se, None, used, True, history, f"computed exactly with {n} unit-vector products (budget >= n); std_error 0", True)


def finish(result: Any, who: str, warn: bool, strict: bool) -> Any:
    """Return ``result``; if it did not converge, raise :class:`ConvergenceError` (``strict``) or warn (``warn``)."""
    if not result.converged:
        if strict:
            raise ConvergenceError(f"{who}: {result.message}", result)
        warn_unconverged(who, result.message, warn=warn, stacklevel=4)
    return result


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
    cap: int | None = None,
    mon: Any = None,
) -> Rounds:
    """Run ``step(size, used)`` for each round size until the target is met.

    ``step`` gets the round's size and the matvecs counted so far including
    this round (``used`` to start with, plus ``cost * size`` per round) and
    returns ``(estimate, std_error, samples)``. Without a target (``tgt``
    None) every round runs and the result counts as converged; with one, the
    loop stops as soon as ``rule.met`` holds after at least ``min_rounds``
    rounds, else the result is unconverged with a message naming the budget
    ``cap``. ``sizes`` must yield at least one round.

    ``mon`` (a :class:`~curvlab.linalg._progress.Monitor`) is told of every
    round (``n_matvecs``, ``round_size`` and the rule's history entry:
    ``estimate``/``std_error`` or ``rel_std_error``); when its callback asks
    to stop, the rounds end there, unconverged (status "max_iter").
    """
    history: list[dict[str, Any]] | None = [] if record else None
    converged = tgt is None
    est = se = samples = None
    for i, size in enumerate(sizes, 1):
        used += cost * size
        est, se, samples = step(size, used)
        if history is not None:
            history.append({"n_matvecs": used, **rule.entry(est, se, samples)})
        if mon is not None and mon.active and mon.update(n_matvecs=used, round_size=size, **rule.entry(est, se, samples)):
            if not (tgt is not None and i >= min_rounds and rule.met(est, se, samples, tgt)):
                return Rounds(est, se, samples, used, False, history, f"{mon.message}: the estimate uses fewer probes "
                              "than asked (its error bar is that of the probes used)", stopped=True)
        if tgt is not None and i >= min_rounds and rule.met(est, se, samples, tgt):
            converged = True
            break
    if tgt is None:
        message = ""
    elif converged:
        message = "target met"
    else:
        message = (
            f"budget exhausted: {used} matvecs (cap {cap if cap is not None else used}) left the relative "
            f"error {rule.rel(est, se, samples):.3g} above target_rel_error = {tgt:g}"
        )
    return Rounds(est, se, samples, used, converged, history, message)
