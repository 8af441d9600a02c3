"""Fused kernels against their plain-array reference twins (random inputs, both dtypes, edge values)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curvlab import kernels
from curvlab.kernels import reference

DTYPES = [np.float32, np.float64]
# float64: the fused kernels do the same float64 operations in the same order -> equal to
# rounding of the (parallel) sums; float32 states are rounded once per store
TOL = {np.float32: 2e-6, np.float64: 1e-13}


def _native(xp):
    return "auto"


def _state(xp, rng, n, dt, edge=False):
    g = rng.standard_normal(n)
    w = rng.standard_normal(n)
    a = rng.standard_normal(n)
    h = rng.standard_normal(n)
    P00 = rng.uniform(0, 1, n)
    P11 = rng.uniform(0, 1, n)
    P01 = rng.uniform(-1, 1, n) * np.sqrt(P00 * P11)
    if edge:
        k = n // 8
        g[:k] = [0.0, np.nan, np.inf, -np.inf, 1e30, 1e-30, -0.0, 5e-324][: min(k, 8)] * (k // 8) + [0.0] * (k % 8)
        w[k:2 * k] = 0.0
        w[2 * k:2 * k + 3] = [np.nan, 1e20, -1e-20]
        P01[3 * k:4 * k] = 2 * np.sqrt(P00[3 * k:4 * k] * P11[3 * k:4 * k])  # indefinite covariance
        P00[4 * k] = -1e-3
    return [xp.asarray(v.astype(dt)) for v in (g, w, a, h, P00, P01, P11)]


def _close(x, y, dt):
    x = np.asarray(getattr(x, "get", lambda: x)(), np.float64)
    y = np.asarray(getattr(y, "get", lambda: y)(), np.float64)
    np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
    m = np.isfinite(x) & np.isfinite(y)
    np.testing.assert_array_equal(x[~m], y[~m])
    np.testing.assert_allclose(x[m], y[m], rtol=TOL[dt], atol=TOL[dt] * 1e-3)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("edge", [False, True])
@pytest.mark.parametrize("init,guard,forget", [(False, False, 1.0), (True, False, 1.0), (False, True, 0.97)])
def test_filter_matches_reference(xp, rng, dt, edge, init, guard, forget):
    n = 4099
    arrs = _state(xp, rng, n, dt, edge)
    twin = [x.copy() for x in arrs]
    kw = dict(xscale=0.93, q=0.0123, r=1.7, forget=forget, init=init, h0=0.1, P0=5e-2, psd_guard=guard)
    got = kernels.rls_filter_update(*arrs, **kw)
    want = reference.rls_filter_update(*twin, **kw)
    assert got == want
    for x, y in zip(arrs[2:], twin[2:]):
        _close(x, y, dt)
    if edge:
        assert got[0] >= 4  # nan, inf, -inf gradients and the nan weight are skipped


def test_filter_skip_keeps_state(rng):
    arrs = _state(np, rng, 64, np.float64)
    arrs[0][[3, 10]] = [np.nan, np.inf]
    before = [x.copy() for x in arrs]
    skipped, _ = kernels.rls_filter_update(*arrs, q=0.1, r=1.0)
    assert skipped == 2
    for x, y in zip(arrs[2:], before[2:]):
        np.testing.assert_array_equal(x[[3, 10]], y[[3, 10]])
        assert not np.array_equal(x[[0, 1, 2]], y[[0, 1, 2]])


def test_filter_guard_makes_psd(rng):
    arrs = _state(np, rng, 1000, np.float64, edge=True)
    kernels.rls_filter_update(*arrs, q=0.0, r=1.0, psd_guard=True)
    P00, P01, P11 = arrs[4:]
    assert np.all(P00 >= 0) and np.all(P11 >= 0)
    assert np.all(P01 ** 2 <= P00 * P11 * (1 + 1e-12) + 1e-300)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("edge", [False, True])
def test_dual_pole_apply_match_reference(xp, rng, dt, edge):
    n = 5003
    _, w, a, h, p, *_ = _state(xp, rng, n, dt)
    p = xp.abs(p) + dt(0.05)
    if edge:
        a[:7] = xp.asarray(np.array([0, 0, 1e30, 1e-30, 0, 0, 0], dtype=dt))
        w[:7] = 0  # G = 0 rows (a = 0, w = 0) contribute nothing
        h[7:11] = xp.asarray(np.array([0, -1e-3, 1e20, -1e20], dtype=dt))
    kw = dict(mscale=0.97, beta_p0=0.02, h_min=-0.5)
    for eta in (0.0, 0.37, 12.5, 1e6):
        k1, d1 = kernels.kl_dual(eta, w, a, h, p, **kw)
        k2, d2 = reference.kl_dual(eta, w, a, h, p, **kw)
        assert math.isclose(k1, k2, rel_tol=1e-12) and math.isclose(d1, d2, rel_tol=1e-12), (eta, k1, k2, d1, d2)
    assert kernels.kl_pole(h, p, beta_p0=0.02, h_min=-0.5) == reference.kl_pole(h, p, beta_p0=0.02, h_min=-0.5)
    assert kernels.kl_pole(h, p, beta_p0=0.02) == reference.kl_pole(h, p, beta_p0=0.02)
    o1, o2 = xp.empty_like(w), xp.empty_like(w)
    p1, p2 = p.copy(), p.copy()
    akw = dict(kw, nu=1.3, beta=0.1, p_min=0.2)
    c1 = kernels.arturo_apply(2.5, w, a, h, p1, o1, **akw)
    c2 = reference.arturo_apply(2.5, w, a, h, p2, o2, **akw)
    assert c1 == c2 and c1 > 0
    _close(o1, o2, dt)
    _close(p1, p2, dt)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("edge", [False, True])
def test_prepare_and_finish_equal_the_multi_pass_step(xp, rng, dt, edge):
    """pass 1 + pass N of a warm arTuRO step (prepare, finish) give the state, pole, duals and update of
    the multi-pass sequence filter -> pole -> dual -> apply, and pass 1 leaves the state untouched."""
    n = 4099
    g, w, a, h, P00, P01, P11 = _state(xp, rng, n, dt, edge)
    p = xp.asarray(rng.uniform(0.5, 60.0, n).astype(dt))
    st = [a, h, P00, P01, P11, p]
    old = [x.copy() for x in st]
    an, hn = xp.empty_like(w), xp.empty_like(w)
    fkw = dict(xscale=0.93, q=0.0123, r=1.7, mscale=0.97, beta_p0=0.02, h_min=-0.5)
    etas = (0.0, 0.37, 12.5)
    sk, pole, neg, kl, dkl = kernels.arturo_prepare(etas, g, w, *st, an, hn, **fkw)
    for x, y in zip(st, old):
        np.testing.assert_array_equal(np.asarray(getattr(x, "get", lambda: x)()), np.asarray(getattr(y, "get", lambda: y)()))
    ref = [x.copy() for x in old]
    sk2, _ = kernels.rls_filter_update(g, w, *ref[:5], xscale=0.93, q=0.0123, r=1.7)
    pole2, neg2 = kernels.kl_pole(ref[1], ref[5], beta_p0=0.02, h_min=-0.5)
    assert sk == sk2 and neg == neg2 and pole == max(0.0, pole2)
    _close(an, ref[0], dt)
    _close(hn, ref[1], dt)
    for i, eta in enumerate(etas):
        k2, d2 = kernels.kl_dual(eta, w, ref[0], ref[1], ref[5], mscale=0.97, beta_p0=0.02, h_min=-0.5)
        np.testing.assert_allclose([kl[i], dkl[i]], [k2, d2], rtol=1e-12, err_msg=f"eta {eta}")  # NaN == NaN
    if edge:
        assert sk > 0 and math.isnan(kl[0])  # a NaN weight (w = NaN) makes the dual NaN: flagged, not hidden
    many = kernels.kl_dual_multi(etas, w, an, hn, p, mscale=0.97, beta_p0=0.02, h_min=-0.5)
    np.testing.assert_allclose(many[0], kl, rtol=1e-12)
    np.testing.assert_allclose(many[1], dkl, rtol=1e-12)
    o1, o2 = xp.empty_like(w), xp.empty_like(w)
    akw = dict(nu=1.3, beta=0.1, p_min=0.2)
    kl_eta = kernels.kl_dual(2.5, w, ref[0], ref[1], ref[5], mscale=0.97, beta_p0=0.02, h_min=-0.5)
    c1, k1, d1 = kernels.arturo_finish(2.5, g, w, an, hn, *st[2:5], st[5], st[0], st[1], o1, want_kl=True, **fkw, **akw)
    c2 = kernels.arturo_apply(2.5, w, ref[0], ref[1], ref[5], o2, mscale=0.97, beta_p0=0.02, h_min=-0.5, **akw)
    assert c1 == c2
    np.testing.assert_allclose([k1, d1], kl_eta, rtol=1e-12)  # the achieved KL, in the same pass
    for x, y in zip(st + [o1], ref + [o2]):
        _close(x, y, dt)


def test_prepare_rejects_nan_eta_and_a_read_only_scratch():
    z = np.zeros(4)
    kw = dict(q=0.1, r=1.0, beta_p0=0.0)
    with pytest.raises(ValueError, match="etas"):
        kernels.arturo_prepare([0.5, math.nan], z, z, z, z, z, z, z, z, z.copy(), z.copy(), **kw)
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="an must be writeable"):
        kernels.arturo_prepare([0.5], z, z, z, z, z, z, z, z, ro, z.copy(), **kw)
    e = np.zeros(0)
    assert kernels.arturo_prepare([1.0], e, e, e, e, e, e, e, e, e.copy(), e.copy(), **kw)[:3] == (0, 0.0, 0)
    assert kernels.arturo_finish(1.0, e, e, e, e, e.copy(), e.copy(), e.copy(), e.copy(), e.copy(), e.copy(), e.copy(),
                                 q=0.1, r=1.0, beta_p0=0.0, nu=1.0, beta=1.0, want_kl=True) == (0, 0.0, -0.0)


def test_apply_kl_equals_dual(rng):
    _, w, a, h, p, *_ = _state(np, rng, 300, np.float64)
    p = np.abs(p) + 0.1
    h = np.abs(h)
    kl, _ = kernels.kl_dual(0.8, w, a, h, p, beta_p0=0.01)
    out = np.empty_like(w)
    kernels.arturo_apply(0.8, w, a, h, p.copy(), out, beta_p0=0.01, nu=0.0, beta=0.1)
    assert math.isclose(kl, 0.5 * float(np.sum(p * out * out)), rel_tol=1e-12)


def test_dual_float32_accumulates_in_float64():
    n = 3_000_000 // 3
    w = np.zeros(n, np.float32)
    a = np.full(n, 1e-3, np.float32)
    h = np.ones(n, np.float32)
    p = np.ones(n, np.float32)
    kl, dkl = kernels.kl_dual(0.0, w, a, h, p, beta_p0=0.0)
    exact = 0.5 * n * float(np.float32(1e-3)) ** 2
    assert math.isclose(kl, exact, rel_tol=1e-9)


@pytest.mark.parametrize("dt", DTYPES)
def test_count_nonfinite(xp, dt):
    x = xp.asarray(np.array([0, np.nan, np.inf, -np.inf, 1e38, -0.0], dtype=dt))
    assert kernels.count_nonfinite(x) == 3 == kernels.count_nonfinite(x, impl="reference")
    assert kernels.count_nonfinite(xp.zeros(0, dtype=dt)) == 0


def test_empty_arrays():
    z = np.zeros(0)
    assert kernels.rls_filter_update(z, z, z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), q=0.1, r=1.0) == (0, 0)
    assert kernels.kl_dual(1.0, z, z, z, z, beta_p0=0.0) == (0.0, 0.0)
    assert kernels.kl_pole(z, z, beta_p0=0.0) == (-math.inf, 0)
    assert kernels.arturo_apply(1.0, z, z, z, z.copy(), z.copy(), beta_p0=0.0, nu=1.0, beta=1.0) == 0


def test_bad_input():
    x = np.zeros(4)
    with pytest.raises(ValueError, match="impl"):
        kernels.kl_dual(1.0, x, x, x, x, beta_p0=0.0, impl="fortran")
    with pytest.raises(ValueError, match=r"p must have shape \(4,\)"):
        kernels.kl_dual(1.0, x, x, x, np.zeros(3), beta_p0=0.0)
    with pytest.raises(TypeError, match="float32"):
        kernels.kl_dual(1.0, x, x, x, x.astype(np.float32), beta_p0=0.0)
    with pytest.raises(TypeError, match="dtype float32 or float64"):
        kernels.count_nonfinite(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="ndim 1"):
        kernels.kl_dual(1.0, x.reshape(2, 2), x.reshape(2, 2), x.reshape(2, 2), x.reshape(2, 2), beta_p0=0.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        y = np.zeros(8)[::2]
        kernels.kl_dual(1.0, y, y, y, y, beta_p0=0.0)
    with pytest.raises(ValueError, match="writeable"):
        ro = np.zeros(4)
        ro.flags.writeable = False
        kernels.arturo_apply(1.0, x, x, x, ro, x.copy(), beta_p0=0.0, nu=1.0, beta=1.0)
    with pytest.raises(ValueError, match="impl='cupy' needs CuPy"):
        kernels.count_nonfinite(x, impl="cupy")


def test_numpy_impl_computes_in_the_array_dtype(rng):
    _, w, a, h, p, *_ = _state(np, rng, 1000, np.float32)
    p = np.abs(p) + np.float32(0.1)
    k64, _ = kernels.kl_dual(0.3, w, a, h, p, beta_p0=0.01, impl="reference")
    k32, _ = kernels.kl_dual(0.3, w, a, h, p, beta_p0=0.01, impl="numpy")
    assert k32 != k64 and math.isclose(k32, k64, rel_tol=1e-5)


def test_pole_ignores_nan(rng):
    h = np.array([1.0, np.nan, -2.0])
    p = np.ones(3)
    assert kernels.kl_pole(h, p, beta_p0=0.0) == reference.kl_pole(h, p, beta_p0=0.0) == (2.0, 1)


def test_scalar_options_checked():
    x = np.zeros(4)
    s = [np.zeros(4) for _ in range(5)]
    for kw, name in [(dict(q=-1.0, r=1.0), "q"), (dict(q=0.1, r=0.0), "r"), (dict(q=0.1, r=1.0, forget=0.0), "forget"),
                     (dict(q=0.1, r=1.0, forget=math.nan), "forget"), (dict(q=0.1, r=1.0, xscale=math.inf), "xscale"),
                     (dict(q=0.1, r=1.0, P0=-1.0), "P0"), (dict(q=0.1, r=1.0, h0=math.nan), "h0")]:
        with pytest.raises(ValueError, match=name):
            kernels.rls_filter_update(x, x, *s, **kw)
    with pytest.raises(TypeError, match="q"):
        kernels.rls_filter_update(x, x, *s, q="0.1", r=1.0)
    for kw, name in [(dict(beta_p0=-1.0), "beta_p0"), (dict(beta_p0=0.0, mscale=math.nan), "mscale"),
                     (dict(beta_p0=0.0, h_min=math.nan), "h_min")]:
        with pytest.raises(ValueError, match=name):
            kernels.kl_dual(1.0, x, x, x, x, **kw)
    with pytest.raises(ValueError, match="eta"):
        kernels.kl_dual(math.nan, x, x, x, x, beta_p0=0.0)
    with pytest.raises(ValueError, match="beta_p0"):
        kernels.kl_pole(x, x, beta_p0=math.inf)
    with pytest.raises(ValueError, match=r"beta \+ nu"):
        kernels.arturo_apply(0.0, x, x, x, x.copy(), x.copy(), beta_p0=0.0, nu=0.0, beta=0.0)
    with pytest.raises(ValueError, match="nu"):
        kernels.arturo_apply(0.0, x, x, x, x.copy(), x.copy(), beta_p0=0.0, nu=-1.0, beta=1.0)
    with pytest.raises(ValueError, match="impl"):
        kernels.check_impl("fortran")


@pytest.mark.parametrize("impl", ["auto", "numpy", "reference"])
def test_dual_domain_check(impl):
    # c + ηp < 0 for one coordinate (below its pole): +inf with domain_check, whatever G
    h = np.array([1.0, -1.0, 2.0])
    p = np.array([1.0, 1.0, 1.0])
    w = np.zeros(3)
    for a in (np.array([1.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0])):
        plain = kernels.kl_dual(0.5, w, a, h, p, beta_p0=0.0, impl=impl)
        assert math.isfinite(plain[0])
        assert kernels.kl_dual(0.5, w, a, h, p, beta_p0=0.0, domain_check=True, impl=impl)[0] == math.inf
        assert (kernels.kl_dual(1.5, w, a, h, p, beta_p0=0.0, domain_check=True, impl=impl)
                == kernels.kl_dual(1.5, w, a, h, p, beta_p0=0.0, impl=impl))


@pytest.mark.parametrize("impl", ["numpy", "reference"])
def test_twins_read_the_host_once_per_call(monkeypatch, rng, impl):
    # issue 15: the multi-pass twins (impl="numpy" is the baseline arTuRO runs on CuPy) read their sums
    # together; every device-to-host read of the twins goes through backend.to_numpy
    from curvlab import backend

    calls = []
    real = backend.to_numpy
    monkeypatch.setattr(backend, "to_numpy", lambda x: calls.append(1) or real(x))
    g, w, a, h, P00, P01, P11 = _state(np, rng, 100, np.float64)
    p = np.abs(P00) + 0.1
    G = a + (h + 0.01) * w  # the former two-read formula, bit for bit
    iD = 1 / (h + 0.01 + 0.3 * p)
    t = G * iD
    pt2 = p * t * t
    want = (0.5 * float(np.sum(np.where(G == 0, 0.0, pt2), dtype=np.float64)),
            -float(np.sum(np.where(G == 0, 0.0, pt2 * p * iD), dtype=np.float64)))
    calls.clear()
    got = kernels.kl_dual(0.3, w, a, h, p, beta_p0=0.01, impl=impl)
    assert len(calls) == 1 and got == want  # one read, and the same numbers as the two-read version
    calls.clear()
    kernels.kl_pole(h, p, beta_p0=0.01, impl=impl)
    assert len(calls) == 1
    calls.clear()
    kernels.rls_filter_update(g, w, a, h, P00, P01, P11, q=0.1, r=1.0, psd_guard=True, impl=impl)
    assert len(calls) == 1
