"""curvlab: second-order numerical linear algebra for deep-learning optimization.

Arrays in, arrays out: every routine takes NumPy (CPU) or CuPy (GPU) arrays and
returns arrays of the same kind. The public API, by topic:

- operators: :class:`LinearOperator` and its concrete kinds, :func:`aslinearoperator`;
- reference model: :class:`MLP` and its Hessian / GGN / Fisher operators;
- curvature sources: the :class:`CurvatureSource` protocol that models and adapters
  implement, :class:`DenseLayer` (one layer's factors), :class:`LayerStructureUnavailable`,
  and :class:`Layout` (the parameter layout: shapes, offsets, flatten/unflatten);
- eigen-solvers and estimators: :func:`eigsh`, :func:`lobpcg`, :func:`power_iteration`,
  :func:`slq`, :func:`hutchinson`, :func:`hutchpp`, :func:`xtrace`, :func:`xdiag`, ...;
- results and flags: :class:`EigResult`, :class:`TraceEstimate`, ...; an unconverged result
  issues :class:`ConvergenceWarning` (or raises :class:`ConvergenceError` with ``strict=True``);
- curvature estimators and trust regions: :class:`DiagonalRLS`, :func:`solve_kl`,
  :func:`solve_l2_subproblem`;
- methods (optimizer transforms on pytrees of arrays, :mod:`curvlab.tree`):
  :class:`ExactNewton`, :class:`ArTuRO`, :class:`DSGD`, :class:`CurvatureLR`, the baselines
  :class:`SGD`, :class:`Momentum`, :class:`Adam`, :class:`AdamW`, and the building blocks
  :func:`chain`, :func:`scale_by_lr`, :func:`add_decayed_weights`, :func:`scale_by_adam`,
  :func:`trace`;
- :mod:`curvlab.adapters` (PyTorch, JAX; imported on first use), :mod:`curvlab.data`,
  :mod:`curvlab.backend`, :mod:`curvlab.kernels`, :mod:`curvlab.tree`.

Examples
--------
>>> import numpy as np, curvlab
>>> model = curvlab.MLP([4, 3, 2], activation="tanh", loss="cross_entropy", dtype=np.float64)
>>> rng = np.random.default_rng(0)
>>> params = model.init_params(rng)
>>> X, y = rng.standard_normal((8, 4)), rng.integers(0, 2, 8)
>>> H = curvlab.hessian_operator(model, params, X, y)
>>> res = curvlab.eigsh(H, k=1, which="LA", rng=rng)
>>> bool(res.converged.all()), res.eigenvalues.shape
(True, (1,))
"""

from . import adapters, backend, data, kernels, tree
from .estimators import DiagonalRLS, RLSInfo, RLSState
from .linalg import (
    CallableOperator,
    ConvergenceError,
    ConvergenceWarning,
    DenseOperator,
    DiagonalEstimate,
    DiagonalOperator,
    EigResult,
    KroneckerLayerBlock,
    KroneckerSumBlock,
    LinearOperator,
    LowRankPlusDiagonal,
    SpectralDensity,
    Status,
    StochasticEigResult,
    StochasticOperator,
    TraceEstimate,
    aslinearoperator,
    dual_norm,
    duality_map,
    eigsh,
    hutchinson,
    hutchinson_diagonal,
    hutchpp,
    lanczos,
    layer_norm,
    lobpcg,
    power_iteration,
    prescribed_spectrum_operator,
    slq,
    slq_logdet,
    slq_trace_inverse,
    SolveResult,
    inverse,
    solve,
    stochastic_power,
    symmetry_defect,
    xdiag,
    xtrace,
)
from .methods import (
    DSGD,
    SGD,
    Adam,
    AdamW,
    ArTuRO,
    CurvatureLR,
    ExactNewton,
    Momentum,
    Transform,
    add_decayed_weights,
    apply_updates,
    chain,
    scale_by_adam,
    scale_by_lr,
    trace,
)
from .layout import Layout
from .models import MLP, MLPCurvature, fisher_operator, ggn_operator, hessian_operator
from .sources import CurvatureSource, DenseLayer, LayerStructureUnavailable
from .trust_region import solve_kl, solve_l2_subproblem

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    # submodules
    "adapters", "backend", "data", "kernels", "tree",
    # operators
    "LinearOperator", "CallableOperator", "DenseOperator", "DiagonalOperator", "LowRankPlusDiagonal",
    "KroneckerLayerBlock", "KroneckerSumBlock", "StochasticOperator", "aslinearoperator", "symmetry_defect",
    # reference model
    "MLP", "MLPCurvature", "hessian_operator", "ggn_operator", "fisher_operator",
    # curvature sources and parameter layout
    "CurvatureSource", "DenseLayer", "LayerStructureUnavailable", "Layout",
    # eigen-solvers, spectral density, trace and diagonal
    "lanczos", "eigsh", "lobpcg", "power_iteration", "stochastic_power",
    "slq", "slq_logdet", "slq_trace_inverse",
    "hutchinson", "hutchpp", "xtrace", "hutchinson_diagonal", "xdiag",
    "Status", "EigResult", "SpectralDensity", "TraceEstimate", "DiagonalEstimate", "StochasticEigResult",
    "ConvergenceWarning", "ConvergenceError",
    "solve", "inverse", "SolveResult",
    "prescribed_spectrum_operator",
    # layer norms and duality maps
    "layer_norm", "dual_norm", "duality_map",
    # curvature estimators and trust regions
    "DiagonalRLS", "RLSState", "RLSInfo", "solve_kl", "solve_l2_subproblem",
    # methods
    "Transform", "apply_updates", "chain", "scale_by_lr", "add_decayed_weights", "scale_by_adam", "trace",
    "SGD", "Momentum", "Adam", "AdamW",
    "ExactNewton", "ArTuRO", "DSGD", "CurvatureLR",
]
