"""JAX adapter (jitted): reference MLP, dense jax.hessian on a CNN, subtree, sharding, optax."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from curvlab import backend  # noqa: E402
from curvlab.adapters.jax import JaxCurvature, as_optax, from_jax, to_jax  # noqa: E402
from curvlab.linalg.lanczos import eigsh  # noqa: E402
from curvlab.models.mlp import MLP  # noqa: E402
from tests.conftest import rel_err  # noqa: E402

from ._helpers import layerwise_method, quartic_problem  # noqa: E402

pytestmark = pytest.mark.jax


def mlp_apply(ps, X):
    """Reference-MLP layout: W_l with the bias as its last column."""
    a = X
    for i, W in enumerate(ps):
        a = a @ W[:, :-1].T + W[:, -1]
        if i < len(ps) - 1:
            a = jnp.tanh(a)
    return a


def cnn_apply(p, X):
    """conv 3x3 (1 -> 2 channels, NCHW) -> tanh -> dense; X (B, 1, 6, 6)."""
    h = jax.lax.conv_general_dilated(X, p["conv"]["w"], (1, 1), "VALID") + p["conv"]["b"][None, :, None, None]
    h = jnp.tanh(h).reshape(X.shape[0], -1)
    return h @ p["dense"]["w"].T + p["dense"]["b"]


def _cnn_case(rng):
    p = {"conv": {"w": jnp.asarray(rng.standard_normal((2, 1, 3, 3)) * 0.5), "b": jnp.asarray(rng.standard_normal(2) * 0.1)},
         "dense": {"w": jnp.asarray(rng.standard_normal((3, 32)) * 0.3), "b": jnp.asarray(rng.standard_normal(3) * 0.1)}}
    X = jnp.asarray(rng.standard_normal((6, 1, 6, 6)))
    y = jnp.asarray(rng.integers(0, 3, 6))
    return p, X, y


def test_agrees_with_reference_mlp(rng):
    model = MLP([5, 6, 3], activation="tanh", loss="cross_entropy")
    params = model.init_params(rng)
    X, y = rng.standard_normal((7, 5)), rng.integers(0, 3, 7)
    curv = JaxCurvature(mlp_apply, [jnp.asarray(W) for W in model.layout.unpack(params)], "cross_entropy", (X, y))
    assert curv.layout.names == ("0", "1") and curv.layout.size == model.n_params
    np.testing.assert_array_equal(curv.params, params)  # same flat layout
    V = rng.standard_normal((model.n_params, 3))
    assert rel_err(curv.hessian().matmat(V), model.hvp_matmat(params, X, y, V)) < 1e-10
    assert rel_err(curv.hessian("reverse_over_reverse") @ V[:, 0], model.hvp(params, X, y, V[:, 0])) < 1e-10
    assert rel_err(curv.ggn() @ V[:, 1], model.ggn_vp(params, X, y, V[:, 1])) < 1e-10
    assert rel_err(curv.fisher() @ V[:, 2], model.fisher_vp(params, X, y, V[:, 2])) < 1e-10
    loss, g = curv.gradient()
    rl, rg = model.loss_and_grad(params, X, y)
    assert abs(loss - rl) < 1e-12 * abs(rl) and rel_err(g, rg) < 1e-10
    d = V[:, 0]
    c = model.curvature(params, X, y, d)
    assert abs(curv.directional_curvature(d) - c) <= 1e-10 * abs(c)
    l2, g2, c2 = curv.grad_and_curvature(d)
    assert abs(c2 - c) <= 1e-10 * abs(c) and rel_err(g2, rg) < 1e-10


def test_cnn_dense_hessian_and_subtree(rng):
    p, X, y = _cnn_case(rng)
    curv = JaxCurvature(cnn_apply, p, "cross_entropy", (X, y))
    assert curv.layout.names == ("conv/b", "conv/w", "dense/b", "dense/w")

    def f(theta):
        return curv._loss_flat(theta, X, y)

    Hd = np.asarray(jax.jit(jax.hessian(f))(curv.theta))
    H = curv.hessian().to_dense()
    assert rel_err(H, Hd) < 1e-10
    ev = np.linalg.eigvalsh(Hd)
    res = eigsh(curv.hessian(), k=2, which="LA", rng=0, tol=1e-12)
    assert bool(res.all_converged)
    top = np.sort(np.asarray(res.eigenvalues))[::-1]
    np.testing.assert_allclose(top, ev[::-1][:2], rtol=1e-8)
    # the "conv" subtree only: the corresponding block of the full Hessian
    sub = JaxCurvature(cnn_apply, p, "cross_entropy", (X, y), trainable=["conv"])
    assert sub.layout.names == ("conv/b", "conv/w")
    k = sub.layout.size
    v = rng.standard_normal(k)
    assert rel_err(sub.hessian() @ v, Hd[:k, :k] @ v) < 1e-10
    tree = sub.unflatten(sub.params)
    np.testing.assert_array_equal(np.asarray(tree["dense"]["w"]), np.asarray(p["dense"]["w"]))


def test_float32_and_mc_fisher(rng):
    model = MLP([4, 5, 2], loss="mse")
    params = model.init_params(rng)
    X, y = rng.standard_normal((16, 4)), rng.standard_normal((16, 2))
    ps32 = [jnp.asarray(W, jnp.float32) for W in model.layout.unpack(params)]
    c32 = JaxCurvature(mlp_apply, ps32, "mse", (X.astype(np.float32), y.astype(np.float32)))
    v = rng.standard_normal(model.n_params)
    out = c32.hessian() @ v.astype(np.float32)
    assert out.dtype == np.float32 and rel_err(out, model.hvp(params, X, y, v)) < 1e-4
    # Monte-Carlo Fisher of the Gaussian likelihood: unbiased for the GGN, error falls with samples
    G = model.ggn_matmat(params, X, y, np.eye(model.n_params))
    c64 = JaxCurvature(mlp_apply, [jnp.asarray(W) for W in model.layout.unpack(params)], "mse", (X, y))
    e_small = np.mean([rel_err(c64.fisher("mc", rng=s, mc_samples=10).to_dense(), G) for s in range(3)])
    e_big = rel_err(c64.fisher("mc", rng=7, mc_samples=2000).to_dense(), G)
    assert e_big < 0.1 and e_big < e_small / 4


def test_errors(rng):
    p, X, y = _cnn_case(rng)
    with pytest.raises(ValueError, match="no trainable parameters"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (X, y), trainable=["nope"])
    with pytest.raises(ValueError, match="scalar"):
        JaxCurvature(cnn_apply, p, lambda z, t: z.sum(-1), (X, y))
    with pytest.raises(TypeError, match="float32"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (X.astype(jnp.float32), y))
    curv = JaxCurvature(cnn_apply, p, "cross_entropy", (X, y))
    n = curv.layout.size
    with pytest.raises(ValueError, match=rf"\({n},\)"):
        curv.hessian() @ np.ones(n - 1)
    with pytest.raises(ValueError, match=rf"\({n},\)"):
        curv.directional_curvature(np.ones(n + 1))
    with pytest.raises(ValueError, match="rng"):
        curv.fisher("mc")
    with pytest.raises(ValueError, match="devices"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (X, y), devices=64)


def test_backend_of_vectors(xp, rng):
    """NumPy vectors for a CPU model; CuPy with a JAX GPU device (skipped otherwise)."""
    if xp is not np and not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("JAX has no GPU device")
    model = MLP([3, 4, 2])
    params = model.init_params(rng)
    X, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    curv = JaxCurvature(mlp_apply, [jnp.asarray(W) for W in model.layout.unpack(params)], "cross_entropy", (X, y))
    assert curv.xp is xp
    v = xp.asarray(rng.standard_normal(model.n_params))
    out = curv.hessian() @ v
    assert type(out) is type(v) and rel_err(out, model.hvp(params, X, y, backend.to_numpy(v))) < 1e-10


def test_dlpack_zero_copy():
    buf = np.empty(64 + 8 * 100, dtype=np.uint8)  # a 64-byte aligned float64 view
    off = (-buf.ctypes.data) % 64
    v = buf[off:off + 800].view(np.float64)
    v[:] = np.arange(100.0)
    a = to_jax(v)
    assert a.unsafe_buffer_pointer() == v.ctypes.data  # no copy on the way in
    w = a * 2.0
    back = from_jax(w)
    assert back.ctypes.data == w.unsafe_buffer_pointer()  # none on the way out
    unaligned = np.arange(11.0)[1:]
    np.testing.assert_array_equal(np.asarray(to_jax(unaligned)), unaligned)  # copied, still correct


def test_sharded_batch_matches_single_device(tmp_path):
    """Two host devices (XLA_FLAGS) in a subprocess: sharded products equal single-device ones,
    for one batch and for a dataset of sharded batches."""
    script = textwrap.dedent("""
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        assert len(jax.devices()) == 2, jax.devices()
        from tests.adapters.test_jax_adapter import cnn_apply, _cnn_case
        from curvlab.adapters.jax import JaxCurvature
        rng = np.random.default_rng(0)
        p, X, y = _cnn_case(rng)
        one = JaxCurvature(cnn_apply, p, "cross_entropy", (X, y))
        two = JaxCurvature(cnn_apply, p, "cross_entropy", (X, y), devices=2)
        assert len(two.X.sharding.device_set) == 2
        V = rng.standard_normal((one.layout.size, 2))
        # a dataset of sharded batches (sizes 2 and 4) equals one device on all the data
        ds = JaxCurvature(cnn_apply, p, "cross_entropy", [(X[:2], y[:2]), (X[2:], y[2:])], devices=2)
        assert all(len(b[0].sharding.device_set) == 2 for _, b in ds.batches)
        errs = []
        for a, b in ((one.hessian().matmat(V), two.hessian().matmat(V)),
                     (one.ggn() @ V[:, 1], two.ggn() @ V[:, 1]),
                     (one.gradient()[1], two.gradient()[1]),
                     (one.hessian().matmat(V), ds.hessian().matmat(V)),
                     (one.ggn() @ V[:, 1], ds.ggn() @ V[:, 1]),
                     (one.gradient()[1], ds.gradient()[1]),
                     (one.fisher("empirical") @ V[:, 0], ds.fisher("empirical") @ V[:, 0]),
                     ([one.loss(), one.directional_curvature(V[:, 0])], [ds.loss(), ds.directional_curvature(V[:, 0])])):
            errs.append(np.linalg.norm(np.subtract(a, b)) / np.linalg.norm(a))
        try:
            JaxCurvature(cnn_apply, p, "cross_entropy", [(X[:3], y[:3]), (X[3:], y[3:])], devices=2)
        except ValueError as e:
            assert "batch size 3 is not a multiple of the 2 devices" in str(e), e
        else:
            raise AssertionError("an odd batch over 2 devices was accepted")
        print("MAXERR", max(errs))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    err = float(res.stdout.split("MAXERR")[1])
    assert err < 1e-12


