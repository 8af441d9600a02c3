"""Reference multilayer perceptron in plain arrays with exact curvature products.

A dense network ``z_l = W_l ã_{l-1}``, ``a_l = σ(z_l)`` (``l < L``), output
``z_L``, in the notation of arXiv 2104.03804 (method inspired by): the bias is
folded in as the **last column** of ``W_l`` (shape ``(n_l, n_{l-1} + 1)``),
``ã = [a; 1]``, and the flat parameter vector stacks ``vec(W_1), …, vec(W_L)``
with row-major ``vec`` (``vec(W)[i*m + j] = W[i, j]``).

Everything is exact and hand-derived (no finite differences, no autodiff
framework), and the same code runs on NumPy and CuPy arrays:

* loss and gradient by backpropagation, per-sample gradients;
* Hessian-vector products by Pearlmutter's R-operator, with a ``matmat`` that
  pushes a block of ``k`` vectors through one forward/backward pass (batched
  matrix products);
* generalized Gauss-Newton and empirical-Fisher products;
* the directional curvature ``c = dᵀ H d`` in the two modes of arXiv
  2210.14520 (method inspired by): **forward (Taylor) mode**, one extended
  forward pass carrying ``(z, z', z'')`` and storing nothing beyond the current
  layer, and **adjoint mode**, which reuses the backward pass's errors ``δ_l``
  and the stored first-order tangents and returns the gradient with ``c``;
* a dense Hessian (tests, small sizes) and :class:`~curvlab.linalg.operators.LinearOperator`
  views (:func:`hessian_operator`, :func:`ggn_operator`, :func:`fisher_operator`).

Conventions
-----------
``X`` has shape ``(B, n_0)``; ``y`` holds integer labels ``(B,)`` for
``loss="cross_entropy"`` (softmax cross-entropy, log-sum-exp stable) or targets
``(B, n_L)`` for ``loss="mse"`` (per-sample ``0.5 * ||z_L - y||²``). The loss is
the batch mean of the per-sample losses; all curvature matrices are those of
this mean.

Input policy
------------
``params`` must be a ``(P,)`` array of the model's backend and dtype
(``TypeError``/``ValueError`` naming ``params`` otherwise). ``X`` and the
direction arguments (``v``, ``V``, ``d``) are cast to the model dtype when they
are real floats (``X`` may also be integer data); complex inputs raise. An
empty batch raises ``ValueError``; labels outside ``[0, n_L)`` raise
``ValueError``; a backend mix raises ``TypeError``, and so do torch tensors,
JAX arrays and other foreign array types (convert them to NumPy/CuPy first, or
use :mod:`curvlab.adapters`). ``y`` is required by every method that evaluates
the loss (``None`` raises ``TypeError``).

Host syncs
----------
A direct call (``hvp``, ``ggn_matmat``, ``loss_and_grad``, ...) with
cross-entropy labels reads the labels' range once (1 host sync: one boolean).
The operators of :func:`hessian_operator`, :func:`ggn_operator` and
:func:`fisher_operator` check their bound data once when built; each of their
products then does **0 host syncs** (labels and data are not re-checked: do not
modify the bound arrays in place).

NaN policy
----------
``nan_policy="propagate"`` (default): NaN or Inf in ``params`` or ``X`` flows
through: the loss is ``nan`` and the gradient and curvature products contain
NaN. Nothing is checked, so no host synchronisation is added on the GPU.
``nan_policy="raise"``: every public method first checks ``params`` and ``X``
and raises ``FloatingPointError`` naming the argument.

Example
-------
>>> import numpy as np
>>> from curvlab.models.mlp import MLP, hessian_operator
>>> model = MLP([4, 5, 3], activation="tanh", loss="cross_entropy")
>>> rng = np.random.default_rng(0)
>>> params = model.init_params(rng)
>>> X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, size=8)
>>> loss, grad = model.loss_and_grad(params, X, y)
>>> grad.shape, model.layout.names
((43,), ['W1', 'W2'])
>>> H = hessian_operator(model, params, X, y)
>>> v = rng.standard_normal(43)
>>> bool(np.allclose(H @ v, model.hvp(params, X, y, v)))
True
"""

from __future__ import annotations

import operator
import types
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .. import backend
from ..linalg.operators import CallableOperator, LinearOperator

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "MLP",
    "ParamLayout",
    "ForwardCache",
    "activation_derivatives",
    "loss_output_derivatives",
    "hessian_operator",
    "ggn_operator",
    "fisher_operator",
]

#: supported activation names
ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "identity")
#: supported loss names
LOSSES = ("cross_entropy", "mse")


# ---------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------
def _check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _sigmoid(z: Any, xp: types.ModuleType) -> Any:
    # 0.5 * (1 + tanh(z / 2)): stable for all z, no overflow
    s = xp.tanh(z * 0.5)
    s += 1
    s *= 0.5
    return s


def activation_derivatives(name: str, z: Any, xp: types.ModuleType | None = None) -> tuple[Any, Any, Any]:
    """Return ``(σ(z), σ'(z), σ''(z))`` elementwise, arrays shaped like ``z``.

    ``tanh``: σ' = 1 − t², σ'' = −2t(1 − t²); ``sigmoid``: σ' = s(1 − s),
    σ'' = σ'(1 − 2s); ``softplus`` σ = log(1 + eᶻ), σ' = sigmoid(z),
    σ'' = σ'(1 − σ'); ``relu``: σ'(z) = 1 for z > 0 else 0 (the left derivative
    at the kink), σ'' = 0; ``identity``: 1 and 0.

    >>> import numpy as np
    >>> s, ds, d2s = activation_derivatives("tanh", np.zeros(2))
    >>> ds
    array([1., 1.])
    """
    _check_activation(name)
    if xp is None:
        xp = backend.get_namespace(z)
    if name == "tanh":
        s = xp.tanh(z)
        ds = 1 - s * s
        return s, ds, -2 * s * ds
    if name == "sigmoid":
        s = _sigmoid(z, xp)
        ds = s * (1 - s)
        return s, ds, ds * (1 - 2 * s)
    if name == "softplus":
        s = xp.logaddexp(z, 0)
        ds = _sigmoid(z, xp)
        return s, ds, ds * (1 - ds)
    if name == "relu":
        s = xp.maximum(z, 0)
        ds = (z > 0).astype(z.dtype)
        return s, ds, xp.zeros_like(z)
    return z.copy(), xp.ones_like(z), xp.zeros_like(z)


