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


# -- issue 11, defect 10: one validation path that names the argument --------------------------------
@pytest.mark.parametrize(
    "bad, exc, msg",
    [
        (1.5, TypeError, r"rng must be None, an int seed >= 0 or a numpy.random.Generator, got builtins.float"),
        ("0", TypeError, "rng must be"),
        (True, TypeError, "rng must be"),
        (-3, ValueError, "negative seed -3"),
        (np.random.RandomState(0), TypeError, "legacy RandomState: use numpy.random.default_rng"),
    ],
)
def test_check_rng_and_default_rng_name_rng(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        backend.check_rng(bad)
    with pytest.raises(exc, match=msg):
        backend.default_rng(bad)


def test_check_rng_accepts_seeds_and_generators():
    for ok in (None, 0, np.int64(3), np.random.default_rng(0), np.random.SeedSequence(1), np.random.PCG64(2)):
        backend.check_rng(ok)
        assert isinstance(backend.default_rng(ok), np.random.Generator)


def test_torch_and_jax_inputs_are_refused_with_the_conversion():
    torch = pytest.importorskip("torch")
    t = torch.ones(3)
    with pytest.raises(TypeError, match=r"argument 1 is a torch.Tensor: convert it with t.detach\(\).cpu\(\).numpy\(\)"):
        backend.get_namespace(np.ones(2), t)
    with pytest.raises(TypeError, match="x must be a NumPy or CuPy array, got a torch.Tensor"):
        backend.as_array(t, "x")
    with pytest.raises(TypeError, match="rng must be .*torch.Generator"):
        backend.check_rng(torch.Generator())
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(TypeError, match="v must be a NumPy or CuPy array, got a JAX array"):
        backend.check_float_array(jnp.ones(2), "v")


@pytest.mark.parametrize(
    "x, msg",
    [
        (np.ones(2, dtype=np.float16), "float16 is not a compute dtype"),
        (np.ones(2, dtype=np.complex64), "complex"),
        (np.array([1.0, None]), "got object"),
        (np.array(["a"]), "not numeric"),
        ("abc", "x must be a NumPy or CuPy array, got str"),
        (None, "got NoneType"),
    ],
)
def test_as_array_refuses_odd_dtypes_naming_x(x, msg):
    with pytest.raises(TypeError, match=msg):
        backend.as_array(x, "x")


def test_as_array_converts_and_checks():
    assert backend.as_array([[1, 2]], "x", ndim=2).dtype == np.float64
    with pytest.raises(ValueError, match=r"x must have ndim 1, got shape \(1, 2\)"):
        backend.as_array([[1, 2]], "x", ndim=1)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        backend.as_array([1.0, np.inf], "x", finite=True)
    with pytest.raises(ValueError, match="x contains NaN or Inf .1 of 2 entries"):
        backend.check_finite_data(np.array([np.nan, 1.0]), "x")


def test_check_positive():
    assert backend.check_positive("lr", np.float32(0.5)) == 0.5
    assert backend.check_positive("lam", 0, allow_zero=True) == 0.0
    assert backend.check_positive("maxiter", 4.0, integer=True) == 4
    for bad, exc in [(0.0, ValueError), (-1, ValueError), (np.nan, ValueError), (np.inf, ValueError),
                     (True, TypeError), ("1", TypeError), (np.ones(2), TypeError), (1j, TypeError)]:
        with pytest.raises(exc, match="lr must be a finite number > 0"):
            backend.check_positive("lr", bad)
    with pytest.raises(TypeError, match="maxiter must be an int > 0, got 2.5"):
        backend.check_positive("maxiter", 2.5, integer=True)
