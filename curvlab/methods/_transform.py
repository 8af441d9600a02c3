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
from typing import Any, Callable, TypeVar

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
]

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


def apply_updates(params: Tree, updates: Tree) -> Tree:
    """``params + updates`` leaf by leaf (new arrays; inputs untouched)."""
    return tree_map(lambda p, u: p + u.astype(p.dtype, copy=False), params, updates)


@dataclasses.dataclass
class TransformState:
    """Base class of method states: a dataclass of arrays, lists of arrays and scalars.

    :meth:`to_dict` flattens it to ``{key: numpy array}`` (list fields become
    ``"field/0"``, ``"field/1"``, ... plus ``"field/#"`` holding the length);
    :meth:`from_dict` inverts it exactly, dtypes included. CuPy arrays are
    copied to the host; pass ``xp=cupy`` to :meth:`from_dict` to move back.
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
            else:
                raise KeyError(f"state dict lacks the field {f.name!r} of {cls.__name__}")
        return cls(**kwargs)


class Transform:
    """Base class of optimizer transforms (see the module docstring).

    Subclasses implement :meth:`init` and :meth:`update`; :meth:`step` is a
    convenience returning new parameters.
    """

    state_class: type[TransformState] = TransformState

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
