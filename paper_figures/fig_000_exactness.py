"""E0.1: closed-form layer Hessian blocks, their eigenvalues and the damped Newton directions
against dense float64 linear algebra, as a function of the hidden width."""

from __future__ import annotations

import time

import numpy as np

from ._common import Check, FigureResult, FigureSpec, Verdict, finish_figure, make_mlp, new_figure, need

SPEC = FigureSpec(
    name="000_exactness",
    paper="000",
    claims=("C2", "C3"),
    title="closed-form layer eigenvalues and Newton directions vs dense float64",
    substitution="random tanh and ReLU nets 8-n-5 (n = 2..32) and one depth-3 net 8-n-n-5 on Gaussian inputs with "
                 "random labels, batches B in {1, 4}; the paper's networks and data are unknown here",
    columns=("width", "net", "batch", "quantity", "max_rel_error", "time_closed_ms", "time_dense_ms"),
    requires=("curvlab.models.mlp:MLP", "curvlab.methods.exact_newton:exact_newton_directions",
              "curvlab.models.layer_hessians:layer_hessian_factors"),
)

QUANTITIES = ("layer block", "eigenvalues", "Newton raw", "Newton abs")
LAM = 1.0


def _rel(diff: float, scale: float) -> float:
    """diff / scale, with 0/0 = 0 (a dead ReLU layer has a zero block and a zero direction)."""
    return 0.0 if diff == 0.0 else float(diff / scale) if scale > 0 else float("inf")


def _errors(model, params, X, y):
    lh = need("curvlab.models.layer_hessians")
    en = need("curvlab.methods.exact_newton")
    t0 = time.perf_counter()
    f = lh.layer_hessian_factors(model, params, X, y)
    Ws = model.layout.unpack(params)
    D = {rule: en.exact_newton_directions(f, Ws, lam=LAM, adjustment=rule, batch_mode="exact_block",
                                          block_spectrum="batch") for rule in ("raw", "abs")}
    t_closed = time.perf_counter() - t0
    H = model.dense_hessian(params, X, y)
    _, g = model.loss_and_grad(params, X, y)
    err = dict.fromkeys(QUANTITIES, 0.0)
    t_dense = 0.0
    for l in range(model.n_layers):
        sl = model.layout.slice(l)
        Hl = H[sl, sl]
        I = np.eye(len(Hl))
        t1 = time.perf_counter()
        w, U = np.linalg.eigh(Hl)
        dense = {"raw": np.linalg.solve(Hl + LAM * I, -g[sl]),
                 "abs": (U / (np.abs(w) + LAM)) @ (U.T @ -g[sl])}
        t_dense += time.perf_counter() - t1
        blk = lh.layer_hessian_block(f[l])
        err["layer block"] = max(err["layer block"], _rel(np.abs(blk.to_dense() - Hl).max(), np.abs(Hl).max()))
        ev = np.sort(np.asarray(lh.layer_hessian_block(f[l], LAM).eigvalsh()))
        err["eigenvalues"] = max(err["eigenvalues"], np.abs(ev - (w + LAM)).max() / np.abs(w + LAM).max())
        for rule in ("raw", "abs"):
            e = _rel(np.linalg.norm(np.ravel(D[rule][l]) - dense[rule]), np.linalg.norm(dense[rule]))
            err[f"Newton {rule}"] = max(err[f"Newton {rule}"], e)
    return err, 1e3 * t_closed, 1e3 * t_dense


TOL = 1e-10


def judge(per_q: dict, n_cases: int) -> list[Verdict]:
    """C2 from the block and eigenvalue errors, C3 from the Newton-direction errors (max relative error)."""
    def one(claim, qs, what):
        worst = max(per_q[q] for q in qs)
        return Verdict(claim, "supported" if worst < TOL else "not supported",
                       f"supported if the closed-form {what} match dense float64 to a relative error below {TOL:g} "
                       f"on every one of the {n_cases} (net, batch) cases, else not supported",
                       f"max relative error {worst:.1e} (" + ", ".join(f"{q} {per_q[q]:.1e}" for q in qs) + ")")

    return [one("C2", ("layer block", "eigenvalues"), "layer Hessian blocks and their eigenvalues"),
            one("C3", ("Newton raw", "Newton abs"), "Newton directions (raw and abs)")]


