"""Print the exact-Newton performance tables (method inspired by arXiv 2104.03804).

Usage (from the repository root):

    python benchmarks/run_exact_newton.py [--threads 1] [--repeat 5] [--timer cpu|wall] [--dense-max 64|128]

Part 1: Newton direction of one layer, width n, inputs of width n (m = n + 1), one sample:
closed form (the damped layer direction: n×n eigh + rank-one; raw and abs) vs a dense LU solve of the (nm)×(nm)
block, best of R, same run. The dense solve is measured for n ≤ 64 (n·m ≤ 4160), or up to
n = 128 with ``--dense-max 128`` (a 2.2 GB block, about a minute of one core); larger
widths are extrapolated from the n = 64 time by the cubic law (nm)^3 (n = 256 would take
35 GB) and marked "extrap.".
Part 2: one optimizer step on MLP 64-32-10 tanh CE float64, batch 32, relative to one SGD
step (gradient + update), round-robin.
Part 3: exact_block (Woodbury / projection) vs average on the same MLP, B = 8, 32, 128.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks.bench_exact_newton import (  # noqa: E402
    closed_form_direction,
    dense_direction,
    layer_inputs,
    make_problem,
    raw_closed_form_direction,
    step_calls,
)
from benchmarks.common import blas_threads, interleaved_best  # noqa: E402


CLOCK = time.process_time


def best(fn, repeat):
    ts, out = [], None
    for _ in range(repeat):
        t0 = CLOCK()
        out = fn()
        ts.append(CLOCK() - t0)
    return min(ts), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--timer", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--dense-max", type=int, default=64, choices=(64, 128),
                    help="largest width whose dense solve is measured (128 needs ~2.2 GB and a minute or two)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.timer == "cpu" else time.perf_counter
    R = args.repeat
    with blas_threads(args.threads):
        print(f"timer: {args.timer} ({'process CPU seconds, steady on a shared host' if args.timer == 'cpu' else 'wall clock'}), "
              f"BLAS threads={args.threads}")
        print("Part 1: one-layer Newton direction, one sample, λ = 1, float64")
        print(f"{'n':>5s} {'n*m':>7s} {'closed raw ms':>14s} {'closed abs ms':>14s} {'dense LU ms':>12s} {'speedup':>9s} {'max rel err':>12s}")
        t_dense64 = None
        for n in (16, 32, 64, 128, 256):
            inp = layer_inputs(n)
            tr, xr = best(lambda: raw_closed_form_direction(*inp), R)
            ta, _ = best(lambda: closed_form_direction(*inp), R)
            nm = n * (n + 1)
            if n <= args.dense_max:
                td, xd = best(lambda: dense_direction(*inp), 1 if n >= 128 else max(1, R // 2) if n == 64 else R)
                err = float(np.linalg.norm(xr - xd) / np.linalg.norm(xd))
                tag = ""
                if n == 64:
                    t_dense64 = td
                del xd
            else:
                td = t_dense64 * (nm / (64 * 65)) ** 3
                err, tag = float("nan"), " extrap."
            print(f"{n:5d} {nm:7d} {tr * 1e3:14.3f} {ta * 1e3:14.3f} {td * 1e3:12.1f} {td / tr:9.0f}{tag:8s} {err:12.1e}")
        print("target: >= 100x at n = 128\n")

        fns = step_calls(*make_problem(32))
        t = interleaved_best(fns, repeat=R, timer=args.timer)
        print(f"Part 2: one step, MLP {'-'.join(map(str, [64, 32, 10]))} tanh CE float64, batch 32 (round-robin best of {R})")
        for k, v in t.items():
            print(f"{k:12s} {v * 1e3:9.2f} ms  x SGD {v / t['sgd']:7.1f}")
        print()

        print("Part 3: exact_block (Woodbury / projection) vs average, MLP 64-32-10, one step")
        print(f"{'B':>5s} {'average ms':>11s} {'exact_block ms':>15s} {'ratio':>7s} {'SGD ms':>8s}")
        for B in (8, 32, 128):
            fns = step_calls(*make_problem(B))
            t = interleaved_best(fns, repeat=max(2, R // 2) if B == 128 else R, timer=args.timer)
            print(f"{B:5d} {t['average'] * 1e3:11.2f} {t['exact_block'] * 1e3:15.2f} "
                  f"{t['exact_block'] / t['average']:7.1f} {t['sgd'] * 1e3:8.3f}")


if __name__ == "__main__":
    main()
