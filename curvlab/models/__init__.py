"""Reference models in plain arrays with exact curvature products.

:mod:`curvlab.models.mlp` holds the reference multilayer perceptron (exact gradient,
R-operator Hessian-vector products, GGN/Fisher products, directional curvature in
forward and adjoint modes) and its :class:`~curvlab.linalg.operators.LinearOperator` views.
"""

from .mlp import (
    ACTIVATIONS,
    LOSSES,
    MLP,
    ForwardCache,
    ParamLayout,
    activation_derivatives,
    fisher_operator,
    ggn_operator,
    hessian_operator,
    loss_output_derivatives,
)

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "MLP",
    "ForwardCache",
    "ParamLayout",
    "activation_derivatives",
    "fisher_operator",
    "ggn_operator",
    "hessian_operator",
    "loss_output_derivatives",
]
