"""Host-sync budgets of SLQ and the trace/diagonal estimators, counted by the strict CuPy stand-in.

Run in the strict pass (``pytest -m gpu --strict-cupy``). Each budget is the
one the routine's docstring states ("Host syncs: ..."); per-round costs are
separated from fixed costs by running at two lengths.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from curvlab.linalg import ConvergenceWarning, hutchinson, hutchinson_diagonal, hutchpp, slq, slq_logdet, xdiag, xtrace
from curvlab.linalg.testing import prescribed_spectrum_operator
from tests import _strict_cupy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _strict_cupy.installed(), reason="host syncs are counted by the strict CuPy stand-in only "
                       "(pytest -m gpu --strict-cupy)"),
]


@pytest.fixture
def A():
    import cupy

    return prescribed_spectrum_operator(np.linspace(1.0, 10.0, 120), 0, xp=cupy).operator


def _count(fn):
    from tests._strict_cupy import count_syncs

    with count_syncs() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fn()
    return log, result


def test_hutchinson_one_sync_per_block(A):
    for blocks in (2, 5):
        log, r = _count(lambda: hutchinson(A, 8 * blocks, block_size=8, rng=0))
        assert r.n_matvecs == 8 * blocks and log.count <= blocks, log.report()
    log, r = _count(lambda: hutchinson(A, target_rel_error=1e-9, max_matvecs=64, block_size=16, rng=0))
    assert not r.converged and log.count <= 4, log.report()


def test_hutchpp_one_sync_plus_one_per_block(A):
    log, r = _count(lambda: hutchpp(A, target_rel_error=1e-9, max_matvecs=100, rank=10, block_size=16, rng=0))
    assert not r.converged
    n_blocks = -(-(100 - 20) // 16)
    assert log.count <= 1 + n_blocks, log.report()


def test_xtrace_xdiag_two_syncs_per_round(A):
    for f in (xtrace, xdiag):
        log, r = _count(lambda: f(A, 40, rng=0))
        assert log.count <= 2, log.report()
        log, r = _count(lambda: f(A, target_rel_error=1e-9, max_matvecs=119, rng=0))  # rounds s = 8, 16, 32
        assert log.count <= 2 * 3, log.report()


def test_exact_paths_one_sync(A):
    for f in (hutchinson, hutchpp, xtrace, hutchinson_diagonal, xdiag):
        log, r = _count(lambda: f(A, 120, rng=0))
        assert r.exact and log.count <= 1, (f.__name__, log.report())


def test_hutchinson_diagonal_one_sync_per_block(A):
    log, r = _count(lambda: hutchinson_diagonal(A, 48, block_size=16, rng=0))
    assert log.count <= 3, log.report()


def test_slq_syncs_per_step(A):
    """Block (default): m + 1, one per block step and one for the probe norms; block=False: P (m + 3)."""
    for P, m in ((3, 10), (3, 20)):
        log, sd = _count(lambda: slq(A, P, m, rng=0))
        assert log.count <= m + 1, log.report()
        log, r = _count(lambda: slq_logdet(A, P, m, rng=0))
        assert log.count <= m + 1, log.report()
        log, sd = _count(lambda: slq(A, P, m, rng=0, block=False))
        assert log.count <= P * (m + 3), log.report()
