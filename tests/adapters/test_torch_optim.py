"""CurvlabOptimizer: same trajectory as the core transforms, param groups, state_dict round trip."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from curvlab.adapters.torch import CurvlabOptimizer, TorchCurvature, from_reference_mlp  # noqa: E402
from curvlab.methods import curvature_lr as cl  # noqa: E402
from curvlab.methods._transform import Transform  # noqa: E402
from curvlab.methods.arturo import ArTuRO  # noqa: E402
from curvlab.methods.baselines import SGD, Adam, AdamW, Momentum  # noqa: E402
from curvlab.methods.curvature_lr import CurvatureLR  # noqa: E402
from tests.conftest import rel_err  # noqa: E402

from ._helpers import layerwise_method, quartic_problem  # noqa: E402

pytestmark = pytest.mark.torch

SHAPES = [(4, 3), (4,), (2, 4)]


def _problem(rng):
    """:func:`quartic_problem` on the flat vector of :data:`SHAPES`."""
    P = sum(int(np.prod(s)) for s in SHAPES)
    return (P, *quartic_problem(rng, P))


def _split(flat):
    out, off = [], 0
    for s in SHAPES:
        n = int(np.prod(s))
        out.append(flat[off:off + n].reshape(s))
        off += n
    return out


def _transforms():
    return [SGD(lr=0.05), Momentum(lr=0.02, momentum=0.9, nesterov=True), Adam(lr=0.01), AdamW(lr=0.01, weight_decay=0.1),
            ArTuRO(), CurvatureLR(base=Adam(lr=1.0), schedule=1.0)]


@pytest.mark.parametrize("flat", [False, True], ids=["tree", "flat"])
@pytest.mark.parametrize("transform", _transforms(), ids=lambda t: type(t).__name__)
def test_same_trajectory_as_core_transform(transform: Transform, flat, rng):
    P, grad, curv = _problem(rng)
    th0 = rng.standard_normal(P) * 0.5
    needs_curv = type(transform).__name__ == "CurvatureLR"
    steps = 300
    # core transform on NumPy, flat vector
    core, state = copy.deepcopy(transform), None
    th = th0.copy()
    state = core.init(th)
    for _ in range(steps):
        ex = {"curvature": (lambda d, t=th: curv(t, d))} if needs_curv else {}
        th, state = core.step(th, grad(th), state, **ex)
    # wrapper on torch parameters with the same gradients
    params = [torch.nn.Parameter(torch.as_tensor(p.copy())) for p in _split(th0)]
    opt = CurvlabOptimizer(params, copy.deepcopy(transform), flat=flat)

    def current() -> np.ndarray:
        return np.concatenate([p.detach().numpy().ravel() for p in params])

    for _ in range(steps):
        cur = current()
        for p, g in zip(params, _split(grad(cur))):
            p.grad = torch.as_tensor(g.copy())
        if needs_curv:
            if flat:
                cf = lambda d, t=cur: curv(t, d)  # noqa: E731
            else:
                cf = lambda d, t=cur: curv(t, np.concatenate([x.ravel() for x in d]))  # noqa: E731
            opt.step(curvature=cf)
        else:
            opt.step()
    assert np.all(np.isfinite(th))
    assert rel_err(current(), th) < 1e-12


def test_param_groups_state_dict_round_trip(rng):
    P, grad, _ = _problem(rng)
    th0 = rng.standard_normal(P)

    def make():
        ps = [torch.nn.Parameter(torch.as_tensor(p.copy())) for p in _split(th0)]
        opt = CurvlabOptimizer([{"params": ps[:2]}, {"params": ps[2:], "transform": Adam(lr=0.02), "flat": True}],
                               Momentum(lr=0.03, momentum=0.8))
        return ps, opt

    def closure_for(ps, opt):
        def closure():
            opt.zero_grad()
            cur = torch.cat([p.reshape(-1) for p in ps])
            th = cur.detach().numpy()
            loss = torch.as_tensor(0.0, dtype=torch.float64)
            g = torch.as_tensor(grad(th))
            cur.backward(g)  # gradient of the test problem, injected by a linear surrogate
            return loss
        return closure

    ps, opt = make()
    for _ in range(40):
        opt.step(closure_for(ps, opt))
    saved_params = [p.detach().clone() for p in ps]
    sd = opt.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    blob = torch.load(buf)  # the default weights_only=True reader: tensors and plain Python only
    assert pickle.loads(pickle.dumps(sd)).keys() == blob.keys()
    for _ in range(40):
        opt.step(closure_for(ps, opt))
    ref = [p.detach().clone() for p in ps]
    # fresh optimizer, parameters restored, state loaded
    ps2, opt2 = make()
    with torch.no_grad():
        for p, s in zip(ps2, saved_params):
            p.copy_(s)
    opt2.load_state_dict(blob)
    for gi, saved in blob["state"].items():  # lossless: same keys, values and dtypes
        loaded = opt2.state[opt2.param_groups[gi]["params"][0]]["transform_state"].to_dict()
        assert set(loaded) == set(saved["transform_state"])
        for k, v in saved["transform_state"].items():
            assert isinstance(v, torch.Tensor)
            assert loaded[k].dtype == v.numpy().dtype
            np.testing.assert_array_equal(loaded[k], v.numpy())
    for _ in range(40):
        opt2.step(closure_for(ps2, opt2))
    for a, b in zip(ps2, ref):
        assert torch.equal(a.detach(), b)
    buf.seek(0)
    sd3 = torch.load(buf, weights_only=True)
    assert sd3["state"][1]["step"] == 40 and set(sd3["state"]) == {0, 1}
    assert sd3["param_groups"][1]["transform"] == "Adam"
    st = opt2.state_dict()
    with pytest.raises(ValueError, match="param groups"):
        CurvlabOptimizer([torch.nn.Parameter(torch.ones(2, dtype=torch.float64))], SGD()).load_state_dict(st)
    with pytest.raises(ValueError, match="Adam"):
        ps3, opt3 = make()
        opt3.param_groups[1]["transform"] = SGD()
        opt3.load_state_dict(st)
    with pytest.raises(TypeError, match="Transform"):
        CurvlabOptimizer(ps, "sgd")


def test_curvature_lr_with_torch_curvature_matches_reference_mlp(rng):
    """CurvatureLR driven by the torch adapter's forward-only dᵀHd follows the core
    transform driven by the reference MLP (same weights, permuted layout)."""
    from curvlab.models.mlp import MLP

    model = MLP([6, 8, 3])
    params = model.init_params(rng)
    X, y = rng.standard_normal((32, 6)), rng.integers(0, 3, 32)
    net, perm = from_reference_mlp(model, params)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    make = lambda: cl.CurvatureLR(base=SGD(lr=1.0), schedule=0.8)  # noqa: E731
    core, th = make(), params.copy()
    state = core.init(th)
    opt = CurvlabOptimizer(net.parameters(), make(), flat=True)
    for _ in range(30):
        th, state = core.step(th, model.grad(th, X, y), state, model=model, X=X, y=y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        curv = TorchCurvature(net, "cross_entropy", (Xt, yt))
        opt.step(curvature=curv.directional_curvature)
    mine = np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])
    assert rel_err(mine, th[perm]) < 1e-9
    assert model.loss(th, X, y) < model.loss(params, X, y)


def test_extras_fn_gives_per_group_extras(rng):
    """extras_fn(optimizer, group_index) supplies each group's curvature callable."""
    a = torch.nn.Parameter(torch.as_tensor(rng.standard_normal(3)))
    b = torch.nn.Parameter(torch.as_tensor(rng.standard_normal(2)))
    scales = [2.0, 5.0]  # f = ½ Σ_g s_g ||θ_g||²: per-group curvature s_g ||d||²
    seen = []

    def extras_fn(opt, gi):
        seen.append(gi)
        return {"curvature": lambda d, s=scales[gi]: s * float(np.sum(np.concatenate([x.ravel() for x in d]) ** 2))}

    opt = CurvlabOptimizer([{"params": [a]}, {"params": [b]}], cl.CurvatureLR(base=SGD(lr=1.0), schedule=1.0),
                           extras_fn=extras_fn)
    for p, s in zip((a, b), scales):
        p.grad = s * p.detach().clone()
    opt.step()
    # λ = 1 on an exact quadratic along d = g: one step lands on the minimiser 0
    assert seen == [0, 1]
    assert float(a.detach().abs().max()) < 1e-12 and float(b.detach().abs().max()) < 1e-12


