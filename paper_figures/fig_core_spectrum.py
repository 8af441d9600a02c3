"""Core check: the Hessian spectral density of the reference MLP by stochastic Lanczos
quadrature (SLQ) at initialisation and after training, against the dense spectrum, and the
top eigenvalues by thick-restart Lanczos against ``numpy.linalg.eigvalsh``."""

from __future__ import annotations

import numpy as np
from scipy.integrate import trapezoid

from ._common import (Check, FigureResult, FigureSpec, baseline, dataset, finish_figure, fmt, make_mlp, need,
                      new_figure, subsample, train_epochs, transform_stepper)

SPEC = FigureSpec(
    name="core_spectrum",
    paper="core",
    claims=(),
    title="Hessian spectral density (SLQ) at initialisation and after training; top eigenvalues vs dense",
    substitution="scikit-learn digits (a fixed training subset), tanh MLP 64-n-10 trained with SGD; the Hessian of "
                 "the mean cross-entropy on that subset",
    columns=("stage", "kind", "x", "y"),
    requires=("curvlab.models.mlp:hessian_operator", "curvlab.linalg.slq:slq", "curvlab.linalg.lanczos:eigsh"),
)

K_TOP = 5


def run(ctx) -> FigureResult:
    mlp = need("curvlab.models.mlp")
    lz = need("curvlab.linalg.lanczos")
    slq = need("curvlab.linalg.slq")
    hidden = ctx.pick(tiny=4, quick=16, full=32)
    n_samples = ctx.pick(tiny=100, quick=400, full=1437)
    E = ctx.pick(tiny=1, quick=10, full=30)
    n_probes, steps = ctx.pick(tiny=(4, 20), quick=(10, 60), full=(30, 100))
    ds = dataset("digits")
    X, y = subsample(ds.X_train, ds.y_train, n_samples)
    model = make_mlp((64, hidden, 10), "tanh")
    p0 = model.init_params(np.random.default_rng(0))
    opt = baseline("sgd", 0.1)
    p1, h = train_epochs(model, p0, transform_stepper(model, opt), opt.init(p0), X, y, ds.X_test, ds.y_test, E, 32,
                         seed=1)
    rows = []
    fig, axes = new_figure(3)
    errs, l1s, tops = [], {}, {}
    for i, (stage, params) in enumerate(ctx.progress((("initialisation", p0), (f"after {E} epochs SGD", p1)),
                                                     desc="core spectra")):
        op = mlp.hessian_operator(model, params, X, y)
        H = model.dense_hessian(params, X, y)
        ev = np.linalg.eigvalsh(0.5 * (H + H.T))
        sd = slq.slq(op, n_probes, steps, rng=i)
        span = ev[-1] - ev[0]
        grid = np.linspace(ev[0] - 0.05 * span, ev[-1] + 0.05 * span, 400)
        sigma = 0.01 * span
        d_slq = np.asarray(sd.density(grid, sigma))
        d_dense = slq.exact_smoothed_density(ev, grid, sigma)
        l1s[stage] = float(trapezoid(np.abs(d_slq - d_dense), grid))
        axes[i].plot(grid, np.maximum(d_dense, 1e-6), "k-", lw=1.5, label="dense eigvalsh (smoothed)")
        axes[i].plot(grid, np.maximum(d_slq, 1e-6), "C1--", lw=1.5, label=f"SLQ ({n_probes} probes x {steps} steps)")
        axes[i].set_yscale("log")
        axes[i].set_xlabel("Hessian eigenvalue")
        axes[i].set_ylabel(f"spectral density (Gaussian σ = {sigma:.2g})")
        axes[i].set_title(f"{stage} (train loss {h.train_loss[0 if i == 0 else -1]:.3f})", fontsize=9)
        axes[i].legend(fontsize=7)
        rows += [[stage, "slq density", float(g), float(a)] for g, a in zip(grid[::4], d_slq[::4])]
        rows += [[stage, "dense density", float(g), float(a)] for g, a in zip(grid[::4], d_dense[::4])]
        res = lz.eigsh(op, k=K_TOP, which="LA", tol=1e-10, rng=i)
        top = np.sort(np.asarray(res.eigenvalues))[::-1]
        ref = ev[::-1][:K_TOP]
        errs.append(float(np.max(np.abs(top - ref) / np.abs(ref).max())))
        tops[stage] = (top, ref)
        axes[2].plot(range(1, K_TOP + 1), ref, "o-", color=f"C{i}", label=f"dense, {stage}")
        axes[2].plot(range(1, K_TOP + 1), top, "x", ms=10, color=f"C{i}", label=f"Lanczos, {stage}")
        rows += [[stage, "lanczos top", float(k + 1), float(v)] for k, v in enumerate(top)]
        rows += [[stage, "dense top", float(k + 1), float(v)] for k, v in enumerate(ref)]
    axes[2].set_xlabel("eigenvalue index (largest first)")
    axes[2].set_ylabel("Hessian eigenvalue")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=7)
    finish_figure(fig, f"Hessian spectrum of the MLP 64-{hidden}-10 ({model.n_params} parameters) on {n_samples} "
                       "digits samples")
    worst = max(errs)
    checks = [Check("Lanczos top eigenvalues match dense", worst < 1e-8, f"max relative error {worst:.1e}")]
    st = list(tops)
    outcome = (f"Lanczos top-{K_TOP} eigenvalues match eigvalsh to {worst:.0e}; the top eigenvalue goes from "
               f"{fmt(tops[st[0]][1][0])} at initialisation to {fmt(tops[st[1]][1][0])} after training; SLQ density "
               f"L1 distance to the smoothed dense density {fmt(l1s[st[0]], 2)} (init) and {fmt(l1s[st[1]], 2)} "
               "(trained)")
    hyper = {"hidden": hidden, "n_samples": n_samples, "epochs": E, "sgd_lr": 0.1, "batch": 32, "n_probes": n_probes,
             "lanczos_steps": steps, "k_top": K_TOP}
    return FigureResult(fig, rows, outcome, checks, hyper,
                        f"hidden width {hidden} ({model.n_params} parameters), {n_samples} samples, {E} epochs "
                        "(full mode: 64-32-10, the whole training split, 30 probes x 100 steps)", seeds_used=[0])
