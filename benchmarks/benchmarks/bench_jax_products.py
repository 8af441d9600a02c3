"""asv benchmarks of the JAX adapter's curvature products against its gradient (issue 14,
targets 1 and 2).

Problem: the 784-512-512-10 tanh MLP, cross-entropy, batch 512, float32 of
``bench_adapters.jax_mlp_problem`` (``JaxCurvature`` on the CPU, jitted). Measured, after
warm-up (compilation, and for the cached products the cache built by a first product):

* ``hvp_cached`` / ``hvp_uncached``: the Hessian matvec (forward-over-reverse) with the
  product cache (``jax.linearize`` residuals kept) and with ``cache_bytes=0``
  (``hvp_uncached_rr``: reverse-over-reverse, the other one-shot mode);
* ``ggn_cached`` / ``ggn_uncached``: the GGN matvec likewise;
* ``curvature``: ``directional_curvature(d)`` (``dᵀHd``, forward mode: nested ``jax.jvp``);
* ``grad_and_curvature``: ``(loss, g, dᵀHd)`` from one pass (adjoint mode);
* ``grad``: ``JaxCurvature.gradient()`` (a jitted ``value_and_grad``), the reference.

``track_ratio_*`` are process-CPU-time ratios to the gradient measured round-robin in the
same run (``interleaved_best``; one XLA thread). ``track_mem_*`` are peak-resident-set
ratios to the gradient's, measured in a child process started with
``MALLOC_MMAP_THRESHOLD_=65536`` (so that freed buffers leave the resident set; Linux
``/proc/self/clear_refs``, as ``bench_adapters.peak_rss_bytes``); ``track_xla_mem_*``
the same ratios from XLA's buffer assignment (temporary + output bytes of the compiled
programs), which does not depend on the allocator. Targets (contract of
issue 14): cached HVP ≤ 1.5, cached GGN-vp ≤ 1.4, ``dᵀHd`` ≤ 2.0 with memory ≤ 1.1,
gradient + ``dᵀHd`` ≤ 1.6 with memory ≤ 2.0. ``benchmarks/run_jax_products.py`` prints the
table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402

from .bench_adapters import HAVE_JAX, _need, jax_mlp_problem, peak_rss_bytes  # noqa: E402
from .common import interleaved_best  # noqa: E402

#: the timed products, in table order
KEYS = ("grad", "hvp_cached", "hvp_uncached", "hvp_uncached_rr", "ggn_cached", "ggn_uncached", "curvature",
        "grad_and_curvature")


def jax_product_calls(dtype: Any = np.float32, batch: int = 512) -> tuple[dict[str, Callable[[], Any]], Any]:
    """The timed callables (every one returns its result), warmed: compiled, and the cache
    of the cached operators built by one product; and the caching source (``cache_info()``)."""
    from curvlab.adapters.jax import JaxCurvature

    apply, params, X, y = jax_mlp_problem(dtype=dtype, batch=batch)
    src = JaxCurvature(apply, params, "cross_entropy", (X, y))
    off = JaxCurvature(apply, params, "cross_entropy", (X, y), cache_bytes=0)
    v = np.random.default_rng(0).standard_normal(src.layout.size).astype(src.dtype)
    H, G, H0, G0 = src.hessian(), src.ggn(), off.hessian(), off.ggn()
    Hr0 = off.hessian("reverse_over_reverse")
    calls: dict[str, Callable[[], Any]] = {
        "grad": lambda: src.gradient(),
        "hvp_cached": lambda: H @ v,
        "hvp_uncached": lambda: H0 @ v,
        "hvp_uncached_rr": lambda: Hr0 @ v,
        "ggn_cached": lambda: G @ v,
        "ggn_uncached": lambda: G0 @ v,
        "curvature": lambda: off.directional_curvature(v),
        "grad_and_curvature": lambda: off.grad_and_curvature(v),
    }
    for f in calls.values():
        f()
    return calls, src


def time_ratios(calls: dict[str, Callable[[], Any]], repeat: int = 9) -> dict[str, float]:
    """Best process-CPU time of each call (s), round-robin in one run."""
    return interleaved_best(calls, repeat=repeat, timer="cpu")


def xla_bytes(src: Any) -> dict[str, int]:
    """XLA's own account of one call's peak memory: the compiled program's temporary plus
    output bytes (``memory_analysis()``; arguments -- parameters, batch, vector, cached
    residuals -- are live before the call and not counted), per product on ``src``'s batch."""
    import jax

    th, X, y = src.theta, src.X, src.y
    v = src._vec(np.ones(src.layout.size, src.dtype))

    def nb(f: Any, *a: Any) -> int:
        m = f.lower(*a).compile().memory_analysis()
        return int(m.temp_size_in_bytes + m.output_size_in_bytes)

    lin_h = src._cache_builder("hvp_forward_over_reverse")(th, X, y)
    lin_o = src._cache_builder("output")(th, X, y)
    return {
        "grad": nb(jax.jit(src._compiled("grad")), th, X, y),
        "hvp_cached": nb(src._cached_fns("hvp_forward_over_reverse")[0], lin_h, v),
        "hvp_uncached": nb(src._mv_fns("hvp_forward_over_reverse")[0], th, X, y, v),
        "hvp_uncached_rr": nb(src._mv_fns("hvp_reverse_over_reverse")[0], th, X, y, v),
        "ggn_cached": nb(src._cached_fns("ggn")[0], lin_o, v),
        "ggn_uncached": nb(src._mv_fns("ggn")[0], th, X, y, v),
        "curvature": nb(jax.jit(src._compiled("curvature")), th, X, y, v),
        "grad_and_curvature": nb(jax.jit(src._compiled("grad_and_curvature")), th, X, y, v),
    }