@pytest.mark.parametrize("method", ["exact_newton", "dsgd"])
def test_layerwise_methods_through_the_wrapper(method, rng):
    """Methods whose extras describe the reference MLP (exact Newton, DSGD) run on a torch
    module holding the MLP's layer matrices and follow the core transform."""
    from curvlab.models.mlp import MLP

    from ._models import FoldedMLP

    make, extras_of = layerwise_method(method)
    model = MLP([5, 6, 3])
    params = model.init_params(rng)
    X, y = rng.standard_normal((24, 5)), rng.integers(0, 3, 24)
    extras = extras_of(model, X, y)
    core = make()
    W = [w.copy() for w in model.layout.unpack(params)]
    state = core.init(W)
    net = FoldedMLP(W)
    opt = CurvlabOptimizer(net.parameters(), make(), extras_fn=lambda o, gi: extras)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    for _ in range(40):
        g = model.layout.unpack(model.grad(model.layout.pack(W), X, y))
        W, state = core.step(W, g, state, **extras)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    mine = np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])
    ref = model.layout.pack(W)
    assert rel_err(mine, ref) < 1e-9
    assert model.loss(ref, X, y) < model.loss(params, X, y)


# --------------------------------------------------------------------------- issue 11 defect 8, issue 13 §4
def _run(opt, params, grad, curv, steps, needs_curv, flat):
    for _ in range(steps):
        cur = np.concatenate([p.detach().numpy().ravel() for p in params])
        opt.zero_grad()
        for p, g in zip(params, _split(grad(cur))):
            p.grad = torch.as_tensor(g.copy())
        if needs_curv:
            cf = (lambda d, t=cur: curv(t, d)) if flat else \
                (lambda d, t=cur: curv(t, np.concatenate([x.ravel() for x in d])))
            opt.step(curvature=cf)
        else:
            opt.step()


