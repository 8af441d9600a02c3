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
  not checked again (no host sync when only the parameters change);
* **the product cache** (issue 14): the operator products keep, per batch, what does not
  depend on the vector — the forward activations, ``σ'``, the loss head's output
  derivatives and (once a Hessian or Fisher product asks) the backward errors ``δ_l`` and
  ``σ'' ⊙ W̄ᵀδ`` (a :class:`~curvlab.models.mlp_products.PrimalState`) — so a cached
  Hessian product is only the R-forward and R-backward passes and a cached GGN product only
  ``J v``, the output Hessian and ``Jᵀ``. Built at the first ``hessian()``/``ggn()``/
  ``fisher()`` product, shared by every operator of the source, bounded by ``cache_bytes``
  (default 1 GiB; ``0`` disables it, ``None`` lifts the bound; batches are cached in pass
  order while they fit, the rest recomputed at every product), emptied by ``at()``;
  ``cache_info()`` reports it. ``loss``, ``gradient``, ``directional_curvature`` and
  ``grad_and_curvature`` never build it. A stream of batches (a re-iterable or a callable,
  which may yield other samples at each pass) is never cached.

``data`` may also be **a whole dataset** (:mod:`curvlab.batches`): a list/tuple of batches,
a re-iterable of batches, or a zero-argument callable returning a fresh iterator. Every
value and product is then the exact sample average ``Σ_b (n_b/N) q_b`` (one pass over the
batches per ``loss``/``gradient``/matvec/matmat/``dᵀHd``), ``per_sample_gradients`` and
``layer_structure`` concatenate the per-sample records of all batches, and
``MLPCurvature(..., num_data=, check_deterministic=, progress=)`` check the sample count,
check that passes agree, and show a tqdm bar. One batch is computed exactly as before.

The bound arrays are not copied and not re-checked: do not modify them in place.

Examples
--------
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
>>> batches = [(X[:3], y[:3]), (X[3:], y[3:])]    # the same 8 samples as a dataset
>>> ds = MLPCurvature(model, src.params, batches)
>>> ds.hessian().description
'Hessian of MLP[4-5-3, tanh, cross_entropy] on 8 samples in 2 batches, P=43'
>>> bool(np.allclose(ds.hessian() @ d, src.hessian() @ d, rtol=1e-12, atol=0))
True
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Callable

from ..batches import Batches, as_batches
from ..sources import DEFAULT_CACHE_BYTES, DenseLayer, check_cache_bytes
from .mlp import MLP
from .mlp_products import _KINDS, Array, CurvatureOperator, PrimalState

class _ProductCache:
    """The :class:`PrimalState` of each batch of one source, in pass order, within ``limit``
    bytes. An entry is charged its full size (with the backward errors a Hessian product
    adds later) when it is kept; the first batch that does not fit closes the cache (it and
    every later batch are recomputed at each product). ``limit=0`` keeps nothing."""

    def __init__(self, limit: int | None, has_q: bool) -> None:
        self.limit = limit
        self.has_q = has_q
        self.entries: list[PrimalState] = []
        self.closed = limit == 0
        self.charged = 0
        self._lock = threading.Lock()

    def lookup(self, i: int, build: Callable[[], PrimalState]) -> PrimalState | None:
        """Batch ``i``'s cached state, built by ``build()`` when it is the next of the prefix
        (the first that does not fit is returned for this product but not kept); None for a
        batch that is not (and will not be) cached."""
        if i < len(self.entries):
            return self.entries[i]
        if self.closed or i != len(self.entries):
            return None
        st = build()
        n = st.full_nbytes(self.has_q)
        with self._lock:
            if i != len(self.entries):  # another thread kept it meanwhile
                return self.entries[i] if i < len(self.entries) else None
            if self.limit is not None and self.charged + n > self.limit:
                self.closed = True
                return st
            self.entries.append(st)
            self.charged += n
        return st

    def info(self, batches: int | None) -> dict[str, Any]:
        return {"bytes": int(sum(e.nbytes for e in self.entries)), "batches_cached": len(self.entries),
                "batches": int(batches or 0), "limit": self.limit}

