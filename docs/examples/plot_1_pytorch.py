"""
.. _guide-pytorch:

PyTorch: the curvature of your model, and training with curvlab's methods
=========================================================================

Your ``nn.Module``, your ``DataLoader``: :class:`curvlab.adapters.torch.TorchCurvature` binds
them (and a loss) into a **curvature source** whose Hessian, GGN and Fisher are
:class:`curvlab.LinearOperator` s with exact products averaged over the whole dataset. Every
curvlab solver then runs on them, and every curvlab method trains the model through
``torch.optim`` with :class:`curvlab.adapters.torch.CurvlabOptimizer`.

Needs the ``torch`` extra (``pip install "curvlab[torch]"``). This page runs in a few seconds
on two CPU cores.
"""

# %%
# The model and the data
# ----------------------
# scikit-learn's bundled 8x8 digits (:func:`curvlab.data.load_digits`, no download), a small
# tanh MLP, and a ``DataLoader`` that is **not shuffled**: an iterative solver applies the
# operator many times and needs the same matrix every time (pass
# ``check_deterministic=True`` to have that checked).
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import curvlab
from curvlab.adapters.torch import CurvlabOptimizer, TorchCurvature

torch.manual_seed(0)
ds = curvlab.data.load_digits(dtype="float32")
X, y = torch.from_numpy(ds.X_train[:512]), torch.from_numpy(ds.y_train[:512])
loader = DataLoader(TensorDataset(X, y), batch_size=128)
model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10)).eval()

src = TorchCurvature(model, "cross_entropy", loader)    # the whole dataset, exactly
H = src.hessian()                                         # a curvlab LinearOperator (P, P)
print(src.layout.names, "P =", src.layout.size, "| H:", H.shape, H.dtype)

# %%
# Top eigenvalues
# ---------------
# :func:`curvlab.eigsh` (thick-restart Lanczos) returns an :class:`curvlab.EigResult`: the
# values, their **true** residual norms ``‖Hv − λv‖``, a ``status`` and the work done. In
# float32, ask for a tolerance above float32's rounding (``tol=1e-4``); a smaller one is
# reported as unattainable (status ``"stagnated"``) rather than claimed.
top = curvlab.eigsh(H, k=4, which="LA", tol=1e-4, rng=0)
print(top)
print("status:", top.status, "-", top.status.message)

# %%
# Trace with an error bar
# -----------------------
# Hutch++ (:func:`curvlab.hutchpp`) spends a budget of Hessian-vector products and returns a
# :class:`curvlab.TraceEstimate` whose ``std_error`` covers the estimator's variance;
# ``interval(z)`` is ``estimate ± z·std_error``.
tr = curvlab.hutchpp(H, 60, rng=0)
print(f"tr(H) = {tr.estimate:.4f} +/- {tr.std_error:.4f}   95%: {tr.interval(1.96)}   status: {tr.status}")

# %%
# Spectral density
# ----------------
# Stochastic Lanczos quadrature (:func:`curvlab.slq`) gives a
# :class:`curvlab.SpectralDensity`; ``density(grid, sigma)`` smooths its quadrature nodes with
# Gaussians of width ``sigma``. Its ``trace(f)`` estimates ``tr f(H)`` with an error bar.
import matplotlib.pyplot as plt

sd = curvlab.slq(H, n_probes=4, m=30, rng=0)
grid = np.linspace(sd.nodes.min() - 0.05, sd.nodes.max() + 0.05, 400)
fig, ax = plt.subplots(figsize=(6, 3))
ax.semilogy(grid, sd.density(grid, sigma=0.01) + 1e-6)
ax.axvline(top.eigenvalues[0], color="k", ls="--", lw=0.8, label="top eigenvalue (eigsh)")
ax.set(xlabel="eigenvalue", ylabel="density", title="Hessian spectral density (SLQ, 4 probes)")
ax.legend()
fig.tight_layout()
print("tr(H) from the same quadrature:", sd.trace(lambda x: x))

