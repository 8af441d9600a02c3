"""Adapters exposing curvlab to PyTorch and JAX.

The framework modules are imported on demand, so ``import curvlab`` (and this
package) works without PyTorch or JAX installed:

* :mod:`curvlab.adapters.torch` — :class:`~curvlab.adapters.torch.TorchCurvature`
  (Hessian / GGN / Fisher operators, gradient, forward-only ``dᵀHd``, data-parallel
  over a ``torch.distributed`` group) and
  :class:`~curvlab.adapters.torch.CurvlabOptimizer` (any curvlab transform as a
  ``torch.optim.Optimizer``);
* :mod:`curvlab.adapters.jax` — :class:`~curvlab.adapters.jax.JaxCurvature`
  (the same, jitted, batch sharded over devices) and
  :func:`~curvlab.adapters.jax.as_optax` (any transform as an optax
  ``GradientTransformationExtraArgs``).

Attribute access (``curvlab.adapters.TorchCurvature``) imports the framework
module the first time.

Parameters are laid out flat by :class:`curvlab.layout.Layout`.

>>> from curvlab.layout import Layout
>>> Layout(["w"], [(2, 2)]).size
4
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TorchCurvature", "CurvlabOptimizer", "JaxCurvature", "as_optax"]

_LAZY = {
    "TorchCurvature": "torch",
    "CurvlabOptimizer": "torch",
    "forward_mode_safe_ops": "torch",
    "from_reference_mlp": "torch",
    "JaxCurvature": "jax",
    "as_optax": "jax",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
