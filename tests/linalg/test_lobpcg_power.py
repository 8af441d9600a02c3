"""Block LOBPCG, power iteration with deflation, stochastic operators and Oja power."""

from __future__ import annotations

import numpy as np
import pytest

from curvlab import backend
from curvlab.linalg import (
    CallableOperator,
    ConvergenceError,
    DenseOperator,
    StochasticOperator,
    eigsh,
    lobpcg,
    power_iteration,
    slq,
    stochastic_power,
)
from curvlab.linalg.results import EIG_STATUS, ConvergenceWarning
from tests.linalg._cases import SPECTRUM_CASES, exact_wanted, make_case, nan_operator, true_residuals


@pytest.mark.parametrize("name,which", SPECTRUM_CASES)
@pytest.mark.parametrize("k", [1, 4])
def test_lobpcg_prescribed_spectra(name, which, k):
    ps = make_case(name, 200)
    res = lobpcg(ps.operator, k=k, which=which, tol=1e-8, rng=2, block_size=k + 2, maxiter=1000)
    assert res.all_converged, res
    scale = np.abs(ps.eigenvalues).max()
    assert np.allclose(res.eigenvalues, exact_wanted(ps.eigenvalues, which, k), atol=1e-7 * scale)
    tr = true_residuals(ps.operator, res.eigenvalues, res.eigenvectors)
    assert np.all(tr <= 1e-6 * scale)


def test_lobpcg_and_eigsh_on_backend(xp):
    ps = make_case("large_gap", 300, xp=xp)
    r1 = lobpcg(ps.operator, k=3, rng=0, tol=1e-8)
    r2 = eigsh(ps.operator, k=3, rng=0, tol=1e-8)
    for r in (r1, r2):
        assert r.all_converged
        assert backend.get_namespace(r.eigenvectors) is xp
        assert np.allclose(r.eigenvalues, ps.eigenvalues[::-1][:3], rtol=1e-8)


def test_lobpcg_warm_start_saves_matvecs():
    ps = make_case("uniform", 300)
    cold = lobpcg(ps.operator, k=3, rng=0, tol=1e-8, block_size=5)
    exact = ps.eigenvectors([-1, -2, -3, -4, -5])
    noisy = exact + 1e-4 * np.random.default_rng(1).standard_normal(exact.shape)
    warm = lobpcg(ps.operator, k=3, X0=noisy, tol=1e-8)
    assert warm.all_converged and cold.all_converged
    assert warm.n_matvecs < cold.n_matvecs / 2


def test_lobpcg_float32_and_soft_locking():
    ps = make_case("large_gap", 300, dtype=np.float32)
    res = lobpcg(ps.operator, k=4, rng=0, tol=1e-4, return_history=True)
    assert res.all_converged and res.eigenvectors.dtype == np.float32
    assert np.allclose(res.eigenvalues, ps.eigenvalues[::-1][:4], rtol=1e-4)
    # soft locking: once a column converged, later iterations apply fewer than k columns
    steps = np.diff([h["n_matvecs"] for h in res.history])
    assert steps.min() < 4


def test_lobpcg_budget_nan_and_bad_inputs():
    ps = make_case("tiny_gap", 300)
    with pytest.warns(ConvergenceWarning, match="max_matvecs"):
        res = lobpcg(ps.operator, k=2, tol=1e-10, max_matvecs=20, rng=0)
    assert not res.all_converged and "budget" in res.message and res.n_matvecs <= 20 and res.status == "max_matvecs"
    with pytest.raises(ConvergenceError):
        lobpcg(ps.operator, k=2, tol=1e-10, maxiter=3, rng=0, strict=True)
    with pytest.warns(ConvergenceWarning, match="nonfinite"):
        res = lobpcg(nan_operator(60, after=3), k=2, rng=0)
    assert not res.converged.any() and "NaN" in res.message and res.status == "nonfinite"
    with pytest.raises(ValueError, match="block_size"):
        lobpcg(ps.operator, k=3, block_size=2)
    with pytest.raises(ValueError, match="3 \\* block_size"):
        lobpcg(np.eye(6), k=3)
    with pytest.raises(ValueError, match="which"):
        lobpcg(ps.operator, k=1, which="BE")
    with pytest.raises(ValueError, match="non-zero"):
        lobpcg(ps.operator, k=1, X0=np.zeros(300))


