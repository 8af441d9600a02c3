"""E2.5: why a global smoothness constant is too strong (claim C1) — the Euclidean smoothness
(top Hessian eigenvalue) and the layer-wise bound L_1(w) when the layers above the first are
scaled by α, at initialization and after training; and training with a step from a global
constant (GD with lr = 1/L₀, L₀ measured at initialization) against the layer-wise DSGD step
(bound rule), DSGD with a backtracking L̂_i, and all-layer spectral descent (ℓ∞ combination)."""

from __future__ import annotations

import functools

import numpy as np

from ._common import (Check, FigureResult, FigureSpec, Verdict, combine, dataset, edge_note, finish_figure, fmt,
                      make_mlp, mean_std, need, new_figure, pm, vote)

SPEC = FigureSpec(
    name="002_smoothness",
    paper="002",
    claims=("C1",),
    title="global smoothness vs layer-wise constants: scaling probe and training",
    substitution="scikit-learn digits (X/16, stratified 80/20 split), tanh MLP 64-32-32-10, full batch; the probe "
                 "scales the layers above the first by α (the function changes: a probe, not training)",
    columns=("panel", "series", "x", "mean", "std", "n_seeds"),
    requires=("curvlab.models.mlp:hessian_operator", "curvlab.methods.dsgd:dsgd_train", "curvlab.linalg:eigsh"),
)

SIZES = (64, 32, 32, 10)
ALPHAS = (0.5, 1.0, 2.0, 4.0, 8.0)
GD_TRAIN_LR = 1.0  # the GD run that produces the "after training" weights of the probe
LINF_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # 0.1 won at the edge of 0.003-0.1: widened
GROWTH = 10.0


def _model():
    return make_mlp(SIZES, "tanh")


def top_eig(model, params, X, y) -> float:
    """Largest Hessian eigenvalue of the full-batch loss (Lanczos on Hessian-vector products)."""
    mlp = need("curvlab.models.mlp")
    eigsh = need("curvlab.linalg", "eigsh")
    r = eigsh(mlp.hessian_operator(model, params, X, y), k=1, which="LA", tol=1e-6)
    return float(np.asarray(r.eigenvalues)[0])


def scaled(model, params, alpha: float):
    mats = [w.copy() for w in model.layout.unpack(params)]
    for W in mats[1:]:
        W *= alpha
    return model.layout.pack(mats)


def layer1_probe(model, params, X, y, rng, n_dir: int) -> tuple[float, float]:
    """(bound L_1(w), worst observed curvature of layer 1 along n_dir random directions and the dual direction,
    dᵀH₁₁d/‖d‖²_op)."""
    dsgd = need("curvlab.methods.dsgd")
    duality = need("curvlab.linalg.duality")
    mats = model.layout.unpack(params)
    L = dsgd.mlp_layer_smoothness_bound(mats, X)
    _, g = model.loss_and_grad(params, X, y)
    G1 = model.layout.unpack(g)[0]
    dirs = [rng.standard_normal(G1.shape) for _ in range(n_dir)] + [duality.duality_map(G1, "spectral")[0]]
    worst = 0.0
    for U in dirs:
        d = np.zeros_like(params)
        d[model.layout.slice(0)] = U.ravel()
        c = float(model.curvature(params, X, y, d))
        worst = max(worst, c / duality.layer_norm(U, "spectral") ** 2)
    return float(L[0]), worst


@functools.lru_cache(maxsize=None)
def probe(seed: int, train_steps: int, n_dir: int):
    """Per α: (top Hessian eigenvalue, L_1 bound, worst layer-1 curvature) at init and after GD training."""
    ds = dataset("digits")
    model = _model()
    p0 = model.init_params(np.random.default_rng(seed))
    p = p0.copy()
    with np.errstate(all="ignore"):
        for _ in range(train_steps):
            _, g = model.loss_and_grad(p, ds.X_train, ds.y_train)
            p = p - GD_TRAIN_LR * g
    out = {}
    rng = np.random.default_rng(700 + seed)
    for when, w in (("init", p0), ("trained", p)):
        for a in ALPHAS:
            q = scaled(model, w, a)
            lam = top_eig(model, q, ds.X_train, ds.y_train)
            L1, emp = layer1_probe(model, q, ds.X_train, ds.y_train, rng, n_dir)
            out[(when, a)] = (lam, L1, emp)
    return out


