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

Example
-------
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


def get_namespace(*arrays: Any) -> types.ModuleType:
    """Return ``numpy`` or ``cupy``: the namespace shared by all array arguments.

    Non-array arguments (Python scalars, ``None``) are ignored. With no array
    argument the answer is ``numpy``.

    Raises
    ------
    TypeError
        When NumPy and CuPy arrays are mixed; the message gives the position
        and type of each argument.
    """
    kinds = []
    for i, a in enumerate(arrays):
        if a is None or isinstance(a, (int, float, bool, np.generic)):
            continue
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
    return np.dtype(getattr(x, "dtype", np.asarray(x).dtype))


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
    dt = getattr(x, "dtype", None)
    if dt is None:
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")
    if np.dtype(dt) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {np.dtype(dt)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in allowed:
            raise ValueError(f"{name} must have ndim {' or '.join(map(str, allowed))}, got shape {tuple(x.shape)}")


def as_float_array(x: Any, name: str, dtype: Any = None, xp: types.ModuleType | None = None) -> Any:
    """Convert ``x`` to a float array in the backend ``xp`` (default: its own).

    Integer/boolean data become float64 (or ``dtype``); complex raises
    ``TypeError`` naming ``name``.
    """
    if xp is None:
        xp = get_namespace(x)
    dt = getattr(x, "dtype", None)
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


def default_rng(seed: Any = None, xp: types.ModuleType | None = None) -> Any:
    """A random ``Generator`` for the backend ``xp`` from a seed or a generator.

    A ``numpy.random.Generator`` (or CuPy generator) is returned as it is, so
    routines can accept ``rng`` or ``seed`` alike.
    """
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
