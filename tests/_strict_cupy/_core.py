"""The device-array wrapper of the strict CuPy stand-in, and its host-sync log.

See :mod:`tests._strict_cupy` for what the stand-in is and where it is unfaithful.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import sys
import threading
import warnings
from typing import Any, Iterator

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- sync log
@dataclasses.dataclass(frozen=True)
class SyncEvent:
    """One device-to-host synchronisation: its kind, the curvlab line that caused it, the function."""

    kind: str
    site: str
    func: str
    #: the curvlab frames above ``site`` (callers, innermost first, at most 3): ``file:line (function)``
    callers: tuple[str, ...] = ()

    def __str__(self) -> str:
        chain = "".join(f" <- {c}" for c in self.callers)
        return f"{self.site} ({self.func}){chain}: {self.kind}"


class SyncLog:
    """The host syncs (and host-to-device copies) recorded while the log was active.

    ``count`` is the number of syncs; ``by_site()`` counts them per curvlab ``file:line``;
    ``h2d`` counts host-to-device copies (not syncs: CuPy issues them asynchronously).
    """

    def __init__(self) -> None:
        self.events: list[SyncEvent] = []
        self.h2d = 0

    @property
    def count(self) -> int:
        return len(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def by_site(self) -> collections.Counter:
        return collections.Counter(e.site for e in self.events)

    def by_caller(self) -> collections.Counter:
        """Counts per outermost recorded curvlab frame (the routine, not the helper that read)."""
        return collections.Counter((e.callers[-1].split(" ")[0] if e.callers else e.site) for e in self.events)

    def by_kind(self) -> collections.Counter:
        return collections.Counter(e.kind for e in self.events)

    def clear(self) -> None:
        self.events.clear()
        self.h2d = 0

    def report(self) -> str:
        """One line per sync site, most frequent first: ``count × file:line (function): kinds``."""
        groups: dict[tuple, list[SyncEvent]] = collections.defaultdict(list)
        for e in self.events:
            groups[(e.site, e.callers)].append(e)
        lines = [f"{len(self.events)} host syncs, {self.h2d} host-to-device copies"]
        for (site, callers), evs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            kinds = ", ".join(sorted({e.kind for e in evs}))
            chain = "".join(f" <- {c}" for c in callers)
            lines.append(f"  {len(evs):5d} x {site} ({evs[0].func}){chain}: {kinds}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"SyncLog(count={self.count}, h2d={self.h2d})"


_lock = threading.Lock()
#: every sync since the stand-in was imported (tests may clear it)
TOTAL = SyncLog()
_active: list[SyncLog] = [TOTAL]


@contextlib.contextmanager
def count_syncs() -> Iterator[SyncLog]:
    """Record the host syncs made inside the ``with`` block::

        with count_syncs() as log:
            lanczos(A, k=10)
        assert log.count <= 10, log.report()
    """
    log = SyncLog()
    with _lock:
        _active.append(log)
    try:
        yield log
    finally:
        with _lock:
            _active.remove(log)


_curvlab_dir: str | None = None


def _curvlab_root() -> str | None:
    global _curvlab_dir
    if _curvlab_dir is None:
        mod = sys.modules.get("curvlab")
        if mod is not None and getattr(mod, "__file__", None):
            _curvlab_dir = os.path.dirname(os.path.abspath(mod.__file__))
    return _curvlab_dir


def _site() -> tuple[str, str, tuple[str, ...]]:
    """``(file:line, function, callers)`` of the first curvlab frame on the stack (else the first
    caller outside the stand-in and NumPy); ``callers`` are the next curvlab frames (at most 3)."""
    root = _curvlab_root()
    f = sys._getframe(1)
    fallback = None
    found: list[tuple[str, str]] = []
    while f is not None and len(found) < 4:
        fn = os.path.abspath(f.f_code.co_filename)
        if not fn.startswith(_HERE):
            if root is not None and fn.startswith(root + os.sep):
                rel = "curvlab/" + os.path.relpath(fn, root).replace(os.sep, "/")
                found.append((f"{rel}:{f.f_lineno}", f.f_code.co_name))
            elif found:
                break  # left curvlab again (a test calling curvlab)
            elif fallback is None and f"{os.sep}numpy{os.sep}" not in fn:
                fallback = (f"{os.path.relpath(fn).replace(os.sep, '/')}:{f.f_lineno}", f.f_code.co_name)
        f = f.f_back
    if found:
        return found[0][0], found[0][1], tuple(f"{s} ({fn})" for s, fn in found[1:])
    site, func = fallback or ("<unknown>", "?")
    return site, func, ()


def record_sync(kind: str) -> None:
    """Record one device-to-host synchronisation in every active log."""
    site, func, callers = _site()
    ev = SyncEvent(kind, site, func, callers)
    with _lock:
        for log in _active:
            log.events.append(ev)


def record_h2d() -> None:
    with _lock:
        for log in _active:
            log.h2d += 1


# --------------------------------------------------------------------------- wrapping
def _poison(a: np.ndarray) -> np.ndarray:
    """Uninitialised device memory is garbage on a GPU: fill new float buffers with NaN."""
    if a.dtype.kind in "fc":
        a.fill(np.nan)
    return a


def wrap(x: Any) -> Any:
    """NumPy results -> device arrays (NumPy scalars become 0-d device arrays, as CuPy returns)."""
    if isinstance(x, np.ndarray):
        return ndarray._from_numpy(x)
    if isinstance(x, np.generic):
        return ndarray._from_numpy(np.asarray(x))
    if isinstance(x, tuple):
        items = [wrap(v) for v in x]
        return type(x)._make(items) if hasattr(type(x), "_make") else tuple(items)
    if isinstance(x, list):
        return [wrap(v) for v in x]
    return x


def _host_refused(x: Any, where: str) -> TypeError:
    return TypeError(
        f"Unsupported type {type(x)} in {where}: CuPy does not convert host (NumPy) arrays implicitly; "
        "move them with cupy.asarray first")


def unwrap(x: Any, where: str, allow_host: bool = False) -> Any:
    """Device arrays -> their NumPy buffers; host ndarrays refused unless ``allow_host``."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and not allow_host:
        raise _host_refused(x, where)
    if isinstance(x, (list, tuple)) and not hasattr(type(x), "_fields"):
        items = [unwrap(v, where, allow_host) for v in x]
        return type(x)(items)
    return x


