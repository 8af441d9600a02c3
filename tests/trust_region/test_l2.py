"""l2 trust-region subproblem: KKT certificate (global optimality), hard case, interior, backends."""

from __future__ import annotations

import numpy as np
import pytest

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
