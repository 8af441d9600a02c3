"""Exact stochastic Newton (arXiv 2104.03804): closed-form directions against dense solves, training, policies."""

from __future__ import annotations

import numpy as np
import pytest

from curvlab.data import load_digits, minibatches
from curvlab.methods.exact_newton import ExactNewton, ExactNewtonState, exact_newton_directions
from curvlab.models.layer_hessians import LayerCurvature, layer_curvature, layer_hessian_factors
from curvlab.models.mlp import MLP
from tests.conftest import rel_err


def _fn(H, f):
    w, V = np.linalg.eigh(0.5 * (H + H.T))
    return (V * f(w)) @ V.T


RHO = {"raw": lambda w: w, "abs": np.abs, "cap": lambda w: np.minimum(np.abs(w), 0.5)}


def _problem(B, sizes=(4, 3, 5), act="tanh", seed=0):
    rng = np.random.default_rng(seed)
    model = MLP(list(sizes), activation=act)
    p = model.init_params(rng)
    p = p + 0.5 * rng.standard_normal(p.shape)
    X = rng.standard_normal((B, sizes[0]))
    y = rng.integers(0, sizes[-1], B)
    return model, p, X, y


def _update(opt, model, p, X, y):
    upd, st, _ = _update_with_info(opt, model, p, X, y)
    return upd, st


def _update_with_info(opt, model, p, X, y):
    """One step from ``opt.init(p)``: ``(updates, state, info)``."""
    _, g = model.loss_and_grad(p, X, y)
    return opt.update_with_info(g, opt.init(p), p, model=model, X=X, y=y)


@pytest.mark.parametrize("rule", ["raw", "abs", "cap"])
@pytest.mark.parametrize("objective", ["damped", "regularized"])
def test_per_sample_direction_equals_dense_solve(rule, objective):
    """B = 1: the damped/regularized closed form = dense solve with ρ(H_l) + λI, H_l from the MLP's dense Hessian."""
    model, p, X, y = _problem(1)
    lam = 0.3
    H = model.dense_hessian(p, X, y)
    _, g = model.loss_and_grad(p, X, y)
    opt = ExactNewton(lr=1.0, lam=lam, adjustment=rule, objective=objective, kappa_max=0.5)
    upd, _ = _update(opt, model, p, X, y)
    for l in range(model.n_layers):
        sl = model.layout.slice(l)
        Ht = _fn(H[sl, sl], RHO[rule])
        rhs = g[sl] + (lam * p[sl] if objective == "regularized" else 0.0)
        ref = -np.linalg.solve(Ht + lam * np.eye(Ht.shape[0]), rhs)
        assert rel_err(upd[sl], ref) <= 1e-10, (rule, objective, l)


@pytest.mark.parametrize("B", [3, 6])
@pytest.mark.parametrize("rule,where", [("raw", "per_sample"), ("abs", "per_sample"), ("abs", "batch"), ("cap", "batch")])
@pytest.mark.parametrize("objective", ["damped", "regularized"])
def test_exact_block_equals_dense_solve(B, rule, where, objective):
    model, p, X, y = _problem(B, seed=B)
    lam = 0.5
    H = model.dense_hessian(p, X, y)
    _, g = model.loss_and_grad(p, X, y)
    f = layer_hessian_factors(model, p, X, y)
    opt = ExactNewton(lr=1.0, lam=lam, adjustment=rule, batch_mode="exact_block", objective=objective,
                      block_spectrum=where, kappa_max=0.5)
    upd, _ = _update(opt, model, p, X, y)
    for l in range(model.n_layers):
        sl = model.layout.slice(l)
        if where == "batch" or rule == "raw":
            Ht = _fn(H[sl, sl], RHO[rule])
        else:   # ρ applied to each sample's block: Σ_b ρ(M_b ⊗ ã ãᵀ) / B
            Ht = sum(_fn(f[l].block(b), RHO[rule]) for b in range(B)) / B
        rhs = g[sl] + (lam * p[sl] if objective == "regularized" else 0.0)
        ref = -np.linalg.solve(Ht + lam * np.eye(Ht.shape[0]), rhs)
        assert rel_err(upd[sl], ref) <= 1e-10, (rule, where, objective, l)


