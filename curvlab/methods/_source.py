"""How a method meets a :class:`~curvlab.sources.CurvatureSource` (shared by the methods).

A method that needs curvature takes a source in one of two ways, both optax-shaped:

* per step, the extra ``update(grads, state, params, source=src)``; or
* once, at construction (``CurvatureLR(source=src)``, ``ExactNewton(source=src)``,
  ``DSGD(source=src)``), with the extra ``data=batch`` when the batch changes.

Either way the method rebinds the source to the step's parameters (and data) with
``source.at(params=..., data=...)``, which reuses everything the source built, traced or
compiled: no per-step rebuild. The parameters given to ``update`` are the truth; a source
bound to other parameters is never used as is. ``params`` may be the flat ``(P,)`` vector of
``source.layout`` or a pytree whose leaves (:mod:`curvlab.tree` order) have the layout's
shapes, in layout order.
"""

from __future__ import annotations

from typing import Any

from ..sources import CurvatureSource
from ..tree import tree_flatten, tree_unflatten

__all__ = ["resolve_source", "flat_of", "leaves_by_name", "tree_from_names", "is_source", "layer_structure"]


def _check_source(source: Any, who: str) -> Any:
    need = ("layout", "at")
    missing = [a for a in need if not hasattr(source, a)]
    if missing:
        raise TypeError(
            f"{who}: source must be a curvlab CurvatureSource (the reference MLP's MLPCurvature, TorchCurvature, "
            f"JaxCurvature), got {type(source).__name__} without {missing}")
    return source


def resolve_source(who: str, default: Any, source: Any, data: Any, params: Any) -> Any:
    """The source for this step: ``source`` (the extra) or ``default`` (the constructor's),
    rebound with ``at(params=flat params, data=data)``; ``None`` when neither is given."""
    src = source if source is not None else default
    if src is None:
        if data is not None:
            raise ValueError(f"{who}: the extra data= rebinds a curvature source, but none was given "
                             "(pass source= to the constructor or to update)")
        return None
    _check_source(src, who)
    kw: dict[str, Any] = {}
    if params is not None:
        flat = flat_of(src.layout, params, "params", who)
        if flat is not getattr(src, "params", None):
            kw["params"] = flat
    if data is not None:
        kw["data"] = data
    return src.at(**kw) if kw else src


def _leaves(layout: Any, tree: Any, name: str, who: str) -> tuple[list[Any], Any, bool]:
    """The leaves of ``tree`` in layout order (views of a flat vector), its treedef, and
    whether it was the flat vector."""
    leaves, treedef = tree_flatten(tree)
    if len(leaves) == 1 and not isinstance(tree, (list, tuple, dict)) and tuple(getattr(tree, "shape", ())) == (
            layout.size,):
        return layout.unpack(tree), treedef, True
    shapes = [tuple(getattr(x, "shape", ())) for x in leaves]
    if shapes != [tuple(s) for s in layout.shapes]:
        raise ValueError(
            f"{who}: {name} must be the flat ({layout.size},) vector of the source's layout or a pytree of its "
            f"parameters in layout order {[f'{n}{list(s)}' for n, s in zip(layout.names, layout.shapes)]}, "
            f"got leaves of shapes {shapes}")
    return leaves, treedef, False


def flat_of(layout: Any, tree: Any, name: str = "params", who: str = "method") -> Any:
    """``tree`` as the flat ``(P,)`` vector of ``layout`` (the same object when it is one)."""
    leaves, _, flat = _leaves(layout, tree, name, who)
    return tree if flat else layout.pack(leaves)


def leaves_by_name(layout: Any, tree: Any, name: str = "params", who: str = "method") -> tuple[dict[str, Any], Any]:
    """``({layout name: array}, rebuild)``; ``rebuild(dict)`` gives back a tree of ``tree``'s
    structure (the flat vector, or the same pytree) from arrays keyed by layout name."""
    leaves, treedef, flat = _leaves(layout, tree, name, who)
    parts = dict(zip(layout.names, leaves))

    def rebuild(by_name: dict[str, Any]) -> Any:
        ordered = [by_name[n] for n in layout.names]
        return layout.pack(ordered) if flat else tree_unflatten(treedef, ordered)

    return parts, rebuild


def tree_from_names(layout: Any, by_name: dict[str, Any], like: Any) -> Any:
    """Arrays keyed by layout name, in the structure of ``like`` (flat vector or pytree)."""
    return leaves_by_name(layout, like)[1](by_name)


def is_source(obj: Any) -> bool:
    """Whether ``obj`` looks like a :class:`~curvlab.sources.CurvatureSource`."""
    return isinstance(obj, CurvatureSource) or (hasattr(obj, "layout") and hasattr(obj, "at"))


def layer_structure(src: Any, who: str, what: str, *, transposed_ok: bool = False) -> list[Any]:
    """``src.layer_structure()``, or a ``TypeError`` saying that ``who`` needs a source with
    dense layers for ``what`` and which sources have them. A caller that does not pass
    ``transposed_ok=True`` (it reads every weight as ``(m, n)``) gets a ``TypeError`` for a
    layer with ``transposed=True`` (an ``(n, m)`` kernel, such as JAX's tagged dense layers)
    rather than a wrong step."""
    from ..sources import LayerStructureUnavailable  # noqa: PLC0415

    fn = getattr(src, "layer_structure", None)
    why = None
    if fn is None:
        why = "it has no layer_structure()"
    else:
        try:
            layers = list(fn())
        except LayerStructureUnavailable as e:
            why = str(e) or "layer_structure() is unavailable"
        else:
            if not layers:
                why = "its layer_structure() lists no dense layer"
            else:
                tr = [lay.name for lay in layers if getattr(lay, "transposed", False)]
                if tr and not transposed_ok:
                    raise TypeError(f"{who} reads dense weights as (m, n) but {type(src).__name__}'s layers {tr} "
                                    "store (n, m) kernels (DenseLayer.transposed=True), which it does not support")
                return layers
    raise TypeError(
        f"{who} needs a curvature source with dense layers ({what}): the reference MLP's source "
        f"(curvlab.models.MLPCurvature) has them; TorchCurvature and JaxCurvature expose them only where their "
        f"layer_structure() is implemented. Got {type(src).__name__}: {why}")
