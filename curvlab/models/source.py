"""The reference MLP bound to parameters and data: a :class:`curvlab.sources.CurvatureSource`.

:class:`MLPCurvature` is the one entry point: ``MLPCurvature(model, params, (X, y))``.
It checks the model, the parameters and the data **once** (the labels' range: one host
sync), keeps the checked arrays, and answers the protocol's questions from them:

* ``loss()``, ``gradient()``, ``per_sample_gradients()`` — backpropagation;
* ``hessian()``, ``ggn()``, ``fisher(kind)`` — named
  :class:`~curvlab.models.mlp_products.CurvatureOperator` s whose matvec/matmat are the
  exact R-operator products (Pearlmutter 1994), **0 host syncs per product**;
* ``directional_curvature(d, mode)`` and ``grad_and_curvature(d)`` — ``dᵀ H d`` in the
  forward (Taylor) and adjoint modes of arXiv 2210.14520 (method inspired by);
* ``layer_structure()`` — one :class:`~curvlab.sources.DenseLayer` per layer from the
  second-order backpropagation (method inspired by arXiv 2104.03804): inputs ``a``, output
  gradients ``δ`` and output Hessians ``M`` per sample, bias folded into the weight;
* ``at(params=None, data=None)`` — the same model rebound; data that is not rebound is
  not checked again (no host sync when only the parameters change).

The bound arrays are not copied and not re-checked: do not modify them in place.

Example
-------
>>> import numpy as np
>>> from curvlab.models import MLP, MLPCurvature
>>> model = MLP([4, 5, 3], activation="tanh", loss="cross_entropy")
>>> rng = np.random.default_rng(0)
>>> X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, size=8)
>>> src = MLPCurvature(model, model.init_params(rng), (X, y))
>>> src.hessian()
<Hessian of MLP[4-5-3, tanh, cross_entropy] on 8 samples, P=43: CurvatureOperator shape=(43, 43) dtype=float64 backend=numpy symmetric>
>>> d = rng.standard_normal(43)
>>> bool(np.isclose(src.directional_curvature(d), d @ (src.hessian() @ d)))
True
>>> src2 = src.at(params=src.params * 0.5)        # no data re-check
>>> src2.loss() != src.loss()
True
"""

from __future__ import annotations

from typing import Any

from ..sources import DenseLayer
from .mlp import MLP
from .mlp_products import CurvatureOperator, bound_operator

__all__ = ["MLPCurvature", "FISHER_KINDS"]

#: the ``kind`` values of :meth:`MLPCurvature.fisher`
FISHER_KINDS = ("empirical", "true")


