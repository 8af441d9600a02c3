"""Adapters exposing curvlab to PyTorch and JAX."""
