"""Exact stochastic Newton with spectral adjustment, as an optimizer transform.

Method inspired by arXiv 2104.03804 (Mehouachi & Kasmi, "Exact Stochastic Second Order Deep
Learning"). The formulas are curvlab's derivations (spec 000, F4-F10), not the paper's text;
the paper's regulariser, adjustment rule, step size and batch handling are unknown here.

What is exact for what
----------------------
* Per sample (``B = 1``, any ``batch_mode``): the layer block ``M ⊗ ããᵀ`` of the sample's loss
  Hessian is exact (σ'' included), its eigenvalues ``κ_i = ‖ã‖² μ_i(M)`` are exact, and the
  direction solves ``(ρ(H_l) + λI) vec(Δ) = -vec(g_l)`` exactly in closed form (F7 "damped",
  or F8 "regularized": Newton on ``ℓ + λ/2 ‖W_l‖²``) -- with ``adjustment="raw"`` this is
  exact (block-diagonal) Newton; cross-layer blocks are ignored.
* ``batch_mode="average"`` (F10, default): the mean of the ``B`` exact per-sample directions.
  This is *not* the Newton direction of the mini-batch loss. Cost per layer
  ``O(B n^3 + B n m)`` (batched ``n x n`` eigh).
* ``batch_mode="exact_block"``: the exact solve with the mini-batch layer block
  ``(1/B) Σ_b M̃_b ⊗ ã_b ã_bᵀ + λI`` (Woodbury, ``Bn x Bn``, or the projection on the span of
  the inputs, ``nr x nr``, the smaller). With ``block_spectrum="per_sample"`` (default) ρ is
  applied to each sample's block (``M̃_b = |M_b|`` for abs; the sum is then PSD, a real
  factorisation exists); with ``"batch"`` ρ is applied to the spectrum of the whole block
  (``|H^B|``, F9, an ``nr x nr`` eigh). ``adjustment="raw"`` gives exact Newton on the
  mini-batch layer block either way. Cost per layer ``O(B^2 n^2 m + min(Bn, nr)^3)``.

Spectral adjustments (:func:`~curvlab.linalg.kronecker.adjust_spectrum`): raw/none, abs
(default, the "absolute Hessian"), floor, shift, cap/clip.

Cost per step (L layers of widths ``n_l x m_l``, batch ``B``): one forward pass plus the
second-order backward ``O(B Σ n_{l+1} n_l (n_{l+1} + n_l))`` plus the directions above;
memory ``O(B Σ n_l^2)``. A gradient step is ``O(B Σ n_l m_l)``. Measured (NumPy, one BLAS
thread, CPU time; ``python benchmarks/run_exact_newton.py``) on MLP 64-32-10 float64: B = 32
average ≈ 5 ms (≈ 30x an SGD step), exact_block ≈ 44 ms; B = 8 / 128: average 1.5 / 18 ms,
exact_block 3.5 / 265 ms; per-sample mode ≈ 0.6 ms per sample (Python-bound).

Policies: λ must be > 0 (``ValueError`` at construction). Samples whose ``δ``, ``M`` or ``ã``
hold NaN/Inf are skipped (excluded from the step, counted in ``state.n_skipped``); a step where
every sample is skipped returns zero updates, and ``max_consecutive_skips`` such steps in a row
raise ``FloatingPointError``. A component with ``|ρ(κ)+λ| <= 1e-12 max(1, |κ|)`` (singular
adjusted spectrum, possible only with raw) is dropped and counted (``n_guarded``); in
``exact_block`` a singular system leaves that layer's update zero and is counted. With raw,
``on_indefinite`` decides what happens to a sample with some ``κ+λ < 0`` (the direction is then
not a descent direction): "apply" (default, counted), "abs" (use |κ| for that sample) or "skip".
float32 parameters: curvature, eigh and denominators run in float64, updates are cast back.

Example
-------
>>> import numpy as np
>>> from curvlab.models.mlp import MLP
>>> model = MLP([4, 3, 2], activation="tanh")
>>> rng = np.random.default_rng(0)
>>> p = model.init_params(rng); X = rng.standard_normal((8, 4)); y = rng.integers(0, 2, 8)
>>> opt = ExactNewton(lr=0.1, lam=1.0)
>>> state = opt.init(p)
>>> loss, g = model.loss_and_grad(p, X, y)
>>> upd, state = opt.update(g, state, p, model=model, X=X, y=y)
>>> bool(model.loss(p + upd, X, y) < loss)
True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from .. import backend
from ..linalg.kronecker import KroneckerSumBlock, _canonical_rule, adjust_spectrum, eigh_batched
from ..models.layer_hessians import LayerCurvature, layer_curvature, layer_hessian_factors
from ._transform import Transform, TransformState, Tree, check_tree_like, tree_leaves, tree_zeros_like

__all__ = [
    "ExactNewton",
    "ExactNewtonState",
    "exact_newton_directions",
    "BATCH_MODES",
    "OBJECTIVES",
]

BATCH_MODES = ("average", "exact_block")
OBJECTIVES = ("damped", "regularized")
_GUARD = 1e-12


@dataclasses.dataclass
class ExactNewtonState(TransformState):
    """Step counter and diagnostics of the last step (per layer arrays of shape ``(L,)``).

    The per-layer arrays are empty after ``init`` with flat params (the layer count is known
    from the first step). ``kappa_min``/``kappa_max``: extreme per-sample curvature eigenvalues
    ``κ = ‖ã‖² μ(M)``;
    ``n_negative``: count of κ < 0 over the batch; ``step_norm``: ``‖update_l‖_F``.
    Totals since init: ``n_skipped`` samples, ``n_guarded`` dropped components,
    ``n_indefinite`` raw samples with some κ+λ < 0, ``n_singular`` singular block solves.
    """

    count: int
    n_skipped: int
    consecutive_skips: int
    n_guarded: int
    n_indefinite: int
    n_singular: int
    kappa_min: Any
    kappa_max: Any
    n_negative: Any
    step_norm: Any


def _check_modes(batch_mode: str, objective: str, block_spectrum: str, on_indefinite: str) -> None:
    if batch_mode not in BATCH_MODES:
        raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {batch_mode!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if block_spectrum not in ("per_sample", "batch"):
        raise ValueError(f"block_spectrum must be 'per_sample' or 'batch', got {block_spectrum!r}")
    if on_indefinite not in ("apply", "abs", "skip"):
        raise ValueError(f"on_indefinite must be 'apply', 'abs' or 'skip', got {on_indefinite!r}")


def _average_direction(f: LayerCurvature, W: Any, lam: float, rule: str, objective: str, on_indefinite: str,
                       adj_kw: dict, diag: dict) -> Any:
    """F10 (average of per-sample F7/F8 directions) for one layer; float64 ``(n, m)``."""
    xp = backend.get_namespace(f.M)
    B = f.M.shape[0]
    A = f.a
    s = xp.sum(A * A, axis=1)                                  # (B,)
    mu, U = eigh_batched(f.M)                                  # (B, n), (B, n, n)
    kap = mu * s[:, None]
    diag["kappa"].append(kap)
    rho = adjust_spectrum(kap, rule, **adj_kw)
    keep = xp.ones(B, dtype=bool)
    if rule == "raw":
        indef = xp.any(rho + lam < 0, axis=1)
        diag["n_indefinite"] += int(xp.sum(indef))
        if on_indefinite == "abs":
            rho = xp.where(indef[:, None], xp.abs(kap), rho)
        elif on_indefinite == "skip":
            keep = ~indef
    den = rho + lam
    small = xp.abs(den) <= _GUARD * xp.maximum(1.0, xp.abs(kap))
    diag["n_guarded"] += int(xp.sum(small))
    inv = xp.where(small, 0.0, 1.0 / xp.where(small, 1.0, den))
    rhs = f.delta
    if objective == "regularized":
        rhs = rhs + lam * (A @ W.T) / s[:, None]
    u = -xp.einsum("bij,bj->bi", U, inv * xp.einsum("bji,bj->bi", U, rhs))   # (B, n)
    w = keep.astype(np.float64)
    nk = float(xp.sum(w))
    if nk == 0:
        return xp.zeros_like(W)
    D = (u * w[:, None]).T @ A / nk
    if objective == "regularized":
        D = D - W + (W @ (A * (w / s)[:, None]).T) @ A / nk
    return D


def _block_direction(f: LayerCurvature, W: Any, lam: float, rule: str, objective: str, block_spectrum: str,
                     adj_kw: dict, diag: dict) -> Any:
    """Exact mini-batch layer-block direction (Woodbury / F9) for one layer; float64 ``(n, m)``."""
    xp = backend.get_namespace(f.M)
    n, m = W.shape
    s = xp.sum(f.a * f.a, axis=1)
    mu, U = eigh_batched(f.M)
    diag["kappa"].append(mu * s[:, None])
    blk = KroneckerSumBlock(f.M, f.a, lam)
    if rule == "raw":
        op = blk
    elif block_spectrum == "per_sample":
        op = blk.adjusted(rule, where="per_sample", eig=(mu, U), **adj_kw)
    else:
        op = blk.adjusted(rule, where="batch", **adj_kw)
    G = f.grad
    rhs = G + lam * W if objective == "regularized" else G
    try:
        X = op.solve(rhs.reshape(-1))
    except np.linalg.LinAlgError:
        diag["n_singular"] += 1
        return xp.zeros_like(W)
    return -X.reshape(n, m).astype(np.float64)


def exact_newton_directions(factors: Sequence[LayerCurvature], weights: Sequence[Any], *, lam: float = 1.0,
                            adjustment: str = "abs", batch_mode: str = "average", objective: str = "damped",
                            block_spectrum: str = "per_sample", on_indefinite: str = "apply",
                            kappa_min: float = 1e-4, kappa_max: float = 1.0, shift: float = 0.1,
                            diagnostics: dict | None = None) -> list[Any]:
    """Newton directions ``Δ_l`` (float64, shapes of ``weights``) from per-sample layer factors.

    ``factors``: from :func:`~curvlab.models.layer_hessians.layer_curvature` or
    :func:`~curvlab.models.layer_hessians.layer_hessian_factors` (finite samples only);
    ``weights``: the current ``W_l`` ``(n_l, m_l)``. See the module docstring for which mode is
    exact for what. ``diagnostics``, when a dict, receives ``kappa`` (list of ``(B, n_l)``) and
    the counters ``n_guarded``, ``n_indefinite``, ``n_singular``.

    Example
    -------
    >>> import numpy as np
    >>> from curvlab.models.layer_hessians import layer_curvature
    >>> W = [np.array([[0.2, 0.1, 0.0], [0.0, -0.3, 0.1]])]            # softmax regression, 2 -> 2
    >>> f = layer_curvature(W, np.array([[1.0, 2.0]]), np.array([1]))
    >>> [d.shape for d in exact_newton_directions(f, W, lam=1.0)]
    [(2, 3)]
    """
    if not (float(lam) > 0 and np.isfinite(lam)):
        raise ValueError(f"lam must be a finite number > 0, got {lam}")
    rule = _canonical_rule(adjustment)
    _check_modes(batch_mode, objective, block_spectrum, on_indefinite)
    if len(factors) != len(weights):
        raise ValueError(f"factors has {len(factors)} layers but weights has {len(weights)}")
    adj_kw = {"kappa_min": kappa_min, "kappa_max": kappa_max, "shift": shift}
    diag = diagnostics if diagnostics is not None else {}
    diag.setdefault("kappa", [])
    for k in ("n_guarded", "n_indefinite", "n_singular"):
        diag.setdefault(k, 0)
    out = []
    for l, (f, W) in enumerate(zip(factors, weights)):
        W64 = W.astype(np.float64)
        if f.M.shape[1] != W.shape[0] or f.a.shape[1] != W.shape[1]:
            raise ValueError(
                f"factors[{l}] (n={f.M.shape[1]}, m={f.a.shape[1]}) do not match weights[{l}] of shape {tuple(W.shape)}"
            )
        if batch_mode == "average":
            out.append(_average_direction(f, W64, float(lam), rule, objective, on_indefinite, adj_kw, diag))
        else:
            out.append(_block_direction(f, W64, float(lam), rule, objective, block_spectrum, adj_kw, diag))
    return out


def _finite_rows(factors: Sequence[LayerCurvature]) -> Any:
    xp = backend.get_namespace(factors[0].M)
    ok = None
    for f in factors:
        r = (xp.all(xp.isfinite(f.delta), axis=1) & xp.all(xp.isfinite(f.a), axis=1)
             & xp.all(xp.isfinite(f.M.reshape(f.M.shape[0], -1)), axis=1))
        ok = r if ok is None else ok & r
    return ok


class ExactNewton(Transform):
    """Exact stochastic Newton (block-diagonal, per layer) with spectral adjustment.

    Method inspired by arXiv 2104.03804; see the module docstring for exactness, cost and
    policies.

    Parameters
    ----------
    lr : float > 0
        Step size η (updates are ``η Δ_l``). Default 0.1.
    lam : float > 0
        Tikhonov damping / L2 weight λ. Default 1.0.
    adjustment : raw | none | abs | floor | shift | cap | clip
        Spectral adjustment ρ (default abs); ``kappa_min`` (floor), ``shift`` (shift),
        ``kappa_max`` (cap) parametrise it.
    batch_mode : "average" (F10, default) | "exact_block" (Woodbury / F9).
    objective : "damped" (F7, default) | "regularized" (F8, Newton on ``ℓ + λ/2‖W‖²``).
    block_spectrum : "per_sample" (default) | "batch"; where ρ acts in ``exact_block``.
    on_indefinite : "apply" | "abs" | "skip" (raw only).
    max_consecutive_skips : int
        Steps in a row with no finite sample before ``FloatingPointError``.
    layers : list of int, optional
        Update only these layers (0 = input layer); the others get zero updates and
        zero diagnostics. Default: all.

    ``update(grads, state, params, *, model=, X=, y=)`` (flat params of a
    :class:`~curvlab.models.mlp.MLP`), or ``update(grads, state, params, X=, y=, activation=,
    loss=)`` with ``params`` a list of ``(n_l, m_l)`` weights, or ``factors=`` (precomputed
    :class:`~curvlab.models.layer_hessians.LayerCurvature` list). ``grads`` is checked for shape
    only: the directions use the per-sample errors ``δ_b``, whose mean ``δᵀã/B`` is the data
    gradient (gradient terms outside the per-sample loss are not seen).
    """

    state_class = ExactNewtonState

    def __init__(self, lr: float = 0.1, lam: float = 1.0, adjustment: str = "abs", batch_mode: str = "average",
                 objective: str = "damped", *, block_spectrum: str = "per_sample", on_indefinite: str = "apply",
                 kappa_min: float = 1e-4, kappa_max: float = 1.0, shift: float = 0.1,
                 max_consecutive_skips: int = 100, layers: Sequence[int] | None = None) -> None:
        if not (float(lr) > 0 and np.isfinite(lr)):
            raise ValueError(f"lr must be a finite number > 0, got {lr}")
        if not (float(lam) > 0 and np.isfinite(lam)):
            raise ValueError(f"lam must be a finite number > 0 (the layer block M ⊗ ããᵀ is singular), got {lam}")
        self.adjustment = _canonical_rule(adjustment)
        adjust_spectrum(np.zeros(1), self.adjustment, kappa_min=kappa_min, kappa_max=kappa_max, shift=shift)
        _check_modes(batch_mode, objective, block_spectrum, on_indefinite)
        if int(max_consecutive_skips) < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips}")
        self.lr, self.lam = float(lr), float(lam)
        self.batch_mode, self.objective = batch_mode, objective
        self.block_spectrum, self.on_indefinite = block_spectrum, on_indefinite
        self.kappa_min, self.kappa_max, self.shift = float(kappa_min), float(kappa_max), float(shift)
        self.max_consecutive_skips = int(max_consecutive_skips)
        if layers is not None:
            layers = sorted({int(i) for i in layers})
            if not layers or layers[0] < 0:
                raise ValueError(f"layers must be a non-empty list of layer indices >= 0, got {layers}")
        self.layers = layers

    def init(self, params: Tree) -> ExactNewtonState:
        leaves = tree_leaves(params)
        for i, p in enumerate(leaves):
            backend.check_float_array(p, f"params[{i}]")
        L = len(leaves) if isinstance(params, (list, tuple)) else 0
        return self._state(0, 0, 0, 0, 0, 0, L)

    @staticmethod
    def _state(count: int, sk: int, cs: int, g: int, ind: int, sing: int, L: int, diag: Any = None) -> ExactNewtonState:
        if diag is None:
            z = np.zeros(L)
            return ExactNewtonState(count, sk, cs, g, ind, sing, z.copy(), z.copy(), np.zeros(L, dtype=np.int64), z.copy())
        return ExactNewtonState(count, sk, cs, g, ind, sing, *diag)

    def update(self, grads: Tree, state: ExactNewtonState, params: Tree | None = None, *, model: Any = None,
               X: Any = None, y: Any = None, factors: Sequence[LayerCurvature] | None = None,
               activation: str = "tanh", loss: str = "cross_entropy", **extras: Any) -> tuple[Tree, ExactNewtonState]:
        if params is None:
            raise ValueError("ExactNewton.update needs params (the current weights)")
        flat = not isinstance(params, (list, tuple))
        if flat:
            if model is None:
                raise ValueError("flat params need model= (an MLP whose layout unpacks them); or pass a list of weights")
            weights = model.layout.unpack(params)
        else:
            weights = list(params)
        check_tree_like("grads", grads, params)
        if factors is None:
            if X is None or y is None:
                raise ValueError("ExactNewton.update needs X= and y= (the batch), or factors=")
            factors = (layer_hessian_factors(model, params if flat else model.layout.pack(weights), X, y)
                       if model is not None
                       else layer_curvature(weights, X, y, activation=activation, loss=loss))
        xp = backend.get_namespace(factors[0].M)
        ok = _finite_rows(factors)
        B = int(ok.shape[0])
        nbad = B - int(xp.sum(ok))
        L = len(weights)
        diag: dict = {}
        if nbad == B:
            cs = state.consecutive_skips + 1
            if cs >= self.max_consecutive_skips:
                raise FloatingPointError(
                    f"ExactNewton: {cs} consecutive steps without a finite sample (max_consecutive_skips = "
                    f"{self.max_consecutive_skips}); the loss, errors or curvature are NaN/Inf"
                )
            new = self._state(state.count + 1, state.n_skipped + nbad, cs, state.n_guarded, state.n_indefinite,
                              state.n_singular, L)
            return tree_zeros_like(params), new
        if nbad:
            factors = [LayerCurvature(f.delta[ok], f.M[ok], f.a[ok], f.z[ok]) for f in factors]
        sel = list(range(L)) if self.layers is None else self.layers
        if sel[-1] >= L:
            raise ValueError(f"layers {self.layers} name a layer >= the number of layers {L}")
        Dsel = exact_newton_directions(
            [factors[i] for i in sel], [weights[i] for i in sel], lam=self.lam, adjustment=self.adjustment, batch_mode=self.batch_mode,
            objective=self.objective, block_spectrum=self.block_spectrum, on_indefinite=self.on_indefinite,
            kappa_min=self.kappa_min, kappa_max=self.kappa_max, shift=self.shift, diagnostics=diag)
        D = [xp.zeros(W.shape) for W in weights]
        kap = [xp.zeros((1, 1)) for _ in weights]
        for j, i in enumerate(sel):
            D[i], kap[i] = Dsel[j], diag["kappa"][j]
        if not all(bool(xp.all(xp.isfinite(d))) for d in D):
            # numerical failure in a direction: leave the weights untouched, count the batch
            return tree_zeros_like(params), self._state(state.count + 1, state.n_skipped + B,
                                                        state.consecutive_skips + 1, state.n_guarded,
                                                        state.n_indefinite, state.n_singular, L)
        ups = [(self.lr * d).astype(W.dtype) for d, W in zip(D, weights)]
        diag_arrays = (
            np.array([float(k.min()) for k in kap]),
            np.array([float(k.max()) for k in kap]),
            np.array([int(xp.sum(k < 0)) for k in kap], dtype=np.int64),
            np.array([float(xp.linalg.norm(u)) for u in ups]),
        )
        new = self._state(state.count + 1, state.n_skipped + nbad, 0, state.n_guarded + diag["n_guarded"],
                          state.n_indefinite + diag["n_indefinite"], state.n_singular + diag["n_singular"], L,
                          diag_arrays)
        return (model.layout.pack(ups) if flat else ups), new
