"""Array backend: NumPy on the CPU, CuPy on an NVIDIA GPU, with one code path.

Every core routine of curvlab asks this module which array namespace its inputs
live in (:func:`get_namespace`) and then calls ``xp.<function>``; the same code
runs on NumPy and CuPy arrays. CuPy is imported lazily, so ``import curvlab``
works on machines without CuPy or without a GPU.

Dtype policy
------------
curvlab computes in ``float32`` or ``float64``. Integer and boolean inputs are
promoted to ``float64`` only where a routine says it accepts them (data
arrays, labels are separate); complex inputs are rejected everywhere, since
curvature of a real loss is real. :func:`float_dtype` and
:func:`check_float_array` implement the policy and raise errors that name the
offending argument.

Examples
--------
>>> import numpy as np
>>> from curvlab import backend
>>> x = np.ones(3, dtype=np.float32)
>>> backend.get_namespace(x) is np
True
>>> backend.float_dtype(x, np.zeros(2))
dtype('float64')
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

__all__ = [
    "get_namespace",
    "is_cupy_array",
    "cupy_available",
    "gpu_available",
    "to_numpy",
    "asarray_like",
    "synchronize",
    "float_dtype",
    "check_float_array",
    "as_float_array",
    "check_finite",
    "check_finite_data",
    "check_positive",
    "check_positive_int",
    "check_rng",
    "as_array",
    "foreign_array_hint",
    "default_rng",
    "to_dlpack_capsule",
    "from_dlpack",
    "FLOAT_DTYPES",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_cupy: types.ModuleType | None = None
_cupy_checked = False


def _import_cupy() -> types.ModuleType | None:
    """Import CuPy once; ``None`` when it is missing or broken."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy  # noqa: PLC0415

            _cupy = cupy
        except Exception:  # ImportError, or a CUDA library that fails to load
            _cupy = None
    return _cupy


def cupy_available() -> bool:
    """True when CuPy imports (a GPU may still be absent: see :func:`gpu_available`)."""
    return _import_cupy() is not None


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    cp = _import_cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def is_cupy_array(x: Any) -> bool:
    """True for a ``cupy.ndarray``; never imports CuPy for the check."""
    return type(x).__module__.startswith("cupy")


_FOREIGN = {
    "torch": "a torch.Tensor: convert it with t.detach().cpu().numpy() (or cupy.from_dlpack(t) on a GPU), "
    "or use curvlab.adapters.torch",
    "jax": "a JAX array: convert it with numpy.asarray(x) (or curvlab.backend.from_dlpack(x)), "
    "or use curvlab.adapters.jax",
    "jaxlib": "a JAX array: convert it with numpy.asarray(x) (or curvlab.backend.from_dlpack(x)), "
    "or use curvlab.adapters.jax",
    "tensorflow": "a TensorFlow tensor: convert it with x.numpy()",
}


def foreign_array_hint(x: Any) -> str | None:
    """What ``x`` is and how to convert it, when it is a tensor of another framework (torch,
    JAX, TensorFlow) that curvlab's NumPy/CuPy core does not take; ``None`` otherwise."""
    root = type(x).__module__.split(".", 1)[0]
    return _FOREIGN.get(root)


def get_namespace(*arrays: Any) -> types.ModuleType:
    """Return ``numpy`` or ``cupy``: the namespace shared by all array arguments.

    Non-array arguments (Python scalars, ``None``) are ignored. With no array
    argument the answer is ``numpy``.

    Raises
    ------
    TypeError
        When NumPy and CuPy arrays are mixed (the message gives the position
        and type of each argument), or when an argument is a torch/JAX/TensorFlow
        tensor (the message says how to convert it).
    """
    kinds = []
    for i, a in enumerate(arrays):
        if a is None or isinstance(a, (int, float, bool, np.generic)):
            continue
        hint = foreign_array_hint(a)
        if hint is not None:
            raise TypeError(
                f"argument {i} is {hint}; curvlab's core takes NumPy (CPU) or CuPy (GPU) arrays"
            )
        if is_cupy_array(a):
            kinds.append((i, "cupy", type(a).__name__))
        elif isinstance(a, np.ndarray):
            kinds.append((i, "numpy", type(a).__name__))
    names = {k for _, k, _ in kinds}
    if len(names) > 1:
        desc = ", ".join(f"argument {i}: {k}.{t}" for i, k, t in kinds)
        raise TypeError(
            "curvlab got arrays from different backends (" + desc + "); "
            "move them to one device first (curvlab.backend.to_numpy, or cupy.asarray)"
        )
    if names == {"cupy"}:
        cp = _import_cupy()
        assert cp is not None  # a cupy array exists, so cupy imports
        return cp
    return np


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a NumPy array (a device-to-host copy for CuPy arrays)."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def asarray_like(x: Any, like: Any, dtype: Any = None) -> Any:
    """Return ``x`` as an array of the same backend as ``like``."""
    xp = get_namespace(like)
    if xp is np:
        x = to_numpy(x)
    return xp.asarray(x, dtype=dtype)


