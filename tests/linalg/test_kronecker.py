"""Kronecker layer blocks (paper 000 F4-F9): closed-form spectra and solves against dense linear algebra."""

from __future__ import annotations

import numpy as np
import pytest

from curvlab.linalg.kronecker import (
    ADJUSTMENTS,
    KroneckerLayerBlock,
    KroneckerSumBlock,
    ProjectedSpectralBlock,
    adjust_spectrum,
)
from tests.conftest import rel_err


def _sym(rng, n, shift=0.0):
    G = rng.standard_normal((n, n))
    return 0.5 * (G + G.T) + shift * np.eye(n)


def _dense_fn(H, fn):
    w, V = np.linalg.eigh(H)
    return (V * fn(w)) @ V.T


@pytest.mark.parametrize("n,m", [(1, 1), (3, 5), (5, 2), (6, 8)])
def test_layer_block_matvec_spectrum_solve(n, m):
    rng = np.random.default_rng(n * 10 + m)
    M, a, lam = _sym(rng, n), rng.standard_normal(m), 0.7
    H = KroneckerLayerBlock(M, a, lam)
    D = np.kron(M, np.outer(a, a)) + lam * np.eye(n * m)
    V = rng.standard_normal((n * m, 3))
    assert rel_err(H @ V, D @ V) <= 1e-14
    assert rel_err(H @ V[:, 0], D @ V[:, 0]) <= 1e-14
    assert rel_err(H.to_dense(), D) == 0.0
    assert rel_err(H.eigvalsh(), np.linalg.eigvalsh(D)) <= 1e-12
    assert rel_err(H.solve(V), np.linalg.solve(D, V)) <= 1e-12
    # closed-form eigenvectors
    vals, vecs = H.eigh_nontrivial()
    assert rel_err(D @ vecs, vecs * vals) <= 1e-12
    assert rel_err(vecs.T @ vecs, np.eye(n)) <= 1e-13
    w, Q = H.eigh()
    assert rel_err(Q.T @ Q, np.eye(n * m)) <= 1e-13
    assert rel_err((Q * w) @ Q.T, D) <= 1e-12


def test_absolute_value_identity_and_adjusted_blocks():
    """|M ⊗ ããᵀ| = |M| ⊗ ããᵀ, and ρ(H) for rules with ρ(0) = 0 equals the dense matrix function."""
    rng = np.random.default_rng(0)
    n, m = 4, 6
    M, a = _sym(rng, n), rng.standard_normal(m)
    K = np.kron(M, np.outer(a, a))
    absM = _dense_fn(M, np.abs)
    assert rel_err(_dense_fn(K, np.abs), np.kron(absM, np.outer(a, a))) <= 1e-13
    H = KroneckerLayerBlock(M, a, lam=0.0)
    assert rel_err(H.adjusted("abs").to_dense(), _dense_fn(K, np.abs)) <= 1e-13
    assert rel_err(H.adjusted("cap", kappa_max=0.5).to_dense(), _dense_fn(K, lambda w: np.minimum(np.abs(w), 0.5))) <= 1e-12
    assert rel_err(H.adjusted("raw").to_dense(), K) <= 1e-13
    # floor/shift move only the n non-trivial eigenvalues (the λ-eigenspace ⊥ ã is left alone)
    kf = np.sort(np.maximum(np.abs(H.kappa), 2.0))
    assert rel_err(np.sort(H.adjusted("floor", kappa_min=2.0).kappa), kf) <= 1e-13
    assert rel_err(np.sort(H.adjusted("shift", shift=0.3).kappa), np.sort(np.abs(H.kappa) + 0.3)) <= 1e-13


def test_adjust_spectrum_rules_and_errors():
    k = np.array([-3.0, -1e-6, 0.0, 2.0])
    assert np.array_equal(adjust_spectrum(k, "none"), k)
    assert np.array_equal(adjust_spectrum(k, "abs"), np.abs(k))
    assert np.array_equal(adjust_spectrum(k, "floor", kappa_min=0.1), [3.0, 0.1, 0.1, 2.0])
    assert np.array_equal(adjust_spectrum(k, "shift", shift=1.0), [4.0, 1.0 + 1e-6, 1.0, 3.0])
    assert np.array_equal(adjust_spectrum(k, "clip", kappa_max=1.0), [1.0, 1e-6, 0.0, 1.0])
    assert set(ADJUSTMENTS) >= {"raw", "abs", "floor", "shift", "cap"}
    with pytest.raises(ValueError, match="adjustment"):
        adjust_spectrum(k, "sqrt")
    with pytest.raises(ValueError, match="kappa_max"):
        adjust_spectrum(k, "cap", kappa_max=0.0)
    with pytest.raises(ValueError, match="kappa_min"):
        adjust_spectrum(k, "floor", kappa_min=-1.0)


