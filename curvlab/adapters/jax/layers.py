"""Tagged dense layers of a JAX model: :func:`dense` and the records of ``JaxCurvature.layer_structure()``.

``JaxCurvature`` takes an opaque ``apply_fn(params, inputs)``; to give it a layer structure
(for :class:`curvlab.methods.ExactNewton` on a JAX model), write the model's dense layers with
:func:`dense`::

    def apply(p, X):
        h = jnp.tanh(dense(X, p["fc1"]["w"], p["fc1"]["b"], name="fc1"))
        return dense(h, p["fc2"]["w"], p["fc2"]["b"], name="fc2")

Outside ``layer_structure()``, :func:`dense` is exactly ``x @ w + b`` (no overhead, any
``jit``/``grad``/``vmap``). While ``layer_structure()`` evaluates the model it reads a
context (a :class:`contextvars.ContextVar`, set only there) and, for every tagged layer,
records its input ``a`` ``(B, n)`` and adds a perturbation ``ε`` ``(B, m)`` (zero) to its
output. With ``B·L = Σ_b ℓ_b`` (the loss a mean of per-sample losses),
``δ = ∂(B·L)/∂ε`` and, since ``ℓ_b`` depends on ``ε_b`` only, ``M_b[:, i]`` is sample
``b``'s row of the Jacobian-vector product of ``∂(B·L)/∂ε`` with the tangent ``e_i`` on every
sample: ``m`` forward-over-reverse passes per layer (a ``jax.vmap`` over the basis), the
same math as the torch adapter (:mod:`curvlab.adapters.torch.layers`; per-sample
factorisation of arXiv 2104.03804). The whole computation is one ``jax.jit`` function per
batch shape.

Which parameters a layer owns: ``weight=``/``bias=`` (layout names such as ``"fc1/w"``, as in
``JaxCurvature.layout.names``) when given; otherwise the leaf of ``params`` that ``w`` (``b``)
*is* (identity with the leaves ``layer_structure()`` passes to ``apply_fn``). Identity is
automatic when the model passes a leaf as is (``p["fc1"]["w"]``); a weight that is computed
(sliced, transposed, cast, or passed through a ``jax.jit`` inside ``apply_fn``) has no leaf
identity, and ``layer_structure()`` then raises
:class:`~curvlab.sources.LayerStructureUnavailable` asking for ``weight=``/``bias=``. Explicit
names are therefore the robust option when in doubt; they are checked against the layout and
against the shapes ``(n, m)``/``(m,)`` (a named leaf that ``dense`` does not actually receive
would give wrong factors: the check of shapes catches the common mistakes, not every one).

Conventions: ``w`` is ``(n, m)`` (flax/haiku ``Dense`` kernels: ``z = x @ w``), transposed with
respect to torch's ``(m, n)``; the records say so with ``DenseLayer.transposed=True``.

Refused with :class:`~curvlab.sources.LayerStructureUnavailable` (naming the layer): an input
that is not ``(B, n)`` with ``B`` the batch size, a layer called twice per forward, a weight or
bias with no layout name, and a model that couples the samples (checked: a tangent on sample 0
must leave the other samples' ``δ`` unchanged, exactly). A callable loss must be the mean of
per-sample losses (checked once per batch, ``ValueError``).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ...sources import LayerStructureUnavailable

__all__ = ["dense", "layer_records"]

_TAPE: contextvars.ContextVar["_Tape | None"] = contextvars.ContextVar("curvlab_jax_dense_tape", default=None)


@dataclass
class _Tape:
    """What :func:`dense` reads and writes while ``layer_structure()`` traces the model."""

    batch: int
    leaves: list[tuple[Any, str]]  # (leaf passed to apply_fn, key path), every leaf
    shapes: dict[str, tuple[int, ...]]  # key path -> shape, every leaf
    trainable: frozenset[str]  # the layout names
    eps: dict[str, Any] | None = None
    order: list[str] = field(default_factory=list)
    info: dict[str, tuple[str, str | None, int, int]] = field(default_factory=dict)  # weight, bias, n, m
    inputs: dict[str, Any] = field(default_factory=dict)

    def name_of(self, leaf: Any) -> str | None:
        for obj, name in self.leaves:
            if obj is leaf:
                return name
        return None


def dense(x: Any, w: Any, b: Any = None, *, name: str, weight: str | None = None,
          bias: str | None = None) -> Any:
    """A dense layer ``x @ w + b`` that ``JaxCurvature.layer_structure()`` can see.

    Parameters
    ----------
    x : array ``(B, n)``
        The layer input (inside ``layer_structure()``: exactly one row per sample).
    w : array ``(n, m)``
        The kernel, flax/haiku convention (``z = x @ w``; torch's weight is its transpose).
    b : array ``(m,)``, optional
    name : str
        The layer's name (unique within the model; the record's ``DenseLayer.name``).
    weight, bias : str, optional
        The layout names (``JaxCurvature.layout.names``, e.g. ``"fc1/w"``) of ``w`` and ``b``;
        by default found by identity of ``w``/``b`` with the leaves of ``params`` (see the
        module docstring).

    Returns
    -------
    array ``(B, m)``
        ``x @ w + b``, bit for bit, outside ``layer_structure()``; inside it the same plus the
        layer's (zero) perturbation ``ε``.

    Examples
    --------
    >>> import jax.numpy as jnp, numpy as np
    >>> from curvlab.adapters.jax import JaxCurvature, dense
    >>> def apply(p, X):
    ...     return dense(jnp.tanh(dense(X, p["h"]["w"], p["h"]["b"], name="h")), p["o"]["w"], name="o")
    >>> rng = np.random.default_rng(0)
    >>> p = {"h": {"w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32), "b": jnp.zeros(4, jnp.float32)},
    ...      "o": {"w": jnp.asarray(rng.standard_normal((4, 2)), jnp.float32)}}
    >>> X = jnp.asarray(rng.standard_normal((8, 3)), jnp.float32); y = jnp.asarray(rng.integers(0, 2, 8))
    >>> [(r.name, r.weight, r.bias, r.output_hessians.shape)
    ...  for r in JaxCurvature(apply, p, "cross_entropy", (X, y)).layer_structure()]
    [('h', 'h/w', 'h/b', (8, 4, 4)), ('o', 'o/w', None, (8, 2, 2))]
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"dense(name=...) must be a non-empty string, got {name!r}")
    z = x @ w
    if b is not None:
        z = z + b
    tape = _TAPE.get()
    if tape is None:
        return z
    if name in tape.info:
        raise LayerStructureUnavailable(
            f"layer_structure(): the dense layer {name!r} runs more than once per forward pass (a shared layer, or "
            "two layers with one name): its Hessian block is not one per-sample factor pair")
    if jnp.ndim(x) != 2 or x.shape[0] != tape.batch:
        raise LayerStructureUnavailable(
            f"layer_structure(): the dense layer {name!r} gets an input of shape {tuple(jnp.shape(x))}, not "
            f"(B, n) = ({tape.batch}, n) with one row per sample (a layer on a sequence or on merged samples): its "
            "Hessian block is not a per-sample Kronecker product M_b ⊗ a_b a_bᵀ")
    n = int(x.shape[1])
    if jnp.ndim(w) != 2 or int(w.shape[0]) != n:
        raise LayerStructureUnavailable(
            f"layer_structure(): the dense layer {name!r} has a kernel of shape {tuple(jnp.shape(w))}; dense() "
            f"takes w of shape (n, m) = ({n}, m) (flax/haiku convention, z = x @ w)")
    m = int(w.shape[1])
    wname = weight if weight is not None else tape.name_of(w)
    if wname is None:
        raise LayerStructureUnavailable(
            f"layer_structure(): the kernel of dense layer {name!r} is not a leaf of params as passed (it is "
            "computed from one): pass dense(..., weight='<layout name>') with its name in JaxCurvature.layout.names")
    _check_named(name, "weight", wname, (n, m), tape)
    if wname not in tape.trainable:  # a frozen kernel: not a layer of the source (its bias: the fallback's)
        return z
    bname = None
    if b is not None:
        if tuple(jnp.shape(b)) != (m,):
            raise LayerStructureUnavailable(
                f"layer_structure(): the bias of dense layer {name!r} has shape {tuple(jnp.shape(b))}, not ({m},)")
        bname = bias if bias is not None else tape.name_of(b)
        if bname is None:
            raise LayerStructureUnavailable(
                f"layer_structure(): the bias of dense layer {name!r} is not a leaf of params as passed (it is "
                "computed from one): pass dense(..., bias='<layout name>') with its name in JaxCurvature.layout.names")
        _check_named(name, "bias", bname, (m,), tape)
        if bname not in tape.trainable:  # a frozen bias: the layer has no trainable bias
            bname = None
    elif bias is not None:
        raise ValueError(f"dense layer {name!r}: bias={bias!r} is named but no bias array b was passed")
    tape.order.append(name)
    tape.info[name] = (wname, bname, n, m)
    tape.inputs[name] = x
    if tape.eps is not None:
        z = z + tape.eps[name].astype(z.dtype)
    return z


