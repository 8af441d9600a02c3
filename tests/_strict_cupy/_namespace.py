"""The functions of the strict CuPy stand-in: CuPy's names only, computed by NumPy on the device buffers."""

from __future__ import annotations

import functools
import sys
import types
from typing import Any, Callable

import numpy as np

from ._core import (
    ndarray,
    apply_ufunc,
    record_h2d,
    record_sync,
    to_host_input,
    unwrap,
    unwrap_kw,
    wrap,
    _poison,
    UFUNC_NAMES,
)

#: CuPy's top-level functions that NumPy also has (from cupy/__init__.py), served by NumPy.
#: Creation from host data (asarray & co), the kernels, cuda and the host transfers are apart.
FUNCTION_NAMES = frozenset("""
all allclose amax amin angle any append apply_along_axis apply_over_axes arange argmax argmin argpartition
argsort argwhere around array_equal array_equiv array_split atleast_1d atleast_2d atleast_3d average
bartlett bincount blackman broadcast_arrays broadcast_to choose clip column_stack compress concatenate
convolve copy copyto corrcoef correlate count_nonzero cov cross cumprod cumsum cumulative_prod
cumulative_sum delete diag diag_indices diag_indices_from diagflat diagonal diff digitize dot dsplit dstack
ediff1d einsum empty_like expand_dims extract eye fill_diagonal fix flatnonzero flip fliplr flipud
full full_like gradient hamming hanning histogram histogram2d histogramdd hsplit hstack i0
identity imag in1d indices inner interp intersect1d isclose iscomplex isin isneginf isposinf isreal ix_
kaiser kron lexsort linspace logspace matrix_transpose max mean median meshgrid min moveaxis msort
nan_to_num nanargmax nanargmin nancumprod nancumsum nanmax nanmean nanmedian nanmin nanprod nanstd nansum
nanvar nonzero ones ones_like outer pad partition percentile piecewise place poly polyadd polyfit
polymul polysub polyval prod ptp put put_along_axis putmask quantile ravel ravel_multi_index real
real_if_close repeat reshape resize roll rollaxis roots rot90 round searchsorted select setdiff1d
setxor1d sinc sort sort_complex split squeeze stack std sum swapaxes take take_along_axis tensordot tile
trace transpose trapezoid tri tril tril_indices tril_indices_from trim_zeros triu triu_indices
triu_indices_from union1d unique unique_all unique_counts unique_inverse unique_values unravel_index unwrap
vander var vdot vsplit vstack where zeros zeros_like empty row_stack
""".split())

#: functions about dtypes/shapes: host arrays allowed, Python results kept
META_NAMES = frozenset("""
result_type promote_types can_cast min_scalar_type issubdtype isdtype iscomplexobj isrealobj isfortran
shape ndim size iterable broadcast_shapes mintypecode typename shares_memory may_share_memory isscalar
""".split())

#: CuPy functions whose output size is data-dependent: CuPy reads a count back (one host sync)
SYNCING = frozenset("""
argwhere flatnonzero nonzero unique unique_all unique_counts unique_inverse unique_values extract compress
trim_zeros intersect1d setdiff1d setxor1d union1d place
""".split())

#: CuPy functions that read more than once, or conditionally (cupy/_statistics/histogram.py:
#: bincount checks ``(x < 0).any()`` and reads ``max(x)``; histogram reads its range or checks bins)
SYNC_COUNTS = {"bincount": 2, "histogram": 1, "histogram2d": 1, "histogramdd": 1}

#: objects CuPy re-exports from NumPy unchanged (dtypes, constants, type helpers)
PASSTHROUGH = """
e euler_gamma inf nan newaxis pi complexfloating floating generic inexact integer number signedinteger
unsignedinteger bool_ byte short intc int_ longlong intp int8 int16 int32 int64 ubyte ushort uintc uint
ulonglong uintp uint8 uint16 uint32 uint64 half single double float16 float32 float64 csingle cdouble
complex64 complex128 dtype finfo iinfo format_float_positional format_float_scientific index_exp s_
""".split()


