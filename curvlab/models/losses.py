"""Output losses as objects: value, output gradient, output Hessian and bound constants.

A :class:`Loss` is a per-sample loss ``ℓ(z, y)`` of the network output ``z`` ``(B, K)``;
the training loss is the batch mean. It gives

* :meth:`Loss.per_sample` — ``(ℓ_b, ∂ℓ_b/∂z, ∂²ℓ_b/∂z²)`` per sample (no 1/B);
* :meth:`Loss.mean_head` — the batch-mean loss, ``δ_L = ∂(mean)/∂z`` and the auxiliary
  array that :meth:`Loss.hessian_times` uses to apply the per-sample output Hessian to
  tangents ``(..., B, K)`` without forming it;
* the global constants used by the rigorous layer smoothness bound of DSGD
  (method inspired by arXiv 1708.00523): ``hessian_bound = sup‖∂²ℓ/∂z²‖₂`` and ``gradient_bound =
  sup‖∂ℓ/∂z‖₂`` (``math.inf`` where there is none).

``cross_entropy``: softmax cross-entropy with integer labels ``(B,)``, log-sum-exp stable,
``ℓ = logsumexp(z) − z_y``, ``∂ℓ/∂z = p − e_y``, ``∂²ℓ/∂z² = diag(p) − p pᵀ``
(‖·‖₂ ≤ 1/2, ‖p − e_y‖₂ ≤ √2). ``mse``: ``ℓ = ½‖z − y‖²`` with targets ``(B, K)``,
gradient ``z − y``, Hessian ``I`` (bound 1; the gradient is unbounded).

>>> import numpy as np
>>> ell, g, M = get_loss("mse").per_sample(np.ones((2, 3)), np.zeros((2, 3)))
>>> ell
array([1.5, 1.5])
>>> get_loss("cross_entropy").hessian_bound
0.5
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backend

__all__ = ["LOSSES", "Loss", "get_loss", "log_softmax", "loss_output_derivatives"]

#: supported loss names
LOSSES = ("cross_entropy", "mse")


def log_softmax(zL: Any, xp: types.ModuleType | None = None) -> Any:
    """Row-wise ``log softmax`` of ``(B, K)`` logits (max-shifted; new array)."""
    xp = backend.get_namespace(zL) if xp is None else xp
    m = xp.max(zL, axis=1, keepdims=True)
    sh = zL - m
    lse = xp.log(xp.sum(xp.exp(sh), axis=1, keepdims=True))
    sh -= lse
    return sh


@dataclass(frozen=True)
class Loss:
    """One per-sample output loss (see the module docstring).

    Attributes
    ----------
    name : str
        One of :data:`LOSSES`.
    min_outputs : int
        The smallest output width ``K`` the loss accepts (2 for cross-entropy).
    hessian_bound, gradient_bound : float
        ``sup‖∂²ℓ/∂z²‖₂`` and ``sup‖∂ℓ/∂z‖₂`` (``math.inf``: unbounded).
    """

    name: str
    min_outputs: int
    hessian_bound: float
    gradient_bound: float

    def per_sample(self, zL: Any, y: Any, xp: types.ModuleType | None = None, *,
                   hessian: bool = True) -> tuple[Any, Any, Any | None]:
        """Per-sample loss ``(B,)``, output gradient ``(B, K)`` and output Hessian
        ``(B, K, K)`` (``None`` with ``hessian=False``); no 1/B factor. ``y`` is trusted
        (validated by the caller)."""
        if xp is None:
            xp = backend.get_namespace(zL)
        B, K = zL.shape
        if self.name == "cross_entropy":
            logp = log_softmax(zL, xp)
            rows = xp.arange(B)
            ell = -logp[rows, y]
            p = xp.exp(logp)
            g = p.copy()
            g[rows, y] -= 1
            M = None
            if hessian:
                M = -p[:, :, None] * p[:, None, :]
                M[:, xp.arange(K), xp.arange(K)] += p
            return ell, g, M
        r = zL - y
        ell = 0.5 * xp.sum(r * r, axis=1)
        M = None
        if hessian:
            M = xp.broadcast_to(xp.eye(K, dtype=zL.dtype), (B, K, K)).copy()
        return ell, r, M

    def mean_head(self, zL: Any, y: Any, xp: types.ModuleType | None = None) -> tuple[Any, Any, Any]:
        """``(mean loss as a 0-d float64 array, δ_L = ∂(mean loss)/∂z_L (B, K), aux)``.

        ``aux`` (for :meth:`hessian_times`) is the softmax ``p`` for cross-entropy, ``None``
        for mse. The mean is reduced in float64; ``δ_L`` is in ``zL``'s dtype. No host sync.
        """
        if xp is None:
            xp = backend.get_namespace(zL)
        B = zL.shape[0]
        if self.name == "cross_entropy":
            logp = log_softmax(zL, xp)
            rows = xp.arange(B)
            loss = -xp.sum(logp[rows, y], dtype=np.float64) / B
            p = xp.exp(logp, out=logp)
            delta = p.copy()
            delta[rows, y] -= 1
            delta *= 1.0 / B
            return loss, delta, p
        r = zL - y
        loss = 0.5 * xp.sum(r * r, dtype=np.float64) / B
        r *= 1.0 / B
        return loss, r, None

    def hessian_times(self, aux: Any, U: Any) -> Any:
        """Per-sample output Hessian times tangents ``U`` ``(..., B, K)`` (no 1/B; new array);
        ``aux`` from :meth:`mean_head`."""
        if self.name == "mse":
            return U.copy()
        p = aux
        pu = (p * U).sum(axis=-1, keepdims=True)
        out = p * U
        out -= p * pu
        return out


_OBJECTS = {
    "cross_entropy": Loss("cross_entropy", 2, 0.5, math.sqrt(2.0)),
    "mse": Loss("mse", 1, 1.0, math.inf),
}


def get_loss(loss: str | Loss) -> Loss:
    """The :class:`Loss` named ``loss`` (an object passes through); ``ValueError`` listing
    :data:`LOSSES` otherwise."""
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str) or loss not in _OBJECTS:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return _OBJECTS[loss]


def loss_output_derivatives(
    loss: str, zL: Any, y: Any, xp: types.ModuleType | None = None, *, hessian: bool = True
) -> tuple[Any, Any, Any | None]:
    """Per-sample loss, output gradient and output Hessian (no 1/B factor).

    Parameters
    ----------
    loss : "cross_entropy" or "mse"
    zL : (B, K) network outputs.
    y : (B,) integer labels (cross-entropy) or (B, K) targets (mse); trusted.

    Returns
    -------
    ell : (B,) per-sample losses ``ℓ_b``
    g : (B, K) ``∂ℓ_b/∂z`` (cross-entropy: ``p − e_y``; mse: ``z − y``)
    M : (B, K, K) ``∂²ℓ_b/∂z²`` (cross-entropy: ``diag(p) − p pᵀ``; mse: ``I``),
        or ``None`` with ``hessian=False``.

    >>> import numpy as np
    >>> ell, g, M = loss_output_derivatives("mse", np.ones((2, 3)), np.zeros((2, 3)))
    >>> ell
    array([1.5, 1.5])
    """
    return get_loss(loss).per_sample(zL, y, xp, hessian=hessian)
