"""Shared fixtures: backends (NumPy always, CuPy when a GPU is present), dtypes, rng."""

from __future__ import annotations

import numpy as np
import pytest

from curvlab import backend

GPU = backend.gpu_available()

#: backends to parametrise over; CuPy is skipped cleanly without a GPU
BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("cupy", id="cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(not GPU, reason="CuPy with an NVIDIA GPU not available")]),
]

#: relative tolerances for exactness checks, per dtype
RTOL = {np.float64: 1e-8, np.float32: 2e-3}


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array namespace under test: numpy, or cupy on a GPU machine."""
    if request.param == "numpy":
        return np
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
