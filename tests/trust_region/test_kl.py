"""KL trust region of arTuRO: identities, dual monotonicity, reference bisection, exact solver."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from curvlab.linalg.results import ConvergenceError, ConvergenceWarning
from curvlab.trust_region import KLDual, kl_mean, kl_of_step, kl_precision, solve_kl, steady_state_eta
from curvlab.trust_region._roots import bisect_reference
from curvlab.trust_region.kl import _predicted_path


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


# --- issue 11: the exact solver is safe whatever the pole kernel returns; bad input is refused or flagged


def _independent(w, a, h, p, eta, eps):
    """KL(η)/ε, the smallest denominator c + ηp and the smallest coupled precision, in plain float64 NumPy."""
    c = h.astype(np.float64) + BETA * P0
    G = a + (h + BETA * P0) * w
    D = c + eta * p
    kl = 0.5 * np.sum(p * G ** 2 / D ** 2)
    return kl / eps, D.min(), ((c + eta * p) / (BETA + eta)).min()


@pytest.mark.parametrize("n", [65_535, 65_536, 70_001])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exact_large_n_nonnegative_precisions(n, dtype):
    # defect 1: the parallel pole pass (n >= 2**16) returned -inf, the root was found below the pole and
    # reported converged with thousands of negative precisions
    # (small gradients: with eps >= 1 the old code answered eta below the pole, eps = 100 even eta = 0)
    rng = np.random.default_rng(n)
    w, a, h, p = _problem(rng, n=n, neg=True)
    a = -(h + BETA * P0) * w + 1e-3 * rng.standard_normal(n)
    w, a, h, p = (x.astype(dtype) for x in (w, a, h, p))
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    w, a, h, p = (x.astype(np.float64) for x in (w, a, h, p))
    true_pole = np.max(-(h + BETA * P0) / p)
    for eps in (0.01, 1.0, 100.0):
        r = solve_kl(dual, eps, mode="exact")
        ratio, dmin, pmin = _independent(w, a, h, p, r.eta, eps)
        assert r.converged and r.status == "converged" and not r.inactive
        assert r.eta > true_pole > 0 and r.eta_pole == pytest.approx(true_pole, rel=1e-6)
        assert dmin > 0 and pmin > 0
        assert abs(ratio - 1) <= 1e-9


class _BrokenPole(KLDual):
    """A dual whose pole pass returns a fixed (wrong) value: what a broken kernel would do."""

    def __init__(self, *args, pole, **kw):
        super().__init__(*args, **kw)
        self._pole = pole

    def pole(self):
        return self._pole, 0


@pytest.mark.parametrize("pole", [-math.inf, 0.0, -5.0])
@pytest.mark.parametrize("seed", range(4))
def test_exact_never_accepts_eta_below_the_pole(pole, seed):
    rng = np.random.default_rng(seed)
    w, a, h, p = _problem(rng, n=500, neg=True)
    true_pole = np.max(-(h + BETA * P0) / p)
    for eps in (1e-3, 0.1, 10.0):
        dual = _BrokenPole(w, a, h, p, beta=BETA, prior_prec=P0, pole=pole)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            r = solve_kl(dual, eps, mode="exact")
        ratio, dmin, pmin = _independent(w, a, h, p, r.eta, eps)
        assert r.eta > true_pole and dmin > 0 and pmin > 0, (eps, r)
        if r.converged:
            assert abs(ratio - 1) <= 1e-10
        else:
            assert r.status in ("stagnated", "max_iter")


def test_exact_domain_check_on_the_dual(rng):
    w, a, h, p = _problem(rng, n=50, neg=True)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    pole, _ = dual.pole()
    assert math.isfinite(dual(0.5 * pole)[0])  # the plain formula (the reference mode needs it)
    assert dual(0.5 * pole, domain_check=True)[0] == math.inf
    assert dual(2 * pole, domain_check=True) == dual(2 * pole)


def test_exact_infinite_pole_is_refused(rng):
    w, a, h, p = _problem(rng, n=20)
    h[3], p[3] = -1.0, 0.0  # no η makes c + ηp > 0 for this coordinate
    with pytest.raises(ValueError, match="h, p"):
        solve_kl(KLDual(w, a, h, p, beta=BETA, prior_prec=P0), 0.1, mode="exact")
    h[3], p[3] = -np.inf, 1.0
    with pytest.raises(ValueError, match="no feasible"):
        solve_kl(KLDual(w, a, h, p, beta=BETA, prior_prec=P0), 0.1, mode="exact")


@pytest.mark.parametrize("name", ["w", "a", "h", "p"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("mode", ["exact", "reference"])
def test_nonfinite_data_is_flagged(rng, name, bad, mode):
    data = dict(zip("wahp", _problem(rng, n=100)))
    data[name][7] = bad
    dual = KLDual(*data.values(), beta=BETA, prior_prec=P0)
    try:
        with pytest.warns(ConvergenceWarning, match="solve_kl"):
            r = solve_kl(dual, 0.01, mode=mode)
    except ValueError as e:  # h = +inf... is refused up front only through the pole
        assert "h, p" in str(e)
        return
    assert not r.converged and r.status in ("nonfinite", "breakdown") and r.bracket_failed == (r.status == "breakdown")
    with pytest.raises(ConvergenceError) as info:
        solve_kl(dual, 0.01, mode=mode, strict=True)
    assert info.value.result.status == r.status
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert not solve_kl(dual, 0.01, mode=mode, warn=False).converged


def test_unattainable_tolerance_is_flagged(rng):
    w, a, h, p = _problem(rng, n=1000)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    with pytest.warns(ConvergenceWarning):
        r = solve_kl(dual, 0.05, mode="exact", rtol=1e-300)
    assert not r.converged and r.status == "stagnated" and abs(r.kl_ratio - 1) < 1e-12 and r.kl_ratio <= 1


def test_options_are_validated(rng):
    w, a, h, p = _problem(rng, n=10)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    for kw, name in [(dict(rtol=0.0), "rtol"), (dict(rtol=math.nan), "rtol"), (dict(max_iter=0), "max_iter"),
                     (dict(max_iter=2.5), "max_iter"), (dict(eta_prev=math.nan), "eta_prev"),
                     (dict(mode="reference", eta_tol=0.0), "eta_tol"),
                     (dict(mode="reference", eta_max=-1.0), "eta_max"),
                     (dict(mode="reference", warm_factor=0.5), "warm_factor"),
                     (dict(mode="reference", early_exit=math.inf), "early_exit")]:
        with pytest.raises(ValueError, match=name):
            solve_kl(dual, 0.1, **kw)
    for kw, name in [(dict(beta=math.nan), "beta"), (dict(prior_prec=math.inf), "prior_prec"),
                     (dict(mscale=math.nan), "mscale"), (dict(h_min=math.nan), "h_min"),
                     (dict(impl="fortran"), "impl")]:
        with pytest.raises(ValueError, match=name):
            KLDual(w, a, h, p, **{**dict(beta=BETA, prior_prec=P0), **kw})
    with pytest.raises(ValueError, match=r"p\[0\] must have the size"):
        KLDual(w, a, h, p[:5], beta=BETA, prior_prec=P0)
    with pytest.raises(TypeError, match="eps"):
        solve_kl(dual, "0.1")
    for bad in (None, 3, "dual", lambda e: (1.0, -1.0)):
        with pytest.raises(TypeError, match="dual must be a KLDual"):
            solve_kl(bad, 0.1)


@pytest.mark.parametrize("g_pole", [1e-2, 1e-4, 1e-6, 1e-7, 1e-8, 1e-10, 1e-12, 1e-14, 0.0])
@pytest.mark.parametrize("seed", range(2))
def test_exact_near_the_pole_claims_only_what_holds(g_pole, seed):
    # the KL analogue of the l2 near-hard case: the coordinate that sets the pole has a tiny gradient, so
    # the root sits next to the pole where c + ηp cancels; checked in exact rational arithmetic
    from fractions import Fraction as Fr

    rng = np.random.default_rng(seed)
    n = 50
    w, a = np.zeros(n), 0.01 * rng.standard_normal(n)
    h, p = rng.uniform(0.5, 2, n), rng.uniform(5, 50, n)
    h[0], p[0], a[0] = -1.0, 3.0, g_pole
    eps = 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = solve_kl(KLDual(w, a, h, p, beta=BETA, prior_prec=P0), eps, mode="exact")
    bp0, eta = Fr(BETA) * Fr(P0), Fr(r.eta)
    D = [Fr(h[j]) + bp0 + eta * Fr(p[j]) for j in range(n)]
    assert min(D) > 0  # above the pole, exactly
    kl = sum(Fr(p[j]) * Fr(a[j]) ** 2 / D[j] ** 2 for j in range(n)) / 2
    true_ratio = float(kl / Fr(eps))
    if r.inactive:
        assert r.converged and true_ratio <= 1 and g_pole == 0.0
    elif r.converged:
        assert abs(true_ratio - 1) <= 1e-10, (true_ratio, r)
    else:
        assert r.status == "stagnated" and g_pole <= 1e-7 and abs(true_ratio - 1) <= 1e-3 * (g_pole > 1e-13) + 0.1
    if g_pole >= 1e-6:
        assert r.converged


def test_prefetch_equals_fresh_evaluations_in_one_pass(rng):
    w, a, h, p = _problem(rng, n=5000, neg=True)
    dual = KLDual([w[:3000], w[3000:]], [a[:3000], a[3000:]], [h[:3000], h[3000:]], [p[:3000], p[3000:]],
                  beta=BETA, prior_prec=P0)
    fresh = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    etas = [0.5, 3.0, 40.0, 3.0]
    for chk in (False, True):
        dual.prefetch(etas, domain_check=chk)
        assert dual.known(40.0, domain_check=chk) and not dual.known(41.0, domain_check=chk)
    assert dual.n_passes == 2 and dual.n_evals == 0
    for e in etas:
        for chk in (False, True):
            got, want = dual(e, domain_check=chk), fresh(e, domain_check=chk)
            np.testing.assert_allclose(got, want, rtol=1e-12)
    assert dual.n_passes == 2 and dual.n_evals == 8  # the stored values were used: no further pass
    dual(41.0)
    assert dual.n_passes == 3


@pytest.mark.parametrize("warm", [-1.0, 0.3, 2.0, 30.0, 700.0])
@pytest.mark.parametrize("eps", [1e-3, 0.05, 3.0])
def test_reference_solve_with_lookahead_is_the_sequential_bisection(rng, warm, eps):
    """the path evaluated ahead never changes the answer: η, iterations, evaluations and the
    final KL equal those of the plain sequential bisection; it only saves passes"""
    w, a, h, p = _problem(rng, n=2000)
    mids = []
    plain = solve_kl(KLDualRecorder(KLDual(w, a, h, p, beta=BETA, prior_prec=P0), mids), eps, mode="reference",
                     eta_prev=warm, final_kl=True)
    dual = KLDual(w, a, h, p, beta=BETA, prior_prec=P0)
    fast = solve_kl(dual, eps, mode="reference", eta_prev=warm, final_kl=True)
    assert (fast.eta, fast.iterations, fast.n_evals, fast.status) == (plain.eta, plain.iterations, plain.n_evals,
                                                                     plain.status)
    assert fast.kl == pytest.approx(plain.kl, rel=1e-12)
    assert dual.n_passes <= dual.n_evals
    if plain.n_evals >= 4:
        assert dual.n_passes < dual.n_evals


def test_predicted_path_is_the_bisection_path_of_a_known_root():
    for root in (0.01, 3.3, 1234.5, 9999.0):
        seen = []
        eta, it = bisect_reference(lambda x: seen.append(x) or (2.0 if x < root else 0.5), 1.0, -1.0, early=0.0)
        assert _predicted_path(0.0, 1e4, root, 0.5) == seen + [eta]
