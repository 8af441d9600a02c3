"""Shared helpers for the linalg tests: prescribed-spectrum cases and exact answers."""

from __future__ import annotations

import numpy as np

from curvlab import backend
from curvlab.linalg.testing import named_spectrum, prescribed_spectrum_operator

#: (spectrum name, which) pairs every eigen-solver must solve
SPECTRUM_CASES = [
    ("decaying", "LA"),
    ("clustered", "LA"),
    ("repeated", "LA"),
    ("indefinite", "LA"),
    ("indefinite", "SA"),
    ("large_gap", "LA"),
    ("tiny_gap", "LA"),
]


def make_case(name: str, n: int = 200, seed: int = 0, dtype=np.float64, xp=np):
    return prescribed_spectrum_operator(named_spectrum(name, n), rng=seed, dtype=dtype, xp=xp)


def exact_wanted(lam: np.ndarray, which: str, k: int) -> np.ndarray:
    lam = np.sort(lam)
    if which == "LA":
        return lam[::-1][:k]
    if which == "SA":
        return lam[:k]
    if which == "BE":
        lo = k // 2
        return np.sort(np.concatenate([lam[:lo], lam[len(lam) - (k - lo):]]))
    raise ValueError(which)


def true_residuals(op, vals, vecs) -> np.ndarray:
    """‖A v - λ v‖ per column, computed on the host from a fresh matmat."""
    AV = backend.to_numpy(op.matmat(vecs)).astype(np.float64)
    V = backend.to_numpy(vecs).astype(np.float64)
    return np.linalg.norm(AV - V * np.asarray(vals)[None, :], axis=0)


def nan_operator(n: int, after: int, xp=np):
    """A symmetric operator that returns NaN from its ``after``-th product on."""
    from curvlab.linalg.operators import CallableOperator

    d = xp.linspace(1.0, 2.0, n)
    calls = {"k": 0}

    def mv(v):
        calls["k"] += 1
        out = d * v
        if calls["k"] > after:
            out = out * np.nan
        return out

    def mm(V):
        calls["k"] += 1
        out = d[:, None] * V
        if calls["k"] > after:
            out = out * np.nan
        return out

    return CallableOperator(mv, (n, n), np.float64, matmat=mm, symmetric=True, xp=xp)
