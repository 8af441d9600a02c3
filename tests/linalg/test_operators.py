"""Tests of curvlab.linalg.operators against dense float64 references."""

import numpy as np
import pytest
import scipy.sparse as sps
import scipy.sparse.linalg as sla
from hypothesis import given, settings
from hypothesis import strategies as st

from curvlab.linalg.operators import (
    CallableOperator,
    DenseOperator,
    DiagonalOperator,
    LinearOperator,
    LowRankPlusDiagonal,
    aslinearoperator,
    symmetry_defect,
)
from tests.conftest import rel_err

sizes = st.integers(min_value=1, max_value=12)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
scalars = st.floats(min_value=-5, max_value=5, allow_nan=False)


def _sym(rng, n, xp=np, dtype=np.float64):
    A = rng.standard_normal((n, n))
    return xp.asarray(A + A.T, dtype=dtype)


@settings(max_examples=40, deadline=None)
@given(n=sizes, seed=seeds, a=scalars, b=scalars)
def test_linearity_and_algebra(n, seed, a, b):
    rng = np.random.default_rng(seed)
    A, B = _sym(rng, n), rng.standard_normal((n, n))
    opA, opB = DenseOperator(A, symmetric=True), DenseOperator(B)
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    # linearity: the rounding error scales with the terms, not with the (possibly cancelling) result
    scale = np.abs(A).max() * n * (abs(a) * np.abs(x).max() + abs(b) * np.abs(y).max())
    np.testing.assert_allclose(opA @ (a * x + b * y), a * (A @ x) + b * (A @ y), rtol=1e-12, atol=1e-13 * scale + 1e-300)
    np.testing.assert_allclose((opA + opB) @ x, A @ x + B @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((a * opA) @ x, a * (A @ x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((opA * a) @ x, a * (A @ x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((opA - opB) @ x, A @ x - B @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((-opA) @ x, -(A @ x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(opA.shift(b) @ x, A @ x + b * x, rtol=1e-12, atol=1e-12)
    X = rng.standard_normal((n, 3))
    np.testing.assert_allclose((opA + opB).matmat(X), (A + B) @ X, rtol=1e-12, atol=1e-12)


def test_tags_propagate():
    rng = np.random.default_rng(0)
    P = DenseOperator(np.eye(3), symmetric=True, psd=True)
    N = DenseOperator(rng.standard_normal((3, 3)))
    assert (P + P).psd and (P + P).symmetric
    assert not (P + N).symmetric
    assert (2.0 * P).psd and not (-1.0 * P).psd
    assert P.shift(1.0).psd and not P.shift(-1.0).psd
    assert DiagonalOperator(np.array([1.0, 2.0])).psd
    assert not DiagonalOperator(np.array([1.0, -2.0])).psd


def test_matvec_counter_counts_vectors():
    rng = np.random.default_rng(1)
    op = DenseOperator(_sym(rng, 5), symmetric=True)
    op @ rng.standard_normal(5)
    op.matmat(rng.standard_normal((5, 4)))
    assert op.n_matvecs == 5 and op.n_calls == 2
    s = op + op
    s @ np.ones(5)
    assert s.n_matvecs == 1 and op.n_matvecs == 7
    op.reset_counter()
    assert op.n_matvecs == 0


def test_callable_operator_loops_columns_without_matmat():
    calls = []

    def mv(v):
        calls.append(v.shape)
        return 3.0 * v

    op = CallableOperator(mv, (4, 4), symmetric=True)
    out = op.matmat(np.ones((4, 2)))
    np.testing.assert_array_equal(out, 3.0 * np.ones((4, 2)))
    assert calls == [(4,), (4,)]
    with pytest.raises(TypeError, match="matvec must be callable"):
        CallableOperator(3.0, (2, 2))
    bad = CallableOperator(lambda v: np.ones(3), (2, 2))
    with pytest.raises(ValueError, match=r"returned shape \(3,\), expected \(2,\)"):
        bad @ np.ones(2)


def test_bad_shapes_and_dtypes_name_argument_and_shapes():
    op = DenseOperator(np.eye(3))
    with pytest.raises(ValueError, match=r"v has shape \(4,\), expected \(3,\) for an operator of shape \(3, 3\)"):
        op.matvec(np.ones(4))
    with pytest.raises(ValueError, match=r"V has shape \(4, 2\), expected \(3, k\)"):
        op.matmat(np.ones((4, 2)))
    with pytest.raises(TypeError, match="v must be a real float32/float64 array, got dtype int64"):
        op.matvec(np.ones(3, dtype=np.int64))
    with pytest.raises(TypeError, match="complex"):
        op.matvec(np.ones(3, dtype=np.complex128))
    with pytest.raises(ValueError, match=r"cannot add operators of shapes \(3, 3\) and \(2, 2\)"):
        op + DenseOperator(np.eye(2))
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        LinearOperator((2, 2), np.int32)
    with pytest.raises(ValueError, match="symmetric operator must be square"):
        LinearOperator((2, 3), np.float64, symmetric=True)
    with pytest.raises(ValueError, match=r"d has shape \(2,\), expected \(3,\)"):
        LowRankPlusDiagonal(np.ones(2), np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"C has shape \(2, 2\), expected \(1, 1\)"):
        LowRankPlusDiagonal(1.0, np.ones((3, 1)), np.eye(2))


def test_other_float_precision_is_cast_to_operator_dtype():
    op = DenseOperator(np.eye(3, dtype=np.float32))
    out = op @ np.ones(3, dtype=np.float64)
    assert out.dtype == np.float32


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 14), k=st.integers(1, 4), seed=seeds, sigma=st.floats(0.1, 3.0))
def test_lowrank_plus_scalar_diagonal_eigenvalues_and_solve(n, k, seed, sigma):
    k = min(k, n)
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, k))
    C = _sym(rng, k)
    op = LowRankPlusDiagonal(sigma, U, C)
    dense = sigma * np.eye(n) + U @ C @ U.T
    np.testing.assert_allclose(op.to_dense(), dense, atol=1e-12 * (1 + np.abs(dense).max()))
    np.testing.assert_allclose(op.eigvalsh(), np.linalg.eigvalsh(dense), atol=1e-9 * (1 + np.abs(dense).max()))
    vals, vecs = op.eigh_lowrank()
    np.testing.assert_allclose(dense @ vecs, vecs * vals, atol=1e-9 * (1 + np.abs(dense).max()))
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=1e-10)
    evals = np.linalg.eigvalsh(dense)
    if np.abs(evals).min() > 1e-3 * np.abs(evals).max():
        b = rng.standard_normal((n, 2))
        assert rel_err(op.solve(b), np.linalg.solve(dense, b)) < 1e-8 * np.linalg.cond(dense)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 14), k=st.integers(1, 4), seed=seeds)
def test_lowrank_woodbury_general_diagonal_and_singular_core(n, k, seed):
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.5, 2.0, n)
    U = rng.standard_normal((n, k))
    C = np.zeros((k, k))
    C[0, 0] = 1.0  # singular core: the Woodbury form must not invert C
    op = LowRankPlusDiagonal(d, U, C)
    dense = np.diag(d) + U @ C @ U.T
    b = rng.standard_normal(n)
    assert rel_err(op.solve(b), np.linalg.solve(dense, b)) < 1e-10
    assert op.psd
    assert rel_err(op.shift(0.3) @ b, (dense + 0.3 * np.eye(n)) @ b) < 1e-12


