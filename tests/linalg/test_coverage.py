"""Coverage of the reported error bars: every stochastic estimator, many seeds, known answers.

For each case the estimator runs once per seed on an operator with a
prescribed spectrum (:mod:`curvlab.linalg.testing`), and the interval
``estimate ± 2 std_error`` must hold the exact answer in at least 90% of the
seeds (nominal ~95%); for a diagonal, the per-entry coverage is averaged over
entries and seeds. A run that reports itself unresolved (``converged`` false)
counts as a miss, so an estimator cannot buy coverage by giving up. Sizes go
down to n = 8..12 (where a budget near n used to give 6+ error bars of error
with an error bar of 1e-15) and condition numbers up to 1e4 (where SLQ's
quadrature bias used to be ~6 standard errors, reported converged).

``benchmarks/run_coverage.py`` prints the same table.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

from curvlab.linalg import (
    ConvergenceWarning,
    DenseOperator,
    StochasticOperator,
    hutchinson,
    hutchinson_diagonal,
    hutchpp,
    slq,
    slq_logdet,
    slq_trace_inverse,
    stochastic_power,
    xdiag,
    xtrace,
)
from curvlab.linalg.testing import named_spectrum, prescribed_spectrum_operator

N_SEEDS = 120
MIN_COVERAGE = 0.90


def spectrum(name: str, n: int) -> np.ndarray:
    """A named spectrum of :mod:`curvlab.linalg.testing`, or ``"cond1eK"``: ``n`` log-spaced values in ``[1, 10^K]``."""
    if name.startswith("cond1e"):
        return np.logspace(0.0, float(name[6:]), n)
    return named_spectrum(name, n)


@dataclass(frozen=True)
class Case:
    """One coverage case: ``run(op, seed)`` gives ``(estimate, std_error, converged)``; ``truth(λ, A)`` the exact answer."""

    estimator: str
    spectrum: str
    n: int
    params: str
    run: Callable[[Any, int], tuple[Any, Any, bool]]
    truth: Callable[[np.ndarray, np.ndarray], Any]
    diagonal: bool = False

    @property
    def id(self) -> str:
        return f"{self.estimator}-{self.spectrum}-n{self.n}-{self.params}"


def _trace_case(f: Callable[..., Any], name: str, n: int, budget: int) -> Case:
    def run(op: Any, seed: int) -> tuple[Any, Any, bool]:
        r = f(op, budget, rng=seed)
        return r.estimate, r.std_error, r.converged

    return Case(f.__name__, name, n, f"budget {budget}", run, lambda lam, A: lam.sum())


def _diag_case(f: Callable[..., Any], name: str, n: int, budget: int) -> Case:
    def run(op: Any, seed: int) -> tuple[Any, Any, bool]:
        r = f(op, budget, rng=seed)
        return r.estimate, r.std_error, r.converged

    return Case(f.__name__, name, n, f"budget {budget}", run, lambda lam, A: np.diag(A), diagonal=True)


def _slq_case(label: str, fn: Callable[[np.ndarray], np.ndarray], name: str, n: int, P: int, m: int, **kw: Any) -> Case:
    """SLQ of ``tr fn(A)``: ``slq_logdet``/``slq_trace_inverse`` by label, else ``slq(...).trace(fn)``."""

    def run(op: Any, seed: int) -> tuple[Any, Any, bool]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # unresolved results are counted as misses
            if label == "slq_logdet":
                r = slq_logdet(op, P, m, rng=seed, **kw)
            elif label == "slq_trace_inverse":
                r = slq_trace_inverse(op, P, m, rng=seed, **kw)
            else:
                r = slq(op, P, m, rng=seed).trace(fn)
        return r.estimate, r.std_error, r.converged

    params = f"P {P}, m {m}" + (", lambda_min" if kw else "")
    return Case(label, name, n, params, run, lambda lam, A: fn(lam).sum())


def _stochastic_power_case(name: str, n: int, noise: float, steps: int, deterministic: bool = False) -> Case:
    """Top eigenvalue of ``E[A_t]`` with ``A_t = M + noise (E + Eᵀ)``, ``E`` Gaussian (a fresh batch per product).

    ``noise = 0`` keeps the stochastic wrapper around one fixed matrix (the bars used to sit at rounding
    level, coverage 0); ``deterministic`` passes ``M`` itself (plain power steps).
    """

    def run(op: Any, seed: int) -> tuple[Any, Any, bool]:
        M = op.to_dense()
        if deterministic:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                r = stochastic_power(DenseOperator(M, symmetric=True), steps, rng=seed)
            return r.eigenvalue, r.std_error, r.converged

        def make(b: Any) -> DenseOperator:
            return DenseOperator(M + b, symmetric=True)

        def sample(rng: Any) -> np.ndarray:
            E = rng.standard_normal((n, n))
            return noise * (E + E.T)

        sop = StochasticOperator(make, sample, rng=10_000 + seed, shape=(n, n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            r = stochastic_power(sop, steps, rng=seed)
        return r.eigenvalue, r.std_error, r.converged

    params = "deterministic" if deterministic else f"noise {noise}"
    return Case("stochastic_power", name, n, f"{params}, {steps} steps", run, lambda lam, A: lam.max())


CASES: list[Case] = []
for _f in (hutchinson, hutchpp, xtrace):
    CASES += [
        _trace_case(_f, "decaying", 100, 30),
        _trace_case(_f, "uniform", 60, 20),
        _trace_case(_f, "indefinite", 80, 24),
        _trace_case(_f, "decaying", 10, 8),
        _trace_case(_f, "indefinite", 12, 8),
    ]  # (a budget >= n is exact: tests/linalg/test_estimators.py::test_trace_budget_n_is_exact)
for _f in (hutchinson_diagonal, xdiag):
    CASES += [
        _diag_case(_f, "decaying", 100, 30),
        _diag_case(_f, "uniform", 60, 20),
        _diag_case(_f, "indefinite", 80, 24),
        _diag_case(_f, "decaying", 10, 8),
        _diag_case(_f, "indefinite", 12, 8),
    ]
CASES += [
    _slq_case("slq trace(A)", lambda t: t, "indefinite", 60, 10, 8),
    _slq_case("slq trace(A²)", np.square, "indefinite", 60, 10, 10),
    _slq_case("slq_logdet", np.log, "uniform", 80, 10, 10),
    _slq_case("slq_logdet", np.log, "decaying", 80, 10, 15),
    _slq_case("slq_logdet", np.log, "cond1e4", 100, 10, 30),  # issue 11: was ~6 standard errors off
    _slq_case("slq_logdet", np.log, "cond1e4", 100, 10, 30, lambda_min=0.99),
    _slq_case("slq_trace_inverse", lambda t: 1.0 / t, "uniform", 80, 10, 10),
    _slq_case("slq_trace_inverse", lambda t: 1.0 / t, "decaying", 80, 10, 20),
    _slq_case("slq_trace_inverse", lambda t: 1.0 / t, "cond1e2", 100, 10, 30),
    _slq_case("slq_trace_inverse", lambda t: 1.0 / t, "cond1e4", 100, 10, 30, lambda_min=0.99),
]
CASES += [  # issue 12: the bar was the Rayleigh quotients' spread only (coverage 0.69 with noise, 0 without)
    _stochastic_power_case("large_gap", 40, 0.3, 300),
    _stochastic_power_case("large_gap", 40, 0.0, 300),
    _stochastic_power_case("large_gap", 40, 0.0, 300, deterministic=True),
    _stochastic_power_case("decaying", 40, 0.1, 200),
]

#: stochastic_power's bias bound assumes the vector has cos² >= ½ with the top eigenvector; a cluster of
#: near-equal top eigenvalues (10, 10.01, ..., 10.04) leaves it spread over the cluster after 200 steps:
#: coverage ~0.67, 13% confident misses of ~1e-3 relative (no gap-free bound exists; see power.py)
KNOWN_UNDERCOVERED: list[Case] = [_stochastic_power_case("clustered", 40, 0.0, 200, deterministic=True)]

#: reported by benchmarks/run_coverage.py, not asserted: ``tr exp(A)`` with one eigenvalue (e⁸) dominating
#: makes every probe value ~ e⁸ χ²₁, so the sample mean is skewed and the Student-t interval covers ~0.89
#: over 300 seeds (0.917 over the first 60), with P = 10 or 30 alike; deflation (Hutch++/XTrace) is the cure
SKEWED = [_slq_case("slq trace(exp A)", np.exp, "indefinite", 60, 10, 10)]


def coverage(case: Case, n_seeds: int = N_SEEDS) -> tuple[float, float, float]:
    """``(coverage, fraction converged, median std_error / |truth|)`` of ``case`` over ``n_seeds`` seeds.

    A seed whose result is unconverged counts as a miss.
    """
    ps = prescribed_spectrum_operator(spectrum(case.spectrum, case.n), rng=0)
    lam = ps.eigenvalues
    A = ps.operator.to_dense()
    truth = case.truth(lam, A)
    hits, conv, rel = [], [], []
    for seed in range(n_seeds):
        est, se, ok = case.run(ps.operator, seed)
        est, se = np.asarray(est, dtype=np.float64), np.asarray(se, dtype=np.float64)
        inside = np.abs(est - truth) <= 2.0 * se
        hits.append(float(np.mean(inside)) if ok else 0.0)
        conv.append(bool(ok))
        rel.append(float(np.linalg.norm(np.atleast_1d(se)) / max(np.linalg.norm(np.atleast_1d(truth)), 1e-300)))
    return float(np.mean(hits)), float(np.mean(conv)), float(np.median(rel))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_two_standard_error_coverage(case):
    cov, conv, _ = coverage(case)
    assert cov >= MIN_COVERAGE, f"{case.id}: 2-standard-error coverage {cov:.2f} < {MIN_COVERAGE} ({conv:.2f} of the runs converged)"


def test_stochastic_power_reports_the_true_residual_and_bounds_by_it():
    """Deterministic operator: ``residual_norm`` is the true ``‖Av − θv‖`` and the bar is at least ``√2‖Av − θv‖/2``."""
    ps = prescribed_spectrum_operator(spectrum("large_gap", 40), rng=0)
    M = ps.operator.to_dense()
    for seed in range(5):
        r = stochastic_power(DenseOperator(M, symmetric=True), 60, rng=seed, warn=False)
        v = r.eigenvector
        true_res = np.linalg.norm(M @ v - (v @ M @ v) * v)
        assert abs(r.residual_norm - true_res) <= 1e-9 * np.abs(M).max()
        if r.converged:
            assert r.bias_bound >= np.sqrt(2) * true_res * (1 - 1e-12) and r.std_error >= r.bias_bound / 2


def test_stochastic_power_unaligned_vector_is_flagged_not_confident():
    """Tiny gap (1 vs 0.999), 300 power steps: the vector is often still a mix of the top two eigenvectors. Such
    runs must be flagged "unresolved" (Rayleigh quotients still rising faster than geometrically), never a
    confident miss; was: bars at rounding level, coverage 0."""
    ps = prescribed_spectrum_operator(spectrum("tiny_gap", 40), rng=0)
    M, top = ps.operator.to_dense(), ps.eigenvalues.max()
    confident_miss = flagged = 0
    for seed in range(30):
        r = stochastic_power(DenseOperator(M, symmetric=True), 300, rng=seed, warn=False)
        if not r.converged:
            assert r.status == "unresolved" and r.std_error == np.inf and "aligned" in r.message
            flagged += 1
        elif abs(r.eigenvalue - top) > 2 * r.std_error:
            confident_miss += 1
    assert confident_miss == 0 and flagged >= 3


@pytest.mark.xfail(strict=True, reason="stochastic_power on a cluster of top eigenvalues: the cos² >= ½ assumption of its bias bound fails")
@pytest.mark.parametrize("case", KNOWN_UNDERCOVERED, ids=[c.id for c in KNOWN_UNDERCOVERED])
def test_known_undercovered(case):
    cov, _, _ = coverage(case, n_seeds=60)
    assert cov >= MIN_COVERAGE


def test_slq_unresolved_is_flagged_not_confident():
    """κ = 1e4, tr A⁻¹ with m = 10 steps cannot be resolved: flagged (warning, inf error bar), never a confident number."""
    ps = prescribed_spectrum_operator(spectrum("cond1e4", 100), rng=0)
    with pytest.warns(ConvergenceWarning, match="unresolved"):
        r = slq_trace_inverse(ps.operator, 10, 10, rng=0)
    assert not r.converged and r.std_error == np.inf and "increase m" in r.message


@pytest.mark.parametrize("m", [5, 30, 60])
@pytest.mark.parametrize("fn", [slq_trace_inverse, slq_logdet])
def test_slq_singular_psd_refused_or_flagged(fn, m):
    """A singular PSD matrix (was ~1e16 with converged=True): a ValueError, or an unresolved result with an infinite error bar."""
    ps = prescribed_spectrum_operator(np.concatenate([[0.0, 0.0], np.linspace(1.0, 2.0, 98)]), rng=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            r = fn(ps.operator, 10, m, rng=0)
        except ValueError as e:
            assert "positive definite" in str(e)
            return
    assert not r.converged and r.std_error == np.inf
