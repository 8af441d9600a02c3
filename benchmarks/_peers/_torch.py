"""Torch group: curvlab's ``TorchCurvature`` against curvlinops, ``torch.func`` (eager and
``torch.compile``) and double backward on the same models, ratios to ``torch.autograd.grad``.

Models (as ``benchmarks/benchmarks/bench_adapters.py``): MLP 784-512-512-10 tanh, batch 512,
and CNN conv16-BN(eval)-tanh-pool-conv32-tanh-pool-linear, batch 128, both float32,
cross-entropy (mean). Every product takes the same direction ``v`` (a NumPy vector for
curvlab, the same numbers as torch tensors for the peers).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import Row, agreement_row, best_cpu, cell, has_kwarg, le, short_error, verdict

MLP_SIZES = (784, 512, 512, 10)


def mlp_problem(batch: int = 512, seed: int = 0) -> tuple[Any, Any, Any]:
    """784-512-512-10 tanh MLP, float32, inputs and labels."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    layers: list[Any] = []
    for i in range(len(MLP_SIZES) - 1):
        layers.append(nn.Linear(MLP_SIZES[i], MLP_SIZES[i + 1]))
        if i < len(MLP_SIZES) - 2:
            layers.append(nn.Tanh())
    X = torch.randn(batch, MLP_SIZES[0], generator=g)
    y = torch.randint(0, MLP_SIZES[-1], (batch,), generator=g)
    return nn.Sequential(*layers), X, y


