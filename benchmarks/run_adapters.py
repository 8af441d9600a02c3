"""Print the adapter benchmark tables: HVP / dᵀHd time and peak memory over the gradient's.

Usage (from the repository root):

    /work/venv/bin/python benchmarks/run_adapters.py [--threads 1] [--repeat 7] [--timer cpu]
                                                      [--dtype float32] [--skip-jax]

Problems (see benchmarks/benchmarks/bench_adapters.py): 784-512-512-10 tanh MLP, batch 512,
and a small CNN with BatchNorm (eval), batch 128; PyTorch on the CPU and JAX (jitted) on the
MLP. Times are the best of R round-robin repeats in the same run; "x grad" divides by the
adapter's gradient (``TorchCurvature.gradient``: functional_call + torch.func.grad, NumPy
out), "x autograd" by a plain ``torch.autograd.grad`` of the module's loss. Peak memory is the
resident-set high-water mark during one call above the level before it (Linux
``/proc/self/clear_refs``; the script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=65536``
so freed buffers leave the resident set), relative to the adapter gradient's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks.bench_adapters import (  # noqa: E402
    jax_calls,
    jax_mlp_problem,
    peak_rss_bytes,
    torch_calls,
    torch_cnn_problem,
    torch_mlp_problem,
)
from benchmarks.common import interleaved_best  # noqa: E402


def table(title: str, calls: dict, repeat: int, timer: str, ref2: str | None = None) -> dict[str, float]:
    t = interleaved_best(calls, repeat=repeat, timer=timer)
    mem = {k: peak_rss_bytes(f) for k, f in calls.items()}
    print(f"\n{title}")
    head = f"{'call':22s} {'time ms':>9s} {'x grad':>7s}"
    if ref2:
        head += f" {'x autograd':>10s}"
    print(head + f" {'peak MB':>8s} {'x grad':>7s}")
    for k in calls:
        row = f"{k:22s} {1e3 * t[k]:9.2f} {t[k] / t['grad']:7.2f}"
        if ref2:
            row += f" {t[k] / t[ref2]:10.2f}"
        mr = mem[k] / mem["grad"] if mem["grad"] > 0 else float("nan")
        print(row + f" {mem[k] / 2**20:8.1f} {mr:7.2f}")
    if "hvp_cached" in calls:  # the torch adapter: issue 14's targets, time (and peak memory) over the gradient
        g, gm = t["grad"], max(mem["grad"], 1)
        rows = (("cached HVP", "hvp_cached", 1.5, None), ("cached GGN-vp", "ggn_cached", 1.4, None),
                ("one-shot HVP (auto)", "hvp_auto_oneshot", None, None),
                ("dᵀHd forward-only", "curvature_fwd_fwd", 2.0, 1.1), ("grad + dᵀHd", "grad_and_curv", 1.6, 2.0))
        print("issue 14 targets: " + "; ".join(
            f"{name} {t[k] / g:.2f}x" + (f" (<= {tt})" if tt else "") +
            (f", mem {mem[k] / gm:.2f}x (<= {mt})" if mt else "") for name, k, tt, mt in rows))
    return t


def crossing() -> None:
    from curvlab.adapters.torch import from_torch, to_torch

    print("\nDLPack crossing (NumPy <-> framework), float64 vector")
    print(f"{'n':>9s} {'torch rt us':>11s} {'shares mem':>10s} {'jax in+out us':>13s} {'jax no-copy':>11s} "
          f"{'copy us':>8s}")
    for n in (10_000, 669_706, 4_000_000):
        buf = np.empty(8 * n + 64, dtype=np.uint8)
        off = (-buf.ctypes.data) % 64
        v = buf[off:off + 8 * n].view(np.float64)
        v[:] = 1.0
        t0 = time.perf_counter()
        for _ in range(1000):
            back = from_torch(to_torch(v))
        tt = (time.perf_counter() - t0) / 1000
        shares = to_torch(v).data_ptr() == v.ctypes.data and back.ctypes.data == v.ctypes.data
        t0 = time.perf_counter()
        for _ in range(200):
            c = v.copy()
        tc = (time.perf_counter() - t0) / 200
        jx, jshare = float("nan"), "n/a"
        try:
            import jax

            jax.config.update("jax_enable_x64", True)
            from curvlab.adapters.jax import from_jax, to_jax

            t0 = time.perf_counter()
            for _ in range(200):
                a = to_jax(v)
                out = from_jax(a)
            jx = (time.perf_counter() - t0) / 200
            jshare = str(a.unsafe_buffer_pointer() == v.ctypes.data and out.ctypes.data == v.ctypes.data)
        except ImportError:
            pass
        del c
        print(f"{n:9d} {1e6 * tt:11.2f} {str(shares):>10s} {1e6 * jx:13.2f} {jshare:>11s} {1e6 * tc:8.1f}")


def memory_vs_depth(batch: int = 2048, depths: tuple[int, ...] = (2, 8)) -> None:
    """Peak memory over the autograd gradient's for tanh MLPs 784-512x(depth)-10."""
    import torch
    from torch import nn

    print(f"\nPeak memory vs depth (PyTorch, float32, width 512, batch {batch}; MB and x autograd gradient)")
    keys = ("grad_autograd", "hvp_fwd_rev", "hvp_rev_rev", "curvature_fwd_fwd", "grad_and_curv")
    print(f"{'depth':>5s} " + " ".join(f"{k:>22s}" for k in keys))
    for depth in depths:
        torch.manual_seed(0)
        layers: list = [nn.Linear(784, 512), nn.Tanh()]
        for _ in range(depth - 1):
            layers += [nn.Linear(512, 512), nn.Tanh()]
        net = nn.Sequential(*layers, nn.Linear(512, 10))
        X, y = torch.randn(batch, 784), torch.randint(0, 10, (batch,))
        calls = torch_calls(net, X, y, with_curvlinops=False)
        for k in keys:
            calls[k]()
        mem = {k: peak_rss_bytes(calls[k]) for k in keys}
        base = mem["grad_autograd"]
        print(f"{depth:5d} " + " ".join(f"{mem[k] / 2**20:12.1f} ({mem[k] / base:5.2f}x)" for k in keys))


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # large buffers straight from/to the OS, so the resident set follows live memory
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--timer", default="cpu", choices=["wall", "cpu"],
                    help="CPU time of this process (default; steady on a shared machine with 1 thread) or wall")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--skip-jax", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    import torch

    torch.set_num_threads(args.threads)
    tdt = torch.float32 if args.dtype == "float32" else torch.float64
    print(f"torch {torch.__version__}, threads={args.threads}, {args.timer} time, best of {args.repeat} "
          f"round-robin repeats, {args.dtype}, CPU only (no GPU in this run)")
    for name, prob in (("MLP 784-512-512-10 tanh, CE, batch 512", torch_mlp_problem),
                       ("CNN conv16-BN(eval)-conv32-linear, 28x28, CE, batch 128", torch_cnn_problem)):
        net, X, y = prob(dtype=tdt)
        calls = torch_calls(net, X, y)
        table(f"PyTorch adapter: {name} (P={sum(p.numel() for p in net.parameters())})", calls,
              args.repeat, args.timer, ref2="grad_autograd")
    if not args.skip_jax:
        try:
            import jax

            if args.dtype == "float64":
                jax.config.update("jax_enable_x64", True)
            calls = jax_calls(*jax_mlp_problem(dtype=np.dtype(args.dtype)))
            for f in calls.values():
                f()  # compile outside the timings
            table(f"JAX adapter (jitted, jax {jax.__version__}): MLP 784-512-512-10 tanh, CE, batch 512",
                  calls, args.repeat, args.timer)
        except ImportError:
            print("\nJAX not installed: skipped")
    memory_vs_depth()
    crossing()


if __name__ == "__main__":
    main()
