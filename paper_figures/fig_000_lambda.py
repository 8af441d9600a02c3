"""E0.5: sensitivity of exact stochastic Newton (abs adjustment, per sample) to the damping λ
(the "suitable regularization") and the step η: final training loss and test accuracy."""

from __future__ import annotations

import numpy as np

from ._common import Check, FigureResult, FigureSpec, Verdict, finish_figure, fmt, new_figure
from .fig_000_training import en_run

SPEC = FigureSpec(
    name="000_lambda",
    paper="000",
    claims=("C1",),
    title="sensitivity to the damping λ and step η",
    substitution="scikit-learn digits, tanh MLP 64-32-10, per-sample closed-form Newton with the abs adjustment, "
                 "a fixed training subset in quick mode; cells averaged over seeds",
    columns=("lam", "eta", "final_train_loss_mean", "test_acc_mean", "failed", "final_train_loss_std",
             "frac_seeds_training"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.exact_newton:ExactNewton"),
)


def judge(lams, etas, trains) -> list[Verdict]:
    """C1 from ``trains[i, j]``: the fraction of seeds whose loss decreased at (η_i, λ_j)."""
    T = np.asarray(trains, float) >= 2 / 3
    robust = [lams[j] for j in range(len(lams)) if T[:, j].all()]
    small_fails = not T[:, 0].all()
    if robust and small_fails:
        v = "supported"
    elif robust:
        v = "mixed"
    else:
        v = "not supported"
    crit = ("supported if some damping λ trains (loss decreases in >= 2/3 of the seeds) for every step η of the grid, "
            "while the smallest λ fails for some η (the regularization is what makes it work); mixed if some λ trains "
            "for every η but so does the smallest; not supported if no λ trains for every η")
    ev = (f"λ training for every η in {list(etas)}: {robust or 'none'}; smallest λ = {lams[0]:g} trains in "
          + ", ".join(f"η={e:g}: {np.asarray(trains)[i, 0]:.0%} of seeds" for i, e in enumerate(etas)))
    return [Verdict("C1", v, crit, ev)]


def run(ctx) -> FigureResult:
    lams = ctx.pick(tiny=(0.1, 1.0), quick=(0.03, 0.1, 0.3, 1.0, 3.0, 10.0), full=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0))
    etas = ctx.pick(tiny=(0.1,), quick=(0.03, 0.1, 0.3), full=(0.03, 0.1, 0.3))
    n, E = ctx.pick(tiny=100, quick=250, full=None), ctx.pick(tiny=1, quick=3, full=10)
    loss = np.full((len(etas), len(lams)), np.nan)
    acc = np.full_like(loss, np.nan)
    rows = []
    grid = [(i, j) for i in range(len(etas)) for j in range(len(lams))]
    l0 = None
    trains = np.zeros_like(loss)
    for i, j in ctx.progress(grid, desc="000 λ x η grid"):
        ls, ac, ok = [], [], []
        for seed in ctx.seeds:
            h = en_run(n, E, seed, ("newton", "abs", lams[j], etas[i], ()))[0]
            l0 = h.train_loss[0]
            bad = h.diverged or not np.isfinite(h.train_loss[-1]) or h.train_loss[-1] > l0
            ok.append(not bad)
            if not h.diverged:
                ls.append(h.train_loss[-1])
                ac.append(h.test_acc[-1])
        trains[i, j] = np.mean(ok)
        bad = trains[i, j] < 2 / 3
        loss[i, j] = np.mean(ls) if ls else np.nan
        acc[i, j] = np.mean(ac) if ac else np.nan
        rows.append([lams[j], etas[i], float(np.nan_to_num(loss[i, j], nan=-1.0)), float(np.nan_to_num(acc[i, j])),
                     int(bad), float(np.std(ls)) if ls else 0.0, float(trains[i, j])])
    fig, axes = new_figure(2)
    for ax, Z, title, cmap in ((axes[0], np.log10(loss), "log10 final training loss (nats)", "viridis_r"),
                               (axes[1], acc, "test accuracy", "viridis")):
        im = ax.imshow(Z, cmap=cmap, aspect="auto", origin="lower")
        fig.colorbar(im, ax=ax, label=title)
        for i, j in grid:
            txt = "div." if not np.isfinite(Z[i, j]) or rows[i * len(lams) + j][4] else f"{Z[i, j]:.2f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="r" if txt == "div." else "w")
        ax.set_xticks(range(len(lams)), [f"{v:g}" for v in lams])
        ax.set_yticks(range(len(etas)), [f"{v:g}" for v in etas])
        ax.set_xlabel("damping λ")
        ax.set_ylabel("step η")
        ax.set_title(title, fontsize=9)
    finish_figure(fig, f"Exact Newton (abs): λ x η sensitivity, mean over {len(ctx.seeds)} seeds ('div.' = loss above "
                       f"its initial value {fmt(l0)} in > 1/3 of the seeds)")
    good = [(r[0], r[1]) for r in rows if not r[4]]
    checks = [Check("some (λ, η) trains", len(good) > 0, f"{len(good)} of {len(rows)} cells decrease the loss")]
    best = max(rows, key=lambda r: r[3])
    fails = sorted({r[0] for r in rows if r[4]})
    outcome = (f"{len(good)} of {len(rows)} (λ, η) cells decrease the loss; best test accuracy {best[3]:.3f} at "
               f"λ={best[0]:g}, η={best[1]:g}; failing cells have λ in {fails or 'none'}")
    return FigureResult(fig, rows, outcome, checks, {"lams": lams, "etas": etas, "n_train": n, "epochs": E},
                        f"{n or 'all 1437'} training samples, {E} epochs, seeds {ctx.seeds} (full mode: all samples, "
                        "10 epochs, λ from 0.01)", verdicts=judge(lams, etas, trains))
