"""Print the JAX adapter's product table: cached / uncached HVP and GGN-vp, dᵀHd and
gradient + dᵀHd, time and peak memory over the gradient's (issue 14, targets 1-2).

Usage (from the repository root):

    .venv/bin/python benchmarks/run_jax_products.py [--repeat 9] [--dtype float32] [--batch 512]

Problem and method: see benchmarks/benchmarks/bench_jax_products.py (784-512-512-10 tanh
MLP, cross-entropy, one XLA thread, process CPU time, best of R round-robin repeats in one
run; peak resident memory of one call in a child process with MALLOC_MMAP_THRESHOLD_, and XLA's
buffer assignment: temporary + output bytes of each compiled program).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from benchmarks.bench_jax_products import KEYS, jax_product_calls, peak_memory, time_ratios, xla_bytes  # noqa: E402

TARGETS = {"hvp_cached": (1.5, None), "ggn_cached": (1.4, None), "curvature": (2.0, 1.1),
           "grad_and_curvature": (1.6, 2.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child process")
    args = ap.parse_args()
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    calls, src = jax_product_calls(dtype=np.dtype(args.dtype), batch=args.batch)
    t = time_ratios(calls, repeat=args.repeat)
    mem = None if args.no_memory or args.dtype != "float32" or args.batch != 512 else peak_memory()
    xla = xla_bytes(src)
    print(f"JAX {jax.__version__} adapter, MLP 784-512-512-10 tanh, CE, batch {args.batch}, {args.dtype}, "
          f"1 XLA thread, process CPU time, best of {args.repeat} round-robin repeats")
    print(f"{'product':20s} {'ms':>8s} {'x grad':>7s} {'target':>7s} {'XLA MB':>7s} {'x grad':>7s}"
          + ("" if mem is None else f" {'peak MB':>8s} {'x grad':>7s} {'target':>7s}"))
    for k in KEYS:
        tt, tm = TARGETS.get(k, (None, None))
        row = f"{k:20s} {1e3 * t[k]:8.2f} {t[k] / t['grad']:7.2f} {'' if tt is None else f'<= {tt}':>7s}"
        row += f" {xla[k] / 2**20:7.1f} {xla[k] / xla['grad']:7.2f}"
        if mem is not None:
            mr = mem[k] / mem["grad"] if mem["grad"] > 0 else float("nan")
            row += f" {mem[k] / 2**20:8.1f} {mr:7.2f} {'' if tm is None else f'<= {tm}':>7s}"
        print(row)
    info = src.cache_info()
    print(f"product cache of the Hessian + GGN on the batch: {info['bytes'] / 2**20:.1f} MiB "
          f"({info['batches_cached']}/{info['batches']} batches, limit {info['limit']})")
    print("XLA MB: temporary + output bytes of the compiled program (arguments, the cached residuals among them, "
          "not counted); peak MB: resident-set high-water mark of one call (child process)")


if __name__ == "__main__":
    main()
