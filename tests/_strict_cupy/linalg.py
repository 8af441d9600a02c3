"""``cupy.linalg`` of the strict stand-in: NumPy's LAPACK, with cuSOLVER's failure behaviour.

CuPy does not raise ``LinAlgError`` when a cuSOLVER factorisation fails (by default it does not
even read the status back): the result is NaN/garbage. The stand-in returns NaN-filled results
of the right shapes where NumPy would raise, so that curvlab's ``except LinAlgError`` fallbacks
are seen not to trigger, as on a GPU.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from ._core import unwrap, unwrap_kw, wrap

LinAlgError = np.linalg.LinAlgError

#: cupy.linalg's functions (cupy/linalg/__init__.py) that NumPy also has
NAMES = """matrix_power matmul matrix_transpose cholesky qr svd eigh eig eigvalsh eigvals norm cond det matrix_rank
slogdet solve tensorsolve lstsq inv pinv tensorinv""".split()


def _benign(x: Any) -> Any:
    """An input of the same shape on which the factorisation succeeds (identity / zeros)."""
    if isinstance(x, np.ndarray) and x.dtype.kind in "fc":
        if x.ndim >= 2 and x.shape[-1] == x.shape[-2]:
            return np.broadcast_to(np.eye(x.shape[-1], dtype=x.dtype), x.shape).copy()
        return np.zeros_like(x)
    return x


def _nan_like(r: Any) -> Any:
    if isinstance(r, np.ndarray):
        return np.full_like(r, np.nan) if r.dtype.kind in "fc" else r
    if isinstance(r, np.generic):
        return np.full_like(np.asarray(r), np.nan) if np.asarray(r).dtype.kind in "fc" else r
    if isinstance(r, tuple):
        items = [_nan_like(v) for v in r]
        return type(r)._make(items) if hasattr(type(r), "_make") else tuple(items)
    return r


def _make(name: str, np_fn: Callable) -> Callable:
    @functools.wraps(np_fn)
    def fn(*args: Any, **kwargs: Any) -> Any:
        where = f"cupy.linalg.{name}"
        a = unwrap(args, where)
        kw = unwrap_kw(kwargs, where)
        try:
            res = np_fn(*a, **kw)
        except LinAlgError:
            # cuSOLVER returns garbage instead of raising: NaN of the right shape
            res = _nan_like(np_fn(*[_benign(v) for v in a], **kw))
        return wrap(res)

    fn.__module__ = "cupy.linalg"
    return fn


for _n in NAMES:
    if hasattr(np.linalg, _n):
        globals()[_n] = _make(_n, getattr(np.linalg, _n))


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module 'cupy.linalg' (strict CuPy stand-in) has no attribute {name!r}: "
                         "CuPy does not provide it (or tests/_strict_cupy/linalg.py lacks it)")
