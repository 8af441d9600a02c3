"""DSGD, curvature-rescaled learning rate and duality maps (papers 002, 003).

Problem: MLP 784-512-512-10, tanh, softmax cross-entropy, batch 512, float32 (as
``bench_mlp``). One optimizer step = gradient pass + the method's extra work + applying
the update:

* ``sgd``: plain SGD step (the reference, C and M);
* ``clr_forward`` / ``clr_adjoint``: the curvature-rescaled step along the SGD direction with
  ``dᵀHd`` in Taylor (forward) mode, or in adjoint mode (``grad_and_curvature`` after the
  gradient: ``d = g`` is only known after the gradient pass);
* ``adjoint_pass``: ``grad_and_curvature`` alone (gradient and ``dᵀHd`` in one pass), the
  cost of a step whose direction is known before its gradient pass;
* ``dsgd``: one DSGD step in steady state (rigorous bound, spectral norm: singular values of
  every layer's gradient, the polar factor of the chosen one, the weight norm of the block
  updated last step, one extra forward pass for the layer-input norms).

``track_time_ratio_*`` (process CPU time, one BLAS thread) and ``track_peak_ratio_*`` are
measured round-robin in the same run, relative to ``sgd`` (``track_time_ratio_dsgd``: target
≤ 5, issue 14); the paper's claim (arXiv 2210.14520) is (1.5C, 2M) or (2C, 1M).
``TimeDualityMap`` times the spectral duality map by thin SVD and by Newton–Schulz (12
steps) at widths 256, 1024, 4096 (square float32 matrices).
"""

from __future__ import annotations

import numpy as np

from . import bench_mlp
from .common import blas_threads, get_xp, interleaved_best, peak_bytes, sync

NS_STEPS = 12


def make_problem(xp=np, dtype=np.float32, seed=0):
    """``bench_mlp``'s model, parameters and batch (without its direction)."""
    return bench_mlp.make_problem(xp, dtype, seed)[:4]


def step_calls(model, params, X, y):
    """Callables performing one full optimizer step each, keyed by name."""
    from curvlab.methods.baselines import SGD
    from curvlab.methods.curvature_lr import CurvatureLR
    from curvlab.methods.dsgd import DSGD

    sgd = SGD(lr=0.1)
    s_sgd = sgd.init(params)
    clr_f = CurvatureLR(schedule=1.0, mode="forward", realized=False)
    clr_a = CurvatureLR(schedule=1.0, mode="adjoint", realized=False)
    s_f, s_a = clr_f.init(params), clr_a.init(params)
    dsgd = DSGD(shapes=model.layout)
    s_d = dsgd.init(params)
    d_prev = model.loss_and_grad(params, X, y)[1]

    def sgd_step():
        f, g = model.loss_and_grad(params, X, y)
        u, _ = sgd.update(g, s_sgd, params)
        return params + u

    def clr_step(opt, st):
        def run():
            f, g = model.loss_and_grad(params, X, y)
            u, _ = opt.update(g, st, params, model=model, X=X, y=y, loss=f)
            return params + u
        return run

    def adjoint_pass():
        f, g, c = model.grad_and_curvature(params, X, y, d_prev)
        return params - 0.1 * g

    box = {"p": params, "s": s_d}

    def dsgd_step():  # steady state: the state (weight-norm cache) and params carry over
        p = box["p"]
        f, g = model.loss_and_grad(p, X, y)
        u, box["s"] = dsgd.update(g, box["s"], p, X=X)
        box["p"] = p + u
        return box["p"]

    return {"sgd": sgd_step, "clr_forward": clr_step(clr_f, s_f), "clr_adjoint": clr_step(clr_a, s_a),
            "adjoint_pass": adjoint_pass, "dsgd": dsgd_step}


class StepCost:
    """Time and peak-memory ratios of one step to one plain SGD step (same run, measured once
    in ``setup_cache`` and shared by the ``track_*`` benchmarks)."""

    repeat = 1
    number = 1
    timeout = 600

    def setup_cache(self):
        fns = step_calls(*make_problem(np))
        with blas_threads(1):   # single-threaded process CPU time: steady on a shared host
            t = interleaved_best(fns, repeat=7, timer="cpu")
        m = {k: peak_bytes(f) for k, f in fns.items()}
        return {"t": {k: v / t["sgd"] for k, v in t.items()}, "m": {k: v / m["sgd"] for k, v in m.items()}}


def _track(kind, key):
    def f(self, cache):
        return cache[kind][key]

    f.unit = "ratio"
    f.__name__ = f"track_{'time' if kind == 't' else 'peak'}_ratio_{key}"
    return f


for _key in ("clr_forward", "clr_adjoint", "adjoint_pass", "dsgd"):
    for _kind in ("t", "m"):
        _f = _track(_kind, _key)
        setattr(StepCost, _f.__name__, _f)


def duality_inputs(n, xp=np, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return xp.asarray(rng.standard_normal((n, n)).astype(dtype))


class TimeDualityMap:
    """Spectral duality map ρ(G) = ‖G‖_nuc·UVᵀ: thin SVD vs Newton–Schulz (12 steps), n×n float32."""

    params = ([256, 1024, 4096], ["numpy"])
    param_names = ["width", "backend"]
    repeat = (1, 3, 60.0)
    number = 1
    timeout = 600

    def setup(self, n, name):
        xp = get_xp(name)
        self.G = duality_inputs(n, xp)

    def time_svd(self, n, name):
        from curvlab.linalg.duality import duality_map

        duality_map(self.G, "spectral", method="svd")
        sync()

    def time_newton_schulz(self, n, name):
        from curvlab.linalg.duality import duality_map

        duality_map(self.G, "spectral", method="newton_schulz", max_steps=NS_STEPS, tol=0.0)
        sync()