def test_layer_block_bad_input():
    M, a = np.diag([1.0, -2.0]), np.array([1.0, 0.0])
    with pytest.raises(ValueError, match="lam must be > 0"):
        KroneckerLayerBlock(M, a, 0.0).solve(np.ones(4))
    with pytest.raises(ValueError, match="lam"):
        KroneckerLayerBlock(M, a, -1.0)
    # κ = s μ = -2 and λ = 2: a singular adjusted (raw) spectrum
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        KroneckerLayerBlock(M, a, 2.0).solve(np.ones(4))
    with pytest.raises(FloatingPointError, match="M"):
        KroneckerLayerBlock(np.array([[np.nan]]), np.ones(2))
    with pytest.raises(ValueError, match="square"):
        KroneckerLayerBlock(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="expected"):
        KroneckerLayerBlock(M, a, 1.0).solve(np.ones(5))
    # m = 1 (no complement): λ = 0 is allowed when M is nonsingular
    x = KroneckerLayerBlock(M, np.array([2.0]), 0.0).solve(np.array([4.0, 4.0]))
    np.testing.assert_allclose(x, [1.0, -0.5], rtol=1e-15, atol=0)  # diag(1, -2) ⊗ [4]: x = b / (4 diag)


@pytest.mark.parametrize("B", [1, 3, 6])
def test_sum_block_spectrum_and_solves(B):
    """F9 on a bias-free 4-input layer; B = 6 > m exercises the rank truncation (r = 4)."""
    rng = np.random.default_rng(B)
    n, m, lam = 3, 4, 0.5
    Ms = np.stack([_sym(rng, n) for _ in range(B)])
    A = rng.standard_normal((B, m))
    H = KroneckerSumBlock(Ms, A, lam)
    D = sum(np.kron(Ms[b], np.outer(A[b], A[b])) for b in range(B)) / B + lam * np.eye(n * m)
    assert rel_err(H.to_dense(), D) <= 1e-14
    V = rng.standard_normal((n * m, 2))
    assert rel_err(H @ V, D @ V) <= 1e-14
    assert H.rank == min(B, m)
    assert rel_err(H.eigvalsh(), np.linalg.eigvalsh(D)) <= 1e-12
    ref = np.linalg.solve(D, V)
    for method in ("auto", "woodbury", "projected", "eigh"):
        assert rel_err(H.solve(V, method=method), ref) <= 1e-11, method
    assert rel_err(H.solve(V[:, 0]), ref[:, 0]) <= 1e-11
    # adjusted: per sample (Σ|M_b| ⊗ ã ãᵀ) and whole block (|H^B|)
    Hp = H.adjusted("abs", where="per_sample")
    Dp = sum(np.kron(_dense_fn(Ms[b], np.abs), np.outer(A[b], A[b])) for b in range(B)) / B + lam * np.eye(n * m)
    assert rel_err(Hp.to_dense(), Dp) <= 1e-13
    assert rel_err(Hp.solve(V), np.linalg.solve(Dp, V)) <= 1e-11
    Hb = H.adjusted("abs", where="batch")
    assert isinstance(Hb, ProjectedSpectralBlock)
    Db = _dense_fn(D - lam * np.eye(n * m), np.abs) + lam * np.eye(n * m)
    assert rel_err(Hb.to_dense(), Db) <= 1e-12
    assert rel_err(Hb.eigvalsh(), np.linalg.eigvalsh(Db)) <= 1e-12
    assert rel_err(Hb.solve(V), np.linalg.solve(Db, V)) <= 1e-11


def test_sum_block_with_one_sample_equals_layer_block():
    rng = np.random.default_rng(7)
    M, a = _sym(rng, 4), rng.standard_normal(6)
    H1 = KroneckerLayerBlock(M, a, 0.3)
    HB = KroneckerSumBlock(M[None], a[None], 0.3)
    b = rng.standard_normal(24)
    assert rel_err(HB.solve(b), H1.solve(b)) <= 1e-12
    assert rel_err(HB.eigvalsh(), H1.eigvalsh()) <= 1e-12


