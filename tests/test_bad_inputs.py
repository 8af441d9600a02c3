"""Property-based bad-input suite over the whole public API (issue 11).

Every name of ``curvlab.__all__`` that is callable, and the adapters' public classes, has one
registry entry below (its good call and the kind of each argument; the engine in
``tests/_bad_inputs.py`` generates the mutations and classifies the outcomes). The property:
each mutated call raises a curvlab ``ValueError``/``TypeError`` naming the argument, follows a
documented policy (``FloatingPointError``, ``LinAlgError``, a flagged result or a
``ConvergenceWarning``), or returns a result that an independent check confirms; never a crash
(``AttributeError``, ``IndexError``, ...), an error naming nothing, or a silent answer.

Hypothesis draws the seed that places NaNs, chooses signs and magnitudes (derandomized, so CI
runs the same inputs); every (argument, mutation) pair of every entry runs for each seed. Run
with ``-s`` for the outcome counts; ``benchmarks/run_bad_inputs.py`` prints the same table.
"""

from __future__ import annotations

import collections
import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import curvlab
from tests._bad_inputs import FAILURES, OUTCOMES, Entry, jnp, run_entry, torch

N = 12
_rng0 = np.random.default_rng(20261201)
_Q, _ = np.linalg.qr(_rng0.standard_normal((N, N)))
_EIGS = np.linspace(1.0, 4.0, N) ** 2
_SYM = (_Q * _EIGS) @ _Q.T
_SYM = 0.5 * (_SYM + _SYM.T)


def sym():
    return _SYM.copy()


def vec(n=N, seed=1):
    return np.random.default_rng(seed).standard_normal(n)


def mat(m, n, seed=2):
    return np.random.default_rng(seed).standard_normal((m, n))


def _dense(x):
    if isinstance(x, curvlab.LinearOperator):
        return np.asarray(curvlab.backend.to_numpy(x.to_dense()), dtype=np.float64)
    return np.asarray(x, dtype=np.float64)


def _ok(cond, msg="independent check"):
    assert cond, msg


def confirms(fn):
    """Mark an entry check as an independent check strong enough to confirm any accepted input."""
    fn.confirms = True
    return fn


# ---------------------------------------------------------------------------------------------
# independent checks
# ---------------------------------------------------------------------------------------------
@confirms
def check_operator_dense(res, kw, key="A"):
    """The operator's dense form equals the data it was built from."""
    D = _dense(res)
    ref = _dense(kw[key]) if key in kw else None
    if ref is not None:
        assert D.shape == ref.shape, "dense shape"
        assert ref.size == 0 or np.allclose(D, ref, rtol=1e-6, atol=1e-6 * max(np.abs(ref).max(), 1)), "dense form"


@confirms
def check_eigpairs(res, kw):
    """Every converged Ritz pair is an eigenpair of the matrix actually given (true residual)."""
    A = _dense(kw["A"])
    vals = np.asarray(res.eigenvalues, dtype=np.float64)
    conv = np.atleast_1d(np.asarray(res.converged))
    vecs = getattr(res, "eigenvectors", None)
    true = np.linalg.eigvals(A)
    scale = max(np.abs(true).max(), 1e-300)
    for i, lam in enumerate(vals):
        if i < conv.size and conv[i]:
            assert np.min(np.abs(true - lam)) <= 1e-5 * scale, f"converged value {lam} is no eigenvalue"
            if vecs is not None:
                v = np.asarray(curvlab.backend.to_numpy(vecs))[:, i].astype(np.float64)
                assert np.linalg.norm(A @ v - lam * v) <= 1e-4 * scale * np.linalg.norm(v), "true residual"


@confirms
def check_trace(res, kw):
    """A converged trace estimate lies within 6 error bars (+ round-off) of the true trace."""
    A = _dense(kw["A"])
    if bool(getattr(res, "converged", True)):
        t = float(np.trace(A))
        err = abs(float(res.estimate) - t)
        assert err <= 6 * float(res.std_error) + 1e-6 * np.abs(A).sum(), f"estimate {res.estimate} vs trace {t}"


@confirms
def check_diag(res, kw):
    A = _dense(kw["A"])
    if bool(getattr(res, "converged", True)):
        err = np.abs(np.asarray(res.estimate) - np.diag(A))
        assert A.size == 0 or np.all(err <= 6 * np.asarray(res.std_error) + 1e-6 * np.abs(A).max()), "diagonal estimate"


@confirms
def check_slq(res, kw):
    A = _dense(kw["A"])
    assert abs(float(np.sum(res.weights)) - 1.0) < 1e-6 or res.weights.ndim > 1


def check_logdet(res, kw):
    A = _dense(kw["A"])
    if bool(res.converged):
        sign, ld = np.linalg.slogdet(A)
        assert sign > 0 and abs(float(res.estimate) - ld) <= 6 * float(res.std_error) + 1e-6 * abs(ld), "logdet"


