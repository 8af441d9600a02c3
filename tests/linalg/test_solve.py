"""Tests of curvlab.linalg.solve: closed forms, CG and MINRES against SciPy and dense solves (float64)."""

import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as sla

from curvlab.linalg import (
    BlockDiagonalOperator,
    CallableOperator,
    ConvergenceError,
    ConvergenceWarning,
    DenseOperator,
    DiagonalOperator,
    KroneckerLayerBlock,
    LowRankPlusDiagonal,
    Status,
    inverse,
    solve,
)


def _spd(rng, n, cond=1e4):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    w = np.geomspace(1.0, cond, n)
    A = (Q * w) @ Q.T
    return 0.5 * (A + A.T)


def _indef(rng, n):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    w = np.concatenate([-np.geomspace(1.0, 100.0, n // 2), np.geomspace(0.5, 50.0, n - n // 2)])
    A = (Q * w) @ Q.T
    return 0.5 * (A + A.T)


@pytest.mark.parametrize("seed", range(5))
def test_cg_matches_dense_and_scipy(seed):
    rng = np.random.default_rng(seed)
    n = 60
    A = _spd(rng, n)
    op = DenseOperator(A, symmetric=True, psd=True)
    b = rng.standard_normal(n)
    res = solve(op, b, method="cg", tol=1e-10)
    x_ref = np.linalg.solve(A, b)
    x_sp, info = sla.cg(A, b, rtol=1e-10, maxiter=10 * n)
    assert info == 0 and res.converged and res.status == Status.CONVERGED
    assert np.linalg.norm(res.x - x_ref) <= 1e-5 * np.linalg.norm(x_ref)  # cond 1e4 * tol 1e-10
    assert np.linalg.norm(res.x - x_sp) <= 1e-5 * np.linalg.norm(x_ref)
    assert res.residual_norm == pytest.approx(np.linalg.norm(b - A @ res.x), rel=1e-6)
    assert res.residual_norm <= 1e-10 * np.linalg.norm(b)
    assert res.n_matvecs == op.n_matvecs and res.iterations <= res.n_matvecs


@pytest.mark.parametrize("seed", range(5))
def test_minres_matches_dense_and_scipy(seed):
    rng = np.random.default_rng(100 + seed)
    n = 50
    A = _indef(rng, n)
    op = DenseOperator(A, symmetric=True)
    b = rng.standard_normal(n)
    res = solve(op, b, tol=1e-10)  # auto: symmetric indefinite, no closed form requested -> but Dense is direct
    assert res.method.startswith("direct")
    res = solve(op, b, method="minres", tol=1e-10)
    x_ref = np.linalg.solve(A, b)
    x_sp, info = sla.minres(A, b, rtol=1e-12, maxiter=10 * n)
    assert res.converged and res.method == "minres"
    assert np.linalg.norm(res.x - x_ref) <= 1e-7 * np.linalg.norm(x_ref)
    assert np.linalg.norm(res.x - x_sp) <= 1e-7 * np.linalg.norm(x_ref)
    assert res.residual_norm <= 1e-10 * np.linalg.norm(b)


def test_auto_dispatch_callable_psd_and_symmetric_and_blocks():
    rng = np.random.default_rng(3)
    n = 40
    A, S = _spd(rng, n, 100.0), _indef(rng, n)
    psd = CallableOperator(lambda v: A @ v, (n, n), matmat=lambda V: A @ V, symmetric=True, psd=True)
    sym = CallableOperator(lambda v: S @ v, (n, n), symmetric=True)
    B = rng.standard_normal((n, 3))
    r1 = solve(psd, B, tol=1e-11)
    assert r1.method == "cg" and r1.all_converged and r1.converged.shape == (3,)
    np.testing.assert_allclose(r1.x, np.linalg.solve(A, B), rtol=1e-7, atol=1e-9)
    # the block equals column-by-column solves
    for j in range(3):
        np.testing.assert_allclose(r1.x[:, j], solve(psd, B[:, j], tol=1e-11).x, rtol=1e-7, atol=1e-9)
    r2 = solve(sym, B, tol=1e-11)
    assert r2.method == "minres" and r2.all_converged
    np.testing.assert_allclose(r2.x, np.linalg.solve(S, B), rtol=1e-6, atol=1e-8)
    nonsym = CallableOperator(lambda v: np.cumsum(v), (n, n))
    with pytest.raises(ValueError, match="neither declared psd nor symmetric"):
        solve(nonsym, B[:, 0])
    with pytest.raises(TypeError, match="closed-form"):
        solve(psd, B[:, 0], method="direct")


def test_closed_forms_are_exact_and_cost_one_residual_product():
    rng = np.random.default_rng(4)
    d = rng.uniform(0.5, 2.0, 6)
    U = rng.standard_normal((6, 2))
    ops = {
        "diag": DiagonalOperator(d),
        "lowrank": LowRankPlusDiagonal(d, U),
        "kron": KroneckerLayerBlock(np.array([[2.0, 0.3], [0.3, 1.0]]), rng.standard_normal(3), lam=0.5),
        "blockdiag": BlockDiagonalOperator([DiagonalOperator(d), LowRankPlusDiagonal(1.0, U)]),
        "scaled": 3.0 * DiagonalOperator(d),
    }
    for name, op in ops.items():
        D = op.to_dense()
        b = rng.standard_normal((op.shape[0], 2))
        op.reset_counter()
        res = solve(op, b)
        assert res.method.startswith("direct"), name
        assert res.status == Status.EXACT and res.all_converged, name
        assert res.n_matvecs == 2 and res.iterations == 0, name  # the residual check only
        np.testing.assert_allclose(res.x, np.linalg.solve(D, b), rtol=1e-10, atol=1e-12, err_msg=name)


def test_preconditioner_cuts_iterations():
    rng = np.random.default_rng(5)
    n = 80
    Q = _spd(rng, n, 10.0)
    s = np.geomspace(1.0, 1e3, n)
    A = s[:, None] * Q * s[None, :]  # badly scaled SPD
    op = DenseOperator(0.5 * (A + A.T), symmetric=True, psd=True)
    b = rng.standard_normal(n)
    plain = solve(op, b, method="cg", tol=1e-8, warn=False)
    jac = solve(op, b, method="cg", tol=1e-8, M=DiagonalOperator(1.0 / np.diag(A)))
    assert jac.converged and jac.iterations < plain.iterations / 3
    np.testing.assert_allclose(jac.x, np.linalg.solve(op.A, b), rtol=1e-4)


def test_unconverged_warns_raises_or_is_silent():
    rng = np.random.default_rng(6)
    op = DenseOperator(_spd(rng, 50), symmetric=True, psd=True)
    b = rng.standard_normal(50)
    with pytest.warns(ConvergenceWarning, match="solve"):
        res = solve(op, b, method="cg", maxiter=3)
    assert not res.converged and res.status == Status.MAX_ITER and res.iterations == 3
    assert "max_iter" in repr(res) and len(repr(res).splitlines()) <= 3
    with pytest.raises(ConvergenceError) as ei:
        solve(op, b, method="minres", maxiter=3, strict=True)
    assert ei.value.result.status == Status.MAX_ITER
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not solve(op, b, method="cg", maxiter=3, warn=False).converged


def test_cg_on_indefinite_breaks_down_flagged():
    rng = np.random.default_rng(7)
    S = _indef(rng, 30)
    op = CallableOperator(lambda v: S @ v, (30, 30), symmetric=True, check=False)
    op.psd = True  # a wrong tag the library could not detect
    with pytest.warns(ConvergenceWarning):
        res = solve(op, rng.standard_normal(30), method="cg")
    assert res.status in (Status.BREAKDOWN, Status.MAX_ITER) and not res.converged


def test_minres_singular_consistent_and_inconsistent():
    rng = np.random.default_rng(8)
    n = 20
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    w = np.concatenate([np.zeros(3), np.linspace(-2.0, 3.0, n - 3) + 0.1])
    S = (Q * w) @ Q.T
    S = 0.5 * (S + S.T)
    op = DenseOperator(S, symmetric=True)
    b = S @ rng.standard_normal(n)  # consistent
    res = solve(op, b, method="minres", tol=1e-9)
    assert res.converged and res.residual_norm <= 1e-9 * np.linalg.norm(b)
    with pytest.warns(ConvergenceWarning):
        bad = solve(op, b + Q[:, 0], method="minres", tol=1e-9)
    assert not bad.converged and bad.status in (Status.BREAKDOWN, Status.STAGNATED, Status.MAX_ITER)


def test_zero_rhs_and_float32_and_x0():
    rng = np.random.default_rng(9)
    A = _spd(rng, 20, 50.0)
    op = DenseOperator(A, symmetric=True, psd=True)
    z = solve(op, np.zeros(20), method="cg")
    assert z.converged and z.iterations == 0 and np.all(z.x == 0)
    op32 = DenseOperator(A.astype(np.float32), symmetric=True, psd=True)
    b = rng.standard_normal(20).astype(np.float32)
    r = solve(op32, b, method="cg", tol=1e-5)
    assert r.x.dtype == np.float32 and r.converged
    np.testing.assert_allclose(r.x, np.linalg.solve(A, b), rtol=1e-3)
    x_ref = np.linalg.solve(A, b.astype(np.float64))
    warm = solve(op, b.astype(np.float64), method="cg", x0=x_ref, tol=1e-8)
    assert warm.iterations <= 1


def test_bad_inputs_named():
    op = DenseOperator(np.eye(3), symmetric=True, psd=True)
    with pytest.raises(ValueError, match="method"):
        solve(op, np.ones(3), method="gmres")
    with pytest.raises(ValueError, match="b has shape"):
        solve(op, np.ones(4))
    with pytest.raises(ValueError, match="tol"):
        solve(op, np.ones(3), tol=-1.0)
    with pytest.raises(ValueError, match="b"):
        solve(op, np.array([1.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="square"):
        solve(DenseOperator(np.ones((2, 3))), np.ones(2))
    with pytest.raises(ValueError, match="damping"):
        inverse(op, damping=float("nan"))
    with pytest.raises(ValueError, match="not declared symmetric"):
        inverse(CallableOperator(lambda v: np.cumsum(v), (3, 3)))  # at construction, not at the first matvec


def test_inverse_operator_damped_matches_dense_and_records_status():
    rng = np.random.default_rng(10)
    n = 30
    S = _indef(rng, n)
    H = CallableOperator(lambda v: S @ v, (n, n), matmat=lambda V: S @ V, symmetric=True, name="H")
    Hinv = inverse(H, damping=150.0, tol=1e-11)  # H + 150 I is SPD, but only tagged symmetric
    assert Hinv.symmetric and Hinv.shape == (n, n) and "H" in repr(Hinv)
    V = rng.standard_normal((n, 2))
    np.testing.assert_allclose(Hinv @ V, np.linalg.solve(S + 150.0 * np.eye(n), V), rtol=1e-8, atol=1e-12)
    assert Hinv.last_status == Status.CONVERGED and Hinv.n_solves == 1 and Hinv.n_inner_matvecs > 0
    assert Hinv.n_matvecs == 2
    # closed form kept under the shift
    D = inverse(DiagonalOperator(np.array([1.0, 3.0])), damping=1.0)
    np.testing.assert_allclose(D @ np.array([2.0, 4.0]), [1.0, 1.0])
    assert D.last_result.status == Status.EXACT and D.psd
    # unconverged inner solves warn and are recorded
    slow = inverse(DenseOperator(_spd(rng, 40), symmetric=True, psd=True), method="cg", maxiter=2)
    with pytest.warns(ConvergenceWarning):
        slow @ np.ones(40)
    assert slow.last_status == Status.MAX_ITER


def test_solve_on_backend(xp):
    """CG, MINRES, closed forms and the inverse operator on NumPy and CuPy (or the strict stand-in)."""
    rng = np.random.default_rng(11)
    n = 24
    A, S = _spd(rng, n, 100.0), _indef(rng, n)
    opA = DenseOperator(xp.asarray(A), symmetric=True, psd=True)
    opS = DenseOperator(xp.asarray(S), symmetric=True)
    B = xp.asarray(rng.standard_normal((n, 2)))
    for op, D, method in ((opA, A, "cg"), (opS, S, "minres"), (opA, A, "auto")):
        res = solve(op, B, method=method, tol=1e-10)
        assert res.all_converged and res.x.shape == (n, 2), (method, res)
        x = np.asarray(xp.asnumpy(res.x) if xp is not np else res.x)
        np.testing.assert_allclose(x, np.linalg.solve(D, np.asarray(xp.asnumpy(B) if xp is not np else B)),
                                   rtol=1e-6, atol=1e-9)
    d = xp.asarray(rng.uniform(1.0, 2.0, n))
    inv = inverse(DiagonalOperator(d), damping=1.0)
    v = xp.asarray(rng.standard_normal(n))
    out = inv @ v
    ref = (xp.asnumpy(v) if xp is not np else v) / ((xp.asnumpy(d) if xp is not np else d) + 1.0)
    np.testing.assert_allclose(xp.asnumpy(out) if xp is not np else out, ref, rtol=1e-12)


@pytest.mark.gpu
def test_cg_and_minres_sync_budgets():
    """The docstring's budget: CG 2 host syncs per iteration, MINRES 2 per iteration, + a few per call."""
    from tests import _strict_cupy

    if not _strict_cupy.installed():
        pytest.skip("host syncs are counted by the strict CuPy stand-in only (pytest -m gpu --strict-cupy)")
    import cupy

    from tests._strict_cupy import count_syncs

    rng = np.random.default_rng(12)
    n = 40
    opA = DenseOperator(cupy.asarray(_spd(rng, n, 1e3)), symmetric=True, psd=True, check=False)
    opS = DenseOperator(cupy.asarray(_indef(rng, n)), symmetric=True, check=False)
    b = cupy.asarray(rng.standard_normal(n))
    for op, method in ((opA, "cg"), (opS, "minres")):
        with count_syncs() as log:
            res = solve(op, b, method=method, tol=1e-10)
        assert res.converged and res.iterations > 5
        assert log.count <= 2 * res.iterations + 8, (method, res.iterations, log.report())


def test_damping_keeps_closed_forms():
    """inverse(A, damping) / solve(A.shift(δ)) of diagonal, Kronecker and block-diagonal operators stays exact."""
    from curvlab.linalg import KroneckerSumBlock

    rng = np.random.default_rng(13)
    M, a = rng.standard_normal((2, 2)), rng.standard_normal(3)
    Ms, Aa = rng.standard_normal((4, 2, 2)), rng.standard_normal((4, 3))
    ops = [
        KroneckerLayerBlock(M + M.T, a, lam=0.0),
        KroneckerSumBlock(Ms + Ms.transpose(0, 2, 1), Aa),
        BlockDiagonalOperator([KroneckerLayerBlock(M + M.T, a, lam=0.1), DiagonalOperator(np.ones(2))]),
        DenseOperator(M + M.T, symmetric=True),
    ]
    for op in ops:
        D = op.to_dense()
        delta = 1.5 * np.linalg.norm(D, 2) + 0.5
        b = rng.standard_normal(op.shape[0])
        res = solve(op.shift(delta), b)
        assert res.status == Status.EXACT and res.iterations == 0, (type(op).__name__, res)
        np.testing.assert_allclose(res.x, np.linalg.solve(D + delta * np.eye(op.shape[0]), b), rtol=1e-10)
        inv = inverse(op, damping=delta)
        np.testing.assert_allclose(inv @ b, res.x, rtol=1e-12)
        assert inv.last_status == Status.EXACT


@pytest.mark.parametrize("method", ["cg", "minres"])
def test_block_columns_finish_independently(method):
    """Columns converging at different iterations (one zero, one easy, one hard) equal their one-column solves."""
    rng = np.random.default_rng(14)
    n = 40
    A = _spd(rng, n, 1e3) if method == "cg" else _indef(rng, n)
    op = CallableOperator(lambda v: A @ v, (n, n), matmat=lambda V: A @ V, symmetric=True, psd=method == "cg")
    w, Q = np.linalg.eigh(A)
    B = np.column_stack([rng.standard_normal(n), np.zeros(n), Q[:, -1] + Q[:, -2]])
    res = solve(op, B, method=method, tol=1e-11)
    assert res.all_converged and np.all(res.x[:, 1] == 0)
    np.testing.assert_allclose(res.x, np.linalg.solve(A, B), rtol=1e-7, atol=1e-10)
    for j in (0, 2):
        one = solve(op, B[:, j], method=method, tol=1e-11)
        np.testing.assert_allclose(res.x[:, j], one.x, rtol=1e-8, atol=1e-12)
    # a block product rounds differently from a vector product: the counts may differ by an iteration
    assert abs(res.iterations - max(solve(op, B[:, j], method=method, tol=1e-11).iterations for j in range(3))) <= 2