def unwrap_kw(kw: dict, where: str, allow_host: bool = False) -> dict:
    out = {}
    for k, v in kw.items():
        if k == "out" and isinstance(v, tuple):
            out[k] = tuple(unwrap(o, where) for o in v)
        else:
            out[k] = unwrap(v, where, allow_host)
    return out


def has_device(x: Any) -> bool:
    if isinstance(x, ndarray):
        return True
    if isinstance(x, (list, tuple)):
        return any(has_device(v) for v in x)
    return False


def _all_device(x: Any) -> bool:
    if isinstance(x, ndarray):
        return True
    if isinstance(x, (list, tuple)):
        return len(x) > 0 and all(_all_device(v) for v in x)
    return False


def to_host_input(obj: Any, where: str) -> tuple[Any, bool]:
    """For array creation: ``(numpy value, came_from_host)``.

    Device arrays (and nested sequences of device arrays only) stay on the device; any other
    value is host data, converted the way CuPy does (through NumPy, which refuses device arrays
    mixed with host values by calling their ``__array__``).
    """
    if isinstance(obj, ndarray):
        return obj._a, False
    if isinstance(obj, (list, tuple)) and _all_device(obj):
        return np.array(unwrap(obj, where)), False
    if hasattr(obj, "__cuda_array_interface__"):
        raise TypeError(f"{where}: the strict CuPy stand-in cannot import foreign device memory")
    return obj, True


# --------------------------------------------------------------------------- ufuncs
#: CuPy's ufuncs (cupy/__init__.py), by NumPy name
UFUNC_NAMES = frozenset("""
absolute add arccos arccosh arcsin arcsinh arctan arctan2 arctanh bitwise_and bitwise_count bitwise_not
bitwise_or bitwise_xor cbrt ceil conjugate copysign cos cosh deg2rad degrees divide divmod equal exp exp2
expm1 fabs float_power floor floor_divide fmax fmin fmod frexp gcd greater greater_equal heaviside hypot
invert isfinite isinf isnan lcm ldexp left_shift less less_equal log log10 log1p log2 logaddexp logaddexp2
logical_and logical_not logical_or logical_xor matmul maximum minimum mod modf multiply negative nextafter
not_equal positive power rad2deg radians reciprocal remainder right_shift rint sign signbit sin sinh sqrt
square subtract tan tanh true_divide trunc
""".split())