def run(ctx) -> FigureResult:
    widths = ctx.pick(tiny=[2, 8], quick=[2, 4, 8, 16, 32], full=[2, 4, 8, 16, 32, 64])
    batches = (1, 4)
    nets = [(f"{act} 8-n-5", act, [8, n, 5], n) for act in ("tanh", "relu") for n in widths]
    nets += [("tanh 8-n-n-5", "tanh", [8, n, n, 5], n) for n in widths[:: max(1, len(widths) // 2)]]
    rows = []
    for label, act, sizes, n in ctx.progress(nets, desc="000_exactness nets"):
        for B in batches:
            rng = np.random.default_rng(1000 * n + B)
            model = make_mlp(sizes, act)
            params = model.init_params(rng)
            X = rng.standard_normal((B, sizes[0]))
            y = rng.integers(0, sizes[-1], B)
            err, tc, td = _errors(model, params, X, y)
            for q in QUANTITIES:
                rows.append([n, label, B, q, float(err[q]), tc, td])
    worst = max(r[4] for r in rows)
    checks = [Check("closed forms match dense float64", worst < 1e-8, f"max relative error {worst:.1e}")]

    fig, axes = new_figure(2)
    ax = axes[0]
    markers = {"layer block": "o", "eigenvalues": "s", "Newton raw": "^", "Newton abs": "v"}
    for q in QUANTITIES:
        for label in sorted({r[1] for r in rows}):
            pts = sorted({(r[0], max(s[4] for s in rows if s[0] == r[0] and s[1] == label and s[3] == q))
                          for r in rows if r[1] == label and r[3] == q})
            if pts:
                x, e = zip(*pts)
                ax.plot(x, np.maximum(e, 1e-18), marker=markers[q], lw=0.8, alpha=0.8,
                        label=f"{q}, {label}" if label.startswith("tanh 8-n-5") or q == "layer block" else None)
    ax.axhline(1e-8, color="r", ls="--", lw=1, label="sanity bound 1e-8")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden width n")
    ax.set_ylabel("max relative error vs dense float64")
    ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    for label in sorted({r[1] for r in rows}):
        pts = sorted({(r[0], r[5], r[6]) for r in rows if r[1] == label and r[2] == 4 and r[3] == "layer block"})
        x, tc, td = zip(*pts)
        (line,) = ax.plot(x, tc, marker="o", label=f"closed form, {label}")
        ax.plot(x, td, marker="x", ls="--", color=line.get_color(), label=f"dense eigh + solve, {label}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden width n (batch B = 4)")
    ax.set_ylabel("time per step (ms)")
    ax.legend(fontsize=6)
    finish_figure(fig, "Exactness of the closed-form layer Hessian, eigenvalues and Newton directions")
    per_q = {q: max(r[4] for r in rows if r[3] == q) for q in QUANTITIES}
    outcome = ("Closed-form layer blocks, eigenvalues and Newton directions (raw and abs) match dense float64 "
               f"to at most {worst:.1e} relative error over widths {widths[0]}-{widths[-1]} and B in {{1, 4}} "
               f"(block {per_q['layer block']:.0e}, eigenvalues {per_q['eigenvalues']:.0e}, "
               f"Newton {max(per_q['Newton raw'], per_q['Newton abs']):.0e})")
    scale = f"widths {widths}; full mode adds width 64"
    n_cases = len(rows) // len(QUANTITIES)
    return FigureResult(fig, rows, outcome, checks, {"lam": LAM, "batches": batches, "widths": widths,
                                                     "batch_mode": "exact_block", "block_spectrum": "batch"}, scale,
                        verdicts=judge(per_q, n_cases), seeds_used=[])
