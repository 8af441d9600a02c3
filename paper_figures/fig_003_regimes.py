"""E3.2: constant λ regimes of the curvature-rescaled step t = λ⟨g, d⟩/dᵀHd: the step size, the
curvature and the loss over iterations, with SGD and Adam directions.

:func:`clr_run` (cached per process) is reused by ``003_fidelity`` and ``003_decay``.
"""

from __future__ import annotations

import functools

import numpy as np

from ._common import (Check, FigureResult, FigureSpec, Verdict, band, baseline, combine, dataset, finish_figure, fmt,
                      make_mlp, mean_std, need, new_figure, pm, train_epochs, transform_stepper, validation_split)

SPEC = FigureSpec(
    name="003_regimes",
    paper="003",
    claims=("C3", "C5"),
    title="step size, curvature and loss for constant λ",
    substitution="scikit-learn digits (X/16, stratified 80/20 split), tanh MLP 64-32-10 (2,410 parameters), batch 64, "
                 "curvature dᵀHd in adjoint mode on the gradient's batch",
    columns=("direction", "lam", "step", "t_mean", "c_mean", "batch_loss_mean", "batch_loss_std", "n_seeds"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.curvature_lr:CurvatureLR"),
)

SIZES = (64, 32, 10)
BATCH = 64
LAMS_SGD = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5)
LAMS_ADAM = (0.5, 1.0)


def epochs_for(ctx) -> int:
    return ctx.pick(tiny=2, quick=10, full=20)


def steps_per_epoch() -> int:
    return len(dataset("digits").X_train) // BATCH


@functools.lru_cache(maxsize=None)
def clr_run(epochs: int, seed: int, direction: str, schedule: tuple):
    """Train with CurvatureLR; ``schedule`` = ("const", λ) or ("geom", λ0, λ_end).

    Returns (History, per-step diagnostics dict of arrays: t, c, loss, predicted, realized, lam).
    """
    clr = need("curvlab.methods.curvature_lr")
    ds = dataset("digits")
    model = make_mlp(SIZES, "tanh")
    params = model.init_params(np.random.default_rng(seed))
    base = baseline("adam", 1.0) if direction == "adam" else baseline("sgd", 1.0)
    if schedule[0] == "const":
        sched = schedule[1]
    else:
        sched = clr.GeometricSchedule(schedule[1], schedule[2], total_steps=epochs * steps_per_epoch())
    opt = clr.CurvatureLR(base=base, schedule=sched, mode="adjoint")
    diag = {k: [] for k in ("t", "c", "loss", "predicted", "realized", "lam")}

    def step(p, st, Xb, yb):
        f, g = model.loss_and_grad(p, Xb, yb)
        upd, st, info = opt.update_with_info(g, st, p, model=model, X=Xb, y=yb, loss=f)
        for k, v in (("t", info.t), ("c", info.c), ("loss", f), ("predicted", info.predicted),
                     ("realized", info.realized), ("lam", info.lam)):
            diag[k].append(float(v))
        return p + upd, st

    _, h = train_epochs(model, params, step, opt.init(params), ds.X_train, ds.y_train, ds.X_test, ds.y_test,
                        epochs, BATCH, seed=100 + seed)
    return h, {k: np.asarray(v) for k, v in diag.items()}


@functools.lru_cache(maxsize=None)
def baseline_run(epochs: int, seed: int, name: str, lr: float, fit_only: bool = False):
    """A first-order baseline; ``fit_only`` trains on 90% of the training set and scores on the other 10%."""
    ds = dataset("digits")
    X, y, Xte, yte = ds.X_train, ds.y_train, ds.X_test, ds.y_test
    if fit_only:
        X, y, Xte, yte = validation_split(X, y, 0.1, seed=0)
    model = make_mlp(SIZES, "tanh")
    params = model.init_params(np.random.default_rng(seed))
    opt = baseline(name, lr)
    _, h = train_epochs(model, params, transform_stepper(model, opt), opt.init(params), X, y, Xte, yte, epochs,
                        BATCH, seed=100 + seed)
    return h


def judge(finals: dict, init: float, adam: dict) -> list[Verdict]:
    """C3, C5 from ``finals[λ] = per-seed final training losses`` with SGD directions (inf = diverged), the initial
    loss, and ``adam[λ]`` likewise with Adam directions (evidence only)."""
    lams = sorted(finals)
    conv = [lam for lam in lams if np.all(np.isfinite(finals[lam])) and np.all(np.asarray(finals[lam]) < init)]
    best = min(float(np.mean(finals[lam])) for lam in conv) if conv else np.inf
    away = [lam for lam in lams if lam not in conv or float(np.mean(finals[lam])) >= 2 * best]
    ev = ("SGD directions, final loss per λ: " + "; ".join(f"λ={lam:g}: {pm(finals[lam])}" for lam in lams)
          + " | Adam directions: " + "; ".join(f"λ={lam:g}: {pm(v)}" for lam, v in adam.items()))
    c5 = Verdict("C5", "supported" if conv and away else "not supported",
                 "distinct regimes must show: supported if some λ converges in every seed and some other λ either fails "
                 "(diverges or ends above the initial loss) or ends >= 2x the best converging λ's loss",
                 ev + f"; converging λ: {conv}, other regime: {away}")
    stable = [lam for lam in lams if lam in conv]
    means = [float(np.mean(finals[lam])) for lam in stable]
    monotone = len(means) >= 2 and (all(np.diff(means) <= 0) or all(np.diff(means) >= 0))
    edge = bool(conv) and max(lams) not in conv
    c3 = Verdict("C3", combine("supported" if monotone else "not supported", "supported" if edge else "not supported"),
                 "λ must act as one knob between convergence and exploration: (a) over the converging λ the mean final "
                 "loss is monotone in λ, (b) beyond some λ the runs stop converging; supported if both, mixed if one, "
                 "not supported if neither (exploration is read as loss that no longer decreases: the distance travelled "
                 "is not measured)",
                 f"(a) {'monotone' if monotone else 'not monotone'} over λ {stable}: "
                 + ", ".join(fmt(m) for m in means) + f"; (b) largest λ = {max(lams):g} "
                 + ("does not converge" if edge else "converges"))
    return [c3, c5]


