"""Pytrees of arrays: the one tree helper of curvlab (on :mod:`optree`).

A *tree* is a nest of ``dict`` / ``list`` / ``tuple`` / ``None`` whose leaves are arrays
(NumPy or CuPy; anything that is not a container is a leaf, so a bare array is a tree with
one leaf). ``None`` is an empty subtree (it has no leaf and stays ``None``). Dict leaves are
visited in sorted key order, as :mod:`optree` (which ``torch.utils._pytree`` also builds on)
and ``jax.tree_util`` do. Every function here keeps the structure: a dict in is a dict out, a
tuple in a tuple out.

Registration of further node types goes to optree's namespace ``"curvlab"``
(:data:`NAMESPACE`); the functions below look there.

Examples
--------
>>> import numpy as np
>>> t = {"w": np.ones((2, 2)), "b": np.zeros(2)}
>>> tree_map(lambda x: x + 1, t)["b"]
array([1., 1.])
>>> float(tree_vdot(t, t)), num_leaves(t)
(4.0, 2)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import optree

from . import backend

__all__ = [
    "NAMESPACE",
    "Tree",
    "tree_map",
    "tree_leaves",
    "tree_flatten",
    "tree_structure",
    "tree_unflatten",
    "num_leaves",
    "same_structure",
    "check_tree_like",
    "tree_vdot",
    "tree_zeros_like",
    "tree_add",
    "tree_scale",
    "is_sequence_of_leaves",
]

#: optree namespace of node types registered by curvlab
NAMESPACE = "curvlab"
Tree = Any
#: entries per chunk of the float64 dot product of float32 leaves (no full float64 copy)
_CHUNK = 1 << 16


def tree_flatten(tree: Tree) -> tuple[list[Any], Any]:
    """``(leaves, treedef)``; ``treedef`` inverts it through :func:`tree_unflatten`."""
    return optree.tree_flatten(tree, none_is_leaf=False, namespace=NAMESPACE)


def tree_leaves(tree: Tree) -> list[Any]:
    """The leaves of ``tree`` in order (``[tree]`` for a bare array, ``[]`` for ``None``)."""
    return optree.tree_leaves(tree, none_is_leaf=False, namespace=NAMESPACE)


def tree_structure(tree: Tree) -> Any:
    """The structure (an optree ``PyTreeSpec``) of ``tree``; ``==`` compares structures."""
    return optree.tree_structure(tree, none_is_leaf=False, namespace=NAMESPACE)


def tree_unflatten(treedef: Any, leaves: Any) -> Tree:
    """The tree of structure ``treedef`` with ``leaves`` (an iterable, in order)."""
    return optree.tree_unflatten(treedef, list(leaves))


def num_leaves(tree: Tree) -> int:
    """Number of leaves of ``tree``."""
    return len(tree_leaves(tree))


def is_sequence_of_leaves(tree: Tree) -> bool:
    """Whether ``tree`` is a list/tuple whose entries are all leaves (the layer lists of the
    reference MLP and of the framework wrappers)."""
    return isinstance(tree, (list, tuple)) and all(tree_structure(x).num_nodes == 1 and x is not None
                                                   for x in tree)


def same_structure(a: Tree, b: Tree) -> bool:
    """Whether ``a`` and ``b`` have the same structure; a list and a tuple of the same leaves
    count as the same (a wrapper may hand over either)."""
    if tree_structure(a) == tree_structure(b):
        return True
    return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
            and all(same_structure(x, y) for x, y in zip(a, b)))


def check_tree_like(name: str, tree: Tree, ref: Tree, ref_name: str = "params") -> None:
    """Raise unless ``tree`` is a float tree with the structure and leaf shapes of ``ref``.

    ``ValueError`` for a structure or shape mismatch, ``TypeError`` for a leaf that is not a
    float32/float64 array (``None`` or a string included); leaf ``i`` is named ``name[i]``,
    in :func:`curvlab.tree.tree_leaves` order. ``ref`` is assumed valid (checked before).
    """
    if tree is None:
        raise TypeError(f"{name} must be a float32/float64 array or a list/tuple/dict of them with the "
                        f"structure of {ref_name}, got None")
    a, b = tree_leaves(tree), tree_leaves(ref)
    if len(a) != len(b) or not same_structure(tree, ref):
        raise ValueError(f"{name} must have the structure of {ref_name}: got {len(a)} leaves "
                         f"({type(tree).__name__}), expected {len(b)} ({type(ref).__name__})")
    for i, (x, y) in enumerate(zip(a, b)):
        backend.check_float_array(x, f"{name}[{i}]")
        if tuple(x.shape) != tuple(y.shape):
            raise ValueError(f"{name}[{i}] has shape {tuple(x.shape)}, expected {tuple(y.shape)} "
                             f"as in {ref_name}")


def tree_map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    """``fn`` applied leaf by leaf to trees of one structure; the result has ``tree``'s structure.

    ``ValueError`` ("tree structures differ: ...") when a tree of ``rest`` has another
    structure (a list and a tuple of the same leaves are accepted).
    """
    if not rest:
        return optree.tree_map(fn, tree, none_is_leaf=False, namespace=NAMESPACE)
    leaves, treedef = tree_flatten(tree)
    others = []
    for r in rest:
        rl, rdef = tree_flatten(r)
        if rdef != treedef and not same_structure(tree, r):
            raise ValueError(f"tree structures differ: {treedef} vs {rdef}")
        others.append(rl)
    return tree_unflatten(treedef, [fn(*xs) for xs in zip(leaves, *others)])


def tree_zeros_like(tree: Tree) -> Tree:
    """Zeros shaped and typed like every leaf (same device)."""
    return tree_map(lambda x: backend.get_namespace(x).zeros_like(x), tree)


def tree_add(a: Tree, b: Tree) -> Tree:
    """``a + b`` leaf by leaf, in ``a``'s dtypes."""
    return tree_map(lambda x, y: x + y.astype(x.dtype, copy=False), a, b)


def tree_scale(c: float, tree: Tree) -> Tree:
    """``c * tree`` leaf by leaf, ``c`` cast to each leaf's dtype first (a float32 leaf stays
    float32)."""
    return tree_map(lambda x: x * x.dtype.type(c), tree)


def tree_vdot(a: Tree, b: Tree) -> Any:
    """``⟨a, b⟩`` summed over all leaves, products and sums in float64.

    float64 leaves: one ``dot`` each; other float leaves are converted in chunks of 65,536
    entries (no full float64 copy of a float32 vector). Returns a float64 scalar on the
    leaves' device: a NumPy float64 (a Python ``float``) on the host, a 0-d array on CuPy (no
    host read here: the caller reads it, with others, once).
    """
    total: Any = 0.0
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        xp = backend.get_namespace(x, y)
        x, y = x.reshape(-1), y.reshape(-1)
        if x.dtype == np.float64 and y.dtype == np.float64:
            total = total + xp.dot(x, y)
            continue
        acc: Any = 0.0
        for i in range(0, x.shape[0], _CHUNK):
            acc = acc + xp.dot(x[i:i + _CHUNK].astype(np.float64), y[i:i + _CHUNK].astype(np.float64))
        total = total + acc
    return total
