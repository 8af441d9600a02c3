"""First-order baselines: SGD, momentum (heavy ball / Nesterov), Adam, AdamW, and their
direction transforms :func:`trace` and :func:`scale_by_adam`.

Each baseline is a :func:`~curvlab.methods.chain` of building blocks with ``updates = -lr * d``,
``d`` the method's search direction (:meth:`direction` returns it, with the new state):
``SGD`` = ``chain(add_decayed_weights(wd), scale_by_lr(lr))``, ``Momentum`` adds
``trace(mu, nesterov)``, ``Adam`` adds ``scale_by_adam(b1, b2, eps)`` (arXiv 1412.6980), and
``AdamW`` = ``chain(scale_by_adam(...), scale_by_lr(lr), add_decayed_weights(wd, lr=lr))``
(decoupled decay ``updates -= lr * weight_decay * params``, arXiv 1711.05101). The aliases keep
their flat states (``SGDState``, ``MomentumState``, ``AdamState``) and give the numbers of the
chains bit for bit. ``lr`` may be a schedule ``k -> lr_k`` of the step count.

Numerical trouble (``nan_policy``, ``max_consecutive_skips``; the shared policy of
:mod:`curvlab.methods._transform`): a step whose gradient, direction or new state holds NaN/Inf
(a non-finite gradient, or an overflow) is skipped by default — zero update, state unchanged
but for ``n_skipped_steps`` and ``consecutive_skips``. The direction transforms follow it too
when used on their own (outside a chain; inside one the chain's policy applies, checked once).
Host syncs: one per ``update`` (the finiteness check; none with ``nan_policy="propagate"``).

Examples
--------
>>> import numpy as np
>>> opt = Adam(lr=1e-3)
>>> p = np.zeros(2); s = opt.init(p)
>>> u, s = opt.update(np.array([1.0, -2.0]), s, p)
>>> np.round(u, 6)
array([-0.001,  0.001])
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import numpy as np

from .. import backend
from ._transform import (
    DEFAULT_MAX_CONSECUTIVE_SKIPS,
    AddDecayedWeights,
    Chain,
    CountState,
    EmptyState,
    ScaleByLR,
    Schedule,
    StepInfo,
    Transform,
    TransformState,
    Tree,
    add_decayed_weights,
    _check_real,
    check_lr,
    check_params,
    check_tree_like,
    scale_by_lr,
)
from ..tree import tree_leaves, tree_map, tree_zeros_like

__all__ = ["SGD", "Momentum", "Adam", "AdamW", "SGDState", "MomentumState", "AdamState",
           "scale_by_adam", "trace", "ScaleByAdam", "ScaleByAdamState", "Trace", "TraceState"]


_check_hyper = _check_real  # one range check for every hyperparameter of the package


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# ----------------------------------------------------------------------------- direction transforms
@dataclasses.dataclass
class TraceState(TransformState):
    """State of :func:`trace`: the momentum ``buffer`` (shaped like params) and the NaN counters."""

    buffer: Any
    n_skipped_steps: int = 0
    consecutive_skips: int = 0


class Trace(Transform):
    """Heavy-ball momentum as a direction transform, built by :func:`trace`.

    ``b ← μ b + u``, output ``b`` (Nesterov: ``u + μ b``), ``μ`` = ``decay`` (also read as
    ``momentum``); arithmetic in each leaf's dtype. The NaN policy applies when it is the
    outermost transform.
    """

    state_class = TraceState
    base_policy_check = True

    def __init__(self, decay: float = 0.9, nesterov: bool = False, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        self.momentum = _check_hyper("decay", decay, 0.0, high=1.0)
        self.nesterov = _check_bool("nesterov", nesterov)
        self.set_nan_policy(nan_policy, max_consecutive_skips)

    @property
    def decay(self) -> float:
        """``μ``, the momentum coefficient (the ``decay`` argument)."""
        return self.momentum

    def init(self, params: Tree) -> TraceState:
        check_params(params)
        return TraceState(tree_zeros_like(params))

    def _update(self, grads: Tree, state: TraceState, params: Tree | None = None,
                **extras: Any) -> tuple[Tree, TraceState, StepInfo]:
        check_tree_like("grads", grads, state.buffer, "the state")
        mu = self.momentum
        buf = tree_map(lambda b, x: b.dtype.type(mu) * b + x, state.buffer, grads)
        d = tree_map(lambda x, b: x + b.dtype.type(mu) * b, grads, buf) if self.nesterov else buf
        return d, TraceState(buf), StepInfo()


def trace(decay: float = 0.9, nesterov: bool = False, *, nan_policy: str = "skip",
          max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> Trace:
    """Return the momentum direction ``b ← μ b + u`` (``nesterov``: ``u + μ b``) as a transform.

    ``μ`` = ``decay`` in [0, 1). Chain it with :func:`~curvlab.methods.scale_by_lr`:
    ``Momentum(lr, μ)`` = ``chain(trace(μ), scale_by_lr(lr))``. ``nan_policy``,
    ``max_consecutive_skips``: the shared policy, applied when this is the outermost transform.
    """
    return Trace(decay, nesterov, nan_policy=nan_policy, max_consecutive_skips=max_consecutive_skips)


@dataclasses.dataclass
class ScaleByAdamState(TransformState):
    """State of :func:`scale_by_adam`: ``count`` (steps taken), moments ``m``, ``v``, NaN counters."""

    count: int
    m: Any
    v: Any
    n_skipped_steps: int = 0
    consecutive_skips: int = 0


class ScaleByAdam(Transform):
    """The Adam direction (arXiv 1412.6980, Algorithm 1), built by :func:`scale_by_adam`.

    ``m ← b1 m + (1−b1) u``, ``v ← b2 v + (1−b2) u²``, output ``m̂ / (sqrt(v̂) + eps)`` with the
    bias corrections ``m̂ = m/(1−b1^t)``, ``v̂ = v/(1−b2^t)``; arithmetic in each leaf's dtype.
    The NaN policy applies when it is the outermost transform.
    """

    state_class = ScaleByAdamState
    base_policy_check = True

    def __init__(self, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        self.b1 = _check_hyper("b1", b1, 0.0, high=1.0)
        self.b2 = _check_hyper("b2", b2, 0.0, high=1.0)
        # eps = 0 divides 0 by 0 on a zero gradient coordinate
        self.eps = _check_hyper("eps", eps, 0.0, inclusive=False)
        self.set_nan_policy(nan_policy, max_consecutive_skips)

    def init(self, params: Tree) -> ScaleByAdamState:
        check_params(params)
        return ScaleByAdamState(0, tree_zeros_like(params), tree_zeros_like(params))

    def _update(self, grads: Tree, state: ScaleByAdamState, params: Tree | None = None,
                **extras: Any) -> tuple[Tree, ScaleByAdamState, StepInfo]:
        check_tree_like("grads", grads, state.m, "the state")
        g = grads
        t = state.count + 1
        m = tree_map(lambda m_, x: m_.dtype.type(self.b1) * m_ + x.dtype.type(1 - self.b1) * x, state.m, g)
        v = tree_map(lambda v_, x: v_.dtype.type(self.b2) * v_ + x.dtype.type(1 - self.b2) * x * x, state.v, g)
        c1, c2 = 1.0 - self.b1**t, 1.0 - self.b2**t
        leaves = tree_leaves(m)
        xp = backend.get_namespace(*leaves) if leaves else np
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf: the caller's nan_policy decides
            d = tree_map(lambda m_, v_: (m_ / m_.dtype.type(c1)) / (xp.sqrt(v_ / v_.dtype.type(c2)) + v_.dtype.type(self.eps)), m, v)
        return d, ScaleByAdamState(t, m, v), StepInfo()


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, nan_policy: str = "skip",
                  max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> ScaleByAdam:
    """Return the Adam direction (arXiv 1412.6980, Alg. 1) as a transform.

    ``Adam(lr)`` = ``chain(scale_by_adam(), scale_by_lr(lr))`` bit for bit. ``nan_policy``,
    ``max_consecutive_skips``: the shared policy, applied when this is the outermost transform.
    """
    return ScaleByAdam(b1, b2, eps, nan_policy=nan_policy, max_consecutive_skips=max_consecutive_skips)


# ----------------------------------------------------------------------------- states of the aliases
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


def _lr_state(t: Transform, count: int) -> TransformState:
    return CountState(count) if isinstance(t, ScaleByLR) or t.state_class is CountState else EmptyState()


class _Alias(Chain):
    """A chain of building blocks keeping a flat state class of its own (the numbers and the
    saved states of the pre-chain classes); ``lr`` and ``weight_decay`` read and write the
    blocks' (a ``torch.optim`` scheduler sets them between steps)."""

    def __init__(self, *transforms: Transform, nan_policy: str, max_consecutive_skips: int) -> None:
        super().__init__(*transforms, nan_policy=nan_policy, max_consecutive_skips=max_consecutive_skips)

    def _blocks(self, kind: type) -> list[Any]:
        return [t for t in self.transforms if isinstance(t, kind)]

    @property
    def lr(self) -> Any:
        return self._blocks(ScaleByLR)[0].lr

    @lr.setter
    def lr(self, value: Any) -> None:
        value = check_lr(value) if not (isinstance(value, (int, float)) and value == 0) else 0.0
        for t in self.transforms:
            if isinstance(t, ScaleByLR) or (isinstance(t, AddDecayedWeights) and t.decoupled):
                t.lr = value

    @property
    def weight_decay(self) -> float:
        return self._blocks(AddDecayedWeights)[0].weight_decay

    @weight_decay.setter
    def weight_decay(self, value: float) -> None:
        self._blocks(AddDecayedWeights)[0].weight_decay = _check_hyper("weight_decay", value)

    def _inner_states(self, count: int, middle: TransformState | None) -> tuple:
        return tuple(middle if (middle is not None and not isinstance(t, (ScaleByLR, AddDecayedWeights)))
                     else _lr_state(t, count) for t in self.transforms)

    def init(self, params: Tree) -> Any:
        check_params(params)
        return super().init(params)


