"""Method-step group: one optimizer step of ArTuRO, DSGD and ExactNewton against its natural
unit, in the same round-robin loop.

* ArTuRO (preset ``cifar10_cnn``, exact mode, float32, warm state, n parameters) in
  copy-equivalents: step time / ``np.copyto`` of n float32; fused torch Adam likewise.
* DSGD step (gradient + update) / SGD step (gradient + update), MLP 784-512-512-10 tanh CE,
  batch 512, float32 (steady state: parameters and state carried over).
* ExactNewton step, ``batch_mode`` "average" and "exact_block" (λ = 1), / SGD step, MLP
  64-32-10 tanh CE, float64, B = 32.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import Row, best_cpu, short_error, verdict


def arturo_calls(n: int) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """``copy``, ``arturo`` and (torch installed) ``adam_fused`` step callables at size n."""
    from curvlab.methods.arturo import ArTuRO

    rng = np.random.default_rng(0)
    w = (0.05 * rng.standard_normal(n)).astype(np.float32)
    g = (0.01 * rng.standard_normal(n)).astype(np.float32)
    dst = np.empty_like(w)
    opt = ArTuRO.from_preset("cifar10_cnn", mode="exact")
    box = {"s": opt.init(w)}
    box["s"] = opt.update(g, box["s"], w)[1]  # initialise the filter; η is now warm

    def arturo() -> Any:
        upd, box["s"] = opt.update(g, box["s"], w)
        return upd

    calls: dict[str, Callable[[], Any]] = {"copy": lambda: np.copyto(dst, w), "arturo": arturo}
    notes: dict[str, str] = {}
    try:
        import torch

        p = torch.nn.Parameter(torch.from_numpy(w.copy()))
        p.grad = torch.from_numpy(g.copy())
        try:
            adam = torch.optim.Adam([p], lr=1e-3, fused=True)
            adam.step()
            calls["adam_fused"] = adam.step
        except Exception as exc:  # fused Adam not available on this build/device
            notes["adam_fused"] = "fused Adam unavailable: " + short_error(exc)
    except ImportError:
        notes["adam_fused"] = "not installed"
    return calls, notes


def dsgd_calls() -> dict[str, Callable[[], Any]]:
    """``sgd`` and ``dsgd`` steps on MLP 784-512-512-10 tanh CE, batch 512, float32."""
    from curvlab.methods.baselines import SGD
    from curvlab.methods.dsgd import DSGD
    from curvlab.models.mlp import MLP

    rng = np.random.default_rng(0)
    model = MLP([784, 512, 512, 10], activation="tanh", loss="cross_entropy", dtype=np.float32)
    params = model.init_params(rng)
    X = rng.standard_normal((512, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=512)
    sgd = SGD(lr=0.1)
    s_sgd = sgd.init(params)
    dsgd = DSGD(shapes=model.layout)
    box = {"p": params, "s": dsgd.init(params)}

    def sgd_step() -> Any:
        _, g = model.loss_and_grad(params, X, y)
        return params + sgd.update(g, s_sgd, params)[0]

    def dsgd_step() -> Any:
        p = box["p"]
        _, g = model.loss_and_grad(p, X, y)
        u, box["s"] = dsgd.update(g, box["s"], p, X=X)
        box["p"] = p + u
        return box["p"]

    return {"sgd": sgd_step, "dsgd": dsgd_step}


def exact_newton_calls(B: int = 32) -> dict[str, Callable[[], Any]]:
    """``sgd``, ``average`` and ``exact_block`` steps on MLP 64-32-10 tanh CE, float64."""
    from curvlab.methods.baselines import SGD
    from curvlab.methods.exact_newton import ExactNewton
    from curvlab.models.mlp import MLP

    rng = np.random.default_rng(0)
    model = MLP([64, 32, 10], activation="tanh", loss="cross_entropy")
    params = model.init_params(rng)
    X = rng.random((B, 64))
    y = rng.integers(0, 10, B)
    sgd = SGD(lr=0.1)
    s0 = sgd.init(params)
    avg = ExactNewton(lr=0.1, lam=1.0, batch_mode="average")
    blk = ExactNewton(lr=0.1, lam=1.0, batch_mode="exact_block")
    sa, sb = avg.init(params), blk.init(params)

    def sgd_step() -> Any:
        _, g = model.loss_and_grad(params, X, y)
        return params + sgd.update(g, s0, params)[0]

    def newton(opt: Any, st: Any) -> Callable[[], Any]:
        def run() -> Any:
            _, g = model.loss_and_grad(params, X, y)
            return params + opt.update(g, st, params, model=model, X=X, y=y)[0]

        return run

    return {"sgd": sgd_step, "average": newton(avg, sa), "exact_block": newton(blk, sb)}


def measure(repeat: int = 3, n: int = 10**6) -> tuple[list[Row], dict[str, float]]:
    """Rows and ratios (``arturo.copy_equivalents``, ``adam.copy_equivalents``,
    ``dsgd.over_sgd``, ``exact_newton.average_over_sgd``, ``exact_newton.exact_block_over_sgd``)."""
    from . import one_thread

    one_thread()
    try:
        import numba

        numba.set_num_threads(1)  # one core for every kernel: CPU-time ratios to one-thread work
    except Exception:  # pragma: no cover - numba missing
        pass
    rows: list[Row] = []
    ratios: dict[str, float] = {}

    calls, notes = arturo_calls(n)
    t = best_cpu(calls, repeat)
    ce = t["arturo"] / t["copy"]
    ratios["arturo.copy_equivalents"] = ce
    adam = (f"fused torch Adam {t['adam_fused'] / t['copy']:.1f} copies ({t['adam_fused'] * 1e3:.1f} ms)"
            if "adam_fused" in t else notes.get("adam_fused", "—"))
    if "adam_fused" in t:
        ratios["adam.copy_equivalents"] = t["adam_fused"] / t["copy"]
    rows.append(Row(f"ArTuRO step (exact, warm), n = {n:.0e} float32, in copy-equivalents (`np.copyto`)",
                    f"{ce:.1f} copies ({t['arturo'] * 1e3:.1f} ms; copy {t['copy'] * 1e3:.2f} ms)", adam,
                    "≤ 25 copies (issue: at n = 1e7; bandwidth: run_arturo.py)", verdict([("≤ 25", ce <= 25.0)])))
    del calls

    t = best_cpu(dsgd_calls(), repeat)
    q = t["dsgd"] / t["sgd"]
    ratios["dsgd.over_sgd"] = q
    rows.append(Row("DSGD step / SGD step, MLP 784-512-512-10, batch 512, float32",
                    f"{q:.2f}× ({t['dsgd'] * 1e3:.1f} ms)", f"SGD step {t['sgd'] * 1e3:.1f} ms",
                    "≤ 5×", verdict([("≤ 5×", q <= 5.0)])))

    t = best_cpu(exact_newton_calls(32), repeat)
    qa, qb = t["average"] / t["sgd"], t["exact_block"] / t["sgd"]
    ratios["exact_newton.average_over_sgd"], ratios["exact_newton.exact_block_over_sgd"] = qa, qb
    for name, q, lim in (("average", qa, 5.0), ("exact_block", qb, 30.0)):
        rows.append(Row(f"ExactNewton step ({name}) / SGD step, MLP 64-32-10, B = 32, float64",
                        f"{q:.1f}× ({t[name] * 1e3:.2f} ms)", f"SGD step {t['sgd'] * 1e3:.3f} ms",
                        f"≤ {lim:.0f}×", verdict([(f"≤ {lim:.0f}×", q <= lim)])))
    return rows, ratios
