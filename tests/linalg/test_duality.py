"""Layer norms, dual norms and duality maps (curvlab.linalg.duality)."""

from __future__ import annotations

import numpy as np
import pytest

from curvlab.linalg import duality as du
from tests.conftest import rel_err

NORMS = [("spectral", 1.0), ("spectral", 2.5), ("frobenius", 1.0), ("frobenius", 0.3)]


def _to(xp, a):
    return xp.asarray(a)


def _cases(rng):
    """Full-rank wide/tall, rank-deficient, vector, conv kernel."""
    A = rng.standard_normal((7, 3)) @ rng.standard_normal((3, 9))  # rank 3
    return [rng.standard_normal((6, 4)), rng.standard_normal((3, 8)), A, rng.standard_normal(5),
            rng.standard_normal((4, 2, 3, 3))]


def _primal(x, kind, c):
    M = np.asarray(x).reshape(x.shape[0], -1)
    return c * (np.linalg.norm(M, 2) if kind == "spectral" else np.linalg.norm(M))


@pytest.mark.parametrize("kind,c", NORMS)
def test_duality_identities(xp, rng, kind, c):
    for G in _cases(rng):
        Gx = _to(xp, G)
        rho, dn = du.duality_map(Gx, kind, c)
        assert rho.shape == G.shape and rho.dtype == G.dtype
        r = np.asarray(rho.get() if hasattr(rho, "get") else rho)
        M = G.reshape(G.shape[0], -1)
        ref = (np.linalg.svd(M, compute_uv=False).sum() if kind == "spectral" else np.linalg.norm(M)) / c
        assert abs(dn - ref) <= 1e-12 * ref
        assert abs(float(np.vdot(G, r)) - dn**2) <= 1e-12 * dn**2       # ⟨G, ρ(G)⟩ = ‖G‖_*²
        assert abs(_primal(r, kind, c) - dn) <= 1e-12 * dn               # ‖ρ(G)‖ = ‖G‖_*
        assert abs(du.dual_norm(Gx, kind, c) - dn) <= 1e-12 * dn
        assert abs(du.layer_norm(Gx, kind, c) - _primal(G, kind, c)) <= 1e-12 * _primal(G, kind, c)


@pytest.mark.parametrize("kind,c", NORMS)
def test_dual_norm_maximality(rng, kind, c):
    G = rng.standard_normal((5, 4))
    dn = du.dual_norm(G, kind, c)
    U = rng.standard_normal((1000, 5, 4))
    if kind == "spectral":
        nrm = c * np.linalg.norm(U, ord=2, axis=(1, 2))
    else:
        nrm = c * np.sqrt(np.sum(U**2, axis=(1, 2)))
    inner = np.einsum("ij,kij->k", G, U) / nrm
    assert np.all(inner <= dn * (1 + 1e-12))
    assert inner.max() > 0.3 * dn  # the sup is approached, not trivially slack


def test_rank_deficient_polar(rng):
    A = rng.standard_normal((8, 2)) @ rng.standard_normal((2, 6))
    r = du.polar_factor(A)
    assert r.rank == 2
    Q = r.Q
    # partial isometry: Q Qᵀ Q = Q, and Q has the row/column spaces of A
    assert rel_err(Q @ Q.T @ Q, Q) < 1e-12
    assert np.linalg.matrix_rank(Q) == 2
    assert abs(np.vdot(A, Q) - np.linalg.svd(A, compute_uv=False).sum()) < 1e-12 * np.abs(A).sum()


def test_scaled_maps_are_rescaled(rng):
    G = rng.standard_normal((4, 6))
    for kind in ("spectral", "frobenius"):
        r1, d1 = du.duality_map(G, kind, 1.0)
        r3, d3 = du.duality_map(G, kind, 3.0)
        assert rel_err(r3, r1 / 9.0) < 1e-14 and abs(d3 - d1 / 3.0) < 1e-14 * d1


def test_conv_kernel_reshape_roundtrip(rng):
    K = rng.standard_normal((8, 3, 5, 5))
    M = du.as_matrix(K)
    assert M.shape == (8, 75) and np.shares_memory(M, K)
    assert np.array_equal(du.from_matrix(M, K.shape), K)
    rho, dn = du.duality_map(K, "spectral")
    rhoM, dnM = du.duality_map(M, "spectral")
    assert rel_err(rho.reshape(8, 75), rhoM) < 1e-14 and dn == dnM
    with pytest.raises(ValueError, match="reshape"):
        du.from_matrix(M, (8, 3, 5, 4))


