"""E1.2: the KL trust-region solve of arTuRO during training: the multiplier η, the root-finder
iterations and the achieved KL/ε, reference mode (bisection of the official code) vs exact mode."""

from __future__ import annotations

import functools

import numpy as np

from ._common import (Check, FigureResult, FigureSpec, Verdict, accuracy, combine, dataset, finish_figure, fmt, make_mlp,
                      need, new_figure, pm, vote)

SPEC = FigureSpec(
    name="001_trust_region",
    paper="001",
    claims=("C1", "C2"),
    title="multiplier η, root-finder iterations and achieved KL, reference vs exact mode",
    substitution="scikit-learn digits (X/16, stratified 80/20 split), ReLU MLP 64-128-10 (9,610 parameters), batch 32, "
                 "presets cifar10_cnn (constraint active) and fmnist_cnn of the official configs, ε x0.006 at half time",
    columns=("preset", "mode", "step", "eta", "iterations", "kl_ratio", "epoch"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.arturo:ArTuRO"),
)

BATCH = 32


@functools.lru_cache(maxsize=None)
def tr_run(preset: str, mode: str, epochs: int, seed: int = 0):
    ar = need("curvlab.methods.arturo")
    from curvlab.data import minibatches

    ds = dataset("digits")
    model = make_mlp((64, 128, 10), "relu")
    params = model.init_params(np.random.default_rng(seed))
    opt = ar.ArTuRO.from_preset(preset, mode=mode, weight_decay=0.0)
    st = opt.init(params)
    rng = np.random.default_rng(100 + seed)
    out = {k: [] for k in ("eta", "iterations", "kl_ratio", "epoch", "inactive")}
    for ep in range(epochs):
        eps = opt.kl_bound * (0.006 if ep >= epochs // 2 else 1.0)
        for Xb, yb in minibatches(ds.X_train, ds.y_train, BATCH, rng):
            _, g = model.loss_and_grad(params, Xb, yb)
            upd, st = opt.update(g, st, params, kl_bound=eps)
            params = params + upd
            info = opt.info(st, kl_bound=eps)
            out["eta"].append(info.eta)
            out["iterations"].append(info.iterations)
            out["kl_ratio"].append(info.kl_ratio)
            out["epoch"].append(ep)
            out["inactive"].append(info.inactive)
    return {k: np.asarray(v) for k, v in out.items()}, accuracy(model, params, ds.X_test, ds.y_test)


def judge(per_seed: dict) -> list[Verdict]:
    """C1, C2 from ``per_seed[mode] = list over (preset, seed) of (kl_ratio array, inactive array)``."""
    def over(mode, tol):  # fraction of steps with KL/ε <= 1 + tol, per run
        return np.array([np.mean(kr[np.isfinite(kr)] <= 1 + tol) for kr, _ in per_seed[mode]])

    def solved(mode, tol):  # fraction of active steps with |KL/ε - 1| <= tol, per run
        out = []
        for kr, ina in per_seed[mode]:
            act = ~ina.astype(bool) & np.isfinite(kr)
            out.append(np.mean(np.abs(kr[act] - 1) <= tol) if act.any() else 1.0)
        return np.array(out)

    b_ex, b_ref = over("exact", 1e-6), over("reference", 1e-2)
    c1 = Verdict("C1", combine(vote(b_ex >= 0.999), vote(b_ref >= 0.95)),
                 "steps are bounded if KL/ε <= 1 (+1e-6 exact mode, +1e-2 reference mode) on >= 99.9% (exact) / 95% "
                 "(reference, the official bisection) of the steps of a run; supported if both modes bound their steps "
                 "in >= 2/3 of the runs, mixed if one mode does, not supported if neither",
                 f"share of steps within the bound per run: exact {pm(b_ex)}, reference {pm(b_ref)}")
    s_ex, s_ref = solved("exact", 1e-6), solved("reference", 0.1)
    c2 = Verdict("C2", combine(vote(s_ex >= 0.999), vote(s_ref >= 0.9)),
                 "the solve part of the claim (stability and speed are judged in 001_benchmark): on steps where the "
                 "constraint is active the solved step meets KL = ε (|KL/ε - 1| <= 1e-6 exact mode, <= 0.1 reference "
                 "mode) on >= 99.9% / 90% of them; supported if both modes do in >= 2/3 of the runs, mixed if one, "
                 "not supported if neither",
                 f"share of active steps solved per run: exact {pm(s_ex)}, reference {pm(s_ref)}")
    return [c1, c2]


def run(ctx) -> FigureResult:
    E = ctx.pick(tiny=2, quick=10, full=30)
    cfgs = [(p, m) for p in ("cifar10_cnn", "fmnist_cnn") for m in ("reference", "exact")]
    res = {c: tr_run(c[0], c[1], E) for c in ctx.progress(cfgs, desc="001 trust-region runs")}
    fig, axes = new_figure(3)
    rows = []
    for i, ((preset, mode), (d, acc)) in enumerate(res.items()):
        t = np.arange(len(d["eta"]))
        ls = "-" if mode == "reference" else "--"
        label = f"{preset}, {mode} (test acc {acc:.3f})"
        axes[0].plot(t, np.maximum(d["eta"], 1e-3), ls=ls, color=f"C{i}", lw=1, label=label)
        axes[1].plot(t, d["iterations"], ls=ls, color=f"C{i}", lw=0.8, alpha=0.8, label=f"{preset}, {mode}")
        kr = d["kl_ratio"][np.isfinite(d["kl_ratio"]) & (d["kl_ratio"] > 0)]
        axes[2].hist(np.log10(kr), bins=40, histtype="step", color=f"C{i}", ls=ls, label=f"{preset}, {mode}")
        for k in t:
            if np.isfinite(d["kl_ratio"][k]):
                rows.append([preset, mode, int(k), float(d["eta"][k]), int(d["iterations"][k]),
                             float(d["kl_ratio"][k]), int(d["epoch"][k])])
    axes[0].axhspan(0.1875, 0.375, color="grey", alpha=0.2, label="reference floor band (0.1875, 0.375]")
    half = len(res[cfgs[0]][0]["eta"]) // 2
    for ax in axes[:2]:
        ax.axvline(half, color="k", ls=":", lw=1)
        ax.set_xlabel("step (dotted: ε x0.006)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("Lagrange multiplier η (clipped at 1e-3)")
    axes[0].legend(fontsize=6)
    axes[1].set_ylabel("root-finder iterations per step")
    axes[1].legend(fontsize=6)
    axes[2].set_xlabel("log10(KL / ε) per step")
    axes[2].set_ylabel("number of steps")
    axes[2].legend(fontsize=6)
    finish_figure(fig, "arTuRO trust-region solve over training (digits, MLP 64-128-10)")
    d_ex = res[("cifar10_cnn", "exact")][0]
    act = ~d_ex["inactive"].astype(bool)
    dev = float(np.max(np.abs(d_ex["kl_ratio"][act] - 1))) if act.any() else 0.0
    checks = [Check("exact mode meets KL = ε when active", dev <= 1e-6, f"max |KL/ε - 1| = {dev:.1e}")]
    d_ref = res[("cifar10_cnn", "reference")][0]
    eta_f = float(res[("fmnist_cnn", "reference")][0]["eta"][-1])
    kl_ref = d_ref["kl_ratio"][np.isfinite(d_ref["kl_ratio"])]
    outcome = (f"Exact mode meets KL/ε = 1 to {dev:.0e} on active steps with {np.mean(d_ex['iterations']):.1f} "
               f"iterations on average, reference bisection takes {np.mean(d_ref['iterations']):.1f} and its KL/ε "
               f"ranges {fmt(np.percentile(kl_ref, 5), 2)}-{fmt(np.percentile(kl_ref, 95), 2)} (5-95%); "
               f"with fmnist_cnn the reference η ends at {fmt(eta_f)} "
               f"({'in' if 0.1875 < eta_f <= 0.375 else 'outside'} the floor band of an inactive constraint); "
               "test accuracies "
               + ", ".join(f"{p} {m} {a:.3f}" for (p, m), (_, a) in res.items()))
    per_seed = {m: [] for m in ("reference", "exact")}
    for p in ("cifar10_cnn", "fmnist_cnn"):
        for m in per_seed:
            for seed in ctx.seeds:
                d = tr_run(p, m, E, seed)[0]
                per_seed[m].append((d["kl_ratio"], d["inactive"]))
    return FigureResult(fig, rows, outcome, checks, {"epochs": E, "batch": BATCH, "decay": 0.006},
                        f"{E} epochs (full mode 30; the specification's protocol); plots seed 0, verdicts over seeds "
                        f"{ctx.seeds} x 2 presets", verdicts=judge(per_seed))
