"""Exact second-order layer backprop (method inspired by arXiv 2104.03804) against dense Hessians of the reference MLP."""

from __future__ import annotations

import numpy as np
import pytest

from curvlab.models.layer_hessians import (
    LayerCurvature,
    activation_derivatives_ref,
    layer_curvature,
    layer_hessian_block,
    layer_hessian_factors,
    output_derivatives,
)
from curvlab.models.mlp import MLP
from tests.conftest import rel_err


def _problem(act, loss, B, sizes=(4, 3, 4, 5), seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    model = MLP(list(sizes), activation=act, loss=loss, dtype=dtype)
    p = model.init_params(rng)
    p = p + dtype(0.3) * rng.standard_normal(p.shape).astype(dtype)   # off the init, larger curvature terms
    X = rng.standard_normal((B, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], B) if loss == "cross_entropy" else rng.standard_normal((B, sizes[-1])).astype(dtype)
    return model, p, X, y


@pytest.mark.parametrize("act", ["tanh", "softplus", "sigmoid", "relu"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("B", [1, 3])
def test_layer_block_equals_dense_hessian_block(act, loss, B):
    model, p, X, y = _problem(act, loss, B)
    H = model.dense_hessian(p, X, y)
    f = layer_hessian_factors(model, p, X, y)
    for l, fl in enumerate(f):
        sl = model.layout.slice(l)
        blk = sum(fl.block(b) for b in range(B)) / B
        assert rel_err(blk, H[sl, sl]) <= 1e-9, (act, loss, B, l)
        # the Kronecker operator of the same factors applies the same block
        op = layer_hessian_block(fl)
        assert rel_err(op.to_dense(), H[sl, sl]) <= 1e-9
        # closed-form eigenvalues of the block equal eigvalsh of the dense Hessian's block
        assert rel_err(op.eigvalsh(), np.linalg.eigvalsh(0.5 * (H[sl, sl] + H[sl, sl].T))) <= 1e-9


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_gradient_and_standalone_path_agree_with_mlp(act):
    model, p, X, y = _problem(act, "cross_entropy", 5)
    f = layer_hessian_factors(model, p, X, y)
    _, g = model.loss_and_grad(p, X, y)
    assert rel_err(model.layout.pack([fl.grad for fl in f]), g) <= 1e-12
    f2 = layer_curvature(model.layout.unpack(p), X, y, activation=act, loss="cross_entropy")
    for a, b in zip(f, f2):
        assert rel_err(b.M, a.M) <= 1e-13 and rel_err(b.delta, a.delta) <= 1e-13 and rel_err(b.a, a.a) == 0.0


def test_finite_differences_of_exact_gradient_no_bias():
    """Bias-free weights (standalone path): block = central differences of the exact gradient."""
    rng = np.random.default_rng(1)
    Ws = [rng.standard_normal((3, 4)), rng.standard_normal((5, 3))]
    X = rng.standard_normal((3, 4))
    y = rng.integers(0, 5, 3)
    f = layer_curvature(Ws, X, y, activation="tanh")
    h = 1e-5
    for l in range(2):
        n, m = Ws[l].shape
        Hfd = np.empty((n * m, n * m))
        for k in range(n * m):
            E = np.zeros(n * m)
            E[k] = h
            Wp = list(Ws)
            Wm = list(Ws)
            Wp[l] = Ws[l] + E.reshape(n, m)
            Wm[l] = Ws[l] - E.reshape(n, m)
            gp = layer_curvature(Wp, X, y)[l].grad
            gm = layer_curvature(Wm, X, y)[l].grad
            Hfd[:, k] = ((gp - gm) / (2 * h)).ravel()
        assert rel_err(sum(f[l].block(b) for b in range(3)) / 3, Hfd) <= 1e-8


def test_relu_curvature_is_psd_and_equals_ggn_block():
    model, p, X, y = _problem("relu", "cross_entropy", 4)
    f = layer_hessian_factors(model, p, X, y)
    G = model.ggn_matmat(p, X, y, np.eye(model.n_params))
    for l, fl in enumerate(f):
        assert np.linalg.eigvalsh(fl.M).min() >= -1e-12
        sl = model.layout.slice(l)
        assert rel_err(sum(fl.block(b) for b in range(4)) / 4, G[sl, sl]) <= 1e-12


def test_tanh_curvature_can_be_indefinite():
    """The σ'' term makes hidden M_l indefinite for smooth activations (why spectral adjustment exists)."""
    found = False
    for seed in range(5):
        model, p, X, y = _problem("tanh", "cross_entropy", 8, seed=seed)
        f = layer_hessian_factors(model, p, X, y)
        found |= bool(np.linalg.eigvalsh(f[0].M).min() < -1e-6)
    assert found


def test_column_major_block_swaps_factors():
    model, p, X, y = _problem("tanh", "cross_entropy", 1)
    H = model.dense_hessian(p, X, y)
    f = layer_hessian_factors(model, p, X, y)[1]
    n, m = model.layout.shapes[1]
    sl = model.layout.slice(1)
    perm = np.arange(n * m).reshape(n, m).T.ravel()        # column-major order of W
    Hc = H[sl, sl][np.ix_(perm, perm)]
    assert rel_err(np.kron(np.outer(f.a[0], f.a[0]), f.M[0]), Hc) <= 1e-9


def test_float32_model_gives_float64_factors():
    m64, p64, X64, y = _problem("tanh", "cross_entropy", 4)
    m32 = MLP([4, 3, 4, 5], activation="tanh", dtype=np.float32)
    f32 = layer_hessian_factors(m32, p64.astype(np.float32), X64.astype(np.float32), y)
    f64 = layer_hessian_factors(m64, p64, X64, y)
    for a, b in zip(f32, f64):
        assert a.M.dtype == np.float64
        assert rel_err(a.M, b.M) <= 1e-5    # float32 forward pass, float64 recursion


def test_output_derivatives_match_mlp_and_bad_input():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((4, 3))
    ell, d, M = output_derivatives(z, np.array([0, 2, 1, 1]))
    assert np.allclose(d.sum(1), 0, atol=1e-15) and np.allclose(M.sum(2), 0, atol=1e-15)
    # independent formulas: ℓ = logsumexp(z) - z_y, δ = p - e_y, M = diag(p) - p pᵀ
    from scipy.special import logsumexp, softmax

    yy, p = np.array([0, 2, 1, 1]), softmax(z, axis=1)
    np.testing.assert_allclose(ell, logsumexp(z, axis=1) - z[np.arange(4), yy], rtol=1e-14)
    np.testing.assert_allclose(d, p - np.eye(3)[yy], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(M, np.stack([np.diag(q) - np.outer(q, q) for q in p]), rtol=1e-14, atol=1e-15)
    # the validated entry agrees with the reference MLP's loss head (checked against finite differences in test_mlp)
    from curvlab.models.mlp import loss_output_derivatives

    for loss, yy in (("cross_entropy", np.array([0, 2, 1, 1])), ("mse", rng.standard_normal((4, 3)))):
        got, ref = output_derivatives(z, yy, loss), loss_output_derivatives(loss, z, yy)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="labels"):
        output_derivatives(z, np.array([0, 3, 1, 1]))
    with pytest.raises(ValueError, match="loss"):
        output_derivatives(z, np.zeros(4, int), "hinge")
    with pytest.raises(ValueError, match="weights\\[1\\]"):
        layer_curvature([np.ones((3, 5)), np.ones((2, 7))], np.ones((2, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match="activation"):
        activation_derivatives_ref("gelu", z)


def test_backends(xp):
    rng = np.random.default_rng(3)
    Ws = [rng.standard_normal((3, 5)), rng.standard_normal((4, 4))]
    X = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, 6)
    ref = layer_curvature(Ws, X, y, activation="softplus")
    got = layer_curvature([xp.asarray(W) for W in Ws], xp.asarray(X), xp.asarray(y), activation="softplus")
    for a, b in zip(got, ref):
        assert isinstance(a, LayerCurvature)
        assert rel_err(a.M, b.M) <= 1e-12 and rel_err(a.delta, b.delta) <= 1e-12


def test_layer_curvature_refuses_empty_batches_missing_and_framework_labels():
    """An empty batch used to return NaN factors (0/0); y=None an unclear ValueError about
    'object'; a torch label tensor went through np.asarray silently."""
    rng = np.random.default_rng(0)
    Ws = [rng.standard_normal((3, 5)), rng.standard_normal((2, 4))]
    X, y = rng.standard_normal((6, 4)), np.array([0, 1, 1, 0, 1, 0])
    with pytest.raises(ValueError, match=r"X is an empty batch \(shape \(0, 4\)\)"):
        layer_curvature(Ws, X[:0], y[:0])
    with pytest.raises(TypeError, match="y is required"):
        layer_curvature(Ws, X, None)
    with pytest.raises(TypeError, match="y is required"):
        output_derivatives(np.zeros((2, 3)), None, "mse")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got range \[-1, 1\]"):
        layer_curvature(Ws, X, np.array([0, 1, -1, 0, 1, 0]))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="^y must be a numpy array, got torch.Tensor"):
        layer_curvature(Ws, X, torch.as_tensor(y))
