"""The product cache of MLPCurvature (issue 14, target 1; the contract shared with the
torch and JAX adapters): cached products equal uncached ones (``cache_bytes=0``) and the
dense float64 reference, on one batch and on a dataset cached only in part (a prefix);
repeated products are identical; ``at()`` empties it; the bound holds; bad values of
``cache_bytes`` fail naming it; value and dᵀHd methods never build it.
"""

from __future__ import annotations

import numpy as np
import pytest

from curvlab.models import MLP, MLPCurvature

KINDS = ("hessian", "ggn", "fisher_empirical", "fisher_true")
MODELS = [("tanh", "cross_entropy"), ("sigmoid", "mse"), ("relu", "cross_entropy")]


def _op(src, kind):
    if kind.startswith("fisher"):
        return src.fisher(kind.split("_")[1])
    return getattr(src, kind)()


def _problem(activation="tanh", loss="cross_entropy", n=23, seed=0):
    rng = np.random.default_rng(seed)
    model = MLP([5, 7, 6, 3], activation=activation, loss=loss, dtype=np.float64)
    p = model.init_params(rng)
    X = rng.standard_normal((n, 5))
    y = rng.integers(0, 3, n) if loss == "cross_entropy" else rng.standard_normal((n, 3))
    return model, p, X, y, rng


def _dense(model, p, X, y, kind):
    """Dense float64 references: Hessian from the model's own dense routine, GGN and
    empirical Fisher from per-sample Jacobians / gradients (independent of the R-operator)."""
    if kind == "hessian":
        return model.dense_hessian(p, X, y)
    if kind == "fisher_empirical":
        G = model.per_sample_grads(p, X, y)
        return G.T @ G / X.shape[0]
    # GGN = (1/N) Σ_b J_bᵀ M_b J_b; row k of J_b is the per-sample gradient of the mse
    # loss with target z_b - e_k (backpropagation, independent of the R-operator)
    N, K = X.shape[0], model.sizes[-1]
    mse = MLP(model.sizes, activation=model.activation, loss="mse", dtype=np.float64)
    z = model.forward(p, X)
    J = np.stack([mse.per_sample_grads(p, X, z - np.eye(K)[k]) for k in range(K)], axis=1)  # (N, K, P)
    _, _, M = model.loss_output_derivatives(z, y)
    return np.einsum("bkp,bkl,blq->pq", J, M, J) / N


def _entry_bytes(model, p, X, y):
    """The full size of one batch's cache entry (after a Hessian product)."""
    src = MLPCurvature(model, p, (X, y), cache_bytes=None)
    src.hessian() @ np.ones(p.size)
    return src.cache_info()["bytes"]