@confirms
def check_linear_solve(res, kw):
    """A converged solve satisfies the system actually given (true residual, backward-error scale)."""
    A, b = _dense(kw["A"]), np.asarray(kw["b"], dtype=np.float64)
    if res.all_converged:
        x = np.asarray(curvlab.backend.to_numpy(res.x), dtype=np.float64)
        err = np.linalg.norm(A @ x - b)
        assert err <= 1e-6 * (np.linalg.norm(A) * np.linalg.norm(x) + np.linalg.norm(b)), f"residual {err:.2e}"


@confirms
def check_inverse(res, kw):
    """(A + δI)⁻¹ v of the matrix actually given."""
    A = _dense(kw["A"])
    x = np.asarray(res, dtype=np.float64)
    r = (A + float(kw["damping"]) * np.eye(A.shape[0])) @ x - vec(A.shape[0], 5)
    assert np.linalg.norm(r) <= 1e-6 * (np.linalg.norm(A) * np.linalg.norm(x) + 1.0), "inverse residual"


@confirms
def check_l2(res, kw):
    g, d, delta = (np.asarray(kw[k], dtype=np.float64) for k in ("g", "diag", "delta"))
    s, sig = np.asarray(res.s, dtype=np.float64), float(res.sigma)
    assert np.linalg.norm(s) <= float(delta) * (1 + 1e-6), "step outside the trust region"
    assert sig >= 0 and np.all(d + sig >= -1e-10 * np.abs(d).max()), "multiplier"
    assert np.linalg.norm((d + sig) * s + g) <= 1e-6 * (np.linalg.norm(g) + 1), "stationarity"
    assert sig * abs(np.linalg.norm(s) - float(delta)) <= 1e-6 * (1 + sig * float(delta)), "complementarity"


@confirms
def check_solve(res, kw):
    op, b = res
    D = _dense(op)
    try:
        x = op.solve(b)
    except ValueError as exc:  # a documented refusal at solve time (λ = 0 on a rank-deficient block)
        assert "lam" in str(exc), str(exc)
        return
    assert np.linalg.norm(D @ x - b) <= 1e-8 * (np.linalg.norm(D, 2) * np.linalg.norm(x) + np.linalg.norm(b)), "solve"


@confirms
def check_sgd(res, kw):
    upd = res[0]
    p, g = np.asarray(kw["params"], dtype=np.float64), np.asarray(kw["grads"], dtype=np.float64)
    ref = -float(kw.get("lr", 0.01)) * (g + float(kw.get("weight_decay", 0.0)) * p)
    assert np.allclose(np.asarray(upd, dtype=np.float64), ref, rtol=1e-5, atol=1e-7), "SGD update"


@confirms
def check_apply(res, kw):
    ref = np.asarray(kw["params"], dtype=np.float64) + np.asarray(kw["updates"], dtype=np.float64)
    assert np.allclose(np.asarray(res, dtype=np.float64), ref, rtol=1e-6, equal_nan=True), "params + updates"


@confirms
def check_norm(res, kw, what="spectral"):
    W = np.asarray(kw["W"] if "W" in kw else kw["G"], dtype=np.float64)
    W = W.reshape(W.shape[0], -1) if W.ndim != 1 else W.reshape(1, -1)
    s = np.linalg.svd(W, compute_uv=False)
    c = float(kw["scale"])
    val = float(res[1] if isinstance(res, tuple) else res)
    ref = c * s.max() if what == "spectral" else s.sum() / c
    assert abs(val - ref) <= 1e-6 * max(abs(ref), 1e-300), f"{what} norm {val} vs {ref}"


# ---------------------------------------------------------------------------------------------
# runners for classes and methods
# ---------------------------------------------------------------------------------------------
def _op_run(cls, **fixed):
    return lambda kw: cls(**kw, **fixed)


def _lr_run(kw):
    op = curvlab.LowRankPlusDiagonal(**kw)
    return op, vec(op.shape[0], 9)


def _kron_run(cls):
    def run(kw):
        op = cls(**kw)
        return op, vec(op.shape[0], 9)
    return run


_MLP_SIZES = [3, 4, 2]


def _mlp():
    return curvlab.MLP(_MLP_SIZES, activation="tanh", loss="cross_entropy")


def _mlp_params():
    return _mlp().init_params(np.random.default_rng(4))


def _X():
    return mat(6, 3, 5)


def _y():
    return np.array([0, 1, 1, 0, 1, 0])


def _mlp_run(kw):
    sizes, act, loss, dt = kw["sizes"], kw["activation"], kw["loss"], kw["dtype"]
    m = curvlab.MLP(sizes, activation=act, loss=loss, dtype=dt)
    p = m.init_params(np.random.default_rng(4))
    return m.loss(p, _X(), _y())


@confirms
def check_curvature_op(res, kw):
    D = _dense(res)
    assert np.all(np.isfinite(D)) and np.allclose(D, D.T, atol=1e-8 * max(np.abs(D).max(), 1)), "curvature operator"
    ref = _curv_ref(kw)
    if ref is not None:
        assert np.allclose(D, ref, rtol=1e-6, atol=1e-8), "equals the float64 operator on the data given"


