"""Fused kernels: Numba (CPU), CuPy (GPU) and plain-array reference twins."""
