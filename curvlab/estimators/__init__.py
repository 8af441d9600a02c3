"""Curvature estimators from stochastic gradients (paper 001, arTuRO).

Example
-------
>>> from curvlab.estimators import DiagonalRLS
>>> DiagonalRLS(q=1e-3, r=1.0, P0=5e-5).variant
'kalman'
"""

from .rls import DiagonalRLS, RLSInfo, RLSState

__all__ = ["DiagonalRLS", "RLSState", "RLSInfo"]