def _curv_ref(kw):
    """The same operator built from the float64 version of the data given (None if not possible)."""
    try:
        X = np.asarray(kw["X"], dtype=np.float64)
        y = np.asarray(kw["y"])
        p = np.asarray(kw["params"], dtype=np.float64)
        if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= _MLP_SIZES[-1] or y.shape != (X.shape[0],):
            return None
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(p))):
            return None
        fn = kw["__fn__"]
        return _dense(fn(_mlp(), p, X, y))
    except Exception:
        return None


def _curv_entry(fn, public=None):
    def run(kw):
        kw = dict(kw)
        kw.pop("__fn__", None)
        return fn(**kw)
    return Entry(fn if public is None else public, {"model": (_mlp, "model"), "params": (_mlp_params, "array"), "X": (_X, "array"),
                      "y": (_y, "labels"), "__fn__": (lambda: fn, "fixed")},
                 run=run, check=check_curvature_op, nan_propagates=True,
                 skip={("params", "ndim+"): "", ("y", "fraction"): ""} | {("__fn__", "*"): "not an argument"},
                 aliases={"params": ("P",), "X": ("inputs",), "y": ("labels", "targets")})


def _mlp_curvature_hessian(model, params, X, y):
    """``MLPCurvature(model, params, (X, y)).hessian()``: the bound source's Hessian operator."""
    return curvlab.MLPCurvature(model, params, (X, y)).hessian()


def _transform_entry(cls, ctor: dict, *, params=lambda: vec(6, 3), grads=lambda: vec(6, 4), extras=None,
                     check=None, skip=None, fixed=None):
    args = dict(ctor)
    args["params"] = (params, "array")
    args["grads"] = (grads, "array")

    def run(kw):
        c = {k: kw[k] for k in ctor}
        t = cls(**c, **(fixed or {}))
        p, g = kw["params"], kw["grads"]
        state = t.init(p)
        upd, state, info = t.update_with_info(g, state, p, **(extras(p) if extras else {}))
        return upd, state, info  # the step's report (converged, status, ...) is in info, not in the state

    why = ("params enter the update only through weight decay; non-finite gradients and the skip policy "
           "are the transform contract's (tests/methods/test_transform_contract.py)")
    return Entry(cls, args, run=run, check=check,
                 skip={("params", "nan"): why, ("params", "inf"): why} | (skip or {}),
                 aliases={"grads": ("gradient", "gradients", "updates", "g", "params"),
                          "params": ("parameters", "grads", "state")})


def _tree_shapes_skip():
    return {}


def _quad_curv(p):
    return {"curvature": lambda d: 1.5 * float(np.sum(np.asarray(d, dtype=np.float64) ** 2))}


def _newton_params():
    rng = np.random.default_rng(5)
    return [0.5 * rng.standard_normal((4, 4)), 0.5 * rng.standard_normal((3, 5))]


def _newton_run(kw):
    t = curvlab.ExactNewton(lr=kw["lr"], lam=kw["lam"], adjustment=kw["adjustment"])
    p = _newton_params()
    g = [0.1 * x for x in p]
    state = t.init(p)
    return t.update(g, state, p, X=kw["X"], y=kw["y"], activation="tanh")


def _newton_X():
    return mat(6, 3, 6)


def _newton_y():
    return np.random.default_rng(7).integers(0, 3, 6)


