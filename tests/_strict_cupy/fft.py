"""``cupy.fft`` of the strict stand-in (NumPy's pocketfft on the device buffers)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ._core import unwrap, unwrap_kw, wrap

NAMES = """fft ifft fft2 ifft2 fftn ifftn rfft irfft rfft2 irfft2 rfftn irfftn hfft ihfft fftfreq rfftfreq fftshift
ifftshift""".split()


def _make(name: str):
    np_fn = getattr(np.fft, name)

    @functools.wraps(np_fn)
    def fn(*args: Any, **kwargs: Any) -> Any:
        where = f"cupy.fft.{name}"
        return wrap(np_fn(*unwrap(args, where), **unwrap_kw(kwargs, where)))

    fn.__module__ = "cupy.fft"
    return fn


for _n in NAMES:
    globals()[_n] = _make(_n)


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module 'cupy.fft' (strict CuPy stand-in) has no attribute {name!r}")