def _check_named(layer: str, what: str, pname: str, shape: tuple[int, ...], tape: _Tape) -> None:
    if pname not in tape.shapes:
        raise LayerStructureUnavailable(
            f"layer_structure(): dense layer {layer!r} names {what}={pname!r}, which is not a leaf of params "
            f"(leaves: {sorted(tape.shapes)})")
    if tuple(tape.shapes[pname]) != tuple(shape):
        raise LayerStructureUnavailable(
            f"layer_structure(): dense layer {layer!r} names {what}={pname!r} of shape {tuple(tape.shapes[pname])}, "
            f"but its {what} has shape {tuple(shape)}")


def _run(tape: _Tape, fn: Callable[[], Any]) -> Any:
    token = _TAPE.set(tape)
    try:
        return fn()
    finally:
        _TAPE.reset(token)


def layer_records(apply_fn: Callable[[Any, Any], Any], merge: Callable[[Any], Any],
                  leaf_names: list[str], trainable: frozenset[str], loss_fn: Callable[[Any, Any], Any], th: Any, X: Any, y: Any, structure: dict[str, Any]
                  ) -> tuple[dict[str, Any], Any]:
    """The traced records of one batch: ``({layer: (a (B, n), δ (B, m), M (B, m, m))}, coupling)``.

    ``merge(th)`` is the params pytree, ``leaf_names`` the key paths of its leaves (in
    ``jax.tree_util`` order), ``trainable`` the layout names; ``structure`` receives (at trace time) the layer order and
    ``(weight, bias, n, m)`` per layer. ``coupling``: the largest ``|δ|``-tangent on samples
    other than 0 for a tangent on sample 0 (exactly 0 for a model without coupling).
    Meant to run inside ``jax.jit``.
    """
    B = int(X.shape[0])
    params = merge(th)
    leaves = jax.tree_util.tree_leaves(params)
    pairs = list(zip(leaves, leaf_names))
    shapes = {n: tuple(jnp.shape(v)) for v, n in pairs}

    def tape(eps: Any = None) -> _Tape:
        return _Tape(B, pairs, shapes, trainable, eps=eps)

    probe = tape()
    _run(probe, lambda: apply_fn(params, X))
    structure["order"] = list(probe.order)
    structure["info"] = dict(probe.info)
    if not probe.order:
        return {}, jnp.zeros((), th.dtype)

    def total(eps: dict[str, Any]) -> Any:  # B·L as a function of the perturbations
        return loss_fn(_run(tape(eps), lambda: apply_fn(params, X)), y) * B

    zeros = {k: jnp.zeros((B, probe.info[k][3]), th.dtype) for k in probe.order}
    grad = jax.grad(total)
    delta = grad(zeros)

    def hvp(t: dict[str, Any]) -> dict[str, Any]:
        return jax.jvp(grad, (zeros,), (t,))[1]

    out = {}
    for k in probe.order:
        m = probe.info[k][3]
        basis = jnp.broadcast_to(jnp.eye(m, dtype=th.dtype)[:, None, :], (m, B, m))

        def col(e: Any, k: str = k) -> Any:
            t = {j: (e if j == k else jnp.zeros_like(v)) for j, v in zeros.items()}
            return hvp(t)[k]

        R = jax.vmap(col)(basis)  # R[i, b, j] = M_b[j, i]
        M = jnp.transpose(R, (1, 2, 0))
        out[k] = (probe.inputs[k], delta[k], 0.5 * (M + jnp.transpose(M, (0, 2, 1))))
    coupling = jnp.zeros((), th.dtype)
    if B > 1:  # a tangent on sample 0 (every layer) must not move the other samples' δ
        t0 = {k: v.at[0].set(1.0) for k, v in zeros.items()}
        r = hvp(t0)
        coupling = jnp.max(jnp.stack([jnp.max(jnp.abs(r[k][1:])) for k in probe.order]))
    return out, coupling


def check_mean_loss(loss_fn: Callable[[Any, Any], Any], z: Any, y: Any) -> None:
    """A callable loss must be the mean over axis 0 of per-sample losses (one host sync)."""
    L = loss_fn(z, y)
    per = jax.vmap(lambda zb, yb: loss_fn(zb[None], yb[None]))(z, y)
    mean = float(jnp.mean(per))
    tol = 1e-10 if z.dtype == jnp.float64 else 1e-4
    if not np.isclose(mean, float(L), rtol=tol, atol=tol * (1 + float(jnp.max(jnp.abs(per))))):
        raise ValueError(
            f"layer_structure() needs the loss to be the mean over the batch (axis 0) of per-sample losses: the "
            f"loss on the batch is {float(L):.6g} but the mean of its values on the single samples is {mean:.6g} "
            "(a sum reduction, or a loss coupling the samples?)")
