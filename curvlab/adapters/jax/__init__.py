"""JAX adapter: curvature sources of JAX models and curvlab transforms as optax transformations.

Modules:

* :mod:`~curvlab.adapters.jax.curvature` — :class:`JaxCurvature`, the
  :class:`curvlab.sources.CurvatureSource` of ``apply_fn(params, inputs)``, a loss and
  one batch or a whole dataset of batches (jitted Hessian, GGN and Fisher operators,
  gradient, ``dᵀHd``; batches sharded over devices), and the shortcuts :func:`hessian_operator`, :func:`ggn_operator`,
  :func:`fisher_operator`;
* :mod:`~curvlab.adapters.jax.layers` — :func:`dense`, a dense layer ``x @ w + b`` that
  ``JaxCurvature.layer_structure()`` sees (per-sample factors for ``ExactNewton``);
* :mod:`~curvlab.adapters.jax.optim` — :func:`as_optax`, any curvlab transform as an optax
  ``GradientTransformationExtraArgs``;
* :mod:`~curvlab.adapters.jax.convert` — :func:`to_jax` / :func:`from_jax` (DLPack) and
  :func:`from_reference_mlp` (the reference MLP's JAX twin).

Every public name is re-exported here (``from curvlab.adapters.jax import X``). Importing
:mod:`curvlab` does not import this package (nor JAX).
"""

from __future__ import annotations

from typing import Any

from ...layout import Layout
from .convert import from_jax, from_reference_mlp, to_jax
from .curvature import FISHER_KINDS, HVP_MODES, JaxCurvature, fisher_operator, ggn_operator, hessian_operator
from .layers import dense
from .optim import CurvlabOptaxState, as_optax

__all__ = [
    "JaxCurvature",
    "dense",
    "Layout",
    "to_jax",
    "from_jax",
    "as_optax",
    "CurvlabOptaxState",
    "HVP_MODES",
    "FISHER_KINDS",
    "from_reference_mlp",
    "hessian_operator",
    "ggn_operator",
    "fisher_operator",
]


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