def synchronize(x: Any = None) -> None:
    """Wait for queued GPU work; a no-op for NumPy (or when CuPy is absent).

    With an array argument, only a CuPy array triggers a device sync; with no
    argument, the current CuPy device is synchronised if CuPy is loaded.
    """
    if x is not None and not is_cupy_array(x):
        return
    cp = _import_cupy() if x is not None else (_cupy if _cupy_checked else None)
    if cp is not None:
        cp.cuda.Device().synchronize()


def _dtype_of(x: Any) -> np.dtype:
    dt = getattr(x, "dtype", None)  # not getattr(x, "dtype", np.asarray(x).dtype): CuPy refuses np.asarray
    return np.dtype(dt if dt is not None else np.asarray(x).dtype)


def float_dtype(*arrays: Any) -> np.dtype:
    """The working float dtype for the given arrays: float64 if any is float64.

    Integer and boolean arrays count as float64 (data promotion); float16 and
    other floats count as float32 unless wider. Complex dtypes raise.
    """
    result = None
    for i, a in enumerate(arrays):
        if a is None:
            continue
        dt = _dtype_of(a)
        if dt.kind == "c":
            raise TypeError(f"argument {i} has complex dtype {dt}; curvlab works with real float32/float64")
        if dt.kind in "iub" or dt == np.float64 or (dt.kind == "f" and dt.itemsize > 8):
            dt = np.dtype(np.float64)
        elif dt.kind == "f":
            dt = np.dtype(np.float32)
        else:
            raise TypeError(f"argument {i} has dtype {dt}; expected a real numeric dtype")
        result = dt if result is None else np.promote_types(result, dt)
    return np.dtype(np.float64) if result is None else np.dtype(result)


