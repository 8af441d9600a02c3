"""The strict CuPy stand-in refuses what CuPy refuses, counts host syncs and names the curvlab line.

These tests run in every pass (the stand-in is installed for the duration of each test and the
previous ``cupy`` restored), so a test passing through the stand-in in the strict pass is
meaningful: implicit host conversion, NumPy-only functions and host/device mixing fail as on a GPU.
"""

from __future__ import annotations

import inspect
import sys

import numpy as np
import pytest

from curvlab import backend, kernels
from tests import _strict_cupy

_KEYS = ("cupy", "cupy.cuda", "cupy.cuda.runtime", "cupy.linalg", "cupy.fft", "cupy.random", "cupyx", "cupyx.scipy",
         "curvlab.kernels.gpu")


@pytest.fixture
def cp():
    """The stand-in as ``cupy`` for one test; whatever ``cupy`` was before is restored afterwards."""
    saved = {k: sys.modules.get(k) for k in _KEYS}
    saved_backend = (backend._cupy, backend._cupy_checked)
    saved_gpu = vars(kernels).get("gpu")
    _strict_cupy.install()
    import cupy

    yield cupy
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v
    backend._cupy, backend._cupy_checked = saved_backend
    if saved_gpu is None:
        vars(kernels).pop("gpu", None)
    else:
        kernels.gpu = saved_gpu