def test_average_mode_is_mean_of_per_sample_steps_and_block_mode_b1_agrees():
    model, p, X, y = _problem(4, seed=3)
    for objective in ("damped", "regularized"):
        opt = ExactNewton(lr=0.2, lam=1.0, objective=objective)
        upd, _ = _update(opt, model, p, X, y)
        each = np.mean([_update(opt, model, p, X[i:i + 1], y[i:i + 1])[0] for i in range(4)], axis=0)
        assert rel_err(upd, each) <= 1e-12
        blk = ExactNewton(lr=0.2, lam=1.0, objective=objective, batch_mode="exact_block")
        assert rel_err(_update(blk, model, p, X[:1], y[:1])[0], _update(opt, model, p, X[:1], y[:1])[0]) <= 1e-12


@pytest.mark.parametrize("objective", ["damped", "regularized"])
def test_softmax_regression_b1_is_exact_regularised_newton(objective):
    """One layer (convex): raw = abs and the step is exact Newton on ℓ (+ λ/2‖W‖²) damped by λ."""
    rng = np.random.default_rng(5)
    model = MLP([5, 4], activation="identity")
    p = model.init_params(rng)
    X, y = rng.standard_normal((1, 5)), np.array([2])
    lam = 0.7
    H = model.dense_hessian(p, X, y)
    _, g = model.loss_and_grad(p, X, y)
    u_raw, _ = _update(ExactNewton(lr=1.0, lam=lam, adjustment="raw", objective=objective), model, p, X, y)
    u_abs, _ = _update(ExactNewton(lr=1.0, lam=lam, adjustment="abs", objective=objective), model, p, X, y)
    assert rel_err(u_raw, u_abs) <= 1e-12
    rhs = g + (lam * p if objective == "regularized" else 0.0)
    assert rel_err(u_raw, -np.linalg.solve(H + lam * np.eye(model.n_params), rhs)) <= 1e-11


def test_regularized_full_step_leaves_rank_one_weights():
    model, p, X, y = _problem(1, seed=6)
    upd, _ = _update(ExactNewton(lr=1.0, lam=1.0, objective="regularized"), model, p, X, y)
    for W in model.layout.unpack(p + upd):
        sv = np.linalg.svd(W, compute_uv=False)
        assert sv[1] / sv[0] <= 1e-10


def test_flat_and_list_params_and_float32_agree():
    model, p, X, y = _problem(5, seed=7)
    opt = ExactNewton(lr=0.1, lam=1.0, diagnostics=True)
    u_flat, st, info = _update_with_info(opt, model, p, X, y)
    Ws = [W.copy() for W in model.layout.unpack(p)]
    u_list, _ = opt.update([np.zeros_like(W) for W in Ws], opt.init(Ws), Ws, X=X, y=y, activation="tanh")
    assert rel_err(model.layout.pack(u_list), u_flat) <= 1e-13
    m32 = MLP([4, 3, 5], activation="tanh", dtype=np.float32)
    p32 = p.astype(np.float32)
    u32, _ = opt.update(np.zeros_like(p32), opt.init(p32), p32, model=m32, X=X.astype(np.float32), y=y)
    assert u32.dtype == np.float32
    assert rel_err(u32, u_flat) <= 1e-4    # float32 forward pass; curvature and solves in float64
    assert st.count == 1 and info.kappa_min.shape == (2,) and np.all(info.step_norm > 0)


