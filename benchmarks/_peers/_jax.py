"""JAX group: curvlab's ``JaxCurvature`` against ``jax.jit(jax.grad)`` and hand-written jitted
products on the MLP 784-512-512-10 tanh, batch 512, float32, cross-entropy (mean).

Also the NumPy reference MLP (``curvlab.models``) against ``jax.jit`` of the same function on
the same numbers (:func:`measure_numpy`). Set the one-thread ``XLA_FLAGS``
(:data:`benchmarks._peers.THREAD_ENV`) before JAX is imported.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import Row, agreement_row, best_cpu, cell, has_kwarg, le, verdict

SIZES = (784, 512, 512, 10)


def jax_problem(batch: int = 512, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """``apply(params, X)``, a list of ``{"w", "b"}`` layers, inputs and labels (float32)."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    params = []
    for i in range(len(SIZES) - 1):
        bound = 1.0 / np.sqrt(SIZES[i])
        params.append({"w": jnp.asarray(rng.uniform(-bound, bound, (SIZES[i + 1], SIZES[i])), jnp.float32),
                       "b": jnp.asarray(rng.uniform(-bound, bound, SIZES[i + 1]), jnp.float32)})

    def apply(ps: Any, X: Any) -> Any:
        a = X
        for i, p in enumerate(ps):
            a = a @ p["w"].T + p["b"]
            if i < len(ps) - 1:
                a = jnp.tanh(a)
        return a

    X = jnp.asarray(rng.standard_normal((batch, SIZES[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, SIZES[-1], batch))
    return apply, params, X, y


def _ce(z: Any, y: Any) -> Any:
    import jax
    import jax.numpy as jnp

    return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0])


def jitted_products(apply: Any, X: Any, y: Any) -> dict[str, Callable[..., Any]]:
    """``jax.jit`` of the gradient, the forward-over-reverse HVP, the GGN product
    (``jvp``, output Hessian, ``vjp``) and forward-mode ``dᵀHd`` of ``p -> CE(apply(p, X), y)``."""
    import jax
    import jax.numpy as jnp

    def loss(p: Any) -> Any:
        return _ce(apply(p, X), y)

    def hvp(p: Any, v: Any) -> Any:
        return jax.jvp(jax.grad(loss), (p,), (v,))[1]

    def ggn(p: Any, v: Any) -> Any:
        z, Jv = jax.jvp(lambda q: apply(q, X), (p,), (v,))
        HJv = jax.jvp(lambda zz: jax.grad(_ce)(zz, y), (z,), (Jv,))[1]
        return jax.vjp(lambda q: apply(q, X), p)[1](HJv)[0]

    def dhd(p: Any, v: Any) -> Any:
        def first(t: Any) -> Any:
            return jax.jvp(lambda s: loss(jax.tree_util.tree_map(lambda a, b: a + s * b, p, v)), (t,),
                           (jnp.ones_like(t),))[1]

        zero = jnp.zeros((), jnp.float32)
        return jax.jvp(first, (zero,), (jnp.ones_like(zero),))[1]

    return {"grad": jax.jit(jax.grad(loss)), "hvp": jax.jit(hvp), "ggn": jax.jit(ggn), "dhd": jax.jit(dhd)}


