"""First-order baselines as transforms: SGD, momentum (heavy ball / Nesterov), Adam, AdamW.

Each returns ``updates = -lr * d`` where ``d`` is the method's search direction,
so a wrapper that needs the direction itself (curvature-rescaled learning
rates, paper 003) builds the baseline with ``lr=1`` and reads ``d = -updates``.
Weight decay: ``SGD``/``Momentum``/``Adam`` add ``weight_decay * params`` to the
gradient (L2 regularisation); ``AdamW`` decouples it
(``updates -= lr * weight_decay * params``).

Numerical trouble (``nan_policy``, ``max_consecutive_skips``; the shared policy of
:mod:`curvlab.methods._transform`): a step whose direction or new state holds NaN/Inf
(a non-finite gradient, or an overflow) is skipped by default — zero update, state unchanged
but for ``n_skipped_steps`` and ``consecutive_skips``. Host syncs: one per ``update`` (the
finiteness check; none with ``nan_policy="propagate"``).

Example
-------
>>> import numpy as np
>>> opt = Adam(lr=1e-3)
>>> p = np.zeros(2); s = opt.init(p)
>>> u, s = opt.update(np.array([1.0, -2.0]), s, p)
>>> np.round(u, 6)
array([-0.001,  0.001])
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import backend
from ._transform import (
    DEFAULT_MAX_CONSECUTIVE_SKIPS,
    Transform,
    TransformState,
    Tree,
    check_params,
    check_tree_like,
    state_leaves,
    tree_leaves,
    tree_map,
    tree_zeros_like,
)

__all__ = ["SGD", "Momentum", "Adam", "AdamW", "SGDState", "MomentumState", "AdamState"]


def _check_hyper(name: str, value: float, low: float = 0.0, inclusive: bool = True, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    ok = (v >= low if inclusive else v > low) and np.isfinite(v) and (high is None or v < high)
    if not ok:
        rng = f"{'[' if inclusive else '('}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be in {rng}, got {value}")
    return v


def _need_params(params: Tree | None) -> Tree:
    if params is None:
        raise ValueError("weight_decay needs params passed to update()")
    return params


def _with_decay(grads: Tree, params: Tree | None, wd: float) -> Tree:
    if wd == 0.0:
        return grads
    return tree_map(lambda g, p: g + p.dtype.type(wd) * p, grads, _need_params(params))


def _descent(d: Tree, lr: float) -> Tree:
    """``updates = -lr * d`` leaf by leaf, in each leaf's dtype."""
    return tree_map(lambda x: -x.dtype.type(lr) * x, d)


def _check_grads(grads: Tree, ref: Tree) -> None:
    check_tree_like("grads", grads, ref, "the state")


def _skip(opt: Transform, grads: Tree, state: Any) -> tuple[Tree, Any]:
    """The skipped step of the shared policy: zero updates, state counters advanced."""
    return tree_zeros_like(grads), opt.skipped(state)


@dataclasses.dataclass
class SGDState(TransformState):
    """``count``: steps taken; ``n_skipped_steps``/``consecutive_skips``: the NaN policy's counters."""

    count: int
    n_skipped_steps: int = 0
    consecutive_skips: int = 0


@dataclasses.dataclass
class MomentumState(TransformState):
    """``count``, the momentum ``buffer`` (shaped like params) and the NaN policy's counters."""

    count: int
    buffer: Any
    n_skipped_steps: int = 0
    consecutive_skips: int = 0


@dataclasses.dataclass
class AdamState(TransformState):
    """``count``, the moments ``m``, ``v`` (shaped like params) and the NaN policy's counters."""

    count: int
    m: Any
    v: Any
    n_skipped_steps: int = 0
    consecutive_skips: int = 0


class SGD(Transform):
    """Plain stochastic gradient descent: ``d = g (+ wd * params)``."""

    state_class = SGDState

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        self.lr = _check_hyper("lr", lr, 0.0, inclusive=False)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        self.set_nan_policy(nan_policy, max_consecutive_skips)

    def init(self, params: Tree) -> SGDState:
        check_params(params)
        return SGDState(count=0)

    def direction(self, grads: Tree, state: SGDState, params: Tree | None = None) -> tuple[Tree, SGDState]:
        """The unscaled direction ``d = g (+ wd * params)`` (``grads`` itself, no copy, when
        ``weight_decay = 0``) and the new state."""
        if params is not None:
            check_tree_like("grads", grads, params)
        else:
            check_params(grads, "grads")
        return _with_decay(grads, params, self.weight_decay), SGDState(state.count + 1, state.n_skipped_steps, 0)

    def update(self, grads: Tree, state: SGDState, params: Tree | None = None, **extras: Any) -> tuple[Tree, SGDState]:
        g, new = self.direction(grads, state, params)
        if self.nonfinite(g, blame={"grads": grads, "params": params if self.weight_decay else None}):
            return _skip(self, grads, state)
        return _descent(g, self.lr), new


