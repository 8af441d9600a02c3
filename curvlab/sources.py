"""The curvature source: one protocol for every model curvlab differentiates.

A curvature source is a model and its loss **bound to parameters and data**. The
reference MLP (:class:`curvlab.models.MLPCurvature`), the PyTorch adapter
(:class:`curvlab.adapters.torch.TorchCurvature`) and the JAX adapter
(:class:`curvlab.adapters.jax.JaxCurvature`) implement it with one vocabulary, and the
methods (:mod:`curvlab.methods`) are written against it, so a method runs on any model
that provides what it needs.

Vocabulary
----------
``layout``
    :class:`curvlab.layout.Layout` of the flat parameter vector ``(P,)``.
``params``
    The bound parameters as one flat ``(P,)`` array of the source's backend.
``loss()``
    The mean loss over the bound data (a Python float; one host sync).
``gradient()``
    ``(loss, g)`` with ``g`` the ``(P,)`` gradient of the mean loss.
``per_sample_gradients()`` (optional, not part of the protocol check)
    The ``(B, P)`` gradients of the per-sample losses, where the source provides them.
``hessian()``, ``ggn()``, ``fisher(kind=...)``
    Named :class:`curvlab.linalg.LinearOperator` s ``(P, P)`` with ``matvec`` and
    ``matmat`` (a block product in one pass where the framework allows).
``directional_curvature(d)``
    ``dᵀ H d`` for a ``(P,)`` direction (forward mode, no gradient; a source may take
    ``mode="adjoint"`` too).
``grad_and_curvature(d)``
    ``(loss, g, dᵀ H d)`` in one pass (adjoint mode; method inspired by arXiv 2210.14520).
``layer_structure()``
    The dense layers as :class:`DenseLayer` records, with their per-sample inputs and
    output derivatives, for methods that need per-layer factors (exact Newton,
    arXiv 2104.03804; DSGD, arXiv 1708.00523). A source without such layers raises
    :class:`LayerStructureUnavailable`.
``at(params=None, data=None)``
    The same source rebound to new parameters and/or data, reusing everything built,
    traced or compiled. The new source starts with an empty product cache.
``cache_bytes`` (constructor keyword, default 1 GiB) and ``cache_info()``
    Operator products reuse what does not depend on the vector (a cached graph, a
    ``jax.linearize``, the stored forward pass), built at the first product and kept up to
    ``cache_bytes`` per source (batches in order; the rest are recomputed at every product);
    ``0`` disables it, ``None`` lifts the bound. ``loss``, ``gradient``,
    ``directional_curvature`` and ``grad_and_curvature`` never build it.

Data
----
``data`` is one batch ``(inputs, targets)`` or a whole dataset: a list/tuple of batches, a
re-iterable (a ``DataLoader``), or a zero-argument callable returning a fresh iterator
(a one-shot generator is refused). Over a dataset, the loss, gradient, every operator
product and ``dᵀ H d`` are the exact sample averages ``Σ_b (n_b/N) q_b``; the shared
machinery (:class:`curvlab.batches.Batches`: ``num_data``, ``check_deterministic``,
``progress``, a ``reduce`` hook for process groups) lives in :mod:`curvlab.batches`.

What each method needs
----------------------
============================  ==========================================================
method                        needs
============================  ==========================================================
SGD, Momentum, Adam, AdamW    gradients only (no source)
ArTuRO                        gradients only (its RLS filter estimates the curvature)
CurvatureLR                   ``directional_curvature`` or ``grad_and_curvature``
ExactNewton                   ``layer_structure()``
DSGD                          the layer blocks of ``layout``; the rigorous constant
                              needs the reference MLP
============================  ==========================================================
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .batches import Batches
from .layout import Layout

__all__ = ["Batches", "CurvatureSource", "DenseLayer", "LayerStructureUnavailable", "DEFAULT_CACHE_BYTES",
           "check_cache_bytes"]

#: The default bound of a source's product cache (``cache_bytes``): 1 GiB.
DEFAULT_CACHE_BYTES = 2**30


def check_cache_bytes(cache_bytes: Any) -> int | None:
    """``cache_bytes`` validated: a non-negative int (bytes; 0 disables the product cache) or
    None (no bound); a bool is refused.

    Examples
    --------
    >>> check_cache_bytes(2**20), check_cache_bytes(None)
    (1048576, None)
    """
    if cache_bytes is None:
        return None
    if isinstance(cache_bytes, (bool, np.bool_)) or not isinstance(cache_bytes, numbers.Integral):
        raise TypeError(f"cache_bytes must be a non-negative int (bytes) or None (no bound), got "
                        f"{type(cache_bytes).__name__} {cache_bytes!r}")
    if int(cache_bytes) < 0:
        raise ValueError(f"cache_bytes must be >= 0 (0 disables the product cache), got {int(cache_bytes)}")
    return int(cache_bytes)


class LayerStructureUnavailable(NotImplementedError):
    """Raised by ``layer_structure()`` when a source cannot expose dense layers.

    The model has no dense layers, or the source cannot expose them; the message names
    what is missing.
    """


@dataclass(frozen=True)
class DenseLayer:
    """One dense (Linear) layer ``z = W a + b`` of a curvature source, on the bound data.

    The per-sample factors make the layer's block of the per-sample Hessian
    ``∂²ℓ_b/∂vec(W̃)² = M_b ⊗ ã_b ã_bᵀ`` with ``W̃ = [W | b]`` and ``ã_b = [a_b; 1]``
    (method inspired by arXiv 2104.03804).

    Attributes
    ----------
    name : str
        A readable layer name (``"W2"``, ``"fc.1"``).
    weight : str
        The layout name of the weight ``(m, n)``; with ``bias_folded`` the weight is
        ``(m, n + 1)`` and its last column is the bias.
    bias : str or None
        The layout name of the bias ``(m,)``; None when folded into ``weight`` or absent.
    bias_folded : bool
    inputs : array ``(B, n)``
        The layer inputs ``a_b`` (without the column of ones).
    output_grads : array ``(B, m)``
        ``∂ℓ_b/∂z_b``, the gradient of each sample's loss with respect to the layer output.
    output_hessians : array ``(B, m, m)``
        ``M_b = ∂²ℓ_b/∂z_b²``, including the curvature of the layers above (second-order
        backpropagation, σ'' terms included).
    transposed : bool, default False
        The weight is stored as ``(n, m)`` (``z = a @ W``: flax/haiku kernels, as in
        :func:`curvlab.adapters.jax.dense`) instead of ``(m, n)``; methods transpose it (and
        their update) to the ``(m, n)`` orientation. Not allowed with ``bias_folded``.
    """

    name: str
    weight: str
    bias: str | None
    bias_folded: bool
    inputs: Any
    output_grads: Any
    output_hessians: Any
    transposed: bool = False

    def __post_init__(self) -> None:
        if self.transposed and self.bias_folded:
            raise ValueError(f"DenseLayer {self.name!r}: transposed=True with bias_folded=True is not defined "
                             "(a folded bias is the last column of an (m, n + 1) weight)")


@runtime_checkable
class CurvatureSource(Protocol):
    """A model and its loss bound to parameters and data (see the module docstring)."""

    layout: Layout

    @property
    def params(self) -> Any: ...

    def loss(self) -> float: ...

    def gradient(self) -> tuple[float, Any]: ...

    def hessian(self) -> Any: ...

    def ggn(self) -> Any: ...

    def fisher(self, kind: str = "empirical") -> Any: ...

    def directional_curvature(self, d: Any) -> float: ...

    def grad_and_curvature(self, d: Any) -> tuple[float, Any, float]: ...

    def layer_structure(self) -> list[DenseLayer]: ...

    def at(self, params: Any = None, data: Any = None) -> "CurvatureSource": ...