_COMPARISONS = frozenset("greater greater_equal less less_equal equal not_equal".split())
_SCALARS = (int, float, bool, complex, np.generic)


def apply_ufunc(ufunc: np.ufunc, method: str, inputs: tuple, kwargs: dict) -> Any:
    """Apply a NumPy ufunc the way CuPy's ``__array_ufunc__`` does; ``NotImplemented`` for other types."""
    name = ufunc.__name__
    if name not in UFUNC_NAMES or method not in ("__call__", "reduce", "accumulate", "outer", "at", "reduceat"):
        return NotImplemented
    if name in _COMPARISONS:  # CuPy's workaround for numpy/numpy#12142
        inputs = tuple(x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x for x in inputs)
    outs = kwargs.get("out", ())
    if not isinstance(outs, tuple):
        outs = (outs,)
    for x in tuple(inputs) + tuple(outs):
        if isinstance(x, np.ndarray):
            raise _host_refused(x, f"cupy.{name}")
        if isinstance(x, (list, tuple)):
            raise TypeError(f"Unsupported type {type(x)} in cupy.{name}")
        if not isinstance(x, (ndarray, *_SCALARS)):
            return NotImplemented
    raw = [x._a if isinstance(x, ndarray) else x for x in inputs]
    kw = dict(kwargs)
    if outs:
        kw["out"] = tuple(o._a for o in outs)
    fn = ufunc if method == "__call__" else getattr(ufunc, method)
    result = fn(*raw, **kw)
    if outs:
        res = result if isinstance(result, tuple) else (result,)
        mapped = tuple(o if r is o._a else wrap(r) for o, r in zip(outs, res))
        return mapped if isinstance(result, tuple) else mapped[0]
    return wrap(result)


# --------------------------------------------------------------------------- the array
class _Flags:
    """CuPy's ``ndarray.flags``: ``c_contiguous``, ``f_contiguous``, ``owndata`` (no ``writeable``)."""

    def __init__(self, a: np.ndarray) -> None:
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = bool(a.flags.owndata)

    def __getitem__(self, key: str) -> bool:
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[key]


class MemoryPointer:
    def __init__(self, a: np.ndarray) -> None:
        self.ptr = int(a.ctypes.data)
        self.mem = None
        self.device_id = 0


def _is_bool_index(k: Any) -> bool:
    if isinstance(k, np.ndarray):
        return k.dtype == np.bool_
    if isinstance(k, list):
        return len(k) > 0 and all(isinstance(v, (bool, np.bool_)) for v in k)
    return False


def _index(key: Any) -> tuple[Any, bool]:
    """Unwrap an index; ``True`` when it holds a boolean mask (CuPy reads the mask's count: a sync)."""
    if isinstance(key, tuple):
        parts = [unwrap(k, "indexing", allow_host=True) for k in key]
        return tuple(parts), any(_is_bool_index(k) for k in parts)
    k = unwrap(key, "indexing", allow_host=True)
    return k, _is_bool_index(k)


def _wrap_out_of_bounds(key: Any, shape: tuple[int, ...]) -> Any:
    """CuPy wraps out-of-bounds *integer-array* indices around (NumPy raises IndexError):
    ``x[[1, 3]]`` on 3 elements is ``x[[1, 0]]`` on a GPU. Scalar indices keep NumPy's check."""
    parts = list(key) if isinstance(key, tuple) else [key]
    n_used = sum(0 if (p is None or p is Ellipsis) else (p.ndim if isinstance(p, np.ndarray) and p.dtype == np.bool_
                                                           else 1) for p in parts)
    out, axis = [], 0
    for p in parts:
        if p is Ellipsis:
            axis += len(shape) - n_used
            out.append(p)
            continue
        if p is None:
            out.append(p)
            continue
        if isinstance(p, list) and p and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in p):
            p = np.asarray(p)
        if isinstance(p, np.ndarray) and p.dtype.kind in "iu" and axis < len(shape) and shape[axis] > 0:
            p = np.mod(p, shape[axis])
        out.append(p)
        axis += p.ndim if isinstance(p, np.ndarray) and p.dtype == np.bool_ else 1
    return tuple(out) if isinstance(key, tuple) else out[0]


def _binop(name: str, reflected: bool = False, inplace: bool = False):
    uf = getattr(np, name)

    def op(self, other):
        if reflected:
            args = (other, self)
        else:
            args = (self, other)
        kw = {"out": (self,)} if inplace else {}
        return apply_ufunc(uf, "__call__", args, kw)

    return op