def test_optax_wrapper_same_trajectory(rng):
    optax = pytest.importorskip("optax")
    from curvlab.methods.baselines import Adam, Momentum

    P = 12
    grad, curv = quartic_problem(rng, P)
    from curvlab.methods.arturo import ArTuRO
    from curvlab.methods.curvature_lr import CurvatureLR

    transforms = [Adam(lr=0.01), Momentum(lr=0.02, nesterov=True), ArTuRO(), CurvatureLR(base=Adam(lr=1.0), schedule=1.0)]
    for tr in transforms:
        needs = type(tr).__name__ == "CurvatureLR"
        th = rng.standard_normal(P)
        p = {"a": jnp.asarray(th[:5]), "b": jnp.asarray(th[5:].reshape(7, 1))}
        st = tr.init(th)
        opt = as_optax(tr, flat=needs)
        ost = opt.init(p)
        for _ in range(300):
            ex = {"curvature": (lambda d, t=th: curv(t, d))} if needs else {}
            th, st = tr.step(th, grad(th), st, **ex)
            cur = np.concatenate([np.asarray(p["a"]), np.asarray(p["b"]).ravel()])
            g = grad(cur)
            gt = {"a": jnp.asarray(g[:5]), "b": jnp.asarray(g[5:].reshape(7, 1))}
            ex = {"curvature": (lambda d, t=cur: curv(t, d))} if needs else {}
            u, ost = opt.update(gt, ost, p, **ex)
            p = optax.apply_updates(p, u)
        cur = np.concatenate([np.asarray(p["a"]), np.asarray(p["b"]).ravel()])
        assert rel_err(cur, th) < 1e-12, type(tr).__name__
        assert ost.count == 300 and p["a"].dtype == jnp.float64


