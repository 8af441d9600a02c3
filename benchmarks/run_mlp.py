"""Print the MLP benchmark table: times and peak memory relative to the gradient, and
NumPy over ``jax.jit``.

Usage (from the repository root):

    python benchmarks/run_mlp.py [--threads 1] [--timer cpu] [--repeat R] [--dtype float32] [--no-jax]

Problem: 784-512-512-10 tanh MLP, cross-entropy, batch 512 (issue 2). Times are the
best of R round-robin repeats (same run, same load); memory is the tracemalloc peak
of the first call on a fresh model (scratch arrays and the product cache counted)
relative to the gradient's. ``*_cached``: products of an ``MLPCurvature`` operator after
its first product (the forward pass and output derivatives kept). "x jax": NumPy time
over ``jax.jit`` time for the same product on the same numbers (JAX on one thread).
On an AVX-512 CPU that OpenBLAS does not recognise (the header prints the kernels it
picked), ``OPENBLAS_CORETYPE=SkylakeX`` gives NumPy its AVX-512 GEMM.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks.bench_mlp import (  # noqa: E402
    JAX_KEYS,
    blas_info,
    fresh_peaks,
    jax_reference,
    make_problem,
    method_calls,
)
from benchmarks.common import blas_threads, interleaved_best  # noqa: E402

TARGETS = {
    "hvp": 2.5,
    "hvp_cached": 1.5,
    "ggn_vp_cached": 1.4,
    "curvature_adjoint": 1.6,
    "curvature_forward": 2.0,
}
MEM_TARGETS = {"curvature_forward": 1.1, "curvature_adjoint": 2.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (default: library default)")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--timer", default="wall", choices=["wall", "cpu"],
                    help="wall clock, or this process's CPU time (steadier on a busy machine with --threads 1)")
    ap.add_argument("--no-jax", action="store_true", help="skip the jax.jit comparison")
    args = ap.parse_args()
    dtype = np.dtype(args.dtype)
    prob = make_problem(np, dtype=dtype)
    fns = method_calls(*prob)
    if not args.no_jax:
        try:
            import jax

            if dtype == np.float64:
                jax.config.update("jax_enable_x64", True)
            for k, f in jax_reference(*prob).items():
                fns["jax_" + k] = f
        except ImportError:
            print("jax not installed: no jax.jit column")
    with blas_threads(args.threads):
        t = interleaved_best(fns, repeat=args.repeat, timer=args.timer)
    m = fresh_peaks(np, dtype)
    print(f"MLP 784-512-512-10 tanh CE, batch 512, {args.dtype}, BLAS threads={args.threads or 'default'} "
          f"({blas_info()}), {args.timer} time, best of {args.repeat} round-robin repeats")
    print(f"{'method':20s} {'time ms':>9s} {'x grad':>7s} {'target':>7s} {'jax ms':>8s} {'x jax':>6s} "
          f"{'peak MB':>8s} {'x grad':>7s} {'target':>7s}")
    for k in m:
        tr, mr = t[k] / t["grad"], m[k] / m["grad"]
        tt = f"<={TARGETS[k]}" if k in TARGETS else ""
        mt = f"<={MEM_TARGETS[k]}" if k in MEM_TARGETS else ""
        jk = "jax_" + k
        jt, jr = (f"{t[jk] * 1e3:8.2f}", f"{t[k] / t[jk]:6.3f}") if jk in t else ("", "")
        print(f"{k:20s} {t[k] * 1e3:9.2f} {tr:7.2f} {tt:>7s} {jt:>8s} {jr:>6s} "
              f"{m[k] / 1e6:8.2f} {mr:7.2f} {mt:>7s}")
    if any("jax_" + k in t for k in JAX_KEYS):
        print("x jax target: <= 1.0 for " + ", ".join(JAX_KEYS))


if __name__ == "__main__":
    main()
