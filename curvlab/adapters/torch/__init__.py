"""PyTorch adapter: curvature sources of ``nn.Module`` s and curvlab transforms as optimizers.

Modules:

* :mod:`~curvlab.adapters.torch.curvature` — :class:`TorchCurvature`, the
  :class:`curvlab.sources.CurvatureSource` of a module, a loss and a batch (Hessian, GGN
  and Fisher operators, gradient, ``dᵀHd``), and the one-call shortcuts
  :func:`hessian_operator`, :func:`ggn_operator`, :func:`fisher_operator`;
* :mod:`~curvlab.adapters.torch.optim` — :class:`CurvlabOptimizer`, any curvlab transform
  as a ``torch.optim.Optimizer``;
* :mod:`~curvlab.adapters.torch.convert` — :func:`to_torch` / :func:`from_torch` (DLPack,
  no copy) and :func:`from_reference_mlp` (the reference MLP's ``nn.Sequential`` twin);
* :mod:`~curvlab.adapters.torch.safe_ops` — :func:`forward_mode_safe_ops`, compositions
  replacing fused kernels whose nested forward mode is wrong or missing.

Every public name is re-exported here (``from curvlab.adapters.torch import X``). Importing
:mod:`curvlab` does not import this package (nor torch).
"""

from __future__ import annotations

from typing import Any

from ...layout import Layout
from .convert import from_reference_mlp, from_torch, to_torch
from .curvature import HVP_MODES, TorchCurvature, fisher_operator, ggn_operator, hessian_operator
from .optim import CurvlabOptimizer
from .safe_ops import forward_mode_safe_ops

__all__ = [
    "TorchCurvature",
    "Layout",
    "CurvlabOptimizer",
    "to_torch",
    "from_torch",
    "hessian_operator",
    "ggn_operator",
    "fisher_operator",
    "HVP_MODES",
    "from_reference_mlp",
    "forward_mode_safe_ops",
]


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