def test_sum_block_bad_input():
    rng = np.random.default_rng(8)
    Ms = np.stack([np.eye(2)] * 3)
    A = rng.standard_normal((3, 5))          # r = 3 < m = 5: rank deficient
    with pytest.raises(ValueError, match="lam must be > 0"):
        KroneckerSumBlock(Ms, A, 0.0).solve(np.ones(10), method="projected")
    with pytest.raises(ValueError, match="A must have shape"):
        KroneckerSumBlock(Ms, A[:2], 1.0)
    with pytest.raises(ValueError, match="method"):
        KroneckerSumBlock(Ms, A, 1.0).solve(np.ones(10), method="cholesky")
    with pytest.raises(FloatingPointError, match="Ms"):
        KroneckerSumBlock(Ms * np.nan, A, 1.0)
    with pytest.raises(ValueError, match="where"):
        KroneckerSumBlock(Ms, A, 1.0).adjusted("abs", where="layer")
    # full-rank inputs: λ = 0 works by projection when S is nonsingular
    A2 = rng.standard_normal((6, 2))
    H = KroneckerSumBlock(np.stack([np.eye(2)] * 6), A2, 0.0)
    b = rng.standard_normal(4)
    assert rel_err(H @ H.solve(b, method="projected"), b) <= 1e-12


def test_float32_inputs():
    rng = np.random.default_rng(9)
    M, a = _sym(rng, 3).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    H = KroneckerLayerBlock(M, a, 1.0)
    assert H.dtype == np.float32
    b = rng.standard_normal(12).astype(np.float32)
    x = H.solve(b)
    assert x.dtype == np.float32
    D = np.kron(M.astype(np.float64), np.outer(a, a).astype(np.float64)) + np.eye(12)
    assert rel_err(x, np.linalg.solve(D, b.astype(np.float64))) <= 1e-5


def test_backends(xp):
    rng = np.random.default_rng(10)
    Ms = np.stack([_sym(rng, 3) for _ in range(4)])
    A = rng.standard_normal((4, 5))
    b = rng.standard_normal(15)
    ref = KroneckerSumBlock(Ms, A, 0.5).solve(b)
    H = KroneckerSumBlock(xp.asarray(Ms), xp.asarray(A), 0.5)
    assert rel_err(H.solve(xp.asarray(b)), ref) <= 1e-12
    assert rel_err(H.adjusted("abs", where="batch").solve(xp.asarray(b)),
                   KroneckerSumBlock(Ms, A, 0.5).adjusted("abs", where="batch").solve(b)) <= 1e-12
    H1 = KroneckerLayerBlock(xp.asarray(Ms[0]), xp.asarray(A[0]), 0.5)
    assert rel_err(H1.solve(xp.asarray(b)), KroneckerLayerBlock(Ms[0], A[0], 0.5).solve(b)) <= 1e-12
    assert rel_err(H1.eigvalsh(), np.linalg.eigvalsh(KroneckerLayerBlock(Ms[0], A[0], 0.5).to_dense())) <= 1e-12


def test_eigh_batched_matches_numpy_and_rejects_nan():
    from curvlab.linalg.kronecker import eigh_batched

    rng = np.random.default_rng(12)
    S = np.stack([_sym(rng, 5) for _ in range(7)]).reshape(7, 5, 5)
    w, V = eigh_batched(S)
    assert rel_err(w, np.linalg.eigvalsh(S)) <= 1e-13
    assert rel_err(np.einsum("bij,bj,bkj->bik", V, w, V), S) <= 1e-13
    with pytest.raises(FloatingPointError, match="M"):
        eigh_batched(np.full((1, 2, 2), np.nan))


# -- issue 11, defect 7: the Woodbury block solve divides by λ; a tiny λ must not cost digits --------
@pytest.mark.parametrize("B, n, m, lam", [(4, 3, 4, 1e-12), (6, 3, 4, 1e-12), (5, 2, 5, 1e-9), (8, 2, 3, 1e-14)])
@pytest.mark.parametrize("method", ["auto", "woodbury"])
def test_sum_block_solve_backward_stable_for_tiny_lambda(B, n, m, lam, method):
    rng = np.random.default_rng(B * 100 + n * 10 + m)
    Ms = rng.standard_normal((B, n, n))
    Ms = Ms @ Ms.transpose(0, 2, 1) + np.eye(n)
    A = rng.standard_normal((B, m))
    H = KroneckerSumBlock(Ms, A, lam)
    assert H.rank == m  # full rank inputs: the block is well conditioned whatever λ
    D = H.to_dense()
    b = rng.standard_normal((n * m, 2))
    x = H.solve(b, method=method)
    eta = np.linalg.norm(D @ x - b) / (np.linalg.norm(D, 2) * np.linalg.norm(x) + np.linalg.norm(b))
    assert eta < 1e-14
    assert np.linalg.norm(x - np.linalg.solve(D, b)) / np.linalg.norm(x) < 1e-13 * np.linalg.cond(D)


