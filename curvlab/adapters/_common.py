"""What the torch and JAX adapters share: named curvature operators, the Fisher kinds and
the message of a missing layer structure (private to :mod:`curvlab.adapters`)."""

from __future__ import annotations

from typing import Any

from ..linalg.operators import CallableOperator
from ..sources import LayerStructureUnavailable

#: the ``kind`` values of the adapters' ``fisher()``
FISHER_KINDS = ("empirical", "true", "mc")


class CurvatureOperator(CallableOperator):
    """A :class:`~curvlab.linalg.operators.CallableOperator` that says what it is.

    ``description`` (``"Hessian of Sequential on 64 samples, P=26, hvp_mode=..."``) leads
    the ``repr``.
    """

    def __init__(self, matvec: Any, shape: tuple[int, int], dtype: Any, *, description: str, **kw: Any) -> None:
        super().__init__(matvec, shape, dtype, **kw)
        self.description = str(description)

    def __repr__(self) -> str:
        tags = [t for t in ("symmetric", "psd") if getattr(self, t)]
        return (f"<{self.description}: {type(self).__name__} shape={self.shape} dtype={self.dtype} "
                f"backend={self.xp.__name__}{' ' + ','.join(tags) if tags else ''}>")


def layer_structure_unavailable(source: str, model: str) -> LayerStructureUnavailable:
    """The error ``layer_structure()`` raises on a framework source (not implemented yet)."""
    return LayerStructureUnavailable(
        f"{source}.layer_structure() is not available for {model}: the per-layer factors of its "
        "Linear/Dense layers (inputs, output gradients and output Hessians) are not extracted from "
        "framework models yet. Methods that need them (ExactNewton, DSGD's layer blocks) run on the "
        "reference MLP (curvlab.models.MLPCurvature); CurvatureLR, ArTuRO and the baselines run here.")
