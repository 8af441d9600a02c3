"""E0.4: flatness at the end of training: the top Hessian eigenvalue (Lanczos) and trace
(Hutchinson) of the full training loss per method, against test accuracy."""

from __future__ import annotations

import numpy as np

from ._common import Check, FigureResult, FigureSpec, Verdict, combine, dataset, finish_figure, fmt, need, new_figure, pm, vote
from .fig_000_training import en_run, method_keys, plan, tuned

SPEC = FigureSpec(
    name="000_flatness",
    paper="000",
    claims=("C5",),
    title="top Hessian eigenvalue at the end of training per method",
    substitution="scikit-learn digits, tanh MLP 64-32-10; sharpness = top eigenvalue of the Hessian of the "
                 "training loss (thick-restart Lanczos), trace by Hutchinson with 30 Rademacher probes",
    columns=("method", "seed", "top_eig", "trace", "test_acc", "final_train_loss"),
    requires=("curvlab.models.mlp:hessian_operator", "curvlab.methods.exact_newton:ExactNewton",
              "curvlab.linalg.lanczos:eigsh"),
)


def sharpness(model, params, X, y, seed: int) -> tuple[float, float, bool]:
    lz = need("curvlab.linalg.lanczos")
    mlp = need("curvlab.models.mlp")
    op = mlp.hessian_operator(model, params, X, y)
    res = lz.eigsh(op, k=1, which="LA", rng=seed)
    Z = np.random.default_rng(seed).choice([-1.0, 1.0], size=(len(params), 30))
    tr = float(np.mean(np.sum(Z * model.hvp_matmat(params, X, y, Z), axis=0)))
    return float(np.max(res.eigenvalues)), tr, bool(np.all(res.converged))


def judge(top: dict, abs_name: str, baselines: list, lam: float, eta: float) -> list[Verdict]:
    """C5 from ``top[name] = per-seed top eigenvalues`` (aligned by seed; NaN = diverged run).

    Part A: Newton abs is flatter than the flattest tuned baseline, paired by seed, in >= 2/3 of the seeds.
    Part B: the flattest Newton variant (any adjustment) is flatter than the flattest baseline in >= 2/3.
    A -> supported; B only -> mixed (and the caption says what that variant's steps are); neither -> not supported.
    """
    def arr(k):
        return np.asarray(top[k], float)

    base = np.nanmin(np.vstack([arr(b) for b in baselines]), axis=0)
    flat_base = min(baselines, key=lambda b: np.nanmean(arr(b)))
    newton = [k for k in top if k not in baselines]
    best_nt = min(newton, key=lambda k: np.nanmean(arr(k)))
    a = vote(arr(abs_name) < base)
    b = vote(arr(best_nt) < base)
    v = "supported" if a == "supported" else ("mixed" if b == "supported" else combine(a, b))
    ev = (f"top Hessian eigenvalue Newton abs {pm(arr(abs_name))} vs {flat_base} {pm(arr(flat_base))} "
          f"(abs / {flat_base} = {fmt(np.nanmean(arr(abs_name)) / np.nanmean(arr(flat_base)), 2)}x); flattest Newton "
          f"variant {best_nt} {pm(arr(best_nt))}")
    if "cap" in best_nt and "=" in best_nt:
        km = float(best_nt.split("=")[1].split()[0])
        ev += (f"; note: a cap κ <= {km:g} with λ = {lam:g}, η = {eta:g} makes every step an SGD step with lr in "
               f"[{eta / (lam + km):.3g}, {eta / lam:.3g}], so its flatness is that of SGD, not of the Newton curvature")
    crit = ("supported if Newton abs ends with a smaller top Hessian eigenvalue than the flattest tuned first-order "
            "baseline (paired by seed) in >= 2/3 of the seeds; mixed if only some other spectral adjustment does; "
            "not supported if no Newton variant does")
    return [Verdict("C5", v, crit, ev)]