# ---------------------------------------------------------------------------------------------
# the registry: one entry per public name
# ---------------------------------------------------------------------------------------------
ENTRIES: dict[str, Entry] = {
    # operators
    "LinearOperator": Entry(curvlab.LinearOperator, {"shape": (lambda: (3, 3), "shape2"), "dtype": (lambda: np.float64, "dtype")}),
    "CallableOperator": Entry(
        curvlab.CallableOperator,
        {"matvec": (lambda: (lambda v: _SYM @ v), "symfn"), "shape": (lambda: (N, N), "shape2"),
         "dtype": (lambda: np.float64, "dtype")},
        run=lambda kw: curvlab.CallableOperator(**kw, symmetric=True),
        check=confirms(lambda res, kw: check_operator_dense(res, {"A": _SYM})),
    ),
    "DenseOperator": Entry(curvlab.DenseOperator, {"A": (sym, "symop")},
                           run=lambda kw: curvlab.DenseOperator(kw["A"], symmetric=True), check=check_operator_dense,
                           skip={("A", "nonsquare"): "caught as not symmetric; covered by symop"}),
    "DiagonalOperator": Entry(curvlab.DiagonalOperator, {"d": (lambda: vec(N), "array")},
                              check=confirms(lambda res, kw: check_operator_dense(res, {"A": np.diag(np.asarray(kw["d"], dtype=float))})),
                              skip={("d", "empty"): "a 0 x 0 diagonal operator is valid (checked below)"}),
    "LowRankPlusDiagonal": Entry(
        curvlab.LowRankPlusDiagonal,
        {"d": (lambda: np.random.default_rng(3).uniform(0.5, 2.0, N), "array"), "U": (lambda: mat(N, 3), "array"),
         "C": (lambda: np.eye(3), "array?")},
        run=_lr_run, check=check_solve,
        skip={("d", "ndim+"): "", ("C", "empty"): ""},
    ),
    "KroneckerLayerBlock": Entry(
        curvlab.KroneckerLayerBlock,
        {"M": (lambda: np.array([[2.0, 0.5], [0.5, 1.0]]), "array"), "a": (lambda: vec(3, 5), "array"),
         "lam": (lambda: 0.5, "nonneg")},
        run=_kron_run(curvlab.KroneckerLayerBlock), check=check_solve,
    ),
    "KroneckerSumBlock": Entry(
        curvlab.KroneckerSumBlock,
        {"Ms": (lambda: np.stack([np.eye(2) * (1 + i) for i in range(4)]), "array"), "A": (lambda: mat(4, 3, 6), "array"),
         "lam": (lambda: 0.5, "nonneg")},
        run=_kron_run(curvlab.KroneckerSumBlock), check=check_solve,
    ),
    "StochasticOperator": Entry(
        curvlab.StochasticOperator,
        {"make_operator": (lambda: (lambda batch: curvlab.DenseOperator(_SYM * batch, symmetric=True)), "callable"),
         "sampler": (lambda: (lambda rng: float(rng.uniform(0.5, 1.5))), "callable"), "rng": (lambda: 0, "rng")},
        run=lambda kw: curvlab.StochasticOperator(**kw).matvec(vec()),
        check=confirms(lambda res, kw: _ok(np.all(np.isfinite(res)), "NaN")),
    ),
    "aslinearoperator": Entry(curvlab.aslinearoperator, {"A": (sym, "symop")},
                              run=lambda kw: curvlab.aslinearoperator(kw["A"], symmetric=True), check=check_operator_dense),
    "symmetry_defect": Entry(
        curvlab.symmetry_defect,
        {"A": (sym, "sqop"), "rng": (lambda: 0, "rng"), "n_probes": (lambda: 2, "count?")},
        check=confirms(lambda res, kw: None),  # a measurement: any finite value is the measurement
        skip={("A", "empty"): "the 0 x 0 operator is symmetric: 0.0 is right",
              ("A", "float32"): "a round-off measurement: float32 round-off differs from float64 by design",
              ("A", "float16"): "idem"},
    ),
    # reference model
    "MLP": Entry(curvlab.MLP, {"sizes": (lambda: list(_MLP_SIZES), "sizes"), "activation": (lambda: "tanh", "choice"),
                               "loss": (lambda: "cross_entropy", "choice"), "dtype": (lambda: np.float64, "dtype")},
                 run=_mlp_run, aliases={"sizes": ("size", "layer")}),
    "hessian_operator": _curv_entry(curvlab.hessian_operator),
    "MLPCurvature": _curv_entry(_mlp_curvature_hessian, curvlab.MLPCurvature),
    "ggn_operator": _curv_entry(curvlab.ggn_operator),
    "fisher_operator": _curv_entry(curvlab.fisher_operator),
    # eigen-solvers
    "lanczos": Entry(curvlab.lanczos, {"A": (sym, "symop"), "m": (lambda: 5, "count"), "v0": (lambda: None, "array?"),
                                       "rng": (lambda: 0, "rng")},
                     check=confirms(lambda res, kw: _ok(np.all(np.isfinite(np.asarray(res.alpha))), "non-finite")),
                     skip={("v0", "*"): "v0=None good; mutated by the array kinds of eigsh"}),
    "eigsh": Entry(curvlab.eigsh, {"A": (sym, "symop"), "k": (lambda: 2, "count"), "which": (lambda: "LA", "choice"),
                                   "tol": (lambda: 1e-8, "pos"), "v0": (lambda: vec(), "array?"), "rng": (lambda: 0, "rng"),
                                   "max_matvecs": (lambda: None, "count?")},
                   check=check_eigpairs),
    "lobpcg": Entry(curvlab.lobpcg, {"A": (sym, "symop"), "k": (lambda: 1, "count"), "which": (lambda: "LA", "choice"),
                                     "tol": (lambda: 1e-8, "pos"), "rng": (lambda: 0, "rng"), "maxiter": (lambda: 200, "count?")},
                    check=check_eigpairs),
    "power_iteration": Entry(curvlab.power_iteration, {"A": (sym, "symop"), "k": (lambda: 1, "count"),
                                                       "tol": (lambda: 1e-6, "pos"), "maxiter": (lambda: 2000, "count"),
                                                       "v0": (lambda: vec(), "array?"), "rng": (lambda: 0, "rng")},
                             check=check_eigpairs),
    "stochastic_power": Entry(curvlab.stochastic_power, {"A": (sym, "symop"), "n_steps": (lambda: 50, "count"),
                                                         "burn_in": (lambda: 0.3, "pos"), "rng": (lambda: 0, "rng"),
                                                         "tol": (lambda: 0.5, "pos?")},
                              skip={("n_steps", "huge"): "a long run is a valid request (no convergence test)"},
                              twin=False,
                              check=confirms(lambda res, kw: _ok(
                                  not np.all(res.converged)
                                  or abs(float(res.eigenvalue) - np.linalg.eigvalsh(_dense(kw["A"]))[-1])
                                  <= 0.2 * np.abs(np.linalg.eigvalsh(_dense(kw["A"]))).max(), "top eigenvalue"))),
    "slq": Entry(curvlab.slq, {"A": (sym, "symop"), "n_probes": (lambda: 4, "count"), "m": (lambda: 8, "count"),
                               "probe": (lambda: "rademacher", "choice"), "rng": (lambda: 0, "rng")},
                 check=check_slq),
    "slq_logdet": Entry(curvlab.slq_logdet, {"A": (sym, "symop"), "n_probes": (lambda: 4, "count"), "m": (lambda: 8, "count"),
                                             "probe": (lambda: "rademacher", "choice"), "rng": (lambda: 0, "rng")},
                        check=confirms(check_logdet)),
    "slq_trace_inverse": Entry(curvlab.slq_trace_inverse, {"A": (sym, "symop"), "n_probes": (lambda: 4, "count"),
                                                           "m": (lambda: 8, "count"), "rng": (lambda: 0, "rng")},
                               check=confirms(lambda res, kw: check_trace(res, {"A": np.linalg.inv(_dense(kw["A"]))}))),
    "hutchinson": Entry(curvlab.hutchinson, {"A": (sym, "sqop"), "n_matvecs": (lambda: 8, "count?"),
                                             "probe": (lambda: "rademacher", "choice"), "rng": (lambda: 0, "rng")},
                        check=check_trace),
    "hutchpp": Entry(curvlab.hutchpp, {"A": (sym, "sqop"), "n_matvecs": (lambda: 9, "count?"), "rng": (lambda: 0, "rng")},
                     check=check_trace),
    "xtrace": Entry(curvlab.xtrace, {"A": (sym, "sqop"), "n_matvecs": (lambda: 8, "count?"), "rng": (lambda: 0, "rng"),
                                     "probe": (lambda: "rademacher", "choice")},
                    check=check_trace),
    "hutchinson_diagonal": Entry(curvlab.hutchinson_diagonal, {"A": (sym, "sqop"), "n_matvecs": (lambda: 8, "count?"),
                                                               "rng": (lambda: 0, "rng")},
                                 check=check_diag),
    "xdiag": Entry(curvlab.xdiag, {"A": (sym, "symop"), "n_matvecs": (lambda: 8, "count?"), "rng": (lambda: 0, "rng")},
                   check=check_diag),
    "prescribed_spectrum_operator": Entry(
        curvlab.prescribed_spectrum_operator,
        {"eigenvalues": (lambda: np.linspace(1, 2, 10), "array"), "rng": (lambda: 0, "rng"),
         "dtype": (lambda: np.float64, "dtype")},
        check=confirms(lambda res, kw: _ok(np.allclose(
            np.linalg.eigvalsh(_dense(res.operator)), np.sort(np.asarray(kw["eigenvalues"], dtype=float).ravel()),
            atol=1e-4 * max(1, np.abs(np.asarray(kw["eigenvalues"], dtype=float)).max())), "spectrum")),
        skip={("eigenvalues", "ndim+"): "a (1, n) row of eigenvalues is unambiguous"},
    ),
    # layer norms and duality maps
    "layer_norm": Entry(curvlab.layer_norm, {"W": (lambda: mat(4, 3), "array"), "norm": (lambda: "spectral", "choice"),
                                             "scale": (lambda: 2.0, "pos")},
                        check=check_norm, skip={("W", "ndim+"): "reshaped to a matrix by design (as_matrix)",
                                                ("W", "empty"): "the empty layer has norm 0 (documented)"}),
    "dual_norm": Entry(curvlab.dual_norm, {"G": (lambda: mat(4, 3), "array"), "norm": (lambda: "spectral", "choice"),
                                           "scale": (lambda: 2.0, "pos")},
                       check=confirms(lambda res, kw: check_norm(res, kw, "nuclear")),
                       skip={("G", "ndim+"): "reshaped to a matrix by design (as_matrix)",
                             ("G", "empty"): "the empty layer has dual norm 0 (documented)"}),
    "duality_map": Entry(curvlab.duality_map, {"G": (lambda: mat(4, 3), "array"), "norm": (lambda: "spectral", "choice"),
                                               "scale": (lambda: 2.0, "pos"), "method": (lambda: "svd", "choice")},
                         check=confirms(lambda res, kw: check_norm(res, kw, "nuclear")),
                         skip={("G", "ndim+"): "reshaped to a matrix by design (as_matrix)",
                               ("G", "empty"): "the empty layer maps to an empty update (documented)"}),
    # curvature estimators and trust regions
    "DiagonalRLS": Entry(
        curvlab.DiagonalRLS,
        {"q": (lambda: 0.01, "nonneg"), "r": (lambda: 1.0, "pos"), "P0": (lambda: 0.1, "nonneg"),
         "h0": (lambda: 0.1, "real"), "variant": (lambda: "kalman", "choice"), "impl": (lambda: "auto", "choice"),
         "grads": (lambda: vec(5, 1), "array"), "x": (lambda: vec(5, 2), "array")},
        run=lambda kw: (lambda est: est.update(est.init(vec(5, 3)), kw["grads"], kw["x"]))(
            curvlab.DiagonalRLS(**{k: kw[k] for k in ("q", "r", "P0", "h0", "variant", "impl")})),
    ),
    "solve_kl": Entry(
        curvlab.solve_kl,
        {"dual": (lambda: __import__("curvlab.trust_region.kl", fromlist=["KLDual"]).KLDual(
            vec(6, 1), vec(6, 2), np.abs(vec(6, 3)) + 0.5, np.abs(vec(6, 4)) + 0.5, beta=0.9, prior_prec=0.01), "model"),
         "eps": (lambda: 0.1, "pos"), "mode": (lambda: "exact", "choice"), "rtol": (lambda: 1e-10, "pos"),
         "max_iter": (lambda: 50, "count")},
        skip={("max_iter", "huge"): "an iteration cap: a huge one is a valid request"},
        aliases={"dual": ("KLDual",)},
    ),
    "solve": Entry(curvlab.solve, {"A": (sym, "sqop"), "b": (lambda: vec(), "array"), "tol": (lambda: 1e-10, "pos"),
                                   "method": (lambda: "auto", "choice"), "maxiter": (lambda: None, "count?"),
                                   "x0": (lambda: vec(seed=3), "array?")},
                   check=check_linear_solve),
    "inverse": Entry(curvlab.inverse, {"A": (sym, "sqop"), "damping": (lambda: 0.5, "real"),
                                       "tol": (lambda: 1e-10, "pos"), "method": (lambda: "cg", "choice")},
                     run=lambda kw: curvlab.inverse(**kw) @ vec(np.shape(kw["A"])[0] if np.ndim(kw["A"]) == 2 else 1, 5),
                     check=check_inverse),
    "solve_l2_subproblem": Entry(
        curvlab.solve_l2_subproblem,
        {"g": (lambda: vec(8, 1), "array"), "delta": (lambda: 0.5, "pos"),
         "diag": (lambda: np.linspace(-1.0, 2.0, 8), "array")},
        check=check_l2,
    ),
    # methods
    "apply_updates": Entry(curvlab.apply_updates, {"params": (lambda: vec(5, 1), "array"), "updates": (lambda: vec(5, 2), "array")},
                           check=check_apply),
    "scale_by_lr": _transform_entry(curvlab.scale_by_lr, {"lr": (lambda: 0.1, "pos")}),
    "add_decayed_weights": _transform_entry(curvlab.add_decayed_weights, {"weight_decay": (lambda: 0.01, "nonneg")}),
    "scale_by_adam": _transform_entry(curvlab.scale_by_adam, {"b1": (lambda: 0.9, "nonneg"),
                                                              "b2": (lambda: 0.999, "nonneg"), "eps": (lambda: 1e-8, "pos")}),
    "trace": _transform_entry(curvlab.trace, {"decay": (lambda: 0.9, "nonneg")}),
    "SGD": _transform_entry(curvlab.SGD, {"lr": (lambda: 0.1, "pos"), "weight_decay": (lambda: 0.0, "nonneg")},
                            check=check_sgd),
    "Momentum": _transform_entry(curvlab.Momentum, {"lr": (lambda: 0.1, "pos"), "momentum": (lambda: 0.9, "nonneg")}),
    "Adam": _transform_entry(curvlab.Adam, {"lr": (lambda: 0.1, "pos"), "b1": (lambda: 0.9, "nonneg"),
                                            "b2": (lambda: 0.999, "nonneg"), "eps": (lambda: 1e-8, "pos")}),
    "AdamW": _transform_entry(curvlab.AdamW, {"lr": (lambda: 0.1, "pos"), "eps": (lambda: 1e-8, "pos"),
                                              "weight_decay": (lambda: 0.01, "nonneg")}),
    "ArTuRO": _transform_entry(curvlab.ArTuRO, {"kl_bound": (lambda: 0.01, "pos"), "reg_weight": (lambda: 0.1, "nonneg"),
                                                "prior_prec": (lambda: 0.0015, "pos"),
                                                "measurement_noise": (lambda: 1.0, "pos")}),
    "DSGD": _transform_entry(curvlab.DSGD, {"rule": (lambda: "constant", "choice"), "constants": (lambda: [4.0], "array?"),
                                            "step": (lambda: 1.0, "pos"), "average": (lambda: "mean", "choice")},
                             params=lambda: vec(12, 3), grads=lambda: vec(12, 4), fixed={"shapes": [(3, 4)]}),
    "CurvatureLR": _transform_entry(curvlab.CurvatureLR, {"schedule": (lambda: 0.5, "pos?"), "mode": (lambda: "adjoint", "choice")},
                                    extras=_quad_curv),
    "ExactNewton": Entry(curvlab.ExactNewton, {"lr": (lambda: 0.5, "pos"), "lam": (lambda: 1.0, "nonneg"),
                                               "adjustment": (lambda: "abs", "choice"), "X": (_newton_X, "array"),
                                               "y": (_newton_y, "labels")},
                         run=_newton_run, aliases={"X": ("inputs", "y"), "y": ("labels", "targets")},
                         skip={("y", "fraction"): ""}),
}

