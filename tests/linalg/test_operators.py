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
    assert calls == [(4,), (4,)] and op.n_matvecs == 0  # the tag probe pair, not counted
    calls.clear()
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
    with pytest.raises(ValueError, match="square for an operator declared symmetric"):
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
    # a zero entry of D makes the Woodbury form inapplicable, not A singular: the dense fallback solves it
    zd = LowRankPlusDiagonal(np.array([0.0, 1.0]), np.ones((2, 1)))
    np.testing.assert_allclose(zd.solve(np.ones(2)), np.linalg.solve([[1.0, 1.0], [1.0, 2.0]], np.ones(2)), rtol=1e-14)
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        LowRankPlusDiagonal(np.array([0.0, 1.0]), np.array([[0.0], [1.0]])).solve(np.ones(2))


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


# -- issue 11, defect 3: declared tags and data are checked -------------------------------------------
def test_declared_symmetric_dense_is_checked_exactly():
    rng = np.random.default_rng(11)
    N = rng.standard_normal((20, 20))
    with pytest.raises(ValueError, match=r"A is declared symmetric but .*0\.5 \* \(A \+ A\.T\)"):
        DenseOperator(N, symmetric=True)
    with pytest.raises(ValueError, match="A is declared symmetric"):
        aslinearoperator(N, symmetric=True)
    # round-off asymmetry of a product Q L Qᵀ is accepted, in both dtypes
    Q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    for dt in (np.float64, np.float32):
        A = (Q.astype(dt) * np.linspace(-1, 3, 200).astype(dt)) @ Q.T.astype(dt)
        assert np.abs(A - A.T).max() > 0
        DenseOperator(A, symmetric=True)
    # opt-out for trusted data
    assert DenseOperator(N, symmetric=True, check=False).symmetric


def test_declared_psd_dense_is_checked():
    rng = np.random.default_rng(12)
    X = rng.standard_normal((30, 10))
    DenseOperator(X @ X.T, symmetric=True, psd=True)  # rank deficient PSD: zero eigenvalues up to round-off
    with pytest.raises(ValueError, match="A is declared psd but its smallest eigenvalue"):
        DenseOperator(X @ X.T - 0.1 * np.eye(30), symmetric=True, psd=True)
    big = rng.standard_normal((300, 300))
    big = big + big.T
    with pytest.raises(ValueError, match="A is declared psd"):
        DenseOperator(big, symmetric=True, psd=True)  # n > 256: diagonal/probe check
    DenseOperator(big, symmetric=True, psd=True, check=False)


def test_declared_symmetric_callable_is_probed():
    rng = np.random.default_rng(13)
    N = rng.standard_normal((15, 15))
    with pytest.raises(ValueError, match="matvec is declared symmetric but a random probe pair"):
        CallableOperator(lambda v: N @ v, (15, 15), symmetric=True)
    with pytest.raises(ValueError, match="declared symmetric"):
        aslinearoperator(lambda v: N @ v, shape=(15, 15), symmetric=True)
    with pytest.raises(ValueError, match="declared symmetric"):
        aslinearoperator(sla.aslinearoperator(N), symmetric=True)
    with pytest.raises(ValueError, match="declared psd"):
        CallableOperator(lambda v: -v, (15, 15), symmetric=True, psd=True)
    with pytest.raises(FloatingPointError, match="NaN"):
        CallableOperator(lambda v: v * np.nan, (15, 15), symmetric=True)
    S = N + N.T
    op = aslinearoperator(lambda v: S @ v, shape=(15, 15), symmetric=True)
    assert op.n_matvecs == 0 and op.symmetric
    assert CallableOperator(lambda v: N @ v, (15, 15), symmetric=True, check=False).symmetric


