"""Shared helpers for curvlab's asv benchmarks.

* safe imports: :data:`HAVE_CUPY`/:data:`HAVE_GPU` never raise, so a module imports on
  any machine; a GPU-parametrised benchmark raises ``NotImplementedError`` in ``setup``
  (asv's "skip") when no GPU is present;
* :func:`sync`: wait for queued GPU work before a timer stops;
* :func:`best_time`: the best of ``repeat`` timed calls (synchronised);
* :func:`interleaved_best`: best times of several callables measured round-robin in the
  same run, so ratios (method time over gradient time) see the same machine load;
* :func:`peak_bytes`: peak host bytes allocated during a call (``tracemalloc``; NumPy
  reports its array buffers to it), for memory ratios;
* :func:`blas_threads`: a context limiting BLAS threads (steadier timings on a shared CPU).
"""

from __future__ import annotations

import contextlib
import gc
import time
import tracemalloc
from typing import Any, Callable, Iterator, Mapping

import numpy as np

try:  # curvlab itself must import; everything optional is guarded
    from curvlab import backend
except Exception as exc:  # pragma: no cover - a broken install shows up here
    raise ImportError(f"curvlab must be importable to run the benchmarks: {exc}") from exc

HAVE_CUPY = backend.cupy_available()
HAVE_GPU = backend.gpu_available()

try:
    import threadpoolctl as _tpc
except Exception:  # pragma: no cover
    _tpc = None


def get_xp(name: str) -> Any:
    """``numpy``, or ``cupy`` when a GPU is present; otherwise raise asv's skip."""
    if name == "numpy":
        return np
    if name == "cupy":
        if not HAVE_GPU:
            raise NotImplementedError("CuPy with an NVIDIA GPU not available")
        import cupy

        return cupy
    raise ValueError(f"unknown backend {name!r}")


def sync(x: Any = None) -> None:
    """Synchronise the GPU (a no-op for NumPy)."""
    if HAVE_CUPY:
        backend.synchronize(x)


#: timers: "wall" (``perf_counter``) or "cpu" (``process_time``: this process's CPU
#: seconds, all threads). On a shared, oversubscribed CPU the CPU time of a
#: single-threaded run is far steadier than wall time; GPU runs must use "wall".
TIMERS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _timed(fn: Callable[[], Any], timer: Callable[[], float] = time.perf_counter) -> float:
    t0 = timer()
    out = fn()
    sync(out if not isinstance(out, tuple) else None)
    return timer() - t0


def best_time(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1, timer: str = "wall") -> float:
    """Best time (s) of ``repeat`` synchronised calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    return min(_timed(fn, TIMERS[timer]) for _ in range(repeat))


def interleaved_best(
    fns: Mapping[str, Callable[[], Any]], repeat: int = 7, warmup: int = 1, timer: str = "wall"
) -> dict[str, float]:
    """Best time of each callable, measured round-robin (same run, same load)."""
    clock = TIMERS[timer]
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            best[k] = min(best[k], _timed(fn, clock))
    return best


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated on the host during ``fn()`` above the level at its start.

    Host memory only (NumPy buffers); for CuPy use the memory pool's statistics.
    """
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
        del out
    finally:
        tracemalloc.stop()
    return peak - base


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Limit BLAS threads to ``n`` inside the block (``None``: leave them alone)."""
    if n is None or _tpc is None:
        yield
        return
    with _tpc.threadpool_limits(limits=n, user_api="blas"):
        yield