def test_lowrank_general_diagonal_eigs_refused_and_singular_solve_raises():
    op = LowRankPlusDiagonal(np.array([1.0, 2.0]), np.ones((2, 1)))
    with pytest.raises(ValueError, match="constant diagonal"):
        op.eigvalsh()
    sing = LowRankPlusDiagonal(1.0, np.array([[1.0], [0.0]]), np.array([[-1.0]]))
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        sing.solve(np.ones(2))
    with pytest.raises(np.linalg.LinAlgError, match="zero entries"):
        LowRankPlusDiagonal(np.array([0.0, 1.0]), np.ones((2, 1))).solve(np.ones(2))


def test_diagonal_operator_exact():
    d = np.array([3.0, -1.0, 2.0])
    op = DiagonalOperator(d)
    np.testing.assert_array_equal(op.eigvalsh(), [-1.0, 2.0, 3.0])
    np.testing.assert_allclose(op.solve(np.array([3.0, 1.0, 4.0])), [1.0, -1.0, 2.0])
    np.testing.assert_allclose(op.shift(1.0) @ np.ones(3), d + 1.0)
    with pytest.raises(np.linalg.LinAlgError):
        DiagonalOperator(np.array([0.0, 1.0])).solve(np.ones(2))


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_scipy_eigsh_on_our_operator_matches_eigvalsh(dtype, tol):
    rng = np.random.default_rng(3)
    A = _sym(rng, 60, dtype=dtype)
    op = DenseOperator(A, symmetric=True) + DiagonalOperator(np.linspace(0, 1, 60).astype(dtype))
    vals = sla.eigsh(op.to_scipy(), k=4, which="LA", return_eigenvectors=False, v0=np.ones(60))
    ref = np.linalg.eigvalsh(op.to_dense().astype(np.float64))[-4:]
    np.testing.assert_allclose(np.sort(vals), ref, rtol=tol, atol=tol)


