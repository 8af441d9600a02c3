"""Top-k Hessian eigenvalues of the reference MLP (1,810 parameters) from every solver vs numpy eigvalsh."""

from __future__ import annotations

import numpy as np
import pytest

from curvlab.data import load_digits
from curvlab.linalg import (
    StochasticOperator,
    eigsh,
    lobpcg,
    minibatch_sampler,
    power_iteration,
    slq,
    stochastic_power,
)
from curvlab.models.mlp import MLP, hessian_operator


@pytest.fixture(scope="module")
def mlp_case():
    ds = load_digits(dtype=np.float64)
    X, y = ds.X_train[:256], ds.y_train[:256]
    model = MLP([64, 24, 10], activation="tanh", loss="cross_entropy", dtype=np.float64)
    params = model.init_params(np.random.default_rng(0))
    # a few plain gradient steps so the Hessian is that of a trained-ish network
    for _ in range(30):
        _, g = model.loss_and_grad(params, X, y)
        params = params - 0.5 * g
    H = model.dense_hessian(params, X, y)
    lam = np.linalg.eigvalsh(0.5 * (H + H.T))
    return model, params, X, y, lam


def test_mlp_hessian_topk_all_solvers(mlp_case):
    model, params, X, y, lam = mlp_case
    assert model.n_params == 1810
    op = hessian_operator(model, params, X, y)
    k = 5
    top = lam[::-1][:k]
    scale = np.abs(lam).max()
    r = eigsh(op, k=k, which="LA", tol=1e-8, rng=0)
    assert r.all_converged and np.allclose(r.eigenvalues, top, atol=1e-7 * scale)
    r = lobpcg(op, k=k, which="LA", tol=1e-6, rng=0, block_size=k + 3, maxiter=400)
    assert r.all_converged and np.allclose(r.eigenvalues, top, atol=1e-6 * scale)
    # both ends (the Hessian is indefinite away from a minimum)
    r = eigsh(op, k=4, which="BE", tol=1e-8, rng=1)
    want = np.sort(np.concatenate([lam[:2], lam[-2:]]))
    assert r.all_converged and np.allclose(r.eigenvalues, want, atol=1e-7 * scale)
    # power iteration finds the largest-magnitude eigenvalue
    r = power_iteration(op, k=1, tol=1e-6, maxiter=3000, rng=0)
    lm = lam[np.argmax(np.abs(lam))]
    assert r.all_converged and abs(r.eigenvalues[0] - lm) < 1e-6 * scale


def test_mlp_hessian_slq_trace(mlp_case):
    model, params, X, y, lam = mlp_case
    op = hessian_operator(model, params, X, y)
    sd = slq(op, 8, 30, rng=0)
    est = sd.trace(lambda t: t)
    assert abs(est.estimate - lam.sum()) <= 4 * est.std_error
    # extreme quadrature nodes reach the extreme eigenvalues
    assert abs(sd.nodes.max() - lam[-1]) < 1e-6 * abs(lam[-1])


def test_mlp_stochastic_power_on_minibatch_hessians(mlp_case):
    model, params, X, y, lam = mlp_case
    sampler = minibatch_sampler(X, y, 64)
    errs = {}
    for T in (20, 320):
        e = []
        for seed in range(3):
            A = StochasticOperator(lambda b: hessian_operator(model, params, *b), sampler, rng=seed, shape=(1810, 1810))
            e.append(abs(stochastic_power(A, T, rng=seed).eigenvalue - lam[-1]) / lam[-1])
        errs[T] = np.mean(e)
    # the expected mini-batch Hessian (sampling with replacement of batches) is the full-batch Hessian
    assert errs[320] < errs[20] and errs[320] < 0.1
