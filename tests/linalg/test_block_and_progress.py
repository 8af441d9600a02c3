"""Block products in the solvers (SLQ's probe block, eigsh's LOBPCG path) and the shared callback/progress helper."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from curvlab.linalg import (
    ConvergenceWarning,
    eigsh,
    hutchinson,
    hutchinson_diagonal,
    hutchpp,
    lanczos,
    lobpcg,
    slq,
    slq_logdet,
    slq_trace_inverse,
    xdiag,
    xtrace,
)
from curvlab.linalg.operators import LinearOperator
from curvlab.linalg.power import power_iteration
from curvlab.linalg.slq import _block_lanczos
from curvlab.linalg._progress import Monitor
from curvlab.linalg.testing import prescribed_spectrum_operator
from tests import _strict_cupy

SPECTRA = {
    "flat+outliers": np.concatenate([np.linspace(1.0, 10.0, 150), [50.0, 100.0]]),
    "log-spaced": np.logspace(-2, 3, 200),
    "closes at 40": np.arange(1.0, 41.0),
}


class CountingOperator(LinearOperator):
    """A dense symmetric operator that counts its ``matvec`` and ``matmat`` calls."""

    def __init__(self, M: np.ndarray) -> None:
        super().__init__(M.shape, M.dtype, symmetric=True, name="counting")
        self.M = M
        self.calls = {"matvec": 0, "matmat": 0}

    def _matvec(self, v):
        self.calls["matvec"] += 1
        return self.M @ v

    def _matmat(self, V):
        self.calls["matmat"] += 1
        return self.M @ V


def _dense(lam, seed=0):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    return (Q * lam) @ Q.T


# ------------------------------------------------------------------------------------------- block SLQ


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
@pytest.mark.parametrize("name", list(SPECTRA))
def test_block_slq_equals_per_probe_runs(name, probe):
    lam = SPECTRA[name]
    A = prescribed_spectrum_operator(lam, rng=0).operator
    m = min(30, lam.size)
    for seed in range(3):
        blk = slq(A, 5, m, probe=probe, rng=seed)
        one = slq(A, 5, m, probe=probe, rng=seed, block=False)
        scale = np.abs(lam).max()
        assert blk.n_matvecs == one.n_matvecs
        np.testing.assert_array_equal(blk.steps, one.steps)
        np.testing.assert_array_equal(blk.breakdown, one.breakdown)
        np.testing.assert_allclose(blk.probe_norms_sq, one.probe_norms_sq, rtol=1e-14)
        assert np.max(np.abs(blk.nodes - one.nodes)) <= 1e-12 * scale
        assert np.max(np.abs(blk.weights - one.weights)) <= 1e-12
        for f in (np.log, lambda t: 1.0 / t, lambda t: t):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                tb, to = blk.trace(f), one.trace(f)
            # the Gauss rules agree to round-off; the extrapolated tail adds at most a round-off share of
            # the quadrature error (it divides by 1 - ρ, which amplifies the rules' last digits)
            np.testing.assert_allclose(blk.probe_values(f), one.probe_values(f), rtol=0, atol=1e-12 * abs(to.estimate))
            q = to.quadrature_error if np.isfinite(to.quadrature_error) else abs(to.estimate)
            assert abs(tb.estimate - to.estimate) <= 1e-12 * abs(to.estimate) + 1e-6 * q
            assert tb.converged == to.converged
            assert abs(tb.probe_std_error - to.probe_std_error) <= 1e-10 * abs(to.estimate) + 1e-6 * q
            # the quadrature error is a difference of nearly equal rules: equal up to their round-off
            if np.isfinite(to.quadrature_error):
                assert abs(tb.quadrature_error - to.quadrature_error) <= 1e-10 * abs(to.estimate) + 1e-6 * to.quadrature_error


def test_block_slq_radau_and_extrapolation_unchanged():
    lam = np.linspace(0.5, 20.0, 160)
    A = prescribed_spectrum_operator(lam, rng=1).operator
    for kw in ({}, {"lambda_min": 0.4}):
        for f in (slq_logdet, slq_trace_inverse):
            rb = f(A, 6, 25, rng=2, **kw)
            ro = f(A, 6, 25, rng=2, block=False, **kw)
            assert abs(rb.estimate - ro.estimate) <= 1e-12 * abs(ro.estimate)
            np.testing.assert_allclose(rb.std_error, ro.std_error, rtol=1e-6)
            np.testing.assert_allclose(rb.quadrature_error, ro.quadrature_error, rtol=1e-5, atol=1e-11 * abs(ro.estimate))
            assert rb.converged == ro.converged and rb.method == ro.method


def test_block_slq_is_one_matmat_per_step():
    op = CountingOperator(_dense(np.linspace(1.0, 5.0, 60)))
    sd = slq(op, 7, 12, rng=0)
    assert op.calls == {"matvec": 0, "matmat": 12}
    assert sd.n_matvecs == 7 * 12 == op.n_matvecs
    op2 = CountingOperator(op.M)
    slq(op2, 7, 12, rng=0, block=False)
    assert op2.calls["matmat"] == 0 and op2.calls["matvec"] == 7 * 12


def test_block_lanczos_drops_probes_whose_krylov_space_closes():
    n = 20
    lam = np.arange(1.0, n + 1.0)
    op = CountingOperator(np.diag(lam))
    rng = np.random.default_rng(0)
    Z = np.zeros((n, 3))
    for c, support in enumerate((3, 7, n)):  # a probe on s eigenvectors closes after s steps
        Z[rng.choice(n, support, replace=False), c] = rng.choice([-1.0, 1.0], support)
    from curvlab.linalg._checks import as_symmetric_operator

    mon = Monitor("test")
    alpha, beta, steps, brk, norms, n_mv = _block_lanczos(as_symmetric_operator(op), Z, 12, mon)
    np.testing.assert_array_equal(steps, [3, 7, 12])
    np.testing.assert_array_equal(brk, [True, True, False])
    assert n_mv == 3 + 7 + 12  # a closed probe costs nothing more
    for c in range(3):
        dec = lanczos(np.diag(lam), 12, v0=Z[:, c])
        s = int(steps[c])
        assert dec.alpha.size == s and dec.breakdown == brk[c]
        np.testing.assert_allclose(alpha[c, :s], dec.alpha, rtol=0, atol=1e-12 * n)
        np.testing.assert_allclose(beta[c, :s], dec.beta, rtol=0, atol=1e-12 * n)
        assert norms[c] == pytest.approx(dec.start_norm**2, rel=1e-14)
    # the closed probes' quadratures are exact: tr f over their support
    sd = slq(op, 3, 12, rng=0)
    assert sd.status == "converged"


def test_block_slq_float32_matches_per_probe_loosely():
    lam = np.linspace(1.0, 10.0, 100)
    A = prescribed_spectrum_operator(lam, rng=0, dtype=np.float32).operator
    b, o = slq(A, 4, 15, rng=1), slq(A, 4, 15, rng=1, block=False)
    assert np.max(np.abs(b.nodes - o.nodes)) <= 1e-4 * lam.max()


# ------------------------------------------------------------------------------------------- eigsh block path


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_eigsh_lobpcg_solver_against_eigvalsh(which):
    lam = np.concatenate([np.linspace(0.5, 1.5, 100), [3.0, 4.0, 4.0, 5.0, -2.0, -3.0, -3.0]])
    M = _dense(lam, seed=3)
    ref = np.linalg.eigvalsh(M)
    want = ref[::-1][:4] if which == "LA" else ref[:4]
    op = CountingOperator(M)
    res = eigsh(op, 4, which, tol=1e-9, solver="lobpcg", block_size=8, rng=0)
    assert res.all_converged and res.status == "converged" and res.method == "lobpcg"
    np.testing.assert_allclose(res.eigenvalues, want, atol=1e-8)
    assert op.calls["matvec"] == 0 and op.calls["matmat"] > 0  # every product a block product
    assert np.all(res.residual_norms <= 1e-9 * np.maximum(np.abs(res.eigenvalues), 1.0))
    lz = eigsh(M, 4, which, tol=1e-9, rng=0)
    np.testing.assert_allclose(lz.eigenvalues[np.argsort(lz.eigenvalues)], np.sort(want), atol=1e-8)


def test_eigsh_solver_option_checks():
    M = _dense(np.linspace(1.0, 2.0, 40))
    with pytest.raises(ValueError, match="solver"):
        eigsh(M, 2, solver="arpack")
    with pytest.raises(ValueError, match="which"):
        eigsh(M, 2, "BE", solver="lobpcg")
    with pytest.raises(ValueError, match="ncv"):
        eigsh(M, 2, solver="lobpcg", ncv=10)
    with pytest.raises(ValueError, match="block_size"):
        eigsh(M, 2, block_size=4)
    res = eigsh(M, 2, solver="lobpcg", return_eigenvectors=False, rng=0, tol=1e-6)
    assert res.eigenvectors is None and res.all_converged


# ------------------------------------------------------------------------------------------- callbacks


def _A(n=120):
    return prescribed_spectrum_operator(np.linspace(1.0, 10.0, n), rng=0).operator


ROUTINES = {
    "lanczos": lambda A, **kw: lanczos(A, 15, rng=0, **kw),
    "eigsh": lambda A, **kw: eigsh(A, 2, tol=1e-12, ncv=8, rng=0, **kw),
    "eigsh-lobpcg": lambda A, **kw: eigsh(A, 2, tol=1e-12, solver="lobpcg", rng=0, **kw),
    "lobpcg": lambda A, **kw: lobpcg(A, 2, tol=1e-12, rng=0, **kw),
    "power_iteration": lambda A, **kw: power_iteration(A, 1, tol=1e-12, rng=0, **kw),
    "slq": lambda A, **kw: slq(A, 4, 12, rng=0, **kw),
    "slq-per-probe": lambda A, **kw: slq(A, 4, 12, rng=0, block=False, **kw),
    "slq_logdet": lambda A, **kw: slq_logdet(A, 4, 12, rng=0, **kw),
    "slq_trace_inverse": lambda A, **kw: slq_trace_inverse(A, 4, 12, rng=0, lambda_min=0.5, **kw),
    "hutchinson": lambda A, **kw: hutchinson(A, 64, block_size=16, rng=0, **kw),
    "hutchpp": lambda A, **kw: hutchpp(A, target_rel_error=1e-12, max_matvecs=100, rank=10, block_size=16, rng=0, **kw),
    "xtrace": lambda A, **kw: xtrace(A, target_rel_error=1e-12, max_matvecs=119, rng=0, **kw),
    "hutchinson_diagonal": lambda A, **kw: hutchinson_diagonal(A, 64, block_size=16, rng=0, **kw),
    "xdiag": lambda A, **kw: xdiag(A, target_rel_error=1e-12, max_matvecs=119, rng=0, **kw),
}
# how many times the callback runs when nothing stops it (None: at least 3)
EXPECTED_CALLS = {"lanczos": 15, "slq": 12, "slq-per-probe": 48, "slq_logdet": 12, "slq_trace_inverse": 12,
                  "hutchinson": 4, "hutchinson_diagonal": 4, "xtrace": 3, "xdiag": 3}


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn()


@pytest.mark.parametrize("name", list(ROUTINES))
def test_callback_called_per_iteration_with_growing_matvecs(name):
    infos = []
    res = _quiet(lambda: ROUTINES[name](_A(), callback=lambda info: infos.append(dict(info))))
    want = EXPECTED_CALLS.get(name)
    if want is None:
        assert len(infos) >= 3, len(infos)
    else:
        assert len(infos) == want, (len(infos), want)
    assert [i["iteration"] for i in infos] == list(range(1, len(infos) + 1))
    mv = [i["n_matvecs"] for i in infos]
    assert all(b > a for a, b in zip(mv, mv[1:])), mv
    assert mv[-1] <= res.n_matvecs
    assert all(i["who"] for i in infos)


@pytest.mark.parametrize("how", ["true", "stopiteration"])
@pytest.mark.parametrize("name", list(ROUTINES))
def test_callback_stops_early_and_flags(name, how):
    calls = []

    def cb(info):
        calls.append(info["n_matvecs"])
        if len(calls) == 2:
            if how == "true":
                return True
            raise StopIteration

    full = _quiet(lambda: ROUTINES[name](_A()))
    with pytest.warns(ConvergenceWarning, match="stopped by callback"):
        res = ROUTINES[name](_A(), callback=cb)
    assert len(calls) == 2
    assert res.n_matvecs < full.n_matvecs
    if name == "lanczos":
        assert res.alpha.size == 2 and "stopped by callback" in res.message
    elif name.startswith("slq") and name not in ("slq_logdet", "slq_trace_inverse"):
        assert res.status == "max_iter"
    elif name in ("slq_logdet", "slq_trace_inverse"):
        assert "stopped by callback" in res.message
    else:
        assert res.status == "max_iter" and not res.converged if hasattr(res, "converged") and isinstance(
            res.converged, bool) else res.status == "max_iter"
        assert "stopped by callback" in res.message


def test_callback_stop_on_slq_keeps_honest_quadrature():
    A = _A()
    with pytest.warns(ConvergenceWarning, match="stopped by callback"):
        sd = slq(A, 4, 30, rng=0, callback=lambda info: info["step"] == 2)
    assert sd.status == "max_iter" and np.all(sd.steps == 2)
    with pytest.warns(ConvergenceWarning, match="unresolved"):
        est = sd.trace(np.log)  # 2 steps cannot resolve the quadrature error: said so, not hidden
    assert not est.converged and est.std_error == np.inf
    with pytest.raises(Exception, match="stopped by callback"):
        slq_logdet(A, 4, 30, rng=0, strict=True, callback=lambda info: True)


def test_bad_callback_and_progress_arguments():
    A = _A(40)
    with pytest.raises(TypeError, match="callback"):
        slq(A, 2, 5, callback=3)
    with pytest.raises(TypeError, match="progress"):
        hutchinson(A, 8, progress="yes")
    with pytest.raises(TypeError, match="progress"):
        eigsh(A, 2, progress=1)


# ------------------------------------------------------------------------------------------- progress


@pytest.mark.parametrize("name", ["lanczos", "eigsh", "lobpcg", "power_iteration", "slq", "slq_logdet", "hutchinson", "xdiag"])
def test_progress_bar_on_stderr_and_silent_by_default(name, capsys):
    _quiet(lambda: ROUTINES[name](_A()))
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    _quiet(lambda: ROUTINES[name](_A(), progress=True))
    out = capsys.readouterr()
    assert out.out == ""
    who = {"slq_logdet": "slq"}.get(name, name)
    assert who in out.err, out.err
    _quiet(lambda: ROUTINES[name](_A(), progress={"desc": "my-run", "mininterval": 0}))
    assert "my-run" in capsys.readouterr().err


def test_monitor_without_tqdm_raises_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    with pytest.raises(ImportError, match="tqdm"):
        Monitor("slq", progress=True)
    Monitor("slq", progress=False)  # silent needs no tqdm


# ------------------------------------------------------------------------------------------- host syncs


@pytest.mark.gpu
@pytest.mark.skipif(not _strict_cupy.installed(), reason="host syncs are counted by the strict CuPy stand-in only "
                    "(pytest -m gpu --strict-cupy)")
def test_block_slq_one_sync_per_block_step():
    import cupy

    from tests._strict_cupy import count_syncs

    A = prescribed_spectrum_operator(np.linspace(1.0, 10.0, 120), 0, xp=cupy).operator
    for m in (10, 20):
        with count_syncs() as log:
            sd = slq(A, 5, m, rng=0)
        assert sd.n_matvecs == 5 * m
        assert log.count <= m + 1, log.report()
