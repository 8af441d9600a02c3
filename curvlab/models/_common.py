"""Input checks and array helpers shared by the modules of :mod:`curvlab.models` (only).

Private to the package: other packages use the public checks of :mod:`curvlab.backend`.
"""

from __future__ import annotations

import operator
import types
from typing import Any

import numpy as np

from .. import backend

__all__ = ["positive_int", "refuse_foreign", "matmul_into"]


def positive_int(v: Any, name: str) -> int:
    """``v`` as an ``int >= 1``; ``TypeError`` for non-integers (2.9, True), ``ValueError`` below 1."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a positive integer, got the bool {v!r}")
    try:
        i = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be a positive integer, got {v!r} ({type(v).__name__})") from None
    if i < 1:
        raise ValueError(f"{name} must be a positive integer, got {i}")
    return i


def refuse_foreign(x: Any, name: str, xp: types.ModuleType) -> None:
    """``TypeError`` for torch tensors, JAX arrays and other non-NumPy/CuPy array objects."""
    if x is None or isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)) or backend.is_cupy_array(x):
        return
    if hasattr(x, "__dlpack__") or hasattr(x, "__array_namespace__") or hasattr(x, "shape"):
        raise TypeError(
            f"{name} must be a {xp.__name__} array, got {type(x).__module__}.{type(x).__name__}; convert it first "
            "(torch: t.detach().cpu().numpy(), JAX: numpy.asarray(a)) or use curvlab.adapters for framework models"
        )


def matmul_into(a: Any, b: Any, out: Any, xp: types.ModuleType) -> None:
    """``out[...] = a @ b`` without a temporary on NumPy."""
    if xp is np:
        np.matmul(a, b, out=out)
    else:
        out[...] = xp.matmul(a, b)
