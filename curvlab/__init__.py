"""curvlab: second-order numerical linear algebra for deep-learning optimization.

Arrays in, arrays out: every routine takes NumPy (CPU) or CuPy (GPU) arrays and
returns arrays of the same kind. See ``README.md`` and ``../shared/DESIGN.md``.
"""

from . import backend
from .linalg.operators import (
    CallableOperator,
    DenseOperator,
    DiagonalOperator,
    LinearOperator,
    LowRankPlusDiagonal,
    aslinearoperator,
    symmetry_defect,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    "backend",
    # operators
    "LinearOperator",
    "CallableOperator",
    "DenseOperator",
    "DiagonalOperator",
    "LowRankPlusDiagonal",
    "aslinearoperator",
    "symmetry_defect",
]
