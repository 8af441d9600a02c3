"""Reference models in plain arrays with exact curvature products.

* :mod:`curvlab.models.activations`, :mod:`curvlab.models.losses` — activation and loss
  objects (value, derivatives, the bounds DSGD needs);
* :mod:`curvlab.models.mlp` — the reference multilayer perceptron (forward, backward,
  gradient, per-sample gradients);
* :mod:`curvlab.models.mlp_products` — its exact Hessian/GGN/Fisher products and
  directional curvature, and their :class:`~curvlab.linalg.operators.LinearOperator` views;
* :mod:`curvlab.models.layer_hessians` — exact per-sample layer Hessian factors;
* :mod:`curvlab.models.source` — :class:`MLPCurvature`, the MLP bound to
  ``(params, data)`` as a :class:`curvlab.sources.CurvatureSource`.
"""

from .activations import Activation, activation_derivative_bounds, get_activation
from .losses import Loss, get_loss
from .mlp import (
    ACTIVATIONS,
    LOSSES,
    MLP,
    ForwardCache,
    activation_derivatives,
    dense_layout,
    fisher_operator,
    ggn_operator,
    hessian_operator,
    loss_output_derivatives,
)
from .source import MLPCurvature

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Loss",
    "get_activation",
    "get_loss",
    "activation_derivative_bounds",
    "dense_layout",
    "LOSSES",
    "MLP",
    "MLPCurvature",
    "ForwardCache",
    "activation_derivatives",
    "fisher_operator",
    "ggn_operator",
    "hessian_operator",
    "loss_output_derivatives",
]
