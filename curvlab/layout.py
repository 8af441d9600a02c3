"""The one named flat layout of model parameters.

A :class:`Layout` records, for each parameter, its name, shape and offset in one
flat vector of length :attr:`Layout.size`. Parameters are stored row-major (C order),
one after the other, in the order given. It is the only layout class in curvlab: the
reference MLP, the torch and JAX adapters and the methods all describe parameters with
it. Only array methods every framework has (``reshape``, slicing) are used, so the same
object unpacks NumPy, CuPy, torch and JAX vectors, and ``(P, k)`` blocks of vectors.

Examples
--------
>>> import numpy as np
>>> lay = Layout(["w", "b"], [(2, 3), (2,)])
>>> lay.size, lay.offsets
(8, (0, 6, 8))
>>> parts = lay.unpack(np.arange(8.0))
>>> parts[1]
array([6., 7.])
>>> lay.pack(parts).tolist() == list(np.arange(8.0))
True
>>> [p.shape for p in lay.unpack(np.zeros((8, 3)))]   # a block of 3 vectors
[(2, 3, 3), (2, 3)]
"""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence

import numpy as np

from . import backend

__all__ = ["Layout"]


def _shape(sh: Any, i: int) -> tuple[int, ...]:
    """``shapes[i]`` as a tuple of non-negative ints; ``TypeError``/``ValueError`` naming it otherwise."""
    if isinstance(sh, (str, bytes)) or not hasattr(sh, "__iter__"):
        raise TypeError(f"shapes[{i}] must be a sequence of non-negative integers, got {sh!r}")
    out = []
    for d in sh:
        if isinstance(d, (bool, np.bool_)):
            raise TypeError(f"shapes[{i}] must hold non-negative integers, got the bool {d!r}")
        try:
            d = operator.index(d)
        except TypeError:
            raise TypeError(f"shapes[{i}] must hold non-negative integers, got {d!r} ({type(d).__name__})") from None
        if d < 0:
            raise ValueError(f"shapes[{i}] must hold non-negative integers, got {tuple(sh)}")
        out.append(d)
    return tuple(out)


class Layout:
    """Names, shapes and offsets of parameters packed into one flat vector.

    Parameters
    ----------
    names : sequence of str
        One unique name per parameter (``"W1"`` for the reference MLP, ``"0.weight"``
        for torch, a pytree key path for JAX).
    shapes : sequence of tuples of int
        The parameter shapes, in the same order.
    dtype : float32 or float64, optional
        The common dtype of the parameters (informative).
    """

    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]], dtype: Any = None) -> None:
        if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
            raise TypeError(f"names must be a sequence of str, got {names!r}")
        if isinstance(shapes, (str, bytes)) or not hasattr(shapes, "__iter__"):
            raise TypeError(f"shapes must be a sequence of shapes, got {shapes!r}")
        name_list = [str(n) for n in names]
        shape_list = [_shape(sh, i) for i, sh in enumerate(shapes)]
        if len(name_list) != len(shape_list):
            raise ValueError(f"names and shapes differ in length: {len(name_list)} vs {len(shape_list)}")
        if len(set(name_list)) != len(name_list):
            raise ValueError(f"parameter names must be unique, got {name_list}")
        self.names: tuple[str, ...] = tuple(name_list)
        self.shapes: tuple[tuple[int, ...], ...] = tuple(shape_list)
        self.sizes: tuple[int, ...] = tuple(math.prod(s) for s in shape_list)
        offs = [0]
        for n in self.sizes:
            offs.append(offs[-1] + n)
        self.offsets: tuple[int, ...] = tuple(offs)
        self.size: int = offs[-1]
        self.dtype = None if dtype is None else np.dtype(dtype)

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and (self.names, self.shapes) == (other.names, other.shapes)

    def __hash__(self) -> int:
        return hash((self.names, self.shapes))

    def __repr__(self) -> str:
        body = ", ".join(f"{n}{list(s)}" for n, s in zip(self.names, self.shapes))
        return f"Layout(size={self.size}, dtype={self.dtype}, [{body}])"

    def index(self, name: str) -> int:
        """Position of the parameter ``name``; ``KeyError`` listing the names otherwise."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no parameter named {name!r}; the layout holds {list(self.names)}") from None

    def slice(self, key: str | int) -> slice:
        """The slice of the flat vector holding parameter ``key`` (a name or a position)."""
        i = key if isinstance(key, int) and not isinstance(key, bool) else self.index(str(key))
        if not -len(self) <= i < len(self):
            raise IndexError(f"parameter position {i} out of range for a layout of {len(self)} parameters")
        i %= len(self)
        return slice(self.offsets[i], self.offsets[i + 1])

    def check_flat(self, v: Any, name: str = "v", *, block: bool = False) -> None:
        """Raise ``ValueError`` unless ``v`` is ``(size,)`` (or ``(size, k)`` when ``block``)."""
        shape = tuple(getattr(v, "shape", ()))
        ok = len(shape) in ((1, 2) if block else (1,)) and shape[0] == self.size
        if not ok:
            want = f"({self.size},) or ({self.size}, k)" if block else f"({self.size},)"
            raise ValueError(f"{name} must have shape {want} (the flat parameter vector), got {shape}")

    def unpack(self, v: Any) -> list[Any]:
        """Views of a flat ``(size,)`` vector in the parameters' shapes; a ``(size, k)`` block
        gives ``shape + (k,)`` views (the column index last)."""
        self.check_flat(v, block=True)
        tail = tuple(v.shape[1:])
        return [v[a:b].reshape(s + tail) for a, b, s in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def unpack_dict(self, v: Any) -> dict[str, Any]:
        """Like :meth:`unpack`, keyed by parameter name."""
        return dict(zip(self.names, self.unpack(v)))

    def pack(self, parts: Sequence[Any]) -> Any:
        """Concatenate NumPy/CuPy parameter arrays (in layout order) into one flat vector,
        or ``shape + (k,)`` arrays into a ``(size, k)`` block."""
        if len(parts) != len(self.names):
            raise ValueError(f"pack expects {len(self.names)} arrays, got {len(parts)}")
        tails = set()
        for i, (p, s) in enumerate(zip(parts, self.shapes)):
            shp = tuple(p.shape)
            if shp[: len(s)] != s or len(shp) - len(s) > 1:
                raise ValueError(f"parts[{i}] ({self.names[i]}) has shape {shp}, expected {s} or {s + ('k',)}")
            tails.add(shp[len(s):])
        if len(tails) > 1:
            raise ValueError(f"parts mix vectors and blocks of different widths: trailing shapes {sorted(tails)}")
        xp = backend.get_namespace(*parts)
        if not parts:
            return xp.zeros(0, dtype=self.dtype or np.float64)
        tail = tails.pop()
        return xp.concatenate([xp.reshape(p, (-1,) + tail) for p in parts])
