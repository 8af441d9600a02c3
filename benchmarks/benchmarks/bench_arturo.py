"""asv benchmarks for arTuRO (arXiv 2310.20574): fused kernels vs multi-pass NumPy, throughput, solver work.

* ``ArturoStep``: one full optimizer step (``ArTuRO.update``) at n coordinates, fused
  kernels (``impl="auto"``: Numba on the CPU, CuPy on a GPU) vs the straightforward
  multi-pass NumPy code of the same maths (``impl="numpy"``, the arrays' dtype);
* ``KernelThroughput``: the fused filter and dual kernels' memory throughput against an
  array copy of the same size (bytes moved: filter 7 reads + 5 writes, dual 4 reads,
  copy 1 read + 1 write);
* ``SolverEvaluations``: dual evaluations per step over a 500-step digits-MLP run,
  exact mode (rtol 1e-8) vs reference mode (``track_`` benchmarks: median and max);
* ``CopyEquivalents`` (issue 14, target 5): one warm step at n = 10⁷ float32 in copy-equivalents
  (``track_``): its process CPU time over that of one ``np.copyto`` of n floats in the same run,
  the bytes it moves over those of that copy (read n + write n), the ratio of the two (% of copy
  bandwidth), dual evaluations and passes over the data per step, and the memory floor of the
  same traffic with trivial arithmetic (:func:`memory_floor`).

Bytes of a warm step (units of one n-float array; :func:`step_bytes`): pass 1
(``kernels.arturo_prepare``) reads g, w, a, h, P00, P01, P11, p and writes the scratch an, hn
(10); each further dual pass reads w, an, hn, p (4); the last pass (``kernels.arturo_finish``)
reads 8 and writes a, h, P00, P01, P11, p and the update (15): 25 + 4·(passes − 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import get_xp, sync

from curvlab import kernels
from curvlab.methods import apply_updates
from curvlab.methods.arturo import ArTuRO


def make_problem(n: int, dtype: Any = np.float32, xp: Any = np, seed: int = 0) -> dict:
    """Weights ~ N(0, 0.05²) and a gradient (:func:`make_step` makes the warm-up step)."""
    rng = np.random.default_rng(seed)
    w = xp.asarray((0.05 * rng.standard_normal(n)).astype(dtype))
    g = xp.asarray((0.01 * rng.standard_normal(n)).astype(dtype))
    return {"w": w, "g": g}


def make_step(prob: dict, impl: str, mode: str = "exact", rtol: float = 1e-8) -> tuple[Any, dict]:
    """A callable doing one ``ArTuRO.update`` (state kept in place between calls) and its log."""
    opt = ArTuRO.from_preset("cifar10_cnn", mode=mode, impl=impl, **({"rtol": rtol} if mode == "exact" else {}))
    w, g = prob["w"], prob["g"]
    st = opt.init(w)
    opt.update(g, st, w)  # initialise the filter; η is now warm
    log: dict[str, list[int]] = {"evals": [], "passes": []}

    def step() -> Any:
        upd, _, info = opt.update_with_info(g, st, w)
        log["evals"].append(info.n_evals)
        log["passes"].append(info.n_passes)
        return upd

    return step, log


def step_bytes(n_passes: float) -> float:
    """Arrays of n floats read or written by one warm step with ``n_passes`` dual passes (module docstring)."""
    return 25.0 + 4.0 * (n_passes - 1.0)


def step_copy_equivalents(n: int = 10**7, mode: str = "exact", repeat: int = 7, impl: str = "auto",
                          timer: str = "cpu") -> dict:
    """One warm ``ArTuRO.update`` (preset cifar10_cnn, float32) against ``np.copyto`` of n floats,
    measured round-robin in the same run (best of ``repeat``, process CPU time by default).

    Returns ``time_ce`` (step time / copy time), ``bytes_ce`` (step bytes / copy bytes),
    ``bandwidth`` (``bytes_ce / time_ce``: the step's bytes per second over the copy's),
    ``evals`` and ``passes`` (dual evaluations and dual passes over the data per step, means).
    """
    from .common import interleaved_best

    prob = make_problem(n, np.float32, np)
    dst = np.empty_like(prob["w"])
    step, log = make_step(prob, impl, mode)
    t = interleaved_best({"copy": lambda: np.copyto(dst, prob["w"]), "step": step}, repeat=repeat, timer=timer)
    evals = float(np.mean(log["evals"]))
    npass = float(np.mean(log["passes"]))
    time_ce = t["step"] / t["copy"]
    bytes_ce = step_bytes(npass) / 2.0
    return {"time_ce": time_ce, "bytes_ce": bytes_ce, "bandwidth": bytes_ce / time_ce, "evals": evals,
            "passes": npass, "t_step": t["step"], "t_copy": t["copy"]}


def memory_floor(n: int = 10**7, repeat: int = 7, timer: str = "cpu") -> dict:
    """Copy-equivalents of a two-dual-pass warm step's memory traffic alone: Numba ``prange``
    loops with the step's reads and writes (pass 1: 8 reads, 2 writes; a dual pass: 4 reads; the
    last pass: 8 reads, 7 writes into a freshly allocated update) and trivial arithmetic, against
    ``np.copyto`` in the same run. ``floor_ce`` is the time-CE a step of 29 arrays cannot beat on
    this machine with this thread count; ``bandwidth`` its share of the copy's bytes per second."""
    import numba as nb

    from .common import interleaved_best

    rng = np.random.default_rng(3)
    g, w, a, h, P00, P01, P11, p, an, hn = (rng.uniform(0.1, 1.0, n).astype(np.float32) for _ in range(10))
    a2, h2 = a.copy(), h.copy()

    @nb.njit(parallel=True, fastmath={"reassoc"}, nogil=True)
    def first(g, w, a, h, P00, P01, P11, p, an, hn):  # pragma: no cover - compiled
        s = 0.0
        for i in nb.prange(g.size):
            x = np.float64(g[i]) + np.float64(w[i]) + np.float64(P00[i]) + np.float64(P01[i]) + np.float64(P11[i])
            an[i] = np.float64(a[i]) + x
            hn[i] = np.float64(h[i]) + x
            s += np.float64(p[i])
        return s

    @nb.njit(parallel=True, fastmath={"reassoc"}, nogil=True)
    def dual(w, a, h, p):  # pragma: no cover - compiled
        s = 0.0
        for i in nb.prange(w.size):
            s += np.float64(w[i]) + np.float64(a[i]) + np.float64(h[i]) + np.float64(p[i])
        return s

    @nb.njit(parallel=True, nogil=True)
    def last(g, w, an, hn, P00, P01, P11, p, a, h, out):  # pragma: no cover - compiled
        for i in nb.prange(g.size):
            x = np.float64(g[i]) + np.float64(w[i])
            P00[i] = np.float64(P00[i]) * 0.5 + x
            P01[i] = np.float64(P01[i]) * 0.5 + x
            P11[i] = np.float64(P11[i]) * 0.5 + x
            a[i] = an[i]
            h[i] = hn[i]
            out[i] = x
            p[i] = np.float64(p[i]) * 0.5 + 1.0

    def step() -> Any:
        first(g, w, a, h, P00, P01, P11, p, an, hn)
        dual(w, an, hn, p)
        out = np.empty_like(w)
        last(g, w, an, hn, P00, P01, P11, p, a2, h2, out)
        return out

    dst = np.empty_like(w)
    t = interleaved_best({"copy": lambda: np.copyto(dst, w), "floor": step}, repeat=repeat, timer=timer)
    ce = t["floor"] / t["copy"]
    return {"floor_ce": ce, "bytes_ce": step_bytes(2) / 2.0, "bandwidth": step_bytes(2) / 2.0 / ce}


