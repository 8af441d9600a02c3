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
    """The error ``layer_structure()`` raises on a framework source that cannot find its dense
    layers (JAX: the model is an opaque ``apply_fn``)."""
    if source == "JaxCurvature":
        return LayerStructureUnavailable(
            f"JaxCurvature.layer_structure() is not available for {model}: JaxCurvature takes an opaque "
            "apply_fn(params, inputs), so its dense layers cannot be found generically (a parameter leaf of "
            "shape (n, m) does not say which input it multiplies, nor where its output goes). It would need a "
            "layer-tagging API: the model marking each dense layer's input a and output z (e.g. a tag "
            "function called inside apply_fn, as kfac-jax's register_dense does), from which a, δ = ∂ℓ/∂z and "
            "M = ∂²ℓ/∂z² follow by perturbing z. Not built. Methods that need the layers (ExactNewton, "
            "DSGD's bound) run on the reference MLP (curvlab.models.MLPCurvature) and on torch models' "
            "Linear layers (TorchCurvature); CurvatureLR, ArTuRO, DSGD's estimate rule and the baselines run here.")
    return LayerStructureUnavailable(
        f"{source}.layer_structure() is not available for {model}: the per-layer factors of its "
        "Linear/Dense layers (inputs, output gradients and output Hessians) are not extracted from "
        "framework models yet. Methods that need them (ExactNewton, DSGD's layer blocks) run on the "
        "reference MLP (curvlab.models.MLPCurvature); CurvatureLR, ArTuRO and the baselines run here.")
