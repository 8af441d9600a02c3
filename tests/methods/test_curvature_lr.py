"""Curvature-rescaled learning rate (curvlab.methods.curvature_lr, arXiv 2210.14520)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curvlab.data import load_digits
from curvlab.methods.baselines import SGD, Adam, Momentum
from curvlab.methods.curvature_lr import (
    DIAGNOSTIC_FIELDS,
    ConstantSchedule,
    CurvatureLR,
    ExpFloorSchedule,
    GeometricSchedule,
    as_schedule,
)
from curvlab.models.mlp import MLP
from tests.conftest import rel_err


def _quad(xp, rng, P=6):
    Q = rng.standard_normal((P, P))
    A = xp.asarray(Q @ Q.T + 0.5 * np.eye(P))
    b = xp.asarray(rng.standard_normal(P))

    def f(th):
        return float(0.5 * th @ A @ th + b @ th)

    def grad(th):
        return A @ th + b

    return A, b, f, grad


@pytest.mark.parametrize("base", ["sgd", "momentum", "adam"])
def test_quadratic_lambda_identities(xp, rng, base):
    A, b, f, grad = _quad(xp, rng)
    th = xp.asarray(rng.standard_normal(6))
    mk = {"sgd": lambda: SGD(lr=1.0), "momentum": lambda: Momentum(lr=1.0, momentum=0.9),
          "adam": lambda: Adam(lr=1.0)}[base]
    curv = lambda d: float(d @ A @ d)  # noqa: E731
    changes = {}
    for lam in (0.5, 1.0, 1.5, 2.0, 2.5):
        opt = CurvatureLR(base=mk(), schedule=lam)
        st = opt.init(th)
        g = grad(th)
        upd, st, info = opt.update_with_info(g, st, th, curvature=curv, loss_fn=f)
        d = -upd / info.t
        gd, c = float(g @ d), float(d @ A @ d)
        assert abs(info.c - c) <= 1e-14 * c and abs(info.gd - gd) <= 1e-13 * abs(gd)
        assert abs(info.t - lam * gd / c) <= 1e-14 * abs(info.t)
        pred = -lam * (2 - lam) * gd**2 / (2 * c)
        assert abs(info.predicted - pred) <= 1e-12 * abs(gd**2 / c)
        assert abs(info.realized - pred) <= 1e-12 * abs(gd**2 / c) + 1e-12 * abs(f(th))
        changes[lam] = info.realized
        if lam == 1.0:  # the minimiser along d: the new gradient is orthogonal to d
            assert abs(float(grad(th + upd) @ d)) <= 1e-11 * float(xp.linalg.norm(g)) * float(xp.linalg.norm(d))
        if lam == 2.0:
            assert abs(info.realized) <= 1e-12 * max(abs(f(th)), 1.0)
    assert abs(changes[0.5] - changes[1.5]) <= 1e-12 * abs(changes[0.5])  # symmetric in λ ↔ 2 − λ
    assert changes[2.5] > 0 > changes[1.0]


def test_scale_invariance(rng):
    A, b, f, grad = _quad(np, rng)
    th = rng.standard_normal(6)
    curv = lambda d: float(d @ A @ d)  # noqa: E731
    out = []
    for lr in (1.0, 0.01, 37.0):
        opt = CurvatureLR(base=SGD(lr=lr), schedule=0.7)
        out.append(opt.update(grad(th), opt.init(th), th, curvature=curv)[0])
    assert rel_err(out[1], out[0]) < 1e-12 and rel_err(out[2], out[0]) < 1e-12


@pytest.fixture(scope="module")
def mlp_case():
    ds = load_digits()
    X, y = ds.X_train[:128].astype(np.float64), ds.y_train[:128]
    m = MLP([64, 16, 10], activation="tanh")
    return m, m.init_params(np.random.default_rng(0)), X, y


def test_mlp_curvature_modes_equal_d_Hd(mlp_case, rng):
    m, p, X, y = mlp_case
    f0, g = m.loss_and_grad(p, X, y)
    d = g + 0.1 * rng.standard_normal(g.shape)
    ref = float(d @ m.hvp(p, X, y, d))
    cf = m.curvature(p, X, y, d, mode="forward")
    ca = m.curvature(p, X, y, d, mode="adjoint")
    assert abs(cf - ref) < 1e-10 * abs(ref) and abs(ca - ref) < 1e-10 * abs(ref)
    ts = []
    for mode in ("forward", "adjoint"):
        opt = CurvatureLR(schedule=1.0, mode=mode)
        upd, st, info = opt.update_with_info(g, opt.init(p), p, model=m, X=X, y=y, loss=f0)
        assert abs(info.c - float(g @ m.hvp(p, X, y, g))) < 1e-10 * abs(info.c)
        assert np.isfinite(info.realized) and info.realized < 0
        ts.append(info.t)
    assert abs(ts[0] - ts[1]) < 1e-10 * abs(ts[0])


def test_third_order_consistency(mlp_case):
    """|realized − predicted| scales like λ³ on a smooth net (ratio for a halving in [7, 10])."""
    m, p, X, y = mlp_case
    f0, g = m.loss_and_grad(p, X, y)
    disc = []
    for lam in (0.05, 0.025):
        opt = CurvatureLR(schedule=lam)
        _, st, info = opt.update_with_info(g, opt.init(p), p, model=m, X=X, y=y, loss=f0)
        disc.append(abs(info.realized - info.predicted))
    assert 7.0 <= disc[0] / disc[1] <= 10.0


def test_training_decreases_loss(mlp_case):
    m, p, X, y = mlp_case
    opt = CurvatureLR(schedule=1.0)
    st = opt.init(p)
    f_start = m.loss(p, X, y)
    rng = np.random.default_rng(0)
    for _ in range(40):
        idx = rng.choice(X.shape[0], 32, replace=False)
        f0, g = m.loss_and_grad(p, X[idx], y[idx])
        upd, st = opt.update(g, st, p, model=m, X=X[idx], y=y[idx], loss=f0)
        p = p + upd
    assert m.loss(p, X, y) < 0.7 * f_start
    assert st.n_policy == 0 and st.count == 40


def test_float32_accumulates_in_float64(rng):
    m = MLP([5, 4, 3], activation="tanh", dtype=np.float32)
    p = m.init_params(rng)
    X, y = rng.standard_normal((20, 5)).astype(np.float32), rng.integers(0, 3, 20)
    f0, g = m.loss_and_grad(p, X, y)
    opt = CurvatureLR(schedule=1.0)
    upd, st, info = opt.update_with_info(g, opt.init(p), p, model=m, X=X, y=y)
    assert upd.dtype == np.float32 and isinstance(info.gd, float)
    g64 = g.astype(np.float64)
    assert abs(info.gd - float(g64 @ g64)) < 1e-12 * info.gd
    m64 = MLP([5, 4, 3], activation="tanh")
    c64 = m64.curvature(p.astype(np.float64), X.astype(np.float64), y, g64)
    assert abs(info.c - c64) < 2e-3 * abs(c64)  # float32 curvature pass: looser


def test_float32_dot_products_span_chunks(rng):
    # leaves longer than the 65,536-entry conversion chunk, and one shorter: float64 sums throughout
    g = [rng.standard_normal(n).astype(np.float32) for n in (150_000, 3, 70_000)]
    opt = CurvatureLR(schedule=1.0)
    _, st, info = opt.update_with_info(g, opt.init(g), None, curvature=lambda d: 1.0)
    ref = sum(float(x.astype(np.float64) @ x.astype(np.float64)) for x in g)
    assert abs(info.gd - ref) <= 1e-12 * ref and abs(info.dd - ref) <= 1e-12 * ref


# --- policies and bad input -----------------------------------------------------------

def test_negative_curvature_policies():
    """f = −½‖θ‖² (c < 0 along every d)."""
    th = np.array([1.0, -2.0])
    g = -th
    curv = lambda d: -float(d @ d)  # noqa: E731
    # fallback (default): t_init on the first step, then the previous valid t
    opt = CurvatureLR(schedule=1.0, t_init=0.3)
    st = opt.init(th)
    upd, st, info = opt.update_with_info(g, st, th, curvature=curv)
    assert st.n_policy == 1 and info.event == 1 and info.t == 0.3 and rel_err(upd, -0.3 * g) < 1e-15
    pos = lambda d: 2.0 * float(d @ d)  # noqa: E731
    _, st, info = opt.update_with_info(g, st, th, curvature=pos)  # valid step: t = 1/2
    assert info.t == 0.5 and st.t_prev == 0.5
    _, st, info = opt.update_with_info(g, st, th, curvature=curv)
    assert info.t == 0.5 and st.n_policy == 2
    # fixed fallback lr
    opt = CurvatureLR(schedule=1.0, fallback_lr=0.05)
    _, st, info = opt.update_with_info(g, opt.init(th), th, curvature=curv)
    assert info.t == 0.05
    # abs: t = λ gd/|c|
    opt = CurvatureLR(schedule=0.5, curvature_policy="abs")
    _, st, info = opt.update_with_info(g, opt.init(th), th, curvature=curv)
    assert abs(info.t - 0.5 * 5.0 / 5.0) < 1e-15 and st.n_policy == 1
    # floor: c = c_rel‖d‖²
    opt = CurvatureLR(schedule=1.0, curvature_policy="floor", c_rel=1e-2)
    _, st, info = opt.update_with_info(g, opt.init(th), th, curvature=curv)
    assert abs(info.t - 5.0 / (1e-2 * 5.0)) < 1e-10
    # tiny positive curvature triggers the policy too
    opt = CurvatureLR(schedule=1.0, curvature_policy="floor", c_rel=1e-2)
    _, st, info = opt.update_with_info(g, opt.init(th), th, curvature=lambda d: 1e-6)
    assert st.n_policy == 1 and abs(info.t - 100.0) < 1e-10
    # skip
    opt = CurvatureLR(schedule=1.0, curvature_policy="skip")
    u, st, info = opt.update_with_info(g, opt.init(th), th, curvature=curv)
    assert not np.any(u) and info.event == 5


def test_zero_gradient_and_zero_direction():
    th = np.ones(3)
    called = []
    opt = CurvatureLR(schedule=1.0)
    with np.errstate(all="raise"):
        u, st, info = opt.update_with_info(np.zeros(3), opt.init(th), th,
                                           curvature=lambda d: called.append(1) or 0.0)
    assert not np.any(u) and st.n_zero == 1 and info.event == 2 and not called
    assert st.t_prev == opt.t_init
    # momentum: g = 0 but d ≠ 0 → ⟨g, d⟩ = 0, no step
    opt = CurvatureLR(base=Momentum(lr=1.0), schedule=1.0)
    st = opt.init(th)
    _, st = opt.update(np.ones(3), st, th, curvature=lambda d: float(d @ d))
    u, st = opt.update(np.zeros(3), st, th, curvature=lambda d: float(d @ d))
    assert not np.any(u) and st.n_zero == 1


def test_zero_size_layers():
    params = [np.ones((2, 3)), np.zeros((0, 4))]
    grads = [np.full((2, 3), 0.5), np.zeros((0, 4))]
    opt = CurvatureLR(schedule=1.0)
    u, st, info = opt.update_with_info(grads, opt.init(params), params,
                                       curvature=lambda d: sum(float(np.sum(x * x)) for x in d))
    assert u[1].shape == (0, 4) and abs(info.t - 1.0) < 1e-15 and rel_err(u[0], np.full((2, 3), -0.5)) < 1e-15


def test_nonfinite_sign_clamp_and_cap():
    th = np.ones(2)
    opt = CurvatureLR(schedule=1.0)
    st = opt.init(th)
    u, st = opt.update(np.array([np.nan, 1.0]), st, th, curvature=lambda d: 1.0)
    assert st.n_skipped_steps == 1 and not np.any(u) and st.count == 0
    u, st = opt.update(np.ones(2), opt.init(th), th, curvature=lambda d: float("nan"))
    assert st.n_skipped_steps == 1 and not np.any(u) and st.count == 0
    st = opt.init(th)
    for _ in range(opt.max_consecutive_skips):
        _, st = opt.update(np.array([np.inf, 1.0]), st, th, curvature=lambda d: 1.0)
    with pytest.raises(FloatingPointError, match="consecutive"):
        opt.update(np.array([np.inf, 1.0]), st, th, curvature=lambda d: 1.0)
    # ⟨g, d⟩ < 0 (stale momentum): keep gives t < 0, clamp makes no step
    for sign, moved in (("keep", True), ("clamp", False)):
        opt = CurvatureLR(base=Momentum(lr=1.0, momentum=0.99), schedule=1.0, sign=sign)
        st = opt.init(th)
        _, st = opt.update(np.ones(2), st, th, curvature=lambda d: float(d @ d))
        u, st, info = opt.update_with_info(-0.1 * np.ones(2), st, th, curvature=lambda d: float(d @ d))
        assert st.n_negative_gd == 1 and bool(np.any(u)) == moved
        if moved:
            assert info.t < 0
    opt = CurvatureLR(schedule=1.0, max_step=0.01)
    u, st = opt.update(np.ones(2), opt.init(th), th, curvature=lambda d: 1e-6)
    assert st.n_capped == 1 and abs(np.linalg.norm(u) - 0.01) < 1e-15


def test_bad_arguments():
    with pytest.raises(ValueError, match="curvature_policy"):
        CurvatureLR(curvature_policy="clip")
    with pytest.raises(ValueError, match="mode"):
        CurvatureLR(mode="hvp")
    with pytest.raises(TypeError, match="base"):
        CurvatureLR(base=object())
    with pytest.raises(ValueError, match="lam"):
        ConstantSchedule(-1.0)
    opt = CurvatureLR()
    with pytest.raises(ValueError, match="curvature"):
        opt.update(np.ones(2), opt.init(np.ones(2)), np.ones(2))
    with pytest.raises(ValueError, match="shape"):
        opt.update(np.ones(3), opt.init(np.ones(2)), np.ones(2), curvature=lambda d: 1.0)


def test_schedules():
    s = GeometricSchedule(2.0, 0.1, 50)
    assert s(0) == 2.0 and s(50) == 0.1 and s(80) == 0.1
    vals = [s(k) for k in range(51)]
    assert np.all(np.diff(vals) < 0) and abs(np.log(vals[25]) - 0.5 * (np.log(2.0) + np.log(0.1))) < 1e-12
    e = ExpFloorSchedule(2.0, 0.2, tau=5.0)
    ev = [e(k) for k in range(100)]
    assert ev[0] == 2.0 and np.all(np.diff(ev) <= 0) and ev[-1] > 0.2
    assert isinstance(as_schedule(1.5), ConstantSchedule) and as_schedule(e) is e
    with pytest.raises(TypeError):
        as_schedule("fast")
    # the transform uses λ_k with k the step count (skipped steps advance it)
    opt = CurvatureLR(schedule=s)
    st = opt.init(np.ones(2))
    lams = []
    for k in range(3):
        _, st, info = opt.update_with_info(np.zeros(2) if k == 1 else np.ones(2), st, np.ones(2),
                                           curvature=lambda d: float(d @ d))
        lams.append(info.lam)
    assert lams == [s(0), s(1), s(2)]


def test_state_roundtrip_and_diagnostics(rng):
    A, b, f, grad = _quad(np, rng)
    th = rng.standard_normal(6)
    opt = CurvatureLR(base=Adam(lr=1.0), schedule=0.5)
    st = opt.init(th)
    for _ in range(3):
        u, st, info = opt.update_with_info(grad(th), st, th, curvature=lambda d: float(d @ A @ d), loss_fn=f)
        th = th + u
    dg = opt.diagnostics(info)
    assert set(dg) == set(DIAGNOSTIC_FIELDS) and all(np.isfinite(dg[k]) for k in ("t", "c", "predicted", "realized"))
    assert dg == {k: getattr(info, k) for k in DIAGNOSTIC_FIELDS}
    assert opt.diagnostics(st) == dg  # the state that step made: the same report
    assert all(math.isnan(v) for v in opt.diagnostics(opt.init(th)).values())  # no step made it
    with pytest.raises(TypeError, match="report must be a CurvatureLRInfo"):
        opt.diagnostics({"t": 1.0})
    d = st.to_dict()
    st2 = opt.load_state(d)
    assert st2.base.count == 3 and np.array_equal(st2.base.m, st.base.m)
    for k, v in st2.to_dict().items():
        assert np.array_equal(v, d[k], equal_nan=True) and v.dtype == d[k].dtype
    # continuing from the restored state gives the same step
    u1, _ = opt.update(grad(th), st, th, curvature=lambda d: float(d @ A @ d))
    u2, _ = opt.update(grad(th), st2, th, curvature=lambda d: float(d @ A @ d))
    assert np.array_equal(u1, u2)


def test_bases_that_cannot_work_are_refused():
    from curvlab.methods import ArTuRO

    with pytest.raises(ValueError, match="in place.*copy_state=True"):
        CurvatureLR(base=ArTuRO())
    CurvatureLR(base=ArTuRO(copy_state=True))
    with pytest.raises(TypeError, match="base must not be a CurvatureLR"):
        CurvatureLR(base=CurvatureLR())
    with pytest.raises(TypeError, match="base must be a curvlab Transform"):
        CurvatureLR(base=object())
    with pytest.raises(TypeError, match="params must be"):
        CurvatureLR().init(None)


def test_nan_gradient_leaves_the_base_state_untouched():
    """Issue 11 defect 5: CurvatureLR over Adam/Momentum used to commit the NaN into the base
    state, then skip every later step."""
    th = np.ones(3)
    for base in (Adam(lr=1.0), Momentum(lr=1.0)):
        opt = CurvatureLR(base=base, schedule=0.5)
        st = opt.init(th)
        _, st = opt.update(np.array([0.3, -0.2, 0.1]), st, th, curvature=lambda d: float(d @ d))
        before = st.base.to_dict()
        u, st2 = opt.update(np.array([np.nan, 1.0, 1.0]), st, th, curvature=lambda d: float(d @ d))
        assert not np.any(u) and st2.n_skipped_steps == 1
        for k, v in st2.base.to_dict().items():
            np.testing.assert_array_equal(v, before[k])
        u, st3 = opt.update(np.array([0.3, -0.2, 0.1]), st2, th, curvature=lambda d: float(d @ d))
        assert np.all(np.isfinite(u)) and np.any(u) and st3.consecutive_skips == 0


def test_source_arguments_are_checked():
    """A curvature source is type-checked at construction; data= without a source, params the
    source's layout cannot hold, and a source with no params are refused naming the argument."""
    from curvlab.models import MLPCurvature

    with pytest.raises(TypeError, match="source must be a curvlab CurvatureSource"):
        CurvatureLR(source=object())
    opt = CurvatureLR()
    with pytest.raises(ValueError, match="data= rebinds a curvature source"):
        opt.update(np.ones(2), opt.init(np.ones(2)), np.ones(2), data=(np.ones((1, 2)), np.zeros(1)))
    m = MLP([3, 2])
    p = m.init_params(0)
    X, y = np.ones((4, 3)), np.array([0, 1, 0, 1])
    src = MLPCurvature(m, p, (X, y))
    opt = CurvatureLR(source=src)
    with pytest.raises(ValueError, match=r"params must be the flat \(8,\) vector of the source's layout"):
        opt.update(np.ones(5), opt.init(np.ones(5)), np.ones(5))
    with pytest.raises(ValueError, match="needs params"):
        opt.update(m.loss_and_grad(p, X, y)[1], opt.init(p), None)


@pytest.mark.parametrize("bad", [0, 0.0, -1.5, float("nan"), float("inf"), -float("inf")])
def test_constant_schedule_errors_name_schedule(bad):
    """issue 11: schedule=0/negative/NaN/Inf was refused naming 'lam' (ConstantSchedule's argument)."""
    from curvlab.methods.curvature_lr import CurvatureLR

    with pytest.raises(ValueError, match=r"^schedule must be"):
        CurvatureLR(schedule=bad)


@pytest.mark.parametrize("bad", [True, False, np.bool_(True)])
def test_schedule_refuses_bools(bad):
    """issue 11: schedule=True was accepted as the constant 1.0."""
    from curvlab.methods.curvature_lr import CurvatureLR

    with pytest.raises(TypeError, match=r"schedule must be a number or a callable.*bool"):
        CurvatureLR(schedule=bad)
    assert CurvatureLR(schedule=2).schedule(0) == 2.0     # ints stay accepted
