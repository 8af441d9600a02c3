"""Torch adapter: agreement with the reference MLP, dense Hessians, eigenvalues, errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from curvlab.adapters.torch import (  # noqa: E402
    TorchCurvature,
    fisher_operator,
    from_reference_mlp,
    from_torch,
    ggn_operator,
    hessian_operator,
    to_torch,
)
from curvlab.linalg.lanczos import eigsh  # noqa: E402
from curvlab.models.mlp import MLP  # noqa: E402
from tests.conftest import rel_err  # noqa: E402

from ._models import SmallCNN, TransformerBlock, mlp  # noqa: E402

pytestmark = pytest.mark.torch
MODES = ("forward_over_reverse", "reverse_over_reverse")


def dense_hessian(curv: TorchCurvature) -> np.ndarray:
    """Independent dense Hessian: torch.autograd.functional.hessian of loss(flat params)."""
    from torch.func import functional_call

    from curvlab.adapters.torch import forward_mode_safe_ops

    names = curv.layout.names

    def f(flat: torch.Tensor) -> torch.Tensor:
        out = functional_call(curv.model, dict(zip(names, curv.layout.unpack(flat))), (curv.X,))
        return curv.loss_fn(out, curv.y)

    theta = to_torch(curv.params).clone()
    with forward_mode_safe_ops():  # fused CPU attention has no double backward
        return torch.autograd.functional.hessian(f, theta, vectorize=True).numpy()


# ----------------------------------------------------------------- reference MLP, float64
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_agrees_with_reference_mlp(loss, rng):
    model = MLP([5, 6, 4, 3], activation="tanh", loss=loss)
    params = model.init_params(rng)
    B = 7
    X = rng.standard_normal((B, 5))
    y = rng.integers(0, 3, B) if loss == "cross_entropy" else rng.standard_normal((B, 3))
    net, perm = from_reference_mlp(model, params)
    curv = TorchCurvature(net, loss, (torch.from_numpy(X), torch.from_numpy(y)))
    assert curv.layout.size == model.n_params
    np.testing.assert_array_equal(curv.params, params[perm])
    V = rng.standard_normal((model.n_params, 3))
    Vt = V[perm]
    ref_H = model.hvp_matmat(params, X, y, V)[perm]
    for mode in MODES:
        H = curv.hessian(mode)
        assert rel_err(H.matmat(Vt), ref_H) < 1e-10
        assert rel_err(H.matvec(Vt[:, 0]), ref_H[:, 0]) < 1e-10
    assert rel_err(curv.ggn().matmat(Vt), model.ggn_matmat(params, X, y, V)[perm]) < 1e-10
    assert rel_err(curv.fisher("empirical").matmat(Vt), model.fisher_matmat(params, X, y, V)[perm]) < 1e-10
    lval, g = curv.gradient()
    rl, rg = model.loss_and_grad(params, X, y)
    assert abs(lval - rl) <= 1e-12 * abs(rl) and rel_err(g, rg[perm]) < 1e-10
    d = V[:, 0]
    c_ref = model.curvature(params, X, y, d)
    assert abs(curv.directional_curvature(d[perm]) - c_ref) <= 1e-10 * abs(c_ref)
    for mode in ("forward_over_reverse", "separate", "shared"):
        l2, g2, c2 = curv.grad_and_curvature(d[perm], mode=mode)
        assert abs(c2 - c_ref) <= 1e-10 * abs(c_ref) and rel_err(g2, rg[perm]) < 1e-10 and abs(l2 - rl) < 1e-12
    # at other parameter values (flat vector in the torch layout)
    p2 = params + 0.1 * V[:, 1]
    assert rel_err(curv.gradient(p2[perm])[1], model.grad(p2, X, y)[perm]) < 1e-10
    c_ref2 = model.curvature(p2, X, y, d)
    assert abs(curv.directional_curvature(d[perm], params=p2[perm]) - c_ref2) <= 1e-10 * abs(c_ref2)


# ----------------------------------------------------------------- dense Hessians, architectures
def _cnn_case(rng, dtype=torch.float64):
    torch.manual_seed(1)
    net = SmallCNN(dtype=dtype).eval()
    X = torch.as_tensor(rng.standard_normal((5, 1, 6, 6)), dtype=dtype)
    y = torch.as_tensor(rng.integers(0, 3, 5))
    return net, X, y


def _transformer_case(rng, dtype=torch.float64):
    torch.manual_seed(2)
    net = TransformerBlock(dtype=dtype)
    X = torch.as_tensor(rng.standard_normal((3, 4, 4)), dtype=dtype)
    y = torch.as_tensor(rng.integers(0, 3, (3, 4)))
    return net, X, y


@pytest.mark.parametrize("case", ["cnn_batchnorm", "transformer", "transformer_eval"])
def test_dense_hessian_architectures(case, rng):
    net, X, y = (_cnn_case if case == "cnn_batchnorm" else _transformer_case)(rng)
    if case == "transformer_eval":  # nn.MultiheadAttention's fused fast path is eligible in eval mode
        net.eval()
    curv = TorchCurvature(net, "cross_entropy", (X, y))
    Hd = dense_hessian(curv)
    assert np.allclose(Hd, Hd.T, atol=1e-12)
    for H in (curv.hessian("forward_over_reverse"), curv.hessian("reverse_over_reverse"),
              curv.hessian("reverse_over_reverse", cache_graph=True)):
        v = rng.standard_normal(curv.layout.size)
        assert rel_err(H @ v, Hd @ v) < 1e-10  # matvec path
        assert rel_err(H.to_dense(), Hd) < 1e-10  # matmat path (vmap / batched backward)
        assert rel_err(H @ v, Hd @ v) < 1e-10  # again (the cached graph is reused)
    d = rng.standard_normal(curv.layout.size)
    ref = d @ Hd @ d
    assert abs(curv.directional_curvature(d) - ref) <= 1e-10 * np.abs(Hd).sum()
    for mode in ("forward_over_reverse", "separate", "shared"):
        assert abs(curv.grad_and_curvature(d, mode=mode)[2] - ref) <= 1e-10 * np.abs(Hd).sum()
    # GGN: symmetric PSD, equals the dense Jᵀ H_L J
    G = curv.ggn().to_dense()
    assert np.allclose(G, G.T, atol=1e-12) and np.linalg.eigvalsh(G).min() > -1e-10


def test_trainable_subset_is_a_block(rng):
    net, X, y = _cnn_case(rng)
    full = TorchCurvature(net, "cross_entropy", (X, y))
    Hfull = full.hessian().to_dense()
    net.conv.bias.requires_grad_(False)
    net.bn.weight.requires_grad_(False)
    sub = TorchCurvature(net, "cross_entropy", (X, y))
    assert "conv.bias" not in sub.layout.names and "bn.weight" not in sub.layout.names
    keep = np.concatenate([np.arange(full.layout.slice(n).start, full.layout.slice(n).stop) for n in sub.layout.names])
    assert rel_err(sub.hessian().to_dense(), Hfull[np.ix_(keep, keep)]) < 1e-12
    # the layout maps flat vectors back to named tensors
    parts = sub.layout.unpack_dict(sub.params)
    np.testing.assert_array_equal(parts["fc.weight"], net.fc.weight.detach().numpy())


def test_float32_matches_float64(rng):
    net64, X64, y = _cnn_case(rng)
    net32 = SmallCNN(dtype=torch.float32).eval()
    net32.load_state_dict({k: v.float() for k, v in net64.state_dict().items()})
    c64 = TorchCurvature(net64, "cross_entropy", (X64, y))
    c32 = TorchCurvature(net32, "cross_entropy", (X64.float(), y))
    H32 = c32.hessian()
    assert H32.dtype == np.float32
    v = rng.standard_normal(c64.layout.size)
    out = H32 @ v.astype(np.float32)
    assert out.dtype == np.float32
    assert rel_err(out, c64.hessian() @ v) < 1e-4  # float32: ~1e-7 eps times conditioning


def test_eigenvalues_match_dense(rng):
    net = mlp([4, 8, 3])
    torch.manual_seed(0)
    X = torch.as_tensor(rng.standard_normal((16, 4)))
    y = torch.as_tensor(rng.integers(0, 3, 16))
    curv = TorchCurvature(net, "cross_entropy", (X, y))
    H = curv.hessian()
    ev = np.linalg.eigvalsh(dense_hessian(curv))
    res = eigsh(H, k=3, which="LA", rng=0, tol=1e-12)
    assert bool(res.all_converged)
    top = np.sort(np.asarray(res.eigenvalues))[::-1]
    np.testing.assert_allclose(top, ev[::-1][:3], rtol=1e-8, atol=1e-12)


def test_mc_fisher_is_unbiased_for_ggn(rng):
    """Mean over independent seeds of F_MC v is within the standard error of G v."""
    net, X, y = _transformer_case(rng)
    curv = TorchCurvature(net, "cross_entropy", (X, y))
    v = rng.standard_normal(curv.layout.size)
    Gv = curv.ggn() @ v
    ests = np.array([curv.fisher("mc", rng=s, mc_samples=20) @ v for s in range(12)])
    m, var = ests.mean(0), ests.var(0, ddof=1) / len(ests)
    assert np.sum((m - Gv) ** 2) < 6.0 * np.sum(var)  # E[lhs] = sum(var): fails with tiny probability
    # and the error shrinks with samples: many draws in one operator
    big = curv.fisher("mc", rng=99, mc_samples=2000) @ v
    assert rel_err(big, Gv) < 0.5 * rel_err(ests[0], Gv)
    # reproducible with the same rng seed
    np.testing.assert_array_equal(curv.fisher("mc", rng=5, mc_samples=3) @ v, curv.fisher("mc", rng=5, mc_samples=3) @ v)


def test_mc_fisher_mse_and_functional_shortcuts(rng):
    net = mlp([3, 5, 2])
    X = torch.as_tensor(rng.standard_normal((6, 3)))
    y = torch.as_tensor(rng.standard_normal((6, 2)))
    G = ggn_operator(net, "mse", (X, y)).to_dense()
    F = fisher_operator(net, "mse", (X, y), "mc", rng=0, mc_samples=4000).to_dense()
    assert rel_err(F, G) < 0.1
    H = hessian_operator(net, "mse", (X, y), hvp_mode="reverse_over_reverse")
    assert H.symmetric and not H.psd and G.shape == H.shape


def test_dlpack_crossing_is_zero_copy(rng):
    v = rng.standard_normal(10)
    t = to_torch(v)
    assert t.data_ptr() == v.ctypes.data
    back = from_torch(t)
    assert back.ctypes.data == v.ctypes.data
    net = mlp([3, 4, 2])
    curv = TorchCurvature(net, "cross_entropy", (torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0])))
    assert isinstance(curv.hvp(rng.standard_normal(curv.layout.size)), np.ndarray)


def test_gpu_backend(xp, rng):
    """CuPy vectors with a CUDA model (skipped without a GPU); NumPy with a CPU model."""
    device = "cpu" if xp is np else "cuda"
    net = mlp([3, 5, 2]).to(device)
    X = torch.as_tensor(rng.standard_normal((6, 3)), device=device)
    y = torch.as_tensor(rng.integers(0, 2, 6), device=device)
    curv = TorchCurvature(net, "cross_entropy", (X, y))
    assert curv.xp is xp
    v = xp.asarray(rng.standard_normal(curv.layout.size))
    Hv = curv.hessian() @ v
    assert type(Hv) is type(v)
    assert abs(float(xp.vdot(v, Hv)) - curv.directional_curvature(v)) < 1e-10 * float(xp.abs(Hv).sum() + 1)


# ----------------------------------------------------------------- bad input
def test_errors(rng):
    net = mlp([3, 4, 2])
    X = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    frozen = mlp([3, 4, 2]).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        TorchCurvature(frozen, "cross_entropy", (X, y))
    bad = TorchCurvature(net, lambda z, t: (z ** 2).sum(-1), (X, y))
    with pytest.raises(ValueError, match="scalar"):
        bad.gradient()
    with pytest.raises(ValueError, match="meta"):
        TorchCurvature(net, "cross_entropy", (X.to("meta"), y))
    with pytest.raises(TypeError, match="float32"):
        TorchCurvature(net, "cross_entropy", (X.float(), y))
    cnn = SmallCNN().train()
    with pytest.raises(ValueError, match="BatchNorm module 'bn' is in training mode"):
        TorchCurvature(cnn, "cross_entropy", (torch.zeros(2, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1])))
    curv = TorchCurvature(net, "cross_entropy", (X, y))
    H = curv.hessian()
    with pytest.raises(ValueError, match=r"\(26,\)"):
        H @ np.ones(25)
    with pytest.raises(ValueError, match=r"\(26,\)"):
        curv.directional_curvature(np.ones(27))
    with pytest.raises(ValueError, match="rng"):
        curv.fisher("mc")
    with pytest.raises(ValueError, match="hvp_mode"):
        curv.hessian("finite_differences")
    with pytest.raises(ValueError, match="cache_graph"):
        curv.hessian("forward_over_reverse", cache_graph=True)
    with pytest.raises(ValueError, match="mode"):
        curv.grad_and_curvature(np.ones(26), mode="adjoint")
    with pytest.raises(ValueError, match="built-in loss"):
        TorchCurvature(net, lambda z, t: z.mean(), (X, y)).fisher("mc", rng=0)


# ----------------------------------------------------------------- issue 11 defects 4 and 10
def _net_batch():
    torch.manual_seed(0)
    net = mlp([3, 4, 2])
    return net, torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_empty_batch_is_refused(loss):
    """A zero-sample batch used to give loss NaN and a zero gradient."""
    net, X, y = _net_batch()
    t = y[:0] if loss == "cross_entropy" else torch.zeros(0, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"batch is empty \(inputs of shape \(0, 3\)\)"):
        TorchCurvature(net, loss, (X[:0], t))


@pytest.mark.parametrize("label", [2, 7, -1, -100])
def test_labels_out_of_range_are_refused_by_every_product(label):
    """-100 (torch's ignore_index) used to be dropped from the mean silently; others raised an
    IndexError on the CPU (a device assert on CUDA)."""
    net, X, y = _net_batch()
    y = y.clone()
    y[3] = label
    curv = TorchCurvature(net, "cross_entropy", (X, y))
    v = np.ones(curv.layout.size)
    for call in (curv.gradient, lambda: curv.hessian() @ v, lambda: curv.ggn() @ v, lambda: curv.fisher() @ v,
                 lambda: curv.directional_curvature(v), lambda: curv.grad_and_curvature(v),
                 lambda: curv.hessian("reverse_over_reverse") @ np.ones((v.size, 2))):
        with pytest.raises(ValueError, match=rf"batch targets \(class labels\) must lie in \[0, 1\].*{label}"):
            call()


def test_labels_are_checked_once_per_targets_tensor(monkeypatch):
    """The label range is one host read for the adapter's targets, not one per product."""
    import curvlab.adapters.torch.curvature as ta

    net, X, y = _net_batch()
    calls = []
    real = ta._check_labels
    monkeypatch.setattr(ta, "_check_labels", lambda yy, C: (calls.append(C), real(yy, C))[1])
    curv = TorchCurvature(net, "cross_entropy", (X, y))
    H, G = curv.hessian(), curv.ggn()
    v = np.ones(curv.layout.size)
    for _ in range(3):
        H @ v
        G @ v
        curv.gradient()
    assert calls == [2]


def test_batch_sequences_complex_and_float_labels_are_refused():
    """A tuple of inputs used to be stacked into one tensor (batch size 2, or a shape error
    deep inside the model); now every batch part must be one real tensor."""
    net, X, y = _net_batch()
    with pytest.raises(TypeError, match="batch inputs must be one tensor .* got a tuple; a sequence is not stacked"):
        TorchCurvature(net, "cross_entropy", ((X[:2], X[:2]), y[:2]))
    with pytest.raises(TypeError, match="batch targets must be one tensor .* got a list"):
        TorchCurvature(net, "cross_entropy", (X, y.tolist()))
    with pytest.raises(TypeError, match="batch inputs have complex dtype"):
        TorchCurvature(net, "cross_entropy", (X.to(torch.complex128), y))
    with pytest.raises(TypeError, match="batch targets have complex dtype"):
        TorchCurvature(net, "mse", (X, torch.zeros(8, 2, dtype=torch.complex128)))
    with pytest.raises(TypeError, match="batch targets must be integer class labels.*float64"):
        TorchCurvature(net, "cross_entropy", (X, y.double()))
    with pytest.raises(TypeError, match="batch inputs must be a torch tensor"):
        TorchCurvature(net, "cross_entropy", ("abc", y))
    with pytest.raises(ValueError, match=r"cross_entropy targets must have the outputs' shape without the class "
                                         r"axis, \(8,\), got \(8, 2\)"):
        TorchCurvature(net, "cross_entropy", (X, torch.zeros(8, 2, dtype=torch.int64))).gradient()
    with pytest.raises(ValueError, match=r"mse targets must have the outputs' shape \(8, 2\), got \(8,\)"):
        TorchCurvature(net, "mse", (X, torch.zeros(8, dtype=torch.float64))).gradient()
    # a NumPy batch still crosses (DLPack), and (B, 1) labels are the same labels
    ref = TorchCurvature(net, "cross_entropy", (X, y)).gradient()[0]
    assert TorchCurvature(net, "cross_entropy", (X.numpy(), y.numpy())).gradient()[0] == ref
    assert TorchCurvature(net, "cross_entropy", (X, y[:, None])).gradient()[0] == ref


@pytest.mark.parametrize("what", ["gradient", "hessian", "ggn", "fisher", "curvature"])
def test_callable_loss_of_the_wrong_shape_is_refused_everywhere(what):
    """A per-sample (non-scalar) callable loss used to raise torch internals in ggn/fisher."""
    net, X, y = _net_batch()
    curv = TorchCurvature(net, torch.nn.CrossEntropyLoss(reduction="none"), (X, y))
    v = np.ones(curv.layout.size)
    call = {"gradient": curv.gradient, "hessian": lambda: curv.hessian() @ v, "ggn": lambda: curv.ggn() @ v,
            "fisher": lambda: curv.fisher() @ v, "curvature": lambda: curv.directional_curvature(v)}[what]
    with pytest.raises(ValueError, match=r"loss must return a scalar \(0-d\) tensor.*got shape \(8,\)"):
        call()
    with pytest.raises(TypeError, match="loss must return a 0-d torch tensor.*float"):
        TorchCurvature(net, lambda z, t: 1.0, (X, y)).gradient()


@pytest.mark.parametrize("dtype", [np.complex128, np.int64, np.bool_])
def test_non_real_vectors_are_refused_naming_the_argument(dtype):
    """Complex vectors used to lose their imaginary part silently (int/bool: cast)."""
    net, X, y = _net_batch()
    curv = TorchCurvature(net, "cross_entropy", (X, y))
    v = np.ones(curv.layout.size, dtype=dtype)
    for name, call in [("v", lambda: curv.hvp(v)), ("d", lambda: curv.directional_curvature(v)),
                       ("params", lambda: curv.gradient(v)), ("d", lambda: curv.grad_and_curvature(v)),
                       ("v", lambda: curv.hessian() @ v), ("V", lambda: curv.ggn() @ v[:, None])]:
        with pytest.raises(TypeError, match=rf"^{name} must be a real float"):
            call()


def test_nan_policy_object_and_integer_inputs():
    """NaN/Inf data propagate by default (documented) and raise with nan_policy='raise';
    object arrays and integer inputs a float model cannot take get a TypeError naming them."""
    net, X, y = _net_batch()
    Xn = X.clone()
    Xn[1, 2] = float("nan")
    assert np.isnan(TorchCurvature(net, "cross_entropy", (Xn, y)).gradient()[0])  # propagate
    with pytest.raises(FloatingPointError, match=r"batch inputs contain NaN or Inf \(nan_policy='raise'\)"):
        TorchCurvature(net, "cross_entropy", (Xn, y), nan_policy="raise")
    with pytest.raises(FloatingPointError, match="batch targets contain NaN"):
        TorchCurvature(net, "mse", (X, torch.full((8, 2), float("inf"), dtype=torch.float64)), nan_policy="raise")
    bad_net = mlp([3, 4, 2])
    with torch.no_grad():
        bad_net[0].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="parameter '0.weight' contain NaN"):
        TorchCurvature(bad_net, "cross_entropy", (X, y), nan_policy="raise")
    ok = TorchCurvature(net, "cross_entropy", (X, y), nan_policy="raise")
    assert ok.gradient()[0] == TorchCurvature(net, "cross_entropy", (X, y)).gradient()[0]
    with pytest.raises(ValueError, match="nan_policy must be 'propagate' or 'raise', got 'skip'"):
        TorchCurvature(net, "cross_entropy", (X, y), nan_policy="skip")
    with pytest.raises(TypeError, match="batch inputs must hold numbers, got an array of dtype object"):
        TorchCurvature(net, "cross_entropy", (X.numpy().astype(object), y))
    curv = TorchCurvature(net, "cross_entropy", (X.long(), y))
    with pytest.raises(TypeError, match=r"the model failed on the batch inputs of dtype torch.int64 .*inputs.to"):
        curv.gradient()
    with pytest.raises(TypeError, match="the model failed on the batch inputs"):
        curv.hessian() @ np.ones(curv.layout.size)
    # a model that takes integer indices keeps working
    emb = torch.nn.Sequential(torch.nn.Embedding(5, 3, dtype=torch.float64), torch.nn.Linear(3, 2, dtype=torch.float64))
    ids = torch.tensor([0, 4, 2, 1])
    assert np.isfinite(TorchCurvature(emb, "cross_entropy", (ids, torch.tensor([0, 1, 1, 0]))).gradient()[0])


