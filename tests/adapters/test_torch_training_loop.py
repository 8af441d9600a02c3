"""issue 13 "Done when" (second bullet): an ordinary torch training loop (StepLR, gradient
clipping, checkpoints through the default ``torch.load``) trains a small CNN on sklearn digits
with curvlab's methods through :class:`CurvlabOptimizer`, and a reloaded run continues bit for
bit. float32 throughout, a few dozen steps per run."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("sklearn.datasets")

from curvlab.adapters.torch import CurvlabOptimizer, TorchCurvature  # noqa: E402
from curvlab.methods.arturo import ArTuRO  # noqa: E402
from curvlab.methods.baselines import SGD, Adam  # noqa: E402
from curvlab.methods.curvature_lr import CurvatureLR  # noqa: E402
from curvlab.methods.exact_newton import ExactNewton  # noqa: E402

pytestmark = pytest.mark.torch

BATCH, N_BATCHES = 64, 6
STEPS, MORE = 16, 8          # train STEPS, checkpoint, train MORE


@pytest.fixture(scope="module")
def digits():
    d = datasets.load_digits()
    X = torch.as_tensor(d.images[: BATCH * N_BATCHES] / 16.0, dtype=torch.float32).unsqueeze(1)  # (B, 1, 8, 8)
    y = torch.as_tensor(d.target[: BATCH * N_BATCHES], dtype=torch.int64)
    return [(X[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(X), BATCH)]


def _cnn(seed: int) -> torch.nn.Module:
    """conv(1→4, 3×3) - BatchNorm (eval: running statistics, set to non-trivial values) - ReLU - Linear(144→10)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(144, 10))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.1, 0.1)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def _full_loss(net, data) -> float:
    with torch.no_grad():
        return float(sum(torch.nn.functional.cross_entropy(net(x), y) for x, y in data) / len(data))


def _make(method: str, net: torch.nn.Module, batch):
    """(optimizer, whether step takes batch=) for ``method`` on ``net``."""
    params = list(net.parameters())
    if method == "ArTuRO":
        return CurvlabOptimizer(params, ArTuRO(kl_bound=0.2, measurement_noise=0.1)), False
    if method == "Adam":
        return CurvlabOptimizer(params, Adam(lr=1e-2)), False
    if method == "CurvatureLR":
        src = TorchCurvature(net, "cross_entropy", batch)
        return CurvlabOptimizer(params, CurvatureLR(base=SGD(lr=1.0), schedule=0.5, max_step=1.0), source=src), True
    if method == "ExactNewton":
        src = TorchCurvature(net, "cross_entropy", batch)
        tr = ExactNewton(lr=0.5, lam=1.0, fallback=SGD(lr=0.05))
        opt = CurvlabOptimizer(params, tr, source=src)
        assert opt.param_groups[0]["lam"] == 1.0 and opt.param_groups[0]["fallback_lr"] == 0.05
        return opt, True
    raise AssertionError(method)


def _train(net, opt, sched, data, takes_batch, start, steps, clip=1.0):
    losses = []
    for k in range(start, start + steps):
        x, y = data[k % len(data)]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        if takes_batch:
            opt.step(batch=(x, y))
        else:
            opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def _flat(net):
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


@pytest.mark.parametrize("method", ["ArTuRO", "CurvatureLR", "ExactNewton", "Adam"])
def test_training_loop_checkpoint_continues_bit_for_bit(method, digits):
    # uninterrupted run
    net = _cnn(0)
    start_loss = _full_loss(net, digits)
    opt, takes_batch = _make(method, net, digits[0])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=6, gamma=0.5)
    lr0 = opt.param_groups[0]["lr"]
    _train(net, opt, sched, digits, takes_batch, 0, STEPS)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 * 0.5 ** (STEPS // 6))   # StepLR drives the knob
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    _train(net, opt, sched, digits, takes_batch, STEPS, MORE)
    ref = _flat(net)
    assert torch.isfinite(ref).all()
    assert _full_loss(net, digits) < 0.95 * start_loss, f"{method} did not train the CNN"
    # reload into a fresh model (other initial weights), optimizer and scheduler
    buf.seek(0)
    ck = torch.load(buf)              # the default reader: weights_only=True
    net2 = _cnn(1)
    net2.load_state_dict(ck["model"])
    opt2, _ = _make(method, net2, digits[3])
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=6, gamma=0.5)
    opt2.load_state_dict(ck["opt"])
    sched2.load_state_dict(ck["sched"])
    assert opt2.param_groups[0]["lr"] == ck["opt"]["param_groups"][0]["lr"] == lr0 * 0.5 ** (STEPS // 6)
    _train(net2, opt2, sched2, digits, takes_batch, STEPS, MORE)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert torch.equal(_flat(net2), ref), f"{method}: the reloaded run left the uninterrupted one"


@pytest.mark.parametrize("scheduler", ["StepLR", "OneCycleLR"])
def test_adam_wrapper_follows_torch_adam_under_a_scheduler(scheduler, digits):
    """CurvlabOptimizer(Adam) under StepLR, or OneCycleLR cycling lr and betas[0] (and clipping),
    gives torch.optim.Adam's trajectory."""
    nets = [_cnn(0), _cnn(0)]
    mine = CurvlabOptimizer(nets[0].parameters(), Adam(lr=1e-2, b1=0.8, b2=0.99, eps=1e-6))
    theirs = torch.optim.Adam(nets[1].parameters(), lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    if scheduler == "StepLR":
        scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.3) for o in (mine, theirs)]
    else:
        scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=2e-2, total_steps=24, base_momentum=0.7,
                                                      max_momentum=0.9) for o in (mine, theirs)]
    for k in range(24):
        x, y = digits[k % len(digits)]
        for net, opt, sch in zip(nets, (mine, theirs), scheds):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sch.step()
        assert mine.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
        assert mine.param_groups[0]["betas"] == theirs.param_groups[0]["betas"]
    a, b = _flat(nets[0]), _flat(nets[1])
    assert float((a - b).norm() / b.norm()) < 1e-6
    assert float((a - _flat(_cnn(0))).norm()) > 1e-2    # it moved


def test_closure_step_returns_the_loss_and_rebinds_the_source(digits):
    """step(closure) re-evaluates the loss and returns it (torch's contract); with a source,
    closure mode and batch mode give the same CurvatureLR step when the batch is the one bound."""
    x, y = digits[0]
    runs = []
    for mode in ("closure", "batch"):
        net = _cnn(0)
        src = TorchCurvature(net, "cross_entropy", (x, y))
        opt = CurvlabOptimizer(net.parameters(), CurvatureLR(base=SGD(lr=1.0), schedule=0.5), source=src)
        got = []
        for _ in range(5):
            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(x), y)
                loss.backward()
                return loss
            if mode == "closure":
                got.append(float(opt.step(closure)))
            else:
                got.append(float(closure()))
                assert opt.step(batch=(x, y)) is None
        runs.append((got, _flat(net)))
    assert runs[0][0] == runs[1][0] and runs[0][0][-1] < runs[0][0][0]
    assert torch.equal(runs[0][1], runs[1][1])
