"""Eigen-solvers and trace estimators (curvlab.linalg, issue 3).

* ``track_matvecs_*``: operator products to reach relative residual 1e-8 for the
  top ``k`` eigenpairs, curvlab ``eigsh`` (thick-restart Lanczos) and SciPy's
  ARPACK ``eigsh`` from the same start vector (target: ours <= ARPACK), and the
  ratio; a run that did not converge is skipped (NaN), never timed.
* ``time_*``: wall time of the solves (one BLAS thread).
* ``track_trace_error_*``: mean relative error of Hutchinson / Hutch++ / XTrace
  at equal matvecs on a fast-decay spectrum.
* ``TimeLobpcgBackend``: LOBPCG with ``matmat`` on NumPy vs CuPy (n = 100,000,
  a cheap diagonal-plus-low-rank operator); the CuPy case is skipped without a GPU.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .common import blas_threads, get_xp, sync


class EigshVsArpack:
    params = (["decaying", "uniform"], [2000, 20000], [1, 5, 20])
    param_names = ["spectrum", "n", "k"]
    timeout = 300

    def setup(self, spectrum, n, k):
        from curvlab.linalg.testing import named_spectrum, prescribed_spectrum_operator

        self._lim = contextlib.ExitStack()
        self._lim.enter_context(blas_threads(1))
        self.op = prescribed_spectrum_operator(named_spectrum(spectrum, n), rng=0).operator
        self.v0 = np.random.default_rng(1).standard_normal(n)

    def teardown(self, *args):
        self._lim.close()

    def _ours(self, k):
        from curvlab.linalg import eigsh

        res = eigsh(self.op, k=k, which="LA", tol=1e-8, v0=self.v0)
        if not res.all_converged:
            raise NotImplementedError("eigsh did not converge")
        return res.n_matvecs

    def _arpack(self, k):
        import scipy.sparse.linalg as sla

        self.op.reset_counter()
        sla.eigsh(self.op.to_scipy(), k=k, which="LA", tol=1e-8, v0=self.v0)
        return self.op.n_matvecs

    def track_matvecs_curvlab(self, spectrum, n, k):
        return self._ours(k)

    def track_matvecs_arpack(self, spectrum, n, k):
        return self._arpack(k)

    def track_matvecs_ratio(self, spectrum, n, k):
        return self._ours(k) / self._arpack(k)

    def time_curvlab(self, spectrum, n, k):
        self._ours(k)

    def time_arpack(self, spectrum, n, k):
        self._arpack(k)

    track_matvecs_curvlab.unit = "matvecs"
    track_matvecs_arpack.unit = "matvecs"
    track_matvecs_ratio.unit = "ratio"


class TopEigenvalueSolvers:
    params = (["power", "lanczos", "lobpcg"], [1e-3, 1e-6])
    param_names = ["solver", "tol"]

    def setup(self, solver, tol):
        from curvlab.linalg.testing import named_spectrum, prescribed_spectrum_operator

        self.op = prescribed_spectrum_operator(named_spectrum("large_gap", 2000), rng=0).operator

    def _run(self, solver, tol):
        from curvlab.linalg import eigsh, lobpcg, power_iteration

        if solver == "power":
            r = power_iteration(self.op, 1, tol, maxiter=20000, rng=0)
        elif solver == "lanczos":
            r = eigsh(self.op, 1, "LA", tol, rng=0)
        else:
            r = lobpcg(self.op, 1, "LA", tol, rng=0, maxiter=5000)
        if not r.all_converged:
            raise NotImplementedError(f"{solver} did not converge")
        return r.n_matvecs

    def track_matvecs(self, solver, tol):
        return self._run(solver, tol)

    track_matvecs.unit = "matvecs"


class TraceError:
    params = (["hutchinson", "hutchpp", "xtrace"], [60, 120])
    param_names = ["estimator", "matvecs"]

    def setup(self, estimator, matvecs):
        from curvlab.linalg.testing import named_spectrum, prescribed_spectrum_operator

        ps = prescribed_spectrum_operator(named_spectrum("fast_decay", 1000), rng=0)
        self.op, self.tr = ps.operator, ps.eigenvalues.sum()

    def track_trace_error(self, estimator, matvecs):
        import curvlab.linalg as L

        f = getattr(L, estimator)
        return float(np.mean([abs(f(self.op, matvecs, rng=s).estimate - self.tr) / self.tr for s in range(10)]))

    track_trace_error.unit = "relative error"


class TimeLobpcgBackend:
    """LOBPCG (k = 10, block matmat) on a cheap n = 100,000 operator: NumPy vs CuPy."""

    params = (["numpy", "cupy"],)
    param_names = ["backend"]
    timeout = 300

    def setup(self, backend):
        xp = get_xp(backend)
        from curvlab.linalg import LowRankPlusDiagonal

        rng = np.random.default_rng(0)
        n, r = 100_000, 20
        U = xp.asarray(rng.standard_normal((n, r)) / np.sqrt(n))
        C = xp.asarray(np.diag(np.linspace(10.0, 100.0, r)))
        self.xp = xp
        self.op = LowRankPlusDiagonal(xp.asarray(rng.uniform(0.0, 1.0, n)), U, C)

    def time_lobpcg(self, backend):
        from curvlab.linalg import lobpcg

        res = lobpcg(self.op, k=10, rng=0, tol=1e-6, block_size=12)
        sync(res.eigenvectors)
        if not res.all_converged:
            raise NotImplementedError("lobpcg did not converge")
