"""Linear algebra: operators, eigen-solvers, spectral density, trace and diagonal estimators."""