@pytest.mark.parametrize("method", ["exact_newton", "dsgd"])
def test_optax_layerwise_methods(method, rng):
    """Exact Newton / DSGD as optax transformations on a list of layer matrices (extra args)."""
    optax = pytest.importorskip("optax")
    make, extras_of = layerwise_method(method)
    model = MLP([4, 5, 3])
    params = model.init_params(rng)
    X, y = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)
    extras = extras_of(model, X, y)
    core, W = make(), [w.copy() for w in model.layout.unpack(params)]
    state = core.init(W)
    opt = as_optax(make())
    p = [jnp.asarray(w) for w in W]
    ost = opt.init(p)
    for _ in range(20):
        g = model.layout.unpack(model.grad(model.layout.pack(W), X, y))
        W, state = core.step(W, g, state, **extras)
        gj = model.layout.unpack(model.grad(model.layout.pack([np.asarray(a) for a in p]), X, y))
        u, ost = opt.update([jnp.asarray(a) for a in gj], ost, p, **extras)
        p = optax.apply_updates(p, u)
    assert rel_err(np.concatenate([np.asarray(a).ravel() for a in p]), model.layout.pack(W)) < 1e-10


# ----------------------------------------------------------------- issue 11 defects 4 and 10
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_empty_batch_is_refused(loss, rng):
    """A zero-sample batch used to give loss NaN and a zero gradient."""
    p, X, y = _cnn_case(rng)
    t = y[:0] if loss == "cross_entropy" else jnp.zeros((0, 3))
    with pytest.raises(ValueError, match=r"batch is empty \(inputs of shape \(0, 1, 6, 6\)\)"):
        JaxCurvature(cnn_apply, p, loss, (X[:0], t))


