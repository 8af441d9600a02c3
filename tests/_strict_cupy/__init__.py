"""A strict CuPy stand-in for curvlab's tests: the CuPy code path, run on the CPU.

Installed as the module ``cupy`` (``pytest --strict-cupy`` or ``CURVLAB_STRICT_CUPY=1``; see
``tests/conftest.py`` and :func:`install`), it lets every ``xp=cupy`` test run without a GPU
and refuses what CuPy refuses, so that a test passing through it is meaningful:

- :class:`ndarray` wraps a NumPy buffer. ``__array__`` raises ``TypeError`` exactly as CuPy
  does, so ``np.asarray(x)``/``np.array(x)``/host-only code fail loudly.
- ``__array_function__`` serves a NumPy function only when CuPy has it (an explicit allow-list
  taken from ``cupy/__init__.py`` and ``cupy/linalg``); a NumPy-only function raises
  ``TypeError`` ("no implementation found"), a missing ``cupy.<name>`` ``AttributeError``.
- ufuncs (``__array_ufunc__`` and operators) follow CuPy's rules: device arrays, Python and
  NumPy scalars; a ``numpy.ndarray`` operand (even 0-d) raises ``TypeError``.
- reductions and scalar indexing return 0-d device arrays, never Python or NumPy scalars.
- the host is reached only by ``.get()``, ``cupy.asnumpy``, ``.item()``, ``.tolist()``,
  ``float()``/``int()``/``bool()``/``complex()``, ``repr``/``str``/``format`` and the
  ``cupy.cuda`` synchronisations; each is recorded as one **host sync** with the curvlab
  ``file:line`` that caused it (the first stack frame under ``curvlab/``). So are CuPy's
  implicit syncs: boolean-mask indexing/assignment, ``nonzero``, ``unique``, one-argument
  ``where`` and the other functions whose output size depends on the data
  (:data:`_namespace.SYNCING`). Read them with :func:`count_syncs`.
- ``cupy.random.default_rng``/``Generator`` have only CuPy's methods (no ``normal``,
  ``choice``, ``permutation``...), and their own bit stream (Philox), different from NumPy's.
- ``cupy.cuda`` stubs (one device, ``runtime.getDeviceCount() == 1``, ``Device``, ``Stream``,
  ``Event``, memory pools) make :func:`curvlab.backend.gpu_available` true.
- ``ElementwiseKernel``/``ReductionKernel`` run curvlab's fused kernels through their Numba
  twins (:mod:`curvlab.kernels.cpu`), looked up by kernel name (``_kernels.TWINS``), with CuPy's
  argument checks; ``cupy.fuse`` runs the function unfused.
- out-of-bounds integer-array indices wrap around, as CuPy's do (NumPy raises ``IndexError``):
  code relying on that error for validation fails here as it would on a GPU.
- ``cupy.empty``/``empty_like``/``ndarray(shape)`` are filled with NaN (device memory is not
  zeroed), so a read of uninitialised memory shows.

Known infidelities
------------------
- No CUDA compilation: kernel source (``operation``, ``preamble``) is never compiled or
  checked; the Numba twin is trusted to compute what the CUDA code computes.
- NumPy's reduction order and NumPy's LAPACK (not cuBLAS/cuSOLVER): results agree with a GPU
  to rounding, not bit for bit; float32 sums may differ more.
- cuSOLVER's failure mode is imitated, not reproduced: where NumPy raises ``LinAlgError``,
  ``cupy.linalg`` returns NaN of the right shapes (a GPU returns NaN or garbage).
- Keyword arguments are passed to NumPy unchecked (CuPy lacks some, e.g. ``where=``).
- All work is synchronous: a sync is counted where CuPy would block, but the time it would
  wait is not modelled; host-to-device copies are counted apart (``SyncLog.h2d``), not as syncs.
- No DLPack export (``__dlpack__`` raises): torch/JAX interop needs a real GPU, and those
  tests are skipped in the strict pass. ``cupyx`` is an empty namespace.
"""

from __future__ import annotations

import sys
from typing import Any

from . import _namespace
from ._core import SyncEvent, SyncLog, TOTAL as sync_log, count_syncs, ndarray  # noqa: F401

globals().update(_namespace.build())

from . import cuda, fft, linalg, random  # noqa: E402
from ._kernels import ElementwiseKernel, RawKernel, RawModule, ReductionKernel  # noqa: E402,F401
from .cupyx import cupyx as _cupyx  # noqa: E402

#: marks this module as the stand-in (real CuPy has no such attribute)
STRICT_STANDIN = True
__version__ = "13.0.0+strict-standin"


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module 'cupy' (strict CuPy stand-in) has no attribute {name!r}: CuPy does not "
                         "provide it, or tests/_strict_cupy lacks it (add it only if CuPy has it)")


def install() -> None:
    """Make ``import cupy`` (and ``cupy.cuda``, ``cupy.linalg``, ``cupy.fft``, ``cupy.random``,
    ``cupyx``) give the stand-in, and make :mod:`curvlab.backend` detect it afresh."""
    me = sys.modules[__spec__.name]
    me.__name__ = "cupy"  # curvlab and CuPy users check xp.__name__
    for mod, name in ((cuda, "cupy.cuda"), (linalg, "cupy.linalg"), (fft, "cupy.fft"), (random, "cupy.random")):
        mod.__name__ = name
    sys.modules["cupy"] = me
    sys.modules["cupy.cuda"] = cuda
    sys.modules["cupy.cuda.runtime"] = cuda.runtime
    sys.modules["cupy.linalg"] = linalg
    sys.modules["cupy.fft"] = fft
    sys.modules["cupy.random"] = random
    sys.modules["cupyx"] = _cupyx
    sys.modules["cupyx.scipy"] = _cupyx.scipy
    # curvlab.kernels.gpu binds `cupy` when imported: drop a copy bound to another cupy
    sys.modules.pop("curvlab.kernels.gpu", None)
    kernels = sys.modules.get("curvlab.kernels")
    if kernels is not None and "gpu" in vars(kernels):
        delattr(kernels, "gpu")
    backend = sys.modules.get("curvlab.backend")
    if backend is not None:
        backend._cupy = None
        backend._cupy_checked = False


def installed() -> bool:
    """True when ``import cupy`` gives this stand-in."""
    return getattr(sys.modules.get("cupy"), "STRICT_STANDIN", False) is True
