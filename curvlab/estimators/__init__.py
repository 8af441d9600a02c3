"""Curvature estimators from stochastic gradients (paper 001)."""