class SGD(_Alias):
    """Plain stochastic gradient descent, ``updates = -lr (g + wd params)``.

    ``d = g (+ wd * params)``, ``updates = -lr d``:
    ``chain(add_decayed_weights(wd), scale_by_lr(lr))``.
    """

    state_class = SGDState

    def __init__(self, lr: float | Schedule = 0.01, weight_decay: float = 0.0, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        lr = check_lr(lr)
        super().__init__(add_decayed_weights(_check_hyper("weight_decay", weight_decay)), scale_by_lr(lr),
                         nan_policy=nan_policy, max_consecutive_skips=max_consecutive_skips)

    def _split(self, state: SGDState) -> tuple:
        return self._inner_states(state.count, None)

    def _join(self, inner: tuple, state: Any) -> SGDState:
        return SGDState(inner[-1].count, state.n_skipped_steps, 0)


class Momentum(_Alias):
    """Heavy-ball (or Nesterov) momentum SGD, ``b <- mu b + g``, ``updates = -lr b``.

    ``d = b`` (Nesterov: ``d = g + mu b``), ``updates = -lr d``:
    ``chain(add_decayed_weights(wd), trace(mu, nesterov), scale_by_lr(lr))``.
    """

    state_class = MomentumState

    def __init__(self, lr: float | Schedule = 0.01, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        lr = check_lr(lr)
        momentum = _check_hyper("momentum", momentum, 0.0, high=1.0)   # named as the caller passed it
        super().__init__(add_decayed_weights(_check_hyper("weight_decay", weight_decay)), trace(momentum, nesterov),
                         scale_by_lr(lr), nan_policy=nan_policy, max_consecutive_skips=max_consecutive_skips)

    def _trace(self) -> Trace:
        return cast(Trace, self.transforms[1])  # built as the second block in __init__

    @property
    def momentum(self) -> float:
        return self._trace().momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        self._trace().momentum = _check_hyper("momentum", value, 0.0, high=1.0)

    @property
    def nesterov(self) -> bool:
        return self._trace().nesterov

    def _split(self, state: MomentumState) -> tuple:
        return self._inner_states(state.count, TraceState(state.buffer))

    def _join(self, inner: tuple, state: Any) -> MomentumState:
        return MomentumState(inner[-1].count, inner[1].buffer, state.n_skipped_steps, 0)


class Adam(_Alias):
    """Adam with bias correction and L2 weight decay (arXiv 1412.6980, Alg. 1).

    ``d = m̂ / (sqrt(v̂) + eps)``, ``updates = -lr d``, ``weight_decay`` added to the gradient:
    ``chain(add_decayed_weights(wd), scale_by_adam(b1, b2, eps), scale_by_lr(lr))``.
    """

    state_class = AdamState
    decoupled = False

    def __init__(self, lr: float | Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        lr = check_lr(lr)
        adam = scale_by_adam(b1, b2, eps)
        wd = add_decayed_weights(_check_hyper("weight_decay", weight_decay), lr=lr if self.decoupled else None)
        blocks = (adam, scale_by_lr(lr), wd) if self.decoupled else (wd, adam, scale_by_lr(lr))
        super().__init__(*blocks, nan_policy=nan_policy, max_consecutive_skips=max_consecutive_skips)

    def _adam(self) -> ScaleByAdam:
        return self._blocks(ScaleByAdam)[0]

    b1 = property(lambda self: self._adam().b1)
    b2 = property(lambda self: self._adam().b2)
    eps = property(lambda self: self._adam().eps)

    def _split(self, state: AdamState) -> tuple:
        return self._inner_states(state.count, ScaleByAdamState(state.count, state.m, state.v))

    def _join(self, inner: tuple, state: Any) -> AdamState:
        a = self._adam_state(inner)
        return AdamState(a.count, a.m, a.v, state.n_skipped_steps, 0)

    def _adam_state(self, inner: tuple) -> ScaleByAdamState:
        return next(s for s in inner if isinstance(s, ScaleByAdamState))


class AdamW(Adam):
    """Adam with decoupled weight decay (arXiv 1711.05101, Alg. 2), ``updates = -lr d - lr·wd·params``.

    Default ``weight_decay=0.01``:
    ``chain(scale_by_adam(b1, b2, eps), scale_by_lr(lr), add_decayed_weights(wd, lr=lr))``.
    Its :meth:`direction` is the Adam direction (the decoupled decay follows the step size)."""

    decoupled = True

    def __init__(self, lr: float | Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.01, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        super().__init__(lr, b1, b2, eps, weight_decay, nan_policy=nan_policy,
                         max_consecutive_skips=max_consecutive_skips)
