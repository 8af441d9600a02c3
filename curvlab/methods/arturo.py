"""arTuRO: KL trust-region steps with an RLS/Kalman diagonal-curvature model.

Method inspired by arXiv 2310.20574 (Dahlinger, Becker, Hüttenrauch, Neumann,
"Information-Theoretic Trust Regions for Stochastic Gradient-Based
Optimization"). Each weight is the mean ``μ`` of a Gaussian with precision
``p``; a per-coordinate filter (:class:`curvlab.estimators.DiagonalRLS`)
models the gradient as ``a + hθ``; each step solves for the single multiplier
η of the mean-KL bound ``½ Σ p (μ' − μ)² ≤ ε`` and moves

    μ' = μ − (a + hμ + βp0μ)/(h_eff + βp0 + ηp),   p' = (h_eff + βp0 + νp)/(β + ν).

Modes
-----
``"reference"`` reproduces the official code (commit 96968a6): bisection with
absolute tolerance 0.5, warm bracket ``[η/3, 3η]``, early exit, bracket
midpoint; weight decay shrinks the weights before the filter and, from the
second step on, the mean too; fixed ν; no curvature floor.
``"exact"``: safeguarded Newton on the dual to relative tolerance ``rtol``,
η = 0 when the constraint is inactive, pole-aware domain for ``h < 0``,
optional curvature floor ``h_min``, ``nu="coupled"`` (ν = η), precision clamp
``p' ≥ βp0/(β + ν)``, decoupled weight decay every step, optional PSD guard.

A gradient holding NaN/Inf follows the shared ``nan_policy``
(:mod:`curvlab.methods._transform`): ``"skip"`` (default) leaves the state
untouched but for ``n_skipped_steps``/``consecutive_skips`` and returns a zero
update, ``FloatingPointError`` past ``max_consecutive_skips`` skips in a row;
``"raise"``; ``"propagate"`` (no step-level check: the filter kernel keeps the
state of each non-finite coordinate and the step goes on). Pass only parameters
that receive gradients (the official code reads the state of gradient-free
tensors and crashes on them); zero-size arrays are allowed. One global η couples
all arrays of the tree. The state arrays are updated in place and the same state
object is returned (``inplace`` is True; ``copy_state=True`` keeps the input
state intact).

Passes over memory (:mod:`curvlab.kernels`). A warm step (every step but the first, without
``psd_guard``) makes two fused passes plus the solver's: pass 1
(:func:`~curvlab.kernels.arturo_prepare`) reads the gradient, the weights and the six state
arrays, writes the filtered ``a, h`` into two scratch arrays kept by the optimizer, and
returns the count of non-finite coordinates (the NaN policy), the pole, the count of h < 0 and
the dual at the first η (exact: the warm start; reference: the first two bisection
midpoints); each further dual pass reads 4 arrays and evaluates the dual at one η (exact
mode's Newton) or at the rest of the bisection path predicted from the values so far
(reference mode, :func:`curvlab.trust_region.kl.solve_kl`; the answer is that of the
sequential bisection, only passes are saved); the last pass
(:func:`~curvlab.kernels.arturo_finish`) writes the state and the update. About 25 + 4 per
further dual pass arrays of traffic (``benchmarks/run_arturo.py --ce-only``). ``info.n_passes``
counts the dual passes. The first step (filter initialisation) and ``psd_guard`` take the
multi-pass path (finite check, filter, pole, dual, apply).

A step is atomic: if it raises (an infinite pole, NaN already in the state, a
``ConvergenceWarning`` turned into an error), the state is bitwise unchanged. A warm
step writes the state only in its last pass, after the KL solve has succeeded; the
multi-pass path keeps copies of the five filter arrays until then and writes them back on
error.

An unconverged KL solve (status ``"max_iter"``, ``"breakdown"`` = bracket failed,
``"stagnated"`` next to a pole) is taken with the returned η and reported once per
step: the info's ``status``/``converged``, the state's ``n_unconverged`` total, and
one :class:`~curvlab.linalg.results.ConvergenceWarning` ``"ArTuRO: step N: ..."``
(``warn=False`` silences the warning, not the counts). :func:`solve_kl` itself is
called with ``warn=False``. NaN in the dual (a corrupted state) raises
``FloatingPointError`` instead.

Host syncs per step on CuPy (one array; each kernel call that returns numbers
reads them in one transfer): a warm step 3 (pass 1: filter count, pole, dual values) + 1 per
further dual pass + 2 (the last pass's counts), plus 1 finiteness check when a coordinate was
skipped; the multi-pass path 1 finiteness check (for all arrays together) + 1 filter + 1 pole
+ 1 apply + 1 per dual evaluation: ≤ 4 + 1 per dual evaluation either way
(``tests/test_sync_budgets.py``). Each further array adds the same per array.

Examples
--------
>>> import numpy as np
>>> opt = ArTuRO(kl_bound=0.01, reg_weight=0.1, mode="exact")
>>> w = np.array([0.5, -1.0, 2.0]); state = opt.init(w)
>>> upd, state, info = opt.update_with_info(np.array([0.3, -0.2, 0.9]), state, w)
>>> bool(abs(info.kl_ratio - 1) < 1e-9), info.converged
(True, True)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import numpy as np

from .. import backend, kernels
from ..trust_region.kl import KLDual, _predicted_path, solve_kl
from ..linalg.results import warn_unconverged
from ..tree import tree_flatten, tree_leaves, tree_map, tree_unflatten
from ._transform import (
    DEFAULT_MAX_CONSECUTIVE_SKIPS,
    Transform,
    TransformState,
    Tree,
    all_finite,
    check_params,
    check_tree_like,
)

__all__ = ["ArTuRO", "ArTuROState", "ArTuROStepInfo", "ARTURO_PRESETS"]

#: hyperparameters of the official code's shipped configs (var_init 0.01, prior_prec 0.0015,
#: start_filter_cov 5e-5, nu 1.3 shared); the curvlab default is "fmnist_cnn" with weight_decay 0
ARTURO_PRESETS: dict[str, dict[str, float]] = {
    "fmnist_cnn": dict(kl_bound=0.085675, reg_weight=0.058657, measurement_noise=2.81679,
                       dynamic_model_noise=0.017393, weight_decay=1.54e-6),
    "cifar10_cnn": dict(kl_bound=0.0027875, reg_weight=0.29679, measurement_noise=1.21975,
                        dynamic_model_noise=0.0024553, weight_decay=0.0),
    "cifar10_resnet34": dict(kl_bound=0.0071329, reg_weight=1.59735, measurement_noise=9.32844,
                             dynamic_model_noise=0.089381, weight_decay=7.03e-4),
    "cifar100_resnet34": dict(kl_bound=0.0072337, reg_weight=1.67677, measurement_noise=4.82203,
                              dynamic_model_noise=0.0097788, weight_decay=0.0),
}
ARTURO_PRESETS["fmnist_resnet18"] = dict(ARTURO_PRESETS["fmnist_cnn"])
ARTURO_PRESETS["cifar100_cnn"] = dict(ARTURO_PRESETS["cifar10_cnn"])


@dataclasses.dataclass
class ArTuROState(TransformState):
    """arTuRO state: six trees shaped like the parameters, and scalars (what the next step needs).

    Arrays: ``p`` precision, ``a``/``h`` gradient model, ``P00, P01, P11`` filter
    covariance. Scalars: ``count`` steps taken; ``eta`` last multiplier (−1
    before the first step; the next solve's warm start); ``n_skipped_steps`` (non-finite
    gradients) and ``consecutive_skips`` (the NaN policy's counters); totals
    ``total_evals``, ``n_bracket_failed`` and ``n_unconverged`` (steps taken with an
    unconverged KL solve). The last step's report is its
    :class:`ArTuROStepInfo` (:meth:`ArTuRO.update_with_info`).
    Saved states of earlier versions, which held the report, load (those keys are ignored).
    """

    p: Any
    a: Any
    h: Any
    P00: Any
    P01: Any
    P11: Any
    count: int = 0
    eta: float = -1.0
    n_skipped_steps: int = 0
    total_evals: int = 0
    n_bracket_failed: int = 0
    consecutive_skips: int = 0
    n_unconverged: int = 0


@dataclasses.dataclass
class ArTuROStepInfo:
    """Typed report of one step: the multiplier η, solver iterations and dual evaluations,
    the achieved KL and KL/ε, flags (converged, constraint inactive, bracket failed), the KL
    solver's ``status`` (``"converged"``, ``"max_iter"``, ``"breakdown"``, ``"stagnated"``;
    ``"skipped"`` for a skipped step), counts (negative curvatures, clamped precisions,
    PSD-guarded covariances), the skip total, ``skipped`` (the NaN policy skipped this
    step; the other fields are then NaN/0), and ``n_passes``: passes over the data made for the
    dual (pass 1 of a warm step counts one, whatever number of η it evaluates; the first step
    and ``psd_guard`` add one for the pole)."""

    eta: float = math.nan
    iterations: int = 0
    n_evals: int = 0
    kl: float = math.nan
    kl_ratio: float = math.nan
    converged: bool = False
    inactive: bool = False
    bracket_failed: bool = False
    n_negative_h: int = 0
    n_clamped: int = 0
    n_guarded: int = 0
    n_skipped_steps: int = 0
    skipped: bool = False
    lr: float = math.nan
    status: str = ""
    n_passes: int = 0


def _positive(name: str, v: float, strict: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number {'>' if strict else '>='} 0, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v) or (v <= 0 if strict else v < 0):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} 0, got {v}")
    return v


class ArTuRO(Transform):
    """The arTuRO optimizer as a transform (method inspired by arXiv 2310.20574).

    Reference names in brackets; defaults = preset ``fmnist_cnn`` with ``weight_decay=0``.

    Parameters
    ----------
    kl_bound : ε, the KL bound [kl_bound / lr]; ``update(..., kl_bound=)`` overrides it per step.
    reg_weight : β, prior weight [reg_weight].
    prior_prec : p0 > 0, precision of the prior
        N(0, 1/p0) [prior_prec] (0 is no Gaussian; it would let the precision clamp reach 0).
    measurement_noise : r.
    dynamic_model_noise : q.
    start_filter_cov : P0.
    var_init : initial variance, ``p = 1/var_init``.
    nu : ν (float), or ``"coupled"`` (ν = η, exact mode).
    weight_decay : wd; the weights shrink by ``(1 − ε·wd)`` before the filter.
    mode : ``"reference"`` or ``"exact"``.
    h0 : initial curvature (0.1).
    eta_tol, eta_max, warm_factor, early_exit : reference bisection constants.
    rtol, max_iter : exact solver tolerance on ``|KL/ε − 1|`` and evaluation cap.
    h_min : curvature floor (exact mode).
    decay : ``"decoupled"`` or ``"none"`` (exact mode).
    psd_guard : clamp the filter covariance to PSD (exact mode).
    track_kl : reference mode: evaluate the achieved KL at the returned η (one extra
        read pass, which the official code does not make); else the info's ``kl`` is NaN.
    impl : kernel implementation, one of :data:`curvlab.kernels.IMPLS` (``"numpy"``: the
        multi-pass NumPy baseline).
    copy_state : work on a copy of the state (else the state is updated in place: ``inplace``).
    warn : issue a :class:`~curvlab.linalg.results.ConvergenceWarning` for a step whose KL
        solve did not converge (default True; the info and ``n_unconverged`` report it always).
    nan_policy, max_consecutive_skips : the shared numerical-trouble policy (module docstring).
    """

    #: Warm steps as the two fused passes of ``kernels.arturo_prepare`` / ``arturo_finish``;
    #: False runs the separate kernels (``rls_filter_update``, the dual, the apply), which
    #: instrumentation and ablations (paper_figures' frozen curvature) may replace.
    fused_steps: bool = True

    state_class = ArTuROState

    def __init__(self, kl_bound: float = 0.085675, reg_weight: float = 0.058657, prior_prec: float = 0.0015,
                 measurement_noise: float = 2.81679, dynamic_model_noise: float = 0.017393,
                 start_filter_cov: float = 5e-5, var_init: float = 0.01, nu: float | str = 1.3,
                 weight_decay: float = 0.0, mode: str = "reference", *, h0: float = 0.1, eta_tol: float = 0.5,
                 eta_max: float = 1e4, warm_factor: float = 3.0, early_exit: float = 0.1, rtol: float = 1e-10,
                 max_iter: int = 50, h_min: float | None = None, decay: str = "decoupled",
                 psd_guard: bool = False, track_kl: bool = True, impl: str = "auto",
                 copy_state: bool = False, warn: bool = True, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        self.set_nan_policy(nan_policy, max_consecutive_skips)
        if mode not in ("reference", "exact"):
            raise ValueError(f"mode must be 'reference' or 'exact', got {mode!r}")
        self.mode = mode
        self.kl_bound = _positive("kl_bound (ε)", kl_bound)
        self.reg_weight = _positive("reg_weight (β)", reg_weight, strict=False)
        self.prior_prec = _positive("prior_prec (p0)", prior_prec)
        self.measurement_noise = _positive("measurement_noise (r)", measurement_noise)
        self.dynamic_model_noise = _positive("dynamic_model_noise (q)", dynamic_model_noise, strict=False)
        self.start_filter_cov = _positive("start_filter_cov (P0)", start_filter_cov, strict=False)
        self.var_init = _positive("var_init", var_init)
        if isinstance(nu, str) and nu != "coupled":
            raise ValueError(f"nu must be a number >= 0 or 'coupled', got {nu!r}")
        if nu == "coupled":
            if mode != "exact":
                raise ValueError("nu='coupled' needs mode='exact'")
            if self.reg_weight <= 0:
                raise ValueError("nu='coupled' needs reg_weight (β) > 0")
            self.nu: float | str = "coupled"
        else:
            self.nu = _positive("nu", cast(float, nu), strict=False)  # not a str here; _positive checks the type
            if self.reg_weight + self.nu <= 0:
                raise ValueError(f"reg_weight + nu must be > 0, got {self.reg_weight} + {self.nu}")
        self.weight_decay = _positive("weight_decay", weight_decay, strict=False)
        self.h0 = float(h0)
        if not math.isfinite(self.h0):
            raise ValueError(f"h0 must be a finite number, got {h0!r}")
        self.eta_tol = _positive("eta_tol", eta_tol)
        self.eta_max = _positive("eta_max", eta_max)
        self.warm_factor = _positive("warm_factor", warm_factor)
        self.early_exit = _positive("early_exit", early_exit, strict=False)
        self.rtol = _positive("rtol", rtol)
        if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        self.max_iter = int(max_iter)
        if h_min is not None and mode != "exact":
            raise ValueError("h_min needs mode='exact' (the reference code has no curvature floor)")
        self.h_min = None if h_min is None else float(h_min)
        if self.h_min is not None and not math.isfinite(self.h_min):
            raise ValueError(f"h_min must be a finite number or None, got {h_min!r}")
        if decay not in ("decoupled", "none"):
            raise ValueError(f"decay must be 'decoupled' or 'none', got {decay!r}")
        self.decay = decay
        if psd_guard and mode != "exact":
            raise ValueError("psd_guard needs mode='exact'")
        self.psd_guard = bool(psd_guard)
        self.track_kl = bool(track_kl)
        if impl not in kernels.IMPLS:
            raise ValueError(f"impl must be one of {kernels.IMPLS}, got {impl!r}")
        self.impl = impl
        self.copy_state = bool(copy_state)
        self.warn = bool(warn)
        self.inplace = not self.copy_state

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ArTuRO":
        """Build from one of :data:`ARTURO_PRESETS`, with keyword overrides.

        >>> ArTuRO.from_preset("cifar10_cnn").kl_bound
        0.0027875
        """
        if name not in ARTURO_PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(ARTURO_PRESETS)}")
        return cls(**{**ARTURO_PRESETS[name], **overrides})

    def init(self, params: Tree) -> ArTuROState:
        """State for ``params`` (a float array or a non-empty pytree of them)."""
        check_params(params)
        leaves = tree_leaves(params)
        if len(leaves) == 0:
            raise ValueError("params is an empty list; arTuRO needs at least one parameter array")
        for i, x in enumerate(leaves):
            backend.check_float_array(x, f"params[{i}]")

        def full(v: float) -> Any:
            return lambda x: backend.get_namespace(x).full(x.shape, v, dtype=x.dtype)

        return ArTuROState(p=tree_map(full(1.0 / self.var_init), params),
                           **{k: tree_map(full(0.0), params) for k in ("a", "h", "P00", "P01", "P11")})

    def info(self, state: ArTuROState, kl_bound: float | None = None) -> ArTuROStepInfo:
        """The report of the step that made ``state`` (``kl_ratio`` against ``kl_bound``,
        default the constructor's); prefer :meth:`update_with_info`."""
        eps = self.kl_bound if kl_bound is None else float(kl_bound)
        last = state.__dict__.get("_info")
        if last is None:
            return ArTuROStepInfo(eta=state.eta, n_skipped_steps=state.n_skipped_steps)
        return dataclasses.replace(last, kl_ratio=last.kl / eps, n_skipped_steps=state.n_skipped_steps)

    def _update(self, grads: Tree, state: ArTuROState, params: Tree | None = None, *,
                kl_bound: float | None = None, **extras: Any) -> tuple[Tree, ArTuROState, ArTuROStepInfo]:
        """One arTuRO step (method inspired by arXiv 2310.20574): ``updates = μ' − params``, the
        new state and the step's :class:`ArTuROStepInfo`."""
        check_params(grads, "grads")
        if params is None:
            raise ValueError("arTuRO needs params passed to update() (the weights are the mean)")
        check_params(params)
        check_tree_like("params", params, state.p, "the state")
        check_tree_like("grads", grads, params)
        eps = self.kl_bound if kl_bound is None else _positive("kl_bound (ε)", kl_bound)
        xp = backend.get_namespace(*tree_leaves(params))
        if self.copy_state:
            state = ArTuROState.from_dict(state.to_dict(), xp=xp)
        P, treedef = tree_flatten(params)
        G = tree_leaves(grads)
        S = [tree_leaves(getattr(state, k)) for k in ("p", "a", "h", "P00", "P01", "P11")]
        W = [w.reshape(-1) for w in P]
        Gf = [g.reshape(-1).astype(w.dtype, copy=False) for g, w in zip(G, W)]
        Sf = [[x.reshape(-1) for x in leaves] for leaves in S]
        # pass 1 reads the state only (module docstring); fused_steps=False runs the same step as
        # separate kernels (filter, duals, apply: more passes, the same numbers to rounding)
        fused = self.fused_steps and state.count > 0 and not self.psd_guard
        if self.nan_policy != "propagate" and not fused:
            if xp is np:  # the fused count (no temporary); no sync to save on the host
                bad = any(kernels.count_nonfinite(g, impl=self.impl) for g in Gf)
            else:         # one device reduction over all arrays, one host read
                bad = not all_finite(Gf)
            if bad:
                self.nonfinite(*Gf, blame={"grads": grads})
                state = self.skipped(state, inplace=True)
                return (tree_map(lambda w: xp.zeros_like(w), params), state,
                        ArTuROStepInfo(n_skipped_steps=state.n_skipped_steps, skipped=True, status="skipped"))

        shrink = 1.0 - eps * self.weight_decay
        if self.mode == "reference":
            xscale, mscale = shrink, (shrink if state.count > 0 else 1.0)
        else:
            xscale = mscale = shrink if self.decay == "decoupled" else 1.0
        if fused:
            return self._fused_update(grads, params, state, P, treedef, Gf, W, Sf, xp, eps, xscale, mscale)
        # the filter updates a, h, P in place before the KL solve can fail (an infinite pole, a
        # corrupted state, a ConvergenceWarning turned into an error): in place, keep copies of
        # what it overwrites and put them back on any error, so a failed step changes nothing
        keep = None if self.copy_state else [[x.copy() for x in leaves] for leaves in Sf[1:]]
        try:
            guarded = 0
            for i, (g, w) in enumerate(zip(Gf, W)):
                _, k = kernels.rls_filter_update(g, w, Sf[1][i], Sf[2][i], Sf[3][i], Sf[4][i], Sf[5][i],
                                                 xscale=xscale, q=self.dynamic_model_noise, r=self.measurement_noise,
                                                 init=state.count == 0, h0=self.h0, P0=self.start_filter_cov,
                                                 psd_guard=self.psd_guard, impl=self.impl)
                guarded += k

            dual = KLDual(W, Sf[1], Sf[2], Sf[0], beta=self.reg_weight, prior_prec=self.prior_prec,
                          mscale=mscale, h_min=self.h_min, impl=self.impl)
            res = solve_kl(dual, eps, mode=self.mode, eta_prev=state.eta, rtol=self.rtol, max_iter=self.max_iter,
                           eta_tol=self.eta_tol, eta_max=self.eta_max, warm_factor=self.warm_factor,
                           early_exit=self.early_exit, final_kl=False, warn=False)
            eta = res.eta
            if self.mode == "exact":
                kl = res.kl if res.kl == res.kl else dual(eta)[0]
            else:
                kl = dual(eta)[0] if self.track_kl else math.nan
            if dual.n_nan:
                n_bad = sum(kernels.count_nonfinite(x, impl=self.impl) for leaves in Sf for x in leaves)
                raise FloatingPointError(f"arTuRO state holds {n_bad} non-finite entries (step {state.count}); "
                                         "the gradients were finite, so the state was corrupted before this step")
            if not res.converged:
                warn_unconverged("ArTuRO", f"step {state.count + 1}: the KL solve did not converge (status "
                                 f"{res.status!r} after {res.n_evals} dual evaluations, η = {eta:.6g}, KL/ε = "
                                 f"{kl / eps:.6g}); the step is taken with this η (info.status, "
                                 "state.n_unconverged)", warn=self.warn, stacklevel=4)
        except BaseException:
            if keep is not None:
                for cur, old in zip(Sf[1:], keep):
                    for c, o in zip(cur, old):
                        c[...] = o
            raise
        nu = eta if isinstance(self.nu, str) else self.nu  # the only str is "coupled"
        beta_p0 = self.reg_weight * self.prior_prec
        p_min = beta_p0 / (self.reg_weight + nu) if self.mode == "exact" else -math.inf
        outs = [xp.empty_like(w) for w in W]
        clamped = 0
        for i, w in enumerate(W):
            clamped += kernels.arturo_apply(eta, w, Sf[1][i], Sf[2][i], Sf[0][i], outs[i], mscale=mscale,
                                            beta_p0=beta_p0, nu=nu, beta=self.reg_weight, p_min=p_min,
                                            h_min=-math.inf if self.h_min is None else self.h_min, impl=self.impl)
        if self.mode == "exact":
            n_neg = res.n_negative_h
        else:
            n_neg = dual.pole()[1]
        return self._finish_info(state, res, eta, kl, eps, n_neg, clamped, guarded, dual.n_passes + 1, outs, P,
                                 treedef)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled/copied without the scratch arrays (rebuilt at the next warm step)."""
        d = dict(self.__dict__)
        d.pop("_scratch_cache", None)
        return d

    def _scratch(self, W: list[Any], xp: Any) -> list[tuple[Any, Any]]:
        """Two scratch arrays per parameter array (the filtered ``a, h`` of pass 1), kept between steps."""
        key = [(w.size, np.dtype(w.dtype).str) for w in W]
        cache = self.__dict__.get("_scratch_cache")
        if cache is None or cache[0] != key or cache[1] is not xp:
            cache = (key, xp, [(xp.empty_like(w), xp.empty_like(w)) for w in W])
            self.__dict__["_scratch_cache"] = cache
        return cache[2]

    def _first_etas(self, eta_prev: float, eps: float) -> list[float]:
        """The η at which pass 1 evaluates the dual: the predicted bisection path (reference
        mode), the warm start and 0 (exact mode)."""
        if self.mode == "reference":
            if eta_prev < 0:
                lo, hi = 0.0, self.eta_max
            else:
                lo, hi = eta_prev / self.warm_factor, min(self.warm_factor * eta_prev, self.eta_max)
            if eta_prev < 0:
                return _predicted_path(lo, hi, (lo + hi) / 2.0, self.eta_tol)
            # the second midpoint of the warm bracket is η_prev itself: which side the new root lies
            # on is unknown, so evaluate the first two midpoints only; the solver's next pass follows
            # the path predicted from these values (Newton on KL^-1/2), early exit included
            return _predicted_path(lo, hi, eta_prev, self.eta_tol)[:2]
        return [eta_prev] if eta_prev > 0 else [0.0]

    def _fused_update(self, grads: Tree, params: Tree, state: ArTuROState, P: list[Any], treedef: Any, Gf: list[Any],
                      W: list[Any], Sf: list[list[Any]], xp: Any, eps: float, xscale: float,
                      mscale: float) -> tuple[Tree, ArTuROState, ArTuROStepInfo]:
        """A warm step in two passes over the state plus the solver's: pass 1
        (:func:`curvlab.kernels.arturo_prepare`) filters into scratch and evaluates the pole and the
        dual at the first η; the state is written only by the last pass
        (:func:`curvlab.kernels.arturo_finish`), after the solve succeeded, so a failed step
        leaves it untouched without copies."""
        scratch = self._scratch(W, xp)
        chk = self.mode == "exact"
        etas = self._first_etas(state.eta, eps)
        h_min = -math.inf if self.h_min is None else self.h_min
        beta_p0 = self.reg_weight * self.prior_prec
        fkw: dict[str, Any] = dict(xscale=xscale, q=self.dynamic_model_noise, r=self.measurement_noise, mscale=mscale,
                   beta_p0=beta_p0, h_min=h_min, impl=self.impl)
        skipped, pole, n_neg = 0, -math.inf, 0
        kl = np.zeros(len(etas))
        dkl = np.zeros(len(etas))
        for i, (g, w) in enumerate(zip(Gf, W)):
            s_, m_, n_, k_, d_ = kernels.arturo_prepare(etas, g, w, Sf[1][i], Sf[2][i], Sf[3][i], Sf[4][i], Sf[5][i],
                                                        Sf[0][i], scratch[i][0], scratch[i][1], domain_check=chk,
                                                        pole=chk, **fkw)  # reference mode ignores the pole
            skipped, pole, n_neg = skipped + s_, max(pole, m_) if chk else math.nan, n_neg + n_
            kl += k_
            dkl += d_
        if skipped and self.nan_policy != "propagate":
            # a coordinate was skipped: a non-finite gradient (the step's policy) or weight (filtered as before)
            if any(kernels.count_nonfinite(g, impl=self.impl) for g in Gf):
                self.nonfinite(*Gf, blame={"grads": grads})
                state = self.skipped(state, inplace=True)
                return (tree_map(lambda w: xp.zeros_like(w), params), state,
                        ArTuROStepInfo(n_skipped_steps=state.n_skipped_steps, skipped=True, status="skipped"))
        dual = KLDual(W, [x[0] for x in scratch], [x[1] for x in scratch], Sf[0], beta=self.reg_weight,
                      prior_prec=self.prior_prec, mscale=mscale, h_min=self.h_min, impl=self.impl)
        dual.seed(etas, kl, dkl, domain_check=chk, pole=(pole, n_neg) if chk else None)
        dual.n_passes = 1
        res = solve_kl(dual, eps, mode=self.mode, eta_prev=state.eta, rtol=self.rtol, max_iter=self.max_iter,
                       eta_tol=self.eta_tol, eta_max=self.eta_max, warm_factor=self.warm_factor,
                       early_exit=self.early_exit, final_kl=False, warn=False)
        eta = res.eta
        if self.mode == "exact":
            kl_eta = res.kl
        else:
            kl_eta = dual(eta)[0] if (self.track_kl and dual.known(eta)) else math.nan
        # the achieved KL not at hand: the last pass computes it on its chunks in cache (no extra pass)
        want_kl = kl_eta != kl_eta and (self.mode == "exact" or self.track_kl)
        if dual.n_nan:
            n_bad = sum(kernels.count_nonfinite(x, impl=self.impl) for leaves in Sf for x in leaves)
            raise FloatingPointError(f"arTuRO state holds {n_bad} non-finite entries (step {state.count}); "
                                     "the gradients were finite, so the state was corrupted before this step")
        nu = eta if isinstance(self.nu, str) else self.nu  # the only str is "coupled"
        p_min = beta_p0 / (self.reg_weight + nu) if self.mode == "exact" else -math.inf
        outs = [xp.empty_like(w) for w in W]
        clamped = 0
        kl_sum = 0.0
        if not res.converged:
            # the warning may be an error (warnings filter): raise it before the state is written
            warn_unconverged("ArTuRO", f"step {state.count + 1}: the KL solve did not converge (status "
                             f"{res.status!r} after {res.n_evals} dual evaluations, η = {eta:.6g}, KL/ε = "
                             f"{kl_eta / eps:.6g}); the step is taken with this η (info.status, "
                             "state.n_unconverged)", warn=self.warn, stacklevel=5)
        for i, (g, w) in enumerate(zip(Gf, W)):
            n_c, kl_i, _ = kernels.arturo_finish(eta, g, w, scratch[i][0], scratch[i][1], Sf[3][i], Sf[4][i],
                                                 Sf[5][i], Sf[0][i], Sf[1][i], Sf[2][i], outs[i], nu=nu,
                                                 beta=self.reg_weight, p_min=p_min, want_kl=want_kl, **fkw)
            clamped += n_c
            kl_sum += kl_i
        if want_kl:
            kl_eta = kl_sum
        return self._finish_info(state, res, eta, kl_eta, eps, n_neg, clamped, 0, dual.n_passes, outs, P, treedef)

    def _finish_info(self, state: ArTuROState, res: Any, eta: float, kl: float, eps: float, n_neg: int, clamped: int,
                     guarded: int, n_passes: int, outs: list[Any], P: list[Any],
                     treedef: Any) -> tuple[Tree, ArTuROState, ArTuROStepInfo]:
        state.count += 1
        state.consecutive_skips = 0
        state.eta = float(eta)
        state.total_evals += int(res.n_evals)
        state.n_bracket_failed += int(res.bracket_failed)
        state.n_unconverged += int(not res.converged)
        info = ArTuROStepInfo(eta=float(eta), iterations=int(res.iterations), n_evals=int(res.n_evals),
                              kl=float(kl), kl_ratio=float(kl) / eps, converged=bool(res.converged),
                              inactive=bool(res.inactive), bracket_failed=bool(res.bracket_failed),
                              n_negative_h=int(n_neg), n_clamped=int(clamped), n_guarded=int(guarded),
                              n_skipped_steps=state.n_skipped_steps, status=str(res.status), n_passes=int(n_passes))
        updates = [o.reshape(x.shape) for o, x in zip(outs, P)]
        return tree_unflatten(treedef, updates), state, info
