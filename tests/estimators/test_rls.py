"""Diagonal Kalman/RLS curvature estimator: recovery, covariance, noise statistics, policies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from curvlab.estimators import DiagonalRLS, RLSState
from tests.conftest import rel_err

H = np.array([0.5, 1.0, 2.0, 4.0, 8.0])


def _run(est, xp, rng, steps, H, b=None, noise=0.0, dtype=np.float64, track=None):
    d = H.shape[0]
    b = np.zeros(d) if b is None else b
    state = est.init(xp.zeros(d, dtype=dtype))
    for _ in range(steps):
        x = rng.standard_normal(d)
        g = H * x + b + noise * rng.standard_normal(d)
        state, _ = est.update(state, xp.asarray(g.astype(dtype)), xp.asarray(x.astype(dtype)))
        if track is not None:
            track(state)
    return state


def test_noiseless_quadratic_recovers_curvature(xp, rng):
    est = DiagonalRLS(q=1e-3, r=1.0, P0=5e-5)
    dets = []

    def det(s):
        d = s.P00 * s.P11 - s.P01 ** 2
        dets.append(np.asarray(getattr(d, "get", lambda: d)()))

    state = _run(est, xp, rng, 500, H, b=rng.standard_normal(5), track=det)
    assert rel_err(state.h, H) <= 1e-5
    assert np.min(dets) > 0


def test_noiseless_float32_looser(rng):
    est = DiagonalRLS(q=1e-3, r=1.0, P0=5e-5)
    state = _run(est, np, rng, 500, H, dtype=np.float32)
    assert state.h.dtype == np.float32
    assert rel_err(state.h, H) <= 1e-3


def test_covariance_psd_over_10000_steps(rng):
    # 64 coordinates driven by noisy gradients; det P and the diagonal stay positive throughout
    d = 64
    Hc = rng.uniform(0.1, 10, d)
    est = DiagonalRLS(q=2e-3, r=1.2, P0=5e-5)
    state = est.init(np.zeros(d))
    worst = np.inf
    for t in range(10_000):
        x = rng.standard_normal(d) * (1.0 + (t % 7))
        state, _ = est.update(state, Hc * x + rng.standard_normal(d), x)
        worst = min(worst, float(np.min(state.P00)), float(np.min(state.P11)),
                    float(np.min(state.P00 * state.P11 - state.P01 ** 2)))
    assert worst > 0


def test_unbiased_under_gradient_noise():
    # E1.1(a) of the spec: exogenous iterates, N(0,1) gradient noise; five seeds side by side as
    # 25 coordinates. The mean of h over the last 1000 of 3000 steps is unbiased: its error must lie
    # within 5 standard errors, estimated from the spread across the seeds.
    seeds, d = 5, 5
    Hc = np.tile(H, seeds)
    rng = np.random.default_rng(7)
    est = DiagonalRLS(q=2e-3, r=1.2, P0=5e-5)
    state = est.init(np.zeros(seeds * d))
    b = rng.standard_normal(seeds * d)
    acc = np.zeros(seeds * d)
    for t in range(3000):
        x = rng.standard_normal(seeds * d)
        state, _ = est.update(state, Hc * x + b + rng.standard_normal(seeds * d), x)
        if t >= 2000:
            acc += state.h
    means = (acc / 1000).reshape(seeds, d)
    se = means.std(axis=0, ddof=1) / np.sqrt(seeds)
    err = means.mean(axis=0) - H
    assert np.all(np.abs(err) <= 5 * se + 1e-3), (err, se)
    assert np.all(np.abs(err) <= 0.1)


def test_constant_x_p11_growth():
    # x held at x0 in {0, 0.5, 2} (three coordinates): P11 grows by q/(1 + x0^2) per step
    q = 1e-3
    x0 = np.array([0.0, 0.5, 2.0])
    est = DiagonalRLS(q=q, r=1.0, P0=5e-5)
    state = est.init(np.zeros(3))
    g = np.full(3, 0.3)
    for t in range(4000):
        state, _ = est.update(state, g, x0)
        if t == 2999:
            start = state.P11.copy()
    growth = (state.P11 - start) / 1000
    np.testing.assert_allclose(growth, q / (1 + x0 ** 2), rtol=1e-6)


def test_forgetting_variant_recovers_curvature(rng):
    est = DiagonalRLS(q=0.0, r=1.0, P0=1.0, variant="forgetting", forget=0.98)
    state = _run(est, np, rng, 1000, H, b=rng.standard_normal(5))
    assert rel_err(state.h, H) <= 1e-7


def test_forgetting_tracks_a_change(rng):
    est = DiagonalRLS(q=0.0, r=1.0, P0=1.0, variant="forgetting", forget=0.9)
    state = _run(est, np, rng, 300, H)
    for _ in range(300):
        x = rng.standard_normal(5)
        state, _ = est.update(state, 2 * H * x, x)
    assert rel_err(state.h, 2 * H) <= 1e-6


def test_first_step_reference_initialisation():
    est = DiagonalRLS(q=0.01, r=1.0, P0=5e-5)
    state = est.init(np.zeros(2))
    g, x = np.array([0.7, -0.2]), np.array([0.5, 2.0])
    state, _ = est.update(state, g, x)
    # init a = g, h = 0.1, P = P0 I; then K1-K5 with innovation -0.1 x
    P00 = P11 = 5e-5 + 0.01
    k0, k1 = P00, P11 * x
    S = k0 + k1 * x + 1.0
    np.testing.assert_allclose(state.a, g + k0 / S * (-0.1 * x), rtol=1e-14)
    np.testing.assert_allclose(state.h, 0.1 + k1 / S * (-0.1 * x), rtol=1e-14)
    assert state.initialized and state.count == 1


def test_nonfinite_gradients_skip_coordinates(rng):
    est = DiagonalRLS(q=0.01, r=1.0, P0=5e-5)
    state = _run(est, np, rng, 5, H)
    before = state.to_dict()
    g = rng.standard_normal(5)
    g[[1, 3]] = [np.nan, -np.inf]
    state, info = est.update(state, g, rng.standard_normal(5))
    assert info.n_skipped == 2 and state.n_skipped == 2
    for k in ("a", "h", "P00", "P01", "P11"):
        np.testing.assert_array_equal(getattr(state, k)[[1, 3]], before[k][[1, 3]])
        assert np.all(getattr(state, k)[[0, 2, 4]] != before[k][[0, 2, 4]])


def test_state_roundtrip_and_lists(rng, tmp_path):
    est = DiagonalRLS(q=0.01, r=1.0, P0=5e-5, psd_guard=True)
    params = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    state = est.init(params)
    for _ in range(3):
        g = [rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
        state, _ = est.update(state, g, [x + 1 for x in g])
    np.savez(tmp_path / "s.npz", **state.to_dict())
    loaded = RLSState.from_dict(dict(np.load(tmp_path / "s.npz")))
    assert loaded.count == 3 and loaded.initialized is True
    for k in ("a", "h", "P00", "P01", "P11"):
        for u, v in zip(getattr(state, k), getattr(loaded, k)):
            assert u.dtype == v.dtype and u.shape == v.shape
            np.testing.assert_array_equal(u, v)
    g = [np.ones((2, 3), np.float32), np.ones(4, np.float32)]
    s1, _ = est.update(state, g, g, copy=True)
    s2, _ = est.update(loaded, g, g)
    np.testing.assert_array_equal(s1.h[0], s2.h[0])
    assert not np.array_equal(state.h[0], s1.h[0])  # copy=True left the input alone


def test_reference_impl_agrees(rng):
    a = DiagonalRLS(q=0.01, r=1.0, P0=5e-5)
    b = DiagonalRLS(q=0.01, r=1.0, P0=5e-5, impl="reference")
    sa, sb = a.init(np.zeros(7)), b.init(np.zeros(7))
    for _ in range(50):
        x = rng.standard_normal(7)
        g = 3 * x + rng.standard_normal(7)
        sa, _ = a.update(sa, g, x, xscale=0.99)
        sb, _ = b.update(sb, g, x, xscale=0.99)
    assert rel_err(sa.h, sb.h) <= 1e-13


@pytest.mark.parametrize("kw,match", [
    (dict(q=-1e-3, r=1.0, P0=0.0), "q"),
    (dict(q=0.0, r=0.0, P0=0.0), "r"),
    (dict(q=0.0, r=-1.0, P0=0.0), "r"),
    (dict(q=0.0, r=1.0, P0=-1.0), "P0"),
    (dict(q=0.0, r=1.0, P0=0.0, variant="ekf"), "variant"),
    (dict(q=0.0, r=1.0, P0=0.0, variant="forgetting", forget=1.5), "forget"),
    (dict(q=0.0, r=1.0, P0=0.0, forget=0.9), "forget"),
    (dict(q=math.nan, r=1.0, P0=0.0), "q"),
    (dict(q=0.0, r=math.inf, P0=0.0), "r"),
    (dict(q=0.0, r=1.0, P0=math.nan), "P0"),
    (dict(q=0.0, r=1.0, P0=0.0, h0=math.nan), "h0"),
    (dict(q=0.0, r=1.0, P0=0.0, h0=-math.inf), "h0"),
    (dict(q=0.0, r=1.0, P0=0.0, variant="forgetting", forget=math.nan), "forget"),
    (dict(q=0.0, r=1.0, P0=0.0, impl="fortran"), "impl"),
    (dict(q=0.0, r=1.0, P0=0.0, impl=None), "impl"),
])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        DiagonalRLS(**kw)


def test_mismatched_shapes():
    est = DiagonalRLS(q=0.0, r=1.0, P0=0.0)
    state = est.init(np.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(3,\), expected \(4,\)"):
        est.update(state, np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="structure"):
        est.update(state, [np.zeros(4)], np.zeros(4))


def test_bad_option_types_and_xscale():
    with pytest.raises(TypeError, match="q"):
        DiagonalRLS(q="0.1", r=1.0, P0=0.0)
    est = DiagonalRLS(q=0.0, r=1.0, P0=0.0)
    state = est.init(np.zeros(4))
    for xs in (math.nan, math.inf):
        with pytest.raises(ValueError, match="xscale"):
            est.update(state, np.ones(4), np.ones(4), xscale=xs)
    assert state.count == 0 and not state.initialized  # refused before anything changed
    for bad in (None, "g", 3.0):
        with pytest.raises(TypeError, match="grads"):
            est.update(state, bad, np.ones(4))
        with pytest.raises(TypeError, match="x"):
            est.update(state, np.ones(4), bad)


def test_nonfinite_regressor_skips_coordinates(rng):
    est = DiagonalRLS(q=0.01, r=1.0, P0=5e-5)
    state = _run(est, np, rng, 5, H)
    before = state.to_dict()
    x = rng.standard_normal(5)
    x[[0, 4]] = [np.inf, np.nan]
    state, info = est.update(state, rng.standard_normal(5), x)
    assert info.n_skipped == 2
    for k in ("a", "h", "P00", "P01", "P11"):
        np.testing.assert_array_equal(getattr(state, k)[[0, 4]], before[k][[0, 4]])
        assert np.all(np.isfinite(getattr(state, k)))


@pytest.mark.parametrize("h0", [-2.5, 0.0, 0.1, 1e6])
def test_any_finite_initial_curvature_is_used(h0, rng):
    """h0 is the first curvature estimate (spec 001 §3: h = 0.1 at init): any finite real,
    a negative one included (the filter tracks negative curvature)."""
    est = DiagonalRLS(q=0.0, r=1.0, P0=0.0, h0=h0)  # P0 = 0: the first update keeps h = h0
    state, _ = est.update(est.init(np.zeros(3)), rng.standard_normal(3), rng.standard_normal(3))
    np.testing.assert_array_equal(state.h, np.full(3, h0))
    with pytest.raises(TypeError, match="h0"):
        DiagonalRLS(q=0.0, r=1.0, P0=0.0, h0=True)


def test_imports_no_private_module_of_another_package():
    """rls.py takes its tree helpers from curvlab.tree, not from curvlab.methods._transform."""
    import ast
    import inspect

    import curvlab.estimators.rls as rls

    for node in ast.walk(ast.parse(inspect.getsource(rls))):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            private = node.module != "__future__" and any(p.startswith("_") for p in parts)
            assert not private, f"imports private module {node.module}"
