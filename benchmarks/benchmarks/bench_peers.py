"""asv ``track_`` benchmarks of the side-by-side ratios of ``benchmarks/run_peers.py`` (issue 14, target 8).

Each class measures its group once (``setup_cache``: one process, 1 BLAS/torch/XLA thread,
process CPU time, best of 5 round-robin repeats after a warm-up call) and its ``track_``
methods return the headline ratios (unit "ratio"; lower is better), so a regression shows in
asv's history:

* :class:`TorchPeers`: cached HVP and GGN-vp, one-shot HVP, ``dᵀHd`` and grad + ``dᵀHd`` over
  ``torch.autograd.grad`` (MLP 784-512-512-10 tanh batch 512 and CNN batch 128, float32),
  and curvlab's cached HVP / GGN-vp over curvlinops' (skipped when curvlinops is not
  installed). ``torch.compile`` is not run here (its compile time belongs to run_peers.py).
* :class:`JaxPeers`: ``JaxCurvature`` products over ``jax.jit(jax.grad)`` on the MLP.
* :class:`NumpyPeers`: the NumPy reference MLP over ``jax.jit`` of the same function
  (gradient, HVP, GGN-vp, ``dᵀHd``), and its cached HVP / GGN-vp over its own gradient.
* :class:`EigshPeers`: ``eigsh`` matvecs and CPU over ARPACK's at matched true residual.

The method steps (ArTuRO, DSGD, ExactNewton) are tracked by bench_arturo, bench_dsgd_clr and
bench_exact_newton. A ratio a commit cannot measure (no product cache, peer missing) raises
``NotImplementedError`` (asv: skipped).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

_BENCH_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/, holds _peers
if _BENCH_ROOT not in sys.path:
    sys.path.insert(0, _BENCH_ROOT)

from _peers import one_thread_env  # noqa: E402

one_thread_env()  # one XLA thread, when JAX is not imported yet

REPEAT = 5


def _track(name: str, key: str, doc: str) -> Callable[[Any, dict[str, float]], float]:
    """A ``track_`` method returning ``ratios[key]`` (the ``setup_cache`` result)."""

    def track(self: Any, ratios: dict[str, float]) -> float:
        if key not in ratios:
            raise NotImplementedError(f"{key} not measured on this commit/environment")  # asv: skip
        return float(ratios[key])

    track.__name__ = track.__qualname__ = name
    track.__doc__ = doc
    track.unit = "ratio"  # type: ignore[attr-defined]
    return track


def _have(*modules: str) -> None:
    for m in modules:
        try:
            __import__(m)
        except Exception as exc:
            raise NotImplementedError(f"{m} not importable: {exc}") from exc  # asv: skip


class TorchPeers:
    """``TorchCurvature`` vs ``torch.autograd.grad`` and curvlinops, MLP and CNN."""

    timeout = 900

    def setup_cache(self) -> dict[str, float]:
        _have("torch")
        from _peers import _torch

        return _torch.measure(REPEAT, compile="none", models=("mlp", "cnn"))[1]

    setup_cache.timeout = 900  # type: ignore[attr-defined]  # asv reads it from the function

    track_mlp_cached_hvp_over_grad = _track(
        "track_mlp_cached_hvp_over_grad", "mlp.hvp_cached", "MLP cached HVP / autograd gradient; target <= 1.5")
    track_cnn_cached_hvp_over_grad = _track(
        "track_cnn_cached_hvp_over_grad", "cnn.hvp_cached", "CNN cached HVP / autograd gradient; target <= 1.5")
    track_mlp_cached_ggn_over_grad = _track(
        "track_mlp_cached_ggn_over_grad", "mlp.ggn_cached", "MLP cached GGN-vp / autograd gradient; target <= 1.4")
    track_cnn_cached_ggn_over_grad = _track(
        "track_cnn_cached_ggn_over_grad", "cnn.ggn_cached", "CNN cached GGN-vp / autograd gradient; target <= 1.4")
    track_mlp_oneshot_hvp_over_grad = _track(
        "track_mlp_oneshot_hvp_over_grad", "mlp.hvp_oneshot", "MLP one-shot HVP (cache_bytes=0) / gradient")
    track_cnn_oneshot_hvp_over_grad = _track(
        "track_cnn_oneshot_hvp_over_grad", "cnn.hvp_oneshot", "CNN one-shot HVP (cache_bytes=0) / gradient")
    track_mlp_dhd_over_grad = _track(
        "track_mlp_dhd_over_grad", "mlp.dhd", "MLP forward-mode dᵀHd / gradient; target <= 2.0")
    track_cnn_dhd_over_grad = _track(
        "track_cnn_dhd_over_grad", "cnn.dhd", "CNN forward-mode dᵀHd / gradient; target <= 2.0")
    track_mlp_grad_dhd_over_grad = _track(
        "track_mlp_grad_dhd_over_grad", "mlp.grad_dhd", "MLP grad_and_curvature / gradient; target <= 1.6")
    track_cnn_grad_dhd_over_grad = _track(
        "track_cnn_grad_dhd_over_grad", "cnn.grad_dhd", "CNN grad_and_curvature / gradient; target <= 1.6")
    track_mlp_hvp_over_curvlinops = _track(
        "track_mlp_hvp_over_curvlinops", "mlp.hvp_cached_over_curvlinops",
        "MLP curvlab cached HVP / curvlinops HessianLinearOperator matvec; target <= 0.5")
    track_cnn_hvp_over_curvlinops = _track(
        "track_cnn_hvp_over_curvlinops", "cnn.hvp_cached_over_curvlinops",
        "CNN curvlab cached HVP / curvlinops HessianLinearOperator matvec; target <= 0.5")
    track_mlp_ggn_over_curvlinops = _track(
        "track_mlp_ggn_over_curvlinops", "mlp.ggn_cached_over_curvlinops",
        "MLP curvlab cached GGN-vp / curvlinops GGNLinearOperator matvec; target <= 0.5")
    track_cnn_ggn_over_curvlinops = _track(
        "track_cnn_ggn_over_curvlinops", "cnn.ggn_cached_over_curvlinops",
        "CNN curvlab cached GGN-vp / curvlinops GGNLinearOperator matvec; target <= 0.5")


class JaxPeers:
    """``JaxCurvature`` vs ``jax.jit(jax.grad)``, MLP."""

    timeout = 900

    def setup_cache(self) -> dict[str, float]:
        _have("jax")
        from _peers import _jax

        return _jax.measure(REPEAT)[1]

    setup_cache.timeout = 900  # type: ignore[attr-defined]  # asv reads it from the function

    track_cached_hvp_over_grad = _track(
        "track_cached_hvp_over_grad", "jax.hvp_cached", "JAX cached HVP / jitted gradient; target <= 1.5")
    track_cached_ggn_over_grad = _track(
        "track_cached_ggn_over_grad", "jax.ggn_cached", "JAX cached GGN-vp / jitted gradient; target <= 1.4")
    track_oneshot_hvp_over_grad = _track(
        "track_oneshot_hvp_over_grad", "jax.hvp_oneshot", "JAX one-shot HVP (cache_bytes=0) / jitted gradient")
    track_dhd_over_grad = _track(
        "track_dhd_over_grad", "jax.dhd", "JAX forward-mode dᵀHd / jitted gradient; target <= 2.0")
    track_grad_dhd_over_grad = _track(
        "track_grad_dhd_over_grad", "jax.grad_dhd", "JAX grad_and_curvature / jitted gradient; target <= 1.6")


class NumpyPeers:
    """NumPy reference MLP vs ``jax.jit`` of the same function, float32."""

    timeout = 900

    def setup_cache(self) -> dict[str, float]:
        _have("jax")
        from _peers import _jax

        return _jax.measure_numpy(REPEAT)[1]

    setup_cache.timeout = 900  # type: ignore[attr-defined]  # asv reads it from the function

    track_grad_over_jax = _track(
        "track_grad_over_jax", "numpy_over_jax.grad", "NumPy loss_and_grad / JAX-jit value_and_grad; target <= 1.0")
    track_hvp_over_jax = _track(
        "track_hvp_over_jax", "numpy_over_jax.hvp", "NumPy HVP / JAX-jit jvp(grad); target <= 1.0")
    track_ggn_over_jax = _track(
        "track_ggn_over_jax", "numpy_over_jax.ggn", "NumPy GGN-vp / JAX-jit jvp + vjp; target <= 1.0")
    track_dhd_over_jax = _track(
        "track_dhd_over_jax", "numpy_over_jax.dhd", "NumPy forward dᵀHd / JAX-jit jvp(jvp); target <= 1.0")
    track_cached_hvp_over_grad = _track(
        "track_cached_hvp_over_grad", "numpy.hvp_cached_over_grad", "NumPy cached HVP / own gradient; target <= 1.5")
    track_cached_ggn_over_grad = _track(
        "track_cached_ggn_over_grad", "numpy.ggn_cached_over_grad", "NumPy cached GGN-vp / own gradient; target <= 1.4")


class EigshPeers:
    """``curvlab.linalg.eigsh`` vs ARPACK at matched true residual, cheap matvecs."""

    timeout = 900

    def setup_cache(self) -> dict[str, float]:
        from _peers import _eigen

        return _eigen.measure(3)[1]

    setup_cache.timeout = 900  # type: ignore[attr-defined]  # asv reads it from the function

    track_decaying_matvecs_over_arpack = _track(
        "track_decaying_matvecs_over_arpack", "eigsh.decaying_20000_k5.matvecs",
        "eigsh / ARPACK matvecs, decaying spectrum, n = 20000, k = 5; target <= 1.0")
    track_decaying_cpu_over_arpack = _track(
        "track_decaying_cpu_over_arpack", "eigsh.decaying_20000_k5.cpu",
        "eigsh / ARPACK CPU, decaying spectrum, n = 20000, k = 5; target <= 1.0")
    track_uniform_matvecs_over_arpack = _track(
        "track_uniform_matvecs_over_arpack", "eigsh.uniform_20000_k5.matvecs",
        "eigsh / ARPACK matvecs, uniform spectrum, n = 20000, k = 5; target <= 1.0")
    track_uniform_cpu_over_arpack = _track(
        "track_uniform_cpu_over_arpack", "eigsh.uniform_20000_k5.cpu",
        "eigsh / ARPACK CPU, uniform spectrum, n = 20000, k = 5; target <= 1.0")