def test_eigsh_refuses_a_falsely_tagged_operator():
    """The defect: eigsh on a non-symmetric matrix tagged symmetric returned converged=True and a value
    that is no eigenvalue; now the construction refuses it."""
    from curvlab.linalg import eigsh

    N = np.random.default_rng(14).standard_normal((40, 40))
    with pytest.raises(ValueError, match="symmetric"):
        eigsh(DenseOperator(N, symmetric=True), k=1, rng=0)
    with pytest.raises(ValueError, match="symmetric"):
        eigsh(aslinearoperator(lambda v: N @ v, shape=(40, 40), symmetric=True), k=1, rng=0)
    with pytest.raises(ValueError, match="symmetric"):
        eigsh(N, k=1, rng=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_operator_data_refused_naming_the_argument(bad):
    A = np.eye(3)
    A[1, 2] = bad
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        DenseOperator(A)
    with pytest.raises(ValueError, match="d contains NaN or Inf"):
        DiagonalOperator(np.array([1.0, bad]))
    with pytest.raises(ValueError, match="U contains NaN or Inf"):
        LowRankPlusDiagonal(1.0, np.array([[1.0], [bad]]))
    with pytest.raises(ValueError, match="d contains NaN or Inf"):
        LowRankPlusDiagonal(np.array([1.0, bad]), np.ones((2, 1)))
    with pytest.raises(ValueError, match="C contains NaN or Inf"):
        LowRankPlusDiagonal(1.0, np.ones((2, 1)), np.array([[bad]]))
    with pytest.raises(ValueError, match="d must be a finite real number"):
        LowRankPlusDiagonal(bad, np.ones((2, 1)))
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        aslinearoperator(sps.csr_matrix(A))
    with pytest.raises(ValueError, match="lam must be a finite"):
        DiagonalOperator(np.ones(2)).shift(bad)


def test_lowrank_nonsymmetric_core_refused():
    U = np.random.default_rng(15).standard_normal((6, 2))
    with pytest.raises(ValueError, match=r"C must be a symmetric \(k, k\) core"):
        LowRankPlusDiagonal(1.0, U, np.array([[1.0, 2.0], [0.0, 1.0]]))
    # the psd tag comes from the (checked) symmetric core, exactly
    assert not LowRankPlusDiagonal(1.0, U, np.array([[1.0, 0.0], [0.0, -1e-3]])).psd
    assert LowRankPlusDiagonal(1.0, U, np.eye(2)).psd


def test_symmetry_defect_never_reports_zero_for_no_evidence():
    op = DenseOperator(np.random.default_rng(16).standard_normal((8, 8)))
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n_probes must be >= 1"):
            symmetry_defect(op, n_probes=bad)
    with pytest.raises(TypeError, match="n_probes must be an int"):
        symmetry_defect(op, n_probes=1.5)
    nan_op = CallableOperator(lambda v: v * np.nan, (8, 8))
    assert np.isnan(symmetry_defect(nan_op, rng=0))
    with pytest.raises(TypeError, match="rng must be"):
        symmetry_defect(op, rng="seed")
    assert symmetry_defect(CallableOperator(lambda v: 0.0 * v, (8, 8)), rng=0) == 0.0
    assert symmetry_defect(np.eye(4), rng=0) < 1e-15  # arrays are wrapped


# -- issue 11, defect 7: the Woodbury solve is backward stable for a badly scaled D ------------------
@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(6, 40), dtype=st.sampled_from([np.float64, np.float32]))
def test_lowrank_solve_with_tiny_diagonal_entries_matches_dense(seed, n, dtype):
    rng = np.random.default_rng(seed)
    k = max(n // 2, 5)
    d = rng.uniform(0.5, 1.0, n)
    d[:5] = [1e-16, 1e-12, 1e-8, 1e-4, 1e-2]  # D spans 1e-16..1
    U = rng.standard_normal((n, k))
    A = np.diag(d) + U @ U.T
    cond = np.linalg.cond(A)
    if cond > 1e5:  # the property is about well-conditioned A
        return
    op = LowRankPlusDiagonal(d.astype(dtype), U.astype(dtype))
    A_op = np.diag(d.astype(dtype).astype(np.float64)) + U.astype(dtype).astype(np.float64) @ U.astype(dtype).astype(np.float64).T
    b = rng.standard_normal((n, 2))
    x = op.solve(b.astype(dtype)).astype(np.float64)
    ref = np.linalg.solve(A_op, b.astype(dtype).astype(np.float64))
    eps = np.finfo(dtype).eps
    assert rel_err(x, ref) < 100 * eps * np.linalg.cond(A_op)
    assert np.linalg.norm(A_op @ x - b.astype(dtype)) / np.linalg.norm(b) < 100 * eps * np.linalg.cond(A_op)


def test_lowrank_solve_never_returns_an_inaccurate_answer_silently(monkeypatch):
    import curvlab.linalg._operators.lowrank as ops   # where the thresholds are read

    rng = np.random.default_rng(17)
    n, k = 20, 8
    d = rng.uniform(0.5, 1, n)
    d[0] = 1e-16
    U = rng.standard_normal((n, k))
    op = LowRankPlusDiagonal(d, U)
    b = rng.standard_normal(n)
    x = op.solve(b)
    A = np.diag(d) + U @ U.T
    assert np.linalg.norm(A @ x - b) / np.linalg.norm(b) < 1e-12  # was 0.7 and more
    # without the dense fallback (large n) the bordered elimination of the tiny entries is accurate alone
    monkeypatch.setattr(ops, "WOODBURY_DENSE_FALLBACK_N", 10)
    for dd in (d, np.where(np.arange(n) < 3, 0.0, d)):  # tiny, and exactly zero, entries
        lr = LowRankPlusDiagonal(dd, U)
        x = lr.solve(b, refine=0)
        assert np.linalg.norm(lr.to_dense() @ x - b) / np.linalg.norm(b) < 1e-12
    # and when no stable path is left, it raises instead of returning an inaccurate answer
    monkeypatch.setattr(ops, "_SPLIT_MAX", 0)
    with pytest.raises(np.linalg.LinAlgError, match="tiny against"):
        op.solve(b)
    # well-scaled D: Woodbury alone is accurate, no fallback needed
    good = LowRankPlusDiagonal(rng.uniform(0.5, 1, n), U)
    xg = good.solve(b)
    assert np.linalg.norm(good.to_dense() @ xg - b) / np.linalg.norm(b) < 1e-13


# -- issue 11, defect 10: wrong kinds of input name the argument ------------------------------------
def test_foreign_and_odd_inputs_name_the_argument():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"A must be .*torch\.Tensor: convert it with"):
        aslinearoperator(torch.eye(3))
    with pytest.raises(TypeError, match=r"A must be a NumPy or CuPy array, got a torch\.Tensor"):
        DenseOperator(torch.eye(3))
    with pytest.raises(TypeError, match="d must have dtype float32 or float64, got float16"):
        DiagonalOperator(np.ones(3, dtype=np.float16))
    with pytest.raises(TypeError, match="A must have dtype float32 or float64, got object"):
        DenseOperator(np.eye(2).astype(object))
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        aslinearoperator(np.eye(2), dtype=np.complex128)
    with pytest.raises(TypeError, match="shape must be a pair"):
        CallableOperator(lambda v: v, (2.5, 2))
    with pytest.raises(ValueError, match="shape must be a pair"):
        CallableOperator(lambda v: v, (2,))
    with pytest.raises(TypeError, match="matmat must be callable"):
        CallableOperator(lambda v: v, (2, 2), matmat=3)
    with pytest.raises(TypeError, match=r"v must be a numpy array for this operator, got a torch\.Tensor"):
        DenseOperator(np.eye(3)) @ torch.ones(3)


