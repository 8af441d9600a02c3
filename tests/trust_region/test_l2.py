"""l2 trust-region subproblem: KKT certificate (global optimality), hard case, interior, backends."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from curvlab import backend
from curvlab.linalg.results import ConvergenceError, ConvergenceWarning
from curvlab.trust_region import solve_l2_subproblem


def _kkt(B, g, delta, res, tol=1e-8):
    s, sig = np.asarray(res.s, np.float64), res.sigma
    n = len(g)
    assert sig >= 0
    assert np.linalg.norm(s) <= delta * (1 + tol)
    np.testing.assert_allclose((B + sig * np.eye(n)) @ s, -g, atol=tol * (1 + np.linalg.norm(g)))
    assert sig * abs(np.linalg.norm(s) - delta) <= tol * (1 + sig) * delta
    assert np.linalg.eigvalsh(B + sig * np.eye(n)).min() >= -tol * np.abs(B).max()
    assert res.model == pytest.approx(g @ s + 0.5 * s @ B @ s, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["pd", "indefinite"])
@pytest.mark.parametrize("delta", [0.1, 1.0, 100.0])
def test_random_problems_satisfy_kkt(xp, seed, kind, delta):
    rng = np.random.default_rng(seed)
    n = 12
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = rng.uniform(0.1, 5, n) if kind == "pd" else rng.uniform(-3, 5, n)
    B = (Q * lam) @ Q.T
    g = rng.standard_normal(n)
    ev, V = np.linalg.eigh(B)
    res = solve_l2_subproblem(xp.asarray(g), delta, eigvals=xp.asarray(ev), eigvecs=xp.asarray(V))
    res.s = getattr(res.s, "get", lambda: res.s)()
    assert res.converged
    _kkt(B, g, delta, res)
    if kind == "pd" and delta == 100.0:
        assert res.interior and res.sigma == 0.0
        np.testing.assert_allclose(res.s, -np.linalg.solve(B, g), rtol=1e-10)
    # no random feasible point does better (a sanity check on top of the certificate)
    Z = rng.standard_normal((2000, n))
    Z *= (delta * rng.uniform(0, 1, (2000, 1)) ** (1 / n)) / np.linalg.norm(Z, axis=1, keepdims=True)
    vals = Z @ g + 0.5 * np.einsum("ij,jk,ik->i", Z, B, Z)
    assert res.model <= vals.min() + 1e-12


def test_hard_case():
    B = np.diag([-1.0, 1.0, 2.0])
    g = np.array([0.0, 0.1, 0.1])
    res = solve_l2_subproblem(g, 1.0, diag=np.diag(B).copy())
    assert res.hard_case and res.sigma == pytest.approx(1.0)
    assert np.linalg.norm(res.s) == pytest.approx(1.0, rel=1e-12)
    _kkt(B, g, 1.0, res)
    # analytic optimum: s = (±τ, -0.1/2, -0.1/3), τ² = 1 - 0.05² - (0.1/3)²
    tau2 = 1 - 0.05 ** 2 - (0.1 / 3) ** 2
    expect = -0.1 * 0.05 - 0.1 * (0.1 / 3) + 0.5 * (-tau2 + 0.05 ** 2 + 2 * (0.1 / 3) ** 2)
    assert res.model == pytest.approx(expect, rel=1e-12)


def test_near_hard_case_converges():
    lam = np.array([-1.0, 1.0, 2.0])
    g = np.array([1e-9, 0.1, 0.1])
    res = solve_l2_subproblem(g, 1.0, diag=lam)
    # σ + λ_min ≈ 1e-9: float64 resolves σ to ~1e-16, so ‖s‖ = Δ holds to ~1e-7 only
    assert res.converged and not res.hard_case
    _kkt(np.diag(lam), g, 1.0, res, tol=1e-6)


def test_diag_equals_eigen_form(rng):
    lam = rng.uniform(-2, 3, 30)
    g = rng.standard_normal(30)
    r1 = solve_l2_subproblem(g, 0.7, diag=lam)
    r2 = solve_l2_subproblem(g, 0.7, eigvals=lam, eigvecs=np.eye(30))
    np.testing.assert_allclose(r1.s, r2.s, rtol=1e-10, atol=1e-14)
    assert r1.sigma == pytest.approx(r2.sigma, rel=1e-12)


def test_float32_and_zero_gradient():
    lam = np.array([1.0, 2.0], np.float32)
    res = solve_l2_subproblem(np.array([3.0, 0.0], np.float32), 1.0, diag=lam)
    assert res.s.dtype == np.float32 and abs(res.norm - 1) <= 1e-9
    res = solve_l2_subproblem(np.zeros(2), 1.0, diag=np.array([1.0, 2.0]))
    assert res.interior and np.all(res.s == 0)
    res = solve_l2_subproblem(np.zeros(2), 1.0, diag=np.array([-1.0, 2.0]))
    assert res.hard_case and res.norm == pytest.approx(1.0)


def test_bad_input():
    g = np.ones(3)
    with pytest.raises(ValueError, match="delta"):
        solve_l2_subproblem(g, 0.0, diag=g)
    with pytest.raises(ValueError, match="exactly one"):
        solve_l2_subproblem(g, 1.0)
    with pytest.raises(ValueError, match=r"diag must have shape \(3,\)"):
        solve_l2_subproblem(g, 1.0, diag=np.ones(2))
    with pytest.raises(ValueError, match=r"eigvecs must have shape \(3, 3\)"):
        solve_l2_subproblem(g, 1.0, eigvals=g, eigvecs=np.eye(2))


# --- issue 11, defect 7: the near-hard case meets the stated tolerance; bad input is refused


def _indefinite(seed, n=40, comp=0.0):
    """B = Q diag(λ) Qᵀ with λ_min = −1 simple, and g with component ``comp`` along the bottom eigenvector."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.sort(np.r_[-1.0, rng.uniform(-0.5, 3.0, n - 1)])
    gam = 0.1 * rng.standard_normal(n) / math.sqrt(n)
    gam[0] = comp
    return lam, Q, Q @ gam, (Q * lam) @ Q.T


