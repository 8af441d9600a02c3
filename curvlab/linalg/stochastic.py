"""Stochastic operators: a fresh mini-batch for every operator application.

:class:`StochasticOperator` wraps a factory ``make_operator(batch)`` (e.g. the
mini-batch Hessian ``hessian_operator(model, params, Xb, yb)``) and a
``sampler(rng) -> batch``; every ``matvec``/``matmat`` call draws a new batch
with the operator's own explicit ``rng``, so ``E[A_t v] = Ā v`` where ``Ā`` is
the expected (e.g. full-data) operator. A ``matmat`` applies one batch to all
its columns.

Solver behaviour (documented policy): the deterministic solvers
(:func:`eigsh`, :func:`lanczos`, :func:`lobpcg`, :func:`power_iteration`,
SLQ, trace/diagonal estimators) refuse a stochastic operator with a
``ValueError``, because a Krylov space built from different matrices has no
meaning; freeze one batch with :meth:`StochasticOperator.fixed`, or use
:func:`curvlab.linalg.stochastic_power`, which is designed for it.

Examples
--------
>>> import numpy as np
>>> from curvlab.linalg.operators import DiagonalOperator
>>> data = np.arange(1.0, 11.0)
>>> A = StochasticOperator(lambda b: DiagonalOperator(np.full(3, b.mean())),
...                        lambda rng: rng.choice(data, 4), rng=0, shape=(3, 3))
>>> (A @ np.ones(3)).shape, A.n_batches
((3,), 1)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import backend
from .operators import LinearOperator, aslinearoperator

__all__ = ["StochasticOperator", "minibatch_sampler"]


def minibatch_sampler(X: Any, y: Any, batch_size: int, *, replace: bool = False) -> Callable[[Any], tuple[Any, Any]]:
    """A sampler ``rng -> (X[idx], y[idx])`` of ``batch_size`` rows (without replacement within a batch).

    Batches are i.i.d. across calls, so the expected mini-batch loss equals
    the full-data loss (and likewise for its Hessian).
    """
    n = int(X.shape[0])
    if y is not None and int(y.shape[0]) != n:
        raise ValueError(f"X and y must have the same number of rows, got {n} and {y.shape[0]}")
    if not 1 <= int(batch_size) <= n or (replace is False and batch_size > n):
        raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
    xp = backend.get_namespace(X)

    def sample(rng: Any) -> tuple[Any, Any]:
        idx = backend.default_rng(rng).choice(n, size=int(batch_size), replace=replace)
        idx_d = xp.asarray(idx) if xp is not np else idx
        return X[idx_d], (None if y is None else y[idx_d])

    return sample


class StochasticOperator(LinearOperator):
    """``v -> A_{batch} v`` with a new batch ``sampler(rng)`` per call.

    Parameters
    ----------
    make_operator : callable ``batch -> operator`` (anything :func:`aslinearoperator` wraps)
    sampler : callable ``rng -> batch`` (host NumPy ``Generator``)
    rng : seed or ``numpy.random.Generator`` (the only source of randomness)
    shape, dtype, xp : optional; when ``shape`` is omitted one batch is drawn
        at construction to read them.
    symmetric, psd : declared tags of every batch operator (default symmetric).

    Attributes
    ----------
    stochastic = True; n_batches : batches drawn so far.
    """

    stochastic = True

    def __init__(
        self,
        make_operator: Callable[[Any], Any],
        sampler: Callable[[Any], Any],
        rng: Any = None,
        *,
        shape: tuple[int, int] | None = None,
        dtype: Any = None,
        xp: Any = None,
        symmetric: bool = True,
        psd: bool = False,
    ) -> None:
        if not callable(make_operator) or not callable(sampler):
            raise TypeError("make_operator and sampler must be callables")
        self.rng = backend.default_rng(rng)
        self._make, self._sampler = make_operator, sampler
        self.n_batches = 0
        if shape is None:
            probe = self._batch_operator()
            shape, dtype, xp = probe.shape, probe.dtype if dtype is None else dtype, probe.xp
        super().__init__(shape, np.float64 if dtype is None else dtype, symmetric=symmetric, psd=psd, xp=xp)

    def _batch_operator(self, rng: Any = None) -> LinearOperator:
        batch = self._sampler(self.rng if rng is None else rng)
        self.n_batches += 1
        op = self._make(batch)
        return aslinearoperator(op, symmetric=True) if not isinstance(op, LinearOperator) else op

    def fixed(self, rng: Any = None) -> LinearOperator:
        """The deterministic operator of one batch (drawn from ``rng``, default the operator's own)."""
        return self._batch_operator(None if rng is None else backend.default_rng(rng))

    def _matvec(self, v: Any) -> Any:
        return self._batch_operator().matvec(v).astype(self.dtype, copy=False)

    def _matmat(self, V: Any) -> Any:
        return self._batch_operator().matmat(V).astype(self.dtype, copy=False)
