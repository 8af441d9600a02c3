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
  returns the same object;
- pytree params (dict, tuple) keep their structure, float32/float64 their dtype, with the
  numbers of the list form;
- the building blocks (``chain``, ``scale_by_lr``, ``add_decayed_weights``) give the aliases
  (``SGD``, ``Momentum``, ``Adam``, ``AdamW``) bit for bit; schedules; ``direction``;
  ``update_with_info`` (state apart from info).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Callable

import numpy as np
import pytest

from curvlab import tree as T
from curvlab.methods import (
    DSGD,
    SGD,
    Adam,
    AdamW,
    ArTuRO,
    CurvatureLR,
    ExactNewton,
    Momentum,
    add_decayed_weights,
    chain,
    scale_by_adam,
    scale_by_lr,
    trace,
)
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

# the building blocks, each under the chain that applies the NaN policy
REGISTRY["chain-scale_by_lr"] = Case(lambda **k: chain(scale_by_lr(0.1), **k), _list_params, _quad_grad)
REGISTRY["chain-scale_by_lr-schedule"] = Case(lambda **k: chain(scale_by_lr(lambda n: 0.2 / (1 + n)), **k),
                                              _list_params, _quad_grad)
REGISTRY["chain-add_decayed_weights"] = Case(lambda **k: chain(add_decayed_weights(0.1), scale_by_lr(0.1), **k),
                                             _list_params, _quad_grad)
REGISTRY["chain-adam-decoupled-mask"] = Case(
    lambda **k: chain(scale_by_adam(), scale_by_lr(0.05), add_decayed_weights(0.1, mask=lambda p: T.tree_map(lambda x: x.ndim == 2, p), lr=0.05),
                      **k), _list_params, _quad_grad)
REGISTRY["chain-trace"] = Case(lambda **k: chain(trace(0.8, nesterov=True), scale_by_lr(0.1), **k), _list_params,
                               _quad_grad)
REGISTRY["CurvatureLR-chain-schedule"] = Case(
    lambda **k: CurvatureLR(base=chain(scale_by_adam(), scale_by_lr(lambda n: 0.5 ** n)), schedule=0.5, **k),
    _list_params, _quad_grad, lambda p, t, bad: {"curvature": _quad_curv(bad)}, curvature=True)
REGISTRY["CurvatureLR-ExactNewton"] = Case(
    lambda **k: CurvatureLR(base=ExactNewton(lr=0.5, lam=1.0), schedule=0.5, **k), _newton_params,
    lambda p, t: _map(lambda x: (0.1 * x).astype(x.dtype), p),
    lambda p, t, bad: {**_newton_extras(p, t, None), "curvature": _quad_curv(bad)}, curvature=True)

# the building blocks on their own (outermost: their own NaN policy applies) and a nested chain
# (one check for the whole step, by the outer chain's policy)
REGISTRY["block-scale_by_adam"] = Case(lambda **k: scale_by_adam(b1=0.8, **k), _list_params, _quad_grad)
REGISTRY["block-trace"] = Case(lambda **k: trace(0.8, **k), _list_params, _quad_grad)
REGISTRY["block-trace-nesterov"] = Case(lambda **k: trace(decay=0.7, nesterov=True, **k), _list_params, _quad_grad)
REGISTRY["block-scale_by_lr"] = Case(lambda **k: scale_by_lr(0.1, **k), _list_params, _quad_grad)
REGISTRY["block-scale_by_lr-schedule"] = Case(lambda **k: scale_by_lr(lambda n: 0.2 / (1 + n), **k), _list_params,
                                              _quad_grad)
REGISTRY["block-add_decayed_weights"] = Case(lambda **k: add_decayed_weights(0.1, **k), _list_params, _quad_grad)
REGISTRY["block-add_decayed_weights-decoupled-mask"] = Case(
    lambda **k: add_decayed_weights(0.1, mask=lambda p: T.tree_map(lambda x: x.ndim == 2, p), lr=0.05, **k),
    _list_params, _quad_grad)
REGISTRY["chain-nested"] = Case(
    lambda **k: chain(chain(add_decayed_weights(0.01), scale_by_adam(nan_policy="raise")), trace(0.5),
                      scale_by_lr(0.05), **k), _list_params, _quad_grad)

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
    assert st.n_skipped_steps == 0
    if "count" in {f.name for f in dataclasses.fields(st)}:
        assert st.count == 1
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