def _unop(name: str):
    uf = getattr(np, name)

    def op(self):
        return apply_ufunc(uf, "__call__", (self,), {})

    return op


class ndarray:
    """A CuPy array on the CPU: a NumPy buffer that refuses implicit host conversion.

    Construct with :func:`cupy.asarray` & co; ``ndarray(shape, dtype)`` gives an uninitialised
    (NaN-filled) array as CuPy's constructor does. ``.get()``, ``.item()``, ``.tolist()``,
    ``float()``/``int()``/``bool()``/``complex()``, ``repr``/``str``/``format`` and
    ``cupy.asnumpy`` reach the host, and each is recorded as one host sync.
    """

    __slots__ = ("_a", "__weakref__")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape: Any, dtype: Any = float, memptr: Any = None, strides: Any = None,
                 order: str = "C") -> None:
        if memptr is not None or strides is not None:
            raise NotImplementedError("strict CuPy stand-in: ndarray(memptr=, strides=) is not supported")
        self._a = _poison(np.empty(shape, dtype=dtype, order=order))

    @classmethod
    def _from_numpy(cls, a: np.ndarray) -> "ndarray":
        obj = object.__new__(cls)
        obj._a = a
        return obj

    # -- NumPy interoperability, as CuPy has it
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return apply_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        from . import _namespace  # noqa: PLC0415

        target = _namespace.lookup(func)
        if target is None:
            return NotImplemented
        for t in types:
            if not issubclass(t, (ndarray, np.ndarray)):
                return NotImplemented
        return target(*args, **kwargs)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        raise BufferError("strict CuPy stand-in: there is no device memory to export through DLPack "
                          "(a consumer would receive host memory labelled as CUDA memory)")

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)  # kDLCUDA, device 0

    def toDlpack(self) -> Any:
        return self.__dlpack__()

    # -- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    data = property(lambda self: MemoryPointer(self._a))
    T = property(lambda self: wrap(self._a.T))
    mT = property(lambda self: wrap(np.swapaxes(self._a, -1, -2)))
    real = property(lambda self: wrap(self._a.real))
    imag = property(lambda self: wrap(self._a.imag))

    @property
    def device(self) -> Any:
        from .cuda import Device  # noqa: PLC0415

        return Device(0)

    @property
    def base(self) -> Any:
        return None if self._a.base is None or not isinstance(self._a.base, np.ndarray) else wrap(self._a.base)

    # -- the only ways to the host (each one sync)
    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
        record_sync("get")
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"out must be a numpy.ndarray, got {type(out)}")
            np.copyto(out, self._a)
            return out
        return np.array(self._a, order=order, copy=True)

    def item(self, *args: Any) -> Any:
        record_sync("item")
        return self._a.item(*args)

    def tolist(self) -> Any:
        record_sync("tolist")
        return self._a.tolist()

    def __float__(self) -> float:
        record_sync("float")
        return float(self._a)

    def __int__(self) -> int:
        record_sync("int")
        return int(self._a)

    def __complex__(self) -> complex:
        record_sync("complex")
        return complex(self._a)

    def __bool__(self) -> bool:
        if self._a.size == 0:
            warnings.warn("The truth value of an empty array is ambiguous. Returning False, but in future "
                          "this will result in an error. Use `array.size > 0` to check that an array is not "
                          "empty.", DeprecationWarning, stacklevel=2)
            return False
        if self._a.size > 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous. "
                             "Use a.any() or a.all()")
        record_sync("bool")
        return bool(self._a.reshape(()))

    def __repr__(self) -> str:
        record_sync("repr")
        return repr(self._a)

    def __str__(self) -> str:
        record_sync("str")
        return str(self._a)

    def __format__(self, spec: str) -> str:
        record_sync("format")
        return format(self._a if self._a.ndim else self._a[()], spec)

    def __reduce__(self):
        record_sync("pickle")
        from . import _namespace  # noqa: PLC0415

        return (_namespace.array, (self._a.copy(),))

    def set(self, arr: Any, stream: Any = None) -> None:
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self._a.shape or arr.dtype != self._a.dtype:
            raise ValueError("Shape or dtype mismatch")
        record_h2d()
        np.copyto(self._a, arr)

    # -- container
    def __len__(self) -> int:
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (wrap(self._a[i] if self._a.ndim > 1 else self._a[i:i + 1].reshape(())) for i in range(len(self._a)))

    def __getitem__(self, key: Any) -> Any:
        k, mask = _index(key)
        if mask:
            record_sync("boolean-mask indexing (mask count)")
        r = self._a[_wrap_out_of_bounds(k, self._a.shape)]
        return wrap(r)

    def __setitem__(self, key: Any, value: Any) -> None:
        k, mask = _index(key)
        if mask:
            record_sync("boolean-mask assignment (mask count)")
        if isinstance(value, np.ndarray):
            record_h2d()
        self._a[_wrap_out_of_bounds(k, self._a.shape)] = unwrap(value, "setitem", allow_host=True)

    def __copy__(self) -> "ndarray":
        return wrap(self._a.copy())

    def __deepcopy__(self, memo: Any) -> "ndarray":
        return wrap(self._a.copy())

    # -- array methods CuPy has (results stay on the device)
    def astype(self, dtype: Any, order: str = "K", casting: Any = None, subok: Any = None,
               copy: bool = True) -> "ndarray":
        kw = {} if casting is None else {"casting": casting}
        r = self._a.astype(dtype, order=order, copy=copy, **kw)
        return self if r is self._a else wrap(r)

    def copy(self, order: str = "C") -> "ndarray":
        return wrap(self._a.copy(order=order))

    def view(self, *args: Any, **kwargs: Any) -> "ndarray":
        return wrap(self._a.view(*args, **kwargs))

    def fill(self, value: Any) -> None:
        if isinstance(value, np.ndarray):
            raise _host_refused(value, "ndarray.fill")
        self._a.fill(unwrap(value, "ndarray.fill"))

    def nonzero(self) -> tuple:
        record_sync("nonzero (output size)")
        return wrap(self._a.nonzero())

    def compress(self, condition: Any, axis: Any = None, out: Any = None) -> "ndarray":
        record_sync("compress (output size)")
        return wrap(self._a.compress(unwrap(condition, "compress"), axis=axis))

    def sort(self, axis: int = -1, kind: Any = None) -> None:
        self._a.sort(axis=axis, kind="stable" if kind in (None, "stable") else kind)

    def __abs__(self):
        return apply_ufunc(np.absolute, "__call__", (self,), {})


