"""Exact stochastic Newton (method inspired by arXiv 2104.03804).

* ``TimeLayerDirection``: the Newton direction ``-(M ⊗ ããᵀ + λI)^{-1} vec(δ ãᵀ)`` of one layer
  of width n with inputs of the same width (``m = n + 1``), one sample: the closed form (the damped layer direction,
  an n×n eigh + rank-one product) at n = 64, 128, 256; ``TimeLayerDirectionDense``: a dense
  LU solve of the (nm)×(nm) block at n = 16, 32, 64 (n = 128 needs a 2.2 GB matrix and
  ~3e12 flops, beyond a shared 2-core host; ``run_exact_newton.py`` extrapolates it by the
  cubic law). ``track_speedup_64`` is the dense/closed-form ratio measured in one run.
* ``StepCost``: one ExactNewton step (batch modes average and exact_block, abs) against one
  plain SGD step (gradient + update) on MLP 64-32-10 tanh CE, batch 32, float64, round-robin,
  process CPU time, one BLAS thread. Issue 14's targets: ``track_ratio_exact_block`` ≤ 30 (≈ 20:
  conjugate gradients on the PSD block); ``track_ratio_average`` ≤ 5 is below the floor of the
  32 per-sample 32x32 ``eigh`` alone (LAPACK syevd ≈ 53 µs each, ≈ 1.7 ms ≈ 7x the SGD step).
* ``BatchModes``: the exact mini-batch block step (Woodbury / projection) against the
  average of per-sample directions on the same MLP, B = 8, 32, 128.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg  # noqa: F401  (load SciPy's BLAS before any thread limit is entered)

from curvlab import backend

from .common import blas_threads, get_xp, interleaved_best, sync

try:  # import the measured modules up front, so their BLAS libraries exist when limits apply
    import curvlab.linalg.kronecker  # noqa: F401
    import curvlab.methods.exact_newton  # noqa: F401
except Exception:  # pragma: no cover
    pass

SIZES = [64, 32, 10]
LAM = 1.0


def layer_inputs(n, xp=np, seed=0):
    """A symmetric indefinite M (n×n), ã (n+1, bias 1), δ (n): one sample of one layer."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, n)) / np.sqrt(n)
    M = 0.5 * (G + G.T)
    a = np.concatenate([rng.standard_normal(n), [1.0]])
    d = rng.standard_normal(n)
    return xp.asarray(M), xp.asarray(a), xp.asarray(d)


def closed_form_direction(M, a, d, lam=LAM):
    """The damped layer direction with abs: -U diag(1/(|sμ|+λ)) Uᵀ δ ãᵀ (an n×n eigh, O(n^3 + nm))."""
    from curvlab.linalg.kronecker import KroneckerLayerBlock

    H = KroneckerLayerBlock(M, a, lam)
    xp = H.xp
    return -H.adjusted("abs").solve(xp.outer(d, a).reshape(-1))


def dense_direction(M, a, d, lam=LAM):
    """Dense reference: |H| by eigh would be O((nm)^3) too; here the cheaper raw LU solve."""
    xp = backend.get_namespace(M)
    D = xp.kron(M, xp.outer(a, a))
    D[xp.diag_indices_from(D)] += lam
    return -xp.linalg.solve(D, xp.outer(d, a).reshape(-1))


def raw_closed_form_direction(M, a, d, lam=LAM):
    from curvlab.linalg.kronecker import KroneckerLayerBlock

    H = KroneckerLayerBlock(M, a, lam)
    return -H.solve(H.xp.outer(d, a).reshape(-1))


class TimeLayerDirection:
    params = ([64, 128, 256], ["numpy", "cupy"])
    param_names = ["width", "backend"]
    repeat = (3, 10, 20.0)
    number = 1

    def setup(self, n, name):
        self.inp = layer_inputs(n, get_xp(name))

    def time_closed_form(self, n, name):
        sync(closed_form_direction(*self.inp))


class TimeLayerDirectionDense:
    params = ([16, 32, 64], ["numpy"])
    param_names = ["width", "backend"]
    repeat = (1, 3, 60.0)
    number = 1
    timeout = 300

    def setup(self, n, name):
        self.inp = layer_inputs(n, get_xp(name))

    def time_dense_solve(self, n, name):
        sync(dense_direction(*self.inp))


class LayerSpeedup:
    repeat = 1
    number = 1
    timeout = 300

    def setup(self):
        inp = layer_inputs(64)
        with blas_threads(1):   # single-threaded CPU time: steady on a shared host
            self.t = interleaved_best({"closed": lambda: raw_closed_form_direction(*inp),
                                       "dense": lambda: dense_direction(*inp)}, repeat=3, timer="cpu")

    def track_speedup_64(self):
        return self.t["dense"] / self.t["closed"]

    track_speedup_64.unit = "ratio"


def make_problem(B, xp=np, seed=0):
    from curvlab.models.mlp import MLP

    rng = np.random.default_rng(seed)
    model = MLP(SIZES, activation="tanh", loss="cross_entropy", xp=xp)
    params = model.init_params(rng)
    X = xp.asarray(rng.random((B, SIZES[0])))
    y = xp.asarray(rng.integers(0, SIZES[-1], B))
    return model, params, X, y


def step_calls(model, params, X, y):
    from curvlab.methods.baselines import SGD
    from curvlab.methods.exact_newton import ExactNewton

    sgd = SGD(lr=0.1)
    s0 = sgd.init(params)
    avg = ExactNewton(lr=0.1, lam=LAM, batch_mode="average")
    blk = ExactNewton(lr=0.1, lam=LAM, batch_mode="exact_block")
    sa, sb = avg.init(params), blk.init(params)

    def sgd_step():
        _, g = model.loss_and_grad(params, X, y)
        return params + sgd.update(g, s0, params)[0]

    def newton(opt, st):
        def run():
            _, g = model.loss_and_grad(params, X, y)
            return params + opt.update(g, st, params, model=model, X=X, y=y)[0]
        return run

    return {"sgd": sgd_step, "average": newton(avg, sa), "exact_block": newton(blk, sb)}


class StepCost:
    """Time of one ExactNewton step over one SGD step (same run, round-robin), B = 32."""

    repeat = 1
    number = 1
    timeout = 300

    def setup(self):
        with blas_threads(1):
            self.t = interleaved_best(step_calls(*make_problem(32)), repeat=5, timer="cpu")

    def track_ratio_average(self):
        return self.t["average"] / self.t["sgd"]

    def track_ratio_exact_block(self):
        return self.t["exact_block"] / self.t["sgd"]

    track_ratio_average.unit = "ratio"
    track_ratio_exact_block.unit = "ratio"


class BatchModes:
    params = ([8, 32, 128], ["numpy", "cupy"])
    param_names = ["batch", "backend"]
    repeat = (2, 5, 30.0)
    number = 1
    timeout = 300

    def setup(self, B, name):
        self.fns = step_calls(*make_problem(B, get_xp(name)))

    def time_average(self, B, name):
        sync(self.fns["average"]())

    def time_exact_block(self, B, name):
        sync(self.fns["exact_block"]())
