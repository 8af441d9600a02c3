"""
.. _guide-jax:

JAX and optax: the curvature of your model, and curvlab's methods in ``optax.chain``
====================================================================================

Any JAX function ``apply_fn(params, inputs)`` of a pytree of parameters, a loss and your
batches make a :class:`curvlab.adapters.jax.JaxCurvature`: the same curvature source as the
PyTorch guide (:ref:`guide-pytorch`), with jitted products (compiled once per batch shape).
:func:`curvlab.adapters.jax.as_optax` turns any curvlab method into an optax gradient
transformation that composes with ``optax.chain`` and runs under ``jax.jit``.

Needs the ``jax`` extra (``pip install "curvlab[jax]"``: JAX and optax).
"""

# %%
# The model and the data
# ----------------------
# A list of batches (any re-iterable, or a callable returning a fresh iterator, works too). The
# dense layers are written with :func:`curvlab.adapters.jax.dense`: outside
# ``layer_structure()`` it is exactly ``x @ w + b``; it lets the source see the layers (for
# per-layer blocks and :class:`curvlab.ExactNewton`). An untagged model works for everything
# else.
import jax
import jax.numpy as jnp
import numpy as np
import optax

import curvlab
from curvlab.adapters.jax import JaxCurvature, as_optax, dense

ds = curvlab.data.load_digits(dtype="float32")
X, y = ds.X_train[:512], ds.y_train[:512]
batches = [(X[i:i + 128], y[i:i + 128]) for i in range(0, len(X), 128)]


def apply(p, x):
    h = jnp.tanh(dense(x, p["fc1"]["w"], p["fc1"]["b"], name="fc1"))
    return dense(h, p["fc2"]["w"], p["fc2"]["b"], name="fc2")


def init(key):
    k1, k2 = jax.random.split(key)
    f32 = jnp.float32                                   # the batches' dtype
    return {"fc1": {"w": 0.3 * jax.random.normal(k1, (64, 16), f32), "b": jnp.zeros(16, f32)},
            "fc2": {"w": 0.3 * jax.random.normal(k2, (16, 10), f32), "b": jnp.zeros(10, f32)}}


params = init(jax.random.PRNGKey(0))
src = JaxCurvature(apply, params, "cross_entropy", batches)
H = src.hessian()
print(src.layout.names, "P =", src.layout.size)

# %%
# Top eigenvalues, trace, spectral density
# ----------------------------------------
# The same calls as on any other operator; float32 asks for ``tol`` above its rounding.
import matplotlib.pyplot as plt

top = curvlab.eigsh(H, k=4, which="LA", tol=1e-4, rng=0)
print(top)
tr = curvlab.hutchpp(H, 60, rng=0)
print(f"tr(H) = {tr.estimate:.4f} +/- {tr.std_error:.4f} ({tr.status})")
sd = curvlab.slq(H, n_probes=4, m=30, rng=0)
grid = np.linspace(sd.nodes.min() - 0.05, sd.nodes.max() + 0.05, 400)
fig, ax = plt.subplots(figsize=(6, 3))
ax.semilogy(grid, sd.density(grid, sigma=0.01) + 1e-6)
ax.set(xlabel="eigenvalue", ylabel="density", title="Hessian spectral density of a JAX MLP (SLQ)")
fig.tight_layout()

# %%
# Per-layer blocks
# ----------------
# The tagged layers' per-sample factors; JAX kernels are ``(n, m)`` (``z = x @ w``), which the
# records say with ``transposed=True``.
for layer in src.at(data=batches[0]).layer_structure():
    print(layer.name, layer.weight, layer.bias, "transposed:", layer.transposed,
          tuple(layer.inputs.shape), tuple(layer.output_hessians.shape))

# %%
# Training with ``optax.chain`` and ``jax.jit``
# ---------------------------------------------
# ``as_optax(M)`` returns an ``optax.GradientTransformationExtraArgs``; its ``update`` forwards
# extra keyword arguments (here the step's batch, ``data=``) to the method. Under ``jax.jit``
# the NumPy/Numba step runs in one host callback per step. Methods that need curvature take
# the source with ``as_optax(M, source=src)`` and rebind it to each step's parameters and
# batch on the host (``src.at``: nothing recompiles).
from curvlab import ArTuRO, CurvatureLR, ExactNewton


def loss_fn(p, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(apply(p, xb), yb).mean()


def train(tx, epochs=3, needs_batch=False):
    p = init(jax.random.PRNGKey(1))
    state = tx.init(p)

    @jax.jit
    def step(p, state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
        extra = {"data": (xb, yb)} if needs_batch else {}
        updates, state = tx.update(grads, state, p, **extra)
        return optax.apply_updates(p, updates), state, loss

    losses = []
    for _ in range(epochs):
        for xb, yb in batches:
            p, state, loss = step(p, state, xb, yb)
            losses.append(float(loss))
    return p, state, losses


clip = optax.clip_by_global_norm(5.0)
runs = {
    "ArTuRO": (optax.chain(clip, as_optax(ArTuRO(kl_bound=0.05))), False),
    "CurvatureLR (Adam direction)": (optax.chain(clip, as_optax(CurvatureLR(curvlab.Adam(lr=1e-2)), source=src)), True),
    "ExactNewton": (optax.chain(clip, as_optax(ExactNewton(lr=0.5, lam=1.0), source=src)), True),
    "Adam (curvlab)": (optax.chain(clip, as_optax(curvlab.Adam(lr=1e-2))), False),
    "optax.adam": (optax.chain(clip, optax.adam(1e-2)), False),
}
fig, ax = plt.subplots(figsize=(6, 3))
for name, (tx, needs_batch) in runs.items():
    p, state, losses = train(tx, needs_batch=needs_batch)
    ax.plot(losses, label=name)
    print(f"{name:30s} loss {losses[0]:.3f} -> {losses[-1]:.3f}")
ax.set(xlabel="step", ylabel="training loss", title="curvlab methods in optax.chain under jax.jit")
ax.legend()
fig.tight_layout()

# %%
# A schedule and a checkpoint
# ---------------------------
# optax schedules go where a number goes (``scale_by_lr`` and the baselines take a callable of
# the step count). The state is a JAX pytree (:class:`curvlab.adapters.jax.CurvlabOptaxState`
# around the method's own state), so it saves as a flat list of arrays and restores with its
# tree structure.
import io

tx = optax.chain(clip, as_optax(curvlab.SGD(lr=optax.exponential_decay(0.5, 4, 0.5))))
p, state, losses = train(tx)
leaves, treedef = jax.tree_util.tree_flatten(state)
buf = io.BytesIO()
np.savez(buf, *[np.asarray(x) for x in leaves])
buf.seek(0)
with np.load(buf) as f:
    restored = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(f[f"arr_{i}"]) for i in range(len(leaves))])
print("SGD with an optax schedule:", f"{losses[0]:.3f} -> {losses[-1]:.3f};",
      "checkpoint leaves:", len(leaves), "restored equal:",
      all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
          zip(leaves, jax.tree_util.tree_leaves(restored))))

# %%
# Rebinding after training
# ------------------------
# ``at(params=...)`` rebinds the source to the trained parameters without recompiling.
print(curvlab.eigsh(src.at(params=p).hessian(), k=1, which="LA", tol=1e-4, rng=0).eigenvalues)
