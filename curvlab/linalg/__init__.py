"""Linear algebra: operators, eigen-solvers, spectral density, trace and diagonal estimators.

Operators (:mod:`.operators`, :mod:`.stochastic`, Kronecker layer blocks in
:mod:`.kronecker`), layer norms and duality maps (:mod:`.duality`), eigen-solvers (thick-restart
Lanczos :func:`eigsh`, block :func:`lobpcg`, :func:`power_iteration`,
:func:`stochastic_power`), stochastic Lanczos quadrature (:func:`slq`), trace
(:func:`hutchinson`, :func:`hutchpp`, :func:`xtrace`) and diagonal
(:func:`hutchinson_diagonal`, :func:`xdiag`) estimators, typed results
(:mod:`.results`), and test operators with prescribed spectra (:mod:`.testing`).
"""

from .diagonal import hutchinson_diagonal, xdiag
from .duality import LayerNorm, dual_norm, duality_map, layer_norm, newton_schulz_polar, polar_factor
from .kronecker import ADJUSTMENTS, KroneckerLayerBlock, KroneckerSumBlock, ProjectedSpectralBlock, adjust_spectrum
from .lanczos import LanczosDecomposition, eigsh, lanczos
from .lobpcg import lobpcg
from .operators import (
    CallableOperator,
    DenseOperator,
    DiagonalOperator,
    LinearOperator,
    BlockDiagonalOperator,
    LowRankPlusDiagonal,
    ProductOperator,
    ScaledOperator,
    ScipyWrappedOperator,
    ShiftedOperator,
    SumOperator,
    aslinearoperator,
    symmetry_defect,
)
from .power import power_iteration, stochastic_power
from .results import (
    ConvergenceError,
    ConvergenceWarning,
    DiagonalEstimate,
    EigResult,
    SpectralDensity,
    Status,
    StochasticEigResult,
    TraceEstimate,
)
from .solve import InverseOperator, SolveResult, inverse, solve
from .slq import exact_smoothed_density, slq, slq_logdet, slq_trace_inverse, wasserstein1
from .stochastic import StochasticOperator, minibatch_sampler
from .testing import PrescribedSpectrum, exact_eigvalsh, named_spectrum, prescribed_spectrum_operator
from .trace import hutchinson, hutchpp, xtrace

__all__ = [
    # operators
    "LinearOperator",
    "CallableOperator",
    "DenseOperator",
    "DiagonalOperator",
    "LowRankPlusDiagonal",
    "SumOperator",
    "ScaledOperator",
    "ShiftedOperator",
    "ProductOperator",
    "BlockDiagonalOperator",
    "ScipyWrappedOperator",
    "aslinearoperator",
    "symmetry_defect",
    "StochasticOperator",
    "minibatch_sampler",
    "KroneckerLayerBlock",
    "KroneckerSumBlock",
    "ProjectedSpectralBlock",
    "adjust_spectrum",
    "ADJUSTMENTS",
    # linear solves
    "solve",
    "inverse",
    "SolveResult",
    "InverseOperator",
    # layer norms and duality maps
    "LayerNorm",
    "layer_norm",
    "dual_norm",
    "duality_map",
    "polar_factor",
    "newton_schulz_polar",
    # eigen-solvers
    "lanczos",
    "LanczosDecomposition",
    "eigsh",
    "lobpcg",
    "power_iteration",
    "stochastic_power",
    # spectral density
    "slq",
    "slq_logdet",
    "slq_trace_inverse",
    "exact_smoothed_density",
    "wasserstein1",
    # trace and diagonal
    "hutchinson",
    "hutchpp",
    "xtrace",
    "hutchinson_diagonal",
    "xdiag",
    # results
    "Status",
    "EigResult",
    "SpectralDensity",
    "TraceEstimate",
    "DiagonalEstimate",
    "StochasticEigResult",
    "ConvergenceError",
    "ConvergenceWarning",
    # testing
    "prescribed_spectrum_operator",
    "named_spectrum",
    "PrescribedSpectrum",
    "exact_eigvalsh",
]
