"""Recognise a torch model that is a reference MLP: the inverse of :func:`~.convert.from_reference_mlp`.

:func:`reference_mlp_of` reads a :class:`~curvlab.adapters.torch.curvature.TorchCurvature`
whose module is an ``nn.Sequential`` of ``nn.Linear`` layers (with bias) alternating with one
hidden activation that curvlab's reference MLP (:class:`curvlab.models.mlp.MLP`) defines the
same way, optionally after an ``nn.Flatten()``, ending in a Linear, under a built-in loss
(``"cross_entropy"`` or ``"mse"``, whose conventions the two share: batch means, mse
``½‖z − y‖²`` summed over outputs). It returns the equivalent reference MLP, its folded
parameters, the bound data's inputs ``X`` ``(N, n_0)`` and targets, and how the source's
separate weight/bias blocks fold into the MLP's ``W_i = [weight | bias]``. Anything else raises
a ``ValueError`` naming what is not covered (the module and why). DSGD's rigorous constant
(:func:`curvlab.methods.dsgd.mlp_layer_smoothness_bound`, arXiv 1708.00523) uses it.

Activations: ``nn.Tanh``, ``nn.Sigmoid``, ``nn.Identity`` (the same functions as the
reference's ``"tanh"``, ``"sigmoid"``, ``"identity"``); ``nn.Softplus`` only with ``beta=1``
and ``threshold=inf`` (torch's default ``threshold=20`` returns ``z`` above 20, a jump of
σ' the C² bound does not cover). ``nn.ReLU`` is refused (not twice differentiable, as the
reference's ``"relu"`` is for the bound). All hidden activations must be the same.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from ... import backend
from .convert import from_torch

__all__ = ["ReferenceMLP", "reference_mlp_of"]

_PLAIN = {torch.nn.Tanh: "tanh", torch.nn.Sigmoid: "sigmoid", torch.nn.Identity: "identity"}


@dataclasses.dataclass
class ReferenceMLP:
    """A torch source read as the reference MLP (see the module docstring).

    ``model``: the :class:`~curvlab.models.mlp.MLP`; ``params``: its flat folded parameters
    (host NumPy, the source's dtype); ``X`` ``(N, n_0)`` and ``y``: the bound data (every batch
    of the source's dataset, concatenated; NumPy for a CPU model, CuPy for a CUDA one); ``fold``: for each layer ``i`` the indices
    ``(weight, bias)`` of its blocks in the source's layout; ``perm``: ``source_flat =
    mlp_flat[perm]`` (as :func:`~.convert.from_reference_mlp`)."""

    model: Any
    params: np.ndarray
    X: np.ndarray
    y: np.ndarray
    fold: list[tuple[int, int]]
    perm: np.ndarray


def _not_covered(what: str) -> ValueError:
    return ValueError(
        f"the torch model is not an MLP the rigorous bound covers: {what}. Covered: nn.Sequential([nn.Flatten()], "
        "nn.Linear, act, nn.Linear, ..., nn.Linear) with biases, one hidden act among nn.Tanh, nn.Sigmoid, "
        "nn.Identity, nn.Softplus(beta=1, threshold=inf), every parameter trainable, loss 'cross_entropy' or "
        "'mse', on one process; use rule='estimate' (dᵀHd from any source) or rule='constant'")


def _activation_name(mod: torch.nn.Module, where: str) -> str:
    for cls, name in _PLAIN.items():
        if type(mod) is cls:
            return name
    if type(mod) is torch.nn.ReLU:
        raise _not_covered(f"{where} is nn.ReLU, which is not twice differentiable (the bound needs sup|σ''| < ∞)")
    if type(mod) is torch.nn.Softplus:
        if mod.beta != 1 or not math.isinf(mod.threshold):
            raise _not_covered(
                f"{where} is nn.Softplus(beta={mod.beta}, threshold={mod.threshold}); the reference softplus is "
                "log(1 + eᶻ), torch's equals it only with beta=1 and threshold=inf (above the threshold it returns z, "
                "a jump of σ' that the C² bound does not cover)")
        return "softplus"
    raise _not_covered(f"{where} is {type(mod).__name__}, not a Linear or a hidden activation the bound knows")


def reference_mlp_of(source: Any) -> ReferenceMLP:
    """The reference MLP equal to a :class:`TorchCurvature`'s model and loss (module docstring).

    ``ValueError`` naming the module, parameter or option not covered. Host syncs: the
    parameters are copied to host NumPy; one pass over the source's data concatenates its inputs.
    """
    from ...models.mlp import MLP  # noqa: PLC0415

    net = getattr(source, "model", None)
    if not isinstance(net, torch.nn.Sequential):
        raise _not_covered(f"the model is {type(net).__name__}, not an nn.Sequential")
    mods = list(net.named_children())
    flatten = bool(mods) and type(mods[0][1]) is torch.nn.Flatten
    if flatten:
        fl = mods[0][1]
        if fl.start_dim != 1 or fl.end_dim != -1:
            raise _not_covered(f"module {mods[0][0]!r} is nn.Flatten(start_dim={fl.start_dim}, end_dim={fl.end_dim}), "
                               "not the default (1, -1)")
        mods = mods[1:]
    if not mods:
        raise _not_covered("the nn.Sequential holds no Linear layer")
    linears: list[tuple[str, torch.nn.Linear]] = []
    acts: list[str] = []
    for k, (name, mod) in enumerate(mods):
        where = f"module {name!r}"
        if k % 2 == 0:
            if type(mod) is not torch.nn.Linear:
                raise _not_covered(f"{where} is {type(mod).__name__} where an nn.Linear is expected"
                                   + (" (the network must end in a Linear)" if k == len(mods) - 1 else ""))
            if mod.bias is None:
                raise _not_covered(f"{where} is an nn.Linear without bias (the bound folds the bias as W's last column)")
            linears.append((name, mod))
        else:
            if k == len(mods) - 1:
                raise _not_covered(f"{where} ({type(mod).__name__}) comes after the last Linear; the network must end "
                                   "in a Linear (the loss takes its outputs)")
            acts.append(_activation_name(mod, where))
    if len(set(acts)) > 1:
        raise _not_covered(f"the hidden activations differ ({acts}); the bound takes one")
    if source.loss_name not in ("cross_entropy", "mse"):
        raise _not_covered("the loss is a callable, not the built-in 'cross_entropy' or 'mse'")
    if getattr(source, "group", None) is not None:
        raise _not_covered("the source runs under a process group (the bound needs every rank's inputs)")
    names = list(source.layout.names)
    want = [n for ln, _ in linears for n in (f"{ln}.weight", f"{ln}.bias")]
    if sorted(names) != sorted(want):
        raise _not_covered(f"the source's parameters {names} are not exactly the Linear layers' weights and biases "
                           f"{want} (frozen or extra parameters)")
    fold = [(names.index(f"{ln}.weight"), names.index(f"{ln}.bias")) for ln, _ in linears]
    sizes = [linears[0][1].in_features] + [lin.out_features for _, lin in linears]
    for i in range(1, len(linears)):
        if linears[i][1].in_features != sizes[i]:
            raise _not_covered(f"module {linears[i][0]!r} takes {linears[i][1].in_features} inputs but the layer "
                               f"before gives {sizes[i]}")
    X, y = source._batches.concat(lambda b: (b[0], b[1]), concatenate=torch.cat)
    X = X.detach()
    if flatten:
        X = X.reshape(X.shape[0], -1)
    if X.ndim != 2 or X.shape[1] != sizes[0]:
        raise _not_covered(f"the inputs have shape {tuple(X.shape)}, not (N, {sizes[0]}) rows (after nn.Flatten)")
    model = MLP(sizes, activation=acts[0] if acts else "identity", loss=source.loss_name, dtype=source.dtype)
    plist = [backend.to_numpy(from_torch(t)) for t in source._plist]
    mats = [np.concatenate([plist[w], plist[b][:, None]], axis=1) for w, b in fold]
    perm = np.empty(model.layout.size, dtype=np.int64)   # source_flat = mlp_flat[perm]
    offs = np.cumsum([0] + [int(np.prod(s)) for s in source.layout.shapes])
    off = 0
    for (w, b), W in zip(fold, mats):
        n, m1 = W.shape
        idx = off + np.arange(n * m1).reshape(n, m1)
        perm[offs[w]:offs[w + 1]] = idx[:, :-1].ravel()
        perm[offs[b]:offs[b + 1]] = idx[:, -1]
        off += n * m1
    return ReferenceMLP(model, model.layout.pack(mats), from_torch(X), from_torch(y.detach()), fold, perm)
