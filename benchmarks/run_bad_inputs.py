"""Run the bad-input suite's registry and print the outcome counts (issue 11).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_bad_inputs.py [--seeds 2] [--failures] [NAME ...]

Counts, per public name and in total, the generated inputs and their outcomes: clear error,
documented policy, confirmed result, and the failures (unclear error, crash, silent). The
registry and the classification are those of ``tests/test_bad_inputs.py`` (same seeds as the
derandomized test are not guaranteed: this script uses seeds 0..k-1). Exits 1 when any input
is a failure, 0 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="entries to run (default: all)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per (argument, mutation) pair")
    ap.add_argument("--failures", action="store_true", help="list every failing input")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from tests._bad_inputs import FAILURES, OUTCOMES, run_entry
    from tests.test_bad_inputs import ENTRIES

    names = args.names or sorted(ENTRIES)
    total: collections.Counter = collections.Counter()
    t0 = time.perf_counter()
    print(f"{'entry':30s} " + " ".join(f"{k[:9]:>9s}" for k in OUTCOMES) + "   time", flush=True)
    failing = []
    for n in names:
        t1 = time.perf_counter()
        outs = run_entry(n, ENTRIES[n], list(range(args.seeds)))
        dt = time.perf_counter() - t1
        c = collections.Counter(o.kind for o in outs)
        total.update(c)
        print(f"{n:30s} " + " ".join(f"{c.get(k, 0):9d}" for k in OUTCOMES) + f" {dt:6.1f}", flush=True)
        failing += [o for o in outs if o.kind in FAILURES]
    print(f"{'TOTAL (' + str(sum(total.values())) + ' inputs)':30s} " + " ".join(f"{total.get(k, 0):9d}" for k in OUTCOMES))
    print(f"time {time.perf_counter() - t0:.1f} s")
    if args.failures:
        seen = set()
        for o in failing:
            key = (o.name, o.arg, o.mut, o.kind)
            if key not in seen:
                seen.add(key)
                print(f"- {o.name}({o.arg}={o.mut}): {o.kind}: {o.detail}")
    return 1 if failing else 0  # non-zero exit on any unclear error, crash or silent answer


if __name__ == "__main__":
    raise SystemExit(main())