def test_zero_and_empty(xp):
    for kind in ("spectral", "frobenius"):
        for G in (xp.zeros((3, 4)), xp.zeros((0, 4)), xp.zeros((3, 0))):
            rho, dn = du.duality_map(G, kind)
            assert dn == 0.0 and rho.shape == G.shape and not bool(xp.any(rho))
            assert du.dual_norm(G, kind) == 0.0 and du.layer_norm(G, kind) == 0.0
        rho, dn = du.duality_map(xp.zeros((3, 4)), kind, method="newton_schulz")
        assert dn == 0.0 and not bool(xp.any(rho))


def test_bad_input():
    G = np.ones((2, 2))
    with pytest.raises(ValueError, match="norm must be one of"):
        du.duality_map(G, "nuclear")
    with pytest.raises(ValueError, match="scale must be"):
        du.duality_map(G, "spectral", scale=0.0)
    with pytest.raises(ValueError, match="method must be"):
        du.duality_map(G, "spectral", method="qr")
    with pytest.raises(TypeError, match="float32 or float64"):
        du.duality_map(np.ones((2, 2), dtype=int))
    with pytest.raises(ValueError, match="ndim"):
        du.as_matrix(np.float64(1.0)[()] * np.ones(()))
    with pytest.raises(FloatingPointError):
        du.newton_schulz_polar(np.array([[np.nan, 1.0]]))


# --- Newton–Schulz accuracy -----------------------------------------------------------

def _with_singular_values(rng, n, m, s):
    U, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    V, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    return (U * s) @ V.T, U @ V.T


@pytest.mark.parametrize("shape", [(30, 20), (20, 30)])
def test_newton_schulz_error_matches_bound(rng, shape):
    """After k steps ‖X_k − UVᵀ‖_op equals the scalar-iteration prediction (documented accuracy)."""
    s = np.geomspace(1.0, 1e-3, 12)
    G, Q = _with_singular_values(rng, *shape, s)
    for k in (2, 5, 10, 20):
        r = du.newton_schulz_polar(G, max_steps=k, tol=0.0)
        err = np.linalg.norm(r.Q - Q, 2)
        pred = du.newton_schulz_error_bound(s, k)
        assert abs(err - pred) <= 1e-12 + 1e-9 * pred
    # converged run: within 1e-12 of the SVD polar factor, nuclear norm to 1e-12
    r = du.newton_schulz_polar(G)
    assert r.converged and r.steps <= 40
    assert np.linalg.norm(r.Q - Q, 2) < 1e-12
    assert abs(r.nuclear - s.sum()) < 1e-12 * s.sum()
    # steps are as predicted: the bound after r.steps is tiny, after r.steps - 3 it is not
    assert du.newton_schulz_error_bound(s, r.steps) < 1e-12
    assert du.newton_schulz_error_bound(s, r.steps - 3) > 1e-12


def test_newton_schulz_duality_map(xp, rng):
    G = rng.standard_normal((16, 24))
    rs, ds = du.duality_map(_to(xp, G), "spectral", 2.0)
    rn, dn_ = du.duality_map(_to(xp, G), "spectral", 2.0, method="newton_schulz")
    assert rel_err(rn, rs) < 1e-12 and abs(dn_ - ds) < 1e-12 * ds


def test_float32(xp, rng):
    """float32 inputs: identities to 1e-5 relative (looser: single precision)."""
    G = rng.standard_normal((20, 12)).astype(np.float32)
    for method in ("svd", "newton_schulz"):
        rho, dn = du.duality_map(_to(xp, G), "spectral", method=method)
        assert rho.dtype == np.float32
        r = np.asarray(rho.get() if hasattr(rho, "get") else rho, dtype=np.float64)
        ref = np.linalg.svd(G.astype(np.float64), compute_uv=False).sum()
        assert abs(dn - ref) < 1e-5 * ref
        assert abs(np.vdot(G.astype(np.float64), r) - ref**2) < 1e-5 * ref**2
        assert abs(np.linalg.norm(r, 2) - ref) < 1e-5 * ref


def test_layer_norm_object(rng):
    G = rng.standard_normal((5, 3))
    n = du.LayerNorm("spectral", 2.0, method="newton_schulz")
    rho, d = n.map(G)
    assert abs(n.norm(rho) - d) < 1e-12 * d and abs(n.dual(G) - d) < 1e-12 * d
    with pytest.raises(ValueError):
        du.LayerNorm("l1")


# --- SVD failure shown as NaN (cuSOLVER on CuPy does not raise) ------------------------

