"""The product cache of JaxCurvature (issue 14, target 1; the contract in curvlab/sources.py):
cached products equal uncached ones, prefix over datasets, invalidation by at(), the
bound, the validation of cache_bytes, and one compilation of the cached application."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from curvlab.adapters.jax import JaxCurvature  # noqa: E402

pytestmark = pytest.mark.jax

SIZES = (5, 4, 3)  # hidden layer widths: 5 -> 4 -> 3 classes


def apply(p, X):
    h = jnp.tanh(X @ p["l1"]["w"].T + p["l1"]["b"])
    return h @ p["l2"]["w"].T + p["l2"]["b"]


def _params(seed=0, scale=1.0):
    r = np.random.default_rng(seed)
    return {"l1": {"w": jnp.asarray(r.standard_normal((4, 5)) * scale), "b": jnp.asarray(r.standard_normal(4) * 0.3)},
            "l2": {"w": jnp.asarray(r.standard_normal((3, 4)) * scale), "b": jnp.asarray(r.standard_normal(3) * 0.3)}}


def _data(n=24, seed=1):
    r = np.random.default_rng(seed)
    return jnp.asarray(r.standard_normal((n, 5))), jnp.asarray(r.integers(0, 3, n))


def _batches(X, y, k=3):
    n = X.shape[0] // k
    return [(X[i * n:(i + 1) * n], y[i * n:(i + 1) * n]) for i in range(k)]


OPS = {
    "H_fr": lambda s: s.hessian("forward_over_reverse"),
    "H_rr": lambda s: s.hessian("reverse_over_reverse"),
    "ggn": lambda s: s.ggn(),
    "fisher_empirical": lambda s: s.fisher("empirical"),
    "fisher_true": lambda s: s.fisher("true"),
    "fisher_mc": lambda s: s.fisher("mc", rng=np.random.default_rng(7), mc_samples=3),
}


def _close(a, b):
    """Equal to float64 rounding (a few ulps of the largest entry)."""
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("op", list(OPS))
def test_cached_equals_uncached_one_batch(op, loss):
    X, y = _data()
    if loss == "mse":
        y = jax.nn.one_hot(y, 3) * 0.7
    src, ref = (JaxCurvature(apply, _params(), loss, (X, y), cache_bytes=c) for c in (None, 0))
    rng = np.random.default_rng(3)
    v, V = rng.standard_normal(src.layout.size), rng.standard_normal((src.layout.size, 4))
    A, B = OPS[op](src), OPS[op](ref)
    Av, AV = A @ v, A @ V
    info = src.cache_info()
    assert info["bytes"] > 0 and info["batches_cached"] == 1 and info["batches"] == 1 and info["limit"] is None
    assert ref.cache_info() == {"bytes": 0, "batches_cached": 0, "batches": 1, "limit": 0}
    _close(Av, B @ v)
    _close(AV, B @ V)
    np.testing.assert_array_equal(A @ v, Av)  # repeated products: identical
    np.testing.assert_array_equal(A @ V, AV)
    for j in range(V.shape[1]):  # matmat columns are matvecs
        _close(AV[:, j], A @ V[:, j])


def test_cached_hessian_equals_the_dense_hessian():
    """An independent float64 reference: jax.hessian of the flat loss."""
    X, y = _data()
    src = JaxCurvature(apply, _params(), "cross_entropy", (X, y))
    Hd = np.asarray(jax.hessian(lambda t: src._loss_flat(t, X, y))(src.theta))
    n = src.layout.size
    for mode in ("forward_over_reverse", "reverse_over_reverse"):
        _close(src.hessian(mode) @ np.eye(n), Hd)
    _close(src.hvp(np.ones(n)), Hd @ np.ones(n))
    assert src.cache_info()["bytes"] > 0


def test_prefix_over_a_dataset():
    """A bound that fits the first batch only: batch 0 cached, the others recomputed; the
    products equal the uncached ones for every kind, and bytes stay within the bound."""
    X, y = _data(36)
    data = _batches(X, y, 3)
    full = JaxCurvature(apply, _params(), "cross_entropy", data, cache_bytes=None)
    ref = JaxCurvature(apply, _params(), "cross_entropy", data, cache_bytes=0)
    v = np.random.default_rng(4).standard_normal(full.layout.size)
    full.hessian() @ v
    info = full.cache_info()
    assert info["batches_cached"] == 3 and info["batches"] == 3 and info["limit"] is None
    per = info["bytes"] // 3  # equal batches: equal residuals
    limit = per + per // 2
    src = JaxCurvature(apply, _params(), "cross_entropy", data, cache_bytes=limit)
    V = np.random.default_rng(5).standard_normal((src.layout.size, 3))
    for op in OPS:
        A, B = OPS[op](src), OPS[op](ref)
        _close(A @ v, B @ v)
        _close(A @ V, B @ V)
        np.testing.assert_array_equal(A @ v, A @ v)
    info = src.cache_info()
    assert info["batches_cached"] == 1 and info["batches"] == 3 and info["limit"] == limit
    assert 0 < info["bytes"] <= limit
    # a stream of the same batches: the same prefix, the same numbers
    s = src.at(data=lambda: iter(data))
    assert s.cache_info()["bytes"] == 0
    _close(s.hessian() @ v, ref.hessian() @ v)
    assert s.cache_info()["batches_cached"] == 1 and s.cache_info()["batches"] == 3
    # a bound below one batch: nothing cached, never an error
    tiny = src.at(params=src.params)
    tiny._cache.limit = 1
    _close(tiny.ggn() @ v, ref.ggn() @ v)
    assert tiny.cache_info()["bytes"] == 0 and tiny.cache_info()["batches_cached"] == 0


def test_at_invalidates_and_old_operators_keep_theirs():
    X, y = _data()
    p0, p1 = _params(0), _params(0, scale=0.5)
    src = JaxCurvature(apply, p0, "cross_entropy", (X, y))
    v = np.random.default_rng(6).standard_normal(src.layout.size)
    H0, G0 = src.hessian(), src.ggn()
    h0, g0 = H0 @ v, G0 @ v
    moved = src.at(params=p1)
    assert moved.cache_info()["bytes"] == 0 and src.cache_info()["bytes"] > 0
    fresh = JaxCurvature(apply, p1, "cross_entropy", (X, y))
    _close(moved.hessian() @ v, fresh.hessian() @ v)
    _close(moved.ggn() @ v, fresh.ggn() @ v)
    assert np.abs(moved.hessian() @ v - h0).max() > 1e-3  # the parameters did move
    np.testing.assert_array_equal(H0 @ v, h0)  # an operator built before at(): its own params and cache
    np.testing.assert_array_equal(G0 @ v, g0)
    # new data: a fresh cache too
    X2, y2 = _data(seed=9)
    other = src.at(data=(X2, y2))
    _close(other.hessian() @ v, JaxCurvature(apply, p0, "cross_entropy", (X2, y2)).hessian() @ v)
    # the flat vector form of at(params=)
    flat = src.at(params=fresh.params)
    _close(flat.fisher() @ v, fresh.fisher() @ v)
    assert flat._cache.limit == src._cache.limit


def test_one_compilation_of_the_cached_application():
    """The residuals are an argument: at(params=) reuses the compiled builder and
    application (the residuals' tree structure is the same)."""
    X, y = _data()
    src = JaxCurvature(apply, _params(), "cross_entropy", (X, y))
    v = np.ones(src.layout.size)
    src.hessian() @ v
    for k in range(3):
        src = src.at(params=src.params * 0.9)
        src.hessian() @ v
        src.ggn() @ v
    assert src._jit["cache_build_hvp_forward_over_reverse"]._cache_size() == 1
    assert src._jit["cache_apply_hvp_forward_over_reverse"][0]._cache_size() == 1
    assert src._jit["cache_apply_ggn"][0]._cache_size() == 1


def test_first_order_and_curvature_calls_never_build_the_cache():
    X, y = _data()
    src = JaxCurvature(apply, _params(), "cross_entropy", (X, y))
    d = np.random.default_rng(8).standard_normal(src.layout.size)
    src.loss(), src.gradient(), src.directional_curvature(d), src.grad_and_curvature(d)
    src.per_sample_gradients()
    assert src.cache_info()["bytes"] == 0 and src.cache_info()["batches_cached"] == 0


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError),
                                     (np.bool_(False), TypeError)])
