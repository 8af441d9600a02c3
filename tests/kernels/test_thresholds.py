"""Every fast kernel against its reference twin on both sides of every code-path threshold.

The Numba kernels switch from a serial twin to a ``prange`` version at
``cpu.PARALLEL_MIN`` elements (the only size threshold in :mod:`curvlab.kernels`;
the CuPy kernels have none). A reduction that Numba does not recognise inside
``prange`` is silently wrong only above that size (issue 11, defect 1: ``kl_pole``
returned ``-inf``), so each kernel is compared with :mod:`curvlab.kernels.reference`
at a small size and at ``PARALLEL_MIN - 1``, ``PARALLEL_MIN``, ``PARALLEL_MIN + 1``,
in float32 and float64, on random data with edge values (zeros, ±0, NaN, ±Inf, huge,
tiny, subnormal, negative curvature and precision 0), for ``impl="numba"`` and
``impl="numpy"`` (the same twin in the array dtype).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from curvlab import kernels
from curvlab.kernels import cpu, reference

DTYPES = [np.float32, np.float64]
SIZES = [13, cpu.PARALLEL_MIN - 1, cpu.PARALLEL_MIN, cpu.PARALLEL_MIN + 1]
IMPLS = ["numba", "numpy"]
#: the chunked multi-η kernels (kl_dual_multi, arturo_prepare) also change path at chunk boundaries
#: (a partial last chunk; PARALLEL_MIN + 1 is 16 chunks and one element)
SIZES_CHUNKED = [13, cpu.CHUNK - 1, cpu.CHUNK, cpu.CHUNK + 1, cpu.PARALLEL_MIN - 1, cpu.PARALLEL_MIN,
                 cpu.PARALLEL_MIN + 1]


def test_the_threshold_is_the_one_tested():
    # a new threshold in cpu.py must be added to SIZES (grep for the name of every size constant)
    consts = [k for k, v in vars(cpu).items() if k.isupper() and isinstance(v, int) and not isinstance(v, bool)]
    assert consts == ["PARALLEL_MIN", "CHUNK"]
    assert set(SIZES_CHUNKED) >= {cpu.CHUNK - 1, cpu.CHUNK, cpu.CHUNK + 1, *SIZES}
    assert cpu._pick(cpu._pole_par, cpu._pole_ser, cpu.PARALLEL_MIN) is cpu._pole_par
    assert cpu._pick(cpu._pole_par, cpu._pole_ser, cpu.PARALLEL_MIN - 1) is cpu._pole_ser


def _edge(x, rng, values):
    """Scatter ``values`` at random positions of ``x`` (in place), a few copies each."""
    n = x.size
    for v in values:
        x[rng.integers(0, n, size=max(1, n // 5000))] = v
    return x


def _data(n, dt, seed, edge):
    rng = np.random.default_rng(seed)
    g, w, a = (rng.standard_normal(n) for _ in range(3))
    h = rng.uniform(-1.0, 3.0, n)
    p = rng.uniform(0.05, 50.0, n)
    P00, P11 = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    P01 = rng.uniform(-1, 1, n) * np.sqrt(P00 * P11)
    if edge:
        tiny = float(np.finfo(dt).tiny) / 4  # subnormal in the dtype
        _edge(g, rng, [0.0, -0.0, np.nan, np.inf, -np.inf, 1e30, 1e-30, tiny])
        _edge(w, rng, [0.0, np.nan, 1e20, -1e-20, tiny])
        _edge(a, rng, [0.0, 1e30, -1e-30])
        _edge(h, rng, [0.0, -0.0, -1e-3, 1e20, -1e20, np.nan])
        _edge(p, rng, [1e-30, 1e20])
        _edge(P01, rng, [2.0, -3.0])  # indefinite covariances for the PSD guard
        _edge(P00, rng, [-1e-3])
    with np.errstate(over="ignore"):
        return {k: v.astype(dt) for k, v in dict(g=g, w=w, a=a, h=h, p=p, P00=P00, P01=P01, P11=P11).items()}


def _tol(dt, impl):
    # numba: float64 per element, float64 sums (reassociated in parallel), float32 states rounded once
    # per store; "numpy" is the twin itself in the array dtype (compared with ``_ref(dt, impl)``)
    return 2e-6 if dt == np.float32 else 1e-12


class _ref:
    """The twin to compare ``impl`` with: float64 arithmetic for numba, the array dtype for "numpy"."""

    def __init__(self, dt, impl):
        self.kw = dict(dtype=dt) if impl == "numpy" else {}

    def __getattr__(self, name):
        fn = getattr(reference, name)

        def call(*args, **kw):
            with np.errstate(all="ignore"):
                return fn(*args, **kw, **self.kw)

        return call


def _same(x, y, rtol, what):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=what)
    m = np.isfinite(x) & np.isfinite(y)
    np.testing.assert_array_equal(x[~m], y[~m], err_msg=what)
    np.testing.assert_allclose(x[m], y[m], rtol=rtol, atol=rtol * 1e-3, err_msg=what)


def _scalar(x, y, rtol, what):
    assert (math.isnan(x) and math.isnan(y)) or x == y or math.isclose(x, y, rel_tol=rtol), (what, x, y)


CASES = [pytest.param(n, dt, impl, edge, id=f"n{n}-{np.dtype(dt).name}-{impl}-{'edge' if edge else 'plain'}")
         for n in SIZES for dt in DTYPES for impl in IMPLS for edge in (False, True)]


@pytest.mark.parametrize("n,dt,impl,edge", CASES)
def test_pole_matches_twin(n, dt, impl, edge):
    d = _data(n, dt, 1, edge)
    for kw in (dict(beta_p0=0.02), dict(beta_p0=0.02, h_min=-0.5), dict(beta_p0=0.0, h_min=0.1)):
        got = kernels.kl_pole(d["h"], d["p"], impl=impl, **kw)
        want = _ref(dt, impl).kl_pole(d["h"], d["p"], **kw)
        assert got[1] == want[1], (kw, got, want)
        _scalar(got[0], want[0], _tol(dt, impl), f"pole {kw}")
    # the maximum is attained at one coordinate anywhere in the array: put it at the last and first index
    for i in (0, n - 1, n // 2):
        h = d["h"].copy()
        h[i] = -1e3
        got = kernels.kl_pole(h, d["p"], beta_p0=0.0, impl=impl)
        want = _ref(dt, impl).kl_pole(h, d["p"], beta_p0=0.0)
        assert got[1] == want[1] and math.isclose(got[0], want[0], rel_tol=_tol(dt, impl)), (i, got, want)


@pytest.mark.parametrize("n,dt,impl,edge", CASES)
def test_dual_matches_twin(n, dt, impl, edge):
    d = _data(n, dt, 2, edge)
    for eta in (0.0, 0.37, 1e6):
        for kw in (dict(mscale=0.97, beta_p0=0.02, h_min=-0.5), dict(beta_p0=0.0),
                   dict(beta_p0=0.02, h_min=-0.5, domain_check=True), dict(beta_p0=0.0, domain_check=True)):
            with np.errstate(all="ignore"):
                got = kernels.kl_dual(eta, d["w"], d["a"], d["h"], d["p"], impl=impl, **kw)
            want = _ref(dt, impl).kl_dual(eta, d["w"], d["a"], d["h"], d["p"], **kw)
            for x, y in zip(got, want):
                _scalar(x, y, _tol(dt, impl), f"dual eta={eta} {kw}")


@pytest.mark.parametrize("n,dt,impl,edge", CASES)
def test_apply_matches_twin(n, dt, impl, edge):
    d = _data(n, dt, 3, edge)
    kw = dict(mscale=0.97, beta_p0=0.02, h_min=-0.5, nu=1.3, beta=0.1, p_min=0.2)
    p1, p2 = d["p"].copy(), d["p"].copy()
    o1, o2 = np.empty_like(d["w"]), np.empty_like(d["w"])
    with np.errstate(all="ignore"):
        c1 = kernels.arturo_apply(2.5, d["w"], d["a"], d["h"], p1, o1, impl=impl, **kw)
        c2 = _ref(dt, impl).arturo_apply(2.5, d["w"], d["a"], d["h"], p2, o2, **kw)
    assert c1 == c2 and (c1 > 0 or n < 100)
    _same(o1, o2, _tol(dt, impl), "out")
    _same(p1, p2, _tol(dt, impl), "p")


@pytest.mark.parametrize("n,dt,impl,edge", CASES)
@pytest.mark.parametrize("init,guard,forget", [(False, False, 1.0), (True, True, 0.97)])
def test_filter_matches_twin(n, dt, impl, edge, init, guard, forget):
    d = _data(n, dt, 4, edge)
    names = ("g", "w", "a", "h", "P00", "P01", "P11")
    A = [d[k].copy() for k in names]
    B = [d[k].copy() for k in names]
    kw = dict(xscale=0.93, q=0.0123, r=1.7, forget=forget, init=init, h0=0.1, P0=5e-2, psd_guard=guard)
    with np.errstate(all="ignore"):
        got = kernels.rls_filter_update(*A, impl=impl, **kw)
        want = _ref(dt, impl).rls_filter_update(*B, **kw)
    assert got == want
    for k, x, y in zip(names[2:], A[2:], B[2:]):
        _same(x, y, _tol(dt, impl), k)
    if edge:
        assert got[0] > 0


@pytest.mark.parametrize("n,dt,impl,edge", CASES)
def test_count_nonfinite_matches_twin(n, dt, impl, edge):
    d = _data(n, dt, 5, edge)
    for k in ("g", "w", "h"):
        assert kernels.count_nonfinite(d[k], impl=impl) == reference.count_nonfinite(d[k])
    if edge:
        assert kernels.count_nonfinite(d["g"], impl=impl) > 0


CASES_CHUNKED = [pytest.param(n, dt, impl, edge, id=f"n{n}-{np.dtype(dt).name}-{impl}-{'edge' if edge else 'plain'}")
                 for n in SIZES_CHUNKED for dt in DTYPES for impl in IMPLS for edge in (False, True)]
ETAS = (0.0, 0.37, 12.5, 1e6)


@pytest.mark.parametrize("n,dt,impl,edge", CASES_CHUNKED)
def test_dual_multi_matches_twin(n, dt, impl, edge):
    d = _data(n, dt, 6, edge)
    for kw in (dict(mscale=0.97, beta_p0=0.02, h_min=-0.5), dict(beta_p0=0.0, domain_check=True)):
        with np.errstate(all="ignore"):
            got = kernels.kl_dual_multi(ETAS, d["w"], d["a"], d["h"], d["p"], impl=impl, **kw)
        want = _ref(dt, impl).kl_dual_multi(ETAS, d["w"], d["a"], d["h"], d["p"], **kw)
        for i, eta in enumerate(ETAS):
            for x, y in zip(got, want):
                _scalar(float(x[i]), float(y[i]), _tol(dt, impl), f"dual_multi eta={eta} {kw}")


@pytest.mark.parametrize("n,dt,impl,edge", CASES_CHUNKED)
def test_prepare_matches_twin(n, dt, impl, edge):
    d = _data(n, dt, 7, edge)
    names = ("g", "w", "a", "h", "P00", "P01", "P11", "p")
    before = {k: d[k].copy() for k in names}
    kw = dict(xscale=0.93, q=0.0123, r=1.7, forget=0.97, mscale=0.97, beta_p0=0.02, h_min=-0.5)
    for chk in (False, True):
        an1, hn1, an2, hn2 = (np.empty_like(d["w"]) for _ in range(4))
        with np.errstate(all="ignore"):
            got = kernels.arturo_prepare(ETAS, *(d[k] for k in names), an1, hn1, domain_check=chk, impl=impl, **kw)
        want = _ref(dt, impl).arturo_prepare(ETAS, *(d[k] for k in names), an2, hn2, domain_check=chk, **kw)
        for k in names:  # the state is only read
            np.testing.assert_array_equal(d[k], before[k], err_msg=k)
        assert got[0] == want[0] and got[2] == want[2], (got[:3], want[:3])
        assert got[1] >= 0.0
        _scalar(got[1], want[1], _tol(dt, impl), "pole")
        for x, y in zip(got[3:], want[3:]):
            for i, eta in enumerate(ETAS):
                _scalar(float(x[i]), float(y[i]), _tol(dt, impl), f"prepare dual eta={eta} chk={chk}")
        _same(an1, an2, _tol(dt, impl), "an")
        _same(hn1, hn2, _tol(dt, impl), "hn")
    if edge:
        assert got[0] > 0


@pytest.mark.parametrize("n,dt,impl,edge", CASES_CHUNKED)
@pytest.mark.parametrize("want_kl", [False, True])
def test_finish_matches_twin(n, dt, impl, edge, want_kl):
    d = _data(n, dt, 8, edge)
    rng = np.random.default_rng(9)
    an = rng.standard_normal(n).astype(dt)
    hn = rng.uniform(-1.0, 3.0, n).astype(dt)
    names = ("P00", "P01", "P11", "p", "a", "h")
    A = {k: d[k].copy() for k in names}
    B = {k: d[k].copy() for k in names}
    o1, o2 = np.empty_like(d["w"]), np.empty_like(d["w"])
    kw = dict(xscale=0.93, q=0.0123, r=1.7, forget=0.97, mscale=0.97, beta_p0=0.02, h_min=-0.5, nu=1.3, beta=0.1,
              p_min=0.2)
    want = _ref(dt, impl).kl_dual(2.5, d["w"], an, hn, d["p"], mscale=0.97, beta_p0=0.02, h_min=-0.5)
    with np.errstate(all="ignore"):
        c1 = kernels.arturo_finish(2.5, d["g"], d["w"], an, hn, *(A[k] for k in names), o1, impl=impl,
                                   want_kl=want_kl, **kw)
        c2 = _ref(dt, impl).arturo_finish(2.5, d["g"], d["w"], an, hn, *(B[k] for k in names), o2, **kw)
    assert c1[0] == c2[0] and (c1[0] > 0 or n < 100)
    if want_kl:  # the dual at η with the old p, computed per chunk in the same pass
        _scalar(c1[1], want[0], _tol(dt, impl), "finish kl")
        _scalar(c1[2], want[1], _tol(dt, impl), "finish dkl")
    else:
        assert math.isnan(c1[1]) and math.isnan(c1[2])
    _same(o1, o2, _tol(dt, impl), "out")
    for k in names:
        _same(A[k], B[k], _tol(dt, impl), k)
    np.testing.assert_array_equal(A["a"], an)
    np.testing.assert_array_equal(A["h"], hn)
