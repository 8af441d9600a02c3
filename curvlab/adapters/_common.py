"""What the torch and JAX adapters share: the named curvature operator (the reference MLP's
:class:`curvlab.models.mlp_products.CurvatureOperator`, so every source's operators are one
class), the Fisher kinds and the ``nan_policy`` check (private to :mod:`curvlab.adapters`)."""

from __future__ import annotations

from ..models.mlp_products import CurvatureOperator  # the one named curvature operator (repr says what it is)

__all__ = ["FISHER_KINDS", "CurvatureOperator", "check_nan_policy"]

#: the ``kind`` values of the adapters' ``fisher()``
FISHER_KINDS = ("empirical", "true", "mc")


def check_nan_policy(nan_policy: str) -> str:
    """``nan_policy`` if it is ``"propagate"`` or ``"raise"``; ``ValueError`` naming it otherwise."""
    if nan_policy not in ("propagate", "raise"):
        raise ValueError(f"nan_policy must be 'propagate' or 'raise', got {nan_policy!r}")
    return nan_policy
