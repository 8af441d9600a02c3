"""Reference MLP: gradient, HVP, GGN-vp and the two dᵀHd modes (curvlab.models.mlp).

Problem (issue 2): MLP 784-512-512-10, tanh, softmax cross-entropy, batch 512,
float32. ``time_*`` time one call each; ``track_*_over_grad`` report time ratios to
the gradient measured round-robin in the same run; ``track_peak_ratio_*`` report peak
host memory (tracemalloc, first call on a fresh model: the reused scratch arrays and the
product cache count) relative to the gradient's; ``peakmem_*`` are asv's process-level
peaks. Targets (issue 14): one-shot HVP ≤ 2.5; **cached** HVP ≤ 1.5 and cached GGN-vp
≤ 1.4 (``MLPCurvature`` operators, the forward pass kept between products); adjoint
gradient+dᵀHd ≤ 1.6 with memory ≤ 2.0; forward-mode dᵀHd ≤ 2.0 with memory ≤ 1.1.
``NumpyOverJax*`` track NumPy time over ``jax.jit`` time for the same products on the
same numbers (target ≤ 1.0; float32, and float64 as a check).

CPU timings use one BLAS thread and this process's CPU time (``time.process_time``):
on a shared, oversubscribed machine multi-threaded wall-clock timings swing by
factors of several, while single-threaded CPU time is steady to a few percent.
The CuPy class times wall clock with device synchronisation. NumPy's OpenBLAS picks
its kernels from the CPU model: an AVX-512 CPU it does not know (AMD Zen 5 with
OpenBLAS 0.3.31) gets the Haswell (AVX2) kernels at half the GEMM speed unless
``OPENBLAS_CORETYPE=SkylakeX`` is set; :func:`blas_info` says which.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from .common import blas_threads, get_xp, interleaved_best, peak_bytes, sync

SIZES = [784, 512, 512, 10]
BATCH = 512


def make_problem(xp=np, dtype=np.float32, seed=0):
    """Model, parameters, batch and a direction on the backend ``xp``."""
    from curvlab.models.mlp import MLP

    rng = np.random.default_rng(seed)
    model = MLP(SIZES, activation="tanh", loss="cross_entropy", dtype=dtype, xp=xp)
    params = model.init_params(rng)
    X = xp.asarray(rng.standard_normal((BATCH, SIZES[0])).astype(dtype))
    y = xp.asarray(rng.integers(0, SIZES[-1], size=BATCH))
    d = xp.asarray(rng.standard_normal(model.n_params).astype(dtype) * 1e-2)
    return model, params, X, y, d


def method_calls(model, params, X, y, d, cached=True):
    """The measured callables, keyed by name; ``*_cached``: the products of an
    ``MLPCurvature`` operator whose product cache is built at its first call."""
    fns = {
        "grad": lambda: model.loss_and_grad(params, X, y),
        "hvp": lambda: model.hvp(params, X, y, d),
        "ggn_vp": lambda: model.ggn_vp(params, X, y, d),
        "curvature_adjoint": lambda: model.grad_and_curvature(params, X, y, d),
        "curvature_forward": lambda: model.curvature(params, X, y, d, mode="forward"),
    }
    if cached:
        from curvlab.models import MLPCurvature

        src = MLPCurvature(model, params, (X, y))
        H, G = src.hessian(), src.ggn()
        fns["hvp_cached"] = lambda: H @ d
        fns["ggn_vp_cached"] = lambda: G @ d
    return fns


def fresh_peaks(xp=np, dtype=np.float32):
    """Peak host bytes (tracemalloc) of the first call of each method on a fresh model,
    so the scratch arrays a model keeps between calls (and a product cache) are counted."""
    keys = list(method_calls(*make_problem(xp, dtype)))
    return {k: peak_bytes(method_calls(*make_problem(xp, dtype))[k]) for k in keys}


def blas_info():
    """``"openblas Haswell"``-like: the BLAS NumPy calls and the kernels it picked."""
    try:
        from threadpoolctl import threadpool_info

        return ", ".join(f"{i.get('internal_api')} {i.get('architecture')}" for i in threadpool_info()
                         if i.get("user_api") == "blas") or "unknown"
    except Exception:  # pragma: no cover - threadpoolctl missing
        return "unknown"


def jax_reference(model, params, X, y, d):
    """JAX-jit equivalents of :func:`method_calls` on the same numbers (CPU).

    The same flat parameters, batch and direction as JAX arrays; ``jax.grad``,
    forward-over-reverse HVP (``jvp`` of ``grad``), the GGN product
    ``Jᵀ H_z J v`` (``jvp`` then ``vjp``) and ``dᵀHd`` in forward mode (``jvp`` of
    ``jvp``), each one ``jax.jit``; every call blocks until its result is ready.
    Set ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``
    before JAX is imported for a one-thread comparison.
    """
    import jax
    import jax.numpy as jnp

    shapes = model.layout.shapes
    L = len(shapes)

    def unflat(p):
        Ws, o = [], 0
        for n, m in shapes:
            Ws.append(p[o:o + n * m].reshape(n, m))
            o += n * m
        return Ws

    def apply(p, Xb):
        a = Xb
        for l, W in enumerate(unflat(p)):
            a = a @ W[:, :-1].T + W[:, -1]
            if l < L - 1:
                a = jnp.tanh(a)
        return a

    def ce(z, yb):
        return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, yb[:, None], axis=1)[:, 0])

    def loss(p, Xb, yb):
        return ce(apply(p, Xb), yb)

    vg = jax.jit(jax.value_and_grad(loss))

    @jax.jit
    def hvp(p, Xb, yb, v):
        return jax.jvp(lambda q: jax.grad(loss)(q, Xb, yb), (p,), (v,))[1]

    @jax.jit
    def ggn_vp(p, Xb, yb, v):
        z, Jv = jax.jvp(lambda q: apply(q, Xb), (p,), (v,))
        HJv = jax.jvp(lambda zz: jax.grad(ce)(zz, yb), (z,), (Jv,))[1]
        return jax.vjp(lambda q: apply(q, Xb), p)[1](HJv)[0]

    @jax.jit
    def dhd(p, Xb, yb, v):
        f1 = lambda t: jax.jvp(lambda s: loss(p + s * v, Xb, yb), (t,), (jnp.ones_like(t),))[1]
        return jax.jvp(f1, (jnp.zeros((), p.dtype),), (jnp.ones((), p.dtype),))[1]

    P, Xj, yj, vj = (jnp.asarray(np.asarray(a)) for a in (params, X, y, d))

    def run(f, *a):
        return lambda: jax.block_until_ready(f(*a))

    return {
        "grad": run(vg, P, Xj, yj),
        "hvp": run(hvp, P, Xj, yj, vj),
        "ggn_vp": run(ggn_vp, P, Xj, yj, vj),
        "curvature_forward": run(dhd, P, Xj, yj, vj),
    }


class TimeMLP:
    """CPU time of one call of each product (NumPy, one BLAS thread)."""

    backend = "numpy"
    timer = time.process_time
    repeat = (3, 10, 20.0)
    number = 1

    def setup(self):
        self._limits = contextlib.ExitStack()
        self._limits.enter_context(blas_threads(1))
        self.fns = method_calls(*make_problem(get_xp(self.backend)))
        for f in self.fns.values():
            f()
        sync()

    def teardown(self):
        self._limits.close()

    def time_grad(self):
        self.fns["grad"]()

    def time_hvp(self):
        self.fns["hvp"]()

    def time_ggn_vp(self):
        self.fns["ggn_vp"]()

    def time_curvature_adjoint(self):
        self.fns["curvature_adjoint"]()

    def time_curvature_forward(self):
        self.fns["curvature_forward"]()

    def time_hvp_cached(self):
        self.fns["hvp_cached"]()

    def time_ggn_vp_cached(self):
        self.fns["ggn_vp_cached"]()


class TimeMLPCuPy:
    """Wall time of one synchronised call of each product on the GPU (skipped without one)."""

    repeat = (3, 20, 20.0)
    number = 1

    def setup(self):
        self.fns = method_calls(*make_problem(get_xp("cupy")))
        for f in self.fns.values():
            f()
        sync()

    def time_grad(self):
        self.fns["grad"]()
        sync()

    def time_hvp(self):
        self.fns["hvp"]()
        sync()

    def time_ggn_vp(self):
        self.fns["ggn_vp"]()
        sync()

    def time_curvature_adjoint(self):
        self.fns["curvature_adjoint"]()
        sync()

    def time_curvature_forward(self):
        self.fns["curvature_forward"]()
        sync()


class RatiosMLP:
    """Time and memory ratios to the gradient, measured round-robin in the same run.

    NumPy, one BLAS thread, CPU time, best of 9 repeats of each; memory on fresh models.
    """

    timeout = 300
    unit = "ratio"

    def setup_cache(self):
        fns = method_calls(*make_problem(np))
        with blas_threads(1):
            times = interleaved_best(fns, repeat=9, timer="cpu")
        return {"time": times, "peak": fresh_peaks(np)}

    def _t(self, cache, key):
        return cache["time"][key] / cache["time"]["grad"]

    def _m(self, cache, key):
        return cache["peak"][key] / cache["peak"]["grad"]

    def track_hvp_over_grad(self, cache):
        return self._t(cache, "hvp")

    def track_ggn_vp_over_grad(self, cache):
        return self._t(cache, "ggn_vp")

    def track_hvp_cached_over_grad(self, cache):
        return self._t(cache, "hvp_cached")

    def track_ggn_vp_cached_over_grad(self, cache):
        return self._t(cache, "ggn_vp_cached")

    def track_curvature_adjoint_over_grad(self, cache):
        return self._t(cache, "curvature_adjoint")

    def track_curvature_forward_over_grad(self, cache):
        return self._t(cache, "curvature_forward")

    def track_peak_ratio_hvp(self, cache):
        return self._m(cache, "hvp")

    def track_peak_ratio_ggn_vp(self, cache):
        return self._m(cache, "ggn_vp")

    def track_peak_ratio_hvp_cached(self, cache):
        return self._m(cache, "hvp_cached")

    def track_peak_ratio_curvature_adjoint(self, cache):
        return self._m(cache, "curvature_adjoint")

    def track_peak_ratio_curvature_forward(self, cache):
        return self._m(cache, "curvature_forward")

    def track_grad_peak_bytes(self, cache):
        return cache["peak"]["grad"]

    track_grad_peak_bytes.unit = "bytes"


JAX_KEYS = ("grad", "hvp", "ggn_vp", "curvature_forward")


def numpy_over_jax(dtype=np.float32, repeat=9):
    """NumPy time / ``jax.jit`` time per product (same numbers, one thread each, CPU
    time, round-robin in one run): ``{key: ratio}`` for :data:`JAX_KEYS`."""
    import os

    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    import jax

    if np.dtype(dtype) == np.float64:
        jax.config.update("jax_enable_x64", True)
    prob = make_problem(np, dtype=dtype)
    nf, jf = method_calls(*prob, cached=False), jax_reference(*prob)
    fns = {}
    for k in JAX_KEYS:
        fns["np_" + k], fns["jax_" + k] = nf[k], jf[k]
    with blas_threads(1):
        t = interleaved_best(fns, repeat=repeat, timer="cpu")
    return {k: t["np_" + k] / t["jax_" + k] for k in JAX_KEYS}


class NumpyOverJax:
    """NumPy reference MLP time over ``jax.jit`` time, float32 (target ≤ 1.0 each)."""

    timeout = 300
    unit = "ratio"
    dtype = np.float32

    def setup_cache(self):
        try:
            import jax  # noqa: F401
        except ImportError:
            raise NotImplementedError("jax not installed")  # asv: skip
        return numpy_over_jax(self.dtype)

    def track_grad(self, cache):
        return cache["grad"]

    def track_hvp(self, cache):
        return cache["hvp"]

    def track_ggn_vp(self, cache):
        return cache["ggn_vp"]

    def track_curvature_forward(self, cache):
        return cache["curvature_forward"]


class NumpyOverJax64(NumpyOverJax):
    """As :class:`NumpyOverJax` in float64 (a check)."""

    dtype = np.float64


class PeakMemMLP:
    """Process peak memory (asv ``peakmem_``), NumPy; includes the interpreter baseline."""

    def setup(self):
        self.fns = method_calls(*make_problem(np))

    def peakmem_grad(self):
        self.fns["grad"]()

    def peakmem_hvp(self):
        self.fns["hvp"]()

    def peakmem_curvature_adjoint(self):
        self.fns["curvature_adjoint"]()

    def peakmem_curvature_forward(self):
        self.fns["curvature_forward"]()

    def peakmem_hvp_cached(self):
        self.fns["hvp_cached"]()
