"""Host-sync budgets of curvlab's hot loops on CuPy, counted by the strict CuPy stand-in.

Run in the strict pass (``pytest -m gpu --strict-cupy``; skipped elsewhere: a real GPU has no
counter). Each budget is the one the routine's docstring states; fixed set-up costs are
separated from per-step costs by running each routine at two lengths. A failure prints every
sync with the curvlab ``file:line`` (and its callers) that caused it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from curvlab.linalg.lanczos import lanczos
from curvlab.linalg.lobpcg import lobpcg
from curvlab.linalg.power import power_iteration
from curvlab.linalg.results import ConvergenceWarning
from curvlab.linalg.testing import prescribed_spectrum_operator
from curvlab.linalg.trace import hutchinson
from curvlab.methods.arturo import ArTuRO
from curvlab.methods.exact_newton import ExactNewton
from curvlab.models.mlp import MLP, fisher_operator, ggn_operator, hessian_operator
from curvlab.trust_region.l2 import solve_l2_subproblem
from tests import _strict_cupy
from tests._strict_cupy import count_syncs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _strict_cupy.installed(), reason="host syncs are counted by the strict CuPy stand-in only "
                       "(pytest -m gpu --strict-cupy)"),
]


@pytest.fixture
def cp():
    import cupy

    return cupy


def _op(cp, n=80):
    return prescribed_spectrum_operator(np.linspace(1.0, 10.0, n), 0, xp=cp).operator


def _count(fn):
    with count_syncs() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fn()
    return log, result


def test_lanczos_one_sync_per_step(cp):
    A = _op(cp)
    short, d10 = _count(lambda: lanczos(A, 10, rng=0))
    long, d20 = _count(lambda: lanczos(A, 20, rng=0))
    assert d10.alpha.size == 10 and d20.alpha.size == 20
    assert long.count - short.count <= 10, long.report()
    assert short.count <= 10 + 1, short.report()  # + the start vector's norm


def test_power_one_sync_per_matvec(cp):
    log, res = _count(lambda: power_iteration(_op(cp), 1, tol=1e-30, maxiter=20, rng=0))
    assert res.n_matvecs >= 20
    assert log.count <= res.n_matvecs, log.report()


def test_hutchinson_one_sync_per_probe_block(cp):
    A = _op(cp, n=300)
    small, _ = _count(lambda: hutchinson(A, 64, block_size=16, rng=0))
    large, _ = _count(lambda: hutchinson(A, 128, block_size=16, rng=0))
    assert small.count <= 64 // 16, small.report()
    assert large.count <= 128 // 16, large.report()


def test_lobpcg_at_most_two_syncs_per_iteration(cp):
    A = _op(cp, n=120)
    short, r10 = _count(lambda: lobpcg(A, 2, tol=1e-30, maxiter=10, rng=0))
    long, r20 = _count(lambda: lobpcg(A, 2, tol=1e-30, maxiter=20, rng=0))
    its = r20.n_iterations - r10.n_iterations
    assert its == 10, (r10.n_iterations, r20.n_iterations)
    assert long.count - short.count <= 2 * its, f"{long.count - short.count} syncs in {its} iterations\n{long.report()}"


def _mlp(cp):
    rng = np.random.default_rng(0)
    model = MLP([4, 6, 3], xp=cp)
    p = cp.asarray(model.init_params(rng))
    X = cp.asarray(rng.standard_normal((16, 4)))
    y = cp.asarray(rng.integers(0, 3, 16))
    return model, p, X, y, rng


@pytest.mark.parametrize("make", [hessian_operator, ggn_operator, fisher_operator])
def test_mlp_products_sync_only_when_bound(cp, make):
    model, p, X, y, rng = _mlp(cp)
    bind, op = _count(lambda: make(model, p, X, y))
    assert bind.count <= 1, bind.report()  # the labels' range, read once
    v = cp.asarray(rng.standard_normal(model.n_params))
    V = cp.asarray(rng.standard_normal((model.n_params, 3)))
    products, _ = _count(lambda: [op.matvec(v) for _ in range(5)] + [op.matmat(V)])
    assert products.count == 0, products.report()
    log, dec = _count(lambda: lanczos(op, 8, rng=0))
    assert log.count <= dec.alpha.size + 1, log.report()  # 1 per Lanczos step on an MLP operator too


def _in(events, path):
    return [e for e in events if any(path in f for f in (e.site, *e.callers))]


@pytest.mark.parametrize("mode", ["average", "exact_block"])
def test_exact_newton_at_most_three_syncs_per_step(cp, mode):
    """3 per step (default ``batch_mode="average"``, diagnostics off); ``"exact_block"`` adds the
    Kronecker block solve's own syncs (counted apart: curvlab/linalg/kronecker.py has no budget yet)."""
    rng = np.random.default_rng(11)
    Ws = [cp.asarray(rng.standard_normal((3, 5))), cp.asarray(rng.standard_normal((4, 4)))]
    X = cp.asarray(rng.standard_normal((6, 4)))
    y = cp.asarray(rng.integers(0, 4, 6))
    opt = ExactNewton(lr=0.5, lam=0.5, batch_mode=mode)  # diagnostics off by default
    state = opt.init(Ws)
    for step in range(2):
        log, (upd, state) = _count(lambda: opt.update([cp.zeros_like(W) for W in Ws], state, Ws, X=X, y=y))
        kron = _in(log.events, "curvlab/linalg/kronecker.py")
        assert log.count - len(kron) <= 3, f"step {step}\n{log.report()}"
        if mode == "average":
            assert not kron, log.report()