# -- operator algebra with SciPy's reach (issue 12 item 5) ------------------------------------------


def test_algebra_product_transpose_division_sum_against_dense():
    from curvlab.linalg.operators import BlockDiagonalOperator, ProductOperator

    rng = np.random.default_rng(7)
    A, B = _sym(rng, 5), rng.standard_normal((5, 5))
    opA, opB = DenseOperator(A, symmetric=True), DenseOperator(B)
    x, X = rng.standard_normal(5), rng.standard_normal((5, 3))
    P = opA @ opB
    assert isinstance(P, ProductOperator) and P.shape == (5, 5)
    np.testing.assert_allclose(P @ x, A @ (B @ x), rtol=1e-12)
    np.testing.assert_allclose(P @ X, A @ B @ X, rtol=1e-12)
    np.testing.assert_allclose((opA @ opA) @ x, A @ A @ x, rtol=1e-12)
    assert (opA @ opA).symmetric and (opA @ opA).psd and not P.symmetric
    assert opA.T is opA and opA.H is opA and opA.adjoint() is opA
    np.testing.assert_allclose(opB.T @ x, B.T @ x, rtol=1e-12)
    np.testing.assert_allclose(P.T @ X, (A @ B).T @ X, rtol=1e-12)
    G = opB.T @ opB
    assert G.symmetric and G.psd
    np.testing.assert_allclose((opA / 2) @ x, A @ x / 2, rtol=1e-12)
    np.testing.assert_allclose(sum([opA, opB, opA]) @ x, (2 * A + B) @ x, rtol=1e-12)
    assert (0 + opA) is opA
    D = BlockDiagonalOperator([opA, DiagonalOperator(np.arange(1.0, 4.0))])
    np.testing.assert_allclose(D.to_dense()[:5, :5], A)
    assert D.symmetric and D.shape == (8, 8)