# ---------------------------------------------------------------------------------------------
# adapters (when the framework imports)
# ---------------------------------------------------------------------------------------------
if torch is not None:
    from curvlab.adapters.torch import CurvlabOptimizer, TorchCurvature

    def _tmodel():
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2, dtype=torch.float64)

    def _torch_run(kw):
        X, y = kw["X"], kw["y"]
        # an object array is passed through: the adapter's own TypeError is what is tested, not torch.as_tensor's
        X = torch.as_tensor(X) if isinstance(X, np.ndarray) and X.dtype != object else X
        y = torch.as_tensor(y) if isinstance(y, np.ndarray) and y.dtype != object else y
        tc = TorchCurvature(kw["model"], kw["loss"], (X, y))
        return tc.gradient()[0], tc.hessian().to_dense()

    ENTRIES["TorchCurvature"] = Entry(
        TorchCurvature, {"model": (_tmodel, "model"), "loss": (lambda: "cross_entropy", "choice"), "X": (_X, "array"),
                         "y": (_y, "labels")},
        run=_torch_run, needs="torch", nan_propagates=True, aliases={"X": ("batch", "inputs"), "y": ("batch", "targets", "labels")},
        skip={("X", "torch"): "torch tensors are this adapter's input", ("y", "torch"): "idem",
              ("X", "jax"): "not generated for the torch adapter", ("y", "fraction"): ""},
    )

    def _opt_run(kw):
        p = torch.nn.Parameter(torch.tensor(kw["params"]) if isinstance(kw["params"], np.ndarray) else kw["params"])
        opt = CurvlabOptimizer([p], kw["transform"])
        g = kw["grads"]
        p.grad = torch.as_tensor(np.asarray(g, dtype=np.float64)) if not isinstance(g, torch.Tensor) else g
        before = p.detach().clone()
        opt.step()
        return (p.detach() - before).numpy()

    ENTRIES["CurvlabOptimizer"] = Entry(
        CurvlabOptimizer, {"transform": (lambda: curvlab.SGD(lr=0.1), "transform"), "params": (lambda: vec(5, 1), "array"),
                           "grads": (lambda: vec(5, 2), "array")},
        run=_opt_run, needs="torch", aliases={"grads": ("grad", "gradient", "p.grad", "grads"),
                                              "params": ("param", "params", "parameters", "Parameter")},
        check=confirms(lambda res, kw: _ok(
            not isinstance(kw["transform"], curvlab.SGD)
            or np.allclose(res, -0.1 * np.asarray(kw["grads"], dtype=np.float64), rtol=1e-5)
            or (not np.all(np.isfinite(np.asarray(kw["grads"], dtype=np.float64))) and np.all(res == 0)), "SGD step")),
        skip={("params", "torch"): "tensors are this adapter's input", ("grads", "torch"): "idem",
              ("params", "*"): "torch.nn.Parameter refuses them itself", ("grads", "ndim+"): "torch refuses it itself",
              ("grads", "shape"): "torch refuses it itself", ("grads", "empty"): "torch refuses it itself",
              ("grads", "string"): "not a tensor: torch refuses it", ("grads", "none"): "no gradient: skipped by design",
              ("grads", "jax"): "", ("grads", "complex"): "torch refuses it itself", ("grads", "object"): "",
              ("grads", "list"): "", ("grads", "int"): "", ("grads", "float16"): "", ("grads", "float32"): ""},
    )

