"""
.. _guide-numpy:

NumPy and SciPy: eigen-solvers and estimators on matrices and ``LinearOperator`` s
==================================================================================

curvlab's solvers take any symmetric operator: a dense or sparse matrix, a SciPy
``LinearOperator``, a curvlab :class:`curvlab.LinearOperator` or a callable. Each returns a
typed result that says **how far it can be trusted**: true residuals or an error bar, a
``status`` (:class:`curvlab.Status`) and the work done, and it warns
(:class:`curvlab.ConvergenceWarning`) when it did not converge. This page needs only the core
install (NumPy, SciPy, Numba).
"""

# %%
# Operators from SciPy
# --------------------
# :func:`curvlab.aslinearoperator` wraps a matrix or a SciPy operator; the ``symmetric``/``psd``
# tags are checked with random probes, not trusted.
import warnings

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import curvlab

n = 400
A = sp.random(n, n, density=0.01, random_state=0)
A = (A @ A.T + 0.1 * sp.eye(n)).tocsr()                   # a sparse SPD matrix
op = curvlab.aslinearoperator(A, symmetric=True, psd=True)
scipy_op = spla.aslinearoperator(A)                        # a SciPy LinearOperator works too
exact = np.linalg.eigvalsh(A.toarray())[::-1]               # the dense reference
print(op, "| largest:", exact[:3])

# %%
# Choosing a solver
# -----------------
# * :func:`curvlab.eigsh` — thick-restart Lanczos, one vector at a time: the fewest products;
#   the default choice for a few extreme eigenvalues.
# * :func:`curvlab.lobpcg` — block LOBPCG: one ``matmat`` of ``block_size`` columns per
#   iteration; more products in all, but wins when a block product costs much less per column
#   than single products (torch/JAX operators, the reference MLP, GPUs) or when eigenvalues
#   are repeated; takes a preconditioner. ``eigsh(..., solver="lobpcg")`` is the same.
# * :func:`curvlab.power_iteration` — the simplest, for the top eigenvalue (with deflation for
#   a few) when the gap is large; slow when the top eigenvalues cluster.
#
# All three verify the returned pairs on their **true** residuals ``‖Av − λv‖``.
results = {
    "eigsh": curvlab.eigsh(op, k=3, which="LA", tol=1e-8, rng=0, return_history=True),
    "lobpcg": curvlab.lobpcg(scipy_op, k=3, which="LA", tol=1e-8, rng=0, block_size=6, return_history=True),
    "power_iteration": curvlab.power_iteration(op, k=1, tol=1e-8, rng=0, maxiter=4000, return_history=True),
}
for name, res in results.items():
    err = np.abs(res.eigenvalues - exact[: len(res.eigenvalues)]).max()
    print(f"{name:16s} status={res.status!s:10s} matvecs={res.n_matvecs:5d} "
          f"max residual={res.residual_norms.max():.1e}  |error|={err:.1e}")

# %%
# The history (``return_history=True``) shows how each solver spent its products.
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3))
for name, res in results.items():
    h = res.history or []
    ax.semilogy([e["n_matvecs"] for e in h], [max(np.max(e["residual_norms"]), 1e-16) for e in h],
                marker=".", label=name)
ax.set(xlabel="matrix-vector products", ylabel="largest residual norm",
       title="Convergence on a sparse SPD matrix (n = 400)")
ax.legend()
fig.tight_layout()

# %%
# Reading a result's status
# -------------------------
# A budget too small for the tolerance does not give a silent wrong answer: the result comes
# back with ``converged`` false per pair, ``status`` saying why, and a
# :class:`curvlab.ConvergenceWarning`; ``strict=True`` raises
# :class:`curvlab.ConvergenceError` instead, with the result attached.
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    starved = curvlab.eigsh(op, k=3, which="LA", tol=1e-12, max_matvecs=25, rng=0)
print(starved)
print("ok:", starved.status.ok, "| meaning:", starved.status.message)
print("warning:", caught[0].category.__name__, "-", caught[0].message)
try:
    curvlab.eigsh(op, k=3, which="LA", tol=1e-12, max_matvecs=25, rng=0, strict=True)
except curvlab.ConvergenceError as e:
    print("strict=True raised:", e, "| attached status:", e.result.status)

# %%
# Trace, diagonal and log-determinant with error bars
# ---------------------------------------------------
# The estimators return :class:`curvlab.TraceEstimate` / :class:`curvlab.DiagonalEstimate`
# whose ``std_error`` covers every error source the routine knows of (for SLQ also the
# quadrature error), or ask for a ``target_rel_error`` and let them stop when it is met.
true_trace = A.diagonal().sum()
for est in (curvlab.hutchinson(op, 100, rng=0), curvlab.hutchpp(op, 100, rng=0),
            curvlab.xtrace(op, 100, rng=0), curvlab.hutchpp(op, target_rel_error=0.01, rng=0)):
    print(f"{est.method:10s} {est.estimate:9.3f} +/- {est.std_error:7.3f}  "
          f"(true {true_trace:.3f}, {est.n_matvecs} matvecs, {est.status})")
diag = curvlab.xdiag(op, 80, rng=0)
print("xdiag: max |error| =", float(np.abs(diag.estimate - A.diagonal()).max()))
logdet = curvlab.slq_logdet(op, n_probes=10, m=40, rng=0)
print(f"logdet {logdet.estimate:.2f} +/- {logdet.std_error:.2f} (true {np.linalg.slogdet(A.toarray())[1]:.2f})")

# %%
# Linear solves
# -------------
# :func:`curvlab.solve` picks CG for a ``psd`` operator and MINRES otherwise, and reports a
# :class:`curvlab.SolveResult` with the true residual.
b = np.ones(n)
x = curvlab.solve(op, b, tol=1e-10)
print(x.status, x.method, "relative residual:", np.linalg.norm(A @ x.x - b) / np.linalg.norm(b))