def test_algebra_counts_and_clear_errors():
    rng = np.random.default_rng(8)
    opA = DenseOperator(_sym(rng, 4), symmetric=True)
    opB = DenseOperator(rng.standard_normal((4, 3)))
    P = opA @ opB
    P.matmat(np.ones((3, 2)))
    assert P.n_matvecs == 2 and opA.n_matvecs == 2 and opB.n_matvecs == 2
    with pytest.raises(ValueError, match="right operand"):
        opB @ opA
    with pytest.raises(ValueError, match="right operand"):
        opA + opB
    with pytest.raises(ValueError, match="c"):
        opA / 0.0
    with pytest.raises(TypeError, match="shift"):
        opA + 1.0
    f = CallableOperator(lambda v: np.cumsum(v), (4, 4))
    with pytest.raises(TypeError, match="rmatvec"):
        f.T
    g = CallableOperator(lambda v: np.cumsum(v), (4, 4), rmatvec=lambda v: np.cumsum(v[::-1])[::-1])
    L = np.tril(np.ones((4, 4)))
    np.testing.assert_allclose(g.T @ np.arange(4.0), L.T @ np.arange(4.0))
    np.testing.assert_allclose(g.to_scipy().rmatvec(np.arange(4.0)), L.T @ np.arange(4.0))


def test_name_leads_repr():
    op = CallableOperator(lambda v: v, (3, 3), symmetric=True, name="Hessian of MLP[2-3] on 4 samples, P=3")
    assert repr(op).startswith("<Hessian of MLP[2-3] on 4 samples, P=3: CallableOperator shape=(3, 3)")
    assert op.name == op.description
    r = repr(2.0 * op + op)
    assert "Hessian" in r and len(r) < 200


def test_algebra_of_a_stochastic_operator_stays_stochastic():
    from curvlab.linalg import BlockDiagonalOperator, StochasticOperator, eigsh, solve

    S = StochasticOperator(lambda b: DiagonalOperator(np.full(3, b)), lambda rng: rng.uniform(1, 2), rng=0,
                           shape=(3, 3))
    D = DiagonalOperator(np.ones(3))
    for op in (S + D, 2.0 * S, S.shift(1.0), S @ D, BlockDiagonalOperator([D, S]), sum([D, S])):
        assert getattr(op, "stochastic", False), repr(op)
        with pytest.raises(ValueError, match="stochastic"):
            solve(op, np.ones(op.shape[0]))
    with pytest.raises(ValueError, match="stochastic"):
        eigsh(S + D, k=1)
    assert not getattr(D + D, "stochastic", False)
