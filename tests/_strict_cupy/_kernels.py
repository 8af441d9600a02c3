"""``cupy.ElementwiseKernel`` / ``ReductionKernel`` / ``RawKernel`` of the strict stand-in.

Nothing is compiled: a kernel is looked up by its ``name`` in :data:`TWINS`, a registry of
the curvlab kernels' Numba twins (:mod:`curvlab.kernels.cpu`), called on the device buffers
with the arguments bound by the parameter names of the kernel's signature. CuPy's argument
checks are kept: arrays must be device arrays, all ``T`` parameters share one dtype, the
non-raw arrays one shape. A kernel without a twin raises ``NotImplementedError`` naming it, and
so does a twin that leaves one of the kernel's parameters unread (a flag added to the CUDA
kernel and not to its twin would otherwise be ignored silently).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ._core import ndarray, wrap

_SCALAR = (int, float, bool, np.generic)


def _params(spec: str) -> list[tuple[str, str, bool]]:
    out = []
    for p in spec.split(","):
        words = p.split()
        if not words:
            continue
        raw = words[0] == "raw"
        words = words[1:] if raw else words
        out.append((words[-1], words[0], raw))
    return out


def _bind(kname: str, params: list[tuple[str, str, bool]], args: tuple) -> dict[str, Any]:
    if len(args) != len(params):
        raise TypeError(f"Wrong number of arguments for {kname!r}: expected {len(params)}, got {len(args)}")
    bound: dict[str, Any] = {}
    tdtype = None
    shape = None
    for (name, typ, raw), v in zip(params, args):
        if isinstance(v, np.ndarray):
            raise TypeError(f"Unsupported type {type(v)} (argument {name!r} of kernel {kname!r}): "
                            "CuPy kernels take device arrays")
        if isinstance(v, ndarray):
            a = v._a
            if len(typ) == 1 and typ.isupper():  # a type placeholder such as T
                if tdtype is None:
                    tdtype = a.dtype
                elif a.dtype != tdtype:
                    raise TypeError(f"Type is mismatched. {name} {a.dtype} {tdtype} (kernel {kname!r})")
            elif np.dtype(typ) != a.dtype:
                raise TypeError(f"Type is mismatched. {name} {a.dtype} {typ} (kernel {kname!r})")
            if not raw:
                if shape is None:
                    shape = a.shape
                elif a.shape != shape:
                    raise ValueError(f"Shape is mismatched ({name}: {a.shape} vs {shape}, kernel {kname!r})")
            bound[name] = a
        elif isinstance(v, _SCALAR):
            bound[name] = v
        else:
            raise TypeError(f"Unsupported type {type(v)} (argument {name!r} of kernel {kname!r})")
    return bound


class _Bound(dict):
    """The bound arguments; records which ones the twin read, so that none is silently ignored."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def _run_twin(kname: str, fn: Callable[[dict], Any], b: dict) -> Any:
    bound = _Bound(b)
    out = fn(bound)
    unread = set(b) - bound.read
    if unread:
        raise NotImplementedError(
            f"strict CuPy stand-in: the Numba twin of kernel {kname!r} ignores its parameter(s) {sorted(unread)}; "
            "update TWINS in tests/_strict_cupy/_kernels.py")
    return out


def _forget(inv_lam: float) -> float:
    """A ``forget`` with ``1.0 / forget == inv_lam`` exactly (the Numba twin takes ``forget``)."""
    f = 1.0 / inv_lam
    for cand in (f, np.nextafter(f, math.inf), np.nextafter(f, -math.inf)):
        if 1.0 / float(cand) == inv_lam:
            return float(cand)
    return f


def _filter(b: dict) -> None:
    from curvlab.kernels import cpu  # noqa: PLC0415

    s, k = cpu.rls_filter_update(b["g"], b["w"], b["a"], b["h"], b["P00"], b["P01"], b["P11"], xscale=b["xscale"],
                                 q=b["q"], r=b["r"], forget=_forget(b["inv_lam"]), init=bool(b["init"]),
                                 h0=b["h0"], P0=b["P0"], psd_guard=bool(b["guard"]))
    b["counts"][0] += np.uint64(s)
    b["counts"][1] += np.uint64(k)


def _apply(b: dict) -> None:
    from curvlab.kernels import cpu  # noqa: PLC0415

    n = cpu.arturo_apply(b["eta"], b["w"], b["a"], b["h"], b["p"], b["out"], mscale=b["mscale"], beta_p0=b["bp0"],
                         h_min=b["hmin"], nu=b["nu"], beta=b["beta"], p_min=b["pmin"])
    b["counts"][0] += np.uint64(n)


