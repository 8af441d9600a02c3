"""Reference MLP: gradient, HVP, GGN-vp and the two dᵀHd modes (curvlab.models.mlp).

Problem (issue 2): MLP 784-512-512-10, tanh, softmax cross-entropy, batch 512,
float32. ``time_*`` time one call each; ``track_*_over_grad`` report time ratios to
the gradient measured round-robin in the same run (targets: HVP ≤ 2.5, adjoint
gradient+dᵀHd ≤ 1.7, forward-mode dᵀHd ≤ 2.0); ``track_peak_ratio_*`` report peak
host memory (tracemalloc) relative to the gradient's (target forward mode ≤ 1.1);
``peakmem_*`` are asv's process-level peaks.

CPU timings use one BLAS thread and this process's CPU time (``time.process_time``):
on a shared, oversubscribed machine multi-threaded wall-clock timings swing by
factors of several, while single-threaded CPU time is steady to a few percent.
The CuPy class times wall clock with device synchronisation.
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


def method_calls(model, params, X, y, d):
    """The five measured callables, keyed by name."""
    return {
        "grad": lambda: model.loss_and_grad(params, X, y),
        "hvp": lambda: model.hvp(params, X, y, d),
        "ggn_vp": lambda: model.ggn_vp(params, X, y, d),
        "curvature_adjoint": lambda: model.grad_and_curvature(params, X, y, d),
        "curvature_forward": lambda: model.curvature(params, X, y, d, mode="forward"),
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

    NumPy, one BLAS thread, CPU time, best of 9 repeats of each.
    """

    timeout = 300
    unit = "ratio"

    def setup_cache(self):
        fns = method_calls(*make_problem(np))
        with blas_threads(1):
            times = interleaved_best(fns, repeat=9, timer="cpu")
        peaks = {k: peak_bytes(f) for k, f in fns.items()}
        return {"time": times, "peak": peaks}

    def _t(self, cache, key):
        return cache["time"][key] / cache["time"]["grad"]

    def _m(self, cache, key):
        return cache["peak"][key] / cache["peak"]["grad"]

    def track_hvp_over_grad(self, cache):
        return self._t(cache, "hvp")

    def track_ggn_vp_over_grad(self, cache):
        return self._t(cache, "ggn_vp")

    def track_curvature_adjoint_over_grad(self, cache):
        return self._t(cache, "curvature_adjoint")

    def track_curvature_forward_over_grad(self, cache):
        return self._t(cache, "curvature_forward")

    def track_peak_ratio_hvp(self, cache):
        return self._m(cache, "hvp")

    def track_peak_ratio_curvature_adjoint(self, cache):
        return self._m(cache, "curvature_adjoint")

    def track_peak_ratio_curvature_forward(self, cache):
        return self._m(cache, "curvature_forward")

    def track_grad_peak_bytes(self, cache):
        return cache["peak"]["grad"]

    track_grad_peak_bytes.unit = "bytes"


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