def test_state_round_trip_and_diagnostics():
    model, p, X, y = _problem(8, seed=8)
    opt = ExactNewton(lr=0.1, lam=0.01, adjustment="raw", diagnostics=True)
    _, st, info = _update_with_info(opt, model, p, X, y)
    # diagnostics off (the default): same step, the per-layer diagnostics are NaN / -1
    u_off, st_off, info_off = _update_with_info(ExactNewton(lr=0.1, lam=0.01, adjustment="raw"), model, p, X, y)
    assert np.all(np.isnan(info_off.kappa_min)) and np.all(info_off.n_negative == -1)
    assert st_off.n_indefinite == st.n_indefinite and st_off.n_guarded == st.n_guarded
    f = layer_hessian_factors(model, p, X, y)
    kmin = [float((np.linalg.eigvalsh(fl.M) * (fl.a ** 2).sum(1)[:, None]).min()) for fl in f]
    # the output layer's softmax M is singular: its κ_min is 0 up to rounding, hence the absolute part
    np.testing.assert_allclose(info.kappa_min, kmin, rtol=1e-12, atol=1e-14 * np.abs(kmin).max())
    assert st.n_indefinite >= 1        # tanh hidden layer, λ = 0.01: some κ + λ < 0
    back = opt.load_state(st.to_dict())
    assert isinstance(back, ExactNewtonState)
    for k, v in st.to_dict().items():
        assert np.array_equal(back.to_dict()[k], v) and back.to_dict()[k].dtype == v.dtype


def test_on_indefinite_policies():
    model, p, X, y = _problem(1, seed=8)
    lam = 1e-3
    u_abs, _ = _update(ExactNewton(lr=1.0, lam=lam, adjustment="abs"), model, p, X, y)
    u_sw, st = _update(ExactNewton(lr=1.0, lam=lam, adjustment="raw", on_indefinite="abs"), model, p, X, y)
    u_skip, _ = _update(ExactNewton(lr=1.0, lam=lam, adjustment="raw", on_indefinite="skip"), model, p, X, y)
    f = layer_hessian_factors(model, p, X, y)
    indef = [bool((np.linalg.eigvalsh(fl.M[0]) * (fl.a[0] ** 2).sum() + lam).min() < 0) for fl in f]
    assert any(indef) and st.n_indefinite == sum(indef)
    for l, bad in enumerate(indef):
        sl = model.layout.slice(l)
        if bad:
            assert rel_err(u_sw[sl], u_abs[sl]) <= 1e-12
            assert np.all(u_skip[sl] == 0)


def test_singular_adjusted_spectrum_policy():
    """κ + λ = 0 exactly: the average mode drops that component, the block mode skips the layer."""
    M = np.diag([-1.0, 1.0])[None]
    f = [LayerCurvature(delta=np.array([[1.0, 1.0]]), M=M, a=np.ones((1, 1)), z=np.zeros((1, 2)))]
    W = [np.zeros((2, 1))]
    diag: dict = {}
    (d,) = exact_newton_directions(f, W, lam=1.0, adjustment="raw", diagnostics=diag)
    assert diag["n_guarded"] == 1 and np.array_equal(d, [[0.0], [-0.5]])
    diag = {}
    (d,) = exact_newton_directions(f, W, lam=1.0, adjustment="raw", batch_mode="exact_block", diagnostics=diag)
    assert diag["n_singular"] == 1 and np.all(d == 0)


def test_nan_samples_are_skipped_and_weights_untouched():
    model, p, X, y = _problem(4, seed=9)
    opt = ExactNewton(lr=0.1, lam=1.0, max_consecutive_skips=1)
    Xn = X.copy()
    Xn[1, 2] = np.nan
    g = np.zeros_like(p)
    upd, st = opt.update(g, opt.init(p), p, model=model, X=Xn, y=y)
    keep = [0, 2, 3]
    ref, _ = opt.update(g, opt.init(p), p, model=model, X=X[keep], y=y[keep])
    assert st.n_skipped == 1 and rel_err(upd, ref) <= 1e-13
    Xall = np.full_like(X, np.nan)
    st0 = opt.init(p)
    upd, st = opt.update(g, st0, p, model=model, X=Xall, y=y)
    new = p + upd
    # a skipped step leaves the state as it was but for the skip counters
    assert np.array_equal(new, p) and st.n_skipped_steps == 1 and st.consecutive_skips == 1
    assert st.n_skipped == 0 and st.count == 0
    with pytest.raises(FloatingPointError, match="consecutive"):
        opt.update(g, st, p, model=model, X=Xall, y=y)


