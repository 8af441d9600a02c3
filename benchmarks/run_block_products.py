"""SLQ with single-vector products against one block product per Lanczos step.

Usage (from the repository root; one BLAS/torch thread is set before the imports):

    .venv/bin/python benchmarks/run_block_products.py [--probes 5] [--steps 40] [--repeat 3] [--batch 256]

Problems: (a) the reference MLP Hessian (``curvlab.MLPCurvature(...).hessian()``, 64-64-10 tanh
on sklearn digits, float64; its ``matmat`` is one forward/backward pass over the block) and (b) a
small CNN on sklearn digits 8x8 (Conv 1→8, tanh, AvgPool, Conv 8→16, tanh, Linear 256→10;
float32, batch 256) through ``curvlab.adapters.torch.TorchCurvature(...).hessian()``, whose
``matmat`` is ``torch.func.vmap`` over the columns. Each row times ``slq(H, P, m, block=...)``
(process CPU time, best of ``--repeat`` runs interleaved in the same process) and the products
alone: ``P m`` calls of ``matvec`` against ``m`` calls of ``matmat`` on ``(n, P)`` blocks. The
spectral estimates of the two paths are compared too (same probes: equal to round-off).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cpu(fn, repeat):
    best = np.inf
    out = None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def _problems(batch):
    import torch
    from torch import nn

    import curvlab
    from curvlab.adapters.torch import TorchCurvature
    from curvlab.data import load_digits
    from curvlab.models.mlp import MLP

    torch.set_num_threads(1)
    ds = load_digits(dtype=np.float64)
    X, y = ds.X_train[:batch], ds.y_train[:batch]
    model = MLP([64, 64, 10], activation="tanh", loss="cross_entropy", dtype=np.float64)
    params = model.init_params(np.random.default_rng(0))
    H_mlp = curvlab.MLPCurvature(model, params, (X, y)).hessian()

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    ).eval()
    Xt = torch.as_tensor(X.astype(np.float32)).reshape(-1, 1, 8, 8)
    yt = torch.as_tensor(y)
    H_cnn = TorchCurvature(net, "cross_entropy", (Xt, yt)).hessian()
    return {"reference MLP 64-64-10 (float64)": H_mlp, "torch CNN on digits (float32)": H_cnn}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    from curvlab.linalg import slq

    P, m = a.probes, a.steps
    print(f"SLQ, {P} probes x {m} Lanczos steps; process CPU seconds, best of {a.repeat}; 1 BLAS/torch thread")
    print(f"{'operator':34s} {'n':>6s} {'per-vector s':>12s} {'block s':>8s} {'speed-up':>8s} "
          f"{'P*m matvec s':>12s} {'m matmat s':>10s} {'|Δ tr H| est.':>14s}")
    for name, H in _problems(a.batch).items():
        n = H.shape[0]
        rng = np.random.default_rng(0)
        V = rng.standard_normal((n, P)).astype(H.dtype)
        H.matvec(V[:, 0]), H.matmat(V)  # warm-up (first-call tracing, allocations)
        t_mv, _ = _cpu(lambda: [H.matvec(V[:, p]) for _ in range(m) for p in range(P)], a.repeat)
        t_mm, _ = _cpu(lambda: [H.matmat(V) for _ in range(m)], a.repeat)
        t_one, s_one = _cpu(lambda: slq(H, P, m, rng=1, block=False), a.repeat)
        t_blk, s_blk = _cpu(lambda: slq(H, P, m, rng=1, block=True), a.repeat)
        # tr H (f = identity) from both runs: the same probes, so equal to round-off
        d = abs(s_one.probe_values(lambda t: t).mean() - s_blk.probe_values(lambda t: t).mean())
        print(f"{name:34s} {n:6d} {t_one:12.2f} {t_blk:8.2f} {t_one / t_blk:7.1f}x {t_mv:12.2f} {t_mm:10.2f} {d:14.2e}")


if __name__ == "__main__":
    main()