@pytest.mark.parametrize("comp", [1e-6, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("form", ["diag", "eig"])
def test_near_hard_case_meets_rtol(comp, seed, form):
    lam, Q, g, B = _indefinite(seed, comp=comp)
    delta = 2.0  # ‖s(−λ_min)‖ without the bottom component is ≈ 0.1: the near-hard regime
    if form == "diag":
        gg = Q.T @ g
        res = solve_l2_subproblem(gg, delta, diag=lam)
        B, g = np.diag(lam), gg
    else:
        res = solve_l2_subproblem(g, delta, eigvals=lam, eigvecs=Q)
    norm = np.linalg.norm(res.s)  # independent of the solver's own report
    assert res.converged and res.status == "converged" and not res.hard_case and not res.interior
    assert abs(norm / delta - 1) <= 1e-10  # rtol = 1e-10 on ½‖s‖²: 5e-11 on ‖s‖ (it was −8e-5)
    assert abs(res.norm / norm - 1) <= 1e-12
    _kkt(B, g, delta, res)
    assert res.sigma + lam[0] > 0 and res.n_evals <= 15


@pytest.mark.parametrize("seed", range(3))
def test_exact_hard_and_interior_cases(seed):
    lam, Q, g, B = _indefinite(seed, comp=0.0)
    res = solve_l2_subproblem(g, 2.0, eigvals=lam, eigvecs=Q)
    assert res.converged and res.hard_case and res.sigma == pytest.approx(1.0, rel=1e-12)
    assert abs(np.linalg.norm(res.s) / 2.0 - 1) <= 1e-12
    _kkt(B, g, 2.0, res)
    lam_pd = lam + 1.5
    res = solve_l2_subproblem(g, 10.0, eigvals=lam_pd, eigvecs=Q)
    assert res.converged and res.interior and res.sigma == 0.0
    np.testing.assert_allclose(res.s, -Q @ ((Q.T @ g) / lam_pd), rtol=1e-12)


@pytest.mark.parametrize("k", [0, 1, 5, 39])
@pytest.mark.parametrize("shift", [0.5, -0.3])
def test_partial_eigendecomposition_means_zero_on_the_complement(k, shift):
    # B = V diag(λ) Vᵀ with V (n, k): the old code ignored the part of g outside V's range (wrong s, no flag)
    rng = np.random.default_rng(k)
    n = 40
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, lv = Q[:, :k], rng.uniform(0.1, 3.0, k) + shift
    B = (V * lv) @ V.T
    g = rng.standard_normal(n)
    res = solve_l2_subproblem(g, 0.8, eigvals=lv, eigvecs=V)
    ev, W = np.linalg.eigh(B)
    want = solve_l2_subproblem(g, 0.8, eigvals=ev, eigvecs=W)
    assert res.converged and want.converged
    _kkt(B, g, 0.8, res)
    np.testing.assert_allclose(res.s, want.s, rtol=1e-8, atol=1e-10)
    assert res.model == pytest.approx(g @ res.s + 0.5 * res.s @ B @ res.s, rel=1e-10)


def test_unattainable_tolerance_is_flagged():
    lam, Q, g, B = _indefinite(0, comp=1e-9)
    with pytest.warns(ConvergenceWarning, match="solve_l2_subproblem"):
        res = solve_l2_subproblem(g, 2.0, eigvals=lam, eigvecs=Q, rtol=1e-300)
    assert not res.converged and res.status == "stagnated" and np.linalg.norm(res.s) <= 2.0 * (1 + 1e-12)
    with pytest.raises(ConvergenceError) as info:
        solve_l2_subproblem(g, 2.0, eigvals=lam, eigvecs=Q, rtol=1e-300, strict=True)
    assert info.value.result.status == "stagnated"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert not solve_l2_subproblem(g, 2.0, eigvals=lam, eigvecs=Q, rtol=1e-300, warn=False).converged
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        assert solve_l2_subproblem(g, 2.0, eigvals=lam, eigvecs=Q, max_iter=2).status == "max_iter"


@pytest.mark.parametrize("where", ["g", "diag", "eigvals", "eigvecs"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_is_refused(where, bad):
    lam, Q, g, _ = _indefinite(0, n=6, comp=0.1)
    data = dict(g=g.copy(), eigvals=lam.copy(), eigvecs=Q.copy(), diag=lam.copy())
    data[where].flat[3] = bad
    kw = dict(diag=data["diag"]) if where == "diag" else dict(eigvals=data["eigvals"], eigvecs=data["eigvecs"])
    with pytest.raises(ValueError, match=f"{where} must be finite"):
        solve_l2_subproblem(data["g"], 1.0, **kw)


def test_options_are_validated():
    g = np.ones(3)
    for kw, name in [(dict(delta=math.inf), "delta"), (dict(delta=math.nan), "delta"), (dict(rtol=0.0), "rtol"),
                     (dict(rtol=math.nan), "rtol"), (dict(max_iter=0), "max_iter"), (dict(hard_tol=-1.0), "hard_tol"),
                     (dict(hard_tol=1.0), "hard_tol")]:
        args = dict(delta=1.0, diag=g)
        args.update(kw)
        with pytest.raises(ValueError, match=name):
            solve_l2_subproblem(g, args.pop("delta"), **args)
    with pytest.raises(TypeError, match="delta"):
        solve_l2_subproblem(g, "1.0", diag=g)
    with pytest.raises(ValueError, match="eigvecs= goes with eigvals="):
        solve_l2_subproblem(g, 1.0, diag=g, eigvecs=np.eye(3))
    with pytest.raises(TypeError, match="diag"):
        solve_l2_subproblem(g, 1.0, diag=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at most"):
        solve_l2_subproblem(g, 1.0, eigvals=np.ones(4), eigvecs=np.ones((3, 4)))


@pytest.mark.parametrize("comp", [0.0, 1e-10, 0.3])
def test_host_reads_budget(monkeypatch, comp):
    # every device-to-host read goes through backend.to_numpy: 2 + 1 per secular evaluation
    calls = []
    real = backend.to_numpy
    monkeypatch.setattr(backend, "to_numpy", lambda x: calls.append(1) or real(x))
    lam, Q, g, _ = _indefinite(1, comp=comp)
    res = solve_l2_subproblem(g, 2.0, eigvals=lam, eigvecs=Q)
    assert len(calls) == 2 + res.n_evals