# ----------------------------------------------------------------------------- pytrees and dtypes
def _as(kind, p):
    """The list/array params ``p`` as a dict (sorted keys keep the order) or a tuple."""
    leaves = _leaves(p)
    if kind == "dict":
        return {f"p{i}": x for i, x in enumerate(leaves)}
    return tuple(leaves)


def _tree_extras(case, p_list, t):
    ex = dict(case.extras(p_list, t, None))
    if "curvature" in ex:  # the problem's curvature reads a list
        curv = ex["curvature"]
        ex["curvature"] = lambda d, curv=curv: curv(T.tree_leaves(d) if isinstance(d, (dict, tuple)) else d)
    return ex


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["dict", "tuple"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_pytree_params_keep_structure_dtype_and_numbers(name, kind, dtype):
    """dict/tuple params: updates of the same structure and dtypes, the numbers of the list form."""
    case = REGISTRY[name]
    p_ref = case.params(dtype)
    if not isinstance(p_ref, (list, tuple)):
        p_ref = [p_ref]   # a flat-array method takes a list of one array as well
    opt_ref, opt = case.make(), case.make()
    st_ref, p = opt_ref.init(p_ref), _as(kind, p_ref)
    st = opt.init(p)
    for t in range(4):
        g_ref = case.grad(p_ref, t)
        u_ref, st_ref = opt_ref.update(g_ref, st_ref, p_ref, **case.extras(p_ref, t, None))
        u, st = opt.update(_as(kind, g_ref), st, p, **_tree_extras(case, p_ref, t))
        assert type(u) is type(p) and T.tree_structure(u) == T.tree_structure(p)
        for a, b, x in zip(T.tree_leaves(u), _leaves(u_ref), T.tree_leaves(p)):
            assert a.dtype == dtype and a.shape == x.shape
            np.testing.assert_array_equal(a, b)
        for x in state_leaves(st):
            if x.shape in {tuple(y.shape) for y in T.tree_leaves(p)} and x.dtype.kind == "f" and x.ndim:
                assert x.dtype == dtype
        p_ref, p = apply_updates(p_ref, u_ref), apply_updates(p, u)
        assert type(p) is type(_as(kind, p_ref))
    # the state keeps the structure through a save and load
    st2 = opt.load_state({k: np.asarray(v) for k, v in st.to_dict().items()})
    _assert_same(_snapshot(st), _snapshot(st2))


# ----------------------------------------------------------------------------- immutable states
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_update_never_changes_its_input_state(name):
    """Over finite and skipped steps: the input state's to_dict is bitwise what it was, or the
    transform declares ``inplace`` and returns the very same object."""
    case = REGISTRY[name]
    opt = case.make()
    p = case.params(np.float64)
    st = opt.init(p)
    for t in range(4):
        g = case.grad(p, t)
        if t == 2:
            g = _poison(g, np.nan)
        before = _snapshot(st)
        with np.errstate(invalid="ignore", over="ignore"):
            u, new = opt.update(g, st, p, **case.extras(p, t, None))
        if opt.inplace:
            assert new is st
        else:
            assert new is not st
            _assert_same(before, _snapshot(st))
        p, st = apply_updates(p, u), new


def test_inplace_is_declared_and_a_chain_refuses_it():
    assert ArTuRO().inplace and not ArTuRO(copy_state=True).inplace
    assert not any(REGISTRY[n].make().inplace for n in REGISTRY if n != "ArTuRO-exact-inplace"
                   and n != "ArTuRO-reference")
    with pytest.raises(ValueError, match="in place"):
        chain(ArTuRO(), scale_by_lr(1.0))


# ----------------------------------------------------------------------------- chain = alias
def _alias_pairs(lr):
    return [
        (SGD(lr), chain(add_decayed_weights(0.0), scale_by_lr(lr))),
        (SGD(lr, weight_decay=0.1), chain(add_decayed_weights(0.1), scale_by_lr(lr))),
        (Momentum(lr, 0.8, weight_decay=0.05), chain(add_decayed_weights(0.05), trace(0.8), scale_by_lr(lr))),
        (Momentum(lr, 0.9, nesterov=True), chain(trace(0.9, nesterov=True), scale_by_lr(lr))),
        (Adam(lr, weight_decay=0.1), chain(add_decayed_weights(0.1), scale_by_adam(), scale_by_lr(lr))),
        (AdamW(lr, b1=0.8, weight_decay=0.1),
         chain(scale_by_adam(b1=0.8), scale_by_lr(lr), add_decayed_weights(0.1, lr=lr))),
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("i", range(6))
def test_chain_of_direction_and_scale_by_lr_is_the_alias_bit_for_bit(i, dtype):
    alias, ch = _alias_pairs(0.05)[i]
    p = _list_params(dtype)
    sa, sc = alias.init(p), ch.init(p)
    pa = pc = p
    for t in range(10):
        ua, sa = alias.update(_quad_grad(pa, t), sa, pa)
        uc, sc = ch.update(_quad_grad(pc, t), sc, pc)
        for a, b in zip(ua, uc):
            assert a.dtype == b.dtype == dtype
            np.testing.assert_array_equal(a, b)
        pa, pc = apply_updates(pa, ua), apply_updates(pc, uc)
    # the direction too (without the step size and the decoupled decay)
    da, _ = alias.direction(_quad_grad(pa, 10), sa, pa)
    dc, _ = ch.direction(_quad_grad(pc, 10), sc, pc)
    for a, b in zip(da, dc):
        np.testing.assert_array_equal(a, b)
    assert sa.count == sc.count == 10


def test_alias_hyperparameters_write_through_to_the_blocks():
    """torch.optim schedulers set opt.lr / weight_decay / momentum between steps."""
    opt = AdamW(0.1, weight_decay=0.1)
    opt.lr, opt.weight_decay = 0.01, 0.2
    ref = chain(scale_by_adam(), scale_by_lr(0.01), add_decayed_weights(0.2, lr=0.01))
    p = _list_params(np.float64)
    u1, _ = opt.update(_quad_grad(p, 0), opt.init(p), p)
    u2, _ = ref.update(_quad_grad(p, 0), ref.init(p), p)
    for a, b in zip(u1, u2):
        np.testing.assert_array_equal(a, b)
    m = Momentum(0.1, 0.5)
    m.momentum = 0.9
    assert m.transforms[1].momentum == 0.9 and m.lr == 0.1


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_scale_by_lr_schedule_uses_the_step_count(dtype):
    sched = lambda k: 0.3 * 0.5 ** k  # noqa: E731
    for opt in (chain(scale_by_lr(sched)), SGD(lr=sched)):
        p = _list_params(dtype)
        st = opt.init(p)
        for k in range(5):
            g = _quad_grad(p, k)
            u, st, info = opt.update_with_info(g, st, p)
            assert info.lr == sched(k)
            for a, x in zip(u, g):
                np.testing.assert_array_equal(a, -x.dtype.type(sched(k)) * x)
            p = apply_updates(p, u)
    # a skipped step does not advance the schedule
    opt = SGD(lr=sched)
    p = _list_params(dtype)
    st = opt.init(p)
    _, st = opt.update(_poison(_quad_grad(p, 0), np.nan), st, p)
    u, st, info = opt.update_with_info(_quad_grad(p, 0), st, p)
    assert info.lr == sched(0) and st.count == 1
    with pytest.raises(ValueError, match="schedule returned"):
        chain(scale_by_lr(lambda k: float("nan"))).update(_quad_grad(p, 0), chain(scale_by_lr(0.1)).init(p), p)


def test_decoupled_decay_follows_the_scheduled_lr_and_the_mask():
    sched = lambda k: 0.1 / (1 + k)  # noqa: E731
    wd = 0.3
    opt = chain(scale_by_adam(), scale_by_lr(sched), add_decayed_weights(wd, mask={"a": True, "b": False}, lr=sched))
    ref = chain(scale_by_adam(), scale_by_lr(sched))
    p = {"a": np.linspace(-1, 1, 4), "b": np.linspace(1, 2, 3)}
    s, r = opt.init(p), ref.init(p)
    for k in range(4):
        g = {"a": np.cos(k + p["a"]), "b": np.sin(k + p["b"])}
        u, s = opt.update(g, s, p)
        v, r = ref.update(g, r, p)
        np.testing.assert_array_equal(u["a"], v["a"] - (sched(k) * wd) * p["a"])
        np.testing.assert_array_equal(u["b"], v["b"])
        p = apply_updates(p, u)
    with pytest.raises(ValueError, match="mask must be a pytree"):
        add_decayed_weights(0.1, mask=[True]).update(p, EmptyStateFactory(), p)


def EmptyStateFactory():
    from curvlab.methods._transform import EmptyState

    return EmptyState()


# ----------------------------------------------------------------------------- direction
def test_direction_is_part_of_the_protocol():
    p = _list_params(np.float64)
    for name in ("SGD", "Adam", "AdamW", "chain-trace", "ExactNewton", "DSGD-constant"):
        assert REGISTRY[name].make().has_direction, name
    assert not ArTuRO().has_direction
    with pytest.raises(NotImplementedError, match="ArTuRO has no search direction"):
        ArTuRO().direction(W0, ArTuRO().init(W0), W0)
    opt = CurvatureLR(base=ArTuRO(copy_state=True), schedule=0.5)
    with pytest.raises(NotImplementedError, match="ArTuRO has no search direction"):
        opt.update(W0, opt.init(W0), W0, curvature=lambda d: 1.0)
    # a scheduled base: the direction does not depend on the base's step size (no division by -lr)
    a = CurvatureLR(base=chain(scale_by_adam(), scale_by_lr(lambda k: 10.0 ** -k)), schedule=0.5)
    b = CurvatureLR(base=Adam(lr=1.0), schedule=0.5)
    sa, sb = a.init(p), b.init(p)
    for t in range(4):
        ua, sa = a.update(_quad_grad(p, t), sa, p, curvature=_quad_curv(None))
        ub, sb = b.update(_quad_grad(p, t), sb, p, curvature=_quad_curv(None))
        for x, y in zip(ua, ub):
            np.testing.assert_array_equal(x, y)


def test_exact_newton_and_dsgd_directions_match_their_steps():
    case = REGISTRY["ExactNewton"]
    p = case.params(np.float64)
    opt = case.make()
    st = opt.init(p)
    u, _ = opt.update(case.grad(p, 0), st, p, **case.extras(p, 0, None))
    d, st_d = opt.direction(case.grad(p, 0), st, p, **case.extras(p, 0, None))
    for a, b in zip(u, d):
        np.testing.assert_allclose(a, -opt.lr * b, rtol=1e-15, atol=0)
    assert st_d.count == 1
    case = REGISTRY["DSGD-constant"]
    opt = DSGD(rule="constant", constants=[4.0, 8.0], step=0.5)
    p = case.params(np.float64)
    st = opt.init(p)
    u, _ = opt.update(case.grad(p, 0), st, p)
    d, _ = opt.direction(case.grad(p, 0), st, p)
    for a, b in zip(u, d):
        np.testing.assert_allclose(a, -0.5 * b, rtol=1e-15, atol=0)


# ----------------------------------------------------------------------------- state vs info
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_update_with_info_is_update_plus_a_report(name):
    case = REGISTRY[name]
    p = case.params(np.float64)
    a, b = case.make(), case.make()
    sa, sb = a.init(p), b.init(p)
    for t in range(3):
        ua, sa = a.update(case.grad(p, t), sa, p, **case.extras(p, t, None))
        ub, sb, info = b.update_with_info(case.grad(p, t), sb, p, **case.extras(p, t, None))
        assert info.skipped is False
        for x, y in zip(_leaves(ua), _leaves(ub)):
            np.testing.assert_array_equal(x, y)
        _assert_same(_snapshot(sa), _snapshot(sb))
        p = apply_updates(p, ua)
    with np.errstate(invalid="ignore", over="ignore"):
        _, _, info = b.update_with_info(_poison(case.grad(p, 3), np.nan), sb, p, **case.extras(p, 3, None))
    assert info.skipped is True


REPORT_KEYS = {
    "ArTuRO-reference": ("kl", "iterations", "n_evals", "converged", "inactive", "n_clamped"),
    "CurvatureLR-SGD": ("t", "c", "gd", "dd", "lam", "predicted", "realized", "event"),
    "DSGD-constant": ("chosen", "scores", "L", "dual_norms", "guaranteed", "actual"),
    "ExactNewton": ("kappa_min", "kappa_max", "n_negative", "step_norm"),
}


@pytest.mark.parametrize("name", sorted(REPORT_KEYS))
def test_reports_are_not_in_the_state_and_old_saved_states_load(name):
    case = REGISTRY[name]
    p = case.params(np.float64)
    opt = case.make()
    st = opt.init(p)
    _, st, info = opt.update_with_info(case.grad(p, 0), st, p, **case.extras(p, 0, None))
    d = st.to_dict()
    for k in REPORT_KEYS[name]:
        assert not any(key == k or key.startswith(k + "/") for key in d), k
        assert hasattr(info, k)
        assert not hasattr(st, k), k  # the report lives in the info only
    old = dict(d)
    for k in REPORT_KEYS[name]:
        old[k] = np.asarray(np.nan)   # a state saved by a version that kept the report in it
    back = opt.load_state(old)
    _assert_same(_snapshot(st), _snapshot(back))


def test_a_transform_written_with_update_only_still_reports():
    """A user subclass that overrides ``update`` (the pre-info protocol) gets an empty info."""
    from curvlab.methods import StepInfo, Transform

    class Half(Transform):
        def init(self, params):
            return None

        def update(self, grads, state, params=None, **extras):
            return T.tree_map(lambda g: -0.5 * g, grads), state

    u, st, info = Half().update_with_info({"a": np.ones(2)}, None)
    assert isinstance(info, StepInfo) and not info.skipped and np.array_equal(u["a"], [-0.5, -0.5])

    class Nothing(Transform):
        def init(self, params):
            return None

    with pytest.raises(NotImplementedError, match="neither _update nor update"):
        Nothing().update(np.ones(2), None)


# ----------------------------------------------------------------------------- one check per step
def _blocks_and_chains():
    """The blocks, chains and aliases of the registry (their policy is the base class's)."""
    return {n: c for n, c in REGISTRY.items() if n.startswith(("block-", "chain-", "SGD", "Momentum", "Adam"))}


def test_the_policy_is_checked_by_the_base_class_of_every_block_chain_and_alias():
    assert len(_blocks_and_chains()) >= 19   # 6 aliases, 6 chains, 7 blocks alone
    for n, c in _blocks_and_chains().items():
        assert getattr(c.make(), "base_policy_check", False), n


@pytest.mark.parametrize("policy", ["skip", "raise", "propagate"])
@pytest.mark.parametrize("name", sorted(_blocks_and_chains()))
def test_one_finiteness_check_per_step_however_many_blocks(name, policy, monkeypatch):
    """Issue 11 (defect 5): one reduction and one host read per step in total, for a block on
    its own and for a chain (nested chains included), none with "propagate"."""
    import curvlab.methods._transform as tr

    calls = []
    real = tr.all_finite
    monkeypatch.setattr(tr, "all_finite", lambda *a: calls.append(1) or real(*a))
    case = REGISTRY[name]
    opt = case.make(nan_policy=policy)
    p = case.params(np.float64)
    st = opt.init(p)
    for t in range(3):
        calls.clear()
        u, st = opt.update(case.grad(p, t), st, p)
        assert len(calls) == (0 if policy == "propagate" else 1), (t, len(calls))
        p = apply_updates(p, u)


def test_inside_a_chain_the_chains_policy_applies_not_the_blocks():
    p = _list_params(np.float64)
    opt = chain(scale_by_adam(nan_policy="raise"), trace(0.5, nan_policy="raise"),
                scale_by_lr(0.1, nan_policy="raise"))
    st = opt.init(p)
    u, st2 = opt.update(_poison(_quad_grad(p, 0), np.nan), st, p)     # the chain skips, no raise
    assert st2.n_skipped_steps == 1 and all(not np.any(x) for x in u)
    for s in st2.inner:
        assert s.n_skipped_steps == 0   # the blocks were not asked
    opt = chain(scale_by_adam(), scale_by_lr(0.1), nan_policy="raise")
    with pytest.raises(FloatingPointError, match=r"Chain: non-finite values in grads\[1\]"):
        opt.update(_poison(_quad_grad(p, 0), np.inf), opt.init(p), p)


# ----------------------------------------------------------------------------- inputs of every block
BLOCKS = {
    "scale_by_adam": lambda: scale_by_adam(),
    "trace": lambda: trace(0.9),
    "scale_by_lr": lambda: scale_by_lr(0.1),
    "add_decayed_weights": lambda: add_decayed_weights(0.1),
    "add_decayed_weights-decoupled": lambda: add_decayed_weights(0.1, lr=0.1),
    "chain": lambda: chain(trace(0.9), scale_by_lr(0.1)),
    "SGD": lambda: SGD(0.1),
    "Momentum": lambda: Momentum(0.1),
    "Adam": lambda: Adam(),
    "AdamW": lambda: AdamW(),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_bad_grads_and_params_are_refused_naming_the_argument(name):
    """Issue 11 (defect 10): TypeError/ValueError naming grads/params/state, never AttributeError."""
    p = [np.ones((2, 3)), np.ones(4)]
    opt = BLOCKS[name]()
    st = opt.init(p)
    bad_grads = [
        ("abc", (TypeError, ValueError), "grads"), (None, TypeError, "grads"),
        (1.5, (TypeError, ValueError), "grads"),
        ([np.ones((2, 3))], ValueError, "grads must have the structure of params"),
        ({"a": np.ones((2, 3)), "b": np.ones(4)}, ValueError, "grads must have the structure of params"),
        ([np.ones((2, 3)), np.ones(5)], ValueError, r"grads\[1\] has shape \(5,\), expected \(4,\)"),
        ([np.ones((2, 3)), "abc"], TypeError, r"grads\[1\] must be a NumPy or CuPy array"),
        ([np.ones((2, 3)), np.ones(4, dtype=int)], TypeError, r"grads\[1\] must have dtype float32 or float64"),
        ([np.ones((2, 3)), None], (TypeError, ValueError), "grads"),
    ]
    for g, exc, match in bad_grads:
        with pytest.raises(exc, match=match):
            opt.update(g, st, p)
    for g in ("abc", None, [np.ones((2, 3)), "abc"]):
        with pytest.raises(TypeError, match="grads"):
            opt.update(g, st)                                     # without params
    for bad_p in ("abc", [np.ones((2, 3)), "abc"], np.ones(3, dtype=int), [np.ones((2, 3)), np.ones(4, complex)]):
        with pytest.raises(TypeError, match="params"):
            opt.update(p, st, bad_p)
        with pytest.raises(TypeError, match="params"):
            opt.init(bad_p)
    with pytest.raises(TypeError, match="params must be a float32/float64 array"):
        opt.init(None)
    with pytest.raises(TypeError, match="state must be the"):
        opt.update(p, object(), p)
    # the refused calls left the state usable
    u, _ = opt.update(p, st, p)
    assert [x.shape for x in u] == [(2, 3), (4,)]


def test_block_hyperparameters_are_named_as_the_caller_passed_them():
    with pytest.raises(ValueError, match=r"decay must be in \[0.0, 1.0\), got 1.5"):
        trace(decay=1.5)
    with pytest.raises(TypeError, match="decay must be a real number"):
        trace(decay="0.9")
    with pytest.raises(TypeError, match="nesterov must be True or False"):
        trace(0.9, nesterov="yes")
    with pytest.raises(ValueError, match=r"momentum must be in \[0.0, 1.0\)"):
        Momentum(momentum=1.0)
    assert trace(decay=0.3).decay == 0.3
    with pytest.raises(TypeError, match="mask must be a pytree of bools"):
        add_decayed_weights(0.1, mask="w")
    for make in (scale_by_adam, trace, lambda **k: scale_by_lr(0.1, **k),
                 lambda **k: add_decayed_weights(0.1, **k)):
        with pytest.raises(ValueError, match="nan_policy"):
            make(nan_policy="ignore")


@pytest.mark.parametrize("name", ["Adam", "AdamW", "chain-nested", "block-trace", "block-scale_by_adam",
                                  "block-add_decayed_weights-decoupled-mask"])
def test_cupy_one_host_read_per_step_and_the_skip(xp, name):
    """On CuPy: the step reads the device once (counted by the strict stand-in), and a NaN step
    is skipped with the state unchanged."""
    if xp is np:
        pytest.skip("the CuPy path (numpy is covered above)")
    from tests import _strict_cupy

    case = REGISTRY[name]
    opt = case.make()
    p_host = case.params(np.float64)
    p = [xp.asarray(x) for x in p_host]
    st = opt.init(p)
    for t in range(3):
        g = [xp.asarray(x) for x in (_poison(case.grad(p_host, t), np.nan) if t == 1 else case.grad(p_host, t))]
        before = _snapshot(st)
        if _strict_cupy.installed():
            with _strict_cupy.count_syncs() as log:
                u, new = opt.update(g, st, p)
            assert log.count == 1, log.report()
        else:
            u, new = opt.update(g, st, p)
        if t == 1:
            _assert_same(before, _snapshot(new), skip=COUNTERS)
            assert new.n_skipped_steps == 1 and all(not bool(xp.any(x)) for x in u)
        st = new
    assert st.n_skipped_steps == 1 and st.consecutive_skips == 0
