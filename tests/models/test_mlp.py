"""Exactness tests of the reference MLP (curvlab.models.mlp).

References are built independently of the code under test: central finite
differences of the loss (for the gradient) and of the exact gradient (for the
dense Hessian, symmetrised), finite-difference Jacobians of the outputs (for the
GGN), and single-sample gradients (for per-sample gradients / the Fisher).

Tolerances: float64 exactness checks at 1e-8 relative (``RTOL[float64]``; the
finite-difference references themselves are accurate to ~1e-9); float32 results
are compared with the float64 result of the same parameters at 2e-3 relative
(``RTOL[float32]``), the precision float32 reaches after a few layers of sums.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla

from curvlab import backend
from curvlab.layout import Layout
from curvlab.linalg.operators import LinearOperator
from curvlab.models.mlp import (
    ACTIVATIONS,
    LOSSES,
    MLP,
    ForwardCache,
    activation_derivatives,
    dense_layout,
    fisher_operator,
    ggn_operator,
    hessian_operator,
    loss_output_derivatives,
)
from tests.conftest import RTOL, rel_err

SIZES = [4, 5, 3, 3]
B = 6
FD_H = 1e-6  # central-difference step in float64
CASES = [(a, l) for a in ACTIVATIONS for l in LOSSES]


def _problem(act, loss, xp=np, dtype=np.float64, seed=0, sizes=SIZES, B=B):
    """A model on ``xp`` with perturbed parameters (non-zero biases) and a batch."""
    rng = np.random.default_rng(seed)
    model = MLP(sizes, activation=act, loss=loss, dtype=dtype, xp=xp)
    p = backend.to_numpy(model.init_params(rng)).astype(np.float64)
    p += 0.3 * rng.standard_normal(p.shape)
    X = rng.standard_normal((B, sizes[0]))
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], size=B)
    else:
        y = rng.standard_normal((B, sizes[-1]))
    return model, xp.asarray(p.astype(dtype)), xp.asarray(X.astype(dtype)), xp.asarray(y), rng


def _numpy_twin(model):
    return MLP(model.sizes, activation=model.activation, loss=model.loss_name, dtype=np.float64)


def _np(a):
    return np.asarray(backend.to_numpy(a), dtype=np.float64)


def _fd_grad(model, p, X, y, h=FD_H):
    P = p.size
    g = np.empty(P)
    for i in range(P):
        e = np.zeros(P)
        e[i] = h
        g[i] = (model.loss(p + e, X, y) - model.loss(p - e, X, y)) / (2 * h)
    return g


def _fd_hessian(model, p, X, y, h=FD_H):
    """Columns H e_i by central differences of the exact gradient, symmetrised."""
    P = p.size
    H = np.empty((P, P))
    for i in range(P):
        e = np.zeros(P)
        e[i] = h
        H[:, i] = (model.grad(p + e, X, y) - model.grad(p - e, X, y)) / (2 * h)
    return 0.5 * (H + H.T)


_H_CACHE: dict = {}


def _reference(act, loss):
    """float64 NumPy model, data and FD Hessian for a case (cached across tests)."""
    key = (act, loss)
    if key not in _H_CACHE:
        model, p, X, y, _ = _problem(act, loss)
        _H_CACHE[key] = (model, p, X, y, _fd_hessian(model, p, X, y))
    return _H_CACHE[key]


# ---------------------------------------------------------------------------
# layout, forward, derivatives of the pieces
# ---------------------------------------------------------------------------
def test_dense_layout_pack_unpack_views():
    lay = dense_layout([(3, 5), (2, 4)])
    assert isinstance(lay, Layout)  # one layout class: dense_layout builds a curvlab.layout.Layout
    assert lay.size == 23 and lay.offsets == (0, 15, 23) and lay.names == ("W1", "W2")
    assert lay.shapes == ((3, 5), (2, 4))
    flat = np.arange(23.0)
    W1, W2 = lay.unpack(flat)
    assert W1.shape == (3, 5) and W2.shape == (2, 4)
    assert np.shares_memory(W1, flat) and np.shares_memory(W2, flat)
    assert W1[1, 2] == 1 * 5 + 2  # row-major vec
    W2[0, 0] = -1.0
    assert flat[15] == -1.0  # views write through
    np.testing.assert_array_equal(lay.pack([W1, W2]), flat)
    with pytest.raises(ValueError, match=r"parts\[1\] \(W2\).*\(2, 4\)"):
        lay.pack([W1, np.zeros((4, 2))])
    with pytest.raises(ValueError, match="flat"):
        lay.unpack(np.zeros(22))


def test_init_params_seeded_and_bias_zero():
    m = MLP([5, 7, 3])
    p1, p2 = m.init_params(3), m.init_params(np.random.default_rng(3))
    np.testing.assert_array_equal(p1, p2)
    assert p1.dtype == np.float64 and p1.shape == (m.n_params,)
    for W in m.layout.unpack(p1):
        np.testing.assert_array_equal(W[:, -1], 0.0)
    assert MLP([5, 7, 3], dtype=np.float32).init_params(0).dtype == np.float32


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_derivatives_fd(act, xp):
    z = np.linspace(-3.0, 3.0, 41) + 0.013  # avoid the relu kink
    s, ds, d2s = (_np(t) for t in activation_derivatives(act, xp.asarray(z)))
    h = 1e-5
    sp = _np(activation_derivatives(act, xp.asarray(z + h))[0])
    sm = _np(activation_derivatives(act, xp.asarray(z - h))[0])
    np.testing.assert_allclose(ds, (sp - sm) / (2 * h), rtol=1e-8, atol=1e-9)
    dsp = _np(activation_derivatives(act, xp.asarray(z + h))[1])
    dsm = _np(activation_derivatives(act, xp.asarray(z - h))[1])
    np.testing.assert_allclose(d2s, (dsp - dsm) / (2 * h), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_output_derivatives_fd(loss, rng):
    K = 4
    z = rng.standard_normal((3, K))
    y = rng.integers(0, K, 3) if loss == "cross_entropy" else rng.standard_normal((3, K))
    ell, g, M = loss_output_derivatives(loss, z, y)
    h = 1e-6
    for k in range(K):
        e = np.zeros(K)
        e[k] = h
        ep, gp, _ = loss_output_derivatives(loss, z + e, y)
        em, gm, _ = loss_output_derivatives(loss, z - e, y)
        np.testing.assert_allclose(g[:, k], (ep - em) / (2 * h), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(M[:, :, k], (gp - gm) / (2 * h), rtol=1e-7, atol=1e-9)
    if loss == "cross_entropy":  # stable for huge logits
        ell_big, _, _ = loss_output_derivatives(loss, 1e4 * z, y)
        assert np.all(np.isfinite(ell_big))


def test_forward_cache_pieces(xp):
    model, p, X, y, _ = _problem("softplus", "cross_entropy", xp=xp)
    cache = model.forward_cache(p, X)
    assert isinstance(cache, ForwardCache)
    Ws = model.layout.unpack(p)
    for l, (z, at) in enumerate(zip(cache.z, cache.a_tilde)):
        assert at.shape == (B, model.sizes[l] + 1) and z.shape == (B, model.sizes[l + 1])
        np.testing.assert_array_equal(_np(at[:, -1]), 1.0)
        np.testing.assert_allclose(_np(z), _np(at @ Ws[l].T), rtol=1e-13)
        if l > 0:
            prev = _np(activation_derivatives("softplus", cache.z[l - 1])[0])
            np.testing.assert_allclose(_np(at[:, :-1]), prev, rtol=1e-13)
    np.testing.assert_allclose(_np(cache.output), _np(model.forward(p, X)), rtol=1e-13)
    np.testing.assert_array_equal(_np(cache.a_tilde[0][:, :-1]), _np(X))


# ---------------------------------------------------------------------------
# gradient, per-sample gradients, Hessian-vector products
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("act,loss", CASES)
def test_gradient_vs_finite_differences(act, loss, xp):
    model, p, X, y, _ = _problem(act, loss, xp=xp)
    f, g = model.loss_and_grad(p, X, y)
    assert isinstance(f, float) and g.shape == (model.n_params,)
    assert abs(f - model.loss(p, X, y)) <= 1e-14 * max(1.0, abs(f))
    twin = _numpy_twin(model)
    g_fd = _fd_grad(twin, _np(p), _np(X), backend.to_numpy(y))
    assert rel_err(g, g_fd) < 1e-7


@pytest.mark.parametrize("loss", LOSSES)
def test_per_sample_grads_mean_and_single_sample(loss, xp):
    model, p, X, y, _ = _problem("tanh", loss, xp=xp)
    G = model.per_sample_grads(p, X, y)
    assert G.shape == (B, model.n_params)
    assert rel_err(G.mean(axis=0), model.grad(p, X, y)) < 1e-13
    for b in (0, B - 1):
        assert rel_err(G[b], model.grad(p, X[b : b + 1], y[b : b + 1])) < 1e-13


@pytest.mark.parametrize("act,loss", CASES)
def test_hvp_vs_dense_fd_hessian(act, loss, xp):
    twin, p, X, y, H = _reference(act, loss)
    model = MLP(SIZES, activation=act, loss=loss, xp=xp)
    rng = np.random.default_rng(1)
    v = rng.standard_normal(p.size)
    hv = model.hvp(xp.asarray(p), xp.asarray(X), xp.asarray(y), xp.asarray(v))
    assert rel_err(hv, H @ v) < RTOL[np.float64]
    # also against finite differences of the gradient along v directly
    h = 1e-6
    hv_fd = (twin.grad(p + h * v, X, y) - twin.grad(p - h * v, X, y)) / (2 * h)
    assert rel_err(hv, hv_fd) < RTOL[np.float64]


@pytest.mark.parametrize("act,loss", [("tanh", "cross_entropy"), ("softplus", "mse"), ("relu", "cross_entropy")])
def test_dense_hessian_and_matmat(act, loss, xp):
    twin, p, X, y, H = _reference(act, loss)
    model = MLP(SIZES, activation=act, loss=loss, xp=xp)
    pa, Xa, ya = xp.asarray(p), xp.asarray(X), xp.asarray(y)
    Hd = model.dense_hessian(pa, Xa, ya, block=7)
    assert rel_err(Hd, H) < RTOL[np.float64]
    assert rel_err(Hd, Hd.T) < 1e-13
    V = np.random.default_rng(2).standard_normal((p.size, 5))
    HV = model.hvp_matmat(pa, Xa, ya, xp.asarray(V))
    assert HV.shape == (p.size, 5)
    cols = np.stack([_np(model.hvp(pa, Xa, ya, xp.asarray(V[:, j]))) for j in range(5)], axis=1)
    assert rel_err(HV, cols) < 1e-13


def _fd_output_jacobians(model, p, X, h=FD_H):
    """J[b] = ∂z_L(x_b)/∂θ, shape (B, K, P), by central differences of the forward pass."""
    P = p.size
    J = np.empty((X.shape[0], model.sizes[-1], P))
    for i in range(P):
        e = np.zeros(P)
        e[i] = h
        J[:, :, i] = (model.forward(p + e, X) - model.forward(p - e, X)) / (2 * h)
    return J


@pytest.mark.parametrize("act,loss", [("tanh", "cross_entropy"), ("sigmoid", "mse"), ("softplus", "cross_entropy")])
def test_ggn_vs_jacobian_reference(act, loss, xp):
    twin, p, X, y, _ = _reference(act, loss)
    J = _fd_output_jacobians(twin, p, X)
    _, _, M = loss_output_derivatives(loss, twin.forward(p, X), y)
    G_ref = np.einsum("bkp,bkl,blq->pq", J, M, J) / X.shape[0]
    model = MLP(SIZES, activation=act, loss=loss, xp=xp)
    op = ggn_operator(model, xp.asarray(p), xp.asarray(X), xp.asarray(y))
    assert op.symmetric and op.psd
    G = op.to_dense()
    assert rel_err(G, G_ref) < RTOL[np.float64]
    assert np.linalg.eigvalsh(_np(G)).min() > -1e-10 * np.abs(G_ref).max()
    v = np.random.default_rng(3).standard_normal(p.size)
    assert rel_err(model.ggn_vp(xp.asarray(p), xp.asarray(X), xp.asarray(y), xp.asarray(v)), G_ref @ v) < 1e-8


@pytest.mark.parametrize("sizes", [[4, 3], [7, 1]])
def test_ggn_equals_hessian_for_linear_model_with_mse(sizes, xp):
    model, p, X, y, _ = _problem("tanh", "mse", xp=xp, sizes=sizes)
    H = model.dense_hessian(p, X, y)
    G = ggn_operator(model, p, X, y).to_dense()
    assert rel_err(G, H) < 1e-13
    # the Hessian of a linear least-squares model is the FD one too
    twin = _numpy_twin(model)
    assert rel_err(H, _fd_hessian(twin, _np(p), _np(X), _np(y))) < RTOL[np.float64]


def test_ggn_differs_from_hessian_for_deep_linear_net():
    # W2 W1 x is not linear in the parameters: the residual term makes H != GGN
    model, p, X, y, _ = _problem("identity", "mse", sizes=[4, 5, 3])
    H = model.dense_hessian(p, X, y)
    assert rel_err(ggn_operator(model, p, X, y).to_dense(), H) > 1e-3


@pytest.mark.parametrize("loss", LOSSES)
def test_fisher_vs_per_sample_grads(loss, xp):
    model, p, X, y, rng = _problem("softplus", loss, xp=xp)
    G = _np(model.per_sample_grads(p, X, y))
    F_ref = G.T @ G / B
    op = fisher_operator(model, p, X, y)
    assert op.symmetric and op.psd
    assert rel_err(op.to_dense(), F_ref) < 1e-12
    v = rng.standard_normal(model.n_params)
    assert rel_err(model.fisher_vp(p, X, y, xp.asarray(v)), F_ref @ v) < 1e-12


# ---------------------------------------------------------------------------
# directional curvature dᵀHd (forward / adjoint modes)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("act,loss", CASES)
def test_curvature_modes_equal_dHd(act, loss, xp):
    twin, p, X, y, H = _reference(act, loss)
    model = MLP(SIZES, activation=act, loss=loss, xp=xp)
    pa, Xa, ya = xp.asarray(p), xp.asarray(X), xp.asarray(y)
    d = np.random.default_rng(4).standard_normal(p.size)
    da = xp.asarray(d)
    c_ref = float(d @ H @ d)
    c_hvp = float(d @ _np(model.hvp(pa, Xa, ya, da)))
    c_fwd = model.curvature(pa, Xa, ya, da, mode="forward")
    f, g, c_adj = model.grad_and_curvature(pa, Xa, ya, da)
    assert isinstance(c_fwd, float) and isinstance(c_adj, float)
    assert abs(c_fwd - c_hvp) <= 1e-10 * abs(c_hvp)
    assert abs(c_adj - c_hvp) <= 1e-10 * abs(c_hvp)
    assert abs(c_fwd - c_ref) <= RTOL[np.float64] * np.abs(H).sum() * (d @ d) / p.size
    assert abs(model.curvature(pa, Xa, ya, da, mode="adjoint") - c_adj) <= 1e-14 * abs(c_adj)
    # the adjoint mode returns the same loss and gradient as loss_and_grad
    f2, g2 = model.loss_and_grad(pa, Xa, ya)
    assert abs(f - f2) <= 1e-14 * abs(f2) and rel_err(g, g2) < 1e-14


def test_curvature_second_difference_and_symmetries():
    model, p, X, y, rng = _problem("tanh", "cross_entropy")
    d = rng.standard_normal(p.size)
    c = model.curvature(p, X, y, d, mode="forward")
    h = 1e-4
    c_fd = (model.loss(p + h * d, X, y) - 2 * model.loss(p, X, y) + model.loss(p - h * d, X, y)) / h**2
    assert abs(c - c_fd) <= 1e-6 * abs(c)
    for mode in ("forward", "adjoint"):
        assert abs(model.curvature(p, X, y, -d, mode=mode) - c) <= 1e-12 * abs(c)
        assert abs(model.curvature(p, X, y, 3.0 * d, mode=mode) - 9.0 * c) <= 1e-12 * abs(9 * c)
    assert model.curvature(p, X, y, np.zeros_like(d), mode="forward") == 0.0
    with pytest.raises(ValueError, match="mode"):
        model.curvature(p, X, y, d, mode="taylor2")


def test_curvature_single_linear_layer_equals_gn():
    # softmax regression: dᵀHd is the Gauss-Newton value z'ᵀ M z' (paper 003 identity 5)
    model, p, X, y, rng = _problem("tanh", "cross_entropy", sizes=[4, 3])
    d = rng.standard_normal(p.size)
    gn = float(d @ model.ggn_vp(p, X, y, d))
    for mode in ("forward", "adjoint"):
        assert abs(model.curvature(p, X, y, d, mode=mode) - gn) <= 1e-12 * abs(gn)


# ---------------------------------------------------------------------------
# operators and eigsh
# ---------------------------------------------------------------------------
def test_hessian_operator_eigsh_vs_eigvalsh(xp):
    twin, p, X, y, H = _reference("tanh", "cross_entropy")
    model = MLP(SIZES, xp=xp)
    op = hessian_operator(model, xp.asarray(p), xp.asarray(X), xp.asarray(y))
    assert isinstance(op, LinearOperator) and op.symmetric and not op.psd
    assert op.shape == (p.size, p.size) and op.dtype == np.float64
    ref = np.linalg.eigvalsh(H)
    ref_top = ref[np.argsort(-np.abs(ref))][:3]
    vals = sla.eigsh(op.to_scipy(), k=3, which="LM", tol=1e-13, v0=np.ones(p.size))[0]
    vals = vals[np.argsort(-np.abs(vals))]
    np.testing.assert_allclose(vals, ref_top, rtol=RTOL[np.float64])
    op.reset_counter()
    V = xp.asarray(np.random.default_rng(5).standard_normal((p.size, 4)))
    HV = op.matmat(V)
    assert op.n_matvecs == 4 and op.n_calls == 1
    assert rel_err(HV, H @ _np(V)) < RTOL[np.float64]


# ---------------------------------------------------------------------------
# float32
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("act,loss", [("tanh", "cross_entropy"), ("softplus", "mse"), ("relu", "mse"), ("sigmoid", "cross_entropy")])
def test_float32_matches_float64(act, loss, xp):
    """float32 results agree with float64 on the same parameters to RTOL[float32] = 2e-3."""
    m64, p, X, y, rng = _problem(act, loss, xp=xp)
    m32 = MLP(SIZES, activation=act, loss=loss, dtype=np.float32, xp=xp)
    p32, X32 = p.astype(np.float32), X.astype(np.float32)
    p64 = p32.astype(np.float64)  # same (rounded) parameters for both
    y32 = y if loss == "cross_entropy" else y.astype(np.float32)
    tol = RTOL[np.float32]
    d = rng.standard_normal(p.size)
    d32, d64 = xp.asarray(d.astype(np.float32)), xp.asarray(d)
    f32, g32 = m32.loss_and_grad(p32, X32, y32)
    f64, g64 = m64.loss_and_grad(p64, X, y)
    assert g32.dtype == np.float32
    assert abs(f32 - f64) <= tol * abs(f64) and rel_err(g32, g64) < tol
    hv32 = m32.hvp(p32, X32, y32, d32)
    assert hv32.dtype == np.float32
    assert rel_err(hv32, m64.hvp(p64, X, y, d64)) < tol
    assert rel_err(m32.ggn_vp(p32, X32, y32, d32), m64.ggn_vp(p64, X, y, d64)) < tol
    assert rel_err(m32.fisher_vp(p32, X32, y32, d32), m64.fisher_vp(p64, X, y, d64)) < tol
    c64 = m64.curvature(p64, X, y, d64)
    scale = float(np.linalg.norm(_np(m64.hvp(p64, X, y, d64))) * np.linalg.norm(d))
    for mode in ("forward", "adjoint"):
        assert abs(m32.curvature(p32, X32, y32, d32, mode=mode) - c64) <= tol * scale


# ---------------------------------------------------------------------------
# bad input and the NaN policy
# ---------------------------------------------------------------------------
def test_bad_shapes_and_dtypes_name_the_argument():
    model, p, X, y, _ = _problem("tanh", "cross_entropy")
    with pytest.raises(ValueError, match=r"X must have shape \(B, 4\), got \(6, 5\)"):
        model.loss(p, np.zeros((6, 5)), y)
    with pytest.raises(ValueError, match=r"X must have shape"):
        model.loss(p, np.zeros(4), y)
    with pytest.raises(ValueError, match=rf"params must have shape \({p.size},\), got \({p.size - 1},\)"):
        model.loss(p[:-1], X, y)
    with pytest.raises(TypeError, match="params must have dtype float64.*got float32"):
        model.loss(p.astype(np.float32), X, y)
    with pytest.raises(TypeError, match="params"):
        model.loss(list(p), X, y)
    with pytest.raises(ValueError, match=r"y must have shape \(6,\).*got \(5,\)"):
        model.loss(p, X, y[:5])
    with pytest.raises(TypeError, match="y must hold integer"):
        model.loss(p, X, y.astype(np.float64))
    with pytest.raises(TypeError, match="X has (dtype )?complex"):
        model.loss(p, X.astype(np.complex128), y)
    with pytest.raises(ValueError, match=rf"v must have shape \({p.size},\), got \(3,\)"):
        model.hvp(p, X, y, np.ones(3))
    with pytest.raises(ValueError, match=rf"V must have shape \({p.size}, k\)"):
        model.hvp_matmat(p, X, y, np.ones(p.size))
    with pytest.raises(TypeError, match="d must be a real float"):
        model.curvature(p, X, y, np.ones(p.size, dtype=np.int64))
    mse, pm, Xm, ym, _ = _problem("tanh", "mse")
    with pytest.raises(ValueError, match=r"y must have shape \(6, 3\).*got \(6, 2\)"):
        mse.loss(pm, Xm, ym[:, :2])
    with pytest.raises(ValueError, match="activation"):
        MLP([2, 3], activation="gelu")
    with pytest.raises(ValueError, match="loss"):
        MLP([2, 3], loss="hinge")
    with pytest.raises(ValueError, match="sizes"):
        MLP([3])
    with pytest.raises(TypeError, match="dtype"):
        MLP([2, 3], dtype=np.int32)


def test_empty_batch_and_labels_out_of_range():
    model, p, X, y, _ = _problem("tanh", "cross_entropy")
    with pytest.raises(ValueError, match="empty batch"):
        model.loss_and_grad(p, X[:0], y[:0])
    with pytest.raises(ValueError, match="empty batch"):
        model.curvature(p, X[:0], y[:0], np.ones(p.size))
    bad = y.copy()
    bad[0] = 3
    with pytest.raises(ValueError, match=r"y labels must lie in \[0, 2\], got values in \[.*3\]"):
        model.loss(p, X, bad)
    bad[0] = -1
    with pytest.raises(ValueError, match="y labels"):
        model.hvp(p, X, bad, np.ones(p.size))
    with pytest.raises(ValueError, match="y labels"):
        hessian_operator(model, p, X, bad)


def test_integer_X_and_other_float_directions_are_cast():
    model, p, X, y, rng = _problem("tanh", "cross_entropy")
    Xi = np.round(3 * X).astype(np.int64)
    assert rel_err(model.grad(p, Xi, y), model.grad(p, Xi.astype(np.float64), y)) == 0.0
    v = rng.standard_normal(p.size).astype(np.float32)
    hv = model.hvp(p, X, y, v)
    assert hv.dtype == np.float64
    assert rel_err(hv, model.hvp(p, X, y, v.astype(np.float64))) == 0.0


def test_nan_policy_propagate_and_raise():
    model, p, X, y, _ = _problem("tanh", "cross_entropy")
    pn = p.copy()
    pn[3] = np.nan
    with np.errstate(invalid="ignore"):
        f, g = model.loss_and_grad(pn, X, y)
        assert np.isnan(f) and np.isnan(g).any()
        assert np.isnan(model.hvp(pn, X, y, np.ones(p.size))).any()
        assert np.isnan(model.curvature(pn, X, y, np.ones(p.size)))
        assert np.isnan(model.grad_and_curvature(pn, X, y, np.ones(p.size))[2])
    strict = MLP(SIZES, nan_policy="raise")
    with pytest.raises(FloatingPointError, match="params"):
        strict.loss_and_grad(pn, X, y)
    Xn = X.copy()
    Xn[0, 0] = np.inf
    with pytest.raises(FloatingPointError, match="X"):
        strict.hvp(p, Xn, y, np.ones(p.size))
    f_ok, _ = strict.loss_and_grad(p, X, y)
    assert np.isfinite(f_ok)
    with pytest.raises(ValueError, match="nan_policy"):
        MLP(SIZES, nan_policy="ignore")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_curvature_tiny_and_huge_directions(dtype):
    """Both modes rescale d internally: c(κd) = κ² c(d) over 40 orders of magnitude."""
    m64, p, X, y, rng = _problem("tanh", "cross_entropy")
    d = rng.standard_normal(p.size)
    c = m64.curvature(p, X, y, d, mode="forward")
    model = MLP(SIZES, dtype=dtype)
    pd, Xd = p.astype(dtype), X.astype(dtype)
    tol = 1e-10 if dtype == np.float64 else RTOL[np.float32]
    ref = m64.curvature(pd.astype(np.float64), X, y, d, mode="forward")
    for kappa in (1e-20, 1e-6, 1e6, 1e15):
        dk = (kappa * d).astype(dtype)
        for mode in ("forward", "adjoint"):
            ck = model.curvature(pd, Xd, y, dk, mode=mode)
            assert abs(ck / kappa**2 - ref) <= tol * abs(ref), (kappa, mode)
    if dtype == np.float64:
        assert abs(ref - c) <= 1e-15 * abs(c)


@pytest.mark.parametrize("act,loss", [("tanh", "cross_entropy"), ("softplus", "mse"), ("sigmoid", "cross_entropy")])
def test_layer_hessian_factors_match_single_sample_blocks(act, loss, xp):
    """δ_l ã ᵀ is the per-sample gradient block, M_l ⊗ ã ãᵀ the per-sample Hessian block."""
    model, p, X, y, _ = _problem(act, loss, xp=xp)
    factors = model.layer_hessian_factors(p, X, y)
    assert len(factors) == model.n_layers
    for b in (0, 3):
        Xb, yb = X[b : b + 1], y[b : b + 1]
        H = _np(model.dense_hessian(p, Xb, yb))
        g = _np(model.grad(p, Xb, yb))
        for l, (delta, M, at) in enumerate(factors):
            sl = model.layout.slice(l)
            dl, Ml, al = _np(delta[b]), _np(M[b]), _np(at[b])
            assert rel_err(np.outer(dl, al).ravel(), g[sl]) < 1e-12
            assert rel_err(np.kron(Ml, np.outer(al, al)), H[sl, sl]) < 1e-12
            assert rel_err(Ml, Ml.T) < 1e-13


# ---------------------------------------------------------------------------
# issue 11 (defect 4, defect 10) and issue 15: refused inputs, labels checked once
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("block", [-1, 0, 2.5, True, "8"])
def test_dense_hessian_block_must_be_a_positive_integer(block):
    """block=-1 used to return np.empty memory (no product was ever run)."""
    model, p, X, y, _ = _problem("tanh", "cross_entropy")
    with pytest.raises((ValueError, TypeError), match="block must be a positive integer"):
        model.dense_hessian(p, X, y, block=block)


def test_dense_hessian_any_positive_block_gives_the_same_matrix():
    model, p, X, y, _ = _problem("softplus", "mse")
    H = model.dense_hessian(p, X, y)
    for block in (1, 7, np.int64(5), H.shape[0] + 3):
        np.testing.assert_array_equal(model.dense_hessian(p, X, y, block=block), H)
    assert np.all(np.isfinite(H))


@pytest.mark.parametrize("loss", LOSSES)
def test_y_none_is_refused_by_every_loss_method(loss):
    """MLP.loss(p, X, None) used to broadcast ``logp[rows, None]`` into a wrong number."""
    model, p, X, _, _ = _problem("tanh", loss)
    v = np.ones(p.size)
    calls = [
        lambda: model.loss(p, X, None), lambda: model.loss_and_grad(p, X, None), lambda: model.grad(p, X, None),
        lambda: model.per_sample_losses(p, X, None), lambda: model.per_sample_grads(p, X, None),
        lambda: model.hvp(p, X, None, v), lambda: model.ggn_vp(p, X, None, v), lambda: model.fisher_vp(p, X, None, v),
        lambda: model.curvature(p, X, None, v), lambda: model.curvature(p, X, None, v, mode="adjoint"),
        lambda: model.dense_hessian(p, X, None), lambda: model.layer_hessian_factors(p, X, None),
        lambda: hessian_operator(model, p, X, None), lambda: ggn_operator(model, p, X, None),
        lambda: fisher_operator(model, p, X, None),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="y is required"):
            call()


@pytest.mark.parametrize("sizes,exc,where", [
    ([4, 2.9, 2], TypeError, r"sizes\[1\] must be a positive integer, got 2.9"),
    ([4, 3.0, 2], TypeError, r"sizes\[1\]"),
    ([4, True, 2], TypeError, r"sizes\[1\].*bool"),
    ([4, "3", 2], TypeError, r"sizes\[1\]"),
    ([4, -3, 2], ValueError, r"sizes\[1\] must be a positive integer, got -3"),
    ([0, 3], ValueError, r"sizes\[0\]"),
    ("43", TypeError, "sizes must be a sequence"),
    (4, TypeError, "sizes must be a sequence"),
])
def test_sizes_must_be_positive_integers(sizes, exc, where):
    """MLP([4, 2.9, 2]) used to truncate the width to 2."""
    with pytest.raises(exc, match=where):
        MLP(sizes)


def test_sizes_accept_numpy_integers():
    assert MLP(np.array([4, 3, 2])).sizes == [4, 3, 2]


@pytest.mark.parametrize("shapes,exc,where", [
    ([(-1, 3), (2, 2)], ValueError, r"shapes\[0\] must be a positive integer, got -1"),
    ([(3, 5), (2, 0)], ValueError, r"shapes\[1\]"),
    ([(3, 2.5)], TypeError, r"shapes\[0\]"),
    ([(3, 5, 1)], ValueError, r"shapes\[0\] must be a pair"),
    ([3], ValueError, r"shapes\[0\] must be a pair"),
])
def test_dense_layout_refuses_bad_shapes(shapes, exc, where):
    """dense_layout([(-1, 3), (2, 2)]) (then ParamLayout) used to report size 1 and negative offsets."""
    with pytest.raises(exc, match=where):
        dense_layout(shapes)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_framework_arrays_are_refused_naming_the_argument(framework):
    """torch tensors/JAX arrays used to fail deep inside NumPy (or, for X/y/v, pass through
    a silent float32 round trip); each argument now gets a TypeError naming it."""
    model, p, X, y, _ = _problem("tanh", "cross_entropy")
    if framework == "torch":
        torch = pytest.importorskip("torch")
        conv = torch.as_tensor
    else:
        jnp = pytest.importorskip("jax.numpy")
        conv = jnp.asarray
    v = np.ones(p.size)
    for name, call in [
        ("params", lambda: model.loss(conv(p), X, y)),
        ("X", lambda: model.loss(p, conv(X), y)),
        ("y", lambda: model.loss(p, X, conv(y))),
        ("v", lambda: model.hvp(p, X, y, conv(v))),
        ("V", lambda: model.ggn_matmat(p, X, y, conv(v[:, None]))),
        ("d", lambda: model.curvature(p, X, y, conv(v))),
        ("X", lambda: model.forward(p, conv(X))),
        ("X", lambda: hessian_operator(model, p, conv(X), y)),
    ]:
        with pytest.raises(TypeError, match=rf"^{name} must be a numpy array, got .*{framework}"):
            call()


@pytest.mark.parametrize("make", [hessian_operator, ggn_operator, fisher_operator])
def test_operators_check_labels_once_when_built(make, monkeypatch):
    """Issue 15: the label range is read once when the operator binds its data; the products
    (matvec and matmat) do no further check (0 host syncs per product)."""
    model, p, X, y, rng = _problem("tanh", "cross_entropy")
    calls = []
    real = model._check_labels
    monkeypatch.setattr(model, "_check_labels", lambda yy: (calls.append(1), real(yy))[1])
    op = make(model, p, X, y)
    assert len(calls) == 1
    V = rng.standard_normal((p.size, 3))
    direct = {hessian_operator: model.hvp_matmat, ggn_operator: model.ggn_matmat,
              fisher_operator: model.fisher_matmat}[make]
    ref = direct(p, X, y, V)
    assert len(calls) == 2  # a direct call checks once
    for _ in range(5):
        out_v = op @ V[:, 0]
        out_m = op @ V
    assert len(calls) == 2
    np.testing.assert_allclose(out_m, ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(out_v, ref[:, 0], rtol=1e-13, atol=1e-15)
    bad = y.copy()
    bad[2] = model.sizes[-1]
    with pytest.raises(ValueError, match="y labels must lie in"):
        make(model, p, X, bad)


def test_model_dtype_and_layout_arguments_of_the_wrong_type():
    model, p, X, y, _ = _problem("tanh", "cross_entropy")
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got 'foo'"):
        MLP([2, 3], dtype="foo")
    with pytest.raises(TypeError, match="shapes must be a sequence"):
        dense_layout(None)
    for make in (hessian_operator, ggn_operator, fisher_operator):
        for bad in ("mlp", None, 3):
            with pytest.raises(TypeError, match="model must be a curvlab.models.mlp.MLP"):
                make(bad, p, X, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_tangent_step_fused_equals_the_ufunc_formulas(dtype):
    """The one-pass Numba tangent step of tanh equals σ', σ''z'², σ'z', a + a' and
    σ'z'' + σ''z'² computed with NumPy (the fallback path, taken for strided arrays)."""
    from curvlab.models.activations import get_activation

    act = get_activation("tanh")
    rng = np.random.default_rng(7)
    a = np.tanh(rng.standard_normal((6, 5))).astype(dtype)
    z1, z2 = rng.standard_normal((2, 6, 5)).astype(dtype)
    s1_ref = 1 - a * a
    q_ref = -2 * a * s1_ref * z1 * z1
    a1_ref = s1_ref * z1
    for strided in (False, True):
        def buf():
            return np.empty((6, 10), dtype)[:, ::2] if strided else np.empty((6, 5), dtype)
        s1, q, S, w1 = buf(), buf(), buf(), buf()
        w1[...] = z1
        Q, none = act.tangent_step(a, w1, s1, q, np, S=S)
        assert none is None and Q is q
        np.testing.assert_allclose(s1, s1_ref, rtol=1e-6)
        np.testing.assert_allclose(q, q_ref, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(w1, a1_ref, rtol=1e-6)
        np.testing.assert_allclose(S, a + a1_ref, rtol=1e-6)
        w1[...], w2 = z1, buf()
        w2[...] = z2
        _, a2 = act.tangent_step(a, w1, s1, q, np, z2=w2)
        assert a2 is w2
        np.testing.assert_allclose(a2, s1_ref * z2 + q_ref, rtol=1e-5, atol=1e-6)
        w1[...] = z1
        _, a2 = act.tangent_step(a, w1, s1, q, np)
        assert a2 is q
        np.testing.assert_allclose(a2, q_ref, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(w1, a1_ref, rtol=1e-6)
    relu = get_activation("relu")
    w1 = z1.copy()
    assert relu.tangent_step(np.maximum(a, 0), w1, np.empty_like(a), np.empty_like(a), np) == (None, None)