@pytest.mark.parametrize("mode", ["exact", "reference"])
def test_arturo_at_most_four_plus_one_per_dual_evaluation(cp, mode):
    rng = np.random.default_rng(3)
    opt = ArTuRO(kl_bound=0.01, reg_weight=0.1, mode=mode)
    w = cp.asarray(rng.standard_normal(50))
    state = opt.init(w)
    for step in range(4):
        g = cp.asarray(rng.standard_normal(50))
        log, (upd, state, info) = _count(lambda: opt.update_with_info(g, state, w))
        # reference mode also evaluates the achieved KL once (track_kl): one more dual evaluation
        budget = 4 + info.n_evals + (1 if mode == "reference" else 0)
        assert log.count <= budget, f"step {step}: n_evals {info.n_evals}\n{log.report()}"
        w = w + upd


@pytest.mark.parametrize("delta", [0.01, 0.1, 1.0])
def test_l2_secular_equation_one_read_per_evaluation(cp, delta):
    rng = np.random.default_rng(5)
    g = cp.asarray(rng.standard_normal(40))
    d = cp.asarray(np.linspace(-1.0, 3.0, 40))
    log, res = _count(lambda: solve_l2_subproblem(g, delta, diag=d))
    assert res.converged
    assert log.count <= res.n_evals + 2, f"n_evals {res.n_evals}\n{log.report()}"
    Q = cp.asarray(np.linalg.qr(rng.standard_normal((40, 40)))[0])
    log, res = _count(lambda: solve_l2_subproblem(g, delta, eigvals=d, eigvecs=Q))
    assert log.count <= res.n_evals + 2, f"n_evals {res.n_evals}\n{log.report()}"


@pytest.mark.parametrize("impl", ["auto", "reference", "numpy"])
def test_each_kernel_call_reads_once(cp, impl):
    """Every fused-kernel call returns its numbers in one transfer, whatever the implementation."""
    from curvlab import kernels

    rng = np.random.default_rng(0)
    w, a, h = (cp.asarray(rng.standard_normal(100)) for _ in range(3))
    p = cp.abs(cp.asarray(rng.standard_normal(100))) + 0.1
    state = [cp.asarray(rng.standard_normal(100)) for _ in range(5)]
    calls = {
        "kl_dual": lambda: kernels.kl_dual(0.5, w, a, h, p, beta_p0=0.01, impl=impl),
        "kl_pole": lambda: kernels.kl_pole(h, p, beta_p0=0.01, impl=impl),
        "count_nonfinite": lambda: kernels.count_nonfinite(w, impl=impl),
        "rls_filter_update": lambda: kernels.rls_filter_update(a, w, *state, q=1e-3, r=1.0, impl=impl),
        "arturo_apply": lambda: kernels.arturo_apply(0.5, w, a, h, p.copy(), cp.empty_like(w), beta_p0=0.01, nu=1.0,
                                                     beta=0.9, impl=impl),
    }
    for name, call in calls.items():
        log, _ = _count(call)
        assert log.count == 1, f"{name}\n{log.report()}"


def test_dsgd_weight_fingerprints_one_read_for_all_layers(cp):
    """Rule "bound": the weight fingerprints of all layers come back in one host read (cache hit)."""
    from curvlab.methods.dsgd import DSGD

    rng = np.random.default_rng(3)
    W = [cp.asarray(rng.standard_normal((4, 6))) for _ in range(5)]
    opt = DSGD()
    state = opt.init(W)
    first = opt._op_norms(W, state)
    log, again = _count(lambda: opt._op_norms(W, state))
    assert log.count == 1, log.report()
    np.testing.assert_array_equal(again, first)
