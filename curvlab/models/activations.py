"""Hidden-layer activations as objects: value, derivatives, in-place forms and bounds.

An :class:`Activation` gives, elementwise on NumPy or CuPy arrays,

* ``value(z)`` = σ(z) and ``derivatives(z)`` = ``(σ, σ', σ'')``;
* the in-place forms the reference MLP streams its passes with: ``value_(z)``
  (overwrites ``z`` with σ(z)), ``d1_from_output(a)`` = σ'(z) and
  ``d2_from_output(a, d1)`` = σ''(z) computed from the output ``a = σ(z)``
  (``None`` when σ'' ≡ 0);
* the global bounds ``sup_d1 = sup|σ'|`` and ``sup_d2 = sup|σ''|`` used by the rigorous
  layer smoothness constants of DSGD (method inspired by arXiv 1708.00523):
  tanh (1, 4/(3√3)), sigmoid (1/4, 1/(6√3)), softplus (1, 1/4), identity (1, 0),
  relu (1, ∞: not twice differentiable).

Formulas: tanh σ' = 1 − t², σ'' = −2t(1 − t²); sigmoid s = (1 + tanh(z/2))/2 (no
overflow), σ' = s(1 − s), σ'' = σ'(1 − 2s); softplus σ = log(1 + eᶻ), σ' = sigmoid(z) =
−expm1(−σ), σ'' = σ'(1 − σ'); relu σ' = 1 for z > 0 else 0 (the left derivative at the
kink), σ'' = 0; identity 1 and 0.

>>> import numpy as np
>>> act = get_activation("tanh")
>>> act.derivatives(np.zeros(2))[1]
array([1., 1.])
>>> round(act.sup_d2, 9), activation_derivative_bounds("sigmoid")[0]
(0.769800359, 0.25)
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from .. import backend

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "get_activation",
    "activation_derivatives",
    "activation_derivative_bounds",
    "sigmoid",
]

#: supported activation names
ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "identity")

_SQRT3 = math.sqrt(3.0)


def sigmoid(z: Any, xp: types.ModuleType | None = None) -> Any:
    """The logistic function as ``0.5 * (1 + tanh(z / 2))`` (stable for all z; new array)."""
    xp = backend.get_namespace(z) if xp is None else xp
    s = xp.tanh(z * 0.5)
    s += 1
    s *= 0.5
    return s


@dataclass(frozen=True)
class Activation:
    """One hidden activation σ (see the module docstring for the formulas).

    Attributes
    ----------
    name : str
        One of :data:`ACTIVATIONS`.
    sup_d1, sup_d2 : float
        ``sup_z |σ'(z)|`` and ``sup_z |σ''(z)|`` (``math.inf`` for relu's σ'').
    """

    name: str
    sup_d1: float
    sup_d2: float

    @property
    def twice_differentiable(self) -> bool:
        """Whether σ is C² with bounded σ'' (false for relu)."""
        return math.isfinite(self.sup_d2)

    @property
    def has_d2(self) -> bool:
        """Whether :meth:`d2_from_output` returns an array (σ'' not identically zero)."""
        return self.name in ("tanh", "sigmoid", "softplus")

    def tangent_step(self, a: Any, z1: Any, s1: Any, q: Any, xp: types.ModuleType, *,
                     S: Any = None, z2: Any = None) -> tuple[Any, Any | None]:
        """The elementwise work of a hidden layer in a tangent (dᵀHd) pass, in place.

        ``a = σ(z)`` and the tangent ``z1 = z'`` given; writes ``s1 = σ'(z)`` and
        ``z1 ← a' = σ' z'``, and either (``S`` given, adjoint mode) ``q = σ''(z) z'²`` and
        ``S = a + a'``, or (``S`` None, forward mode) ``a'' = σ' z'' + σ'' z'²`` into ``z2``
        when given, else into ``q``. Returns ``(q or None, a'' or None)``: ``q`` is None
        when σ'' ≡ 0 (adjoint mode), ``a''`` is None when it is zero (forward mode). One
        Numba pass for tanh on C-contiguous NumPy arrays; NumPy ufuncs otherwise.
        """
        if (self.name == "tanh" and xp is np and a.ndim == 2
                and all(x is None or (isinstance(x, np.ndarray) and x.flags.c_contiguous and x.shape == a.shape
                                      and x.dtype == a.dtype) for x in (a, z1, s1, q, S, z2))):
            if S is not None:
                _tanh_tangent(a, z1, s1, q, S, a, 1)
                return q, None
            if z2 is not None:
                _tanh_tangent(a, z1, s1, q, a, z2, 2)
                return None, z2
            _tanh_tangent(a, z1, s1, q, a, q, 3)
            return None, q
        s1 = self.d1_from_output(a, xp, out=s1)
        qq = self.d2_from_output(a, s1, xp, out=q)
        if qq is not None:
            qq *= z1
            qq *= z1
        z1 *= s1
        if S is not None:
            xp.add(a, z1, out=S)
            return qq, None
        if z2 is not None:
            z2 *= s1
            if qq is not None:
                z2 += qq
            return None, z2
        return None, qq

    def bounds(self) -> tuple[float, float]:
        """``(sup|σ'|, sup|σ''|)``; ``ValueError`` for an activation that is not C² (relu)."""
        if not self.twice_differentiable:
            names = sorted(a.name for a in _OBJECTS.values() if a.twice_differentiable)
            raise ValueError(f"activation must be one of {names} for the smoothness bound "
                             f"(ReLU is not twice differentiable), got {self.name!r}")
        return self.sup_d1, self.sup_d2

    def derivatives(self, z: Any, xp: types.ModuleType | None = None) -> tuple[Any, Any, Any]:
        """``(σ(z), σ'(z), σ''(z))`` elementwise, new arrays shaped like ``z``."""
        if xp is None:
            xp = backend.get_namespace(z)
        name = self.name
        if name == "tanh":
            s = xp.tanh(z)
            ds = 1 - s * s
            return s, ds, -2 * s * ds
        if name == "sigmoid":
            s = sigmoid(z, xp)
            ds = s * (1 - s)
            return s, ds, ds * (1 - 2 * s)
        if name == "softplus":
            s = xp.logaddexp(z, 0)
            ds = sigmoid(z, xp)
            return s, ds, ds * (1 - ds)
        if name == "relu":
            s = xp.maximum(z, 0)
            ds = (z > 0).astype(z.dtype)
            return s, ds, xp.zeros_like(z)
        return z.copy(), xp.ones_like(z), xp.zeros_like(z)

    def value(self, z: Any, xp: types.ModuleType | None = None) -> Any:
        """σ(z) as a new array (the same numbers as :meth:`value_` and :meth:`derivatives`)."""
        return self.value_(z.copy(), xp)

    def value_(self, z: Any, xp: types.ModuleType | None = None) -> Any:
        """Overwrite the pre-activation ``z`` with ``σ(z)`` and return it."""
        if xp is None:
            xp = backend.get_namespace(z)
        name = self.name
        if name == "tanh":
            return xp.tanh(z, out=z)
        if name == "relu":
            return xp.maximum(z, 0, out=z)
        if name == "softplus":
            return xp.logaddexp(z, 0, out=z)
        if name == "sigmoid":
            z *= 0.5
            xp.tanh(z, out=z)
            z += 1
            z *= 0.5
            return z
        return z

    def d1_from_output(self, a: Any, xp: types.ModuleType | None = None, out: Any = None) -> Any:
        """σ'(z) computed from the activation output ``a = σ(z)`` (into ``out`` when given,
        an array shaped like ``a`` not aliasing it; else a new array)."""
        if xp is None:
            xp = backend.get_namespace(a)
        if out is None:
            out = xp.empty_like(a)
        name = self.name
        if name == "tanh":
            xp.multiply(a, a, out=out)
            xp.subtract(1, out, out=out)
        elif name == "sigmoid":
            xp.subtract(1, a, out=out)
            out *= a
        elif name == "softplus":
            # a = log(1 + e^z)  =>  sigmoid(z) = 1 - e^{-a} = -expm1(-a)
            xp.negative(a, out=out)
            xp.expm1(out, out=out)
            xp.negative(out, out=out)
        elif name == "relu":
            xp.greater(a, 0, out=out)
        else:
            out[...] = 1
        return out

    def d2_from_output(self, a: Any, d1: Any, xp: types.ModuleType | None = None, out: Any = None) -> Any | None:
        """σ''(z) from ``a = σ(z)`` and ``d1 = σ'(z)`` (into ``out`` when given, aliasing
        neither; else one new array); ``None`` when σ'' ≡ 0."""
        if xp is None:
            xp = backend.get_namespace(a)
        name = self.name
        if not self.has_d2:
            return None
        if out is None:
            out = xp.empty_like(a)
        if name == "tanh":
            xp.multiply(a, d1, out=out)
            out *= -2
        elif name == "sigmoid":
            xp.multiply(a, -2, out=out)
            out += 1
            out *= d1
        else:
            xp.subtract(1, d1, out=out)
            out *= d1
        return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _tanh_tangent(a: Any, z1: Any, s1: Any, q: Any, S: Any, z2: Any, mode: int) -> None:  # pragma: no cover - compiled
    """One pass over a tanh layer's arrays (all C-contiguous 2-D of one shape):
    ``s1 = 1 − a²``, ``q = σ'' z1² = −2 a s1 z1²``, then by ``mode``: 1: ``z1 ← s1 z1``,
    ``S ← a + z1``; 2: ``z2 ← s1 z2 + q``, ``z1 ← s1 z1``; 3: ``z2 ← q``, ``z1 ← s1 z1``."""
    B, n = a.shape
    for i in range(B):
        for j in range(n):
            t = a[i, j]
            d = 1 - t * t
            u = z1[i, j]
            qq = -2 * t * d * u * u
            s1[i, j] = d
            v = d * u
            z1[i, j] = v
            if mode == 1:
                q[i, j] = qq
                S[i, j] = t + v
            elif mode == 2:
                z2[i, j] = d * z2[i, j] + qq
            else:
                z2[i, j] = qq


_OBJECTS = {
    "tanh": Activation("tanh", 1.0, 4.0 / (3.0 * _SQRT3)),
    "relu": Activation("relu", 1.0, math.inf),
    "softplus": Activation("softplus", 1.0, 0.25),
    "sigmoid": Activation("sigmoid", 0.25, 1.0 / (6.0 * _SQRT3)),
    "identity": Activation("identity", 1.0, 0.0),
}


def get_activation(activation: str | Activation) -> Activation:
    """The :class:`Activation` named ``activation`` (an object passes through);
    ``ValueError`` listing :data:`ACTIVATIONS` otherwise."""
    if isinstance(activation, Activation):
        return activation
    if not isinstance(activation, str) or activation not in _OBJECTS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return _OBJECTS[activation]


def activation_derivatives(name: str, z: Any, xp: types.ModuleType | None = None) -> tuple[Any, Any, Any]:
    """Return ``(σ(z), σ'(z), σ''(z))`` elementwise, arrays shaped like ``z``
    (:meth:`Activation.derivatives` of ``get_activation(name)``).

    >>> import numpy as np
    >>> s, ds, d2s = activation_derivatives("tanh", np.zeros(2))
    >>> ds
    array([1., 1.])
    """
    return get_activation(name).derivatives(z, xp)


def activation_derivative_bounds(activation: str) -> tuple[float, float]:
    """``(s1, s2) = (sup|σ'|, sup|σ''|)``: tanh (1, 4/(3√3)), sigmoid (1/4, 1/(6√3)),
    softplus (1, 1/4), identity (1, 0). ReLU has no finite ``s2`` (not C²): ValueError.

    >>> round(activation_derivative_bounds("tanh")[1], 9)
    0.769800359
    """
    if not isinstance(activation, str) or activation not in _OBJECTS or not _OBJECTS[activation].twice_differentiable:
        names = sorted(a.name for a in _OBJECTS.values() if a.twice_differentiable)
        raise ValueError(f"activation must be one of {names} for the smoothness bound "
                         f"(ReLU is not twice differentiable), got {activation!r}")
    return _OBJECTS[activation].bounds()