def test_power_iteration_deflation():
    ps = make_case("large_gap", 200)
    # later pairs are limited by the error of earlier ones (sequential deflation): tol 1e-6
    res = power_iteration(ps.operator, k=3, tol=1e-6, maxiter=5000, rng=0)
    assert res.all_converged
    assert np.allclose(res.eigenvalues, ps.eigenvalues[::-1][:3], rtol=1e-8)
    tr = true_residuals(ps.operator, res.eigenvalues, res.eigenvectors)
    assert np.all(tr <= 1.01e-6 * res.eigenvalues)


def test_power_iteration_honest_flags():
    ps = make_case("tiny_gap", 200)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        res = power_iteration(ps.operator, k=1, tol=1e-10, maxiter=30, rng=0)
    assert not res.all_converged and "maxiter" in res.message and res.status == "max_iter"
    with pytest.warns(ConvergenceWarning, match="max_matvecs"):
        res = power_iteration(ps.operator, k=2, tol=1e-10, max_matvecs=10, rng=0)
    assert not res.all_converged and res.n_matvecs <= 10 and res.status == "max_matvecs"
    with pytest.warns(ConvergenceWarning, match="nonfinite"):
        res = power_iteration(nan_operator(50, after=2), k=1, rng=0)
    assert not res.all_converged and "NaN" in res.message and res.status == "nonfinite"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = power_iteration(ps.operator, k=1, tol=1e-10, maxiter=30, rng=0, warn=False)
    assert not res.all_converged
    res = power_iteration(ps.operator, k=1, tol=1e-4, maxiter=3000, rng=0)
    assert res.all_converged and res.status == "converged"


def _noisy_operator(n=60, noise=0.5, seed=0):
    """E[A_t] = Q diag(λ) Qᵀ with a top gap; A_t adds a symmetric zero-mean noise matrix."""
    rng = np.random.default_rng(seed)
    lam = np.concatenate([np.linspace(0.0, 1.0, n - 1), [3.0]])
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    Abar = (Q * lam) @ Q.T

    def sampler(g):
        E = g.standard_normal((n, n))
        return noise * (E + E.T) / np.sqrt(2 * n)

    def make(batch):
        return DenseOperator(Abar + batch, symmetric=True)

    return Abar, Q[:, -1], make, sampler


def test_stochastic_operator_draws_fresh_batches():
    Abar, _, make, sampler = _noisy_operator()
    A = StochasticOperator(make, sampler, rng=0, shape=Abar.shape)
    v = np.ones(Abar.shape[0])
    assert not np.allclose(A @ v, A @ v)
    assert A.n_batches == 2
    # a fixed batch is deterministic, and the expectation is Abar
    F = A.fixed(rng=5)
    np.testing.assert_array_equal(F @ v, F @ v)
    draws = np.array([A @ v for _ in range(400)])
    mean = draws.mean(axis=0)
    assert np.linalg.norm(mean - Abar @ v) < 0.1 * np.linalg.norm(Abar @ v)
    # statistically: per component, the error of the mean lies within its standard error
    # (z² averages to 1 over the 60 components: χ²₆₀/60, whose 1e-4 tails lie near 0.45 and 1.8)
    z = (mean - Abar @ v) / (draws.std(axis=0, ddof=1) / np.sqrt(len(draws)))
    assert 0.45 < np.mean(z**2) < 1.8 and np.mean(np.abs(z) <= 3) >= 0.95
    # deterministic solvers refuse it (documented policy)
    for solver in (eigsh, lobpcg, power_iteration):
        with pytest.raises(ValueError, match="stochastic"):
            solver(A, k=1)
    with pytest.raises(ValueError, match="stochastic"):
        slq(A, 2, 5)


def test_stochastic_power_error_falls_with_batches():
    Abar, u, make, sampler = _noisy_operator()
    errs = {40: [], 640: []}
    lam_err = {40: [], 640: []}
    covered = 0
    for seed in range(6):
        for T in errs:
            A = StochasticOperator(make, sampler, rng=100 + seed, shape=Abar.shape)
            res = stochastic_power(A, T, rng=seed)
            assert res.n_batches == T and res.n_matvecs == T
            errs[T].append(np.sqrt(max(0.0, 1.0 - float(res.eigenvector @ u) ** 2)))
            lam_err[T].append(abs(res.eigenvalue - 3.0))
            if T == 640:
                covered += abs(res.eigenvalue - 3.0) <= 3 * res.std_error + 1e-3
    # sin of the angle to the expected operator's top eigenvector, and eigenvalue error, fall
    assert np.mean(errs[640]) < 0.4 * np.mean(errs[40])
    assert np.mean(lam_err[640]) < 0.5 * np.mean(lam_err[40])
    assert covered >= 5


