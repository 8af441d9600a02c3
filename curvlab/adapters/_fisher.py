"""Monte-Carlo Fisher setup shared by the torch and JAX adapters.

The framework-independent part of ``fisher("mc", ...)``: argument validation and
the NumPy draws of the sampled labels/targets with the explicit generator. The
adapters turn the draws into their framework's output-gradient residuals.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import backend


def mc_fisher_draws(kind: str, loss_name: str | None, rng: Any, mc_samples: Any,
                    shape: Sequence[int], probs: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    """Validate a non-empirical Fisher request and draw ``M = mc_samples`` label sets.

    ``shape`` is the model output's shape ``(..., C)``. For ``cross_entropy``,
    ``probs`` (float64 NumPy, ``shape``) are the predicted class probabilities and
    the result is the sampled class indices ``(M, *shape[:-1])`` (categorical by
    inverse CDF); for ``mse`` it is standard-normal noise ``(M, *shape)`` (the
    sampled target minus the mean). Returns ``(M, draws)``.
    """
    if kind != "mc":
        raise ValueError(f"kind must be 'empirical', 'true' or 'mc', got {kind!r}")
    if loss_name is None:
        raise ValueError("the Monte-Carlo Fisher needs a built-in loss ('cross_entropy' or 'mse') to sample from")
    if rng is None:
        raise ValueError("the Monte-Carlo Fisher needs an explicit rng (numpy Generator or seed)")
    M = int(mc_samples)
    if M < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    gen = backend.default_rng(rng)
    shape = tuple(shape)
    if loss_name == "cross_entropy":
        if probs is None:
            raise ValueError("the cross-entropy Monte-Carlo Fisher needs probs (the predicted class probabilities)")
        cdf = np.cumsum(probs, axis=-1)
        u = gen.random((M,) + shape[:-1] + (1,))
        return M, np.minimum((cdf < u).sum(-1), shape[-1] - 1)
    return M, gen.standard_normal((M,) + shape)
