"""Generalization of the exact stochastic Newton step (abs adjustment) against SGD and Adam at
matched training loss (000 C6): test accuracy and the train–test loss gap where each run first
reaches the same training loss, with the tuned configurations of ``000_training``."""

from __future__ import annotations

import numpy as np

from ._common import Check, FigureResult, FigureSpec, Verdict, edge_note, finish_figure, new_figure, pm, vote
from .fig_000_training import ADAM_GRID, SGD_GRID, en_run, method_keys, plan, tuned
from .fig_001_generalization import at_matched_loss, matched_level

SPEC = FigureSpec(
    name="000_generalization",
    paper="000",
    claims=("C6",),
    title="test accuracy and train–test gap at matched training loss: exact Newton (abs) vs SGD and Adam",
    substitution="scikit-learn digits (X/16, stratified 80/20 split, a fixed training subset in quick mode), tanh MLP "
                 "64-32-10, per-sample (B = 1) closed-form layer-wise Newton steps; configurations tuned as in "
                 "000_training",
    columns=("method", "seed", "epoch", "train_loss", "test_loss", "test_acc"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.exact_newton:ExactNewton"),
)

ACC_MARGIN = 0.02


def judge(per: dict, newton: str, bases: list) -> list[Verdict]:
    """C6 from ``per[method] = {"acc": per-seed test accuracy at the matched training loss, "gap": ...}``."""
    a = np.asarray(per[newton]["acc"], float)
    best = max(bases, key=lambda m: float(np.mean(per[m]["acc"])))
    b = np.asarray(per[best]["acc"], float)
    return [Verdict(
        "C6", vote(a >= b - ACC_MARGIN),
        "adequacy read as generalization: per seed, at the lowest training loss every method reaches, Newton abs's "
        f"test accuracy is within {ACC_MARGIN} of the best tuned baseline's (by mean); supported if so in >= 2/3 of "
        "the seeds, not supported if below in >= 2/3, else mixed (one dataset: digits)",
        f"at matched training loss {pm(per[newton]['level'])}: test accuracy "
        + ", ".join(f"{m.split(' (')[0]} {pm(per[m]['acc'])}" for m in [newton] + bases)
        + "; test − train loss gap " + ", ".join(f"{m.split(' (')[0]} {pm(per[m]['gap'])}" for m in [newton] + bases)
        + f"; best baseline {best.split(' (')[0]}")]


def run(ctx) -> FigureResult:
    n, E = plan(ctx)
    best = tuned(ctx)
    keys = method_keys(best)
    newton = [k for k in keys if " abs " in k][0]
    bases = [k for k in keys if not k.startswith("Newton")]
    names = [newton] + bases
    hs = {m: [en_run(n, E, s, keys[m])[0] for s in ctx.seeds] for m in ctx.progress(names, desc="000 generalization")}
    per, rows = {}, []
    for si, s in enumerate(ctx.seeds):
        level = matched_level([hs[m][si].train_loss for m in names])
        for m in names:
            h = hs[m][si]
            ep, acc = at_matched_loss(h.train_loss, h.test_acc, level)
            _, tl = at_matched_loss(h.train_loss, h.test_loss, level)
            d = per.setdefault(m, {"acc": [], "gap": [], "epoch": [], "level": []})
            d["acc"].append(acc)
            d["gap"].append(tl - level)
            d["epoch"].append(ep)
            d["level"].append(level)
            rows += [[m.split(" (")[0], s, k, float(h.train_loss[k]), float(h.test_loss[k]), float(h.test_acc[k])]
                     for k in range(len(h.train_loss))]
    fig, axes = new_figure(2)
    for i, m in enumerate(names):
        for si, h in enumerate(hs[m]):
            axes[0].plot(h.train_loss, h.test_acc, color=f"C{i}", marker=".", lw=1, label=m if si == 0 else None)
            axes[1].plot(h.train_loss, np.asarray(h.test_loss) - np.asarray(h.train_loss), color=f"C{i}", marker=".",
                         lw=1, label=m if si == 0 else None)
        axes[0].errorbar(np.mean(per[m]["level"]), np.mean(per[m]["acc"]), yerr=np.std(per[m]["acc"]), color=f"C{i}",
                         marker="D", ms=7, capsize=3)
    axes[0].axvline(np.mean(per[newton]["level"]), color="gray", ls=":", lw=1, label="matched training loss (mean)")
    for ax in axes:
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("training loss (training proceeds to the right)")
        ax.legend(fontsize=6)
    axes[0].set_ylabel("test accuracy" + ("" if ctx.tiny else " (axis clipped at 0.5)")
                          + "\n(diamonds: at the matched loss, mean ± std)")
    axes[0].set_ylim(0.0 if ctx.tiny else 0.5, 1.0)
    axes[1].set_ylabel("train–test gap: test loss − training loss")
    finish_figure(fig, "Exact Newton (abs) vs SGD and Adam at matched training loss (digits, one curve per seed)")
    checks = [Check("every run reaches the matched training loss",
                    all(np.all(np.isfinite(per[m]["acc"])) for m in names),
                    "test accuracy at the matched loss is finite for every (method, seed)")]
    notes = [x for x in (edge_note(best["sgd"], SGD_GRID, "SGD lr"), edge_note(best["adam"], ADAM_GRID, "Adam lr"))
             if x]
    outcome = (f"at matched training loss {pm(per[newton]['level'])}: "
               + "; ".join(f"{m.split(' (')[0]} test accuracy {pm(per[m]['acc'])}, test − train loss gap "
                           f"{pm(per[m]['gap'])}, epochs {pm(per[m]['epoch'], 2)}" for m in names)
               + ("; " + "; ".join(notes) if notes else ""))
    hyper = {"n_train": n, "epochs": E, "selected": best, "methods": {m: keys[m] for m in names},
             "matched_level": "per seed, the largest of the methods' minimum training losses"}
    scale = (f"{n or 'all 1437'} training samples, {E} epochs, seeds {ctx.seeds}; configurations from 000_training's "
             "tuning (shared cache when both run)")
    return FigureResult(fig, rows, outcome, checks, hyper, scale, verdicts=judge(per, newton, bases))
