"""What the torch and JAX adapters share: the named curvature operator (the reference MLP's
:class:`curvlab.models.mlp_products.CurvatureOperator`, so every source's operators are one
class) and the Fisher kinds (private to :mod:`curvlab.adapters`)."""

from __future__ import annotations

from ..models.mlp_products import CurvatureOperator  # the one named curvature operator (repr says what it is)

__all__ = ["FISHER_KINDS", "CurvatureOperator"]

#: the ``kind`` values of the adapters' ``fisher()``
FISHER_KINDS = ("empirical", "true", "mc")
