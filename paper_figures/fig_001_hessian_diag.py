"""C3 on a real network: the RLS/Kalman estimate h of arTuRO during training against the exact
Hessian diagonal of the training loss at the same parameters (digits, ReLU MLP), with the official
presets. Shown whatever it shows."""

from __future__ import annotations

import functools

import numpy as np

from ._common import (Check, FigureResult, FigureSpec, Verdict, dataset, finish_figure, make_mlp, need, new_figure,
                      pm, subsample, vote)

SPEC = FigureSpec(
    name="001_hessian_diag",
    paper="001",
    claims=("C3",),
    title="arTuRO's RLS curvature estimate vs the exact Hessian diagonal of a network during training",
    substitution="scikit-learn digits (X/16, stratified 80/20 split), ReLU MLP 64-32-10 (2,410 parameters), batch 32, "
                 "presets fmnist_cnn and cifar10_cnn (weight decay 0), reference mode; the exact diagonal of the "
                 "training-loss Hessian on a fixed subset of the training split (R-operator products on unit vectors)",
    columns=("preset", "seed", "epoch", "median_ratio", "rank_corr", "frac_within_2x", "h_median", "diag_median"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.arturo:ArTuRO"),
)

SIZES = (64, 32, 10)
BATCH = 32
PRESETS = ("fmnist_cnn", "cifar10_cnn")
FLOOR = 1e-6  # coordinates whose true diagonal is below this (dead ReLU paths) are excluded from the ratios


def exact_diagonal(model, params, X, y, block: int = 256) -> np.ndarray:
    """diag(H) of the mean loss on (X, y), exact: H e_j for blocks of unit vectors."""
    P = len(params)
    d = np.empty(P)
    for s in range(0, P, block):
        k = min(block, P - s)
        E = np.zeros((P, k))
        E[np.arange(s, s + k), np.arange(k)] = 1.0
        d[s:s + k] = model.hvp_matmat(params, X, y, E)[np.arange(s, s + k), np.arange(k)]
    return d


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else np.nan


def compare(h: np.ndarray, diag: np.ndarray) -> dict:
    ok = diag > FLOOR
    r = h[ok] / diag[ok]
    return {"median_ratio": float(np.median(r)), "rank_corr": _spearman(h[ok], diag[ok]),
            "frac_within_2x": float(np.mean((r >= 0.5) & (r <= 2.0))), "h_median": float(np.median(h[ok])),
            "diag_median": float(np.median(diag[ok]))}


@functools.lru_cache(maxsize=None)
def hd_run(preset: str, seed: int, epochs: int, n_eval: int, checkpoints: tuple):
    ar = need("curvlab.methods.arturo")
    from curvlab.data import minibatches

    ds = dataset("digits")
    Xe, ye = subsample(ds.X_train, ds.y_train, n_eval, seed=7)
    model = make_mlp(SIZES, "relu")
    params = model.init_params(np.random.default_rng(seed))
    opt = ar.ArTuRO.from_preset(preset, mode="reference", weight_decay=0.0)
    st = opt.init(params)
    rng = np.random.default_rng(100 + seed)
    out, last = [], None
    for ep in range(1, epochs + 1):
        eps = opt.kl_bound * (0.006 if ep > epochs // 2 else 1.0)
        with np.errstate(all="ignore"):
            for Xb, yb in minibatches(ds.X_train, ds.y_train, BATCH, rng):
                _, g = model.loss_and_grad(params, Xb, yb)
                upd, st = opt.update(g, st, params, kl_bound=eps)
                params = params + upd
        if ep in checkpoints:
            h = np.asarray(st.h, float).ravel()
            last = (h, exact_diagonal(model, params, Xe, ye))
            out.append((ep, compare(*last)))
    return out, last


def judge(final: dict) -> list[Verdict]:
    """C3 from per-(preset, seed) comparisons at the last checkpoint: ``final[(preset, seed)] = compare(...)``."""
    good = [c["rank_corr"] >= 0.7 and 0.5 <= c["median_ratio"] <= 2.0 for c in final.values()]
    bad = [c["rank_corr"] < 0.5 or not (0.2 <= c["median_ratio"] <= 5.0) for c in final.values()]
    v = vote(good)
    if v != "supported":
        v = "not supported" if vote(bad) == "supported" else "mixed"
    ratios = [c["median_ratio"] for c in final.values()]
    corr = [c["rank_corr"] for c in final.values()]
    within = [c["frac_within_2x"] for c in final.values()]
    return [Verdict("C3", v,
                    "at the end of training, per preset and seed: a faithful model of the expected Hessian has a rank "
                    "correlation >= 0.7 with the exact diagonal and a median ratio h / diag H in [0.5, 2]; supported if "
                    "so in >= 2/3 of the runs, not supported if in >= 2/3 the correlation is < 0.5 or the median ratio "
                    "is outside [0.2, 5], else mixed",
                    f"median h / diag H {pm(ratios, 2)}, rank correlation {pm(corr, 2)}, share of coordinates within "
                    f"2x {pm(within, 2)} over {len(final)} runs")]


def run(ctx) -> FigureResult:
    E = ctx.pick(tiny=1, quick=6, full=30)
    n_eval = ctx.pick(tiny=100, quick=500, full=1437)
    checkpoints = tuple(sorted({1, max(1, E // 2), E}))
    rows, final, last = [], {}, {}
    for preset in ctx.progress(PRESETS, desc="001 Hessian diagonal"):
        for s in ctx.seeds:
            out, lst = hd_run(preset, s, E, n_eval, checkpoints)
            for ep, c in out:
                rows.append([preset, s, ep, c["median_ratio"], c["rank_corr"], c["frac_within_2x"], c["h_median"],
                             c["diag_median"]])
            final[(preset, s)] = out[-1][1]
            if s == ctx.seeds[0]:
                last[preset] = lst
    fig, axes = new_figure(3)
    for i, (preset, (h, d)) in enumerate(last.items()):
        ok = d > FLOOR
        axes[0].scatter(d[ok], np.maximum(h[ok], 1e-12), s=3, alpha=0.3, color=f"C{i}", label=f"{preset}")
    lo = max(FLOOR, min(float(np.min(d[d > FLOOR])) for _, d in last.values()))
    hi = max(float(np.max(d)) for _, d in last.values())
    axes[0].plot([lo, hi], [lo, hi], "k--", lw=1, label="h = diag H")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel(f"exact Hessian diagonal (epoch {E}, seed {ctx.seeds[0]})")
    axes[0].set_ylabel("RLS estimate h (clipped at 1e-12)")
    axes[0].legend(fontsize=7, markerscale=3)
    for i, preset in enumerate(PRESETS):
        for j, (key, ax) in enumerate((("median_ratio", axes[1]), ("rank_corr", axes[2]))):
            vals = np.array([[r[3 + j] for r in rows if r[0] == preset and r[1] == s] for s in ctx.seeds])
            m, sd = vals.mean(0), vals.std(0)
            ax.errorbar(checkpoints, m, yerr=sd, marker="o", capsize=3, color=f"C{i}", label=preset)
    axes[1].axhspan(0.5, 2.0, color="grey", alpha=0.2, label="within 2x")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("median h / diag H over coordinates")
    axes[2].set_ylabel("Spearman rank correlation of h and diag H")
    axes[2].set_ylim(-0.2, 1.0)
    for ax in axes[1:]:
        ax.set_xlabel("epoch (ε x0.006 after half time)")
        ax.legend(fontsize=7)
    finish_figure(fig, "arTuRO's RLS estimate against the exact Hessian diagonal (digits, ReLU MLP 64-32-10, "
                       "mean ± std over seeds)")
    finite = all(np.isfinite(r[3]) and np.isfinite(r[4]) for r in rows)
    checks = [Check("estimates and exact diagonals are finite", finite, "median ratio and rank correlation finite")]
    outcome = "; ".join(
        f"{p}: median h / diag H {pm([final[(p, s)]['median_ratio'] for s in ctx.seeds], 2)}, rank correlation "
        f"{pm([final[(p, s)]['rank_corr'] for s in ctx.seeds], 2)} at epoch {E}" for p in PRESETS)
    hyper = {"sizes": SIZES, "batch": BATCH, "epochs": E, "n_eval": n_eval, "checkpoints": checkpoints,
             "presets": PRESETS, "mode": "reference", "floor": FLOOR}
    return FigureResult(fig, rows, outcome, checks, hyper,
                        f"{E} epochs, exact diagonal on {n_eval} training samples at epochs {list(checkpoints)}, seeds "
                        f"{ctx.seeds}; full mode: 30 epochs, the whole training split", verdicts=judge(final))