def test_bad_input():
    with pytest.raises(ValueError, match="lam"):
        ExactNewton(lam=0.0)
    with pytest.raises(ValueError, match="lam"):
        ExactNewton(lam=-1.0)
    with pytest.raises(ValueError, match="lr"):
        ExactNewton(lr=0.0)
    with pytest.raises(ValueError, match="adjustment"):
        ExactNewton(adjustment="sqrt")
    with pytest.raises(ValueError, match="batch_mode"):
        ExactNewton(batch_mode="exact")
    with pytest.raises(ValueError, match="objective"):
        ExactNewton(objective="l1")
    with pytest.raises(ValueError, match="kappa_max"):
        ExactNewton(adjustment="cap", kappa_max=-1.0)
    model, p, X, y = _problem(2)
    opt = ExactNewton()
    with pytest.raises(ValueError, match="model="):
        opt.update(np.zeros_like(p), opt.init(p), p, X=X, y=y)
    with pytest.raises(ValueError, match="X= and y="):
        opt.update(np.zeros_like(p), opt.init(p), p, model=model)
    with pytest.raises(ValueError, match="grads"):
        opt.update(np.zeros(3), opt.init(p), p, model=model, X=X, y=y)
    with pytest.raises(ValueError, match="lam"):
        exact_newton_directions(layer_hessian_factors(model, p, X, y), model.layout.unpack(p), lam=0.0)


def _digits_subset(n=400):
    d = load_digits(dtype=np.float64)
    return d.X_train[:n], d.y_train[:n]


@pytest.mark.parametrize("rule,kw", [("abs", {}), ("floor", {"kappa_min": 1e-2}), ("shift", {"shift": 0.1}),
                                     ("cap", {"kappa_max": 1.0})])
def test_digits_training_reaches_threshold(rule, kw):
    """64-32-10 tanh MLP on 400 digits, B = 16, λ = 1, η = 1: training loss 2.3 -> < 0.5 within 3 epochs."""
    X, y = _digits_subset()
    model = MLP([64, 32, 10], activation="tanh")
    rng = np.random.default_rng(0)
    p = model.init_params(rng)
    opt = ExactNewton(lr=1.0, lam=1.0, adjustment=rule, **kw)
    st = opt.init(p)
    losses = [model.loss(p, X, y)]
    for _ in range(3):
        for xb, yb in minibatches(X, y, 16, rng):
            upd, st = opt.update(np.zeros_like(p), st, p, model=model, X=xb, y=yb)
            p = p + upd
        losses.append(model.loss(p, X, y))
    assert np.all(np.isfinite(losses)) and st.n_skipped == 0
    assert losses[-1] < 0.5, (rule, losses)


def test_absolute_adjustment_does_not_diverge_exact_block():
    """abs with the exact mini-batch block (B = 4) keeps a finite, decreasing loss over 60 steps."""
    X, y = _digits_subset(240)
    model = MLP([64, 16, 10], activation="tanh")
    rng = np.random.default_rng(1)
    p = model.init_params(rng)
    opt = ExactNewton(lr=0.5, lam=1.0, adjustment="abs", batch_mode="exact_block")
    st = opt.init(p)
    l0 = model.loss(p, X, y)
    for xb, yb in minibatches(X, y, 4, rng):
        upd, st = opt.update(np.zeros_like(p), st, p, model=model, X=xb, y=yb)
        p = p + upd
    l1 = model.loss(p, X, y)
    assert np.isfinite(l1) and l1 < 0.5 * l0, (l0, l1)


def test_backends(xp):
    rng = np.random.default_rng(11)
    Ws = [rng.standard_normal((3, 5)), rng.standard_normal((4, 4))]
    X = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, 6)
    for mode in ("average", "exact_block"):
        opt = ExactNewton(lr=0.5, lam=0.5, batch_mode=mode)
        ref, _ = opt.update([np.zeros_like(W) for W in Ws], opt.init(Ws), Ws, X=X, y=y)
        Wx = [xp.asarray(W) for W in Ws]
        got, _ = opt.update([xp.zeros_like(W) for W in Wx], opt.init(Wx), Wx, X=xp.asarray(X), y=xp.asarray(y))
        for a, b in zip(got, ref):
            assert rel_err(a, b) <= 1e-12


