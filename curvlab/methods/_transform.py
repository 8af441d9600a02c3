"""The optimizer-transform protocol shared by every curvlab method (optax-shaped).

A method is a :class:`Transform`: ``init(params) -> state``,
``update(grads, state, params, **extras) -> (updates, state)`` and
``update_with_info(...) -> (updates, state, info)``. ``params``, ``grads`` and
``updates`` are pytrees (:mod:`curvlab.tree`: one array, or a dict/list/tuple
of arrays) and keep their structure; new parameters are ``params + updates``
(:func:`apply_updates`). ``state`` (what the next step needs) is a dataclass
derived from :class:`TransformState`; ``info`` (what the step reports: step
size, skipped, curvature, ...) is apart from it. ``update`` never changes its
input state, except in a transform that declares ``inplace = True`` (then it
returns the same object). A state round-trips through a plain ``dict`` of
arrays without loss (:meth:`TransformState.to_dict` /
:meth:`Transform.load_state`), so it can be saved with ``numpy.savez``.

Direction and step size compose, as in optax: a *direction transform*
(``scale_by_adam``, ``trace``, ... in :mod:`curvlab.methods.baselines`), the
step size :func:`scale_by_lr` (a number or a schedule of the step count), the
one weight-decay transform :func:`add_decayed_weights` (coupled or decoupled,
with a mask), put together by :func:`chain`; ``Adam(lr)`` is
``chain(scale_by_adam(), scale_by_lr(lr))`` bit for bit.
:meth:`Transform.direction` returns the direction alone, for a wrapper that
sets the step size itself; a method without one raises ``NotImplementedError``.

One numerical-trouble policy (DESIGN.md), shared by every transform through
:meth:`Transform.set_nan_policy` and :meth:`Transform.nonfinite`: a
non-finite gradient or curvature is, by ``nan_policy``,

- ``"skip"`` (default): the step is skipped — the returned update is zero,
  every state field is left as it was except the counters
  ``n_skipped_steps`` (total) and ``consecutive_skips``; more than
  ``max_consecutive_skips`` (default 10) skips in a row raise
  ``FloatingPointError``;
- ``"raise"``: ``FloatingPointError`` naming what was non-finite;
- ``"propagate"``: no check; NaN/Inf flow into the update and the state.

The check is one device reduction over all the arrays involved and one host
read (one sync on CuPy); what was non-finite is worked out only on the
failure path. It lives in one place: for the building blocks, :func:`chain`
and the aliases (``base_policy_check = True``), the public
:meth:`Transform.update` runs the unchecked step :meth:`Transform._update`
and checks the gradient, the updates and the new state once. A chain calls
its transforms' unchecked steps, so a step costs one check however many
blocks (or nested chains) it holds, and the outermost transform's policy is
the one applied; a block used on its own applies its own. Methods that must
also check a curvature (ArTuRO, CurvatureLR, ExactNewton, DSGD) apply the
policy inside their ``_update``.

Examples
--------
>>> import numpy as np
>>> from curvlab.methods.baselines import SGD
>>> opt = SGD(lr=0.1)
>>> p = np.ones(3); state = opt.init(p)
>>> upd, state = opt.update(np.ones(3), state, p)
>>> apply_updates(p, upd)
array([0.9, 0.9, 0.9])
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from .. import backend
from ..tree import (
    check_tree_like,
    num_leaves,
    same_structure,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_unflatten,
    tree_vdot,
    tree_zeros_like,
)

__all__ = [
    "Transform",
    "TransformState",
    "StepInfo",
    "apply_updates",
    "scale_by_lr",
    "add_decayed_weights",
    "chain",
    "ScaleByLR",
    "AddDecayedWeights",
    "Chain",
    "ChainState",
    "ChainInfo",
    "CountState",
    "EmptyState",
    "check_lr",
    "lr_at",
    "check_tree_like",
    "check_params",
    "all_finite",
    "state_leaves",
    "attach_info",
    "register_state_hook",
    "state_classes",
    "NAN_POLICIES",
    "DEFAULT_MAX_CONSECUTIVE_SKIPS",
    # re-exported from curvlab.tree for code written before curvlab.tree existed
    # (curvlab itself imports them from curvlab.tree)
    "tree_map",
    "tree_vdot",
    "tree_leaves",
    "tree_zeros_like",
]

#: accepted values of ``nan_policy`` (module docstring)
NAN_POLICIES = ("skip", "raise", "propagate")
#: default cap on consecutive skipped steps
DEFAULT_MAX_CONSECUTIVE_SKIPS = 10

Tree = Any
S = TypeVar("S", bound="TransformState")


def _label(name: str, i: int) -> str:
    return f"{name}[{i}]"


def check_params(params: Tree, name: str = "params") -> None:
    """Raise ``TypeError`` unless ``params`` is a float32/float64 array or a pytree of them.

    The pytrees curvlab transforms take: dict/list/tuple of arrays, nested; ``name`` is the
    argument named in the message.
    """
    if params is None:
        raise TypeError(f"{name} must be a float32/float64 array or a list/tuple/dict of them, got None")
    for i, x in enumerate(tree_leaves(params)):
        backend.check_float_array(x, _label(name, i) if not _is_leaf(params) else name)


def _is_leaf(tree: Tree) -> bool:
    return tree is not None and not isinstance(tree, (list, tuple, dict)) and num_leaves(tree) == 1


def apply_updates(params: Tree, updates: Tree) -> Tree:
    """Return ``params + updates`` leaf by leaf, with the structure and dtypes of ``params``.

    New arrays, each in its params leaf's dtype; the inputs are untouched.

    ``updates`` must have the structure and leaf shapes of ``params`` (no broadcasting):
    ``ValueError``/``TypeError`` naming the argument otherwise.
    """
    check_params(params)
    check_tree_like("updates", updates, params)
    return tree_map(lambda p, u: p + u.astype(p.dtype, copy=False), params, updates)


def _finite_scalar(v: Any) -> bool:
    return math.isfinite(float(v))


def _is_array(x: Any) -> bool:
    return hasattr(x, "dtype") and not isinstance(x, np.generic)


def all_finite(*trees: Any) -> bool:
    """Return whether every entry of every array (and every Python number) in ``trees`` is finite.

    ``trees``: arrays, pytrees of arrays, numbers or ``None`` (ignored). The arrays'
    finiteness is reduced on their device and read once: one host sync on CuPy, whatever
    the number of arrays.
    """
    arrays, seen = [], set()
    for t in trees:
        for x in tree_leaves(t):
            if x is None or id(x) in seen:
                continue
            seen.add(id(x))
            if _is_array(x):
                arrays.append(x)
            elif not _finite_scalar(x):
                return False
    if not arrays:
        return True
    xp = backend.get_namespace(*arrays)
    if xp is np:
        return all(bool(np.isfinite(x).all()) for x in arrays)
    ok = None
    for x in arrays:
        f = xp.all(xp.isfinite(x))
        ok = f if ok is None else ok & f
    return bool(ok)  # the one host read


def state_leaves(state: Any) -> list[Any]:
    """Return the array leaves of a state, nested states included, in field order.

    Fields that are arrays or pytrees of arrays count; scalars (counters) do not.
    """
    out: list[Any] = []
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        if isinstance(v, TransformState):
            out.extend(state_leaves(v))
        elif isinstance(v, (tuple, list)) and any(isinstance(x, TransformState) for x in v):
            for x in v:
                out.extend(state_leaves(x) if isinstance(x, TransformState) else
                           [y for y in tree_leaves(x) if _is_array(y)])
        else:
            out.extend(x for x in tree_leaves(v) if _is_array(x))
    return out


def _describe_nonfinite(parts: Mapping[str, Any]) -> str:
    """``"grads[1] (3 NaN/Inf of 12)"``-style description of the non-finite parts (failure path)."""
    bad = []
    for name, t in parts.items():
        leaves = tree_leaves(t)
        single = _is_leaf(t)
        for i, x in enumerate(leaves):
            if x is None:
                continue
            label = name if single else _label(name, i)
            if _is_array(x):
                xp = backend.get_namespace(x)
                n = int(xp.sum(~xp.isfinite(x)))
                if n:
                    bad.append(f"{label} ({n} NaN/Inf of {x.size})")
            elif not _finite_scalar(x):
                bad.append(f"{label} (= {float(x)})")
    return ", ".join(bad) if bad else "an intermediate result"


# ----------------------------------------------------------------------------- tree fields
def _spec(tree: Tree) -> Any:
    """A JSON-able description of a pytree's structure (leaves as ``None``)."""
    if tree is None:
        return {"none": 0}
    if isinstance(tree, dict):
        for k in tree:
            if not isinstance(k, str):
                raise TypeError(f"state trees need str dict keys to be saved, got {k!r}")
        return {"dict": [[k, _spec(tree[k])] for k in sorted(tree)]}
    if isinstance(tree, (list, tuple)):
        return {type(tree).__name__: [_spec(x) for x in tree]}
    return None