def _dual(b: dict) -> np.ndarray:
    from curvlab.kernels import cpu  # noqa: PLC0415

    kl, dkl = cpu.kl_dual(b["eta"], b["w_"], b["a_"], b["h_"], b["p_"], mscale=b["mscale"], beta_p0=b["bp0"],
                          h_min=b["hmin"], domain_check=bool(b.get("chk", False)))
    return np.asarray(complex(2.0 * kl, -dkl), dtype=np.complex128)


def _pole(b: dict) -> np.ndarray:
    from curvlab.kernels import cpu  # noqa: PLC0415

    return np.asarray(cpu.kl_pole(b["h_"], b["p_"], beta_p0=b["bp0"], h_min=b["hmin"])[0], dtype=np.float64)


def _neg(b: dict) -> np.ndarray:
    return np.asarray(np.count_nonzero(b["x"] < 0), dtype=np.int64)


def _nonfinite(b: dict) -> np.ndarray:
    from curvlab.kernels import cpu  # noqa: PLC0415

    return np.asarray(cpu.count_nonfinite(b["x"]), dtype=np.int64)


#: kernel name -> its Numba twin, called with the bound arguments (element-wise kernels update
#: their outputs in place; reductions return the 0-d result)
TWINS: dict[str, Callable[[dict], Any]] = {
    "curvlab_rls_filter": _filter,
    "curvlab_arturo_apply": _apply,
    "curvlab_kl_dual": _dual,
    "curvlab_kl_pole": _pole,
    "curvlab_count_neg": _neg,
    "curvlab_count_nonfinite": _nonfinite,
}


def _twin(name: str) -> Callable[[dict], Any]:
    if name not in TWINS:
        raise NotImplementedError(
            f"strict CuPy stand-in: no Numba twin registered for kernel {name!r}; "
            "add one to TWINS in tests/_strict_cupy/_kernels.py")
    return TWINS[name]


class ElementwiseKernel:
    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 reduce_dims: bool = True, preamble: str = "", no_return: bool = False,
                 return_tuple: bool = False, loop_prep: str = "", after_loop: str = "", options: Any = (),
                 **kwargs: Any) -> None:
        self.name = name
        self.in_params, self.out_params = _params(in_params), _params(out_params)
        self._fn = _twin(name)

    def __call__(self, *args: Any, size: Any = None, block_size: Any = None, stream: Any = None) -> Any:
        params = self.in_params + self.out_params
        if len(args) == len(self.in_params):
            raise NotImplementedError(f"strict CuPy stand-in: kernel {self.name!r} must be given its outputs")
        b = _bind(self.name, params, args)
        _run_twin(self.name, self._fn, b)
        outs = args[len(self.in_params):]
        return outs[0] if len(outs) == 1 else tuple(outs)


class ReductionKernel:
    def __init__(self, in_params: str, out_params: str, map_expr: str, reduce_expr: str, post_map_expr: str,
                 identity: Any, name: str = "reduce_kernel", reduce_type: Any = None, reduce_dims: bool = True,
                 preamble: str = "", options: Any = (), **kwargs: Any) -> None:
        self.name = name
        self.in_params, self.out_params = _params(in_params), _params(out_params)
        self._fn = _twin(name)

    def __call__(self, *args: Any, out: Any = None, axis: Any = None, keepdims: bool = False,
                 stream: Any = None) -> ndarray:
        if axis is not None or keepdims or out is not None:
            raise NotImplementedError(f"strict CuPy stand-in: kernel {self.name!r} supports full reductions only")
        b = _bind(self.name, self.in_params, args)
        return wrap(np.asarray(_run_twin(self.name, self._fn, b)))


class RawKernel:
    def __init__(self, code: str, name: str, options: Any = (), backend: str = "nvrtc", **kwargs: Any) -> None:
        self.name = name
        self._fn = _twin(name)

    def __call__(self, grid: Any, block: Any, args: tuple, **kwargs: Any) -> None:
        raise NotImplementedError(f"strict CuPy stand-in: RawKernel {self.name!r} needs a hand-written twin call")


class RawModule:
    def __init__(self, code: str = None, path: str = None, options: Any = (), **kwargs: Any) -> None:
        self.code = code

    def get_function(self, name: str) -> RawKernel:
        return RawKernel(self.code or "", name)