def run(ctx) -> FigureResult:
    n, E = plan(ctx)
    best = tuned(ctx)
    lam, eta = best["newton"]
    keys = {k: v for k, v in method_keys(best).items() if " abs " in k or not k.startswith("Newton")}
    for kmax in ctx.pick(tiny=(0.1,), quick=(0.1, 10.0), full=(0.1, 1.0, 10.0)):
        keys[f"Newton cap κmax={kmax:g}"] = ("newton", "cap", lam, eta, (("kappa_max", kmax),))
    for sh in ctx.pick(tiny=(), quick=(1.0,), full=(0.1, 1.0)):
        keys[f"Newton shift λ'={sh:g}"] = ("newton", "shift", lam, eta, (("shift", sh),))
    for l2 in ctx.pick(tiny=(), quick=(3.0,), full=(0.3, 1.0, 3.0)):
        if l2 != lam:
            keys[f"Newton abs λ={l2:g}"] = ("newton", "abs", l2, eta, ())
    ds = dataset("digits")
    rows, conv = [], True
    for name, key in ctx.progress(keys.items(), desc="000 flatness"):
        for s in ctx.seeds:
            h, params, model, _ = en_run(n, E, s, key)
            if h.diverged:
                continue
            top, tr, ok = sharpness(model, params, ds.X_train, ds.y_train, s)
            conv &= ok
            rows.append([name, s, top, tr, h.test_acc[-1], h.train_loss[-1]])
    fig, axes = new_figure(2)
    names = list(dict.fromkeys(r[0] for r in rows))
    for i, nm in enumerate(names):
        rs = [r for r in rows if r[0] == nm]
        axes[0].scatter([r[2] for r in rs], [r[4] for r in rs], color=f"C{i % 10}", marker="os^vD<>"[i % 7], label=nm)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("top Hessian eigenvalue of the training loss (sharpness)")
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=6)
    means = [np.mean([r[2] for r in rows if r[0] == nm]) for nm in names]
    stds = [np.std([r[2] for r in rows if r[0] == nm]) for nm in names]
    axes[1].barh(range(len(names)), means, xerr=stds, color=[f"C{i % 10}" for i in range(len(names))])
    axes[1].set_yticks(range(len(names)), names, fontsize=7)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("top Hessian eigenvalue (mean ± std over seeds)")
    finish_figure(fig, "Flatness at the end of training per method (digits, MLP 64-32-10)")
    checks = [Check("Lanczos converged for every model", conv, "top eigenvalue converged")]
    mean = dict(zip(names, means))
    caps = sorted((float(k.split("=")[1]), v) for k, v in mean.items() if "cap" in k)
    abs_name = [k for k in names if " abs (" in k]
    pred = ""
    if len(caps) >= 2:
        pred = (f"; the prediction 'smaller κmax gives a smaller top eigenvalue' "
                f"{'holds' if caps[0][1] < caps[-1][1] else 'fails'} (κmax={caps[0][0]:g}: {fmt(caps[0][1])}, "
                f"κmax={caps[-1][0]:g}: {fmt(caps[-1][1])})")
    outcome = ("Top Hessian eigenvalue at the end: " + ", ".join(f"{k.split(' (')[0]} {fmt(v)}" for k, v in mean.items())
               + pred + (f"; Newton abs vs SGD: {fmt(mean[abs_name[0]])} vs "
                         f"{fmt([v for k, v in mean.items() if k.startswith('SGD')][0])}" if abs_name else ""))
    top = {nm: [next((r[2] for r in rows if r[0] == nm and r[1] == s), np.nan) for s in ctx.seeds] for nm in keys}
    top = {k: v for k, v in top.items() if np.any(np.isfinite(v))}
    bases = [k for k in top if not k.startswith("Newton")]
    verdicts = judge(top, abs_name[0], bases, lam, eta) if abs_name and bases else [
        Verdict("C5", "inconclusive in this surrogate", "Newton abs and a baseline must both train", "a run diverged")]
    hyper = {"n_train": n, "epochs": E, "lam": lam, "eta": eta, "configs": {k: list(v) for k, v in keys.items()},
             "lanczos": "eigsh k=1 which=LA", "hutchinson_probes": 30}
    return FigureResult(fig, rows, outcome, checks, hyper,
                        f"{n or 'all 1437'} training samples, {E} epochs, seeds {ctx.seeds}; curvature measured on "
                        "the whole training split", verdicts=verdicts)
