"""Input checks and array helpers shared by the modules of :mod:`curvlab.models` (only).

Private to the package: other packages use the public checks of :mod:`curvlab.backend`.
"""

from __future__ import annotations

import math
import operator
import threading
import types
from typing import Any

import numba
import numpy as np

from .. import backend

__all__ = ["positive_int", "refuse_foreign", "matmul_into", "Workspace", "dot64", "three_m_finish"]


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


class Workspace:
    """Scratch arrays reused from call to call, one buffer per tag.

    Large NumPy allocations come from ``mmap`` and go back to the system when freed, so a
    pass that allocates its megabyte-sized layer arrays afresh pays their page faults at
    every call (a quarter of an HVP's time at 784-512-512-10, batch 512). The reference
    MLP's passes draw their scratch arrays from a workspace instead: ``get(tag, shape,
    dtype)`` returns an uninitialised ``shape`` view of the tag's buffer (grown when too
    small), so two arrays alive at once need two tags, and nothing drawn from a workspace
    may be returned to the caller or kept past the call. ``reuse=False`` (CuPy, whose
    memory pool already recycles) returns a new array each time.
    """

    def __init__(self, xp: types.ModuleType, reuse: bool = True) -> None:
        self.xp = xp
        self.reuse = reuse
        self._bufs: dict[tuple[Any, str], Any] = {}

    def get(self, tag: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised ``shape`` array of ``dtype`` for the scratch role ``tag``."""
        if not self.reuse:
            return self.xp.empty(shape, dtype=dtype)
        n = math.prod(shape)
        key = (tag, np.dtype(dtype).str)
        buf = self._bufs.get(key)
        if buf is None or buf.size < n:
            buf = self._bufs[key] = self.xp.empty(n, dtype=dtype)
        return buf[:n].reshape(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(int(b.nbytes) for b in self._bufs.values())

    def clear(self) -> None:
        """Release every buffer."""
        self._bufs.clear()


class ThreadWorkspaces:
    """One :class:`Workspace` per thread (a model used from several threads stays correct);
    dropped when pickled or copied."""

    def __init__(self, xp: types.ModuleType) -> None:
        self.xp = xp
        self._local = threading.local()

    def get(self) -> Workspace:
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = self._local.ws = Workspace(self.xp, reuse=self.xp is np)
        return ws

    def clear(self) -> None:
        ws = getattr(self._local, "ws", None)
        if ws is not None:
            ws.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"xp": self.xp}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.xp = state["xp"]
        self._local = threading.local()


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _dot64(a: Any, b: Any) -> float:  # pragma: no cover - compiled
    acc = 0.0
    for i in range(a.size):
        acc += np.float64(a[i]) * np.float64(b[i])
    return acc


def dot64(a: Any, b: Any, xp: types.ModuleType) -> Any:
    """``Σ a ⊙ b`` accumulated in float64 (a float64 scalar; 0-d on CuPy, no host sync):
    one Numba pass without a temporary for C-contiguous NumPy arrays of one shape."""
    if (xp is np and isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
            and a.dtype == b.dtype and a.flags.c_contiguous and b.flags.c_contiguous):
        return np.float64(_dot64(a.reshape(-1), b.reshape(-1)))
    return xp.sum(a * b, dtype=np.float64)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _three_m_finish(t: Any, b: Any, z: Any, E: Any, s: Any, w: Any, wmode: int) -> None:  # pragma: no cover
    B, n = t.shape
    for i in range(B):
        for j in range(n):
            e = E[i, j] * s
            E[i, j] = e
            t[i, j] = t[i, j] + b[j] - z[i, j] - e
            if wmode == 1:
                w[i, j] += 2 * e
            elif wmode == 2:
                w[i, j] = 2 * e


def three_m_finish(t: Any, b: Any, z: Any, E: Any, s: Any, xp: types.ModuleType, w: Any = None,
                   w_add: bool = False) -> None:
    """The elementwise end of a "3M" tangent layer, in place: ``E ← s E``,
    ``t ← t + b − z − E`` (``t, z, E`` ``(B, n)``, bias ``b`` ``(n,)``, ``s`` a 0-d scale),
    and when ``w`` is given ``w ← w + 2E`` (``w_add``) or ``w ← 2E``. One Numba pass on
    C-contiguous NumPy arrays, ufuncs otherwise."""
    arrays = (t, z, E) if w is None else (t, z, E, w)
    if (xp is np and isinstance(b, np.ndarray) and b.shape == t.shape[1:] and t.ndim == 2
            and all(isinstance(x, np.ndarray) and x.flags.c_contiguous and x.shape == t.shape
                    and x.dtype == t.dtype for x in arrays)):
        _three_m_finish(t, b, z, E, t.dtype.type(s), t if w is None else w, 0 if w is None else (1 if w_add else 2))
        return
    E *= s
    t += b
    t -= z
    t -= E
    if w is not None:
        if w_add:
            w += 2 * E
        else:
            xp.multiply(E, 2, out=w)
