"""Reference multilayer perceptron in plain arrays with exact curvature products.

A dense network ``z_l = W_l ã_{l-1}``, ``a_l = σ(z_l)`` (``l < L``), output
``z_L``, in a notation inspired by arXiv 2104.03804: the bias is
folded in as the **last column** of ``W_l`` (shape ``(n_l, n_{l-1} + 1)``),
``ã = [a; 1]``, and the flat parameter vector stacks ``vec(W_1), …, vec(W_L)``
with row-major ``vec`` (``vec(W)[i*m + j] = W[i, j]``).

Everything is exact and hand-derived (no finite differences, no autodiff
framework), and the same code runs on NumPy and CuPy arrays:

* loss and gradient by backpropagation, per-sample gradients;
* Hessian-vector products by Pearlmutter's R-operator (Pearlmutter 1994), with a ``matmat`` that
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

Modules: this one holds the model, its input checks, forward pass, loss head, gradient
and per-sample gradients; the curvature products live in
:mod:`curvlab.models.mlp_products` (:class:`~curvlab.models.mlp_products.MLPProducts`,
mixed into :class:`MLP`), the activations and losses in :mod:`curvlab.models.activations`
and :mod:`curvlab.models.losses`, the per-layer Hessian factors in
:mod:`curvlab.models.layer_hessians`, and the model bound to ``(params, data)`` as a
:class:`curvlab.sources.CurvatureSource` in :class:`curvlab.models.MLPCurvature`.

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

Scratch arrays
--------------
The passes (gradient, curvature products, ``dᵀHd``) draw their layer-sized temporaries from
a per-thread workspace that the model keeps between calls (NumPy only), so a call does not
page-fault megabytes of fresh buffers: a few layer-sized arrays per kind of pass stay
allocated (``clear_workspace()`` releases them). Results are always new arrays.

NaN policy
----------
``nan_policy="propagate"`` (default): NaN or Inf in ``params`` or ``X`` flows
through: the loss is ``nan`` and the gradient and curvature products contain
NaN. Nothing is checked, so no host synchronisation is added on the GPU.
``nan_policy="raise"``: every public method first checks ``params`` and ``X``
and raises ``FloatingPointError`` naming the argument.

Examples
--------
>>> import numpy as np
>>> from curvlab.models.mlp import MLP, hessian_operator
>>> model = MLP([4, 5, 3], activation="tanh", loss="cross_entropy")
>>> rng = np.random.default_rng(0)
>>> params = model.init_params(rng)
>>> X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, size=8)
>>> loss, grad = model.loss_and_grad(params, X, y)
>>> grad.shape, model.layout.names
((43,), ('W1', 'W2'))
>>> H = hessian_operator(model, params, X, y)
>>> v = rng.standard_normal(43)
>>> bool(np.allclose(H @ v, model.hvp(params, X, y, v)))
True
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .. import backend
from ..layout import Layout
from ._common import ThreadWorkspaces, Workspace, matmul_into, positive_int, refuse_foreign
from .activations import ACTIVATIONS, activation_derivatives, get_activation
from .layer_hessians import backprop_curvature
from .losses import LOSSES, get_loss, loss_output_derivatives
from .mlp_products import MLPProducts, fisher_operator, ggn_operator, hessian_operator

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "MLP",
    "dense_layout",
    "ForwardCache",
    "activation_derivatives",
    "loss_output_derivatives",
    "hessian_operator",
    "ggn_operator",
    "fisher_operator",
]


def dense_layout(shapes: Sequence[tuple[int, int]], names: Sequence[str] | None = None, dtype: Any = None) -> Layout:
    """The :class:`~curvlab.layout.Layout` of dense layers ``(n_l, m_l)`` named ``W1..WL``.

    Layer ``l`` (1-based name ``"W{l}"``) occupies ``flat[offsets[l-1] : offsets[l]]`` as a
    row-major ``(n_l, m_l)`` matrix (bias = last column). Unlike a general
    :class:`~curvlab.layout.Layout`, every shape must be a pair of positive integers.

    >>> lay = dense_layout([(3, 5), (2, 4)])
    >>> lay.size, lay.offsets, lay.names
    (23, (0, 15, 23), ('W1', 'W2'))
    >>> import numpy as np
    >>> flat = np.arange(23.0)
    >>> lay.unpack(flat)[1][0]
    array([15., 16., 17., 18.])
    """
    if isinstance(shapes, (str, bytes)) or not hasattr(shapes, "__iter__"):
        raise TypeError(f"shapes must be a sequence of (n, m) pairs of positive integers, got {shapes!r}")
    pairs = []
    for i, shp in enumerate(shapes):
        if not isinstance(shp, (tuple, list)) or len(shp) != 2:
            raise ValueError(f"shapes[{i}] must be a pair (n, m) of positive integers, got {shp!r}")
        pairs.append(tuple(positive_int(d, f"shapes[{i}]") for d in shp))
    if names is None:
        names = [f"W{i + 1}" for i in range(len(pairs))]
    if len(names) != len(pairs):
        raise ValueError(f"names has {len(names)} entries, expected {len(pairs)} (one per shape)")
    return Layout(names, pairs, dtype)


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
class MLP(MLPProducts):
    """Dense network ``sizes = [n_0, …, n_L]`` with exact derivatives (see module doc).

    The curvature products (``hvp``, ``ggn_matmat``, ``curvature``, ...) come from
    :class:`~curvlab.models.mlp_products.MLPProducts`.

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
    (((4, 4), (2, 5)), 26)
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
        sizes = [positive_int(s, f"sizes[{i}]") for i, s in enumerate(sizes)]
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least two positive widths, got {sizes}")
        act = get_activation(activation)
        objective = get_loss(loss)
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dt not in backend.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        if nan_policy not in ("propagate", "raise"):
            raise ValueError(f"nan_policy must be 'propagate' or 'raise', got {nan_policy!r}")
        if sizes[-1] < objective.min_outputs:
            raise ValueError(f"{loss} needs at least {objective.min_outputs} outputs, got sizes[-1] = {sizes[-1]}")
        self.sizes = sizes
        #: the hidden activation's name and its :class:`~curvlab.models.activations.Activation`
        self.activation, self.act = act.name, act
        #: the loss's name and its :class:`~curvlab.models.losses.Loss`
        self.loss_name, self.objective = objective.name, objective
        self.dtype = dt
        self.xp = xp
        self.nan_policy = nan_policy
        self.layout = dense_layout([(sizes[i + 1], sizes[i] + 1) for i in range(len(sizes) - 1)], dtype=dt)

    # -- basic properties ------------------------------------------------------
    @property
    def n_params(self) -> int:
        return self.layout.size

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def label(self) -> str:
        """A short name, ``"MLP[4-5-3, tanh, cross_entropy]"`` (used in operator reprs)."""
        return f"MLP[{'-'.join(map(str, self.sizes))}, {self.activation}, {self.loss_name}]"

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
        refuse_foreign(params, "params", xp)
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
        refuse_foreign(X, "X", xp)
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
        refuse_foreign(y, "y", xp)
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

    def check_inputs(self, params: Any, X: Any, y: Any) -> tuple[list[Any], Any, Any]:
        """Checked ``(layer views of params, X, y)``; ``y`` is required (``TypeError`` for None).

        ``X`` and ``y`` come back cast to the model's dtype where they are real floats. Host
        syncs: 1 for cross-entropy labels (their range); more under ``nan_policy="raise"``.
        """
        Ws = self._check_params(params)
        X = self._check_X(X)
        y = self._check_y(y, X.shape[0])
        return Ws, X, y

    def _check_dir(self, v: Any, name: str, ndim: int) -> Any:
        xp = self.xp
        refuse_foreign(v, name, xp)
        if backend.get_namespace(v) is not xp or not hasattr(v, "dtype"):
            raise TypeError(f"{name} must be a {xp.__name__} array, got {type(v).__module__}.{type(v).__name__}")
        if v.dtype.kind != "f":
            raise TypeError(f"{name} must be a real float32/float64 array, got dtype {v.dtype}")
        want = f"({self.n_params},)" if ndim == 1 else f"({self.n_params}, k)"
        if v.ndim != ndim or v.shape[0] != self.n_params:
            raise ValueError(f"{name} must have shape {want}, got {tuple(v.shape)}")
        return v.astype(self.dtype, copy=False)

    # -- scratch arrays ---------------------------------------------------------
    def _ws(self) -> Workspace:
        """This thread's scratch arrays for the passes (see :class:`~curvlab.models._common.Workspace`)."""
        wss = self.__dict__.get("_workspaces")
        if wss is None:
            wss = self._workspaces = ThreadWorkspaces(self.xp)
        return wss.get()

    def clear_workspace(self) -> None:
        """Release the scratch arrays that the passes keep from call to call (this thread's;
        NumPy only: a few layer-sized arrays per pass kind, reused so that each call does not
        page-fault fresh buffers)."""
        wss = self.__dict__.get("_workspaces")
        if wss is not None:
            wss.clear()

    # -- forward ---------------------------------------------------------------
    def _forward(self, Ws: list[Any], X: Any, ws: Workspace | None = None) -> tuple[list[Any], Any]:
        """Return the hidden activations ``[a_0 = X, a_1, …, a_{L-1}]`` and ``z_L`` (scratch
        arrays of ``ws`` when given, else new arrays)."""
        xp = self.xp
        ws = ws or Workspace(xp, reuse=False)
        acts = [X]
        a = X
        L = self.n_layers
        B = X.shape[0]
        for l, W in enumerate(Ws):
            z = ws.get(("a", l + 1), (B, W.shape[0]), self.dtype)
            matmul_into(a, W[:, :-1].T, z, xp)
            z += W[:, -1]
            if l < L - 1:
                a = self.act.value_(z, xp)
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
                a = self.act.value_(z.copy(), xp)
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
        factors = self._layer_factors(*self.check_inputs(params, X, y))
        return [(f.delta, f.M, f.a) for f in factors]

    def _layer_factors(self, Ws: list[Any], X: Any, y: Any) -> list[Any]:
        """:meth:`layer_hessian_factors` on checked inputs, as
        :class:`~curvlab.models.layer_hessians.LayerCurvature` records (model dtype; no host sync)."""
        cache = self._forward_cache(Ws, X)
        _, delta, M = loss_output_derivatives(self.loss_name, cache.output, y, self.xp)
        return backprop_curvature(Ws, cache.z, cache.a_tilde, delta, M, self.activation)

    def activation_derivatives(self, z: Any) -> tuple[Any, Any, Any]:
        """``(σ, σ', σ'')`` of this model's hidden activation at ``z``."""
        return activation_derivatives(self.activation, z, self.xp)

    def loss_output_derivatives(self, zL: Any, y: Any, hessian: bool = True) -> tuple[Any, Any, Any | None]:
        """Per-sample ``(ℓ_b, ∂ℓ_b/∂z_L, ∂²ℓ_b/∂z_L²)``; see :func:`loss_output_derivatives`."""
        y = self._check_y(y, zL.shape[0])
        return loss_output_derivatives(self.loss_name, zL, y, self.xp, hessian=hessian)

    # -- loss heads (batch mean) -----------------------------------------------
    def _head(self, zL: Any, y: Any) -> tuple[Any, Any, Any]:
        """(mean loss as 0-d array, δ_L = ∂(mean loss)/∂z_L, aux for H_L products); see
        :meth:`curvlab.models.losses.Loss.mean_head`."""
        return self.objective.mean_head(zL, y, self.xp)

    def _hL(self, aux: Any, U: Any) -> Any:
        """Per-sample output Hessian times ``U`` (..., B, K) (no 1/B)."""
        return self.objective.hessian_times(aux, U)

    def loss(self, params: Any, X: Any, y: Any) -> float:
        """Batch-mean loss (a Python float)."""
        return float(self._loss(*self.check_inputs(params, X, y)))

    def _loss(self, Ws: list[Any], X: Any, y: Any) -> Any:
        """The batch-mean loss on checked inputs as a 0-d float64 array (no host sync)."""
        _, zL = self._forward(Ws, X, self._ws())
        return self._head(zL, y)[0]

    def per_sample_losses(self, params: Any, X: Any, y: Any) -> Any:
        """Per-sample losses ``(B,)``."""
        Ws, X, y = self.check_inputs(params, X, y)
        _, zL = self._forward(Ws, X)
        return loss_output_derivatives(self.loss_name, zL, y, self.xp, hessian=False)[0]

    # -- gradient --------------------------------------------------------------
    def _deltas(self, Ws: list[Any], acts: list[Any], delta: Any, ws: Workspace | None = None) -> Iterator[tuple[int, Any]]:
        """Yield ``(l, δ_l)`` for ``l = L-1, …, 0`` (0-based) from ``δ_L``:
        ``δ_{l-1} = σ'(z_{l-1}) ⊙ δ_l W̄_l``, computed after the consumer has used ``δ_l``
        (scratch arrays of ``ws`` when given)."""
        xp, dt = self.xp, self.dtype
        ws = ws or Workspace(xp, reuse=False)
        for l in range(self.n_layers - 1, -1, -1):
            yield l, delta
            if l > 0:
                a = acts[l]
                g = ws.get(("g", l), a.shape, dt)
                matmul_into(delta, Ws[l][:, :-1], g, xp)
                g *= self.act.d1_from_output(a, xp, out=ws.get(("d1", l), a.shape, dt))
                delta = g

    def _backward(self, Ws: list[Any], acts: list[Any], delta: Any, grad: Any, ws: Workspace | None = None) -> None:
        """Backprop ``δ_L`` writing ``∇W_l = δ_lᵀ ã_{l-1}`` into ``grad``."""
        xp = self.xp
        gs = self.layout.unpack(grad)
        for l, delta in self._deltas(Ws, acts, delta, ws):
            matmul_into(delta.T, acts[l], gs[l][:, :-1], xp)
            xp.sum(delta, axis=0, out=gs[l][:, -1])

    def loss_and_grad(self, params: Any, X: Any, y: Any) -> tuple[float, Any]:
        """Batch-mean loss and its gradient ``(P,)`` by backpropagation, ``∇W_l = δ_l ã_{l-1}ᵀ``.

        >>> import numpy as np
        >>> m = MLP([2, 3, 2]); p = m.init_params(0)
        >>> f, g = m.loss_and_grad(p, np.ones((4, 2)), np.array([0, 1, 1, 0]))
        >>> g.shape
        (17,)
        """
        loss, grad = self._loss_and_grad(*self.check_inputs(params, X, y))
        return float(loss), grad

    def _loss_and_grad(self, Ws: list[Any], X: Any, y: Any) -> tuple[Any, Any]:
        """:meth:`loss_and_grad` on checked inputs; the loss as a 0-d array (no host sync)."""
        ws = self._ws()
        acts, zL = self._forward(Ws, X, ws)
        loss, delta, _ = self._head(zL, y)
        grad = self.xp.empty(self.n_params, dtype=self.dtype)
        self._backward(Ws, acts, delta, grad, ws)
        return loss, grad

    def grad(self, params: Any, X: Any, y: Any) -> Any:
        """The gradient ``(P,)`` only."""
        return self.loss_and_grad(params, X, y)[1]

    def per_sample_grads(self, params: Any, X: Any, y: Any) -> Any:
        """Gradients ``(B, P)`` of the per-sample losses ``ℓ_b``; their mean is the batch gradient."""
        return self._per_sample_grads(*self.check_inputs(params, X, y))

    def _per_sample_grads(self, Ws: list[Any], X: Any, y: Any) -> Any:
        """:meth:`per_sample_grads` on checked inputs (no host sync)."""
        xp = self.xp
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