def check_float_array(x: Any, name: str, ndim: int | tuple[int, ...] | None = None) -> None:
    """Raise unless ``x`` is a float32/float64 array (of the given ``ndim``).

    Error messages name the argument, the expected and the received dtype or
    number of dimensions.
    """
    hint = foreign_array_hint(x)
    if hint is not None:
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {hint}")
    dt = getattr(x, "dtype", None)
    if dt is None:
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")
    if not isinstance(dt, np.dtype):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__module__}.{type(x).__name__}")
    if np.dtype(dt) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {np.dtype(dt)}{_dtype_advice(dt)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in allowed:
            raise ValueError(f"{name} must have ndim {' or '.join(map(str, allowed))}, got shape {tuple(x.shape)}")


def _dtype_advice(dt: Any) -> str:
    dt = np.dtype(dt)
    if dt.kind == "c":
        return " (complex: curvature of a real loss is real; pass the real part explicitly if that is meant)"
    if dt == np.float16:
        return " (float16 is not a compute dtype of curvlab: cast with .astype(numpy.float32))"
    if dt.kind in "OUSV":
        return " (not numeric: build a float array, e.g. numpy.asarray(x, dtype=numpy.float64))"
    if dt.kind in "iub":
        return " (integer/boolean: cast with .astype(numpy.float64))"
    return ""


def as_float_array(x: Any, name: str, dtype: Any = None, xp: types.ModuleType | None = None) -> Any:
    """Convert ``x`` to a float array in the backend ``xp`` (default: its own).

    Integer/boolean data become float64 (or ``dtype``); complex, object and
    string data, and torch/JAX tensors, raise ``TypeError`` naming ``name``.
    """
    hint = foreign_array_hint(x)
    if hint is not None:
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {hint}")
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")
    if xp is None:
        xp = get_namespace(x)
    dt = getattr(x, "dtype", None)
    if dt is None and isinstance(x, (list, tuple)):
        try:
            dt = np.asarray(x).dtype
        except ValueError as exc:  # ragged nesting
            raise ValueError(f"{name} is a ragged nested sequence, not an array: {exc}") from None
    if dt is not None and isinstance(dt, np.dtype) and dt.kind not in "fiubc":
        raise TypeError(f"{name} has dtype {np.dtype(dt)}; curvlab works with real float32/float64{_dtype_advice(dt)}")
    if dt is not None and np.dtype(dt).kind == "c":
        raise TypeError(f"{name} has complex dtype {np.dtype(dt)}; curvlab works with real float32/float64")
    target = np.dtype(dtype) if dtype is not None else float_dtype(x)
    if target not in FLOAT_DTYPES:
        raise TypeError(f"dtype for {name} must be float32 or float64, got {target}")
    if xp is np:
        x = to_numpy(x)
    return xp.asarray(x, dtype=target)


def check_finite(x: Any, name: str) -> None:
    """Raise ``FloatingPointError`` if ``x`` holds NaN or Inf (one device sync)."""
    xp = get_namespace(x)
    if not bool(xp.all(xp.isfinite(x))):
        raise FloatingPointError(f"{name} contains NaN or Inf")


def check_finite_data(x: Any, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if the data array ``x`` holds NaN or Inf (one device sync).

    For *inputs* (operator data, parameters) — bad input is a ``ValueError``;
    :func:`check_finite` (``FloatingPointError``) is for values a computation produced.
    """
    xp = get_namespace(x)
    finite = xp.isfinite(x)
    if not bool(xp.all(finite)):
        bad = int(x.size - int(xp.count_nonzero(finite)))
        raise ValueError(f"{name} contains NaN or Inf ({bad} of {x.size} entries); curvlab needs finite data")


def check_positive_int(x: Any, name: str, minimum: int = 1) -> int:
    """``x`` as an ``int >= minimum``: ``TypeError`` for a non-integer (bool, float, str),
    ``ValueError`` below ``minimum``; both name ``name``.

    >>> check_positive_int(3, "n_probes")
    3
    """
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if int(x) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    return int(x)


def check_positive(name: str, value: Any, *, allow_zero: bool = False, integer: bool = False) -> Any:
    """``value`` as a finite number ``> 0`` (``>= 0`` with ``allow_zero``); an ``int`` with ``integer``.

    The one check for step sizes, tolerances, damping and counts. Raises
    ``TypeError`` for a non-number (bool, string, array of size != 1, complex)
    and ``ValueError`` for NaN, Inf or a value out of range; both messages name
    ``name``, the expectation and the received value.

    >>> check_positive("lr", 0.1)
    0.1
    >>> check_positive("maxiter", 3, integer=True)
    3
    """
    want = ("an int" if integer else "a finite number") + (" >= 0" if allow_zero else " > 0")
    v = value
    if hasattr(v, "ndim") and getattr(v, "ndim", 1) == 0 and hasattr(v, "item"):
        v = v.item()  # 0-d array or NumPy scalar (one sync for CuPy)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}")
    if integer:
        if isinstance(v, (float, np.floating)):
            if not (np.isfinite(v) and float(v).is_integer()):
                raise TypeError(f"{name} must be {want}, got {value!r}")
        v = int(v)
    else:
        v = float(v)
        if not np.isfinite(v):
            raise ValueError(f"{name} must be {want}, got {value!r}")
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return v


def check_rng(rng: Any, name: str = "rng") -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``rng`` is a valid seed or generator.

    Accepted: ``None``, a non-negative int, a ``numpy.random.SeedSequence`` or
    ``BitGenerator``, a ``numpy.random.Generator``, a CuPy generator. Refused
    with advice: ``numpy.random.RandomState`` (legacy), ``torch.Generator``,
    a JAX key, floats, strings, booleans.
    """
    if rng is None or isinstance(rng, (np.random.Generator, np.random.SeedSequence, np.random.BitGenerator)):
        return
    if type(rng).__module__.startswith("cupy") and hasattr(rng, "standard_normal"):
        return
    expected = "None, an int seed >= 0 or a numpy.random.Generator"
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        if int(rng) < 0:
            raise ValueError(f"{name} must be {expected}, got the negative seed {int(rng)}")
        return
    if isinstance(rng, np.random.RandomState):
        advice = " (a legacy RandomState: use numpy.random.default_rng(seed))"
    elif type(rng).__module__.split(".", 1)[0] == "torch":
        advice = " (a torch.Generator: pass an int seed or numpy.random.default_rng(seed))"
    elif foreign_array_hint(rng) is not None:
        advice = " (a JAX/torch array, perhaps a PRNG key: pass an int seed or numpy.random.default_rng(seed))"
    else:
        advice = ""
    raise TypeError(f"{name} must be {expected}, got {type(rng).__module__}.{type(rng).__name__}{advice}")


def as_array(x: Any, name: str, *, ndim: int | tuple[int, ...] | None = None, dtype: Any = None,
             xp: types.ModuleType | None = None, finite: bool = False) -> Any:
    """The one entry check for array arguments: ``x`` as a float32/float64 array of backend ``xp``.

    Lists/tuples and integer/boolean arrays are converted (to ``dtype``, default float64
    for integers, the array's own float dtype otherwise). Raises ``TypeError`` naming
    ``name`` for torch/JAX tensors (with the conversion to use), complex, float16, object
    and string dtypes, and non-arrays; ``ValueError`` for a wrong ``ndim`` and, with
    ``finite=True``, for NaN/Inf.

    >>> as_array([1, 2], "x")
    array([1., 2.])
    """
    hint = foreign_array_hint(x)
    if hint is not None:
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {hint}")
    if x is None or isinstance(x, (str, bytes, dict, set)) or callable(x):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")
    dt = getattr(x, "dtype", None)
    if dt is not None and isinstance(dt, np.dtype) and (dt.kind not in "fiub" or dt == np.float16):
        raise TypeError(f"{name} must have dtype float32 or float64, got {dt}{_dtype_advice(dt)}")
    if dt is None:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be an array or a nested sequence of numbers, got {type(x).__name__}: {exc}") from None
        if arr.dtype.kind not in "fiub" or arr.dtype == np.float16:
            raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}{_dtype_advice(arr.dtype)}")
    out = as_float_array(x, name, dtype=dtype, xp=xp)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if out.ndim not in allowed:
            raise ValueError(f"{name} must have ndim {' or '.join(map(str, allowed))}, got shape {tuple(out.shape)}")
    if finite:
        check_finite_data(out, name)
    return out


def default_rng(seed: Any = None, xp: types.ModuleType | None = None) -> Any:
    """A random ``Generator`` for the backend ``xp`` from a seed or a generator.

    A ``numpy.random.Generator`` (or CuPy generator) is returned as it is, so
    routines can accept ``rng`` or ``seed`` alike. Anything else than
    :func:`check_rng` accepts raises ``TypeError``/``ValueError`` naming ``rng``.
    """
    check_rng(seed)
    if xp is None or xp is np:
        if isinstance(seed, np.random.Generator):
            return seed
        return np.random.default_rng(seed)
    if hasattr(seed, "standard_normal") and is_cupy_array(seed.standard_normal(1)):
        return seed
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(2**63 - 1))
    return xp.random.default_rng(seed)


def to_dlpack_capsule(x: Any) -> Any:
    """Export an array through the DLPack protocol (zero-copy)."""
    if not hasattr(x, "__dlpack__"):
        raise TypeError(f"{type(x).__name__} does not support the DLPack protocol")
    return x.__dlpack__()


def from_dlpack(x: Any, xp: types.ModuleType | None = None) -> Any:
    """Import any DLPack-capable tensor as a NumPy (CPU) or CuPy (GPU) array.

    Zero-copy: the result shares memory with ``x``. With ``xp`` omitted the
    backend is chosen from the tensor's device (``__dlpack_device__``: 1 is
    the CPU, 2 a CUDA device).
    """
    if xp is None:
        dev_type = x.__dlpack_device__()[0] if hasattr(x, "__dlpack_device__") else 1
        if int(dev_type) == 1:
            xp = np
        else:
            xp = _import_cupy()
            if xp is None:
                raise RuntimeError("the tensor lives on a GPU but CuPy is not available")
    return xp.from_dlpack(x)
