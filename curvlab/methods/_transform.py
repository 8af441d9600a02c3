"""The optimizer-transform protocol shared by every curvlab method.

A method is a :class:`Transform`: ``init(params) -> state`` and
``update(grads, state, params, **extras) -> (updates, state)``. ``params``,
``grads`` and ``updates`` are either one flat array ``(P,)`` or a list of
layer arrays (the "tree"); new parameters are ``params + updates``
(:func:`apply_updates`). ``state`` is a dataclass derived from
:class:`TransformState` holding arrays, lists of arrays and scalars; it
round-trips through a plain ``dict`` of arrays without loss
(:meth:`TransformState.to_dict` / :meth:`TransformState.from_dict`), so it
can be saved with ``numpy.savez``.

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
failure path.

Example
-------
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
import math
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from .. import backend

__all__ = [
    "Transform",
    "TransformState",
    "apply_updates",
    "tree_map",
    "tree_vdot",
    "tree_leaves",
    "tree_zeros_like",
    "check_tree_like",
    "check_params",
    "all_finite",
    "state_leaves",
    "NAN_POLICIES",
    "DEFAULT_MAX_CONSECUTIVE_SKIPS",
]

#: accepted values of ``nan_policy`` (module docstring)
NAN_POLICIES = ("skip", "raise", "propagate")
#: default cap on consecutive skipped steps
DEFAULT_MAX_CONSECUTIVE_SKIPS = 10

Tree = Any
S = TypeVar("S", bound="TransformState")


def _is_list(tree: Tree) -> bool:
    return isinstance(tree, (list, tuple))


def tree_leaves(tree: Tree) -> list[Any]:
    """The arrays of a tree: ``[tree]`` for a flat array, the list itself otherwise."""
    return list(tree) if _is_list(tree) else [tree]


def tree_map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    """Apply ``fn`` leaf by leaf to trees of the same structure."""
    if _is_list(tree):
        for r in rest:
            if not _is_list(r) or len(r) != len(tree):
                raise ValueError(f"tree structures differ: list of {len(tree)} vs {type(r).__name__}"
                                 f"{' of ' + str(len(r)) if _is_list(r) else ''}")
        return [fn(*leaves) for leaves in zip(tree, *rest)]
    for r in rest:
        if _is_list(r):
            raise ValueError("tree structures differ: a flat array vs a list of arrays")
    return fn(tree, *rest)


def tree_vdot(a: Tree, b: Tree) -> float:
    """``⟨a, b⟩`` summed over all leaves, accumulated in float64."""
    xp = backend.get_namespace(*tree_leaves(a))
    total = 0.0
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        total += float(xp.vdot(x.ravel().astype(np.float64), y.ravel().astype(np.float64)))
    return total


def tree_zeros_like(tree: Tree) -> Tree:
    return tree_map(lambda x: backend.get_namespace(x).zeros_like(x), tree)


def check_tree_like(name: str, tree: Tree, ref: Tree, ref_name: str = "params") -> None:
    """Raise ``ValueError`` unless ``tree`` has the structure and leaf shapes of ``ref``."""
    a, b = tree_leaves(tree), tree_leaves(ref)
    if _is_list(tree) != _is_list(ref) or len(a) != len(b):
        raise ValueError(f"{name} must have the structure of {ref_name}: got {len(a)} leaves, expected {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        if tuple(x.shape) != tuple(y.shape):
            raise ValueError(f"{name}[{i}] has shape {tuple(x.shape)}, expected {tuple(y.shape)} as in {ref_name}")
        backend.check_float_array(x, f"{name}[{i}]")


def check_params(params: Tree, name: str = "params") -> None:
    """Raise ``TypeError``/``ValueError`` unless ``params`` is a float32/float64 array or a
    list/tuple of them (the trees curvlab transforms take)."""
    if params is None:
        raise TypeError(f"{name} must be a float32/float64 array or a list/tuple of them, got None")
    if _is_list(params):
        for i, x in enumerate(params):
            backend.check_float_array(x, f"{name}[{i}]")
    else:
        backend.check_float_array(params, name)


def apply_updates(params: Tree, updates: Tree) -> Tree:
    """``params + updates`` leaf by leaf (new arrays; inputs untouched).

    ``updates`` must have the structure and leaf shapes of ``params`` (no broadcasting):
    ``ValueError``/``TypeError`` naming the argument otherwise.
    """
    check_params(params)
    check_tree_like("updates", updates, params)
    return tree_map(lambda p, u: p + u.astype(p.dtype, copy=False), params, updates)


def _finite_scalar(v: Any) -> bool:
    return math.isfinite(float(v))


def all_finite(*trees: Any) -> bool:
    """Whether every entry of every array (and every Python number) in ``trees`` is finite.

    ``trees``: arrays, lists/tuples of arrays, numbers or ``None`` (ignored). The arrays'
    finiteness is reduced on their device and read once: one host sync on CuPy, whatever
    the number of arrays.
    """
    arrays, seen = [], set()
    for t in trees:
        for x in (t if _is_list(t) else [t]):
            if x is None or id(x) in seen:
                continue
            seen.add(id(x))
            if hasattr(x, "dtype") and not isinstance(x, np.generic):
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
    """The array leaves of a state (fields that are arrays or lists of arrays, nested
    states included), in field order."""
    out: list[Any] = []
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        if isinstance(v, TransformState):
            out.extend(state_leaves(v))
        elif _is_list(v):
            out.extend(x for x in v if hasattr(x, "dtype"))
        elif hasattr(v, "dtype") and not isinstance(v, np.generic):
            out.append(v)
    return out


def _describe_nonfinite(parts: Mapping[str, Any]) -> str:
    """``"grads[1] (3 NaN/Inf of 12)"``-style description of the non-finite parts (failure path)."""
    bad = []
    for name, t in parts.items():
        leaves = t if _is_list(t) else [t]
        for i, x in enumerate(leaves):
            if x is None:
                continue
            label = f"{name}[{i}]" if _is_list(t) else name
            if hasattr(x, "dtype") and not isinstance(x, np.generic):
                xp = backend.get_namespace(x)
                n = int(xp.sum(~xp.isfinite(x)))
                if n:
                    bad.append(f"{label} ({n} NaN/Inf of {x.size})")
            elif not _finite_scalar(x):
                bad.append(f"{label} (= {float(x)})")
    return ", ".join(bad) if bad else "an intermediate result"


@dataclasses.dataclass
class TransformState:
    """Base class of method states: a dataclass of arrays, lists of arrays and scalars.

    :meth:`to_dict` flattens it to ``{key: numpy array}`` (list fields become
    ``"field/0"``, ``"field/1"``, ... plus ``"field/#"`` holding the length);
    :meth:`from_dict` inverts it exactly, dtypes included (a field with a default that the
    dict lacks, such as a counter added in a later version, takes its default). CuPy arrays
    are copied to the host; pass ``xp=cupy`` to :meth:`from_dict` to move back.
    """

    def to_dict(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if _is_list(v):
                out[f"{f.name}/#"] = np.asarray(len(v))
                for i, leaf in enumerate(v):
                    out[f"{f.name}/{i}"] = backend.to_numpy(leaf).copy()
            elif v is None:
                out[f"{f.name}/none"] = np.asarray(0)
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
                kwargs[f.name] = [xp.asarray(d[f"{f.name}/{i}"]) for i in range(n)]
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


class Transform:
    """Base class of optimizer transforms (see the module docstring).

    Subclasses implement :meth:`init` and :meth:`update`; :meth:`step` is a
    convenience returning new parameters.
    """

    state_class: type[TransformState] = TransformState
    #: the numerical-trouble policy (module docstring); set by :meth:`set_nan_policy`
    nan_policy: str = "skip"
    max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS
    #: True when :meth:`update` updates the input state in place and returns the same object
    inplace: bool = False

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
        """``state`` with the skip counters advanced (everything else untouched); raises
        ``FloatingPointError`` past ``max_consecutive_skips`` skips in a row."""
        cs = int(state.consecutive_skips) + 1  # type: ignore[attr-defined]
        if cs > self.max_consecutive_skips:
            raise FloatingPointError(
                f"{type(self).__name__}: {cs} consecutive steps with NaN/Inf in the gradient or curvature "
                f"(max_consecutive_skips = {self.max_consecutive_skips}); the state was left untouched")
        n = int(state.n_skipped_steps) + 1  # type: ignore[attr-defined]
        if inplace:
            state.n_skipped_steps, state.consecutive_skips = n, cs  # type: ignore[attr-defined]
            return state
        return dataclasses.replace(state, n_skipped_steps=n, consecutive_skips=cs)  # type: ignore[call-arg]

    def init(self, params: Tree) -> TransformState:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, grads: Tree, state: TransformState, params: Tree | None = None,
               **extras: Any) -> tuple[Tree, TransformState]:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, params: Tree, grads: Tree, state: TransformState, **extras: Any) -> tuple[Tree, TransformState]:
        """``update`` then :func:`apply_updates`: returns ``(new_params, new_state)``."""
        updates, state = self.update(grads, state, params, **extras)
        return apply_updates(params, updates), state

    def load_state(self, d: dict[str, Any], xp: Any = np) -> TransformState:
        """Rebuild this transform's state from :meth:`TransformState.to_dict` output."""
        return self.state_class.from_dict(d, xp=xp)