@functools.lru_cache(maxsize=None)
def train_global(seed: int, steps: int):
    """GD with lr = 1/L₀ (L₀ = top Hessian eigenvalue at initialization); counts the steps where the descent lemma
    with L₀, f(w − g/L₀) ≤ f(w) − ‖g‖²/(2L₀), fails."""
    ds = dataset("digits")
    model = _model()
    p = model.init_params(np.random.default_rng(seed))
    L0 = top_eig(model, p, ds.X_train, ds.y_train)
    losses, viol = [], 0
    f, g = model.loss_and_grad(p, ds.X_train, ds.y_train)
    for _ in range(steps):
        losses.append(f)
        p = p - g / L0
        f_new, g_new = model.loss_and_grad(p, ds.X_train, ds.y_train)
        if f_new > f - float(g @ g) / (2 * L0) + 1e-12 * abs(f):
            viol += 1
        f, g = f_new, g_new
    losses.append(f)
    return np.asarray(losses), L0, viol


@functools.lru_cache(maxsize=None)
def train_dsgd_bound(seed: int, steps: int):
    """Greedy DSGD, spectral norms, rigorous bound rule, s = 1; returns (losses, min actual/guaranteed, L history)."""
    dsgd = need("curvlab.methods.dsgd")
    ds = dataset("digits")
    model = _model()
    p = model.init_params(np.random.default_rng(seed))
    opt = dsgd.DSGD(norm="spectral", step=1.0, rule="bound", shapes=model.layout)
    with np.errstate(all="ignore"):
        h = dsgd.dsgd_train(opt, p, model.loss_and_grad, ds.X_train, ds.y_train, steps)
    ok = h.guaranteed > 0
    ratio = float(np.min(h.actual[ok] / h.guaranteed[ok])) if ok.any() else float("nan")
    return np.asarray(h.loss), ratio, np.asarray(h.L)


@functools.lru_cache(maxsize=None)
def train_dsgd_backtracking(seed: int, steps: int, L_init: float = 1.0):
    """Greedy DSGD (spectral, s = 1) with per-layer L̂_i: the step is retried with L̂_j doubled until
    f(w⁺) ≤ f(w) − ‖G_j‖²_*/(2L̂_j) holds (at most 50 doublings), then L̂_j ← 0.9·L̂_j.

    Returns (losses, L̂ history (T, K), failed steps, total doublings)."""
    dsgd = need("curvlab.methods.dsgd")
    ds = dataset("digits")
    model = _model()
    p = model.init_params(np.random.default_rng(seed))
    K = len(SIZES) - 1
    opt = dsgd.DSGD(norm="spectral", step=1.0, rule="constant", constants=np.full(K, L_init), shapes=model.layout)
    st = opt.init(p)
    Lh = np.full(K, float(L_init))
    losses, hist, failed, doublings = [], [], 0, 0
    f, g = model.loss_and_grad(p, ds.X_train, ds.y_train)
    with np.errstate(all="ignore"):
        for _ in range(steps):
            losses.append(f)
            for _try in range(51):
                upd, st_new, info = opt.update_with_info(g, st, p, constants=Lh)
                if info.chosen < 0:
                    break
                f_new = model.loss(p + upd, ds.X_train, ds.y_train)
                if np.isfinite(f_new) and f_new <= f - info.guaranteed + 1e-12 * abs(f):
                    break
                Lh[info.chosen] *= 2.0
                doublings += 1
            else:
                failed += 1
                hist.append(Lh.copy())
                continue
            if info.chosen >= 0:
                Lh[info.chosen] *= 0.9
                p, st = p + upd, st_new
                f, g = model.loss_and_grad(p, ds.X_train, ds.y_train)
            hist.append(Lh.copy())
    losses.append(f)
    return np.asarray(losses), np.asarray(hist), failed, doublings


@functools.lru_cache(maxsize=None)
def train_linf(seed: int, steps: int, t: float):
    """All-layer spectral descent, ℓ∞ combination: W_i ← W_i − t·U_iV_iᵀ for every layer i (polar factor of G_i)."""
    duality = need("curvlab.linalg.duality")
    ds = dataset("digits")
    model = _model()
    p = model.init_params(np.random.default_rng(seed))
    losses = []
    with np.errstate(all="ignore"):
        for _ in range(steps):
            f, g = model.loss_and_grad(p, ds.X_train, ds.y_train)
            losses.append(f)
            if not np.isfinite(f) or f > 50:
                return np.asarray(losses)
            Gs = model.layout.unpack(g)
            p = p - t * model.layout.pack([duality.polar_factor(G).Q for G in Gs])
        losses.append(model.loss(p, ds.X_train, ds.y_train))
    return np.asarray(losses)


