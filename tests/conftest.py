"""Shared fixtures: backends (NumPy always, CuPy on a GPU or the strict stand-in), dtypes, rng.

The ``xp=cupy`` tests (marker ``gpu``) run with real CuPy when it imports and sees a device.
``pytest --strict-cupy`` (or ``CURVLAB_STRICT_CUPY=1``) runs them on the CPU against the strict
CuPy stand-in of :mod:`tests._strict_cupy` instead (CI's second pass: ``pytest -m gpu
--strict-cupy``); tests that need torch/JAX on a real CUDA device are skipped there.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from curvlab import backend

#: set in pytest_configure: "real" (CuPy with a device), "strict" (the stand-in) or None
CUPY_MODE: str | None = None

#: tests that need a CUDA device for torch/JAX, which the stand-in cannot give (skipped in the strict pass)
_NEEDS_CUDA_FRAMEWORK = ("tests/adapters/test_torch_adapter.py", "tests/adapters/test_jax_adapter.py")

#: backends to parametrise over; CuPy is skipped cleanly without a GPU (and without --strict-cupy)
BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("cupy", id="cupy", marks=[pytest.mark.gpu]),
]

#: relative tolerances for exactness checks, per dtype
RTOL = {np.float64: 1e-8, np.float32: 2e-3}


def pytest_addoption(parser):
    parser.addoption("--strict-cupy", action="store_true", default=False,
                     help="run the xp=cupy tests against the strict CuPy stand-in (tests/_strict_cupy) on the CPU")


def strict_requested(config=None) -> bool:
    env = os.environ.get("CURVLAB_STRICT_CUPY", "").strip().lower() not in ("", "0", "false", "no")
    return env or bool(config is not None and config.getoption("--strict-cupy", default=False))


def pytest_configure(config):
    global CUPY_MODE
    if strict_requested(config):
        from tests import _strict_cupy  # noqa: PLC0415

        _strict_cupy.install()
        assert backend.gpu_available(), "the strict CuPy stand-in must pass curvlab's GPU detection"
        CUPY_MODE = "strict"
    elif backend.gpu_available():
        CUPY_MODE = "real"


def pytest_report_header(config):
    return f"curvlab xp=cupy backend: {CUPY_MODE or 'none (skipped)'}"


_cupy_tests_run = 0


def pytest_runtest_logreport(report):
    global _cupy_tests_run
    if report.when == "call" and "cupy" in report.keywords and not report.skipped:
        _cupy_tests_run += 1


def pytest_sessionfinish(session, exitstatus):
    """A strict pass (``-m gpu --strict-cupy``) in which no xp=cupy test ran proves nothing: fail it."""
    markexpr = getattr(session.config.option, "markexpr", "") or ""
    if CUPY_MODE == "strict" and "gpu" in markexpr and exitstatus == 0 and _cupy_tests_run == 0:
        tw = session.config.get_terminal_writer()
        tw.line("")
        tw.line("strict CuPy pass: no xp=cupy test ran (all skipped or deselected)", red=True)
        session.exitstatus = 1


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array namespace under test: numpy, or cupy (a GPU, or the strict stand-in)."""
    if request.param == "numpy":
        return np
    if CUPY_MODE is None:
        pytest.skip("CuPy with an NVIDIA GPU not available (run with --strict-cupy for the CPU stand-in)")
    if CUPY_MODE == "strict":
        path = str(request.node.path).replace(os.sep, "/")
        if any(path.endswith(p) for p in _NEEDS_CUDA_FRAMEWORK):
            pytest.skip("needs torch/JAX on a CUDA device; the strict CuPy stand-in has none")
    import cupy

    return cupy


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)


def rel_err(a, b) -> float:
    """‖a − b‖ / max(‖b‖, tiny), computed in float64 on the host."""
    a = np.asarray(backend.to_numpy(a), dtype=np.float64)
    b = np.asarray(backend.to_numpy(b), dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
