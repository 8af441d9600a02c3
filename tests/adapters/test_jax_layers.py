"""curvlab.adapters.jax.dense: tagged dense layers give JaxCurvature a layer structure (float64).

Checked against the reference MLP's source on the same weights (records and ExactNewton
steps, 1e-10), against the dense ``jax.hessian`` of each layer's block, and for the refusals.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from curvlab.adapters.jax import JaxCurvature, dense  # noqa: E402
from curvlab.methods.baselines import SGD  # noqa: E402
from curvlab.methods.exact_newton import ExactNewton  # noqa: E402
from curvlab.models import MLPCurvature  # noqa: E402
from curvlab.models.mlp import MLP  # noqa: E402
from curvlab.sources import DenseLayer, LayerStructureUnavailable  # noqa: E402

pytestmark = pytest.mark.jax


def _problem(seed=0, act="tanh", loss="cross_entropy", B=10, sizes=(5, 4, 3)):
    rng = np.random.default_rng(seed)
    m = MLP(list(sizes), activation=act, loss=loss)
    p = m.init_params(rng)
    X = rng.standard_normal((B, sizes[0]))
    y = rng.integers(0, sizes[-1], B) if loss == "cross_entropy" else rng.standard_normal((B, sizes[-1]))
    return m, p, X, y


def _tree(m, p):
    """flax-style params: kernels (n, m), biases (m,)."""
    return {f"l{i}": {"b": jnp.asarray(W[:, -1]), "w": jnp.asarray(W[:, :-1].T)}
            for i, W in enumerate(m.layout.unpack(p))}


def _apply(act=jnp.tanh, explicit=False):
    def apply_fn(prm, x):
        L = len(prm)
        for i in range(L):
            kw = dict(weight=f"l{i}/w", bias=f"l{i}/b") if explicit else {}
            x = dense(x, prm[f"l{i}"]["w"], prm[f"l{i}"]["b"], name=f"fc{i}", **kw)
            if i < L - 1:
                x = act(x)
        return x

    return apply_fn


def _fold(src, q, L):
    """The JAX source's flat vector -> the reference MLP's (W with the bias as last column)."""
    P = dict(zip(src.layout.names, src.layout.unpack(np.asarray(q))))
    return np.concatenate([np.concatenate([P[f"l{i}/w"].T, P[f"l{i}/b"][:, None]], axis=1).ravel()
                           for i in range(L)])


@pytest.mark.parametrize("act,loss", [("tanh", "cross_entropy"), ("sigmoid", "mse")])
@pytest.mark.parametrize("explicit", [False, True])
def test_records_equal_reference_mlp(act, loss, explicit):
    m, p, X, y = _problem(1, act=act, loss=loss)
    src = JaxCurvature(_apply(getattr(jax.nn, act) if act != "tanh" else jnp.tanh, explicit), _tree(m, p), loss,
                       (jnp.asarray(X), jnp.asarray(y)))
    recs = src.layer_structure()
    ref = MLPCurvature(m, p, (X, y)).layer_structure()
    assert [r.name for r in recs] == ["fc0", "fc1"]
    for i, (r, q) in enumerate(zip(recs, ref)):
        assert isinstance(r, DenseLayer)
        assert (r.weight, r.bias, r.bias_folded, r.transposed) == (f"l{i}/w", f"l{i}/b", False, True)
        for a, b in ((r.inputs, q.inputs), (r.output_grads, q.output_grads), (r.output_hessians, q.output_hessians)):
            assert a.shape == b.shape and a.dtype == np.float64
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_each_block_equals_dense_jax_hessian():
    """Each tagged layer's block of the dense Hessian (over (w, b), flattened as [W̃ᵀ])
    equals mean_b M_b ⊗ ã_b ã_bᵀ; a CNN-like feature map below the dense head included."""
    rng = np.random.default_rng(3)
    B, n0, h, C = 7, 6, 5, 3
    params = {"conv": jnp.asarray(rng.standard_normal((2,))),
              "fc0": {"w": jnp.asarray(rng.standard_normal((n0, h)) / 2), "b": jnp.asarray(rng.standard_normal(h))},
              "fc1": {"w": jnp.asarray(rng.standard_normal((h, C)) / 2), "b": jnp.asarray(rng.standard_normal(C))}}
    X, y = jnp.asarray(rng.standard_normal((B, n0))), jnp.asarray(rng.integers(0, C, B))

    def apply_fn(p, x):
        x = jnp.tanh(x * p["conv"][0] + jnp.roll(x, 1, axis=1) * p["conv"][1])  # untagged, per sample
        x = jax.nn.gelu(dense(x, p["fc0"]["w"], p["fc0"]["b"], name="fc0"))
        return dense(x, p["fc1"]["w"], p["fc1"]["b"], name="fc1")

    src = JaxCurvature(apply_fn, params, "cross_entropy", (X, y))
    recs = {r.name: r for r in src.layer_structure()}
    assert set(recs) == {"fc0", "fc1"}
    for k in ("fc0", "fc1"):
        def loss_of(wb, k=k):
            q = dict(params)
            q[k] = {"w": wb[:, :-1].T, "b": wb[:, -1]}
            return src.loss_fn(apply_fn(q, X), y)

        Wt = jnp.concatenate([params[k]["w"].T, params[k]["b"][:, None]], axis=1)  # (m, n + 1)
        Hd = np.asarray(jax.hessian(loss_of)(Wt)).reshape(Wt.size, Wt.size)
        r = recs[k]
        A = np.concatenate([r.inputs, np.ones((B, 1))], axis=1)
        Hk = np.mean([np.kron(r.output_hessians[b], np.outer(A[b], A[b])) for b in range(B)], axis=0)
        np.testing.assert_allclose(Hk, Hd, rtol=0, atol=1e-10)
        gd = np.asarray(jax.grad(loss_of)(Wt))
        np.testing.assert_allclose(np.einsum("bi,bj->ij", r.output_grads, A) / B, gd, rtol=0, atol=1e-12)


@pytest.mark.parametrize("batch_mode", ["average", "exact_block"])
def test_exact_newton_steps_equal_mlp_path(batch_mode):
    m, p, X, y = _problem(4)
    src = JaxCurvature(_apply(), _tree(m, p), "cross_entropy", (jnp.asarray(X), jnp.asarray(y)))
    ref_src = MLPCurvature(m, p, (X, y))
    mk = lambda s: ExactNewton(lr=0.3, lam=0.5, batch_mode=batch_mode, source=s)  # noqa: E731
    opt, ropt = mk(src), mk(ref_src)
    q, r = np.asarray(src.params).copy(), p.copy()
    st, rst = opt.init(q), ropt.init(r)
    for _ in range(3):
        u, st = opt.update(np.asarray(src.at(params=q).gradient()[1]), st, q)
        ru, rst = ropt.update(ref_src.at(params=r).gradient()[1], rst, r)
        q, r = q + u, r + ru
        np.testing.assert_allclose(_fold(src, q, 2), r, rtol=0, atol=1e-10)
    assert np.max(np.abs(r - p)) > 1e-3  # the steps moved


def test_dataset_records_concatenate_batches():
    m, p, X, y = _problem(5, B=12)
    data = [(jnp.asarray(X[:5]), jnp.asarray(y[:5])), (jnp.asarray(X[5:]), jnp.asarray(y[5:]))]
    recs = JaxCurvature(_apply(), _tree(m, p), "cross_entropy", data).layer_structure()
    ref = MLPCurvature(m, p, (X, y)).layer_structure()
    for r, q in zip(recs, ref):
        assert r.output_hessians.shape[0] == 12
        np.testing.assert_allclose(r.output_hessians, q.output_hessians, rtol=0, atol=1e-10)
        np.testing.assert_allclose(r.inputs, q.inputs, rtol=0, atol=1e-12)


def test_untagged_model_and_frozen_layers():
    m, p, X, y = _problem(6)
    tree = _tree(m, p)

    def plain(prm, x):
        return jnp.tanh(x @ prm["l0"]["w"] + prm["l0"]["b"]) @ prm["l1"]["w"] + prm["l1"]["b"]

    src = JaxCurvature(plain, tree, "cross_entropy", (jnp.asarray(X), jnp.asarray(y)))
    with pytest.raises(LayerStructureUnavailable, match=r"no tagged dense layer.*curvlab\.adapters\.jax\.dense"):
        src.layer_structure()
    with pytest.raises(TypeError, match="ExactNewton needs a curvature source with dense layers"):
        q = np.asarray(src.params)
        ExactNewton(source=src).update(np.asarray(src.gradient()[1]), ExactNewton().init(q), q)
    # a frozen kernel is not a layer of the source; its trainable bias goes to the fallback
    src = JaxCurvature(_apply(), tree, "cross_entropy", (jnp.asarray(X), jnp.asarray(y)),
                       trainable=lambda n: n != "l0/w")
    recs = src.layer_structure()
    assert [r.name for r in recs] == ["fc1"]
    q = np.asarray(src.params).copy()
    g = np.asarray(src.gradient()[1])
    with pytest.raises(ValueError, match=r"\['l0/b'\] lie outside"):
        ExactNewton(source=src).update(g, ExactNewton().init(q), q)
    opt = ExactNewton(lr=0.3, lam=0.5, source=src, fallback=SGD(lr=0.1))
    u, _ = opt.update(g, opt.init(q), q)
    P = dict(zip(src.layout.names, src.layout.unpack(u)))
    G = dict(zip(src.layout.names, src.layout.unpack(g)))
    np.testing.assert_array_equal(P["l0/b"], -0.1 * G["l0/b"])


def test_refusals_name_the_layer():
    m, p, X, y = _problem(7)
    tree = _tree(m, p)
    data = (jnp.asarray(X), jnp.asarray(y))

    def computed(prm, x):  # a kernel computed from a leaf: no identity, weight= needed
        h = jnp.tanh(dense(x, prm["l0"]["w"] * 1.0, prm["l0"]["b"], name="fc0"))
        return dense(h, prm["l1"]["w"], prm["l1"]["b"], name="fc1")

    with pytest.raises(LayerStructureUnavailable, match=r"kernel of dense layer 'fc0'.*weight="):
        JaxCurvature(computed, tree, "cross_entropy", data).layer_structure()

    def twice(prm, x):
        h = jnp.tanh(dense(x, prm["l0"]["w"], prm["l0"]["b"], name="fc0"))
        h = jnp.tanh(dense(jnp.concatenate([h, h[:, :1]], 1), prm["l0"]["w"], prm["l0"]["b"], name="fc0"))
        return dense(h, prm["l1"]["w"], prm["l1"]["b"], name="fc1")

    with pytest.raises(LayerStructureUnavailable, match="'fc0' runs more than once"):
        JaxCurvature(twice, tree, "cross_entropy", data).layer_structure()

    def wrong_name(prm, x):
        h = jnp.tanh(dense(x, prm["l0"]["w"], prm["l0"]["b"], name="fc0", weight="l1/w"))
        return dense(h, prm["l1"]["w"], prm["l1"]["b"], name="fc1")

    with pytest.raises(LayerStructureUnavailable, match=r"names weight='l1/w' of shape \(4, 3\)"):
        JaxCurvature(wrong_name, tree, "cross_entropy", data).layer_structure()

    def coupled(prm, x):  # batch normalisation with batch statistics couples the samples
        h = dense(x, prm["l0"]["w"], prm["l0"]["b"], name="fc0")
        h = jnp.tanh((h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-3))
        return dense(h, prm["l1"]["w"], prm["l1"]["b"], name="fc1")

    with pytest.raises(LayerStructureUnavailable, match="couples the samples"):
        JaxCurvature(coupled, tree, "cross_entropy", data).layer_structure()

    def seq(prm, x):
        h = dense(x.reshape(2, -1, x.shape[1]).reshape(-1, x.shape[1])[:4], prm["l0"]["w"], prm["l0"]["b"],
                  name="fc0")
        return dense(jnp.tanh(h), prm["l1"]["w"], prm["l1"]["b"], name="fc1").repeat(3, 0)[:x.shape[0]]

    with pytest.raises(LayerStructureUnavailable, match=r"'fc0' gets an input of shape \(4, 5\)"):
        JaxCurvature(seq, tree, "cross_entropy", data).layer_structure()

    sum_loss = lambda z, t: jnp.sum(jnp.sum((z - jax.nn.one_hot(t, 3)) ** 2, -1))  # noqa: E731
    with pytest.raises(ValueError, match="mean over the batch"):
        JaxCurvature(_apply(), tree, sum_loss, data).layer_structure()
    with pytest.raises(ValueError, match="transposed=True with bias_folded=True"):
        DenseLayer("x", "w", None, True, None, None, None, transposed=True)


def test_dense_outside_layer_structure_is_plain_and_jittable():
    rng = np.random.default_rng(8)
    x, w, b = (jnp.asarray(rng.standard_normal(s)) for s in ((6, 4), (4, 3), (3,)))
    np.testing.assert_array_equal(np.asarray(dense(x, w, b, name="d")), np.asarray(x @ w + b))
    np.testing.assert_array_equal(np.asarray(dense(x, w, name="d")), np.asarray(x @ w))
    f = jax.jit(lambda x, w, b: dense(x, w, b, name="d"))
    np.testing.assert_array_equal(np.asarray(f(x, w, b)), np.asarray(jax.jit(lambda x, w, b: x @ w + b)(x, w, b)))
    g = jax.grad(lambda w: jnp.sum(jnp.tanh(dense(x, w, b, name="d"))))(w)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w + b)))(w)))
    # a 3-D input is fine outside layer_structure (no per-sample requirement there)
    assert dense(jnp.ones((2, 6, 4)), w, b, name="d").shape == (2, 6, 3)
    with pytest.raises(TypeError, match="name"):
        dense(x, w, b, name="")


def test_at_rebinds_without_retracing():
    m, p, X, y = _problem(9)
    src = JaxCurvature(_apply(), _tree(m, p), "cross_entropy", (jnp.asarray(X), jnp.asarray(y)))
    src.layer_structure()
    f = src._jit["layers_jit"][0]
    n0 = f._cache_size()
    p2 = p * 0.9
    recs = src.at(params=np.asarray(src.params) * 0.9).layer_structure()
    assert f._cache_size() == n0
    ref = MLPCurvature(m, p2, (X, y)).layer_structure()
    np.testing.assert_allclose(recs[1].output_hessians, ref[1].output_hessians, rtol=0, atol=1e-10)


def test_bias_free_layers_step_like_torch():
    """Bias-free tagged layers (kernel (n, m), transposed) step as torch's bias-free Linear
    layers (weight (m, n)) on the same weights."""
    torch = pytest.importorskip("torch")
    from curvlab.adapters.torch import TorchCurvature

    rng = np.random.default_rng(10)
    Ws = [rng.standard_normal((4, 5)) / 2, rng.standard_normal((3, 4)) / 2]  # torch orientation (m, n)
    X, y = rng.standard_normal((9, 5)), rng.integers(0, 3, 9)

    def apply_fn(p, x):
        return dense(jnp.tanh(dense(x, p["a"], name="a")), p["b"], name="b")

    jsrc = JaxCurvature(apply_fn, {"a": jnp.asarray(Ws[0].T), "b": jnp.asarray(Ws[1].T)}, "cross_entropy",
                        (jnp.asarray(X), jnp.asarray(y)))
    net = torch.nn.Sequential(torch.nn.Linear(5, 4, bias=False), torch.nn.Tanh(), torch.nn.Linear(4, 3, bias=False))
    net = net.double()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(Ws[0]))
        net[2].weight.copy_(torch.from_numpy(Ws[1]))
    tsrc = TorchCurvature(net, "cross_entropy", (torch.from_numpy(X), torch.from_numpy(y)))
    assert [(r.bias, r.transposed) for r in jsrc.layer_structure()] == [(None, True), (None, True)]
    q, r = np.asarray(jsrc.params).copy(), np.asarray(tsrc.params).copy()
    opt, topt = ExactNewton(lr=0.5, lam=0.3, source=jsrc), ExactNewton(lr=0.5, lam=0.3, source=tsrc)
    st, tst = opt.init(q), topt.init(r)
    for _ in range(2):
        u, st = opt.update(np.asarray(jsrc.at(params=q).gradient()[1]), st, q)
        tu, tst = topt.update(np.asarray(tsrc.at(params=r).gradient()[1]), tst, r)
        q, r = q + u, r + tu
        Pj = dict(zip(jsrc.layout.names, jsrc.layout.unpack(q)))
        Pt = dict(zip(tsrc.layout.names, tsrc.layout.unpack(r)))
        np.testing.assert_allclose(Pj["a"].T, Pt["0.weight"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(Pj["b"].T, Pt["2.weight"], rtol=0, atol=1e-10)


def test_consumers_without_transposed_support_refuse():
    from curvlab.methods._source import layer_structure

    m, p, X, y = _problem(11)
    src = JaxCurvature(_apply(), _tree(m, p), "cross_entropy", (jnp.asarray(X), jnp.asarray(y)))
    with pytest.raises(TypeError, match=r"store \(n, m\) kernels"):
        layer_structure(src, "SomeMethod", "its layers")
    assert len(layer_structure(src, "ExactNewton", "its layers", transposed_ok=True)) == 2