# ----------------------------------------------------------------- dᵀHd by second-order jets (issue 14)
class _JetZoo(torch.nn.Module):
    """Functional calls the jet interpreter meets: get_attr weights, F.linear, relu, views, a residual add,
    layer_norm (nested-jvp fallback), a frozen Linear, BatchNorm1d in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64) * 0.5)
        self.frozen = torch.nn.Linear(6, 6, dtype=torch.float64).requires_grad_(False)
        self.bn = torch.nn.BatchNorm1d(6, dtype=torch.float64).eval()
        self.head = torch.nn.Linear(6, 3, dtype=torch.float64)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(torch.nn.functional.linear(x, self.w))
        h = h + torch.relu(self.frozen(h)) * torch.sigmoid(h)
        h = torch.nn.functional.layer_norm(self.bn(h), (6,))
        return self.head(h.view(h.size(0), -1))


@pytest.mark.parametrize("case", ["mlp", "cnn", "zoo", "mse"])
def test_jet_curvature_matches_the_dense_hessian(case, rng):
    torch.manual_seed(0)
    if case == "cnn":
        net = SmallCNN().eval()
        with torch.no_grad():
            net.bn.running_mean.uniform_(-0.2, 0.2)
            net.bn.running_var.uniform_(0.5, 1.5)
        X, y, loss = torch.randn(5, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (5,)), "cross_entropy"
    elif case == "zoo":
        net, X, y, loss = _JetZoo(), torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,)), "cross_entropy"
    else:
        net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5), torch.nn.ReLU(),
                                  torch.nn.Linear(5, 3)).double()
        X = torch.randn(9, 4, dtype=torch.float64)
        y = torch.randn(9, 3, dtype=torch.float64) if case == "mse" else torch.randint(0, 3, (9,))
        loss = "mse" if case == "mse" else "cross_entropy"
    curv = TorchCurvature(net, loss, (X, y))
    d = rng.standard_normal(curv.layout.size)
    val, gd, c = curv.directional_curvature(d, return_all=True)
    assert curv._taylor["gm"] is not False, curv._taylor.get("why")  # the jets ran, not the fallback
    Hd = dense_hessian(curv) @ d
    lo, g = curv.gradient()
    assert abs(c - d @ Hd) <= 1e-12 * max(1.0, abs(d) @ np.abs(Hd))
    assert abs(gd - g @ d) <= 1e-12 * max(1.0, np.abs(g) @ np.abs(d)) and val == pytest.approx(lo, abs=1e-14)
    nested = TorchCurvature(net, loss, (X, y))
    nested._taylor["gm"] = False  # force nested jvp: the same numbers to rounding
    assert nested.directional_curvature(d) == pytest.approx(c, rel=1e-12, abs=1e-12)


def test_untraceable_models_fall_back_to_nested_jvp(rng):
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2, dtype=torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) if float(x.sum()) > -1e9 else -self.lin(x)  # data-dependent: fx cannot trace

    net = Branchy()
    X, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,))
    curv = TorchCurvature(net, "cross_entropy", (X, y))
    d = rng.standard_normal(curv.layout.size)
    c = curv.directional_curvature(d)
    assert curv._taylor["gm"] is False and "fx" in curv._taylor["why"]
    assert c == pytest.approx(d @ dense_hessian(curv) @ d, rel=1e-12)
    hooked = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
    hooked[0].register_forward_hook(lambda m, i, o: o * 2.0)  # a hook fx would drop: not traced
    src = TorchCurvature(hooked, "cross_entropy", (X, y))
    assert src.directional_curvature(d[:8]) == pytest.approx(d[:8] @ dense_hessian(src) @ d[:8], rel=1e-12)
    assert src._taylor["gm"] is False


def test_jets_never_inline_a_custom_autograd_function(rng):
    """fx would trace through Function.forward and drop its derivative rules: not traced."""

    class Clip(torch.autograd.Function):
        @staticmethod
        def forward(x):  # noqa: ANN001, ANN205
            return torch.tanh(x)

        @staticmethod
        def setup_context(ctx, inputs, output):  # noqa: ANN001, ANN205
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, g):  # noqa: ANN001, ANN205
            (t,) = ctx.saved_tensors
            return g * (1 - t * t)

        @staticmethod
        def jvp(ctx, gx):  # noqa: ANN001, ANN205
            return gx * 0.5  # deliberately not tanh's derivative: the Function's rules must win

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2, dtype=torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return Clip.apply(self.lin(x))

    X, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,))
    net = Net()
    curv = TorchCurvature(net, "cross_entropy", (X, y), hvp_mode="forward_over_reverse")
    d = rng.standard_normal(curv.layout.size)
    c = curv.directional_curvature(d)
    assert curv._taylor["gm"] is False and "Clip" in curv._taylor["why"]
    nested = TorchCurvature(net, "cross_entropy", (X, y), hvp_mode="forward_over_reverse")
    nested._taylor["gm"] = False
    assert c == nested.directional_curvature(d)
    assert torch.autograd.Function.apply.__func__ is not None  # the class was restored
    assert Clip.apply(torch.zeros(1)).shape == (1,)


def test_tracing_does_not_break_autograd_functions_in_other_threads():
    """trace_model replaces torch.autograd.Function.apply while fx traces (to refuse custom
    Functions in the traced model); another thread's Function.apply meanwhile runs as usual,
    and the original apply is restored."""
    import threading
    import time

    from curvlab.adapters.torch import _taylor

    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * x

        @staticmethod
        def backward(ctx, g):
            return g

    class Slow(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.3)            # the trace is in progress while the other thread runs
            return x + 1

    before = torch.autograd.Function.__dict__["apply"]
    out, errors = [], []

    def other():
        time.sleep(0.05)
        try:
            out.append(float(Square.apply(torch.tensor(3.0))))
        except Exception as e:  # noqa: BLE001 - the failure this test guards against
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    _taylor.trace_model(Slow())
    t.join()
    assert errors == [] and out == [9.0]
    assert torch.autograd.Function.__dict__["apply"] is before