@pytest.mark.parametrize("flat", [False, True], ids=["tree", "flat"])
@pytest.mark.parametrize("transform", _transforms(), ids=lambda t: type(t).__name__)
def test_state_dict_loads_with_default_torch_load_and_continues_bit_for_bit(transform, flat, rng):
    """state_dict() used to hold NumPy arrays, which torch.load(weights_only=True), the
    default, refuses. Now: tensors and plain Python; a reloaded optimizer continues bit for bit."""
    P, grad, curv = _problem(rng)
    th0 = rng.standard_normal(P) * 0.5
    needs_curv = type(transform).__name__ == "CurvatureLR"

    def make(theta):
        ps = [torch.nn.Parameter(torch.as_tensor(p.copy())) for p in _split(theta)]
        return ps, CurvlabOptimizer(ps, copy.deepcopy(transform), flat=flat)

    ps, opt = make(th0)
    _run(opt, ps, grad, curv, 15, needs_curv, flat)
    mid = np.concatenate([p.detach().numpy().ravel() for p in ps])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    _run(opt, ps, grad, curv, 15, needs_curv, flat)
    buf.seek(0)
    sd = torch.load(buf)  # weights_only=True by default
    for v in sd["state"][0]["transform_state"].values():
        assert isinstance(v, (torch.Tensor, str))
    ps2, opt2 = make(mid)
    opt2.load_state_dict(sd)
    _run(opt2, ps2, grad, curv, 15, needs_curv, flat)
    for a, b in zip(ps, ps2):
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("flat", [False, True], ids=["tree", "flat"])
@pytest.mark.parametrize("transform", [Momentum(lr=0.05, momentum=0.9), AdamW(lr=0.01, weight_decay=0.5)],
                         ids=lambda t: type(t).__name__)
