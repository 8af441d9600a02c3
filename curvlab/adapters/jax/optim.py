"""Any curvlab transform as an optax gradient transformation (:func:`as_optax`).

Importing this module registers every :class:`~curvlab.methods.TransformState` class (those
defined now and later, nested chain states included) as a JAX pytree: the dataclass fields
are the children (arrays, nested states, and the Python counters, which become 0-d arrays
under ``jax.jit``), the field names are the static aux data, and the legacy info view
(``state._info``) is dropped. ``import curvlab`` itself never imports JAX (the registration
goes through :func:`curvlab.methods._transform.register_state_hook`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from ... import backend
from ...methods import Transform, TransformState
from ...methods._transform import register_state_hook
from .convert import from_jax, to_jax

__all__ = ["as_optax", "CurvlabOptaxState", "JIT_SUPPORT"]


# ----------------------------------------------------------------------------- pytree states
def _flatten_with_keys(state: TransformState) -> tuple[tuple, tuple[str, ...]]:
    names = tuple(f.name for f in dataclasses.fields(state))
    return tuple((jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in names), names


def _flatten(state: TransformState) -> tuple[tuple, tuple[str, ...]]:
    names = tuple(f.name for f in dataclasses.fields(state))
    return tuple(getattr(state, n) for n in names), names


def _unflatten(cls: type[TransformState], names: tuple[str, ...], children: Any) -> TransformState:
    obj: TransformState = object.__new__(cls)   # no __init__/__post_init__: children may be tracers or placeholders
    for n, v in zip(names, children):
        object.__setattr__(obj, n, v)
    return obj


_REGISTERED: set[type] = set()


def _register_state_class(cls: type[TransformState]) -> None:
    if cls in _REGISTERED:
        return
    _REGISTERED.add(cls)
    jax.tree_util.register_pytree_with_keys(cls, _flatten_with_keys, functools.partial(_unflatten, cls), _flatten)


register_state_hook(_register_state_class)


# ----------------------------------------------------------------------------- support table
#: Which methods run under ``jax.jit`` through :func:`as_optax` (module docstring of as_optax).
JIT_SUPPORT: dict[str, str] = {
    "SGD, Momentum, Adam, AdamW, chain/scale_by_lr/add_decayed_weights/scale_by_adam/trace":
        "jittable (host callback per step)",
    "ArTuRO": "jittable (host callback per step)",
    "CurvatureLR (curvature= extra, or source=JaxCurvature with the batch as data=)":
        "jittable (host callback; the source is rebound with at() on the host, compiled once per shape)",
    "CurvatureLR with a torch/MLP source or a Python curvature callable of traced values": "not jittable",
    "ExactNewton, DSGD (rule='estimate') with source=JaxCurvature (dense() layers) and the batch as data=":
        "jittable (host callback; the source is rebound with at() on the host and exposes its tagged layers)",
    "ExactNewton, DSGD with layer extras given as arrays or held fixed (closed over)": "jittable (host callback)",
    "ExactNewton with a JaxCurvature of an untagged model": "refused (TypeError: tag the layers with dense())",
}


class CurvlabOptaxState(NamedTuple):
    """optax state of a wrapped transform: the curvlab state and the step count."""

    inner: TransformState
    count: Any


def _is_traced(tree: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


def _is_array_leaf(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


_SCALARS = (bool, int, float)


def _kinds(leaves: list[Any]) -> list[type | None]:
    """Per state leaf: the Python scalar type it has on the host path, or None (an array)."""
    out: list[type | None] = []
    for x in leaves:
        t = type(x)
        out.append(t if t in _SCALARS else None)
    return out


def _host_leaf(x: Any, kind: type | None) -> Any:
    """A state leaf as the NumPy core keeps it: Python scalars for counters, NumPy arrays else."""
    if kind is not None:
        return kind(np.asarray(x).item()) if not isinstance(x, kind) else x
    if isinstance(x, jax.Array):
        return np.array(x)           # a writable host copy
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        return np.array(x)
    return x


def as_optax(transform: Transform, *, flat: bool = False, source: Any = None,
             trainable: Callable[[Any, Any], bool] | Any = None) -> Any:
    """A curvlab :class:`~curvlab.methods.Transform` as an optax transformation.

    Returns an ``optax.GradientTransformationExtraArgs``: ``update(grads, state,
    params=None, **extra_args)`` forwards ``extra_args`` (a batch ``data=(X, y)``, an HVP or
    curvature callable, layer factors, ...) to ``transform.update``. The transform sees the
    leaves as NumPy/CuPy arrays (DLPack), a list in ``jax.tree_util`` order, or one
    concatenated ``(P,)`` vector with ``flat=True``. The state (:class:`CurvlabOptaxState`
    holding the curvlab state) is a JAX pytree.

    Parameters
    ----------
    transform : Transform
    flat : bool
        Give the transform one ``(P,)`` vector instead of a list of leaves.
    source : CurvatureSource, optional
        A curvature source (``JaxCurvature``) passed to every step as the extra ``source=``;
        the transform rebinds it with ``source.at(params=..., data=batch)`` (no rebuild, no
        recompilation). Pass the step's batch as ``update(..., data=(X, y))``. The source's
        layout must be the trainable leaves in ``jax.tree_util`` order.
    trainable : callable ``(path, leaf) -> bool`` or pytree of bools, optional
        The leaves the transform sees (``jax.tree_util`` key paths). The others get zero
        updates and take no part in the method (no state, not in its norms or curvature).

    Under ``jax.jit``
    -----------------
    ``update`` (and ``init``) may be called inside ``jax.jit``: the NumPy/Numba step runs in
    one ``jax.pure_callback`` per step, whose result shapes and dtypes are those of the
    gradient and of the input state (a state's shapes never change from step to step).
    Cost: one device→host→device round trip of the gradient, params, state and array extras
    per step (on the CPU a copy) plus the NumPy step, and XLA cannot fuse across it. Measured
    (``benchmarks/run_optax_step.py``, digits MLP, float32, CPU time per jitted step, one
    core): ``CurvatureLR(source=JaxCurvature)`` with the curvature every step costs 3.8× (forward
    mode) to 4.9× (adjoint) ``optax.adam`` on a 64-512-512-10 MLP, batch 256, and about 20× on
    a 64-64-64-10 MLP, batch 64, where the fixed host cost (about 1.5 ms) dominates; the
    ≤ 3× target is met on neither. The NaN policy's flag is
    then read on the host, and its ``FloatingPointError`` (``nan_policy="raise"``, or too many
    skips) surfaces as a JAX runtime error. Array extras (``data=(X, y)``, layer factors)
    go through the callback; other extras (callables, sources, models) are held fixed by the
    trace. The state's Python-number fields (counters, ArTuRO's ``eta``, CurvatureLR's
    ``t_prev``) travel as 0-d arrays of JAX's default dtypes: without ``jax_enable_x64`` a
    float field is rounded to float32 between jitted steps (trajectories agree with eager ones
    to ~1e-7). Outside ``jax.jit`` the transform runs exactly as before (bit for bit); a state
    that went through ``jax.jit`` is turned back into host form (NumPy arrays, Python
    counters) there.

    ===============================================  ==========================================
    method                                           under ``jax.jit``
    ===============================================  ==========================================
    SGD, Momentum, Adam, AdamW, building blocks      yes (host callback)
    ArTuRO                                           yes (host callback)
    CurvatureLR, ``source=JaxCurvature`` + ``data``  yes: the source is rebound with ``at()``
                                                     on the host and runs its compiled
                                                     programs (compiled once per shape)
    CurvatureLR, ``curvature=`` Python callable      only if it needs no traced value (it is
                                                     held fixed by the trace)
    ExactNewton, DSGD, ``source=JaxCurvature``       yes with ``dense()``-tagged layers and the
                                                     batch as ``data`` (DSGD: ``rule="estimate"``);
                                                     an untagged model is refused
                                                     (``TypeError``: tag it with ``dense()``)
    ExactNewton, DSGD, layer extras as arrays        yes (they pass the callback) or held fixed
    ===============================================  ==========================================

    Examples
    --------
    >>> import jax, jax.numpy as jnp, optax
    >>> from curvlab.methods.baselines import SGD
    >>> opt = optax.chain(optax.clip_by_global_norm(1.0), as_optax(SGD(lr=0.5)))
    >>> p = {"w": jnp.ones(2)}
    >>> s = opt.init(p)
    >>> u, s = jax.jit(opt.update)({"w": jnp.ones(2)}, s, p)
    >>> [round(x, 4) for x in optax.apply_updates(p, u)["w"].tolist()]
    [0.6464, 0.6464]
    """
    import optax

    if not isinstance(transform, Transform):
        raise TypeError(f"transform must be a curvlab Transform, got {type(transform).__name__}")
    if trainable is not None and not callable(trainable) and not isinstance(trainable, (bool, dict, list, tuple)):
        raise TypeError(f"trainable must be a callable (path, leaf) -> bool or a pytree of bools, "
                        f"got {type(trainable).__name__}")
    kinds_by_def: dict[Any, list[type | None]] = {}

    def picked(tree: Any) -> tuple[list[Any], Any, list[bool]]:
        """All leaves, their treedef, and which ones the transform sees."""
        with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
        leaves = [x for _, x in with_path]
        if trainable is None:
            keep = [True] * len(leaves)
        elif callable(trainable):
            keep = [bool(trainable(p, x)) for p, x in with_path]
        else:
            flags = jax.tree_util.tree_leaves(trainable)
            if len(flags) != len(leaves):
                raise ValueError(f"trainable must be a pytree of bools with the structure of params: got "
                                 f"{len(flags)} flags, expected {len(leaves)}")
            keep = [bool(f) for f in flags]
        if leaves and not any(keep):
            raise ValueError("trainable selects no leaf of params")
        return leaves, treedef, keep

    def host_in(arrs: list[Any]) -> Any:
        if flat:
            xp = backend.get_namespace(*arrs)
            return xp.concatenate([a.reshape(-1) for a in arrs])
        return arrs

    def host_out(upd: Any, shapes: list[tuple[int, ...]]) -> list[Any]:
        if flat:
            parts, off = [], 0
            for s in shapes:
                n = int(np.prod(s, dtype=np.int64))
                parts.append(upd[off:off + n].reshape(s))
                off += n
            return parts
        return list(upd)

    def with_source(extras: dict) -> dict:
        if source is not None and "source" not in extras:
            extras = dict(extras, source=source)
        return extras

    def kinds_of(state_def: Any, example: Callable[[], Any]) -> list[type | None]:
        k = kinds_by_def.get(state_def)
        if k is None:
            k = kinds_by_def[state_def] = _kinds(jax.tree_util.tree_leaves(example()))
        return k

    # --------------------------------------------------------------------------- init
    def init_host(arrs: list[Any]) -> TransformState:
        st = transform.init(host_in(arrs))
        leaves, sdef = jax.tree_util.tree_flatten(st)
        kinds_by_def.setdefault(sdef, _kinds(leaves))
        return st

    def init_fn(params: Any) -> CurvlabOptaxState:
        leaves, _, keep = picked(params)
        sel = [x for x, k in zip(leaves, keep) if k]
        if not _is_traced(sel):
            return CurvlabOptaxState(init_host([from_jax(jnp.asarray(x)) for x in sel]), 0)
        # under jit: the state's structure from zeros of the same shapes, its values by callback
        zeros = [np.zeros(x.shape, x.dtype) for x in sel]
        template = init_host(zeros)
        t_leaves, t_def = jax.tree_util.tree_flatten(template)
        shapes = [jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype) for x in t_leaves]

        def cb(*ps: Any) -> list[Any]:
            out = jax.tree_util.tree_leaves(init_host([np.array(p) for p in ps]))
            return [np.asarray(o, dtype=s.dtype).reshape(s.shape) for o, s in zip(out, shapes)]

        vals = jax.pure_callback(cb, shapes, *sel, vmap_method="sequential") if shapes else []
        return CurvlabOptaxState(jax.tree_util.tree_unflatten(t_def, list(vals)), jnp.asarray(0))

    # --------------------------------------------------------------------------- update
    def update_host(g_arrs: list[Any], inner: Any, p_arrs: list[Any] | None, extras: dict,
                    shapes: list[tuple[int, ...]]) -> tuple[list[Any], Any]:
        p = None if p_arrs is None else host_in(p_arrs)
        upd, new = transform.update(host_in(g_arrs), inner, p, **with_source(extras))
        return host_out(upd, shapes), new

    def assemble(treedef: Any, leaves: list[Any], keep: list[bool], sel_upd: list[Any]) -> Any:
        it = iter(sel_upd)
        out = [next(it) if k else jnp.zeros_like(x) for x, k in zip(leaves, keep)]
        return jax.tree_util.tree_unflatten(treedef, out)

    def update_fn(updates: Any, state: CurvlabOptaxState, params: Any = None, **extra_args: Any) -> tuple[Any, Any]:
        g_leaves, treedef, keep = picked(updates)
        g_sel = [x for x, k in zip(g_leaves, keep) if k]
        p_sel = None
        if params is not None:
            p_leaves = jax.tree_util.tree_leaves(params)
            if len(p_leaves) != len(g_leaves):
                raise ValueError(f"params must have the structure of the updates: got {len(p_leaves)} leaves, "
                                 f"expected {len(g_leaves)}")
            p_sel = [x for x, k in zip(p_leaves, keep) if k]
        shapes = [tuple(np.shape(x)) for x in g_sel]
        s_leaves, s_def = jax.tree_util.tree_flatten(state.inner)
        kinds = kinds_of(s_def, lambda: transform.init(host_in([np.zeros(np.shape(x), jnp.asarray(x).dtype)
                                                                for x in (p_sel or g_sel)])))
        if not _is_traced((g_sel, p_sel, s_leaves, extra_args)):
            inner = state.inner
            if any(isinstance(x, jax.Array) or (k is not None and not isinstance(x, k))
                   for x, k in zip(s_leaves, kinds)):   # a state that went through jit: back to host form
                inner = jax.tree_util.tree_unflatten(s_def, [_host_leaf(x, k) for x, k in zip(s_leaves, kinds)])
            g = [from_jax(jnp.asarray(x)) for x in g_sel]
            p = None if p_sel is None else [from_jax(jnp.asarray(x)) for x in p_sel]
            upd, new = update_host(g, inner, p, extra_args, shapes)
            out = [to_jax(np.ascontiguousarray(u) if isinstance(u, np.ndarray) else u) for u in upd]
            return assemble(treedef, g_leaves, keep, out), CurvlabOptaxState(new, state.count + 1)

        # under jit: one host callback per step
        e_leaves, e_def = jax.tree_util.tree_flatten(extra_args)
        e_dyn = [i for i, x in enumerate(e_leaves) if _is_array_leaf(x)]
        s_arrs = [jnp.asarray(x) for x in s_leaves]
        g_out = [jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype) for x in g_sel]
        s_out = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in s_arrs]
        n_g, n_p, n_s = len(g_sel), 0 if p_sel is None else len(p_sel), len(s_arrs)

        def cb(*args: Any) -> tuple[list[Any], list[Any]]:
            g = [np.array(a) for a in args[:n_g]]
            p = None if p_sel is None else [np.array(a) for a in args[n_g:n_g + n_p]]
            s = [_host_leaf(a, k) for a, k in zip(args[n_g + n_p:n_g + n_p + n_s], kinds)]
            e = list(e_leaves)
            for i, a in zip(e_dyn, args[n_g + n_p + n_s:]):
                e[i] = np.asarray(a)
            upd, new = update_host(g, jax.tree_util.tree_unflatten(s_def, s), p,
                                   jax.tree_util.tree_unflatten(e_def, e), shapes)
            n_leaves, n_def = jax.tree_util.tree_flatten(new)
            if cast(Any, n_def) != s_def:   # jaxlib's PyTreeDef is a compiled class without a stub
                raise ValueError(f"{type(transform).__name__}: the state's structure changed in a step "
                                 f"({s_def} -> {n_def}); it cannot run under jax.jit")
            bad = [i for i, (x, o) in enumerate(zip(n_leaves, s_out)) if tuple(np.shape(x)) != tuple(o.shape)]
            if bad:
                raise ValueError(f"{type(transform).__name__}: state leaves {bad} changed shape in a step; "
                                 "it cannot run under jax.jit")
            return ([np.asarray(u, dtype=o.dtype) for u, o in zip(upd, g_out)],
                    [np.asarray(x, dtype=o.dtype) for x, o in zip(n_leaves, s_out)])

        dyn = [*g_sel, *(p_sel or []), *s_arrs, *[e_leaves[i] for i in e_dyn]]
        upd, new_leaves = jax.pure_callback(cb, (g_out, s_out), *dyn, vmap_method="sequential")
        new = jax.tree_util.tree_unflatten(s_def, list(new_leaves))
        return assemble(treedef, g_leaves, keep, list(upd)), CurvlabOptaxState(new, state.count + 1)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