class Momentum(Transform):
    """Heavy-ball momentum ``b <- mu b + g``, ``d = b`` (Nesterov: ``d = g + mu b``)."""

    state_class = MomentumState

    def __init__(self, lr: float = 0.01, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        self.lr = _check_hyper("lr", lr, 0.0, inclusive=False)
        self.momentum = _check_hyper("momentum", momentum, 0.0, high=1.0)
        self.nesterov = bool(nesterov)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        self.set_nan_policy(nan_policy, max_consecutive_skips)

    def init(self, params: Tree) -> MomentumState:
        check_params(params)
        return MomentumState(count=0, buffer=tree_zeros_like(params))

    def direction(self, grads: Tree, state: MomentumState, params: Tree | None = None) -> tuple[Tree, MomentumState]:
        """The unscaled direction ``d`` (the buffer, or ``g + mu b`` for Nesterov) and the new state."""
        _check_grads(grads, state.buffer)
        g = _with_decay(grads, params, self.weight_decay)
        mu = self.momentum
        buf = tree_map(lambda b, x: b.dtype.type(mu) * b + x, state.buffer, g)
        d = tree_map(lambda x, b: x + b.dtype.type(mu) * b, g, buf) if self.nesterov else buf
        return d, MomentumState(state.count + 1, buf, state.n_skipped_steps, 0)

    def update(self, grads: Tree, state: MomentumState, params: Tree | None = None,
               **extras: Any) -> tuple[Tree, MomentumState]:
        d, new = self.direction(grads, state, params)
        if self.nonfinite(d, *state_leaves(new),
                          blame={"grads": grads, "params": params if self.weight_decay else None}):
            return _skip(self, grads, state)
        return _descent(d, self.lr), new


class Adam(Transform):
    """Adam with bias correction: ``d = m̂ / (sqrt(v̂) + eps)``; L2 ``weight_decay`` on the gradient."""

    state_class = AdamState
    decoupled = False

    def __init__(self, lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        self.lr = _check_hyper("lr", lr, 0.0, inclusive=False)
        self.b1 = _check_hyper("b1", b1, 0.0, high=1.0)
        self.b2 = _check_hyper("b2", b2, 0.0, high=1.0)
        # eps = 0 divides 0 by 0 on a zero gradient coordinate
        self.eps = _check_hyper("eps", eps, 0.0, inclusive=False)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        self.set_nan_policy(nan_policy, max_consecutive_skips)

    def init(self, params: Tree) -> AdamState:
        check_params(params)
        return AdamState(count=0, m=tree_zeros_like(params), v=tree_zeros_like(params))

    def direction(self, grads: Tree, state: AdamState, params: Tree | None) -> tuple[Tree, AdamState]:
        """The unscaled Adam direction ``d`` and the new state."""
        _check_grads(grads, state.m)
        g = grads if self.decoupled else _with_decay(grads, params, self.weight_decay)
        t = state.count + 1
        m = tree_map(lambda m_, x: m_.dtype.type(self.b1) * m_ + x.dtype.type(1 - self.b1) * x, state.m, g)
        v = tree_map(lambda v_, x: v_.dtype.type(self.b2) * v_ + x.dtype.type(1 - self.b2) * x * x, state.v, g)
        c1, c2 = 1.0 - self.b1**t, 1.0 - self.b2**t
        xp = backend.get_namespace(*tree_leaves(m))
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf: the caller's nan_policy decides
            d = tree_map(lambda m_, v_: (m_ / m_.dtype.type(c1)) / (xp.sqrt(v_ / v_.dtype.type(c2)) + v_.dtype.type(self.eps)), m, v)
        return d, AdamState(t, m, v, state.n_skipped_steps, 0)

    def update(self, grads: Tree, state: AdamState, params: Tree | None = None, **extras: Any) -> tuple[Tree, AdamState]:
        d, new = self.direction(grads, state, params)
        wd_params = params if (self.weight_decay and params is not None) else None
        if self.nonfinite(d, *state_leaves(new), wd_params if self.decoupled else None,
                          blame={"grads": grads, "params": wd_params}):
            return _skip(self, grads, state)
        upd = _descent(d, self.lr)
        if self.decoupled and self.weight_decay:
            upd = tree_map(lambda u, p: u - p.dtype.type(self.lr * self.weight_decay) * p, upd, _need_params(params))
        return upd, new


class AdamW(Adam):
    """Adam with decoupled weight decay (default ``weight_decay=0.01``)."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.01, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        super().__init__(lr, b1, b2, eps, weight_decay, nan_policy=nan_policy,
                         max_consecutive_skips=max_consecutive_skips)