def test_frozen_and_gradless_parameters_are_not_moved(transform, flat, rng):
    """Parameters with requires_grad=False or grad None used to be moved (zero gradient, but
    weight decay and momentum still act); torch skips them, and so does the wrapper."""
    a = torch.nn.Parameter(torch.as_tensor(rng.standard_normal(4)))
    frozen = torch.nn.Parameter(torch.as_tensor(rng.standard_normal(3)), requires_grad=False)
    unused = torch.nn.Parameter(torch.as_tensor(rng.standard_normal(2)))
    b = torch.nn.Parameter(torch.as_tensor(rng.standard_normal(3)))
    keep = [frozen.detach().clone(), unused.detach().clone()]
    opt = CurvlabOptimizer([frozen, a, unused, b], copy.deepcopy(transform), flat=flat)
    # reference: the core transform on the live parameters only
    core = copy.deepcopy(transform)
    ref = [a.detach().numpy().copy(), b.detach().numpy().copy()]
    ref = np.concatenate(ref) if flat else ref
    state = core.init(ref)
    for _ in range(10):
        opt.zero_grad()
        loss = (a ** 4).sum() + (b ** 2).sum()
        loss.backward()
        assert frozen.grad is None and unused.grad is None
        g = [4 * ref[:4] ** 3, 2 * ref[4:]] if flat else [4 * ref[0] ** 3, 2 * ref[1]]
        ref, state = core.step(ref, np.concatenate(g) if flat else g, state)
        opt.step()
    assert torch.equal(frozen.detach(), keep[0]) and torch.equal(unused.detach(), keep[1])
    mine = np.concatenate([a.detach().numpy(), b.detach().numpy()])
    want = ref if flat else np.concatenate(ref)
    assert rel_err(mine, want) < 1e-13
    # a parameter of the state whose gradient goes missing stays where it is ...
    b_before = b.detach().clone()
    opt.zero_grad()
    (a ** 4).sum().backward()
    a_before = a.detach().clone()
    opt.step()
    assert torch.equal(b.detach(), b_before) and not torch.equal(a.detach(), a_before)
    # ... and one outside the state that gets a gradient is refused, naming the group
    opt.zero_grad()
    (unused ** 2).sum().backward()
    with pytest.raises(ValueError, match="param group 0: parameters \\[2\\] have a gradient"):
        opt.step()


