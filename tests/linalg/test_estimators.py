"""SLQ spectral density and tr f(A); Hutchinson, Hutch++, XTrace; Hutchinson and XDiag diagonals.

Random estimators are tested statistically over repeated seeds: coverage of
the reported standard error, error falling like 1/√m, and the variance
reduction of Hutch++/XTrace/XDiag on a fast-decay spectrum.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from curvlab import backend
from curvlab.linalg import (
    ConvergenceError,
    ConvergenceWarning,
    DenseOperator,
    exact_smoothed_density,
    hutchinson,
    hutchinson_diagonal,
    hutchpp,
    slq,
    slq_logdet,
    slq_trace_inverse,
    wasserstein1,
    xdiag,
    xtrace,
)
from tests.linalg._cases import make_case, nan_operator

SEEDS = range(30)


# ---------------------------------------------------------------- SLQ
@pytest.mark.parametrize("name", ["indefinite", "clustered", "uniform"])
def test_slq_density_wasserstein(name):
    """W1 between SLQ and exact Gaussian-smoothed densities, relative to the spectral range.

    Tolerance 0.02 of the range for 20 probes x 30 steps (observed <= 0.01 on
    these spectra); it also falls when the probes are quadrupled.
    """
    ps = make_case(name, 400)
    lam = ps.eigenvalues
    span = lam[-1] - lam[0]
    sig = 0.02 * span
    grid = np.linspace(lam[0] - 5 * sig, lam[-1] + 5 * sig, 1500)
    exact = exact_smoothed_density(lam, grid, sig)
    w = {P: [] for P in (5, 20, 80)}
    for seed in range(3):
        for P in w:
            sd = slq(ps.operator, P, 30, rng=seed)
            dens = sd.density(grid, sig)
            assert abs(np.sum(dens) * (grid[1] - grid[0]) - 1.0) < 1e-3
            w[P].append(wasserstein1(dens, exact, grid) / span)
    assert max(w[20]) < 0.02
    assert np.mean(w[80]) < np.mean(w[5])


def test_slq_nodes_weights_and_matvecs(xp):
    ps = make_case("uniform", 200, xp=xp)
    sd = slq(ps.operator, 4, 25, rng=0, probe="gaussian")
    assert sd.nodes.shape == (4, 25) and sd.n_matvecs == 100
    np.testing.assert_allclose(sd.weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)  # squared first components of an orthogonal matrix
    assert sd.nodes.min() >= 1.0 - 1e-10 and sd.nodes.max() <= 2.0 + 1e-10


def test_slq_exact_when_krylov_space_closes():
    A = np.diag(np.repeat([1.0, 2.0, 4.0], 20))  # 3 distinct values: Lanczos stops after 3 steps
    sd = slq(A, 3, 10, rng=0)
    # Rademacher probes: zᵀ f(A) z = Σ f(a_ii) for diagonal A, and 3-node Gauss quadrature is exact
    assert np.count_nonzero(sd.weights[0]) == 3 and sd.n_matvecs == 9
    assert np.allclose(sd.probe_values(lambda t: t), 140.0, rtol=1e-12)
    assert np.allclose(sd.trace(np.log).estimate, 20 * np.log(8.0), rtol=1e-12)


def test_slq_logdet_and_trace_inverse_within_error_bars():
    lam = np.linspace(1.0, 10.0, 300) ** 1.5
    from curvlab.linalg.testing import prescribed_spectrum_operator

    ps = prescribed_spectrum_operator(lam, rng=1)
    ld_true, ti_true = np.log(lam).sum(), (1.0 / lam).sum()
    hits_ld = hits_ti = 0
    for seed in range(12):
        ld = slq_logdet(ps.operator, 10, 25, rng=seed)
        ti = slq_trace_inverse(ps.operator, 10, 25, rng=100 + seed)
        hits_ld += abs(ld.estimate - ld_true) <= 3 * ld.std_error
        hits_ti += abs(ti.estimate - ti_true) <= 3 * ti.std_error
    assert hits_ld >= 10 and hits_ti >= 10


def test_slq_bad_inputs():
    ps = make_case("indefinite", 50)
    with pytest.raises(ValueError, match="positive definite"):
        slq_logdet(ps.operator, 2, 10, rng=0)
    with pytest.raises(ValueError, match="m must be"):
        slq(ps.operator, 2, 51)
    with pytest.raises(ValueError, match="probe"):
        slq(ps.operator, 2, 5, probe="uniform")
    with pytest.raises(ValueError, match="sigma"):
        slq(ps.operator, 2, 5, rng=0).density(np.linspace(0, 1, 5), 0.0)
    with pytest.raises(FloatingPointError):
        slq(nan_operator(30, after=4), 2, 10, rng=0)


# ---------------------------------------------------------------- trace
@pytest.mark.parametrize("estimator", [hutchinson, hutchpp, xtrace])
def test_trace_coverage_over_seeds(estimator):
    ps = make_case("decaying", 200)
    tr = ps.eigenvalues.sum()
    errs = []
    inside = 0
    for seed in SEEDS:
        r = estimator(ps.operator, 60, rng=seed)
        assert r.n_matvecs == 60 and r.converged
        errs.append(abs(r.estimate - tr))
        inside += abs(r.estimate - tr) <= 3 * r.std_error
    # the reported standard error is honest: ~99.7% nominal, XTrace's exchangeable samples are correlated
    assert inside >= 24


def test_hutchinson_error_falls_like_inverse_sqrt_m():
    # n = 500 > 400 probes: a budget >= n would compute the trace exactly (error 0)
    ps = make_case("uniform", 500)
    A = ps.operator.to_dense() + 0.3  # add an off-diagonal-heavy part so Rademacher probes have variance
    op = DenseOperator(A, symmetric=True)
    tr = float(np.trace(A))
    e = {m: np.mean([abs(hutchinson(op, m, rng=s, probe="gaussian").estimate - tr) for s in SEEDS]) for m in (25, 400)}
    ratio = e[400] / e[25]
    assert 0.12 < ratio < 0.45  # 1/√16 = 0.25


def test_hutchpp_and_xtrace_beat_hutchinson_on_fast_decay():
    ps = make_case("fast_decay", 300)
    tr = ps.eigenvalues.sum()
    err = {f.__name__: np.mean([abs(f(ps.operator, 60, rng=s).estimate - tr) for s in range(10)]) for f in (hutchinson, hutchpp, xtrace)}
    assert err["hutchpp"] < 0.2 * err["hutchinson"]
    assert err["xtrace"] < 0.2 * err["hutchinson"]


@pytest.mark.parametrize("estimator", [hutchinson, hutchpp, xtrace])
def test_trace_adaptive_target_and_budget(estimator, xp):
    ps = make_case("decaying", 200, xp=xp)
    tr = ps.eigenvalues.sum()
    r = estimator(ps.operator, target_rel_error=0.01, rng=0, return_history=True)
    assert r.converged and r.rel_std_error <= 0.01 and r.history
    assert abs(r.estimate - tr) / tr < 0.05
    with pytest.warns(ConvergenceWarning, match="budget exhausted"):
        small = estimator(ps.operator, target_rel_error=1e-6, max_matvecs=40, rng=0)
    assert not small.converged and small.n_matvecs <= 40
    with pytest.raises(ConvergenceError, match=estimator.__name__):
        estimator(ps.operator, target_rel_error=1e-6, max_matvecs=40, rng=0, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not estimator(ps.operator, target_rel_error=1e-6, max_matvecs=40, rng=0, warn=False).converged


def test_trace_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        hutchinson(np.ones((3, 4)), 5)
    with pytest.raises(ValueError, match="not both"):
        hutchinson(np.eye(4), 5, max_matvecs=10)
    with pytest.raises(ValueError, match="target_rel_error"):
        hutchinson(np.eye(4), target_rel_error=0.0)
    with pytest.raises(ValueError, match="probe"):
        xtrace(np.eye(40), 10, probe="sphere")
    with pytest.raises(FloatingPointError):
        hutchinson(nan_operator(30, after=0), 10, rng=0)
    with pytest.raises(FloatingPointError):
        xtrace(nan_operator(30, after=1), 10, rng=0)


# ---------------------------------------------------------------- diagonal
def test_hutchinson_diagonal_exact_for_diagonal_and_coverage(xp):
    d = xp.linspace(1.0, 3.0, 50)
    r = hutchinson_diagonal(xp.diag(d), 3, rng=0)
    # Rademacher probes: z ⊙ (D z) = d exactly for a diagonal matrix
    np.testing.assert_allclose(backend.to_numpy(r.estimate), backend.to_numpy(d), rtol=1e-14, atol=0)
    ps = make_case("decaying", 150, xp=xp)
    exact = backend.to_numpy(xp.diag(ps.operator.to_dense()))
    frac = []
    for seed in range(10):
        r = hutchinson_diagonal(ps.operator, 64, rng=seed)
        est, se = backend.to_numpy(r.estimate), backend.to_numpy(r.std_error)
        frac.append(np.mean(np.abs(est - exact) <= 3 * se))
    assert np.mean(frac) > 0.95


def test_xdiag_beats_hutchinson_on_fast_decay_and_is_unbiased():
    ps = make_case("fast_decay", 200)
    exact = np.diag(ps.operator.to_dense())
    eh = [np.linalg.norm(hutchinson_diagonal(ps.operator, 60, rng=s).estimate - exact) for s in range(8)]
    ex = [np.linalg.norm(xdiag(ps.operator, 60, rng=s).estimate - exact) for s in range(8)]
    assert np.mean(ex) < 0.1 * np.mean(eh)
    # unbiased on a flat spectrum: the mean over seeds approaches the diagonal
    ps = make_case("uniform", 60)
    exact = np.diag(ps.operator.to_dense())
    runs = [xdiag(ps.operator, 20, rng=s) for s in SEEDS]
    mean = np.mean([r.estimate for r in runs], axis=0)
    se = np.sqrt(np.mean([r.std_error**2 for r in runs], axis=0) / len(runs))
    assert np.mean(np.abs(mean - exact) <= 3 * se) > 0.85


def test_diagonal_adaptive_and_bad_inputs():
    ps = make_case("fast_decay", 200)
    for f in (hutchinson_diagonal, xdiag):
        r = f(ps.operator, target_rel_error=0.05, rng=0)
        assert r.converged and r.rel_std_error <= 0.05
        with pytest.warns(ConvergenceWarning, match="budget exhausted"):
            r = f(ps.operator, target_rel_error=1e-9, max_matvecs=48, rng=0)
        assert not r.converged and r.n_matvecs <= 48
    with pytest.raises(ValueError, match="symmetric"):
        xdiag(DenseOperator(np.random.default_rng(0).standard_normal((30, 30))), 10)
    with pytest.raises(FloatingPointError):
        hutchinson_diagonal(nan_operator(30, after=0), 10, rng=0)


def test_float32_operators_accumulate_in_float64():
    """float32 operators: SLQ/trace/diagonal accumulate in float64; tolerance 1e-4 relative (float32 products)."""
    ps = make_case("decaying", 200, dtype=np.float32)
    lam = ps.eigenvalues
    sd = slq(ps.operator, 4, 20, rng=0)
    assert sd.nodes.dtype == np.float64 and abs(sd.nodes.max() - lam[-1]) < 1e-4 * lam[-1]
    r = xtrace(ps.operator, 200, rng=0)
    assert abs(r.estimate - lam.sum()) < 1e-4 * lam.sum() + 3 * r.std_error
    d = hutchinson_diagonal(ps.operator, 32, rng=0)
    assert d.estimate.dtype == np.float64


# ---------------------------------------------------------------- exact when the budget reaches n; jackknife algebra
@pytest.mark.parametrize("estimator", [hutchinson, hutchpp, xtrace])
def test_trace_budget_n_is_exact(estimator):
    """A budget >= n buys tr A from n unit vectors: std_error 0, exact=True, n matvecs (was 6+ error bars off at n = 10)."""
    ps = make_case("decaying", 10)
    tr = ps.eigenvalues.sum()
    for budget in (10, 11, 20):
        r = estimator(ps.operator, budget, rng=0)
        assert r.exact and r.std_error == 0.0 and r.n_matvecs == 10 and r.converged
        assert "exact" in r.method and "exact" in r.message
        assert abs(r.estimate - tr) <= 1e-12 * tr
    r = estimator(ps.operator, 9, rng=0) if estimator is not xtrace else estimator(ps.operator, 8, rng=0)
    assert not r.exact and r.std_error > 0
    # adaptive: the probes use < n matvecs, then the exact answer while n remain in the cap
    ps = make_case("decaying", 60)
    r = estimator(ps.operator, target_rel_error=1e-8, max_matvecs=200, rng=0, return_history=True)
    assert r.exact and r.converged and r.n_matvecs <= 200 and r.history[-1]["std_error"] == 0.0
    assert abs(r.estimate - ps.eigenvalues.sum()) <= 1e-12 * ps.eigenvalues.sum()


@pytest.mark.parametrize("estimator", [hutchinson_diagonal, xdiag])
def test_diagonal_budget_n_is_exact(estimator):
    ps = make_case("indefinite", 12)
    exact = np.diag(ps.operator.to_dense())
    r = estimator(ps.operator, 12, rng=0)
    assert r.exact and r.n_matvecs == 12 and np.all(r.std_error == 0.0)
    np.testing.assert_allclose(r.estimate, exact, rtol=0, atol=1e-13)


def _xtrace_naive(A, Om):
    """XTrace recomputed from scratch: one QR per left-out probe."""
    Y = A @ Om
    t = []
    for i in range(Om.shape[1]):
        Qi, _ = np.linalg.qr(np.delete(Y, i, axis=1))
        P = np.eye(A.shape[0]) - Qi @ Qi.T
        t.append(np.trace(Qi.T @ A @ Qi) + Om[:, i] @ P @ A @ P @ Om[:, i])
    return np.mean(t)


@pytest.mark.parametrize("symmetric", [True, False])
def test_xtrace_jackknife_matches_recomputation(symmetric):
    """T_(-j) from the one-QR leave-two-out algebra equals XTrace rerun without probe j."""
    from curvlab.linalg.trace import _exchangeable_sketch, _xtrace_jackknife

    rng = np.random.default_rng(3)
    A = rng.standard_normal((30, 30))
    A = A @ A.T if symmetric else A
    op = DenseOperator(A, symmetric=symmetric)
    g = np.random.default_rng(5)
    Om, _, _, _, small = _exchangeable_sketch(op, 7, g, "rademacher", "t")
    Tj = _xtrace_jackknife(small)
    naive = [_xtrace_naive(A, np.delete(Om, j, axis=1)) for j in range(7)]
    np.testing.assert_allclose(Tj, naive, rtol=1e-10)


def test_xdiag_jackknife_matches_recomputation(monkeypatch):
    """XDiag's per-entry jackknife equals the spread of XDiag rerun without each probe."""
    import curvlab.linalg.diagonal as dg
    import curvlab.linalg.trace as tr
    from curvlab.linalg.trace import jackknife_se

    rng = np.random.default_rng(4)
    B = rng.standard_normal((25, 25))
    A = B @ B.T
    op = DenseOperator(A, symmetric=True)
    s = 6
    est, se, _ = dg._xdiag_once(op, s, np.random.default_rng(9), "rademacher")
    Om = tr.draw(np.random.default_rng(9), 25, s, "rademacher", np.float64)
    Tj = []
    for j in range(s):
        Omj = np.delete(Om, j, axis=1)
        monkeypatch.setattr(tr, "draw", lambda *a, **k: Omj)
        Tj.append(dg._xdiag_once(op, s - 1, None, "rademacher")[0])
    monkeypatch.undo()
    expect = jackknife_se(np.array(Tj).T, axis=1) * dg.t_factor(s - 1)
    np.testing.assert_allclose(se, expect, rtol=1e-9)


