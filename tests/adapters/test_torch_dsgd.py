"""DSGD's rigorous constant (rule="bound", arXiv 1708.00523) on torch MLPs.

A ``TorchCurvature`` whose model is an ``nn.Sequential`` MLP the bound covers gives the same
constants, choices and trajectory as the reference MLP on the same weights (float64, 1e-10;
torch's separate weight/bias blocks folded as the reference's ``[W | b]``); anything else is
refused with a ValueError naming the module and pointing to rule="estimate".
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from curvlab.adapters.torch import TorchCurvature, from_reference_mlp  # noqa: E402
from curvlab.adapters.torch.architecture import reference_mlp_of  # noqa: E402
from curvlab.methods.dsgd import DSGD  # noqa: E402
from curvlab.models import MLPCurvature  # noqa: E402
from curvlab.models.mlp import MLP  # noqa: E402

torch.set_num_threads(1)
STEPS = 15


def _problem(sizes, act, loss, seed=0, B=12):
    rng = np.random.default_rng(seed)
    m = MLP(sizes, activation=act, loss=loss)
    p = m.init_params(rng)
    X = rng.standard_normal((B, sizes[0]))
    y = rng.integers(0, sizes[-1], B) if loss == "cross_entropy" else rng.standard_normal((B, sizes[-1]))
    return m, p, X, y


def _torch_data(X, y):
    return torch.from_numpy(X), torch.from_numpy(y)


def _run_both(m, p, X, y, src, steps=STEPS, **kw):
    """DSGD(rule="bound") on the torch source and on the reference MLP's source, step by step."""
    perm = reference_mlp_of(src).perm
    opt, ref = DSGD(rule="bound", source=src, **kw), DSGD(rule="bound", source=MLPCurvature(m, p, (X, y)), **kw)
    q = np.asarray(src.params).copy()
    pr = p.copy()
    st, sr = opt.init(q), ref.init(pr)
    assert st.layer_counts.shape == sr.layer_counts.shape == (len(m.layout.shapes),)
    for _ in range(steps):
        _, g = src.at(params=q).gradient()
        upd, st, info = opt.update_with_info(np.asarray(g), st, q)
        upd_r, sr, info_r = ref.update_with_info(m.loss_and_grad(pr, X, y)[1], sr, pr)
        assert info.chosen == info_r.chosen
        np.testing.assert_allclose(info.L, info_r.L, rtol=1e-10, atol=0)
        np.testing.assert_allclose(info.scores, info_r.scores, rtol=1e-10, atol=0)
        q, pr = q + upd, pr + upd_r
        np.testing.assert_allclose(q, pr[perm], rtol=0, atol=1e-10)
    return q, pr, st


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_bound_on_torch_mlp_equals_reference_mlp(act, loss):
    # mse has a uniform bound for one layer only (∂ℓ/∂z unbounded): a linear model there
    sizes = [5, 4, 3] if loss == "cross_entropy" else [5, 3]
    m, p, X, y = _problem(sizes, act, loss)
    net, _ = from_reference_mlp(m, p)
    src = TorchCurvature(net, loss, _torch_data(X, y))
    q, pr, st = _run_both(m, p, X, y, src)
    assert st.layer_counts.sum() == STEPS
    assert not np.allclose(q, np.asarray(src.params))   # it moved


def test_reference_mlp_of_is_the_inverse_of_from_reference_mlp():
    m, p, X, y = _problem([5, 4, 4, 3], "sigmoid", "cross_entropy", seed=3)
    net, perm = from_reference_mlp(m, p)
    r = reference_mlp_of(TorchCurvature(net, "cross_entropy", _torch_data(X, y)))
    assert (r.model.sizes, r.model.activation, r.model.loss_name) == ([5, 4, 4, 3], "sigmoid", "cross_entropy")
    np.testing.assert_array_equal(r.params, p)
    np.testing.assert_array_equal(r.perm, perm)
    np.testing.assert_array_equal(r.X, X)
    assert r.fold == [(0, 1), (2, 3), (4, 5)]


def test_bound_on_torch_mlp_softplus_flatten_and_loader():
    """nn.Flatten first (image-shaped inputs), Softplus(threshold=inf) and a DataLoader of
    batches: the bound's X is every sample, flattened."""
    m, p, X, y = _problem([6, 4, 3], "softplus", "cross_entropy", seed=5, B=10)
    net, _ = from_reference_mlp(m, p)
    layers = [torch.nn.Flatten()] + [torch.nn.Softplus(threshold=math.inf) if isinstance(mod, torch.nn.Softplus)
                                     else mod for mod in net]
    img = torch.from_numpy(X.reshape(10, 1, 2, 3).copy())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(img, torch.from_numpy(y)), batch_size=4)
    src = TorchCurvature(torch.nn.Sequential(*layers), "cross_entropy", loader)
    np.testing.assert_array_equal(reference_mlp_of(src).X, X)
    _run_both(m, p, X, y, src, steps=8)