def _host_function(name: str, np_fn: Callable) -> Callable:
    @functools.wraps(np_fn)
    def fn(*args: Any, **kwargs: Any) -> Any:
        where = f"cupy.{name}"
        a = unwrap(args, where)
        kw = unwrap_kw(kwargs, where)
        if name in SYNCING or (name == "where" and len(args) == 1) or (
                name == "repeat" and len(args) > 1 and isinstance(args[1], ndarray)):
            record_sync(f"{name} (output size)")
        for _ in range(SYNC_COUNTS.get(name, 0)):
            record_sync(f"{name} (reads its range)")
        if name in ("empty", "empty_like"):
            return wrap(_poison(np_fn(*a, **kw)))
        out = kwargs.get("out")
        res = np_fn(*a, **kw)
        if isinstance(out, ndarray):
            return out
        if isinstance(res, (bool, int, float, complex)):  # CuPy returns a 0-d device array (allclose, ...)
            res = np.asarray(res)
        return wrap(res)

    fn.__module__ = "cupy"
    return fn


def _meta_function(name: str, np_fn: Callable) -> Callable:
    @functools.wraps(np_fn)
    def fn(*args: Any, **kwargs: Any) -> Any:
        where = f"cupy.{name}"
        return np_fn(*unwrap(args, where, allow_host=True), **unwrap_kw(kwargs, where, allow_host=True))

    fn.__module__ = "cupy"
    return fn


