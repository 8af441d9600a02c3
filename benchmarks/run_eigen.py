"""Eigen-solver and trace-estimator figures for issue 3 (prints plain tables).

Run:  .venv/bin/python benchmarks/run_eigen.py [--quick] [--tables 1] [--repeats 3] [--k 1,5,20]

1. curvlab ``eigsh`` (thick-restart Lanczos) vs ``scipy.sparse.linalg.eigsh``
   (ARPACK) at equal *true* residual, top k = 1, 5, 20 from the same start
   vector, on prescribed-spectrum operators (n = 2,000 dense ``Q diag(λ) Qᵀ``;
   n = 20,000 Householder ``Q``, cheap matvecs) and on the reference MLP
   Hessian. ARPACK runs at tol 1e-8 and overshoots it; its measured
   ``max_i ‖Av_i - λ_i v_i‖ / ‖A‖`` is the target, and curvlab runs at the
   tolerance whose (verified) convergence guarantees that residual. Matvec
   ratio and process-CPU ratio (ours / ARPACK, best of ``--repeats``
   round-robin pairs, one BLAS thread) in one table.
2. Power iteration vs Lanczos vs LOBPCG: matvecs to the top eigenvalue at
   residual tolerances 1e-3 and 1e-6 (and the eigenvalue error reached).
3. Hutch++ and XTrace vs Hutchinson: mean relative error (20 seeds) at equal
   matvecs on a fast-decay spectrum.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import scipy.sparse.linalg as sla

from curvlab.linalg import eigsh, hutchinson, hutchpp, lobpcg, power_iteration, xtrace
from curvlab.linalg.testing import named_spectrum, prescribed_spectrum_operator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmarks.bench_eigen import arpack_vs_eigsh  # noqa: E402
from benchmarks.common import blas_threads  # noqa: E402


def mlp_hessian(n_hidden=64, batch=256):
    from curvlab.data import load_digits
    from curvlab.models.mlp import MLP, hessian_operator

    ds = load_digits(dtype=np.float64)
    X, y = ds.X_train[:batch], ds.y_train[:batch]
    model = MLP([64, n_hidden, 10], activation="tanh", loss="cross_entropy", dtype=np.float64)
    p = model.init_params(np.random.default_rng(0))
    for _ in range(30):
        _, g = model.loss_and_grad(p, X, y)
        p = p - 0.5 * g
    return hessian_operator(model, p, X, y), model.n_params


def hessian_norm(op):
    """``‖A‖ = max |λ|`` of the MLP Hessian (ARPACK "LM", tol 1e-12; only a normaliser)."""
    w = sla.eigsh(op.to_scipy(), k=1, which="LM", tol=1e-12, v0=np.random.default_rng(7).standard_normal(op.shape[0]),
                  return_eigenvectors=False)
    op.reset_counter()
    return float(np.abs(w).max())


def eigen_cases(quick):
    """``(label, operator, ‖A‖)`` of table 1: prescribed spectra (dense Q at n = 2,000, Householder Q
    at n = 20,000: cheap matvecs) and the reference MLP Hessian."""
    sizes = [2000] if quick else [2000, 20000]
    for n in sizes:
        for name in ("decaying", "uniform", "indefinite"):
            ps = prescribed_spectrum_operator(named_spectrum(name, n), rng=0)
            yield f"{name} n={n}", ps.operator, float(np.abs(ps.eigenvalues).max())
    H, P = mlp_hessian()
    yield f"MLP Hessian P={P}", H, hessian_norm(H)


#: true residuals below this (relative to ‖A‖) are round-off: the target is max(ARPACK's residual, FLOOR)
FLOOR = 10 * np.finfo(np.float64).eps


def table1(quick, repeats=3, ks=(1, 5, 20), floor=FLOOR):
    print("\n== 1. top-k at equal TRUE residual: curvlab eigsh vs ARPACK (same v0, 1 BLAS thread, process CPU) ==")
    print("ARPACK runs at tol=1e-8; its measured max_i ‖Av-λv‖/‖A‖ is the target; curvlab runs at the tol whose")
    print(f"verified convergence guarantees that target (tol_relative_to='norm', tol = target; targets below {floor:.1e}")
    print(f"= 10 eps are round-off and raised to it, marked *); CPU = best of {repeats} round-robin pairs (process_time)")
    print(f"{'operator':24s} {'k':>3s} {'mv ARP':>7s} {'mv ours':>7s} {'mv r':>5s} {'cpu r':>6s} {'res ARP':>8s} "
          f"{'res ours':>8s} {'tol ours':>8s} {'|dλ|/‖A‖':>9s} {'conv':>5s}")
    rows = []
    for label, op, anorm in eigen_cases(quick):
        for k in ks:
            v0 = np.random.default_rng(1).standard_normal(op.shape[0])
            r = arpack_vs_eigsh(op, k, v0, anorm, repeats=repeats, floor=floor)
            rows.append((label, k, r))
            print(f"{label:24s} {k:3d} {r['mv_arpack']:7d} {r['mv_ours']:7d} {r['mv_ours'] / r['mv_arpack']:5.2f} "
                  f"{r['cpu_ours'] / r['cpu_arpack']:6.2f} {r['res_arpack']:8.1e} {r['res_ours']:8.1e} "
                  f"{r['tol_ours']:8.1e}{'*' if r['target'] > r['res_arpack'] else ' '}{r['agree']:8.1e} {str(r['converged']):>5s}",
                  flush=True)
    mv = [r["mv_ours"] / r["mv_arpack"] for _, _, r in rows]
    cpu = [r["cpu_ours"] / r["cpu_arpack"] for _, _, r in rows]
    worse = [f"{lab} k={k}" for lab, k, r in rows if r["res_ours"] > r["target"] or not r["converged"]]
    print(f"max matvec ratio {max(mv):.2f}, max CPU ratio {max(cpu):.2f} (geo-mean {np.exp(np.mean(np.log(cpu))):.2f}); "
          f"cases missing the matched residual: {worse or 'none'}")
    return rows


def table2(quick):
    print("\n== 2. matvecs to the top eigenvalue: power vs Lanczos vs LOBPCG ==")
    print(f"{'operator':28s} {'tol':>7s} {'power':>14s} {'lanczos':>14s} {'lobpcg':>14s}   (matvecs / rel. eigenvalue error)")
    cases = []
    for name in ("decaying", "large_gap", "uniform"):
        ps = prescribed_spectrum_operator(named_spectrum(name, 2000), rng=0)
        cases.append((f"{name} n=2000", ps.operator, ps.eigenvalues[-1]))
    H, P = mlp_hessian()
    lamH = eigsh(H, k=1, tol=1e-12, rng=0).eigenvalues[0]
    cases.append((f"MLP Hessian P={P}", H, lamH))
    for label, op, top in cases:
        for tol in (1e-3, 1e-6):
            cells = []
            for solver in (
                lambda: power_iteration(op, 1, tol, maxiter=20000, rng=0),
                lambda: eigsh(op, 1, "LA", tol, rng=0),
                lambda: lobpcg(op, 1, "LA", tol, rng=0, maxiter=5000),
            ):
                r = solver()
                flag = "" if r.all_converged else "*"
                cells.append(f"{r.n_matvecs:6d}{flag}/{abs(r.eigenvalues[0] - top) / abs(top):7.1e}")
            print(f"{label:28s} {tol:7.0e} " + " ".join(f"{c:>14s}" for c in cells))


def table3(quick):
    print("\n== 3. trace: mean relative error over 20 seeds at equal matvecs (fast_decay λ_i = 10·0.8^i, n=2000) ==")
    ps = prescribed_spectrum_operator(named_spectrum("fast_decay", 2000), rng=0)
    tr = ps.eigenvalues.sum()
    print(f"{'matvecs':>8s} {'hutchinson':>11s} {'hutch++':>11s} {'xtrace':>11s}")
    for m in (30, 60, 120, 240):
        errs = []
        for f in (hutchinson, hutchpp, xtrace):
            errs.append(np.mean([abs(f(ps.operator, m, rng=s).estimate - tr) / tr for s in range(20)]))
        print(f"{m:8d} " + " ".join(f"{e:11.2e}" for e in errs))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="n = 2,000 only")
    ap.add_argument("--tables", default="123", help="which tables to run, e.g. 1 or 23 (default 123)")
    ap.add_argument("--repeats", type=int, default=3, help="round-robin timing repeats of table 1 (default 3)")
    ap.add_argument("--k", default="1,5,20", help="table 1's k values (default 1,5,20)")
    args = ap.parse_args()
    print("BLAS threads: 1 (shared 2-core CPU); no GPU in this run")
    with blas_threads(1):
        if "1" in args.tables:
            table1(args.quick, args.repeats, tuple(int(x) for x in args.k.split(",")))
        if "2" in args.tables:
            table2(args.quick)
        if "3" in args.tables:
            table3(args.quick)
