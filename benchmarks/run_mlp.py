"""Print the MLP benchmark table: times and peak memory relative to the gradient.

Usage (from the repository root):

    /work/venv/bin/python benchmarks/run_mlp.py [--threads N] [--repeat R] [--dtype float32]

Problem: 784-512-512-10 tanh MLP, cross-entropy, batch 512 (issue 2). Times are the
best of R round-robin repeats (same run, same load); memory is the tracemalloc peak
of one call relative to the gradient's.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks.bench_mlp import make_problem, method_calls  # noqa: E402
from benchmarks.common import blas_threads, interleaved_best, peak_bytes  # noqa: E402

TARGETS = {
    "hvp": ("time", 2.5),
    "curvature_adjoint": ("time", 1.7),
    "curvature_forward": ("time", 2.0),
}
MEM_TARGETS = {"curvature_forward": 1.1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (default: library default)")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--timer", default="wall", choices=["wall", "cpu"],
                    help="wall clock, or this process's CPU time (steadier on a busy machine with --threads 1)")
    args = ap.parse_args()
    fns = method_calls(*make_problem(np, dtype=np.dtype(args.dtype)))
    with blas_threads(args.threads):
        t = interleaved_best(fns, repeat=args.repeat, timer=args.timer)
    m = {k: peak_bytes(f) for k, f in fns.items()}
    print(f"MLP 784-512-512-10 tanh CE, batch 512, {args.dtype}, BLAS threads={args.threads or 'default'}, "
          f"{args.timer} time, best of {args.repeat} round-robin repeats")
    print(f"{'method':20s} {'time ms':>9s} {'x grad':>7s} {'target':>7s} {'peak MB':>8s} {'x grad':>7s} {'target':>7s}")
    for k in fns:
        tr, mr = t[k] / t["grad"], m[k] / m["grad"]
        tt = f"<={TARGETS[k][1]}" if k in TARGETS else ""
        mt = f"<={MEM_TARGETS[k]}" if k in MEM_TARGETS else ""
        print(f"{k:20s} {t[k] * 1e3:9.2f} {tr:7.2f} {tt:>7s} {m[k] / 1e6:8.2f} {mr:7.2f} {mt:>7s}")


if __name__ == "__main__":
    main()