__all__ = ["MLPCurvature", "FISHER_KINDS"]

#: the ``kind`` values of :meth:`MLPCurvature.fisher`
FISHER_KINDS = ("empirical", "true")


class MLPCurvature:
    """The reference MLP bound to ``params`` and ``data`` (one batch or a dataset): a curvature source.

    ``data`` is one batch ``(X, y)`` or a whole dataset of batches (see :mod:`curvlab.batches`).

    Parameters
    ----------
    model : MLP
    params : (P,) array
        Flat parameters of the model's backend and dtype (``model.layout``).
    data : one batch (X, y), or a dataset of batches
        ``X`` ``(B, n_0)``; ``y`` integer labels ``(B,)`` (cross-entropy) or targets
        ``(B, n_L)`` (mse). A dataset is a list/tuple of such batches, a re-iterable of them,
        a zero-argument callable returning a fresh iterator, or a
        :class:`curvlab.batches.Batches` (see :mod:`curvlab.batches`; a one-shot generator is
        refused). Every value and product is then the exact sample average over the dataset,
        ``Σ_b (n_b/N) q_b``.
    num_data : int, optional
        Total samples of a dataset, checked against every pass.
    check_deterministic : bool
        Check that every pass over a dataset yields the same first batch and batch sizes.
    progress : bool or dict
        A tqdm bar over the batches of each pass (silent by default).
    cache_bytes : int or None, default 2**30 (1 GiB)
        Bound on the product cache (see the module docstring): the bytes of forward
        passes and output derivatives kept between operator products; ``0`` disables it
        (every product recomputes the forward pass), ``None`` lifts the bound. ``at()``
        carries it over with an empty cache.

    Attributes
    ----------
    model : MLP
    layout : curvlab.layout.Layout
        ``model.layout`` (names ``W1..WL``, shapes ``(n_l, n_{l-1} + 1)``, bias last column).
    data : tuple or object
        The ``(X, y)`` given, or the dataset object given.
    batches : curvlab.batches.Batches
        The data as checked batches.

    Host syncs: 1 per batch when its labels are checked (cross-entropy; more under
    ``nan_policy="raise"``): **once when bound** for one batch or a list/tuple of batches
    (the checked batches are kept), **on every pass** for a re-iterable or a callable (a
    DataLoader yields new arrays each pass; nothing is cached, so nothing stale is used).
    0 per operator product beyond those; 1 for each method returning a Python float
    (``loss``, ``gradient``, ``directional_curvature``, ``grad_and_curvature``).
    """

    def __init__(self, model: MLP, params: Any, data: Any, *, num_data: int | None = None,
                 check_deterministic: bool = False, progress: Any = False,
                 cache_bytes: int | None = DEFAULT_CACHE_BYTES) -> None:
        if not isinstance(model, MLP):
            raise TypeError(f"model must be a curvlab.models.mlp.MLP, got {type(model).__name__}")
        limit = check_cache_bytes(cache_bytes)
        batches = as_batches(data, num_data=num_data, check_deterministic=check_deterministic, progress=progress)
        Ws = model._check_params(params)
        self._bind(model, params, Ws, batches.prepared(_checker(model)), limit)

    def _bind(self, model: MLP, params: Any, Ws: list[Array], batches: Batches, cache_bytes: int | None) -> None:
        self.model = model
        self.layout = model.layout
        self.batches = batches
        self.data = tuple(batches.data) if batches.kind == "batch" else batches.data
        self._params, self._Ws = params, Ws
        self._X: Array | None = None
        self._y: Array | None = None
        if batches.single:
            assert batches._cached is not None
            self._X, self._y = batches._cached[0]
        self.cache_bytes = cache_bytes
        # streams (re-iterables, callables) may yield other samples at each pass: not cached
        held = batches._cached is not None
        self._cache = _ProductCache(cache_bytes if held else 0, model.act.has_d2)

    @classmethod
    def _from_checked(cls, model: MLP, params: Any, Ws: list[Array], batches: Batches,
                      cache_bytes: int | None) -> "MLPCurvature":
        obj = cls.__new__(cls)
        obj._bind(model, params, Ws, batches, cache_bytes)
        return obj

    def cache_info(self) -> dict[str, Any]:
        """The product cache: ``{"bytes": int, "batches_cached": int, "batches": int,
        "limit": int | None}`` -- bytes held (the cached batches' forward passes and output
        derivatives), the cached prefix of batches, the batches of one pass (0 while a
        stream's count is unknown) and ``cache_bytes``. No host sync."""
        return self._cache.info(self.batches.num_batches)

    # -- basic -----------------------------------------------------------------
    @property
    def params(self) -> Any:
        """The bound flat parameters ``(P,)`` (the array given, not a copy)."""
        return self._params

    @property
    def n_samples(self) -> int | None:
        """Samples per pass ``N`` (the batch size ``B`` for one batch); None for a stream of
        batches before its first pass."""
        return self.batches.n_samples

    def __repr__(self) -> str:
        return f"MLPCurvature({self.model.label} on {self.batches.describe()}, P={self.layout.size})"

    def _mean(self, fn: Any) -> Any:
        """``fn(X, y)`` on one batch, or its sample-weighted mean over the dataset."""
        if self.batches.single:
            return fn(self._X, self._y)
        return self.batches.mean(lambda b: fn(*b))

    # -- values ----------------------------------------------------------------
    def loss(self) -> float:
        """The mean loss over the bound samples (a Python float; 1 host sync)."""
        return float(self._mean(lambda X, y: self.model._loss(self._Ws, X, y)))

    def gradient(self) -> tuple[float, Any]:
        """``(loss, g)``: the mean loss and its gradient ``(P,)`` by backpropagation."""
        loss, g = self._mean(lambda X, y: self.model._loss_and_grad(self._Ws, X, y))
        return float(loss), g

    def per_sample_gradients(self) -> Any:
        """Gradients ``(N, P)`` of the per-sample losses, batches concatenated in pass order
        (their mean is :meth:`gradient`'s ``g``)."""
        if self.batches.single:
            return self.model._per_sample_grads(self._Ws, self._X, self._y)
        return self.batches.concat(lambda b: self.model._per_sample_grads(self._Ws, *b))

    # -- operators -------------------------------------------------------------
    def _operator(self, kind: str) -> CurvatureOperator:
        label, meth, psd = _KINDS[kind]
        model, Ws, batches, cache = self.model, self._Ws, self.batches, self._cache
        one_shot = getattr(model, meth)  # _hvp_mm, _ggn_mm, _fisher_mm
        from_state = getattr(model, meth.replace("_mm", "_from"))  # _hvp_from, ...

        def product(i: int, X: Array, y: Array, V: Array) -> Array:
            st = cache.lookup(i, lambda: model._primal(Ws, X, y))
            return one_shot(Ws, X, y, V) if st is None else from_state(Ws, st, V)

        if batches.single:
            X, y = self._X, self._y
            assert X is not None and y is not None

            def mm(V: Array) -> Array:
                return product(0, X, y, V)
        else:
            def mm(V: Array) -> Array:
                count = itertools.count()
                return batches.mean(lambda b: product(next(count), b[0], b[1], V))

        P = model.n_params
        return CurvatureOperator(
            lambda v: mm(v[:, None])[:, 0],
            (P, P),
            model.dtype,
            matmat=mm,
            symmetric=True,
            psd=psd,
            xp=model.xp,
            description=f"{label} of {model.label} on {batches.describe()}, P={P}",
        )

    def hessian(self) -> CurvatureOperator:
        """The ``(P, P)`` Hessian of the mean loss (symmetric; R-operator products; one pass
        over the batches per matvec/matmat)."""
        return self._operator("hessian")

    def ggn(self) -> CurvatureOperator:
        """The generalized Gauss-Newton matrix ``Jᵀ (∇²_z L / N) J`` (symmetric PSD)."""
        return self._operator("ggn")

    def fisher(self, kind: str = "empirical") -> CurvatureOperator:
        """A Fisher matrix of the mean loss (symmetric PSD).

        ``kind="empirical"``: ``(1/N) Σ_i g_i g_iᵀ`` with the per-sample gradients on the
        bound labels (a per-sample average, so a dataset's is the sample-weighted mean of its
        batches'). ``kind="true"``: the Fisher of the model's predictive distribution
        (softmax for cross-entropy, unit-variance Gaussian for mse), which for these
        canonical-link losses equals the GGN exactly (Martens, arXiv 1412.1193); the returned
        operator is the GGN product.
        """
        if kind == "empirical":
            return self._operator("fisher")
        if kind == "true":
            op = self._operator("ggn")
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
            return float(self._mean(lambda X, y: self.model._curvature_forward(self._Ws, X, y, d)))
        if mode == "adjoint":
            return self.grad_and_curvature(d)[2]
        raise ValueError(f"mode must be 'forward' or 'adjoint', got {mode!r}")

    def grad_and_curvature(self, d: Any) -> tuple[float, Any, float]:
        """``(loss, g, dᵀ H d)`` in one forward and one backward pass per batch (adjoint mode,
        method inspired by arXiv 2210.14520)."""
        d = self.model._check_dir(d, "d", 1)
        loss, g, c = self._mean(lambda X, y: self.model._grad_and_curvature(self._Ws, X, y, d, self._params))
        return float(loss), g, float(c)

    # -- layers ----------------------------------------------------------------
    def layer_structure(self) -> list[DenseLayer]:
        """One :class:`~curvlab.sources.DenseLayer` per layer (input layer first), in the
        model's dtype: ``inputs`` ``a_{l-1}`` ``(N, n_{l-1})``, ``output_grads`` ``δ_l``
        ``(N, n_l)`` and ``output_hessians`` ``M_l`` ``(N, n_l, n_l)`` of the per-sample
        losses; the weight ``W{l}`` carries the bias as its last column
        (``bias_folded=True``). The layer's block of the mean-loss Hessian is
        ``(1/N) Σ_i M_i ⊗ ã_i ã_iᵀ`` with ``ã = [a; 1]`` (method inspired by arXiv 2104.03804).
        On a dataset the per-sample records of all batches are concatenated in pass order
        (so the block is the dataset's). Memory ``O(N Σ n_l²)``: meant for narrow layers
        and mini-batches.
        """
        def records(X: Any, y: Any) -> tuple[Any, ...]:
            fs = self.model._layer_factors(self._Ws, X, y)
            return tuple(r for f in fs for r in (f.a[:, :-1], f.delta, f.M))

        if self.batches.single:
            recs = records(self._X, self._y)
        else:
            recs = self.batches.concat(lambda b: records(*b))
        return [DenseLayer(name=name, weight=name, bias=None, bias_folded=True,
                           inputs=recs[3 * l], output_grads=recs[3 * l + 1], output_hessians=recs[3 * l + 2])
                for l, name in enumerate(self.layout.names)]

    # -- rebinding -------------------------------------------------------------
    def at(self, params: Any = None, data: Any = None) -> "MLPCurvature":
        """The same model bound to new ``params`` and/or ``data`` (a new source; this one
        is unchanged). What is not rebound is reused unchecked: new parameters alone cost
        no host sync (under ``nan_policy="propagate"``; a stream of batches still checks
        each batch per pass). New ``data`` keeps ``progress`` and ``check_deterministic``
        (not ``num_data``; pass a :class:`~curvlab.batches.Batches` to set it). The new
        source keeps ``cache_bytes`` and starts with an empty product cache."""
        model = self.model
        if data is None:
            batches = self.batches
        else:
            batches = self.batches.rebind(data).prepared(_checker(model))
        if params is None:
            params, Ws = self._params, self._Ws
        else:
            Ws = model._check_params(params)
        return MLPCurvature._from_checked(model, params, Ws, batches, self.cache_bytes)


def _checker(model: MLP) -> Any:
    """``(X, y) -> (checked X, checked y)`` for ``model`` (1 host sync: the labels' range)."""
    def check(batch: Any) -> tuple[Any, Any]:
        X = model._check_X(batch[0])
        return X, model._check_y(batch[1], X.shape[0])
    return check
