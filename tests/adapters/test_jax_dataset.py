"""JaxCurvature over a whole dataset (issue 13 §1-2): exact sample-weighted averages, one
compilation per batch shape, streams, rebinding; the done-when check on sklearn digits."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import curvlab  # noqa: E402
from curvlab.adapters.jax import JaxCurvature  # noqa: E402
from curvlab.batches import Batches  # noqa: E402
from curvlab.data import load_digits  # noqa: E402

pytestmark = pytest.mark.jax

TRACES = {"n": 0}


def cnn_apply(p, X):
    """A small CNN on 8x8 digits: conv 3x3 (1 -> 2 channels, NCHW) -> tanh -> dense 10."""
    TRACES["n"] += 1  # Python runs only when JAX traces: counts traces, not calls
    h = jax.lax.conv_general_dilated(X, p["conv"]["w"], (1, 1), "VALID") + p["conv"]["b"][None, :, None, None]
    h = jnp.tanh(h).reshape(X.shape[0], -1)
    return h @ p["dense"]["w"].T + p["dense"]["b"]


def _params(seed=0):
    r = np.random.default_rng(seed)
    return {"conv": {"w": jnp.asarray(r.standard_normal((2, 1, 3, 3)) * 0.5), "b": jnp.asarray(r.standard_normal(2) * 0.1)},
            "dense": {"w": jnp.asarray(r.standard_normal((10, 72)) * 0.2), "b": jnp.asarray(r.standard_normal(10) * 0.1)}}


@pytest.fixture(scope="module")
def digits():
    ds = load_digits(dtype=np.float64)
    return ds.X_train.reshape(-1, 1, 8, 8), ds.y_train.astype(np.int64)


def _split(X, y, sizes):
    out, i = [], 0
    for n in sizes:
        out.append((jnp.asarray(X[i:i + n]), jnp.asarray(y[i:i + n])))
        i += n
    return out


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


SIZES = [36] * 7 + [20]  # 8 batches, the last one smaller: 272 samples


@pytest.fixture(scope="module")
def case(digits):
    """The dataset source and the one-batch source (built once: their compiled functions are
    shared by the tests through at())."""
    X, y = digits
    N = sum(SIZES)
    data = _split(X, y, SIZES)
    ds = JaxCurvature(cnn_apply, _params(), "cross_entropy", data, num_data=N)
    one = JaxCurvature(cnn_apply, _params(), "cross_entropy", (jnp.asarray(X[:N]), jnp.asarray(y[:N])))
    return ds, one, data


def test_digits_cnn_eigsh_top5_dataset_equals_one_batch(case):
    """Done when (issue 13, JAX): a small JAX CNN (conv 3x3 + dense) on sklearn digits, a list of
    8 batches, float64: eigsh top-5 of the dataset Hessian equals one batch holding all
    samples (1e-10); the other products agree too."""
    ds, one, _ = case
    N = sum(SIZES)
    assert ds.num_samples == N and ds.batch_size is None and ds.X is None
    assert "on 272 samples in 8 batches" in repr(ds.hessian())
    top_ds = curvlab.eigsh(ds.hessian(), k=5, which="LM", tol=1e-12, rng=0)
    top_one = curvlab.eigsh(one.hessian(), k=5, which="LM", tol=1e-12, rng=0)
    assert top_ds.converged.all() and top_one.converged.all()
    np.testing.assert_allclose(top_ds.eigenvalues, top_one.eigenvalues, rtol=1e-10, atol=0)
    assert np.abs(top_one.eigenvalues).min() > 1e-3  # a real spectrum, not zeros
    d = np.random.default_rng(1).standard_normal(ds.layout.size)
    assert abs(ds.loss() - one.loss()) <= 1e-12 * abs(one.loss())
    assert _rel(ds.gradient()[1], one.gradient()[1]) < 1e-12
    assert _rel(ds.hessian() @ d, one.hessian() @ d) < 1e-12
    assert _rel(ds.ggn() @ d, one.ggn() @ d) < 1e-12
    l1, g1, c1 = ds.grad_and_curvature(d)
    l2, g2, c2 = one.grad_and_curvature(d)
    assert _rel([l1, c1], [l2, c2]) < 1e-12 and _rel(g1, g2) < 1e-12


def _jitted(src):
    for k, f in src._jit.items():
        for j, g in enumerate(f if isinstance(f, tuple) else (f,)):
            if hasattr(g, "_cache_size"):
                yield f"{k}[{j}]", g


def test_compiles_once_per_batch_shape_and_at_reuses(case, digits):
    """Batches of two shapes: every product kind compiles at most twice (one per batch shape);
    later passes and at(params=, data=) of the same shapes compile and trace nothing."""
    ds, one, data = case
    X, y = digits
    rng = np.random.default_rng(2)
    P = ds.layout.size
    V, d = rng.standard_normal((P, 7)), rng.standard_normal(P)

    def every_product(s):
        s.loss(), s.gradient(), s.hvp(d)
        s.hessian() @ d, s.hessian().matmat(V), s.hessian("reverse_over_reverse") @ d
        s.ggn() @ d, s.ggn().matmat(V), s.fisher("empirical") @ d, s.fisher("mc", rng=0) @ d
        s.directional_curvature(d), s.grad_and_curvature(d)

    before = {k: f._cache_size() for k, f in _jitted(ds)}
    every_product(ds)
    sizes = {k: f._cache_size() for k, f in _jitted(ds)}
    # a matvec kind: one compilation per batch shape; a matmat kind ([1]): one per batch shape
    # and number of columns (here one new width: at most two more)
    assert len(sizes) >= 14 and max(sizes.values()) >= 2, str(sizes)
    assert all(n <= 2 for k, n in sizes.items() if not k.endswith("[1]")), str(sizes)
    assert all(n - before.get(k, 0) <= 2 for k, n in sizes.items()), str(sizes)
    traces = TRACES["n"]
    every_product(ds)  # a second pass: no trace
    moved = ds.at(params=ds.params * 0.9, data=_split(X[300:], y[300:], SIZES))
    every_product(moved)
    assert TRACES["n"] == traces
    assert {k: f._cache_size() for k, f in _jitted(moved)} == sizes
    assert moved._jit is ds._jit
    # the numbers moved with the data and the parameters
    ref = one.at(params=ds.params * 0.9, data=(jnp.asarray(X[300:572]), jnp.asarray(y[300:572])))
    assert _rel(moved.hessian() @ d, ref.hessian() @ d) < 1e-12
    print("compiles per product kind (batch shapes 36 and 20):", sizes)


def test_per_sample_gradients_concatenate(case):
    ds, one, _ = case
    np.testing.assert_allclose(ds.per_sample_gradients(), one.per_sample_gradients(), rtol=1e-10, atol=1e-14)


def test_streams_equal_the_list_and_compile_once_per_shape(digits):
    """8 equal batches and a smaller last one as a list, a re-iterable, a callable and a
    Batches: the same numbers; each product kind compiles twice in all."""
    X, y = digits
    data = _split(X, y, [32] * 8 + [16])
    data = [(a, jax.nn.one_hot(b, 10)) for a, b in data]
    ref = JaxCurvature(cnn_apply, _params(1), "mse", data)

    class Loader:  # a re-iterable, like a DataLoader
        def __iter__(self):
            return iter(list(data))

    d = np.random.default_rng(3).standard_normal(ref.layout.size)
    Hd, loss = ref.hessian() @ d, ref.loss()
    for form in (Loader(), lambda: iter(Loader()), Batches(Loader(), num_data=272, check_deterministic=True)):
        s = ref.at(data=form)
        assert s.num_samples in (None, 272)
        np.testing.assert_array_equal(s.hessian() @ d, Hd)  # the same batches in the same order
        assert s.loss() == loss and s.num_samples == 272
    sizes = {k: f._cache_size() for k, f in _jitted(ref)}
    # the Hessian products run from the product cache: its builder and its application
    # compile once per batch shape (the residuals are an argument), shared by every at()
    assert sizes["loss_jit[0]"] == 2 and sizes["cache_build_hvp_forward_over_reverse[0]"] == 2, sizes
    assert sizes["cache_apply_hvp_forward_over_reverse[0]"] == 2, sizes


def test_labels_and_options_over_a_dataset(case):
    ds, _, data = case
    # cross_entropy labels out of range in batch 3 of a stream: refused in the first pass
    bad = [(a, b.at[0].set(10) if i == 3 else b) for i, (a, b) in enumerate(data)]
    s = ds.at(data=lambda: iter(bad))
    with pytest.raises(ValueError, match=r"class labels\) must lie in \[0, 9\].*10\]"):
        s.loss()
    with pytest.raises(ValueError, match=r"class labels\) must lie in \[0, 9\]"):
        ds.at(data=bad)  # a list: when bound
    with pytest.raises(ValueError, match="num_data=100 but data holds 272 samples in 8 batches"):
        ds.at(data=Batches(data, num_data=100)).loss()
    flip = {"n": 0}

    def shuffled():
        flip["n"] += 1
        return iter(data[::-1] if flip["n"] % 2 == 0 else data)

    s = ds.at(data=Batches(shuffled, check_deterministic=True))
    s.loss()
    with pytest.raises(ValueError, match="data is not deterministic"):
        s.loss()
    with pytest.raises(TypeError, match="one-shot iterator"):
        ds.at(data=iter(data))
    with pytest.raises(ValueError, match="batch must be a pair"):
        ds.at(data=data[0][0])
    with pytest.raises(TypeError, match="batch inputs have dtype float32 but the parameters float64"):
        ds.at(data=[data[0], (data[1][0].astype(jnp.float32), data[1][1])])


def test_fisher_and_dthd_over_a_dataset_are_weighted_means_of_its_batches(case):
    """Empirical Fisher and dᵀHd: the sample-weighted mean of the batches' values; the MC draws
    of a dataset are taken once per batch (in pass order) and reused by every product."""
    ds, _, data = case
    sub = data[6:]  # batches of 36 and 20 (shapes compiled already)
    src = ds.at(data=sub)
    d = np.random.default_rng(4).standard_normal(src.layout.size)
    for get in (lambda s: s.fisher("empirical") @ d, lambda s: s.directional_curvature(d, return_all=True),
                lambda s: s.hessian("reverse_over_reverse") @ d):
        parts = [np.asarray(get(ds.at(data=b))) for b in sub]
        assert _rel(get(src), (36 * parts[0] + 20 * parts[1]) / 56) < 1e-13
    F = src.fisher("mc", rng=np.random.default_rng(7), mc_samples=2)
    g = np.random.default_rng(7)
    parts = [ds.at(data=b).fisher("mc", rng=g, mc_samples=2) @ d for b in sub]
    want = (36 * parts[0] + 20 * parts[1]) / 56
    assert _rel(F @ d, want) < 1e-12
    np.testing.assert_array_equal(F @ d, F @ d)  # the same matrix on every pass
    assert "mc_samples=2" in repr(F)


def test_one_batch_in_a_list_is_bitwise_one_batch(case):
    ds, _, data = case
    a, c = ds.at(data=data[7]), ds.at(data=[data[7]])
    d = np.random.default_rng(5).standard_normal(a.layout.size)
    assert a.loss() == c.loss() and np.array_equal(a.hessian() @ d, c.hessian() @ d)
    assert a.grad_and_curvature(d)[2] == c.grad_and_curvature(d)[2]
    assert a.batch_size == 20 and repr(a).startswith("JaxCurvature(cnn_apply on 20 samples,")


def test_progress_bar_is_opt_in(case, capsys):
    pytest.importorskip("tqdm")
    ds, _, data = case
    ds.at(data=Batches(data[:2], progress={"desc": "jaxpass"})).loss()
    assert "jaxpass" in capsys.readouterr().err
    ds.loss()
    assert capsys.readouterr().err == ""