_METHODS = """all any argmax argmin argpartition argsort choose clip conj conjugate cumprod cumsum diagonal dot
flatten max mean min partition prod ptp put ravel repeat reshape round squeeze std sum swapaxes take trace
transpose var""".split()


def _method(name: str):
    def m(self, *args, **kwargs):
        where = f"ndarray.{name}"
        a = unwrap(tuple(args), where)
        kw = unwrap_kw(kwargs, where)
        if name == "repeat" and (isinstance(a[0] if a else kw.get("repeats"), np.ndarray)):
            record_sync("repeat with array repeats")
        res = getattr(self._a, name)(*a, **kw)
        if "out" in kwargs and kwargs["out"] is not None and isinstance(kwargs["out"], ndarray):
            return kwargs["out"]
        return wrap(res)

    m.__name__ = name
    return m


for _name in _METHODS:
    setattr(ndarray, _name, _method(_name))

for _name, _uf in [("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "true_divide"),
                   ("floordiv", "floor_divide"), ("mod", "remainder"), ("pow", "power"), ("matmul", "matmul"),
                   ("and", "bitwise_and"), ("or", "bitwise_or"), ("xor", "bitwise_xor"),
                   ("lshift", "left_shift"), ("rshift", "right_shift")]:
    setattr(ndarray, f"__{_name}__", _binop(_uf))
    setattr(ndarray, f"__r{_name}__", _binop(_uf, reflected=True))
    setattr(ndarray, f"__i{_name}__", _binop(_uf, inplace=True))
for _name, _uf in [("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal"),
                   ("eq", "equal"), ("ne", "not_equal")]:
    setattr(ndarray, f"__{_name}__", _binop(_uf))
ndarray.__divmod__ = _binop("divmod")
ndarray.__rdivmod__ = _binop("divmod", reflected=True)
ndarray.__neg__ = _unop("negative")
ndarray.__pos__ = _unop("positive")
ndarray.__invert__ = _unop("invert")

ndarray.__module__ = "cupy"
ndarray.__qualname__ = "ndarray"