def test_aslinearoperator_wraps_everything():
    A = np.arange(9.0).reshape(3, 3)
    assert aslinearoperator(DenseOperator(A)).shape == (3, 3)
    dense = aslinearoperator(np.eye(3, dtype=np.int64), symmetric=True)
    assert dense.dtype == np.float64 and dense.symmetric
    sp = aslinearoperator(sla.aslinearoperator(A))
    np.testing.assert_allclose(sp @ np.ones(3), A @ np.ones(3))
    sparse = aslinearoperator(sps.csr_matrix(A))
    np.testing.assert_allclose(sparse.matmat(np.eye(3)), A)
    f = aslinearoperator(lambda v: A @ v, shape=(3, 3))
    np.testing.assert_allclose(f @ np.ones(3), A @ np.ones(3))
    with pytest.raises(ValueError, match="needs shape"):
        aslinearoperator(lambda v: v)
    with pytest.raises(TypeError, match="cannot make a linear operator"):
        aslinearoperator("nope")


def test_symmetry_defect_separates_symmetric_from_not():
    rng = np.random.default_rng(5)
    S = DenseOperator(_sym(rng, 30), symmetric=True)
    N = DenseOperator(rng.standard_normal((30, 30)))
    assert symmetry_defect(S, rng) < 1e-13
    assert symmetry_defect(N, rng) > 1e-3
    with pytest.raises(ValueError, match="square"):
        symmetry_defect(DenseOperator(np.ones((2, 3))))


def test_same_checks_on_backend(xp):
    rng = np.random.default_rng(7)
    A = _sym(rng, 8, xp=xp)
    U = xp.asarray(rng.standard_normal((8, 2)))
    op = (DenseOperator(A, symmetric=True) + LowRankPlusDiagonal(1.5, U)).shift(0.5)
    v = xp.asarray(rng.standard_normal(8))
    ref = A @ v + 1.5 * v + U @ (U.T @ v) + 0.5 * v
    assert rel_err(op @ v, ref) < 1e-12
    lr = LowRankPlusDiagonal(1.5, U)
    dense = lr.to_dense()
    assert rel_err(lr.eigvalsh(), xp.linalg.eigvalsh(dense)) < 1e-10
    assert rel_err(lr.solve(v), xp.linalg.solve(dense, v)) < 1e-10
    assert op.xp is xp