def test_bound_on_torch_pytree_params_keeps_the_structure():
    m, p, X, y = _problem([5, 4, 3], "tanh", "cross_entropy", seed=2)
    net, _ = from_reference_mlp(m, p)
    src = TorchCurvature(net, "cross_entropy", _torch_data(X, y))
    flat = np.asarray(src.params).copy()
    tree = src.layout.unpack(flat.copy())
    _, g = src.gradient()
    opt = DSGD(rule="bound", source=src)
    u_flat, _ = opt.update(np.asarray(g), opt.init(flat), flat)
    u_tree, _ = opt.update(src.layout.unpack(np.asarray(g).copy()), opt.init(tree), tree)
    assert [u.shape for u in u_tree] == [t.shape for t in tree]
    np.testing.assert_array_equal(src.layout.pack(u_tree), u_flat)
    # a state built without the source has torch's 4 blocks, the bound's step 2 layers: a clear error
    with pytest.raises(ValueError, match="state is for 4 layers, grads have 2.*folds each Linear"):
        DSGD(rule="bound").update(np.asarray(g), DSGD(rule="bound", shapes=src.layout).init(flat), flat, source=src)


def test_bound_on_torch_mse_deep_refused_like_the_reference():
    m, p, X, y = _problem([5, 4, 3], "tanh", "mse")
    net, _ = from_reference_mlp(m, p)
    src = TorchCurvature(net, "mse", _torch_data(X, y))
    q = np.asarray(src.params).copy()
    for s, g in ((src, np.asarray(src.gradient()[1])), (MLPCurvature(m, p, (X, y)), m.loss_and_grad(p, X, y)[1])):
        x = q if s is src else p
        opt = DSGD(rule="bound", source=s)
        with pytest.raises(ValueError, match="loss='mse' has a uniform smoothness bound only for K = 1"):
            opt.update(g, opt.init(x), x)


class _CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 2)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def _refusal(net, loss, X, y):
    net = net.double()
    src = TorchCurvature(net, loss, (X, y))
    q = np.asarray(src.params).copy()
    _, g = src.gradient()
    opt = DSGD(rule="bound", source=src)
    opt.update(np.asarray(g), opt.init(q), q)


_X = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
_Y = torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("make, loss, X, match", [
    (lambda: _CNN(), "cross_entropy", _X.reshape(6, 1, 2, 2).repeat(1, 1, 2, 2)[:, :, :3, :3],
     "the model is _CNN, not an nn.Sequential"),
    (lambda: torch.nn.Sequential(torch.nn.Conv2d(1, 2, 2), torch.nn.Flatten(), torch.nn.Linear(8, 3)),
     "cross_entropy", _X.reshape(6, 1, 2, 2).repeat(1, 1, 2, 2)[:, :, :3, :3], "module '0' is Conv2d"),
    (lambda: torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.GELU(), torch.nn.Linear(5, 3)),
     "cross_entropy", _X, "module '1' is GELU"),
    (lambda: torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)),
     lambda z, t: torch.nn.functional.cross_entropy(z, t), _X, "the loss is a callable"),
    (lambda: torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Softplus(), torch.nn.Linear(5, 3)),
     "cross_entropy", _X, r"module '1' is nn.Softplus\(beta=1.*threshold=20"),
    (lambda: torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3), torch.nn.Tanh()),
     "cross_entropy", _X, "must end in a Linear"),
    (lambda: torch.nn.Sequential(torch.nn.Linear(4, 5, bias=False), torch.nn.Tanh(), torch.nn.Linear(5, 3)),
     "cross_entropy", _X, "without bias"),
    (lambda: torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5), torch.nn.Sigmoid(),
                                 torch.nn.Linear(5, 3)), "cross_entropy", _X, "hidden activations differ"),
])
def test_bound_refuses_torch_models_it_does_not_cover(make, loss, X, match):
    with pytest.raises(ValueError, match=f"rule='bound' is the rigorous.*{match}.*rule='estimate'"):
        _refusal(make(), loss, X, _Y)


def test_bound_refuses_relu_and_frozen_layers():
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    with pytest.raises(ValueError, match="module '1' is nn.ReLU, which is not twice differentiable.*rule='estimate'"):
        _refusal(net, "cross_entropy", _X, _Y)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    net[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"not exactly the Linear layers' weights and biases.*rule='estimate'"):
        _refusal(net, "cross_entropy", _X, _Y)