def _garbage_svd(real):
    """An SVD that 'fails' the way cuSOLVER does: no exception, NaN everywhere."""
    def svd(M, full_matrices=True, compute_uv=True, **kw):
        out = real(M, full_matrices=full_matrices, compute_uv=compute_uv)
        return tuple(np.full_like(x, np.nan) for x in out) if compute_uv else np.full_like(out, np.nan)
    return svd


def test_nan_svd_result_routes_to_the_gesvd_fallback(monkeypatch, rng):
    G = rng.standard_normal((6, 4))
    rho_ref, dn_ref = du.duality_map(G, "spectral")
    nrm_ref = du.layer_norm(G)
    monkeypatch.setattr(np.linalg, "svd", _garbage_svd(np.linalg.svd))
    rho, dn = du.duality_map(G, "spectral")
    assert np.all(np.isfinite(rho)) and rel_err(rho, rho_ref) < 1e-12 and abs(dn / dn_ref - 1) < 1e-12
    assert abs(du.dual_norm(G) / dn_ref - 1) < 1e-12 and abs(du.layer_norm(G) / nrm_ref - 1) < 1e-12


def test_svd_failing_both_ways_raises_linalgerror(monkeypatch, rng):
    import scipy.linalg

    G = rng.standard_normal((5, 3))
    monkeypatch.setattr(np.linalg, "svd", _garbage_svd(np.linalg.svd))
    monkeypatch.setattr(scipy.linalg, "svd", _garbage_svd(scipy.linalg.svd))
    for fn in (lambda: du.duality_map(G, "spectral"), lambda: du.dual_norm(G), lambda: du.layer_norm(G)):
        with pytest.raises(np.linalg.LinAlgError, match="non-finite"):
            fn()
    with pytest.raises(np.linalg.LinAlgError, match="NaN or Inf"):
        du.dual_norm(np.array([[np.nan, 1.0], [0.0, 1.0]]))


@pytest.mark.parametrize("fn", [du.layer_norm, du.dual_norm, du.duality_map])
@pytest.mark.parametrize("bad, exc", [(1j, TypeError), (None, TypeError), ("2", TypeError), (True, TypeError),
                                      (0.0, ValueError), (float("nan"), ValueError), (-1.0, ValueError)])
def test_scale_errors_name_scale(fn, bad, exc):
    """issue 11: scale=1j or None raised float()'s error naming nothing."""
    with pytest.raises(exc, match=r"^scale must be"):
        fn(np.eye(3), "spectral", scale=bad)


@pytest.mark.parametrize("G", [np.eye(3, dtype=np.int64), [[1.0, 0.0], [0.0, 1.0]], np.eye(3, dtype=np.float16),
                               np.eye(3, dtype=complex), None, "G"])
def test_dual_norm_and_duality_map_errors_name_G_like_layer_norm_names_W(G):
    """issue 11: dual_norm's errors about G named 'W' (as_matrix's name); both functions refuse the same inputs."""
    with pytest.raises(TypeError, match=r"^W must"):
        du.layer_norm(G)
    for fn in (du.dual_norm, du.duality_map, du.polar_factor):
        with pytest.raises(TypeError, match=r"^G must"):
            fn(G)
    with pytest.raises(ValueError, match=r"^G must have ndim >= 1"):
        du.dual_norm(np.float64(1.0) * np.ones(()))


# --- the Gram route (NumPy, min(n, m) >= GRAM_MIN_SIZE) against a float64 SVD ----------

def _spectrum_case(rng, n, m, kappa, dtype, rank=None):
    r = min(n, m) if rank is None else rank
    s = np.geomspace(1.0, 1.0 / kappa, r)
    G, _ = _with_singular_values(rng, n, m, s)
    return G.astype(dtype)


def _svd64_reference(G):
    """``(ρ, ‖G‖_nuc, ‖G‖_op)`` from a float64 SVD of ``G`` with the same rank tolerance."""
    U, s, Vt = np.linalg.svd(G.astype(np.float64), full_matrices=False)
    r = int(np.sum(s > du._rtol(G) * s[0]))
    return s[:r].sum() * (U[:, :r] @ Vt[:r]), s[:r].sum(), s[0]


