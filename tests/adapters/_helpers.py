"""Framework-free helpers shared by the adapter tests (torch and JAX)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def quartic_problem(rng: np.random.Generator, P: int) -> tuple[Callable[..., Any], Callable[..., float]]:
    """A float64 quadratic with a little quartic term: f(θ) = ½θᵀAθ − bᵀθ + ¼ Σ θ⁴/10.

    Returns ``(grad(θ), curv(θ, d) = dᵀ∇²f(θ) d)``.
    """
    Q = rng.standard_normal((P, P))
    A = Q @ Q.T / P + np.eye(P)
    b = rng.standard_normal(P)
    grad = lambda th: A @ th - b + 0.1 * th**3  # noqa: E731
    curv = lambda th, d: float(d @ A @ d + 0.3 * np.sum(th**2 * d**2))  # noqa: E731
    return grad, curv


def layerwise_method(method: str) -> tuple[Callable[[], Any], Callable[..., dict[str, Any]]]:
    """``(make, extras(model, X, y))`` for a method whose extras describe the reference MLP
    (``"exact_newton"`` or ``"dsgd"``)."""
    from curvlab.methods.dsgd import DSGD
    from curvlab.methods.exact_newton import ExactNewton

    if method == "exact_newton":
        return (lambda: ExactNewton(lr=0.5)), (lambda model, X, y: {"X": X, "y": y, "model": model})
    return (lambda: DSGD()), (lambda model, X, y: {"X": X})