# %%
# Per-layer blocks
# ----------------
# ``layer_structure()`` lists the model's ``nn.Linear`` layers as :class:`curvlab.DenseLayer`
# records: per-sample inputs ``a_b`` ``(B, n)``, output gradients ``(B, m)`` and output
# Hessians ``M_b`` ``(B, m, m)``; the layer's Hessian block is ``mean_b M_b ⊗ ã_b ã_bᵀ``
# (arXiv 2104.03804). A model without dense layers raises
# :class:`curvlab.LayerStructureUnavailable`. Here on one batch:
one = src.at(data=(X[:128], y[:128]))                    # rebind: nothing is rebuilt
for layer in one.layer_structure():
    print(layer.name, layer.weight, layer.bias, tuple(layer.inputs.shape), tuple(layer.output_hessians.shape))

# %%
# Any block of the full Hessian is also an operator: restrict ``H`` to the last layer's
# weight with :meth:`curvlab.Layout.slice` and compare its top eigenvalue with the whole.
sl = src.layout.slice("2.weight")
n_last = sl.stop - sl.start
E = np.zeros((src.layout.size, n_last), dtype=np.float32)
E[sl, :] = np.eye(n_last, dtype=np.float32)
block = curvlab.DenseOperator(E.T @ H.matmat(E), symmetric=True)   # (n_last, n_last), exact
print("top eigenvalue of the '2.weight' block:", curvlab.eigsh(block, k=1, which="LA", tol=1e-4, rng=0).eigenvalues)

# %%
# Training through ``torch.optim``
# --------------------------------
# :class:`~curvlab.adapters.torch.CurvlabOptimizer` wraps any curvlab method; ``lr`` is always
# its learning-rate-like knob (ArTuRO's KL bound ε, CurvatureLR's multiplier on λ, ExactNewton's
# step size), so ``torch.optim.lr_scheduler`` schedulers, gradient clipping and checkpoints work.
# Methods that need curvature take the source (rebound each step to the parameters and, with
# ``step(batch=...)``, to the batch).
from curvlab import ArTuRO, CurvatureLR, ExactNewton


def train(make_optimizer, epochs=3):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
    opt = make_optimizer(net)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    losses = []
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xb), yb)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step(batch=(xb, yb)) if opt.source is not None else opt.step()
            losses.append(loss.item())
        sched.step()
    return net, opt, losses


def with_source(method):
    def make(net):
        s = TorchCurvature(net, "cross_entropy", next(iter(loader)))
        return CurvlabOptimizer(net.parameters(), method, source=s)
    return make


runs = {
    "ArTuRO (lr = KL bound)": lambda net: CurvlabOptimizer(net.parameters(), ArTuRO(kl_bound=0.05)),
    "CurvatureLR (Adam direction)": with_source(CurvatureLR(curvlab.Adam(lr=1e-2))),
    "ExactNewton": with_source(ExactNewton(lr=0.5, lam=1.0)),
    "Adam": lambda net: CurvlabOptimizer(net.parameters(), curvlab.Adam(lr=1e-2)),
}
fig, ax = plt.subplots(figsize=(6, 3))
for name, make in runs.items():
    net, opt, losses = train(make)
    ax.plot(losses, label=name)
    print(f"{name:30s} loss {losses[0]:.3f} -> {losses[-1]:.3f}   lr now {opt.param_groups[0]['lr']:.4g}")
ax.set(xlabel="step", ylabel="training loss", title="curvlab methods through torch.optim")
ax.legend()
fig.tight_layout()

# %%
# A checkpoint
# ------------
# ``state_dict()`` holds only tensors, numbers, strings and lists, so the default
# ``torch.load(..., weights_only=True)`` reads it, and training resumes bit for bit.
import io

buf = io.BytesIO()
torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)
buf.seek(0)
ckpt = torch.load(buf)                                    # weights_only=True by default
opt.load_state_dict(ckpt["opt"])
print("restored groups:", [sorted(k for k in g if k != "params") for g in opt.param_groups])