class MLPCurvature:
    """A reference :class:`~curvlab.models.mlp.MLP` bound to ``params`` and one batch ``(X, y)``.

    Parameters
    ----------
    model : MLP
    params : (P,) array
        Flat parameters of the model's backend and dtype (``model.layout``).
    data : tuple (X, y)
        ``X`` ``(B, n_0)``; ``y`` integer labels ``(B,)`` (cross-entropy) or targets
        ``(B, n_L)`` (mse). Checked here, once.

    Attributes
    ----------
    model : MLP
    layout : curvlab.layout.Layout
        ``model.layout`` (names ``W1..WL``, shapes ``(n_l, n_{l-1} + 1)``, bias last column).
    data : tuple
        The ``(X, y)`` given.

    Host syncs: 1 when built (the labels' range, cross-entropy; more under
    ``nan_policy="raise"``); 0 per operator product; 1 for each method returning a Python
    float (``loss``, ``gradient``, ``directional_curvature``, ``grad_and_curvature``).
    """

    def __init__(self, model: MLP, params: Any, data: Any) -> None:
        if not isinstance(model, MLP):
            raise TypeError(f"model must be a curvlab.models.mlp.MLP, got {type(model).__name__}")
        X, y = _split_data(data)
        Ws, Xc, yc = model.check_inputs(params, X, y)
        self._bind(model, params, Ws, (X, y), Xc, yc)

    def _bind(self, model: MLP, params: Any, Ws: list[Any], data: tuple[Any, Any], X: Any, y: Any) -> None:
        self.model = model
        self.layout = model.layout
        self.data = data
        self._params, self._Ws, self._X, self._y = params, Ws, X, y

    @classmethod
    def _from_checked(cls, model: MLP, params: Any, Ws: list[Any], data: tuple[Any, Any], X: Any, y: Any
                      ) -> "MLPCurvature":
        obj = cls.__new__(cls)
        obj._bind(model, params, Ws, data, X, y)
        return obj

    # -- basic -----------------------------------------------------------------
    @property
    def params(self) -> Any:
        """The bound flat parameters ``(P,)`` (the array given, not a copy)."""
        return self._params

    @property
    def n_samples(self) -> int:
        """The batch size ``B``."""
        return int(self._X.shape[0])

    def __repr__(self) -> str:
        return f"MLPCurvature({self.model.label} on {self.n_samples} samples, P={self.layout.size})"

    # -- values ----------------------------------------------------------------
    def loss(self) -> float:
        """The batch-mean loss (a Python float; 1 host sync)."""
        return float(self.model._loss(self._Ws, self._X, self._y))

    def gradient(self) -> tuple[float, Any]:
        """``(loss, g)``: the mean loss and its gradient ``(P,)`` by backpropagation."""
        loss, g = self.model._loss_and_grad(self._Ws, self._X, self._y)
        return float(loss), g

    def per_sample_gradients(self) -> Any:
        """Gradients ``(B, P)`` of the per-sample losses (their mean is :meth:`gradient`'s ``g``)."""
        return self.model._per_sample_grads(self._Ws, self._X, self._y)

    # -- operators -------------------------------------------------------------
    def hessian(self) -> CurvatureOperator:
        """The ``(P, P)`` Hessian of the mean loss (symmetric; R-operator products)."""
        return bound_operator(self.model, self._Ws, self._X, self._y, "hessian")

    def ggn(self) -> CurvatureOperator:
        """The generalized Gauss-Newton matrix ``Jᵀ (∇²_z L / B) J`` (symmetric PSD)."""
        return bound_operator(self.model, self._Ws, self._X, self._y, "ggn")

    def fisher(self, kind: str = "empirical") -> CurvatureOperator:
        """A Fisher matrix of the mean loss (symmetric PSD).

        ``kind="empirical"``: ``(1/B) Σ_b g_b g_bᵀ`` with the per-sample gradients on the
        bound labels. ``kind="true"``: the Fisher of the model's predictive distribution
        (softmax for cross-entropy, unit-variance Gaussian for mse), which for these
        canonical-link losses equals the GGN exactly (Martens, arXiv 1412.1193); the returned
        operator is the GGN product.
        """
        if kind == "empirical":
            return bound_operator(self.model, self._Ws, self._X, self._y, "fisher")
        if kind == "true":
            op = bound_operator(self.model, self._Ws, self._X, self._y, "ggn")
            op.description = op.description.replace("GGN", "Fisher (true, = GGN)", 1)
            return op
        raise ValueError(f"kind must be one of {FISHER_KINDS}, got {kind!r}")

    # -- directional curvature ---------------------------------------------------
    def directional_curvature(self, d: Any, mode: str = "forward") -> float:
        """``dᵀ H d`` for a ``(P,)`` direction (Python float; reductions in float64).

        ``mode="forward"``: Taylor mode, one extended forward pass, no gradient (memory ≈
        the forward pass); ``mode="adjoint"``: through :meth:`grad_and_curvature`.
        """
        if mode == "forward":
            d = self.model._check_dir(d, "d", 1)
            return float(self.model._curvature_forward(self._Ws, self._X, self._y, d))
        if mode == "adjoint":
            return self.grad_and_curvature(d)[2]
        raise ValueError(f"mode must be 'forward' or 'adjoint', got {mode!r}")

    def grad_and_curvature(self, d: Any) -> tuple[float, Any, float]:
        """``(loss, g, dᵀ H d)`` in one forward and one backward pass (adjoint mode,
        method inspired by arXiv 2210.14520)."""
        d = self.model._check_dir(d, "d", 1)
        loss, g, c = self.model._grad_and_curvature(self._Ws, self._X, self._y, d, self._params)
        return float(loss), g, float(c)

    # -- layers ----------------------------------------------------------------
    def layer_structure(self) -> list[DenseLayer]:
        """One :class:`~curvlab.sources.DenseLayer` per layer (input layer first), in the
        model's dtype: ``inputs`` ``a_{l-1}`` ``(B, n_{l-1})``, ``output_grads`` ``δ_l``
        ``(B, n_l)`` and ``output_hessians`` ``M_l`` ``(B, n_l, n_l)`` of the per-sample
        losses; the weight ``W{l}`` carries the bias as its last column
        (``bias_folded=True``). The layer's block of the mean-loss Hessian is
        ``(1/B) Σ_b M_b ⊗ ã_b ã_bᵀ`` with ``ã = [a; 1]`` (method inspired by arXiv 2104.03804).
        Memory ``O(B Σ n_l²)``: meant for narrow layers.
        """
        out = []
        for name, f in zip(self.layout.names, self.model._layer_factors(self._Ws, self._X, self._y)):
            out.append(DenseLayer(name=name, weight=name, bias=None, bias_folded=True,
                                  inputs=f.a[:, :-1], output_grads=f.delta, output_hessians=f.M))
        return out

    # -- rebinding -------------------------------------------------------------
    def at(self, params: Any = None, data: Any = None) -> "MLPCurvature":
        """The same model bound to new ``params`` and/or ``data`` (a new source; this one
        is unchanged). What is not rebound is reused unchecked: new parameters alone cost
        no host sync (under ``nan_policy="propagate"``)."""
        model = self.model
        if data is None:
            X, y, Xc, yc = *self.data, self._X, self._y
        else:
            X, y = _split_data(data)
            Xc = model._check_X(X)
            yc = model._check_y(y, Xc.shape[0])
        if params is None:
            params, Ws = self._params, self._Ws
        else:
            Ws = model._check_params(params)
        return MLPCurvature._from_checked(model, params, Ws, (X, y), Xc, yc)


def _split_data(data: Any) -> tuple[Any, Any]:
    """``data`` as ``(X, y)``; ``TypeError`` naming ``data`` otherwise."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"data must be one batch (X, y), got {type(data).__name__}"
                        + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
    return data[0], data[1]
