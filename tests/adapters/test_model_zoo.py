"""Defaults that work on common models: every operator and product of TorchCurvature, with
default arguments, against dense references (torch.autograd.functional, float64, small P)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from curvlab.adapters.torch import TorchCurvature, forward_mode_safe_ops  # noqa: E402
from tests.conftest import rel_err  # noqa: E402

from ._models import ResidualBlock, SmallCNN, TransformerBlock, act_mlp, mlp  # noqa: E402

pytestmark = pytest.mark.torch
B = 6


class _NoJvpSquare(torch.autograd.Function):
    """x² with a (twice differentiable) backward but no forward-mode rule (no ``jvp``)."""

    @staticmethod
    def forward(x):  # noqa: ANN001, ANN205
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: ANN001, ANN205
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        return 2.0 * x * g


class NoJvpNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4, dtype=torch.float64), nn.Linear(4, 2, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_NoJvpSquare.apply(torch.tanh(self.a(x))))


def _ce3(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1))


def _case(name: str):
    """(model, loss, X, y) for a zoo entry."""
    g = torch.Generator().manual_seed(0)
    X2 = torch.randn(B, 3, generator=g, dtype=torch.float64)
    cls = torch.randint(0, 2, (B,), generator=g)
    reg = torch.randn(B, 2, generator=g, dtype=torch.float64)
    if name == "mlp_ce":
        return mlp([3, 4, 2]), "cross_entropy", X2, cls
    if name == "mlp_F.mse_loss":
        return mlp([3, 4, 2]), F.mse_loss, X2, reg
    if name == "mlp_F.cross_entropy":
        return mlp([3, 4, 2]), F.cross_entropy, X2, cls
    if name == "mlp_lambda":
        return mlp([3, 4, 2]), (lambda z, y: ((z - y) ** 2).sum(-1).mean() + 0.1 * (z ** 4).mean()), X2, reg
    if name == "cnn_bn_eval":
        Xc = torch.randn(B, 1, 6, 6, generator=g, dtype=torch.float64)
        return SmallCNN(n_classes=2).eval(), "cross_entropy", Xc, cls
    if name == "residual_mse":
        return ResidualBlock(), "mse", X2, reg
    if name == "silu_F.mse_loss":
        return act_mlp([3, 4, 2], nn.SiLU), F.mse_loss, X2, reg
    if name == "silu_ce":
        return act_mlp([3, 4, 2], nn.SiLU), "cross_entropy", X2, cls
    if name == "gelu_F.cross_entropy":
        return act_mlp([3, 4, 2], nn.GELU), F.cross_entropy, X2, cls
    if name == "gelu_tanh_mse":
        return act_mlp([3, 4, 2], lambda: nn.GELU(approximate="tanh")), "mse", X2, reg
    if name == "transformer_ce":
        Xt = torch.randn(B, 3, 4, generator=g, dtype=torch.float64)
        return TransformerBlock(n_classes=2).eval(), _ce3, Xt, torch.randint(0, 2, (B, 3), generator=g)
    if name == "mish_groupnorm_huber":  # mish and group_norm: safe_ops composites; huber: no forward rule
        net = nn.Sequential(nn.Linear(3, 4, dtype=torch.float64), nn.GroupNorm(2, 4, dtype=torch.float64),
                            nn.Mish(), nn.Linear(4, 2, dtype=torch.float64))
        return net, F.huber_loss, X2, reg
    if name == "mish_groupnorm_mse":
        net = nn.Sequential(nn.Linear(3, 4, dtype=torch.float64), nn.GroupNorm(2, 4, dtype=torch.float64),
                            nn.Mish(), nn.Linear(4, 2, dtype=torch.float64))
        return net, "mse", X2, reg
    if name == "no_jvp_op":
        return NoJvpNet(), "mse", X2, reg
    raise KeyError(name)


CASES = ["mlp_ce", "mlp_F.mse_loss", "mlp_F.cross_entropy", "mlp_lambda", "cnn_bn_eval", "residual_mse",
         "silu_F.mse_loss", "silu_ce", "gelu_F.cross_entropy", "gelu_tanh_mse", "transformer_ce", "mish_groupnorm_mse", "mish_groupnorm_huber", "no_jvp_op"]


def _references(src: TorchCurvature) -> dict[str, np.ndarray]:
    """Dense H, GGN and empirical Fisher, computed independently of the adapter."""
    names = src.layout.names
    flat0 = torch.as_tensor(src.params)

    def out_of(flat: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return functional_call(src.model, dict(zip(names, src.layout.unpack(flat))), (X,))

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        return src.loss_fn(out_of(flat, src.X), src.y)

    with forward_mode_safe_ops():  # the fused CPU attention kernel has no double backward
        return _dense(src, out_of, loss_of, flat0)


def _dense(src, out_of, loss_of, flat0) -> dict[str, np.ndarray]:
    H = torch.autograd.functional.hessian(loss_of, flat0)
    z = out_of(flat0, src.X).detach()
    J = torch.autograd.functional.jacobian(lambda f: out_of(f, src.X), flat0).reshape(-1, flat0.numel())
    HL = torch.autograd.functional.hessian(lambda zz: src.loss_fn(zz.reshape(z.shape), src.y),
                                           z.reshape(-1))
    G = J.T @ HL @ J
    gs = [torch.autograd.functional.jacobian(
        lambda f, i=i: src.loss_fn(out_of(f, src.X[i:i + 1]), src.y[i:i + 1]), flat0) for i in range(B)]
    Gs = torch.stack(gs)
    g = torch.autograd.functional.jacobian(loss_of, flat0)
    return {"H": H.numpy(), "G": G.numpy(), "F": (Gs.T @ Gs / B).numpy(), "g": g.numpy(),
            "loss": float(loss_of(flat0))}


@pytest.mark.parametrize("case", CASES)
def test_every_product_runs_with_defaults_and_matches_dense(case, rng):
    torch.manual_seed(1)
    model, loss, X, y = _case(case)
    src = TorchCurvature(model, loss, (X, y))
    ref = _references(src)
    P = src.layout.size
    V, d = rng.standard_normal((P, 3)), rng.standard_normal(P)
    Hn = np.max(np.abs(ref["H"])) * np.max(np.abs(V))
    tol = 1e-10
    H, G, Fe = src.hessian(), src.ggn(), src.fisher()
    assert np.max(np.abs(H @ V[:, 0] - ref["H"] @ V[:, 0])) <= tol * Hn
    assert np.max(np.abs(H.matmat(V) - ref["H"] @ V)) <= tol * Hn
    assert rel_err(src.hvp(V[:, 1]), ref["H"] @ V[:, 1]) < tol
    assert rel_err(G @ V[:, 0], ref["G"] @ V[:, 0]) < tol and rel_err(G.matmat(V), ref["G"] @ V) < tol
    assert rel_err(Fe @ V[:, 0], ref["F"] @ V[:, 0]) < tol and rel_err(Fe.matmat(V), ref["F"] @ V) < tol
    dHd = d @ ref["H"] @ d
    scale = np.abs(d) @ np.abs(ref["H"]) @ np.abs(d)
    assert abs(src.directional_curvature(d) - dHd) <= tol * scale
    val, g, c = src.grad_and_curvature(d)
    assert abs(c - dHd) <= tol * scale and rel_err(g, ref["g"]) < tol and abs(val - ref["loss"]) <= 1e-12
    lo, gg = src.gradient()
    assert rel_err(gg, ref["g"]) < tol and abs(lo - src.loss()) <= 1e-14 * max(1.0, abs(lo))
    if isinstance(loss, str):
        assert rel_err(src.fisher("true") @ V[:, 0], ref["G"] @ V[:, 0]) < tol
    # the mode used is visible: on the adapter, its repr and the Hessian's repr
    used = src.hvp_mode_used
    assert used in ("forward_over_reverse", "reverse_over_reverse")
    assert f"hvp_mode={used}" in repr(src) and f"hvp_mode={src._resolve(None)}" in repr(H)  # one-shot H: issue 14


def test_forward_mode_is_kept_where_it_works_and_the_fallback_is_visible():
    """SiLU, GELU and F.mse_loss run forward mode (composites of safe_ops); an op without a
    forward-mode rule falls back to reverse-over-reverse, said in the reprs."""
    for case in ("silu_F.mse_loss", "gelu_F.cross_entropy", "mlp_F.mse_loss", "transformer_ce", "mish_groupnorm_mse"):
        model, loss, X, y = _case(case)
        src = TorchCurvature(model, loss, (X, y))
        src.hessian()
        assert src.hvp_mode_used == "forward_over_reverse", case
    model, loss, X, y = _case("mish_groupnorm_huber")  # huber_loss_backward: no forward-mode rule
    src = TorchCurvature(model, loss, (X, y))
    src.ggn()
    assert src.hvp_mode_used == "reverse_over_reverse" and "huber_loss_backward" in repr(src)
    model, loss, X, y = _case("no_jvp_op")
    src = TorchCurvature(model, loss, (X, y))
    assert src.hvp_mode_used is None  # probed at first use
    H = src.hessian()
    assert src.hvp_mode_used == "reverse_over_reverse"
    assert "hvp_mode=reverse_over_reverse (auto: forward-mode AD failed" in repr(H)
    assert "auto: forward-mode AD failed" in repr(src) and "Jv by double vjp" in repr(src.ggn())
    assert src.at(params=src.params * 0.5).hvp_mode_used == "reverse_over_reverse"  # the probe is shared


def test_silu_without_composites_falls_back_instead_of_raising(rng):
    """composite_ops=False leaves F.silu fused: silu_backward has no forward-mode rule in
    torch 2.13; the default products fall back and agree with the composite run."""
    model, loss, X, y = _case("silu_ce")
    raw = TorchCurvature(model, loss, (X, y), composite_ops=False)
    safe = TorchCurvature(model, loss, (X, y))
    d = rng.standard_normal(raw.layout.size)
    assert rel_err(raw.hessian() @ d, safe.hessian() @ d) < 1e-12
    assert abs(raw.directional_curvature(d) - safe.directional_curvature(d)) <= 1e-12 * abs(
        safe.directional_curvature(d))
    assert rel_err(raw.grad_and_curvature(d)[1], safe.grad_and_curvature(d)[1]) < 1e-12
    if raw.hvp_mode_used == "reverse_over_reverse":  # torch versions with the rule keep forward mode
        assert "NotImplementedError" in repr(raw) or "RuntimeError" in repr(raw)


def test_an_explicit_forward_mode_that_cannot_work_raises_clearly(rng):
    model, loss, X, y = _case("no_jvp_op")
    src = TorchCurvature(model, loss, (X, y), hvp_mode="forward_over_reverse")
    d = rng.standard_normal(src.layout.size)
    msg = "asked for explicitly but forward-mode AD fails.*hvp_mode='auto'"
    with pytest.raises(RuntimeError, match=msg):
        src.hessian() @ d
    with pytest.raises(RuntimeError, match=msg):
        src.directional_curvature(d)
    with pytest.raises(RuntimeError, match=msg):
        src.ggn() @ d
    with pytest.raises(RuntimeError, match=msg):
        TorchCurvature(model, loss, (X, y)).grad_and_curvature(d, mode="shared")
    # reverse-over-reverse asked for explicitly: everything reverse, no probe
    rr = TorchCurvature(model, loss, (X, y), hvp_mode="reverse_over_reverse")
    assert rel_err(rr.hessian() @ d, TorchCurvature(model, loss, (X, y)).hessian() @ d) < 1e-12
    assert rr._probe == {}


def test_f_mse_loss_by_reference_no_longer_hits_zerotensors(rng):
    """loss=F.mse_loss (the function object) made H, ggn() and grad_and_curvature raise
    "ZeroTensors are immutable"; now forward mode works on it (the composite is used)."""
    model, _, X, y = _case("mlp_F.mse_loss")
    src = TorchCurvature(model, F.mse_loss, (X, y), hvp_mode="forward_over_reverse")
    d = rng.standard_normal(src.layout.size)
    ref = TorchCurvature(model, lambda z, t: ((z - t) ** 2).mean(), (X, y), hvp_mode="forward_over_reverse")
    assert rel_err(src.hessian() @ d, ref.hessian() @ d) < 1e-13
    assert rel_err(src.ggn() @ d, ref.ggn() @ d) < 1e-13
    assert abs(src.grad_and_curvature(d)[2] - ref.grad_and_curvature(d)[2]) <= 1e-13 * abs(ref.grad_and_curvature(d)[2])
    assert float(src.loss_fn(X[:, :2], y)) == float(F.mse_loss(X[:, :2], y))  # same values as the fused kernel
