"""DSGD (curvlab.methods.dsgd, arXiv 1708.00523): bounds, greedy choice, guaranteed decrease, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curvlab.data import load_digits
from curvlab.linalg import duality as du
from curvlab.methods.dsgd import (
    DSGD,
    DSGDState,
    activation_derivative_bounds,
    dsgd_train,
    mlp_layer_smoothness_bound,
)
from curvlab.models.mlp import MLP
from tests.conftest import rel_err


@pytest.fixture(scope="module")
def digits_small():
    ds = load_digits()
    return ds.X_train[:300].astype(np.float64), ds.y_train[:300]


# --- separable quadratic with known per-block constants -------------------------------

def _quadratic(Ls, targets):
    """f(W) = Σ_i L_i/2 ‖W_i − T_i‖_F²: exactly L_i-smooth in block i for the Frobenius norm."""

    def loss_and_grad(params, X=None, y=None):
        f = sum(0.5 * L * float(np.sum((W - T) ** 2)) for L, W, T in zip(Ls, params, targets))
        return f, [L * (W - T) for L, W, T in zip(Ls, params, targets)]

    return loss_and_grad


def _aniso_quadratic(xp, rng, Ls, shapes):
    """f(W) = Σ_i ½ (W_i − T_i)ᵀ diag(a_i) (W_i − T_i) with max a_i = L_i: block constant L_i (Frobenius)."""
    A = []
    for L, s in zip(Ls, shapes):
        a = rng.uniform(0.1 * L, L, size=s)
        a.flat[0] = L
        A.append(xp.asarray(a))
    T = [xp.asarray(rng.standard_normal(s)) for s in shapes]

    def loss_and_grad(params, X=None, y=None):
        f = sum(0.5 * float(xp.sum(a * (W - t) ** 2)) for a, W, t in zip(A, params, T))
        return f, [a * (W - t) for a, W, t in zip(A, params, T)]

    return loss_and_grad


def test_quadratic_choice_and_improvement_match_bound(xp, rng):
    Ls = [1.0, 5.0, 0.5]
    shapes = [(3, 4), (2, 2), (4, 1)]
    lg = _aniso_quadratic(xp, rng, Ls, shapes)
    params = [xp.zeros(s) for s in shapes]
    opt = DSGD(norm="frobenius", rule="constant", constants=Ls)
    state = opt.init(params)
    for _ in range(40):
        f0, g = lg(params)
        dn = [float(xp.linalg.norm(gi)) for gi in g]
        expect_scores = [d**2 / (2 * L) for d, L in zip(dn, Ls)]
        upd, state, info = opt.update_with_info(g, state, params)
        j = int(np.argmax(expect_scores))
        assert info.chosen == j
        np.testing.assert_allclose(info.scores, expect_scores, rtol=1e-13)
        assert abs(info.guaranteed - expect_scores[j]) <= 1e-13 * expect_scores[j]
        params = [p + u for p, u in zip(params, upd)]
        f1 = lg(params)[0]
        assert f0 - f1 >= info.guaranteed * (1 - 1e-12)
        # greedy = argmax of the ℓ1-product dual ‖G_i‖_*/√L_i
        assert j == int(np.argmax([d / math.sqrt(L) for d, L in zip(dn, Ls)]))
    assert state.layer_counts.sum() == 40 and np.all(state.layer_counts > 0)


def test_isotropic_quadratic_decrease_equals_bound(rng):
    """Block Hessian L_i·I, Frobenius norm, s = 1: the decrease equals ‖G_j‖²/(2L_j) exactly."""
    Ls = [1.0, 5.0, 0.5]
    T = [rng.standard_normal((3, 4)), rng.standard_normal((2, 2)), rng.standard_normal((4, 1))]
    lg = _quadratic(Ls, T)
    p = [np.zeros(t.shape) for t in T]
    opt = DSGD(norm="frobenius", rule="constant", constants=Ls)
    st = opt.init(p)
    for _ in range(3):
        f0, g = lg(p)
        upd, st, info = opt.update_with_info(g, st, p)
        p = [a + b for a, b in zip(p, upd)]
        assert abs((f0 - lg(p)[0]) - info.guaranteed) <= 1e-12 * info.guaranteed
    assert sorted(np.flatnonzero(st.layer_counts)) == [0, 1, 2]
    assert lg(p)[0] < 1e-25  # each block solved in one step


def test_step_multiplier_guarantee(rng):
    Ls = [2.0, 3.0]
    T = [rng.standard_normal((3, 3)), rng.standard_normal((2, 5))]
    lg = _quadratic(Ls, T)
    for s in (0.5, 1.5):
        opt = DSGD(norm="frobenius", rule="constant", constants=Ls, step=s)
        p = [np.zeros((3, 3)), np.zeros((2, 5))]
        f0, g = lg(p)
        upd, st, info = opt.update_with_info(g, opt.init(p), p)
        f1 = lg([a + b for a, b in zip(p, upd)])[0]
        assert abs((f0 - f1) - info.guaranteed) < 1e-12 * f0
        assert abs(info.guaranteed - s * (2 - s) * info.scores.max()) < 1e-15 * f0


def test_tightness_single_linear_layer_spectral(rng):
    """One linear layer, squared loss, n_out ≥ n_in+1, full-rank G: decrease = ‖G‖²_nuc/(2L)."""
    N, n_in, n_out = 40, 4, 7
    m = MLP([n_in, n_out], activation="identity", loss="mse")
    X, Y = rng.standard_normal((N, n_in)), rng.standard_normal((N, n_out))
    p = m.init_params(rng)
    f0, g = m.loss_and_grad(p, X, Y)
    opt = DSGD(norm="spectral", rule="bound", loss="mse", shapes=m.layout)
    upd, st, info = opt.update_with_info(g, opt.init(p), p, X=X)
    L = float(np.mean(np.sum(X**2, axis=1) + 1.0))
    assert abs(info.L[0] - L) < 1e-12 * L
    nuc = np.linalg.svd(g.reshape(n_out, n_in + 1), compute_uv=False).sum()
    assert abs(info.guaranteed - nuc**2 / (2 * L)) < 1e-12 * info.guaranteed
    f1 = m.loss(p + upd, X, Y)
    assert abs((f0 - f1) - info.guaranteed) < 1e-10 * info.guaranteed


# --- the rigorous bound on the reference MLP ------------------------------------------

def test_activation_constants_by_grid():
    z = np.linspace(-6, 6, 2_000_001)
    t = np.tanh(z)
    s = 1 / (1 + np.exp(-z))
    assert abs(np.max(np.abs(-2 * t * (1 - t**2))) - activation_derivative_bounds("tanh")[1]) < 1e-9
    assert abs(np.max(np.abs(s * (1 - s) * (1 - 2 * s))) - activation_derivative_bounds("sigmoid")[1]) < 1e-9
    assert abs(np.max(s * (1 - s)) - activation_derivative_bounds("sigmoid")[0]) < 1e-9
    with pytest.raises(ValueError, match="ReLU"):
        activation_derivative_bounds("relu")


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_bound_is_valid_along_random_directions(rng, digits_small, activation):
    """2(f(W_i + tU) − f − t⟨G_i, U⟩)/(t²‖U‖²) ≤ L_i for random U (spectral norm)."""
    X, y = digits_small
    m = MLP([64, 16, 12, 10], activation=activation)
    p = m.init_params(rng) * 3.0  # larger weights: a harder case than initialisation
    f0, g = m.loss_and_grad(p, X, y)
    Ws, Gs = m.layout.unpack(p), m.layout.unpack(g)
    L = mlp_layer_smoothness_bound(Ws, X, activation)
    worst = np.zeros(3)
    for i in range(3):
        for _ in range(8):
            U = rng.standard_normal(Ws[i].shape)
            U /= np.linalg.norm(U, 2)
            for t in (1e-3, 0.3, 1.0):
                q = [w.copy() for w in Ws]
                q[i] = q[i] + t * U
                f1 = m.loss(m.layout.pack(q), X, y)
                worst[i] = max(worst[i], 2 * (f1 - f0 - t * np.vdot(Gs[i], U)) / t**2)
    assert np.all(worst <= L)
    # log-space version agrees
    assert rel_err(np.exp(mlp_layer_smoothness_bound(Ws, X, activation, log=True)), L) < 1e-13


@pytest.mark.parametrize("norm", ["spectral", "frobenius"])
def test_rigorous_dsgd_never_increases_full_batch_loss(digits_small, norm):
    X, y = digits_small
    m = MLP([64, 16, 16, 10], activation="tanh")
    p = m.init_params(np.random.default_rng(1))
    opt = DSGD(norm=norm, shapes=m.layout)
    h = dsgd_train(opt, p, m.loss_and_grad, X, y, 120)
    assert np.all(np.diff(h.loss) <= 0)
    assert np.all(h.actual >= h.guaranteed * (1 - 1e-10))
    assert np.all(h.chosen >= 0) and h.selection_counts().sum() == 120
    assert h.loss[-1] < h.loss[0] - 0.05
    # telescoping: min_t max_i ‖G_i‖²_*/L_i ≤ 2(f_0 − f_T)/T
    meas = np.max(h.dual_norms**2 / h.L, axis=1)
    assert meas.min() <= 2 * (h.loss[0] - h.loss[-1]) / 120


def test_verify_records_actual_and_only_block_j_changes(digits_small):
    X, y = digits_small
    m = MLP([64, 8, 10], activation="tanh")
    p = m.init_params(np.random.default_rng(2))
    f0, g = m.loss_and_grad(p, X, y)
    opt = DSGD(shapes=m.layout, verify=True)
    upd, st, info = opt.update_with_info(g, opt.init(p), p, X=X, loss_fn=lambda q: m.loss(q, X, y), loss=f0)
    assert info.actual >= info.guaranteed > 0
    new = m.layout.unpack(p + upd)
    old = m.layout.unpack(p)
    for i in range(2):
        if i != info.chosen:
            assert np.array_equal(new[i], old[i])
        else:
            assert not np.array_equal(new[i], old[i])


def test_flat_and_list_params_agree(digits_small):
    X, y = digits_small
    m = MLP([64, 8, 10], activation="tanh")
    p = m.init_params(np.random.default_rng(3))
    _, g = m.loss_and_grad(p, X, y)
    a = DSGD(shapes=m.layout)
    b = DSGD()
    ua, sa, infoa = a.update_with_info(g, a.init(p), p, X=X)
    Ws, Gs = [w.copy() for w in m.layout.unpack(p)], [x.copy() for x in m.layout.unpack(g)]
    ub, sb, infob = b.update_with_info(Gs, b.init(Ws), Ws, X=X)
    assert rel_err(ua, m.layout.pack(ub)) < 1e-15 and infoa.chosen == infob.chosen
    with pytest.raises(ValueError, match="shapes="):
        b.update(g, b.init(Ws), p, X=X)


def test_minibatch_variant_and_average_max(digits_small):
    X, y = digits_small
    m = MLP([64, 8, 10], activation="tanh")
    p = m.init_params(np.random.default_rng(4))
    Ws = m.layout.unpack(p)
    Lmean = mlp_layer_smoothness_bound(Ws, X, "tanh", average="mean")
    Lmax = mlp_layer_smoothness_bound(Ws, X, "tanh", average="max")
    assert np.all(Lmax >= Lmean)
    h1 = dsgd_train(DSGD(shapes=m.layout), p, m.loss_and_grad, X, y, 30, batch_size=32, rng=0)
    h2 = dsgd_train(DSGD(shapes=m.layout), p, m.loss_and_grad, X, y, 30, batch_size=32, rng=0)
    assert np.array_equal(h1.chosen, h2.chosen) and np.array_equal(h1.loss, h2.loss)
    assert np.all(np.isnan(h1.actual)) and h1.loss[-1] < h1.loss[0]
    h3 = dsgd_train(DSGD(shapes=m.layout, average="max"), p, m.loss_and_grad, X, y, 10, batch_size=32,
                    rng=0, X_bound=X)
    assert np.all(h3.L >= Lmean * 0.0) and h3.chosen.shape == (10,)
    # the bound of the first step is the worst-row bound over the whole training set at p
    np.testing.assert_allclose(h3.L[0], Lmax, rtol=1e-13)
    assert np.any(Lmax > Lmean * (1 + 1e-3))  # "max" is a different (larger) bound than "mean"


def test_estimate_rule_on_quadratic(rng):
    """Hessian block L_i·I: dᵀH_i d/‖d‖_F² = L_i, so L̂_i = safety·L_i."""
    Ls = [1.0, 4.0]
    T = [rng.standard_normal((3, 2)), rng.standard_normal((2, 3))]
    lg = _quadratic(Ls, T)
    curv = lambda d: sum(L * float(np.sum(x**2)) for L, x in zip(Ls, d))  # noqa: E731
    opt = DSGD(norm="frobenius", rule="estimate", safety=2.0)
    p = [np.zeros((3, 2)), np.zeros((2, 3))]
    f0, g = lg(p)
    _, st, info = opt.update_with_info(g, opt.init(p), p, curvature=curv)
    np.testing.assert_allclose(info.L, [2.0, 8.0], rtol=1e-14)
    # spectral norm: dᵀHd/‖ρ‖_op² ≥ L_i (polar factor has ‖·‖_F² = rank ≥ ‖·‖_op²)
    opt = DSGD(norm="spectral", rule="estimate", safety=1.0)
    _, st, info = opt.update_with_info(g, opt.init(p), p, curvature=curv)
    assert np.all(info.L >= np.array(Ls) * (1 - 1e-12))
    # a non-positive estimate reuses the previous one, or excludes the layer
    _, st2, info2 = opt.update_with_info(g, st, p, curvature=lambda d: -1.0)
    np.testing.assert_allclose(info2.L, info.L)
    fresh = opt.init(p)
    u, st3, info3 = opt.update_with_info(g, fresh, p, curvature=lambda d: 0.0)
    assert info3.chosen == -1 and st3.n_excluded == 2 and all(not np.any(x) for x in u)


def test_newton_schulz_option_matches_svd(digits_small):
    X, y = digits_small
    m = MLP([64, 8, 10], activation="tanh")
    p = m.init_params(np.random.default_rng(5))
    _, g = m.loss_and_grad(p, X, y)
    a, b = DSGD(shapes=m.layout), DSGD(shapes=m.layout, method="newton_schulz")
    ua, sa, infoa = a.update_with_info(g, a.init(p), p, X=X)
    ub, sb, infob = b.update_with_info(g, b.init(p), p, X=X)
    assert infoa.chosen == infob.chosen and rel_err(ub, ua) < 1e-8


def test_cyclic_and_random_selection(rng):
    Ls = [1.0, 1.0, 1.0]
    T = [rng.standard_normal((2, 2)) for _ in range(3)]
    lg = _quadratic(Ls, T)
    p = [np.zeros((2, 2)) for _ in range(3)]
    opt = DSGD(norm="frobenius", rule="constant", constants=Ls, selection="cyclic")
    st = opt.init(p)
    seen = []
    for _ in range(3):
        u, st, info = opt.update_with_info(lg(p)[1], st, p)
        seen.append(info.chosen)
    assert seen == [0, 1, 2]
    opt = DSGD(norm="frobenius", rule="constant", constants=Ls, selection="random", seed=3)
    ch = [opt.update_with_info(lg(p)[1], dataclass_count(opt.init(p), k), p)[2].chosen for k in range(60)]
    assert set(ch) == {0, 1, 2}


def dataclass_count(st: DSGDState, k: int) -> DSGDState:
    st.count = k
    return st


def test_state_roundtrip(digits_small):
    X, y = digits_small
    m = MLP([64, 8, 10], activation="tanh")
    p = m.init_params(np.random.default_rng(6))
    _, g = m.loss_and_grad(p, X, y)
    opt = DSGD(shapes=m.layout)
    _, st = opt.update(g, opt.init(p), p, X=X)
    st2 = opt.load_state(st.to_dict())
    for k, v in st.to_dict().items():
        assert np.array_equal(v, st2.to_dict()[k], equal_nan=True)
        assert v.dtype == st2.to_dict()[k].dtype


def test_bad_input(rng):
    p = [np.zeros((2, 2)), np.zeros((0, 3))]
    with pytest.raises(ValueError, match="zero size"):
        DSGD(rule="constant", constants=[1.0, 1.0]).init(p)
    with pytest.raises(ValueError, match="ReLU"):
        DSGD(activation="relu")
    with pytest.raises(ValueError, match="constants"):
        DSGD(rule="constant")
    with pytest.raises(ValueError, match="step"):
        DSGD(step=0.0)
    q = [np.ones((2, 2)), np.ones((3, 2))]
    opt = DSGD(rule="constant", constants=[1.0, 2.0])
    st = opt.init(q)
    # zero gradient: no update, stationary, no division by zero
    with np.errstate(all="raise"):
        u, st1, info1 = opt.update_with_info([np.zeros((2, 2)), np.zeros((3, 2))], st, q)
    assert info1.chosen == -1 and st1.n_stationary == 1 and not any(np.any(x) for x in u)
    # NaN gradient: no update, counted; raises past max_consecutive_skips in a row
    bad = [np.full((2, 2), np.nan), np.ones((3, 2))]
    u, st2 = opt.update(bad, st, q)
    assert st2.n_skipped_steps == 1 and st2.count == 0 and not any(np.any(x) for x in u)
    for _ in range(opt.max_consecutive_skips - 1):
        _, st2 = opt.update(bad, st2, q)
    with pytest.raises(FloatingPointError, match="consecutive"):
        opt.update(bad, st2, q)
    with pytest.raises(ValueError, match="X"):
        DSGD().update(q, DSGD().init(q), q)
    with pytest.raises(ValueError, match="mse"):
        mlp_layer_smoothness_bound([np.ones((3, 3)), np.ones((2, 4))], np.ones((4, 2)), loss="mse")
    with pytest.raises(ValueError, match="bias as last"):
        mlp_layer_smoothness_bound([np.ones((3, 3))], np.ones((4, 5)))


def test_spectral_update_is_polar_step(rng):
    """W_j ← W_j − (s‖G‖_nuc/L) U Vᵀ for the spectral norm."""
    G = [rng.standard_normal((4, 3))]
    opt = DSGD(rule="constant", constants=[2.0], step=0.7)
    u, st = opt.update(G, opt.init([np.zeros((4, 3))]), [np.zeros((4, 3))])
    r = du.polar_factor(G[0])
    assert rel_err(u[0], -(0.7 * r.nuclear / 2.0) * r.Q) < 1e-14


def test_weight_norm_cache_follows_params(digits_small):
    """The cached ‖W̄_i‖_op used by the bound always equals the exact value of the current params."""
    X, y = digits_small
    m = MLP([64, 12, 8, 10], activation="tanh")
    p = m.init_params(np.random.default_rng(7))
    opt = DSGD(shapes=m.layout)
    st = opt.init(p)
    for k in range(6):
        if k == 3:  # an external change of every block must invalidate the cache
            p = p * 1.5
        _, g = m.loss_and_grad(p, X, y)
        u, st, info = opt.update_with_info(g, st, p, X=X)
        Ws = m.layout.unpack(p)
        exact = [np.linalg.norm(W[:, :-1], 2) for W in Ws[1:]]
        np.testing.assert_allclose(st.w_opnorm[1:], exact, rtol=1e-13)
        np.testing.assert_allclose(info.L, mlp_layer_smoothness_bound(Ws, X, "tanh"), rtol=1e-13)
        p = p + u


def test_nan_svd_result_falls_back_to_frobenius(monkeypatch, rng):
    """cuSOLVER returns NaN instead of raising: DSGD must still take a finite (Frobenius) step."""
    import scipy.linalg

    def garbage(real):
        def svd(M, full_matrices=True, compute_uv=True, **kw):
            out = real(M, full_matrices=full_matrices, compute_uv=compute_uv)
            return tuple(np.full_like(x, np.nan) for x in out) if compute_uv else np.full_like(out, np.nan)
        return svd

    q = [rng.standard_normal((3, 3)), rng.standard_normal((2, 4))]
    g = [rng.standard_normal((3, 3)), rng.standard_normal((2, 4))]
    opt = DSGD(rule="constant", constants=[1.0, 2.0])
    monkeypatch.setattr(np.linalg, "svd", garbage(np.linalg.svd))
    monkeypatch.setattr(scipy.linalg, "svd", garbage(scipy.linalg.svd))
    u, st, info = opt.update_with_info(g, opt.init(q), q)
    assert st.n_fallback == 2 and info.chosen >= 0 and all(np.all(np.isfinite(x)) for x in u)
    j = info.chosen
    np.testing.assert_allclose(u[j], -g[j] / [1.0, 2.0][j], rtol=1e-14)  # Frobenius map ρ(G) = G
    assert np.all(np.isfinite(info.dual_norms))


def test_options_are_validated_at_construction():
    """Options that cannot work are refused by __init__, naming the argument (issue 11, defect 6)."""
    for s in (2.0, 3.5, 100.0):
        with pytest.raises(ValueError, match=r"step must be in \(0, 2\)"):
            DSGD(step=s)
    assert DSGD(step=10.0, allow_large_step=True).step_size == 10.0
    with pytest.raises(TypeError, match="step"):
        DSGD(step="1")
    with pytest.raises(ValueError, match="average must be 'mean' or 'max'"):
        DSGD(average="foo")
    with pytest.raises(ValueError, match="loss must be"):
        DSGD(loss="hinge")
    with pytest.raises(ValueError, match="norm must be one of"):
        DSGD(norm="nuclear")
    with pytest.raises(ValueError, match="norm must be one of"):
        DSGD(norm=["spectral", "l1"])
    for bad in (0.0, -1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="scale must be a finite positive"):
            DSGD(scale=bad)
    with pytest.raises(ValueError, match="scale must be a finite positive"):
        DSGD(scale=[1.0, 0.0])
    with pytest.raises(ValueError, match="method must be"):
        DSGD(method="qr")
    with pytest.raises(ValueError, match="constants must be a 1-D"):
        DSGD(rule="constant", constants=[[1.0, 2.0]])
    with pytest.raises(TypeError, match="seed"):
        DSGD(seed=1.5)


def test_flat_vectors_split_by_the_one_layout(rng):
    """shapes= is a curvlab.layout.Layout (or shapes, or the MLP's ``model.layout``): the same numbers
    each way; a (P, k) block is refused naming grads (DSGD takes one flat vector)."""
    from curvlab.layout import Layout

    m = MLP([3, 4, 2])
    p = m.init_params(rng)
    X, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    _, g = m.loss_and_grad(p, X, y)
    ups = []
    for shapes in (m.layout, m.layout.shapes, Layout(["a", "b"], m.layout.shapes)):
        opt = DSGD(shapes=shapes)
        ups.append(opt.update(g, opt.init(p), p, X=X)[0])
    np.testing.assert_array_equal(ups[0], ups[1])
    np.testing.assert_array_equal(ups[0], ups[2])
    opt = DSGD(shapes=m.layout)
    with pytest.raises(ValueError, match=r"grads must have shape \(26,\)"):
        opt.update(np.stack([g, g], axis=1), opt.init(p), p, X=X)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_constants_are_refused(bad):
    """issue 11: constants=[nan]/[inf] gave a zero update with no flag."""
    import numpy as _np

    from curvlab.methods.dsgd import DSGD as _DSGD

    with pytest.raises(ValueError, match=r"constants must be finite.*layer\(s\) \[1\]"):
        _DSGD(rule="constant", constants=[1.0, bad])
    # the per-step override is checked too
    opt = _DSGD(norm="frobenius", rule="constant", constants=[1.0])
    p = [_np.ones((2, 3))]
    st = opt.init(p)
    with pytest.raises(ValueError, match=r"constants must be finite"):
        opt.update([_np.ones((2, 3))], st, p, constants=[bad])
    upd, _ = opt.update([_np.ones((2, 3))], st, p, constants=[4.0])
    assert _np.all(_np.isfinite(upd[0])) and _np.any(upd[0] != 0)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("selection", ["greedy", "cyclic"])
def test_gram_route_keeps_the_svd_trajectory(monkeypatch, digits_small, dtype, tol, selection):
    """Layers wide enough for the Gram route (duality._gram_spectrum, the cached eigenvectors of the
    most chosen layer, Lanczos weight norms) give the SVD route's trajectory: same layers chosen,
    dual norms, constants and params equal to rounding (tol covers float32's ~1e-7 per step)."""
    X, y = digits_small
    X = X.astype(dtype)
    m = MLP([64, 64, 56, 10], activation="tanh", dtype=dtype)
    p0 = m.init_params(np.random.default_rng(3))

    def run():
        opt = DSGD(shapes=m.layout, selection=selection)
        st, p, out = opt.init(p0), p0.copy(), []
        for _ in range(6):
            _, g = m.loss_and_grad(p, X, y)
            u, st, info = opt.update_with_info(g, st, p, X=X)
            p = p + u
            out.append((info.chosen, info.dual_norms.copy(), info.L.copy()))
        return p, out

    assert du._gram_spectrum(m.layout.unpack(p0)[1]) is not None    # the route is taken
    p_gram, h_gram = run()
    monkeypatch.setattr(du, "GRAM_MIN_SIZE", 10**9)                   # every layer by the SVD
    p_svd, h_svd = run()
    assert [c for c, _, _ in h_gram] == [c for c, _, _ in h_svd]
    if selection == "cyclic":                                         # the wide layers move too
        assert {0, 1} <= {c for c, _, _ in h_gram}
    for (_, d1, L1), (_, d2, L2) in zip(h_gram, h_svd):
        np.testing.assert_allclose(d1, d2, rtol=tol)
        np.testing.assert_allclose(L1, L2, rtol=tol)
    assert rel_err(p_gram.astype(np.float64), p_svd.astype(np.float64)) < tol


def test_bound_memo_gives_the_numbers_of_a_fresh_forward_pass(digits_small):
    """The bound's layer-input memo (NumPy) is reused only while X and the weights below a layer
    are unchanged: same L_i, bit for bit, as without the memo, through block updates, new
    batches, an X changed in place and weights changed from outside."""
    X, y = digits_small
    m = MLP([64, 12, 8, 10], activation="tanh")
    p = m.init_params(np.random.default_rng(2))
    opt = DSGD(shapes=m.layout, selection="cyclic")
    st = opt.init(p)
    Xb = X[:100].copy()
    for k in range(9):
        if k == 3:
            Xb = X[100:200].copy()           # a new batch
        if k == 5:
            Xb[7, 3] += 0.25                 # the same array changed in place
        if k == 7:
            p = p * 1.01                     # every block changed from outside
        _, g = m.loss_and_grad(p, Xb, y[:100])
        u, st, info = opt.update_with_info(g, st, p, X=Xb)
        fresh = mlp_layer_smoothness_bound(m.layout.unpack(p), Xb, "tanh")
        np.testing.assert_array_equal(info.L, fresh)
        assert len(opt._bound_memo["keys"]) == 3
        if k == 2:   # step 1 moved block 1 only: the input of layer 1 (after W_0) was reused
            assert opt._bound_memo["a"][1] is a1
        a1 = opt._bound_memo["a"][1]
        p = p + u