def test_stochastic_operator_shape_inference_and_sampler_checks():
    from curvlab.linalg import minibatch_sampler

    X = np.arange(20.0).reshape(10, 2)
    y = np.arange(10)
    s = minibatch_sampler(X, y, 4)
    Xb, yb = s(np.random.default_rng(0))
    assert Xb.shape == (4, 2) and np.array_equal(Xb[:, 0] / 2, yb)
    A = StochasticOperator(lambda b: np.diag(b[0][:, 0][:2]), s, rng=0)
    assert A.shape == (2, 2) and A.n_batches == 1 and A.stochastic
    with pytest.raises(ValueError, match="batch_size"):
        minibatch_sampler(X, y, 11)
    with pytest.raises(ValueError, match="same number of rows"):
        minibatch_sampler(X, y[:5], 2)
    with pytest.raises(TypeError):
        StochasticOperator(None, s, rng=0)


def test_stochastic_power_nan_stops_and_reports():
    with pytest.warns(ConvergenceWarning, match="stochastic_power"):
        res = stochastic_power(nan_operator(40, after=5), 50, rng=0)
    assert not res.converged and "NaN" in res.message and res.n_matvecs <= 6


# --- issue 11 defect 7: lobpcg below attainable precision, flat spectra, NaN ------------------------


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-15), (np.float64, 1e-17), (np.float32, 1e-8), (np.float32, 1e-9)])
def test_lobpcg_below_attainable_precision_returns_best_iterate(dtype, tol):
    """The defect: the iteration diverged (θ = 2.146 > λ_max = 2, true residual 0.44) and returned
    the diverged iterate with understated residuals after the full maxiter."""
    ps = make_case("uniform", 300, dtype=dtype)
    with pytest.warns(ConvergenceWarning):
        res = lobpcg(ps.operator, k=3, tol=tol, rng=0)
    assert not res.all_converged and res.status in ("stagnated", "max_iter") and res.status in EIG_STATUS
    lam = ps.eigenvalues
    eps = np.finfo(dtype).eps
    assert np.allclose(res.eigenvalues, lam[::-1][:3], atol=1e-5)  # the best iterate, not a diverged one
    tr = true_residuals(ps.operator, res.eigenvalues, res.eigenvectors)
    assert np.all(tr <= 1e3 * eps * np.sqrt(300) * lam.max())
    # reported residuals are the true ones (to the rounding of the measuring product)
    assert np.all(np.abs(res.residual_norms - tr) <= 4 * np.sqrt(300) * eps * lam.max())
    if tol * lam.min() < eps * lam.max():  # unattainable: detected, not run to maxiter
        assert res.status == "stagnated" and res.n_iterations < 500


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n,c", [(9, 1.0), (9, -3.0), (30, 1e-8), (300, 1.0), (300, 1e6), (2000, 1.0)])
@pytest.mark.parametrize("which", ["LA", "SA"])
def test_lobpcg_flat_spectrum_is_an_exact_eigenspace(dtype, n, c, which):
    """The defect: on c·I (float32, small n) the Rayleigh-Ritz basis lost orthogonality and the
    iteration diverged (θ = 462 for the identity) or ran to maxiter; an exact eigenspace is found at once."""
    from curvlab.linalg.testing import prescribed_spectrum_operator

    for op in (DenseOperator((c * np.eye(n)).astype(dtype), symmetric=True),
               prescribed_spectrum_operator(np.full(n, c), rng=0, dtype=dtype).operator):
        for k, b in ((1, None), (3, None), (1, 3)):
            if 3 * (b or k) > n:
                continue
            tol = 1e-8 if dtype == np.float64 else 1e-5
            res = lobpcg(op, k=k, which=which, block_size=b, rng=0, tol=tol)
            assert res.all_converged and res.status == "converged" and res.n_iterations <= 3, res
            assert np.allclose(res.eigenvalues, c, rtol=10 * np.finfo(dtype).eps * np.sqrt(n), atol=0)
            # a tol the dtype cannot attain is recognised at once too (flagged, not run to maxiter)
            with pytest.warns(ConvergenceWarning, match="attainable"):
                res = lobpcg(op, k=k, which=which, block_size=b, rng=0, tol=1e-20)
            assert res.status == "stagnated" and res.n_iterations <= 60  # not maxiter (500)
            assert np.allclose(res.eigenvalues, c, rtol=10 * np.finfo(dtype).eps * np.sqrt(n), atol=0)


