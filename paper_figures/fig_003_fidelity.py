"""E3.3: the quadratic model's predicted change -λ(2-λ)⟨g,d⟩²/(2c) against the realised change
of the batch loss, per step, and how the step t adapts to the curvature c."""

from __future__ import annotations

import numpy as np

from ._common import Check, FigureResult, FigureSpec, Verdict, finish_figure, fmt, new_figure, pm, vote
from .fig_003_regimes import clr_run, epochs_for

SPEC = FigureSpec(
    name="003_fidelity",
    paper="003",
    claims=("C3", "C4"),
    title="predicted vs realised loss change per step",
    substitution="scikit-learn digits, tanh MLP 64-32-10, batch 64, SGD direction; realised change measured on the "
                 "same batch with one extra forward pass",
    columns=("lam", "seed", "step", "predicted", "realised", "t", "c"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.curvature_lr:CurvatureLR"),
)

LAMS = (0.5, 1.0, 1.5)


def judge(ratio: dict, cv_t: list, rho_tc: list) -> list[Verdict]:
    """C3 from ``ratio[λ] = per-seed median realised/predicted decrease``; C4 from per-seed coefficient of variation
    of the step t and Spearman correlation of t with the curvature c (λ = 0.5)."""
    small = [lam for lam in ratio if lam <= 1.0]
    ok = [all(0.5 <= ratio[lam][i] <= 2.0 for lam in small) for i in range(len(ratio[small[0]]))]
    c3 = Verdict("C3", vote(ok),
                 "λ has its natural meaning if the quadratic model predicts the decrease: supported if the median "
                 f"realised/predicted decrease per step lies in [0.5, 2] for every λ <= 1 (λ in {small}) in >= 2/3 of "
                 "the seeds, not supported if it does not in >= 2/3",
                 "; ".join(f"λ={lam:g}: {pm(v, 2)}" for lam, v in ratio.items()))
    cv, rho = np.asarray(cv_t, float), np.asarray(rho_tc, float)
    c4 = Verdict("C4", vote((cv >= 0.2) & (rho <= -0.3)),
                 "adaptive: supported if, in >= 2/3 of the seeds, the step t varies over the run (coefficient of "
                 "variation >= 0.2) and falls where the batch curvature c rises (Spearman ρ(t, c) <= -0.3), λ = 0.5",
                 f"coefficient of variation of t {pm(cv, 2)}, Spearman ρ(t, c) {pm(rho, 2)}")
    return [c3, c4]


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else np.nan


def run(ctx) -> FigureResult:
    E = epochs_for(ctx)
    rows = []
    fig, axes = new_figure(3)
    med_ratio = {}
    for i, lam in enumerate(ctx.progress(LAMS, desc="003 fidelity")):
        P, R, T, C = [], [], [], []
        for s in ctx.seeds:
            _, d = clr_run(E, s, "sgd", ("const", lam))
            ok = np.isfinite(d["predicted"]) & np.isfinite(d["realized"]) & np.isfinite(d["c"])
            for k in np.flatnonzero(ok):
                rows.append([lam, s, int(k), float(d["predicted"][k]), float(d["realized"][k]), float(d["t"][k]),
                             float(d["c"][k])])
            P.append(d["predicted"][ok])
            R.append(d["realized"][ok])
            T.append(d["t"][ok])
            C.append(d["c"][ok])
        P, R, T, C = map(np.concatenate, (P, R, T, C))
        dec = (P < 0) & (R < 0)
        med_ratio[lam] = float(np.median(R[P < 0] / P[P < 0])) if np.any(P < 0) else np.nan
        axes[0].scatter(-P[dec], -R[dec], s=4, alpha=0.4, color=f"C{i}", label=f"λ={lam:g} ({dec.mean():.0%} decreases)")
        axes[1].hist(T, bins=40, histtype="step", color=f"C{i}", label=f"λ={lam:g}")
        axes[2].scatter(C, T, s=3, alpha=0.3, color=f"C{i}", label=f"λ={lam:g}")
    lo, hi = 1e-6, 10
    axes[0].plot([lo, hi], [lo, hi], "k--", lw=1, label="realised = predicted")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("predicted decrease λ(2-λ)⟨g,d⟩²/(2c) (nats)")
    axes[0].set_ylabel("realised decrease on the batch (nats)")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("step size t_k")
    axes[1].set_ylabel("number of steps")
    axes[1].legend(fontsize=7)
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("curvature c_k = dᵀHd")
    axes[2].set_ylabel("step size t_k")
    axes[2].legend(fontsize=7)
    finish_figure(fig, "Quadratic-model fidelity and adaptivity of the rescaled step (SGD direction)")
    r = med_ratio[0.5]
    checks = [Check("model is faithful for small λ", 0.3 < r < 3.0, f"median realised/predicted at λ=0.5: {r:.3g}")]
    outcome = ("Median realised/predicted decrease per step: "
               + ", ".join(f"λ={lam:g}: {fmt(med_ratio[lam], 2)}" for lam in LAMS)
               + "; the step size varies with the batch curvature (t spread shown in the histogram)")
    ratio, cv_t, rho = {}, [], []
    for lam in LAMS:
        ratio[lam] = []
        for s in ctx.seeds:
            _, d = clr_run(E, s, "sgd", ("const", lam))
            ok = np.isfinite(d["predicted"]) & np.isfinite(d["realized"]) & (d["predicted"] < 0)
            ratio[lam].append(float(np.median(d["realized"][ok] / d["predicted"][ok])) if ok.any() else np.nan)
            if lam == 0.5:
                fin = np.isfinite(d["t"]) & np.isfinite(d["c"])
                t, c = d["t"][fin], d["c"][fin]
                cv_t.append(float(np.std(t) / abs(np.mean(t))) if len(t) else np.nan)
                rho.append(_spearman(t, c))
    return FigureResult(fig, rows, outcome, checks, {"lams": LAMS, "epochs": E, "direction": "sgd"},
                        f"{E} epochs, seeds {ctx.seeds}", verdicts=judge(ratio, cv_t, rho))