if jnp is not None:
    from curvlab.adapters.jax import JaxCurvature, as_optax

    def _japply(ps, X):
        return X @ ps[0].T + ps[1]

    def _jparams():
        return [jnp.asarray(mat(2, 3, 8)), jnp.asarray(vec(2, 9))]

    def _jax_run(kw):
        jc = JaxCurvature(kw["apply_fn"], _jparams(), kw["loss"], (kw["X"], kw["y"]))
        return jc.gradient()[0], jc.hessian().to_dense()

    ENTRIES["JaxCurvature"] = Entry(
        JaxCurvature, {"apply_fn": (lambda: _japply, "callable"), "loss": (lambda: "cross_entropy", "choice"),
                       "X": (_X, "array"), "y": (_y, "labels")},
        run=_jax_run, needs="jax", nan_propagates=True, aliases={"X": ("batch", "inputs"), "y": ("batch", "targets", "labels")},
        skip={("X", "jax"): "JAX arrays are this adapter's input", ("X", "torch"): "not generated for the JAX adapter",
              ("y", "torch"): "", ("y", "fraction"): ""},
    )

    def _optax_run(kw):
        tx = as_optax(kw["transform"])
        p = jnp.asarray(vec(5, 1))
        st = tx.init(p)
        upd, _ = tx.update(jnp.asarray(vec(5, 2)), st, p)
        return np.asarray(upd)

    ENTRIES["as_optax"] = Entry(as_optax, {"transform": (lambda: curvlab.SGD(lr=0.1), "transform")}, run=_optax_run,
                                needs="jax")

