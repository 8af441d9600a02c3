"""Eigen-solvers and trace estimators (curvlab.linalg, issue 3).

* ``track_matvecs_*``: operator products to reach relative residual 1e-8 for the
  top ``k`` eigenpairs, curvlab ``eigsh`` (thick-restart Lanczos) and SciPy's
  ARPACK ``eigsh`` from the same start vector (target: ours <= ARPACK), and the
  ratio; a run that did not converge is skipped (NaN), never timed.
* ``time_*``: wall time of the solves (one BLAS thread).
* ``EigshVsArpackMatchedResidual.track_*``: matvec and process-CPU ratios (ours / ARPACK)
  at equal *true* residual ‖Av - λv‖ / ‖A‖ (issue 14, target 4: both <= 1), and our true
  residual over the target.
* ``track_trace_error_*``: mean relative error of Hutchinson / Hutch++ / XTrace
  at equal matvecs on a fast-decay spectrum.
* ``TimeLobpcgBackend``: LOBPCG with ``matmat`` on NumPy vs CuPy (n = 100,000,
  a cheap diagonal-plus-low-rank operator); the CuPy case is skipped without a GPU.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from .common import blas_threads, get_xp, sync

_EPS23 = np.finfo(np.float64).eps ** (2.0 / 3.0)


def true_residual(op: Any, vals: Any, vecs: Any, anorm: float) -> float:
    """``max_i ‖A v_i - λ_i v_i‖ / ‖A‖`` over the returned pairs, from fresh float64 products.

    The products are not counted (the operator's counter is restored).
    """
    before = op.n_matvecs
    V = np.asarray(vecs, dtype=np.float64)
    AV = np.asarray(op.matmat(V), dtype=np.float64)
    op.n_matvecs = before
    return float(np.max(np.linalg.norm(AV - V * np.asarray(vals, dtype=np.float64)[None, :], axis=0)) / anorm)


def matched_tol(vals: Any, target: float, anorm: float, relative_to: str = "norm") -> float:
    """curvlab ``eigsh`` tolerance whose verified convergence implies true residual ``<= target`` (relative to ‖A‖).

    With ``tol_relative_to="norm"`` eigsh calls a pair converged when its true residual is
    ``<= tol · max|θ|`` (a lower bound of ‖A‖): ``tol = target``. With "eigenvalue" the test is
    ``<= tol · max(|θ_i|, ε^{2/3} ‖A‖)``, so ``tol = target ‖A‖ / max_i max(|θ_i|, ε^{2/3} ‖A‖)``.
    Either guarantees the target; no oracle tuning.
    """
    if relative_to == "norm":
        return float(target)
    scale = np.maximum(np.abs(np.asarray(vals, dtype=np.float64)), _EPS23 * anorm)
    return float(target * anorm / np.max(scale))


def arpack_vs_eigsh(op: Any, k: int, v0: Any, anorm: float, *, which: str = "LA", tol: float = 1e-8,
                    repeats: int = 3, floor: float = 0.0, relative_to: str = "norm") -> dict[str, Any]:
    """SciPy's ARPACK ``eigsh`` at ``tol`` and curvlab's ``eigsh`` at the same *true* residual.

    ARPACK runs at ``tol`` (it overshoots: it tests convergence only once per restart cycle);
    its true residual ``r_A = max_i ‖A v_i - λ_i v_i‖ / ‖A‖`` (measured, never the reported one)
    sets the target ``max(r_A, floor)``, and curvlab runs at :func:`matched_tol` of it (with
    ``tol_relative_to=relative_to``: "norm" states the target directly). Matvecs
    are the operator's counter (ARPACK through ``to_scipy()``, the counted wrapper); CPU is
    process time, best of ``repeats`` round-robin pairs of solves (one BLAS thread is the
    caller's business). Keys: ``mv_arpack``, ``mv_ours``, ``res_arpack``, ``res_ours``,
    ``tol_ours``, ``cpu_arpack``, ``cpu_ours``, ``converged``, ``agree`` (max eigenvalue gap / ‖A‖).
    """
    import scipy.sparse.linalg as sla

    from curvlab.linalg import eigsh

    def run_arpack() -> tuple[Any, Any, int]:
        op.reset_counter()
        w, V = sla.eigsh(op.to_scipy(), k=k, which=which, tol=tol, v0=v0)
        return w, V, op.n_matvecs

    w, V, mv_a = run_arpack()
    res_a = true_residual(op, w, V, anorm)
    target = max(res_a, floor)
    tol_c = matched_tol(w, target, anorm, relative_to)

    def run_ours() -> tuple[Any, int]:
        op.reset_counter()
        r = eigsh(op, k=k, which=which, tol=tol_c, v0=v0, warn=False, tol_relative_to=relative_to)
        return r, op.n_matvecs

    res, mv_c = run_ours()
    res_c = true_residual(op, res.eigenvalues, res.eigenvectors, anorm)
    agree = float(np.max(np.abs(np.sort(w) - np.sort(res.eigenvalues))) / anorm)
    cpu_a, cpu_c = [], []
    for _ in range(repeats):
        t = time.process_time()
        run_arpack()
        cpu_a.append(time.process_time() - t)
        t = time.process_time()
        run_ours()
        cpu_c.append(time.process_time() - t)
    return dict(mv_arpack=mv_a, mv_ours=mv_c, res_arpack=res_a, res_ours=res_c, tol_ours=tol_c,
                cpu_arpack=min(cpu_a) if cpu_a else float("nan"), cpu_ours=min(cpu_c) if cpu_c else float("nan"),
                converged=bool(res.all_converged), agree=agree, target=target)


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

    track_matvecs_curvlab.unit = "matvecs"  # type: ignore[attr-defined]  # asv reads a function attribute
    track_matvecs_arpack.unit = "matvecs"  # type: ignore[attr-defined]  # asv reads a function attribute
    track_matvecs_ratio.unit = "ratio"  # type: ignore[attr-defined]  # asv reads a function attribute


class EigshVsArpackMatchedResidual:
    """Issue 14, target 4: curvlab ``eigsh`` vs ARPACK at equal *true* residual (see :func:`arpack_vs_eigsh`).

    ARPACK runs at tol 1e-8 and overshoots; its measured ``max_i ‖Av - λv‖ / ‖A‖`` (at least
    10 eps, round-off below that) is the target curvlab is asked for (``tol_relative_to="norm"``).
    ``track_matvec_ratio`` and ``track_cpu_ratio`` are ours / ARPACK (process CPU, one BLAS
    thread, best of 3 round-robin pairs; target <= 1 for both, CPU when matvecs are cheap);
    ``track_residual_margin`` is our true residual / the target (<= 1: the target is met).
    One computation per parameter set serves the three tracks.
    """

    params = (["decaying", "uniform", "indefinite"], [2000, 20000], [1, 5, 20])
    param_names = ["spectrum", "n", "k"]
    timeout = 600
    _cache: dict[tuple[str, int, int], dict[str, Any]] = {}

    def setup(self, spectrum, n, k):
        key = (spectrum, n, k)
        if key not in self._cache:
            from curvlab.linalg.testing import named_spectrum, prescribed_spectrum_operator

            ps = prescribed_spectrum_operator(named_spectrum(spectrum, n), rng=0)
            v0 = np.random.default_rng(1).standard_normal(n)
            with blas_threads(1):
                self._cache[key] = arpack_vs_eigsh(ps.operator, k, v0, float(np.abs(ps.eigenvalues).max()),
                                                   repeats=3, floor=10 * np.finfo(np.float64).eps)
        self.r = self._cache[key]

    def track_matvec_ratio(self, spectrum, n, k):
        return self.r["mv_ours"] / self.r["mv_arpack"]

    def track_cpu_ratio(self, spectrum, n, k):
        return self.r["cpu_ours"] / self.r["cpu_arpack"]

    def track_residual_margin(self, spectrum, n, k):
        return self.r["res_ours"] / self.r["target"] if self.r["converged"] else float("nan")

    track_matvec_ratio.unit = "ratio"  # type: ignore[attr-defined]  # asv reads a function attribute
    track_cpu_ratio.unit = "ratio"  # type: ignore[attr-defined]  # asv reads a function attribute
    track_residual_margin.unit = "ratio"  # type: ignore[attr-defined]  # asv reads a function attribute


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

    track_matvecs.unit = "matvecs"  # type: ignore[attr-defined]  # asv reads a function attribute


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

    track_trace_error.unit = "relative error"  # type: ignore[attr-defined]  # asv reads a function attribute


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
