"""Named flat layout of framework parameters (shared by the torch and JAX adapters).

A :class:`NamedLayout` records, for each trainable parameter, its name, shape and
offset in one flat vector of length :attr:`NamedLayout.size`. Parameters are
stored row-major (C order), one after the other, in the order given. The layout
only touches array methods every framework has (``reshape``, slicing), so the
same object unpacks NumPy, CuPy, torch and JAX vectors.

Example
-------
>>> import numpy as np
>>> lay = NamedLayout(["w", "b"], [(2, 3), (2,)])
>>> lay.size, lay.offsets
(8, (0, 6, 8))
>>> parts = lay.unpack(np.arange(8.0))
>>> parts[1]
array([6., 7.])
>>> lay.pack(parts).tolist() == list(np.arange(8.0))
True
"""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence

import numpy as np

from .. import backend

__all__ = ["NamedLayout"]


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


class NamedLayout:
    """Names, shapes and offsets of parameters packed into one flat vector.

    Parameters
    ----------
    names : sequence of str
        One unique name per parameter (e.g. ``"0.weight"`` for torch, a pytree
        key path for JAX).
    shapes : sequence of tuples
        The parameter shapes, in the same order.
    dtype : float32 or float64, optional
        The common dtype of the parameters (informative).
    """

    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]], dtype: Any = None) -> None:
        names = [str(n) for n in names]
        shapes = [_shape(sh, i) for i, sh in enumerate(shapes)]
        if len(names) != len(shapes):
            raise ValueError(f"names and shapes differ in length: {len(names)} vs {len(shapes)}")
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique, got {names}")
        self.names: tuple[str, ...] = tuple(names)
        self.shapes: tuple[tuple[int, ...], ...] = tuple(shapes)
        self.sizes: tuple[int, ...] = tuple(math.prod(s) for s in shapes)
        offs = [0]
        for n in self.sizes:
            offs.append(offs[-1] + n)
        self.offsets: tuple[int, ...] = tuple(offs)
        self.size: int = offs[-1]
        self.dtype = None if dtype is None else np.dtype(dtype)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        body = ", ".join(f"{n}{list(s)}" for n, s in zip(self.names, self.shapes))
        return f"NamedLayout(size={self.size}, dtype={self.dtype}, [{body}])"

    def index(self, name: str) -> int:
        """Position of the parameter ``name``; ``KeyError`` listing the names otherwise."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no parameter named {name!r}; the layout holds {list(self.names)}") from None

    def slice(self, name: str) -> slice:
        """The slice of the flat vector holding parameter ``name``."""
        i = self.index(name)
        return slice(self.offsets[i], self.offsets[i + 1])

    def check_flat(self, v: Any, name: str = "v") -> None:
        """Raise ``ValueError`` unless ``v`` is 1-D of length :attr:`size`."""
        shape = tuple(getattr(v, "shape", ()))
        if len(shape) != 1 or shape[0] != self.size:
            raise ValueError(f"{name} must have shape ({self.size},) (the flat parameter vector), got {shape}")

    def unpack(self, v: Any) -> list[Any]:
        """Split a flat ``(size,)`` vector into per-parameter views of the given shapes."""
        self.check_flat(v)
        return [v[a:b].reshape(s) for a, b, s in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def unpack_dict(self, v: Any) -> dict[str, Any]:
        """Like :meth:`unpack`, keyed by parameter name."""
        return dict(zip(self.names, self.unpack(v)))

    def pack(self, parts: Sequence[Any]) -> Any:
        """Concatenate NumPy/CuPy parameter arrays (in layout order) into one flat vector."""
        if len(parts) != len(self.names):
            raise ValueError(f"pack expects {len(self.names)} arrays, got {len(parts)}")
        for i, (p, s) in enumerate(zip(parts, self.shapes)):
            if tuple(p.shape) != s:
                raise ValueError(f"parts[{i}] ({self.names[i]}) has shape {tuple(p.shape)}, expected {s}")
        xp = backend.get_namespace(*parts)
        if not parts:
            return xp.zeros(0, dtype=self.dtype or np.float64)
        return xp.concatenate([xp.ravel(p) for p in parts])