#: names of curvlab.__all__ with no entry, each with its reason
EXCLUDED = {
    "__version__": "a string",
    "adapters": "a module (its public classes have entries)",
    "backend": "a module of helpers (tested in tests/test_backend.py)",
    "data": "a module of offline datasets",
    "kernels": "a module (kernels are tested against their twins in tests/kernels)",
    "Transform": "the abstract transform protocol: no inputs of its own (every concrete transform has an entry)",
    "EigResult": "a result dataclass built by curvlab's solvers, read by users, not an input path",
    "SpectralDensity": "a result dataclass built by slq (slq has an entry)",
    "TraceEstimate": "a result dataclass built by the trace estimators",
    "DiagonalEstimate": "a result dataclass built by the diagonal estimators",
    "StochasticEigResult": "a result dataclass built by stochastic_power",
    "SolveResult": "a result dataclass built by solve (solve has an entry)",
    "Status": "the enum of result statuses (a vocabulary, not an input path; tests/linalg/test_results.py)",
    "RLSState": "the DiagonalRLS state container, built by DiagonalRLS.init (DiagonalRLS has an entry)",
    "RLSInfo": "the DiagonalRLS step report, built by DiagonalRLS.update",
    "tree": "a module of pytree helpers (tested in tests/test_tree.py)",
    "chain": "composes transforms (each has an entry); chain vs. its parts bit for bit in test_transform_contract",
    "ConvergenceWarning": "a warning class issued by curvlab's iterative solvers, not an input path",
    "ConvergenceError": "an exception class raised by strict=True solvers, not an input path",
    "CurvatureSource": "a typing Protocol implemented by MLP and the adapters (they have entries)",
    "LayerStructureUnavailable": "an exception class raised by CurvatureSource.layer_structure",
    "DenseLayer": "a record built by CurvatureSource.layer_structure (MLP and the adapters have entries)",
    "Layout": "the parameter layout class; its checks are tested in tests/test_layout.py and tests/adapters/test_layout.py",
}

