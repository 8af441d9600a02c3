"""``TorchCurvature.layer_structure()``: per-sample factors of a torch model's Linear layers.

Checked against the reference MLP's ``MLPCurvature.layer_structure()`` on the same weights,
against the dense per-layer Hessian of small CNNs, and through ``ExactNewton``/``DSGD``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curvlab.adapters.torch import TorchCurvature, from_reference_mlp
from curvlab.methods.baselines import SGD
from curvlab.methods.dsgd import DSGD
from curvlab.methods.exact_newton import ExactNewton
from curvlab.models import MLPCurvature
from curvlab.models.mlp import MLP
from curvlab.sources import LayerStructureUnavailable

F64 = torch.float64


def _mlp_problem(loss="cross_entropy", activation="tanh", B=9, sizes=(6, 5, 4, 3), seed=0):
    rng = np.random.default_rng(seed)
    m = MLP(list(sizes), activation=activation, loss=loss)
    p = m.init_params(rng)
    X = rng.standard_normal((B, sizes[0]))
    y = rng.integers(0, sizes[-1], B) if loss == "cross_entropy" else rng.standard_normal((B, sizes[-1]))
    return m, p, X, y


def _torch_src(net, loss, X, y):
    yt = torch.as_tensor(y) if not np.issubdtype(np.asarray(y).dtype, np.floating) else torch.as_tensor(y, dtype=F64)
    return TorchCurvature(net.eval(), loss, (torch.as_tensor(X, dtype=F64), yt))


@pytest.mark.parametrize("loss,activation", [("cross_entropy", "tanh"), ("cross_entropy", "softplus"),
                                             ("mse", "tanh")])
def test_records_equal_reference_mlp(loss, activation):
    m, p, X, y = _mlp_problem(loss, activation)
    ref = MLPCurvature(m, p, (X, y)).layer_structure()
    net, _ = from_reference_mlp(m, p)
    got = _torch_src(net, loss, X, y).layer_structure()
    assert [(g.weight, g.bias, g.bias_folded) for g in got] == [
        (f"{2 * i}.weight", f"{2 * i}.bias", False) for i in range(len(ref))]
    P = dict(zip(*(lambda s: (s.layout.names, s.layout.unpack(s.params)))(_torch_src(net, loss, X, y))))
    for r, g in zip(ref, got):
        folded = np.concatenate([P[g.weight], P[g.bias][:, None]], axis=1)
        np.testing.assert_allclose(folded, m.layout.unpack(p)[ref.index(r)], rtol=0, atol=1e-14)
        for field in ("inputs", "output_grads", "output_hessians"):
            np.testing.assert_allclose(getattr(g, field), getattr(r, field), rtol=0, atol=1e-10, err_msg=field)


class SmallCNN(torch.nn.Module):
    def __init__(self, heads=1, act=torch.nn.Tanh):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.act = act()
        sizes = [2 * 6 * 6] + [5] * (heads - 1) + [4]
        self.fc = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        h = self.act(self.conv(x)).flatten(1)
        for i, fc in enumerate(self.fc):
            h = fc(h)
            if i < len(self.fc) - 1:
                h = torch.nn.functional.softplus(h)
        return h


def _cnn(heads=1, seed=0):
    torch.manual_seed(seed)
    return SmallCNN(heads).double().eval()


def _images(B=6, seed=0, C=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 1, 8, 8, dtype=F64, generator=g), torch.randint(0, C, (B,), generator=g)


def _dense_block(net, loss_fn, X, y, wname, bname):
    base = {k: v.detach() for k, v in net.named_parameters()}
    Wt = torch.cat([base[wname], base[bname][:, None]], dim=1)

    def f(Wt):
        ps = dict(base, **{wname: Wt[:, :-1], bname: Wt[:, -1]})
        return loss_fn(torch.func.functional_call(net, ps, (X,)), y)

    return torch.autograd.functional.hessian(f, Wt).reshape(Wt.numel(), Wt.numel()).numpy()


def _kron_block(lay):
    A = np.concatenate([lay.inputs, np.ones((lay.inputs.shape[0], 1))], axis=1)
    return np.mean([np.kron(M, np.outer(a, a)) for M, a in zip(lay.output_hessians, A)], axis=0)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("loss", ["cross_entropy", "callable_mse"])
def test_cnn_linear_blocks_equal_dense_hessian(heads, loss):
    net = _cnn(heads)
    X, y = _images()
    if loss == "callable_mse":
        y = torch.nn.functional.one_hot(y, 4).to(F64)
        loss_arg = loss_fn = lambda z, t: torch.nn.functional.mse_loss(z, t)  # noqa: E731 (mean over B·C)
    else:
        loss_arg, loss_fn = loss, torch.nn.functional.cross_entropy
    src = TorchCurvature(net, loss_arg, (X, y))
    layers = src.layer_structure()
    assert [lay.name for lay in layers] == [f"fc.{i}" for i in range(heads)]
    for lay in layers:
        H = _dense_block(net, loss_fn, X, y, lay.weight, lay.bias)
        K = _kron_block(lay)
        assert np.abs(H).max() > 1e-3                       # a block that could differ
        np.testing.assert_allclose(K, H, rtol=0, atol=1e-10)
        # δ: the per-sample output gradients average to the weight gradient
        _, g = src.gradient()
        gW = src.layout.unpack_dict(g)[lay.weight]
        np.testing.assert_allclose(lay.output_grads.T @ lay.inputs / X.shape[0], gW, rtol=0, atol=1e-12)


def _digits(B=32):
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.as_tensor(d.images[:B] / 16.0, dtype=F64).unsqueeze(1)   # (B, 1, 8, 8)
    return X, torch.as_tensor(d.target[:B])


def test_exact_newton_trains_cnn_linear_layers_with_fallback():
    torch.manual_seed(1)
    net = SmallCNN(heads=2).double()
    net.fc[-1] = torch.nn.Linear(5, 10).double()
    net.eval()
    X, y = _digits()
    src = TorchCurvature(net, "cross_entropy", (X, y))
    opt = ExactNewton(lr=0.5, lam=0.5, source=src, fallback=SGD(lr=0.1))
    p = src.params
    st = opt.init(p)
    names = src.layout.names
    losses = []
    for _ in range(4):
        loss, g = src.at(params=p).gradient()
        losses.append(loss)
        upd, st, info = opt.update_with_info(g, st, p)
        U, G = src.layout.unpack_dict(upd), src.layout.unpack_dict(g)
        for n in ("conv.weight", "conv.bias"):          # the fallback: plain SGD
            np.testing.assert_allclose(U[n], -0.1 * G[n], rtol=0, atol=1e-15)
        assert info.fallback is not None
        assert all(not np.allclose(U[n], -0.1 * G[n]) for n in names if n.startswith("fc"))
        p = p + upd
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("batch_mode", ["average", "exact_block"])
def test_exact_newton_torch_steps_equal_mlp_path(batch_mode):
    m, p, X, y = _mlp_problem(B=12)
    net, perm = from_reference_mlp(m, p)
    ref_src, t_src = MLPCurvature(m, p, (X, y)), _torch_src(net, "cross_entropy", X, y)
    np.testing.assert_array_equal(t_src.params, p[perm])
    ref_opt = ExactNewton(lr=0.3, lam=0.5, batch_mode=batch_mode, source=ref_src)
    t_opt = ExactNewton(lr=0.3, lam=0.5, batch_mode=batch_mode, source=t_src)
    pr, pt = p.copy(), t_src.params
    sr, stt = ref_opt.init(pr), t_opt.init(pt)
    for _ in range(3):
        _, gr = ref_src.at(params=pr).gradient()
        _, gt = t_src.at(params=pt).gradient()
        ur, sr = ref_opt.update(gr, sr, pr)
        ut, stt = t_opt.update(gt, stt, pt)
        assert np.abs(ur).max() > 1e-3
        np.testing.assert_allclose(ut, ur[perm], rtol=0, atol=1e-10)
        pr, pt = pr + ur, pt + ut


def test_dsgd_estimate_on_cnn_linear_layers_runs():
    net = _cnn(heads=2)
    X, y = _images(B=8)
    src = TorchCurvature(net, "cross_entropy", (X, y))
    lin = [lay.weight for lay in src.layer_structure()]
    P = src.layout.unpack_dict(src.params)
    opt = DSGD(rule="estimate", norm="frobenius", source=src)
    params = [P[n] for n in src.layout.names]
    _, g = src.gradient()
    grads = src.layout.unpack(g)
    st = opt.init(params)
    upd, st, info = opt.update_with_info(grads, st, params)
    chosen = src.layout.names[info.chosen]
    assert np.isfinite(np.concatenate([np.ravel(u) for u in upd])).all()
    moved = [n for n, u in zip(src.layout.names, upd) if np.any(u != 0)]
    assert moved == [chosen]
    assert set(lin) <= set(src.layout.names)


class Shared(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.fc(x)))


def test_refusals_name_the_layer():
    torch.manual_seed(0)
    X, y = torch.randn(5, 4, dtype=F64), torch.randint(0, 3, (5,))
    # a Linear on a sequence (B, T, n)
    seq = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Flatten(), torch.nn.Linear(6, 3)).double().eval()
    src = TorchCurvature(seq, "cross_entropy", (torch.randn(5, 2, 4, dtype=F64), y))
    with pytest.raises(LayerStructureUnavailable, match=r"Linear layer '0' gets an input of shape \(5, 2, 4\)"):
        src.layer_structure()
    with pytest.raises(TypeError, match=r"ExactNewton needs a curvature source with dense layers.*'0'"):
        ExactNewton(source=src, fallback=SGD()).update(src.gradient()[1], ExactNewton().init(src.params), src.params)
    # a layer used twice per forward
    src = TorchCurvature(Shared().double().eval(), "cross_entropy", (X[:, :3], y))
    with pytest.raises(LayerStructureUnavailable, match=r"'fc' runs more than once"):
        src.layer_structure()
    # BatchNorm switched to training mode after the source was built
    bn = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3)).double().eval()
    src = TorchCurvature(bn, "cross_entropy", (X, y))
    assert len(src.layer_structure()) == 2                       # eval mode: fine
    bn.train()
    with pytest.raises(LayerStructureUnavailable, match=r"module '1' \(BatchNorm\) is in training mode"):
        src.layer_structure()
    # no Linear layer at all
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 8), torch.nn.Flatten()).double().eval()
    src = TorchCurvature(conv, "cross_entropy", _images(B=3, C=3))
    with pytest.raises(LayerStructureUnavailable, match=r"Sequential has no torch.nn.Linear layer"):
        src.layer_structure()


def test_sum_reduced_callable_loss_is_refused():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3)).double().eval()
    X, y = torch.randn(5, 4, dtype=F64), torch.randint(0, 3, (5,))
    src = TorchCurvature(net, lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="sum"), (X, y))
    with pytest.raises(ValueError, match="mean over the batch"):
        src.layer_structure()
    ok = TorchCurvature(net, lambda z, t: torch.nn.functional.cross_entropy(z, t), (X, y)).layer_structure()
    ref = TorchCurvature(net, "cross_entropy", (X, y)).layer_structure()
    np.testing.assert_allclose(ok[0].output_hessians, ref[0].output_hessians, rtol=0, atol=1e-14)


def test_frozen_weight_and_missing_bias():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5, bias=False), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    net[2].weight.requires_grad_(False)
    X, y = torch.randn(6, 4, dtype=F64), torch.randint(0, 3, (6,))
    src = TorchCurvature(net.eval(), "cross_entropy", (X, y))
    layers = src.layer_structure()
    assert [(lay.weight, lay.bias) for lay in layers] == [("0.weight", None)]   # 2.weight frozen: skipped
    # ExactNewton: layer 0 by Newton (no bias column), the trainable bias 2.bias by the fallback
    opt = ExactNewton(lr=1.0, lam=0.5, source=src, fallback=SGD(lr=0.1))
    _, g = src.gradient()
    upd, _ = opt.update(g, opt.init(src.params), src.params)
    np.testing.assert_allclose(src.layout.unpack_dict(upd)["2.bias"], -0.1 * src.layout.unpack_dict(g)["2.bias"])


def test_float32_model_records_are_float32_and_close():
    net64 = _cnn(heads=2)
    X, y = _images()
    r64 = TorchCurvature(net64, "cross_entropy", (X, y)).layer_structure()
    net32 = _cnn(heads=2).float()
    r32 = TorchCurvature(net32, "cross_entropy", (X.float(), y)).layer_structure()
    for a, b in zip(r32, r64):
        assert a.output_hessians.dtype == np.float32
        np.testing.assert_allclose(a.output_hessians, b.output_hessians, rtol=1e-4, atol=1e-5)


def test_dataset_records_concatenate_the_batches():
    net = _cnn(heads=2)
    X, y = _images(B=10)
    one = TorchCurvature(net, "cross_entropy", (X, y)).layer_structure()
    src = TorchCurvature(net, "cross_entropy", [(X[:4], y[:4]), (X[4:7], y[4:7]), (X[7:], y[7:])])
    many = src.layer_structure()
    for a, b in zip(many, one):
        for field in ("inputs", "output_grads", "output_hessians"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=0, atol=1e-12, err_msg=field)


def test_jax_untagged_model_says_how_to_get_a_layer_structure():
    jnp = pytest.importorskip("jax.numpy")
    from curvlab.adapters.jax import JaxCurvature

    src = JaxCurvature(lambda p, x: x @ p["w"], {"w": jnp.ones((2, 2))}, "mse", (np.ones((3, 2)), np.ones((3, 2))))
    with pytest.raises(LayerStructureUnavailable, match=r"no tagged dense layer.*curvlab\.adapters\.jax\.dense"):
        src.layer_structure()