def measure(repeat: int = 3) -> tuple[list[Row], dict[str, float]]:
    """``JaxCurvature`` products over ``jax.jit(jax.grad)``, with jitted peers, same run."""
    import jax

    from curvlab.adapters.jax import JaxCurvature

    from . import one_thread

    one_thread()
    apply, params, X, y = jax_problem()
    ref = jitted_products(apply, X, y)
    cacheable = has_kwarg(JaxCurvature, "cache_bytes")
    oneshot: dict[str, Any] = {"cache_bytes": 0} if cacheable else {}
    one = JaxCurvature(apply, params, "cross_entropy", (X, y), **oneshot)
    v = np.random.default_rng(0).standard_normal(one.layout.size).astype(one.dtype)
    leaves, tdef = jax.tree_util.tree_flatten(params)  # the layout's order is tree_flatten's
    cuts = np.cumsum([leaf.size for leaf in leaves])[:-1]
    vtree = jax.tree_util.tree_unflatten(tdef, [c.reshape(leaf.shape) for c, leaf in zip(np.split(v, cuts), leaves)])
    vtree = jax.tree_util.tree_map(lambda a: jax.numpy.asarray(a, jax.numpy.float32), vtree)

    def blocked(f: Callable[..., Any], *a: Any) -> Callable[[], Any]:
        return lambda: jax.block_until_ready(f(*a))

    calls: dict[str, Callable[[], Any]] = {
        "grad": blocked(ref["grad"], params),
        "jit_hvp": blocked(ref["hvp"], params, vtree),
        "jit_ggn": blocked(ref["ggn"], params, vtree),
        "jit_dhd": blocked(ref["dhd"], params, vtree),
    }
    H1, G1 = one.hessian(), one.ggn()
    calls["hvp_oneshot"] = lambda: H1 @ v
    calls["ggn_oneshot"] = lambda: G1 @ v
    notes: dict[str, str] = {}
    if cacheable:
        cached = JaxCurvature(apply, params, "cross_entropy", (X, y))
        Hc, Gc = cached.hessian(), cached.ggn()
        calls["hvp_cached"] = lambda: Hc @ v
        calls["ggn_cached"] = lambda: Gc @ v
    else:
        notes["hvp_cached"] = notes["ggn_cached"] = "n/a (no cache_bytes on this commit)"
    calls["dhd"] = lambda: one.directional_curvature(v)
    calls["grad_dhd"] = lambda: one.grad_and_curvature(v)
    out = {k: f() for k, f in calls.items()}  # one call each: the same numbers?
    out = {k: (jax.tree_util.tree_leaves(o) if k.startswith("jit_") else o) for k, o in out.items()}  # layout order
    check = agreement_row("JAX MLP: curvlab and the jitted peers compute the same products", {
        "HVP": ({k: out[k] for k in out if "hvp" in k}, "jit_hvp"),
        "GGN-vp": ({k: out[k] for k in out if "ggn" in k}, "jit_ggn"),
        "dᵀHd": ({"jit_dhd": out["jit_dhd"], "dhd": out["dhd"], "grad_dhd": out["grad_dhd"][2]}, "jit_dhd")})
    del out
    t = best_cpu(calls, repeat)
    g = t["grad"]

    def c(k: str) -> str:
        return cell(t[k], g) if k in t else notes.get(k, "—")

    def r(k: str) -> float | None:
        return t[k] / g if k in t else None

    ratios = {f"jax.{k}": t[k] / g for k in t}
    rows = [
        Row("JAX MLP gradient (`jax.jit(jax.grad)`), the unit", f"1.00× ({g * 1e3:.1f} ms)"),
        Row("JAX MLP HVP, cached (default)", c("hvp_cached"), f"jitted jvp(grad) {c('jit_hvp')}",
            "≤ 1.5×", verdict([("≤ 1.5×", le(r("hvp_cached"), 1.5))])),
        Row("JAX MLP HVP, one-shot (`cache_bytes=0`)", c("hvp_oneshot"), f"jitted jvp(grad) {c('jit_hvp')}"),
        Row("JAX MLP GGN-vp, cached (default)", c("ggn_cached"), f"jitted jvp + vjp {c('jit_ggn')}",
            "≤ 1.4×", verdict([("≤ 1.4×", le(r("ggn_cached"), 1.4))])),
        Row("JAX MLP GGN-vp, one-shot (`cache_bytes=0`)", c("ggn_oneshot"), f"jitted jvp + vjp {c('jit_ggn')}"),
        Row("JAX MLP dᵀHd, forward mode", c("dhd"), f"jitted jvp(jvp) {c('jit_dhd')}",
            "≤ 2.0× (memory: asv)", verdict([("≤ 2.0×", le(r("dhd"), 2.0))])),
        Row("JAX MLP grad + dᵀHd (`grad_and_curvature`)", c("grad_dhd"), "—",
            "≤ 1.6× (memory: asv)", verdict([("≤ 1.6×", le(r("grad_dhd"), 1.6))])),
        check,
    ]
    return rows, ratios