def _act_inplace(name: str, z: Any, xp: types.ModuleType) -> Any:
    """Overwrite the pre-activation ``z`` with ``σ(z)`` and return it."""
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


def _dact_from_output(name: str, a: Any, xp: types.ModuleType) -> Any:
    """σ'(z) computed from the activation output ``a = σ(z)`` (new array)."""
    if name == "tanh":
        d = a * a
        xp.subtract(1, d, out=d)
        return d
    if name == "sigmoid":
        return a * (1 - a)
    if name == "softplus":
        # a = log(1 + e^z)  =>  sigmoid(z) = 1 - e^{-a} = -expm1(-a)
        d = xp.negative(a)
        xp.expm1(d, out=d)
        xp.negative(d, out=d)
        return d
    if name == "relu":
        return (a > 0).astype(a.dtype)
    return xp.ones_like(a)


def _d2act_from_output(name: str, a: Any, ds: Any, xp: types.ModuleType) -> Any | None:
    """σ''(z) from ``a = σ(z)`` and ``ds = σ'(z)`` (one new array); ``None`` when it is zero."""
    if name == "tanh":
        t = a * ds
        t *= -2
        return t
    if name == "sigmoid":
        t = a * -2
        t += 1
        t *= ds
        return t
    if name == "softplus":
        t = xp.subtract(1, ds)
        t *= ds
        return t
    return None


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------
def _log_softmax(zL: Any, xp: types.ModuleType) -> Any:
    m = xp.max(zL, axis=1, keepdims=True)
    sh = zL - m
    lse = xp.log(xp.sum(xp.exp(sh), axis=1, keepdims=True))
    sh -= lse
    return sh


def loss_output_derivatives(
    loss: str, zL: Any, y: Any, xp: types.ModuleType | None = None, *, hessian: bool = True
) -> tuple[Any, Any, Any | None]:
    """Per-sample loss, output gradient and output Hessian (no 1/B factor).

    Parameters
    ----------
    loss : "cross_entropy" or "mse"
    zL : (B, K) network outputs.
    y : (B,) integer labels (cross-entropy) or (B, K) targets (mse).

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
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if xp is None:
        xp = backend.get_namespace(zL)
    B, K = zL.shape
    if loss == "cross_entropy":
        logp = _log_softmax(zL, xp)
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


# ---------------------------------------------------------------------------
# parameter layout
# ---------------------------------------------------------------------------
def _positive_int(v: Any, name: str) -> int:
    """``v`` as an ``int >= 1``; ``TypeError`` for non-integers (2.9, True), ``ValueError`` below 1."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a positive integer, got the bool {v!r}")
    try:
        i = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be a positive integer, got {v!r} ({type(v).__name__})") from None
    if i < 1:
        raise ValueError(f"{name} must be a positive integer, got {i}")
    return i


def _refuse_foreign(x: Any, name: str, xp: types.ModuleType) -> None:
    """``TypeError`` for torch tensors, JAX arrays and other non-NumPy/CuPy array objects."""
    if x is None or isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)) or backend.is_cupy_array(x):
        return
    if hasattr(x, "__dlpack__") or hasattr(x, "__array_namespace__") or hasattr(x, "shape"):
        raise TypeError(
            f"{name} must be a {xp.__name__} array, got {type(x).__module__}.{type(x).__name__}; convert it first "
            "(torch: t.detach().cpu().numpy(), JAX: numpy.asarray(a)) or use curvlab.adapters for framework models"
        )


