"""E1.5: arTuRO ablations — the curvature model frozen (h = 0.1), the uncertainty frozen
(p = 1/var_init), ν coupled to η, a curvature floor, and the reference solver — against the full
method (exact mode), on digits.

:func:`opt_run` (cached per process) trains any of the arTuRO variants or a first-order
baseline; ``001_stability`` reuses it.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from ._common import (Check, FigureResult, FigureSpec, Verdict, band, baseline, combine, dataset, finish_figure,
                      fit_eval_split, fmt, make_mlp, need, new_figure, pm, train_epochs, vote)

SPEC = FigureSpec(
    name="001_ablations",
    paper="001",
    claims=("C1",),
    title="arTuRO ablations: curvature frozen, uncertainty frozen, coupled ν, h floor, reference solver",
    substitution="scikit-learn digits (stratified 80/20 split), ReLU MLP 64-64-10, batch 32, the official fmnist_cnn "
                 "hyperparameters (weight decay 0) instead of the paper's CNN/ResNet benchmarks",
    columns=("variant", "epoch", "train_loss_mean", "train_loss_std", "test_acc_mean", "test_acc_std", "n_seeds"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.arturo:ArTuRO"),
)

SIZES = (64, 64, 10)
BATCH = 32
H_FROZEN = 0.1
PRESET = "fmnist_cnn"
VARIANTS = ("full (exact)", "curvature frozen (h = 0.1)", "uncertainty frozen (p = 1/var_init)", "coupled ν (ν = η)",
            "h floor 1e-4", "reference solver")


@contextlib.contextmanager
def frozen_curvature(value: float):
    """Within the block, arTuRO's RLS filter keeps ``h = value`` (and no covariance of ``h``): it still filters
    the offset ``a`` of the gradient model ``a + h·x``, with a frozen slope."""
    kernels = need("curvlab.kernels")
    ar = need("curvlab.methods.arturo")
    orig = kernels.rls_filter_update
    orig_fused = ar.ArTuRO.fused_steps

    def patched(g, w, a, h, P00, P01, P11, **kw):
        out = orig(g, w, a, h, P00, P01, P11, **kw)
        h[...] = value
        P01[...] = 0.0
        P11[...] = 0.0
        return out

    kernels.rls_filter_update = patched
    ar.ArTuRO.fused_steps = False   # the fused warm step filters inside arturo_prepare: use the separate kernels
    try:
        yield
    finally:
        kernels.rls_filter_update = orig
        ar.ArTuRO.fused_steps = orig_fused


def make_optimizer(method: str, cfg: dict):
    """An arTuRO variant (``method`` in :data:`VARIANTS`) or a baseline ("Adam", "SGD", "SGD-momentum")."""
    if method in ("Adam", "SGD", "SGD-momentum"):
        return baseline({"Adam": "adam", "SGD": "sgd", "SGD-momentum": "momentum"}[method], **cfg)
    ar = need("curvlab.methods.arturo")
    kw = {"weight_decay": 0.0, "mode": "exact", **cfg}
    if method == "coupled ν (ν = η)":
        kw["nu"] = "coupled"
    elif method == "h floor 1e-4":
        kw["h_min"] = 1e-4
    elif method == "reference solver":
        kw["mode"] = "reference"
    return ar.ArTuRO.from_preset(PRESET, **kw)


#: dataset name -> (MLP sizes, batch); "digits" is this figure's setting, the others serve 001_generalization
SETUPS = {"digits": (SIZES, BATCH), "mnist": ((784, 64, 10), 64), "mnist1d": ((40, 100, 100, 10), 64)}


def mnist1d_available() -> bool:
    try:
        import mnist1d  # noqa: F401
    except Exception:  # not installed (it is in the figures extra), or its import of requests fails
        return False
    return True


@functools.lru_cache(maxsize=None)
def load_mnist1d():
    """MNIST-1D (Greydanus 2020) generated offline by the ``mnist1d`` package with its default arguments (seed 42):
    4,000 training and 1,000 test sequences of length 40, 10 classes, standardized by the package. No download:
    ``make_dataset`` builds it from the templates. The package seeds NumPy's and Python's global generators: they are
    restored afterwards."""
    import random
    import types

    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return types.SimpleNamespace(X_train=np.ascontiguousarray(d["x"], dtype=np.float64),
                                 y_train=np.asarray(d["y"], dtype=np.int64),
                                 X_test=np.ascontiguousarray(d["x_test"], dtype=np.float64),
                                 y_test=np.asarray(d["y_test"], dtype=np.int64))


@functools.lru_cache(maxsize=None)
def opt_run(epochs: int, seed: int, method: str, cfg_items: tuple = (), val: bool = False, dname: str = "digits",
            n_train: int | None = None):
    """Train the digits MLP with ``method``; returns (History, max KL/ε over the steps, fraction of the steps
    whose trust region was active, η > 0) — the last two NaN for a baseline.

    ``cfg_items``: sorted (key, value) overrides (``kl_bound`` for arTuRO, ``lr`` for baselines).
    ``val``: train on 90% of the training set and evaluate on the other 10% (tuning). ``dname``: a key of
    :data:`SETUPS` (dataset, MLP sizes and batch); ``n_train``: a fixed subset of the training set (None: all).
    """
    cfg = dict(cfg_items)
    ds = load_mnist1d() if dname == "mnist1d" else dataset(dname)
    X, y, Xte, yte = fit_eval_split(ds, n_train, val)
    sizes, batch = SETUPS[dname]
    model = make_mlp(sizes, "relu")
    params = model.init_params(np.random.default_rng(seed))
    opt = make_optimizer(method, cfg)
    is_ar = method not in ("Adam", "SGD", "SGD-momentum")
    freeze_p = method == "uncertainty frozen (p = 1/var_init)"
    kl_ratio = [0.0]
    active: list[bool] = []

    def step(p, st, Xb, yb):
        _, g = model.loss_and_grad(p, Xb, yb)
        upd, st, info = opt.update_with_info(g, st, p)
        if is_ar:
            if np.isfinite(info.kl):
                kl_ratio[0] = max(kl_ratio[0], info.kl / opt.kl_bound)
            active.append(not info.inactive)
            if freeze_p:
                st.p[...] = 1.0 / opt.var_init
        return p + upd, st

    ctx = frozen_curvature(H_FROZEN) if method == "curvature frozen (h = 0.1)" else contextlib.nullcontext()
    with ctx:
        _, h = train_epochs(model, params, step, opt.init(params), X, y, Xte, yte, epochs, batch, seed=100 + seed,
                            eval_n=2000)
    if not is_ar:
        return h, float("nan"), float("nan")
    return h, kl_ratio[0], float(np.mean(active)) if active else float("nan")


def judge(final: dict, acc: dict) -> list[Verdict]:
    """C1 from per-seed final training losses ``final[variant]`` (inf = diverged) and test accuracies ``acc``."""
    full = np.asarray(final["full (exact)"], float)
    parts, ev = [], []
    for v in ("curvature frozen (h = 0.1)", "uncertainty frozen (p = 1/var_init)"):
        abl = np.asarray(final[v], float)
        parts.append(vote(full <= abl))
        ev.append(f"{v}: {pm(abl)} (full <= ablation in {int(np.sum(full <= abl))}/{len(full)} seeds), test accuracy "
                  f"{pm(acc[v])}")
    others = "; ".join(f"{v} {pm(final[v])}" for v in VARIANTS[3:] if final.get(v))
    return [Verdict(
        "C1", combine(*parts),
        "the step accounts for curvature and uncertainty if removing either one hurts: for each ablation (h frozen at "
        "0.1; p frozen at 1/var_init) 'helps' = the full method's final training loss is <= the ablation's in >= 2/3 "
        "of the seeds (paired), 'does not help' = above in >= 2/3; supported if both help, not supported if neither "
        "does, else mixed",
        f"full (exact) {pm(full)}, test accuracy {pm(acc['full (exact)'])}; " + "; ".join(ev)
        + (f"; other variants: {others}" if others else ""))]


def run(ctx) -> FigureResult:
    E = ctx.pick(tiny=1, quick=8, full=20)
    runs = {v: [opt_run(E, s, v) for s in ctx.seeds] for v in ctx.progress(VARIANTS, desc="001 ablations")}
    fig, axes = new_figure(3)
    rows = []
    for i, (v, outs) in enumerate(runs.items()):
        hs = [o[0] for o in outs]
        _, m, s = band(axes[0], np.arange(E + 1), [h.train_loss for h in hs], v, color=f"C{i}", log=True)
        _, am, asd = band(axes[1], np.arange(E + 1), [h.test_acc for h in hs], v, color=f"C{i}")
        rows += [[v, int(k), float(m[k]), float(s[k]), float(am[k]), float(asd[k]), len(hs)] for k in range(len(m))]
    final = {v: [np.inf if o[0].diverged else float(o[0].train_loss[-1]) for o in outs] for v, outs in runs.items()}
    acc = {v: [float(o[0].test_acc[-1]) for o in outs if not o[0].diverged] for v, outs in runs.items()}
    ax = axes[2]
    fm = [np.mean([x for x in final[v] if np.isfinite(x)] or [np.nan]) for v in VARIANTS]
    fs = [np.std([x for x in final[v] if np.isfinite(x)] or [np.nan]) for v in VARIANTS]
    ax.bar(np.arange(len(VARIANTS)), fm, yerr=fs, color=[f"C{i}" for i in range(len(VARIANTS))])
    ax.set_xticks(np.arange(len(VARIANTS)))
    ax.set_xticklabels([v.replace(" (", "\n(") for v in VARIANTS], fontsize=7, rotation=20)
    ax.set_ylabel("final training loss (mean ± std)")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training loss (nats)")
    axes[0].legend(fontsize=6)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("test accuracy" + ("" if ctx.tiny else " (axis clipped at 0.5)"))
    axes[1].set_ylim(0.0 if ctx.tiny else 0.5, 1.0)
    axes[1].legend(fontsize=6)
    finish_figure(fig, "arTuRO ablations on digits (official fmnist_cnn hyperparameters, mean ± std over seeds)")
    init = runs["full (exact)"][0][0].train_loss[0]
    kl_exact = max(o[1] for v in VARIANTS if v != "reference solver" for o in runs[v])
    checks = [Check("the full method trains", all(np.isfinite(x) and x < init for x in final["full (exact)"]),
                    f"final losses {[fmt(x) for x in final['full (exact)']]} < initial {fmt(init)}"),
              Check("exact-mode steps respect the KL bound", kl_exact <= 1 + 1e-6,
                    f"largest KL/ε over all exact-mode steps {kl_exact:.9g}")]
    outcome = ("final training loss / test accuracy (mean ± std): "
               + "; ".join(f"{v} {pm(final[v])} / {pm(acc[v])}" for v in VARIANTS))
    hyper = {"sizes": SIZES, "batch": BATCH, "epochs": E, "preset": PRESET, "weight_decay": 0.0,
             "frozen_h": H_FROZEN, "frozen_p": "1/var_init = 100, reset after every step",
             "frozen_h_how": "the RLS filter runs, then h is reset to 0.1 and its covariance (P01, P11) to 0",
             "h_min": 1e-4}
    scale = f"{E} epochs, seeds {ctx.seeds} (full mode 20 epochs, 5 seeds)"
    return FigureResult(fig, rows, outcome, checks, hyper, scale, verdicts=judge(final, acc))
