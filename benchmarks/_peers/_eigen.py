"""eigsh group: ``curvlab.linalg.eigsh`` against SciPy's ARPACK ``eigsh`` at matched *true*
residual on prescribed-spectrum operators with cheap matvecs (``A = Q diag(λ) Qᵀ``, ``Q`` a
product of 4 Householder reflectors, n = 20,000: a matvec is a few O(n) passes).

ARPACK runs at ``tol=1e-8`` and overshoots it; its true residual
``r_A = max_i ‖A v_i − λ_i v_i‖ / ‖A‖``, computed from the returned vectors, is the target, and
curvlab runs at ``tol = r_A`` with ``tol_relative_to="norm"`` (its convergence test is on
``‖A y − θ y‖ / max|θ|``); its own true residual is computed the same way and shown.
Matvecs are the operator's counter; CPU is the best of ``repeat`` round-robin pairs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from . import Row, verdict

CASES = (("decaying", 20_000, 5), ("uniform", 20_000, 5))
#: true residuals below this are round-off: the target is max(ARPACK's residual, FLOOR)
FLOOR = 10 * np.finfo(np.float64).eps


def true_residual(op: Any, w: Any, V: Any, anorm: float) -> float:
    """``max_i ‖A v_i − λ_i v_i‖ / ‖A‖`` (call it after reading the matvec counter: it resets it)."""
    AV = np.asarray(op.matmat(np.asarray(V)))
    op.reset_counter()
    return float(np.max(np.linalg.norm(AV - np.asarray(V) * np.asarray(w)[None, :], axis=0)) / anorm)


def compare(spectrum: str, n: int, k: int, repeat: int = 3) -> dict[str, Any]:
    """One case: matvecs, true residuals and best CPU seconds of both solvers."""
    import scipy.sparse.linalg as sla

    from curvlab.linalg import eigsh
    from curvlab.linalg.testing import named_spectrum, prescribed_spectrum_operator

    ps = prescribed_spectrum_operator(named_spectrum(spectrum, n), rng=0, orthogonal="householder")
    op, anorm = ps.operator, float(np.abs(ps.eigenvalues).max())
    v0 = np.random.default_rng(1).standard_normal(n)

    def arpack() -> tuple[Any, Any, int]:
        op.reset_counter()
        w, V = sla.eigsh(op.to_scipy(), k=k, which="LA", tol=1e-8, v0=v0)
        return w, V, op.n_matvecs

    w, V, mv_a = arpack()
    res_a = true_residual(op, w, V, anorm)
    target = max(res_a, FLOOR)

    def ours() -> tuple[Any, int]:
        op.reset_counter()
        r = eigsh(op, k=k, which="LA", tol=target, v0=v0, warn=False, tol_relative_to="norm")
        return r, op.n_matvecs

    r, mv_c = ours()
    res_c = true_residual(op, r.eigenvalues, r.eigenvectors, anorm)
    gap = float(np.max(np.abs(np.sort(w) - np.sort(np.asarray(r.eigenvalues)))) / anorm)
    cpu_a, cpu_c = float("inf"), float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        arpack()
        cpu_a = min(cpu_a, time.process_time() - t0)
        t0 = time.process_time()
        ours()
        cpu_c = min(cpu_c, time.process_time() - t0)
    return {"mv_arpack": mv_a, "mv_ours": mv_c, "res_arpack": res_a, "res_ours": res_c, "target": target,
            "cpu_arpack": cpu_a, "cpu_ours": cpu_c, "converged": bool(r.all_converged), "gap": gap}


def measure(repeat: int = 3) -> tuple[list[Row], dict[str, float]]:
    """Rows and ratios (``eigsh.<case>.matvecs`` and ``.cpu``: curvlab over ARPACK)."""
    from . import one_thread

    one_thread()
    rows: list[Row] = []
    ratios: dict[str, float] = {}
    for spectrum, n, k in CASES:
        c = compare(spectrum, n, k, repeat)
        mv, cpu = c["mv_ours"] / c["mv_arpack"], c["cpu_ours"] / c["cpu_arpack"]
        key = f"eigsh.{spectrum}_{n}_k{k}"
        ratios[key + ".matvecs"], ratios[key + ".cpu"] = mv, cpu
        matched = c["res_ours"] <= c["target"] * 1.0001 and c["converged"]
        rows.append(Row(
            f"`eigsh` top-{k}, {spectrum} spectrum, n = {n:,} (Householder Q, cheap matvecs)",
            f"{c['mv_ours']} matvecs ({mv:.2f}×), CPU {cpu:.2f}× ({c['cpu_ours'] * 1e3:.0f} ms), "
            f"true residual {c['res_ours']:.1e}, max Δλ / ‖A‖ {c['gap']:.1e}",
            f"ARPACK tol 1e-8: {c['mv_arpack']} matvecs, {c['cpu_arpack'] * 1e3:.0f} ms, true residual {c['res_arpack']:.1e}",
            "matvecs ≤ ARPACK's and CPU ≤ ARPACK's at equal true residual",
            verdict([("residual matched", matched), ("matvecs", mv <= 1.0), ("CPU", cpu <= 1.0)])))
    return rows, ratios
