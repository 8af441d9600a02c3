"""Step time of a jitted JAX training loop: ``as_optax(CurvatureLR(source=JaxCurvature))``
(curvature every step) against ``optax.adam`` (issue 13 §3/§5; target ≤ 3×).

Usage (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run_optax_step.py [--steps 200] [--batch 64]
                                                                     [--hidden 64] [--repeat 3]

Problem: an MLP 64-H-H-10 (tanh) on sklearn's digits, float32, mini-batches of B samples
cycled through the data set. Each optimizer's step is one ``jax.jit`` of
``grad -> opt.update -> apply_updates``; for CurvatureLR the update goes through
``as_optax``'s host callback, in which the source is rebound with ``at(params, data=batch)``
(no rebuild, no recompilation) and gives ``dᵀHd`` (adjoint mode). Time: process CPU time
(``time.process_time``) per step over S steps after a warm-up, the best of R interleaved
repeats, both in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mode", default="adjoint", choices=["adjoint", "forward"])
    ap.add_argument("--lam", type=float, default=0.5, help="CurvatureLR's constant schedule λ")
    ap.add_argument("--base", default="sgd", choices=["sgd", "adam"], help="CurvatureLR's base direction")
    ap.add_argument("--realized", action="store_true", help="also record the realised change (one more loss)")
    a = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import optax
    from sklearn.datasets import load_digits

    from curvlab.adapters.jax import JaxCurvature, as_optax
    from curvlab.methods import SGD, Adam, CurvatureLR

    d = load_digits()
    X = jnp.asarray(d.data / 16.0, jnp.float32)
    y = jnp.asarray(d.target)
    r = np.random.default_rng(0)
    sizes = [64, a.hidden, a.hidden, 10]
    p0 = {f"l{i}": {"w": jnp.asarray(r.standard_normal((m, n)) / np.sqrt(m), jnp.float32),
                    "b": jnp.zeros(n, jnp.float32)} for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:]))}

    def apply(ps, x):
        for i in range(len(sizes) - 1):
            x = x @ ps[f"l{i}"]["w"] + ps[f"l{i}"]["b"]
            if i < len(sizes) - 2:
                x = jnp.tanh(x)
        return x

    def loss(ps, x, t):
        return optax.softmax_cross_entropy_with_integer_labels(apply(ps, x), t).mean()

    B = a.batch
    nb = X.shape[0] // B
    batches = [(X[i * B:(i + 1) * B], y[i * B:(i + 1) * B]) for i in range(nb)]
    src = JaxCurvature(apply, p0, "cross_entropy", batches[0])

    def make_step(opt, with_data):
        @jax.jit
        def step(p, s, xb, yb):
            g = jax.grad(loss)(p, xb, yb)
            ex = {"data": (xb, yb)} if with_data else {}
            u, s = opt.update(g, s, p, **ex)
            return optax.apply_updates(p, u), s
        return step

    opts = {
        "optax.adam": (optax.adam(1e-3), False),
        f"CurvatureLR ({a.mode})": (as_optax(CurvatureLR(base=Adam(lr=1.0) if a.base == "adam" else SGD(lr=1.0),
                                                         schedule=a.lam, mode=a.mode, realized=a.realized),
                                             source=src), True),
    }
    runs = {}
    for name, (opt, wd) in opts.items():
        step = make_step(opt, wd)
        p, s = p0, opt.init(p0)
        for k in range(5):                       # warm-up: compile
            p, s = step(p, s, *batches[k % nb])
        jax.block_until_ready(p)
        runs[name] = [step, p, s]
    best = {n: np.inf for n in runs}
    final = {}
    for _ in range(a.repeat):
        for name, st in runs.items():
            step, p, s = st
            t0 = time.process_time()
            for k in range(a.steps):
                p, s = step(p, s, *batches[k % nb])
            jax.block_until_ready(p)
            best[name] = min(best[name], (time.process_time() - t0) / a.steps)
            st[1], st[2] = p, s
            final[name] = float(loss(p, X, y))
    base = best["optax.adam"]
    print(f"MLP {sizes} on digits, float32, batch {B}, {a.steps} steps x best of {a.repeat}, "
          f"jax {jax.__version__}, process CPU time per step")
    for name in runs:
        print(f"  {name:26s} {best[name] * 1e3:8.3f} ms/step  x{best[name] / base:6.2f}   "
              f"final full-data loss {final[name]:.4f}")


if __name__ == "__main__":
    main()