def kernel_calls(n: int, dtype: Any = np.float32, xp: Any = np) -> dict:
    """Callables for the filter kernel, the dual kernel and an array copy, with bytes moved."""
    rng = np.random.default_rng(1)
    arr = [xp.asarray(rng.uniform(0.1, 1.0, n).astype(dtype)) for _ in range(7)]
    g, w, a, h, P00, P01, P11 = arr
    P01[...] = 0
    dst = xp.empty_like(w)
    item = np.dtype(dtype).itemsize
    return {
        "filter": (lambda: kernels.rls_filter_update(g, w, a, h, P00, P01, P11, q=1e-3, r=1.0), 12 * n * item),
        "dual": (lambda: kernels.kl_dual(0.5, w, a, h, P00, beta_p0=1e-4), 4 * n * item),
        "copy": (lambda: xp.copyto(dst, w), 2 * n * item),
    }


def careful_numpy_filter(n: int, dtype: Any = np.float32) -> Any:
    """A careful NumPy float32 filter step: preallocated scratch, in-place ufuncs, no temporaries.

    The same K1-K5 maths as the fused kernel but without the non-finite policy (so a lower
    bound on what plain NumPy can do); used to show that the fused kernel's advantage is not
    only the allocations of the straightforward version.
    """
    rng = np.random.default_rng(2)
    g, w, a, h, P00, P01, P11 = (rng.uniform(0.1, 1.0, n).astype(dtype) for _ in range(7))
    P01[...] = 0
    k0, k1, S, t = (np.empty(n, dtype) for _ in range(4))
    q, r = dtype(1e-3), dtype(1.0)

    def step() -> None:
        np.add(P00, q, out=P00)
        np.add(P11, q, out=P11)
        np.multiply(P01, w, out=k0); np.add(k0, P00, out=k0)              # k0 = P00 + P01 x
        np.multiply(P11, w, out=k1); np.add(k1, P01, out=k1)              # k1 = P01 + P11 x
        np.multiply(k1, w, out=S); np.add(S, k0, out=S); np.add(S, r, out=S)  # S = k0 + k1 x + r
        np.divide(k0, S, out=k0); np.divide(k1, S, out=k1)                # K0, K1
        np.multiply(h, w, out=t); np.add(t, a, out=t); np.subtract(g, t, out=t)  # e
        np.add(a, k0 * t, out=a)                                          # (one temporary each)
        np.add(h, k1 * t, out=h)
        np.multiply(k0, S, out=t)                                         # S K0
        np.subtract(P01, t * k1, out=P01)
        np.subtract(P00, t * k0, out=P00)
        np.multiply(k1, S, out=t)
        np.subtract(P11, t * k1, out=P11)

    return step


