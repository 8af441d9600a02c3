"""asv benchmarks of the PyTorch and JAX adapters (issue 7).

Problems: a 784-512-512-10 tanh MLP (cross-entropy, batch 512, as in bench_mlp) and a
small CNN (conv 1->16 3x3, BatchNorm in eval mode, tanh, avg-pool, conv 16->32 3x3,
tanh, avg-pool, linear to 10; 28x28 inputs, batch 128). Measured: the gradient,
Hessian-vector products forward-over-reverse and reverse-over-reverse one-shot
(``cache_bytes=0``; NumPy vectors in and out through DLPack) and through the product cache
(issue 14: the default; GGN-vector products likewise), forward-only ``dᵀHd`` (second-order
jets; nested jvp for comparison), ``(loss, g, dᵀHd)``, ``torch.func``'s jvp-of-grad HVP,
curvlinops-for-pytorch's ``HessianLinearOperator`` matvec on the same model, the JAX
(jitted) equivalents on the MLP, and the DLPack crossing itself. ``track_*`` give the
time ratios over the gradient measured round-robin in the same run (cached HVP, cached
GGN-vp, one-shot HVP, dᵀHd, gradient + dᵀHd) and the peak-RSS ratios of the dᵀHd calls.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from .common import interleaved_best

try:
    import torch
    from torch import nn

    HAVE_TORCH = True
except Exception:  # pragma: no cover
    HAVE_TORCH = False

try:
    import jax

    HAVE_JAX = True
except Exception:  # pragma: no cover
    HAVE_JAX = False

try:
    import curvlinops  # noqa: F401

    HAVE_CURVLINOPS = True
except Exception:  # pragma: no cover
    HAVE_CURVLINOPS = False

MLP_SIZES = (784, 512, 512, 10)


def _need(flag: bool, what: str) -> None:
    if not flag:
        raise NotImplementedError(f"{what} not installed")  # asv: skip


def peak_rss_bytes(fn: Callable[[], Any]) -> int:
    """Peak resident memory (bytes) during ``fn()`` above the level at its start.

    Linux: resets the high-water mark through ``/proc/self/clear_refs`` and reads
    ``VmHWM``; torch and XLA CPU buffers are seen (tracemalloc does not see them).
    """
    import gc

    def read() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS", "VmHWM")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0]) * 1024
        return out

    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = read()["VmRSS"]
    out = fn()
    peak = read()["VmHWM"]
    del out
    return peak - base


# ------------------------------------------------------------------------- torch problems
def torch_mlp_problem(dtype: Any = None, batch: int = 512, seed: int = 0) -> tuple[Any, Any, Any]:
    dtype = dtype or torch.float32
    g = torch.Generator().manual_seed(seed)
    layers: list[Any] = []
    for i in range(len(MLP_SIZES) - 1):
        layers.append(nn.Linear(MLP_SIZES[i], MLP_SIZES[i + 1], dtype=dtype))
        if i < len(MLP_SIZES) - 2:
            layers.append(nn.Tanh())
    net = nn.Sequential(*layers)
    X = torch.randn(batch, MLP_SIZES[0], generator=g, dtype=dtype)
    y = torch.randint(0, MLP_SIZES[-1], (batch,), generator=g)
    return net, X, y


def torch_cnn_problem(dtype: Any = None, batch: int = 128, seed: int = 0) -> tuple[Any, Any, Any]:
    dtype = dtype or torch.float32
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, dtype=dtype), nn.BatchNorm2d(16, dtype=dtype), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, dtype=dtype), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10, dtype=dtype),
    ).eval()
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, 1, 28, 28, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (batch,), generator=g)
    return net, X, y


def torch_calls(net: Any, X: Any, y: Any, with_curvlinops: bool = True) -> dict[str, Callable[[], Any]]:
    """The timed callables for one torch problem; every one returns its result."""
    from curvlab.adapters.torch import TorchCurvature

    curv = TorchCurvature(net, "cross_entropy", (X, y), cache_bytes=0)  # one-shot products
    cached = TorchCurvature(net, "cross_entropy", (X, y))  # the default product cache (1 GiB)
    rng = np.random.default_rng(0)
    v = rng.standard_normal(curv.layout.size).astype(curv.dtype)
    H_fr = curv.hessian("forward_over_reverse")
    H_rr = curv.hessian("reverse_over_reverse")
    H_auto = curv.hessian()
    H_rc = curv.hessian("reverse_over_reverse", cache_graph=True)
    H_c, G_c, G_1 = cached.hessian(), cached.ggn(), curv.ggn()
    nested = TorchCurvature(net, "cross_entropy", (X, y), cache_bytes=0)
    nested._taylor["gm"] = False  # dᵀHd by nested jvp (what the jets replace)
    params = [p for p in net.parameters() if p.requires_grad]
    lossf = nn.CrossEntropyLoss()

    def autograd_grad() -> Any:
        return torch.autograd.grad(lossf(net(X), y), params)

    calls: dict[str, Callable[[], Any]] = {
        "grad": lambda: curv.gradient(),
        "grad_autograd": autograd_grad,
        "hvp_fwd_rev": lambda: H_fr @ v,
        "hvp_rev_rev": lambda: H_rr @ v,
        "hvp_auto_oneshot": lambda: H_auto @ v,
        "hvp_rev_rev_cached": lambda: H_rc @ v,
        "hvp_cached": lambda: H_c @ v,
        "ggn_oneshot": lambda: G_1 @ v,
        "ggn_cached": lambda: G_c @ v,
        "curvature_fwd_fwd": lambda: curv.directional_curvature(v),  # second-order jets (Taylor mode)
        "curvature_nested_jvp": lambda: nested.directional_curvature(v),
        "grad_and_curv_fwdrev": lambda: curv.grad_and_curvature(v, mode="forward_over_reverse"),
        "grad_and_curv_revrev": lambda: curv.grad_and_curvature(v, mode="reverse_over_reverse"),
        "grad_and_curv": lambda: curv.grad_and_curvature(v),
        "grad_and_curv_separate": lambda: curv.grad_and_curvature(v, mode="separate"),
        "grad_and_curv_shared": lambda: curv.grad_and_curvature(v, mode="shared"),
    }
    if with_curvlinops and HAVE_CURVLINOPS:
        from curvlinops import HessianLinearOperator

        Hc = HessianLinearOperator(net, lossf, params, [(X, y)], check_deterministic=False)
        vt = torch.as_tensor(v)
        calls["curvlinops_hvp"] = lambda: Hc @ vt
        try:
            from curvlinops import GGNLinearOperator

            Gc = GGNLinearOperator(net, lossf, params, [(X, y)], check_deterministic=False)
            calls["curvlinops_ggn"] = lambda: Gc @ vt
        except Exception:  # pragma: no cover - an older curvlinops
            pass
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    p0 = tuple(p.detach() for p in params)
    vp = tuple(torch.as_tensor(a).reshape(p.shape) for a, p in zip(np.split(v, np.cumsum([p.numel() for p in p0])[:-1]), p0))

    def loss_of(ps: Any) -> Any:
        return lossf(torch.func.functional_call(net, dict(zip(names, ps)), (X,)), y)

    grad_fn = torch.func.grad(loss_of)
    calls["hvp_torch_func"] = lambda: torch.func.jvp(grad_fn, (p0,), (vp,))[1]
    return calls


# ------------------------------------------------------------------------- JAX problem
def jax_mlp_problem(dtype: Any = np.float32, batch: int = 512, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    params = []
    for i in range(len(MLP_SIZES) - 1):
        bound = 1.0 / np.sqrt(MLP_SIZES[i])
        params.append({"w": jnp.asarray(rng.uniform(-bound, bound, (MLP_SIZES[i + 1], MLP_SIZES[i])), dtype),
                       "b": jnp.asarray(rng.uniform(-bound, bound, MLP_SIZES[i + 1]), dtype)})

    def apply(ps: Any, X: Any) -> Any:
        a = X
        for i, p in enumerate(ps):
            a = a @ p["w"].T + p["b"]
            if i < len(ps) - 1:
                a = jnp.tanh(a)
        return a

    X = jnp.asarray(rng.standard_normal((batch, MLP_SIZES[0])), dtype)
    y = jnp.asarray(rng.integers(0, MLP_SIZES[-1], batch))
    return apply, params, X, y


def jax_calls(apply: Any, params: Any, X: Any, y: Any) -> dict[str, Callable[[], Any]]:
    from curvlab.adapters.jax import JaxCurvature

    curv = JaxCurvature(apply, params, "cross_entropy", (X, y))
    v = np.random.default_rng(0).standard_normal(curv.layout.size).astype(curv.dtype)
    H_fr, H_rr = curv.hessian("forward_over_reverse"), curv.hessian("reverse_over_reverse")
    return {
        "grad": lambda: curv.gradient(),
        "hvp_fwd_rev": lambda: H_fr @ v,
        "hvp_rev_rev": lambda: H_rr @ v,
        "curvature_fwd_fwd": lambda: curv.directional_curvature(v),
        "grad_and_curvature": lambda: curv.grad_and_curvature(v),
    }


# ------------------------------------------------------------------------- asv classes
class TorchAdapter:
    """Torch adapter on the CPU (intra-op threads = 1 for steady timings)."""

    params = (["mlp", "cnn"],)
    param_names = ["model"]
    timeout = 300

    def setup(self, model: str) -> None:
        _need(HAVE_TORCH, "torch")
        torch.set_num_threads(int(os.environ.get("CURVLAB_BENCH_THREADS", "1")))
        net, X, y = (torch_mlp_problem if model == "mlp" else torch_cnn_problem)()
        self.calls = torch_calls(net, X, y)
        for f in self.calls.values():
            f()

    def time_grad(self, model: str) -> None:
        self.calls["grad"]()

    def time_hvp_fwd_rev(self, model: str) -> None:
        self.calls["hvp_fwd_rev"]()

    def time_hvp_rev_rev(self, model: str) -> None:
        self.calls["hvp_rev_rev"]()

    def time_hvp_rev_rev_cached(self, model: str) -> None:
        self.calls["hvp_rev_rev_cached"]()

    def time_curvature_fwd_fwd(self, model: str) -> None:
        self.calls["curvature_fwd_fwd"]()

    def time_grad_and_curvature(self, model: str) -> None:
        self.calls["grad_and_curv_fwdrev"]()

    def time_curvlinops_hvp(self, model: str) -> None:
        _need("curvlinops_hvp" in self.calls, "curvlinops-for-pytorch")
        self.calls["curvlinops_hvp"]()

    def time_hvp_cached(self, model: str) -> None:
        self.calls["hvp_cached"]()

    def time_ggn_cached(self, model: str) -> None:
        self.calls["ggn_cached"]()

    def _ratio(self, key: str) -> float:
        t = interleaved_best({k: self.calls[k] for k in ("grad", key)}, repeat=5, timer="cpu")
        return t[key] / t["grad"]

    def _mem_ratio(self, key: str) -> float:
        base = max(peak_rss_bytes(self.calls["grad"]), 1)
        return peak_rss_bytes(self.calls[key]) / base

    def track_ratio_hvp_over_grad(self, model: str) -> float:
        """One-shot forward-over-reverse HVP (``cache_bytes=0``) over the gradient."""
        return self._ratio("hvp_fwd_rev")

    track_ratio_hvp_over_grad.unit = "ratio"  # type: ignore[attr-defined]

    def track_ratio_hvp_auto_oneshot_over_grad(self, model: str) -> float:
        """The one-shot default (``hvp_mode="auto"``, ``cache_bytes=0``) over the gradient."""
        return self._ratio("hvp_auto_oneshot")

    track_ratio_hvp_auto_oneshot_over_grad.unit = "ratio"  # type: ignore[attr-defined]

    def track_ratio_cached_hvp_over_grad(self, model: str) -> float:
        """Cached HVP (the default cache) over the gradient; issue 14 target <= 1.5."""
        return self._ratio("hvp_cached")

    track_ratio_cached_hvp_over_grad.unit = "ratio"  # type: ignore[attr-defined]

    def track_ratio_cached_ggn_over_grad(self, model: str) -> float:
        """Cached GGN-vector product over the gradient; issue 14 target <= 1.4."""
        return self._ratio("ggn_cached")

    track_ratio_cached_ggn_over_grad.unit = "ratio"  # type: ignore[attr-defined]

    def track_ratio_curvature_over_grad(self, model: str) -> float:
        """Forward-only dᵀHd over the gradient; issue 14 target <= 2.0."""
        return self._ratio("curvature_fwd_fwd")

    track_ratio_curvature_over_grad.unit = "ratio"  # type: ignore[attr-defined]

    def track_ratio_grad_and_curvature_over_grad(self, model: str) -> float:
        """``grad_and_curvature`` (default mode) over the gradient; issue 14 target <= 1.6."""
        return self._ratio("grad_and_curv")

    track_ratio_grad_and_curvature_over_grad.unit = "ratio"  # type: ignore[attr-defined]

    def track_mem_ratio_curvature_over_grad(self, model: str) -> float:
        """Peak RSS of forward-only dᵀHd over the gradient's; issue 14 target <= 1.1."""
        return self._mem_ratio("curvature_fwd_fwd")

    track_mem_ratio_curvature_over_grad.unit = "ratio"  # type: ignore[attr-defined]

    def track_mem_ratio_grad_and_curvature_over_grad(self, model: str) -> float:
        """Peak RSS of ``grad_and_curvature`` over the gradient's; issue 14 target <= 2.0."""
        return self._mem_ratio("grad_and_curv")

    track_mem_ratio_grad_and_curvature_over_grad.unit = "ratio"  # type: ignore[attr-defined]


