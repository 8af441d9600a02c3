"""Curvature estimators from stochastic gradients (arTuRO, arXiv 2310.20574).

Examples
--------
>>> from curvlab.estimators import DiagonalRLS
>>> DiagonalRLS(q=1e-3, r=1.0, P0=5e-5).variant
'kalman'
"""

from .rls import DiagonalRLS, RLSInfo, RLSState

__all__ = ["DiagonalRLS", "RLSState", "RLSInfo"]
