"""Arrays across the JAX boundary: DLPack crossing and the reference MLP's JAX twin.

* :func:`to_jax` / :func:`from_jax` — NumPy (CPU) or CuPy (GPU) arrays as JAX arrays and
  back (DLPack; zero-copy where the buffer allows it);
* :func:`from_reference_mlp` — ``(apply_fn, tree)``, the JAX twin of a
  :class:`curvlab.models.mlp.MLP` with the same weights and the same flat layout.

Examples
--------
>>> import numpy as np
>>> from_jax(to_jax(np.arange(3.0))).tolist()
[0.0, 1.0, 2.0]
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ... import backend

__all__ = ["to_jax", "from_jax", "from_reference_mlp"]


def to_jax(x: Any) -> jax.Array:
    """A NumPy/CuPy array as a JAX array; zero-copy when the buffer allows it (64-byte
    aligned on the CPU), one copy otherwise."""
    if isinstance(x, jax.Array):
        return x
    try:
        return jnp.from_dlpack(x, copy=False)
    except Exception:  # unaligned or read-only host buffer: one copy
        return jnp.asarray(x)


def from_jax(a: jax.Array) -> Any:
    """A JAX array as NumPy (CPU) / CuPy (GPU) sharing its buffer (read-only for NumPy).

    Arrays sharded over several devices are gathered (one copy).
    """
    if len(a.sharding.device_set) > 1:
        return np.asarray(a)
    return backend.from_dlpack(a)



_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh, "relu": jax.nn.relu, "softplus": jax.nn.softplus, "sigmoid": jax.nn.sigmoid,
    "identity": lambda z: z}


def from_reference_mlp(model: Any, params: Any) -> tuple[Callable[[Any, Any], Any], list[jax.Array]]:
    """The JAX twin of a :class:`curvlab.models.mlp.MLP` with weights ``params``.

    Returns ``(apply_fn, tree)``: ``tree`` is the list of the layer matrices ``W_l``
    ``(n_l, n_{l-1} + 1)`` (bias as the last column, as in the reference layout) in the
    model's dtype, and ``apply_fn(tree, X)`` the network's outputs (logits). The flat
    layouts agree: ``JaxCurvature(apply_fn, tree, ...).params`` equals ``params`` (the
    torch twin, :func:`curvlab.adapters.torch.from_reference_mlp`, needs a permutation).
    float64 needs ``jax.config.update("jax_enable_x64", True)``.

    Examples
    --------
    >>> import numpy as np
    >>> from curvlab.models.mlp import MLP
    >>> m = MLP([3, 4, 2], dtype=np.float32); p = m.init_params(np.random.default_rng(0))
    >>> apply, tree = from_reference_mlp(m, p)
    >>> [W.shape for W in tree], apply(tree, np.zeros((1, 3), np.float32)).shape
    ([(4, 4), (2, 5)], (1, 2))
    """
    if model.activation not in _ACTIVATIONS:
        raise ValueError(f"model.activation must be one of {sorted(_ACTIVATIONS)}, got {model.activation!r}")
    act = _ACTIVATIONS[model.activation]
    tree = [jnp.asarray(np.ascontiguousarray(W)) for W in model.layout.unpack(backend.to_numpy(params))]

    def apply_fn(ws: Any, X: Any) -> jax.Array:
        a = X
        for i, W in enumerate(ws):
            a = a @ W[:, :-1].T + W[:, -1]
            if i < len(ws) - 1:
                a = act(a)
        return a

    apply_fn.__qualname__ = apply_fn.__name__ = model.label if isinstance(getattr(model, "label", None), str) \
        else "MLP"
    return apply_fn, tree