def _line_of(func, needle: str) -> int:
    src, start = inspect.getsourcelines(func)
    hits = [start + i for i, line in enumerate(src) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


# ----------------------------------------------------------------- what CuPy refuses
def test_implicit_host_conversion_is_refused(cp):
    x = cp.asarray(np.arange(4.0))
    for convert in (np.asarray, np.array, lambda v: np.ascontiguousarray(v), lambda v: np.float64(v) + np.zeros(4)):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            convert(x)
    assert not isinstance(x, np.ndarray)
    with pytest.raises(TypeError):
        range(cp.asarray(3))  # no __index__ on CuPy arrays
    with pytest.raises(BufferError):
        x.__dlpack__()  # a consumer would get host memory labelled as CUDA memory


def test_numpy_only_functions_are_refused(cp):
    x = cp.asarray(np.arange(6.0))
    with pytest.raises(TypeError, match="no implementation found"):
        np.nanquantile(x, 0.5)  # NumPy has it, CuPy does not
    with pytest.raises(TypeError, match="no implementation found"):
        np.linalg.multi_dot([x.reshape(2, 3), x.reshape(3, 2)])
    with pytest.raises(TypeError, match="no implementation found"):
        np.block([x, x])
    for name in ("nanquantile", "block", "busday_count", "asmatrix"):
        with pytest.raises(AttributeError, match="strict CuPy stand-in"):
            getattr(cp, name)
    with pytest.raises(AttributeError):
        cp.linalg.multi_dot
    with pytest.raises(AttributeError):
        x.tobytes()  # not a CuPy array method
    with pytest.raises(AttributeError):
        x.flags.writeable  # CuPy's flags have no writeable
    rng = cp.random.default_rng(0)
    for name in ("normal", "choice", "permutation", "shuffle"):
        with pytest.raises(AttributeError):
            getattr(rng, name)
    with pytest.raises(AttributeError):
        cp.random.standard_normal  # the legacy global-state API is left out
    with pytest.raises(TypeError):
        cp.random.default_rng(np.random.default_rng(0))  # CuPy takes no NumPy Generator


def test_mixing_host_and_device_arrays_is_refused(cp):
    x = cp.asarray(np.arange(3.0))
    h = np.ones(3)
    for op in (lambda: x + h, lambda: h + x, lambda: np.add(x, h), lambda: cp.add(x, h), lambda: x * np.array(2.0),
               lambda: cp.concatenate([x, h]), lambda: cp.dot(x, h), lambda: np.dot(x, h), lambda: cp.zeros_like(h),
               lambda: cp.linalg.norm(h), lambda: cp.maximum(x, [1.0, 2.0, 3.0]), lambda: x.fill(np.array(1.0))):
        with pytest.raises(TypeError):
            op()
    # what CuPy accepts: scalars (Python and NumPy), device arrays, and host data given to asarray
    assert float((x + np.float64(2) + 1 + x).sum()) == 15.0
    assert bool((x < np.array(1.5)).any())  # CuPy's numpy/numpy#12142 workaround for comparisons
    with pytest.raises(ValueError, match="Unsupported dtype"):
        cp.asarray(np.array([1, "a"], dtype=object))
    y = cp.asarray(h)
    h[0] = 7.0
    assert float(y[0]) == 1.0  # asarray of host data copies it to the device
    x[:] = h  # assignment from the host is a host-to-device copy
    assert float(x[0]) == 7.0


def test_results_stay_on_the_device(cp):
    x = cp.asarray(np.arange(1.0, 7.0).reshape(2, 3))
    for r in (x.sum(), cp.sum(x), np.sum(x), x[0, 1], x.max(), cp.linalg.norm(x), cp.count_nonzero(x), cp.vdot(x, x),
              x.ravel()[2], np.argmax(x), cp.allclose(x, x)):
        assert isinstance(r, cp.ndarray) and r.shape == (), type(r)
        assert backend.is_cupy_array(r)
    assert type(np.exp(x)) is cp.ndarray and type(x @ x.T) is cp.ndarray and type(np.linalg.eigh(x @ x.T)[0]) is cp.ndarray
    assert backend.get_namespace(x) is cp
    v = cp.asarray(np.array([0.0, 1.0, 2.0]))
    assert v[cp.asarray(np.array([1, 3]))].tolist() == [1.0, 0.0]  # CuPy wraps integer-array indices around
    assert x[:, [0, 4]].tolist() == [[1.0, 2.0], [4.0, 5.0]]
    v[[1, 3]] = 10.0
    assert v.tolist() == [10.0, 10.0, 2.0]
    with pytest.raises(IndexError):
        v[3]  # scalar indices are checked
    e = cp.empty(3)
    assert bool(cp.all(cp.isnan(e)))  # uninitialised device memory is garbage: NaN here
    with pytest.raises(ValueError, match="ambiguous"):
        bool(x)


# ----------------------------------------------------------------- host syncs
def test_every_way_to_the_host_is_one_counted_sync(cp):
    x = cp.asarray(np.arange(4.0))
    with _strict_cupy.count_syncs() as log:
        y = (2 * x + 1) @ x  # device work: no sync
        z = cp.where(x > 1, x, 0.0).sum()
    assert log.count == 0 and log.h2d == 0
    reads = [lambda: float(y), lambda: int(z), lambda: bool(z > 0), lambda: y.item(), lambda: x.get(),
             lambda: cp.asnumpy(x), lambda: x.tolist(), lambda: backend.to_numpy(x), lambda: x[x > 1],
             lambda: cp.nonzero(x), lambda: cp.unique(x), lambda: cp.cuda.Device().synchronize(),
             lambda: f"{y:.3f}", lambda: repr(x)]
    for read in reads:
        with _strict_cupy.count_syncs() as log:
            read()
        assert log.count == 1, (inspect.getsource(read), log.report())
    with _strict_cupy.count_syncs() as log:
        cp.asarray(np.ones(3))
        cp.asarray(x)
    assert log.count == 0 and log.h2d == 1


def test_syncs_name_the_curvlab_line(cp):
    x = cp.asarray(np.array([1.0, 2.0]))
    with _strict_cupy.count_syncs() as log:
        backend.check_finite(x, "x")
    line = _line_of(backend.check_finite, "bool(")
    assert log.count == 1 and log.by_site() == {f"curvlab/backend.py:{line}": 1}, log.report()
    assert log.events[0].func == "check_finite" and log.events[0].kind == "bool"
    assert f"curvlab/backend.py:{line} (check_finite)" in log.report()


def test_backend_detection_and_dtype_of_device_arrays(cp):
    """Regression: backend._dtype_of evaluated np.asarray(x) even when x has a dtype (every CuPy array raised)."""
    assert backend.gpu_available() and backend.cupy_available()
    x32 = cp.ones(3, dtype=cp.float32)
    assert backend.float_dtype(x32) == np.float32
    assert backend.float_dtype(x32, cp.zeros(2)) == np.float64
    assert isinstance(backend.to_numpy(x32), np.ndarray)
    assert backend.is_cupy_array(backend.from_dlpack(x32))
    with pytest.raises(TypeError, match="different backends"):
        backend.get_namespace(x32, np.ones(3))
    g = backend.default_rng(5, xp=cp)
    assert type(g.standard_normal(3)) is cp.ndarray and backend.default_rng(g, xp=cp) is g


def test_generator_has_its_own_stream(cp):
    a = cp.random.default_rng(3).standard_normal(5)
    b = np.random.default_rng(3).standard_normal(5)
    assert type(a) is cp.ndarray and not np.allclose(a.get(), b)
    assert np.array_equal(cp.random.default_rng(3).standard_normal(5).get(), a.get())
    assert cp.random.default_rng(1).integers(0, 4, size=10).dtype == np.int64


# ----------------------------------------------------------------- linalg: cuSOLVER does not raise
def test_linalg_failures_give_nan_as_on_a_gpu(cp):
    with np.errstate(invalid="ignore"):
        L = cp.linalg.cholesky(-cp.eye(3))
        assert L.shape == (3, 3) and bool(cp.all(cp.isnan(L)))
        s = cp.linalg.solve(cp.zeros((2, 2)), cp.ones(2))
        assert s.shape == (2,) and bool(cp.all(cp.isnan(s)))
        u, sv, vt = cp.linalg.svd(cp.full((3, 2), cp.nan), full_matrices=False)
        assert (u.shape, sv.shape, vt.shape) == ((3, 2), (2,), (2, 2)) and bool(cp.all(cp.isnan(sv)))
    assert cp.linalg.LinAlgError is np.linalg.LinAlgError


# ----------------------------------------------------------------- fused kernels by their Numba twins
def test_fused_kernels_run_through_their_numba_twins(cp):
    rng = np.random.default_rng(0)
    n = 257
    w, a, h = (rng.standard_normal(n) for _ in range(3))
    p = np.abs(rng.standard_normal(n)) + 0.1
    ref = kernels.kl_dual(0.7, w, a, h, p, beta_p0=0.01, impl="reference")
    dev = [cp.asarray(v) for v in (w, a, h, p)]
    with _strict_cupy.count_syncs() as log:
        got = kernels.kl_dual(0.7, *dev, beta_p0=0.01)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert log.count == 1 and all(s.startswith("curvlab/kernels/gpu.py:") for s in log.by_site()), log.report()
    x = cp.asarray(np.array([0.0, np.nan, np.inf, 1.0]))
    assert kernels.count_nonfinite(x) == 2
    assert kernels.kl_pole(dev[2], dev[3], beta_p0=0.01) == kernels.kl_pole(h, p, beta_p0=0.01, impl="reference")


def test_kernel_argument_checks(cp):
    x = cp.ones(4)
    with pytest.raises(NotImplementedError, match="no Numba twin registered for kernel 'mystery'"):
        cp.ElementwiseKernel("T x", "T y", "y = x", name="mystery")
    k = cp.ReductionKernel("T x", "int64 y", "isfinite((double)x) ? 0 : 1", "a + b", "y = a", "0",
                           name="curvlab_count_nonfinite")
    assert int(k(x)) == 0
    with pytest.raises(TypeError, match="Unsupported type"):
        k(np.ones(4))
    from tests._strict_cupy._kernels import _bind, _params

    k2 = cp.ReductionKernel("T x, bool extra", "int64 y", "0", "a + b", "y = a", "0", name="curvlab_count_nonfinite")
    with pytest.raises(NotImplementedError, match=r"ignores its parameter\(s\) \['extra'\]"):
        k2(x, True)  # a parameter the Numba twin does not read is an error, not silently dropped

    with pytest.raises(TypeError, match="Type is mismatched"):
        _bind("k", _params("T g, T w"), (x, cp.ones(4, dtype=cp.float32)))
    with pytest.raises(ValueError, match="Shape is mismatched"):
        _bind("k", _params("T g, T w"), (x, cp.ones(5)))
    with pytest.raises(TypeError, match="Unsupported type"):
        _bind("k", _params("T g, float64 s"), (x, [1.0]))


def test_cusolver_failures_reach_curvlabs_fallbacks(cp, monkeypatch):
    """cuSOLVER returns NaN where LAPACK raises: curvlab's LinAlgError fallbacks must see that too."""
    from curvlab.linalg import duality, operators

    rng = np.random.default_rng(2)
    M = rng.standard_normal((6, 4))
    want = float(np.linalg.svd(M, compute_uv=False).sum())
    real_svd = cp.linalg.svd

    def failing_svd(a, *args, **kwargs):  # what a failed gesvdj/gesvd leaves behind: NaN, no exception
        out = real_svd(a, *args, **kwargs)
        return tuple(cp.full_like(x, cp.nan) for x in out) if isinstance(out, tuple) else cp.full_like(out, cp.nan)

    monkeypatch.setattr(cp.linalg, "svd", failing_svd)
    assert duality.dual_norm(cp.asarray(M), "spectral") == pytest.approx(want, rel=1e-12)  # the host gesvd retry
    with pytest.raises(np.linalg.LinAlgError):
        operators._solve_checked(cp, cp.zeros((2, 2)), cp.ones(2), "singular")  # NaN result, not an exception
