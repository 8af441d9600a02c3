"""Exact per-sample layer Hessians of a dense network by second-order backpropagation.

Method inspired by arXiv 2104.03804 (exact stochastic Newton). For a dense network
``z_l = W_l ã_{l-1}``, ``a_l = σ(z_l)`` (bias folded in as the last column of ``W_l``,
``ã = [a; 1]``) and a per-sample loss ``ℓ = L(z_L, y)``:

* error recursion: ``δ_L = ∇_z L``, ``δ_l = σ'(z_l) ⊙ (W̄_{l+1}ᵀ δ_{l+1})``;
* exact Hessian recursion (second-order backpropagation), σ'' term included so smooth
  activations are exact::

      M_L = ∇²_z L
      M_l = D_l W̄ᵀ_{l+1} M_{l+1} W̄_{l+1} D_l + diag(σ''(z_l) ⊙ (W̄ᵀ_{l+1} δ_{l+1})),  D_l = diag(σ'(z_l))

  (``W̄`` is ``W`` without its bias column);
* the per-sample W_l–W_l Hessian block is then exactly ``M_l ⊗ ã_{l-1} ã_{l-1}ᵀ``
  (row-major vec), and the block of the mean mini-batch loss is
  ``(1/B) Σ_b M_{l,b} ⊗ ã_b ã_bᵀ``. Cross-layer blocks are not computed.

Everything is batched over samples: one call costs ``O(B Σ_l n_{l+1} n_l (n_{l+1} + n_l))``
beyond a forward pass. Results are float64 (float32 inputs are promoted: curvature and its
eigendecomposition are kept in float64, the curvlab policy for this method). NumPy or CuPy.

Entry points: :func:`layer_curvature` (weights given as a list of ``(n_l, m_l)`` arrays,
standalone) and :func:`layer_hessian_factors` (a :class:`curvlab.models.mlp.MLP` and its flat
parameters). :func:`layer_hessian_block` wraps one layer's factors as a
:class:`curvlab.linalg.kronecker.KroneckerSumBlock`.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> Ws = [rng.standard_normal((3, 5)), rng.standard_normal((2, 4))]   # 4 -> 3 -> 2, with bias
>>> X = rng.standard_normal((6, 4)); y = np.array([0, 1, 1, 0, 1, 0])
>>> f = layer_curvature(Ws, X, y, activation="tanh", loss="cross_entropy")
>>> [(g.delta.shape, g.M.shape, g.a.shape) for g in f]
[((6, 3), (6, 3, 3), (6, 5)), ((6, 2), (6, 2, 2), (6, 4))]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from .. import backend
from ._common import refuse_foreign
from .activations import activation_derivatives, get_activation
from .losses import loss_output_derivatives

__all__ = [
    "LayerCurvature",
    "layer_curvature",
    "layer_hessian_factors",
    "layer_hessian_block",
    "output_derivatives",
    "activation_derivatives_ref",
    "backprop_curvature",
]


@dataclasses.dataclass
class LayerCurvature:
    """Per-sample second-order factors of one dense layer (all float64).

    Attributes
    ----------
    delta : ``(B, n)`` -- ``δ_b = ∂ℓ_b/∂z`` (per-sample loss, not divided by B).
    M : ``(B, n, n)`` -- ``M_b = ∂²ℓ_b/∂z²`` (symmetric; may be indefinite).
    a : ``(B, m)`` -- layer input ``ã_b`` (bias entry 1 appended when the layer has a bias).
    z : ``(B, n)`` -- pre-activation.

    Per-sample gradient of ``W`` (``(n, m)``): ``δ_b ã_bᵀ``; per-sample Hessian block:
    ``M_b ⊗ ã_b ã_bᵀ``; mean-loss gradient ``δᵀ ã / B`` and block ``(1/B) Σ_b M_b ⊗ ã_b ã_bᵀ``.
    """

    delta: Any
    M: Any
    a: Any
    z: Any

    @property
    def grad(self) -> Any:
        """The mean-loss gradient of this layer, ``(n, m)``."""
        return self.delta.T @ self.a / self.delta.shape[0]

    def block(self, b: int) -> Any:
        """Dense per-sample block ``M_b ⊗ ã_b ã_bᵀ`` of shape ``(n m, n m)`` (tests, small sizes)."""
        xp = backend.get_namespace(self.M)
        return xp.kron(self.M[b], xp.outer(self.a[b], self.a[b]))


#: ``(σ(z), σ'(z), σ''(z))`` for ``name`` in :data:`~curvlab.models.activations.ACTIVATIONS` (ReLU: σ'(0) = 0,
#: σ'' = 0): :func:`~curvlab.models.activations.activation_derivatives` under its historical name here.
activation_derivatives_ref = activation_derivatives


def output_derivatives(zL: Any, y: Any, loss: str = "cross_entropy") -> tuple[Any, Any, Any]:
    """Per-sample loss, gradient and Hessian with respect to the output ``z_L`` ``(B, n_L)``.

    ``cross_entropy`` (``y`` int labels ``(B,)``): ``ℓ = logsumexp(z) - z_y``, ``δ = p - e_y``,
    ``M = diag(p) - p pᵀ``; ``mse`` (``y`` ``(B, n_L)``): ``ℓ = ½‖z - y‖²``, ``δ = z - y``, ``M = I``.
    Returns ``(ℓ (B,), δ (B, n_L), M (B, n_L, n_L))``. Host syncs: 1 for cross-entropy
    (the labels' range, one boolean), 0 for mse.
    """
    xp = backend.get_namespace(zL)
    B, n = zL.shape
    if y is None:
        raise TypeError("y is required: integer labels (B,) for cross_entropy or targets (B, n_L) for mse, got None")
    refuse_foreign(y, "y", xp)
    if loss == "cross_entropy":
        y = xp.asarray(y)
        if y.shape != (B,) or y.dtype.kind not in "iu":
            raise ValueError(f"y must be integer labels of shape ({B},) for cross_entropy, got {y.dtype} {tuple(y.shape)}")
        if B and bool(xp.any((y < 0) | (y >= n))):
            raise ValueError(f"labels must lie in [0, {n}), got range [{int(y.min())}, {int(y.max())}]")
    elif loss == "mse":
        y = xp.asarray(y, dtype=zL.dtype)
        if y.shape != (B, n):
            raise ValueError(f"y must have shape ({B}, {n}) for mse, got {tuple(y.shape)}")
    # validated here; the formulas are curvlab.models.losses' (an unknown loss raises there)
    return loss_output_derivatives(loss, zL, y, xp)


def _check_weights(weights: Sequence[Any], n0: int) -> list[bool]:
    """Validate shapes; return per layer whether it has a folded bias column."""
    if len(weights) == 0:
        raise ValueError("weights must hold at least one layer")
    has_bias = []
    prev = n0
    for i, W in enumerate(weights):
        backend.check_float_array(W, f"weights[{i}]", ndim=2)
        n, m = W.shape
        if n == 0 or m == 0:
            raise ValueError(f"weights[{i}] is empty, shape {tuple(W.shape)}")
        if m == prev + 1:
            has_bias.append(True)
        elif m == prev:
            has_bias.append(False)
        else:
            raise ValueError(
                f"weights[{i}] has shape {tuple(W.shape)}; expected ({n}, {prev + 1}) (bias folded in) or ({n}, {prev})"
            )
        prev = n
    return has_bias


def backprop_curvature(weights: Sequence[Any], zs: Sequence[Any], a_tildes: Sequence[Any], delta_L: Any, M_L: Any,
                       activation: str, act_derivs: Any = None) -> list[LayerCurvature]:
    """Second-order backpropagation (the δ and M recursions of the module docstring; method
    inspired by arXiv 2104.03804) given a forward cache: ``zs[l]`` ``(B, n_l)``, ``a_tildes[l]`` ``(B, m_l)``.

    ``activation``: a name or :class:`~curvlab.models.activations.Activation`.
    ``act_derivs(name, z, xp) -> (σ, σ', σ'')`` defaults to
    :func:`~curvlab.models.activations.activation_derivatives`. Works in the dtype of its inputs.
    Returns one :class:`LayerCurvature` per layer (input layer first).
    """
    xp = backend.get_namespace(delta_L)
    act = activation_derivatives if act_derivs is None else act_derivs
    L = len(weights)
    out: list[LayerCurvature | None] = [None] * L
    delta, M = delta_L, 0.5 * (M_L + xp.swapaxes(M_L, 1, 2))
    out[L - 1] = LayerCurvature(delta, M, a_tildes[L - 1], zs[L - 1])
    for l in range(L - 2, -1, -1):
        Wb = weights[l + 1][:, : zs[l].shape[1]]            # W̄_{l+1}: drop the bias column
        _, d1, d2 = act(activation, zs[l], xp)
        g = delta @ Wb                                      # W̄ᵀ δ, (B, n_l)
        Mn = xp.matmul(Wb.T, xp.matmul(M, Wb))              # W̄ᵀ M W̄, (B, n_l, n_l)
        Mn = Mn * d1[:, :, None] * d1[:, None, :]
        idx = xp.arange(Mn.shape[1])
        Mn[:, idx, idx] += d2 * g
        M = 0.5 * (Mn + xp.swapaxes(Mn, 1, 2))
        delta = d1 * g
        out[l] = LayerCurvature(delta, M, a_tildes[l], zs[l])
    return out  # type: ignore[return-value]


def _forward_cache(weights: Sequence[Any], X: Any, activation: str, has_bias: Sequence[bool]) -> tuple[list[Any], list[Any]]:
    xp = backend.get_namespace(X)
    a = X
    zs, ats = [], []
    for l, W in enumerate(weights):
        at = xp.concatenate([a, xp.ones((a.shape[0], 1), dtype=a.dtype)], axis=1) if has_bias[l] else a
        z = at @ W.T
        ats.append(at)
        zs.append(z)
        if l < len(weights) - 1:
            a = activation_derivatives(activation, z, xp)[0]
    return zs, ats


def layer_curvature(weights: Sequence[Any], X: Any, y: Any, *, activation: str = "tanh",
                    loss: str = "cross_entropy") -> list[LayerCurvature]:
    """Exact per-sample layer factors ``(δ_l, M_l, ã_{l-1})`` of a dense network, batched.

    Parameters
    ----------
    weights : list of float arrays ``(n_l, m_l)``, ``m_l = n_{l-1} + 1`` (bias as last column)
        or ``n_{l-1}`` (no bias); NumPy or CuPy.
    X : ``(B, n_0)`` float; y : labels ``(B,)`` (cross_entropy) or targets ``(B, n_L)`` (mse).
    activation : tanh | relu | softplus | sigmoid | identity (hidden layers; the output is linear).
    loss : cross_entropy | mse (per-sample; the mean over the batch is the training loss).

    Returns a list of :class:`LayerCurvature` (float64), input layer first. Exact: the
    per-sample W_l–W_l Hessian block is ``M ⊗ ããᵀ`` to rounding (method inspired by arXiv
    2104.03804).
    """
    backend.check_float_array(X, "X", ndim=2)
    if X.shape[0] == 0:
        raise ValueError(f"X is an empty batch (shape {tuple(X.shape)}); need at least one sample")
    has_bias = _check_weights(weights, X.shape[1])
    get_activation(activation)
    Ws = [W.astype(np.float64) for W in weights]
    X64 = X.astype(np.float64)
    zs, ats = _forward_cache(Ws, X64, activation, has_bias)
    _, dL, ML = output_derivatives(zs[-1], y, loss)
    return backprop_curvature(Ws, zs, ats, dL, ML, activation)


def layer_hessian_factors(model: Any, params: Any, X: Any, y: Any) -> list[LayerCurvature]:
    """:func:`layer_curvature` for a reference :class:`~curvlab.models.mlp.MLP` and flat ``params``.

    Uses the model's public pieces: ``model.forward_cache`` (``z_l``, ``ã_{l-1}``),
    ``curvlab.models.activations.activation_derivatives`` and ``model.loss_output_derivatives``; the
    recursion then runs in float64 (:func:`backprop_curvature`).

    Examples
    --------
    >>> import numpy as np
    >>> from curvlab.models.mlp import MLP
    >>> model = MLP([4, 3, 2], activation="tanh", loss="cross_entropy")
    >>> p = model.init_params(np.random.default_rng(0))
    >>> f = layer_hessian_factors(model, p, np.ones((2, 4)), np.array([0, 1]))
    >>> f[0].M.shape
    (2, 3, 3)
    """
    cache = model.forward_cache(params, X)
    zs = [z.astype(np.float64) for z in cache.z]
    ats = [a.astype(np.float64) for a in cache.a_tilde]
    Ws = [W.astype(np.float64) for W in model.layout.unpack(params)]
    _, dL, ML = model.loss_output_derivatives(zs[-1], y, hessian=True)
    return backprop_curvature(Ws, zs, ats, dL, ML, model.activation)


def layer_hessian_block(factors: LayerCurvature, lam: float = 0.0) -> Any:
    """The mean-loss layer block ``(1/B) Σ_b M_b ⊗ ã_b ã_bᵀ + λI`` as a
    :class:`~curvlab.linalg.kronecker.KroneckerSumBlock` (exact spectrum and solves)."""
    from ..linalg.kronecker import KroneckerSumBlock  # noqa: PLC0415

    return KroneckerSumBlock(factors.M, factors.a, lam)
