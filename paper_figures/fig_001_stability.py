"""E1.4: stability of arTuRO, Adam and SGD when the tuned primary hyperparameter (ε for arTuRO,
the learning rate otherwise) is multiplied by 0.1 … 10: the fraction of runs that train and the
spread of the final loss over the multipliers, on digits."""

from __future__ import annotations

import numpy as np

from ._common import (Check, FigureResult, FigureSpec, Verdict, combine, edge_note, finish_figure, log_grid, new_figure,
                      pm, tune)
from .fig_001_ablations import BATCH, SIZES, opt_run

SPEC = FigureSpec(
    name="001_stability",
    paper="001",
    claims=("C2",),
    title="stability over multipliers of the tuned ε (arTuRO) or learning rate (Adam, SGD)",
    substitution="scikit-learn digits (stratified 80/20 split), ReLU MLP 64-64-10, batch 32; arTuRO in exact mode with "
                 "the official fmnist_cnn hyperparameters (weight decay 0), its ε tuned or at the preset; Adam and SGD "
                 "lr tuned; selection on a 10% validation split",
    columns=("method", "multiplier", "rel_step", "seed", "final_train_loss", "final_test_acc", "trained"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.arturo:ArTuRO"),
)

AR_TUNED, AR_PRESET = "arTuRO (tuned ε)", "arTuRO (preset ε)"
METHODS = (AR_TUNED, AR_PRESET, "Adam", "SGD")
AR = METHODS[:2]
KEY = {AR_TUNED: "kl_bound", AR_PRESET: "kl_bound", "Adam": "lr", "SGD": "lr"}
GRIDS = {AR_TUNED: (1e-4, 10.0), "Adam": (1e-4, 0.3), "SGD": (0.01, 10.0)}
PRESET_EPS = 0.085675  # the official fmnist_cnn ε, not tuned here
MULTS = (0.1, 0.3, 1.0, 3.0, 10.0)
TRAINED_FRACTION = 0.25  # a run "trains" if it does not diverge and ends below this fraction of the initial loss


def _method_key(m: str) -> str:
    return "full (exact)" if m in AR else m


def _arm(f, s, ar, bases) -> tuple[str, bool, bool]:
    more = all(f[ar].mean() >= f[b].mean() for b in bases)
    tighter = all(np.nanmean(s[ar]) <= np.nanmean(s[b]) for b in bases)
    fewer = all(f[ar].mean() < f[b].mean() for b in bases)
    wider = all(np.nanmean(s[ar]) > np.nanmean(s[b]) for b in bases)
    if more and tighter:
        return "supported", more, tighter
    if (fewer or wider) and not more and not tighter:
        return "not supported", more, tighter
    return "mixed", more, tighter


def judge(per: dict) -> list[Verdict]:
    """C2 from ``per[method] = {"frac": per-seed fraction of multipliers that train, "spread": per-seed std over the
    multipliers of log10 of the final loss (finite runs), "active": per-seed mean fraction of steps whose trust region
    is active (arTuRO)}``; methods :data:`METHODS`."""
    f = {m: np.asarray(per[m]["frac"], float) for m in METHODS}
    s = {m: np.asarray(per[m]["spread"], float) for m in METHODS}
    bases = METHODS[2:]
    arms = {ar: _arm(f, s, ar, bases) for ar in AR}
    v = combine(*(a[0] for a in arms.values()))
    return [Verdict(
        "C2", v,
        f"'more stable' (the 'faster' half is judged in 001_benchmark): over the multipliers {list(MULTS)} of ε "
        "(arTuRO) or of the tuned lr (Adam, SGD), a run trains if it does not diverge and ends below "
        f"{TRAINED_FRACTION}x its initial loss. For each arTuRO arm (ε tuned; ε = the official preset {PRESET_EPS}, "
        "where the trust region is active): supported if its mean fraction of trained runs is >= every baseline's and "
        "its spread (std of log10 final loss over the multipliers, mean over seeds) is <= every baseline's; not "
        "supported if it holds neither and trains in fewer runs or spreads more than every baseline; else mixed. The "
        "figure's verdict combines the two arms (both supported -> supported, both not -> not supported, else mixed). "
        "A multiplier moves arTuRO's step by its square root at most (step ∝ √ε), and not at all where the trust "
        "region is inactive: the evidence gives the fraction of steps with an active trust region",
        "; ".join(f"{m}: fraction trained {pm(f[m], 2)}, spread of log10 final loss {pm(s[m], 2)}"
                  + (f", steps with an active trust region {pm(per[m]['active'], 2)} -> {arms[m][0]}" if m in AR else "")
                  for m in METHODS))]


def run(ctx) -> FigureResult:
    E = ctx.pick(tiny=1, quick=8, full=20)
    n_grid = ctx.pick(tiny=2, quick=6, full=8)
    mults = ctx.pick(tiny=(0.1, 1.0, 10.0), quick=MULTS, full=MULTS)
    best, grids, notes = {}, {}, []
    best[AR_PRESET], grids[AR_PRESET] = PRESET_EPS, [PRESET_EPS]
    for m in ctx.progress([m for m in METHODS if m != AR_PRESET], desc="001 stability tune"):
        grids[m] = log_grid(*GRIDS[m], n_grid)
        cfg, _ = tune([{KEY[m]: v} for v in grids[m]],
                      lambda c, m=m: np.inf if (h := opt_run(E, 0, _method_key(m), tuple(c.items()), True)[0]).diverged
                      else h.test_loss[-1])
        best[m] = cfg[KEY[m]]
        if (n := edge_note(best[m], grids[m], f"{m} {KEY[m]}")):
            if m == AR_TUNED:
                n += " (a larger ε changes little: the trust region is already inactive in most steps)"
            notes.append(n)
    rows, per, res = [], {}, {}
    for m in ctx.progress(METHODS, desc="001 stability multipliers"):
        frac, spread, act = [], [], []
        for s in ctx.seeds:
            logs, ok, a_s = [], 0, []
            for k in mults:
                h, _, a = opt_run(E, s, _method_key(m), ((KEY[m], best[m] * k),))
                a_s.append(a)
                fin = np.inf if h.diverged else float(h.train_loss[-1])
                trained = bool(np.isfinite(fin) and fin < TRAINED_FRACTION * h.train_loss[0])
                acc = float(h.test_acc[-1]) if not h.diverged else float("nan")
                rel = float(np.sqrt(k)) if m in AR else float(k)
                res[(m, k, s)] = (fin, acc, trained)
                rows.append([m, k, rel, s, fin if np.isfinite(fin) else float("nan"), acc, int(trained)])
                ok += trained
                if np.isfinite(fin):
                    logs.append(np.log10(fin))
            frac.append(ok / len(mults))
            spread.append(float(np.std(logs)) if len(logs) >= 2 else float("nan"))
            act.append(float(np.nanmean(a_s)) if m in AR else float("nan"))
        per[m] = {"frac": frac, "spread": spread, "active": act}
    rows = [r for r in rows if np.isfinite(r[4]) and np.isfinite(r[5])]
    fig, axes = new_figure(3)
    for i, m in enumerate(METHODS):
        rel = [np.sqrt(k) if m in AR else k for k in mults]
        lm = [np.nanmean([res[(m, k, s)][0] if np.isfinite(res[(m, k, s)][0]) else np.nan for s in ctx.seeds])
              for k in mults]
        am = [np.nanmean([res[(m, k, s)][1] for s in ctx.seeds]) if not all(np.isnan(res[(m, k, s)][1])
                                                                           for s in ctx.seeds) else np.nan
              for k in mults]
        axes[0].plot(mults, lm, marker="o", color=f"C{i}", label=f"{m} ({KEY[m]} = {best[m]:.3g})")
        axes[1].plot(rel, am, marker="o", color=f"C{i}", label=m)
        div = [k for k in mults if not any(np.isfinite(res[(m, k, s)][0]) for s in ctx.seeds)]
        if div:
            axes[0].scatter(div, [3.0] * len(div), marker="x", color=f"C{i}")
    w = 0.2
    for i, m in enumerate(METHODS):
        fr = [np.mean([res[(m, k, s)][2] for s in ctx.seeds]) for k in mults]
        axes[2].bar(np.arange(len(mults)) + (i - 1.5) * w, fr, w, color=f"C{i}", label=m)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("multiplier of the tuned ε / lr")
    axes[0].set_ylabel("final training loss (mean; x at 3 = all diverged)")
    axes[0].legend(fontsize=7)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("relative step length (√multiplier for arTuRO)")
    axes[1].set_ylabel("final test accuracy (mean over seeds)")
    axes[1].legend(fontsize=7)
    axes[2].set_xticks(np.arange(len(mults)))
    axes[2].set_xticklabels([f"x{k:g}" for k in mults])
    axes[2].set_ylabel(f"fraction of seeds that train\n(< {TRAINED_FRACTION}x initial loss)")
    axes[2].set_ylim(0, 1.3)
    axes[2].legend(fontsize=7, loc="upper center", ncol=2)
    finish_figure(fig, "Stability of arTuRO, Adam and SGD over multipliers of the tuned hyperparameter (digits)")
    tuned = [res[(m, 1.0, s)] for m in METHODS for s in ctx.seeds]
    checks = [Check("every method trains at its tuned value", all(t[2] for t in tuned) or ctx.tiny,
                    f"trained at x1: {sum(t[2] for t in tuned)}/{len(tuned)} runs"
                    + (" (tiny mode: 1 epoch, not required)" if ctx.tiny else ""))]
    outcome = ("; ".join(f"{m} ({KEY[m]} {best[m]:.3g}): fraction of multipliers that train {pm(per[m]['frac'], 2)}, "
                         f"spread of log10 final loss {pm(per[m]['spread'], 2)}"
                         + (f", active trust region in {pm(per[m]['active'], 2)} of the steps" if m in AR else "")
                         for m in METHODS)
               + ("; " + "; ".join(notes) if notes else ""))
    hyper = {"sizes": SIZES, "batch": BATCH, "epochs": E, "grids": grids, "selected": best, "multipliers": mults,
             "selection": "validation loss (10% of the training set), seed 0", "trained_fraction": TRAINED_FRACTION}
    scale = (f"{E} epochs, {n_grid}-point tuning grids, multipliers {list(mults)}, seeds {ctx.seeds} "
             "(full mode 20 epochs, 8-point grids, 5 seeds)")
    return FigureResult(fig, rows, outcome, checks, hyper, scale, verdicts=judge(per))