def _child_peaks(repeat: int) -> dict[str, int]:
    calls, _ = jax_product_calls()
    out = {}
    for k in KEYS:
        # the smallest of a few readings: the high-water mark sees one call's live buffers
        out[k] = min(peak_rss_bytes(calls[k]) for _ in range(repeat))
    return out


def peak_memory(repeat: int = 3, timeout: int = 600) -> dict[str, int]:
    """Peak resident bytes above the start of one call, per product, measured in a child
    process with ``MALLOC_MMAP_THRESHOLD_=65536`` (large buffers mapped and unmapped, so the
    resident set follows live memory); the cached operators' residuals are held before the
    call and not counted (``cache_info()["bytes"]`` reports them)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    code = (f"import sys, json; sys.path.insert(0, {root!r}); "
            f"from benchmarks.bench_jax_products import _child_peaks; print(json.dumps(_child_peaks({repeat})))")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout,
                         check=True)
    return {k: int(v) for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


class JaxProducts:
    """Cached and uncached JAX curvature products and ``dᵀHd`` over the gradient (CPU, MLP)."""

    timeout = 600
    _times: dict[str, float] | None = None
    _mem: dict[str, int] | None = None
    _xla: dict[str, int] | None = None

    def setup(self) -> None:
        _need(HAVE_JAX, "jax")
        self.calls, self.src = jax_product_calls()

    def _t(self) -> dict[str, float]:
        if JaxProducts._times is None:
            JaxProducts._times = time_ratios(self.calls)
        return JaxProducts._times

    def _m(self) -> dict[str, int]:
        if JaxProducts._mem is None:
            JaxProducts._mem = peak_memory()
        return JaxProducts._mem

    def _xla_ratio(self, k: str) -> float:
        if JaxProducts._xla is None:
            JaxProducts._xla = xla_bytes(self.src)
        return JaxProducts._xla[k] / JaxProducts._xla["grad"]

    def _ratio(self, k: str) -> float:
        t = self._t()
        return t[k] / t["grad"]

    def _mem_ratio(self, k: str) -> float:
        m = self._m()
        return m[k] / m["grad"] if m["grad"] > 0 else float("nan")

    def time_grad(self) -> None:
        self.calls["grad"]()

    def time_hvp_cached(self) -> None:
        self.calls["hvp_cached"]()

    def time_ggn_cached(self) -> None:
        self.calls["ggn_cached"]()

    def time_curvature(self) -> None:
        self.calls["curvature"]()

    def time_grad_and_curvature(self) -> None:
        self.calls["grad_and_curvature"]()

    def track_ratio_hvp_cached_over_grad(self) -> float:
        return self._ratio("hvp_cached")

    def track_ratio_hvp_uncached_over_grad(self) -> float:
        return self._ratio("hvp_uncached")

    def track_ratio_hvp_uncached_rr_over_grad(self) -> float:
        return self._ratio("hvp_uncached_rr")

    def track_ratio_ggn_cached_over_grad(self) -> float:
        return self._ratio("ggn_cached")

    def track_ratio_ggn_uncached_over_grad(self) -> float:
        return self._ratio("ggn_uncached")

    def track_ratio_curvature_over_grad(self) -> float:
        return self._ratio("curvature")

    def track_ratio_grad_and_curvature_over_grad(self) -> float:
        return self._ratio("grad_and_curvature")

    def track_mem_curvature_over_grad(self) -> float:
        return self._mem_ratio("curvature")

    def track_mem_grad_and_curvature_over_grad(self) -> float:
        return self._mem_ratio("grad_and_curvature")

    def track_mem_hvp_cached_over_grad(self) -> float:
        return self._mem_ratio("hvp_cached")

    def track_mem_ggn_cached_over_grad(self) -> float:
        return self._mem_ratio("ggn_cached")

    def track_xla_mem_curvature_over_grad(self) -> float:
        return self._xla_ratio("curvature")

    def track_xla_mem_grad_and_curvature_over_grad(self) -> float:
        return self._xla_ratio("grad_and_curvature")

    def track_cache_mbytes(self) -> float:
        """Residual bytes held by the cached Hessian and GGN on the one batch (MiB)."""
        return float(self.src.cache_info()["bytes"]) / 2**20


for _name in dir(JaxProducts):
    if _name.startswith("track_"):
        getattr(JaxProducts, _name).unit = "MiB" if _name == "track_cache_mbytes" else "ratio"
