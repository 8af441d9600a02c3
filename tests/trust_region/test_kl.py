"""KL trust region of arTuRO: identities, dual monotonicity, reference bisection, exact solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from curvlab.trust_region import KLDual, kl_mean, kl_of_step, kl_precision, solve_kl, steady_state_eta
from curvlab.trust_region._roots import bisect_reference


def _problem(rng, n=200, neg=False, dtype=np.float64):
    w = rng.standard_normal(n)
    a = rng.standard_normal(n)
    h = rng.uniform(0.01, 3.0, n)
    if neg:
        h[: n // 10] = -rng.uniform(0.01, 1.0, n // 10)
    p = rng.uniform(5.0, 50.0, n)
    return [x.astype(dtype) for x in (w, a, h, p)]


BETA, P0 = 0.1, 0.0015


def test_closed_form_mean_is_stationary(rng):
    w, a, h, p = _problem(rng, neg=True)
    for eta in (0.0, 0.3, 7.0):
        m = kl_mean(eta, w, a, h, p, beta=BETA, prior_prec=P0)
        res = h * m + a + BETA * P0 * m + eta * p * (m - w)
        scale = np.abs(h * m) + np.abs(a) + np.abs(eta * p * (m - w)) + 1e-300
        assert np.max(np.abs(res) / scale) <= 1e-12


def test_damped_newton_identity(rng):
    w, a, h, p = _problem(rng)
    eta = 2.5
    m = kl_mean(eta, w, a, h, p, beta=BETA, prior_prec=P0)
    G = a + h * w + BETA * P0 * w
    newton = w - G / (h + BETA * P0 + eta * p)
    np.testing.assert_allclose(m, newton, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("h,p,eta", [(0.7, 20.0, 0.3), (-0.2, 5.0, 4.0), (3.0, 100.0, 0.01)])
def test_coupled_precision_minimises_variance_lagrangian(h, p, eta):
    # variance part of E[f] + β KL(q'||N(0, 1/p0)) + η KL(q'||q) as a function of v' = 1/p'
    def lag(logv):
        v = math.exp(logv)
        return 0.5 * h * v + 0.5 * BETA * (P0 * v - 1 - math.log(P0 * v)) + 0.5 * eta * (p * v - 1 - math.log(p * v))

    r = minimize_scalar(lag, bracket=(-8, 0), tol=1e-14)
    p_opt = math.exp(-r.x)
    p_form = float(kl_precision(np.array(p), np.array(h), beta=BETA, prior_prec=P0, nu=eta))
    assert abs(p_form / p_opt - 1) <= 1e-8


@pytest.mark.parametrize("seed", range(5))
def test_dual_strictly_decreasing_above_pole_and_derivative(seed):
    rng = np.random.default_rng(seed)
    w, a, h, p = _problem(rng, n=50, neg=True)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    pole, n_neg = dual.pole()
    assert pole > 0 and n_neg == 5
    etas = pole + np.geomspace(1e-6, 1e4, 300)
    vals = np.array([dual(e)[0] for e in etas])
    assert np.all(np.diff(vals) < 0)
    for e in etas[::40]:
        d = 1e-5 * (e - pole)
        fd = (dual(e + d)[0] - dual(e - d)[0]) / (2 * d)
        assert abs(dual(e)[1] / fd - 1) <= 1e-5


def test_kl_of_step_matches_dual(rng):
    w, a, h, p = _problem(rng)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    m = kl_mean(1.7, w, a, h, p, beta=BETA, prior_prec=P0)
    assert math.isclose(kl_of_step(m, w, p), dual(1.7)[0], rel_tol=1e-12)


@pytest.mark.parametrize("eta,iters", [(1.0, 3), (10.0, 6), (100.0, 10), (1000.0, 13)])
def test_reference_warm_iteration_counts(eta, iters):
    # D > 0 always (no early exit): ⌈log2(16η/3)⌉ bisection steps, final bracket midpoint returned
    x, it = bisect_reference(lambda e: 1e9, 1.0, eta)
    assert it == iters == math.ceil(math.log2(16 * eta / 3))
    width = (3 * eta - eta / 3) / 2 ** it
    assert math.isclose(x, 3 * eta - width / 2, rel_tol=1e-15)


def test_reference_cold_start_and_small_eta():
    x, it = bisect_reference(lambda e: 1e9, 1.0, -1.0)
    assert it == 15 and math.isclose(x, 1e4 - 1e4 / 2 ** 16)
    for eta in (0.1875, 0.1, 0.01):
        x, it = bisect_reference(lambda e: 1e9, 1.0, eta)
        assert it == 0 and math.isclose(x, 5 * eta / 3)


def test_reference_inactive_fixed_points():
    # KL ≡ 0 (G = 0): 0.1526 -> 0.2543 -> 0.2543, and every η in (0.1875, 0.375] is a fixed point
    w = np.zeros(3)
    dual = KLDual(w, w, np.ones(3), np.ones(3), beta=BETA, prior_prec=P0)
    r1 = solve_kl(dual, 0.1, mode="reference", eta_prev=0.1526)
    r2 = solve_kl(dual, 0.1, mode="reference", eta_prev=r1.eta)
    # η_prev ≤ 0.1875: no bisection, the reference returns 5η_prev/3
    assert r1.eta == pytest.approx(5 * 0.1526 / 3, rel=1e-15) and r2.eta == pytest.approx(r1.eta, rel=1e-12)
    assert r1.iterations == 0 and r2.iterations == 1
    for eta in (0.19, 0.3, 0.375):
        r = solve_kl(dual, 0.1, mode="reference", eta_prev=eta)
        assert r.eta == pytest.approx(eta, rel=1e-12) and r.kl == 0.0


def test_reference_early_exit_midpoint(rng):
    w, a, h, p = _problem(rng)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    target = dual(625.0)[0] / 1.05  # midpoints 5000, 2500, 1250 are far below; 625 exits early
    mids = []
    r = solve_kl(KLDualRecorder(dual, mids), target, mode="reference", eta_prev=-1.0, final_kl=False)
    assert math.isnan(r.kl) and r.n_evals == r.iterations == len(mids)
    # stops at the first midpoint within 10% of ε; returns the bracket midpoint, not that midpoint
    last = mids[-1]
    assert abs(dual(last)[0] / target - 1) < 0.1
    assert all(abs(dual(m)[0] / target - 1) >= 0.1 for m in mids[:-1])
    assert r.eta != last and abs(r.eta - last) == pytest.approx(1e4 / 2 ** (len(mids) + 1))


class KLDualRecorder:
    def __init__(self, dual, log):
        self.dual, self.log, self.n_evals = dual, log, 0

    def __call__(self, eta):
        self.log.append(eta)
        self.n_evals += 1
        return self.dual(eta)


@pytest.mark.parametrize("eps", [1e-3, 0.1, 10.0])
@pytest.mark.parametrize("neg", [False, True])
@pytest.mark.parametrize("warm", [-1.0, 0.5, 300.0])
def test_exact_meets_bound(rng, eps, neg, warm):
    w, a, h, p = _problem(rng, n=1000, neg=neg)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    r = solve_kl(dual, eps, mode="exact", eta_prev=warm)
    assert r.converged and not r.inactive and not r.bracket_failed
    assert abs(r.kl_ratio - 1) <= 1e-10
    assert r.eta > r.eta_pole >= 0
    assert (r.eta_pole > 0) == neg
    assert r.n_evals <= 12


def test_exact_relative_tolerance_and_counts(rng):
    w, a, h, p = _problem(rng, n=1000)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    r = solve_kl(dual, 0.05, mode="exact", rtol=1e-6)
    assert abs(r.kl_ratio - 1) <= 1e-6 and r.n_evals == r.iterations


def test_exact_inactive_gives_zero(rng):
    w, a, h, p = _problem(rng)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    kl0 = dual(0.0)[0]
    r = solve_kl(dual, 2 * kl0, mode="exact", eta_prev=5.0)
    assert r.inactive and r.eta == 0.0 and r.kl == pytest.approx(kl0, rel=1e-14)
    z = np.zeros_like(w)
    r = solve_kl(KLDual(z, z, h, p, beta=BETA, prior_prec=P0), 0.1, mode="exact")
    assert r.inactive and r.eta == 0.0 and r.kl == 0.0


def test_exact_pole_with_zero_gradient_coordinate(rng):
    # the coordinate with negative curvature has G = 0: KL stays finite at the pole; a loose bound
    # is met just above the pole (the domain is open)
    w, a, h, p = _problem(rng, n=20)
    h[0], a[0], w[0] = -1.0, 0.0, 0.0
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    pole = (1.0 - BETA * P0) / p[0]
    r = solve_kl(dual, 1e6, mode="exact")
    assert r.inactive and r.eta == pytest.approx(pole, rel=1e-7) and r.eta > pole


def test_exact_floor_removes_pole(rng):
    w, a, h, p = _problem(rng, n=500, neg=True)
    r1 = solve_kl(KLDual(w, a, h, p, beta=BETA, prior_prec=P0), 0.01, mode="exact")
    r2 = solve_kl(KLDual(w, a, h, p, beta=BETA, prior_prec=P0, h_min=1e-4), 0.01, mode="exact")
    assert r1.eta_pole > 0 and r2.eta_pole == 0.0
    assert abs(r1.kl_ratio - 1) <= 1e-10 and abs(r2.kl_ratio - 1) <= 1e-10
    assert r1.n_negative_h == r2.n_negative_h == 50


def test_exact_bracket_expansion_and_failure(rng):
    w, a, h, p = _problem(rng)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    r = solve_kl(dual, 1e-9, mode="exact", eta_prev=1e-3)  # root far above the warm start
    assert r.converged and abs(r.kl_ratio - 1) <= 1e-10 and r.eta > 100
    r = solve_kl(dual, 1e-300, mode="exact")  # root near 4e150, reached by Newton from below
    assert r.converged and abs(r.kl_ratio - 1) <= 1e-10


def test_bracket_failure_reported():
    from curvlab.trust_region._roots import solve_decreasing

    r = solve_decreasing(lambda x: (1.0, 0.0), 0.5, lower=0.0, lower_point=0.0, max_iter=100)
    assert r.bracket_failed and not r.converged and r.n_evals == 61  # 1 + 60 expansions


def test_steady_state_oracle(rng):
    n = 400
    G = rng.standard_normal(n)
    c = rng.uniform(0.1, 5.0, n)
    p = c / BETA  # p = h/β + p0 exactly
    # encode G, c as (w = 0, a = G, h = c - βp0)
    dual = KLDual(np.zeros(n), G, c - BETA * P0, p, beta=BETA, prior_prec=P0)
    eps = 0.01
    r = solve_kl(dual, eps, mode="exact", rtol=1e-14)
    oracle = steady_state_eta(G, c, beta=BETA, eps=eps)
    assert abs(r.eta / oracle - 1) <= 1e-10
    assert r.n_evals <= 3  # ψ is linear in η here: one Newton step from the first point


def test_float32_inputs(rng):
    w, a, h, p = _problem(rng, n=1000, dtype=np.float32)
    r = solve_kl(KLDual(w, a, h, p, beta=BETA, prior_prec=P0), 0.05, mode="exact")
    assert abs(r.kl_ratio - 1) <= 1e-10  # sums are float64: the tolerance holds for float32 data


def test_blocks_sum(rng):
    w, a, h, p = _problem(rng, n=300)
    whole = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)(0.9)
    parts = KLDual([w[:100], w[100:]], [a[:100], a[100:]], [h[:100], h[100:]], [p[:100], p[100:]],
                   beta=BETA, prior_prec=P0)(0.9)
    assert parts == pytest.approx(whole, rel=1e-13)


def test_bad_input(rng):
    w, a, h, p = _problem(rng, n=10)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    for eps in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="eps"):
            solve_kl(dual, eps)
    with pytest.raises(ValueError, match="mode"):
        solve_kl(dual, 0.1, mode="newton")
    with pytest.raises(ValueError, match="blocks"):
        KLDual([w, w], [a], [h], [p], beta=BETA, prior_prec=P0)
    with pytest.raises(ValueError, match="beta"):
        KLDual(w, a, h, p, beta=-1.0, prior_prec=P0)
