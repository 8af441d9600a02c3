"""Print the arTuRO benchmark table (issue 4): fused vs multi-pass step, throughput, solver work.

Usage (from the repository root):

    /work/venv/bin/python benchmarks/run_arturo.py [--n 10000000] [--repeat 7] [--steps 500]

All timings are best-of-``repeat`` times measured round-robin in the same run (same machine
load), float32, on the CPU unless a GPU is present (``--backend cupy``): the copy-equivalents
table in process CPU time (``--ce-only`` prints it alone), the rest in wall time.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks.bench_arturo import (careful_numpy_filter, kernel_calls, make_problem, make_step,  # noqa: E402
                                    memory_floor, solver_evaluations, step_bytes, step_copy_equivalents)
from benchmarks.common import get_xp, interleaved_best  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10**7)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    ap.add_argument("--skip-solver", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all cores)")
    ap.add_argument("--ce-only", action="store_true", help="print the copy-equivalents table only")
    args = ap.parse_args()
    xp = get_xp(args.backend)
    import numba

    if args.threads:
        numba.set_num_threads(args.threads)
    print(f"n = {args.n:,} float32, backend {args.backend}, numba threads {numba.get_num_threads()}, "
          f"best of {args.repeat} interleaved repeats")

    if args.backend == "numpy":
        print("\n== copy-equivalents of one warm step (issue 14 target 5: <= 25, >= 85% of copy bandwidth) ==")
        print("time: step / np.copyto of n floats, process CPU time, best of the repeats, same run;")
        print(f"bytes: 25 + 4 (dual passes - 1) n-float arrays (bench_arturo.step_bytes) / 2 (the copy reads n, "
              f"writes n); one pass = {step_bytes(1):.0f} arrays")
        for mode in ("exact", "reference"):
            r = step_copy_equivalents(args.n, mode, repeat=args.repeat)
            print(f"{mode:9s} time {r['time_ce']:5.1f} copies  bytes {r['bytes_ce']:5.1f} copies  "
                  f"{100 * r['bandwidth']:5.1f}% of copy bandwidth  dual evals/step {r['evals']:4.2f}  "
                  f"dual passes/step {r['passes']:4.2f}  (step {r['t_step'] * 1e3:.1f} ms, copy "
                  f"{r['t_copy'] * 1e3:.2f} ms)")
        fl = memory_floor(args.n, repeat=args.repeat)
        print(f"memory floor (the same 2-pass traffic, trivial arithmetic): time {fl['floor_ce']:5.1f} copies  "
              f"bytes {fl['bytes_ce']:5.1f} copies  {100 * fl['bandwidth']:5.1f}% of copy bandwidth")
        if args.ce_only:
            return

    print("\n== one full optimizer step (ArTuRO.update, preset cifar10_cnn, warm state) ==")
    print("multi-pass f32: plain NumPy in float32 (sums in float64); multi-pass f64: the same code up-casting")
    print("to float64 as the fused kernels do per element (what rtol 1e-8 needs in exact mode)")
    prob = make_problem(args.n, np.float32, xp)
    for mode in ("exact", "reference"):
        calls, logs = {}, {}
        for label, impl in (("fused", "auto"), ("multi-pass f32", "numpy"), ("multi-pass f64", "reference")):
            calls[label], logs[label] = make_step(prob, impl, mode)
        t = interleaved_best(calls, repeat=args.repeat)
        for label in calls:
            print(f"{mode:9s} {label:15s} {t[label] * 1e3:8.1f} ms  speed-up of fused {t[label] / t['fused']:5.2f}x  "
                  f"dual evals/step {np.mean(logs[label]['evals']):5.2f}")
        del calls, logs
    del prob

    print("\n== kernel memory throughput vs an array copy of the same size ==")
    calls = kernel_calls(args.n, np.float32, xp)
    fns = {k: v[0] for k, v in calls.items()}
    fns["careful NumPy filter"] = careful_numpy_filter(args.n) if args.backend == "numpy" else None
    fns = {k: f for k, f in fns.items() if f is not None}
    t = interleaved_best(fns, repeat=args.repeat)
    gbs = {k: calls[k][1] / t[k] / 1e9 for k in calls}
    for k in ("copy", "filter", "dual"):
        print(f"{k:7s} {t[k] * 1e3:8.2f} ms  {gbs[k]:7.2f} GB/s  ({gbs[k] / gbs['copy'] * 100:5.1f}% of copy)")
    if "careful NumPy filter" in t:
        print(f"careful in-place NumPy float32 filter (no NaN policy): {t['careful NumPy filter'] * 1e3:.2f} ms, "
              f"fused filter {t['careful NumPy filter'] / t['filter']:.1f}x faster")
    del calls, fns

    if not args.skip_solver:
        print(f"\n== dual evaluations per step, digits MLP 64-32-10, batch 32, {args.steps} steps ==")
        for preset in ("cifar10_cnn", "fmnist_cnn"):
            ev = solver_evaluations(args.steps, preset)
            for mode in ("reference", "exact"):
                e = ev[mode]
                label = "exact (rtol 1e-8)" if mode == "exact" else "reference"
                print(f"{preset:12s} {label:18s} median {np.median(e):4.1f}  max {e.max():3d}  mean {e.mean():5.2f}")


if __name__ == "__main__":
    main()
