"""Tests of curvlab.backend: namespace detection, dtype policy, DLPack, rng."""

import numpy as np
import pytest

from curvlab import backend


def test_numpy_namespace_and_scalars_ignored():
    assert backend.get_namespace(np.ones(2), 3.0, None, np.float32(1)) is np
    assert backend.get_namespace() is np


def test_mixed_backends_raise_with_positions():
    class FakeCupy:  # looks like a cupy array to the detector
        pass

    FakeCupy.__module__ = "cupy._core.core"
    with pytest.raises(TypeError, match="argument 0: numpy.*argument 1: cupy"):
        backend.get_namespace(np.ones(2), FakeCupy())


@pytest.mark.parametrize(
    "dtypes, expected",
    [
        ((np.float32,), np.float32),
        ((np.float32, np.float64), np.float64),
        ((np.int64,), np.float64),
        ((np.float16, np.float32), np.float32),
        ((np.bool_,), np.float64),
    ],
)
def test_float_dtype_policy(dtypes, expected):
    assert backend.float_dtype(*[np.zeros(1, dtype=d) for d in dtypes]) == np.dtype(expected)


def test_complex_rejected_everywhere():
    z = np.zeros(2, dtype=np.complex128)
    with pytest.raises(TypeError, match="argument 0 has complex dtype"):
        backend.float_dtype(z)
    with pytest.raises(TypeError, match="x has complex dtype"):
        backend.as_float_array(z, "x")
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        backend.check_float_array(z, "x")


def test_check_float_array_names_argument_and_shape():
    with pytest.raises(TypeError, match="v must have dtype float32 or float64, got int64"):
        backend.check_float_array(np.zeros(3, dtype=np.int64), "v")
    with pytest.raises(ValueError, match=r"M must have ndim 2, got shape \(3,\)"):
        backend.check_float_array(np.zeros(3), "M", ndim=2)
    with pytest.raises(TypeError, match="must be a NumPy or CuPy array"):
        backend.check_float_array([1.0], "v")


def test_as_float_array_promotes_integers():
    out = backend.as_float_array(np.arange(3), "x")
    assert out.dtype == np.float64 and np.array_equal(out, [0.0, 1.0, 2.0])
    assert backend.as_float_array(np.arange(3), "x", dtype=np.float32).dtype == np.float32


def test_check_finite():
    backend.check_finite(np.ones(3), "g")
    with pytest.raises(FloatingPointError, match="g contains NaN or Inf"):
        backend.check_finite(np.array([1.0, np.nan]), "g")


def test_to_numpy_and_asarray_like():
    x = np.arange(3.0)
    assert backend.to_numpy(x) is x
    y = backend.asarray_like([1, 2], x, dtype=np.float32)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32


def test_default_rng_passthrough_and_seed():
    g = np.random.default_rng(1)
    assert backend.default_rng(g) is g
    a = backend.default_rng(5).standard_normal(3)
    b = backend.default_rng(5).standard_normal(3)
    assert np.array_equal(a, b)


def test_dlpack_roundtrip_is_zero_copy():
    x = np.arange(6.0)
    y = backend.from_dlpack(x)
    assert isinstance(y, np.ndarray)
    assert np.shares_memory(x, y)
    y[0] = 42.0
    assert x[0] == 42.0
    with pytest.raises(TypeError, match="DLPack"):
        backend.to_dlpack_capsule([1.0])


def test_synchronize_is_noop_on_numpy():
    backend.synchronize(np.ones(2))
    backend.synchronize()


def test_import_without_cupy_works():
    import importlib

    import curvlab

    importlib.reload(curvlab)
    assert isinstance(backend.gpu_available(), bool)


@pytest.mark.gpu
def test_cupy_namespace(xp):
    if xp is np:
        pytest.skip("CuPy-only test")
    x = xp.ones(3, dtype=xp.float32)
    assert backend.get_namespace(x) is xp
    assert isinstance(backend.to_numpy(x), np.ndarray)
    with pytest.raises(TypeError, match="different backends"):
        backend.get_namespace(x, np.ones(3))
    y = backend.from_dlpack(x)
    assert backend.is_cupy_array(y)
    backend.synchronize(x)