@pytest.mark.parametrize("n,m,kappa,dtype,rank", [
    (300, 200, 1e2, np.float32, None),       # tall, well conditioned
    (200, 300, 1e4, np.float32, None),       # ill conditioned (near float32's rank tolerance)
    (520, 600, 3e4, np.float32, None),       # the smallest singular values below the tolerance: dropped
    (520, 600, 1e2, np.float32, 40),         # rank deficient
    (120, 90, 1e3, np.float64, None),
    (120, 90, 1e7, np.float64, None),        # not resolved by the Gram matrix: the SVD is used
    (90, 120, 1e2, np.float64, 30),          # rank deficient float64: the SVD is used
])
def test_gram_route_matches_float64_svd(rng, n, m, kappa, dtype, rank):
    """Duality map, dual norm and layer norm exact to 1e-6 relative (float32 output: its
    rounding, ~6e-8) on ill-conditioned and rank-deficient inputs, whichever route is taken."""
    G = _spectrum_case(rng, n, m, kappa, dtype, rank)
    rho_ref, nuc_ref, op_ref = _svd64_reference(G)
    rho, dn = du.duality_map(G, "spectral")
    assert rho.dtype == dtype and rho.shape == G.shape
    assert rel_err(rho.astype(np.float64), rho_ref) < 1e-6
    assert abs(dn / nuc_ref - 1) < 1e-6 and abs(du.dual_norm(G) / nuc_ref - 1) < 1e-6
    assert abs(du.layer_norm(G) / op_ref - 1) < 1e-6
    r = du.polar_factor(G)
    assert r.rank == int(np.sum(np.linalg.svd(G.astype(np.float64), compute_uv=False) > du._rtol(G) * op_ref))


def test_gram_route_taken_where_it_resolves_the_spectrum(rng):
    """float32 (wide enough) always resolves; float64 only when every singular value does."""
    assert du._gram_spectrum(_spectrum_case(rng, 520, 600, 1e4, np.float32)) is not None
    assert du._gram_spectrum(_spectrum_case(rng, 520, 600, 1e2, np.float32, 40)) is not None
    assert du._gram_spectrum(_spectrum_case(rng, 120, 90, 1e3, np.float64)) is not None
    assert du._gram_spectrum(_spectrum_case(rng, 120, 90, 1e7, np.float64)) is None
    assert du._gram_spectrum(_spectrum_case(rng, 90, 120, 1e2, np.float64, 30)) is None
    assert du._gram_spectrum(rng.standard_normal((8, 8))) is None          # small: the SVD
    assert du._gram_spectrum(np.zeros((64, 64))) is None                   # zero: the SVD path's zeros
    rho, dn = du.duality_map(np.zeros((64, 70), dtype=np.float32))
    assert dn == 0.0 and not rho.any()


def test_gram_route_non_finite_goes_to_the_svd_errors():
    G = np.ones((64, 64))
    G[3, 4] = np.nan
    assert du._gram_spectrum(G) is None and du._top_singular_value(G) is None
    with pytest.raises(np.linalg.LinAlgError):
        du.dual_norm(G)
    with pytest.raises(np.linalg.LinAlgError):
        du.layer_norm(G)


@pytest.mark.parametrize("case", ["gauss", "gauss_f32_wide", "triple_top", "close_top_rank5", "rank1", "decaying"])
def test_top_singular_value_lanczos_matches_float64_svd(rng, case):
    """layer_norm's Lanczos route (NumPy, min(n, m) >= GRAM_MIN_SIZE): σ_max to 1e-13 relative
    against a float64 SVD, on clustered (equal or 3e-7-apart) top singular values, low rank
    and ill-conditioned matrices; a zero matrix gives 0 (by the SVD)."""
    if case == "gauss":
        M = rng.standard_normal((200, 150))
    elif case == "gauss_f32_wide":
        M = rng.standard_normal((120, 300)).astype(np.float32)
    else:
        s = {"triple_top": np.r_[1.0, 1.0, 1.0, np.geomspace(0.5, 1e-8, 67)],
             "close_top_rank5": np.r_[3.0, 3.0 - 1e-6, 2.5, 1.0, 0.1],
             "rank1": np.r_[2.0],
             "decaying": np.geomspace(1.0, 1e-12, 70)}[case]
        M, _ = _with_singular_values(rng, 130, 90, s)
    ref = np.linalg.svd(M.astype(np.float64), compute_uv=False)[0]
    top = du._top_singular_value(M)
    assert top is not None and abs(top / ref - 1) < 1e-13
    assert abs(du.layer_norm(M, scale=2.0) / (2.0 * ref) - 1) < 1e-13
    assert du._top_singular_value(np.zeros((64, 70))) is None and du.layer_norm(np.zeros((64, 70))) == 0.0


def test_top_singular_value_without_convergence_leaves_it_to_the_svd(monkeypatch, rng):
    M = rng.standard_normal((100, 80))
    monkeypatch.setattr(du, "TOP_SV_MAXITER", 4)
    assert du._top_singular_value(M) is None
    assert abs(du.layer_norm(M) / np.linalg.norm(M, 2) - 1) < 1e-13
