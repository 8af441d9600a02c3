"""First-order baselines against hand-written float64 recurrences; state round trips."""

import numpy as np
import pytest

from curvlab.methods._transform import apply_updates, tree_map, tree_vdot
from curvlab.methods.baselines import SGD, Adam, AdamW, Momentum


def _quadratic_grads(p, A, b):
    return A @ p - b


def _reference(name, p0, grads_fn, steps, lr, **kw):
    p = p0.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t in range(1, steps + 1):
        g = grads_fn(p)
        if name == "sgd":
            p = p - lr * g
        elif name == "momentum":
            m = kw["momentum"] * m + g
            p = p - lr * m
        elif name in ("adam", "adamw"):
            b1, b2, eps, wd = 0.9, 0.999, 1e-8, kw.get("weight_decay", 0.0)
            gg = g + wd * p if name == "adam" else g
            m = b1 * m + (1 - b1) * gg
            v = b2 * v + (1 - b2) * gg * gg
            step = lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            p = p - step - (lr * wd * p if name == "adamw" else 0.0)
    return p


@pytest.mark.parametrize(
    "name, opt, kw",
    [
        ("sgd", SGD(lr=0.05), {}),
        ("momentum", Momentum(lr=0.05, momentum=0.8), {"momentum": 0.8}),
        ("adam", Adam(lr=0.05, weight_decay=0.1), {"weight_decay": 0.1}),
        ("adamw", AdamW(lr=0.05, weight_decay=0.1), {"weight_decay": 0.1}),
    ],
)
def test_trajectory_matches_reference(name, opt, kw):
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((6, 6))
    A = Q @ Q.T / 6 + np.eye(6)
    b = rng.standard_normal(6)
    p0 = rng.standard_normal(6)
    p, state = p0.copy(), opt.init(p0)
    for _ in range(50):
        p, state = opt.step(p, _quadratic_grads(p, A, b), state)
    np.testing.assert_allclose(p, _reference(name, p0, lambda q: _quadratic_grads(q, A, b), 50, 0.05, **kw),
                               rtol=1e-12, atol=1e-12)
    assert state.count == 50


@pytest.mark.parametrize("opt", [SGD(0.1), Momentum(0.1, nesterov=True), Adam(0.1), AdamW(0.1)])
def test_list_params_state_roundtrip_is_lossless(opt):
    rng = np.random.default_rng(1)
    p = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    s = opt.init(p)
    for _ in range(3):
        p, s = opt.step(p, tree_map(lambda x: 2 * x, p), s)
    d = s.to_dict()
    s2 = opt.load_state(d)
    for k, v in s2.to_dict().items():
        np.testing.assert_array_equal(v, d[k])
        assert v.dtype == d[k].dtype
    u1, _ = opt.update(p, s, p)
    u2, _ = opt.update(p, s2, p)
    for a, c in zip(u1, u2):
        np.testing.assert_array_equal(a, c)
        assert a.dtype == np.float32


def test_bad_hyperparameters_and_shapes():
    with pytest.raises(ValueError, match="lr must be in"):
        SGD(lr=0.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        Momentum(momentum=1.0)
    opt = Adam()
    s = opt.init(np.zeros(3))
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(4,\), expected \(3,\)"):
        opt.update(np.zeros(4), s, np.zeros(3))
    with pytest.raises(ValueError, match="weight_decay needs params"):
        SGD(0.1, weight_decay=0.1).update(np.zeros(3), SGD(0.1).init(np.zeros(3)))


def test_tree_helpers():
    a = [np.ones(2), np.ones((2, 2))]
    assert tree_vdot(a, a) == 6.0
    assert np.array_equal(apply_updates(np.ones(2), np.ones(2)), [2.0, 2.0])
    with pytest.raises(ValueError, match="tree structures differ"):
        tree_map(lambda x, y: x, a, np.ones(2))