def test_lobpcg_stops_at_the_first_nonfinite_value():
    """A NaN from the preconditioner (not the operator) stops the iteration at once, status "nonfinite"
    (it was dropped as a 'lost rank' before)."""
    ps = make_case("uniform", 300)
    calls = {"n": 0}

    def pre(R):
        calls["n"] += 1
        return R * np.nan if calls["n"] >= 3 else R

    with pytest.warns(ConvergenceWarning, match="nonfinite"):
        res = lobpcg(ps.operator, k=2, rng=0, preconditioner=pre, tol=1e-10)
    assert res.status == "nonfinite" and calls["n"] == 3 and not res.converged.any()
    assert res.n_matvecs <= 2 * 4  # the initial block, two steps and the NaN block itself: nothing after
    assert np.all(np.isfinite(res.eigenvalues)) and res.eigenvectors is not None  # the best finite iterate


def test_lobpcg_status_and_true_residuals():
    ps = make_case("large_gap", 300)
    res = lobpcg(ps.operator, k=3, rng=0, tol=1e-10, block_size=5)
    assert res.status == "converged" and res.all_converged
    tr = true_residuals(ps.operator, res.eigenvalues, res.eigenvectors)
    assert np.allclose(res.residual_norms, tr, rtol=1e-3, atol=1e-12 * ps.eigenvalues.max())
    assert np.all(tr <= 1e-10 * np.abs(res.eigenvalues))


@pytest.mark.parametrize("noise", [0.05, 0.0])
def test_stochastic_power_on_backend_and_its_syncs(xp, noise):
    """CuPy (or the strict stand-in): same numbers as NumPy to rounding, and the stated host syncs: one per step,
    + the start vector's norm + the evaluation groups' Gram matrix."""
    from tests import _strict_cupy

    M = np.diag(np.linspace(1.0, 5.0, 12))

    def build(xmod):
        def make(b):  # a callable operator: building it costs no sync (a DenseOperator checks its data)
            Mb = xmod.asarray(M + b)
            return CallableOperator(lambda v: Mb @ v, (12, 12), symmetric=True, xp=xmod, check=False)

        def sample(rng):
            E = rng.standard_normal((12, 12))
            return noise * (E + E.T)

        return StochasticOperator(make, sample, rng=3, shape=(12, 12), xp=xmod)

    ref = stochastic_power(build(np), 60, rng=0)
    counted = xp is not np and _strict_cupy.installed()
    if counted:
        with _strict_cupy.count_syncs() as log:
            res = stochastic_power(build(xp), 60, rng=np.random.default_rng(0))
        assert log.count <= 60 + 2, log.report()
    else:
        res = stochastic_power(build(xp), 60, rng=0 if xp is np else np.random.default_rng(0))
    assert res.status == "converged" and res.n_matvecs == 60 and res.n_eval == 15
    assert abs(res.eigenvalue - 5.0) <= 2 * res.std_error and np.isfinite(res.bias_bound)
    if xp is np:
        assert res.eigenvalue == ref.eigenvalue and res.std_error == ref.std_error


@pytest.mark.parametrize("bad, exc", [("0.5", TypeError), (0.5j, TypeError), (None, TypeError), (True, TypeError),
                                      (1.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError)])
def test_stochastic_power_burn_in_errors_name_burn_in(bad, exc):
    """issue 11: burn_in='1', 1j or None raised "'<=' not supported" naming nothing."""
    from curvlab.linalg import StochasticOperator as _SO
    from curvlab.linalg import minibatch_sampler as _mb

    X = np.arange(20.0).reshape(10, 2)
    A = _SO(lambda b: np.diag(b[0][:, 0][:2]) + np.eye(2), _mb(X, np.arange(10), 4), rng=0)
    with pytest.raises(exc, match=r"^burn_in must be"):
        stochastic_power(A, 20, burn_in=bad, rng=0)
    with pytest.raises(TypeError, match=r"^eval_fraction must be"):
        stochastic_power(A, 20, eval_fraction="0.25", rng=0)


@pytest.mark.parametrize("tol", [True, float("inf"), float("nan"), 0.0, -1e-3])
def test_stochastic_power_refuses_a_meaningless_tol(tol):
    """tol=True (bool), inf or nan would make the convergence test vacuous: refused, naming tol."""
    from curvlab.linalg.power import stochastic_power

    with pytest.raises(ValueError, match="tol"):
        stochastic_power(np.diag([3.0, 1.0, 0.5]), 8, tol=tol, rng=0)