def test_bad_cache_bytes_is_refused(bad, exc):
    X, y = _data()
    with pytest.raises(exc, match="cache_bytes"):
        JaxCurvature(apply, _params(), "cross_entropy", (X, y), cache_bytes=bad)


def test_cache_bytes_accepts_numpy_ints_and_zero_disables():
    X, y = _data()
    src = JaxCurvature(apply, _params(), "cross_entropy", (X, y), cache_bytes=np.int64(10**6))
    assert src.cache_info()["limit"] == 10**6 and type(src.cache_info()["limit"]) is int
    off = JaxCurvature(apply, _params(), "cross_entropy", (X, y), cache_bytes=0)
    v = np.ones(off.layout.size)
    off.hessian() @ v, off.ggn() @ v
    assert off.cache_info()["bytes"] == 0


def test_callable_loss_and_a_stream_of_unequal_batches():
    """A callable loss (the output Hessian from its own autodiff) over a stream whose last
    batch is smaller: cached products equal uncached ones; batches counted as seen."""
    def loss(z, t):
        return jnp.mean(jnp.sum(jnp.log(jnp.cosh(z - t)), axis=-1))

    X, y = _data(30)
    Y = jax.nn.one_hot(y, 3)
    data = [(X[:12], Y[:12]), (X[12:24], Y[12:24]), (X[24:], Y[24:])]
    src = JaxCurvature(apply, _params(), loss, lambda: iter(data), cache_bytes=None)
    ref = JaxCurvature(apply, _params(), loss, data, cache_bytes=0)
    V = np.random.default_rng(11).standard_normal((src.layout.size, 2))
    for op in ("H_fr", "ggn", "fisher_empirical"):
        A, B = OPS[op](src), OPS[op](ref)
        _close(A @ V, B @ V)
        _close(A @ V[:, 0], B @ V[:, 0])
    info = src.cache_info()
    assert info["batches_cached"] == 3 and info["batches"] == 3 and info["bytes"] > 0