def test_block_parameters_are_validated_naming_them():
    rng = np.random.default_rng(0)
    Ms, A = rng.standard_normal((2, 2, 2)), rng.standard_normal((2, 3))
    for bad in (np.nan, -1.0, 0.0, np.inf):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            KroneckerSumBlock(Ms, A, 1.0, scale=bad)
    with pytest.raises(TypeError, match="lam must be a finite number >= 0"):
        KroneckerSumBlock(Ms, A, "1")
    with pytest.raises(TypeError, match="lam must be a finite number >= 0"):
        KroneckerLayerBlock(Ms[0], A[0], None)


@pytest.mark.parametrize("lam", [1.0, 1e-2, 1e-9])
@pytest.mark.parametrize("B,n,m", [(32, 16, 40), (40, 12, 30)])
def test_psd_block_cg_solve_matches_dense(monkeypatch, lam, B, n, m):
    """A per-sample adjusted (PSD) block solves by conjugate gradients on NumPy (auto); the result
    equals a dense float64 solve; where CG cannot reach round-off (tiny λ) the direct solve answers."""
    rng = np.random.default_rng(B + n)
    Ms = np.stack([_sym(rng, n) for _ in range(B)])
    A = rng.standard_normal((B, m))
    blk = KroneckerSumBlock(Ms, A, lam)
    assert not blk.psd and not blk.adjusted("raw").psd
    H = blk.adjusted("abs")
    assert H.psd
    calls = []
    real = KroneckerSumBlock._solve_cg
    monkeypatch.setattr(KroneckerSumBlock, "_solve_cg", lambda self, R: calls.append(real(self, R)) or calls[-1])
    b = rng.standard_normal((n * m, 2))
    X = H.solve(b)
    D = H.to_dense()
    assert rel_err(X, np.linalg.solve(D, b)) <= 1e-10 * max(1.0, 1e-2 / lam)
    assert len(calls) == 1
    if lam == 1.0:
        assert calls[0] is not None          # CG answered
    assert blk.solve(b[:, 0], method="auto").shape == (n * m,)   # raw: never CG
    assert len(calls) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("B,m", [(6, 4), (3, 8)])    # projected (B > rank) and Woodbury (B <= rank)
def test_sum_block_solve_sync_budget(B, m):
    """Host syncs of an adjusted block's solve on CuPy (strict stand-in): one finiteness read at
    construction, one for the rank, one for the singularity check (Woodbury: one more, its backward
    error) -- was 9 per solve with the projection's mask indexing and repeated finiteness checks."""
    from tests import _strict_cupy

    if not _strict_cupy.installed():
        pytest.skip("host syncs are counted by the strict CuPy stand-in only (pytest -m gpu --strict-cupy)")
    import cupy as cp

    from tests._strict_cupy import count_syncs

    rng = np.random.default_rng(B)
    n = 3
    Ms = cp.asarray(np.stack([_sym(rng, n) for _ in range(B)]))
    A = cp.asarray(rng.standard_normal((B, m)))
    b = cp.asarray(rng.standard_normal(n * m))
    with count_syncs() as log:
        X = KroneckerSumBlock(Ms, A, 0.5).adjusted("abs").solve(b)
    assert log.count <= (3 if B > m else 4), log.report()
    ref = KroneckerSumBlock(cp.asnumpy(Ms), cp.asnumpy(A), 0.5).adjusted("abs").to_dense()
    assert rel_err(cp.asnumpy(X), np.linalg.solve(ref, cp.asnumpy(b))) <= 1e-10


def test_eigh_batched_falls_back_per_matrix_when_the_stacked_call_fails(monkeypatch):
    from curvlab.linalg import kronecker as kr

    rng = np.random.default_rng(4)
    M = np.stack([_sym(rng, 5) for _ in range(3)])
    w_ref, V_ref = kr.eigh_batched(M)

    def boom(a, *args, **kw):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr(np.linalg, "eigh", boom)
    w, V = kr.eigh_batched(M)
    assert rel_err(w, w_ref) <= 1e-13
    assert rel_err(np.einsum("bij,bj,bkj->bik", V, w, V), M) <= 1e-13