def _build(spec: Any, leaves: list[Any]) -> Tree:
    if spec is None:
        return leaves.pop(0)
    (kind, body), = spec.items()
    if kind == "none":
        return None
    if kind == "dict":
        return {k: _build(s, leaves) for k, s in body}
    seq = [_build(s, leaves) for s in body]
    return tuple(seq) if kind == "tuple" else seq


def _is_plain_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_array(x) for x in v)


#: callables ``hook(cls)`` run on every TransformState subclass (see :func:`register_state_hook`)
_STATE_CLASS_HOOKS: list[Callable[[type[TransformState]], None]] = []


def state_classes() -> list[type[TransformState]]:
    """Every :class:`TransformState` class defined so far (the base and all subclasses)."""
    out: list[type[TransformState]] = []
    todo: list[type[TransformState]] = [TransformState]
    while todo:
        c = todo.pop()
        if c not in out:
            out.append(c)
            todo.extend(c.__subclasses__())
    return out


def register_state_hook(hook: Callable[[type[TransformState]], None]) -> None:
    """Run ``hook(cls)`` on every :class:`TransformState` class, those defined now and later.

    The JAX adapter registers the state classes as pytrees this way, so that ``import curvlab``
    does not import JAX. A hook runs when a subclass is created, before ``@dataclass`` has
    added its fields: it must read ``dataclasses.fields`` when it is used, not when it runs.
    Registering the same hook twice runs it once.
    """
    if hook in _STATE_CLASS_HOOKS:
        return
    _STATE_CLASS_HOOKS.append(hook)
    for c in state_classes():
        hook(c)