def run(ctx) -> FigureResult:
    E = epochs_for(ctx)
    lams = ctx.pick(tiny=(0.5, 2.5), quick=LAMS_SGD, full=LAMS_SGD)
    lams_adam = ctx.pick(tiny=(0.5,), quick=LAMS_ADAM, full=LAMS_ADAM)
    cfgs = [("sgd", lam) for lam in lams] + [("adam", lam) for lam in lams_adam]
    runs = {}
    for direction, lam in ctx.progress(cfgs, desc="003 λ runs"):
        runs[(direction, lam)] = [clr_run(E, s, direction, ("const", lam)) for s in ctx.seeds]
    fig, axes = new_figure(3)
    rows = []
    S = steps_per_epoch()
    for i, ((direction, lam), outs) in enumerate(runs.items()):
        ls = "-" if direction == "sgd" else "--"
        label = f"{'SGD' if direction == 'sgd' else 'Adam'} dir., λ={lam:g}"
        color = f"C{i % 10}"
        hs = [o[0] for o in outs]
        band(axes[0], np.arange(E + 1), [h.train_loss for h in hs], label, color=color, ls=ls, log=True)
        ts = [o[1]["t"] for o in outs]
        cs = [o[1]["c"] for o in outs]
        ls_ = [o[1]["loss"] for o in outs]
        _, tm, _ = band(axes[1], np.arange(max(len(t) for t in ts)) / S, [np.abs(t) for t in ts], label,
                        color=color, ls=ls, log=True)
        _, cm, _ = band(axes[2], np.arange(max(len(c) for c in cs)) / S, [np.maximum(c, 1e-12) for c in cs], label,
                        color=color, ls=ls, log=True)
        lm, lsd = mean_std(ls_)
        for k in range(0, len(tm), 1 if ctx.full else 2):
            rows.append([direction, lam, k, float(tm[k]), float(cm[k]), float(lm[k]), float(lsd[k]), len(outs)])
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training loss (nats)")
    axes[0].legend(fontsize=6)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("epoch (per-step values)")
    axes[1].set_ylabel("step size |t_k| = λ|⟨g,d⟩|/c")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("epoch (per-step values)")
    axes[2].set_ylabel("curvature c_k = dᵀHd along d")
    finish_figure(fig, "Curvature-rescaled step: regimes of constant λ (digits, MLP 64-32-10, mean ± std)")

    def final(direction, lam):
        hs = [o[0] for o in runs[(direction, lam)]]
        return np.inf if any(h.diverged for h in hs) else float(np.mean([h.train_loss[-1] for h in hs]))

    stable = [lam for d, lam in cfgs if d == "sgd" and np.isfinite(final(d, lam))]
    div = [lam for d, lam in cfgs if d == "sgd" and not np.isfinite(final(d, lam))]
    conv = all(np.isfinite(final("sgd", lam)) and final("sgd", lam) < runs[("sgd", lam)][0][0].train_loss[0]
               for lam in lams if lam <= 1.0)
    checks = [Check("λ ≤ 1 with SGD directions decreases the loss", conv, "final < initial, no divergence")]
    adam = ", ".join(f"λ={lam:g}: {fmt(final('adam', lam))}" for lam in lams_adam)
    outcome = (f"With SGD directions λ in {stable} trained (final loss "
               f"{', '.join(fmt(final('sgd', l_)) for l_ in stable)}) and λ in {div or 'none'} diverged; with Adam "
               f"directions {adam} (inf = diverged)")
    def per_seed(direction, lam):
        return [float(o[0].train_loss[-1]) if not o[0].diverged else np.inf for o in runs[(direction, lam)]]

    verdicts = judge({lam: per_seed("sgd", lam) for lam in lams}, float(runs[cfgs[0]][0][0].train_loss[0]),
                     {lam: per_seed("adam", lam) for lam in lams_adam})
    return FigureResult(fig, rows, outcome, checks, {"sizes": SIZES, "batch": BATCH, "epochs": E, "lams_sgd": lams,
                                                     "lams_adam": lams_adam, "mode": "adjoint"},
                        f"{E} epochs, seeds {ctx.seeds} (full mode 20 epochs, 5 seeds)", verdicts=verdicts)