# ---------------------------------------------------------------- SLQ quadrature error
def test_slq_quadrature_error_is_reported_and_radau_brackets():
    """κ = 1e4, m = 30 (issue 11: ~6 standard errors off, converged=True): the quadrature part is now in the bar.

    Per probe, Gauss (m steps) <= zᵀA⁻¹z <= Gauss–Radau at lambda_min, and the reverse for log.
    """
    from curvlab.linalg.slq import _radau
    from curvlab.linalg.testing import prescribed_spectrum_operator

    lam = np.logspace(0.0, 4.0, 100)
    ps = prescribed_spectrum_operator(lam, rng=0)
    A = ps.operator.to_dense()
    r = slq_logdet(ps.operator, 10, 30, rng=0)
    assert r.quadrature_error > 0 and r.probe_std_error > 0
    assert r.std_error == pytest.approx(np.hypot(r.probe_std_error, r.quadrature_error), rel=1e-12)
    sd = slq(ps.operator, 6, 12, rng=1)
    g = np.random.default_rng(1)
    from curvlab.linalg._probes import draw

    Z = np.stack([draw(g, 100, 1, "rademacher", np.float64)[:, 0] for _ in range(6)], axis=1)
    w, V = np.linalg.eigh(A)
    for f, lower_is_gauss in ((lambda t: 1.0 / t, True), (np.log, False)):
        exact = np.einsum("ip,ip->p", V.T @ Z, f(w)[:, None] * (V.T @ Z))
        G, R = sd.probe_values(f), _radau(sd, f, 0.99, "t")
        lo, hi = (G, R) if lower_is_gauss else (R, G)
        assert np.all(lo <= exact * (1 + 1e-10)) and np.all(exact <= hi * (1 + 1e-10))
        assert np.all(hi - lo > 0)
    with pytest.raises(ValueError, match="lambda_min"):
        slq_trace_inverse(ps.operator, 4, 10, rng=0, lambda_min=50.0)
    with pytest.raises(ValueError, match="lambda_min"):
        slq_trace_inverse(ps.operator, 4, 10, rng=0, lambda_min=-1.0)