def test_step_lr_scheduler_changes_the_effective_lr(rng):
    """issue 13 §4: StepLR used to raise KeyError('lr'); the group's lr is now read each step.
    The trajectory equals torch.optim.SGD under the same schedule."""
    th0 = rng.standard_normal(5)
    A = rng.standard_normal((5, 5))
    A = A @ A.T / 5 + np.eye(5)
    mine = torch.nn.Parameter(torch.as_tensor(th0.copy()))
    theirs = torch.nn.Parameter(torch.as_tensor(th0.copy()))
    sgd = SGD(lr=0.1)
    opt = CurvlabOptimizer([mine], sgd)
    ref = torch.optim.SGD([theirs], lr=0.1)
    sch = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    sch_ref = torch.optim.lr_scheduler.StepLR(ref, step_size=3, gamma=0.5)
    At = torch.as_tensor(A)
    lrs = []
    for t in range(10):
        for o, p in ((opt, mine), (ref, theirs)):
            o.zero_grad()
            (0.5 * p @ At @ p).backward()
        before = mine.detach().clone()
        g = mine.grad.clone()
        opt.step()
        ref.step()
        lrs.append(opt.param_groups[0]["lr"])
        step = (before - mine.detach()) / g
        np.testing.assert_allclose(step.numpy(), 0.1 * 0.5 ** (t // 3), rtol=1e-12)
        sch.step()
        sch_ref.step()
    assert lrs == [0.1 * 0.5 ** (t // 3) for t in range(10)]
    assert sgd.lr == 0.1  # the transform's own value is restored after each update
    assert rel_err(mine.detach().numpy(), theirs.detach().numpy()) < 1e-14
    # the scheduled lr travels with state_dict, through the default torch.load
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sch": sch.state_dict()}, buf)
    buf.seek(0)
    sd = torch.load(buf)
    opt2 = CurvlabOptimizer([torch.nn.Parameter(mine.detach().clone())], SGD(lr=0.1))
    opt2.load_state_dict(sd["opt"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.1 * 0.5 ** 3


def test_hyperparameters_in_param_groups_are_validated(rng):
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = CurvlabOptimizer([{"params": [w], "lr": 0.3}], Momentum(lr=0.1, momentum=0.5))
    assert opt.param_groups[0]["lr"] == 0.3 and opt.param_groups[0]["momentum"] == 0.5
    # issue 13 §4: ArTuRO's learning-rate-like knob is its KL bound ε (the reference code's lr)
    assert CurvlabOptimizer([torch.nn.Parameter(torch.ones(2, dtype=torch.float64))],
                            ArTuRO(kl_bound=0.03)).param_groups[0]["lr"] == 0.03
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\] must be finite and >= 0, got -1"):
        CurvlabOptimizer([{"params": [w], "lr": -1}], SGD(lr=0.1))
    w.grad = torch.ones(2, dtype=torch.float64)
    opt.param_groups[0]["momentum"] = 1.5
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['momentum'\] must be in \[0, 1\)"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("make,group,ref", [
    (lambda: Momentum(lr=0.1, momentum=0.5), {"lr": 0.02, "momentum": 0.9}, lambda: Momentum(lr=0.02, momentum=0.9)),
    (lambda: AdamW(lr=0.1, weight_decay=0.5), {"lr": 0.01, "weight_decay": 0.1},
     lambda: AdamW(lr=0.01, weight_decay=0.1)),
    (lambda: Adam(lr=0.1), {"lr": 0.03}, lambda: Adam(lr=0.03)),
], ids=["Momentum", "AdamW", "Adam"])
def test_group_hyperparameters_are_the_ones_used(make, group, ref, rng):
    """The values in param_groups (not the transform's construction values) drive the update,
    bit for bit as a transform built with them."""
    P, grad, _ = _problem(rng)
    th0 = rng.standard_normal(P) * 0.5
    params = [torch.nn.Parameter(torch.as_tensor(p.copy())) for p in _split(th0)]
    opt = CurvlabOptimizer(params, make())
    opt.param_groups[0].update(group)
    core = ref()
    th = _split(th0.copy())
    state = core.init(th)
    for _ in range(20):
        cur = np.concatenate([p.detach().numpy().ravel() for p in params])
        gs = _split(grad(cur))
        for p, g in zip(params, gs):
            p.grad = torch.as_tensor(g.copy())
        opt.step()
        th, state = core.step(th, _split(grad(np.concatenate([t.ravel() for t in th]))), state)
    for p, t in zip(params, th):
        np.testing.assert_array_equal(p.detach().numpy(), t)


# --------------------------------------------------------------------------- issue 13 §4: every method's knobs
def _run_core_and_wrapper(make_core, make_wrapped, group, rng, steps=15, curvature=False):
    """(wrapper params, core params) after ``steps`` on the test problem; the wrapper's group
    entries are overwritten with ``group`` before the first step."""
    P, grad, curv = _problem(rng)
    th0 = rng.standard_normal(P) * 0.5
    params = [torch.nn.Parameter(torch.as_tensor(p.copy())) for p in _split(th0)]
    opt = CurvlabOptimizer(params, make_wrapped())
    opt.param_groups[0].update(group)
    core = make_core()
    th = _split(th0.copy())
    state = core.init(th)
    for _ in range(steps):
        cur = np.concatenate([p.detach().numpy().ravel() for p in params])
        for p, g in zip(params, _split(grad(cur))):
            p.grad = torch.as_tensor(g.copy())
        cf = (lambda d, t=cur: curv(t, np.concatenate([x.ravel() for x in d]))) if curvature else None
        opt.step(**({"curvature": cf} if curvature else {}))
        flat = np.concatenate([t.ravel() for t in th])
        cc = {"curvature": (lambda d, t=flat: curv(t, np.concatenate([x.ravel() for x in d])))} if curvature else {}
        th, state = core.step(th, _split(grad(flat)), state, **cc)
    return np.concatenate([p.detach().numpy().ravel() for p in params]), np.concatenate([t.ravel() for t in th])


@pytest.mark.parametrize("make,group,ref,curvature", [
    (lambda: ArTuRO(), {"lr": 0.02, "reg_weight": 0.1, "measurement_noise": 1.5},
     lambda: ArTuRO(kl_bound=0.02, reg_weight=0.1, measurement_noise=1.5), False),
    (lambda: Adam(lr=0.1), {"lr": 0.03, "betas": (0.7, 0.95), "eps": 1e-4},
     lambda: Adam(lr=0.03, b1=0.7, b2=0.95, eps=1e-4), False),
    (lambda: CurvatureLR(base=SGD(lr=1.0), schedule=0.8, max_step=2.0), {"lr": 0.5, "max_step": 0.3},
     lambda: CurvatureLR(base=SGD(lr=1.0), schedule=0.4, max_step=0.3), True),
], ids=["ArTuRO", "Adam-betas-eps", "CurvatureLR"])
def test_method_options_in_param_groups_drive_the_update(make, group, ref, curvature, rng):
    """ArTuRO and CurvatureLR had no group entries (StepLR: KeyError('lr')), Adam's betas and eps
    none either. Now the group's values drive the update, bit for bit as a transform built
    with them: ArTuRO's lr is its KL bound ε, CurvatureLR's lr multiplies λ."""
    mine, want = _run_core_and_wrapper(ref, make, group, rng, curvature=curvature)
    assert np.all(np.isfinite(want))
    np.testing.assert_array_equal(mine, want)


def test_step_lr_on_arturo_and_curvature_lr(rng):
    """StepLR decays ArTuRO's ε and CurvatureLR's λ multiplier; the transforms' own values are restored."""
    for tr, attr, v0 in ((ArTuRO(kl_bound=0.04), "kl_bound", 0.04), (CurvatureLR(schedule=0.7), "schedule", None)):
        w = torch.nn.Parameter(torch.as_tensor(rng.standard_normal(4)))
        sched0 = getattr(tr, attr)
        opt = CurvlabOptimizer([w], tr)
        sch = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
        seen = []
        for _ in range(5):
            w.grad = w.detach().clone()
            opt.step(curvature=lambda d: float(sum(np.sum(x * x) for x in d))) if attr == "schedule" else opt.step()
            seen.append(opt.param_groups[0]["lr"])
            sch.step()
        base = 0.04 if attr == "kl_bound" else 1.0
        np.testing.assert_allclose(seen, [base, base, base * 0.1, base * 0.1, base * 0.01], rtol=1e-12)
        assert getattr(tr, attr) is sched0 or getattr(tr, attr) == v0


def test_several_param_groups_with_their_own_options_and_instances(rng):
    """Two ArTuRO groups with different ε and β: each group has its own transform instance and
    state and follows the core transform built with its options; a bad value names the group."""
    a0, b0 = rng.standard_normal(5), rng.standard_normal(3)
    a, b = (torch.nn.Parameter(torch.as_tensor(x.copy())) for x in (a0, b0))
    opt = CurvlabOptimizer([{"params": [a]}, {"params": [b], "lr": 0.01, "reg_weight": 0.2}], ArTuRO(kl_bound=0.05))
    g0, g1 = opt.param_groups
    assert g0["transform"] is not g1["transform"] and g0["lr"] == 0.05 and g1["lr"] == 0.01
    cores = [ArTuRO(kl_bound=0.05), ArTuRO(kl_bound=0.01, reg_weight=0.2)]
    ths = [[a0.copy()], [b0.copy()]]
    states = [c.init(t) for c, t in zip(cores, ths)]
    for _ in range(10):
        a.grad = 3 * a.detach() ** 3 + 1
        b.grad = 2 * b.detach() - 0.5
        opt.step()
        grads = [[3 * ths[0][0] ** 3 + 1], [2 * ths[1][0] - 0.5]]
        for i in range(2):
            ths[i], states[i] = cores[i].step(ths[i], grads[i], states[i])
    np.testing.assert_array_equal(a.detach().numpy(), ths[0][0])
    np.testing.assert_array_equal(b.detach().numpy(), ths[1][0])
    g1["lr"] = 0.0
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\] must be finite and > 0, got 0.0"):
        opt.step()
    g1["lr"], g1["reg_weight"] = 0.01, True
    with pytest.raises(TypeError, match=r"param_groups\[1\]\['reg_weight'\] must be a real number, got bool"):
        opt.step()
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['betas\[0\]'\] must be in \[0, 1\), got 1.0"):
        CurvlabOptimizer([{"params": [a], "betas": (1.0, 0.9)}], Adam())
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['betas'\] must be a pair \(b1, b2\), got 0.9"):
        CurvlabOptimizer([{"params": [a], "betas": 0.9}], Adam())
    # a group with another method holds that method's entries only (torch fills groups from defaults)
    mixed = CurvlabOptimizer([{"params": [a]}, {"params": [b], "transform": Adam(lr=0.1)}], ArTuRO())
    m0, m1 = mixed.param_groups
    assert "reg_weight" in m0 and "betas" not in m0 and m0["lr"] == ArTuRO().kl_bound
    assert m1["betas"] == (0.9, 0.999) and "reg_weight" not in m1 and m1["lr"] == 0.1


@pytest.mark.parametrize("flat", [False, True], ids=["tree", "flat"])
@pytest.mark.parametrize("mode", ["forward", "adjoint"])
def test_curvature_lr_source_driven_matches_reference_mlp(mode, flat, rng, monkeypatch):
    """CurvlabOptimizer(params, CurvatureLR(...), source=src) with step(batch=) rebinds the torch
    source (no rebuild: TorchCurvature.__init__ is not called again) and follows the core
    transform driven by the reference MLP on the same alternating batches, in both dᵀHd modes."""
    from curvlab.models.mlp import MLP

    model = MLP([6, 8, 3])
    params = model.init_params(rng)
    batches = [(rng.standard_normal((16, 6)), rng.integers(0, 3, 16)) for _ in range(2)]
    net, perm = from_reference_mlp(model, params)
    tb = [(torch.as_tensor(X), torch.as_tensor(y)) for X, y in batches]
    src = TorchCurvature(net, "cross_entropy", tb[0])
    make = lambda: cl.CurvatureLR(base=SGD(lr=1.0), schedule=0.8, mode=mode)  # noqa: E731
    core, th = make(), params.copy()
    state = core.init(th)
    opt = CurvlabOptimizer(net.parameters(), make(), flat=flat, source=src)
    builds = []
    orig = TorchCurvature.__init__
    monkeypatch.setattr(TorchCurvature, "__init__", lambda self, *a, **k: (builds.append(1), orig(self, *a, **k))[1])
    for k in range(20):
        (X, y), (Xt, yt) = batches[k % 2], tb[k % 2]
        th, state = core.step(th, model.grad(th, X, y), state, model=model, X=X, y=y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step(batch=(Xt, yt))
    assert builds == []
    mine = np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])
    assert rel_err(mine, th[perm]) < 1e-9
    assert model.loss(th, *batches[0]) < model.loss(params, *batches[0])
    with pytest.raises(ValueError, match="data= rebinds a curvature source"):
        w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        w.grad = torch.ones(3, dtype=torch.float64)
        CurvlabOptimizer([w], make()).step(batch=tb[0])
    with pytest.raises(TypeError, match="source must be a curvlab CurvatureSource"):
        CurvlabOptimizer(net.parameters(), make(), source=object())


@pytest.mark.parametrize("method", ["ExactNewton", "DSGD-estimate"])
def test_layerwise_methods_source_driven_through_the_wrapper(method, rng, monkeypatch):
    """ExactNewton and DSGD's estimate rule with the curvature from a source given to the
    wrapper (source=, step(batch=)): the wrapper rebinds it each step (no rebuild) and follows
    the core transform given source= and data= per step, bit for bit."""
    from curvlab.methods.dsgd import DSGD
    from curvlab.methods.exact_newton import ExactNewton
    from curvlab.models.mlp import MLP
    from curvlab.models.source import MLPCurvature

    from ._models import FoldedMLP

    make = (lambda: ExactNewton(lr=0.5)) if method == "ExactNewton" else (lambda: DSGD(rule="estimate"))
    model = MLP([5, 6, 3])
    params = model.init_params(rng)
    batches = [(rng.standard_normal((12, 5)), rng.integers(0, 3, 12)) for _ in range(2)]
    src = MLPCurvature(model, params, batches[0])
    core = make()
    W = [w.copy() for w in model.layout.unpack(params)]
    state = core.init(W)
    net = FoldedMLP(W)
    opt = CurvlabOptimizer(net.parameters(), make(), source=src)
    assert opt.param_groups[0]["lr"] == (0.5 if method == "ExactNewton" else 1.0)
    if method == "DSGD-estimate":   # the guaranteed-decrease range of DSGD's step s(2 − s) > 0
        w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\] must be in \(0, 2\), got 2.5"):
            CurvlabOptimizer([{"params": [w], "lr": 2.5}], DSGD(rule="estimate"))
    builds = []
    orig = MLPCurvature.__init__
    monkeypatch.setattr(MLPCurvature, "__init__", lambda self, *a, **k: (builds.append(1), orig(self, *a, **k))[1])
    for k in range(12):
        X, y = batches[k % 2]
        g = model.layout.unpack(model.grad(model.layout.pack(W), X, y))
        W, state = core.step(W, g, state, source=src, data=(X, y))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.as_tensor(X)), torch.as_tensor(y)).backward()
        opt.step(batch=(X, y))
    assert builds == []
    mine = np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])
    ref = model.layout.pack(W)
    assert rel_err(mine, ref) < 1e-12
    assert model.loss(ref, *batches[0]) < model.loss(params, *batches[0])
