"""What the torch and JAX adapters share: the named curvature operator (the reference MLP's
:class:`curvlab.models.mlp_products.CurvatureOperator`, so every source's operators are one
class), the Fisher kinds and the message of a missing layer structure (private to
:mod:`curvlab.adapters`)."""

from __future__ import annotations

from ..models.mlp_products import CurvatureOperator  # the one named curvature operator (repr says what it is)
from ..sources import LayerStructureUnavailable

__all__ = ["FISHER_KINDS", "CurvatureOperator", "layer_structure_unavailable"]

#: the ``kind`` values of the adapters' ``fisher()``
FISHER_KINDS = ("empirical", "true", "mc")


def layer_structure_unavailable(source: str, model: str) -> LayerStructureUnavailable:
    """The error ``layer_structure()`` raises on a framework source (not implemented yet)."""
    return LayerStructureUnavailable(
        f"{source}.layer_structure() is not available for {model}: the per-layer factors of its "
        "Linear/Dense layers (inputs, output gradients and output Hessians) are not extracted from "
        "framework models yet. Methods that need them (ExactNewton, DSGD's layer blocks) run on the "
        "reference MLP (curvlab.models.MLPCurvature); CurvatureLR, ArTuRO and the baselines run here.")