def test_slq_unresolved_strict_and_warn():
    from curvlab.linalg.testing import prescribed_spectrum_operator

    ps = prescribed_spectrum_operator(np.logspace(0.0, 4.0, 100), rng=0)
    with pytest.raises(ConvergenceError, match="unresolved"):
        slq_trace_inverse(ps.operator, 5, 6, rng=0, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = slq_trace_inverse(ps.operator, 5, 6, rng=0, warn=False)
    assert not r.converged and np.isinf(r.std_error) and np.isinf(r.quadrature_error)
    # exact quadrature (f of degree <= 2m - 1): resolved at the rounding floor
    sd = slq(ps.operator, 5, 6, rng=0)
    t = sd.trace(lambda x: x * x)
    assert t.converged and t.quadrature_error <= 1e-8 * abs(t.estimate)


@pytest.mark.parametrize("seed", range(5))
def test_xdiag_accepts_a_symmetric_array_and_names_A_for_a_nonsymmetric_one(seed):
    """issue 11: a dense symmetric ndarray was refused 'A must be a symmetric operator' (the array
    was wrapped untagged before the symmetry check); an array is now checked, exactly."""
    from curvlab.linalg import xdiag as _xdiag

    r = np.random.default_rng(seed)
    B = r.standard_normal((12, 12))
    S = B + B.T
    d = _xdiag(S, n_matvecs=12, rng=seed)        # budget >= n: the exact diagonal
    np.testing.assert_allclose(d.estimate, np.diag(S), rtol=1e-12, atol=1e-12)
    est = _xdiag(S, n_matvecs=10, rng=seed)       # a real estimate, same shape
    assert est.estimate.shape == (12,) and np.all(np.isfinite(est.estimate))
    with pytest.raises(ValueError, match=r"\bA\b.*symmetric"):
        _xdiag(B, n_matvecs=10, rng=seed)


@pytest.mark.parametrize("fn", ["slq", "slq_logdet"])
@pytest.mark.parametrize("block", [True, False])
def test_slq_refuses_a_probe_count_whose_workspace_cannot_fit(fn, block):
    """issue 11: n_probes=10**12 raised MemoryError (a 58 TiB probe block); now a ValueError naming n_probes."""
    from curvlab.linalg import slq, slq_logdet, slq_trace_inverse
    from curvlab.linalg.testing import prescribed_spectrum_operator

    fn = {"slq": slq, "slq_logdet": slq_logdet}[fn]
    A = prescribed_spectrum_operator(np.linspace(1.0, 2.0, 12), rng=0).operator
    for f in (fn, slq_trace_inverse):
        with pytest.raises(ValueError, match=r"^n_probes = 1000000000000 with m = 8 on n = 12 needs about"):
            f(A, n_probes=10**12, m=8, rng=0, block=block)
    r = fn(A, n_probes=4, m=8, rng=0, block=block)   # a sane count still runs
    assert r.nodes.shape == (4, 8) if fn is slq else np.isfinite(r.estimate) and np.isfinite(r.std_error)
