"""First-order baselines against hand-written float64 recurrences; state round trips."""

import numpy as np
import pytest

from curvlab.methods._transform import apply_updates, tree_map, tree_vdot
from curvlab.methods.baselines import SGD, Adam, AdamW, Momentum, scale_by_adam, trace


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


def test_options_that_cannot_work_are_refused_at_construction():
    """Issue 11, defect 6: refused by __init__/init naming the argument, not at the first update."""
    with pytest.raises(ValueError, match=r"eps must be in \(0"):
        Adam(eps=0.0)          # NaN = 0/0 on a zero gradient coordinate
    with pytest.raises(ValueError, match=r"eps must be in \(0"):
        AdamW(eps=-1e-8)
    with pytest.raises(TypeError, match="lr must be a real number"):
        SGD(lr="0.1")
    with pytest.raises(ValueError, match="b1 must be in"):
        Adam(b1=float("nan"))
    for opt in (SGD(), Momentum(), Adam(), AdamW()):
        with pytest.raises(TypeError, match="params must be a float32/float64 array or a list/tuple"):
            opt.init(None)     # used to build an unsaveable object-array state
        with pytest.raises(TypeError, match=r"params\[1\] must have dtype float32 or float64"):
            opt.init([np.zeros(2), np.zeros(2, dtype=int)])
    # a zero gradient is a zero Adam step, not NaN
    opt = Adam()
    u, _ = opt.update(np.zeros(3), opt.init(np.ones(3)), np.ones(3))
    assert np.array_equal(u, np.zeros(3))


def test_apply_updates_refuses_mismatches_naming_the_argument():
    with pytest.raises(ValueError, match=r"updates\[0\] has shape \(1,\), expected \(3,\)"):
        apply_updates(np.ones(3), np.ones(1))          # used to broadcast silently
    with pytest.raises(ValueError, match="updates must have the structure of params"):
        apply_updates([np.ones(2), np.ones(3)], [np.ones(2)])
    with pytest.raises(ValueError, match="updates must have the structure of params"):
        apply_updates(np.ones(2), [np.ones(2)])
    with pytest.raises(TypeError, match=r"updates\[0\] must have dtype float32 or float64"):
        apply_updates(np.ones(2), np.ones(2, dtype=complex))
    with pytest.raises(TypeError, match=r"params\[0\] must be a NumPy or CuPy array"):
        apply_updates([1.0, 2.0], [np.ones(1), np.ones(1)])
    out = apply_updates([np.ones(2, dtype=np.float32)], [np.full(2, 0.5)])
    assert out[0].dtype == np.float32 and np.array_equal(out[0], [1.5, 1.5])


def test_state_saved_before_the_nan_counters_still_loads():
    opt = Adam()
    st = opt.init(np.ones(3))
    d = st.to_dict()
    for k in ("n_skipped_steps", "consecutive_skips"):
        del d[k]
    back = opt.load_state(d)
    assert back.n_skipped_steps == 0 and back.consecutive_skips == 0
    del d["m"]
    with pytest.raises(KeyError, match="lacks the field 'm'"):
        opt.load_state(d)


@pytest.mark.parametrize("make", [lambda **k: scale_by_adam(**k), lambda **k: trace(0.9, **k)],
                         ids=["adam", "trace"])
def test_direction_blocks_used_alone_keep_their_state_finite(make):
    """Issue 11, defect 5: scale_by_adam/trace on their own (no chain) skip a NaN/Inf gradient:
    zero update, state bitwise unchanged but for the counters; raise and the cap as the aliases."""
    p = np.linspace(-1.0, 1.0, 5)
    opt = make()
    st = opt.init(p)
    u, st = opt.update(np.cos(p), st, p)
    before = st.to_dict()
    for bad in (np.nan, np.inf, -np.inf):
        g = np.cos(p)
        g[2] = bad
        u, new = opt.update(g, st, p)
        assert np.array_equal(u, np.zeros(5)) and new.consecutive_skips == 1
        after = new.to_dict()
        for k in before:
            if k not in ("n_skipped_steps", "consecutive_skips"):
                np.testing.assert_array_equal(after[k], before[k], strict=True)
    with pytest.raises(FloatingPointError, match=r"non-finite values in grads \(1 NaN/Inf of 5\)"):
        make(nan_policy="raise").update(np.where(p > 0.6, np.nan, 0.0), st, p)
    capped = make(max_consecutive_skips=1)
    _, s = capped.update(np.full(5, np.inf), st, p)
    with pytest.raises(FloatingPointError, match="consecutive"):
        capped.update(np.full(5, np.inf), s, p)
