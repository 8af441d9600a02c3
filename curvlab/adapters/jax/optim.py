"""Any curvlab transform as an optax gradient transformation (:func:`as_optax`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ... import backend
from ...methods import Transform, TransformState
from .convert import from_jax, to_jax

__all__ = ["as_optax", "CurvlabOptaxState"]


class CurvlabOptaxState(NamedTuple):
    """optax state of a wrapped transform: the curvlab state and the step count."""

    inner: TransformState
    count: int


def as_optax(transform: Transform, *, flat: bool = False) -> Any:
    """A curvlab :class:`~curvlab.methods.Transform` as an optax transformation.

    Returns an ``optax.GradientTransformationExtraArgs``: ``update(grads, state,
    params=None, **extra_args)`` forwards ``extra_args`` (an HVP or curvature
    callable, ...) to ``transform.update``. The transform sees the leaves as
    NumPy/CuPy arrays (DLPack), a list in ``jax.tree_util`` order, or one
    concatenated ``(P,)`` vector with ``flat=True``. The transform runs NumPy
    code, so call ``update`` outside ``jax.jit`` (jit the gradient instead).

    Example
    -------
    >>> import jax.numpy as jnp, optax
    >>> from curvlab.methods.baselines import SGD
    >>> opt = as_optax(SGD(lr=0.5))
    >>> p = {"w": jnp.ones(2)}
    >>> s = opt.init(p)
    >>> u, s = opt.update({"w": jnp.ones(2)}, s, p)
    >>> optax.apply_updates(p, u)["w"].tolist()
    [0.5, 0.5]
    """
    import optax

    if not isinstance(transform, Transform):
        raise TypeError(f"transform must be a curvlab Transform, got {type(transform).__name__}")

    def to_tree(tree: Any) -> tuple[Any, Any, list[tuple[int, ...]]]:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        arrs = [from_jax(jnp.asarray(leaf)) for leaf in leaves]
        shapes = [tuple(a.shape) for a in arrs]
        if flat:
            xp = backend.get_namespace(*arrs)
            return xp.concatenate([a.reshape(-1) for a in arrs]), treedef, shapes
        return arrs, treedef, shapes

    def back(upd: Any, treedef: Any, shapes: list[tuple[int, ...]]) -> Any:
        if flat:
            parts, off = [], 0
            for s in shapes:
                n = int(np.prod(s, dtype=np.int64))
                parts.append(upd[off:off + n].reshape(s))
                off += n
            upd = parts
        return jax.tree_util.tree_unflatten(treedef, [to_jax(np.ascontiguousarray(u) if isinstance(u, np.ndarray)
                                                             else u) for u in upd])

    def init_fn(params: Any) -> CurvlabOptaxState:
        p, _, _ = to_tree(params)
        return CurvlabOptaxState(transform.init(p), 0)

    def update_fn(updates: Any, state: CurvlabOptaxState, params: Any = None, **extra_args: Any) -> tuple[Any, Any]:
        g, treedef, shapes = to_tree(updates)
        p = None if params is None else to_tree(params)[0]
        upd, inner = transform.update(g, state.inner, p, **extra_args)
        return back(upd, treedef, shapes), CurvlabOptaxState(inner, state.count + 1)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
