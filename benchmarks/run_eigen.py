"""Eigen-solver and trace-estimator figures for issue 3 (prints plain tables).

Run:  /work/venv/bin/python benchmarks/run_eigen.py [--quick]

1. Matvecs to reach relative residual 1e-8 (``‖Av - λv‖ <= 1e-8 |λ|`` for all
   k pairs) for the top k = 1, 5, 20 eigenpairs: curvlab ``eigsh``
   (thick-restart Lanczos) vs ``scipy.sparse.linalg.eigsh`` (ARPACK) from the
   same start vector, on prescribed-spectrum operators (n = 2,000 dense
   ``Q diag(λ) Qᵀ`` and n = 20,000 Householder ``Q``) and on the reference MLP
   Hessian; the true relative residuals of both are checked afterwards and
   the wall-time ratio (ours / ARPACK, best of 3, interleaved) is reported.
2. Power iteration vs Lanczos vs LOBPCG: matvecs to the top eigenvalue at
   residual tolerances 1e-3 and 1e-6 (and the eigenvalue error reached).
3. Hutch++ and XTrace vs Hutchinson: mean relative error (20 seeds) at equal
   matvecs on a fast-decay spectrum.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import scipy.sparse.linalg as sla

from curvlab.linalg import eigsh, hutchinson, hutchpp, lobpcg, power_iteration, xtrace
from curvlab.linalg.testing import named_spectrum, prescribed_spectrum_operator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
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


def true_rel_residual(op, vals, vecs):
    AV = op.matmat(vecs)
    return float(np.max(np.linalg.norm(AV - vecs * vals[None, :], axis=0) / np.abs(vals)))


def compare_arpack(label, op, k, tol=1e-8, seed=1):
    n = op.shape[0]
    v0 = np.random.default_rng(seed).standard_normal(n)
    t_ours, t_ar = [], []
    for _ in range(3):  # interleaved, best of 3
        op.reset_counter()
        t = time.perf_counter()
        res = eigsh(op, k=k, which="LA", tol=tol, v0=v0)
        t_ours.append(time.perf_counter() - t)
        op.reset_counter()
        sop = op.to_scipy()
        t = time.perf_counter()
        w, V = sla.eigsh(sop, k=k, which="LA", tol=tol, v0=v0)
        t_ar.append(time.perf_counter() - t)
        mv_ar = op.n_matvecs
    op.reset_counter()
    rr_ours = true_rel_residual(op, res.eigenvalues, res.eigenvectors)
    rr_ar = true_rel_residual(op, w, V)
    agree = float(np.max(np.abs(np.sort(w)[::-1] - res.eigenvalues) / np.abs(w).max()))
    print(
        f"{label:28s} {k:3d} {res.n_matvecs:7d} {mv_ar:7d} {res.n_matvecs / mv_ar:6.2f} "
        f"{min(t_ours) / min(t_ar):6.2f} {rr_ours:9.1e} {rr_ar:9.1e} {agree:8.1e} {str(res.all_converged):>5s}"
    )


def table1(quick):
    print("\n== 1. top-k to relative residual 1e-8: curvlab eigsh vs ARPACK (same v0) ==")
    print(f"{'operator':28s} {'k':>3s} {'ours':>7s} {'ARPACK':>7s} {'ratio':>6s} {'t/t_A':>6s} {'res ours':>9s} {'res ARP':>9s} {'|dλ|':>8s} {'conv':>5s}")
    sizes = [2000] if quick else [2000, 20000]
    for n in sizes:
        for name in ("decaying", "uniform", "indefinite"):
            ps = prescribed_spectrum_operator(named_spectrum(name, n), rng=0)
            for k in (1, 5, 20):
                compare_arpack(f"{name} n={n}", ps.operator, k)
    H, P = mlp_hessian()
    for k in (1, 5, 20):
        compare_arpack(f"MLP Hessian P={P}", H, k)


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
    args = ap.parse_args()
    print("BLAS threads: 1 (shared 2-core CPU); no GPU in this run")
    with blas_threads(1):
        table1(args.quick)
        table2(args.quick)
        table3(args.quick)