class JaxAdapter:
    """JAX adapter (jitted) on the CPU, MLP."""

    timeout = 300

    def setup(self) -> None:
        _need(HAVE_JAX, "jax")
        self.calls = jax_calls(*jax_mlp_problem())
        for f in self.calls.values():
            f()  # compile

    def time_grad(self) -> None:
        self.calls["grad"]()

    def time_hvp_fwd_rev(self) -> None:
        self.calls["hvp_fwd_rev"]()

    def time_curvature_fwd_fwd(self) -> None:
        self.calls["curvature_fwd_fwd"]()

    def track_ratio_hvp_over_grad(self) -> float:
        t = interleaved_best({k: self.calls[k] for k in ("grad", "hvp_fwd_rev")}, repeat=5, timer="cpu")
        return t["hvp_fwd_rev"] / t["grad"]

    track_ratio_hvp_over_grad.unit = "ratio"  # type: ignore[attr-defined]


class JaxRebind:
    """A JAX source rebound each step (``at(params=...)``, the compiled functions reused)
    against one rebuilt each step (every product compiled again), with one
    ``grad_and_curvature`` per step as ``CurvatureLR`` takes it."""

    timeout = 300

    def setup(self) -> None:
        _need(HAVE_JAX, "jax")
        from curvlab.adapters.jax import JaxCurvature

        self.apply, self.params, self.X, self.y = jax_mlp_problem(batch=128)
        self.src = JaxCurvature(self.apply, self.params, "cross_entropy", (self.X, self.y))
        self.theta = self.src.params.copy()
        self.d = np.random.default_rng(0).standard_normal(self.src.layout.size).astype(self.src.dtype)
        self.src.grad_and_curvature(self.d)  # compile

    def time_at_params_step(self) -> None:
        self.src.at(params=self.theta).grad_and_curvature(self.d)

    def time_rebuild_step(self) -> None:
        from curvlab.adapters.jax import JaxCurvature

        JaxCurvature(self.apply, self.params, "cross_entropy", (self.X, self.y)).grad_and_curvature(self.d)


class DLPackCrossing:
    """NumPy <-> torch / JAX crossing of a parameter-sized vector (no copy)."""

    params = ([10_000, 1_000_000],)
    param_names = ["n"]

    def setup(self, n: int) -> None:
        _need(HAVE_TORCH, "torch")
        self.v = np.random.default_rng(0).standard_normal(n)

    def time_torch_roundtrip(self, n: int) -> None:
        from curvlab.adapters.torch import from_torch, to_torch

        from_torch(to_torch(self.v))

    def track_torch_shares_memory(self, n: int) -> int:
        from curvlab.adapters.torch import from_torch, to_torch

        t = to_torch(self.v)
        return int(t.data_ptr() == self.v.ctypes.data and from_torch(t).ctypes.data == self.v.ctypes.data)

    track_torch_shares_memory.unit = "bool"  # type: ignore[attr-defined]
