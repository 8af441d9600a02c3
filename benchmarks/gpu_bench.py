"""GPU benchmarks of curvlab, run by ``benchmarks/gpu_check.sh`` on a machine with an NVIDIA GPU.

One sub-benchmark per call, each printing ``RESULT`` lines (collected into the check's summary)
and writing ``<outdir>/gpu_<name>.json``:

- ``kernels``: the fused kernels' effective bandwidth at n = 1e8 as a share of the device's
  copy bandwidth (``y[...] = x``), float32 and float64. Bytes counted: filter 7 read + 5 written
  arrays, dual 4 read, pole 2 + 1 read (the pole and the negative count), apply 4 read + 2
  written, count_nonfinite 1 read.
- ``eigen``: curvlab's ``lobpcg`` and ``eigsh`` at n = 1e5 on a prescribed spectrum (Householder
  operator), CuPy against the same run on NumPy: time, matvecs, eigenvalue error.
- ``torch``: the torch adapter's Hessian-vector product on CUDA (CuPy vectors) against its
  gradient: time ratio HVP/gradient and the error of ``Hv`` against central differences of the
  gradient, plus ``vᵀHv`` against ``curvature(v)``.

Usage: ``python benchmarks/gpu_bench.py {kernels,eigen,torch} OUTDIR``. Exits non-zero on a
failed check (a non-finite or inaccurate result), so the calling step fails loudly. Dry runs
without a GPU: ``GPU_BENCH_STRICT_STANDIN=1 GPU_BENCH_N=100000 GPU_BENCH_EIG_N=3000`` (the strict
CuPy stand-in; timings meaningless) and ``GPU_BENCH_TORCH_DEVICE=cpu``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _emit(out: dict, name: str, **kv: Any) -> None:
    out.setdefault("results", []).append({"name": name, **kv})
    print("RESULT", name, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kv.items()),
          flush=True)


def _gpu_time(cp: Any, fn: Callable[[], Any], reps: int = 5) -> float:
    """Median seconds of ``fn`` on the device (CUDA events), after one warm-up call (compilation)."""
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(reps):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return float(np.median(times))


def bench_kernels(outdir: str, out: dict) -> bool:
    import cupy as cp

    from curvlab import kernels

    n = int(os.environ.get("GPU_BENCH_N", 10**8))
    ok = True
    for dt in (np.float32, np.float64):
        rng = cp.random.default_rng(0)
        isz = np.dtype(dt).itemsize

        def arr(scale: float = 1.0, shift: float = 0.0) -> Any:
            return (rng.standard_normal(n, dtype=np.float64) * scale + shift).astype(dt)

        x = arr()
        y = cp.empty_like(x)

        def copy() -> None:
            y[...] = x

        t_copy = _gpu_time(cp, copy)
        bw_copy = 2 * n * isz / t_copy
        _emit(out, f"copy_{np.dtype(dt).name}", n=n, GBps=bw_copy / 1e9)
        del y
        g, w, a, h = arr(), arr(0.1), arr(), arr(1.0, 2.0)
        P00, P01, P11 = arr(0.0, 1e-3), cp.zeros(n, dtype=dt), arr(0.0, 1e-3)
        p = cp.abs(arr()) + dt(0.5)
        o = cp.empty_like(w)
        cases = {
            "count_nonfinite": (1, lambda: kernels.count_nonfinite(g)),
            "rls_filter_update": (12, lambda: kernels.rls_filter_update(g, w, a, h, P00, P01, P11, q=1e-4, r=1.0)),
            "kl_dual": (4, lambda: kernels.kl_dual(0.5, w, a, h, p, beta_p0=0.01)),
            "kl_pole": (3, lambda: kernels.kl_pole(h, p, beta_p0=0.01)),
            "arturo_apply": (6, lambda: kernels.arturo_apply(0.5, w, a, h, p, o, beta_p0=0.01, nu=1.0, beta=0.9)),
        }
        for name, (arrays, fn) in cases.items():
            try:
                t = _gpu_time(cp, fn)
            except Exception as e:  # report and go on with the next kernel
                _emit(out, f"{name}_{np.dtype(dt).name}_error", error=repr(e)[:300])
                ok = False
                continue
            bw = arrays * n * isz / t
            _emit(out, f"{name}_{np.dtype(dt).name}", n=n, ms=t * 1e3, GBps=bw / 1e9, pct_of_copy=100 * bw / bw_copy)
        kl, dkl = kernels.kl_dual(0.5, w, a, h, p, beta_p0=0.01)
        ok &= math.isfinite(kl) and math.isfinite(dkl)
        del g, w, a, h, P00, P01, P11, p, o, x
        cp.get_default_memory_pool().free_all_blocks()
    return ok


def bench_eigen(outdir: str, out: dict) -> bool:
    import cupy as cp

    from curvlab.linalg.lanczos import eigsh
    from curvlab.linalg.lobpcg import lobpcg

    n = int(os.environ.get("GPU_BENCH_EIG_N", 10**5))
    k = 8
    rng = np.random.default_rng(0)
    lam = np.concatenate([np.linspace(100.0, 30.0, k), rng.uniform(0.0, 10.0, n - k)])
    top = np.sort(lam)[::-1][:k]
    ok = True
    runs = {
        "lobpcg": lambda A: lobpcg(A, k, tol=1e-6, rng=1, maxiter=500),
        "eigsh": lambda A: eigsh(A, k, tol=1e-8, rng=1),
    }
    for name, run in runs.items():
        try:
            ok &= _eigen_case(cp, name, run, lam, top, n, k, out)
        except Exception as e:  # report and go on with the next solver
            _emit(out, f"{name}_error", error=repr(e)[:300])
            ok = False
    return ok


def _eigen_case(cp: Any, name: str, run: Callable[[Any], Any], lam: np.ndarray, top: np.ndarray, n: int, k: int,
                out: dict) -> bool:
    from curvlab.linalg.testing import prescribed_spectrum_operator

    ok = True
    times = {}
    for xp in (np, cp):
        A = prescribed_spectrum_operator(lam, 2, xp=xp, orthogonal="householder").operator
        run(A)  # warm-up (CuPy kernel compilation, BLAS threads)
        if xp is cp:
            cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        res = run(A)
        if xp is cp:
            cp.cuda.Device().synchronize()
        times[xp.__name__] = time.perf_counter() - t0
        err = float(np.max(np.abs(np.sort(res.eigenvalues)[::-1] - top) / top))
        ok &= bool(np.all(res.converged)) and err < 1e-5
        _emit(out, f"{name}_{xp.__name__}", n=n, k=k, s=times[xp.__name__], matvecs=res.n_matvecs,
              max_rel_err=err, converged=bool(np.all(res.converged)))
    _emit(out, f"{name}_speedup", n=n, cupy_over_numpy=times["numpy"] / times["cupy"])
    return ok


def bench_torch(outdir: str, out: dict) -> bool:
    import torch

    from curvlab.adapters.torch import TorchCurvature

    dev = os.environ.get("GPU_BENCH_TORCH_DEVICE", "cuda")  # "cpu": a dry run of this script's logic
    if dev == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch has no CUDA device (install a CUDA build of torch)")
    if dev == "cuda":
        import cupy as cp

        xp = cp
    else:
        xp = np
    torch.manual_seed(0)
    sizes = [784, 512, 512, 10]
    layers: list[Any] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    net = torch.nn.Sequential(*layers).to(device=dev, dtype=torch.float64)
    X = torch.randn(1024, sizes[0], device=dev, dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (1024,), device=dev)
    curv = TorchCurvature(net, "cross_entropy", (X, y))
    P = curv.layout.size
    v = xp.asarray(np.random.default_rng(0).standard_normal(P))
    H = curv.hessian()

    def sync() -> None:
        if dev == "cuda":
            torch.cuda.synchronize()
            cp.cuda.Device().synchronize()

    def timed(fn: Callable[[], Any], reps: int = 10) -> float:
        fn()
        sync()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    t_grad = timed(lambda: curv.gradient())
    t_hvp = timed(lambda: H @ v)
    Hv = H @ v
    theta = curv.params
    # central differences of the gradient along v: H v up to O(eps²) and rounding
    eps = 1e-4 * float(xp.linalg.norm(theta)) / float(xp.linalg.norm(v))
    _, gp = curv.gradient(theta + eps * v)
    _, gm = curv.gradient(theta - eps * v)
    fd = (gp - gm) / (2 * eps)
    rel = float(xp.linalg.norm(Hv - fd) / xp.linalg.norm(fd))
    q = float(xp.vdot(v, Hv))
    c = float(curv.directional_curvature(v))
    _emit(out, f"torch_hvp_{dev}", params=P, batch=1024, grad_ms=t_grad * 1e3, hvp_ms=t_hvp * 1e3,
          hvp_over_grad=t_hvp / t_grad, fd_rel_err=rel, vHv_vs_curvature=abs(q - c) / max(abs(c), 1e-300),
          out_type=type(Hv).__module__)
    return type(Hv) is type(v) and rel < 1e-5 and abs(q - c) <= 1e-8 * max(abs(c), 1.0)


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("kernels", "eigen", "torch"):
        print(__doc__)
        return 2
    name, outdir = sys.argv[1], sys.argv[2]
    if os.environ.get("GPU_BENCH_STRICT_STANDIN"):  # a CPU dry run against the strict CuPy stand-in
        from tests import _strict_cupy

        _strict_cupy.install()
    os.makedirs(outdir, exist_ok=True)
    out: dict = {"benchmark": name}
    ok = {"kernels": bench_kernels, "eigen": bench_eigen, "torch": bench_torch}[name](outdir, out)
    out["ok"] = bool(ok)
    with open(os.path.join(outdir, f"gpu_{name}.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)
    if not ok:
        print(f"CHECK FAILED: {name} (see RESULT lines)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
