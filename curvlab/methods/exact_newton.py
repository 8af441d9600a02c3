"""Exact stochastic Newton with spectral adjustment, as an optimizer transform.

Method inspired by arXiv 2104.03804 (Mehouachi & Kasmi, "Exact Stochastic Second Order Deep
Learning"). The formulas are curvlab's derivations around the per-sample layer Hessian
``M ⊗ ããᵀ``, not the paper's text; the paper's regulariser, adjustment rule, step size and
batch handling are unknown here.

What is exact for what
----------------------
* Per sample (``B = 1``, any ``batch_mode``): the layer block ``M ⊗ ããᵀ`` of the sample's loss
  Hessian is exact (σ'' included), its eigenvalues ``κ_i = ‖ã‖² μ_i(M)`` are exact, and the
  direction solves ``(ρ(H_l) + λI) vec(Δ) = -vec(g_l)`` exactly in closed form (``objective="damped"``,
  or ``"regularized"``: Newton on ``ℓ + λ/2 ‖W_l‖²``) -- with ``adjustment="raw"`` this is
  exact (block-diagonal) Newton; cross-layer blocks are ignored.
* ``batch_mode="average"`` (default): the mean of the ``B`` exact per-sample directions.
  This is *not* the Newton direction of the mini-batch loss. Cost per layer
  ``O(B n^3 + B n m)`` (batched ``n x n`` eigh).
* ``batch_mode="exact_block"``: the exact solve with the mini-batch layer block
  ``(1/B) Σ_b M̃_b ⊗ ã_b ã_bᵀ + λI`` (Woodbury, ``Bn x Bn``, or the projection on the span of
  the inputs, ``nr x nr``, the smaller). With ``block_spectrum="per_sample"`` (default) ρ is
  applied to each sample's block (``M̃_b = |M_b|`` for abs; the sum is then PSD, a real
  factorisation exists); with ``"batch"`` ρ is applied to the spectrum of the whole block
  (``|H^B|``, an ``nr x nr`` eigh). ``adjustment="raw"`` gives exact Newton on the
  mini-batch layer block either way. Cost per layer ``O(B^2 n^2 m + min(Bn, nr)^3)``.

Where the curvature comes from: a :class:`~curvlab.sources.CurvatureSource` with dense layers
(``layer_structure()``: per-sample inputs ``a_b``, output gradients ``δ_b`` and output Hessians
``M_b`` of each Linear layer), given as ``ExactNewton(source=src)`` (plus the extra
``data=batch``) or per step as ``update(..., source=src)``; the method rebinds it to the step's
params with ``src.at(params=...)`` (no rebuild). Parameters outside the dense layers go to the
declared ``fallback`` transform (refused without one). Sources without dense layers raise
``TypeError`` saying so. The older entry points stay: ``model=`` (the reference MLP; a thin
path through its source), a list of weights with ``X``, ``y``, ``activation``, ``loss``, or
precomputed ``factors=``.

Spectral adjustments (:func:`~curvlab.linalg.kronecker.adjust_spectrum`): raw/none, abs
(default, the "absolute Hessian"), floor, shift, cap/clip.

Cost per step (L layers of widths ``n_l x m_l``, batch ``B``): one forward pass plus the
second-order backward ``O(B Σ n_{l+1} n_l (n_{l+1} + n_l))`` plus the directions above;
memory ``O(B Σ n_l^2)``. A gradient step is ``O(B Σ n_l m_l)``. Measured (NumPy, one BLAS
thread, CPU time; ``python benchmarks/run_exact_newton.py``) on MLP 64-32-10 float64: B = 32
average ≈ 2.7 ms (9-13x an SGD step, 70% of it the B per-sample 32x32 ``eigh``: LAPACK ``syevd``
≈ 53 µs each), exact_block ≈ 5 ms (16-25x; the PSD block solved by conjugate gradients);
B = 8 / 128: average 1.0 / 9.6 ms, exact_block 2.1 / 15 ms; per-sample mode ≈ 0.6 ms per
sample (Python-bound).

Policies: λ must be > 0 and ``kappa_min``, ``shift`` ≥ 0, ``kappa_max`` > 0 (``ValueError`` at
construction). Numerical trouble follows the shared ``nan_policy``
(:mod:`curvlab.methods._transform`). With ``"skip"`` (default) samples whose ``δ``, ``M`` or
``ã`` hold NaN/Inf are excluded from the step (counted in ``state.n_skipped``); a step whose
``grads`` hold NaN/Inf, where every sample is excluded, or whose direction is not finite
returns zero updates and leaves the state unchanged but for ``n_skipped_steps`` and
``consecutive_skips``; more than ``max_consecutive_skips`` such steps in a row raise
``FloatingPointError``. ``"raise"`` raises on any of these; ``"propagate"`` checks nothing.
A component with ``|ρ(κ)+λ| <= 1e-12 max(1, |κ|)`` (singular
adjusted spectrum, possible only with raw) is dropped and counted (``n_guarded``); in
``exact_block`` a singular system leaves that layer's update zero and is counted. With raw,
``on_indefinite`` decides what happens to a sample with some ``κ+λ < 0`` (the direction is then
not a descent direction): "apply" (default, counted), "abs" (use |κ| for that sample) or "skip".
float32 parameters: curvature, eigh and denominators run in float64, updates are cast back.

Host syncs per step on CuPy (``ExactNewton.update``): 2 of its own — the finiteness of
``grads`` and of the samples (one read), and the step's counters, per-layer finiteness and (with
``diagnostics=True``, at no extra sync) the diagnostics (one read) — plus the factors' label
range check (:mod:`curvlab.models.layer_hessians`, one): 3 in all with
``batch_mode="average"``. ``"exact_block"`` adds the syncs of the Kronecker block solve
(:mod:`curvlab.linalg.kronecker`). One more when some but not all samples are excluded.

Examples
--------
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

The same step from a curvature source (any source whose ``layer_structure()`` lists dense
layers; the reference MLP's is :class:`~curvlab.models.MLPCurvature`):

>>> from curvlab.models import MLPCurvature
>>> src = MLPCurvature(model, p, (X, y))
>>> upd2, _ = ExactNewton(lr=0.1, lam=1.0).update(g, opt.init(p), p, source=src)
>>> bool(np.array_equal(upd, upd2))
True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from .. import backend
from ..linalg.kronecker import KroneckerSumBlock, ProjectedSpectralBlock, adjust_spectrum, canonical_rule, eigh_batched
from ..models.layer_hessians import LayerCurvature, layer_curvature, layer_hessian_factors
from ..models.source import MLPCurvature
from ..tree import tree_flatten, tree_leaves, tree_map, tree_unflatten, tree_zeros_like
from ._source import layer_structure, leaves_by_name, resolve_source
from ._transform import (
    DEFAULT_MAX_CONSECUTIVE_SKIPS,
    StepInfo,
    Transform,
    TransformState,
    Tree,
    check_params,
    check_tree_like,
)

__all__ = [
    "ExactNewton",
    "ExactNewtonState",
    "ExactNewtonInfo",
    "exact_newton_directions",
    "BATCH_MODES",
    "OBJECTIVES",
]

BATCH_MODES = ("average", "exact_block")
OBJECTIVES = ("damped", "regularized")
_GUARD = 1e-12


@dataclasses.dataclass
class ExactNewtonState(TransformState):
    """Step counter and totals since init (the last step's per-layer report is its
    :class:`ExactNewtonInfo`; ``state.kappa_min`` etc. still read it).

    ``n_skipped`` samples excluded from steps taken, ``n_guarded`` dropped components,
    ``n_indefinite`` raw samples with some κ+λ < 0, ``n_singular`` singular block solves (a NaN
    solve on CuPy counts too); ``n_skipped_steps`` steps skipped by the NaN policy and
    ``consecutive_skips`` the current run of them. Saved states of earlier versions, which
    also held the per-layer diagnostics, load (those keys are ignored).
    """

    count: int
    n_skipped: int
    consecutive_skips: int
    n_guarded: int
    n_indefinite: int
    n_singular: int
    n_skipped_steps: int = 0
    fallback: Any = None

    def to_dict(self) -> dict[str, np.ndarray]:
        """As :meth:`TransformState.to_dict`, the fallback's state nested under ``"fallback/"`` keys."""
        fb = self.fallback
        d = TransformState.to_dict(dataclasses.replace(self, fallback=None))
        if fb is not None:
            d.pop("fallback/none", None)
            for k, v in fb.to_dict().items():
                d["fallback/" + k] = v
        return d