def cnn_problem(batch: int = 128, seed: int = 0) -> tuple[Any, Any, Any]:
    """conv16-BN(eval)-conv32-linear CNN on 28x28 inputs, float32."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    ).eval()
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return net, X, y


def build_calls(net: Any, X: Any, y: Any, compile: str = "all") -> tuple[dict[str, Callable[[], Any]], dict[str, str], Any]:
    """The timed callables (key -> zero-argument callable), for a peer that could not be
    built a note (key -> reason), and the direction ``v`` (NumPy, the layout's order) every
    product takes. ``compile``: "all" (HVP and GGN), "hvp" or "none"."""
    import torch
    from torch import nn

    from curvlab.adapters.torch import TorchCurvature

    calls: dict[str, Callable[[], Any]] = {}
    notes: dict[str, str] = {}
    lossf = nn.CrossEntropyLoss()
    params = [p for p in net.parameters() if p.requires_grad]
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    p0 = tuple(p.detach() for p in params)

    calls["grad"] = lambda: torch.autograd.grad(lossf(net(X), y), params)

    # ---- curvlab
    cacheable = has_kwarg(TorchCurvature, "cache_bytes")
    oneshot: dict[str, Any] = {"cache_bytes": 0} if cacheable else {}
    one = TorchCurvature(net, "cross_entropy", (X, y), **oneshot)
    v = np.random.default_rng(0).standard_normal(one.layout.size).astype(one.dtype)
    H1, G1 = one.hessian(), one.ggn()
    Hfr, Hrr = one.hessian("forward_over_reverse"), one.hessian("reverse_over_reverse")
    calls["hvp_oneshot"] = lambda: H1 @ v
    calls["hvp_oneshot_fwdrev"] = lambda: Hfr @ v
    calls["hvp_oneshot_revrev"] = lambda: Hrr @ v
    calls["ggn_oneshot"] = lambda: G1 @ v
    if cacheable:
        cached = TorchCurvature(net, "cross_entropy", (X, y))
        Hc, Gc = cached.hessian(), cached.ggn()
        calls["hvp_cached"] = lambda: Hc @ v
        calls["ggn_cached"] = lambda: Gc @ v
    else:
        notes["hvp_cached"] = notes["ggn_cached"] = "n/a (no cache_bytes on this commit)"
    calls["dhd"] = lambda: one.directional_curvature(v)
    calls["grad_dhd"] = lambda: one.grad_and_curvature(v)

    # ---- peers: the same direction as torch tensors
    sizes = [p.numel() for p in p0]
    vt = torch.as_tensor(v)
    vp = tuple(c.reshape(p.shape) for c, p in zip(torch.split(vt, sizes), p0))

    try:
        from curvlinops import GGNLinearOperator, HessianLinearOperator

        Hcl = HessianLinearOperator(net, lossf, params, [(X, y)], check_deterministic=False)
        Gcl = GGNLinearOperator(net, lossf, params, [(X, y)], check_deterministic=False)
        calls["curvlinops_hvp"] = lambda: Hcl @ vt
        calls["curvlinops_ggn"] = lambda: Gcl @ vt
    except Exception as exc:  # not installed, or an API it does not have
        notes["curvlinops_hvp"] = notes["curvlinops_ggn"] = (
            "not installed" if isinstance(exc, ImportError) else short_error(exc))

    def out_of(ps: Any) -> Any:
        return torch.func.functional_call(net, dict(zip(names, ps)), (X,))

    def loss_of(ps: Any) -> Any:
        return lossf(out_of(ps), y)

    def func_hvp(ps: Any, vs: Any) -> Any:
        return torch.func.jvp(torch.func.grad(loss_of), (ps,), (vs,))[1]

    def func_ggn(ps: Any, vs: Any) -> Any:
        z, Jv = torch.func.jvp(out_of, (ps,), (vs,))[:2]  # (primal out, tangent out)
        pz = torch.softmax(z, dim=1)  # mean cross-entropy: H_z = (diag(p) - p pᵀ) / B
        HJv = (pz * Jv - pz * (pz * Jv).sum(1, keepdim=True)) / z.shape[0]
        return torch.func.vjp(out_of, ps)[1](HJv)[0]

    one_t = torch.ones((), dtype=p0[0].dtype)
    zero_t = torch.zeros((), dtype=p0[0].dtype)

    def func_dhd() -> Any:  # forward-over-forward dᵀHd, second derivative of t -> L(θ + t d)
        def first(t: Any) -> Any:
            return torch.func.jvp(lambda s: loss_of(tuple(p + s * w for p, w in zip(p0, vp))), (t,), (one_t,))[1]

        return torch.func.jvp(first, (zero_t,), (one_t,))[1]

    calls["func_hvp"] = lambda: func_hvp(p0, vp)
    calls["func_ggn"] = lambda: func_ggn(p0, vp)
    calls["func_dhd"] = func_dhd
    for key, fn, wanted in (("compiled_hvp", func_hvp, compile in ("all", "hvp")),
                            ("compiled_ggn", func_ggn, compile == "all")):
        if not wanted:
            notes[key] = "not run (--compile)"
            continue
        try:
            # static shapes: the MLP and the CNN share this code object, and a recompile with
            # automatic dynamic shapes fails on the CNN's forward-mode convolution
            cf = torch.compile(fn, dynamic=False)
            cf(p0, vp)  # compile now (failures show here, not inside the timing loop)
            calls[key] = (lambda f: lambda: f(p0, vp))(cf)
        except Exception as exc:
            # the innermost "...Error: message" line of a Dynamo/Inductor error says why
            why = [ln.strip() for ln in str(exc).splitlines() if "Error:" in ln]
            notes[key] = "cannot compile: " + (why[-1][:120] if why else short_error(exc))

    g_graph = torch.autograd.grad(lossf(net(X), y), params, create_graph=True)
    calls["dblbwd_cached_hvp"] = lambda: torch.autograd.grad(g_graph, params, grad_outputs=vp, retain_graph=True)

    def dblbwd_grad_dhd() -> Any:  # loss, gradient and dᵀHd by one double backward
        loss = lossf(net(X), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        gd = torch.stack([(gi * wi).sum() for gi, wi in zip(g, vp)]).sum()
        hd = torch.autograd.grad(gd, params)
        return loss.item(), [gi.detach() for gi in g], float(sum((hi * wi).sum() for hi, wi in zip(hd, vp)))

    calls["dblbwd_grad_dhd"] = dblbwd_grad_dhd
    return calls, notes, v


def measure(repeat: int = 3, compile: str = "all", models: tuple[str, ...] = ("mlp", "cnn")) -> tuple[list[Row], dict[str, float]]:
    """Rows and headline ratios of the torch group (see the module docstring)."""
    from . import one_thread

    one_thread()
    rows: list[Row] = []
    ratios: dict[str, float] = {}
    for model in models:
        net, X, y = (mlp_problem if model == "mlp" else cnn_problem)()
        calls, notes, v = build_calls(net, X, y, compile)
        out = {k: f() for k, f in calls.items()}  # one call each: the same numbers?
        hd = out["dblbwd_cached_hvp"]
        check = agreement_row(
            f"torch {'MLP' if model == 'mlp' else 'CNN'}: curvlab and the peers compute the same products",
            {"HVP": ({k: out[k] for k in out if "hvp" in k}, "dblbwd_cached_hvp"),
             "GGN-vp": ({k: out[k] for k in out if "ggn" in k}, "func_ggn"),
             "dᵀHd": ({"vᵀ(Hv)": float(np.dot(v, np.concatenate([h.detach().numpy().ravel() for h in hd]))),
                      "dhd": out["dhd"], "func_dhd": out["func_dhd"], "grad_dhd": out["grad_dhd"][2],
                      "dblbwd_grad_dhd": out["dblbwd_grad_dhd"][2]}, "vᵀ(Hv)")})
        del out
        t = best_cpu(calls, repeat)
        g = t["grad"]
        label = "MLP" if model == "mlp" else "CNN"

        def T(k: str) -> float | None:
            return t.get(k)

        def c(k: str) -> str:
            return cell(T(k), g) if k in t else notes.get(k, "—")

        def r(k: str) -> float | None:
            x = T(k)
            return None if x is None else x / g

        for k in t:
            ratios[f"{model}.{k}"] = t[k] / g
        if "curvlinops_hvp" in t and "hvp_cached" in t:
            ratios[f"{model}.hvp_cached_over_curvlinops"] = t["hvp_cached"] / t["curvlinops_hvp"]
        if "curvlinops_ggn" in t and "ggn_cached" in t:
            ratios[f"{model}.ggn_cached_over_curvlinops"] = t["ggn_cached"] / t["curvlinops_ggn"]

        rows.append(Row(f"torch {label} gradient (`torch.autograd.grad`), the unit", f"1.00× ({g * 1e3:.1f} ms)"))
        peers_h = (f"curvlinops {c('curvlinops_hvp')}; torch.func eager {c('func_hvp')}; compiled {c('compiled_hvp')}; "
                   f"double backward, cached graph {c('dblbwd_cached_hvp')}")
        hc = T("hvp_cached")
        rows.append(Row(
            f"torch {label} HVP, cached (default)", c("hvp_cached"), peers_h,
            "≤ 1.5×; ≥ 2× faster than curvlinops; ≤ compiled torch.func",
            verdict([("≤ 1.5×", le(r("hvp_cached"), 1.5)),
                     ("2× curvlinops", le(hc, T("curvlinops_hvp"), 0.5)),
                     ("≤ compiled", le(hc, T("compiled_hvp")))])))
        fr, rr = T("hvp_oneshot_fwdrev"), T("hvp_oneshot_revrev")
        fastest = min(fr, rr) if fr is not None and rr is not None else None
        rows.append(Row(
            f"torch {label} HVP, one-shot (`cache_bytes=0`, default mode)", c("hvp_oneshot"),
            f"curvlab modes: forward-over-reverse {c('hvp_oneshot_fwdrev')}, reverse-over-reverse {c('hvp_oneshot_revrev')}",
            "the faster mode (≤ 1.1 × the faster one)",
            verdict([("picks the faster mode", le(T("hvp_oneshot"), fastest, 1.1))])))
        gc_ = T("ggn_cached")
        rows.append(Row(
            f"torch {label} GGN-vp, cached (default)", c("ggn_cached"),
            f"curvlinops {c('curvlinops_ggn')}; torch.func eager {c('func_ggn')}; compiled {c('compiled_ggn')}",
            "≤ 1.4×; ≥ 2× faster than curvlinops; ≤ compiled torch.func",
            verdict([("≤ 1.4×", le(r("ggn_cached"), 1.4)),
                     ("2× curvlinops", le(gc_, T("curvlinops_ggn"), 0.5)),
                     ("≤ compiled", le(gc_, T("compiled_ggn")))])))
        rows.append(Row(f"torch {label} GGN-vp, one-shot (`cache_bytes=0`)", c("ggn_oneshot"),
                        f"curvlinops {c('curvlinops_ggn')}; torch.func eager {c('func_ggn')}"))
        rows.append(Row(f"torch {label} dᵀHd, forward mode (`directional_curvature`)", c("dhd"),
                        f"torch.func jvp(jvp) eager {c('func_dhd')}", "≤ 2.0× (memory ≤ 1.1×: asv bench_adapters)",
                        verdict([("≤ 2.0×", le(r("dhd"), 2.0))])))
        rows.append(Row(f"torch {label} grad + dᵀHd (`grad_and_curvature`)", c("grad_dhd"),
                        f"double backward {c('dblbwd_grad_dhd')}", "≤ 1.6× (memory ≤ 2.0×: asv bench_adapters)",
                        verdict([("≤ 1.6×", le(r("grad_dhd"), 1.6))])))
        rows.append(check)
        del calls
    return rows, ratios
