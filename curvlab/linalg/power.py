"""Power iteration with deflation, and a stochastic power / Oja iteration with averaging.

:func:`power_iteration` finds the ``k`` eigenpairs of largest magnitude one
after another; pair ``i`` runs the power method on the Hotelling-deflated
operator ``A - Σ_{j<i} λ_j v_j v_jᵀ`` with the iterate kept orthogonal to the
pairs found (so the accuracy of pair ``i`` is limited by the error of the
earlier pairs: the reported residuals ``‖A v - θ v‖`` are the true ones). It is
the simple baseline many papers use; its rate is
``|λ_{i+1}/λ_i|`` per matvec, so it needs far more matvecs than
:func:`~curvlab.linalg.eigsh` on small gaps (see ``benchmarks/run_eigen.py``).

:func:`stochastic_power` estimates the top eigenpair of an *expected*
operator ``Ā = E[A_t]`` from products with fresh mini-batch operators ``A_t``
(a :class:`~curvlab.linalg.StochasticOperator`): a burn-in of stochastic power
steps ``v ← A_t v / ‖A_t v‖``, then Oja steps ``v ← normalise(v + η_s A_t v)``
with ``η_s = 1 / (θ̄ (s + 1))`` (harmonic averaging of the products, which
makes the iterate a running mean that averages the batch noise away), and the
eigenvalue as the mean Rayleigh quotient ``v_tᵀ A_t v_t`` over the averaging
phase, with its standard error. Method inspired by Oja (1982) and the
averaged stochastic power method; the error decreases as batches accumulate.

Example
-------
>>> import numpy as np
>>> res = power_iteration(np.diag([1.0, 2.0, 10.0]), k=1, rng=0, tol=1e-10)
>>> round(float(res.eigenvalues[0]), 8), bool(res.converged[0])
(10.0, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ._checks import as_symmetric_operator, check_budget, check_positive_int, eigen_problem, host_floats, start_vectors
from ._probes import sample_se
from .results import EigResult, StochasticEigResult, eig_result, warn_unconverged

__all__ = ["power_iteration", "stochastic_power"]


def power_iteration(
    A: Any,
    k: int = 1,
    tol: float = 1e-6,
    *,
    maxiter: int = 1000,
    max_matvecs: int | None = None,
    v0: Any = None,
    rng: Any = None,
    deflation_tol_factor: float = 1e-2,
    return_history: bool = False,
    strict: bool = False,
    warn: bool = True,
    check_symmetry: bool | None = None,
) -> EigResult:
    """``k`` largest-magnitude eigenpairs by power iteration with deflation.

    Parameters
    ----------
    A : symmetric ``(n, n)`` operator
    k : pairs wanted (found one at a time)
    tol : stop pair ``i`` when ``‖A v - θ v‖ <= tol |θ|``
    maxiter : power steps per pair; max_matvecs : total budget
    v0 : start vector of the first pair (later pairs start from ``rng``)
    deflation_tol_factor : pairs that are deflated for later ones are
        converged to ``tol * deflation_tol_factor**(k - 1 - i)``, since their error limits
        the residual the later pairs can reach

    strict : raise :class:`ConvergenceError` unless all ``k`` pairs converged
    warn : issue a :class:`ConvergenceWarning` unless all ``k`` pairs converged

    Returns
    -------
    EigResult ordered as found (descending magnitude); unconverged pairs are
    flagged (status "max_iter", "max_matvecs" or "nonfinite"). NaN/Inf from
    the operator stops the run. The residuals are the true ``‖A v - θ v‖``
    of the deflated operator, computed from each product.

    Host syncs: one per matvec (``θ`` and the residual norm in one transfer).
    """
    op, n, k, _, tol = eigen_problem(A, k, tol, check_symmetry=check_symmetry, rng=rng)
    maxiter = check_positive_int(maxiter, "maxiter")
    budget = check_budget(max_matvecs)
    xp, dt = op.xp, op.dtype
    g = backend.default_rng(rng, xp)
    before = op.n_matvecs
    V = xp.zeros((n, k), dtype=dt)
    lam = np.full(k, np.nan)
    rn = np.full(k, np.inf)
    conv = np.zeros(k, dtype=bool)
    history: list[dict[str, Any]] | None = [] if return_history else None
    message = status = "converged"
    iters = 0
    for i in range(k):
        v = start_vectors(op, v0 if i == 0 else None, g)
        Vi = V[:, :i]
        lam_i = xp.asarray(lam[:i].astype(dt))
        stop_all = False
        for _ in range(maxiter + 1):
            if i:
                v = v - Vi @ (Vi.T @ v)
            v = v / xp.linalg.norm(v)
            if op.n_matvecs - before >= budget:
                message, status = f"matvec budget {max_matvecs} exhausted", "max_matvecs"
                stop_all = True
                break
            w = op.matvec(v)
            iters += 1
            if i:
                w = w - Vi @ (lam_i * (Vi.T @ v))
            th_d = v @ w
            th, r = host_floats(xp, th_d, xp.linalg.norm(w - th_d * v))  # the step's one device sync
            if not (np.isfinite(th) and np.isfinite(r)):
                message, status = f"operator returned NaN/Inf after {op.n_matvecs - before} matvecs", "nonfinite"
                stop_all = True
                th, r = np.nan, np.inf
                break
            lam[i], rn[i] = th, r
            V[:, i] = v
            if history is not None:
                history.append({"n_matvecs": op.n_matvecs - before, "eigenvalues": np.array([th]), "residual_norms": np.array([r])})
            if r <= tol * deflation_tol_factor ** (k - 1 - i) * abs(th):
                conv[i] = True
                break
            v = w  # not zero: w = 0 gives θ = r = 0, which passed the test above
        else:
            if status == "converged":
                message, status = f"maxiter {maxiter} reached for pair {i}", "max_iter"
        if stop_all:
            break
        if not conv[i] and status == "converged":
            message, status = f"maxiter {maxiter} reached for pair {i}", "max_iter"
    return eig_result(
        "power_iteration", strict, warn, status=status, eigenvalues=lam, eigenvectors=V, residual_norms=rn, converged=conv,
        n_matvecs=op.n_matvecs - before, n_iterations=iters, history=history,
        method="power iteration with deflation", message=message, tol=tol,
    )


def stochastic_power(
    A: Any,
    n_steps: int = 200,
    *,
    burn_in: float = 0.3,
    v0: Any = None,
    rng: Any = None,
    tol: float | None = None,
    return_history: bool = False,
    warn: bool = True,
) -> StochasticEigResult:
    """Top eigenpair of ``E[A_t]`` from ``n_steps`` products with fresh mini-batch operators.

    Parameters
    ----------
    A : a :class:`~curvlab.linalg.StochasticOperator` (each ``matvec`` draws
        a batch with its own ``rng``), or a deterministic symmetric operator
        (then this is plain power iteration followed by averaging).
    n_steps : total products (one batch each)
    burn_in : fraction of ``n_steps`` spent on plain stochastic power steps
    v0 : start vector; rng : generator for the start vector only
    tol : when given, ``converged`` says whether ``std_error <= tol |λ|``
    warn : issue a :class:`~curvlab.linalg.results.ConvergenceWarning` when the
        result is not converged (``False`` silences it)

    Returns
    -------
    StochasticEigResult (eigenvalue with standard error, unit eigenvector).
    Assumes the top eigenvalue of ``Ā`` is the largest in magnitude and positive
    (a Hessian near a minimum); NaN/Inf products stop the run (reported).

    Host syncs: one per step (``vᵀw`` and ``‖w‖`` in one transfer).

    Example
    -------
    >>> import numpy as np
    >>> from curvlab.linalg.stochastic import StochasticOperator
    >>> from curvlab.linalg.operators import DenseOperator
    >>> M = np.diag([5.0, 1.0, 0.5])
    >>> def make(b):  # noisy symmetric batch matrices with mean M
    ...     return DenseOperator(M + b, symmetric=True)
    >>> noise = lambda rng: (lambda E: 0.1 * (E + E.T))(rng.standard_normal((3, 3)))
    >>> res = stochastic_power(StochasticOperator(make, noise, rng=1, shape=(3, 3)), 400, rng=0)
    >>> abs(res.eigenvalue - 5.0) < 5 * res.std_error + 0.05
    True
    """
    op = as_symmetric_operator(A, allow_stochastic=True, check_symmetry=False if hasattr(A, "stochastic") else None, rng=rng)
    n_steps = check_positive_int(n_steps, "n_steps", minimum=4)
    if not 0.0 <= burn_in < 1.0:
        raise ValueError(f"burn_in must be in [0, 1), got {burn_in}")
    xp, dt = op.xp, op.dtype
    g = backend.default_rng(rng, xp)
    v = start_vectors(op, v0, g)
    v = v / dt.type(float(xp.linalg.norm(v)))
    before = op.n_matvecs
    nb0 = getattr(op, "n_batches", 0)
    n_burn = int(burn_in * n_steps)
    rq: list[float] = []
    history: list[dict[str, Any]] | None = [] if return_history else None
    message = "completed"
    theta_bar = np.nan
    for t in range(n_steps):
        w = op.matvec(v)
        th, nw = host_floats(xp, v @ w, xp.linalg.norm(w))  # the step's one device sync
        if not np.isfinite(th):  # θ = vᵀw is NaN/Inf whenever w is (v is finite)
            message = f"operator returned NaN/Inf at step {t + 1}"
            break
        if t < n_burn:
            if nw == 0.0:
                message = "zero product: the start vector is in the null space"
                break
            v = w / dt.type(nw)
            theta_bar = th
        else:
            rq.append(th)
            s = len(rq)
            theta_bar = float(np.mean(rq))
            if theta_bar <= 0:
                message = "mean Rayleigh quotient is not positive: top eigenvalue not dominant"
                break
            eta = 1.0 / (theta_bar * s)
            v = v + dt.type(eta) * w
            v = v / xp.linalg.norm(v)
        if history is not None:
            history.append({"step": t + 1, "rayleigh": th, "eigenvalue": theta_bar})
    m = len(rq)
    lam = float(np.mean(rq)) if m else float(theta_bar)
    se = sample_se(np.asarray(rq))
    ok = message == "completed" and (tol is None or se <= tol * abs(lam))
    if not ok:
        why = message if message != "completed" else f"std_error {se:.2e} > tol·|λ| = {tol * abs(lam):.2e}"
        warn_unconverged("stochastic_power", why, warn=warn)
    return StochasticEigResult(
        eigenvalue=lam,
        std_error=se,
        eigenvector=v,
        n_matvecs=op.n_matvecs - before,
        n_batches=getattr(op, "n_batches", 0) - nb0,
        n_steps=len(rq) + min(n_burn, n_steps),
        converged=bool(ok),
        history=history,
        message=message,
    )