@dataclasses.dataclass
class ExactNewtonInfo(StepInfo):
    """Report of one :class:`ExactNewton` step (per-layer arrays of shape ``(L,)``, float64 /
    int64 host arrays).

    Filled only with ``ExactNewton(diagnostics=True)`` (NaN, and −1 for ``n_negative``,
    otherwise): ``kappa_min``/``kappa_max``, the extreme per-sample curvature eigenvalues
    ``κ = ‖ã‖² μ(M)``; ``n_negative``, the count of κ < 0 over the batch; ``step_norm``,
    ``‖update_l‖_F``. Always: ``n_excluded`` samples excluded this step, ``lr`` the step size;
    ``fallback``, the fallback transform's info (parameters outside the dense layers; None
    without them).
    """

    kappa_min: Any = None
    kappa_max: Any = None
    n_negative: Any = None
    step_norm: Any = None
    n_excluded: int = 0
    fallback: Any = None


def _check_adjust(kappa_min: float, kappa_max: float, shift: float) -> None:
    """The spectral-adjustment constants, whatever the rule (a later rule change must not
    meet an invalid constant)."""
    for name, v, strict in (("kappa_min", kappa_min, False), ("kappa_max", kappa_max, True), ("shift", shift, False)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
        if not (np.isfinite(v) and (v > 0 if strict else v >= 0)):
            raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, got {v}")


def _check_modes(batch_mode: str, objective: str, block_spectrum: str, on_indefinite: str) -> None:
    if batch_mode not in BATCH_MODES:
        raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {batch_mode!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if block_spectrum not in ("per_sample", "batch"):
        raise ValueError(f"block_spectrum must be 'per_sample' or 'batch', got {block_spectrum!r}")
    if on_indefinite not in ("apply", "abs", "skip"):
        raise ValueError(f"on_indefinite must be 'apply', 'abs' or 'skip', got {on_indefinite!r}")


def _eigh(M: Any) -> tuple[Any, Any]:
    """:func:`~curvlab.linalg.kronecker.eigh_batched` without its NaN check on CuPy (a host sync
    per layer): ``update`` has already checked the factors (or, with ``nan_policy="propagate"``,
    lets NaN through), and a NaN result shows in the step's finiteness read."""
    xp = backend.get_namespace(M)
    if xp is np:
        return eigh_batched(M)
    return xp.linalg.eigh(M.astype(np.float64, copy=False))


def _average_direction(f: LayerCurvature, W: Any, lam: float, rule: str, objective: str, on_indefinite: str,
                       adj_kw: dict, diag: dict) -> Any:
    """The average of the per-sample damped/regularized directions for one layer; float64 ``(n, m)``."""
    xp = backend.get_namespace(f.M)
    B = f.M.shape[0]
    A = f.a
    s = xp.sum(A * A, axis=1)                                  # (B,)
    mu, U = _eigh(f.M)                                         # (B, n), (B, n, n)
    kap = mu * s[:, None]
    diag["kappa"].append(kap)
    rho = adjust_spectrum(kap, rule, **adj_kw)
    keep = xp.ones(B, dtype=bool)
    if rule == "raw":
        indef = xp.any(rho + lam < 0, axis=1)
        diag["n_indefinite"] = diag["n_indefinite"] + xp.sum(indef)   # stays on the device
        if on_indefinite == "abs":
            rho = xp.where(indef[:, None], xp.abs(kap), rho)
        elif on_indefinite == "skip":
            keep = ~indef
    den = rho + lam
    small = xp.abs(den) <= _GUARD * xp.maximum(1.0, xp.abs(kap))
    diag["n_guarded"] = diag["n_guarded"] + xp.sum(small)           # stays on the device
    inv = xp.where(small, 0.0, 1.0 / xp.where(small, 1.0, den))
    rhs = f.delta
    if objective == "regularized":
        rhs = rhs + lam * (A @ W.T) / s[:, None]
    u = -xp.einsum("bij,bj->bi", U, inv * xp.einsum("bji,bj->bi", U, rhs))   # (B, n)
    w = keep.astype(np.float64)
    nk = xp.sum(w)                      # a device scalar: no host read
    den_k = xp.maximum(nk, 1.0)         # = nk whenever a sample is kept
    D = (u * w[:, None]).T @ A / den_k
    if objective == "regularized":
        D = D - W + (W @ (A * (w / s)[:, None]).T) @ A / den_k
    return xp.where(nk > 0, D, 0.0)     # no kept sample: no step for this layer


def _block_direction(f: LayerCurvature, W: Any, lam: float, rule: str, objective: str, block_spectrum: str,
                     adj_kw: dict, diag: dict) -> Any:
    """Exact mini-batch layer-block direction (Woodbury, or the spectrum of the whole block) for
    one layer; float64 ``(n, m)``."""
    xp = backend.get_namespace(f.M)
    n, m = W.shape
    s = xp.sum(f.a * f.a, axis=1)
    mu, U = _eigh(f.M)
    diag["kappa"].append(mu * s[:, None])
    blk = KroneckerSumBlock(f.M, f.a, lam)
    op: KroneckerSumBlock | ProjectedSpectralBlock
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
    the counters ``n_guarded``, ``n_indefinite``, ``n_singular`` (ints: one host read).
    ``kappa_min``, ``shift`` ≥ 0 and ``kappa_max`` > 0 are checked whatever the rule.

    Examples
    --------
    >>> import numpy as np
    >>> from curvlab.models.layer_hessians import layer_curvature
    >>> W = [np.array([[0.2, 0.1, 0.0], [0.0, -0.3, 0.1]])]            # softmax regression, 2 -> 2
    >>> f = layer_curvature(W, np.array([[1.0, 2.0]]), np.array([1]))
    >>> [d.shape for d in exact_newton_directions(f, W, lam=1.0)]
    [(2, 3)]
    """
    lam = backend.check_positive("lam", lam)
    rule = canonical_rule(adjustment)
    _check_modes(batch_mode, objective, block_spectrum, on_indefinite)
    _check_adjust(kappa_min, kappa_max, shift)
    diag = diagnostics if diagnostics is not None else {}
    out = _directions(factors, weights, float(lam), rule, batch_mode, objective, block_spectrum, on_indefinite,
                      {"kappa_min": kappa_min, "kappa_max": kappa_max, "shift": shift}, diag)
    if diagnostics is not None and out:
        xp = backend.get_namespace(*out)
        vals = backend.to_numpy(xp.stack([xp.asarray(diag[k], dtype=np.float64) for k in ("n_guarded", "n_indefinite")]))
        diag["n_guarded"], diag["n_indefinite"] = int(vals[0]), int(vals[1])
    return out


def _directions(factors: Sequence[LayerCurvature], weights: Sequence[Any], lam: float, rule: str, batch_mode: str,
                objective: str, block_spectrum: str, on_indefinite: str, adj_kw: dict, diag: dict) -> list[Any]:
    """The directions, with the counters ``n_guarded``/``n_indefinite`` left as device scalars
    (no host read) and ``n_singular`` a host int."""
    if len(factors) != len(weights):
        raise ValueError(f"factors has {len(factors)} layers but weights has {len(weights)}")
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
            out.append(_average_direction(f, W64, lam, rule, objective, on_indefinite, adj_kw, diag))
        else:
            out.append(_block_direction(f, W64, lam, rule, objective, block_spectrum, adj_kw, diag))
    return out


def _nan_like(tree: Tree) -> Tree:
    """NaN arrays shaped and typed like the leaves of ``tree``."""
    return tree_map(lambda x: backend.get_namespace(x).full(x.shape, np.nan, dtype=x.dtype), tree)


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
    batch_mode : "average" (default: mean of per-sample directions) | "exact_block" (the
        mini-batch layer block, Woodbury).
    objective : "damped" (default: ``(ρ(H_l) + λI) Δ = −g_l``) | "regularized" (Newton on
        ``ℓ + λ/2‖W‖²``).
    block_spectrum : "per_sample" (default) | "batch"; where ρ acts in ``exact_block``.
    on_indefinite : "apply" | "abs" | "skip" (raw only).
    nan_policy : "skip" (default) | "raise" | "propagate"
        The shared numerical-trouble policy (module docstring).
    max_consecutive_skips : int
        Skipped steps allowed in a row; one more raises ``FloatingPointError``.
    layers : list of int, optional
        Update only these layers (0 = input layer); the others get zero updates and
        zero diagnostics. Default: all.
    diagnostics : bool
        Fill the info's per-layer ``kappa_min``, ``kappa_max``, ``n_negative`` and
        ``step_norm`` (read with the step's counters: no extra host sync). Default False.

    Host syncs: 2 per ``update`` of its own (module docstring).

    source : CurvatureSource, optional
        A curvature source with dense layers (``layer_structure()``; the reference MLP's
        :class:`~curvlab.models.MLPCurvature`), rebound each step with
        ``source.at(params=params, data=data)`` (no rebuild); or pass ``source=`` to ``update``.
    fallback : Transform, optional
        Updates the parameters outside the source's dense layers (their own rule, e.g.
        ``SGD(lr=0.01)``); its state is nested in this state (initialised at the first step that
        has such parameters). Without one, such parameters raise ``ValueError``. In
        :meth:`direction` the fallback gives its own direction for them.

    Passing the curvature: ``update(grads, state, params, source=src)`` (or ``data=batch``
    with the constructor's source): ``params`` is the flat vector of ``src.layout`` or a pytree
    of its parameters in layout order; each dense layer's ``M_b`` and ``a_b`` come from
    ``src.layer_structure()`` (a separate bias joins its weight as ``W̃ = [W | b]``). A source
    without dense layers raises ``TypeError``. Older entry points:
    ``update(grads, state, params, *, model=, X=, y=)`` (flat params of a
    :class:`~curvlab.models.mlp.MLP`), or ``update(grads, state, params, X=, y=, activation=,
    loss=)`` with ``params`` a list (or any pytree, leaves in :mod:`curvlab.tree` order) of
    ``(n_l, m_l)`` weights, or ``factors=`` (precomputed
    :class:`~curvlab.models.layer_hessians.LayerCurvature` list). ``grads`` is checked for shape
    only: the directions use the per-sample errors ``δ_b``, whose mean ``δᵀã/B`` is the data
    gradient (gradient terms outside the per-sample loss are not seen).
    """

    state_class = ExactNewtonState

    def __init__(self, lr: float = 0.1, lam: float = 1.0, adjustment: str = "abs", batch_mode: str = "average",
                 objective: str = "damped", *, block_spectrum: str = "per_sample", on_indefinite: str = "apply",
                 kappa_min: float = 1e-4, kappa_max: float = 1.0, shift: float = 0.1,
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS, layers: Sequence[int] | None = None,
                 nan_policy: str = "skip", diagnostics: bool = False, source: Any = None,
                 fallback: Transform | None = None) -> None:
        self.set_nan_policy(nan_policy, max_consecutive_skips)
        if fallback is not None and not isinstance(fallback, Transform):
            raise TypeError(f"fallback must be a curvlab Transform (such as SGD(lr=0.01)), got {type(fallback).__name__}")
        if fallback is not None and getattr(fallback, "inplace", False):
            raise ValueError(f"fallback {type(fallback).__name__} updates its state in place, so a step this "
                             "transform skips would still change it; build it with copy_state=True")
        self.fallback = fallback
        if source is not None:
            resolve_source("ExactNewton", source, None, None, None)   # type check only
        self.source = source
        self.diagnostics = bool(diagnostics)
        _check_adjust(kappa_min, kappa_max, shift)
        lr = backend.check_positive("lr", lr)   # TypeError for bool/str/complex/None, ValueError for NaN/Inf/<= 0
        lam = backend.check_positive("lam", lam)  # > 0: at lam = 0 the layer block M ⊗ ããᵀ is singular
        self.adjustment = canonical_rule(adjustment)
        adjust_spectrum(np.zeros(1), self.adjustment, kappa_min=kappa_min, kappa_max=kappa_max, shift=shift)
        _check_modes(batch_mode, objective, block_spectrum, on_indefinite)
        self.lr, self.lam = float(lr), float(lam)
        self.batch_mode, self.objective = batch_mode, objective
        self.block_spectrum, self.on_indefinite = block_spectrum, on_indefinite
        self.kappa_min, self.kappa_max, self.shift = float(kappa_min), float(kappa_max), float(shift)
        if layers is not None:
            layers = sorted({int(i) for i in layers})
            if not layers or layers[0] < 0:
                raise ValueError(f"layers must be a non-empty list of layer indices >= 0, got {layers}")
        self.layers = layers

    def init(self, params: Tree) -> ExactNewtonState:
        check_params(params)
        return ExactNewtonState(0, 0, 0, 0, 0, 0, 0)

    def load_state(self, d: dict[str, Any], xp: Any = np) -> ExactNewtonState:
        """The state saved by ``to_dict``, the fallback's through the fallback's own ``load_state``."""
        own = {k: v for k, v in d.items() if not k.startswith("fallback/")}
        st = ExactNewtonState.from_dict(own, xp=xp)
        sub = {k[9:]: v for k, v in d.items() if k.startswith("fallback/") and k != "fallback/none"}
        if sub and self.fallback is None:
            raise ValueError("the saved state holds a fallback state but this ExactNewton has no fallback=")
        fb = self.fallback
        return dataclasses.replace(st, fallback=fb.load_state(sub, xp=xp) if sub and fb is not None else None)

    def _empty_info(self, L: int, **kw: Any) -> ExactNewtonInfo:
        z = np.zeros(L) if self.diagnostics else np.full(L, np.nan)
        n_neg = np.zeros(L, dtype=np.int64) if self.diagnostics else np.full(L, -1, dtype=np.int64)
        return ExactNewtonInfo(kappa_min=z.copy(), kappa_max=z.copy(), n_negative=n_neg, step_norm=z.copy(), **kw)

    def _update(self, grads: Tree, state: ExactNewtonState, params: Tree | None = None,
                **extras: Any) -> tuple[Tree, ExactNewtonState, ExactNewtonInfo]:
        """One step ``updates = lr·Δ`` (see the class docstring for the extras)."""
        return self._step(grads, state, params, self.lr, **extras)

    def direction(self, grads: Tree, state: ExactNewtonState, params: Tree | None = None,
                  **extras: Any) -> tuple[Tree, ExactNewtonState]:
        """The direction ``d = −Δ`` (the step is ``−lr·d``, cast to the params' dtypes) and the
        new state. A step this method would skip under its ``nan_policy`` gives a NaN ``d``
        and the unchanged state, so that the caller's policy decides."""
        d, new, info = self._step(grads, state, params, -1.0, **extras)
        if info.skipped:
            return _nan_like(d), state
        return d, new

    def _step(self, grads: Tree, state: ExactNewtonState, params: Tree | None, scale: float, *,
              source: Any = None, data: Any = None,
              model: Any = None, X: Any = None, y: Any = None, factors: Sequence[LayerCurvature] | None = None,
              activation: str = "tanh", loss: str = "cross_entropy",
              **extras: Any) -> tuple[Tree, ExactNewtonState, ExactNewtonInfo]:
        if params is None:
            raise ValueError("ExactNewton.update needs params (the current weights)")
        src = resolve_source("ExactNewton", self.source, source, data, params)
        if src is not None:
            return self._source_step(grads, state, params, scale, src)
        leaves, treedef = tree_flatten(params)
        flat = treedef.num_leaves == 1 and not isinstance(params, (list, tuple, dict))
        if flat:
            if model is None:
                raise ValueError("flat params need source= (a curvature source with dense layers, such as "
                                 "curvlab.models.MLPCurvature) or model= (an MLP whose layout unpacks them); "
                                 "or pass a list of weights")
            weights = model.layout.unpack(params)
        else:
            weights = list(leaves)
        check_tree_like("grads", grads, params)
        if factors is None and model is not None and getattr(model, "dtype", None) != np.float32:
            # the reference MLP given as model=: a thin path through its curvature source (a float32
            # MLP keeps the older path below: float32 forward pass, the factors' recursion in float64)
            if X is None or y is None:
                raise ValueError("ExactNewton.update needs X= and y= (the batch), or factors=, or source=")
            src = MLPCurvature(model, params if flat else model.layout.pack(weights), (X, y))
            return self._source_step(grads, state, params, scale, src)
        if factors is None:
            if X is None or y is None:
                raise ValueError("ExactNewton.update needs X= and y= (the batch), or factors=, or source=")
            factors = (layer_hessian_factors(model, params if flat else model.layout.pack(weights), X, y)
                       if model is not None
                       else layer_curvature(weights, X, y, activation=activation, loss=loss))
        ups, new, info = self._core(grads, state, weights, factors, scale)
        if ups is None:
            return tree_zeros_like(params), new, info
        return (model.layout.pack(ups) if flat else tree_unflatten(treedef, ups)), new, info

    def _source_step(self, grads: Tree, state: ExactNewtonState, params: Tree, scale: float,
                     src: Any) -> tuple[Tree, ExactNewtonState, ExactNewtonInfo]:
        """The step on a curvature source: the dense layers from ``src.layer_structure()``
        (a separate bias joins its weight as the last column, ``W̃ = [W | b]``, arXiv
        2104.03804 eq. 7), the other parameters through ``fallback``."""
        P, rebuild = leaves_by_name(src.layout, params, "params", "ExactNewton")
        G, _ = leaves_by_name(src.layout, grads, "grads", "ExactNewton")
        layers = layer_structure(src, "ExactNewton", "the per-sample layer factors M ⊗ ããᵀ of arXiv 2104.03804",
                                 transposed_ok=True)
        used: list[str] = []
        for i, lay in enumerate(layers):
            names = [lay.weight] + ([lay.bias] if lay.bias is not None and not lay.bias_folded else [])
            for n in names:
                if n not in P:
                    raise ValueError(f"layer_structure()[{i}] ({lay.name}) names the parameter {n!r}, which is not "
                                     f"in the source's layout {list(src.layout.names)}")
                if n in used:
                    raise ValueError(f"layer_structure()[{i}] ({lay.name}) names the parameter {n!r} twice")
            used += names
        rest = [n for n in src.layout.names if n not in used]
        if rest and self.fallback is None:
            raise ValueError(f"ExactNewton: the parameters {rest} lie outside the source's dense layers; pass "
                             "fallback= (a transform such as SGD(lr=0.01)) to update them")
        weights, factors = [], []
        for lay in layers:
            W = P[lay.weight]
            xp = backend.get_namespace(W)
            if getattr(lay, "transposed", False):  # an (n, m) kernel (z = a @ W): the (m, n) orientation
                W = W.T
            if lay.bias is not None and not lay.bias_folded:
                W = xp.concatenate([W, xp.reshape(P[lay.bias], (-1, 1))], axis=1)
            A = lay.inputs.astype(np.float64, copy=False)
            if lay.bias is not None or lay.bias_folded:
                A = xp.concatenate([A, xp.ones((A.shape[0], 1), dtype=np.float64)], axis=1)
            factors.append(LayerCurvature(lay.output_grads.astype(np.float64, copy=False),
                                          lay.output_hessians.astype(np.float64, copy=False), A, None))
            weights.append(W)
        ups, new, info = self._core(grads, state, weights, factors, scale)
        if ups is None:
            return tree_zeros_like(params), new, info
        out: dict[str, Any] = {}
        for lay, u in zip(layers, ups):
            tr = getattr(lay, "transposed", False)
            if lay.bias is not None and not lay.bias_folded:
                xp = backend.get_namespace(u)
                out[lay.weight] = xp.ascontiguousarray(u[:, :-1].T if tr else u[:, :-1])
                out[lay.bias] = xp.ascontiguousarray(u[:, -1])
            else:
                out[lay.weight] = backend.get_namespace(u).ascontiguousarray(u.T) if tr else u
        if rest:
            fallback = self.fallback
            assert fallback is not None   # refused above: rest without a fallback raises
            rp, rg = {n: P[n] for n in rest}, {n: G[n] for n in rest}
            fb = state.fallback if state.fallback is not None else fallback.init(rp)
            if scale < 0:
                fu, fb_new = fallback.direction(rg, fb, rp)
                fb_info = None
            else:
                fu, fb_new, fb_info = fallback.update_with_info(rg, fb, rp)
            out.update(fu)
            new = dataclasses.replace(new, fallback=fb_new)
            info.fallback = fb_info
        return rebuild(out), new, info

    def _core(self, grads: Tree, state: ExactNewtonState, weights: list[Any], factors: Sequence[LayerCurvature],
              scale: float) -> tuple[list[Any] | None, ExactNewtonState, ExactNewtonInfo]:
        """The per-layer updates ``scale·Δ_l`` (``None`` for a step skipped by the NaN policy),
        the new state and the info, from the weights ``W̃_l`` and their factors."""
        xp = backend.get_namespace(factors[0].M)
        L = len(weights)
        sel = list(range(L)) if self.layers is None else self.layers
        if sel[-1] >= L:
            raise ValueError(f"layers {self.layers} name a layer >= the number of layers {L}")
        B = int(factors[0].M.shape[0])
        nbad = 0
        if self.nan_policy != "propagate":
            ok = _finite_rows(factors)
            g_ok: Any = 1.0
            for x in tree_leaves(grads):
                g_ok = g_ok * xp.all(xp.isfinite(x))
            # host read 1: the number of excluded samples and the gradient's finiteness, together
            nbad_f, g_fin = backend.to_numpy(xp.stack([xp.asarray(B - xp.sum(ok), dtype=np.float64),
                                                       xp.asarray(g_ok, dtype=np.float64)])).tolist()
            nbad = int(nbad_f)
            if nbad == B or not g_fin or (nbad and self.nan_policy == "raise"):
                self.nonfinite(grads, math.nan if nbad else 0.0, blame={
                    "grads": grads, f"the curvature factors ({nbad} of {B} samples)": math.nan if nbad else 0.0})
                return None, self.skipped(state), ExactNewtonInfo(skipped=True, n_excluded=nbad)
            if nbad:
                idx = xp.nonzero(ok)[0]   # one more host sync, on this rare path only
                factors = [LayerCurvature(f.delta[idx], f.M[idx], f.a[idx], None if f.z is None else f.z[idx])
                           for f in factors]
        diag: dict = {}
        Dsel = _directions(
            [factors[i] for i in sel], [weights[i] for i in sel], self.lam, self.adjustment, self.batch_mode,
            self.objective, self.block_spectrum, self.on_indefinite,
            {"kappa_min": self.kappa_min, "kappa_max": self.kappa_max, "shift": self.shift}, diag)
        D = [xp.zeros(W.shape) for W in weights]
        kap = [xp.zeros((1, 1)) for _ in weights]
        for j, i in enumerate(sel):
            D[i], kap[i] = Dsel[j], diag["kappa"][j]
        ups = [(scale * d).astype(W.dtype) for d, W in zip(D, weights)]
        vals = [diag["n_guarded"], diag["n_indefinite"]] + [xp.all(xp.isfinite(u)) for u in ups]
        if self.diagnostics:
            vals += ([k.min() for k in kap] + [k.max() for k in kap] + [xp.sum(k < 0) for k in kap]
                     + [xp.linalg.norm(u) for u in ups])
        # host read 2: counters, per-layer finiteness and diagnostics in one transfer
        host = backend.to_numpy(xp.stack([xp.asarray(v, dtype=np.float64) for v in vals]))
        n_guarded, n_indef = int(host[0]), int(host[1])
        fin = host[2:2 + L] != 0
        n_sing = diag["n_singular"]
        if not fin.all() and self.nan_policy != "propagate":
            if self.batch_mode == "exact_block" and self.nan_policy == "skip":
                # a failed block solve (CuPy returns NaN where NumPy raises): that layer gets no step
                for k in np.flatnonzero(~fin).tolist():
                    ups[k] = xp.zeros_like(ups[k])
                n_sing += int(np.count_nonzero(~fin))
            else:
                self.nonfinite(math.nan, blame={"the Newton direction of layers "
                                                + str(np.flatnonzero(~fin).tolist()): math.nan})
                return None, self.skipped(state), ExactNewtonInfo(skipped=True, n_excluded=nbad)
        lr = self.lr if scale > 0 else math.nan
        if self.diagnostics:
            o = 2 + L
            step_norm = np.where(fin, host[o + 3 * L:o + 4 * L], 0.0)
            info = ExactNewtonInfo(kappa_min=host[o:o + L].copy(), kappa_max=host[o + L:o + 2 * L].copy(),
                                   n_negative=host[o + 2 * L:o + 3 * L].astype(np.int64), step_norm=step_norm,
                                   n_excluded=nbad, lr=lr)
        else:
            info = self._empty_info(L, n_excluded=nbad, lr=lr)
        new = ExactNewtonState(state.count + 1, state.n_skipped + nbad, 0, state.n_guarded + n_guarded,
                               state.n_indefinite + n_indef, state.n_singular + n_sing, state.n_skipped_steps,
                               state.fallback)
        return ups, new, info
