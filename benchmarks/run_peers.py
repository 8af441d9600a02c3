"""Side-by-side table of curvlab against the peers a user would pick instead (issue 14, target 8).

Usage (from the repository root):

    .venv/bin/python benchmarks/run_peers.py [--quick] [--repeat R] [--only torch,jax,numpy,eigsh,methods]
                                              [--compile all|hvp|none] [--arturo-n N] [--json PATH]

One process, 1 BLAS thread (threadpoolctl), 1 torch intra-op thread, 1 XLA thread, process CPU
time (``time.process_time``) per call, best of R round-robin repeats after a warm-up call
(which builds the product caches and compiles), and every ratio taken between calls timed in
the same loop. Groups:

* ``torch``: ``TorchCurvature`` HVP (cached, and one-shot ``cache_bytes=0`` with both modes),
  GGN-vp (cached, one-shot), ``dᵀHd`` and grad + ``dᵀHd`` on the MLP 784-512-512-10 tanh
  (batch 512) and the CNN conv16-BN(eval)-conv32-linear (batch 128), float32, as ratios to
  ``torch.autograd.grad``; peers: curvlinops ``HessianLinearOperator``/``GGNLinearOperator``,
  ``torch.func`` eager and ``torch.compile``-d, double backward with a cached graph;
* ``jax``: ``JaxCurvature`` on the same MLP against ``jax.jit(jax.grad)`` and jitted
  hand-written products;
* ``numpy``: the NumPy reference MLP (``curvlab.models``) against ``jax.jit`` of the same
  function on the same numbers, and its cached products over its own gradient;
* ``eigsh``: ``curvlab.linalg.eigsh`` against SciPy ARPACK at matched true residual;
* ``methods``: ArTuRO (copy-equivalents, fused torch Adam alongside), DSGD and ExactNewton steps
  over an SGD step.

On a commit without the product cache (no ``cache_bytes`` keyword) the cached cells say so.
A peer that is not installed or cannot compile says why in its cell. curvlinops is installed
without its dependency tree: ``.venv/bin/pip install --no-deps curvlinops-for-pytorch einconv
linear-operator`` (the two pure-Python packages it imports at load time). ArTuRO and Adam run
at n = 1e7 float32 (``--arturo-n``; about 0.6 GB). ``--quick``: 2 repeats and
``torch.compile`` of the HVP only (the eigsh and method groups keep 5 rounds); 1.5 to 3
minutes on a loaded 2-core machine, plus the first ``torch.compile`` on a machine (about a
minute per function, then cached on disk by Inductor).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peers import Row, markdown, one_thread, one_thread_env, short_error  # noqa: E402

one_thread_env()  # before NumPy, torch and JAX load

GROUPS = ("torch", "jax", "numpy", "eigsh", "methods")


def _versions() -> str:
    out = []
    for name in ("numpy", "scipy", "torch", "jax", "curvlinops"):
        try:
            mod = __import__(name)
            ver = getattr(mod, "__version__", None)
            if ver is None:
                from importlib.metadata import version

                ver = version("curvlinops-for-pytorch" if name == "curvlinops" else name)
            out.append(f"{name} {ver}")
        except Exception as exc:
            out.append(f"{name} not importable ({short_error(exc, 60)})")
    return ", ".join(out)


def _commit() -> str:
    """The commit of the curvlab that is imported (which may not be this script's checkout)."""
    try:
        import curvlab

        root = os.path.dirname(os.path.dirname(os.path.abspath(curvlab.__file__)))
    except Exception as exc:  # pragma: no cover - curvlab broken: every group will say so
        return f"curvlab not importable ({short_error(exc, 60)})"
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # pragma: no cover - no git
        head, dirty = "", ""
    if not head:
        return f"curvlab from {root} (not a git checkout)"
    return f"curvlab {head}" + (" (with uncommitted changes in the working tree)" if dirty else "")


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="2 repeats, torch.compile of the HVP only (about 5 minutes)")
    ap.add_argument("--repeat", type=int, default=None, help="round-robin repeats (default 5, --quick 2)")
    ap.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups of {', '.join(GROUPS)} (default all)")
    ap.add_argument("--models", default="mlp,cnn", help="torch models, of mlp,cnn (default both)")
    ap.add_argument("--compile", choices=("all", "hvp", "none"), default=None,
                    help="torch.compile the torch.func HVP and GGN (all; default), the HVP only (--quick) or none")
    ap.add_argument("--arturo-n", type=float, default=None, help="ArTuRO / Adam size (default 1e7, the issue's; ~0.6 GB)")
    ap.add_argument("--json", default=None, help="also write the ratios (key -> value) to this JSON file")
    args = ap.parse_args(argv)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        ap.error(f"--only: unknown group(s) {bad}; choose from {', '.join(GROUPS)}")
    repeat = args.repeat or (2 if args.quick else 5)
    compile_ = args.compile or ("hvp" if args.quick else "all")
    arturo_n = int(args.arturo_n or 1e7)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())

    one_thread()
    t_start = time.time()
    print(f"# curvlab side by side with its peers — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"{_commit()}; {_versions()}")
    print(f"1 BLAS thread, 1 torch thread, 1 XLA thread; process CPU time per call, best of {repeat} round-robin "
          f"repeats after a warm-up call, ratios within one run; torch.compile: {compile_}\n", flush=True)

    rows: list[Row] = []
    ratios: dict[str, float] = {}
    for group in groups:
        t0 = time.time()
        try:
            if group == "torch":
                from _peers import _torch

                r, q = _torch.measure(repeat, compile_, models)
            elif group == "jax":
                from _peers import _jax

                r, q = _jax.measure(repeat)
            elif group == "numpy":
                from _peers import _jax

                r, q = _jax.measure_numpy(repeat)
            elif group == "eigsh":
                from _peers import _eigen

                r, q = _eigen.measure(max(repeat, 5))  # tiny solves: more pairs
            else:
                from _peers import _methods

                r, q = _methods.measure(max(repeat, 5), arturo_n)  # memory-bound, noisy: more rounds
        except Exception as exc:  # one group failing must not hide the others
            r, q = [Row(f"{group} group", "failed: " + short_error(exc, 160))], {}
        rows += r
        ratios.update(q)
        print(f"[{group}: {time.time() - t0:.0f} s wall]", file=sys.stderr, flush=True)
    print(markdown(rows))
    print(f"\n(total {time.time() - t_start:.0f} s wall)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(ratios, fh, indent=1, sort_keys=True)
    return ratios


if __name__ == "__main__":
    main()