class ufunc:
    """A CuPy ufunc: NumPy's, applied with CuPy's argument rules (host arrays refused)."""

    def __init__(self, np_ufunc: np.ufunc) -> None:
        self._uf = np_ufunc
        self.__name__ = np_ufunc.__name__
        self.nin, self.nout, self.nargs = np_ufunc.nin, np_ufunc.nout, np_ufunc.nargs

    def _call(self, method: str, args: tuple, kwargs: dict) -> Any:
        if "out" in kwargs and not isinstance(kwargs["out"], tuple):
            kwargs = dict(kwargs, out=(kwargs["out"],))
        r = apply_ufunc(self._uf, method, args, kwargs)
        if r is NotImplemented:
            bad = [type(a).__name__ for a in args if not isinstance(a, (ndarray, int, float, bool, complex, np.generic))]
            raise TypeError(f"Unsupported type(s) {bad} in cupy.{self.__name__}")
        return r

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("__call__", args, kwargs)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("reduce", args, kwargs)

    def accumulate(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("accumulate", args, kwargs)

    def outer(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("outer", args, kwargs)

    def at(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("at", args, kwargs)

    def __repr__(self) -> str:
        return f"<ufunc '{self.__name__}'>"


# ----------------------------------------------------------------- host <-> device
def _device_dtype(a: np.ndarray, where: str) -> np.ndarray:
    """CuPy arrays hold numbers and booleans only (no object, string or datetime dtypes)."""
    if a.dtype.kind in "OSUVMm":
        raise ValueError(f"{where}: Unsupported dtype {a.dtype} (CuPy arrays hold numbers and booleans only)")
    return a


def array(obj: Any, dtype: Any = None, copy: bool = True, order: str = "K", subok: bool = False,
          ndmin: int = 0, blocking: bool = False) -> ndarray:
    """``cupy.array``: host data is copied to the device (recorded as one host-to-device copy)."""
    val, host = to_host_input(obj, "cupy.array")
    if host:
        record_h2d()
    return wrap(_device_dtype(np.array(val, dtype=dtype, copy=True, order=order, ndmin=ndmin), "cupy.array"))


def asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> ndarray:
    """``cupy.asarray``: a device array is returned as it is (or cast); host data is copied to the device."""
    val, host = to_host_input(a, "cupy.asarray")
    if host:
        record_h2d()
        host = np.array(val, dtype=dtype, order=order if order is not None else "K", copy=True)
        return wrap(_device_dtype(host, "cupy.asarray"))
    r = np.asarray(val, dtype=dtype, order=order)
    return a if isinstance(a, ndarray) and r is a._a else wrap(r)


asanyarray = asarray


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    val, host = to_host_input(a, "cupy.ascontiguousarray")
    if host:
        record_h2d()
        return wrap(np.array(val, dtype=dtype, order="C", copy=True))
    r = np.ascontiguousarray(val, dtype=dtype)
    return a if isinstance(a, ndarray) and r is a._a else wrap(r)


def asfortranarray(a: Any, dtype: Any = None) -> ndarray:
    val, host = to_host_input(a, "cupy.asfortranarray")
    if host:
        record_h2d()
    return wrap(np.asfortranarray(np.array(val, copy=host), dtype=dtype))


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
    """``cupy.asnumpy``: the device-to-host copy (one host sync); host input is returned as NumPy."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def from_dlpack(x: Any, *, device: Any = None, copy: Any = None) -> ndarray:
    if isinstance(x, ndarray):
        return wrap(x._a)
    raise TypeError(f"strict CuPy stand-in: from_dlpack of a {type(x).__name__} is not supported "
                    "(CuPy imports CUDA memory only, and the stand-in has none)")


fromDlpack = from_dlpack


def get_array_module(*args: Any) -> types.ModuleType:
    for a in args:
        if isinstance(a, ndarray):
            return sys.modules[__package__]
    return np


def is_available() -> bool:
    return True


def fuse(*args: Any, **kwargs: Any) -> Any:
    """``cupy.fuse``: the function runs unfused (its body calls the stand-in's functions)."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda f: f


def get_default_memory_pool() -> Any:
    from .cuda import MemoryPool  # noqa: PLC0415

    return MemoryPool()


get_default_pinned_memory_pool = get_default_memory_pool


def show_config() -> None:
    print("strict CuPy stand-in (tests/_strict_cupy): NumPy", np.__version__)


# ----------------------------------------------------------------- the namespace
def build() -> dict[str, Any]:
    ns: dict[str, Any] = {}
    for name in PASSTHROUGH:
        if hasattr(np, name):
            ns[name] = getattr(np, name)
    for name in FUNCTION_NAMES:
        if hasattr(np, name):
            ns[name] = _host_function(name, getattr(np, name))
    for name in META_NAMES:
        if hasattr(np, name):
            ns[name] = _meta_function(name, getattr(np, name))
    for name in UFUNC_NAMES:
        if hasattr(np, name):
            ns[name] = ufunc(getattr(np, name))
    ns["abs"] = ns["absolute"]
    ns["conj"] = ns["conjugate"]
    ns["bool"] = np.bool_
    for fn in (array, asarray, asanyarray, ascontiguousarray, asfortranarray, asnumpy, from_dlpack, fromDlpack,
               get_array_module, is_available, fuse, get_default_memory_pool, get_default_pinned_memory_pool,
               show_config):
        ns[fn.__name__] = fn
    ns["asanyarray"] = asanyarray
    ns["ndarray"] = ndarray
    ns["ufunc"] = ufunc
    return ns


#: NumPy module name -> stand-in module name, for ``__array_function__``
_SUBMODULES = {"numpy": "", "numpy.linalg": ".linalg", "numpy.fft": ".fft"}


def lookup(func: Callable) -> Callable | None:
    """The stand-in's version of a NumPy function, or None when CuPy has none."""
    sub = _SUBMODULES.get(getattr(func, "__module__", None) or "")
    if sub is None:
        return None
    mod = sys.modules.get(__package__ + sub)
    if mod is None:
        return None
    target = mod.__dict__.get(func.__name__)
    if target is None or target is func:
        return None
    return target