COUNTS: collections.Counter = collections.Counter()
SILENT: list = []


def test_every_public_name_has_an_entry_or_a_reasoned_exclusion():
    public = set(curvlab.__all__)
    missing = sorted(n for n in public if n not in ENTRIES and n not in EXCLUDED)
    assert not missing, f"public names without a bad-input entry: {missing}"
    stale = sorted(n for n in EXCLUDED if n not in public)
    assert not stale, f"exclusions of names no longer public: {stale}"
    for n, e in ENTRIES.items():
        if n in public and e.target is not getattr(curvlab, n):
            pytest.fail(f"entry {n} tests {e.target!r}, not curvlab.{n}")
    for n in ("TorchCurvature", "CurvlabOptimizer") if torch is not None else ():
        assert n in ENTRIES
    for n in ("JaxCurvature", "as_optax") if jnp is not None else ():
        assert n in ENTRIES


def test_every_entry_argument_is_a_real_parameter():
    for n, e in ENTRIES.items():
        if e.run is None:
            params = inspect.signature(e.target).parameters
            for a in e.args:
                assert a in params, f"{n}: {a} is not a parameter of {e.target}"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_good_call_succeeds(name):
    e = ENTRIES[name]
    from tests._bad_inputs import good_kwargs

    res = e.call(good_kwargs(e))
    if e.check is not None:
        e.check(res, good_kwargs(e))


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_bad_inputs(name):
    entry = ENTRIES[name]
    seen: list = []

    @settings(max_examples=2, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, 2**31 - 1))
    def run(seed):
        seen.extend(run_entry(name, entry, [seed]))

    run()
    for o in seen:
        COUNTS[o.kind] += 1
    bad = [o for o in seen if o.kind in FAILURES]
    SILENT.extend(bad)
    # one line per distinct (argument, mutation) failure
    lines = sorted({f"{o.arg}={o.mut}: {o.kind}: {o.detail}" for o in bad})
    assert not lines, f"{name}: {len(lines)} bad outcomes:\n" + "\n".join(lines)


def test_zz_summary():
    """Prints the outcome counts (run with -s)."""
    total = sum(COUNTS.values())
    print(f"\nbad-input suite: {total} inputs over {len(ENTRIES)} entries")
    for k in OUTCOMES:
        print(f"  {k:14s} {COUNTS.get(k, 0)}")
