"""One result vocabulary (issue 12, item 6): a ``Status`` enum with messages, ``all_converged`` on every
result type, and short reprs that show values, error bars, status and work counts, never raw samples."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import curvlab
from curvlab import linalg
from curvlab.linalg import (
    ConvergenceError,
    ConvergenceWarning,
    DenseOperator,
    DiagonalEstimate,
    EigResult,
    Status,
    StochasticEigResult,
    StochasticOperator,
    TraceEstimate,
    eigsh,
    hutchinson,
    hutchinson_diagonal,
    lobpcg,
    power_iteration,
    slq,
    slq_logdet,
    slq_trace_inverse,
    stochastic_power,
    xdiag,
    xtrace,
)
from curvlab.linalg.results import EIG_STATUS
from curvlab.linalg.testing import prescribed_spectrum_operator
from curvlab.trust_region import KLDual, solve_kl, solve_l2_subproblem
from tests.linalg._cases import nan_operator

MEMBERS = ("converged", "exact", "max_iter", "max_matvecs", "breakdown", "nonfinite", "stagnated", "unresolved")


def _quiet(f, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return f(*a, **k)


# ----------------------------------------------------------------------------------------------- Status


def test_status_is_one_public_str_enum_with_messages():
    assert curvlab.Status is Status is linalg.Status and "Status" in curvlab.__all__ and "Status" in linalg.__all__
    assert tuple(s.value for s in Status) == MEMBERS
    for s in Status:
        assert isinstance(s, str) and s == s.value and str(s) == s.value and f"{s}" == s.value
        assert Status(s.value) is s and Status.of(s.value) is s and Status.of(s) is s
        assert isinstance(s.message, str) and len(s.message) > 20
    assert len({s.message for s in Status}) == len(Status)
    assert [s for s in Status if s.ok] == [Status.CONVERGED, Status.EXACT]
    assert set(EIG_STATUS) == set(MEMBERS) - {"exact", "unresolved"}
    with pytest.raises(ValueError, match="status must be one of .*'converged'.*got 'done'"):
        Status.of("done")


def test_status_disagreeing_with_converged_is_refused():
    with pytest.raises(ValueError, match="disagrees"):
        TraceEstimate(estimate=1.0, std_error=0.1, n_matvecs=4, converged=False, status="converged")
    with pytest.raises(ValueError, match="disagrees"):
        DiagonalEstimate(estimate=np.ones(3), std_error=np.zeros(3), n_matvecs=4, converged=True, status="max_matvecs")
    with pytest.raises(ValueError, match="disagrees"):
        StochasticEigResult(1.0, 0.1, None, 4, 4, 4, converged=True, status="unresolved")
    with pytest.raises(ValueError, match="EigResult.status must be one of"):
        EigResult(np.ones(1), None, np.zeros(1), np.ones(1, bool), 1, 1, status="fine")


# --------------------------------------------------------------- every result: a Status and a bool all_converged


def _kl():
    w, a, h, p = np.array([1.0, -2.0]), np.array([0.5, 0.1]), np.array([1.0, 2.0]), np.array([10.0, 10.0])
    return solve_kl(KLDual(w, a, h, p, beta=0.1, prior_prec=0.0015), 0.01, mode="exact", rtol=1e-12)


def _results():
    ps = prescribed_spectrum_operator(np.linspace(1.0, 3.0, 30), rng=0)
    A = ps.operator
    sop = StochasticOperator(lambda b: DenseOperator(np.diag(np.linspace(1.0, 3.0, 30)) + b, symmetric=True),
                             lambda rng: 0.01 * (lambda E: E + E.T)(rng.standard_normal((30, 30))), rng=0, shape=(30, 30))
    return {
        "eigsh": eigsh(A, k=2, rng=0),
        "lobpcg": lobpcg(A, k=2, rng=0),
        "power_iteration": power_iteration(A, k=1, rng=0, tol=1e-3, maxiter=5000),
        "hutchinson": hutchinson(A, 10, rng=0),
        "xtrace": xtrace(A, 10, rng=0),
        "exact trace": hutchinson(A, 30, rng=0),
        "hutchinson_diagonal": hutchinson_diagonal(A, 10, rng=0),
        "xdiag": xdiag(A, 10, rng=0),
        "slq": slq(A, 3, 8, rng=0),
        "slq trace": slq(A, 3, 8, rng=0).trace(np.log),
        "slq_logdet": slq_logdet(A, 3, 10, rng=0),
        "slq_logdet radau": slq_logdet(A, 3, 10, rng=0, lambda_min=0.9),
        "stochastic_power": stochastic_power(sop, 100, rng=0),
        "solve_kl": _kl(),
        "solve_l2_subproblem": solve_l2_subproblem(np.ones(4), 0.5, diag=np.array([1.0, 2.0, 3.0, 4.0])),
    }


def test_every_result_has_a_status_and_all_converged():
    expect_exact = {"exact trace"}
    for name, r in _results().items():
        assert isinstance(r.status, Status), name
        assert isinstance(r.all_converged, bool) and r.all_converged, (name, r.status)
        assert r.status == (Status.EXACT if name in expect_exact else Status.CONVERGED), (name, r.status)
        assert r.status.ok


def test_unconverged_results_carry_the_specific_status():
    ps = prescribed_spectrum_operator(np.logspace(0.0, 4.0, 100), rng=0)
    r = _quiet(hutchinson, ps.operator, 40, rng=0, target_rel_error=1e-6)
    assert r.status == Status.MAX_MATVECS and not r.all_converged and "budget" in r.message
    d = _quiet(hutchinson_diagonal, ps.operator, 40, rng=0, target_rel_error=1e-6)
    assert d.status == Status.MAX_MATVECS and not d.all_converged
    q = _quiet(slq_trace_inverse, ps.operator, 10, 10, rng=0)
    assert q.status == Status.UNRESOLVED and q.std_error == np.inf and not q.all_converged
    e = _quiet(eigsh, ps.operator, k=3, rng=0, maxiter=1, ncv=8)
    assert isinstance(e.status, Status) and e.status == "max_iter" and not e.all_converged
    assert e.status.message.startswith("the iteration limit")
    # the trust regions: a tolerance that cannot be met
    l2 = _quiet(solve_l2_subproblem, np.ones(4), 0.5, diag=np.array([1.0, 2.0, 3.0, 4.0]), max_iter=1)
    assert isinstance(l2.status, Status) and l2.status == Status.BREAKDOWN and l2.all_converged is False  # no bracket yet


def test_stochastic_power_statuses():
    A = DenseOperator(np.diag([5.0, 1.0, 0.5]), symmetric=True)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        r = stochastic_power(A, 8, rng=0, tol=1e-12)
    assert r.status == Status.MAX_ITER and not r.all_converged and np.isfinite(r.std_error)
    with pytest.warns(ConvergenceWarning, match="NaN"):
        r = stochastic_power(nan_operator(40, after=5), 50, rng=0)
    assert r.status == Status.NONFINITE and r.std_error == np.inf
    with pytest.warns(ConvergenceWarning, match="not dominant"):
        r = stochastic_power(DenseOperator(np.diag([-5.0, 1.0, 0.5]), symmetric=True), 50, rng=0)
    assert r.status == Status.BREAKDOWN and r.std_error == np.inf
    # 4 steps of a stochastic operator leave one evaluation product: no error bar can be formed
    sop = StochasticOperator(lambda b: DenseOperator(np.diag([5.0, 1.0]) + b, symmetric=True),
                             lambda rng: 0.1 * np.diag(rng.standard_normal(2)), rng=0, shape=(2, 2))
    with pytest.warns(ConvergenceWarning, match="unresolved"):
        r = stochastic_power(sop, 4, rng=0)
    assert r.status == Status.UNRESOLVED and r.std_error == np.inf and not r.converged
    with pytest.raises(ConvergenceError) as info:
        stochastic_power(A, 8, rng=0, tol=1e-12, strict=True)
    assert info.value.result.status == Status.MAX_ITER
    with pytest.raises(ValueError, match="eval_fraction"):
        stochastic_power(A, 8, eval_fraction=1.0)


# ------------------------------------------------------------------------------------------------- reprs


def _check_short(r, must=()):
    text = repr(r)
    assert text.count("\n") <= 2, text
    assert len(text) <= 420, (len(text), text)
    assert "status='" in text, text
    for m in must:
        assert m in text, (m, text)
    return text


def test_reprs_are_short_and_show_values_errors_status_and_work():
    res = _results()
    for name, r in res.items():
        _check_short(r)
    e = res["eigsh"]
    text = _check_short(e, ["eigenvalues=[", "residual_norms=[", "n_matvecs=", "converged=2/2", "status='converged'"])
    assert f"{e.eigenvalues[0]:.6g}" in text
    t = res["hutchinson"]
    _check_short(t, [f"estimate={t.estimate:.6g}", f"std_error={t.std_error:.6g}", "n_matvecs=10"])
    s = res["slq trace"]
    _check_short(s, ["quadrature_error=", "probe_std_error="])
    sp = res["stochastic_power"]
    _check_short(sp, [f"eigenvalue={sp.eigenvalue:.6g}", "bias_bound=", "sampling_error=", "n_batches=100"])
    _check_short(res["slq"], ["n_probes=3", "lanczos_steps=8", "nodes in ["])
    _check_short(res["solve_kl"], ["eta=", "kl_ratio=", "n_evals="])
    _check_short(res["solve_l2_subproblem"], ["sigma=", "s=<(4,) array>"])


def test_reprs_hide_samples_history_and_long_arrays():
    n = 400
    ps = prescribed_spectrum_operator(np.linspace(1.0, 2.0, n), rng=0)
    t = hutchinson(ps.operator, 200, rng=0, return_history=True)
    assert t.samples is not None and t.samples.size >= 100
    text = _check_short(t)
    assert "samples" not in text and "history" not in text
    assert not any(f"{x:.6g}" in text for x in t.samples[:20])
    d = hutchinson_diagonal(ps.operator, 50, rng=0)
    text = _check_short(d, ["n=400", "..."])
    assert len(re.findall(r"\.\.\.", text)) == 2  # estimate and std_error, 6 values each
    e = eigsh(ps.operator, k=20, rng=0, return_history=True)
    text = _check_short(e, ["..."])
    assert "history" not in text and text.count(", ") < 30
    sd = slq(ps.operator, 10, 40, rng=0)
    text = _check_short(sd)
    assert "alpha" not in text and "weights" not in text
    # a long message is clipped, not dropped
    r = TraceEstimate(estimate=1.0, std_error=0.1, n_matvecs=4, converged=False, message="x" * 1000)
    assert r.status == Status.MAX_MATVECS and "x" * 50 in _check_short(r)
