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
with ``η_s = 1 / (θ̄ s)`` (harmonic averaging of the products, which
makes the iterate a running mean that averages the batch noise away), then an
evaluation of the final vector on fresh batches: the eigenvalue is its mean
Rayleigh quotient, and the error bar covers both the sampling error and the
bias ``λ_max − vᵀĀv >= 0`` of an imperfect vector (through an unbiased
estimate of the residual ``‖Āv − θv‖``). Method inspired by Oja (1982) and the
averaged stochastic power method; the error decreases as batches accumulate.

Examples
--------
>>> import numpy as np
>>> res = power_iteration(np.diag([1.0, 2.0, 10.0]), k=1, rng=0, tol=1e-10)
>>> round(float(res.eigenvalues[0]), 8), bool(res.converged[0])
(10.0, True)
"""

from __future__ import annotations

import math

from typing import Any

import numpy as np

from .. import backend
from ._checks import as_symmetric_operator, check_budget, check_positive_int, eigen_problem, host_floats, start_vectors
from ._probes import sample_se, t_factor
from ._progress import Monitor
from .results import ConvergenceError, EigResult, Status, StochasticEigResult, eig_result, warn_unconverged

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
    callback: Any = None,
    progress: Any = False,
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
    callback, progress : see :mod:`curvlab.linalg._progress`; called once per
        power step with ``n_matvecs``, ``pair``, ``eigenvalue`` and
        ``residual_norm``; a stop ends the run (status "max_iter", message
        "stopped by callback ...")

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
    mon = Monitor("power_iteration", callback, progress, total=None, postfix=("eigenvalue", "residual_norm"))
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
            stop_cb = mon.active and mon.update(n_matvecs=op.n_matvecs - before, pair=i, eigenvalue=th, residual_norm=r)
            if r <= tol * deflation_tol_factor ** (k - 1 - i) * abs(th):
                conv[i] = True
                if stop_cb and i + 1 < k:
                    message, status, stop_all = mon.message, "max_iter", True
                break
            if stop_cb:
                message, status, stop_all = mon.message, "max_iter", True
                break
            v = w  # not zero: w = 0 gives θ = r = 0, which passed the test above
        else:
            if status == "converged":
                message, status = f"maxiter {maxiter} reached for pair {i}", "max_iter"
        if stop_all:
            break
        if not conv[i] and status == "converged":
            message, status = f"maxiter {maxiter} reached for pair {i}", "max_iter"
    mon.close()
    return eig_result(
        "power_iteration", strict, warn, status=status, eigenvalues=lam, eigenvectors=V, residual_norms=rn, converged=conv,
        n_matvecs=op.n_matvecs - before, n_iterations=iters, history=history,
        method="power iteration with deflation", message=message, tol=tol,
    )


def stochastic_power(
    A: Any,
    n_steps: int = 200,
    *,
    burn_in: float = 0.5,
    eval_fraction: float = 0.25,
    v0: Any = None,
    rng: Any = None,
    tol: float | None = None,
    return_history: bool = False,
    warn: bool = True,
    strict: bool = False,
) -> StochasticEigResult:
    """Top eigenpair of ``Ā = E[A_t]`` from ``n_steps`` products with fresh mini-batch operators.

    Three phases (a :class:`~curvlab.linalg.StochasticOperator`): ``burn_in``
    of the steps are stochastic power steps ``v ← A_t v/‖A_t v‖``; then Oja
    steps ``v ← normalise(v + η_s A_t v)``, ``η_s = 1/(θ̄ s)`` (harmonic
    averaging of the batch noise); the last ``eval_fraction`` of the steps
    (at least 4) evaluate the final ``v`` on fresh batches ``A_j`` that did
    not fit it. Their mean ``vᵀA_j v`` is the eigenvalue (unbiased for
    ``θ = vᵀĀv``, with an i.i.d. standard error), and the cross products
    ``(P A_i v)ᵀ(P A_j v)``, ``P = I − vvᵀ``, of 8 groups of them give an
    unbiased estimate of ``‖Āv − θv‖²`` with a jackknife error. Since
    ``0 <= λ_max − θ <= ‖Āv − θv‖/cos∠(v, u_max)``, the error bar adds the
    bias bound ``√2 ‖Āv − θv‖`` (upper confidence limit), valid when ``v``
    has at least half its weight on the top eigenvector; see
    :class:`~curvlab.linalg.results.StochasticEigResult`. A deterministic
    operator gets plain power steps and one exact evaluation product: the
    bias bound is the larger of ``√2‖Av − θv‖`` (exact) and the geometric
    tail of the Rayleigh quotients' rise; quotients still rising faster than
    geometrically (the vector not yet aligned: a tiny gap) leave the result
    "unresolved". No gap-free bound exists: a cluster of near-equal top
    eigenvalues that the run cannot separate can leave ``cos² < ½`` unnoticed
    (``tests/linalg/test_coverage.py::KNOWN_UNDERCOVERED``).

    Parameters
    ----------
    A : a :class:`~curvlab.linalg.StochasticOperator` (each ``matvec`` draws
        a batch with its own ``rng``), or a deterministic symmetric operator.
    n_steps : total products (one batch each), evaluation included; >= 4
    burn_in : fraction of ``n_steps`` spent on plain stochastic power steps, in ``[0, 1)``.
        The bias bound needs ``v`` aligned with the top eigenvector, which the
        power steps do fast and the Oja steps slowly: at 0.3 the large-gap
        coverage case (n = 40, 300 steps) had ``cos² < ½`` in 6% of the seeds
    eval_fraction : fraction of ``n_steps`` (at least 4 products) that
        evaluate the final vector, in ``(0, 1)``; stochastic operators only
    v0 : start vector; rng : generator for the start vector only
    tol : when given, ``converged`` also needs ``std_error <= tol |λ|``
    warn : issue a :class:`~curvlab.linalg.results.ConvergenceWarning` when the
        result is not converged (``False`` silences it)
    strict : raise :class:`~curvlab.linalg.results.ConvergenceError` instead

    Returns
    -------
    StochasticEigResult (eigenvalue, error bar and its parts, unit eigenvector,
    status). Assumes the top eigenvalue of ``Ā`` is the largest in magnitude
    and positive (a Hessian near a minimum): a Rayleigh quotient that is not
    positive stops the run ("breakdown"); NaN/Inf products stop it
    ("nonfinite"); fewer than 3 evaluation products, or (deterministic) a
    vector not yet aligned, leave the error bar "unresolved" (infinite).

    Host syncs: one per step (``vᵀw`` and ``‖w‖`` in one transfer), one for
    the start vector's norm and one for the evaluation groups' Gram matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from curvlab.linalg.stochastic import StochasticOperator
    >>> from curvlab.linalg.operators import DenseOperator
    >>> M = np.diag([5.0, 1.0, 0.5])
    >>> def make(b):  # noisy symmetric batch matrices with mean M
    ...     return DenseOperator(M + b, symmetric=True)
    >>> noise = lambda rng: (lambda E: 0.1 * (E + E.T))(rng.standard_normal((3, 3)))
    >>> res = stochastic_power(StochasticOperator(make, noise, rng=1, shape=(3, 3)), 400, rng=0)
    >>> abs(res.eigenvalue - 5.0) <= 2 * res.std_error, res.status == "converged"
    (True, True)
    """
    op = as_symmetric_operator(A, allow_stochastic=True, check_symmetry=False if hasattr(A, "stochastic") else None, rng=rng)
    n_steps = check_positive_int(n_steps, "n_steps", minimum=4)
    if isinstance(burn_in, (bool, np.bool_)) or not isinstance(burn_in, (int, float, np.floating, np.integer)):
        raise TypeError(f"burn_in must be a float in [0, 1), got {type(burn_in).__name__} {burn_in!r}")
    if not 0.0 <= burn_in < 1.0:
        raise ValueError(f"burn_in must be in [0, 1), got {burn_in}")
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float, np.floating, np.integer)):
        raise TypeError(f"eval_fraction must be a float in (0, 1), got {type(eval_fraction).__name__}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if tol is not None and (isinstance(tol, (bool, np.bool_)) or not isinstance(tol, (int, float, np.floating))
                            or not math.isfinite(tol) or tol <= 0):
        raise ValueError(f"tol must be None or a finite float > 0, got {tol!r}")
    xp, dt = op.xp, op.dtype
    g = backend.default_rng(rng, xp)
    v = start_vectors(op, v0, g)
    v = v / dt.type(float(xp.linalg.norm(v)))
    before = op.n_matvecs
    nb0 = getattr(op, "n_batches", 0)
    n = int(op.shape[0])
    stochastic = bool(getattr(op, "stochastic", False))
    if stochastic:
        n_burn = int(burn_in * n_steps)
        n_eval = max(0, min(max(4, int(round(eval_fraction * n_steps))), n_steps - n_burn - 1))
    else:  # deterministic: power steps, then one exact evaluation product
        n_burn, n_eval = n_steps - 1, 1
    n_fit = n_steps - n_eval
    rq: list[float] = []
    power_rq: list[float] = []  # Rayleigh quotients of the power steps (deterministic: exact, a convergence record)
    history: list[dict[str, Any]] | None = [] if return_history else None
    message, status = "completed", Status.CONVERGED
    theta_bar = np.nan
    steps = 0
    for t in range(n_fit):
        w = op.matvec(v)
        steps += 1
        th, nw = host_floats(xp, v @ w, xp.linalg.norm(w))  # the step's one device sync
        if not np.isfinite(th):  # θ = vᵀw is NaN/Inf whenever w is (v is finite)
            message, status = f"operator returned NaN/Inf at step {t + 1}", Status.NONFINITE
            break
        if t < n_burn:
            if nw == 0.0:
                message, status = "zero product: the start vector is in the null space", Status.BREAKDOWN
                break
            v = w / dt.type(nw)
            theta_bar = th
            power_rq.append(th)
        else:
            rq.append(th)
            s = len(rq)
            theta_bar = float(np.mean(rq))
            if theta_bar <= 0:
                message, status = "mean Rayleigh quotient is not positive: top eigenvalue not dominant", Status.BREAKDOWN
                break
            eta = 1.0 / (theta_bar * s)
            v = v + dt.type(eta) * w
            v = v / xp.linalg.norm(v)
        if history is not None:
            history.append({"step": t + 1, "rayleigh": th, "eigenvalue": theta_bar})
    lam, se, bias, rnorm, std = float(theta_bar), float("inf"), float("inf"), float("nan"), float("inf")
    thetas: list[float] = []
    if status == Status.CONVERGED:
        # evaluation: the final v on fresh batches; group sums of P w_j = w_j - (vᵀw_j) v
        G = max(1, min(8, n_eval))
        S = xp.zeros((n, G), dtype=np.float64)
        counts = np.zeros(G)
        wmax = 0.0
        for j in range(n_eval):
            w = op.matvec(v)
            steps += 1
            th_d = v @ w
            th, nw = host_floats(xp, th_d, xp.linalg.norm(w))  # the step's one device sync
            if not (np.isfinite(th) and np.isfinite(nw)):
                message, status = f"operator returned NaN/Inf at evaluation step {j + 1}", Status.NONFINITE
                break
            thetas.append(th)
            wmax = max(wmax, nw)
            S[:, j % G] += (w - th_d * v).astype(np.float64)
            counts[j % G] += 1
            if history is not None:
                history.append({"step": steps, "rayleigh": th, "eigenvalue": float(np.mean(thetas))})
        if status == Status.CONVERGED:
            lam = float(np.mean(thetas)) if thetas else lam
            floor = 10.0 * float(np.sqrt(n)) * float(np.finfo(dt).eps) * max(wmax, abs(lam))
            if stochastic:
                se = float(sample_se(np.asarray(thetas)) * t_factor(len(thetas) - 1)) if len(thetas) > 1 else float("inf")
            else:
                se = 0.0
            if G >= 3:
                M = S / xp.asarray(counts)[None, :]
                gram = np.asarray(backend.to_numpy(M.T @ M), dtype=np.float64)  # one sync
                off = float(gram.sum() - np.trace(gram))
                u = off / (G * (G - 1))
                loo = np.array([(off - 2.0 * (gram[i].sum() - gram[i, i])) / ((G - 1) * (G - 2)) for i in range(G)])
                jse = float(np.sqrt((G - 1) / G * np.sum((loo - loo.mean()) ** 2)))
                r2_up = max(u, 0.0) + 2.0 * t_factor(G - 1) * jse
                rnorm = float(np.sqrt(max(u, 0.0)))
            elif G == 1 and not stochastic:
                r2_up = float(backend.to_numpy(S[:, 0] @ S[:, 0]))  # exact residual (one sync)
                rnorm = float(np.sqrt(r2_up))
            else:
                r2_up = float("inf")
            bias = float(np.sqrt(2.0 * r2_up))
            geometric = True
            if not stochastic:
                tail, geometric = _rayleigh_tail(power_rq + [lam], floor)
                bias = max(bias, tail)
            std = float(se + 0.5 * bias + floor)
            if not geometric:
                message, status = (
                    "the Rayleigh quotients are still rising faster than geometrically: the vector is not yet "
                    "aligned with the top eigenvector (tiny gap or too few steps; increase n_steps)", Status.UNRESOLVED)
                std = float("inf")
            elif not np.isfinite(std):
                message, status = (
                    f"{n_eval} evaluation products are too few for an error bar (need >= 3; "
                    f"raise n_steps or eval_fraction)", Status.UNRESOLVED)
            elif lam <= 0:
                message, status = "Rayleigh quotient is not positive: top eigenvalue not dominant", Status.BREAKDOWN
                std = float("inf")
            elif tol is not None and std > tol * abs(lam):
                message, status = f"std_error {std:.2e} > tol·|λ| = {tol * abs(lam):.2e} after {n_steps} steps", Status.MAX_ITER
    res = StochasticEigResult(
        eigenvalue=lam,
        std_error=std,
        eigenvector=v,
        n_matvecs=op.n_matvecs - before,
        n_batches=getattr(op, "n_batches", 0) - nb0,
        n_steps=steps,
        converged=status == Status.CONVERGED,
        history=history,
        message=message,
        status=status,
        sampling_error=se,
        bias_bound=bias,
        residual_norm=rnorm,
        n_eval=len(thetas),
        method="stochastic power (Oja) with averaging" if stochastic else "power iteration (deterministic operator)",
    )
    if not res.converged:
        text = f"{status.value}: {message}"
        if strict:
            raise ConvergenceError(f"stochastic_power: {text}", res)
        warn_unconverged("stochastic_power", text, warn=warn)
    return res


def _rayleigh_tail(theta: list[float], floor: float) -> tuple[float, bool]:
    """``(tail, geometric)``: the remaining rise of exact power-iteration Rayleigh quotients ``theta``.

    From ``θ_T``, ``θ_{T-d}``, ``θ_{T-2d}`` (``d = max(1, T // 5)``): increments
    ``δ₁ = θ_T − θ_{T-d}``, ``δ₀ = θ_{T-d} − θ_{T-2d}``. Below the rounding
    ``floor``: converged (tail 0). Shrinking geometrically (``0 < δ₁ < δ₀``):
    the tail ``δ₁ ρ/(1 − ρ)``, ``ρ = δ₁/δ₀``. Otherwise (still accelerating, or
    falling: the iterate is not in its final regime) ``geometric`` is False.
    """
    T = len(theta) - 1
    d = max(1, T // 5)
    if T < 2 * d:
        return float("inf"), False
    d1, d0 = theta[T] - theta[T - d], theta[T - d] - theta[T - 2 * d]
    if abs(d1) <= floor:
        return 0.0, True
    if 0.0 < d1 < d0:
        r = d1 / d0
        return float(d1 * r / (1.0 - r)), True
    return float("inf"), False
