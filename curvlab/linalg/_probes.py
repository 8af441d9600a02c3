"""Random probe blocks for the stochastic estimators (private)."""

from __future__ import annotations

from typing import Any

import numpy as np

PROBES = ("rademacher", "gaussian")


def check_probe(probe: str) -> str:
    p = str(probe).lower()
    if p not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    return p


def draw(g: Any, n: int, m: int, probe: str, dtype: Any) -> Any:
    """``(n, m)`` block of i.i.d. Rademacher (±1) or standard Gaussian entries (``E[z zᵀ] = I``)."""
    if probe == "rademacher":
        return (2.0 * (g.random((n, m)) < 0.5) - 1.0).astype(dtype)
    return g.standard_normal((n, m)).astype(dtype)


def sample_se(x: np.ndarray) -> float:
    """Standard error ``std(x, ddof=1)/√len(x)`` (inf for fewer than 2 samples)."""
    return float(np.std(x, ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("inf")


def t_factor(dof: float) -> float:
    """``t_{dof, 0.975} / z_{0.975}``: the factor that turns ``estimate ± 1.96 se`` into a 95% Student-t interval.

    ``inf`` for ``dof < 1``; about 1.01 at ``dof = 100``.
    """
    if not dof >= 1:
        return float("inf")
    from scipy.stats import t

    return float(t.ppf(0.975, dof) / 1.959963984540054)