def test_a_shuffling_stream_never_gets_stale_residuals():
    """A stream whose passes yield the batches in another order (a shuffling loader): a cached
    position whose batch changed is rebuilt, so every product equals the uncached one over
    the same data (this failed: residuals were looked up by position only)."""
    X, y = _data(36)
    data = _batches(X, y, 3)
    orders = itertools.cycle([[0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1], [1, 0, 2]])

    def shuffled():
        return iter([data[i] for i in next(orders)])

    ref = JaxCurvature(apply, _params(), "cross_entropy", data, cache_bytes=0)
    v = np.random.default_rng(8).standard_normal(ref.layout.size)
    full = JaxCurvature(apply, _params(), "cross_entropy", data, cache_bytes=None)
    full.hessian() @ v
    per = full.cache_info()["bytes"] // 3
    for limit in (None, per + per // 2):   # everything cached; only the first position cached
        src = JaxCurvature(apply, _params(), "cross_entropy", shuffled, cache_bytes=limit)
        for op in OPS:
            A, B = OPS[op](src), OPS[op](ref)
            if op in ("fisher_empirical", "fisher_mc"):
                # residuals drawn for one pass's batches: another order is refused, not mispaired
                with pytest.raises(ValueError, match="shuffling"):
                    for _ in range(3):
                        A @ v
                continue
            for _ in range(3):
                _close(A @ v, B @ v)
        assert limit is None or src.cache_info()["bytes"] <= limit
    # the same order with fresh (equal) arrays at every pass, as a loader yields: every kind agrees
    fresh = JaxCurvature(apply, _params(), "cross_entropy",
                         lambda: iter([(jnp.array(a), jnp.array(b)) for a, b in data]), cache_bytes=None)
    for op in OPS:
        A, B = OPS[op](fresh), OPS[op](ref)
        for _ in range(2):
            _close(A @ v, B @ v)