@dataclasses.dataclass
class TransformState:
    """Base class of method states: a dataclass of arrays, pytrees of arrays and scalars.

    A state holds what the next step needs, nothing else; what a step reports goes to its
    info (:meth:`Transform.update_with_info`).

    :meth:`to_dict` flattens it to ``{key: numpy array}`` (a list field becomes
    ``"field/0"``, ``"field/1"``, ... plus ``"field/#"`` holding the length; any other pytree
    field (dict, tuple, nested) the same plus ``"field/@tree"``, a JSON string of its
    structure); :meth:`from_dict` inverts it exactly, dtypes included (a field with a default
    that the dict lacks, such as a counter added in a later version, takes its default; keys
    that are not fields, such as the diagnostics that older versions kept in the state, are
    ignored). CuPy arrays are copied to the host; pass ``xp=cupy`` to :meth:`from_dict` to
    move back.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for hook in _STATE_CLASS_HOOKS:   # e.g. the JAX adapter's pytree registration
            hook(cls)

    def to_dict(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                out[f"{f.name}/none"] = np.asarray(0)
            elif _is_plain_list(v) or isinstance(v, (list, tuple, dict)):
                leaves = tree_leaves(v)
                out[f"{f.name}/#"] = np.asarray(len(leaves))
                if not _is_plain_list(v):
                    out[f"{f.name}/@tree"] = np.asarray(json.dumps(_spec(v)))
                for i, leaf in enumerate(leaves):
                    out[f"{f.name}/{i}"] = backend.to_numpy(leaf).copy()
            else:
                out[f.name] = backend.to_numpy(v).copy()
        return out

    @classmethod
    def from_dict(cls: type[S], d: dict[str, Any], xp: Any = np) -> S:
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f"{f.name}/none" in d:
                kwargs[f.name] = None
            elif f"{f.name}/#" in d:
                n = int(d[f"{f.name}/#"])
                leaves = [xp.asarray(d[f"{f.name}/{i}"]) for i in range(n)]
                if f"{f.name}/@tree" in d:
                    kwargs[f.name] = _build(json.loads(str(np.asarray(d[f"{f.name}/@tree"]))), leaves)
                else:
                    kwargs[f.name] = leaves
            elif f.name in d:
                arr = np.asarray(d[f.name])
                if arr.ndim == 0 and f.type in ("int", "float", "bool"):
                    kwargs[f.name] = arr.item()
                else:
                    kwargs[f.name] = xp.asarray(arr)
            elif f.default is not dataclasses.MISSING:
                kwargs[f.name] = f.default  # a field added later (e.g. the NaN policy's counters)
            else:
                raise KeyError(f"state dict lacks the field {f.name!r} of {cls.__name__}")
        return cls(**kwargs)


def attach_info(state: S, info: Any) -> S:
    """Record ``info`` on ``state`` for the legacy attribute view (not a field: not saved)."""
    object.__setattr__(state, "_info", info)
    return state


@dataclasses.dataclass
class StepInfo:
    """What a step reports, apart from the state: whether it was skipped, and its step size.

    ``skipped`` (by the NaN policy) and ``lr``, the step size this step used where the
    transform has one (NaN otherwise). Methods report more in their own info classes.
    """

    skipped: bool = False
    lr: float = math.nan


class Transform:
    """Base class of optimizer transforms (see the module docstring).

    The protocol:

    - ``init(params) -> state``;
    - ``update(grads, state, params=None, **extras) -> (updates, state)``;
    - ``update_with_info(...) -> (updates, state, info)``: the same step with its report;
    - ``direction(grads, state, params=None, **extras) -> (d, state)``: the search direction
      ``d`` (descent convention: the step is ``-lr·d``) and the state after the step, for a
      wrapper that chooses the step size itself (:class:`~curvlab.methods.CurvatureLR`);
      a method whose step has no such split raises ``NotImplementedError``
      (``has_direction`` is False).

    Subclasses implement :meth:`init` and :meth:`_update` (the step without the shared
    finiteness check, returning ``(updates, state, info)``; :meth:`update` and
    :meth:`update_with_info` call it). ``update`` leaves its input state unchanged and
    returns a new one, unless the transform declares ``inplace = True`` (then it updates the
    state in place and returns the same object). :meth:`step` is a convenience returning new
    parameters.

    With ``base_policy_check = True`` (the building blocks, :class:`Chain` and the aliases),
    :meth:`update_with_info` applies the NaN policy around ``_update``: it checks the inputs
    (``grads``/``params`` type, structure and shapes: ``TypeError``/``ValueError`` naming
    them; ``state`` type), then ``grads``, the updates and the new state's arrays for NaN/Inf
    in one reduction and one host read, and on a skip returns zero updates and the input state
    with its counters advanced (its state class then has the fields ``n_skipped_steps`` and
    ``consecutive_skips``). :class:`Chain` calls its transforms' :meth:`_update_unchecked`,
    so the check runs once per step, by the outermost transform's policy.
    """

    state_class: type[TransformState] = TransformState
    #: the numerical-trouble policy (module docstring); set by :meth:`set_nan_policy`
    nan_policy: str = "skip"
    max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS
    #: True when :meth:`update` updates the input state in place and returns the same object
    inplace: bool = False
    #: True when :meth:`update_with_info` applies the NaN policy around :meth:`_update` (the
    #: building blocks, chain, the aliases); False for a method that applies it inside its
    #: own ``_update`` (where it also checks a curvature) and for subclasses written before
    base_policy_check: bool = False

    def set_nan_policy(self, nan_policy: str = "skip",
                       max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        """Validate and set ``nan_policy`` and ``max_consecutive_skips`` (called by ``__init__``)."""
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        if isinstance(max_consecutive_skips, bool) or not isinstance(max_consecutive_skips, (int, np.integer)):
            raise TypeError(f"max_consecutive_skips must be an int >= 1, got {max_consecutive_skips!r}")
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be an int >= 1, got {max_consecutive_skips}")
        self.nan_policy = nan_policy
        self.max_consecutive_skips = int(max_consecutive_skips)

    def nonfinite(self, *check: Any, blame: Mapping[str, Any] | None = None) -> bool:
        """Apply the policy to a step: ``True`` when it must be skipped.

        ``check``: arrays/trees/numbers (the inputs and the step's results) that must all be
        finite; ``blame``: ``{name: tree}`` described in the ``"raise"`` message (default:
        ``check`` itself). One host sync (none with "propagate"); the description costs more,
        on the failure path only.
        """
        if self.nan_policy == "propagate" or all_finite(*check):
            return False
        if self.nan_policy == "raise":
            parts = dict(blame) if blame is not None else {f"result {i}": c for i, c in enumerate(check)}
            detail = _describe_nonfinite(parts)
            raise FloatingPointError(f"{type(self).__name__}: non-finite values in {detail} "
                                     "(nan_policy='raise')")
        return True

    def skipped(self, state: S, inplace: bool = False) -> S:
        """Return ``state`` with the skip counters advanced, everything else untouched.

        Raises ``FloatingPointError`` past ``max_consecutive_skips`` skips in a row.
        """
        cs = int(state.consecutive_skips) + 1  # type: ignore[attr-defined]
        if cs > self.max_consecutive_skips:
            raise FloatingPointError(
                f"{type(self).__name__}: {cs} consecutive steps with NaN/Inf in the gradient or curvature "
                f"(max_consecutive_skips = {self.max_consecutive_skips}); the state was left untouched")
        n = int(state.n_skipped_steps) + 1  # type: ignore[attr-defined]
        if inplace:
            state.n_skipped_steps, state.consecutive_skips = n, cs  # type: ignore[attr-defined]
            return state
        new = dataclasses.replace(state, n_skipped_steps=n, consecutive_skips=cs)  # type: ignore[call-arg]
        prev = state.__dict__.get("_info")
        return attach_info(new, prev) if prev is not None else new

    def init(self, params: Tree) -> TransformState:  # pragma: no cover - abstract
        raise NotImplementedError

    def _update(self, grads: Tree, state: Any, params: Tree | None = None,
                **extras: Any) -> tuple[Tree, Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} implements neither _update nor update")

    def _update_unchecked(self, grads: Tree, state: Any, params: Tree | None = None,
                          **extras: Any) -> tuple[Tree, Any, Any]:
        """The step without the shared NaN check (what a :class:`Chain` calls on its transforms)."""
        if type(self)._update is Transform._update:
            if type(self).update is Transform.update:
                raise NotImplementedError(f"{type(self).__name__} implements neither _update nor update")
            upd, new = self.update(grads, state, params, **extras)   # a subclass written before info
            return upd, new, StepInfo()
        upd, new, info = self._update(grads, state, params, **extras)
        if isinstance(new, TransformState) and not getattr(info, "skipped", False):
            attach_info(new, info)
        return upd, new, info

    def _uses_params(self) -> bool:
        """Whether the step reads ``params`` (blamed in a ``"raise"`` message when non-finite)."""
        return False

    def _check_inputs(self, grads: Tree, state: Any, params: Tree | None) -> None:
        """``TypeError``/``ValueError`` naming ``grads``, ``params`` or ``state`` when they
        cannot be what this transform takes (no device work, no sync)."""
        if params is not None:
            check_params(params)
            check_tree_like("grads", grads, params)
        else:
            check_params(grads, "grads")
        if not isinstance(state, self.state_class):
            raise TypeError(f"state must be the {self.state_class.__name__} that {type(self).__name__}.init "
                            f"returns, got {type(state).__name__}")

    def _checked_update(self, grads: Tree, state: Any, params: Tree | None,
                        extras: dict) -> tuple[Tree, Any, Any]:
        """The NaN policy of the module docstring around :meth:`_update_unchecked`."""
        self._check_inputs(grads, state, params)
        upd, new, info = self._update_unchecked(grads, state, params, **extras)
        if self.nonfinite(grads, upd, *state_leaves(new),
                          blame={"grads": grads, "params": params if self._uses_params() else None}):
            return tree_zeros_like(grads), self.skipped(state), type(info)(skipped=True)
        if new.consecutive_skips or new.n_skipped_steps != state.n_skipped_steps:
            # a step after skips: the block's _update built its state with fresh counters
            new = attach_info(dataclasses.replace(new, n_skipped_steps=state.n_skipped_steps,
                                                  consecutive_skips=0), info)
        return upd, new, info

    def update_with_info(self, grads: Tree, state: Any, params: Tree | None = None,
                         **extras: Any) -> tuple[Tree, Any, Any]:
        """One step: ``(updates, new_state, info)`` (``info``: what the step reports)."""
        if self.base_policy_check:
            return self._checked_update(grads, state, params, extras)
        return self._update_unchecked(grads, state, params, **extras)

    def update(self, grads: Tree, state: Any, params: Tree | None = None,
               **extras: Any) -> tuple[Tree, Any]:
        """One step: ``(updates, new_state)``; new parameters are ``params + updates``."""
        upd, new, _ = self.update_with_info(grads, state, params, **extras)
        return upd, new

    @property
    def has_direction(self) -> bool:
        """Whether :meth:`direction` is available."""
        return type(self).direction is not Transform.direction

    def direction(self, grads: Tree, state: Any, params: Tree | None = None,
                  **extras: Any) -> tuple[Tree, Any]:
        """The search direction ``d`` (the step is ``-lr·d``) and the state after the step."""
        raise NotImplementedError(
            f"{type(self).__name__} has no search direction apart from its step size (its step is not "
            "a scalar multiple of a direction it could return); use its update() or a method with a "
            "direction (SGD, Momentum, Adam, AdamW, chain(...) of a direction, ExactNewton, DSGD)")

    def tick(self, state: Any) -> Any:
        """Return the state after a step whose updates are not used.

        A chain's direction stops before this transform. Default: the state itself
        (stateless transforms).
        """
        return state

    def step(self, params: Tree, grads: Tree, state: TransformState, **extras: Any) -> tuple[Tree, TransformState]:
        """``update`` then :func:`apply_updates`: returns ``(new_params, new_state)``."""
        updates, state = self.update(grads, state, params, **extras)
        return apply_updates(params, updates), state

    def load_state(self, d: dict[str, Any], xp: Any = np) -> TransformState:
        """Rebuild this transform's state from :meth:`TransformState.to_dict` output."""
        return self.state_class.from_dict(d, xp=xp)


# ============================================================================ building blocks
def _check_real(name: str, value: Any, low: float = 0.0, inclusive: bool = True,
                high: float | None = None) -> float:
    """``float(value)`` if it is a finite real number in the range, else ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    ok = (v >= low if inclusive else v > low) and np.isfinite(v) and (high is None or v < high)
    if not ok:
        rng = f"{'[' if inclusive else '('}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be in {rng}, got {value}")
    return v


Schedule = Callable[[int], float]


def check_lr(lr: Any, name: str = "lr") -> float | Schedule:
    """Return a validated learning rate: a finite number > 0, or a schedule ``count -> lr``.

    A schedule is a callable of the number of steps taken before this one.
    """
    if callable(lr) and not isinstance(lr, (int, float, np.integer, np.floating)):
        return lr
    return _check_real(name, lr, 0.0, inclusive=False)


def lr_at(lr: float | Schedule, count: int) -> float:
    """Return the learning rate of step ``count`` (0 for the first): ``lr`` or ``lr(count)``.

    ``ValueError`` when a schedule returns a non-finite or negative value.
    """
    if not callable(lr):
        return lr
    v = float(lr(int(count)))
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"the learning-rate schedule returned {v} at step {count}; expected a finite number >= 0")
    return v


@dataclasses.dataclass
class EmptyState(TransformState):
    """State of a stateless transform: only the NaN policy's counters (used on its own)."""

    n_skipped_steps: int = 0
    consecutive_skips: int = 0


@dataclasses.dataclass
class CountState(TransformState):
    """State of a step-size transform: ``count`` (steps taken, the schedule index), NaN counters."""

    count: int = 0
    n_skipped_steps: int = 0
    consecutive_skips: int = 0


def _policy_kwargs(nan_policy: str, max_consecutive_skips: int) -> dict[str, Any]:
    return {"nan_policy": nan_policy, "max_consecutive_skips": max_consecutive_skips}


class ScaleByLR(Transform):
    """The step-size transform ``updates = -lr_k · u``, built by :func:`scale_by_lr`.

    Descent convention; ``lr_k = lr`` or ``lr(k)`` for a schedule, ``k`` the steps taken. Each
    leaf is scaled in its own dtype (``lr`` cast to it first). The NaN policy applies when it
    is the outermost transform (in a chain, the chain's applies).
    """

    state_class = CountState
    base_policy_check = True

    def __init__(self, lr: float | Schedule, *, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        self.lr = check_lr(lr)
        self.set_nan_policy(nan_policy, max_consecutive_skips)

    def init(self, params: Tree) -> CountState:
        check_params(params)
        return CountState(0)

    def tick(self, state: CountState) -> CountState:
        return dataclasses.replace(state, count=state.count + 1)

    def _update(self, grads: Tree, state: CountState, params: Tree | None = None,
                **extras: Any) -> tuple[Tree, CountState, StepInfo]:
        lr = lr_at(self.lr, state.count)
        return tree_map(lambda x: -x.dtype.type(lr) * x, grads), CountState(state.count + 1), StepInfo(lr=lr)


def scale_by_lr(lr: float | Schedule, *, nan_policy: str = "skip",
                max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> ScaleByLR:
    """Return the step size as a transform: ``updates = -lr · u``, as optax's ``scale_by_learning_rate``.

    ``lr``: a number > 0 or a schedule ``k -> lr_k`` of the step count ``k = 0, 1, ...``.
    ``nan_policy``, ``max_consecutive_skips``: the shared policy (module docstring), applied
    when this is the outermost transform.

    >>> import numpy as np
    >>> t = scale_by_lr(lambda k: 0.5 ** k)
    >>> s = t.init(np.zeros(2))
    >>> u, s = t.update(np.ones(2), s); u2, s = t.update(np.ones(2), s)
    >>> u.tolist(), u2.tolist()
    ([-1.0, -1.0], [-0.5, -0.5])
    """
    return ScaleByLR(lr, **_policy_kwargs(nan_policy, max_consecutive_skips))


class AddDecayedWeights(Transform):
    """Weight decay as a transform, coupled or decoupled, built by :func:`add_decayed_weights`.

    Coupled (``lr=None``; L2 regularisation, before the direction): ``u + wd · params``.
    Decoupled (``lr`` given; after :func:`scale_by_lr`, as AdamW, arXiv 1711.05101 Alg. 2):
    ``u − (lr_k · wd) · params``. ``mask``: a pytree of bools shaped like ``params`` (or a
    callable ``params -> mask``); leaves where it is False are not decayed. ``wd = 0`` returns
    ``u`` itself (no copy). The NaN policy applies when it is the outermost transform.
    """

    base_policy_check = True

    def __init__(self, weight_decay: float, mask: Any = None, *, lr: float | Schedule | None = None,
                 nan_policy: str = "skip", max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        self.weight_decay = _check_real("weight_decay", weight_decay)
        if mask is not None and not callable(mask) and not isinstance(mask, (bool, np.bool_, list, tuple, dict)):
            raise TypeError(f"mask must be a pytree of bools shaped like params or a callable params -> mask, "
                            f"got {type(mask).__name__}")
        self.mask = mask
        self.lr = None if lr is None else check_lr(lr)
        self.state_class = EmptyState if lr is None else CountState
        self.set_nan_policy(nan_policy, max_consecutive_skips)

    @property
    def decoupled(self) -> bool:
        return self.lr is not None

    def init(self, params: Tree) -> TransformState:
        check_params(params)
        return self.state_class()

    def _uses_params(self) -> bool:
        return self.weight_decay != 0.0

    def tick(self, state: Any) -> Any:
        if isinstance(state, CountState):
            return dataclasses.replace(state, count=state.count + 1)
        return dataclasses.replace(state)   # a new object: update never returns its input state

    def _mask(self, params: Tree) -> list[bool] | None:
        if self.mask is None:
            return None
        m = self.mask(params) if callable(self.mask) else self.mask
        flags = tree_leaves(m)
        if len(flags) != num_leaves(params) or not same_structure(m, params):
            raise ValueError(f"mask must be a pytree of bools with the structure of params: got {len(flags)} "
                             f"leaves, expected {num_leaves(params)}")
        return [bool(f) for f in flags]

    def _update(self, grads: Tree, state: Any, params: Tree | None = None,
                **extras: Any) -> tuple[Tree, Any, StepInfo]:
        wd = self.weight_decay
        new = self.tick(state)
        if wd == 0.0:
            return grads, new, StepInfo()
        if params is None:
            raise ValueError("weight_decay needs params passed to update()")
        mask = self._mask(params)
        if self.lr is None:
            fn = lambda g, p: g + p.dtype.type(wd) * p  # noqa: E731
            lr = math.nan
        else:
            lr = lr_at(self.lr, getattr(state, "count", 0))
            fn = lambda g, p: g - p.dtype.type(lr * wd) * p  # noqa: E731
        if mask is None:
            return tree_map(fn, grads, params), new, StepInfo(lr=lr)
        gl, treedef = tree_flatten(grads)
        out = [fn(g, p) if keep else g for g, p, keep in zip(gl, tree_leaves(params), mask)]
        return tree_unflatten(treedef, out), new, StepInfo(lr=lr)


def add_decayed_weights(weight_decay: float, mask: Any = None, *, lr: float | Schedule | None = None,
                        nan_policy: str = "skip",
                        max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> AddDecayedWeights:
    """Return the one weight-decay transform of curvlab, coupled (L2) or decoupled (AdamW).

    Coupled ``u + wd·params`` (``lr=None``, placed before the direction: L2 regularisation)
    or decoupled ``u − lr·wd·params`` (``lr`` given, placed after :func:`scale_by_lr`;
    arXiv 1711.05101). ``mask``: pytree of bools (or ``params -> mask``) selecting the
    decayed leaves. ``nan_policy``, ``max_consecutive_skips``: the shared policy (module
    docstring), applied when this is the outermost transform.

    >>> import numpy as np
    >>> t = add_decayed_weights(0.1, mask={"w": True, "b": False})
    >>> p = {"w": np.ones(2), "b": np.ones(2)}
    >>> u, _ = t.update({"w": np.zeros(2), "b": np.zeros(2)}, t.init(p), p)
    >>> u["w"].tolist(), u["b"].tolist()
    ([0.1, 0.1], [0.0, 0.0])
    """
    return AddDecayedWeights(weight_decay, mask, lr=lr, **_policy_kwargs(nan_policy, max_consecutive_skips))


@dataclasses.dataclass
class ChainState(TransformState):
    """State of :func:`chain`: the inner states, the step count and the NaN policy's counters.

    ``inner`` (one state per transform, a tuple), ``count`` (steps taken; a skipped step does
    not count). Load a saved one with :meth:`Chain.load_state` (it knows the inner state
    classes).
    """

    inner: Any = ()
    count: int = 0
    n_skipped_steps: int = 0
    consecutive_skips: int = 0

    def to_dict(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"inner/#": np.asarray(len(self.inner)), "count": np.asarray(self.count),
                                      "n_skipped_steps": np.asarray(self.n_skipped_steps),
                                      "consecutive_skips": np.asarray(self.consecutive_skips)}
        for i, s in enumerate(self.inner):
            for k, v in s.to_dict().items():
                out[f"inner/{i}/{k}"] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], xp: Any = np) -> "ChainState":
        raise TypeError("a chain's state holds its transforms' states: load it with the chain's "
                        "load_state(d), not ChainState.from_dict")


@dataclasses.dataclass
class ChainInfo(StepInfo):
    """Info of a chain: ``lr`` (the last step size in it) and each transform's info (``parts``)."""

    parts: tuple = ()


class Chain(Transform):
    """Transforms applied in sequence, built by :func:`chain`.

    The updates of one are the input of the next; each gets ``params`` and the extras.

    The chain applies the shared NaN policy once for the whole step (its transforms' own
    ``nan_policy`` is not used: the chain runs their unchecked steps, nested chains included):
    when the gradient, the final updates or a new inner state hold NaN/Inf, the step is
    skipped (zero updates, every inner state unchanged, the counters advanced) or raises, by
    ``nan_policy``. Host syncs: one per step (none with ``"propagate"``), plus those of
    transforms that check a curvature themselves.

    ``direction`` runs the transforms before the first :class:`ScaleByLR` (the later ones'
    states advance by :meth:`Transform.tick`); the decoupled weight decay that follows the
    step size is not part of the direction.
    """

    state_class: type[TransformState] = ChainState
    base_policy_check = True

    def __init__(self, *transforms: Transform, nan_policy: str = "skip",
                 max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        if not transforms:
            raise ValueError("chain needs at least one transform")
        for i, t in enumerate(transforms):
            if not isinstance(t, Transform):
                raise TypeError(f"transforms[{i}] must be a curvlab Transform, got {type(t).__name__}")
            if t.inplace:
                raise ValueError(f"transforms[{i}] ({type(t).__name__}) updates its state in place; a chain "
                                 "cannot leave it unchanged on a skipped step")
        self.transforms = tuple(transforms)
        self.set_nan_policy(nan_policy, max_consecutive_skips)

    # -- how the chain's state holds the inner states (aliases keep their own flat states)
    def _split(self, state: Any) -> tuple:
        return tuple(state.inner)

    def _join(self, inner: tuple, state: Any) -> Any:
        """The state after a step from ``state`` whose inner states are ``inner``."""
        return ChainState(tuple(inner), state.count + 1, state.n_skipped_steps, 0)

    def load_state(self, d: dict[str, Any], xp: Any = np) -> Any:
        if self.state_class is not ChainState:
            return super().load_state(d, xp)
        inner = []
        for i, t in enumerate(self.transforms):
            pre = f"inner/{i}/"
            inner.append(t.load_state({k[len(pre):]: v for k, v in d.items() if k.startswith(pre)}, xp=xp))
        return ChainState(tuple(inner), int(np.asarray(d.get("count", 0))),
                          int(np.asarray(d.get("n_skipped_steps", 0))), int(np.asarray(d.get("consecutive_skips", 0))))

    def init(self, params: Tree) -> Any:
        check_params(params)
        inner = tuple(t.init(params) for t in self.transforms)
        return self._join(inner, ChainState(inner, count=-1))

    def _run(self, grads: Tree, state: Any, params: Tree | None, upto: int | None,
             extras: dict) -> tuple[Tree, tuple, list]:
        inner = self._split(state)
        u, news, infos = grads, [], []
        for i, (t, s) in enumerate(zip(self.transforms, inner)):
            if upto is not None and i >= upto:
                news.append(t.tick(s))
                continue
            u, s2, info = t._update_unchecked(u, s, params, **extras)
            news.append(s2)
            infos.append(info)
        return u, tuple(news), infos

    def _uses_params(self) -> bool:
        return any(t._uses_params() for t in self.transforms)

    def _update(self, grads: Tree, state: Any, params: Tree | None = None,
                **extras: Any) -> tuple[Tree, Any, ChainInfo]:
        u, news, infos = self._run(grads, state, params, None, extras)
        new = self._join(news, state)
        lrs = [i.lr for i in infos if isinstance(i, StepInfo) and not math.isnan(i.lr)]
        return u, new, ChainInfo(lr=lrs[-1] if lrs else math.nan, parts=tuple(infos))

    def _direction_end(self) -> int:
        for i, t in enumerate(self.transforms):
            if isinstance(t, ScaleByLR):
                return i
        return len(self.transforms)

    def direction(self, grads: Tree, state: Any, params: Tree | None = None,
                  **extras: Any) -> tuple[Tree, Any]:
        """Return the updates of the transforms before the first ``scale_by_lr``, and the new state.

        No NaN check: the caller applies its policy. The inputs are checked as in ``update``.
        """
        self._check_inputs(grads, state, params)
        d, news, _ = self._run(grads, state, params, self._direction_end(), extras)
        return d, self._join(news, state)


def chain(*transforms: Transform, nan_policy: str = "skip",
          max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> Chain:
    """Compose transforms (optax's ``chain``), with the shared NaN policy applied once per step.

    >>> import numpy as np
    >>> from curvlab.methods.baselines import scale_by_adam
    >>> opt = chain(scale_by_adam(), scale_by_lr(1e-3))        # = Adam(lr=1e-3), bit for bit
    >>> p = np.zeros(2); u, s = opt.update(np.array([1.0, -2.0]), opt.init(p), p)
    >>> np.round(u, 6)
    array([-0.001,  0.001])
    """
    return Chain(*transforms, nan_policy=nan_policy, max_consecutive_skips=max_consecutive_skips)
