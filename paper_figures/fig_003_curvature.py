"""E3.5: which curvature rescales the step t = λ⟨g, d⟩/c — the Hessian along d (dᵀHd) or the
generalized Gauss-Newton along d (dᵀGd), measured on the gradient's own batch or on an
independent batch, plus the ``abs`` policy for c ≤ 0; with SGD and Adam directions."""

from __future__ import annotations

import functools

import numpy as np

from ._common import (Check, FigureResult, FigureSpec, Verdict, band, baseline, combine, dataset, finish_figure, fmt,
                      make_mlp, mean_std, need, new_figure, pm, train_epochs, vote)

SPEC = FigureSpec(
    name="003_curvature",
    paper="003",
    claims=("C4",),
    title="which curvature: Hessian vs Gauss-Newton along d, own batch vs an independent batch",
    substitution="scikit-learn digits (X/16, stratified 80/20 split), tanh MLP 64-32-10, batch 64; SGD directions "
                 "with the untuned geometric decay λ 2 → 0.1, Adam directions with constant λ = 0.5",
    columns=("direction", "variant", "epoch", "train_loss_mean", "train_loss_std", "test_acc_mean", "test_acc_std",
             "fallbacks_mean", "n_seeds"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.curvature_lr:CurvatureLR"),
)

SIZES = (64, 32, 10)
BATCH = 64
#: variant -> (curvature kind, batch the curvature is measured on, curvature_policy)
VARIANTS = {
    "Hessian, own batch": ("hessian", "same", "fallback"),
    "GGN, own batch": ("ggn", "same", "fallback"),
    "Hessian, independent batch": ("hessian", "next", "fallback"),
    "GGN, independent batch": ("ggn", "next", "fallback"),
    "Hessian, own batch, abs(c)": ("hessian", "same", "abs"),
}
DIRECTIONS = ("sgd", "adam")


@functools.lru_cache(maxsize=None)
def curv_run(epochs: int, seed: int, direction: str, variant: str):
    """One CurvatureLR run; returns (History, fallback count, per-step t array)."""
    clr = need("curvlab.methods.curvature_lr")
    kind, where, policy = VARIANTS[variant]
    ds = dataset("digits")
    model = make_mlp(SIZES, "tanh")
    params = model.init_params(np.random.default_rng(seed))
    steps = epochs * (len(ds.X_train) // BATCH)
    if direction == "sgd":
        base, sched = baseline("sgd", 1.0), clr.GeometricSchedule(2.0, 0.1, total_steps=steps)
    else:
        base, sched = baseline("adam", 1.0), 0.5
    opt = clr.CurvatureLR(base=base, schedule=sched, mode="adjoint", curvature_policy=policy, realized=False)
    rng = np.random.default_rng(5000 + seed)  # the independent batches
    ts: list[float] = []

    def step(p, st, Xb, yb):
        f, g = model.loss_and_grad(p, Xb, yb)
        if where == "next":
            idx = rng.choice(len(ds.X_train), len(Xb), replace=False)
            Xc, yc = ds.X_train[idx], ds.y_train[idx]
        else:
            Xc, yc = Xb, yb
        if kind == "hessian":
            curv = lambda d: float(model.curvature(p, Xc, yc, d, mode="adjoint"))  # noqa: E731
        else:
            curv = lambda d: float(d @ model.ggn_vp(p, Xc, yc, d))  # noqa: E731
        upd, st, info = opt.update_with_info(g, st, p, curvature=curv)
        ts.append(float(info.t))
        return p + upd, st

    st0 = opt.init(params)
    box = {}

    def on_epoch(ep, p, st, h):
        box["st"] = st

    _, h = train_epochs(model, params, step, st0, ds.X_train, ds.y_train, ds.X_test, ds.y_test, epochs, BATCH,
                        seed=100 + seed, on_epoch=on_epoch)
    n_fb = int(box["st"].n_policy) if "st" in box else 0
    return h, n_fb, np.asarray(ts)


LOSS_FACTOR = 1.2


def judge(final: dict, tcv: dict) -> list[Verdict]:
    """C4 from ``final[(direction, variant)]`` = per-seed final training losses (inf = diverged) and
    ``tcv[direction]`` = per-seed coefficient of variation of the step t_k (own-batch Hessian)."""
    pairs = []
    ev = []
    for dr in DIRECTIONS:
        own = np.asarray(final[(dr, "Hessian, own batch")], float)
        ind = np.asarray(final[(dr, "Hessian, independent batch")], float)
        pairs += list(own <= ind)
        ev.append(f"{dr.upper()} directions: Hessian own batch {pm(own)}, independent batch {pm(ind)}, GGN own batch "
                  f"{pm(final[(dr, 'GGN, own batch')])}, GGN independent {pm(final[(dr, 'GGN, independent batch')])}, "
                  f"abs(c) {pm(final[(dr, 'Hessian, own batch, abs(c)')])}; CV of t_k {pm(tcv[dr], 2)}")
    v_data = vote(pairs)
    adaptive = all(np.all(np.asarray(tcv[dr]) > 0.1) for dr in DIRECTIONS)
    verdict = combine(v_data, "supported" if adaptive else "not supported")
    return [Verdict(
        "C4", verdict,
        "(a) adaptive: the step t_k of the own-batch Hessian run varies along training (coefficient of variation over "
        "steps > 0.1 in every seed, both directions); (b) depends on the data: the curvature of the gradient's own "
        "batch gives a final training loss no higher than the curvature of an independent batch (paired by seed) in "
        ">= 2/3 of the (seed, direction) pairs (not supported if higher in >= 2/3, else mixed); supported if (a) "
        "and (b) are, not supported if neither, else mixed",
        "; ".join(ev) + f"; (a) {'holds' if adaptive else 'fails'}, (b) own batch <= independent in "
        f"{sum(pairs)}/{len(pairs)} pairs")]


def run(ctx) -> FigureResult:
    E = ctx.pick(tiny=1, quick=8, full=20)
    variants = ctx.pick(tiny=("Hessian, own batch", "GGN, own batch", "Hessian, independent batch"),
                        quick=tuple(VARIANTS), full=tuple(VARIANTS))
    runs = {}
    for dr in DIRECTIONS:
        for v in ctx.progress(variants, desc=f"003 curvature {dr}"):
            runs[(dr, v)] = [curv_run(E, s, dr, v) for s in ctx.seeds]
    fig, axes = new_figure(3)
    rows = []
    for di, dr in enumerate(DIRECTIONS):
        ax = axes[di]
        for i, v in enumerate(variants):
            outs = runs[(dr, v)]
            hs = [o[0] for o in outs]
            x, m, s = band(ax, np.arange(E + 1), [h.train_loss for h in hs], v, color=f"C{i}", log=True)
            am, asd = mean_std([h.test_acc for h in hs])
            fb = float(np.mean([o[1] for o in outs]))
            rows += [[dr, v, int(k), float(m[k]), float(s[k]), float(am[k]), float(asd[k]), fb, len(hs)]
                     for k in range(len(m))]
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (nats)")
        ax.set_title(f"{'SGD' if dr == 'sgd' else 'Adam'} directions "
                     f"({'λ 2→0.1' if dr == 'sgd' else 'λ = 0.5'})", fontsize=9)
        ax.legend(fontsize=7)
    # bars: fallback counts per variant and direction
    ax = axes[2]
    w = 0.38
    for di, dr in enumerate(DIRECTIONS):
        fbm = [np.mean([o[1] for o in runs[(dr, v)]]) for v in variants]
        fbs = [np.std([o[1] for o in runs[(dr, v)]]) for v in variants]
        ax.bar(np.arange(len(variants)) + (di - 0.5) * w, fbm, w, yerr=fbs, label=f"{dr.upper()} directions")
    ax.set_xticks(np.arange(len(variants)))
    ax.set_xticklabels([v.replace(", ", "\n") for v in variants], fontsize=7)
    ax.set_ylabel("fallback events (c ≤ 0) per run")
    ax.legend(fontsize=7)
    finish_figure(fig, "Which curvature rescales the step: Hessian vs GGN, own vs independent batch (mean ± std)")

    def fin(h):
        return float("inf") if h.diverged else float(h.train_loss[-1])

    final = {k: [fin(o[0]) for o in outs] for k, outs in runs.items()}
    for dr in DIRECTIONS:  # tiny mode runs fewer variants: the verdict reads the ones it needs
        for v in VARIANTS:
            final.setdefault((dr, v), [])
    tcv = {}
    for dr in DIRECTIONS:
        cv = []
        for o in runs[(dr, "Hessian, own batch")]:
            t = np.abs(o[2][np.isfinite(o[2])])
            cv.append(float(np.std(t) / np.mean(t)) if len(t) and np.mean(t) > 0 else 0.0)
        tcv[dr] = cv
    init = runs[("sgd", "Hessian, own batch")][0][0].train_loss[0]
    ok = all(np.isfinite(x) and x < init for x in final[("sgd", "Hessian, own batch")])
    ggn_fb = max(o[1] for dr in DIRECTIONS for v in variants if v.startswith("GGN") for o in runs[(dr, v)])
    checks = [Check("the default (Hessian, own batch, SGD directions) trains", ok,
                    f"final losses {[fmt(x) for x in final[('sgd', 'Hessian, own batch')]]} < initial {fmt(init)}"),
              Check("the GGN is positive semi-definite: no fallback events", ggn_fb == 0,
                    f"largest fallback count of a GGN run {ggn_fb}")]
    outcome = "; ".join(
        f"{dr.upper()}: " + ", ".join(f"{v} {pm(final[(dr, v)])}" for v in variants) for dr in DIRECTIONS)
    fbs = {k: sum(o[1] for o in outs) for k, outs in runs.items()}
    outcome = ("final training loss (mean ± std over seeds) — " + outcome + "; fallback (c ≤ 0) events in all seeds: "
               + ", ".join(f"{dr.upper()}/{v} {n}" for (dr, v), n in fbs.items() if n)
               + " (none elsewhere; abs(c) equals the default where the Hessian run had no c ≤ 0 event)")
    hyper = {"sizes": SIZES, "batch": BATCH, "epochs": E, "variants": {v: VARIANTS[v] for v in variants},
             "sgd_schedule": "geometric 2.0 -> 0.1", "adam_lambda": 0.5, "hessian_mode": "adjoint",
             "independent_batch": "a uniformly drawn batch of the same size, without replacement, per step"}
    scale = f"{E} epochs, seeds {ctx.seeds} (full mode 20 epochs, 5 seeds)"
    return FigureResult(fig, rows, outcome, checks, hyper, scale, verdicts=judge(final, tcv))
