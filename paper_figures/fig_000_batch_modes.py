"""E0.3 in full: exact stochastic Newton (abs) per sample, in batch mode "average" (B = 16) and
"exact_block" (B = 4), against SGD (B = 1), SGD-momentum and Adam (B = 16), over epochs and over
wall-clock time, with the training loss compared at equal time."""

from __future__ import annotations

import functools

import numpy as np

from ._common import (Check, FigureResult, FigureSpec, Verdict, band, baseline, dataset, edge_note, finish_figure,
                      fit_eval_split, fmt, make_mlp, need, new_figure, pm, train_epochs, transform_stepper, vote)

SPEC = FigureSpec(
    name="000_batch_modes",
    paper="000",
    claims=("C1", "C6"),
    title="Newton batch modes (average, exact_block) vs first-order methods, per epoch and at equal wall-clock",
    substitution="scikit-learn digits (X/16, stratified 80/20 split; a fixed training subset in quick mode), tanh MLP "
                 "64-32-10, NumPy on a shared CPU (wall-clock is noisy: the CPU time of this process is the clock)",
    columns=("method", "epoch", "cpu_time_s_mean", "train_loss_mean", "train_loss_std", "test_acc_mean",
             "test_acc_std", "n_seeds"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.exact_newton:ExactNewton"),
)

SIZES = (64, 32, 10)
NEWTON_GRID = ((1.0, 0.1), (1.0, 0.3), (3.0, 0.1), (3.0, 0.3))  # (λ, η), as in the specification
# momentum (0.003-0.1) and Adam (1e-3-3e-2) were tuned to their upper edges: shifted up one step
LR_GRIDS = {"sgd": (0.01, 0.03, 0.1, 0.3), "momentum": (0.01, 0.03, 0.1, 0.3), "adam": (3e-3, 1e-2, 3e-2, 0.1)}
NEWTON = {"Newton per-sample (B=1)": ("average", 1), "Newton average (B=16)": ("average", 16),
          "Newton exact_block (B=4)": ("exact_block", 4)}
FIRST = {"SGD (B=1)": ("sgd", 1), "SGD-momentum (B=16)": ("momentum", 16), "Adam (B=16)": ("adam", 16)}
LOSS_FACTOR = 1.5
ACC_MARGIN = 0.02


def plan(ctx) -> tuple[int | None, int]:
    return ctx.pick(tiny=150, quick=400, full=None), ctx.pick(tiny=1, quick=5, full=20)


@functools.lru_cache(maxsize=None)
def bm_run(n_train, epochs: int, seed: int, key: tuple, val: bool = False):
    """key: ("newton", batch_mode, B, lam, eta) | (name, B, lr). Returns (History, per-epoch CPU seconds)."""
    import time

    ds = dataset("digits")
    X, y, Xte, yte = fit_eval_split(ds, n_train, val)
    model = make_mlp(SIZES, "tanh")
    params = model.init_params(np.random.default_rng(seed))
    if key[0] == "newton":
        en = need("curvlab.methods.exact_newton")
        opt = en.ExactNewton(lr=key[4], lam=key[3], adjustment="abs", batch_mode=key[1])

        def step(p, st, Xb, yb):
            _, g = model.loss_and_grad(p, Xb, yb)
            upd, st = opt.update(g, st, p, model=model, X=Xb, y=yb)
            return p + upd, st

        batch = key[2]
    else:
        opt = baseline(key[0], key[2])
        step = transform_stepper(model, opt)
        batch = key[1]
    cpu = [0.0]
    spent = {"t": 0.0}

    def timed(p, st, Xb, yb):
        c = time.process_time()
        out = step(p, st, Xb, yb)
        spent["t"] += time.process_time() - c
        return out

    def on_epoch(ep, p, st, h):
        cpu.append(spent["t"])

    _, h = train_epochs(model, params, timed, opt.init(params), X, y, Xte, yte, epochs, batch, seed=100 + seed,
                        on_epoch=on_epoch)
    return h, np.asarray(cpu)


def loss_at(cpu: np.ndarray, loss: list, t: float) -> float:
    """Training loss reached after ``t`` CPU seconds of optimizer steps (linear in time within an epoch)."""
    loss = np.asarray(loss, float)
    n = min(len(cpu), len(loss))
    if n == 0:
        return np.inf
    if t >= cpu[n - 1]:
        return float(loss[n - 1])
    return float(np.interp(t, cpu[:n], loss[:n]))


def judge(d: dict) -> list[Verdict]:
    """C1 (cost and performance: loss at equal CPU time) and C6 (test accuracy) from per-seed numbers.

    d: t_eq, newton_name, newton_at (per-seed loss of the best Newton mode at t_eq), first_name, first_at,
    newton_acc, first_acc (per-seed final test accuracy of the most accurate Newton mode / first-order method,
    named newton_acc_name / first_acc_name),
    time_ratio (CPU per epoch of that Newton mode / of that first-order method), notes.
    """
    na, fa = np.asarray(d["newton_at"], float), np.asarray(d["first_at"], float)
    notes = ("; " + "; ".join(d["notes"])) if d.get("notes") else ""
    c1 = Verdict("C1", vote(na <= LOSS_FACTOR * fa),
                 f"cost and performance together: given the CPU time the best first-order method used for its whole "
                 f"run (t = {d['t_eq']:.2g} s), the best Newton batch mode's training loss is within {LOSS_FACTOR}x "
                 "that method's in "
                 ">= 2/3 of the seeds (paired), not supported if above in >= 2/3, else mixed",
                 f"{d['newton_name']} {pm(na)} vs {d['first_name']} {pm(fa)} at equal time; per epoch it costs "
                 f"{fmt(d['time_ratio'], 2)}x the CPU time" + notes)
    nacc, facc = np.asarray(d["newton_acc"], float), np.asarray(d["first_acc"], float)
    c6 = Verdict("C6", vote(nacc >= facc - ACC_MARGIN),
                 f"per epoch budget: supported if the best Newton batch mode's final test accuracy is within "
                 f"{ACC_MARGIN} of the best first-order method's in >= 2/3 of the seeds, not supported if below that "
                 "in >= 2/3, else mixed",
                 f"test accuracy {d['newton_acc_name']} {pm(nacc)} vs {d['first_acc_name']} {pm(facc)}")
    return [c1, c6]


def _score(n, E, key) -> float:
    h = bm_run(n, E, 0, key, True)[0]
    return np.inf if h.diverged else h.test_loss[-1]


def run(ctx) -> FigureResult:
    n, E = plan(ctx)
    keys, chosen, notes = {}, {}, []
    grid_n = NEWTON_GRID if not ctx.tiny else NEWTON_GRID[:1]
    for name, (mode, B) in ctx.progress(NEWTON.items(), desc="000 batch modes: tune Newton"):
        lam, eta = min(grid_n, key=lambda c: _score(n, E, ("newton", mode, B, c[0], c[1])))
        keys[name] = ("newton", mode, B, lam, eta)
        chosen[name] = {"lam": lam, "eta": eta}
        if not ctx.tiny:
            notes += [x for x in (edge_note(lam, sorted({c[0] for c in NEWTON_GRID}), f"{name} λ"),
                                  edge_note(eta, sorted({c[1] for c in NEWTON_GRID}), f"{name} η")) if x]
    for name, (opt, B) in ctx.progress(FIRST.items(), desc="000 batch modes: tune baselines"):
        grid = LR_GRIDS[opt] if not ctx.tiny else LR_GRIDS[opt][1:2]
        lr = min(grid, key=lambda v: _score(n, E, (opt, B, v)))
        keys[name] = (opt, B, lr)
        chosen[name] = {"lr": lr}
        if (x := edge_note(lr, LR_GRIDS[opt], f"{name} lr")) and not ctx.tiny:
            notes.append(x)
    res = {name: [bm_run(n, E, s, key) for s in ctx.seeds] for name, key in
           ctx.progress(keys.items(), desc="000 batch modes: runs")}
    fig, axes = new_figure(3)
    rows = []
    for i, (name, outs) in enumerate(res.items()):
        hs = [o[0] for o in outs]
        ls = "-" if name.startswith("Newton") else "--"
        x, m, sd = band(axes[0], np.arange(E + 1), [h.train_loss for h in hs], name, color=f"C{i}", ls=ls, log=True)
        cpu = np.mean([o[1][: len(m)] for o in outs if len(o[1]) >= len(m)] or [np.arange(len(m), dtype=float)], 0)
        band(axes[1], cpu, [h.train_loss for h in hs], name, color=f"C{i}", ls=ls, log=True)
        _, am, asd = band(axes[2], np.arange(E + 1), [h.test_acc for h in hs], name, color=f"C{i}", ls=ls)
        rows += [[name, int(k), float(cpu[k]), float(m[k]), float(sd[k]), float(am[k]), float(asd[k]), len(hs)]
                 for k in range(len(m))]
    for ax, xl in zip(axes, ("epoch", "CPU time of the optimizer steps (s)", "epoch")):
        ax.set_xlabel(xl)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xscale("log")
    axes[0].set_ylabel("training loss (nats)")
    axes[1].set_ylabel("training loss (nats)")
    axes[2].set_ylabel("test accuracy")
    axes[2].set_ylim(0.0, 1.0)
    for ax in axes:
        ax.legend(fontsize=7)
    finish_figure(fig, "Exact Newton batch modes vs first-order methods (digits, MLP 64-32-10, mean ± std)")

    def final_loss(name):
        return [o[0].final_loss() for o in res[name]]

    def final_acc(name):
        return [o[0].test_acc[-1] if not o[0].diverged else 0.0 for o in res[name]]

    total = {name: float(np.mean([o[1][-1] for o in outs])) for name, outs in res.items()}
    nt = [k for k in res if k.startswith("Newton") and k != "Newton per-sample (B=1)"]
    fo = list(FIRST)
    best_fo = min(fo, key=lambda k: np.mean(final_loss(k)))
    t_eq = total[best_fo]  # Newton gets the CPU time the best first-order method used for its whole run
    at = {name: [loss_at(o[1], o[0].train_loss, t_eq) for o in outs] for name, outs in res.items()}
    best_nt = min(nt, key=lambda k: np.mean(at[k]))
    best_nt_acc = max(nt, key=lambda k: np.mean(final_acc(k)))
    best_fo_acc = max(fo, key=lambda k: np.mean(final_acc(k)))
    per_epoch = {k: total[k] / E for k in res}
    verdicts = judge({"t_eq": t_eq, "newton_name": best_nt, "newton_at": at[best_nt], "first_name": best_fo,
                      "first_at": at[best_fo], "newton_acc": final_acc(best_nt_acc), "first_acc": final_acc(best_fo_acc),
                      "first_acc_name": best_fo_acc, "newton_acc_name": best_nt_acc, "time_ratio": per_epoch[best_nt] / per_epoch[best_fo],
                      "notes": notes})
    init = res[best_nt][0][0].train_loss[0]
    checks = [Check("both batch modes train", all(np.isfinite(np.mean(final_loss(k))) and np.mean(final_loss(k)) < init
                                                  for k in nt), "final < initial loss for average and exact_block")]
    outcome = ("Final train loss / test accuracy: "
               + "; ".join(f"{k} {fmt(np.mean(final_loss(k)))} / {np.mean(final_acc(k)):.3f}" for k in res)
               + "; CPU s per epoch: " + ", ".join(f"{k.split(' (')[0]} {fmt(v, 2)}" for k, v in per_epoch.items())
               + f"; at equal CPU time {t_eq:.2g} s: " + ", ".join(f"{k.split(' (')[0]} {fmt(np.mean(v))}"
                                                                 for k, v in at.items()))
    hyper = {"n_train": n, "epochs": E, "newton_grid": NEWTON_GRID, "lr_grids": LR_GRIDS, "chosen": chosen,
             "selection": "validation loss (10% of the training subset), seed 0, 4 configurations per method"}
    scale = (f"{n or 'all 1437'} training samples, {E} epochs, seeds {ctx.seeds}; equal tuning budgets (4 "
             "configurations each); time = CPU seconds spent in optimizer steps (evaluation excluded); full mode: all "
             "samples, 20 epochs")
    return FigureResult(fig, rows, outcome, checks, hyper, scale, verdicts=verdicts)