@pytest.mark.parametrize("act_loss", MODELS, ids=["-".join(m) for m in MODELS])
@pytest.mark.parametrize("kind", KINDS)
def test_cached_products_equal_uncached_on_one_batch(act_loss, kind):
    model, p, X, y, rng = _problem(*act_loss)
    cached = MLPCurvature(model, p, (X, y))
    plain = MLPCurvature(model, p, (X, y), cache_bytes=0)
    v = rng.standard_normal(p.size)
    V = rng.standard_normal((p.size, 4))
    A, A0 = _op(cached, kind), _op(plain, kind)
    first = A @ v
    assert cached.cache_info()["batches_cached"] == 1 and cached.cache_info()["bytes"] > 0
    np.testing.assert_allclose(first, A0 @ v, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(A @ V, A0 @ V, rtol=1e-13, atol=1e-15)
    again = A @ v
    assert np.array_equal(again, first)  # repeated products are identical
    assert np.array_equal(A @ V, A @ V)
    assert plain.cache_info() == {"bytes": 0, "batches_cached": 0, "batches": 1, "limit": 0}
    # and against the dense float64 reference
    np.testing.assert_allclose(A @ V, _dense(model, p, X, y, kind) @ V, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_prefix_cache_on_a_dataset_where_only_the_first_batch_fits(kind):
    model, p, X, y, rng = _problem(n=30)
    batches = [(X[:12], y[:12]), (X[12:24], y[12:24]), (X[24:], y[24:])]
    one = _entry_bytes(model, p, *batches[0])
    limit = one + one // 2  # the first batch fits, the second (same size) does not
    src = MLPCurvature(model, p, batches, cache_bytes=limit)
    plain = MLPCurvature(model, p, batches, cache_bytes=0)
    A, A0 = _op(src, kind), _op(plain, kind)
    V = rng.standard_normal((p.size, 3))
    got = A @ V
    info = src.cache_info()
    assert info["batches_cached"] == 1 and info["batches"] == 3 and info["limit"] == limit
    assert 0 < info["bytes"] <= limit
    np.testing.assert_allclose(got, A0 @ V, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(A @ V[:, 0], A0 @ V[:, 0], rtol=1e-13, atol=1e-15)
    assert np.array_equal(A @ V, got)
    assert src.cache_info()["batches_cached"] == 1  # still the prefix, never an error
    np.testing.assert_allclose(got, _dense(model, p, X, y, kind) @ V, rtol=1e-10, atol=1e-12)


def test_bound_counts_the_backward_errors_a_later_hessian_product_adds():
    model, p, X, y, rng = _problem()
    limit = _entry_bytes(model, p, X, y)
    src = MLPCurvature(model, p, (X, y), cache_bytes=limit)
    v = rng.standard_normal(p.size)
    src.ggn() @ v  # builds the entry without δ_l
    assert src.cache_info()["batches_cached"] == 1
    src.hessian() @ v  # fills δ_l and σ''·W̄ᵀδ in the same entry
    assert src.cache_info()["bytes"] == limit
    small = MLPCurvature(model, p, (X, y), cache_bytes=limit - 1)
    np.testing.assert_allclose(small.hessian() @ v, src.hessian() @ v, rtol=1e-13, atol=1e-15)
    assert small.cache_info()["batches_cached"] == 0 and small.cache_info()["bytes"] == 0


def test_at_returns_an_empty_cache_and_old_operators_keep_theirs():
    model, p, X, y, rng = _problem()
    src = MLPCurvature(model, p, (X, y), cache_bytes=10**7)
    v = rng.standard_normal(p.size)
    H_old = src.hessian()
    h_old = H_old @ v
    p2 = p * 0.7 + 0.01
    src2 = src.at(params=p2)
    assert src2.cache_info()["batches_cached"] == 0 and src2.cache_info()["limit"] == 10**7
    fresh = MLPCurvature(model, p2, (X, y), cache_bytes=0)
    for kind in KINDS:
        np.testing.assert_allclose(_op(src2, kind) @ v, _op(fresh, kind) @ v, rtol=1e-13, atol=1e-15)
    assert not np.allclose(src2.hessian() @ v, h_old)
    assert np.array_equal(H_old @ v, h_old)  # the old operator: its own parameters and cache
    X3, y3 = X[:10] * 2.0, y[:10]
    src3 = src2.at(data=(X3, y3))
    assert src3.cache_info()["batches_cached"] == 0
    np.testing.assert_allclose(src3.ggn() @ v, MLPCurvature(model, p2, (X3, y3), cache_bytes=0).ggn() @ v,
                               rtol=1e-13, atol=1e-15)


def test_values_and_directional_curvature_never_build_the_cache():
    model, p, X, y, rng = _problem()
    src = MLPCurvature(model, p, [(X[:10], y[:10]), (X[10:], y[10:])])
    d = rng.standard_normal(p.size)
    src.loss()
    src.gradient()
    src.directional_curvature(d)
    src.directional_curvature(d, mode="adjoint")
    src.grad_and_curvature(d)
    src.hessian()  # building an operator is not a product
    assert src.cache_info() == {"bytes": 0, "batches_cached": 0, "batches": 2, "limit": 2**30}
    src.fisher() @ d
    assert src.cache_info()["batches_cached"] == 2


def test_a_stream_of_batches_is_not_cached_and_stays_exact():
    model, p, X, y, rng = _problem()
    batches = [(X[:10], y[:10]), (X[10:], y[10:])]
    stream = MLPCurvature(model, p, lambda: iter(batches))
    held = MLPCurvature(model, p, batches)
    v = rng.standard_normal(p.size)
    np.testing.assert_allclose(stream.hessian() @ v, held.hessian() @ v, rtol=1e-13, atol=1e-15)
    assert stream.cache_info()["batches_cached"] == 0 and stream.cache_info()["bytes"] == 0
    assert held.cache_info()["batches_cached"] == 2


def test_cache_bytes_none_has_no_bound_and_float32_is_cached():
    model, p, X, y, rng = _problem()
    src = MLPCurvature(model, p, (X, y), cache_bytes=None)
    src.hessian() @ rng.standard_normal(p.size)
    assert src.cache_info()["limit"] is None and src.cache_info()["batches_cached"] == 1
    m32 = MLP([5, 7, 3], dtype=np.float32)
    p32 = m32.init_params(0)
    s32 = MLPCurvature(m32, p32, (X.astype(np.float32), y))
    v = rng.standard_normal(p32.size).astype(np.float32)
    out = s32.hessian() @ v
    assert out.dtype == np.float32 and s32.cache_info()["batches_cached"] == 1
    np.testing.assert_allclose(out, MLPCurvature(m32, p32, (X.astype(np.float32), y), cache_bytes=0).hessian() @ v,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, exc", [(True, TypeError), (-1, ValueError), (1.5, TypeError), ("1", TypeError),
                                      (np.bool_(False), TypeError)])
def test_bad_cache_bytes_is_refused_naming_it(bad, exc):
    model, p, X, y, _ = _problem()
    with pytest.raises(exc, match="cache_bytes"):
        MLPCurvature(model, p, (X, y), cache_bytes=bad)


def test_numpy_integer_cache_bytes_is_accepted():
    model, p, X, y, _ = _problem()
    assert MLPCurvature(model, p, (X, y), cache_bytes=np.int64(4096)).cache_info()["limit"] == 4096