def test_layer_subset_and_list_params_with_model():
    model, p, X, y = _problem(3, seed=12)
    full, _ = _update(ExactNewton(lr=0.1), model, p, X, y)
    opt = ExactNewton(lr=0.1, layers=[1], diagnostics=True)
    upd, st, info = _update_with_info(opt, model, p, X, y)
    s0, s1 = model.layout.slice(0), model.layout.slice(1)
    assert np.all(upd[s0] == 0) and rel_err(upd[s1], full[s1]) <= 1e-14
    assert info.step_norm[0] == 0 and info.step_norm[1] > 0
    Ws = model.layout.unpack(p)
    ul, _ = opt.update([np.zeros_like(W) for W in Ws], opt.init(Ws), Ws, model=model, X=X, y=y)
    assert rel_err(model.layout.pack(ul), upd) <= 1e-14
    with pytest.raises(ValueError, match="layers"):
        _update(ExactNewton(layers=[5]), model, p, X, y)
    with pytest.raises(ValueError, match="layers"):
        ExactNewton(layers=[-1])


def test_adjustment_constants_validated_whatever_the_rule():
    """kappa_min < 0, shift < 0, kappa_max <= 0 are refused at construction even when the rule
    does not use them (issue 11, defect 6)."""
    for kw, name in (({"kappa_min": -1e-3}, "kappa_min"), ({"shift": -0.1}, "shift"),
                     ({"kappa_max": 0.0}, "kappa_max"), ({"kappa_min": float("nan")}, "kappa_min")):
        for rule in ("abs", "raw", "floor", "shift", "cap"):
            with pytest.raises(ValueError, match=name):
                ExactNewton(adjustment=rule, **kw)
    with pytest.raises(TypeError, match="shift"):
        ExactNewton(shift="0.1")
    W = [np.zeros((2, 3))]
    f = layer_curvature(W, np.array([[1.0, 2.0]]), np.array([1]))
    with pytest.raises(ValueError, match="kappa_min"):
        exact_newton_directions(f, W, kappa_min=-1.0)
    with pytest.raises(TypeError, match="params"):
        ExactNewton().init(None)


def test_flat_params_without_model_name_the_ways_to_pass_curvature():
    model, p, X, y = _problem(2)
    opt = ExactNewton()
    with pytest.raises(ValueError, match="flat params need source=.*or model="):
        opt.update(p, opt.init(p), p, X=X, y=y)


@pytest.mark.parametrize("arg", ["lr", "lam"])
@pytest.mark.parametrize("bad, exc", [("1", TypeError), (1j, TypeError), (None, TypeError), (True, TypeError),
                                      (0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                      (float("inf"), ValueError)])
def test_lr_and_lam_errors_name_the_argument(arg, bad, exc):
    """issue 11: '1', 1j, None raised numpy/float() errors naming nothing; True was accepted as 1.0."""
    from curvlab.methods.exact_newton import ExactNewton as _EN

    with pytest.raises(exc, match=rf"^{arg} must be a finite number > 0"):
        _EN(**{arg: bad})


def test_exact_block_cg_keeps_the_direct_solve_trajectory(monkeypatch):
    """exact_block with abs (PSD per-sample blocks: conjugate gradients on NumPy) follows the
    direct-solve trajectory to rounding over several float64 steps, on the benchmark's MLP shape."""
    from curvlab.linalg.kronecker import KroneckerSumBlock

    rng = np.random.default_rng(5)
    model = MLP([64, 32, 10], activation="tanh")
    p0 = model.init_params(rng)
    X, y = rng.random((32, 64)), rng.integers(0, 10, 32)

    def run():
        opt = ExactNewton(lr=0.5, lam=1.0, batch_mode="exact_block")
        st, p = opt.init(p0), p0.copy()
        for _ in range(4):
            _, g = model.loss_and_grad(p, X, y)
            u, st = opt.update(g, st, p, model=model, X=X, y=y)
            p = p + u
        return p

    p_cg = run()
    monkeypatch.setattr(KroneckerSumBlock, "_solve_cg", lambda self, R: None)
    p_direct = run()
    assert rel_err(p_cg - p0, p_direct - p0) <= 1e-10