def solver_evaluations(steps: int = 500, preset: str = "cifar10_cnn", rtol: float = 1e-8, seed: int = 0) -> dict:
    """Dual evaluations per step, both modes, over ``steps`` digits-MLP steps (batch 32)."""
    from curvlab.data import load_digits, minibatches
    from curvlab.models.mlp import MLP

    d = load_digits(dtype=np.float64)
    out = {}
    for mode in ("reference", "exact"):
        model = MLP([64, 32, 10], activation="tanh", loss="cross_entropy", dtype=np.float64)
        rng = np.random.default_rng(seed)
        w = model.init_params(rng)
        opt = ArTuRO.from_preset(preset, weight_decay=0.0, mode=mode, **({"rtol": rtol} if mode == "exact" else {}))
        st = opt.init(w)
        evals: list[int] = []
        while len(evals) < steps:
            for Xb, yb in minibatches(d.X_train, d.y_train, 32, rng):
                _, g = model.loss_and_grad(w, Xb, yb)
                upd, st, info = opt.update_with_info(g, st, w)
                w = apply_updates(w, upd)
                evals.append(info.n_evals)
                if len(evals) == steps:
                    break
        out[mode] = np.array(evals)
    return out


class ArturoStep:
    params = (["numpy", "cupy"], ["fused", "multipass"], ["exact", "reference"])
    param_names = ["backend", "impl", "mode"]
    timeout = 300

    def setup(self, backend: str, impl: str, mode: str) -> None:
        xp = get_xp(backend)
        n = 10**7 if backend == "numpy" else 10**8
        self.prob = make_problem(n, np.float32, xp)
        self.step, self.log = make_step(self.prob, "auto" if impl == "fused" else "numpy", mode)
        self.step()

    def time_step(self, backend: str, impl: str, mode: str) -> None:
        self.step()
        sync()


class KernelThroughput:
    params = (["numpy", "cupy"], ["filter", "dual", "copy"])
    param_names = ["backend", "kernel"]

    def setup(self, backend: str, kernel: str) -> None:
        xp = get_xp(backend)
        self.fn, self.nbytes = kernel_calls(10**7 if backend == "numpy" else 10**8, np.float32, xp)[kernel]
        self.fn()

    def time_kernel(self, backend: str, kernel: str) -> None:
        self.fn()
        sync()


class SolverEvaluations:
    timeout = 300

    def setup_cache(self) -> dict:
        return solver_evaluations()

    def track_median_evals_exact(self, ev: dict) -> float:
        return float(np.median(ev["exact"]))

    def track_max_evals_exact(self, ev: dict) -> float:
        return float(np.max(ev["exact"]))

    def track_median_evals_reference(self, ev: dict) -> float:
        return float(np.median(ev["reference"]))

    def track_max_evals_reference(self, ev: dict) -> float:
        return float(np.max(ev["reference"]))


class CopyEquivalents:
    """Issue 14, target 5: a warm step at n = 10⁷ float32 in copy-equivalents (≤ 25, ≥ 85% of copy bandwidth)."""

    params = (["exact", "reference"],)
    param_names = ["mode"]
    timeout = 600

    def setup_cache(self) -> dict:
        res = {mode: step_copy_equivalents(10**7, mode, repeat=5) for mode in ("exact", "reference")}
        res["floor"] = memory_floor(10**7, repeat=5)
        return res

    def track_memory_floor_copy_equivalents(self, res: dict, mode: str) -> float:
        """The same traffic with trivial arithmetic (:func:`memory_floor`; the same for both modes)."""
        return float(res["floor"]["floor_ce"])

    def track_time_copy_equivalents(self, res: dict, mode: str) -> float:
        return float(res[mode]["time_ce"])

    def track_bytes_copy_equivalents(self, res: dict, mode: str) -> float:
        return float(res[mode]["bytes_ce"])

    def track_percent_of_copy_bandwidth(self, res: dict, mode: str) -> float:
        return 100.0 * float(res[mode]["bandwidth"])

    def track_dual_evaluations_per_step(self, res: dict, mode: str) -> float:
        return float(res[mode]["evals"])

    def track_dual_passes_per_step(self, res: dict, mode: str) -> float:
        return float(res[mode]["passes"])