def judge(growth: dict, viol: list, dsgd_vs_global: tuple) -> list[Verdict]:
    """C1 from ``growth[when]`` = per-seed ratio max/min over α of the top Hessian eigenvalue, ``viol`` = per-seed
    descent-lemma violations of GD with lr = 1/L₀, and (DSGD, global-step) per-seed final losses (evidence)."""
    va = vote([all(g[i] >= GROWTH for g in growth.values()) for i in range(len(next(iter(growth.values()))))])
    vb = vote([v > 0 for v in viol])
    d, gl = dsgd_vs_global
    return [Verdict(
        "C1", combine(va, vb),
        f"(a) no single constant covers the weights: scaling the layers above the first by α ∈ {list(ALPHAS)} changes "
        f"the top Hessian eigenvalue (the Euclidean smoothness constant at w) by >= {GROWTH:g}x, at initialization and "
        "after training, in >= 2/3 of the seeds; (b) a constant measured at initialization is not a valid global "
        "constant along training: GD with lr = 1/L₀ breaks the descent lemma with L₀ at some step in >= 2/3 of the "
        "seeds (not supported if it holds at every step in >= 2/3); supported if (a) and (b) are, not supported if "
        "neither, else mixed",
        "; ".join(f"eigenvalue growth over α {w}: {pm(g, 3)}x" for w, g in growth.items())
        + f"; descent-lemma violations of GD 1/L₀: {pm(viol, 2)} per run (per seed {list(viol)}); final loss DSGD "
        f"(bound rule) {pm(d)} vs GD 1/L₀ {pm(gl)}")]


