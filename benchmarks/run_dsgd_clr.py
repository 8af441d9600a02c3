"""Print the step-cost table of DSGD / curvature-rescaled LR and the duality-map timings.

Usage (from the repository root):

    .venv/bin/python benchmarks/run_dsgd_clr.py [--threads 1] [--repeat 5] [--timer cpu|wall] [--widths 256 1024 4096]

Part 1: MLP 784-512-512-10 tanh CE, batch 512, float32; one optimizer step of each method
relative to one plain SGD step (best of R round-robin repeats, process CPU time by default:
steady on a shared host; tracemalloc peak of one step). ``--widths`` with no value skips part 2. Part 2: spectral duality map of an n×n float32 Gaussian matrix by thin SVD and by
Newton–Schulz (12 fixed steps, and run to convergence for n ≤ 1024), with the error of
the Newton–Schulz polar factor (‖Q_NS − UVᵀ‖_op, from the singular values) and of the
nuclear norm. 4096 uses one repetition.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks.bench_dsgd_clr import NS_STEPS, duality_inputs, make_problem, step_calls  # noqa: E402
from benchmarks.common import blas_threads, interleaved_best, peak_bytes  # noqa: E402


def best(fn, repeat):
    ts = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timer", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--widths", type=int, nargs="*", default=[256, 1024, 4096])
    ap.add_argument("--skip-steps", action="store_true")
    args = ap.parse_args()
    from curvlab.linalg.duality import duality_map, newton_schulz_error_bound

    with blas_threads(args.threads):
        if not args.skip_steps:
            fns = step_calls(*make_problem(np))
            t = interleaved_best(fns, repeat=args.repeat, timer=args.timer)
            m = {k: peak_bytes(f) for k, f in fns.items()}
            print(f"One optimizer step, MLP 784-512-512-10 tanh CE, batch 512, float32, BLAS threads={args.threads}, "
                  f"best of {args.repeat} round-robin repeats, timer {args.timer}")
            print(f"{'step':14s} {'time ms':>9s} {'x SGD':>7s} {'peak MB':>9s} {'x SGD':>7s}")
            for k in fns:
                print(f"{k:14s} {t[k] * 1e3:9.2f} {t[k] / t['sgd']:7.2f} {m[k] / 1e6:9.2f} {m[k] / m['sgd']:7.2f}")
            print("paper 2210.14520 claim: (1.5C, 2M) or (2C, 1M); DSGD target (issue 14): <= 5x SGD\n")
        if not args.widths:
            return
        print(f"Spectral duality map, n×n float32 Gaussian, BLAS threads={args.threads}")
        print(f"{'n':>5s} {'svd s':>9s} {'NS12 s':>9s} {'NS12/svd':>8s} {'NS12 err_op':>11s} {'NS12 nuc rel':>12s} "
              f"{'NSconv s':>9s} {'steps':>5s}")
        for n in args.widths:
            G = duality_inputs(n)
            rep = 1 if n >= 4096 else max(1, min(3, args.repeat))
            ts, (rs, ds) = best(lambda: duality_map(G, "spectral", method="svd"), rep)
            tn, (rn, dn) = best(lambda: duality_map(G, "spectral", method="newton_schulz", max_steps=NS_STEPS, tol=0.0), rep)
            sv = np.linalg.svd(G.astype(np.float64), compute_uv=False) if n < 4096 else np.linalg.svd(G, compute_uv=False)
            err = newton_schulz_error_bound(sv, NS_STEPS)
            nuc_rel = abs(dn - ds) / ds
            if n <= 1024:
                tc, (rc, dc) = best(lambda: duality_map(G, "spectral", method="newton_schulz", max_steps=100), 1)
                from curvlab.linalg.duality import newton_schulz_polar

                steps = newton_schulz_polar(G, max_steps=100).steps
                conv = f"{tc:9.3f} {steps:5d}"
            else:
                conv = f"{'-':>9s} {'-':>5s}"
            print(f"{n:5d} {ts:9.3f} {tn:9.3f} {tn / ts:8.2f} {err:11.2e} {nuc_rel:12.2e} {conv}", flush=True)


if __name__ == "__main__":
    main()