def measure_numpy(repeat: int = 3) -> tuple[list[Row], dict[str, float]]:
    """NumPy reference MLP (``curvlab.models.MLP``, float32) over ``jax.jit`` of the same
    function on the same numbers; and its cached products over its own gradient."""
    import jax
    import jax.numpy as jnp

    from curvlab.models.mlp import MLP

    from . import one_thread

    one_thread()
    rng = np.random.default_rng(0)
    model = MLP(list(SIZES), activation="tanh", loss="cross_entropy", dtype=np.float32)
    p = model.init_params(rng)
    X = rng.standard_normal((512, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], size=512)
    d = (rng.standard_normal(model.n_params) * 1e-2).astype(np.float32)
    shapes = model.layout.shapes  # per layer (out, in + 1): bias in the last column

    def unflat(q: Any) -> list[dict[str, Any]]:
        out, o = [], 0
        for n, m in shapes:
            W = q[o:o + n * m].reshape(n, m)
            out.append({"w": W[:, :-1], "b": W[:, -1]})
            o += n * m
        return out

    def apply(q: Any, Xb: Any) -> Any:
        a = Xb
        for i, layer in enumerate(unflat(q)):
            a = a @ layer["w"].T + layer["b"]
            if i < len(shapes) - 1:
                a = jnp.tanh(a)
        return a

    Xj, yj, pj, dj = jnp.asarray(X), jnp.asarray(y), jnp.asarray(p), jnp.asarray(d)
    ref = jitted_products(apply, Xj, yj)

    def loss(q: Any) -> Any:
        return _ce(apply(q, Xj), yj)

    vg = jax.jit(jax.value_and_grad(loss))  # what loss_and_grad returns: loss and gradient

    def blocked(f: Callable[..., Any], *a: Any) -> Callable[[], Any]:
        return lambda: jax.block_until_ready(f(*a))

    calls: dict[str, Callable[[], Any]] = {
        "np_grad": lambda: model.loss_and_grad(p, X, y), "jax_grad": blocked(vg, pj),
        "np_hvp": lambda: model.hvp(p, X, y, d), "jax_hvp": blocked(ref["hvp"], pj, dj),
        "np_ggn": lambda: model.ggn_vp(p, X, y, d), "jax_ggn": blocked(ref["ggn"], pj, dj),
        "np_dhd": lambda: model.curvature(p, X, y, d, mode="forward"), "jax_dhd": blocked(ref["dhd"], pj, dj),
        "np_grad_dhd": lambda: model.grad_and_curvature(p, X, y, d),
    }
    notes: dict[str, str] = {}
    try:
        from curvlab.models import MLPCurvature

        src = MLPCurvature(model, p, (X, y))
        if has_kwarg(MLPCurvature, "cache_bytes"):
            Hc, Gc = src.hessian(), src.ggn()
            calls["np_hvp_cached"] = lambda: Hc @ d
            calls["np_ggn_cached"] = lambda: Gc @ d
        else:
            notes["np_hvp_cached"] = notes["np_ggn_cached"] = "n/a (no cache_bytes on this commit)"
    except ImportError:
        notes["np_hvp_cached"] = notes["np_ggn_cached"] = "n/a (no MLPCurvature on this commit)"
    out = {k: f() for k, f in calls.items()}  # one call each: the same numbers?
    check = agreement_row("NumPy reference MLP and JAX-jit compute the same products", {
        "gradient": ({"np": out["np_grad"][1], "jax": out["jax_grad"][1]}, "jax"),
        "HVP": ({k: out[k] for k in out if "hvp" in k}, "jax_hvp"),
        "GGN-vp": ({k: out[k] for k in out if "ggn" in k}, "jax_ggn"),
        "dᵀHd": ({"np": out["np_dhd"], "np_adjoint": out["np_grad_dhd"][2], "jax": out["jax_dhd"]}, "jax")})
    del out
    t = best_cpu(calls, repeat)
    ratios: dict[str, float] = {}
    rows: list[Row] = []
    names = {"grad": "gradient (loss_and_grad)", "hvp": "HVP", "ggn": "GGN-vp", "dhd": "dᵀHd forward mode"}
    for k, name in names.items():
        q = t[f"np_{k}"] / t[f"jax_{k}"]
        ratios[f"numpy_over_jax.{k}"] = q
        rows.append(Row(f"NumPy reference MLP {name} / JAX-jit of the same function",
                        f"{q:.2f}× ({t[f'np_{k}'] * 1e3:.1f} ms)", f"JAX jit {t[f'jax_{k}'] * 1e3:.1f} ms",
                        "≤ 1.0×", verdict([("≤ 1.0×", q <= 1.0)])))
    g = t["np_grad"]
    for k, name, lim in (("np_hvp_cached", "HVP, cached (default)", 1.5), ("np_ggn_cached", "GGN-vp, cached (default)", 1.4),
                         ("np_dhd", "dᵀHd forward mode", 2.0), ("np_grad_dhd", "grad + dᵀHd (adjoint)", 1.6)):
        if k in t:
            ratios[f"numpy.{k[3:]}_over_grad"] = t[k] / g
        rows.append(Row(f"NumPy reference MLP {name} / its own gradient",
                        cell(t[k], g) if k in t else notes.get(k, "—"), "—", f"≤ {lim}×",
                        verdict([(f"≤ {lim}×", le(t[k] / g if k in t else None, lim))])))
    rows.append(check)
    return rows, ratios
