"""E0.5: sensitivity of exact stochastic Newton (abs adjustment, per sample) to the damping λ
(the "suitable regularization") and the step η: final training loss and test accuracy."""

from __future__ import annotations

import numpy as np

from ._common import Check, FigureResult, FigureSpec, finish_figure, fmt, new_figure
from .fig_000_training import en_run

SPEC = FigureSpec(
    name="000_lambda",
    paper="000",
    claims=("C1",),
    title="sensitivity to the damping λ and step η",
    substitution="scikit-learn digits, tanh MLP 64-32-10, per-sample closed-form Newton with the abs adjustment, "
                 "one seed, a fixed training subset in quick mode",
    columns=("lam", "eta", "final_train_loss", "test_acc", "diverged"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.exact_newton:ExactNewton"),
)


def run(ctx) -> FigureResult:
    lams = ctx.pick(tiny=(0.1, 1.0), quick=(0.03, 0.1, 0.3, 1.0, 3.0, 10.0), full=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0))
    etas = ctx.pick(tiny=(0.1,), quick=(0.03, 0.1, 0.3), full=(0.03, 0.1, 0.3))
    n, E = ctx.pick(tiny=100, quick=250, full=None), ctx.pick(tiny=1, quick=3, full=10)
    loss = np.full((len(etas), len(lams)), np.nan)
    acc = np.full_like(loss, np.nan)
    rows = []
    grid = [(i, j) for i in range(len(etas)) for j in range(len(lams))]
    l0 = None
    for i, j in ctx.progress(grid, desc="000 λ x η grid"):
        h = en_run(n, E, 0, ("newton", "abs", lams[j], etas[i], ()))[0]
        l0 = h.train_loss[0]
        bad = h.diverged or not np.isfinite(h.train_loss[-1]) or h.train_loss[-1] > l0
        loss[i, j] = h.train_loss[-1] if not h.diverged else np.nan
        acc[i, j] = h.test_acc[-1] if not h.diverged else np.nan
        rows.append([lams[j], etas[i], float(np.nan_to_num(loss[i, j], nan=-1.0)), float(np.nan_to_num(acc[i, j])),
                     int(bad)])
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
    finish_figure(fig, f"Exact Newton (abs): λ x η sensitivity ('div.' = loss above its initial value {fmt(l0)})")
    good = [(r[0], r[1]) for r in rows if not r[4]]
    checks = [Check("some (λ, η) trains", len(good) > 0, f"{len(good)} of {len(rows)} cells decrease the loss")]
    best = max(rows, key=lambda r: r[3])
    fails = sorted({r[0] for r in rows if r[4]})
    outcome = (f"{len(good)} of {len(rows)} (λ, η) cells decrease the loss; best test accuracy {best[3]:.3f} at "
               f"λ={best[0]:g}, η={best[1]:g}; failing cells have λ in {fails or 'none'}")
    return FigureResult(fig, rows, outcome, checks, {"lams": lams, "etas": etas, "n_train": n, "epochs": E, "seed": 0},
                        f"{n or 'all 1437'} training samples, {E} epochs, seed 0 (full mode: all samples, 10 epochs, "
                        "λ from 0.01)")