class ParamLayout:
    """Shapes, offsets and names of the layer matrices inside a flat vector.

    Layer ``l`` (1-based name ``"W{l}"``) occupies
    ``flat[offsets[l-1] : offsets[l-1] + n_l*m_l]`` as a row-major ``(n_l, m_l)``
    matrix (bias = last column).

    >>> lay = ParamLayout([(3, 5), (2, 4)])
    >>> lay.size, lay.offsets, lay.names
    (23, [0, 15], ['W1', 'W2'])
    >>> import numpy as np
    >>> flat = np.arange(23.0)
    >>> lay.unpack(flat)[1][0]
    array([15., 16., 17., 18.])
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], names: Sequence[str] | None = None) -> None:
        if isinstance(shapes, (str, bytes)) or not hasattr(shapes, "__iter__"):
            raise TypeError(f"shapes must be a sequence of (n, m) pairs of positive integers, got {shapes!r}")
        self.shapes = []
        for i, shp in enumerate(shapes):
            if not isinstance(shp, (tuple, list)) or len(shp) != 2:
                raise ValueError(f"shapes[{i}] must be a pair (n, m) of positive integers, got {shp!r}")
            n, m = (_positive_int(d, f"shapes[{i}]") for d in shp)
            self.shapes.append((n, m))
        if names is None:
            names = [f"W{i + 1}" for i in range(len(self.shapes))]
        if len(names) != len(self.shapes):
            raise ValueError(f"names has {len(names)} entries, expected {len(self.shapes)} (one per shape)")
        self.names = list(names)
        self.offsets: list[int] = []
        off = 0
        for n, m in self.shapes:
            self.offsets.append(off)
            off += n * m
        self.size = off

    def __len__(self) -> int:
        return len(self.shapes)

    def slice(self, l: int) -> slice:
        """The slice of layer ``l`` (0-based) in the flat vector."""
        n, m = self.shapes[l]
        return slice(self.offsets[l], self.offsets[l] + n * m)

    def _check_flat(self, flat: Any, name: str) -> None:
        shp = tuple(getattr(flat, "shape", ()))
        if len(shp) not in (1, 2) or shp[0] != self.size:
            raise ValueError(f"{name} must have shape ({self.size},) or ({self.size}, k), got {shp}")

    def unpack(self, flat: Any) -> list[Any]:
        """Views ``[W_1, …, W_L]`` of a ``(P,)`` vector (or ``(n, m, k)`` views of ``(P, k)``)."""
        self._check_flat(flat, "flat")
        out = []
        for l, (n, m) in enumerate(self.shapes):
            blk = flat[self.slice(l)]
            out.append(blk.reshape((n, m) + tuple(flat.shape[1:])))
        return out

    def pack(self, mats: Sequence[Any]) -> Any:
        """Concatenate layer matrices (shapes as ``self.shapes``) into a flat vector."""
        if len(mats) != len(self.shapes):
            raise ValueError(f"mats has {len(mats)} arrays, expected {len(self.shapes)}")
        for i, (Wm, shp) in enumerate(zip(mats, self.shapes)):
            if tuple(Wm.shape) != shp:
                raise ValueError(f"mats[{i}] ({self.names[i]}) has shape {tuple(Wm.shape)}, expected {shp}")
        xp = backend.get_namespace(*mats)
        return xp.concatenate([xp.reshape(Wm, (-1,)) for Wm in mats])

    def __repr__(self) -> str:
        return f"ParamLayout(shapes={self.shapes}, size={self.size})"


@dataclass
class ForwardCache:
    """What the forward pass computed, per layer ``l = 1..L`` (list index ``l-1``).

    z : list of (B, n_l) pre-activations ``z_l`` (``z[-1]`` is the output ``z_L``)
    a_tilde : list of (B, m_l) layer inputs ``ã_{l-1} = [a_{l-1}, 1]`` (bias 1 appended)
    """

    z: list[Any]
    a_tilde: list[Any]

    @property
    def output(self) -> Any:
        return self.z[-1]


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------
def _matmul_into(a: Any, b: Any, out: Any, xp: types.ModuleType) -> None:
    """``out[...] = a @ b`` without a temporary on NumPy."""
    if xp is np:
        np.matmul(a, b, out=out)
    else:
        out[...] = xp.matmul(a, b)


class MLP:
    """Dense network ``sizes = [n_0, …, n_L]`` with exact derivatives (see module doc).

    Parameters
    ----------
    sizes : layer widths, at least two entries, all positive.
    activation : "tanh", "relu", "softplus", "sigmoid" or "identity" (hidden layers;
        the output layer is linear).
    loss : "cross_entropy" (integer labels) or "mse".
    dtype : float32 or float64 (the dtype of ``params`` and of every result).
    xp : numpy or cupy.
    nan_policy : "propagate" (default) or "raise"; see the module docstring.

    >>> import numpy as np
    >>> m = MLP([3, 4, 2], loss="mse")
    >>> m.layout.shapes, m.n_params
    ([(4, 4), (2, 5)], 26)
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "tanh",
        loss: str = "cross_entropy",
        dtype: Any = np.float64,
        xp: types.ModuleType = np,
        nan_policy: str = "propagate",
    ) -> None:
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise TypeError(f"sizes must be a sequence of positive integers, got {type(sizes).__name__}")
        sizes = [_positive_int(s, f"sizes[{i}]") for i, s in enumerate(sizes)]
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least two positive widths, got {sizes}")
        _check_activation(activation)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dt not in backend.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        if nan_policy not in ("propagate", "raise"):
            raise ValueError(f"nan_policy must be 'propagate' or 'raise', got {nan_policy!r}")
        if loss == "cross_entropy" and sizes[-1] < 2:
            raise ValueError(f"cross_entropy needs at least 2 outputs, got sizes[-1] = {sizes[-1]}")
        self.sizes = sizes
        self.activation = activation
        self.loss_name = loss
        self.dtype = dt
        self.xp = xp
        self.nan_policy = nan_policy
        self.layout = ParamLayout([(sizes[i + 1], sizes[i] + 1) for i in range(len(sizes) - 1)])

    # -- basic properties ------------------------------------------------------
    @property
    def n_params(self) -> int:
        return self.layout.size

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def __repr__(self) -> str:
        return (
            f"MLP({self.sizes}, activation={self.activation!r}, loss={self.loss_name!r}, "
            f"dtype={self.dtype}, xp={self.xp.__name__})"
        )

    def init_params(self, rng: Any = None, scale: str = "glorot") -> Any:
        """Random parameters ``(P,)``: Glorot-uniform weights, zero biases.

        ``scale="he"`` uses a He-normal for ReLU nets. Drawn with a NumPy
        generator (``rng`` or seed), then moved to the model's backend, so NumPy
        and CuPy models with the same seed start from the same point.
        """
        rng = backend.default_rng(rng)
        mats = []
        for n, m in self.layout.shapes:
            fan_in = m - 1
            if scale == "he":
                Wb = rng.standard_normal((n, fan_in)) * np.sqrt(2.0 / fan_in)
            elif scale == "glorot":
                lim = np.sqrt(6.0 / (fan_in + n))
                Wb = rng.uniform(-lim, lim, size=(n, fan_in))
            else:
                raise ValueError(f"scale must be 'glorot' or 'he', got {scale!r}")
            mats.append(np.concatenate([Wb, np.zeros((n, 1))], axis=1))
        flat = np.concatenate([Wm.ravel() for Wm in mats]).astype(self.dtype)
        return self.xp.asarray(flat)

    # -- validation ------------------------------------------------------------
    def _check_params(self, params: Any) -> list[Any]:
        xp = self.xp
        _refuse_foreign(params, "params", xp)
        if backend.get_namespace(params) is not xp or not hasattr(params, "dtype"):
            raise TypeError(
                f"params must be a {xp.__name__} array, got {type(params).__module__}.{type(params).__name__}"
            )
        if np.dtype(params.dtype) != self.dtype:
            raise TypeError(f"params must have dtype {self.dtype} (the model's dtype), got {np.dtype(params.dtype)}")
        if tuple(params.shape) != (self.n_params,):
            raise ValueError(f"params must have shape ({self.n_params},), got {tuple(params.shape)}")
        if self.nan_policy == "raise":
            backend.check_finite(params, "params")
        return self.layout.unpack(params)

    def _check_X(self, X: Any) -> Any:
        xp = self.xp
        _refuse_foreign(X, "X", xp)
        if backend.get_namespace(X) is not xp:
            raise TypeError(f"X must be a {xp.__name__} array, got {type(X).__module__}.{type(X).__name__}")
        X = backend.as_float_array(X, "X", dtype=self.dtype, xp=xp)
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(f"X must have shape (B, {self.sizes[0]}), got {tuple(X.shape)}")
        if X.shape[0] == 0:
            raise ValueError(f"X is an empty batch (shape {tuple(X.shape)}); need at least one sample")
        if self.nan_policy == "raise":
            backend.check_finite(X, "X")
        return X

    def _check_y(self, y: Any, B: int) -> Any:
        xp = self.xp
        if y is None:
            raise TypeError("y is required: integer labels (B,) for cross_entropy or targets (B, n_L) for mse, got None")
        _refuse_foreign(y, "y", xp)
        if backend.get_namespace(y) is not xp:
            raise TypeError(f"y must be a {xp.__name__} array, got {type(y).__module__}.{type(y).__name__}")
        y = xp.asarray(y)
        K = self.sizes[-1]
        if self.loss_name == "cross_entropy":
            if y.dtype.kind not in "iu":
                raise TypeError(f"y must hold integer class labels for cross_entropy, got dtype {y.dtype}")
            if tuple(y.shape) != (B,):
                raise ValueError(f"y must have shape ({B},) to match X, got {tuple(y.shape)}")
            self._check_labels(y)
            return y
        if y.ndim == 1 and K == 1:
            y = y[:, None]
        if tuple(y.shape) != (B, K):
            raise ValueError(f"y must have shape ({B}, {K}) to match X and the output width, got {tuple(y.shape)}")
        return backend.as_float_array(y, "y", dtype=self.dtype, xp=xp)

    def _check_labels(self, y: Any) -> None:
        """Labels in ``[0, n_L)``; one host sync (a boolean), two more only to word the error."""
        xp, K = self.xp, self.sizes[-1]
        if bool(xp.any((y < 0) | (y >= K))):
            lo, hi = int(y.min()), int(y.max())
            raise ValueError(f"y labels must lie in [0, {K - 1}], got values in [{lo}, {hi}]")

    def _check_inputs(self, params: Any, X: Any, y: Any) -> tuple[list[Any], Any, Any]:
        """Checked ``(layer views of params, X, y)``; ``y`` is required (``TypeError`` for None)."""
        Ws = self._check_params(params)
        X = self._check_X(X)
        y = self._check_y(y, X.shape[0])
        return Ws, X, y

    def _check_dir(self, v: Any, name: str, ndim: int) -> Any:
        xp = self.xp
        _refuse_foreign(v, name, xp)
        if backend.get_namespace(v) is not xp or not hasattr(v, "dtype"):
            raise TypeError(f"{name} must be a {xp.__name__} array, got {type(v).__module__}.{type(v).__name__}")
        if v.dtype.kind != "f":
            raise TypeError(f"{name} must be a real float32/float64 array, got dtype {v.dtype}")
        want = f"({self.n_params},)" if ndim == 1 else f"({self.n_params}, k)"
        if v.ndim != ndim or v.shape[0] != self.n_params:
            raise ValueError(f"{name} must have shape {want}, got {tuple(v.shape)}")
        return v.astype(self.dtype, copy=False)

    # -- forward ---------------------------------------------------------------
    def _forward(self, Ws: list[Any], X: Any) -> tuple[list[Any], Any]:
        """Return the hidden activations ``[a_0 = X, a_1, …, a_{L-1}]`` and ``z_L``."""
        xp = self.xp
        acts = [X]
        a = X
        L = self.n_layers
        for l, W in enumerate(Ws):
            z = a @ W[:, :-1].T
            z += W[:, -1]
            if l < L - 1:
                a = _act_inplace(self.activation, z, xp)
                acts.append(a)
            else:
                return acts, z
        raise AssertionError("unreachable")

    def forward(self, params: Any, X: Any) -> Any:
        """Network output ``z_L``, shape ``(B, n_L)``.

        >>> import numpy as np
        >>> m = MLP([2, 3, 2]); p = m.init_params(0)
        >>> m.forward(p, np.ones((5, 2))).shape
        (5, 2)
        """
        Ws = self._check_params(params)
        X = self._check_X(X)
        return self._forward(Ws, X)[1]

    def forward_cache(self, params: Any, X: Any) -> ForwardCache:
        """Per-layer ``z_l`` (B, n_l) and ``ã_{l-1}`` (B, m_l) with the bias 1 appended.

        >>> import numpy as np
        >>> m = MLP([2, 3, 2]); c = m.forward_cache(m.init_params(0), np.ones((5, 2)))
        >>> [t.shape for t in c.a_tilde], [t.shape for t in c.z]
        ([(5, 3), (5, 4)], [(5, 3), (5, 2)])
        """
        Ws = self._check_params(params)
        X = self._check_X(X)
        return self._forward_cache(Ws, X)

    def _forward_cache(self, Ws: list[Any], X: Any) -> ForwardCache:
        xp = self.xp
        B = X.shape[0]
        zs, ats = [], []
        a = X
        for l, W in enumerate(Ws):
            at = xp.empty((B, a.shape[1] + 1), dtype=self.dtype)
            at[:, :-1] = a
            at[:, -1] = 1
            ats.append(at)
            z = at @ W.T
            zs.append(z)
            if l < self.n_layers - 1:
                a = _act_inplace(self.activation, z.copy(), xp)
        return ForwardCache(z=zs, a_tilde=ats)

    def layer_hessian_factors(self, params: Any, X: Any, y: Any) -> list[tuple[Any, Any, Any]]:
        """Per-sample layer Hessian factors ``[(δ_l, M_l, ã_{l-1}) for l = 1..L]``.

        For the per-sample loss ℓ_b (no 1/B): ``δ_l`` (B, n_l) = ∂ℓ_b/∂z_l,
        ``M_l`` (B, n_l, n_l) = ∂²ℓ_b/∂z_l², ``ã_{l-1}`` (B, m_l). The layer's gradient
        block is ``δ_l ã_{l-1}ᵀ`` and its exact per-sample Hessian block is
        ``M_l ⊗ ã ãᵀ`` (row-major vec). Recursion (method inspired by arXiv 2104.03804):
        ``δ_l = σ'(z_l) ⊙ W̄_{l+1}ᵀ δ_{l+1}`` and
        ``M_l = D W̄_{l+1}ᵀ M_{l+1} W̄_{l+1} D + diag(σ''(z_l) ⊙ W̄_{l+1}ᵀ δ_{l+1})``,
        ``D = diag(σ'(z_l))`` (:func:`curvlab.models.layer_hessians.backprop_curvature`, in the
        model's dtype; ``M_l`` symmetrised). Memory O(B Σ n_l²): meant for narrow layers.

        >>> import numpy as np
        >>> m = MLP([3, 4, 2]); p = m.init_params(0)
        >>> f = m.layer_hessian_factors(p, np.ones((5, 3)), np.zeros(5, dtype=int))
        >>> [t.shape for t in f[0]]
        [(5, 4), (5, 4, 4), (5, 4)]
        """
        from .layer_hessians import backprop_curvature  # noqa: PLC0415 (layer_hessians imports this module)

        Ws, X, y = self._check_inputs(params, X, y)
        cache = self._forward_cache(Ws, X)
        _, delta, M = loss_output_derivatives(self.loss_name, cache.output, y, self.xp)
        factors = backprop_curvature(Ws, cache.z, cache.a_tilde, delta, M, self.activation)
        return [(f.delta, f.M, f.a) for f in factors]

    def activation_derivatives(self, z: Any) -> tuple[Any, Any, Any]:
        """``(σ, σ', σ'')`` of this model's hidden activation at ``z``."""
        return activation_derivatives(self.activation, z, self.xp)

    def loss_output_derivatives(self, zL: Any, y: Any, hessian: bool = True) -> tuple[Any, Any, Any | None]:
        """Per-sample ``(ℓ_b, ∂ℓ_b/∂z_L, ∂²ℓ_b/∂z_L²)``; see :func:`loss_output_derivatives`."""
        y = self._check_y(y, zL.shape[0])
        return loss_output_derivatives(self.loss_name, zL, y, self.xp, hessian=hessian)

    # -- loss heads (batch mean) -----------------------------------------------
    def _head(self, zL: Any, y: Any) -> tuple[Any, Any, Any]:
        """Return (mean loss as 0-d array, δ_L = ∂(mean loss)/∂z_L, aux for H_L products).

        aux is the softmax ``p`` for cross-entropy, ``None`` for mse.
        """
        xp = self.xp
        B = zL.shape[0]
        if self.loss_name == "cross_entropy":
            logp = _log_softmax(zL, xp)
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

    def _hL(self, aux: Any, U: Any) -> Any:
        """Per-sample output Hessian times ``U`` (..., B, K) (no 1/B)."""
        if self.loss_name == "mse":
            return U.copy()
        p = aux
        pu = (p * U).sum(axis=-1, keepdims=True)
        out = p * U
        out -= p * pu
        return out

    def loss(self, params: Any, X: Any, y: Any) -> float:
        """Batch-mean loss (a Python float)."""
        Ws, X, y = self._check_inputs(params, X, y)
        _, zL = self._forward(Ws, X)
        return float(self._head(zL, y)[0])

    def per_sample_losses(self, params: Any, X: Any, y: Any) -> Any:
        """Per-sample losses ``(B,)``."""
        Ws, X, y = self._check_inputs(params, X, y)
        _, zL = self._forward(Ws, X)
        return loss_output_derivatives(self.loss_name, zL, y, self.xp, hessian=False)[0]

    # -- gradient --------------------------------------------------------------
    def _deltas(self, Ws: list[Any], acts: list[Any], delta: Any) -> Iterator[tuple[int, Any]]:
        """Yield ``(l, δ_l)`` for ``l = L-1, …, 0`` (0-based) from ``δ_L``:
        ``δ_{l-1} = σ'(z_{l-1}) ⊙ δ_l W̄_l``, computed after the consumer has used ``δ_l``."""
        for l in range(self.n_layers - 1, -1, -1):
            yield l, delta
            if l > 0:
                g = delta @ Ws[l][:, :-1]
                g *= _dact_from_output(self.activation, acts[l], self.xp)
                delta = g

    def _backward(self, Ws: list[Any], acts: list[Any], delta: Any, grad: Any) -> None:
        """Backprop ``δ_L`` writing ``∇W_l = δ_lᵀ ã_{l-1}`` into ``grad``."""
        xp = self.xp
        gs = self.layout.unpack(grad)
        for l, delta in self._deltas(Ws, acts, delta):
            _matmul_into(delta.T, acts[l], gs[l][:, :-1], xp)
            xp.sum(delta, axis=0, out=gs[l][:, -1])

    def loss_and_grad(self, params: Any, X: Any, y: Any) -> tuple[float, Any]:
        """Batch-mean loss and its gradient ``(P,)`` by backpropagation, ``∇W_l = δ_l ã_{l-1}ᵀ``.

        >>> import numpy as np
        >>> m = MLP([2, 3, 2]); p = m.init_params(0)
        >>> f, g = m.loss_and_grad(p, np.ones((4, 2)), np.array([0, 1, 1, 0]))
        >>> g.shape
        (17,)
        """
        Ws, X, y = self._check_inputs(params, X, y)
        acts, zL = self._forward(Ws, X)
        loss, delta, _ = self._head(zL, y)
        grad = self.xp.empty(self.n_params, dtype=self.dtype)
        self._backward(Ws, acts, delta, grad)
        return float(loss), grad

    def grad(self, params: Any, X: Any, y: Any) -> Any:
        """The gradient ``(P,)`` only."""
        return self.loss_and_grad(params, X, y)[1]

    def per_sample_grads(self, params: Any, X: Any, y: Any) -> Any:
        """Gradients ``(B, P)`` of the per-sample losses ``ℓ_b``; their mean is the batch gradient."""
        xp = self.xp
        Ws, X, y = self._check_inputs(params, X, y)
        acts, zL = self._forward(Ws, X)
        B = X.shape[0]
        _, delta, _ = self._head(zL, y)
        delta *= B
        G = xp.empty((B, self.n_params), dtype=self.dtype)
        for l, delta in self._deltas(Ws, acts, delta):
            n, m = self.layout.shapes[l]
            blk = G[:, self.layout.slice(l)].reshape(B, n, m)
            blk[:, :, :-1] = delta[:, :, None] * acts[l][:, None, :]
            blk[:, :, -1] = delta
        return G

    # -- tangent (R-operator) machinery -----------------------------------------
    def _split_block(self, V: Any) -> list[Any]:
        """(P, k) -> list of (k, n_l, m_l) contiguous layer blocks."""
        VT = self.xp.ascontiguousarray(V.T)
        k = V.shape[1]
        return [VT[:, self.layout.slice(l)].reshape(k, n, m) for l, (n, m) in enumerate(self.layout.shapes)]

    def _tangent_forward(self, Ws: list[Any], X: Any, Vs: list[Any], keep_rz: bool) -> tuple:
        """Primal forward plus tangents ``R(z_l)`` (k, B, n_l) along the k directions.

        Returns acts (a_0..a_{L-1}), ds (σ'(z_l) for hidden l), Ras (R(a_l), None for l=0),
        Rzs (hidden R(z_l) if keep_rz), zL, RzL.
        """
        xp = self.xp
        L = self.n_layers
        k = Vs[0].shape[0]
        B = X.shape[0]
        acts, ds, Ras, Rzs = [X], [], [None], []
        a, Ra = X, None
        for l in range(L):
            W, V = Ws[l], Vs[l]
            Wb = W[:, :-1]
            z = a @ Wb.T
            z += W[:, -1]
            Rz = xp.matmul(a, V[:, :, :-1].transpose(0, 2, 1))  # (k, B, n)
            Rz += V[:, None, :, -1]
            if Ra is not None:
                Rz += (Ra.reshape(k * B, -1) @ Wb.T).reshape(k, B, -1)
            if l == L - 1:
                return acts, ds, Ras, Rzs, z, Rz
            a = _act_inplace(self.activation, z, xp)
            d1 = _dact_from_output(self.activation, a, xp)
            Ra = Rz * d1
            acts.append(a)
            ds.append(d1)
            Ras.append(Ra)
            if keep_rz:
                Rzs.append(Rz)
        raise AssertionError("unreachable")

    def _checked_block(self, params: Any, X: Any, y: Any, V: Any) -> tuple[list[Any], Any, Any, Any]:
        """Checked ``(Ws, X, y, V)`` for the unchecked block products ``_*_mm``."""
        Ws, X, y = self._check_inputs(params, X, y)
        return Ws, X, y, self._check_dir(V, "V", 2)

    def _vp(self, matmat: Any, params: Any, X: Any, y: Any, v: Any) -> Any:
        """A matrix-vector product through the block product ``matmat`` on one column."""
        v = self._check_dir(v, "v", 1)
        return matmat(params, X, y, v[:, None])[:, 0]

    def _write_block(self, out: Any, l: int, Rd: Any, a: Any, extra: Any = None) -> None:
        """out[:, layer l] = Rdᵀ ã (+ extra in the weight part); Rd (k, B, n), a (B, m-1)."""
        xp = self.xp
        n, m = self.layout.shapes[l]
        k = Rd.shape[0]
        blk = out[:, self.layout.slice(l)].reshape(k, n, m)
        _matmul_into(Rd.transpose(0, 2, 1), a, blk[:, :, :-1], xp)
        if extra is not None:
            blk[:, :, :-1] += extra
        xp.sum(Rd, axis=1, out=blk[:, :, -1])

    def hvp_matmat(self, params: Any, X: Any, y: Any, V: Any) -> Any:
        """Exact Hessian times a block ``V`` (P, k) -> (P, k), one R-operator pass.

        Pearlmutter's R-operator on forward and backward passes; the k directions
        travel together as (k, B, n) tangents, so each layer costs a few batched
        matrix products whatever k is. Host syncs: 1 (the label range, cross-entropy);
        0 through :func:`hessian_operator`.
        """
        return self._hvp_mm(*self._checked_block(params, X, y, V))

    def _hvp_mm(self, Ws: list[Any], X: Any, y: Any, V: Any) -> Any:
        """:meth:`hvp_matmat` on checked inputs (no host sync)."""
        xp = self.xp
        Vs, k = self._split_block(V), V.shape[1]
        B = X.shape[0]
        acts, ds, Ras, Rzs, zL, RzL = self._tangent_forward(Ws, X, Vs, keep_rz=True)
        _, delta, aux = self._head(zL, y)
        Rd = self._hL(aux, RzL)
        Rd *= 1.0 / B
        out = xp.empty((k, self.n_params), dtype=self.dtype)
        for l in range(self.n_layers - 1, -1, -1):
            a, Ra = acts[l], Ras[l]
            extra = None if Ra is None else xp.matmul(delta.T, Ra)
            self._write_block(out, l, Rd, a, extra)
            if l > 0:
                Wb, Vb = Ws[l][:, :-1], Vs[l][:, :, :-1]
                g = delta @ Wb  # (B, m-1)
                Rg = (Rd.reshape(k * B, -1) @ Wb).reshape(k, B, -1)
                Rg += xp.matmul(delta, Vb)
                d1 = ds[l - 1]
                Rg *= d1
                d2 = _d2act_from_output(self.activation, acts[l], d1, xp)
                if d2 is not None:
                    Rg += Rzs[l - 1] * (d2 * g)
                g *= d1
                delta, Rd = g, Rg
        return out.T

    def hvp(self, params: Any, X: Any, y: Any, v: Any) -> Any:
        """Exact Hessian-vector product ``H v`` (P,) by the R-operator."""
        return self._vp(self.hvp_matmat, params, X, y, v)

    def ggn_matmat(self, params: Any, X: Any, y: Any, V: Any) -> Any:
        """Generalized Gauss-Newton ``Jᵀ (∇²_z L / B) J`` times ``V`` (P, k) -> (P, k).

        Host syncs: 1 (the label range, cross-entropy); 0 through :func:`ggn_operator`.
        """
        return self._ggn_mm(*self._checked_block(params, X, y, V))

    def _ggn_mm(self, Ws: list[Any], X: Any, y: Any, V: Any) -> Any:
        """:meth:`ggn_matmat` on checked inputs (no host sync)."""
        xp = self.xp
        Vs, k = self._split_block(V), V.shape[1]
        B = X.shape[0]
        acts, ds, _, _, zL, RzL = self._tangent_forward(Ws, X, Vs, keep_rz=False)
        _, _, aux = self._head(zL, y)
        Rd = self._hL(aux, RzL)
        Rd *= 1.0 / B
        out = xp.empty((k, self.n_params), dtype=self.dtype)
        for l in range(self.n_layers - 1, -1, -1):
            self._write_block(out, l, Rd, acts[l])
            if l > 0:
                Rg = (Rd.reshape(k * B, -1) @ Ws[l][:, :-1]).reshape(k, B, -1)
                Rg *= ds[l - 1]
                Rd = Rg
        return out.T

    def ggn_vp(self, params: Any, X: Any, y: Any, v: Any) -> Any:
        """GGN-vector product ``G v`` (P,)."""
        return self._vp(self.ggn_matmat, params, X, y, v)

    def fisher_matmat(self, params: Any, X: Any, y: Any, V: Any) -> Any:
        """Empirical Fisher ``(1/B) Σ_b g_b g_bᵀ`` times ``V`` (P, k), without forming the g_b.

        Host syncs: 1 (the label range, cross-entropy); 0 through :func:`fisher_operator`.
        """
        return self._fisher_mm(*self._checked_block(params, X, y, V))

    def _fisher_mm(self, Ws: list[Any], X: Any, y: Any, V: Any) -> Any:
        """:meth:`fisher_matmat` on checked inputs (no host sync)."""
        xp = self.xp
        Vs, k = self._split_block(V), V.shape[1]
        B = X.shape[0]
        acts, zL = self._forward(Ws, X)
        _, delta, _ = self._head(zL, y)
        delta *= B  # per-sample output errors
        deltas = [d for _, d in self._deltas(Ws, acts, delta)][::-1]
        # s[k, b] = g_b · v_k = Σ_l δ_{l,b}ᵀ V_l ã_b
        s = xp.zeros((k, B), dtype=self.dtype)
        for l in range(self.n_layers):
            T = xp.matmul(acts[l], Vs[l][:, :, :-1].transpose(0, 2, 1))
            T += Vs[l][:, None, :, -1]
            T *= deltas[l]
            s += T.sum(axis=2)
        s *= 1.0 / B
        out = xp.empty((k, self.n_params), dtype=self.dtype)
        for l in range(self.n_layers):
            self._write_block(out, l, deltas[l][None] * s[:, :, None], acts[l])
        return out.T

    def fisher_vp(self, params: Any, X: Any, y: Any, v: Any) -> Any:
        """Empirical-Fisher-vector product ``F v`` (P,)."""
        return self._vp(self.fisher_matmat, params, X, y, v)

    # -- directional curvature (arXiv 2210.14520 modes) ----------------------------
    def curvature(self, params: Any, X: Any, y: Any, d: Any, mode: str = "forward") -> float:
        """Directional curvature ``c = dᵀ H d`` of the batch-mean loss (Python float).

        ``mode="forward"``: Taylor mode, one extended forward pass carrying
        ``(z, z', z'')`` layer by layer and storing nothing beyond the current
        layer (memory ≈ the forward pass). ``mode="adjoint"``: reuses the backward
        errors δ_l and stored first-order tangents (see :meth:`grad_and_curvature`).
        Reductions accumulate in float64.
        """
        if mode == "forward":
            Ws, X, y = self._check_inputs(params, X, y)
            d = self._check_dir(d, "d", 1)
            return float(self._curvature_forward(Ws, X, y, d))
        if mode == "adjoint":
            return self.grad_and_curvature(params, X, y, d)[2]
        raise ValueError(f"mode must be 'forward' or 'adjoint', got {mode!r}")

    def _curvature_forward(self, Ws: list[Any], X: Any, y: Any, d: Any) -> Any:
        """Taylor mode: stream ``(z, z', z'')`` through the layers; keeps one layer alive.

        z'_l = W_l ã'_{l-1} + D_l ã_{l-1},  z''_l = W_l ã''_{l-1} + 2 D_l ã'_{l-1},
        a' = σ' z',  a'' = σ' z'' + σ'' z'²,  c = mean_b [∇L·z''_L + z'_Lᵀ ∇²L z'_L].
        Buffers are reused in place so the peak is ≈ 5 layer-sized arrays.
        """
        xp = self.xp
        act = self.activation
        Ds = self.layout.unpack(d)
        L = self.n_layers
        B = X.shape[0]
        W, D = Ws[0], Ds[0]
        z = X @ W[:, :-1].T
        z += W[:, -1]
        z1 = X @ D[:, :-1].T
        z1 += D[:, -1]
        z2 = None  # z'' of the first layer is zero (ã'_0 = ã''_0 = 0)
        for l in range(1, L):
            # hidden activation: z -> a, z' -> a' = σ' z', z'' -> a'' = σ' z'' + σ'' z'²
            a = _act_inplace(act, z, xp)
            s1 = _dact_from_output(act, a, xp)
            q = _d2act_from_output(act, a, s1, xp)
            if q is not None:
                q *= z1
                q *= z1
                if z2 is not None:
                    z2 *= s1
                    z2 += q
                    del q
                else:
                    z2 = q
            elif z2 is not None:
                z2 *= s1
            z1 *= s1
            del s1
            a1, a2 = z1, z2
            del z, z1, z2
            W, D = Ws[l], Ds[l]
            Wb, Db = W[:, :-1].T, D[:, :-1].T
            t = a @ Db  # D ã
            t += D[:, -1]
            z = a @ Wb
            z += W[:, -1]
            del a
            u = a1 @ Wb
            t += u  # t = z' of this layer
            w = a1 @ Db
            del a1
            w *= 2
            if a2 is not None:
                _matmul_into(a2, Wb, u, xp)
                del a2
                u += w
                del w
                z2 = u
            else:
                del u
                z2 = w
            z1 = t
            del t
        loss, delta, aux = self._head(z, y)
        c = xp.sum(z1 * self._hL(aux, z1), dtype=np.float64) / B
        if z2 is not None:
            c = c + xp.sum(delta * z2, dtype=np.float64)
        return c

    def grad_and_curvature(self, params: Any, X: Any, y: Any, d: Any) -> tuple[float, Any, float]:
        """Loss, gradient ``(P,)`` and ``c = dᵀ H d`` together (adjoint mode).

        Forward: primal ``z_l`` and first-order tangents ``z'_l = W_l ã'_{l-1} + D_l ã_{l-1}``
        with ``E_l = D_l ã'_{l-1}`` (stored per layer, like the activations).
        Backward: the usual δ_l, and, summed over the batch (δ_l holds the 1/B),

            c = Σ_l 2 δ_lᵀ E_l + Σ_{l<L} (W̄_{l+1}ᵀ δ_{l+1})ᵀ (σ''(z_l) ⊙ z'_l²)
                + z'_Lᵀ ∇²L z'_L / B.

        Method inspired by arXiv 2210.14520. The three products ``W ã``,
        ``W ã' + D ã`` and ``D ã'`` of a layer take three matrix products instead
        of four, like the "3M" complex product:
        ``z'_l = (W + D)(ã + ã') − W ã − D ã'``. To keep this cancellation benign,
        ``d`` is rescaled internally to ``d̂ = s d`` with ``max|d̂| = max|θ|`` (c is
        quadratic in d, so ``c = ĉ / s²``). Reductions in float64.

        >>> import numpy as np
        >>> m = MLP([3, 4, 2]); p = m.init_params(0); rng = np.random.default_rng(0)
        >>> X, y, d = rng.standard_normal((5, 3)), rng.integers(0, 2, 5), rng.standard_normal(26)
        >>> f, g, c = m.grad_and_curvature(p, X, y, d)
        >>> bool(np.isclose(c, d @ m.hvp(p, X, y, d)))
        True
        """
        xp = self.xp
        Ws, X, y = self._check_inputs(params, X, y)
        d = self._check_dir(d, "d", 1)
        # scale d to the parameters' magnitude (max-abs, device-side, no sync, no overflow)
        nd = xp.max(xp.abs(d))
        nt = xp.max(xp.abs(params))
        nt = xp.where(nt > 0, nt, 1)
        scale = xp.where(nd > 0, nt / xp.where(nd > 0, nd, 1), 1).astype(self.dtype)
        Ds = self.layout.unpack(d)  # unscaled views; ŝD is formed on the fly
        L = self.n_layers
        B = X.shape[0]
        act = self.activation
        acts = [X]
        Es: list[Any] = [None]  # D̂_l ã'_{l-1} (zero for the first layer)
        Qs: list[Any] = []  # σ''(z_l) ⊙ z'_l² for hidden layers (None when σ'' = 0)
        a, a1 = X, None
        for l in range(L):
            W, D = Ws[l], Ds[l]
            Wb, Db = W[:, :-1].T, D[:, :-1].T
            if a1 is None:
                z = a @ Wb
                z += W[:, -1]
                z1 = a @ Db
                z1 += D[:, -1]
                z1 *= scale
            else:
                WD = D * scale
                WD += W
                S = a + a1
                z1 = S @ WD[:, :-1].T  # = W ã + (W ã' + D̂ ã) + D̂ ã'
                z1 += WD[:, -1]
                del WD, S
                z = a @ Wb
                z += W[:, -1]
                E = a1 @ Db
                E *= scale
                z1 -= z
                z1 -= E
                Es.append(E)
            if l == L - 1:
                break
            a = _act_inplace(act, z, xp)
            s1 = _dact_from_output(act, a, xp)
            s2 = _d2act_from_output(act, a, s1, xp)
            if s2 is not None:
                s2 *= z1
                s2 *= z1
            Qs.append(s2)
            z1 *= s1
            del s1
            a1 = z1
            acts.append(a)
        loss, delta, aux = self._head(z, y)
        c = xp.sum(z1 * self._hL(aux, z1), dtype=np.float64) / B
        grad = xp.empty(self.n_params, dtype=self.dtype)
        gs = self.layout.unpack(grad)
        for l in range(L - 1, -1, -1):
            a = acts[l]
            _matmul_into(delta.T, a, gs[l][:, :-1], xp)
            xp.sum(delta, axis=0, out=gs[l][:, -1])
            if Es[l] is not None:
                c = c + 2 * xp.sum(delta * Es[l], dtype=np.float64)
                Es[l] = None
            if l > 0:
                g = delta @ Ws[l][:, :-1]
                if Qs[l - 1] is not None:
                    c = c + xp.sum(g * Qs[l - 1], dtype=np.float64)
                    Qs[l - 1] = None
                g *= _dact_from_output(act, a, xp)
                delta = g
        s64 = scale.astype(np.float64)
        c = c / (s64 * s64)
        return float(loss), grad, float(c)

    # -- dense (tests only) ----------------------------------------------------
    def dense_hessian(self, params: Any, X: Any, y: Any, block: int = 256) -> Any:
        """The exact ``(P, P)`` Hessian by R-operator products on identity blocks (small P).

        ``block`` (a positive integer) is the number of columns per product.
        """
        xp = self.xp
        block = _positive_int(block, "block")
        Ws, X, y = self._check_inputs(params, X, y)
        P = self.n_params
        H = xp.empty((P, P), dtype=self.dtype)
        for j in range(0, P, block):
            k = min(block, P - j)
            E = xp.zeros((P, k), dtype=self.dtype)
            E[xp.arange(j, j + k), xp.arange(k)] = 1
            H[:, j : j + k] = self._hvp_mm(Ws, X, y, E)
        return H