def run(ctx) -> FigureResult:
    T = ctx.pick(tiny=10, quick=200, full=1000)
    T_probe = ctx.pick(tiny=5, quick=200, full=300)
    n_dir = ctx.pick(tiny=2, quick=8, full=32)
    seeds = ctx.seeds
    probes = [probe(s, T_probe, n_dir) for s in ctx.progress(seeds, desc="002 smoothness probe")]
    glob = [train_global(s, T) for s in seeds]
    bound = [train_dsgd_bound(s, T) for s in seeds]
    bt = [train_dsgd_backtracking(s, T) for s in seeds]
    lin_scores = [(lambda L: float(L[-1]) if len(L) == T + 1 and np.isfinite(L[-1]) else np.inf)(train_linf(0, T, t))
                  for t in LINF_GRID]
    t_best = LINF_GRID[int(np.argmin(lin_scores))]
    lin = [train_linf(s, T, t_best) for s in seeds]
    rows = []
    fig, axes = new_figure(3)
    ax = axes[0]
    for when, ls in (("init", "-"), ("trained", "--")):
        for k, (name, color) in enumerate((("top Hessian eigenvalue (Euclidean)", "C0"), ("L_1 bound", "C1"),
                                           ("worst observed layer-1 curvature", "C2"))):
            vals = [[pr[(when, a)][k] for a in ALPHAS] for pr in probes]
            m, s = mean_std(vals)
            ax.errorbar(np.log2(ALPHAS), m, yerr=s, ls=ls, color=color, marker="o", ms=3,
                        label=f"{name}, {'init' if when == 'init' else f'after {T_probe} GD steps'}")
            rows += [["probe", f"{name} ({when})", a, float(m[i]), float(s[i]), len(vals)] for i, a in enumerate(ALPHAS)]
    ax.set_xticks(np.log2(ALPHAS), [f"{a:g}" for a in ALPHAS])
    ax.set_yscale("log")
    ax.set_xlabel("α (layers 2..K scaled by α)")
    ax.set_ylabel("smoothness / curvature")
    ax.legend(fontsize=5.5)
    ax = axes[1]
    series = {"DSGD greedy, bound rule, s = 1": [b[0] for b in bound],
              "DSGD greedy, backtracking L̂": [b[0] for b in bt],
              "GD, lr = 1/L₀ (global constant at init)": [g[0] for g in glob],
              f"all-layer spectral (ℓ∞), t = {t_best:g} (tuned)": lin}
    for i, (name, curves) in enumerate(series.items()):
        m, s = mean_std(curves)
        x = np.arange(len(m))
        ax.plot(x, m, color=f"C{i}", label=name)
        ax.fill_between(x, np.maximum(m - s, m * 0.05), m + s, color=f"C{i}", alpha=0.2, lw=0)
        rows += [["training", name, int(k), float(m[k]), float(s[k]), len(curves)] for k in range(0, len(m), 5)]
    ax.set_yscale("log")
    ax.set_xlabel("iteration (full batch)")
    ax.set_ylabel("training loss (nats)")
    ax.legend(fontsize=6)
    ax = axes[2]
    Lb = np.mean([b[2] for b in bound], axis=0)  # (T, K) bound-rule constants along its run
    Lbt = np.mean([b[1] for b in bt], axis=0)
    for i in range(Lb.shape[1]):
        ax.plot(Lb[:, i], color=f"C{i}", label=f"layer {i + 1}: bound L_{i + 1}")
        ax.plot(Lbt[:, i], color=f"C{i}", ls="--", label=f"layer {i + 1}: backtracking L̂_{i + 1}")
        rows += [["constants", f"bound L_{i + 1}", int(k), float(Lb[k, i]), 0.0, len(bound)] for k in range(0, T, 5)]
        rows += [["constants", f"backtracking L_{i + 1}", int(k), float(Lbt[k, i]), 0.0, len(bt)]
                 for k in range(0, T, 5)]
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("layer constant (mean over seeds)")
    ax.legend(fontsize=6)
    finish_figure(fig, "Global vs layer-wise smoothness on digits (MLP 64-32-32-10, mean ± std over seeds)")

    growth = {w: [max(pr[(w, a)][0] for a in ALPHAS) / min(pr[(w, a)][0] for a in ALPHAS) for pr in probes]
              for w in ("init", "trained")}
    viol = [g[2] for g in glob]
    fin = lambda L: float(L[-1]) if len(L) == T + 1 and np.isfinite(L[-1]) else np.inf  # noqa: E731
    ratios = [b[1] for b in bound]
    bound_ok = [pr[(w, a)][1] >= pr[(w, a)][2] * (1 - 1e-9) for pr in probes for w in ("init", "trained")
                for a in ALPHAS]
    checks = [Check("DSGD's guarantee holds at every step (actual >= guaranteed)",
                    all(np.isfinite(r) and r >= 1 - 1e-9 for r in ratios),
                    f"min actual/guaranteed per seed {[fmt(r) for r in ratios]}"),
              Check("the L_1 bound covers every observed layer-1 curvature", all(bound_ok),
                    f"{sum(bound_ok)}/{len(bound_ok)} (seed, weights, α) cases")]
    bt_fail = [b[2] for b in bt]
    note = edge_note(t_best, LINF_GRID, "ℓ∞ step t")
    outcome = ("top Hessian eigenvalue over α 0.5→8: init " + " → ".join(
        fmt(float(np.mean([pr[("init", a)][0] for pr in probes]))) for a in ALPHAS)
        + f"; after {T_probe} GD steps " + " → ".join(
        fmt(float(np.mean([pr[("trained", a)][0] for pr in probes]))) for a in ALPHAS)
        + f"; L₀ at init {pm([g[1] for g in glob])}; GD 1/L₀ descent-lemma violations {pm(viol, 2)}; final loss after "
        f"{T} iterations: DSGD bound {pm([fin(b[0]) for b in bound])}, DSGD backtracking "
        f"{pm([fin(b[0]) for b in bt])} ({pm([b[3] for b in bt], 2)} doublings, failed steps {sum(bt_fail)}), GD 1/L₀ "
        f"{pm([fin(g[0]) for g in glob])}, ℓ∞ spectral t = {t_best:g} {pm([fin(x) for x in lin])}"
        + (f"; {note}" if note else ""))
    hyper = {"sizes": SIZES, "alphas": ALPHAS, "iterations": T, "probe_training": f"{T_probe} GD steps, lr {GD_TRAIN_LR}",
             "random_directions": n_dir, "linf_grid": LINF_GRID, "linf_t": t_best, "backtracking":
             "L̂ from 1.0, x2 until f(w+) <= f - ||G_j||*^2/(2 L̂_j) (<= 50), then x0.9", "dsgd_norm": "spectral, s = 1"}
    scale = (f"{T} full-batch iterations, probe after {T_probe} GD steps, {n_dir} random directions, seeds {seeds} "
             "(full mode 1000 iterations, 300 GD steps, 32 directions, 5 seeds)")
    verdicts = judge(growth, viol, ([fin(b[0]) for b in bound], [fin(g[0]) for g in glob]))
    return FigureResult(fig, rows, outcome, checks, hyper, scale, verdicts=verdicts)