@pytest.mark.parametrize("label", [3, 9, -1])
def test_labels_out_of_range_are_refused_on_the_host_once(label, rng):
    """Out-of-range labels used to give NaN (>= C) or a wrapped, wrong loss (< 0) silently.
    The range is read on the host once, when the batch is bound (outside jit)."""
    p, X, y = _cnn_case(rng)
    y = y.at[2].set(label)
    with pytest.raises(ValueError, match=rf"batch targets \(class labels\) must lie in \[0, 2\].*{label}"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (X, y))
    with pytest.raises(ValueError, match=r"batch targets \(class labels\)"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (np.asarray(X), np.asarray(y)))


def test_batch_sequences_dtypes_and_shapes_are_refused(rng):
    p, X, y = _cnn_case(rng)
    with pytest.raises(TypeError, match="batch inputs must be one array, got a tuple; a sequence is not stacked"):
        JaxCurvature(cnn_apply, p, "cross_entropy", ((X[:2], X[:2]), y[:2]))
    with pytest.raises(TypeError, match="batch targets must be one array, got a list"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (X, [0, 1, 2, 0, 1, 2]))
    with pytest.raises(TypeError, match="batch inputs have complex dtype"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (X.astype(jnp.complex128), y))
    with pytest.raises(TypeError, match="batch targets must be integer class labels.*float64"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (X, y.astype(jnp.float64)))
    with pytest.raises(ValueError, match=r"cross_entropy targets must have the outputs' shape without the class "
                                         r"axis, \(6,\), got \(6, 3\)"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (X, jnp.zeros((6, 3), jnp.int64)))
    # mse targets used to broadcast: (6,) or (6, 1) against outputs (6, 3) gave a wrong loss
    for bad in (jnp.zeros(6), jnp.zeros((6, 1))):
        with pytest.raises(ValueError, match=r"mse targets must have the outputs' shape \(6, 3\), got " + re.escape(str(bad.shape))):
            JaxCurvature(cnn_apply, p, "mse", (X, bad))
    with pytest.raises(TypeError, match="loss must return a real floating scalar, got dtype int"):
        JaxCurvature(cnn_apply, p, lambda z, t: jnp.sum(t), (X, y))
    with pytest.raises(ValueError, match="loss must return a scalar, got shape \\(6,\\)"):
        JaxCurvature(cnn_apply, p, lambda z, t: jnp.sum(z, -1), (X, y))
    # (B, 1) labels are the same labels
    ref = JaxCurvature(cnn_apply, p, "cross_entropy", (X, y)).gradient()[0]
    assert JaxCurvature(cnn_apply, p, "cross_entropy", (X, y[:, None])).gradient()[0] == ref