# ---------------------------------------------------------------------------
# operators
# ---------------------------------------------------------------------------
def _check_model(model: Any) -> MLP:
    if not isinstance(model, MLP):
        raise TypeError(f"model must be a curvlab.models.mlp.MLP, got {type(model).__name__}")
    return model


def _operator(model: MLP, params: Any, X: Any, y: Any, mm: Any, psd: bool) -> LinearOperator:
    """Bind checked data once (labels read here, 1 host sync); the products then do none.

    ``mm`` is one of the model's unchecked block products; the operator's own input check
    gives it ``(P, k)`` arrays of the model's backend and dtype.
    """
    Ws, X, y = model._check_inputs(params, X, y)  # fail early, naming the argument
    P = model.n_params
    return CallableOperator(
        lambda v: mm(Ws, X, y, v[:, None])[:, 0],
        shape=(P, P),
        dtype=model.dtype,
        matmat=lambda V: mm(Ws, X, y, V),
        symmetric=True,
        psd=psd,
        xp=model.xp,
    )


def hessian_operator(model: MLP, params: Any, X: Any, y: Any) -> LinearOperator:
    """The batch Hessian as a symmetric :class:`LinearOperator` (matmat = one R-operator pass).

    >>> import numpy as np, scipy.sparse.linalg as sla
    >>> m = MLP([3, 4, 2]); p = m.init_params(0); rng = np.random.default_rng(0)
    >>> H = hessian_operator(m, p, rng.standard_normal((6, 3)), rng.integers(0, 2, 6))
    >>> H.shape, H.symmetric
    ((26, 26), True)

    Host syncs: 1 when built (the labels' range, cross-entropy; plus the finiteness checks
    under ``nan_policy="raise"``), **0 per product** (matvec and matmat). The bound arrays are
    not re-checked: do not change them in place afterwards.
    """
    return _operator(model, params, X, y, _check_model(model)._hvp_mm, psd=False)


def ggn_operator(model: MLP, params: Any, X: Any, y: Any) -> LinearOperator:
    """The generalized Gauss-Newton matrix as a symmetric PSD :class:`LinearOperator`.

    Host syncs: as :func:`hessian_operator` (1 when built, 0 per product).
    """
    return _operator(model, params, X, y, _check_model(model)._ggn_mm, psd=True)


def fisher_operator(model: MLP, params: Any, X: Any, y: Any) -> LinearOperator:
    """The empirical Fisher ``(1/B) Σ g_b g_bᵀ`` as a symmetric PSD :class:`LinearOperator`.

    Host syncs: as :func:`hessian_operator` (1 when built, 0 per product).
    """
    return _operator(model, params, X, y, _check_model(model)._fisher_mm, psd=True)
