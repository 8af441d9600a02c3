"""The transform contract, run on every transform of curvlab.methods (DESIGN.md).

Every registered transform, on a small problem of its own, in float32 and float64:

- NaN and Inf injected into the gradient (and, where the method takes one, into the
  curvature) at step k leave the state bitwise unchanged and finite but for the skip counters,
  return a zero update, and the later steps equal a run without that step;
- ``nan_policy="raise"`` raises ``FloatingPointError``; the skip cap raises after
  ``max_consecutive_skips`` skips in a row, and a finite step resets the run;
- ``nan_policy="propagate"`` does not skip;
- the state round-trips through ``to_dict``/``from_dict`` (plain arrays, ``np.savez`` without
  pickle) and the restored state continues bit for bit;
- ``update`` does not mutate the input state, or the transform declares ``inplace`` and
  returns the same object.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Callable

import numpy as np
import pytest

from curvlab.methods import DSGD, SGD, Adam, AdamW, ArTuRO, CurvatureLR, ExactNewton, Momentum
from curvlab.methods._transform import apply_updates, state_leaves

COUNTERS = ("n_skipped_steps", "consecutive_skips")
STEPS, BAD_STEP = 6, 2


@dataclasses.dataclass
class Case:
    """A transform factory and its problem: ``params(dtype)``, ``grad(params, t)`` and
    ``extras(params, t, bad)`` (``bad``: a non-finite value to put into the curvature, or None)."""

    make: Callable[..., Any]
    params: Callable[[Any], Any]
    grad: Callable[[Any, int], Any]
    extras: Callable[[Any, int, Any], dict] = lambda p, t, bad: {}
    curvature: bool = False  # the method takes a curvature that can be poisoned
    propagates: bool = True  # "propagate" lets NaN reach the update (ArTuRO: its filter keeps bad coordinates)


def _leaves(t):
    return list(t) if isinstance(t, (list, tuple)) else [t]


def _map(fn, t):
    return [fn(x) for x in t] if isinstance(t, (list, tuple)) else fn(t)


def _list_params(dtype):
    rng = np.random.default_rng(3)
    return [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(5).astype(dtype)]


def _quad_grad(p, t):
    return _map(lambda x: (1.5 * x + np.sin(np.arange(x.size).reshape(x.shape) + t)).astype(x.dtype), p)


def _quad_curv(bad):
    def curv(d):
        return float(bad) if bad is not None else sum(1.5 * float(np.sum(x.astype(np.float64) ** 2)) for x in _leaves(d))
    return curv


H = np.array([0.5, 1, 2, 4, 8, 0.1])
B = np.array([0.1, -0.2, 0.3, 0, 0.5, -0.4])
W0 = np.array([0.5, -1, 2, 0, -0.3, 1.2])
ARTURO_CFG = dict(kl_bound=0.01, reg_weight=0.1, prior_prec=0.0015, measurement_noise=1.0,
                  dynamic_model_noise=0.01, start_filter_cov=5e-5, nu=1.3, var_init=0.01)


def _arturo_grad(w, t):
    return _map(lambda x: (H[: x.size].reshape(x.shape) * x + B[: x.size].reshape(x.shape)
                           + 0.05 * np.sin(1.7 * t + np.arange(x.size).reshape(x.shape))).astype(x.dtype), w)


def _newton_params(dtype):
    rng = np.random.default_rng(5)
    return [(0.5 * rng.standard_normal((4, 4))).astype(dtype), (0.5 * rng.standard_normal((3, 5))).astype(dtype)]


_NX = np.random.default_rng(6).standard_normal((6, 3))
_NY = np.random.default_rng(7).integers(0, 3, 6)


def _newton_extras(p, t, bad):
    X = _NX + 0.1 * t
    if bad is not None:
        X = np.full_like(X, bad)  # every sample's curvature non-finite
    return {"X": X, "y": _NY, "activation": "tanh"}


REGISTRY: dict[str, Case] = {
    "SGD": Case(lambda **k: SGD(lr=0.1, **k), _list_params, _quad_grad),
    "SGD-wd": Case(lambda **k: SGD(lr=0.1, weight_decay=0.1, **k), _list_params, _quad_grad),
    "Momentum": Case(lambda **k: Momentum(lr=0.1, momentum=0.8, **k), _list_params, _quad_grad),
    "Momentum-nesterov": Case(lambda **k: Momentum(lr=0.1, nesterov=True, weight_decay=0.01, **k), _list_params,
                              _quad_grad),
    "Adam": Case(lambda **k: Adam(lr=0.05, weight_decay=0.1, **k), _list_params, _quad_grad),
    "AdamW": Case(lambda **k: AdamW(lr=0.05, **k), _list_params, _quad_grad),
    "ArTuRO-reference": Case(lambda **k: ArTuRO(**ARTURO_CFG, **k), lambda dt: W0.astype(dt), _arturo_grad,
                             propagates=False),
    "ArTuRO-exact-copy": Case(lambda **k: ArTuRO(**ARTURO_CFG, mode="exact", weight_decay=0.5, copy_state=True, **k),
                              lambda dt: [W0[:4].reshape(2, 2).astype(dt), W0[4:].astype(dt)], _arturo_grad,
                              propagates=False),
    "CurvatureLR-SGD": Case(lambda **k: CurvatureLR(schedule=0.5, **k), _list_params, _quad_grad,
                            lambda p, t, bad: {"curvature": _quad_curv(bad)}, curvature=True),
    "CurvatureLR-Adam": Case(lambda **k: CurvatureLR(base=Adam(lr=1.0), schedule=0.5, **k), _list_params,
                             _quad_grad, lambda p, t, bad: {"curvature": _quad_curv(bad)}, curvature=True),
    "CurvatureLR-Momentum": Case(lambda **k: CurvatureLR(base=Momentum(lr=1.0), schedule=0.5, **k), _list_params,
                                 _quad_grad, lambda p, t, bad: {"curvature": _quad_curv(bad)}, curvature=True),
    "ExactNewton": Case(lambda **k: ExactNewton(lr=0.5, lam=1.0, **k), _newton_params,
                        lambda p, t: _map(lambda x: (0.1 * x).astype(x.dtype), p), _newton_extras, curvature=True),
    "ExactNewton-block": Case(lambda **k: ExactNewton(lr=0.5, lam=1.0, batch_mode="exact_block", **k),
                              _newton_params, lambda p, t: _map(lambda x: (0.1 * x).astype(x.dtype), p),
                              _newton_extras, curvature=True),
    "DSGD-constant": Case(lambda **k: DSGD(rule="constant", constants=[4.0, 8.0], **k),
                          lambda dt: [x.reshape(3, 4) if x.size == 12 else x.reshape(1, 5) for x in _list_params(dt)],
                          _quad_grad),
    "DSGD-estimate": Case(lambda **k: DSGD(rule="estimate", norm="frobenius", selection="random", **k),
                          lambda dt: [x.reshape(3, 4) if x.size == 12 else x.reshape(1, 5) for x in _list_params(dt)],
                          _quad_grad, lambda p, t, bad: {"curvature": _quad_curv(None)}),
}
# (DSGD's curvature is a per-layer estimate with its own fallback, L_prev, not a skip.)

# ArTuRO without copy_state updates its state in place (declared): the contract checks the declaration
REGISTRY["ArTuRO-exact-inplace"] = Case(lambda **k: ArTuRO(**ARTURO_CFG, mode="exact", **k),
                                        lambda dt: W0.astype(dt), _arturo_grad, propagates=False)

DTYPES = [np.float32, np.float64]
BAD = [np.nan, np.inf, -np.inf]


def _poison(g, value):
    g = [x.copy() for x in _leaves(g)] if isinstance(g, (list, tuple)) else g.copy()
    _leaves(g)[-1].reshape(-1)[1] = value
    return g


def _snapshot(state) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in state.to_dict().items()}


def _assert_same(a: dict, b: dict, skip=()) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k in skip:
            continue
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k, strict=True)


def _step(opt, params, state, g, extras):
    upd, new = opt.update(g, state, params, **extras)
    return apply_updates(params, upd), new, upd


def _run(case, opt, dtype, bad_at=None, bad=None, where="grad"):
    """STEPS finite steps; with bad_at, a poisoned step is inserted before finite step bad_at."""
    p = case.params(dtype)
    st = opt.init(p)
    trace = []
    for t in range(STEPS):
        if t == bad_at:
            g = case.grad(p, t)
            ex = case.extras(p, t, bad if where == "curvature" else None)
            if where == "grad":
                g = _poison(g, bad)
            before = _snapshot(st)
            with np.errstate(invalid="ignore", over="ignore"):  # the NaN goes through the model's forward pass
                p_new, st_new, upd = _step(opt, p, st, g, ex)
            for u in _leaves(upd):
                assert not np.any(u), "a skipped step must return a zero update"
            after = _snapshot(st_new)
            _assert_same(before, after, skip=COUNTERS)
            assert after["n_skipped_steps"] == before["n_skipped_steps"] + 1
            assert after["consecutive_skips"] == 1
            for x in state_leaves(st_new):
                if x.shape in {tuple(y.shape) for y in _leaves(p)}:
                    assert np.all(np.isfinite(x)), "state poisoned"
            for a, b in zip(_leaves(p_new), _leaves(p)):
                np.testing.assert_array_equal(a, b)
            st = st_new
        p, st, _ = _step(opt, p, st, case.grad(p, t), case.extras(p, t, None))
        trace.append([np.array(x) for x in _leaves(p)])
    return trace, st


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_nonfinite_gradient_is_skipped_and_later_steps_unchanged(name, dtype):
    case = REGISTRY[name]
    ref, ref_st = _run(case, case.make(), dtype)
    for bad in BAD:
        got, st = _run(case, case.make(), dtype, bad_at=BAD_STEP, bad=bad)
        for a, b in zip(got, ref):
            for x, y in zip(a, b):
                assert x.dtype == dtype
                np.testing.assert_array_equal(x, y)
        assert st.n_skipped_steps == 1 and st.consecutive_skips == 0
        _assert_same(_snapshot(ref_st), _snapshot(st), skip=COUNTERS)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if c.curvature))
def test_nonfinite_curvature_is_skipped_and_later_steps_unchanged(name, dtype):
    case = REGISTRY[name]
    ref, _ = _run(case, case.make(), dtype)
    for bad in BAD:
        got, st = _run(case, case.make(), dtype, bad_at=BAD_STEP, bad=bad, where="curvature")
        for a, b in zip(got, ref):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
        assert st.n_skipped_steps == 1
    p = case.params(dtype)
    opt = case.make(nan_policy="raise")
    with pytest.raises(FloatingPointError, match="non-finite values in the curvature"), \
            np.errstate(invalid="ignore", over="ignore"):
        opt.update(case.grad(p, 0), opt.init(p), p, **case.extras(p, 0, np.nan))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_raise_policy_and_skip_cap(name):
    case = REGISTRY[name]
    p = case.params(np.float64)
    opt = case.make(nan_policy="raise")
    st = opt.init(p)
    with pytest.raises(FloatingPointError, match=r"non-finite values in grads.*NaN/Inf"):
        opt.update(_poison(case.grad(p, 0), np.nan), st, p, **case.extras(p, 0, None))
    opt = case.make(max_consecutive_skips=2)
    st = opt.init(p)
    for _ in range(2):
        _, st = opt.update(_poison(case.grad(p, 0), np.nan), st, p, **case.extras(p, 0, None))
    assert st.consecutive_skips == 2
    # a finite step resets the run
    _, st = opt.update(case.grad(p, 0), st, p, **case.extras(p, 0, None))
    assert st.consecutive_skips == 0 and st.n_skipped_steps == 2
    for _ in range(2):
        _, st = opt.update(_poison(case.grad(p, 1), np.inf), st, p, **case.extras(p, 1, None))
    with pytest.raises(FloatingPointError, match="consecutive"):
        opt.update(_poison(case.grad(p, 1), np.inf), st, p, **case.extras(p, 1, None))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_policy_arguments_are_validated(name):
    case = REGISTRY[name]
    with pytest.raises(ValueError, match="nan_policy"):
        case.make(nan_policy="ignore")
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        case.make(max_consecutive_skips=0)
    with pytest.raises(TypeError, match="max_consecutive_skips"):
        case.make(max_consecutive_skips=2.5)


@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if not n.startswith(("ExactNewton", "DSGD"))))
def test_propagate_policy_does_not_skip(name):
    case = REGISTRY[name]
    p = case.params(np.float64)
    opt = case.make(nan_policy="propagate")
    with np.errstate(all="ignore"):
        upd, st = opt.update(_poison(case.grad(p, 0), np.nan), opt.init(p), p, **case.extras(p, 0, None))
    assert st.n_skipped_steps == 0 and st.count == 1
    if case.propagates:
        assert not all(np.all(np.isfinite(u)) for u in _leaves(upd))
    else:  # the step went on; the non-finite coordinate kept its state (ArTuRO's filter kernel)
        assert all(np.all(np.isfinite(u)) for u in _leaves(upd))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_state_roundtrip_without_pickle_and_input_state_untouched(name, dtype, tmp_path):
    case = REGISTRY[name]
    opt = case.make()
    p = case.params(dtype)
    st = opt.init(p)
    for t in range(3):
        p, st, _ = _step(opt, p, st, case.grad(p, t), case.extras(p, t, None))
    d = st.to_dict()
    for k, v in d.items():
        assert isinstance(v, np.ndarray) and v.dtype != object, k
    buf = io.BytesIO()
    np.savez(buf, **d)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        st2 = opt.load_state(dict(z))
    _assert_same(_snapshot(st), _snapshot(st2))
    # input state untouched (or the declared in-place update returns the same object)
    before = _snapshot(st)
    upd1, new1 = opt.update(case.grad(p, 3), st, p, **case.extras(p, 3, None))
    if getattr(opt, "inplace", False):
        assert new1 is st
    else:
        assert new1 is not st
        _assert_same(before, _snapshot(st))
    upd2, new2 = opt.update(case.grad(p, 3), st2, p, **case.extras(p, 3, None))
    for a, b in zip(_leaves(upd1), _leaves(upd2)):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    _assert_same(_snapshot(new1), _snapshot(new2))
