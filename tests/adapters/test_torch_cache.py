"""TorchCurvature's product cache (issue 14, the cache contract): cached products equal the
uncached ones, the bound holds (a prefix of the batches), ``at()`` starts afresh."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from curvlab.adapters.torch import TorchCurvature  # noqa: E402

KINDS = ("H", "ggn", "empirical", "true", "mc")


def _op(src: TorchCurvature, kind: str):
    if kind == "H":
        return src.hessian()
    if kind == "ggn":
        return src.ggn()
    return src.fisher(kind, rng=0) if kind == "mc" else src.fisher(kind)


def _mlp(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    X = torch.randn(24, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    return net, X, y


def _cnn(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double().eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    X = torch.randn(10, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (10,))
    return net, X, y


def _close(a, b, rtol=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= rtol * max(1.0, np.max(np.abs(b))), np.max(np.abs(a - b))


@pytest.mark.parametrize("problem", [_mlp, _cnn])
@pytest.mark.parametrize("kind", KINDS)
def test_cached_products_equal_uncached_ones_on_one_batch(problem, kind):
    net, X, y = problem()
    cached = TorchCurvature(net, "cross_entropy", (X, y))
    plain = TorchCurvature(net, "cross_entropy", (X, y), cache_bytes=0)
    rng = np.random.default_rng(1)
    n = cached.layout.size
    v, V = rng.standard_normal(n), rng.standard_normal((n, 3))
    A, B = _op(cached, kind), _op(plain, kind)
    first = A @ v
    assert cached.cache_info()["batches_cached"] == 1 and cached.cache_info()["bytes"] > 0
    assert plain.cache_info() == {"bytes": 0, "batches_cached": 0, "batches": 1, "limit": 0}
    _close(first, B @ v)
    np.testing.assert_array_equal(A @ v, first)  # repeated products: the same numbers
    _close(A @ V, B @ V)
    _close((A @ V)[:, 1], A @ V[:, 1])


def test_every_operator_of_a_source_shares_one_cache():
    net, X, y = _mlp()
    src = TorchCurvature(net, "cross_entropy", (X, y))
    v = np.ones(src.layout.size)
    src.ggn() @ v
    b = src.cache_info()["bytes"]
    src.fisher() @ v          # another operator object, the same stored outputs
    src.fisher("true") @ v
    assert src.cache_info()["bytes"] == b
    src.hessian() @ v         # the gradient's graph is the second kind of entry
    assert src.cache_info()["bytes"] > b and src.cache_info()["batches_cached"] == 1


def _batches(X, y, k):
    return [(X[i:i + k], y[i:i + k]) for i in range(0, len(X), k)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_bound_that_fits_one_batch_caches_a_prefix_and_stays_exact(kind, stream):
    net, X, y = _mlp()
    parts = _batches(X, y, 8)  # three batches of 8
    data = (lambda: iter(parts)) if stream else parts
    probe = TorchCurvature(net, "cross_entropy", parts, cache_bytes=None)
    v = np.random.default_rng(2).standard_normal(probe.layout.size)
    _op(probe, kind) @ v
    info = probe.cache_info()
    assert info["batches_cached"] == 3 and info["batches"] == 3
    one = info["bytes"] // 3
    limit = one + one // 2  # the first batch fits, not the second
    src = TorchCurvature(net, "cross_entropy", data, cache_bytes=limit)
    ref = TorchCurvature(net, "cross_entropy", (X, y), cache_bytes=0)  # one batch of 24: the same average
    A = _op(src, kind)
    V = np.random.default_rng(3).standard_normal((src.layout.size, 2))
    for _ in range(2):
        _close(A @ v, _op(ref, kind) @ v, 1e-11)
        _close(A @ V, _op(ref, kind) @ V, 1e-11)
        info = src.cache_info()
        assert info["batches_cached"] == 1 and 0 < info["bytes"] <= limit and info["limit"] == limit
        assert info["batches"] == 3


def test_a_stream_that_changes_is_recomputed_not_served_stale():
    net, X, y = _mlp()
    parts = _batches(X, y, 8)
    state = {"flip": False}

    def data():
        return iter(parts[::-1] if state["flip"] else parts)

    src = TorchCurvature(net, "cross_entropy", data)
    H = src.hessian()
    v = np.random.default_rng(4).standard_normal(src.layout.size)
    before = H @ v
    state["flip"] = True  # the same batches in another order: the same average, other entries
    _close(H @ v, before, 1e-12)
    assert src.cache_info()["batches_cached"] == 3


def test_at_starts_an_empty_cache_and_old_operators_keep_theirs():
    net, X, y = _mlp()
    src = TorchCurvature(net, "cross_entropy", (X, y))
    v = np.random.default_rng(5).standard_normal(src.layout.size)
    H, G = src.hessian(), src.ggn()
    h0, g0 = H @ v, G @ v
    new_params = src.params * 0.7
    moved = src.at(params=new_params)
    assert moved.cache_info()["bytes"] == 0 and moved.cache_info()["limit"] == src.cache_info()["limit"]
    net2, _, _ = _mlp()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(torch.as_tensor(new_params), net2.parameters())
    fresh = TorchCurvature(net2, "cross_entropy", (X, y), cache_bytes=0)
    for kind in KINDS:
        _close(_op(moved, kind) @ v, _op(fresh, kind) @ v)
    assert not np.allclose(moved.hessian() @ v, h0)
    np.testing.assert_array_equal(H @ v, h0)  # built before at(): its own parameters and cache
    np.testing.assert_array_equal(G @ v, g0)
    X2 = X + 0.5
    rebound = src.at(data=(X2, y))
    _close(rebound.ggn() @ v, TorchCurvature(net, "cross_entropy", (X2, y), cache_bytes=0).ggn() @ v)


def test_loss_gradient_and_curvature_never_build_the_cache():
    net, X, y = _mlp()
    src = TorchCurvature(net, "cross_entropy", (X, y))
    d = np.ones(src.layout.size)
    src.loss(), src.gradient(), src.directional_curvature(d), src.grad_and_curvature(d)
    src.grad_and_curvature(d, mode="reverse_over_reverse")
    assert src.cache_info()["bytes"] == 0 and src.cache_info()["batches_cached"] == 0


def test_explicit_forward_mode_is_not_cached_and_mse_callable_losses_are():
    net, X, y = _mlp()
    v = np.random.default_rng(6).standard_normal(sum(p.numel() for p in net.parameters()))
    fwd = TorchCurvature(net, "cross_entropy", (X, y), hvp_mode="forward_over_reverse")
    fwd.hessian() @ v
    assert fwd.cache_info()["bytes"] == 0
    Y = torch.randn(24, 3, dtype=torch.float64)
    for loss in ("mse", lambda z, t: ((z - t) ** 2).sum(-1).mean()):
        a = TorchCurvature(net, loss, (X, Y))
        b = TorchCurvature(net, loss, (X, Y), cache_bytes=0)
        for kind in ("H", "ggn", "empirical"):
            _close(_op(a, kind) @ v, _op(b, kind) @ v)
        assert a.cache_info()["batches_cached"] == 1


def test_bytes_are_counted_honestly():
    """The gradient graph of a tanh MLP keeps at least its hidden activations."""
    net, X, y = _mlp()
    X = X.repeat(50, 1)
    y = y.repeat(50)
    src = TorchCurvature(net, "cross_entropy", (X, y))
    src.hessian() @ np.ones(src.layout.size)
    acts = X.shape[0] * 7 * 8  # one (B, 7) float64 activation
    assert src.cache_info()["bytes"] >= 2 * acts
    assert src.cache_info()["bytes"] <= 40 * acts + X.numel() * 8 * 2


@pytest.mark.parametrize("bad,err", [(-1, ValueError), (True, TypeError), (1.5, TypeError), ("1GB", TypeError)])
def test_a_bad_cache_bytes_is_refused_by_name(bad, err):
    net, X, y = _mlp()
    with pytest.raises(err, match="cache_bytes"):
        TorchCurvature(net, "cross_entropy", (X, y), cache_bytes=bad)


def test_no_cache_and_no_bound_are_accepted():
    net, X, y = _mlp()
    src = TorchCurvature(net, "cross_entropy", (X, y), cache_bytes=None)
    src.ggn() @ np.ones(src.layout.size)
    assert src.cache_info()["limit"] is None and src.cache_info()["bytes"] > 0
    assert TorchCurvature(net, "cross_entropy", (X, y), cache_bytes=np.int64(0)).cache_info()["limit"] == 0
