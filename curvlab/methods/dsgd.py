"""Duality structure gradient descent (DSGD): greedy layer-wise steepest descent.

Method inspired by arXiv 1708.00523 (T. Flynn). Each step scores every layer ``i`` by the
guaranteed improvement of a step on that layer alone,

    score_i = ‖G_i‖²_{i,*} / (2 L_i(w)),

picks ``j = argmax_i score_i`` (ties: lowest index) and updates only block ``j``:

    W_j ← W_j − (s / L_j) · ρ_j(G_j),      guaranteed  f(w) − f(w⁺) ≥ s(2 − s)·score_j,

with ``G_i = ∇_{W_i} f``, ``‖·‖_{i,*}`` and ``ρ_i`` the dual norm and duality map of the
layer norm (:mod:`curvlab.linalg.duality`: spectral by default, Frobenius, scaled) and
``L_i(w)`` a layer smoothness constant: ``f(w + U) ≤ f(w) + ⟨G_i, U⟩ + L_i/2 ‖U‖_i²`` for
``U`` supported on block ``i``. Three rules for ``L_i``:

* ``"bound"`` (default, rigorous; curvlab's derivation of the paper's layer-wise smoothness
  constant for a dense MLP with softmax cross-entropy, bias folded as the last column of
  ``W_i``, see :func:`mlp_layer_smoothness_bound`);
* ``"estimate"``: ``L̂_i = safety · ρ_iᵀ H_ii ρ_i / ‖ρ_i‖_i²`` from the local curvature along
  the layer's dual step (``d`` = ``ρ_i`` on block ``i``, zero elsewhere): ``dᵀHd`` from any
  curvature source (``source.directional_curvature``) or a ``curvature`` callable; not rigorous;
* ``"constant"``: user-given ``L_i``.

Passing the curvature: ``update(grads, state, params, source=src)`` (or ``DSGD(source=src)``
and the extra ``data=batch``); the method rebinds the source to ``params`` with
``src.at(params=..., data=...)`` (no rebuild). ``params`` is a pytree with one leaf per block,
or a flat vector split by ``shapes=`` or, failing that, by ``src.layout``. The estimate rule
runs on every source (reference MLP, torch, JAX); the bound needs the reference MLP's source
(its model's activation and loss and its batch inputs ``X``) or a ``TorchCurvature`` whose
model is an ``nn.Sequential`` MLP it covers (:func:`curvlab.adapters.torch.architecture.reference_mlp_of`:
Linear layers with biases, one hidden tanh/sigmoid/identity/softplus(threshold=inf), a built-in
loss; the inputs ``X`` are all of the source's samples), and says which module it does not
cover otherwise. On torch each Linear's ``weight`` and ``bias`` blocks are folded into one
layer ``[W | b]`` (the state has one entry per Linear), so the steps equal the reference MLP's
on the same weights. Neither rule needs ``layer_structure()``.

Deterministic mode passes full-batch gradients (and the full ``X`` to the bound);
mini-batch mode passes a batch (``average="mean"``: the bound is valid for that batch's
loss; ``average="max"`` with the training set as ``X``: valid for every batch).
:func:`dsgd_train` runs either and records the chosen layer at every step.

Examples
--------
>>> import numpy as np
>>> opt = DSGD(rule="constant", constants=[1.0, 4.0])
>>> params = [np.zeros((2, 2)), np.zeros((1, 3))]
>>> grads = [np.eye(2), np.array([[2.0, 0.0, 0.0]])]   # scores 2²/2 = 2 and 2²/8 = 0.5
>>> upd, st, info = opt.update_with_info(grads, opt.init(params), params)
>>> info.chosen, upd[0]
(0, array([[-2., -0.],
       [-0., -2.]]))
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from .. import backend
from ..layout import Layout
from ..linalg import duality
from ..models.activations import activation_derivative_bounds, get_activation
from ..models.losses import get_loss
from ..tree import tree_flatten, tree_map, tree_unflatten
from ._source import flat_of, resolve_source
from ._transform import (
    DEFAULT_MAX_CONSECUTIVE_SKIPS,
    StepInfo,
    Transform,
    TransformState,
    Tree,
    apply_updates,
    check_tree_like,
)

__all__ = [
    "DSGD",
    "DSGDState",
    "DSGDInfo",
    "DSGDHistory",
    "dsgd_train",
    "activation_derivative_bounds",
    "mlp_layer_smoothness_bound",
]

#: ``activation_derivative_bounds`` is :func:`curvlab.models.activations.activation_derivative_bounds`
#: (``(sup|σ'|, sup|σ''|)`` of the activation objects), re-exported here under its historical home.


def mlp_layer_smoothness_bound(weights: Sequence[Any], X: Any, activation: str = "tanh",
                               loss: str = "cross_entropy", average: str = "mean",
                               log: bool = False, op_norms: Sequence[float] | np.ndarray | None = None,
                               memo: dict | None = None) -> np.ndarray:
    """Rigorous layer smoothness constants ``L_i(w)`` of a dense MLP (method inspired by arXiv 1708.00523).

    ``weights``: list of K arrays ``(n_i, n_{i-1}+1)`` (bias as the last column, layer input
    ``ã = [a; 1]``); ``X``: ``(B, n_0)`` inputs. With ``(s1, s2)`` =
    :func:`activation_derivative_bounds` (the activation object's ``sup_d1``, ``sup_d2``), the
    loss object's ``β_K`` = ``hessian_bound`` and ``γ_K`` = ``gradient_bound``
    (:mod:`curvlab.models.losses`) and ``W̄`` = ``W`` without its bias column::

        β_K = 1/2, γ_K = √2                         (softmax cross-entropy)
        β_i = s1²‖W̄_{i+1}‖²_op β_{i+1} + s2‖W̄_{i+1}‖_op γ_{i+1},   γ_i = s1‖W̄_{i+1}‖_op γ_{i+1}
        L_i = β_i · mean_n ‖ã_{i-1,n}‖²            (average="mean"; "max": max over rows of X)

    valid for the spectral and the Frobenius layer norms. ``loss="mse"`` (½‖z−y‖²) is
    supported for K = 1 only (β = 1; the lower layers have no uniform bound). Computed in
    log space (float64) so deep nets do not overflow; returns ``log L`` when ``log=True``.
    ``op_norms`` (K,): precomputed ``‖W̄_i‖_op`` (entry 0 unused); default: exact singular values.
    ``memo``: a dict kept by the caller between calls (NumPy only): the layer inputs ``ã_{i-1}`` and
    their norms are reused while the fingerprints (:func:`_fingerprint`) of ``X`` and of the
    weights below layer ``i`` are unchanged (a DSGD step moves one block: the forward pass
    restarts above it), the same numbers as without it.

    >>> W = [np.zeros((3, 3))]                      # one linear layer, inputs of norm² 1
    >>> float(mlp_layer_smoothness_bound(W, np.array([[1.0, 0.0]]), loss="mse")[0])  # 1·(1+1)
    2.0
    """
    if loss not in ("cross_entropy", "mse"):
        raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")
    lo = get_loss(loss)
    if average not in ("mean", "max"):
        raise ValueError(f"average must be 'mean' or 'max', got {average!r}")
    K = len(weights)
    if K == 0:
        raise ValueError("weights must hold at least one layer")
    if not math.isfinite(lo.gradient_bound) and K > 1:   # mse: ∂ℓ/∂z unbounded
        raise ValueError("loss='mse' has a uniform smoothness bound only for K = 1 layer, got "
                         f"K = {K}; use rule='estimate' or 'constant'")
    s1, s2 = activation_derivative_bounds(activation)
    act = get_activation(activation)
    backend.check_float_array(X, "X", ndim=2)
    xp = backend.get_namespace(X, *weights)
    width = X.shape[1]
    for i, W in enumerate(weights):
        backend.check_float_array(W, f"weights[{i}]", ndim=2)
        if W.shape[1] != width + 1:
            raise ValueError(f"weights[{i}] must have shape (n_{i+1}, {width + 1}) (bias as last "
                             f"column), got {tuple(W.shape)}")
        width = W.shape[0]
    # keys[i]: what the input of layer i depends on (X, W_0 .. W_{i-1}), by fingerprint
    keys: list[Any] = [None] * K
    hits = 0
    use_memo = memo is not None and xp is np
    mem: dict = memo if memo is not None and xp is np else {}
    if use_memo:
        fps = [_fingerprint(M) for M in [X] + list(weights[:-1])]
        keys = [(X.shape, X.dtype.str, activation, tuple(fps[:i + 1])) for i in range(K)]
        old = mem.get("keys", [])
        while hits < min(K, len(old)) and old[hits] == keys[hits]:
            hits += 1
        mem["keys"] = old[:hits]
        mem["a"], mem["r"] = mem.get("a", [])[:hits], mem.get("r", [])[:hits]
    sq_in = []
    a = X if hits <= 1 else mem["a"][hits - 1]
    for i, W in enumerate(weights):
        if i < hits:
            r = mem["r"][i]
        else:
            if i > 0:
                Wp = weights[i - 1]
                a = act.value_(a @ Wp[:, :-1].T + Wp[:, -1], xp)
            r = xp.sum(a.astype(np.float64) ** 2, axis=1) + 1.0
            if use_memo:
                mem["keys"].append(keys[i])
                mem["a"].append(a if i > 0 else None)
                mem["r"].append(r)
        sq_in.append(float(r.mean()) if average == "mean" else float(r.max()))
    # log-space backward recursion
    log_beta = [0.0] * K
    log_gamma = [0.0] * K
    log_beta[K - 1] = math.log(lo.hessian_bound)
    # log γ_K; √2 (cross-entropy) as ½·log 2, which log(√2) misses by one ulp (numbers kept bit for bit)
    g_K = lo.gradient_bound
    log_gamma[K - 1] = 0.5 * math.log(2.0) if g_K == math.sqrt(2.0) else math.log(g_K)
    ls1 = math.log(s1)
    for i in range(K - 2, -1, -1):
        Wb = weights[i + 1][:, :-1]
        if op_norms is not None:
            nrm = float(op_norms[i + 1])
        else:
            nrm = duality.layer_norm(Wb)
        lw = math.log(nrm) if nrm > 0 else -math.inf
        t1 = 2 * ls1 + 2 * lw + log_beta[i + 1]
        t2 = (math.log(s2) + lw + log_gamma[i + 1]) if s2 > 0 else -math.inf
        log_beta[i] = float(np.logaddexp(t1, t2))
        log_gamma[i] = ls1 + lw + log_gamma[i + 1]
    logL = np.array([log_beta[i] + math.log(sq_in[i]) for i in range(K)], dtype=np.float64)
    return logL if log else np.exp(logL)


def _fingerprint(M: Any) -> tuple[float, float, float]:
    """Three numbers that change when the NumPy array ``M`` (ndim 2) does: ``Σ M²``, a
    cosine-weighted column sum and a sine-weighted row sum (one pass each; a false change
    only costs a recomputation)."""
    c = np.cos(np.arange(M.shape[1], dtype=np.float64)).astype(M.dtype)
    rs = np.sin(np.arange(M.shape[0], dtype=np.float64) + 0.5)
    Mc = M @ c
    return float(np.vdot(M, M)), float(Mc.sum(dtype=np.float64)), float(rs @ Mc.astype(np.float64))


@dataclasses.dataclass
class _BoundData:
    """What the rigorous bound reads from a source: the hidden activation, the loss, the inputs
    ``X`` ``(N, n_0)`` and, for a source whose weights and biases are separate blocks (torch),
    ``fold[i] = (weight block, bias block)`` of layer ``i`` (``None``: the blocks are the
    folded layers already)."""

    activation: str
    loss: str
    X: Any
    fold: list[tuple[int, int]] | None = None


def _bound_mlp(src: Any) -> _BoundData:
    """The bound's data of a source over the reference MLP or of a torch source whose model is
    an MLP the bound covers (:func:`curvlab.adapters.torch.architecture.reference_mlp_of`);
    ``ValueError`` saying what the bound needs (and which module is not covered) otherwise."""
    from ..models.mlp import MLP  # noqa: PLC0415 (lazy: models import methods' siblings)

    model = getattr(src, "model", None)
    data = getattr(src, "data", None)
    if isinstance(model, MLP) and isinstance(data, (tuple, list)) and len(data) == 2:
        return _BoundData(model.activation, model.loss_name, data[0])
    if type(src).__module__.startswith("curvlab.adapters.torch"):
        from ..adapters.torch.architecture import reference_mlp_of  # noqa: PLC0415 (torch only when used)

        try:
            ref = reference_mlp_of(src)
        except ValueError as e:
            raise ValueError(f"rule='bound' is the rigorous smoothness constant of a dense MLP with a C² activation "
                             f"(arXiv 1708.00523, the layer-wise β/γ recursion), but on {type(src).__name__}: {e}") from None
        return _BoundData(ref.model.activation, ref.model.loss_name, ref.X, ref.fold)
    raise ValueError(
        "rule='bound' is the rigorous smoothness constant of a dense MLP with a C² activation (arXiv "
        "1708.00523, the layer-wise β/γ recursion); it needs the reference MLP's curvature source (a .model "
        "that is a curvlab MLP and one batch .data = (X, y)) or a TorchCurvature of an nn.Sequential MLP, got "
        f"{type(src).__name__}; use rule='estimate' (dᵀHd from any source) or rule='constant'")


def _fold(blocks: list[Any], fold: list[tuple[int, int]]) -> list[Any]:
    """Separate ``(n, m)`` weight and ``(n,)`` bias blocks as the folded ``(n, m+1)`` layers ``[W | b]``."""
    xp = backend.get_namespace(*blocks)
    return [xp.concatenate([blocks[w], blocks[b][:, None]], axis=1) for w, b in fold]


def _unfold(layers: list[Any], fold: list[tuple[int, int]], n_blocks: int) -> list[Any]:
    """Inverse of :func:`_fold`: the folded layers back as ``n_blocks`` weight and bias blocks."""
    out: list[Any] = [None] * n_blocks
    for (w, b), L in zip(fold, layers):
        out[w], out[b] = L[:, :-1].copy(), L[:, -1].copy()
    return out


@dataclasses.dataclass
class DSGDState(TransformState):
    """State of :class:`DSGD` (all float64/int64 host arrays; the step's report is its
    :class:`DSGDInfo`, ``state.chosen`` etc. still read it).

    ``count``: steps taken (updates made or not);
    ``layer_counts`` (K,): how often each layer was chosen;
    ``L_prev``: last valid estimated ``L_i`` (rule "estimate"; NaN unknown);
    counters ``n_stationary``, ``n_skipped_steps`` (NaN/Inf gradients: the step changed nothing
    else, ``count`` included), ``n_excluded`` (layer-steps with an invalid ``L_i``),
    ``n_fallback`` (SVD/polar failures, NaN results included, mapped with Frobenius),
    ``consecutive_skips``;
    ``w_opnorm`` (K,), ``w_fingerprint`` (K, 2): cache of the exact ``‖W̄_i‖_op`` used by the
    bound, reused while the block's fingerprint (``Σ W̄²`` and a cosine-weighted sum) is
    unchanged: a DSGD step moves one block, so one weight SVD per step instead of K − 1.
    Saved states of earlier versions, which also held the last step's report, load (those keys
    are ignored).
    """

    count: int
    layer_counts: Any
    L_prev: Any
    n_stationary: int
    n_skipped_steps: int
    n_excluded: int
    n_fallback: int
    consecutive_skips: int
    w_opnorm: Any = None
    w_fingerprint: Any = None


@dataclasses.dataclass
class DSGDInfo(StepInfo):
    """Report of one :class:`DSGD` step (float64 host arrays of shape ``(K,)``).

    ``chosen``: the chosen layer (−1: none); ``scores``, ``L``, ``dual_norms``: the
    ``‖G_i‖²_*/(2L_i)`` (0 for excluded layers), ``L_i`` and ``‖G_i‖_*``; ``guaranteed``:
    ``s(2−s)·score_j`` (the guaranteed decrease; method inspired by arXiv 1708.00523); ``actual``:
    ``f(w) − f(w⁺)`` when verified (NaN otherwise); ``lr``: ``s / L_j``.
    """

    chosen: int = -1
    scores: Any = None
    L: Any = None
    dual_norms: Any = None
    guaranteed: float = 0.0
    actual: float = math.nan


def _as_layout(shapes: Any) -> Layout:
    """``shapes=`` as a :class:`~curvlab.layout.Layout`: a Layout itself, an object with
    ``.shapes`` (and ``.names``, such as the MLP's ``model.layout``), or a list of shapes."""
    if isinstance(shapes, Layout):
        return shapes
    shp = list(getattr(shapes, "shapes", shapes))
    names = getattr(shapes, "names", None)
    return Layout(list(names) if names is not None else [f"block{i}" for i in range(len(shp))], shp)


def _check_finite_constants(c: np.ndarray) -> None:
    """User-given smoothness constants must be finite (a NaN/Inf ``L_i`` would silently zero layer ``i``'s step)."""
    bad = ~np.isfinite(np.asarray(c, dtype=np.float64))
    if bad.any():
        raise ValueError(f"constants must be finite numbers (one L_i per layer), got {np.asarray(c).tolist()!r} "
                         f"(non-finite at layer(s) {np.flatnonzero(bad).tolist()})")


class DSGD(Transform):
    """Greedy layer-wise DSGD as a transform (see the module docstring).

    Parameters
    ----------
    norm, scale, method:
        Layer norm kind ("spectral" | "frobenius"), its scale ``c`` and the polar-factor
        method ("svd" | "newton_schulz"); one value for all layers or a sequence per layer.
    step:
        The multiplier ``s`` (default 1, the rigorous step) in ``(0, 2)``, where the
        guarantee ``s(2−s)·score > 0`` holds. ``s ≥ 2`` needs ``allow_large_step=True``
        (experiments sweep s): the reported ``guaranteed`` is then ``s(2−s)·score ≤ 0``, a bound
        on the possible *increase*, not a decrease.
    allow_large_step:
        Accept ``step ≥ 2`` (above).
    rule:
        "bound" | "estimate" | "constant" (module docstring). "bound" needs ``params`` and the extra ``X``
        (batch inputs) or the reference MLP's source or a torch MLP's (weight and bias folded per
        Linear: give the source to the constructor so that ``init`` counts Linears); "estimate" needs a source or the extra
        ``curvature(d) -> dᵀHd`` with ``d`` structured like ``params``; "constant" uses ``constants``.
    activation, loss, average:
        For the bound: hidden activation, "cross_entropy" | "mse", "mean" | "max".
    safety:
        Multiplier (≥ 1) of the estimated constant.
    selection:
        "greedy" (DSGD) or the baselines "cyclic" and "random" (same step, other choice).
    shapes:
        Block shapes when params/grads are flat vectors (a list of shapes or an object with
        ``.shapes`` such as the MLP's ``model.layout``); pytrees of blocks (list, tuple, dict:
        one leaf per layer, in :mod:`curvlab.tree` order) need none and keep their structure.
    source:
        A curvature source (see the module docstring), rebound each step; or pass ``source=``
        to ``update``.
    verify:
        With the extra ``loss_fn(params) -> float`` (and optionally ``loss`` = f(w)), record the
        actual decrease in the state (one or two extra forward passes).
    seed:
        Seed of the "random" selection (deterministic per step count).
    nan_policy, max_consecutive_skips:
        The shared numerical-trouble policy for NaN/Inf gradients
        (:mod:`curvlab.methods._transform`; skip by default: zero update, state unchanged but
        for ``n_skipped_steps``/``consecutive_skips``).

    Cost on NumPy (spectral, layers with ``min(n, m) ≥ duality.GRAM_MIN_SIZE``): each layer's
    dual norm from the eigenvalues of its float64 Gram matrix, the chosen layer's polar factor
    from its eigenvectors (kept from the dual-norm pass for the most often chosen layer), the
    bound's weight norm by Lanczos, its layer inputs reused below the block moved last (a memo
    keyed by fingerprints of ``X`` and the weights; the numbers are those of a fresh forward
    pass): ≈ 4.9x an SGD step at 784-512-512-10, batch 512, float32, full batch (was ≈ 12x with
    SVDs), exact to ~1e-7 against a float64 SVD (:mod:`curvlab.linalg.duality`).

    Host syncs per step: one for the gradients' finiteness, then per layer one for the dual
    norm (a NaN SVD from cuSOLVER, which does not raise, shows in that same read and goes to
    the fallback), three for the chosen layer's SVD polar factor (finiteness, rank, nuclear
    norm), and for rule "bound" one for all layers' weight fingerprints (plus one weight
    norm per layer that changed); on a torch MLP source the bound also copies the parameters to
    the host and reads the inputs of every batch (a dataset: one pass over it) each step.
    """

    state_class = DSGDState

    def __init__(self, norm: str | Sequence[str] = "spectral", scale: float | Sequence[float] = 1.0,
                 step: float = 1.0, rule: str = "bound", activation: str = "tanh",
                 loss: str = "cross_entropy", average: str = "mean", constants: Sequence[float] | None = None,
                 safety: float = 2.0, method: str | Sequence[str] = "svd", selection: str = "greedy",
                 shapes: Any = None, verify: bool = False, seed: int = 0, *, allow_large_step: bool = False,
                 nan_policy: str = "skip", max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS,
                 source: Any = None) -> None:
        self.set_nan_policy(nan_policy, max_consecutive_skips)
        if source is not None:
            resolve_source("DSGD", source, None, None, None)   # type check only
        self.source = source
        if isinstance(step, bool) or not isinstance(step, (int, float, np.integer, np.floating)):
            raise TypeError(f"step must be a real number in (0, 2), got {type(step).__name__}")
        self.step_size = float(step)
        if not (np.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step must be a finite positive number, got {step!r}")
        if self.step_size >= 2.0 and not allow_large_step:
            raise ValueError(f"step must be in (0, 2) for the guaranteed decrease s(2-s)·score > 0, got {step!r}; "
                             "pass allow_large_step=True to sweep larger steps")
        if rule not in ("bound", "estimate", "constant"):
            raise ValueError(f"rule must be 'bound', 'estimate' or 'constant', got {rule!r}")
        if rule == "bound":
            activation_derivative_bounds(activation)
        if loss not in ("cross_entropy", "mse"):
            raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")
        if average not in ("mean", "max"):
            raise ValueError(f"average must be 'mean' or 'max', got {average!r}")
        if rule == "constant" and constants is None:
            raise ValueError("rule='constant' needs constants (one L_i per layer)")
        if constants is not None:
            c = np.asarray(constants)
            if c.ndim != 1 or c.dtype.kind not in "iuf":
                raise ValueError(f"constants must be a 1-D sequence of numbers (one L_i per layer), got {constants!r}")
            _check_finite_constants(c)
        def entries(v: Any) -> list[Any]:
            return list(v) if isinstance(v, (list, tuple)) else [v]

        for k in entries(norm):
            if k not in duality.NORMS:
                raise ValueError(f"norm must be one of {duality.NORMS} (or a sequence of them, one per layer), got {k!r}")
        for c in entries(scale):
            if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)) or not (
                    math.isfinite(c) and c > 0):
                raise ValueError(f"scale must be a finite positive number (or one per layer), got {c!r}")
        for m in entries(method):
            if m not in ("svd", "newton_schulz"):
                raise ValueError(f"method must be 'svd' or 'newton_schulz' (or one per layer), got {m!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if selection not in ("greedy", "cyclic", "random"):
            raise ValueError(f"selection must be 'greedy', 'cyclic' or 'random', got {selection!r}")
        self.safety = float(safety)
        if not (np.isfinite(self.safety) and self.safety >= 1.0):
            raise ValueError(f"safety must be >= 1, got {safety!r}")
        self.norm, self.scale, self.method = norm, scale, method
        self.rule, self.activation, self.loss, self.average = rule, activation, loss, average
        self.constants = None if constants is None else np.asarray(constants, dtype=np.float64)
        self.selection, self.verify, self.seed = selection, bool(verify), int(seed)
        self.blocks = None if shapes is None else _as_layout(shapes)
        # the bound's layer inputs, reused while X and the weights below are unchanged (NumPy;
        # a cache of numbers the step would recompute identically, not part of the state)
        self._bound_memo: dict = {}

    # -- structure -------------------------------------------------------------------
    def _layer_norms(self, K: int) -> list[duality.LayerNorm]:
        def per(v: Any, name: str) -> list[Any]:
            if isinstance(v, (list, tuple)):
                if len(v) != K:
                    raise ValueError(f"{name} has {len(v)} entries, expected one per layer ({K})")
                return list(v)
            return [v] * K

        return [duality.LayerNorm(k, s, m) for k, s, m in
                zip(per(self.norm, "norm"), per(self.scale, "scale"), per(self.method, "method"))]

    def _split(self, tree: Tree, name: str, blocks: Layout | None = None) -> list[Any]:
        if isinstance(tree, (list, tuple, dict)):
            return tree_flatten(tree)[0]
        blocks = blocks if blocks is not None else self._blocks_for(None)
        if blocks is None:
            raise ValueError(f"{name} is a flat vector: pass shapes= (block shapes or the MLP layout) or a curvature "
                             "source (source=) to DSGD")
        blocks.check_flat(tree, name)
        return blocks.unpack(tree)

    def _blocks_for(self, src: Any) -> Layout | None:
        """The layout that splits flat vectors: ``shapes=``, else the source's layout."""
        if self.blocks is not None:
            return self.blocks
        src = src if src is not None else self.source
        return None if src is None else src.layout

    def init(self, params: Tree) -> DSGDState:
        blocks = self._split(params, "params")
        fold = self._init_fold(len(blocks))
        if fold is not None:
            blocks = _fold(blocks, fold)
        for i, b in enumerate(blocks):
            backend.check_float_array(b, f"params[{i}]")
            if b.size == 0:
                raise ValueError(f"params[{i}] has zero size (shape {tuple(b.shape)}); DSGD needs non-empty layers")
        K = len(blocks)
        if K == 0:
            raise ValueError("params must hold at least one layer")
        self._layer_norms(K)
        if self.constants is not None and self.constants.shape != (K,):
            raise ValueError(f"constants must have shape ({K},), got {self.constants.shape}")
        return DSGDState(count=0, layer_counts=np.zeros(K, dtype=np.int64),
                         L_prev=np.full(K, np.nan), n_stationary=0, n_skipped_steps=0, n_excluded=0,
                         n_fallback=0, consecutive_skips=0, w_opnorm=np.full(K, np.nan),
                         w_fingerprint=np.full((K, 2), np.nan))

    def _init_fold(self, n_blocks: int) -> list[tuple[int, int]] | None:
        """The constructor's source's weight/bias folding under rule "bound" (torch MLPs), else
        ``None`` (also for a source the bound does not cover: the step says why)."""
        if self.rule != "bound" or self.source is None:
            return None
        try:
            fold = _bound_mlp(self.source).fold
        except ValueError:
            return None
        return fold if fold is not None and 2 * len(fold) == n_blocks else None

    # -- the step --------------------------------------------------------------------
    def _dual_all(self, G: list[Any], norms: list[duality.LayerNorm],
                  predicted: int = -1) -> tuple[np.ndarray, list[Any], int, list[Any]]:
        """Dual norms of all blocks; duality maps where they come for free (Frobenius,
        Newton–Schulz), ``None`` for SVD layers (singular values only: the polar factor of
        the chosen layer is computed afterwards by :meth:`_map`). The fourth list holds each
        SVD layer's Gram spectrum (NumPy, large layers: :func:`curvlab.linalg.duality._gram_spectrum`)
        for :meth:`_map` to reuse; layer ``predicted`` (the most often chosen so far) gets its
        eigenvectors too, which saves the chosen layer a second eigendecomposition when the
        guess is right (the numbers do not depend on the guess beyond rounding)."""
        K = len(G)
        dn = np.zeros(K)
        maps: list[Any] = [None] * K
        grams: list[Any] = [None] * K
        n_fb = 0
        for i, (g, nm) in enumerate(zip(G, norms)):
            if nm.kind == "frobenius":
                maps[i], dn[i] = nm.map(g)
                continue
            if nm.method == "svd":
                gr = duality._gram_spectrum(duality.as_matrix(g, "G"), vectors=(i == predicted))
                if gr is not None:
                    grams[i] = gr
                    dn[i] = float(gr.sigma[:gr.kept()].sum()) / nm.scale
                    continue
            try:
                if nm.method == "svd":
                    # duality._svd raises LinAlgError on a non-finite result too (CuPy returns NaN)
                    dn[i] = duality.dual_norm(g, "spectral", nm.scale)
                    if math.isfinite(dn[i]):
                        continue
                    raise np.linalg.LinAlgError("non-finite dual norm")
                r = duality.polar_factor(g, nm.method, nm.max_steps, nm.tol)
                if not math.isfinite(r.nuclear):  # Newton–Schulz overflow: the host value is already read
                    raise np.linalg.LinAlgError("non-finite polar factor")
            except np.linalg.LinAlgError:
                n_fb += 1
                maps[i], dn[i] = duality.LayerNorm("frobenius", nm.scale).map(g)
                continue
            dn[i] = r.nuclear / nm.scale
            maps[i] = r.Q * g.dtype.type(r.nuclear / nm.scale**2)
        return dn, maps, n_fb, grams

    def _map(self, g: Any, nm: duality.LayerNorm, maps: list[Any], i: int, new: DSGDState | None = None,
             grams: list[Any] | None = None) -> Any:
        if maps[i] is None and grams is not None and grams[i] is not None:
            r = duality._polar_gram(duality.as_matrix(g, "G"), g.shape, grams[i])
            if r is not None:
                maps[i] = r.Q * g.dtype.type(r.nuclear / nm.scale**2)
        if maps[i] is None:
            try:
                # the SVD's result is checked for NaN inside duality._svd (LinAlgError on failure)
                maps[i] = nm.map(g)[0]
            except np.linalg.LinAlgError:
                if new is not None:
                    new.n_fallback += 1
                maps[i] = duality.LayerNorm("frobenius", nm.scale).map(g)[0]
        return maps[i]

    def _op_norms(self, W: list[Any], state: DSGDState) -> np.ndarray:
        """``‖W̄_i‖_op`` (i ≥ 1) from the cache when the block's fingerprint is unchanged."""
        K = len(W)
        out = np.full(K, np.nan)
        if K < 2:
            return out
        xp = backend.get_namespace(*W[1:])
        sums = []
        for i in range(1, K):
            Wb = W[i][:, :-1]
            w = xp.cos(xp.arange(Wb.shape[1], dtype=np.float64))
            sums += [xp.sum(Wb.astype(np.float64) ** 2), xp.sum(Wb @ w.astype(Wb.dtype), dtype=np.float64)]
        # every layer's two fingerprint numbers in one host read
        fps = backend.to_numpy(xp.stack(sums)).reshape(K - 1, 2)
        for i in range(1, K):
            Wb = W[i][:, :-1]
            fp = (float(fps[i - 1, 0]), float(fps[i - 1, 1]))
            if state.w_fingerprint[i, 0] == fp[0] and state.w_fingerprint[i, 1] == fp[1] and np.isfinite(state.w_opnorm[i]):
                out[i] = state.w_opnorm[i]
            else:
                out[i] = duality.layer_norm(Wb)
                state.w_fingerprint[i] = fp
                state.w_opnorm[i] = out[i]
        return out

    def _update(self, grads: Tree, state: DSGDState, params: Tree | None = None,
                **extras: Any) -> tuple[Tree, DSGDState, DSGDInfo]:
        """One DSGD step: ``(updates, new_state, info)``; ``updates`` is zero outside the chosen block.

        Extras: ``X`` (rule "bound"), ``curvature`` (rule "estimate"), ``constants`` (overrides
        the constructor's for this step), ``loss_fn``/``loss`` (``verify=True``).
        """
        return self._step(grads, state, params, False, **extras)

    def direction(self, grads: Tree, state: DSGDState, params: Tree | None = None,
                  **extras: Any) -> tuple[Tree, DSGDState]:
        """The direction ``d = ρ_j(G_j)/L_j`` on the chosen block (zero elsewhere; DSGD's step
        is ``−s·d``) and the new state. A step this method would skip under its ``nan_policy``
        gives a NaN ``d`` and the unchanged state, so that the caller's policy decides."""
        d, new, info = self._step(grads, state, params, True, **extras)
        if info.skipped:
            return tree_map(lambda b: backend.get_namespace(b).full(b.shape, np.nan, dtype=b.dtype), d), state
        return d, new

    def _step(self, grads: Tree, state: DSGDState, params: Tree | None, as_direction: bool, *, X: Any = None,
              curvature: Callable[[Tree], float] | None = None,
              loss_fn: Callable[[Tree], float] | None = None, loss: float | None = None,
              constants: Sequence[float] | None = None, source: Any = None, data: Any = None,
              **extras: Any) -> tuple[Tree, DSGDState, DSGDInfo]:
        flat = not isinstance(grads, (list, tuple, dict))
        treedef = None if flat else tree_flatten(grads)[1]
        src0 = source if source is not None else self.source
        if src0 is None and data is not None:
            raise ValueError("DSGD: the extra data= rebinds a curvature source, but none was given "
                             "(pass source= to the constructor or to update)")
        blocks = self._blocks_for(src0)
        G = self._split(grads, "grads", blocks)
        W = None
        if params is not None:
            check_tree_like("grads", grads, params)
            W = self._split(params, "params", blocks)
        def bound_source() -> Any:
            if src0 is None or constants is not None or self.rule == "constant":
                return None
            if params is None:
                raise ValueError("DSGD with a curvature source needs params (the source is rebound to them)")
            return resolve_source("DSGD", self.source, source, data, params)   # bound to this step's params

        src = bound_source() if self.rule == "bound" else None   # the bound's layers are known before the step
        bound = _bound_mlp(src) if src is not None else None
        fold = bound.fold if bound is not None else None
        n_blocks = len(G)
        if fold is not None:   # torch's weight and bias blocks as the bound's folded layers [W | b]
            G, W = _fold(G, fold), (_fold(W, fold) if W is not None else None)
        K = len(G)
        if state.layer_counts.shape != (K,):
            hint = (" (the bound folds each Linear's weight and bias into one layer: build the state with "
                    "DSGD(source=...).init, or pass source= to the constructor)" if fold is not None else "")
            raise ValueError(f"state is for {state.layer_counts.shape[0]} layers, grads have {K}{hint}")
        xp = backend.get_namespace(*G)
        zeros = [xp.zeros_like(g) for g in G]

        def out(parts: list[Any]) -> Tree:
            if fold is not None:
                parts = _unfold(parts, fold, n_blocks)
            if flat:
                assert blocks is not None   # _split refused a flat vector without a layout
                return blocks.pack(parts)
            return tree_unflatten(treedef, parts)

        if self.nonfinite(G, blame={"grads": G}):   # one host sync for all the blocks
            return out(zeros), self.skipped(state), DSGDInfo(skipped=True)
        new = dataclasses.replace(state, count=state.count + 1,
                                  layer_counts=state.layer_counts.copy(), L_prev=state.L_prev.copy(),
                                  w_opnorm=state.w_opnorm.copy(), w_fingerprint=state.w_fingerprint.copy())
        info = DSGDInfo(chosen=-1, actual=math.nan, guaranteed=0.0)
        norms = self._layer_norms(K)
        predicted = int(np.argmax(state.layer_counts)) if state.count > 0 else -1
        dn, maps, n_fb, grams = self._dual_all(G, norms, predicted)
        new.n_fallback += n_fb
        if src is None:
            src = bound_source()
        logL = self._log_constants(G, W, maps, dn, X, curvature, constants, new, flat, norms, src, blocks, bound, grams)
        valid = np.isfinite(logL) & (dn > 0)
        new.n_excluded += int(np.sum(~np.isfinite(logL) & (dn > 0)))
        with np.errstate(divide="ignore"):
            log_scores = np.where(valid, 2.0 * np.log(np.where(dn > 0, dn, 1.0)) - math.log(2.0) - logL, -np.inf)
        info.scores = np.where(valid, np.exp(log_scores), 0.0)
        info.L = np.exp(logL)
        info.dual_norms = dn
        new.consecutive_skips = 0
        if not valid.any():
            new.n_stationary += int(bool(np.all(dn == 0)))
            return out(zeros), new, info
        j = self._select(log_scores, valid, state.count)
        s = 1.0 if as_direction else self.step_size
        coef = s * math.exp(-logL[j])
        upd = list(zeros)
        upd[j] = self._map(G[j], norms[j], maps, j, new, grams) * G[j].dtype.type(-coef)
        if as_direction:  # d = +ρ_j/L_j
            upd[j] = -upd[j]
        new.layer_counts[j] += 1
        info.chosen, info.lr = j, coef
        s_ = self.step_size
        info.guaranteed = s_ * (2.0 - s_) * float(info.scores[j])
        result = out(upd)
        if self.verify and loss_fn is not None and params is not None and not as_direction:
            f0 = float(loss) if loss is not None else float(loss_fn(params))
            info.actual = f0 - float(loss_fn(apply_updates(params, result)))
        return result, new, info

    def _select(self, log_scores: np.ndarray, valid: np.ndarray, count: int) -> int:
        idx = np.flatnonzero(valid)
        if self.selection == "greedy":
            return int(np.argmax(log_scores))  # first maximiser: lowest index on ties
        if self.selection == "cyclic":
            K = log_scores.shape[0]
            for k in range(K):
                i = (count + k) % K
                if valid[i]:
                    return i
        rng = np.random.default_rng([self.seed, count])
        return int(rng.choice(idx))

    def _log_constants(self, G: list[Any], W: list[Any] | None, maps: list[Any], dn: np.ndarray, X: Any,
                       curvature: Any, constants: Any, new: DSGDState, flat: bool,
                       norms: list[duality.LayerNorm], src: Any = None, blocks: Layout | None = None,
                       bound: _BoundData | None = None, grams: list[Any] | None = None) -> np.ndarray:
        K = len(G)
        if constants is not None or self.rule == "constant":
            Lc = np.asarray(constants if constants is not None else self.constants, dtype=np.float64)
            if Lc.shape != (K,):
                raise ValueError(f"constants must have shape ({K},), got {Lc.shape}")
            _check_finite_constants(Lc)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where((Lc > 0) & np.isfinite(Lc), np.log(np.where(Lc > 0, Lc, 1.0)), np.inf)
        if self.rule == "bound":
            activation, loss = self.activation, self.loss
            if bound is not None:
                activation, loss = bound.activation, bound.loss
                X = bound.X if X is None else X
            if X is None or W is None:
                raise ValueError("rule='bound' needs params and the extra X (the batch inputs, shape (B, n_0)), "
                                 "or the reference MLP's source (source=)")
            return mlp_layer_smoothness_bound(W, X, activation, loss, self.average, log=True,
                                              op_norms=self._op_norms(W, new), memo=self._bound_memo)
        # rule == "estimate"
        if curvature is None and src is not None:
            lay = src.layout

            def curvature(d: Any) -> float:   # dᵀHd of the source, d supported on one layer
                return src.directional_curvature(flat_of(lay, d, "d", "DSGD"))
        if curvature is None:
            raise ValueError("rule='estimate' needs the extra curvature(d) -> dᵀHd (d structured like params), "
                             "or a curvature source (source=)")
        logL = np.full(K, np.inf)
        xp = backend.get_namespace(*G)
        for i in range(K):
            if dn[i] <= 0:
                continue
            d = [xp.zeros_like(g) for g in G]
            d[i] = self._map(G[i], norms[i], maps, i, new, grams)
            if flat:
                assert blocks is not None   # _split refused a flat vector without a layout
            c = float(curvature(blocks.pack(d) if flat and blocks is not None else d))
            Lhat = self.safety * c / (dn[i] ** 2)
            if np.isfinite(Lhat) and Lhat > 0:
                new.L_prev[i] = Lhat
                logL[i] = math.log(Lhat)
            elif np.isfinite(new.L_prev[i]) and new.L_prev[i] > 0:
                logL[i] = math.log(new.L_prev[i])
        return logL


@dataclasses.dataclass
class DSGDHistory:
    """Record of a :func:`dsgd_train` run (host float64/int64 arrays; T steps, K layers).

    ``chosen`` (T,): layer updated at each step (−1: no update); ``loss`` (T+1,): the loss
    before each step and after the last (the full-batch loss in deterministic mode, the
    batch loss otherwise, then ``loss[-1]`` on the full data); ``guaranteed`` (T,):
    ``s(2−s)·score_j``; ``actual`` (T,): ``loss[t] − loss[t+1]`` (deterministic mode; NaN in
    mini-batch mode); ``scores``, ``L``, ``dual_norms`` (T, K); ``params``: the final params.
    """

    chosen: np.ndarray
    loss: np.ndarray
    guaranteed: np.ndarray
    actual: np.ndarray
    scores: np.ndarray
    L: np.ndarray
    dual_norms: np.ndarray
    params: Any
    state: DSGDState

    def selection_counts(self) -> np.ndarray:
        """How often each layer was chosen, shape (K,)."""
        K = self.scores.shape[1]
        c = self.chosen[self.chosen >= 0]
        return np.bincount(c, minlength=K)


def dsgd_train(opt: DSGD, params: Tree, loss_and_grad: Callable[[Tree, Any, Any], tuple[float, Tree]],
               X: Any, y: Any, steps: int, batch_size: int | None = None, rng: Any = None,
               X_bound: Any = None,
               curvature_fn: Callable[[Tree, Any, Any, Tree], float] | None = None) -> DSGDHistory:
    """Run ``steps`` DSGD steps, deterministic (``batch_size=None``: full batch) or mini-batch.

    ``loss_and_grad(params, Xb, yb) -> (loss, grads)`` (e.g. ``model.loss_and_grad``, with
    ``shapes=model.layout`` given to :class:`DSGD` for flat params); ``X``: ``(N, n_0)``,
    ``y``: labels/targets; mini-batches of ``batch_size`` rows are drawn without replacement
    within a step from ``rng`` (a seed or Generator). ``X_bound``: inputs given to the
    bound instead of the batch (e.g. the training set with ``average="max"``).
    ``curvature_fn(params, Xb, yb, d) -> dᵀHd`` (rule "estimate"). Returns a :class:`DSGDHistory`.

    >>> import numpy as np
    >>> f = lambda p, X, y: (0.5 * float(np.sum(p[0] ** 2)), [p[0].copy()])   # L = 1 exactly
    >>> h = dsgd_train(DSGD(rule="constant", constants=[1.0]), [np.full((1, 1), 2.0)], f, None, None, 2)
    >>> h.chosen, h.loss
    (array([ 0, -1]), array([2., 0., 0.]))
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if batch_size is not None and (X is None or not (1 <= int(batch_size) <= X.shape[0])):
        raise ValueError(f"batch_size must be in [1, N] with X given, got {batch_size}")
    gen = backend.default_rng(rng)
    state = opt.init(params)
    K = state.layer_counts.shape[0]
    chosen = np.full(steps, -1, dtype=np.int64)
    loss = np.full(steps + 1, np.nan)
    guar, act = np.zeros(steps), np.full(steps, np.nan)
    scores, Ls, dns = np.zeros((steps, K)), np.zeros((steps, K)), np.zeros((steps, K))
    for t in range(steps):
        if batch_size is None:
            Xb, yb = X, y
        else:
            idx = gen.choice(X.shape[0], size=int(batch_size), replace=False)
            idx = backend.asarray_like(idx, X)
            Xb, yb = X[idx], y[idx]
        f, g = loss_and_grad(params, Xb, yb)
        loss[t] = float(f)
        extras: dict[str, Any] = {"X": X_bound if X_bound is not None else Xb}
        if curvature_fn is not None:
            extras["curvature"] = (lambda d, p=params, a=Xb, b=yb: curvature_fn(p, a, b, d))
        upd, state, info = opt.update_with_info(g, state, params, **extras)
        params = apply_updates(params, upd)
        if not info.skipped:
            chosen[t], guar[t] = info.chosen, info.guaranteed
            scores[t], Ls[t], dns[t] = info.scores, info.L, info.dual_norms
    loss[steps] = float(loss_and_grad(params, X, y)[0])
    if batch_size is None and steps:
        act = loss[:-1] - loss[1:]
    return DSGDHistory(chosen, loss, guar, act, scores, Ls, dns, params, state)