def test_non_float_leaves_and_vectors_are_refused(rng):
    """trainable= naming an int or complex leaf used to drop it silently; complex/int vectors
    used to be cast (imaginary part lost)."""
    p, X, y = _cnn_case(rng)
    p2 = dict(p, step=jnp.asarray(3), phase=jnp.ones(2, jnp.complex128))
    assert JaxCurvature(cnn_apply, p2, "cross_entropy", (X, y)).layout.size == 119  # default: real floats only
    for tr, leaf in ((["conv", "step"], "step"), (lambda n: n != "dense/w", "phase"), (["phase"], "phase")):
        with pytest.raises(TypeError, match=rf"trainable selects leaves that are not real floats: .*{leaf}"):
            JaxCurvature(cnn_apply, p2, "cross_entropy", (X, y), trainable=tr)
    curv = JaxCurvature(cnn_apply, p, "cross_entropy", (X, y))
    n = curv.layout.size
    for dt in (np.complex128, np.int64, np.bool_):
        v = np.ones(n, dtype=dt)
        for name, call in [("v", lambda: curv.hvp(v)), ("d", lambda: curv.directional_curvature(v)),
                           ("params", lambda: curv.gradient(v)), ("d", lambda: curv.grad_and_curvature(v)),
                           ("theta", lambda: curv.unflatten(v)), ("v", lambda: curv.hessian() @ v)]:
            with pytest.raises(TypeError, match=rf"^{name} must be a real float"):
                call()


def test_nan_policy_and_object_inputs(rng):
    p, X, y = _cnn_case(rng)
    Xn = X.at[1, 0, 2, 2].set(jnp.nan)
    assert np.isnan(JaxCurvature(cnn_apply, p, "cross_entropy", (Xn, y)).gradient()[0])  # documented propagate
    with pytest.raises(FloatingPointError, match=r"batch inputs contain NaN or Inf \(nan_policy='raise'\)"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (Xn, y), nan_policy="raise")
    pn = {"conv": p["conv"], "dense": {"w": p["dense"]["w"].at[0, 0].set(jnp.inf), "b": p["dense"]["b"]}}
    with pytest.raises(FloatingPointError, match="parameters contain NaN or Inf"):
        JaxCurvature(cnn_apply, pn, "cross_entropy", (X, y), nan_policy="raise")
    ok = JaxCurvature(cnn_apply, p, "cross_entropy", (X, y), nan_policy="raise")
    assert ok.gradient()[0] == JaxCurvature(cnn_apply, p, "cross_entropy", (X, y)).gradient()[0]
    with pytest.raises(ValueError, match="nan_policy must be 'propagate' or 'raise'"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (X, y), nan_policy="skip")
    with pytest.raises(TypeError, match="batch inputs must hold numbers, got an array of dtype object"):
        JaxCurvature(cnn_apply, p, "cross_entropy", (np.asarray(X).astype(object), y))
